//! The sync singleton (bootstrap wasm service, main thread): the one gRPC stream between this
//! Envoy and the control plane.
//!
//! Down the stream come snapshots, which are validated by the engine and written to shared data
//! (snapshot first, then an empty key delta, then its version), key deltas (the keys changed
//! since a snapshot; written after it, then their version), live provider scores (written the
//! same way under their own keys) and acks of usage batches. Up the stream go a hello and usage
//! batches: the workers' batches drained from the shared queue, regrouped whole up to
//! `BATCH_SIZE` records as the workers encoded them (`usage_wire`; the control plane fills in
//! the node id from the hello). A batch stays in `inflight` until acknowledged and is resent
//! after a reconnect or a timeout; the control plane stores records idempotently by request id,
//! so a resend never double-counts. Records whose trace the workers sent as "the previous
//! record's" get it back before they go to a control plane whose first snapshot on this stream
//! did not say it reads that form.

use std::collections::BTreeMap;
use std::time::Duration;

use prost::Message;
use proxy_wasm::hostcalls;
use proxy_wasm::types::BufferType;
use serde::Deserialize;
use tokenrouter_engine::firewall::Firewall;
use tokenrouter_engine::{snapshot, Snapshot};
use tokenrouter_proto::config::v1::KeyDelta;
use tokenrouter_proto::sync::v1::{
    control_message, edge_message, ControlMessage, EdgeMessage, Hello,
};

use crate::host;
use crate::usage_wire::{self, EncodedBatch, Pending};

pub const TICK: Duration = Duration::from_millis(100);
const SERVICE: &str = "tokenrouter.sync.v1.FilterSync";
const METHOD: &str = "Sync";
const BATCH_SIZE: usize = 500;
const MAX_INFLIGHT: usize = 4;
const RESEND_AFTER_MS: i64 = 10_000;
const MIN_BACKOFF_MS: i64 = 200;
const MAX_BACKOFF_MS: i64 = 5_000;
/// Default bound on records held while the control plane is away (oldest dropped beyond).
const DEFAULT_MAX_BUFFERED: usize = 100_000;
/// How long a new stream holds usage back waiting for the control plane's first snapshot,
/// which says whether it reads runs of traces; past it, records go with their traces restored.
const SETTINGS_WAIT_MS: i64 = 2_000;

#[derive(Deserialize)]
pub struct SyncConfig {
    control_cluster: String,
    token: String,
    #[serde(default)]
    node_id: String,
    #[serde(default)]
    max_buffered_records: Option<usize>,
}

struct Inflight {
    batch: EncodedBatch,
    /// Sizes of the workers' batches it is made of, to put them back whole.
    worker_batches: Vec<usize>,
    sent_ms: i64,
}

pub struct Sync {
    cfg: SyncConfig,
    queue: u32,
    /// Token of the open stream; `None` while disconnected.
    stream: Option<u32>,
    /// When the open stream was opened.
    stream_opened_ms: i64,
    /// Whether the control plane at the other end of the open stream reads runs of equal
    /// traces (`Settings.accepts_trace_runs` of the first snapshot it sent); `None` until it
    /// said. Workers mark runs by the snapshot they hold, which may come from another
    /// control plane (a rolling upgrade, a downgrade), so records held across a reconnect may
    /// be marked for one that does not read them: those get their traces back before they go.
    runs_accepted: Option<bool>,
    /// Configuration version last written to shared data (sent in the hello): that of the
    /// snapshot or of the key delta on top of it.
    have_version: u64,
    /// Version of the full snapshot in shared data, which key deltas apply to.
    snapshot_version: u64,
    /// Scores version last written to shared data; for the log only.
    scores_version: u64,
    pending: Pending,
    inflight: BTreeMap<u64, Inflight>,
    next_batch: u64,
    next_connect_ms: i64,
    backoff_ms: i64,
    dropped: Option<u32>,
    snapshots_refused: Option<u32>,
    /// Firewall of the snapshot last validated, whose compiled regexes the next validation
    /// reuses (only the firewall is kept: the workers hold the snapshot itself).
    validated: Option<Firewall>,
}

impl Sync {
    pub fn start(cfg: SyncConfig) -> Result<Sync, String> {
        let queue = hostcalls::register_shared_queue(crate::USAGE_QUEUE)
            .map_err(|e| format!("cannot register the usage queue: {e:?}"))?;
        let mut s = Sync {
            cfg,
            queue,
            stream: None,
            stream_opened_ms: 0,
            runs_accepted: None,
            have_version: 0,
            snapshot_version: 0,
            scores_version: 0,
            pending: Pending::default(),
            inflight: BTreeMap::new(),
            next_batch: 1,
            next_connect_ms: 0,
            backoff_ms: MIN_BACKOFF_MS,
            dropped: host::define_counter("tokenrouter.usage_dropped"),
            snapshots_refused: host::define_counter("tokenrouter.snapshots_refused"),
            validated: None,
        };
        s.connect();
        Ok(s)
    }

    fn connect(&mut self) {
        let bearer = format!("Bearer {}", self.cfg.token);
        let opened = hostcalls::open_grpc_stream(
            &self.cfg.control_cluster,
            SERVICE,
            METHOD,
            vec![("authorization", bearer.as_bytes())],
        );
        match opened {
            Ok(token) => {
                self.stream = Some(token);
                self.stream_opened_ms = host::now_ms();
                self.runs_accepted = None;
                let hello = EdgeMessage {
                    msg: Some(edge_message::Msg::Hello(Hello {
                        node_id: self.cfg.node_id.clone(),
                        have_version: self.have_version,
                        max_schema: tokenrouter_engine::snapshot::SCHEMA,
                    })),
                };
                self.send(&hello);
            }
            Err(e) => {
                log::warn!("cannot open the sync stream: {e:?}");
                self.schedule_reconnect();
            }
        }
    }

    fn schedule_reconnect(&mut self) {
        self.stream = None;
        self.next_connect_ms = host::now_ms() + self.backoff_ms;
        self.backoff_ms = (self.backoff_ms * 2).min(MAX_BACKOFF_MS);
    }

    fn send(&mut self, msg: &EdgeMessage) -> bool {
        self.send_encoded(&msg.encode_to_vec())
    }

    fn send_encoded(&mut self, bytes: &[u8]) -> bool {
        let Some(token) = self.stream else {
            return false;
        };
        match hostcalls::send_grpc_stream_message(token, Some(bytes), false) {
            Ok(()) => true,
            Err(e) => {
                log::warn!("sync stream send failed: {e:?}");
                let _ = hostcalls::cancel_grpc_stream(token);
                self.requeue_inflight();
                self.schedule_reconnect();
                false
            }
        }
    }

    pub fn on_message(&mut self, token: u32, size: usize) {
        if self.stream != Some(token) {
            return;
        }
        let bytes = hostcalls::get_buffer(BufferType::GrpcReceiveBuffer, 0, size)
            .ok()
            .flatten()
            .unwrap_or_default();
        let msg = match ControlMessage::decode(bytes.as_slice()) {
            Ok(m) => m,
            Err(e) => {
                log::error!("undecodable message from the control plane: {e}");
                return;
            }
        };
        self.backoff_ms = MIN_BACKOFF_MS;
        match msg.msg {
            Some(control_message::Msg::Snapshot(snapshot)) => self.install(snapshot),
            Some(control_message::Msg::Ack(ack)) => {
                self.inflight.remove(&ack.batch_id);
                if self.pending.len() >= BATCH_SIZE {
                    self.flush();
                }
            }
            Some(control_message::Msg::Scores(scores)) => self.install_scores(scores),
            Some(control_message::Msg::Keys(delta)) => self.install_key_delta(delta),
            None => {}
        }
    }

    /// Validates a snapshot with the engine and publishes it to the workers. An invalid one is
    /// refused whole and the previous snapshot stays active.
    fn install(&mut self, snapshot: tokenrouter_proto::config::v1::Snapshot) {
        let version = snapshot.version;
        // What the control plane reads, whether or not this snapshot is valid.
        self.runs_accepted = Some(
            snapshot
                .settings
                .as_ref()
                .is_some_and(|s| s.accepts_trace_runs),
        );
        let bytes = snapshot.encode_to_vec();
        match Snapshot::from_proto_after(snapshot, self.validated.as_ref()) {
            Ok(valid) => self.validated = Some(valid.into_firewall()),
            Err(e) => {
                host::increment(self.snapshots_refused, 1);
                log::error!(
                    "snapshot {version} refused, keeping {}: {e}",
                    self.have_version
                );
                return;
            }
        }
        // No delta applies on top of a new full snapshot until one comes for it.
        let no_delta = KeyDelta {
            schema: snapshot::SCHEMA,
            base_version: version,
            version,
            keys: Vec::new(),
        };
        if host::set_shared_data(crate::SNAPSHOT_KEY, &bytes)
            && host::set_shared_data(crate::KEY_DELTA_KEY, &no_delta.encode_to_vec())
            && host::set_shared_data(crate::SNAPSHOT_VERSION_KEY, &version.to_le_bytes())
        {
            self.have_version = version;
            self.snapshot_version = version;
        } else {
            log::error!("cannot write snapshot {version} to shared data");
        }
    }

    /// Publishes a key delta to the workers, who apply it to the full snapshot in shared data
    /// (`vm::refresh_snapshot`). It must be a delta from a version at or below that snapshot's;
    /// when it is not, this edge and the control plane disagree on what the edge holds, and
    /// reconnecting makes the control plane send a full snapshot. A malformed delta is refused
    /// whole, like a snapshot.
    fn install_key_delta(&mut self, delta: KeyDelta) {
        let version = delta.version;
        if !snapshot::key_delta_applies(&delta, self.snapshot_version) {
            log::error!(
                "key delta {}..{version} does not apply to snapshot {}; reconnecting for a \
                 full snapshot",
                delta.base_version,
                self.snapshot_version
            );
            self.reconnect_now();
            return;
        }
        if let Err(e) = snapshot::validate_key_delta(&delta) {
            host::increment(self.snapshots_refused, 1);
            log::error!(
                "key delta {version} refused, keeping {}: {e}",
                self.have_version
            );
            return;
        }
        if host::set_shared_data(crate::KEY_DELTA_KEY, &delta.encode_to_vec())
            && host::set_shared_data(crate::SNAPSHOT_VERSION_KEY, &version.to_le_bytes())
        {
            self.have_version = version;
        } else {
            log::error!("cannot write key delta {version} to shared data");
        }
    }

    /// Drops the stream and opens a new one at once (unacknowledged batches are resent on it).
    fn reconnect_now(&mut self) {
        if let Some(token) = self.stream.take() {
            let _ = hostcalls::cancel_grpc_stream(token);
        }
        self.requeue_inflight();
        self.connect();
    }

    /// Publishes live scores to the workers. Scores without a version are refused and the
    /// previous ones stay (a message that does not decode never gets here: it is logged and
    /// dropped whole in `on_message`).
    fn install_scores(&mut self, scores: tokenrouter_proto::config::v1::Scores) {
        let version = scores.version;
        if version == 0 {
            log::error!(
                "scores without a version refused, keeping {}",
                self.scores_version
            );
            return;
        }
        if host::set_shared_data(crate::SCORES_KEY, &scores.encode_to_vec())
            && host::set_shared_data(crate::SCORES_VERSION_KEY, &version.to_le_bytes())
        {
            self.scores_version = version;
        } else {
            log::error!("cannot write scores {version} to shared data");
        }
    }

    pub fn on_close(&mut self, token: u32, status: u32) {
        if self.stream != Some(token) {
            return;
        }
        let message = hostcalls::get_grpc_status().ok().and_then(|(_, m)| m);
        log::warn!(
            "sync stream closed (grpc status {status}{}); reconnecting",
            message.map(|m| format!(": {m}")).unwrap_or_default()
        );
        self.requeue_inflight();
        self.schedule_reconnect();
    }

    /// Puts unacknowledged batches back at the front of the queue, in their original order.
    fn requeue_inflight(&mut self) {
        let inflight = std::mem::take(&mut self.inflight);
        for (_, inflight) in inflight.into_iter().rev() {
            self.pending
                .put_back(inflight.batch.records, &inflight.worker_batches);
        }
        self.enforce_bound();
    }

    pub fn on_queue_ready(&mut self, queue: u32) {
        if queue != self.queue {
            return;
        }
        // Each item is one worker's batch (`vm::USAGE_BATCH` records at most).
        while let Ok(Some(bytes)) = hostcalls::dequeue_shared_queue(queue) {
            match usage_wire::split_batch(&bytes) {
                Some(records) => self.pending.push_back(records),
                None => log::error!("usage batch with broken framing dropped"),
            }
        }
        self.enforce_bound();
        // Full batches go at once; the rest waits for the next tick, so a busy gateway sends
        // one message (and the control plane commits one transaction) per batch, not per
        // request.
        if self.pending.len() >= BATCH_SIZE {
            self.flush();
        }
    }

    fn enforce_bound(&mut self) {
        let max = self
            .cfg
            .max_buffered_records
            .unwrap_or(DEFAULT_MAX_BUFFERED);
        let dropped = self.pending.drop_oldest_over(max);
        if dropped > 0 {
            host::increment(self.dropped, i64::try_from(dropped).unwrap_or(i64::MAX));
            log::error!("usage buffer full, dropped {dropped} oldest records");
        }
    }

    fn flush(&mut self) {
        if self.runs_accepted.is_none() && host::now_ms() - self.stream_opened_ms < SETTINGS_WAIT_MS
        {
            return;
        }
        let restore = self.runs_accepted != Some(true);
        while self.stream.is_some()
            && self.inflight.len() < MAX_INFLIGHT
            && !self.pending.is_empty()
        {
            let batch_id = self.next_batch;
            self.next_batch += 1;
            let (mut records, worker_batches) = self.pending.take(BATCH_SIZE);
            if restore {
                records = usage_wire::with_traces_restored(records);
            }
            self.inflight.insert(
                batch_id,
                Inflight {
                    batch: EncodedBatch { batch_id, records },
                    worker_batches,
                    sent_ms: host::now_ms(),
                },
            );
            if !self.send_batch(batch_id) {
                return;
            }
        }
    }

    fn send_batch(&mut self, batch_id: u64) -> bool {
        let Some(inflight) = self.inflight.get(&batch_id) else {
            return true;
        };
        let bytes = usage_wire::usage_message(&inflight.batch);
        self.send_encoded(&bytes)
    }

    pub fn on_tick(&mut self) {
        let now = host::now_ms();
        if self.stream.is_none() {
            if now >= self.next_connect_ms {
                self.connect();
            }
            return;
        }
        // A batch the control plane never acknowledged (e.g. its store failed) is sent again.
        let stale: Vec<u64> = self
            .inflight
            .iter()
            .filter(|(_, b)| now - b.sent_ms > RESEND_AFTER_MS)
            .map(|(id, _)| *id)
            .collect();
        for id in stale {
            if let Some(b) = self.inflight.get_mut(&id) {
                b.sent_ms = now;
            }
            if !self.send_batch(id) {
                return;
            }
        }
        self.flush();
    }
}
