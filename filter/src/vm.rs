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
//! Every root context of the VM (the edge filter and each provider cluster's upstream filter)
//! shares this through a thread-local; each VM runs on exactly one thread.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;

use prost::Message;
use proxy_wasm::hostcalls;
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
    backlog: VecDeque<UsageRecord>,
    /// When the edge's tick last queued the backlog (host clock, ms).
    flushed_at_ms: i64,
}

thread_local! {
    static STATE: RefCell<VmState> = RefCell::new(VmState::default());
}

/// The current snapshot, if one has arrived.
pub fn snapshot() -> Option<Rc<Snapshot>> {
    STATE.with(|s| s.borrow().snapshot.clone())
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

/// Hands a usage record to the sync singleton: queued at once when a batch is full, else by
/// the edge's tick ([`flush_usage_backlog_when_due`]).
pub fn enqueue_usage(record: UsageRecord) {
    STATE.with(|s| {
        let mut s = s.borrow_mut();
        s.backlog.push_back(record);
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
        if now_ms - s.flushed_at_ms >= USAGE_FLUSH_MS {
            s.flushed_at_ms = now_ms;
            flush_backlog(&mut s);
        }
    });
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
        let mut batch = UsageBatch {
            batch_id: 0,
            records: s.backlog.drain(..n).collect(),
        };
        if send_runs {
            trace_runs::send_once(&mut batch.records);
        }
        if let Err(e) = hostcalls::enqueue_shared_queue(queue, Some(&batch.encode_to_vec())) {
            trace_runs::restore(&mut batch.records);
            for record in batch.records.into_iter().rev() {
                s.backlog.push_front(record);
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
