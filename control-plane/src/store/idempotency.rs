//! Storage of `Idempotency-Key` entries (see `api::grpc::idempotency` for the protocol).

use async_trait::async_trait;

use super::StoreError;

/// How long a done entry is replayed.
pub const REPLAY_FOR_MS: i64 = 24 * 60 * 60 * 1000;

/// How long a running claim holds its key when its usage record never arrives (the edge
/// died): longer than any request the gateway lets run.
pub const CLAIM_LAPSES_AFTER_MS: i64 = 10 * 60 * 1000;

/// A request claiming an idempotency key.
#[derive(Clone, Debug)]
pub struct Claim {
    pub key_id: String,
    pub idempotency_key: String,
    pub request_sha256: Vec<u8>,
    pub request_id: String,
}

/// A response recorded for replays.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recorded {
    pub status: u32,
    pub content_type: String,
    pub body: Vec<u8>,
}

/// What a claim found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClaimState {
    /// The key is now the claiming request's.
    Claimed,
    /// Another request holds it and is still running.
    Running {
        request_id: String,
        request_sha256: Vec<u8>,
    },
    /// A finished request holds it.
    Done {
        request_id: String,
        request_sha256: Vec<u8>,
        recorded: Recorded,
    },
}

#[async_trait]
pub trait IdempotencyStore: Send + Sync {
    /// Claims the key for `claim.request_id` unless a live entry holds it (expired entries are
    /// removed first). One transaction: two concurrent claims never both win.
    async fn claim(&self, claim: &Claim, now_ms: i64) -> Result<ClaimState, StoreError>;

    /// Ends `request_id`'s claim: records `response` for replays, or (`None`) releases the key.
    /// Does nothing when the entry is not that request's claim.
    async fn finish(
        &self,
        key_id: &str,
        idempotency_key: &str,
        request_id: &str,
        response: Option<&Recorded>,
        now_ms: i64,
    ) -> Result<(), StoreError>;
}
