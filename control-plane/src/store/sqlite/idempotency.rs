//! [`IdempotencyStore`] on SQLite.

use async_trait::async_trait;
use sqlx::Row;

use super::{SqliteStore, BEGIN_WRITE};
use crate::store::idempotency::{
    Claim, ClaimState, IdempotencyStore, Recorded, CLAIM_LAPSES_AFTER_MS, REPLAY_FOR_MS,
};
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
                let request_id: String = row.try_get("request_id")?;
                let request_sha256: Vec<u8> = row.try_get("request_sha256")?;
                let state: String = row.try_get("state")?;
                let found = if state == "done" {
                    let status: i64 = row.try_get::<Option<i64>, _>("status")?.unwrap_or(200);
                    ClaimState::Done {
                        request_id,
                        request_sha256,
                        recorded: Recorded {
                            status: u32::try_from(status).unwrap_or(200),
                            content_type: row
                                .try_get::<Option<String>, _>("content_type")?
                                .unwrap_or_default(),
                            body: row
                                .try_get::<Option<Vec<u8>>, _>("body")?
                                .unwrap_or_default(),
                        },
                    }
                } else {
                    ClaimState::Running {
                        request_id,
                        request_sha256,
                    }
                };
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

#[cfg(test)]
mod tests {
    use super::*;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    async fn store() -> Result<(SqliteStore, tempfile::TempDir), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("t.db").display());
        Ok((SqliteStore::open(&url).await?, dir))
    }

    fn claim(request_id: &str, sha: u8) -> Claim {
        Claim {
            key_id: "key_1".into(),
            idempotency_key: "idem-1".into(),
            request_sha256: vec![sha; 32],
            request_id: request_id.into(),
        }
    }

    #[tokio::test]
    async fn claim_finish_replay_release_and_expiry() -> TestResult {
        let (s, _dir) = store().await?;
        assert_eq!(
            s.claim(&claim("r1", 1), 1000).await.ok(),
            Some(ClaimState::Claimed)
        );
        // A second claim sees the first running, whatever its body.
        let running = ClaimState::Running {
            request_id: "r1".into(),
            request_sha256: vec![1; 32],
        };
        assert_eq!(
            s.claim(&claim("r2", 1), 1001).await.ok(),
            Some(running.clone())
        );
        assert_eq!(s.claim(&claim("r3", 2), 1002).await.ok(), Some(running));
        // Only the claiming request finishes it.
        let recorded = Recorded {
            status: 200,
            content_type: "application/json".into(),
            body: b"{\"ok\":true}".to_vec(),
        };
        s.finish("key_1", "idem-1", "r2", Some(&recorded), 1003)
            .await?;
        assert!(matches!(
            s.claim(&claim("r4", 1), 1004).await,
            Ok(ClaimState::Running { .. })
        ));
        s.finish("key_1", "idem-1", "r1", Some(&recorded), 1005)
            .await?;
        let done = s.claim(&claim("r5", 1), 1006).await?;
        assert_eq!(
            done,
            ClaimState::Done {
                request_id: "r1".into(),
                request_sha256: vec![1; 32],
                recorded: recorded.clone(),
            }
        );
        // Replayed for 24 h, then the key is free again.
        let later = 1005 + REPLAY_FOR_MS;
        assert_eq!(
            s.claim(&claim("r6", 1), later).await.ok(),
            Some(ClaimState::Claimed)
        );
        // A failed request releases its claim; a lapsed claim frees the key too.
        s.finish("key_1", "idem-1", "r6", None, later + 1).await?;
        assert_eq!(
            s.claim(&claim("r7", 1), later + 2).await.ok(),
            Some(ClaimState::Claimed)
        );
        let lapsed = later + 2 + CLAIM_LAPSES_AFTER_MS;
        assert_eq!(
            s.claim(&claim("r8", 1), lapsed).await.ok(),
            Some(ClaimState::Claimed)
        );
        Ok(())
    }

    #[tokio::test]
    async fn concurrent_claims_have_one_winner() -> TestResult {
        let (s, _dir) = store().await?;
        let mut tasks = Vec::new();
        for i in 0..20 {
            let s = s.clone();
            tasks.push(tokio::spawn(async move {
                s.claim(&claim(&format!("r{i}"), 1), 1000).await
            }));
        }
        let mut won = 0;
        for t in tasks {
            if matches!(t.await?, Ok(ClaimState::Claimed)) {
                won += 1;
            }
        }
        assert_eq!(won, 1);
        Ok(())
    }
}
