//! What a wasm VM is to the filter, a thread is here: each of Envoy's threads that runs the
//! filter has its own proxy-wasm dispatcher (the SDK keeps it in a thread local), its own root
//! contexts (one per filter configuration, as one VM has one per plugin) and its own caches
//! (`tokenrouter_filter::vm`'s thread locals). This module keeps the rest of that thread's host
//! state: which stream's callback runs, which root is being configured, the replies and resumes
//! to make once the filter's callback has returned, and the roots' ticks.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use crate::control::SyncLink;
use crate::envoy::{self, EnvoyPtr, Scheduler};

/// One filter configuration (Envoy's, for this module), shared by every thread.
pub struct Config {
    /// Distinguishes configurations on a thread (roots are per configuration).
    pub key: usize,
    /// The proxy-wasm plugin configuration the filter's root reads.
    pub plugin: Arc<[u8]>,
}

struct RootEntry {
    config: usize,
    id: u32,
    tick_ms: u64,
    next_tick: Option<Instant>,
}

/// A call into Envoy that must wait until the filter's callback has returned: Envoy may call
/// the filter again from inside it (a local reply runs the response path), and the SDK's
/// dispatcher is not re-entrant. Envoy's wasm host defers the same calls.
pub enum Deferred {
    LocalReply {
        status: u32,
        headers: Vec<(Vec<u8>, Vec<u8>)>,
        body: Vec<u8>,
        details: Vec<u8>,
    },
    ContinueRequest,
    ContinueResponse,
}

#[derive(Default)]
pub struct Host {
    booted: bool,
    next_id: u32,
    roots: Vec<RootEntry>,
    /// The stream whose callback runs; null outside one.
    pub filter: EnvoyPtr,
    /// The root whose configuration runs, and its plugin configuration.
    pub configuring: Option<(u32, Arc<[u8]>)>,
    /// The gRPC message (or the close's status) being delivered.
    pub grpc_message: Vec<u8>,
    pub grpc_status: (u32, String),
    pub deferred: Vec<Deferred>,
    /// The running callback wrote to the request's headers: Envoy must pick the route again.
    pub request_headers_changed: bool,
    /// On the control thread only: its streams to the control plane.
    pub sync: Option<SyncLink>,
    /// Schedulers of this thread's streams that made gRPC calls, by Envoy's stream pointer.
    pub schedulers: HashMap<usize, Arc<Scheduler>>,
    /// Envoy's pointers of this thread's streams not destroyed yet.
    pub live: Vec<EnvoyPtr>,
    /// The armed tick: the live stream whose scheduler carries it, and that scheduler.
    pub timer: Option<(EnvoyPtr, Arc<Scheduler>)>,
    /// The last [`RETIRED`] generation this thread looked at.
    retired_seen: usize,
}

/// Configurations Envoy destroyed, whose roots each thread drops at its next stream.
static RETIRED: Mutex<Vec<usize>> = Mutex::new(Vec::new());
static RETIRED_GENERATION: AtomicUsize = AtomicUsize::new(0);

/// Marks a configuration destroyed (Envoy's main thread).
pub fn retire(config: usize) {
    RETIRED
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(config);
    RETIRED_GENERATION.fetch_add(1, Ordering::Release);
}

/// Drops this thread's roots of destroyed configurations (their streams have all ended: Envoy
/// destroys a configuration after its last stream).
fn drop_retired() {
    let generation = RETIRED_GENERATION.load(Ordering::Acquire);
    if with(|h| h.retired_seen) == generation {
        return;
    }
    let retired = RETIRED
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    let gone: Vec<u32> = with(|h| {
        h.retired_seen = generation;
        let (gone, kept) = std::mem::take(&mut h.roots)
            .into_iter()
            .partition(|r| retired.contains(&r.config));
        h.roots = kept;
        gone.into_iter().map(|r: RootEntry| r.id).collect()
    });
    for id in gone {
        crate::sdk::done(id);
        crate::sdk::delete(id);
    }
}

thread_local! {
    static HOST: RefCell<Host> = RefCell::new(Host::default());
}

/// Runs `f` on this thread's host state. Never call the filter from inside `f`: the filter's
/// host calls come back here.
pub fn with<T>(f: impl FnOnce(&mut Host) -> T) -> T {
    HOST.with(|h| f(&mut h.borrow_mut()))
}

impl Host {
    fn next_id(&mut self) -> u32 {
        self.next_id = self.next_id.wrapping_add(1).max(1);
        self.next_id
    }

    /// Sets the tick period of the root being configured.
    pub fn set_tick(&mut self, period_ms: u32) {
        let Some((id, _)) = self.configuring else {
            return;
        };
        if let Some(root) = self.roots.iter_mut().find(|r| r.id == id) {
            root.tick_ms = u64::from(period_ms);
            root.next_tick = (period_ms > 0)
                .then(|| Instant::now() + std::time::Duration::from_millis(root.tick_ms));
        }
    }

    pub fn tick_ms(&self, root: u32) -> u64 {
        self.roots
            .iter()
            .find(|r| r.id == root)
            .map_or(0, |r| r.tick_ms)
    }
}

/// This thread's root for `config`, created (and configured) on first use.
pub fn root(config: &Config) -> u32 {
    let existing = with(|h| {
        h.roots
            .iter()
            .find(|r| r.config == config.key)
            .map(|r| r.id)
    });
    if let Some(id) = existing {
        return id;
    }
    let (id, boot) = with(|h| {
        let boot = !std::mem::replace(&mut h.booted, true);
        let id = h.next_id();
        h.roots.push(RootEntry {
            config: config.key,
            id,
            tick_ms: 0,
            next_tick: None,
        });
        h.configuring = Some((id, Arc::clone(&config.plugin)));
        (id, boot)
    });
    if boot {
        proxy_wasm::set_root_context(|_| -> Box<dyn proxy_wasm::traits::RootContext> {
            Box::new(tokenrouter_filter::root::Root::default())
        });
    }
    crate::sdk::context_create(id, 0);
    let started = crate::sdk::vm_start(id, 0) && crate::sdk::configure(id, config.plugin.len());
    with(|h| h.configuring = None);
    if !started {
        // The root stays unconfigured: its streams are answered 503, as the wasm filter's.
        log::error!("the filter's configuration was refused (root {id})");
    }
    id
}

/// A new stream context under `root`.
pub fn new_context(root: u32) -> u32 {
    let id = with(Host::next_id);
    crate::sdk::context_create(id, root);
    id
}

/// Runs the ticks that are due on this thread. A worker has no timer of its own here, so its
/// roots tick when a stream's callback finds them due (a worker with no traffic does not tick;
/// it refreshes its configuration before it serves its next request).
pub fn tick_due() {
    drop_retired();
    let now = Instant::now();
    let due: Vec<u32> = with(|h| {
        h.roots
            .iter_mut()
            .filter_map(|r| {
                let next = r.next_tick?;
                (now >= next).then(|| {
                    r.next_tick = Some(now + std::time::Duration::from_millis(r.tick_ms));
                    r.id
                })
            })
            .collect()
    });
    for id in due {
        crate::sdk::tick(id);
    }
}

/// The event id of the tick a live stream's scheduler carries (calls use `u32` tokens).
pub const TICK_EVENT: u64 = u64::MAX;
/// How soon an armed tick comes: the edge's tick period.
const TICK_AFTER: std::time::Duration = std::time::Duration::from_millis(20);

/// Arms this thread's tick unless it is armed: a worker has no timer of its own here, so the
/// tick rides on one of its live streams' schedulers, committed by the control thread after
/// [`TICK_AFTER`]. With no live stream, nothing is armed (and nothing waits: the last stream's
/// end sends the held records).
pub fn arm_tick() {
    let carrier = with(|h| match h.timer {
        Some(_) => None,
        None => h.live.last().copied(),
    });
    let Some(carrier) = carrier else {
        return;
    };
    let Some(scheduler) = Scheduler::new(carrier).map(Arc::new) else {
        return;
    };
    if crate::control::after(TICK_AFTER, Arc::clone(&scheduler), TICK_EVENT) {
        with(|h| h.timer = Some((carrier, scheduler)));
    }
}

/// The armed tick came (on its carrier's worker): the due ticks run, and the next is armed
/// while streams are live.
pub fn on_tick_event() {
    with(|h| h.timer = None);
    tick_due();
    arm_tick();
}

/// Runs a callback of the filter for the stream `filter`, then what it deferred.
pub fn in_stream<T>(filter: EnvoyPtr, f: impl FnOnce() -> T) -> T {
    let previous = with(|h| std::mem::replace(&mut h.filter, filter));
    let out = f();
    let (deferred, changed) = with(|h| {
        h.filter = previous;
        (
            std::mem::take(&mut h.deferred),
            std::mem::take(&mut h.request_headers_changed),
        )
    });
    if changed {
        envoy::clear_route_cache(filter);
    }
    for d in deferred {
        envoy::run_deferred(filter, d);
    }
    out
}
