//! [`MeteringStore`] on SQLite, and the charge that [`super::SqliteStore::insert_usage`] makes
//! in its own transaction.

use async_trait::async_trait;
use sqlx::{Row, SqliteConnection};

use super::{SqliteStore, BEGIN_WRITE};
use crate::store::metering::{Grant, Granted, MeteringStore, MinuteTokens, Owner, TopupSession};
use crate::store::rows::to_u64;
use crate::store::rows::unique_violation;
use crate::store::StoreError;

/// Charges `picos` to the key's balance and to its workspace's, where each has one; a balance
/// stops at zero (the admission reserved the most a request can cost, so only an estimate that
/// fell short gets there).
pub(super) async fn charge(
    conn: &mut SqliteConnection,
    key_id: &str,
    picos: i64,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE api_keys SET balance_picos = MAX(balance_picos - ?, 0) \
         WHERE id = ? AND balance_picos IS NOT NULL",
    )
    .bind(picos)
    .bind(key_id)
    .execute(&mut *conn)
    .await?;
    sqlx::query(
        "UPDATE workspaces SET balance_picos = MAX(balance_picos - ?, 0) \
         WHERE id = (SELECT workspace_id FROM api_keys WHERE id = ?) \
         AND balance_picos IS NOT NULL",
    )
    .bind(picos)
    .bind(key_id)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

fn table(owner: &Owner) -> &'static str {
    match owner {
        Owner::Key(_) => "api_keys",
        Owner::Workspace(_) => "workspaces",
    }
}

async fn read_balance(
    conn: &mut SqliteConnection,
    owner: &Owner,
) -> Result<Option<i64>, StoreError> {
    let row = sqlx::query(&format!(
        "SELECT balance_picos FROM {} WHERE id = ?",
        table(owner)
    ))
    .bind(owner.id())
    .fetch_optional(&mut *conn)
    .await?
    .ok_or_else(|| StoreError::NotFound(format!("{} {}", owner.kind(), owner.id())))?;
    Ok(row.try_get(0)?)
}

#[async_trait]
impl MeteringStore for SqliteStore {
    async fn grant(&self, grant: &Grant) -> Result<Granted, StoreError> {
        if grant.amount_picos <= 0 {
            return Err(StoreError::Rejected("a credit must be more than 0".into()));
        }
        let _writer = self.writer.lock().await;
        let mut tx = self.pool.begin_with(BEGIN_WRITE).await?;
        let before = read_balance(&mut tx, &grant.owner).await?;
        if let Some(external) = &grant.external_id {
            let seen = sqlx::query("SELECT 1 FROM credit_ledger WHERE external_id = ?")
                .bind(external)
                .fetch_optional(&mut *tx)
                .await?;
            if seen.is_some() {
                return Ok(Granted {
                    balance_picos: before.unwrap_or(0),
                    credited: false,
                    new_version: None,
                });
            }
        }
        let after = before
            .unwrap_or(0)
            .checked_add(grant.amount_picos)
            .ok_or_else(|| StoreError::Rejected("the balance would overflow".into()))?;
        sqlx::query(&format!(
            "UPDATE {} SET balance_picos = ? WHERE id = ?",
            table(&grant.owner)
        ))
        .bind(after)
        .bind(grant.owner.id())
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO credit_ledger (owner_kind, owner_id, amount_picos, source, external_id, \
             note, created_at_ms) VALUES (?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(grant.owner.kind())
        .bind(grant.owner.id())
        .bind(grant.amount_picos)
        .bind(&grant.source)
        .bind(&grant.external_id)
        .bind(&grant.note)
        .bind(grant.at_ms)
        .execute(&mut *tx)
        .await?;
        // Becoming metered changes what the edges do for the owner's keys: a new version.
        let new_version = if before.is_none() {
            let version: i64 = sqlx::query(
                "UPDATE config_version SET version = version + 1 WHERE id = 1 RETURNING version",
            )
            .fetch_one(&mut *tx)
            .await?
            .try_get(0)?;
            if let Owner::Key(id) = &grant.owner {
                super::mark_key_changed(&mut tx, id, version).await?;
            }
            Some(to_u64(version))
        } else {
            None
        };
        tx.commit().await?;
        Ok(Granted {
            balance_picos: after,
            credited: true,
            new_version,
        })
    }

    async fn balance(&self, owner: &Owner) -> Result<Option<i64>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        read_balance(&mut conn, owner).await
    }

    async fn key_balances(&self) -> Result<std::collections::HashMap<String, i64>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        sqlx::query("SELECT id, balance_picos FROM api_keys WHERE balance_picos IS NOT NULL")
            .fetch_all(&mut *conn)
            .await?
            .iter()
            .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
            .collect()
    }

    async fn total_key_balance(&self) -> Result<i64, StoreError> {
        let mut conn = self.pool.acquire().await?;
        let total: Option<i64> = sqlx::query(
            "SELECT SUM(balance_picos) FROM api_keys \
             WHERE status = 'active' AND balance_picos IS NOT NULL",
        )
        .fetch_one(&mut *conn)
        .await?
        .try_get(0)?;
        Ok(total.unwrap_or(0))
    }

    async fn insert_topup_session(&self, session: &TopupSession) -> Result<(), StoreError> {
        let _writer = self.writer.lock().await;
        let mut conn = self.pool.acquire().await?;
        sqlx::query(
            "INSERT INTO topup_sessions (session_id, key_id, amount_picos, checkout_url, \
             created_at_ms, expires_at_ms) VALUES (?, ?, ?, ?, ?, ?)",
        )
        .bind(&session.session_id)
        .bind(&session.key_id)
        .bind(session.amount_picos)
        .bind(&session.checkout_url)
        .bind(session.created_at_ms)
        .bind(session.expires_at_ms)
        .execute(&mut *conn)
        .await
        .map_err(|e| unique_violation(e, || format!("session {}", session.session_id)))?;
        Ok(())
    }

    async fn topup_session(&self, session_id: &str) -> Result<Option<TopupSession>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        let row = sqlx::query(
            "SELECT session_id, key_id, amount_picos, checkout_url, created_at_ms, \
             expires_at_ms FROM topup_sessions WHERE session_id = ?",
        )
        .bind(session_id)
        .fetch_optional(&mut *conn)
        .await?;
        row.map(|row| {
            Ok(TopupSession {
                session_id: row.try_get("session_id")?,
                key_id: row.try_get("key_id")?,
                amount_picos: row.try_get("amount_picos")?,
                checkout_url: row.try_get("checkout_url")?,
                created_at_ms: row.try_get("created_at_ms")?,
                expires_at_ms: row.try_get("expires_at_ms")?,
            })
        })
        .transpose()
    }

    async fn token_minutes(
        &self,
        key_id: &str,
        since_ms: i64,
    ) -> Result<Vec<MinuteTokens>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        // Received since `since_ms` (the covering index's order); started is what the window
        // counts by, and a request starts before it is received.
        let rows = sqlx::query(
            "SELECT started_at_ms / 60000 AS minute, SUM(input_tokens) AS input, \
             SUM(output_tokens) AS output FROM request_logs \
             WHERE key_id = ? AND received_at_ms >= ? \
             AND replay_of = '' GROUP BY minute ORDER BY minute",
        )
        .bind(key_id)
        .bind(since_ms)
        .fetch_all(&mut *conn)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(MinuteTokens {
                    minute: row.try_get("minute")?,
                    input: to_u64(row.try_get("input")?),
                    output: to_u64(row.try_get("output")?),
                })
            })
            .collect()
    }
}
