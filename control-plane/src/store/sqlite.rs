//! The embedded default: SQLite through sqlx, in WAL mode, migrations from `migrations/sqlite/`.
//!
//! Writes (configuration changes and usage batches) are serialised in the process by a FIFO
//! mutex and run in `BEGIN IMMEDIATE` transactions, so they queue in arrival order instead of
//! racing for SQLite's write lock; the `busy_timeout` covers writers outside this process (the
//! CLI on the same file). Reads run concurrently with a write (WAL).

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, SqliteConnection, SqlitePool};
use tokenrouter_proto::config::v1 as pb;
use tokenrouter_proto::sync::v1::{Attempt, UsageRecord};

use super::{
    ChangeOutcome, Changed, Check, ConfigChange, ConfigState, FirewallRuleRow, KeyRow, KeyStatus,
    KeyUsage, Limits, LogEntry, LogQuery, ModelRow, Proposed, ProviderRow, RoutingConfigRow,
    RoutingRuleRow, Store, StoreError, UsageGroupBy, UsageGroupKey, UsageQuery, UsageReport,
    UsageTotals, WorkspaceRow,
};

/// Starts a write transaction holding SQLite's write lock from its first statement, so a write
/// never fails on a read → write lock upgrade.
const BEGIN_WRITE: &str = "BEGIN IMMEDIATE";

/// SQLite-backed [`Store`].
#[derive(Clone, Debug)]
pub struct SqliteStore {
    pool: SqlitePool,
    /// Held for the whole of every write transaction. SQLite has one writer at a time anyway;
    /// queueing here (tokio's mutex is fair) instead of in SQLite's busy handler (which polls
    /// with sleeps and gives up after `busy_timeout`) keeps concurrent writers from failing
    /// with "database is locked" and serves them in order.
    writer: Arc<tokio::sync::Mutex<()>>,
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `url` (`sqlite://path?mode=rwc`) and runs the
    /// migrations.
    pub async fn open(url: &str) -> Result<SqliteStore, StoreError> {
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(5));
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .connect_with(options)
            .await?;
        sqlx::migrate!("./migrations/sqlite").run(&pool).await?;
        Ok(SqliteStore {
            pool,
            writer: Arc::new(tokio::sync::Mutex::new(())),
        })
    }
}

mod idempotency;
mod metering;

#[async_trait]
impl Store for SqliteStore {
    async fn change_config(
        &self,
        change: ConfigChange,
        check: &Check,
    ) -> Result<ChangeOutcome, StoreError> {
        let _writer = self.writer.lock().await;
        let mut tx = self.pool.begin_with(BEGIN_WRITE).await?;
        let version: i64 = sqlx::query(
            "UPDATE config_version SET version = version + 1 WHERE id = 1 RETURNING version",
        )
        .fetch_one(&mut *tx)
        .await?
        .try_get(0)?;
        let changed = match apply(&mut tx, change).await? {
            Applied::Committed(changed) => changed,
            Applied::Nothing(changed) => {
                tx.rollback().await?;
                return Ok(ChangeOutcome {
                    changed,
                    version: None,
                });
            }
        };
        // Dropping `tx` on a refusal rolls the change back.
        let verdict = match &changed {
            Changed::Key(key) => check(Proposed::Key(key)),
            Changed::Workspace(workspace) => check(Proposed::Workspace(workspace)),
            Changed::Provider(provider) => check(Proposed::Provider(provider)),
            Changed::ModelsSeeded(models) => check(Proposed::Models(models)),
            Changed::Model(row) => check(Proposed::Models(std::slice::from_ref(&row.model))),
            Changed::FirewallRule(rule) => {
                let count: i64 = sqlx::query("SELECT COUNT(*) FROM firewall_rules")
                    .fetch_one(&mut *tx)
                    .await?
                    .try_get(0)?;
                check(Proposed::FirewallRule {
                    rule,
                    count: usize::try_from(count).unwrap_or(usize::MAX),
                })
            }
            Changed::RoutingRule(rule) => {
                let count: i64 = sqlx::query("SELECT COUNT(*) FROM routing_rules")
                    .fetch_one(&mut *tx)
                    .await?
                    .try_get(0)?;
                check(Proposed::RoutingRule {
                    rule,
                    count: usize::try_from(count).unwrap_or(usize::MAX),
                })
            }
            Changed::RoutingConfig(config) => check(Proposed::RoutingConfig(config)),
            Changed::ProviderRemoved(_)
            | Changed::FirewallRuleRemoved(_)
            | Changed::RoutingRuleRemoved(_)
            | Changed::RoutingConfigRemoved(_) => check(Proposed::Removal),
        };
        verdict.map_err(StoreError::Rejected)?;
        tx.commit().await?;
        Ok(ChangeOutcome {
            changed,
            version: Some(to_u64(version)),
        })
    }

    async fn load_config(&self) -> Result<ConfigState, StoreError> {
        // One read transaction, so the version matches the rows.
        let mut tx = self.pool.begin().await?;
        let state = load_config(&mut tx).await?;
        tx.commit().await?;
        Ok(state)
    }

    async fn list_keys(&self) -> Result<Vec<KeyRow>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        load_keys(&mut conn).await
    }

    async fn get_key(&self, id: &str) -> Result<Option<KeyRow>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        sqlx::query(&format!("{KEY_SELECT} WHERE id = ?"))
            .bind(id)
            .fetch_optional(&mut *conn)
            .await?
            .as_ref()
            .map(key_from_row)
            .transpose()
    }

    async fn find_key_by_hash(&self, sha256: &[u8; 32]) -> Result<Option<KeyRow>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        sqlx::query(&format!("{KEY_SELECT} WHERE sha256 = ?"))
            .bind(&sha256[..])
            .fetch_optional(&mut *conn)
            .await?
            .as_ref()
            .map(key_from_row)
            .transpose()
    }

    async fn list_providers(&self) -> Result<Vec<ProviderRow>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        load_providers(&mut conn).await
    }

    async fn list_models(&self) -> Result<Vec<ModelRow>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        load_model_rows(&mut conn).await
    }

    async fn list_firewall_rules(&self) -> Result<Vec<FirewallRuleRow>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        load_firewall_rules(&mut conn).await
    }

    async fn list_routing_rules(&self) -> Result<Vec<RoutingRuleRow>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        load_routing_rules(&mut conn).await
    }

    async fn list_workspaces(&self) -> Result<Vec<(WorkspaceRow, u32)>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        let workspaces = load_workspaces(&mut conn).await?;
        let counts: HashMap<String, i64> = sqlx::query(
            "SELECT workspace_id, COUNT(*) FROM api_keys WHERE status = 'active' \
             GROUP BY workspace_id",
        )
        .fetch_all(&mut *conn)
        .await?
        .iter()
        .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
        .collect::<Result<_, sqlx::Error>>()?;
        Ok(workspaces
            .into_iter()
            .map(|w| {
                let n = counts.get(&w.id).copied().unwrap_or(0);
                (w, u32::try_from(n).unwrap_or(u32::MAX))
            })
            .collect())
    }

    async fn list_routing_configs(&self) -> Result<Vec<RoutingConfigRow>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        load_routing_configs(&mut conn).await
    }

    async fn insert_usage(
        &self,
        records: &[UsageRecord],
        received_at_ms: i64,
    ) -> Result<Vec<usize>, StoreError> {
        let _writer = self.writer.lock().await;
        let mut tx = self.pool.begin_with(BEGIN_WRITE).await?;
        let mut inserted = Vec::new();
        for (i, r) in records.iter().enumerate() {
            let done = sqlx::query(
                "INSERT INTO request_logs (request_id, started_at_ms, key_id, client_api, \
                 requested_model, provider, model, status, input_tokens, output_tokens, \
                 cached_tokens, reasoning_tokens, latency_ms, cost_picos, stream, error_type, \
                 node_id, received_at_ms, firewall_actions, warnings, mode, tier, rule_trace, \
                 attempts_json, ttfb_ms, retry_after_s, metadata_json, idempotency_key, \
                 replay_of, key_name, workspace_id) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, \
                 ?, ?, ?, ?, ?, ?, ?) \
                 ON CONFLICT (request_id) DO NOTHING",
            )
            .bind(&r.request_id)
            .bind(r.started_at_unix_ms)
            .bind(&r.key_id)
            .bind(&r.client_api)
            .bind(&r.requested_model)
            .bind(&r.provider)
            .bind(&r.model)
            .bind(i64::from(r.status))
            .bind(to_i64(r.input_tokens))
            .bind(to_i64(r.output_tokens))
            .bind(to_i64(r.cached_tokens))
            .bind(to_i64(r.reasoning_tokens))
            .bind(to_i64(r.latency_ms))
            .bind(r.cost_picos)
            .bind(r.stream)
            .bind(&r.error_type)
            .bind(&r.node_id)
            .bind(received_at_ms)
            .bind(json_list(&r.firewall_actions))
            .bind(json_list(&r.warnings))
            .bind(&r.mode)
            .bind(&r.tier)
            .bind(&r.rule_trace)
            .bind(attempts_json(&r.attempts))
            .bind(to_i64(r.ttfb_ms))
            .bind(i64::from(r.retry_after_s))
            .bind(&r.metadata_json)
            .bind(&r.idempotency_key)
            .bind(&r.replay_of)
            .bind(&r.key_name)
            .bind(&r.workspace_id)
            .execute(&mut *tx)
            .await?;
            if done.rows_affected() == 0 {
                continue;
            }
            inserted.push(i);
            if r.cost_picos > 0 && r.replay_of.is_empty() {
                metering::charge(&mut tx, &r.key_id, r.cost_picos).await?;
            }
            // Only keys with store_bodies send bodies; every other record costs nothing here.
            if !r.request_body.is_empty() || !r.response_body.is_empty() {
                sqlx::query(
                    "INSERT INTO request_bodies (request_id, request_body, response_body, \
                     truncated) VALUES (?, ?, ?, ?) ON CONFLICT (request_id) DO NOTHING",
                )
                .bind(&r.request_id)
                .bind(&r.request_body)
                .bind(&r.response_body)
                .bind(r.bodies_truncated)
                .execute(&mut *tx)
                .await?;
            }
        }
        tx.commit().await?;
        Ok(inserted)
    }

    async fn list_logs(&self, query: &LogQuery) -> Result<Vec<LogEntry>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        let before: Option<i64> = match &query.before_request_id {
            Some(id) => Some(
                sqlx::query("SELECT rowid FROM request_logs WHERE request_id = ?")
                    .bind(id)
                    .fetch_optional(&mut *conn)
                    .await?
                    .ok_or_else(|| StoreError::NotFound(format!("request {id}")))?
                    .try_get(0)?,
            ),
            None => None,
        };
        // Only the filters given become conditions, so each can use its index.
        let mut sql = sqlx::QueryBuilder::<sqlx::Sqlite>::new(LOG_SELECT);
        sql.push(" WHERE 1 = 1");
        if let Some(key) = &query.key_id {
            sql.push(" AND l.key_id = ").push_bind(key);
        }
        if let Some(before) = before {
            sql.push(" AND l.rowid < ").push_bind(before);
        }
        if let Some(model) = &query.model {
            sql.push(" AND (l.model = ")
                .push_bind(model)
                .push(" OR l.requested_model = ")
                .push_bind(model)
                .push(")");
        }
        if let Some(provider) = &query.provider {
            sql.push(" AND l.provider = ").push_bind(provider);
        }
        if let Some(status) = query.status {
            let (low, high) = status.range();
            sql.push(" AND l.status BETWEEN ")
                .push_bind(i64::from(low))
                .push(" AND ")
                .push_bind(i64::from(high));
        }
        if let Some(since) = query.since_ms {
            sql.push(" AND l.received_at_ms >= ").push_bind(since);
        }
        if let Some(until) = query.until_ms {
            sql.push(" AND l.received_at_ms < ").push_bind(until);
        }
        if let Some(text) = &query.metadata_contains {
            sql.push(" AND l.metadata_json LIKE ")
                .push_bind(like_pattern(text))
                .push(" ESCAPE '\\'");
        }
        sql.push(" ORDER BY l.rowid DESC LIMIT ")
            .push_bind(i64::from(query.limit));
        let rows = sql.build().fetch_all(&mut *conn).await?;
        rows.iter().map(log_from_row).collect()
    }

    async fn get_log(&self, request_id: &str) -> Result<Option<LogEntry>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        let Some(row) = sqlx::query(&format!("{LOG_SELECT} WHERE l.request_id = ?"))
            .bind(request_id)
            .fetch_optional(&mut *conn)
            .await?
        else {
            return Ok(None);
        };
        let mut entry = log_from_row(&row)?;
        if entry.has_bodies {
            let bodies = sqlx::query(
                "SELECT request_body, response_body, truncated FROM request_bodies \
                 WHERE request_id = ?",
            )
            .bind(request_id)
            .fetch_optional(&mut *conn)
            .await?;
            if let Some(b) = bodies {
                let r = &mut entry.record;
                r.request_body = b.try_get::<Option<Vec<u8>>, _>(0)?.unwrap_or_default();
                r.response_body = b.try_get::<Option<Vec<u8>>, _>(1)?.unwrap_or_default();
                r.bodies_truncated = b.try_get(2)?;
            }
        }
        Ok(Some(entry))
    }

    async fn usage(&self, query: &UsageQuery) -> Result<UsageReport, StoreError> {
        let mut conn = self.pool.acquire().await?;
        // Reads only the covering indexes of migration 0005 (request_logs_received, or
        // request_logs_key with a key).
        let group = match query.group_by {
            None => "0",
            Some(UsageGroupBy::Key) => "key_id",
            Some(UsageGroupBy::Model) => "model",
            Some(UsageGroupBy::Provider) => "provider",
            Some(UsageGroupBy::Day) => "received_at_ms / 86400000",
        };
        // A condition only for a given key, so that the planner picks the key index then.
        let mut inner = format!(
            "SELECT {group} AS g, {USAGE_SUMS} FROM request_logs WHERE received_at_ms >= ?1"
        );
        if query.key_id.is_some() {
            inner.push_str(" AND key_id = ?2");
        }
        if query.group_by.is_some() {
            inner.push_str(" GROUP BY g");
        }
        let sql = if query.group_by == Some(UsageGroupBy::Key) {
            format!(
                "SELECT u.*, COALESCE(k.name, '') AS key_name FROM ({inner}) u \
                 LEFT JOIN api_keys k ON k.id = u.g"
            )
        } else {
            inner
        };
        let mut statement = sqlx::query(&sql).bind(query.since_ms);
        if let Some(key) = &query.key_id {
            statement = statement.bind(key);
        }
        let rows = statement.fetch_all(&mut *conn).await?;
        let mut report = UsageReport::default();
        for row in &rows {
            let totals = usage_totals_at(row, 1)?;
            if totals.requests == 0 {
                continue;
            }
            let key = match query.group_by {
                None => {
                    report.totals = totals;
                    continue;
                }
                Some(UsageGroupBy::Key) => UsageGroupKey::Key {
                    id: row.try_get(0)?,
                    name: row.try_get("key_name")?,
                },
                Some(UsageGroupBy::Model) => UsageGroupKey::Model(row.try_get(0)?),
                Some(UsageGroupBy::Provider) => UsageGroupKey::Provider(row.try_get(0)?),
                Some(UsageGroupBy::Day) => UsageGroupKey::Day(row.try_get(0)?),
            };
            report.totals = add_totals(report.totals, totals);
            report.groups.push((key, totals));
        }
        Ok(report)
    }

    async fn key_usage(
        &self,
        key_id: Option<&str>,
    ) -> Result<HashMap<String, KeyUsage>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        // One pass over the covering index request_logs_key, whatever the number of keys.
        let filter = if key_id.is_some() {
            "WHERE key_id = ?"
        } else {
            ""
        };
        let sql = format!(
            "SELECT key_id, {USAGE_SUMS}, MAX(received_at_ms) FROM request_logs {filter} \
             GROUP BY key_id"
        );
        let mut statement = sqlx::query(&sql);
        if let Some(key) = key_id {
            statement = statement.bind(key);
        }
        let rows = statement.fetch_all(&mut *conn).await?;
        let mut usage = HashMap::with_capacity(rows.len());
        for row in &rows {
            let t = usage_totals_at(row, 1)?;
            usage.insert(
                row.try_get(0)?,
                KeyUsage {
                    requests: t.requests,
                    failed_requests: t.failed_requests,
                    input_tokens: t.input_tokens,
                    output_tokens: t.output_tokens,
                    cost_picos: t.cost_picos,
                    last_used_at_ms: row.try_get(1 + USAGE_SUM_COLUMNS)?,
                },
            );
        }
        Ok(usage)
    }

    fn idempotency(&self) -> &dyn crate::store::idempotency::IdempotencyStore {
        self
    }

    fn metering(&self) -> &dyn crate::store::metering::MeteringStore {
        self
    }

    async fn close(&self) {
        self.pool.close().await;
    }
}

/// Whether a change wrote something (commit and publish) or nothing (roll back).
enum Applied {
    Committed(Changed),
    Nothing(Changed),
}

async fn apply(conn: &mut SqliteConnection, change: ConfigChange) -> Result<Applied, StoreError> {
    let applied = match change {
        ConfigChange::CreateKey(key) => {
            sqlx::query(
                "INSERT INTO workspaces (id, name, created_at_ms) VALUES (?, ?, ?) \
                 ON CONFLICT (id) DO NOTHING",
            )
            .bind(&key.workspace_id)
            .bind(&key.workspace_id)
            .bind(key.created_at_ms)
            .execute(&mut *conn)
            .await?;
            let query = sqlx::query(
                "INSERT INTO api_keys (id, name, key_prefix, sha256, workspace_id, status, \
                 created_at_ms, revoked_at_ms, store_bodies, balance_picos, rps_limit, \
                 hour_total_tokens, hour_input_tokens, hour_output_tokens) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            )
            .bind(&key.id)
            .bind(&key.name)
            .bind(&key.key_prefix)
            .bind(key.sha256.as_slice())
            .bind(&key.workspace_id)
            .bind(key.status.as_str())
            .bind(key.created_at_ms)
            .bind(key.revoked_at_ms)
            .bind(key.store_bodies)
            .bind(key.metered.then_some(0_i64));
            bind_limits(query, &key.limits)
                .execute(&mut *conn)
                .await
                .map_err(|e| unique_violation(e, || format!("key {}", key.id)))?;
            Applied::Committed(Changed::Key(key))
        }
        ConfigChange::RevokeKey { id, at_ms } => {
            let row = sqlx::query(&format!("{KEY_SELECT} WHERE id = ?"))
                .bind(&id)
                .fetch_optional(&mut *conn)
                .await?
                .ok_or_else(|| StoreError::NotFound(format!("key {id}")))?;
            let mut key = key_from_row(&row)?;
            if key.status == KeyStatus::Revoked {
                Applied::Nothing(Changed::Key(key))
            } else {
                sqlx::query(
                    "UPDATE api_keys SET status = 'revoked', revoked_at_ms = ? WHERE id = ?",
                )
                .bind(at_ms)
                .bind(&id)
                .execute(&mut *conn)
                .await?;
                key.status = KeyStatus::Revoked;
                key.revoked_at_ms = Some(at_ms);
                Applied::Committed(Changed::Key(key))
            }
        }
        ConfigChange::UpdateKey {
            id,
            name,
            store_bodies,
            limits,
        } => {
            let row = sqlx::query(&format!("{KEY_SELECT} WHERE id = ?"))
                .bind(&id)
                .fetch_optional(&mut *conn)
                .await?
                .ok_or_else(|| StoreError::NotFound(format!("key {id}")))?;
            let before = key_from_row(&row)?;
            let mut key = before.clone();
            if let Some(name) = name {
                key.name = name;
            }
            if let Some(store_bodies) = store_bodies {
                key.store_bodies = store_bodies;
            }
            key.limits = limits.or(key.limits);
            if key == before {
                Applied::Nothing(Changed::Key(key))
            } else {
                let query = sqlx::query(
                    "UPDATE api_keys SET name = ?, store_bodies = ?, rps_limit = ?, \
                     hour_total_tokens = ?, hour_input_tokens = ?, hour_output_tokens = ? \
                     WHERE id = ?",
                )
                .bind(&key.name)
                .bind(key.store_bodies);
                bind_limits(query, &key.limits)
                    .bind(&id)
                    .execute(&mut *conn)
                    .await?;
                Applied::Committed(Changed::Key(key))
            }
        }
        ConfigChange::CreateWorkspace(workspace) => {
            let query = sqlx::query(
                "INSERT INTO workspaces (id, name, created_at_ms, balance_picos, rps_limit, \
                 hour_total_tokens, hour_input_tokens, hour_output_tokens) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            )
            .bind(&workspace.id)
            .bind(&workspace.id)
            .bind(workspace.created_at_ms)
            .bind(workspace.metered.then_some(0_i64));
            bind_limits(query, &workspace.limits)
                .execute(&mut *conn)
                .await
                .map_err(|e| unique_violation(e, || format!("workspace {}", workspace.id)))?;
            Applied::Committed(Changed::Workspace(workspace))
        }
        ConfigChange::UpdateWorkspace { id, limits } => {
            let row = sqlx::query(&format!("{WORKSPACE_SELECT} WHERE id = ?"))
                .bind(&id)
                .fetch_optional(&mut *conn)
                .await?
                .ok_or_else(|| StoreError::NotFound(format!("workspace {id}")))?;
            let before = workspace_from_row(&row)?;
            let mut workspace = before.clone();
            workspace.limits = limits.or(workspace.limits);
            if workspace == before {
                Applied::Nothing(Changed::Workspace(workspace))
            } else {
                let query = sqlx::query(
                    "UPDATE workspaces SET rps_limit = ?, hour_total_tokens = ?, \
                     hour_input_tokens = ?, hour_output_tokens = ? WHERE id = ?",
                );
                bind_limits(query, &workspace.limits)
                    .bind(&id)
                    .execute(&mut *conn)
                    .await?;
                Applied::Committed(Changed::Workspace(workspace))
            }
        }
        ConfigChange::PutProvider { row, replace } => {
            let mut row = row;
            let existing: Option<i64> =
                sqlx::query("SELECT created_at_ms FROM providers WHERE name = ?")
                    .bind(&row.name)
                    .fetch_optional(&mut *conn)
                    .await?
                    .map(|r| r.try_get(0))
                    .transpose()?;
            match existing {
                Some(_) if !replace => {
                    return Err(StoreError::AlreadyExists(format!("provider {}", row.name)))
                }
                Some(created) => {
                    // A replacement keeps its original creation time (and its place in order).
                    row.created_at_ms = created;
                    sqlx::query(
                        "UPDATE providers SET kind = ?, base_url = ?, credential_sealed = ?, \
                         fallbacks_sealed = ?, fallback_count = ?, enabled = ? WHERE name = ?",
                    )
                    .bind(&row.kind)
                    .bind(&row.base_url)
                    .bind(&row.credential_sealed)
                    .bind(&row.fallbacks_sealed)
                    .bind(i64::from(row.fallback_count))
                    .bind(row.enabled)
                    .bind(&row.name)
                    .execute(&mut *conn)
                    .await?;
                }
                None => {
                    sqlx::query(
                        "INSERT INTO providers (name, kind, base_url, credential_sealed, \
                         fallbacks_sealed, fallback_count, enabled, created_at_ms) \
                         VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    )
                    .bind(&row.name)
                    .bind(&row.kind)
                    .bind(&row.base_url)
                    .bind(&row.credential_sealed)
                    .bind(&row.fallbacks_sealed)
                    .bind(i64::from(row.fallback_count))
                    .bind(row.enabled)
                    .bind(row.created_at_ms)
                    .execute(&mut *conn)
                    .await?;
                }
            }
            Applied::Committed(Changed::Provider(row))
        }
        ConfigChange::RemoveProvider { name } => {
            let done = sqlx::query("DELETE FROM providers WHERE name = ?")
                .bind(&name)
                .execute(&mut *conn)
                .await?;
            if done.rows_affected() == 0 {
                return Err(StoreError::NotFound(format!("provider {name}")));
            }
            Applied::Committed(Changed::ProviderRemoved(name))
        }
        ConfigChange::SeedModels(models) => {
            let mut seeded = Vec::new();
            for m in models {
                let inserted = bind_model(sqlx::query(&insert_model_sql(false)), &m)
                    .bind(0_i64)
                    .execute(&mut *conn)
                    .await?
                    .rows_affected();
                // A row seeded before the capability columns existed gets them once; prices,
                // context window and status stay as they are.
                let filled = inserted == 0
                    && sqlx::query(
                        "UPDATE models SET tools = ?, vision = ?, json_mode = ?, streaming = ?, \
                         embeddings = ?, quality = ?, tier = ?, max_output_tokens = ?, \
                         price_source = ?, price_as_of = ?, display_name = ? \
                         WHERE provider_kind = ? AND id = ? AND price_source = '' \
                         AND updated_at_ms = 0",
                    )
                    .bind(m.tools)
                    .bind(m.vision)
                    .bind(m.json_mode)
                    .bind(m.streaming)
                    .bind(m.embeddings)
                    .bind(i64::from(m.quality))
                    .bind(&m.tier)
                    .bind(i64::from(m.max_output_tokens))
                    .bind(&m.price_source)
                    .bind(&m.price_as_of)
                    .bind(&m.display_name)
                    .bind(&m.provider_kind)
                    .bind(&m.id)
                    .execute(&mut *conn)
                    .await?
                    .rows_affected()
                        > 0;
                if inserted > 0 || filled {
                    seeded.push(m);
                }
            }
            if seeded.is_empty() {
                Applied::Nothing(Changed::ModelsSeeded(seeded))
            } else {
                Applied::Committed(Changed::ModelsSeeded(seeded))
            }
        }
        ConfigChange::UpsertModel(row) => {
            // ON CONFLICT … DO UPDATE keeps the rowid, so a replaced model keeps its place in
            // catalogue order.
            bind_model(sqlx::query(&insert_model_sql(true)), &row.model)
                .bind(row.updated_at_ms)
                .execute(&mut *conn)
                .await?;
            Applied::Committed(Changed::Model(row))
        }
        ConfigChange::UpdateModel(row) => {
            let sets: Vec<String> = MODEL_FIELDS.iter().map(|f| format!("{f} = ?")).collect();
            let sql = format!(
                "UPDATE models SET {}, updated_at_ms = ? WHERE provider_kind = ? AND id = ?",
                sets.join(", ")
            );
            let done = bind_model_fields(sqlx::query(&sql), &row.model)
                .bind(row.updated_at_ms)
                .bind(&row.model.provider_kind)
                .bind(&row.model.id)
                .execute(&mut *conn)
                .await?;
            if done.rows_affected() == 0 {
                return Err(StoreError::NotFound(format!(
                    "model {}/{}",
                    row.model.provider_kind, row.model.id
                )));
            }
            Applied::Committed(Changed::Model(row))
        }
        ConfigChange::CreateFirewallRule(mut rule) => {
            let done = bind_rule(
                sqlx::query(
                    "INSERT INTO firewall_rules (name, priority, is_enabled, scope, type, \
                     pattern, action, replacement, key_id, max_match_chars, \"check\", template, \
                     workspace_id, created_at_ms, updated_at_ms) \
                     VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                ),
                &rule,
            )
            .bind(rule.created_at_ms)
            .bind(rule.updated_at_ms)
            .execute(&mut *conn)
            .await
            .map_err(|e| unique_violation(e, || format!("firewall rule named {:?}", rule.name)))?;
            rule.id = done.last_insert_rowid();
            Applied::Committed(Changed::FirewallRule(rule))
        }
        ConfigChange::UpdateFirewallRule(mut rule) => {
            let created: i64 = sqlx::query("SELECT created_at_ms FROM firewall_rules WHERE id = ?")
                .bind(rule.id)
                .fetch_optional(&mut *conn)
                .await?
                .ok_or_else(|| StoreError::NotFound(format!("firewall rule {}", rule.id)))?
                .try_get(0)?;
            rule.created_at_ms = created;
            bind_rule(
                sqlx::query(
                    "UPDATE firewall_rules SET name = ?, priority = ?, is_enabled = ?, scope = ?, \
                     type = ?, pattern = ?, action = ?, replacement = ?, key_id = ?, \
                     max_match_chars = ?, \"check\" = ?, template = ?, workspace_id = ?, \
                     updated_at_ms = ? WHERE id = ?",
                ),
                &rule,
            )
            .bind(rule.updated_at_ms)
            .bind(rule.id)
            .execute(&mut *conn)
            .await
            .map_err(|e| unique_violation(e, || format!("firewall rule named {:?}", rule.name)))?;
            Applied::Committed(Changed::FirewallRule(rule))
        }
        ConfigChange::DeleteFirewallRule { id } => {
            let done = sqlx::query("DELETE FROM firewall_rules WHERE id = ?")
                .bind(id)
                .execute(&mut *conn)
                .await?;
            if done.rows_affected() == 0 {
                return Err(StoreError::NotFound(format!("firewall rule {id}")));
            }
            Applied::Committed(Changed::FirewallRuleRemoved(id))
        }
        ConfigChange::CreateRoutingRule(mut rule) => {
            let done = bind_routing_rule(
                sqlx::query(
                    "INSERT INTO routing_rules (name, priority, is_enabled, match_json, \
                     action_json, key_id, created_at_ms, updated_at_ms) \
                     VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                ),
                &rule,
            )
            .bind(rule.created_at_ms)
            .bind(rule.updated_at_ms)
            .execute(&mut *conn)
            .await
            .map_err(|e| unique_violation(e, || format!("routing rule named {:?}", rule.name)))?;
            rule.id = done.last_insert_rowid();
            Applied::Committed(Changed::RoutingRule(rule))
        }
        ConfigChange::UpdateRoutingRule(mut rule) => {
            let created: i64 = sqlx::query("SELECT created_at_ms FROM routing_rules WHERE id = ?")
                .bind(rule.id)
                .fetch_optional(&mut *conn)
                .await?
                .ok_or_else(|| StoreError::NotFound(format!("routing rule {}", rule.id)))?
                .try_get(0)?;
            rule.created_at_ms = created;
            bind_routing_rule(
                sqlx::query(
                    "UPDATE routing_rules SET name = ?, priority = ?, is_enabled = ?, \
                     match_json = ?, action_json = ?, key_id = ?, updated_at_ms = ? WHERE id = ?",
                ),
                &rule,
            )
            .bind(rule.updated_at_ms)
            .bind(rule.id)
            .execute(&mut *conn)
            .await
            .map_err(|e| unique_violation(e, || format!("routing rule named {:?}", rule.name)))?;
            Applied::Committed(Changed::RoutingRule(rule))
        }
        ConfigChange::DeleteRoutingRule { id } => {
            let done = sqlx::query("DELETE FROM routing_rules WHERE id = ?")
                .bind(id)
                .execute(&mut *conn)
                .await?;
            if done.rows_affected() == 0 {
                return Err(StoreError::NotFound(format!("routing rule {id}")));
            }
            Applied::Committed(Changed::RoutingRuleRemoved(id))
        }
        ConfigChange::SetRoutingConfig(config) => {
            // The key must exist; checked in the write transaction, and it stays true (keys
            // are revoked, never deleted).
            let key = sqlx::query("SELECT 1 FROM api_keys WHERE id = ?")
                .bind(&config.key_id)
                .fetch_optional(&mut *conn)
                .await?;
            if key.is_none() {
                return Err(StoreError::NotFound(format!("key {}", config.key_id)));
            }
            let rules: Vec<ConfigRuleJson> = config
                .rules
                .iter()
                .map(|r| ConfigRuleJson {
                    name: r.name.clone(),
                    match_json: r.match_json.clone(),
                    backends: backends_json(&r.backends),
                })
                .collect();
            sqlx::query(
                "INSERT INTO routing_configs (key_id, active, strategy, backends_json, \
                 rules_json, updated_at_ms) VALUES (?, ?, ?, ?, ?, ?) \
                 ON CONFLICT (key_id) DO UPDATE SET active = excluded.active, \
                 strategy = excluded.strategy, backends_json = excluded.backends_json, \
                 rules_json = excluded.rules_json, updated_at_ms = excluded.updated_at_ms",
            )
            .bind(&config.key_id)
            .bind(config.active)
            .bind(&config.strategy)
            .bind(encode_json(&backends_json(&config.backends))?)
            .bind(encode_json(&rules)?)
            .bind(config.updated_at_ms)
            .execute(&mut *conn)
            .await?;
            Applied::Committed(Changed::RoutingConfig(config))
        }
        ConfigChange::DeleteRoutingConfig { key_id } => {
            let done = sqlx::query("DELETE FROM routing_configs WHERE key_id = ?")
                .bind(&key_id)
                .execute(&mut *conn)
                .await?;
            if done.rows_affected() == 0 {
                return Err(StoreError::NotFound(format!(
                    "routing configuration of key {key_id}"
                )));
            }
            Applied::Committed(Changed::RoutingConfigRemoved(key_id))
        }
    };
    Ok(applied)
}

async fn load_config(conn: &mut SqliteConnection) -> Result<ConfigState, StoreError> {
    let version: i64 = sqlx::query("SELECT version FROM config_version WHERE id = 1")
        .fetch_one(&mut *conn)
        .await?
        .try_get(0)?;
    Ok(ConfigState {
        version: to_u64(version),
        keys: load_keys(conn).await?,
        workspaces: load_workspaces(conn).await?,
        providers: load_providers(conn).await?,
        models: load_models(conn).await?,
        firewall_rules: load_firewall_rules(conn).await?,
        routing_rules: load_routing_rules(conn).await?,
        routing_configs: load_routing_configs(conn).await?,
    })
}

type Query<'q> = sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments<'q>>;

/// Binds a rule's columns from `name` to `template` in table order, then `workspace_id`.
fn bind_rule<'q>(query: Query<'q>, r: &'q FirewallRuleRow) -> Query<'q> {
    query
        .bind(&r.name)
        .bind(r.priority)
        .bind(r.is_enabled)
        .bind(&r.scope)
        .bind(&r.match_type)
        .bind(&r.pattern)
        .bind(&r.action)
        .bind(&r.replacement)
        .bind(&r.key_id)
        .bind(i64::from(r.max_match_chars))
        .bind(&r.check)
        .bind(&r.template)
        .bind(&r.workspace_id)
}

async fn load_firewall_rules(
    conn: &mut SqliteConnection,
) -> Result<Vec<FirewallRuleRow>, StoreError> {
    sqlx::query(
        "SELECT id, name, priority, is_enabled, scope, type, pattern, action, replacement, key_id, \
         max_match_chars, \"check\", template, workspace_id, created_at_ms, updated_at_ms \
         FROM firewall_rules ORDER BY id",
    )
    .fetch_all(&mut *conn)
    .await?
    .iter()
    .map(|row| {
        Ok(FirewallRuleRow {
            id: row.try_get("id")?,
            name: row.try_get("name")?,
            priority: row.try_get("priority")?,
            is_enabled: row.try_get("is_enabled")?,
            scope: row.try_get("scope")?,
            match_type: row.try_get("type")?,
            pattern: row.try_get("pattern")?,
            action: row.try_get("action")?,
            replacement: row.try_get("replacement")?,
            key_id: row.try_get("key_id")?,
            workspace_id: row.try_get("workspace_id")?,
            max_match_chars: u32::try_from(row.try_get::<i64, _>("max_match_chars")?)
                .unwrap_or(0),
            check: row.try_get("check")?,
            template: row.try_get("template")?,
            created_at_ms: row.try_get("created_at_ms")?,
            updated_at_ms: row.try_get("updated_at_ms")?,
        })
    })
    .collect()
}

/// A list of strings as a JSON array (request log columns).
fn json_list(items: &[String]) -> String {
    serde_json::to_string(items).unwrap_or_else(|_| "[]".into())
}

fn parse_json_list(text: String) -> Vec<String> {
    serde_json::from_str(&text).unwrap_or_default()
}

/// One attempt in `request_logs.attempts_json`.
#[derive(Serialize, Deserialize)]
struct AttemptJson {
    provider: String,
    model: String,
    /// 0 = no response.
    status: u32,
    latency_ms: u64,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    error: String,
}

/// A record's attempts as a JSON array of objects (request log column `attempts_json`).
fn attempts_json(attempts: &[Attempt]) -> String {
    let rows: Vec<AttemptJson> = attempts
        .iter()
        .map(|a| AttemptJson {
            provider: a.provider.clone(),
            model: a.model.clone(),
            status: a.status,
            latency_ms: a.latency_ms,
            error: a.error.clone(),
        })
        .collect();
    serde_json::to_string(&rows).unwrap_or_else(|_| "[]".into())
}

fn parse_attempts(text: String) -> Vec<Attempt> {
    serde_json::from_str::<Vec<AttemptJson>>(&text)
        .unwrap_or_default()
        .into_iter()
        .map(|a| Attempt {
            provider: a.provider,
            model: a.model,
            status: a.status,
            latency_ms: a.latency_ms,
            error: a.error,
        })
        .collect()
}

/// A request log row as [`log_from_row`] reads it: the name and workspace of the key fall back
/// to the key's current ones for rows recorded without them; bodies are only flagged.
const LOG_SELECT: &str = "SELECT l.request_id, l.started_at_ms, l.key_id, l.client_api, \
     l.requested_model, l.provider, l.model, l.status, l.input_tokens, l.output_tokens, \
     l.cached_tokens, l.reasoning_tokens, l.latency_ms, l.cost_picos, l.stream, l.error_type, \
     l.node_id, l.received_at_ms, l.firewall_actions, l.warnings, l.mode, l.tier, l.rule_trace, \
     l.attempts_json, l.ttfb_ms, l.retry_after_s, l.metadata_json, l.idempotency_key, \
     l.replay_of, \
     CASE WHEN l.key_name = '' THEN COALESCE(k.name, '') ELSE l.key_name END AS key_name, \
     CASE WHEN l.workspace_id = '' THEN COALESCE(k.workspace_id, '') ELSE l.workspace_id END \
     AS workspace_id, \
     EXISTS (SELECT 1 FROM request_bodies b WHERE b.request_id = l.request_id) AS has_bodies \
     FROM request_logs l LEFT JOIN api_keys k ON k.id = l.key_id";

fn log_from_row(row: &sqlx::sqlite::SqliteRow) -> Result<LogEntry, StoreError> {
    Ok(LogEntry {
        record: UsageRecord {
            request_id: row.try_get("request_id")?,
            started_at_unix_ms: row.try_get("started_at_ms")?,
            key_id: row.try_get("key_id")?,
            client_api: row.try_get("client_api")?,
            requested_model: row.try_get("requested_model")?,
            provider: row.try_get("provider")?,
            model: row.try_get("model")?,
            status: u32::try_from(row.try_get::<i64, _>("status")?).unwrap_or(0),
            input_tokens: to_u64(row.try_get("input_tokens")?),
            output_tokens: to_u64(row.try_get("output_tokens")?),
            cached_tokens: to_u64(row.try_get("cached_tokens")?),
            reasoning_tokens: to_u64(row.try_get("reasoning_tokens")?),
            latency_ms: to_u64(row.try_get("latency_ms")?),
            cost_picos: row.try_get("cost_picos")?,
            stream: row.try_get("stream")?,
            error_type: row.try_get("error_type")?,
            node_id: row.try_get("node_id")?,
            firewall_actions: parse_json_list(row.try_get("firewall_actions")?),
            warnings: parse_json_list(row.try_get("warnings")?),
            mode: row.try_get("mode")?,
            tier: row.try_get("tier")?,
            rule_trace: row.try_get("rule_trace")?,
            attempts: parse_attempts(row.try_get("attempts_json")?),
            ttfb_ms: to_u64(row.try_get("ttfb_ms")?),
            retry_after_s: u32::try_from(row.try_get::<i64, _>("retry_after_s")?).unwrap_or(0),
            metadata_json: row.try_get("metadata_json")?,
            idempotency_key: row.try_get("idempotency_key")?,
            replay_of: row.try_get("replay_of")?,
            key_name: row.try_get("key_name")?,
            workspace_id: row.try_get("workspace_id")?,
            // Bodies are read only for one row (`get_log`); the idempotent response is the
            // idempotency store's.
            ..UsageRecord::default()
        },
        received_at_ms: row.try_get("received_at_ms")?,
        has_bodies: row.try_get("has_bodies")?,
    })
}

/// A `LIKE … ESCAPE '\'` pattern matching `text` anywhere (ASCII case-insensitive).
fn like_pattern(text: &str) -> String {
    let mut pattern = String::with_capacity(text.len() + 2);
    pattern.push('%');
    for c in text.chars() {
        if matches!(c, '%' | '_' | '\\') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push('%');
    pattern
}

/// The aggregates of a usage summary, read back by [`usage_totals_at`]: every request, the
/// failed ones, and tokens and cost of successful non-replayed ones. SQLite's SUM fails on i64
/// overflow, and one row may hold i64::MAX tokens: each column is summed as a high part and a
/// remainder (x = hi * 1e6 + lo), both far from overflow for any realistic number of rows, and
/// put together exactly in Rust. Every column read is in the covering indexes of 0005.
const USAGE_SUMS: &str = "COUNT(*), \
     COALESCE(SUM(CASE WHEN status BETWEEN 200 AND 299 THEN 0 ELSE 1 END), 0), \
     COALESCE(SUM(CASE WHEN status BETWEEN 200 AND 299 AND replay_of = '' \
         THEN input_tokens / 1000000 ELSE 0 END), 0), \
     COALESCE(SUM(CASE WHEN status BETWEEN 200 AND 299 AND replay_of = '' \
         THEN input_tokens % 1000000 ELSE 0 END), 0), \
     COALESCE(SUM(CASE WHEN status BETWEEN 200 AND 299 AND replay_of = '' \
         THEN output_tokens / 1000000 ELSE 0 END), 0), \
     COALESCE(SUM(CASE WHEN status BETWEEN 200 AND 299 AND replay_of = '' \
         THEN output_tokens % 1000000 ELSE 0 END), 0), \
     COALESCE(SUM(CASE WHEN status BETWEEN 200 AND 299 AND replay_of = '' \
         THEN cost_picos / 1000000 ELSE 0 END), 0), \
     COALESCE(SUM(CASE WHEN status BETWEEN 200 AND 299 AND replay_of = '' \
         THEN cost_picos % 1000000 ELSE 0 END), 0)";
/// How many columns [`USAGE_SUMS`] yields.
const USAGE_SUM_COLUMNS: usize = 8;

/// The [`USAGE_SUMS`] columns starting at `first`.
fn usage_totals_at(row: &sqlx::sqlite::SqliteRow, first: usize) -> Result<UsageTotals, StoreError> {
    let split = |hi: usize| -> Result<i128, StoreError> {
        let high: i64 = row.try_get(first + hi)?;
        let low: i64 = row.try_get(first + hi + 1)?;
        Ok(i128::from(high) * 1_000_000 + i128::from(low))
    };
    let tokens = |n: i128| u64::try_from(n.max(0)).unwrap_or(u64::MAX);
    Ok(UsageTotals {
        requests: to_u64(row.try_get(first)?),
        failed_requests: to_u64(row.try_get(first + 1)?),
        input_tokens: tokens(split(2)?),
        output_tokens: tokens(split(4)?),
        cost_picos: split(6)?,
    })
}

/// Two totals added (tokens saturate).
pub fn add_totals(a: UsageTotals, b: UsageTotals) -> UsageTotals {
    UsageTotals {
        requests: a.requests.saturating_add(b.requests),
        failed_requests: a.failed_requests.saturating_add(b.failed_requests),
        input_tokens: a.input_tokens.saturating_add(b.input_tokens),
        output_tokens: a.output_tokens.saturating_add(b.output_tokens),
        cost_picos: a.cost_picos.saturating_add(b.cost_picos),
    }
}

const KEY_SELECT: &str = "SELECT id, name, key_prefix, sha256, workspace_id, status, \
                          created_at_ms, revoked_at_ms, store_bodies, rps_limit, \
                          hour_total_tokens, hour_input_tokens, hour_output_tokens, \
                          balance_picos IS NOT NULL AS metered FROM api_keys";

const WORKSPACE_SELECT: &str = "SELECT id, created_at_ms, rps_limit, hour_total_tokens, \
                                hour_input_tokens, hour_output_tokens, \
                                balance_picos IS NOT NULL AS metered FROM workspaces";

/// Binds the four limit columns in table order (`NULL` = inherit).
fn bind_limits<'q>(query: Query<'q>, limits: &Limits) -> Query<'q> {
    let tokens = |v: Option<u64>| v.map(to_i64);
    query
        .bind(limits.rps.map(i64::from))
        .bind(tokens(limits.hour_total_tokens))
        .bind(tokens(limits.hour_input_tokens))
        .bind(tokens(limits.hour_output_tokens))
}

fn limits_from_row(row: &sqlx::sqlite::SqliteRow) -> Result<Limits, StoreError> {
    let get = |column: &str| -> Result<Option<i64>, StoreError> { Ok(row.try_get(column)?) };
    let tokens = |v: Option<i64>| v.map(to_u64);
    Ok(Limits {
        rps: get("rps_limit")?.map(|n| u32::try_from(n.max(0)).unwrap_or(u32::MAX)),
        hour_total_tokens: tokens(get("hour_total_tokens")?),
        hour_input_tokens: tokens(get("hour_input_tokens")?),
        hour_output_tokens: tokens(get("hour_output_tokens")?),
    })
}

async fn load_workspaces(conn: &mut SqliteConnection) -> Result<Vec<WorkspaceRow>, StoreError> {
    sqlx::query(&format!("{WORKSPACE_SELECT} ORDER BY id"))
        .fetch_all(&mut *conn)
        .await?
        .iter()
        .map(workspace_from_row)
        .collect()
}

fn workspace_from_row(row: &sqlx::sqlite::SqliteRow) -> Result<WorkspaceRow, StoreError> {
    Ok(WorkspaceRow {
        id: row.try_get("id")?,
        created_at_ms: row.try_get("created_at_ms")?,
        limits: limits_from_row(row)?,
        metered: row.try_get("metered")?,
    })
}

async fn load_keys(conn: &mut SqliteConnection) -> Result<Vec<KeyRow>, StoreError> {
    sqlx::query(&format!("{KEY_SELECT} ORDER BY created_at_ms, id"))
        .fetch_all(&mut *conn)
        .await?
        .iter()
        .map(key_from_row)
        .collect()
}

fn key_from_row(row: &sqlx::sqlite::SqliteRow) -> Result<KeyRow, StoreError> {
    let id: String = row.try_get("id")?;
    let sha: Vec<u8> = row.try_get("sha256")?;
    let status: String = row.try_get("status")?;
    Ok(KeyRow {
        sha256: sha
            .as_slice()
            .try_into()
            .map_err(|_| StoreError::Corrupt(format!("key {id}: sha256 is not 32 bytes")))?,
        status: KeyStatus::parse(&status)
            .ok_or_else(|| StoreError::Corrupt(format!("key {id}: status {status:?}")))?,
        name: row.try_get("name")?,
        key_prefix: row.try_get("key_prefix")?,
        workspace_id: row.try_get("workspace_id")?,
        created_at_ms: row.try_get("created_at_ms")?,
        revoked_at_ms: row.try_get("revoked_at_ms")?,
        store_bodies: row.try_get("store_bodies")?,
        limits: limits_from_row(row)?,
        metered: row.try_get("metered")?,
        id,
    })
}

async fn load_providers(conn: &mut SqliteConnection) -> Result<Vec<ProviderRow>, StoreError> {
    sqlx::query(
        "SELECT name, kind, base_url, credential_sealed, fallbacks_sealed, fallback_count, enabled, \
         created_at_ms FROM providers \
         ORDER BY created_at_ms, name",
    )
    .fetch_all(&mut *conn)
    .await?
    .iter()
    .map(|row| {
        Ok(ProviderRow {
            name: row.try_get("name")?,
            kind: row.try_get("kind")?,
            base_url: row.try_get("base_url")?,
            credential_sealed: row.try_get("credential_sealed")?,
            fallbacks_sealed: row.try_get("fallbacks_sealed")?,
            fallback_count: u32::try_from(row.try_get::<i64, _>("fallback_count")?).unwrap_or(0),
            enabled: row.try_get("enabled")?,
            created_at_ms: row.try_get("created_at_ms")?,
        })
    })
    .collect()
}

/// The `models` columns beyond the primary key `(provider_kind, id)`, in
/// [`bind_model_fields`] order.
const MODEL_FIELDS: [&str; 17] = [
    "upstream_model",
    "input_price_micros_per_mtok",
    "output_price_micros_per_mtok",
    "cached_input_price_micros_per_mtok",
    "context_window",
    "enabled",
    "tools",
    "vision",
    "json_mode",
    "streaming",
    "embeddings",
    "quality",
    "tier",
    "max_output_tokens",
    "price_source",
    "price_as_of",
    "display_name",
];

/// `INSERT` of a whole model (bind with [`bind_model`], then `updated_at_ms`); on a taken
/// `(kind, id)` either replace every field (`replace`) or do nothing.
fn insert_model_sql(replace: bool) -> String {
    let on_conflict = if replace {
        let sets: Vec<String> = MODEL_FIELDS
            .iter()
            .chain(&["updated_at_ms"])
            .map(|f| format!("{f} = excluded.{f}"))
            .collect();
        format!("UPDATE SET {}", sets.join(", "))
    } else {
        "NOTHING".to_string()
    };
    format!(
        "INSERT INTO models (provider_kind, id, {}, updated_at_ms) VALUES (?, ?, {}?) \
         ON CONFLICT (provider_kind, id) DO {on_conflict}",
        MODEL_FIELDS.join(", "),
        "?, ".repeat(MODEL_FIELDS.len()),
    )
}

/// Binds the primary key, then [`MODEL_FIELDS`].
fn bind_model<'q>(query: Query<'q>, m: &'q pb::Model) -> Query<'q> {
    bind_model_fields(query.bind(&m.provider_kind).bind(&m.id), m)
}

fn bind_model_fields<'q>(query: Query<'q>, m: &'q pb::Model) -> Query<'q> {
    query
        .bind(&m.upstream_model)
        .bind(m.input_price_micros_per_mtok)
        .bind(m.output_price_micros_per_mtok)
        .bind(m.cached_input_price_micros_per_mtok)
        .bind(i64::from(m.context_window))
        .bind(m.enabled)
        .bind(m.tools)
        .bind(m.vision)
        .bind(m.json_mode)
        .bind(m.streaming)
        .bind(m.embeddings)
        .bind(i64::from(m.quality))
        .bind(&m.tier)
        .bind(i64::from(m.max_output_tokens))
        .bind(&m.price_source)
        .bind(&m.price_as_of)
        .bind(&m.display_name)
}

async fn load_models(conn: &mut SqliteConnection) -> Result<Vec<pb::Model>, StoreError> {
    Ok(load_model_rows(conn)
        .await?
        .into_iter()
        .map(|r| r.model)
        .collect())
}

async fn load_model_rows(conn: &mut SqliteConnection) -> Result<Vec<ModelRow>, StoreError> {
    // rowid = seeding order = catalogue order, which bare-model resolution relies on.
    let u32_of = |row: &sqlx::sqlite::SqliteRow, column: &str| -> Result<u32, StoreError> {
        Ok(u32::try_from(row.try_get::<i64, _>(column)?).unwrap_or(u32::MAX))
    };
    sqlx::query(&format!(
        "SELECT provider_kind, id, {}, updated_at_ms FROM models ORDER BY rowid",
        MODEL_FIELDS.join(", ")
    ))
    .fetch_all(&mut *conn)
    .await?
    .iter()
    .map(|row| {
        Ok(ModelRow {
            model: pb::Model {
                id: row.try_get("id")?,
                provider_kind: row.try_get("provider_kind")?,
                upstream_model: row.try_get("upstream_model")?,
                input_price_micros_per_mtok: row.try_get("input_price_micros_per_mtok")?,
                output_price_micros_per_mtok: row.try_get("output_price_micros_per_mtok")?,
                cached_input_price_micros_per_mtok: row
                    .try_get("cached_input_price_micros_per_mtok")?,
                context_window: u32_of(row, "context_window")?,
                enabled: row.try_get("enabled")?,
                tools: row.try_get("tools")?,
                vision: row.try_get("vision")?,
                json_mode: row.try_get("json_mode")?,
                streaming: row.try_get("streaming")?,
                embeddings: row.try_get("embeddings")?,
                quality: u32_of(row, "quality")?,
                tier: row.try_get("tier")?,
                max_output_tokens: u32_of(row, "max_output_tokens")?,
                price_source: row.try_get("price_source")?,
                price_as_of: row.try_get("price_as_of")?,
                display_name: row.try_get("display_name")?,
            },
            updated_at_ms: row.try_get("updated_at_ms")?,
        })
    })
    .collect()
}

async fn load_routing_rules(
    conn: &mut SqliteConnection,
) -> Result<Vec<RoutingRuleRow>, StoreError> {
    sqlx::query(
        "SELECT id, name, priority, is_enabled, match_json, action_json, key_id, created_at_ms, \
         updated_at_ms FROM routing_rules ORDER BY id",
    )
    .fetch_all(&mut *conn)
    .await?
    .iter()
    .map(|row| {
        Ok(RoutingRuleRow {
            id: row.try_get("id")?,
            name: row.try_get("name")?,
            priority: row.try_get("priority")?,
            is_enabled: row.try_get("is_enabled")?,
            match_json: row.try_get("match_json")?,
            action_json: row.try_get("action_json")?,
            key_id: row.try_get("key_id")?,
            created_at_ms: row.try_get("created_at_ms")?,
            updated_at_ms: row.try_get("updated_at_ms")?,
        })
    })
    .collect()
}

/// Binds a routing rule's columns from `name` to `key_id`, in table order.
fn bind_routing_rule<'q>(query: Query<'q>, r: &'q RoutingRuleRow) -> Query<'q> {
    query
        .bind(&r.name)
        .bind(r.priority)
        .bind(r.is_enabled)
        .bind(&r.match_json)
        .bind(&r.action_json)
        .bind(&r.key_id)
}

/// A backend as stored in `routing_configs.backends_json` (and inside `rules_json`).
#[derive(Serialize, Deserialize)]
struct BackendJson {
    model: String,
    priority: i32,
    weight: u32,
}

/// A rule of the `rules` strategy as stored in `routing_configs.rules_json`.
#[derive(Serialize, Deserialize)]
struct ConfigRuleJson {
    name: String,
    match_json: String,
    backends: Vec<BackendJson>,
}

fn backends_json(backends: &[pb::Backend]) -> Vec<BackendJson> {
    backends
        .iter()
        .map(|b| BackendJson {
            model: b.model.clone(),
            priority: b.priority,
            weight: b.weight,
        })
        .collect()
}

fn backends_proto(backends: Vec<BackendJson>) -> Vec<pb::Backend> {
    backends
        .into_iter()
        .map(|b| pb::Backend {
            model: b.model,
            priority: b.priority,
            weight: b.weight,
        })
        .collect()
}

fn encode_json<T: Serialize>(value: &T) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(|e| StoreError::Corrupt(format!("encoding JSON: {e}")))
}

async fn load_routing_configs(
    conn: &mut SqliteConnection,
) -> Result<Vec<RoutingConfigRow>, StoreError> {
    sqlx::query(
        "SELECT key_id, active, strategy, backends_json, rules_json, updated_at_ms \
         FROM routing_configs ORDER BY key_id",
    )
    .fetch_all(&mut *conn)
    .await?
    .iter()
    .map(|row| {
        let key_id: String = row.try_get("key_id")?;
        let corrupt = |column: &str, e: serde_json::Error| {
            StoreError::Corrupt(format!("routing configuration of {key_id}: {column}: {e}"))
        };
        let backends: Vec<BackendJson> =
            serde_json::from_str(&row.try_get::<String, _>("backends_json")?)
                .map_err(|e| corrupt("backends_json", e))?;
        let rules: Vec<ConfigRuleJson> =
            serde_json::from_str(&row.try_get::<String, _>("rules_json")?)
                .map_err(|e| corrupt("rules_json", e))?;
        Ok(RoutingConfigRow {
            active: row.try_get("active")?,
            strategy: row.try_get("strategy")?,
            backends: backends_proto(backends),
            rules: rules
                .into_iter()
                .map(|r| pb::ConfigRule {
                    name: r.name,
                    match_json: r.match_json,
                    backends: backends_proto(r.backends),
                })
                .collect(),
            updated_at_ms: row.try_get("updated_at_ms")?,
            key_id,
        })
    })
    .collect()
}

fn unique_violation(e: sqlx::Error, what: impl FnOnce() -> String) -> StoreError {
    match &e {
        sqlx::Error::Database(db) if db.is_unique_violation() => StoreError::AlreadyExists(what()),
        _ => StoreError::Database(e),
    }
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn to_u64(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::store::StatusFilter;

    async fn temp_store() -> (SqliteStore, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/t.db?mode=rwc", dir.path().display());
        (SqliteStore::open(&url).await.unwrap(), dir)
    }

    fn key(id: &str, byte: u8) -> KeyRow {
        KeyRow {
            id: id.into(),
            name: "n".into(),
            key_prefix: "sk-tr-abcd".into(),
            sha256: [byte; 32],
            workspace_id: "default".into(),
            status: KeyStatus::Active,
            created_at_ms: 1,
            limits: Limits::default(),
            metered: false,
            revoked_at_ms: None,
            store_bodies: false,
        }
    }

    fn provider(name: &str, url: &str) -> ProviderRow {
        ProviderRow {
            name: name.into(),
            kind: "openai".into(),
            base_url: url.into(),
            credential_sealed: Some(vec![1, 2, 3]),
            fallbacks_sealed: None,
            fallback_count: 0,
            enabled: true,
            created_at_ms: 5,
        }
    }

    fn ok(_: Proposed<'_>) -> Result<(), String> {
        Ok(())
    }

    fn record(id: &str) -> UsageRecord {
        UsageRecord {
            request_id: id.into(),
            key_id: "key_1".into(),
            input_tokens: u64::MAX,
            cost_picos: 42,
            stream: true,
            ..UsageRecord::default()
        }
    }

    #[tokio::test]
    async fn keys_create_revoke_and_version() {
        let (store, _dir) = temp_store().await;
        let v0 = store.load_config().await.unwrap().version;
        let out = store
            .change_config(ConfigChange::CreateKey(key("key_a", 1)), &ok)
            .await
            .unwrap();
        assert_eq!(out.version, Some(v0 + 1));
        let state = store.load_config().await.unwrap();
        assert_eq!(state.version, v0 + 1);
        assert_eq!(state.keys.len(), 1);

        let dup = store
            .change_config(ConfigChange::CreateKey(key("key_b", 1)), &ok)
            .await;
        assert!(matches!(dup, Err(StoreError::AlreadyExists(_))), "{dup:?}");

        let revoke = || ConfigChange::RevokeKey {
            id: "key_a".into(),
            at_ms: 9,
        };
        let out = store.change_config(revoke(), &ok).await.unwrap();
        assert_eq!(out.version, Some(v0 + 2));
        let Changed::Key(k) = out.changed else {
            panic!("not a key")
        };
        assert_eq!((k.status, k.revoked_at_ms), (KeyStatus::Revoked, Some(9)));
        // Revoking again is a no-op: no new version.
        let again = store.change_config(revoke(), &ok).await.unwrap();
        assert!(again.version.is_none());
        assert_eq!(store.load_config().await.unwrap().version, v0 + 2);

        let missing = store
            .change_config(
                ConfigChange::RevokeKey {
                    id: "key_x".into(),
                    at_ms: 1,
                },
                &ok,
            )
            .await;
        assert!(matches!(missing, Err(StoreError::NotFound(_))));
    }

    /// Regression: 16 concurrent writes used to fail with SQLite's "database is locked" once
    /// each write held the lock long enough. Now they queue: all commit, each its own version.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_writes_queue_instead_of_failing() {
        let (store, _dir) = temp_store().await;
        let store = Arc::new(store);
        let v0 = store.load_config().await.unwrap().version;
        // A slow check keeps each write transaction open, as a large configuration used to.
        let slow = |_: Proposed<'_>| {
            std::thread::sleep(Duration::from_millis(20));
            Ok(())
        };
        let writes: Vec<_> = (0..16u8)
            .map(|i| {
                let store = store.clone();
                tokio::spawn(async move {
                    let change = ConfigChange::CreateKey(key(&format!("key_{i}"), i));
                    let version = store.change_config(change, &slow).await?.version;
                    // Usage batches share the writer queue.
                    store.insert_usage(&[record(&format!("r{i}"))], 1).await?;
                    Ok::<_, StoreError>(version)
                })
            })
            .collect();
        let mut versions = Vec::new();
        for w in writes {
            versions.push(w.await.unwrap().unwrap().unwrap());
        }
        versions.sort_unstable();
        let expected: Vec<u64> = (v0 + 1..=v0 + 16).collect();
        assert_eq!(versions, expected);
        assert_eq!(store.load_config().await.unwrap().keys.len(), 16);
    }

    #[tokio::test]
    async fn rejected_change_is_rolled_back() {
        let (store, _dir) = temp_store().await;
        let before = store.load_config().await.unwrap();
        let refuse = |_: Proposed<'_>| Err("no".to_string());
        let out = store
            .change_config(ConfigChange::CreateKey(key("key_a", 1)), &refuse)
            .await;
        assert!(matches!(out, Err(StoreError::Rejected(_))));
        let after = store.load_config().await.unwrap();
        assert_eq!(after.version, before.version);
        assert!(after.keys.is_empty());
    }

    #[tokio::test]
    async fn providers_add_replace_remove() {
        let (store, _dir) = temp_store().await;
        let put = |row, replace| ConfigChange::PutProvider { row, replace };
        store
            .change_config(put(provider("p", "http://a"), false), &ok)
            .await
            .unwrap();
        let dup = store
            .change_config(put(provider("p", "http://b"), false), &ok)
            .await;
        assert!(matches!(dup, Err(StoreError::AlreadyExists(_))));
        let mut replacement = provider("p", "http://b");
        replacement.created_at_ms = 99;
        replacement.credential_sealed = None;
        let out = store
            .change_config(put(replacement, true), &ok)
            .await
            .unwrap();
        let Changed::Provider(p) = out.changed else {
            panic!("not a provider")
        };
        assert_eq!(p.created_at_ms, 5, "replacement keeps its creation time");
        let listed = store.list_providers().await.unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].base_url, "http://b");
        assert_eq!(listed[0].credential_sealed, None);

        store
            .change_config(ConfigChange::RemoveProvider { name: "p".into() }, &ok)
            .await
            .unwrap();
        assert!(store.list_providers().await.unwrap().is_empty());
        let gone = store
            .change_config(ConfigChange::RemoveProvider { name: "p".into() }, &ok)
            .await;
        assert!(matches!(gone, Err(StoreError::NotFound(_))));
    }

    #[tokio::test]
    async fn models_are_seeded_once_in_order() {
        let (store, _dir) = temp_store().await;
        let builtin = tokenrouter_engine::catalogue::builtin().unwrap();
        let out = store
            .change_config(ConfigChange::SeedModels(builtin.clone()), &ok)
            .await
            .unwrap();
        assert_eq!(out.changed, Changed::ModelsSeeded(builtin.clone()));
        let again = store
            .change_config(ConfigChange::SeedModels(builtin.clone()), &ok)
            .await
            .unwrap();
        assert!(again.version.is_none());
        let rows = store.list_models().await.unwrap();
        assert!(rows.iter().all(|r| r.updated_at_ms == 0));
        let models: Vec<pb::Model> = rows.into_iter().map(|r| r.model).collect();
        assert_eq!(
            models, builtin,
            "every column round-trips, in catalogue order"
        );
    }

    fn model(id: &str) -> pb::Model {
        pb::Model {
            id: id.into(),
            provider_kind: "openai".into(),
            upstream_model: id.into(),
            input_price_micros_per_mtok: 1,
            output_price_micros_per_mtok: 2,
            cached_input_price_micros_per_mtok: 3,
            context_window: 1000,
            enabled: true,
            tools: true,
            vision: true,
            json_mode: true,
            streaming: true,
            embeddings: false,
            quality: 70,
            tier: "complex".into(),
            max_output_tokens: 100,
            price_source: "https://example.com/pricing".into(),
            price_as_of: "2025-01-01".into(),
            display_name: id.to_uppercase(),
        }
    }

    /// Every start inserts the built-in models the table lacks; rows that exist keep the
    /// operator's values, and rows from before the capability columns get those filled once.
    #[tokio::test]
    async fn seeding_adds_missing_models_and_keeps_operator_edits() {
        let (store, _dir) = temp_store().await;
        let v1 = vec![model("a"), model("b")];
        store
            .change_config(ConfigChange::SeedModels(v1), &ok)
            .await
            .unwrap();
        // The operator edits "a"; "b" is a row as migrated from before 0003 (no capabilities).
        let mut edited = model("a");
        edited.input_price_micros_per_mtok = 999;
        edited.enabled = false;
        edited.quality = 5;
        store
            .change_config(
                ConfigChange::UpdateModel(ModelRow {
                    model: edited.clone(),
                    updated_at_ms: 7,
                }),
                &ok,
            )
            .await
            .unwrap();
        sqlx::query(
            "UPDATE models SET tools = 0, quality = 0, tier = '', price_source = '', \
             input_price_micros_per_mtok = 42 WHERE id = 'b'",
        )
        .execute(&store.pool)
        .await
        .unwrap();

        // A newer catalogue: new values for all three, and a new model "c".
        let newer: Vec<pb::Model> = ["a", "b", "c"]
            .iter()
            .map(|id| pb::Model {
                quality: 88,
                input_price_micros_per_mtok: 5,
                ..model(id)
            })
            .collect();
        let out = store
            .change_config(ConfigChange::SeedModels(newer.clone()), &ok)
            .await
            .unwrap();
        let Changed::ModelsSeeded(seeded) = out.changed else {
            panic!("not a seed")
        };
        let ids: Vec<&str> = seeded.iter().map(|m| m.id.as_str()).collect();
        assert_eq!(ids, ["b", "c"]);
        let rows = store.list_models().await.unwrap();
        let ids: Vec<&str> = rows.iter().map(|r| r.model.id.as_str()).collect();
        assert_eq!(ids, ["a", "b", "c"], "new models come last");
        assert_eq!(rows[0].model, edited, "operator edits win");
        assert_eq!(rows[0].updated_at_ms, 7);
        let b = &rows[1].model;
        assert_eq!((b.quality, b.tier.as_str(), b.tools), (88, "complex", true));
        assert_eq!(
            b.input_price_micros_per_mtok, 42,
            "prices are never overwritten"
        );
        assert_eq!(rows[2].model, newer[2]);

        // The fill happens once: a later catalogue changes nothing that exists.
        let out = store
            .change_config(ConfigChange::SeedModels(newer), &ok)
            .await
            .unwrap();
        assert!(out.version.is_none());
    }

    #[tokio::test]
    async fn models_upsert_and_update() {
        let (store, _dir) = temp_store().await;
        let row = |m: pb::Model| ModelRow {
            model: m,
            updated_at_ms: 3,
        };
        let missing = store
            .change_config(ConfigChange::UpdateModel(row(model("a"))), &ok)
            .await;
        assert!(
            matches!(missing, Err(StoreError::NotFound(_))),
            "{missing:?}"
        );
        for id in ["a", "b"] {
            store
                .change_config(ConfigChange::UpsertModel(row(model(id))), &ok)
                .await
                .unwrap();
        }
        let changed = pb::Model {
            embeddings: true,
            streaming: false,
            tier: "simple".into(),
            ..model("a")
        };
        let out = store
            .change_config(ConfigChange::UpsertModel(row(changed.clone())), &ok)
            .await
            .unwrap();
        assert_eq!(out.changed, Changed::Model(row(changed.clone())));
        let rows = store.list_models().await.unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0], row(changed), "replaced in place");
        // A refused model is rolled back.
        let refuse = |_: Proposed<'_>| Err("no".to_string());
        let out = store
            .change_config(ConfigChange::UpsertModel(row(model("z"))), &refuse)
            .await;
        assert!(matches!(out, Err(StoreError::Rejected(_))));
        assert_eq!(store.list_models().await.unwrap().len(), 2);
    }

    fn routing_rule(name: &str) -> RoutingRuleRow {
        RoutingRuleRow {
            id: 0,
            name: name.into(),
            priority: 100,
            is_enabled: true,
            match_json: r#"{"task":"coding"}"#.into(),
            action_json: r#"{"set_model":"gpt-4o"}"#.into(),
            key_id: String::new(),
            created_at_ms: 1,
            updated_at_ms: 1,
        }
    }

    #[tokio::test]
    async fn routing_rules_crud() {
        let (store, _dir) = temp_store().await;
        let counted = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = counted.clone();
        let count = move |p: Proposed<'_>| {
            if let Proposed::RoutingRule { count, .. } = p {
                seen.lock().unwrap().push(count);
            }
            Ok(())
        };
        let Changed::RoutingRule(a) = store
            .change_config(ConfigChange::CreateRoutingRule(routing_rule("a")), &count)
            .await
            .unwrap()
            .changed
        else {
            panic!("not a rule")
        };
        assert!(a.id > 0);
        store
            .change_config(ConfigChange::CreateRoutingRule(routing_rule("b")), &count)
            .await
            .unwrap();
        assert_eq!(*counted.lock().unwrap(), [1, 2]);
        let dup = store
            .change_config(ConfigChange::CreateRoutingRule(routing_rule("a")), &ok)
            .await;
        assert!(matches!(dup, Err(StoreError::AlreadyExists(_))), "{dup:?}");

        let mut changed = RoutingRuleRow {
            priority: -5,
            is_enabled: false,
            key_id: "key_x".into(),
            created_at_ms: 99,
            updated_at_ms: 50,
            ..a.clone()
        };
        store
            .change_config(ConfigChange::UpdateRoutingRule(changed.clone()), &ok)
            .await
            .unwrap();
        changed.created_at_ms = a.created_at_ms;
        let listed = store.list_routing_rules().await.unwrap();
        assert_eq!(listed[0], changed, "creation time kept");
        assert_eq!(store.load_config().await.unwrap().routing_rules, listed);

        let rename_to_taken = RoutingRuleRow {
            name: "b".into(),
            ..changed.clone()
        };
        let taken = store
            .change_config(ConfigChange::UpdateRoutingRule(rename_to_taken), &ok)
            .await;
        assert!(matches!(taken, Err(StoreError::AlreadyExists(_))));
        store
            .change_config(ConfigChange::DeleteRoutingRule { id: a.id }, &ok)
            .await
            .unwrap();
        for change in [
            ConfigChange::DeleteRoutingRule { id: a.id },
            ConfigChange::UpdateRoutingRule(changed),
        ] {
            let gone = store.change_config(change, &ok).await;
            assert!(matches!(gone, Err(StoreError::NotFound(_))), "{gone:?}");
        }
        assert_eq!(store.list_routing_rules().await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn routing_configs_set_replace_delete() {
        let (store, _dir) = temp_store().await;
        let backend = |model: &str, weight| pb::Backend {
            model: model.into(),
            priority: 0,
            weight,
        };
        let config = RoutingConfigRow {
            key_id: "key_a".into(),
            active: true,
            strategy: "rules".into(),
            backends: vec![backend("openai/gpt-4o", 3), backend("é/ü", 1)],
            rules: vec![pb::ConfigRule {
                name: "code".into(),
                match_json: r#"{"headers":{"x-team":"a"}}"#.into(),
                backends: vec![backend("gpt-4o-mini", 0)],
            }],
            updated_at_ms: 5,
        };
        let no_key = store
            .change_config(ConfigChange::SetRoutingConfig(config.clone()), &ok)
            .await;
        assert!(matches!(no_key, Err(StoreError::NotFound(_))), "{no_key:?}");
        store
            .change_config(ConfigChange::CreateKey(key("key_a", 1)), &ok)
            .await
            .unwrap();
        store
            .change_config(ConfigChange::SetRoutingConfig(config.clone()), &ok)
            .await
            .unwrap();
        assert_eq!(
            store.list_routing_configs().await.unwrap(),
            std::slice::from_ref(&config)
        );
        let replaced = RoutingConfigRow {
            active: false,
            strategy: "split".into(),
            rules: Vec::new(),
            ..config
        };
        store
            .change_config(ConfigChange::SetRoutingConfig(replaced.clone()), &ok)
            .await
            .unwrap();
        let state = store.load_config().await.unwrap();
        assert_eq!(state.routing_configs, [replaced]);

        let delete = || ConfigChange::DeleteRoutingConfig {
            key_id: "key_a".into(),
        };
        store.change_config(delete(), &ok).await.unwrap();
        assert!(store.list_routing_configs().await.unwrap().is_empty());
        let gone = store.change_config(delete(), &ok).await;
        assert!(matches!(gone, Err(StoreError::NotFound(_))));
    }

    #[tokio::test]
    async fn firewall_columns_of_the_request_log_round_trip() {
        let (store, _dir) = temp_store().await;
        let mut r = record("fw");
        r.firewall_actions = vec!["mask:prompt:a, b".into(), "warn:response:é".into()];
        r.warnings = vec!["firewall rule 'é' matched the response".into()];
        store
            .insert_usage(&[r.clone(), record("plain")], 1)
            .await
            .unwrap();
        let rows = store
            .list_logs(&LogQuery {
                limit: 10,
                ..LogQuery::default()
            })
            .await
            .unwrap();
        assert_eq!(rows[1].record.firewall_actions, r.firewall_actions);
        assert_eq!(rows[1].record.warnings, r.warnings);
        assert!(rows[0].record.firewall_actions.is_empty() && rows[0].record.warnings.is_empty());
    }

    #[tokio::test]
    async fn routing_columns_of_the_request_log_round_trip() {
        let (store, _dir) = temp_store().await;
        let mut r = record("routed");
        r.input_tokens = 7;
        r.mode = "latency".into();
        r.tier = "complex".into();
        r.rule_trace = r#"[{"rule":"eu","id":3,"matched":true}]"#.into();
        r.attempts = vec![
            Attempt {
                provider: "openai".into(),
                model: "gpt-4o".into(),
                status: 503,
                latency_ms: 40,
                error: "http_503".into(),
            },
            Attempt {
                provider: "azure".into(),
                model: "gpt-4o".into(),
                status: 0,
                latency_ms: 60_000,
                error: "timeout".into(),
            },
            Attempt {
                provider: "claude".into(),
                model: "sonnet-é".into(),
                status: 200,
                latency_ms: 700,
                error: String::new(),
            },
        ];
        r.ttfb_ms = 812;
        r.retry_after_s = 30;
        store
            .insert_usage(&[r.clone(), record("plain")], 1)
            .await
            .unwrap();
        let rows = store
            .list_logs(&LogQuery {
                limit: 10,
                ..LogQuery::default()
            })
            .await
            .unwrap();
        assert_eq!(rows[1].record, r);
        let plain = &rows[0].record;
        assert!(plain.attempts.is_empty() && plain.rule_trace.is_empty());
        assert!(plain.mode.is_empty() && plain.tier.is_empty());
        assert_eq!((plain.ttfb_ms, plain.retry_after_s), (0, 0));
    }

    #[tokio::test]
    async fn usage_batches_are_idempotent() {
        let (store, _dir) = temp_store().await;
        let batch = vec![record("r1"), record("r2")];
        assert_eq!(store.insert_usage(&batch, 100).await.unwrap(), [0, 1]);
        assert!(store.insert_usage(&batch, 200).await.unwrap().is_empty());
        assert_eq!(
            store
                .insert_usage(&[record("r2"), record("r3"), record("r3")], 300)
                .await
                .unwrap(),
            [1],
            "only the first r3 is new"
        );
        let all = store
            .list_logs(&LogQuery {
                limit: 10,
                ..LogQuery::default()
            })
            .await
            .unwrap();
        let ids: Vec<_> = all.iter().map(|e| e.record.request_id.as_str()).collect();
        assert_eq!(ids, ["r3", "r2", "r1"]);
        assert_eq!(all[1].received_at_ms, 100, "a resend does not overwrite");
        assert_eq!(all[0].record.input_tokens, i64::MAX as u64);
        assert!(all[0].record.stream);

        let page = store
            .list_logs(&LogQuery {
                limit: 10,
                key_id: Some("key_1".into()),
                before_request_id: Some("r2".into()),
                ..LogQuery::default()
            })
            .await
            .unwrap();
        assert_eq!(page.len(), 1);
        assert_eq!(page[0].record.request_id, "r1");
        let none = store
            .list_logs(&LogQuery {
                limit: 10,
                key_id: Some("other".into()),
                before_request_id: None,
                ..LogQuery::default()
            })
            .await
            .unwrap();
        assert!(none.is_empty());
        let bad = store
            .list_logs(&LogQuery {
                limit: 10,
                key_id: None,
                before_request_id: Some("nope".into()),
                ..LogQuery::default()
            })
            .await;
        assert!(matches!(bad, Err(StoreError::NotFound(_))));
    }

    #[tokio::test]
    async fn log_filters_and_usage_totals() {
        let (store, _dir) = temp_store().await;
        let row = |id: &str, key: &str, provider: &str, status: u32, cost: i64| UsageRecord {
            request_id: id.into(),
            key_id: key.into(),
            provider: provider.into(),
            model: "gpt-4o".into(),
            requested_model: format!("{provider}/gpt-4o"),
            status,
            input_tokens: 10,
            output_tokens: 5,
            cost_picos: cost,
            ..UsageRecord::default()
        };
        store
            .insert_usage(&[row("a", "k1", "openai", 200, 1_500_000)], 1_000)
            .await
            .unwrap();
        store
            .insert_usage(
                &[
                    row("b", "k1", "claude", 500, 7),
                    row("c", "k2", "openai", 201, 2_000_001),
                ],
                2_000,
            )
            .await
            .unwrap();
        let ids = |q: LogQuery| {
            let store = &store;
            async move {
                let rows = store.list_logs(&LogQuery { limit: 10, ..q }).await.unwrap();
                rows.into_iter()
                    .map(|e| e.record.request_id)
                    .collect::<Vec<_>>()
            }
        };
        let provider = |p: &str| LogQuery {
            provider: Some(p.into()),
            ..LogQuery::default()
        };
        assert_eq!(ids(provider("openai")).await, ["c", "a"]);
        let status = |s: &str| LogQuery {
            status: Some(StatusFilter::parse(s).unwrap()),
            ..LogQuery::default()
        };
        assert_eq!(ids(status("500")).await, ["b"]);
        assert_eq!(ids(status("2xx")).await, ["c", "a"]);
        assert_eq!(ids(status("5XX")).await, ["b"]);
        assert!(ids(status("4xx")).await.is_empty());
        let model = |m: &str| LogQuery {
            model: Some(m.into()),
            ..LogQuery::default()
        };
        assert_eq!(ids(model("gpt-4o")).await.len(), 3);
        assert_eq!(ids(model("claude/gpt-4o")).await, ["b"]);
        let window = LogQuery {
            since_ms: Some(1_500),
            until_ms: Some(2_001),
            key_id: Some("k1".into()),
            ..LogQuery::default()
        };
        assert_eq!(ids(window).await, ["b"]);
        let until = LogQuery {
            until_ms: Some(2_000),
            ..LogQuery::default()
        };
        assert_eq!(ids(until).await, ["a"]);

        let totals = |since_ms: i64, key: Option<&str>| {
            let store = &store;
            let query = UsageQuery {
                since_ms,
                key_id: key.map(str::to_string),
                group_by: None,
            };
            async move { store.usage(&query).await.unwrap().totals }
        };
        assert_eq!(
            totals(0, None).await,
            UsageTotals {
                requests: 3,
                failed_requests: 1,
                input_tokens: 20,
                output_tokens: 10,
                cost_picos: 3_500_001,
            },
            "the 500 is counted as a request, not as tokens or spend"
        );
        assert_eq!(totals(0, None).await.successful(), 2);
        let recent = totals(1_500, Some("k1")).await;
        assert_eq!((recent.requests, recent.failed_requests), (1, 1));
        assert_eq!((recent.input_tokens, recent.cost_picos), (0, 0));
        assert_eq!(totals(2_001, None).await, UsageTotals::default());
        // Sums that would overflow i64 are still exact.
        let huge: Vec<UsageRecord> = (0..3)
            .map(|i| UsageRecord {
                input_tokens: u64::MAX,
                cost_picos: i64::MAX,
                ..row(&format!("h{i}"), "big", "openai", 200, 0)
            })
            .collect();
        store.insert_usage(&huge, 3_000).await.unwrap();
        let big = totals(0, Some("big")).await;
        assert_eq!(big.requests, 3);
        assert_eq!(big.input_tokens, u64::MAX, "saturates instead of wrapping");
        assert_eq!(big.cost_picos, 3 * i128::from(i64::MAX));
    }

    fn usage_row(id: &str, key: &str, model: &str, status: u32, at_day: i64) -> UsageRecord {
        UsageRecord {
            request_id: id.into(),
            key_id: key.into(),
            provider: format!("p-{model}"),
            model: model.into(),
            status,
            input_tokens: 100,
            output_tokens: 10,
            cost_picos: 1_000_000 * (at_day + 1),
            ..UsageRecord::default()
        }
    }

    #[tokio::test]
    async fn usage_breakdowns_and_key_totals() {
        let (store, _dir) = temp_store().await;
        store
            .change_config(ConfigChange::CreateKey(key("key_a", 1)), &ok)
            .await
            .unwrap();
        let day = 86_400_000;
        let base = 20_000 * day; // 2024-10-04
        store
            .insert_usage(
                &[
                    usage_row("1", "key_a", "m1", 200, 0),
                    usage_row("2", "key_a", "m2", 429, 0),
                    usage_row("3", "key_b", "m1", 200, 0),
                ],
                base + 5,
            )
            .await
            .unwrap();
        let replay = UsageRecord {
            replay_of: "1".into(),
            ..usage_row("4", "key_a", "m1", 200, 1)
        };
        store
            .insert_usage(
                &[usage_row("5", "key_a", "m1", 201, 1), replay],
                base + day + 7,
            )
            .await
            .unwrap();
        let report = |group_by, key: Option<&str>| {
            let store = &store;
            let query = UsageQuery {
                since_ms: base,
                key_id: key.map(str::to_string),
                group_by: Some(group_by),
            };
            async move {
                let mut r = store.usage(&query).await.unwrap();
                r.groups.sort_by_key(|(k, _)| format!("{k:?}"));
                r
            }
        };
        let t = |requests, failed_requests, ok: u64, cost_picos| UsageTotals {
            requests,
            failed_requests,
            input_tokens: 100 * ok,
            output_tokens: 10 * ok,
            cost_picos,
        };
        let by_key = report(UsageGroupBy::Key, None).await;
        assert_eq!(
            by_key.totals,
            t(5, 1, 3, 4_000_000),
            "the replay is not charged"
        );
        assert_eq!(
            by_key.groups,
            [
                (
                    UsageGroupKey::Key {
                        id: "key_a".into(),
                        name: "n".into()
                    },
                    t(4, 1, 2, 3_000_000)
                ),
                (
                    UsageGroupKey::Key {
                        id: "key_b".into(),
                        name: String::new()
                    },
                    t(1, 0, 1, 1_000_000)
                ),
            ]
        );
        let by_model = report(UsageGroupBy::Model, Some("key_a")).await;
        assert_eq!(
            by_model.groups,
            [
                (UsageGroupKey::Model("m1".into()), t(3, 0, 2, 3_000_000)),
                (UsageGroupKey::Model("m2".into()), t(1, 1, 0, 0)),
            ]
        );
        let by_provider = report(UsageGroupBy::Provider, None).await;
        assert_eq!(
            by_provider.groups[1].0,
            UsageGroupKey::Provider("p-m2".into())
        );
        let by_day = report(UsageGroupBy::Day, None).await;
        assert_eq!(
            by_day.groups,
            [
                (UsageGroupKey::Day(20_000), t(3, 1, 2, 2_000_000)),
                (UsageGroupKey::Day(20_001), t(2, 0, 1, 2_000_000)),
            ]
        );
        assert_eq!(by_day.totals, by_key.totals);

        let keys = store.key_usage(None).await.unwrap();
        assert_eq!(keys.len(), 2);
        assert_eq!(
            keys["key_a"],
            KeyUsage {
                requests: 4,
                failed_requests: 1,
                input_tokens: 200,
                output_tokens: 20,
                cost_picos: 3_000_000,
                last_used_at_ms: Some(base + day + 7),
            }
        );
        let one = store.key_usage(Some("key_b")).await.unwrap();
        assert_eq!(one.len(), 1);
        assert_eq!(one["key_b"].last_used_at_ms, Some(base + 5));
        assert!(store.key_usage(Some("key_x")).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn analytics_columns_bodies_and_metadata_search() {
        let (store, _dir) = temp_store().await;
        let mut k = key("key_a", 1);
        k.name = "current".into();
        k.workspace_id = "team".into();
        store
            .change_config(ConfigChange::CreateKey(k), &ok)
            .await
            .unwrap();
        let full = UsageRecord {
            metadata_json: r#"{"user":"Alice_1","pct":"50%"}"#.into(),
            idempotency_key: "idem-1".into(),
            key_name: "at-the-time".into(),
            workspace_id: "ws".into(),
            request_body: br#"{"model":"m"}"#.to_vec(),
            response_body: vec![0xff, 0x00],
            bodies_truncated: true,
            ..usage_row("full", "key_a", "m", 200, 0)
        };
        let replay = UsageRecord {
            replay_of: "full".into(),
            idempotency_key: "idem-1".into(),
            metadata_json: r#"{"user":"bob"}"#.into(),
            ..usage_row("replay", "key_a", "m", 200, 0)
        };
        store
            .insert_usage(&[full.clone(), replay], 1)
            .await
            .unwrap();
        let listed = store
            .list_logs(&LogQuery {
                limit: 10,
                ..LogQuery::default()
            })
            .await
            .unwrap();
        let (r, f) = (&listed[0], &listed[1]);
        assert!(f.has_bodies && !r.has_bodies);
        assert!(f.record.request_body.is_empty(), "lists carry no bodies");
        assert_eq!(f.record.metadata_json, full.metadata_json);
        assert_eq!(
            (f.record.key_name.as_str(), f.record.workspace_id.as_str()),
            ("at-the-time", "ws")
        );
        assert_eq!(r.record.replay_of, "full");
        assert_eq!(
            (r.record.key_name.as_str(), r.record.workspace_id.as_str()),
            ("current", "team"),
            "rows without a key name show the key's"
        );
        let got = store.get_log("full").await.unwrap().unwrap();
        assert_eq!(got.record, full, "every field round-trips, bodies included");
        assert!(store.get_log("nope").await.unwrap().is_none());
        let bare = store.get_log("replay").await.unwrap().unwrap();
        assert!(bare.record.request_body.is_empty() && !bare.has_bodies);

        let search = |text: &str| {
            let store = &store;
            let query = LogQuery {
                limit: 10,
                metadata_contains: Some(text.into()),
                ..LogQuery::default()
            };
            async move {
                let rows = store.list_logs(&query).await.unwrap();
                rows.into_iter()
                    .map(|e| e.record.request_id)
                    .collect::<Vec<_>>()
            }
        };
        assert_eq!(search("alice").await, ["full"], "ASCII case-insensitive");
        assert_eq!(search("\"user\"").await, ["replay", "full"]);
        assert_eq!(search("50%").await, ["full"]);
        assert!(search("5%0").await.is_empty(), "% is literal");
        assert_eq!(search("e_1").await, ["full"]);
        assert!(search("Alice-1").await.is_empty(), "_ is literal");
        // A filter and the cursor together.
        let page = store
            .list_logs(&LogQuery {
                limit: 10,
                metadata_contains: Some("user".into()),
                before_request_id: Some("replay".into()),
                ..LogQuery::default()
            })
            .await
            .unwrap();
        assert_eq!(page.len(), 1);
        assert_eq!(page[0].record.request_id, "full");
    }

    #[tokio::test]
    async fn keys_are_updated_field_by_field() {
        let (store, _dir) = temp_store().await;
        store
            .change_config(ConfigChange::CreateKey(key("key_a", 1)), &ok)
            .await
            .unwrap();
        let update = |name: Option<&str>, store_bodies| ConfigChange::UpdateKey {
            id: "key_a".into(),
            name: name.map(str::to_string),
            store_bodies,
            limits: Limits::default(),
        };
        let out = store
            .change_config(update(None, Some(true)), &ok)
            .await
            .unwrap();
        assert!(out.version.is_some());
        let Changed::Key(k) = out.changed else {
            panic!("not a key")
        };
        assert!(k.store_bodies);
        assert_eq!(k.name, "n");
        let out = store
            .change_config(update(Some("renamed"), None), &ok)
            .await
            .unwrap();
        assert!(out.version.is_some());
        let stored = store.get_key("key_a").await.unwrap().unwrap();
        assert_eq!(
            (stored.name.as_str(), stored.store_bodies),
            ("renamed", true)
        );
        assert_eq!(store.load_config().await.unwrap().keys, [stored]);
        let same = store
            .change_config(update(Some("renamed"), Some(true)), &ok)
            .await
            .unwrap();
        assert!(same.version.is_none(), "no change, no version");
        let missing = store
            .change_config(
                ConfigChange::UpdateKey {
                    id: "key_x".into(),
                    name: None,
                    store_bodies: Some(true),
                    limits: Limits::default(),
                },
                &ok,
            )
            .await;
        assert!(matches!(missing, Err(StoreError::NotFound(_))));
        assert!(store.get_key("key_x").await.unwrap().is_none());
    }

    #[tokio::test]
    async fn keys_are_found_by_hash() {
        let (store, _dir) = temp_store().await;
        let k = key("key_a", 1);
        store
            .change_config(ConfigChange::CreateKey(k.clone()), &ok)
            .await
            .unwrap();
        assert_eq!(store.find_key_by_hash(&k.sha256).await.unwrap(), Some(k));
        assert_eq!(store.find_key_by_hash(&[0; 32]).await.unwrap(), None);
    }
}
