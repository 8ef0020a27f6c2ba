//! Drives the edge filter, linked natively, through requests as Envoy would, so that callgrind
//! can count its own instructions by function (Envoy's V8 gives callgrind no names for the
//! code it compiles). `cargo xtask bench --only profile` records the case and reads the counts.
//!
//! ```text
//! tokenrouter-filter-prof <case dir> [--warm-up N] [--requests N] [--tick-every N]
//! ```
//!
//! The case directory holds `case.json` (the edge's plugin configuration, one request's
//! headers and body, the provider's answer) and `snapshot.pb`, the control plane's encoded
//! `config.v1.Snapshot`, and `key_delta.pb` when keys changed after it (a `config.v1.KeyDelta`
//! the edge applies on top). Every request must be routed and answered 200 through the filter:
//! a local reply, a request left unrouted or a warning logged stops the run (a profile of an
//! error path would be no profile of the benchmark's request).
//!
//! Only [`counted_requests`] is of interest to callgrind (`--toggle-collect`); the host's
//! side (the `proxy_*` functions in [`host`]) is counted apart by name.

mod host;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use prost::Message;
use proxy_wasm::types::{Action, LogLevel};
use serde::Deserialize;
use tokenrouter_proto::config::v1::{KeyDelta, Snapshot};

use crate::host::HOST;

/// The VM's allocator, as in the wasm build.
// SAFETY: the harness has one thread (it starts none).
#[global_allocator]
static ALLOCATOR: tokenrouter_filter::alloc::Pools =
    unsafe { tokenrouter_filter::alloc::Pools::new(std::alloc::System) };

/// The filter's exports (the proxy-wasm SDK's dispatcher), called as Envoy calls them.
pub(crate) mod vm {
    use proxy_wasm::types::Action;

    extern "C" {
        pub fn proxy_on_memory_allocate(size: usize) -> *mut u8;
        pub fn proxy_on_context_create(context_id: u32, root_context_id: u32);
        pub fn proxy_on_vm_start(context_id: u32, vm_configuration_size: usize) -> bool;
        pub fn proxy_on_configure(context_id: u32, plugin_configuration_size: usize) -> bool;
        pub fn proxy_on_tick(context_id: u32);
        pub fn proxy_on_request_headers(
            context_id: u32,
            num_headers: usize,
            end_of_stream: bool,
        ) -> Action;
        pub fn proxy_on_request_body(
            context_id: u32,
            body_size: usize,
            end_of_stream: bool,
        ) -> Action;
        pub fn proxy_on_response_headers(
            context_id: u32,
            num_headers: usize,
            end_of_stream: bool,
        ) -> Action;
        pub fn proxy_on_response_body(
            context_id: u32,
            body_size: usize,
            end_of_stream: bool,
        ) -> Action;
        pub fn proxy_on_log(context_id: u32);
        pub fn proxy_on_done(context_id: u32) -> bool;
        pub fn proxy_on_delete(context_id: u32);
    }
}

/// One request as Envoy hands it to the edge, and the provider's answer.
#[derive(Deserialize)]
struct Case {
    plugin_configuration: serde_json::Value,
    request_headers: Vec<(String, String)>,
    request_body: String,
    response_headers: Vec<(String, String)>,
    response_body: String,
}

struct Options {
    dir: PathBuf,
    warm_up: u32,
    requests: u32,
    tick_every: u32,
}

/// The root context's id (Envoy's first context of a plugin).
const ROOT: u32 = 1;

/// Simulated time between requests: a worker at 5 000 requests/s.
const REQUEST_NS: u64 = 200_000;

/// The header the edge names its cluster in (the route picks the cluster from it).
const CLUSTER_HEADER: &str = "x-tr-cluster";

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tokenrouter-filter-prof: {e}");
            ExitCode::FAILURE
        }
    }
}

fn options() -> Result<Options, String> {
    let mut args = std::env::args().skip(1);
    let mut dir = None;
    let mut o = Options {
        dir: PathBuf::new(),
        warm_up: 200,
        requests: 1_000,
        tick_every: 100,
    };
    while let Some(arg) = args.next() {
        let mut number = |name: &str| -> Result<u32, String> {
            args.next()
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| format!("{name} takes a number"))
        };
        match arg.as_str() {
            "--warm-up" => o.warm_up = number("--warm-up")?,
            "--requests" => o.requests = number("--requests")?.max(1),
            "--tick-every" => o.tick_every = number("--tick-every")?,
            _ if dir.is_none() && !arg.starts_with('-') => dir = Some(PathBuf::from(arg)),
            _ => return Err(format!("unexpected argument {arg:?}")),
        }
    }
    o.dir = dir.ok_or(
        "usage: tokenrouter-filter-prof <case dir> [--warm-up N] [--requests N] [--tick-every N]",
    )?;
    Ok(o)
}

fn read(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

fn run() -> Result<(), String> {
    let o = options()?;
    let case: Case = serde_json::from_slice(&read(&o.dir.join("case.json"))?)
        .map_err(|e| format!("case.json: {e}"))?;
    let snapshot_bytes = read(&o.dir.join("snapshot.pb"))?;
    let snapshot = Snapshot::decode(snapshot_bytes.as_slice())
        .map_err(|e| format!("snapshot.pb is no config.v1.Snapshot: {e}"))?;
    let delta_file = o.dir.join("key_delta.pb");
    let delta = if delta_file.exists() {
        let delta = KeyDelta::decode(read(&delta_file)?.as_slice())
            .map_err(|e| format!("key_delta.pb is no config.v1.KeyDelta: {e}"))?;
        Some(delta)
    } else {
        None
    };
    start_vm(&case, &snapshot, snapshot_bytes, delta)?;

    let mut next_context = ROOT + 1;
    let mut sent = 0u32;
    let mut drive = |n: u32, count: bool| -> Result<(), String> {
        let prepared: Vec<Prepared> = (0..n).map(|_| Prepared::new(&case)).collect();
        let mut finished: Vec<Finished> = Vec::with_capacity(2 * prepared.len());
        let requests = || -> Result<(), String> {
            for p in prepared {
                one_request(p, next_context, &mut finished)?;
                next_context += 1;
                sent += 1;
                if o.tick_every > 0 && sent.is_multiple_of(o.tick_every) {
                    unsafe { vm::proxy_on_tick(ROOT) };
                }
            }
            Ok(())
        };
        if count {
            counted_requests(requests)
        } else {
            requests()
        }
    };
    drive(o.warm_up, false)?;
    HOST.with(|h| h.borrow_mut().calls.clear());
    drive(o.requests, true)?;
    report(&o, &snapshot)
}

/// The measured requests: callgrind counts only inside this function
/// (`--toggle-collect=*counted_requests*`).
#[inline(never)]
fn counted_requests(requests: impl FnOnce() -> Result<(), String>) -> Result<(), String> {
    requests()
}

/// Loads the snapshot into shared data as the sync singleton leaves it, and configures the
/// edge's root context.
fn start_vm(
    case: &Case,
    snapshot: &Snapshot,
    bytes: Vec<u8>,
    delta: Option<KeyDelta>,
) -> Result<(), String> {
    let delta = delta.unwrap_or(KeyDelta {
        schema: snapshot.schema,
        base_version: snapshot.version,
        version: snapshot.version,
        keys: Vec::new(),
    });
    let version = delta.version;
    let configuration = serde_json::to_vec(&case.plugin_configuration)
        .map_err(|e| format!("plugin configuration: {e}"))?;
    let size = configuration.len();
    HOST.with(|h| {
        let mut h = h.borrow_mut();
        h.now_ns = 1_764_900_000_000_000_000;
        h.plugin_configuration = configuration;
        let shared = &mut h.shared_data;
        shared.insert(tokenrouter_filter::SNAPSHOT_KEY.into(), (bytes, 1));
        shared.insert(
            tokenrouter_filter::KEY_DELTA_KEY.into(),
            (delta.encode_to_vec(), 1),
        );
        shared.insert(
            tokenrouter_filter::SNAPSHOT_VERSION_KEY.into(),
            (version.to_le_bytes().to_vec(), 1),
        );
    });
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn proxy_wasm::traits::RootContext> {
        Box::new(tokenrouter_filter::root::Root::default())
    });
    let configured = unsafe {
        vm::proxy_on_context_create(ROOT, 0);
        vm::proxy_on_vm_start(ROOT, 0) && vm::proxy_on_configure(ROOT, size)
    };
    if !configured {
        return Err(format!(
            "the edge refused its configuration: {}",
            warnings()
        ));
    }
    Ok(())
}

fn warnings() -> String {
    HOST.with(|h| h.borrow().warnings.join("; "))
}

fn pairs(headers: &[(String, String)]) -> Vec<(String, Vec<u8>)> {
    headers
        .iter()
        .map(|(n, v)| (n.clone(), v.as_bytes().to_vec()))
        .collect()
}

fn header(map: &[(String, Vec<u8>)], name: &str) -> Option<String> {
    map.iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
}

/// One request's maps and bodies, built before the measured requests so that the harness
/// allocates nothing of its own while callgrind counts.
struct Prepared {
    request_headers: Vec<(String, Vec<u8>)>,
    request_body: Vec<u8>,
    response_headers: Vec<(String, Vec<u8>)>,
    response_body: Vec<u8>,
}

impl Prepared {
    fn new(case: &Case) -> Prepared {
        Prepared {
            request_headers: pairs(&case.request_headers),
            request_body: case.request_body.as_bytes().to_vec(),
            response_headers: pairs(&case.response_headers),
            response_body: case.response_body.as_bytes().to_vec(),
        }
    }
}

/// What the host held for a finished request, dropped after the measured requests.
type Finished = (Vec<(String, Vec<u8>)>, Vec<u8>);

/// One request through the edge's callbacks, in Envoy's order, checked to have been routed
/// and answered.
fn one_request(p: Prepared, context: u32, finished: &mut Vec<Finished>) -> Result<(), String> {
    let (request_headers, request_size) = (p.request_headers.len(), p.request_body.len());
    let (response_headers, response_size) = (p.response_headers.len(), p.response_body.len());
    HOST.with(|h| {
        let mut h = h.borrow_mut();
        h.now_ns += REQUEST_NS;
        let headers = std::mem::replace(&mut h.request_headers, p.request_headers);
        let body = std::mem::replace(&mut h.request_body, p.request_body);
        finished.push((headers, body));
        let headers = std::mem::take(&mut h.response_headers);
        let body = std::mem::take(&mut h.response_body);
        finished.push((headers, body));
    });
    let request = unsafe {
        vm::proxy_on_context_create(context, ROOT);
        let headers = vm::proxy_on_request_headers(context, request_headers, false);
        let body = vm::proxy_on_request_body(context, request_size, true);
        (headers, body)
    };
    check(context, "request body", request.1)?;
    let routed = HOST.with(|h| {
        h.borrow()
            .request_headers
            .iter()
            .any(|(n, _)| n == CLUSTER_HEADER)
    });
    if !routed {
        return Err(format!(
            "request {context} was not routed (no {CLUSTER_HEADER}); request headers: {:?}",
            HOST.with(|h| h.borrow().request_headers.clone())
        ));
    }
    HOST.with(|h| {
        let mut h = h.borrow_mut();
        h.response_headers = p.response_headers;
        h.response_body = p.response_body;
    });
    // A direct request's answer is held (its headers paused) until its body is whole and
    // judged: the body's callback lets both go on.
    let response = unsafe {
        vm::proxy_on_response_headers(context, response_headers, false);
        check(context, "response headers", Action::Continue)?;
        vm::proxy_on_response_body(context, response_size, true)
    };
    check(context, "response body", response)?;
    unsafe {
        vm::proxy_on_log(context);
        vm::proxy_on_done(context);
        vm::proxy_on_delete(context);
    }
    let answered = HOST.with(|h| {
        h.borrow()
            .response_headers
            .iter()
            .any(|(n, v)| n == ":status" && v == b"200")
    });
    if !answered {
        let status = HOST.with(|h| header(&h.borrow().response_headers, ":status"));
        return Err(format!("request {context} was answered {status:?}"));
    }
    Ok(())
}

/// A callback's answer must let the request go on, and nothing may have gone wrong.
fn check(context: u32, callback: &str, action: Action) -> Result<(), String> {
    HOST.with(|h| {
        let h = h.borrow();
        if let Some((status, body)) = h.local_replies.first() {
            return Err(format!(
                "request {context}: the edge replied {status} itself: {}",
                String::from_utf8_lossy(body)
            ));
        }
        if !h.warnings.is_empty() {
            return Err(format!(
                "request {context}: the edge warned: {}",
                h.warnings.join("; ")
            ));
        }
        Ok(())
    })?;
    if !matches!(action, Action::Continue) {
        return Err(format!("request {context}: {callback} paused the stream"));
    }
    Ok(())
}

/// What the run did, for the log of `--only profile` (the instruction counts are callgrind's).
fn report(o: &Options, snapshot: &Snapshot) -> Result<(), String> {
    HOST.with(|h| {
        let h = h.borrow();
        if h.usage_messages == 0 {
            return Err("no usage record reached the usage queue".to_string());
        }
        println!(
            "snapshot {}: {} keys, {} firewall rules, {} routing rules, {} models",
            snapshot.version,
            snapshot.keys.len(),
            snapshot.firewall_rules.len(),
            snapshot.routing_rules.len(),
            snapshot.models.len()
        );
        println!(
            "{} measured requests after {} warm-up, a tick every {} requests",
            o.requests, o.warm_up, o.tick_every
        );
        println!(
            "usage queue: {} messages, {} bytes",
            h.usage_messages, h.usage_bytes
        );
        for (name, n) in &h.calls {
            println!(
                "host call {name}: {:.2} per request",
                *n as f64 / f64::from(o.requests)
            );
        }
        for (path, n) in &h.unknown_properties {
            println!("property {path} (not set by this host): asked {n} times");
        }
        Ok(())
    })
}
