//! The edge's counters in Envoy's own stats (`/stats`, `/stats/prometheus`).
//!
//! The filter names a counter when it first counts (`proxy_define_metric`), but the ABI lets a
//! module define Envoy counters only while Envoy creates its configuration. So every edge
//! configuration defines them all up front, in one order: the five request counters by their
//! names, and the five per-model counters as counter vecs labelled `provider` and `model`
//! (Envoy makes a counter per pair of label values on its first increment). A filter name is
//! mapped once, when it is defined, to its Envoy counter ([`target`]).
//!
//! Workers count only in the module (one atomic add, `crate::shared`): an increment of a
//! labelled Envoy counter builds its tags' stat names every time, ≈ 3 000 of Envoy's
//! instructions, four of them a request. Instead the sync thread, on its tick, asks Envoy's
//! main thread (through an edge configuration's scheduler) to add what each counter gained
//! since it was last given to Envoy ([`request_flush`], [`flush`]); Envoy's stats trail the
//! module's by one tick (100 ms) at most.
//!
//! Envoy names a labelled counter `<name>.<label>.<value>…` in `/stats` and gives its labels
//! to Prometheus, so the per-model counters read
//! `tokenrouter.by_model.requests.provider.<provider>.model.<model>` (the wasm filter's
//! `tokenrouter.provider.<provider>.model.<model>.requests`), and
//! `tokenrouter_by_model_requests{provider="…",model="…"}` in Prometheus. Envoy puts its
//! `dynamicmodulescustom.` namespace in front, as it puts `wasmcustom.` in front of the wasm
//! filter's. The sync singleton's own counters (`usage_dropped`, `snapshots_refused`) stay in
//! the module.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, Ordering};
use std::sync::{Mutex, PoisonError};

use crate::envoy::{self, Buffer, ConfigScheduler, EnvoyPtr};
use crate::shared::{self, MAX_METRICS};

/// The request counters, by the names the filter gives them; Envoy's counter ids 1 to 5, in
/// order.
const REQUEST_COUNTERS: [&str; 5] = [
    "tokenrouter.requests",
    "tokenrouter.rejected",
    "tokenrouter.fallbacks",
    "tokenrouter.failed_attempts",
    "tokenrouter.firewall_hits",
];

/// The per-model counters' last name part; Envoy's ids 1 to 5 (counter vecs have ids of
/// their own), in order, as counter vecs named `tokenrouter.by_model.<what>`.
const MODEL_COUNTERS: [&str; 5] = [
    "requests",
    "errors",
    "input_tokens",
    "output_tokens",
    "cost_micro_usd",
];

const MODEL_LABELS: [&str; 2] = ["provider", "model"];

/// Whether every edge configuration so far got the ids [`target`] hands out: an increment
/// with an id some configuration gave another counter must not reach Envoy.
static DEFINED_AS_EXPECTED: AtomicBool = AtomicBool::new(true);

/// What each metric had when it was last given to Envoy, by index (written on Envoy's main
/// thread only, in [`flush`]).
static FLUSHED: [AtomicI64; MAX_METRICS] = [const { AtomicI64::new(0) }; MAX_METRICS];

/// Ticks the flush committed to Envoy's main thread has been waiting (0: none is waiting);
/// after [`FLUSH_LOST_AFTER`] it is taken as lost (its configuration went before Envoy ran
/// it) and asked again.
static FLUSH_WAITED: AtomicU32 = AtomicU32::new(0);
const FLUSH_LOST_AFTER: u32 = 10;

/// The live edge configurations' schedulers (by the module's configuration key), the first
/// of which takes the flushes. Held while committing, so that a configuration's scheduler is
/// not deleted under a commit.
static SCHEDULERS: Mutex<Vec<(usize, ConfigScheduler)>> = Mutex::new(Vec::new());

/// Where one of the filter's counters goes in Envoy's stats.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// Envoy's id of the counter, or of the counter vec, in every edge configuration.
    id: usize,
    /// `provider` and `model` label values of a per-model counter.
    labels: Option<(String, String)>,
}

/// Defines the counters in the configuration Envoy is creating (`config`, the module's
/// configuration `key`) and keeps its scheduler for flushes; call it only from
/// `envoy_dynamic_module_on_http_filter_config_new`, for an edge configuration.
pub fn define(config: EnvoyPtr, key: usize) {
    let labels = MODEL_LABELS.map(|l| Buffer::of(l.as_bytes()));
    let plain = (1..).zip(REQUEST_COUNTERS.iter().map(|n| (n.to_string(), false)));
    let vecs = (1..).zip(
        MODEL_COUNTERS
            .iter()
            .map(|what| (format!("tokenrouter.by_model.{what}"), true)),
    );
    for (expected, (name, labelled)) in plain.chain(vecs) {
        let (labels, count) = if labelled {
            (labels.as_ptr(), labels.len())
        } else {
            (std::ptr::null(), 0)
        };
        let got = envoy::define_counter(config, name.as_bytes(), labels, count);
        if got != Some(expected) {
            envoy::log(
                3,
                format!("tokenrouter: Envoy gave counter {name} id {got:?}, not {expected}: the filter's counters stay out of Envoy's stats").as_bytes(),
            );
            DEFINED_AS_EXPECTED.store(false, Ordering::Relaxed);
        }
    }
    if let Some(scheduler) = ConfigScheduler::new(config) {
        schedulers().push((key, scheduler));
    }
}

fn schedulers() -> std::sync::MutexGuard<'static, Vec<(usize, ConfigScheduler)>> {
    SCHEDULERS.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The configuration `key` is gone: its scheduler too.
pub fn forget(key: usize) {
    schedulers().retain(|(k, _)| *k != key);
}

/// On the sync thread's tick: when a counter gained since it was last given to Envoy, asks
/// Envoy's main thread to [`flush`] (once: not again while that one is waiting, unless it
/// waited [`FLUSH_LOST_AFTER`] ticks).
pub fn request_flush() {
    if !DEFINED_AS_EXPECTED.load(Ordering::Relaxed) {
        return;
    }
    let waited = FLUSH_WAITED.load(Ordering::Acquire);
    if waited > 0 && waited <= FLUSH_LOST_AFTER {
        FLUSH_WAITED.store(waited + 1, Ordering::Relaxed);
        return;
    }
    let gained = shared::envoy_targets().any(|(at, value, _)| {
        FLUSHED
            .get(at)
            .is_some_and(|f| value > f.load(Ordering::Relaxed))
    });
    if !gained {
        return;
    }
    let schedulers = schedulers();
    if let Some((_, scheduler)) = schedulers.first() {
        FLUSH_WAITED.store(1, Ordering::Release);
        scheduler.commit(FLUSH_EVENT);
    }
}

/// The event id of a flush on a configuration's scheduler.
pub const FLUSH_EVENT: u64 = 1;

/// On Envoy's main thread, in the configuration `config`'s scheduled event: adds to each of
/// Envoy's counters what the module's gained since the last flush.
pub fn flush(config: EnvoyPtr) {
    FLUSH_WAITED.store(0, Ordering::Release);
    if !DEFINED_AS_EXPECTED.load(Ordering::Relaxed) {
        return;
    }
    for (at, value, target) in shared::envoy_targets() {
        let Some(flushed) = FLUSHED.get(at) else {
            continue;
        };
        let before = flushed.load(Ordering::Relaxed);
        if let Some(gain) = value
            .checked_sub(before)
            .and_then(|g| u64::try_from(g).ok())
            .filter(|g| *g > 0)
        {
            increment(config, target, gain);
            flushed.store(value, Ordering::Relaxed);
        }
    }
}

/// The Envoy counter of the filter's counter `name`: one of [`REQUEST_COUNTERS`], or
/// `tokenrouter.provider.<provider>.model.<model>.<what>` with `<what>` one of
/// [`MODEL_COUNTERS`] (the edge reduces both names to `[A-Za-z0-9_-]`, so dots only separate).
pub fn target(name: &str) -> Option<Target> {
    if let Some(at) = REQUEST_COUNTERS.iter().position(|n| *n == name) {
        return Some(Target {
            id: at + 1,
            labels: None,
        });
    }
    let mut parts = name.split('.');
    let (
        Some("tokenrouter"),
        Some("provider"),
        Some(provider),
        Some("model"),
        Some(model),
        Some(what),
        None,
    ) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    )
    else {
        return None;
    };
    let at = MODEL_COUNTERS.iter().position(|w| *w == what)?;
    Some(Target {
        id: at + 1,
        labels: Some((provider.to_string(), model.to_string())),
    })
}

/// Adds `by` to `target` in Envoy's stats, through the configuration `config`.
fn increment(config: EnvoyPtr, target: &Target, by: u64) {
    match &target.labels {
        Some((provider, model)) => {
            let values = [
                Buffer::of(provider.as_bytes()),
                Buffer::of(model.as_bytes()),
            ];
            envoy::increment_counter(config, target.id, &values, by);
        }
        None => envoy::increment_counter(config, target.id, &[], by),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_names_map_to_envoy_counters() {
        let by_model = |id: usize, p: &str, m: &str| {
            Some(Target {
                id,
                labels: Some((p.to_string(), m.to_string())),
            })
        };
        let cases = [
            (
                "tokenrouter.requests",
                Some(Target {
                    id: 1,
                    labels: None,
                }),
            ),
            (
                "tokenrouter.firewall_hits",
                Some(Target {
                    id: 5,
                    labels: None,
                }),
            ),
            (
                "tokenrouter.provider.openai.model.gpt-4o-mini.requests",
                by_model(1, "openai", "gpt-4o-mini"),
            ),
            (
                "tokenrouter.provider.claude.model.claude-haiku-4-5.input_tokens",
                by_model(3, "claude", "claude-haiku-4-5"),
            ),
            (
                "tokenrouter.provider.p.model.m.cost_micro_usd",
                by_model(5, "p", "m"),
            ),
            // Not the filter's request or model counters.
            ("tokenrouter.usage_dropped", None),
            ("tokenrouter.snapshots_refused", None),
            ("tokenrouter.provider.p.model.m.latency", None),
            ("tokenrouter.provider.p.model.m.requests.x", None),
            ("tokenrouter.provider.p.requests", None),
            ("other.provider.p.model.m.requests", None),
            ("", None),
        ];
        for (name, want) in cases {
            assert_eq!(target(name), want, "{name}");
        }
    }
}
