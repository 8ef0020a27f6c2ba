//! Per-VM state: the decoded snapshot and live provider scores (caches of shared data,
//! refreshed on a tick, so the request path makes no shared-data call) and the usage records
//! waiting for the shared queue.
//!
//! Usage records leave a worker in batches: one shared-queue item (`sync.v1.UsageBatch`) per
//! [`USAGE_BATCH`] records or every [`USAGE_FLUSH_MS`], whichever comes first. Every enqueue
//! wakes the main thread (the sync singleton's VM), so one item per request cost each request
//! about as much as the rest of the filter's work. Within a batch, a run of equal rule traces
//! is sent once when the control plane reads that form (`tokenrouter_proto::trace_runs`).
//!
//! The rule trace is rendered once per distinct trace, not once per request: the VM keeps the
//! last trace it rendered with its texts ([`render_trace`]), and requests decided alike share
//! them (`Rc<str>`). A waiting record holds that shared text and gets its own copy only when
//! its batch is encoded and it starts a run, so a run is recognised by pointer.
//!
//! Every root context of the VM (the edge filter and each provider cluster's upstream filter)
//! shares this through a thread-local; each VM runs on exactly one thread.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;

use prost::Message;
use proxy_wasm::hostcalls;
use tokenrouter_engine::auth::KeyHashCache;
use tokenrouter_engine::routing::trace::Trace;
use tokenrouter_engine::routing::ScoreBoard;
use tokenrouter_engine::{snapshot, Snapshot};
use tokenrouter_proto::config::v1 as pb;
use tokenrouter_proto::sync::v1::{UsageBatch, UsageRecord};
use tokenrouter_proto::trace_runs;

use crate::host;

/// Records kept while the queue cannot be resolved (the sync singleton not up yet).
const MAX_BACKLOG: usize = 10_000;

/// Records per shared-queue item; fewer go once [`USAGE_FLUSH_MS`] passed.
pub const USAGE_BATCH: usize = 64;

/// Longest a record waits in a worker for a batch to fill (checked on the edge's tick).
pub const USAGE_FLUSH_MS: i64 = 100;

/// How often the edge's tick looks for new live scores (they follow the control plane's
/// measurements, which move over seconds; each look is a shared-data read).
pub const SCORES_CHECK_MS: i64 = 100;

#[derive(Default)]
struct VmState {
    snapshot: Option<Rc<Snapshot>>,
    /// The full snapshot `snapshot` was derived from (the same one when no key delta applied).
    base: Option<Rc<Snapshot>>,
    /// Version of `snapshot`, or of the last refused one, so it is not decoded again.
    seen_version: u64,
    scores: Option<Rc<ScoreBoard>>,
    /// Version of `scores`, or of the last undecodable one, so it is not decoded again.
    seen_scores_version: u64,
    queue: Option<u32>,
    backlog: VecDeque<Pending>,
    /// When the edge's tick last queued the backlog (host clock, ms).
    flushed_at_ms: i64,
    /// When a root of this VM last looked for a new configuration version (host clock, ms).
    snapshot_checked_at_ms: i64,
    /// When the edge's tick last looked for new scores (host clock, ms).
    scores_checked_at_ms: i64,
    /// The trace rendered last ([`render_trace`]).
    last_trace: Option<RenderedTrace>,
    /// Digests of the keys that authenticated lately on this worker.
    key_hashes: KeyHashCache,
}

/// A rule trace with its texts: the log row's JSON and the header's.
struct RenderedTrace {
    trace: Trace,
    log: Rc<str>,
    header: Option<Rc<str>>,
}

/// A usage record waiting for its batch. Its rule trace is not in `record` but in `trace`,
/// shared with the request (and with every other request of the same trace) until the batch is
/// encoded ([`encoded_records`]).
struct Pending {
    record: UsageRecord,
    trace: Option<Rc<str>>,
}

impl From<UsageRecord> for Pending {
    /// A record that carries its trace text (one put back after a failed enqueue).
    fn from(mut record: UsageRecord) -> Pending {
        let text = std::mem::take(&mut record.rule_trace);
        Pending {
            record,
            trace: (!text.is_empty()).then(|| Rc::from(text)),
        }
    }
}

thread_local! {
    static STATE: RefCell<VmState> = RefCell::new(VmState::default());
}

/// The current snapshot, if one has arrived.
pub fn snapshot() -> Option<Rc<Snapshot>> {
    STATE.with(|s| s.borrow().snapshot.clone())
}

/// `f` with this worker's cache of key digests (see [`KeyHashCache`]).
pub fn with_key_hashes<T>(f: impl FnOnce(&mut KeyHashCache) -> T) -> T {
    STATE.with(|s| f(&mut s.borrow_mut().key_hashes))
}

/// The live provider scores, if any have arrived.
pub fn scores() -> Option<Rc<ScoreBoard>> {
    STATE.with(|s| s.borrow().scores.clone())
}

/// A version key (8 bytes, little-endian) from shared data.
fn shared_version(key: &str) -> Option<u64> {
    host::shared_data(key)
        .and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok())
        .map(u64::from_le_bytes)
}

/// Whether `period_ms` passed since `*at` (or the clock went back); if so, `*at` becomes `now_ms`.
fn due(at: &mut i64, now_ms: i64, period_ms: i64) -> bool {
    let due = now_ms.saturating_sub(*at) >= period_ms || now_ms < *at;
    if due {
        *at = now_ms;
    }
    due
}

/// [`due`] for one of this VM's timestamps.
fn due_in_state(at: fn(&mut VmState) -> &mut i64, now_ms: i64, period_ms: i64) -> bool {
    STATE.with(|s| due(at(&mut s.borrow_mut()), now_ms, period_ms))
}

/// [`refresh_snapshot`] unless a root of this VM looked less than `period_ms` ago. Each look is
/// a shared-data read (about 9 800 instructions of Envoy's worker, BENCHMARKS.md finding 24),
/// and the upstream filters' roots, one per provider cluster (hundreds with chain clusters),
/// share the VM whose configuration the edge's 20 ms tick already keeps current: their ticks
/// then read nothing, and in a VM without an edge one of them reads for all.
pub fn refresh_snapshot_unless_checked(now_ms: i64, period_ms: i64) {
    if due_in_state(|s| &mut s.snapshot_checked_at_ms, now_ms, period_ms) {
        refresh_snapshot();
    }
}

/// [`refresh_scores`] once [`SCORES_CHECK_MS`] passed since the last look (the edge's tick,
/// which comes more often).
pub fn refresh_scores_when_due(now_ms: i64) {
    if due_in_state(|s| &mut s.scores_checked_at_ms, now_ms, SCORES_CHECK_MS) {
        refresh_scores();
    }
}

/// Re-reads the scores when their version changed. Cheap when it did not (8 bytes). Scores that
/// do not decode are logged and the previous ones kept.
pub fn refresh_scores() {
    let Some(version) = shared_version(crate::SCORES_VERSION_KEY) else {
        return;
    };
    if STATE.with(|s| s.borrow().seen_scores_version) == version {
        return;
    }
    let Some(bytes) = host::shared_data(crate::SCORES_KEY) else {
        return;
    };
    let board = pb::Scores::decode(bytes.as_slice()).map(ScoreBoard::from_proto);
    STATE.with(|s| {
        let mut s = s.borrow_mut();
        s.seen_scores_version = version;
        match board {
            Ok(board) => s.scores = Some(Rc::new(board)),
            Err(e) => {
                log::error!("scores version {version} undecodable, keeping the previous: {e}")
            }
        }
    });
}

/// Re-reads shared data when its version changed. Cheap when it did not (8 bytes).
///
/// The configuration is the full snapshot in shared data with the key delta beside it applied
/// (an empty one after a full snapshot). A delta that applies to the full snapshot this worker
/// already decoded costs only its own keys: the snapshot (10 MB at 100 000 keys) is decoded
/// again only when the control plane sent a new one.
pub fn refresh_snapshot() {
    let Some(version) = shared_version(crate::SNAPSHOT_VERSION_KEY) else {
        return;
    };
    if STATE.with(|s| s.borrow().seen_version) == version {
        return;
    }
    let delta = host::shared_data(crate::KEY_DELTA_KEY)
        .and_then(|bytes| match pb::KeyDelta::decode(bytes.as_slice()) {
            Ok(delta) => Some(delta),
            Err(e) => {
                log::error!("key delta undecodable, ignored: {e}");
                None
            }
        })
        .filter(|d| d.version > 0);
    let applies = |base: &Snapshot| {
        delta
            .as_ref()
            .is_some_and(|d| snapshot::key_delta_applies(d, base.version))
    };
    let held = STATE.with(|s| s.borrow().base.clone());
    // Read after the delta: the sync singleton writes the snapshot first, so this one is the
    // delta's or newer.
    let base = match &held {
        Some(base) if applies(base) => base.clone(),
        _ => {
            let Some(bytes) = host::shared_data(crate::SNAPSHOT_KEY) else {
                return;
            };
            match Snapshot::decode_after(&bytes, held.as_deref()) {
                Ok(snap) => Rc::new(snap),
                Err(e) => {
                    log::error!(
                        "snapshot version {version} refused, keeping the previous one: {e}"
                    );
                    STATE.with(|s| s.borrow_mut().seen_version = version);
                    return;
                }
            }
        }
    };
    let current = match delta {
        Some(delta) if applies(&base) => {
            let delta_version = delta.version;
            match base.with_key_delta(delta) {
                Ok(snap) => Rc::new(snap),
                Err(e) => {
                    log::error!(
                        "key delta {delta_version} refused, keeping the previous configuration: \
                         {e}"
                    );
                    STATE.with(|s| s.borrow_mut().seen_version = version);
                    return;
                }
            }
        }
        // No delta, or one for an older snapshot than the one just read (a newer snapshot
        // came after it).
        _ => base.clone(),
    };
    STATE.with(|s| {
        let mut s = s.borrow_mut();
        // The version key is written last; use the configuration's own version.
        s.seen_version = current.version;
        s.base = Some(base);
        s.snapshot = Some(current);
    });
}

/// The log row's and the header's text of `trace` ([`Trace::render`]). Rendered only when it
/// differs from the trace this VM rendered last; otherwise that one's texts are shared.
pub fn render_trace(trace: Trace) -> (Rc<str>, Option<Rc<str>>) {
    STATE.with(|s| {
        let mut s = s.borrow_mut();
        if let Some(last) = s.last_trace.as_ref().filter(|last| last.trace == trace) {
            return (Rc::clone(&last.log), last.header.clone());
        }
        // Usually the header is the log row's text: one copy serves both.
        let (log, header) = trace.render_shared();
        s.last_trace = Some(RenderedTrace {
            trace,
            log: Rc::clone(&log),
            header: header.clone(),
        });
        (log, header)
    })
}

/// Hands a usage record and its rule trace (not in the record) to the sync singleton: queued
/// at once when a batch is full, else by the edge's tick ([`flush_usage_backlog_when_due`]).
pub fn enqueue_usage(record: UsageRecord, trace: Option<Rc<str>>) {
    STATE.with(|s| {
        let mut s = s.borrow_mut();
        s.backlog.push_back(Pending { record, trace });
        if s.backlog.len() > MAX_BACKLOG {
            s.backlog.pop_front();
            log::warn!("usage backlog full: dropped the oldest record");
        }
        if s.backlog.len() >= USAGE_BATCH {
            flush_backlog(&mut s);
        }
    });
}

/// Queues every record held (the VM's shutdown).
pub fn flush_usage_backlog() {
    STATE.with(|s| flush_backlog(&mut s.borrow_mut()));
}

/// Queues every record held once [`USAGE_FLUSH_MS`] passed since the last time (the edge's
/// tick, which comes more often).
pub fn flush_usage_backlog_when_due(now_ms: i64) {
    STATE.with(|s| {
        let mut s = s.borrow_mut();
        // A clock that went back does not hold the records until it catches up.
        if due(&mut s.flushed_at_ms, now_ms, USAGE_FLUSH_MS) {
            flush_backlog(&mut s);
        }
    });
}

/// Records idle native workers handed over ([`park_usage_backlog`]), with their traces in them,
/// and whether the snapshot of the last one to park accepted runs of equal traces.
static PARKED: std::sync::Mutex<(Vec<UsageRecord>, bool)> =
    std::sync::Mutex::new((Vec::new(), false));

fn parked() -> std::sync::MutexGuard<'static, (Vec<UsageRecord>, bool)> {
    PARKED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Hands every record this VM holds to a process-wide parking place, for the next
/// [`send_parked`]: the native module's worker has no timer of its own, so when its
/// last stream ends its records go with its sync thread's next tick, batched with what other
/// idle moments parked, rather than as a batch each (sequential requests then form runs).
/// Beyond [`MAX_BACKLOG`] parked records they go to the queue at once instead.
pub fn park_usage_backlog() {
    STATE.with(|s| {
        let mut s = s.borrow_mut();
        if s.backlog.is_empty() {
            return;
        }
        let mut parked = parked();
        if parked.0.len().saturating_add(s.backlog.len()) > MAX_BACKLOG {
            drop(parked);
            flush_backlog(&mut s);
            return;
        }
        let runs = s.snapshot.as_ref().is_some_and(|s| s.accepts_trace_runs);
        let pending: Vec<Pending> = s.backlog.drain(..).collect();
        parked.0.extend(encoded_records(pending, false));
        parked.1 = runs;
    });
}

/// Sends the parked records as shared-queue items (`sync.v1.UsageBatch`, [`USAGE_BATCH`]
/// records at most each, runs of equal traces sent once when the snapshot accepted them)
/// through `send`; what `send` refuses is parked again, in front, for the next time.
pub fn send_parked(mut send: impl FnMut(&[u8]) -> bool) {
    let (mut records, runs) = {
        let mut parked = parked();
        (std::mem::take(&mut parked.0), parked.1)
    };
    while !records.is_empty() {
        let rest = records.split_off(records.len().min(USAGE_BATCH));
        let mut batch = UsageBatch {
            batch_id: 0,
            records: std::mem::replace(&mut records, rest),
        };
        if runs {
            trace_runs::send_once(&mut batch.records);
        }
        if !send(&batch.encode_to_vec()) {
            trace_runs::restore(&mut batch.records);
            batch.records.append(&mut records);
            let mut parked = parked();
            batch.records.append(&mut parked.0);
            parked.0 = batch.records;
            return;
        }
    }
}

fn flush_backlog(s: &mut VmState) {
    if s.backlog.is_empty() {
        return;
    }
    if s.queue.is_none() {
        s.queue = hostcalls::resolve_shared_queue(crate::VM_ID, crate::USAGE_QUEUE)
            .ok()
            .flatten();
    }
    let Some(queue) = s.queue else {
        return;
    };
    let send_runs = s.snapshot.as_ref().is_some_and(|s| s.accepts_trace_runs);
    while !s.backlog.is_empty() {
        let n = s.backlog.len().min(USAGE_BATCH);
        let pending: Vec<Pending> = s.backlog.drain(..n).collect();
        let mut batch = UsageBatch {
            batch_id: 0,
            records: encoded_records(pending, send_runs),
        };
        if let Err(e) = hostcalls::enqueue_shared_queue(queue, Some(&batch.encode_to_vec())) {
            trace_runs::restore(&mut batch.records);
            for record in batch.records.into_iter().rev() {
                s.backlog.push_front(Pending::from(record));
            }
            log::warn!(
                "usage queue unavailable ({e:?}); keeping {} records",
                s.backlog.len()
            );
            s.queue = None;
            return;
        }
    }
}

/// The records of a batch with their traces in them. With `runs`, a record whose trace is that
/// of the last record before it that carries one is marked `rule_trace_as_previous` instead
/// (`tokenrouter_proto::trace_runs::send_once`'s form); a shared trace is recognised by
/// pointer, any other by its text.
fn encoded_records(pending: Vec<Pending>, runs: bool) -> Vec<UsageRecord> {
    let mut last: Option<Rc<str>> = None;
    let mut records = Vec::with_capacity(pending.len());
    for Pending { mut record, trace } in pending {
        if let Some(trace) = trace.filter(|t| !t.is_empty()) {
            let same = runs
                && last
                    .as_ref()
                    .is_some_and(|l| Rc::ptr_eq(l, &trace) || **l == *trace);
            if same {
                record.rule_trace_as_previous = true;
            } else {
                record.rule_trace = trace.to_string();
                last = Some(trace);
            }
        }
        records.push(record);
    }
    records
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pending(id: &str, trace: Option<&Rc<str>>) -> Pending {
        Pending {
            record: UsageRecord {
                request_id: id.into(),
                ..UsageRecord::default()
            },
            trace: trace.cloned(),
        }
    }

    /// Parked records leave in batches of at most `USAGE_BATCH`, runs of equal traces sent
    /// once; what the queue refuses is parked again, first, with its traces back.
    #[test]
    fn parked_records_leave_in_batches_and_a_refused_batch_stays() {
        let record = |id: usize, trace: &str| UsageRecord {
            request_id: format!("r{id}"),
            rule_trace: trace.to_string(),
            ..UsageRecord::default()
        };
        let n = USAGE_BATCH + 10;
        *parked() = ((0..n).map(|i| record(i, "same")).collect(), true);
        let mut sent: Vec<UsageBatch> = Vec::new();
        send_parked(|item| {
            if sent.len() == 1 {
                return false;
            }
            sent.extend(UsageBatch::decode(item).ok());
            true
        });
        assert_eq!(sent.len(), 1);
        let first = &sent[0];
        assert_eq!(first.records.len(), USAGE_BATCH);
        assert_eq!(first.records[0].rule_trace, "same");
        assert!(first.records[1..]
            .iter()
            .all(|r| r.rule_trace.is_empty() && r.rule_trace_as_previous));
        let left = std::mem::take(&mut parked().0);
        assert_eq!(left.len(), 10);
        assert_eq!(left[0].request_id, format!("r{USAGE_BATCH}"));
        assert!(left
            .iter()
            .all(|r| r.rule_trace == "same" && !r.rule_trace_as_previous));
    }

    /// A look is due once its period passed since the last one (which it then becomes), at once
    /// with a period of 0, and when the host's clock went back.
    #[test]
    fn looks_are_due_once_their_period_passed() {
        let mut at = 0;
        assert!(due(&mut at, 1_000, 100));
        assert_eq!(at, 1_000);
        assert!(!due(&mut at, 1_099, 100));
        assert_eq!(at, 1_000);
        assert!(due(&mut at, 1_100, 100));
        assert!(due(&mut at, 1_100, 0));
        assert!(due(&mut at, 900, 100));
        assert_eq!(at, 900);
    }

    /// The records as `trace_runs::send_once` sends them, whether equal traces share one text
    /// (requests of the same worker trace) or are copies (records put back after a failed
    /// enqueue), and each record carrying its own trace without runs.
    #[test]
    fn encoded_records_mark_runs_as_send_once_does() {
        let a: Rc<str> = Rc::from("[{\"step\":\"a\"}]");
        let a_copy: Rc<str> = Rc::from(a.to_string());
        let b: Rc<str> = Rc::from("[{\"step\":\"b\"}]");
        let empty: Rc<str> = Rc::from("");
        let batch = || {
            vec![
                pending("1", Some(&a)),
                pending("2", Some(&a)),
                pending("3", None),
                pending("4", Some(&a_copy)),
                pending("5", Some(&empty)),
                pending("6", Some(&b)),
                pending("7", Some(&b)),
                pending("8", Some(&a)),
            ]
        };
        let with_texts: Vec<UsageRecord> = batch()
            .into_iter()
            .map(|p| UsageRecord {
                rule_trace: p.trace.map(|t| t.to_string()).unwrap_or_default(),
                ..p.record
            })
            .collect();
        let mut expected = with_texts.clone();
        trace_runs::send_once(&mut expected);
        assert_eq!(encoded_records(batch(), true), expected);
        let marked: Vec<bool> = expected.iter().map(|r| r.rule_trace_as_previous).collect();
        assert_eq!(
            marked,
            [false, true, false, true, false, false, true, false]
        );
        assert_eq!(encoded_records(batch(), false), with_texts);
    }

    /// A record put back after a failed enqueue keeps its trace, restored or its own.
    #[test]
    fn a_record_put_back_keeps_its_trace() {
        let a: Rc<str> = Rc::from("[1]");
        let mut records =
            encoded_records(vec![pending("1", Some(&a)), pending("2", Some(&a))], true);
        trace_runs::restore(&mut records);
        let back: Vec<Pending> = records.into_iter().map(Pending::from).collect();
        let texts: Vec<Option<&str>> = back.iter().map(|p| p.trace.as_deref()).collect();
        assert_eq!(texts, [Some("[1]"), Some("[1]")]);
        assert!(back.iter().all(|p| p.record.rule_trace.is_empty()));
        let none = Pending::from(UsageRecord::default());
        assert!(none.trace.is_none());
    }

    fn trace(model: &str) -> Trace {
        let mut t = Trace::default();
        t.step("route", json!({"model": model, "reason": "default"}));
        t
    }

    /// The same trace again shares the texts rendered for it; another is rendered, and its
    /// texts are what `Trace::render` gives.
    #[test]
    fn render_trace_shares_the_texts_of_an_equal_trace() {
        let (log, header) = render_trace(trace("m1"));
        let (expected_log, expected_header) = trace("m1").render();
        assert_eq!(&*log, expected_log);
        assert_eq!(header.as_deref(), expected_header.as_deref());
        // The header is the log row's text here: one copy.
        assert!(header.as_ref().is_some_and(|h| Rc::ptr_eq(h, &log)));
        let (again, _) = render_trace(trace("m1"));
        assert!(Rc::ptr_eq(&again, &log));
        let (other, _) = render_trace(trace("m2"));
        assert!(!Rc::ptr_eq(&other, &log));
        assert_eq!(&*other, trace("m2").render().0);
        let (first_again, _) = render_trace(trace("m1"));
        assert_eq!(&*first_again, &*log);
        assert!(
            !Rc::ptr_eq(&first_again, &log),
            "only the last trace is kept"
        );
    }
}
