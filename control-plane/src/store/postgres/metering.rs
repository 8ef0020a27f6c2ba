//! [`MeteringStore`] on PostgreSQL, and the charge that [`super::PostgresStore::insert_usage`]
//! makes in its own transaction.

use std::collections::BTreeMap;

use async_trait::async_trait;
use sqlx::{PgConnection, Row};

use super::{bump_version, notify_version, PostgresStore};
use crate::store::metering::{Grant, Granted, MeteringStore, MinuteTokens, Owner, TopupSession};
use crate::store::rows::{to_u64, unique_violation};
use crate::store::StoreError;

/// Charges what each key's new records cost (`picos` by key id) to its balance and to its
/// workspace's, where each has one; a balance stops at zero (the admission reserved the most a
/// request can cost, so only an estimate that fell short gets there). Charging a sum at once
/// ends where charging its parts one by one would: every part is positive, so the floor is hit
/// either way exactly when the sum exceeds the balance.
///
/// Keys are charged in id order, then workspaces in id order: concurrent batches lock the
/// balances they share in the same order.
pub(super) async fn charge(
    conn: &mut PgConnection,
    picos: &BTreeMap<&str, i64>,
) -> Result<(), StoreError> {
    if picos.is_empty() {
        return Ok(());
    }
    let mut workspaces: BTreeMap<String, i64> = BTreeMap::new();
    for (&key_id, &amount) in picos {
        sqlx::query(
            "UPDATE api_keys SET balance_picos = GREATEST(balance_picos - $1, 0) \
             WHERE id = $2 AND balance_picos IS NOT NULL",
        )
        .bind(amount)
        .bind(key_id)
        .execute(&mut *conn)
        .await?;
        // A key never changes workspace, so this needs no lock.
        let workspace: Option<String> =
            sqlx::query("SELECT workspace_id FROM api_keys WHERE id = $1")
                .bind(key_id)
                .fetch_optional(&mut *conn)
                .await?
                .map(|row| row.try_get(0))
                .transpose()?;
        if let Some(workspace) = workspace {
            let due = workspaces.entry(workspace).or_insert(0);
            *due = due.saturating_add(amount);
        }
    }
    for (workspace, amount) in workspaces {
        sqlx::query(
            "UPDATE workspaces SET balance_picos = GREATEST(balance_picos - $1, 0) \
             WHERE id = $2 AND balance_picos IS NOT NULL",
        )
        .bind(amount)
        .bind(&workspace)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

fn table(owner: &Owner) -> &'static str {
    match owner {
        Owner::Key(_) => "api_keys",
        Owner::Workspace(_) => "workspaces",
    }
}

/// The owner's balance (`None` = not metered); `lock` holds its row until commit.
async fn read_balance(
    conn: &mut PgConnection,
    owner: &Owner,
    lock: bool,
) -> Result<Option<i64>, StoreError> {
    let row = sqlx::query(&format!(
        "SELECT balance_picos FROM {} WHERE id = $1{}",
        table(owner),
        if lock { " FOR UPDATE" } else { "" }
    ))
    .bind(owner.id())
    .fetch_optional(&mut *conn)
    .await?
    .ok_or_else(|| StoreError::NotFound(format!("{} {}", owner.kind(), owner.id())))?;
    Ok(row.try_get(0)?)
}

#[async_trait]
impl MeteringStore for PostgresStore {
    async fn grant(&self, grant: &Grant) -> Result<Granted, StoreError> {
        if grant.amount_picos <= 0 {
            return Err(StoreError::Rejected("a credit must be more than 0".into()));
        }
        let mut tx = self.pool.begin().await?;
        // A first credit makes the owner metered, a configuration change: the configuration
        // row is then locked before the owner's, the order every configuration write takes.
        // A balance is never unset, so an owner metered now stays metered.
        let metered = read_balance(&mut tx, &grant.owner, false).await?.is_some();
        let version = if metered {
            None
        } else {
            Some(bump_version(&mut tx).await?)
        };
        let before = read_balance(&mut tx, &grant.owner, true).await?;
        if let Some(external) = &grant.external_id {
            let seen = sqlx::query("SELECT 1 FROM credit_ledger WHERE external_id = $1")
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
        // The unique external id decides between concurrent credits of one event (for other
        // owners too: the owner's row lock does not cover them): the later insert waits for
        // the earlier transaction and, once that commits, inserts nothing.
        let recorded = sqlx::query(
            "INSERT INTO credit_ledger (owner_kind, owner_id, amount_picos, source, external_id, \
             note, created_at_ms) VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING",
        )
        .bind(grant.owner.kind())
        .bind(grant.owner.id())
        .bind(grant.amount_picos)
        .bind(&grant.source)
        .bind(&grant.external_id)
        .bind(&grant.note)
        .bind(grant.at_ms)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if recorded == 0 {
            return Ok(Granted {
                balance_picos: before.unwrap_or(0),
                credited: false,
                new_version: None,
            });
        }
        sqlx::query(&format!(
            "UPDATE {} SET balance_picos = $1 WHERE id = $2",
            table(&grant.owner)
        ))
        .bind(after)
        .bind(grant.owner.id())
        .execute(&mut *tx)
        .await?;
        // Becoming metered changes what the edges do for the owner's keys: a new version (a
        // concurrent first credit may have made the owner metered meanwhile: then none).
        let new_version = match version {
            Some(version) if before.is_none() => {
                if let Owner::Key(id) = &grant.owner {
                    super::mark_key_changed(&mut tx, id, version).await?;
                }
                notify_version(&mut tx, version).await?;
                Some(to_u64(version))
            }
            Some(_) => {
                // The bumped version is not needed; roll back and credit without it.
                tx.rollback().await?;
                return self.grant(grant).await;
            }
            None => None,
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
        read_balance(&mut conn, owner, false).await
    }

    async fn key_balances(&self) -> Result<std::collections::HashMap<String, i64>, StoreError> {
        sqlx::query("SELECT id, balance_picos FROM api_keys WHERE balance_picos IS NOT NULL")
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
            .collect()
    }

    async fn total_key_balance(&self) -> Result<i64, StoreError> {
        // SUM of BIGINT is NUMERIC; back to BIGINT (an overflow is an error, as on SQLite).
        let total: Option<i64> = sqlx::query(
            "SELECT SUM(balance_picos)::BIGINT FROM api_keys \
             WHERE status = 'active' AND balance_picos IS NOT NULL",
        )
        .fetch_one(&self.pool)
        .await?
        .try_get(0)?;
        Ok(total.unwrap_or(0))
    }

    async fn insert_topup_session(&self, session: &TopupSession) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO topup_sessions (session_id, key_id, amount_picos, checkout_url, \
             created_at_ms, expires_at_ms) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&session.session_id)
        .bind(&session.key_id)
        .bind(session.amount_picos)
        .bind(&session.checkout_url)
        .bind(session.created_at_ms)
        .bind(session.expires_at_ms)
        .execute(&self.pool)
        .await
        .map_err(|e| unique_violation(e, || format!("session {}", session.session_id)))?;
        Ok(())
    }

    async fn topup_session(&self, session_id: &str) -> Result<Option<TopupSession>, StoreError> {
        let row = sqlx::query(
            "SELECT session_id, key_id, amount_picos, checkout_url, created_at_ms, \
             expires_at_ms FROM topup_sessions WHERE session_id = $1",
        )
        .bind(session_id)
        .fetch_optional(&self.pool)
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
        // Received since `since_ms` (the covering index's order); started is what the window
        // counts by, and a request starts before it is received.
        let rows = sqlx::query(
            "SELECT started_at_ms / 60000 AS minute, SUM(input_tokens)::BIGINT AS input, \
             SUM(output_tokens)::BIGINT AS output FROM request_logs \
             WHERE key_id = $1 AND received_at_ms >= $2 \
             AND replay_of = '' GROUP BY minute ORDER BY minute",
        )
        .bind(key_id)
        .bind(since_ms)
        .fetch_all(&self.pool)
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
