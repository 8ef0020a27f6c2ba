//! [`IdempotencyStore`] on SQLite.

use async_trait::async_trait;
use sqlx::Row;

use super::{SqliteStore, BEGIN_WRITE};
use crate::store::idempotency::{
    Claim, ClaimState, IdempotencyStore, Recorded, CLAIM_LAPSES_AFTER_MS, REPLAY_FOR_MS,
};
use crate::store::rows::{claim_state_held, IdempotencyColumns};
use crate::store::StoreError;

#[async_trait]
impl IdempotencyStore for SqliteStore {
    async fn claim(&self, claim: &Claim, now_ms: i64) -> Result<ClaimState, StoreError> {
        let _turn = self.writer.lock().await;
        let mut tx = self.pool.begin_with(BEGIN_WRITE).await?;
        let state = {
            sqlx::query("DELETE FROM idempotency_keys WHERE expires_at_ms <= ?")
                .bind(now_ms)
                .execute(&mut *tx)
                .await?;
            let row = sqlx::query(
                "SELECT request_id, request_sha256, state, status, content_type, body \
                 FROM idempotency_keys WHERE key_id = ? AND idempotency_key = ?",
            )
            .bind(&claim.key_id)
            .bind(&claim.idempotency_key)
            .fetch_optional(&mut *tx)
            .await?;
            if let Some(row) = row {
                let found = claim_state_held(IdempotencyColumns {
                    request_id: row.try_get("request_id")?,
                    request_sha256: row.try_get("request_sha256")?,
                    state: row.try_get("state")?,
                    status: row.try_get("status")?,
                    content_type: row.try_get("content_type")?,
                    body: row.try_get("body")?,
                });
                tx.commit().await?;
                return Ok(found);
            }
            sqlx::query(
                "INSERT INTO idempotency_keys (key_id, idempotency_key, request_sha256, \
                 request_id, state, created_at_ms, expires_at_ms) \
                 VALUES (?, ?, ?, ?, 'running', ?, ?)",
            )
            .bind(&claim.key_id)
            .bind(&claim.idempotency_key)
            .bind(&claim.request_sha256)
            .bind(&claim.request_id)
            .bind(now_ms)
            .bind(now_ms.saturating_add(CLAIM_LAPSES_AFTER_MS))
            .execute(&mut *tx)
            .await?;
            ClaimState::Claimed
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
        let _turn = self.writer.lock().await;
        let query = match response {
            Some(r) => sqlx::query(
                "UPDATE idempotency_keys SET state = 'done', status = ?, content_type = ?, \
                 body = ?, expires_at_ms = ? \
                 WHERE key_id = ? AND idempotency_key = ? AND request_id = ? AND state = 'running'",
            )
            .bind(i64::from(r.status))
            .bind(&r.content_type)
            .bind(&r.body)
            .bind(now_ms.saturating_add(REPLAY_FOR_MS)),
            None => sqlx::query(
                "DELETE FROM idempotency_keys \
                 WHERE key_id = ? AND idempotency_key = ? AND request_id = ? AND state = 'running'",
            ),
        };
        query
            .bind(key_id)
            .bind(idempotency_key)
            .bind(request_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}
