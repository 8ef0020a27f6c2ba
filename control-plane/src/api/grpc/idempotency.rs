//! `tokenrouter.sync.v1.EdgeCalls/BeginIdempotent`: `Idempotency-Key` for every edge.
//!
//! An edge worker calls it before routing a request that carries the header. The first request
//! with a (key, idempotency key) claims it and goes on to the provider; its usage record (on the
//! sync stream) finishes the claim with the response the client got, which later requests with
//! the same body get back without a provider call (and without a charge). A request with the
//! same key and another body is refused. A request arriving while the first still runs waits for
//! it (up to [`WAIT_FOR_RUNNING`]), so a client retrying after a timeout gets the first answer
//! instead of a second provider call. Requests that failed in a way a retry should repeat (5xx,
//! 429, no response) release their claim.
//!
//! The entries live in the store (one transaction per claim), so replicas sharing a database
//! agree; waiting is woken in-process when a batch finishes claims and polls otherwise.

use std::sync::Arc;
use std::time::Duration;

use tokenrouter_proto::sync::v1::edge_calls_server::EdgeCalls;
use tokenrouter_proto::sync::v1::idempotency_verdict::Outcome;
use tokenrouter_proto::sync::v1::{IdempotencyBegin, IdempotencyVerdict, UsageRecord};
use tokio::sync::Notify;
use tonic::{Request, Response, Status};

use crate::store::idempotency::{Claim, ClaimState, Recorded};
use crate::store::Store;

/// How long a request waits for the request holding its key to finish (the edge's call
/// timeout is longer).
pub const WAIT_FOR_RUNNING: Duration = Duration::from_secs(25);

/// Re-check interval while waiting (a claim finished on another replica wakes nobody here).
const POLL: Duration = Duration::from_millis(250);

/// Longest idempotency key accepted (Stripe's limit).
pub const MAX_KEY_LEN: usize = 255;

/// Shared by the gRPC service and the sync streams that finish claims.
#[derive(Clone, Debug)]
pub struct Idempotency {
    store: Arc<dyn Store>,
    finished: Arc<Notify>,
}

impl Idempotency {
    pub fn new(store: Arc<dyn Store>) -> Idempotency {
        Idempotency {
            store,
            finished: Arc::new(Notify::new()),
        }
    }

    /// The verdict for one request: claim, replay, mismatch, or (after waiting) in flight.
    pub async fn begin(&self, begin: &IdempotencyBegin) -> Result<IdempotencyVerdict, Status> {
        if begin.key_id.is_empty()
            || begin.request_id.is_empty()
            || begin.idempotency_key.is_empty()
            || begin.idempotency_key.len() > MAX_KEY_LEN
        {
            return Err(Status::invalid_argument(
                "key_id, request_id and an idempotency key of 1-255 bytes are required",
            ));
        }
        let claim = Claim {
            key_id: begin.key_id.clone(),
            idempotency_key: begin.idempotency_key.clone(),
            request_sha256: begin.request_sha256.clone(),
            request_id: begin.request_id.clone(),
        };
        let deadline = tokio::time::Instant::now() + WAIT_FOR_RUNNING;
        loop {
            // Registered before the check, so a finish between the check and the wait wakes it.
            let finished = self.finished.notified();
            let state = self
                .store
                .idempotency()
                .claim(&claim, now_ms())
                .await
                .map_err(|e| {
                    tracing::error!(error = %e, "idempotency claim failed");
                    Status::unavailable("idempotency entries cannot be read right now")
                })?;
            let verdict = |outcome: Outcome, original: String| IdempotencyVerdict {
                outcome: outcome as i32,
                original_request_id: original,
                ..IdempotencyVerdict::default()
            };
            match state {
                ClaimState::Claimed => return Ok(verdict(Outcome::Proceed, String::new())),
                ClaimState::Done {
                    request_id,
                    request_sha256,
                    recorded,
                } => {
                    if request_sha256 != claim.request_sha256 {
                        return Ok(verdict(Outcome::Mismatch, request_id));
                    }
                    return Ok(IdempotencyVerdict {
                        outcome: Outcome::Replay as i32,
                        status: recorded.status,
                        content_type: recorded.content_type,
                        body: recorded.body,
                        original_request_id: request_id,
                    });
                }
                ClaimState::Running {
                    request_id,
                    request_sha256,
                } => {
                    if request_sha256 != claim.request_sha256 {
                        return Ok(verdict(Outcome::Mismatch, request_id));
                    }
                    let now = tokio::time::Instant::now();
                    if now >= deadline {
                        return Ok(verdict(Outcome::InFlight, request_id));
                    }
                    let nap = POLL.min(deadline - now);
                    let _ = tokio::time::timeout(nap, finished).await;
                }
            }
        }
    }

    /// Finishes the claims of stored usage records: records the response of those that ended
    /// in a way worth replaying, releases the others, and wakes waiting requests.
    pub async fn finish(&self, records: &[UsageRecord]) {
        let mut any = false;
        for r in records
            .iter()
            .filter(|r| !r.idempotency_key.is_empty() && r.replay_of.is_empty())
        {
            any = true;
            let replayable = !r.idempotent_response.is_empty()
                && r.status != 0
                && r.status != 429
                && r.status < 500;
            let recorded = replayable.then(|| Recorded {
                status: r.status,
                content_type: r.response_content_type.clone(),
                body: r.idempotent_response.clone(),
            });
            if let Err(e) = self
                .store
                .idempotency()
                .finish(
                    &r.key_id,
                    &r.idempotency_key,
                    &r.request_id,
                    recorded.as_ref(),
                    now_ms(),
                )
                .await
            {
                // The claim lapses on its own; a retry then calls the provider again.
                tracing::error!(request_id = %r.request_id, error = %e, "idempotency finish failed");
            }
        }
        if any {
            self.finished.notify_waiters();
        }
    }
}

/// The gRPC face of [`Idempotency`].
#[derive(Debug)]
pub struct EdgeCallsApi {
    idempotency: Idempotency,
}

impl EdgeCallsApi {
    pub fn new(idempotency: Idempotency) -> EdgeCallsApi {
        EdgeCallsApi { idempotency }
    }
}

#[tonic::async_trait]
impl EdgeCalls for EdgeCallsApi {
    async fn begin_idempotent(
        &self,
        request: Request<IdempotencyBegin>,
    ) -> Result<Response<IdempotencyVerdict>, Status> {
        self.idempotency
            .begin(request.get_ref())
            .await
            .map(Response::new)
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
