//! `tokenrouter.sync.v1.FilterSync/Sync`: one long-lived stream per Envoy (its singleton wasm
//! service). Down: the current snapshot at once, then the current live scores, then every newer
//! snapshot (a key delta instead when only keys changed since a full snapshot this stream sent)
//! and scores, and usage acks. Up: a hello, then usage batches, each acknowledged only
//! after its transaction committed.

use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokenrouter_proto::config::v1::{KeyDelta, Scores, Snapshot};
use tokenrouter_proto::sync::v1::control_message::Msg as Down;
use tokenrouter_proto::sync::v1::edge_message::Msg as Up;
use tokenrouter_proto::sync::v1::filter_sync_server::FilterSync;
use tokenrouter_proto::sync::v1::{ControlMessage, EdgeMessage, UsageAck, UsageBatch};
use tokenrouter_proto::trace_runs;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

use crate::api::grpc::idempotency::Idempotency;
use crate::metrics::Metrics;
use crate::service::Service;

type Outbound = mpsc::Sender<Result<ControlMessage, Status>>;

/// The FilterSync service. Authentication is an interceptor around it.
#[derive(Clone, Debug)]
pub struct SyncApi {
    service: Service,
    /// Finishes the `Idempotency-Key` claims of stored records.
    idempotency: Idempotency,
    /// Flips to `true` at shutdown: open streams end so the server can stop gracefully.
    stop: watch::Receiver<bool>,
}

impl SyncApi {
    pub fn new(service: Service, idempotency: Idempotency, stop: watch::Receiver<bool>) -> SyncApi {
        SyncApi {
            service,
            idempotency,
            stop,
        }
    }
}

#[tonic::async_trait]
impl FilterSync for SyncApi {
    type SyncStream = Pin<Box<dyn Stream<Item = Result<ControlMessage, Status>> + Send + 'static>>;

    async fn sync(
        &self,
        request: Request<Streaming<EdgeMessage>>,
    ) -> Result<Response<Self::SyncStream>, Status> {
        let peer = request
            .remote_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        let (tx, rx) = mpsc::channel(16);
        let stream = EdgeStream {
            service: self.service.clone(),
            idempotency: self.idempotency.clone(),
            snapshots: self.service.snapshots(),
            scores: self.service.scores(),
            stop: self.stop.clone(),
            out: tx,
            peer,
            node_id: String::new(),
            sent_full: 0,
        };
        tokio::spawn(stream.run(request.into_inner()));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// One connected edge.
struct EdgeStream {
    service: Service,
    idempotency: Idempotency,
    snapshots: watch::Receiver<Arc<Snapshot>>,
    /// Live provider scores; sent after the first snapshot and on every change.
    scores: watch::Receiver<Arc<Scores>>,
    stop: watch::Receiver<bool>,
    out: Outbound,
    /// For the log only.
    peer: String,
    /// From the edge's hello; for the log only.
    node_id: String,
    /// Version of the last full snapshot sent on this stream: a key delta whose base is at or
    /// below it applies at the edge.
    sent_full: u64,
}

/// What woke the stream up.
enum Event {
    /// Shutdown, or the edge or the publisher went away.
    Closed,
    NewSnapshot,
    NewScores,
    Message(Result<Option<EdgeMessage>, Status>),
}

/// Counts open streams for `/metrics`; decrements however the stream ends.
struct OpenStream(Arc<Metrics>);

impl OpenStream {
    fn new(metrics: &Arc<Metrics>) -> OpenStream {
        metrics.sync_streams_open.fetch_add(1, Ordering::Relaxed);
        OpenStream(metrics.clone())
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.0.sync_streams_open.fetch_sub(1, Ordering::Relaxed);
    }
}

impl EdgeStream {
    async fn run(mut self, mut inbound: Streaming<EdgeMessage>) {
        let _open = OpenStream::new(self.service.metrics());
        tracing::info!(peer = %self.peer, "sync stream opened");
        self.snapshots.borrow_and_update();
        if self.send_snapshot().await.is_ok() {
            // Always, even when empty: an edge that reconnects to a restarted control plane
            // replaces the scores it held.
            let scores = self.scores.borrow_and_update().clone();
            if self.send_scores(scores).await.is_ok() {
                self.serve(&mut inbound).await;
            }
        }
        tracing::info!(peer = %self.peer, node = %self.node_id, "sync stream closed");
    }

    async fn serve(&mut self, inbound: &mut Streaming<EdgeMessage>) {
        loop {
            let event = tokio::select! {
                _ = self.stop.wait_for(|stop| *stop) => Event::Closed,
                changed = self.snapshots.changed() => match changed {
                    Ok(()) => Event::NewSnapshot,
                    Err(_) => Event::Closed,
                },
                changed = self.scores.changed() => match changed {
                    Ok(()) => Event::NewScores,
                    Err(_) => Event::Closed,
                },
                message = inbound.message() => Event::Message(message),
                () = self.out.closed() => Event::Closed,
            };
            let keep_going = match event {
                Event::Closed => false,
                Event::NewSnapshot => {
                    let version = self.snapshots.borrow_and_update().version;
                    match self.service.key_delta() {
                        Some(delta)
                            if delta.version == version && delta.base_version <= self.sent_full =>
                        {
                            self.send_key_delta(&delta).await.is_ok()
                        }
                        _ => self.send_snapshot().await.is_ok(),
                    }
                }
                Event::NewScores => {
                    let scores = self.scores.borrow_and_update().clone();
                    self.send_scores(scores).await.is_ok()
                }
                Event::Message(Ok(Some(EdgeMessage {
                    msg: Some(Up::Hello(hello)),
                }))) => {
                    tracing::info!(
                        peer = %self.peer,
                        node = %hello.node_id,
                        have_version = hello.have_version,
                        max_schema = hello.max_schema,
                        "edge hello"
                    );
                    self.node_id = hello.node_id;
                    true
                }
                Event::Message(Ok(Some(EdgeMessage {
                    msg: Some(Up::Usage(batch)),
                }))) => self.store_batch(batch).await.is_ok(),
                Event::Message(Ok(Some(EdgeMessage { msg: None }))) => true,
                Event::Message(Ok(None)) => false,
                Event::Message(Err(status)) => {
                    tracing::debug!(peer = %self.peer, error = %status, "sync stream receive error");
                    false
                }
            };
            if !keep_going {
                return;
            }
        }
    }

    /// Sends the published version whole (a key-delta version with its delta applied). Built
    /// and copied off the async workers: at 100 000 keys that is tens of milliseconds.
    async fn send_snapshot(&mut self) -> Result<(), ()> {
        let service = self.service.clone();
        let snapshot =
            tokio::task::spawn_blocking(move || Snapshot::clone(&service.whole_snapshot()))
                .await
                .map_err(drop)?;
        let version = snapshot.version;
        let message = ControlMessage {
            msg: Some(Down::Snapshot(snapshot)),
        };
        self.out.send(Ok(message)).await.map_err(drop)?;
        self.sent_full = version;
        Metrics::add(&self.service.metrics().snapshots_sent, 1);
        tracing::debug!(peer = %self.peer, version, "snapshot sent");
        Ok(())
    }

    async fn send_key_delta(&self, delta: &KeyDelta) -> Result<(), ()> {
        let message = ControlMessage {
            msg: Some(Down::Keys(delta.clone())),
        };
        self.out.send(Ok(message)).await.map_err(drop)?;
        Metrics::add(&self.service.metrics().key_deltas_sent, 1);
        tracing::debug!(
            peer = %self.peer,
            version = delta.version,
            base = delta.base_version,
            keys = delta.keys.len(),
            "key delta sent"
        );
        Ok(())
    }

    async fn send_scores(&self, scores: Arc<Scores>) -> Result<(), ()> {
        let version = scores.version;
        let message = ControlMessage {
            msg: Some(Down::Scores(Scores::clone(&scores))),
        };
        self.out.send(Ok(message)).await.map_err(drop)?;
        tracing::debug!(peer = %self.peer, version, "scores sent");
        Ok(())
    }

    /// Stores a batch, then acks it. On a storage failure there is no ack: the stream ends with
    /// UNAVAILABLE and the edge resends the batch after reconnecting (idempotent by request id).
    async fn store_batch(&self, mut batch: UsageBatch) -> Result<(), ()> {
        // The edge forwards its workers' records as they encoded them, without the node id its
        // hello named.
        for r in batch.records.iter_mut().filter(|r| r.node_id.is_empty()) {
            r.node_id.clone_from(&self.node_id);
        }
        // The edge sent each run of equal traces once (`Settings.accepts_trace_runs`); the
        // store gives the marked records their run's trace (`BatchTraces`) without a copy each.
        let (runs, unresolved) = trace_runs::count(&batch.records);
        Metrics::add(&self.service.metrics().usage_trace_runs, runs as u64);
        if unresolved > 0 {
            tracing::warn!(
                node = %self.node_id,
                batch = batch.batch_id,
                unresolved,
                "usage records whose trace is the previous record's, with none before them: \
                 stored without a trace"
            );
        }
        match self.service.ingest_usage(&batch.records).await {
            Ok(new) => {
                // Before the ack: a replay must find what the client got once the edge
                // forgets the record.
                self.idempotency.finish(&batch.records).await;
                tracing::debug!(
                    node = %self.node_id,
                    batch = batch.batch_id,
                    records = batch.records.len(),
                    new,
                    "usage batch stored"
                );
                let ack = ControlMessage {
                    msg: Some(Down::Ack(UsageAck {
                        batch_id: batch.batch_id,
                    })),
                };
                self.out.send(Ok(ack)).await.map_err(drop)
            }
            Err(e) => {
                tracing::error!(node = %self.node_id, batch = batch.batch_id, error = %e, "usage batch not stored");
                let _ = self
                    .out
                    .send(Err(Status::unavailable(
                        "usage could not be stored; reconnect and resend",
                    )))
                    .await;
                Err(())
            }
        }
    }
}
