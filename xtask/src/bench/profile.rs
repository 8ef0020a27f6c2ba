//! The filter's own instructions by function (`--only profile`). Envoy runs the filter as wasm
//! compiled by V8, which tells callgrind nothing of the functions in it, so the instructions
//! run shows only their sum. Here the same Rust is built natively (release profile, with
//! symbols: `--profile profiling`) and linked with `tokenrouter-filter-prof`, which plays
//! Envoy's part of the proxy-wasm ABI; it drives the edge's callbacks through the benchmark's
//! request as Envoy would, under `valgrind --tool=callgrind`, and this module reads the dump.
//!
//! The case is taken from a real stack: the control plane with the `tr` configuration sends
//! its snapshot over FilterSync (as to an Envoy), the request is the benchmark's, with the
//! headers Envoy passes on, and the answer is the fake provider's. Native x86-64 code is not
//! V8's code, so the counts are the proportions of the filter's work, not its cost in Envoy.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::fs;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use prost::Message;
use serde_json::{json, Value};
use tokenrouter_engine::keys::hash_key;
use tokenrouter_proto::config::v1::ApiKey;
use tokenrouter_proto::sync::v1::control_message::Msg as Down;

use super::{Plan, Stacks};

/// The harness's package and binary.
const HARNESS: &str = "tokenrouter-filter-prof";

/// Requests callgrind counts (after [`WARM_UP`] it does not); 200 with `--quick`.
const REQUESTS: u32 = 1_000;
const WARM_UP: u32 = 200;

/// The edge's tick every this many requests: a worker at 5 000 requests/s ticks every 20 ms.
const TICK_EVERY: u32 = 100;

/// Rows of the self-cost and inclusive tables.
const TOP: usize = 25;

/// What one profile found, per measured request.
#[derive(Clone, Debug, Default)]
pub struct ProfileFigures {
    pub requests: u32,
    /// The harness's log: the snapshot's size, host calls per request.
    pub log: Vec<String>,
    /// Instructions per request in the filter (its callbacks, less the host's side).
    pub filter: f64,
    /// Instructions per request on the host's side (the harness's `proxy_*` functions).
    pub host: f64,
    /// (callback, instructions per request with the host calls it makes).
    pub callbacks: Vec<(String, f64)>,
    /// (function, instructions per request in it alone), most first.
    pub self_cost: Vec<(String, f64)>,
    /// (function, instructions per request in it and what it calls), most first: the
    /// filter's and the engine's functions only.
    pub inclusive: Vec<(String, f64)>,
}

pub fn run(
    rt: &tokio::runtime::Runtime,
    plan: &Plan,
    stacks: &mut Stacks,
    base_url: &str,
) -> Result<ProfileFigures> {
    let (cp, key) = super::overhead::tr_control_plane(rt, stacks, base_url, "profile")?;
    let case = stacks.work.join("profile");
    fs::create_dir_all(&case).with_context(|| format!("cannot create {}", case.display()))?;
    let (snapshot, delta) = rt.block_on(configuration(&cp.grpc, &key))?;
    fs::write(case.join("snapshot.pb"), snapshot)?;
    let delta_file = case.join("key_delta.pb");
    match delta {
        Some(delta) => fs::write(&delta_file, delta)?,
        None => {
            let _ = fs::remove_file(&delta_file);
        }
    }
    let configuration = edge_configuration(stacks, &cp)?;
    fs::write(
        case.join("case.json"),
        serde_json::to_vec_pretty(&case_json(configuration, &key))?,
    )?;

    let harness = build_harness(stacks.paths)?;
    let dump = case.join("callgrind.out");
    let requests = if plan.quick { REQUESTS / 5 } else { REQUESTS };
    let output = Command::new("valgrind")
        .args([
            "--tool=callgrind",
            "--collect-atstart=no",
            "--toggle-collect=*counted_requests*",
            "--dump-instr=no",
        ])
        .arg(format!("--callgrind-out-file={}", dump.display()))
        .arg(&harness)
        .arg(&case)
        .args(["--warm-up", &WARM_UP.to_string()])
        .args(["--requests", &requests.to_string()])
        .args(["--tick-every", &TICK_EVERY.to_string()])
        .output()
        .context("cannot run valgrind (is it installed?)")?;
    let log = String::from_utf8_lossy(&output.stdout).into_owned();
    if !output.status.success() {
        bail!(
            "{HARNESS} under callgrind failed: {}{}",
            log,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    print!("{log}");
    let dump =
        fs::read_to_string(&dump).with_context(|| format!("cannot read {}", dump.display()))?;
    let graph = CallGraph::parse(&dump);
    let mut figures = graph.figures(requests);
    figures.log = log.lines().map(str::to_string).collect();
    Ok(figures)
}

/// What the control plane sends an Envoy that holds nothing, up to the configuration in which
/// `key` authenticates: the last full snapshot and the key delta on top of it (if any), each
/// encoded as the sync singleton puts it in shared data.
async fn configuration(grpc: &str, key: &str) -> Result<(Vec<u8>, Option<Vec<u8>>)> {
    // Held until the answer: dropping the sender would end the stream.
    let (_client, _out, mut inbound) = super::ingest::sync_stream(grpc, "bench-profile", 1).await?;
    let hash = hash_key(key);
    let holds = |keys: &[ApiKey]| keys.iter().any(|k| k.sha256 == hash);
    let wait = tokio::time::timeout(Duration::from_secs(10), async {
        let mut snapshot = None;
        while let Some(message) = inbound.message().await? {
            match message.msg {
                Some(Down::Snapshot(s)) => {
                    let bytes = s.encode_to_vec();
                    if holds(&s.keys) {
                        return Ok((bytes, None));
                    }
                    snapshot = Some(bytes);
                }
                Some(Down::Keys(delta)) if holds(&delta.keys) => {
                    if let Some(snapshot) = snapshot {
                        return Ok((snapshot, Some(delta.encode_to_vec())));
                    }
                }
                _ => {}
            }
        }
        bail!("the control plane closed the sync stream before its configuration held the key")
    });
    wait.await.map_err(|_| {
        anyhow!("the control plane sent no configuration holding the key within 10 s")
    })?
}

/// The edge filter's plugin configuration, as `tokenrouter envoy-bootstrap` writes it for the
/// benchmark's Envoys.
fn edge_configuration(stacks: &Stacks, cp: &super::ControlPlane) -> Result<Value> {
    let bootstrap = stacks.render_tr_bootstrap(cp, "profile", 1, &stacks.paths.wasm())?;
    let yaml = fs::read_to_string(&bootstrap)
        .with_context(|| format!("cannot read {}", bootstrap.display()))?;
    edge_configuration_in(&yaml)
        .ok_or_else(|| anyhow!("no edge configuration in {}", bootstrap.display()))
}

/// The edge's configuration in a bootstrap: a YAML double-quoted scalar holding JSON whose
/// `role` is `edge` (the bootstrap escapes it as a JSON string).
fn edge_configuration_in(yaml: &str) -> Option<Value> {
    yaml.lines().find_map(|line| {
        let quoted = &line[line.find('"')?..];
        let text: String = serde_json::from_str(quoted.trim_end()).ok()?;
        let value: Value = serde_json::from_str(&text).ok()?;
        (value.get("role")? == "edge").then_some(value)
    })
}

/// The benchmark's request as Envoy hands it to the edge (the client's headers and those
/// Envoy's connection manager adds), and the fake provider's answer as the router passes it.
fn case_json(configuration: Value, key: &str) -> Value {
    let body = super::request_body(super::TR_MODEL, false);
    let answer = super::fake::COMPLETION;
    json!({
        "plugin_configuration": configuration,
        "request_headers": [
            [":authority", "127.0.0.1:10000"],
            [":path", "/v1/chat/completions"],
            [":method", "POST"],
            [":scheme", "http"],
            ["content-type", "application/json"],
            ["authorization", format!("Bearer {key}")],
            ["content-length", body.len().to_string()],
            ["x-forwarded-proto", "http"],
            ["x-request-id", "9c1f3a52-6a0e-4d8f-9a57-1f6c2a2b7e10"],
        ],
        "request_body": body,
        "response_headers": [
            [":status", "200"],
            ["content-type", "application/json"],
            ["openai-processing-ms", "1"],
            ["content-length", answer.len().to_string()],
            ["date", "Sun, 06 Dec 2026 22:00:00 GMT"],
            ["x-envoy-upstream-service-time", "1"],
        ],
        "response_body": answer,
    })
}

/// Builds the harness with the `profiling` profile (release with symbols); its path.
fn build_harness(paths: &crate::Paths) -> Result<PathBuf> {
    crate::run(crate::cargo(paths).args(["build", "--profile", "profiling", "-p", HARNESS]))?;
    let binary = paths.target.join("profiling").join(HARNESS);
    if !binary.exists() {
        bail!("build finished but {} is missing", binary.display());
    }
    Ok(binary)
}

/// A callgrind dump (one thread, one event: instructions) as functions' own costs and the
/// costs of their calls.
#[derive(Debug, Default)]
struct CallGraph {
    self_cost: HashMap<String, u64>,
    /// (caller, callee) → instructions of those calls, the callee's callees included.
    calls: HashMap<(String, String), u64>,
}

impl CallGraph {
    fn parse(dump: &str) -> CallGraph {
        let mut graph = CallGraph::default();
        // Compressed names: `fn=(7) name` the first time, `fn=(7)` after.
        let mut names: HashMap<String, String> = HashMap::new();
        let mut name = |spec: &str| -> String {
            let spec = spec.trim();
            match spec.strip_prefix('(').and_then(|s| s.split_once(')')) {
                Some((id, rest)) if !rest.trim().is_empty() => {
                    let rest = rest.trim().to_string();
                    names.insert(id.to_string(), rest.clone());
                    rest
                }
                Some((id, _)) => names.get(id).cloned().unwrap_or_else(|| spec.to_string()),
                None => spec.to_string(),
            }
        };
        let mut current = String::new();
        let mut callee = String::new();
        let mut call_follows = false;
        for line in dump.lines() {
            if let Some(spec) = line.strip_prefix("fn=") {
                current = name(spec);
            } else if let Some(spec) = line.strip_prefix("cfn=") {
                callee = name(spec);
            } else if line.starts_with("calls=") {
                call_follows = true;
            } else if line.starts_with(|c: char| c.is_ascii_digit() || "+-*".contains(c)) {
                let cost: u64 = line
                    .split_whitespace()
                    .last()
                    .and_then(|c| c.parse().ok())
                    .unwrap_or(0);
                if std::mem::take(&mut call_follows) {
                    *graph
                        .calls
                        .entry((current.clone(), callee.clone()))
                        .or_default() += cost;
                } else {
                    *graph.self_cost.entry(current.clone()).or_default() += cost;
                }
            }
        }
        graph
    }

    /// The figures per request: the harness calls the filter's callbacks (`proxy_on_*`), the
    /// filter calls the host's functions (the other `proxy_*`).
    fn figures(&self, requests: u32) -> ProfileFigures {
        let per = |x: u64| x as f64 / f64::from(requests.max(1));
        let harness = |f: &str| f.starts_with("tokenrouter_filter_prof::");
        let host = |f: &str| f.starts_with("proxy_") && !f.starts_with("proxy_on_");
        // The harness's own functions run outside the filter, as do the host's.
        let outside = |f: &str| harness(f) || host(f);
        let mut callbacks: BTreeMap<String, u64> = BTreeMap::new();
        let mut host_total = 0;
        // A function's instructions on the host's side: its cost when the host called it
        // (the filter's allocator, when the host hands the filter memory, stays the filter's).
        let mut incoming: HashMap<&str, (u64, u64)> = HashMap::new();
        for ((caller, callee), cost) in &self.calls {
            if harness(caller) && callee.starts_with("proxy_on_") {
                *callbacks.entry(callee.clone()).or_default() += cost;
            }
            if !host(caller) && host(callee) {
                host_total += cost;
            }
            let entry = incoming.entry(callee.as_str()).or_default();
            entry.0 += cost;
            if outside(caller) && !callee.starts_with("proxy_on_") {
                entry.1 += cost;
            }
        }
        let filter_total = callbacks.values().sum::<u64>().saturating_sub(host_total);
        // Shared functions (the allocator, memcpy) count for the filter in the share of their
        // callers inside it.
        let mut self_cost: Vec<(String, f64)> = self
            .self_cost
            .iter()
            .filter(|(f, _)| !outside(f))
            .map(|(f, &cost)| {
                let share = match incoming.get(f.as_str()) {
                    Some(&(all, out)) if all > 0 => 1.0 - out as f64 / all as f64,
                    _ => 1.0,
                };
                (f.clone(), per(cost) * share)
            })
            .filter(|(_, cost)| *cost > 0.0)
            .collect();
        sort(&mut self_cost);
        self_cost.truncate(TOP);
        let ours =
            |f: &str| f.contains("tokenrouter_filter::") || f.contains("tokenrouter_engine::");
        let mut inclusive: Vec<(String, f64)> = self
            .self_cost
            .keys()
            .chain(self.calls.keys().map(|(caller, _)| caller))
            .filter(|f| ours(f) && !harness(f))
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .map(|f| {
                let own = self.self_cost.get(f).copied().unwrap_or(0);
                let called: u64 = self
                    .calls
                    .iter()
                    .filter(|((caller, callee), _)| caller == f && callee != f)
                    .map(|(_, cost)| cost)
                    .sum();
                (f.clone(), per(own + called))
            })
            .collect();
        sort(&mut inclusive);
        inclusive.truncate(TOP);
        let mut callbacks: Vec<(String, f64)> =
            callbacks.into_iter().map(|(f, c)| (f, per(c))).collect();
        sort(&mut callbacks);
        ProfileFigures {
            requests,
            log: Vec::new(),
            filter: per(filter_total),
            host: per(host_total),
            callbacks,
            self_cost,
            inclusive,
        }
    }
}

fn sort(rows: &mut [(String, f64)]) {
    rows.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
}

/// A function's name for a table: Rust's paths as they are, `|` escaped.
fn shown(name: &str) -> String {
    format!("`{}`", name.replace('`', "'").replace('|', "\\|"))
}

impl ProfileFigures {
    pub fn render(&self, md: &mut String) {
        let _ = writeln!(
            md,
            "## The filter's instructions by function (`valgrind --tool=callgrind`, native build)\n\n\
             The edge filter's Rust built for x86-64 with the release profile (`--profile \
             profiling`: symbols kept) and driven by `{HARNESS}`, which plays Envoy's side of \
             the proxy-wasm ABI, through the benchmark's request: the `tr` control plane's \
             snapshot and key delta (taken over FilterSync), the request with the headers Envoy passes on, \
             the fake provider's answer, and the edge's tick every {TICK_EVERY} requests. \
             {} requests counted after {WARM_UP}. Native code is not V8's code: these are \
             the proportions of the filter's own work, not its cost inside Envoy (the \
             instructions table has that).\n"
            ,
            self.requests,
        );
        let _ = writeln!(
            md,
            "Per request: **{:.0} instructions in the filter**, {:.0} on the host's side \
             (the harness's `proxy_*` functions, which Envoy's differ from).\n",
            self.filter, self.host
        );
        let calls: Vec<String> = self
            .log
            .iter()
            .filter_map(|line| line.strip_prefix("host call "))
            .filter_map(|call| call.split_once(": "))
            .map(|(name, per)| format!("`{name}` {}", per.trim_end_matches(" per request")))
            .collect();
        if !calls.is_empty() {
            let _ = writeln!(md, "Host calls per request: {}.\n", calls.join(", "));
        }
        let _ = writeln!(
            md,
            "| callback (host calls included) | instructions/request |\n| --- | --- |"
        );
        for (callback, cost) in &self.callbacks {
            let _ = writeln!(md, "| `{callback}` | {cost:.0} |");
        }
        let share = |cost: f64| {
            if self.filter > 0.0 {
                format!("{:.1} %", 100.0 * cost / self.filter)
            } else {
                "—".into()
            }
        };
        let _ = writeln!(
            md,
            "\nThe {TOP} functions with the most instructions of their own (after inlining; a \
             shared function such as the allocator counts its calls from the filter only):\n\n\
             | function | instructions/request | of the filter's |\n| --- | --- | --- |"
        );
        for (f, cost) in &self.self_cost {
            let _ = writeln!(md, "| {} | {cost:.0} | {} |", shown(f), share(*cost));
        }
        let _ = writeln!(
            md,
            "\nThe filter's and the engine's {TOP} functions with the most instructions, what \
             they call included:\n\n\
             | function | instructions/request | of the filter's |\n| --- | --- | --- |"
        );
        for (f, cost) in &self.inclusive {
            let _ = writeln!(md, "| {} | {cost:.0} | {} |", shown(f), share(*cost));
        }
        md.push('\n');
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_edge_configuration_is_read_from_the_bootstrap() {
        let yaml = "      configuration:\n        \"@type\": type.googleapis.com/google.protobuf.StringValue\n        value: \"{\\\"role\\\":\\\"edge\\\",\\\"max_request_body_bytes\\\":10,\\\"token\\\":\\\"t\\\\\\\"q\\\"}\"\n";
        let value = edge_configuration_in(yaml).unwrap();
        assert_eq!(value["role"], "edge");
        assert_eq!(value["token"], "t\"q");
        assert_eq!(
            edge_configuration_in("value: \"{\\\"role\\\":\\\"sync\\\"}\""),
            None
        );
    }

    #[test]
    fn a_dump_gives_the_filter_s_share_apart_from_the_host_s() {
        // The harness calls two callbacks; the filter calls a host function and the
        // allocator, which the host calls too.
        let dump = "events: Ir\n\
            fn=(1) tokenrouter_filter_prof::one_request\n0 10\n\
            cfn=(2) proxy_on_request_headers\ncalls=1 0\n0 700\n\
            cfn=(3) proxy_on_log\ncalls=1 0\n0 300\n\
            fn=(2)\n0 100\n\
            cfn=(4) tokenrouter_filter::edge::Edge::on_headers\ncalls=1 0\n0 600\n\
            fn=(4)\n+2 350\n\
            cfn=(5) proxy_get_header_map_pairs\ncalls=1 0\n0 200\n\
            cfn=(6) malloc\ncalls=2 0\n0 50\n\
            fn=(5)\n0 150\ncfn=(6)\ncalls=1 0\n0 50\n\
            fn=(6)\n0 100\n\
            fn=(3)\n0 300\n";
        let f = CallGraph::parse(dump).figures(2);
        assert_eq!(
            f.callbacks[0],
            ("proxy_on_request_headers".to_string(), 350.0)
        );
        assert_eq!(f.callbacks[1], ("proxy_on_log".to_string(), 150.0));
        // (700 + 300 - 200) / 2
        assert_eq!(f.filter, 400.0);
        assert_eq!(f.host, 100.0);
        // malloc: half its calls come from the host's function.
        let malloc = f.self_cost.iter().find(|(n, _)| n == "malloc").unwrap();
        assert_eq!(malloc.1, 25.0);
        assert!(f.self_cost.iter().all(|(n, _)| !n.starts_with("proxy_get")));
        assert_eq!(
            f.inclusive,
            vec![(
                "tokenrouter_filter::edge::Edge::on_headers".to_string(),
                300.0
            )]
        );
    }
}
