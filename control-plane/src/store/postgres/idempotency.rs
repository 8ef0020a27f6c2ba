//! [`IdempotencyStore`] on PostgreSQL.
//!
//! A claim is one `INSERT … ON CONFLICT DO UPDATE … WHERE expired`: the primary key decides
//! between concurrent claims of every process (the later one waits for the earlier transaction,
//! then finds its entry live), and an expired entry is taken over in the same statement. A
//! live entry it loses to stays locked by that statement (`DO UPDATE` locks the conflicting row
//! even when its condition is false) until the claim has read it.

use async_trait::async_trait;
use sqlx::{PgConnection, Row};

use super::PostgresStore;
use crate::store::idempotency::{
    Claim, ClaimState, IdempotencyStore, Recorded, CLAIM_LAPSES_AFTER_MS, REPLAY_FOR_MS,
};
use crate::store::rows::{claim_state_held, IdempotencyColumns};
use crate::store::StoreError;

/// Claims the entry unless a live one holds it (which is then locked); whether it claimed.
async fn try_claim(
    conn: &mut PgConnection,
    claim: &Claim,
    now_ms: i64,
) -> Result<bool, StoreError> {
    let claimed = sqlx::query(
        "INSERT INTO idempotency_keys AS e (key_id, idempotency_key, request_sha256, \
             request_id, state, created_at_ms, expires_at_ms) \
             VALUES ($1, $2, $3, $4, 'running', $5, $6) \
             ON CONFLICT (key_id, idempotency_key) DO UPDATE SET \
             request_sha256 = excluded.request_sha256, request_id = excluded.request_id, \
             state = 'running', status = NULL, content_type = NULL, body = NULL, \
             created_at_ms = excluded.created_at_ms, expires_at_ms = excluded.expires_at_ms \
             WHERE e.expires_at_ms <= $5",
    )
    .bind(&claim.key_id)
    .bind(&claim.idempotency_key)
    .bind(&claim.request_sha256)
    .bind(&claim.request_id)
    .bind(now_ms)
    .bind(now_ms.saturating_add(CLAIM_LAPSES_AFTER_MS))
    .execute(&mut *conn)
    .await?
    .rows_affected();
    Ok(claimed > 0)
}

/// The entry that holds the key.
async fn holder(conn: &mut PgConnection, claim: &Claim) -> Result<ClaimState, StoreError> {
    let row = sqlx::query(
        "SELECT request_id, request_sha256, state, status, content_type, body \
             FROM idempotency_keys WHERE key_id = $1 AND idempotency_key = $2",
    )
    .bind(&claim.key_id)
    .bind(&claim.idempotency_key)
    .fetch_optional(&mut *conn)
    .await?
    .ok_or_else(|| {
        StoreError::Corrupt(format!(
            "idempotency key {:?} conflicts with no entry",
            claim.idempotency_key
        ))
    })?;
    Ok(claim_state_held(IdempotencyColumns {
        request_id: row.try_get("request_id")?,
        request_sha256: row.try_get("request_sha256")?,
        state: row.try_get("state")?,
        status: row.try_get("status")?,
        content_type: row.try_get("content_type")?,
        body: row.try_get("body")?,
    }))
}

impl PostgresStore {
    /// Removes other expired entries, skipping those another transaction holds (a claim taking
    /// one over), so sweeps never wait on each other.
    async fn sweep_expired(&self, now_ms: i64) -> Result<(), StoreError> {
        sqlx::query(
            "DELETE FROM idempotency_keys WHERE ctid IN (SELECT ctid FROM idempotency_keys \
             WHERE expires_at_ms <= $1 FOR UPDATE SKIP LOCKED)",
        )
        .bind(now_ms)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}

#[async_trait]
impl IdempotencyStore for PostgresStore {
    async fn claim(&self, claim: &Claim, now_ms: i64) -> Result<ClaimState, StoreError> {
        self.sweep_expired(now_ms).await?;
        let mut tx = self.pool.begin().await?;
        let state = if try_claim(&mut tx, claim, now_ms).await? {
            ClaimState::Claimed
        } else {
            holder(&mut tx, claim).await?
        };
        tx.commit().await?;
        Ok(state)
    }

    async fn finish(
        &self,
        key_id: &str,
        idempotency_key: &str,
        request_id: &str,
        response: Option<&Recorded>,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let query = match response {
            Some(r) => sqlx::query(
                "UPDATE idempotency_keys SET state = 'done', status = $4, content_type = $5, \
                 body = $6, expires_at_ms = $7 \
                 WHERE key_id = $1 AND idempotency_key = $2 AND request_id = $3 \
                 AND state = 'running'",
            )
            .bind(key_id)
            .bind(idempotency_key)
            .bind(request_id)
            .bind(i64::from(r.status))
            .bind(&r.content_type)
            .bind(&r.body)
            .bind(now_ms.saturating_add(REPLAY_FOR_MS)),
            None => sqlx::query(
                "DELETE FROM idempotency_keys \
                 WHERE key_id = $1 AND idempotency_key = $2 AND request_id = $3 \
                 AND state = 'running'",
            )
            .bind(key_id)
            .bind(idempotency_key)
            .bind(request_id),
        };
        query.execute(&self.pool).await?;
        Ok(())
    }
}
