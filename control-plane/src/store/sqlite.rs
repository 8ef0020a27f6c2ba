//! The embedded default: SQLite through sqlx, in WAL mode, migrations from `migrations/sqlite/`.
//!
//! Writes (configuration changes and usage batches) are serialised in the process by a FIFO
//! mutex and run in `BEGIN IMMEDIATE` transactions, so they queue in arrival order instead of
//! racing for SQLite's write lock; the `busy_timeout` covers writers outside this process (the
//! CLI on the same file). Reads run concurrently with a write (WAL).

use std::collections::{BTreeMap, HashMap};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, SqliteConnection, SqlitePool};
use tokenrouter_proto::config::v1 as pb;
use tokenrouter_proto::sync::v1::UsageRecord;

use super::rows::{
    add_totals, attempts_json, counted_table, json_list, like_pattern, limit_columns,
    limits_from_columns, parse_attempts, parse_json_list, proposed, routing_config_from_columns,
    routing_config_json, to_i64, to_u32_saturating, to_u64, unique_violation, usage_totals,
    RoutingConfigColumns, MODEL_FIELDS, USAGE_SUM_COLUMNS,
};
use super::traces::{BatchTraces, KnownTraces};
use super::{
    ChangeOutcome, Changed, Check, ConfigChange, ConfigState, FirewallRuleRow, KeyRow, KeyStatus,
    KeyUsage, Limits, LogEntry, LogQuery, ModelRow, ProviderRow, RoutingConfigRow, RoutingRuleRow,
    Store, StoreError, UsageGroupBy, UsageGroupKey, UsageQuery, UsageReport, UsageTotals,
    WorkspaceRow,
};

/// Starts a write transaction holding SQLite's write lock from its first statement, so a write
/// never fails on a read → write lock upgrade.
const BEGIN_WRITE: &str = "BEGIN IMMEDIATE";

/// Usage records per `INSERT` statement: 31 bound values each, well under SQLite's limit of
/// 32 766 variables per statement. A power of two ([`insert_chunks`]).
const USAGE_ROWS_PER_INSERT: usize = 256;

/// The rows of a batch of `n` records, split into `INSERT` statements of a power-of-two row
/// count each (at most [`USAGE_ROWS_PER_INSERT`]), largest first. sqlx keeps each connection's
/// prepared statements by their text, and a multi-row statement's text is its row count: batches
/// come in every size, so one statement per batch would be parsed and planned again for most
/// batches (a tenth of the control plane's CPU under load). These nine shapes stay prepared.
fn insert_chunks(n: usize) -> impl Iterator<Item = std::ops::Range<usize>> {
    let mut start = 0;
    std::iter::from_fn(move || {
        let left = n.checked_sub(start).filter(|&left| left > 0)?;
        let rows = (1 << left.ilog2()).min(USAGE_ROWS_PER_INSERT);
        let chunk = start..start + rows;
        start += rows;
        Some(chunk)
    })
}

/// Page cache of one pooled connection, in KiB.
const CACHE_KIB: u32 = 1024;
/// SQLite's soft heap limit for the whole process: room for the page caches of all eight
/// pooled connections (8 × [`CACHE_KIB`]) and their prepared statements. At 4 MiB, below what
/// the caches are allowed, SQLite gave pages back and read them again under load (a tenth of the
/// control plane's CPU at saturation).
const HEAP_LIMIT_BYTES: u64 = 16 * 1024 * 1024;

/// SQLite-backed [`Store`].
#[derive(Clone, Debug)]
pub struct SqliteStore {
    pool: SqlitePool,
    /// Held for the whole of every write transaction. SQLite has one writer at a time anyway;
    /// queueing here (tokio's mutex is fair) instead of in SQLite's busy handler (which polls
    /// with sleeps and gives up after `busy_timeout`) keeps concurrent writers from failing
    /// with "database is locked" and serves them in order.
    writer: Arc<tokio::sync::Mutex<()>>,
    /// Ids of the rule traces stored once (migration 0011) that this process has seen.
    traces: Arc<KnownTraces>,
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
            .busy_timeout(Duration::from_secs(5))
            // Memory stays flat while the database grows: each pooled connection caches at most
            // CACHE_KIB of pages (SQLite's default is 2 MiB, 16 MiB for the pool), and all of
            // SQLite's heap gives pages back above HEAP_LIMIT_BYTES. Pages not cached are one
            // pread away in the OS page cache.
            .pragma("cache_size", format!("-{CACHE_KIB}"))
            .pragma("soft_heap_limit", HEAP_LIMIT_BYTES.to_string());
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .connect_with(options)
            .await?;
        sqlx::migrate!("./migrations/sqlite").run(&pool).await?;
        Ok(SqliteStore {
            pool,
            writer: Arc::new(tokio::sync::Mutex::new(())),
            traces: Arc::default(),
        })
    }

    /// The pool, for tests that edit rows behind the store's back.
    #[cfg(test)]
    pub(crate) fn pool(&self) -> &SqlitePool {
        &self.pool
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
        let count: i64 = match counted_table(&changed) {
            Some(table) => sqlx::query(&format!("SELECT COUNT(*) FROM {table}"))
                .fetch_one(&mut *tx)
                .await?
                .try_get(0)?,
            None => 0,
        };
        // Dropping `tx` on a refusal rolls the change back.
        check(proposed(&changed, count)).map_err(StoreError::Rejected)?;
        if let Changed::Key(key) = &changed {
            mark_key_changed(&mut tx, &key.id, version).await?;
        }
        tx.commit().await?;
        Ok(ChangeOutcome {
            changed,
            version: Some(to_u64(version)),
        })
    }

    async fn load_config(&self) -> Result<ConfigState, StoreError> {
        // One read transaction, so the version matches the rows.
        let mut tx = self.pool.begin().await?;
        let state = load_config(&mut tx, None).await?;
        tx.commit().await?;
        Ok(state)
    }

    async fn load_config_since(&self, keys_after: u64) -> Result<ConfigState, StoreError> {
        let mut tx = self.pool.begin().await?;
        let state = load_config(&mut tx, Some(keys_after)).await?;
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

    async fn get_workspace(&self, id: &str) -> Result<Option<WorkspaceRow>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        sqlx::query(&format!("{WORKSPACE_SELECT} WHERE id = ?"))
            .bind(id)
            .fetch_optional(&mut *conn)
            .await?
            .as_ref()
            .map(workspace_from_row)
            .transpose()
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
        let mut traces = BatchTraces::group(records, &self.traces);
        store_traces(&mut tx, &mut traces).await?;
        let mut inserted = Vec::new();
        for rows in insert_chunks(records.len()) {
            let offset = rows.start;
            let chunk = records.get(rows).unwrap_or_default();
            // One statement per chunk; RETURNING names the rows that were new (a request id
            // already stored, or repeated earlier in the batch, is skipped by ON CONFLICT).
            let mut sql = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
                "INSERT INTO request_logs (request_id, started_at_ms, key_id, client_api, \
                 requested_model, provider, model, status, input_tokens, output_tokens, \
                 cached_tokens, reasoning_tokens, latency_ms, cost_picos, stream, error_type, \
                 node_id, received_at_ms, firewall_actions, warnings, mode, tier, rule_trace, \
                 rule_trace_lz4, rule_trace_id, attempts_json, ttfb_ms, retry_after_s, \
                 metadata_json, idempotency_key, replay_of, key_name, workspace_id) ",
            );
            sql.push_values(chunk.iter().enumerate(), |mut row, (i, r)| {
                let trace_id = traces.id_of(offset + i);
                // A long trace is stored once, in `rule_traces` (store_traces above).
                let trace_text = match trace_id {
                    Some(_) => "",
                    None => traces.text_of(offset + i),
                };
                row.push_bind(&r.request_id)
                    .push_bind(r.started_at_unix_ms)
                    .push_bind(&r.key_id)
                    .push_bind(&r.client_api)
                    .push_bind(&r.requested_model)
                    .push_bind(&r.provider)
                    .push_bind(&r.model)
                    .push_bind(i64::from(r.status))
                    .push_bind(to_i64(r.input_tokens))
                    .push_bind(to_i64(r.output_tokens))
                    .push_bind(to_i64(r.cached_tokens))
                    .push_bind(to_i64(r.reasoning_tokens))
                    .push_bind(to_i64(r.latency_ms))
                    .push_bind(r.cost_picos)
                    .push_bind(r.stream)
                    .push_bind(&r.error_type)
                    .push_bind(&r.node_id)
                    .push_bind(received_at_ms)
                    .push_bind(json_list(&r.firewall_actions))
                    .push_bind(json_list(&r.warnings))
                    .push_bind(&r.mode)
                    .push_bind(&r.tier)
                    .push_bind(trace_text)
                    .push_bind(None::<Vec<u8>>)
                    .push_bind(trace_id)
                    .push_bind(attempts_json(&r.attempts))
                    .push_bind(to_i64(r.ttfb_ms))
                    .push_bind(i64::from(r.retry_after_s))
                    .push_bind(&r.metadata_json)
                    .push_bind(&r.idempotency_key)
                    .push_bind(&r.replay_of)
                    .push_bind(&r.key_name)
                    .push_bind(&r.workspace_id);
            });
            sql.push(" ON CONFLICT (request_id) DO NOTHING RETURNING request_id");
            let new: Vec<String> = sql
                .build()
                .fetch_all(&mut *tx)
                .await?
                .iter()
                .map(|row| row.try_get(0))
                .collect::<Result<_, _>>()?;
            // The first record with each new id is the one stored.
            let mut first: HashMap<&str, usize> = HashMap::with_capacity(chunk.len());
            for (i, r) in chunk.iter().enumerate() {
                first.entry(r.request_id.as_str()).or_insert(offset + i);
            }
            let start = inserted.len();
            inserted.extend(new.iter().filter_map(|id| first.get(id.as_str()).copied()));
            inserted[start..].sort_unstable();
        }
        let mut charges: BTreeMap<&str, i64> = BTreeMap::new();
        for &i in &inserted {
            let Some(r) = records.get(i) else { continue };
            if r.cost_picos > 0 && r.replay_of.is_empty() {
                let due = charges.entry(r.key_id.as_str()).or_insert(0);
                *due = due.saturating_add(r.cost_picos);
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
        // Charged once per key and batch: every part is positive, so the balance's floor at
        // zero is hit exactly when charging the parts one by one would hit it.
        for (key_id, picos) in charges {
            metering::charge(&mut tx, key_id, picos).await?;
        }
        tx.commit().await?;
        self.traces.learn(&traces);
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
            let (backends_json, rules_json) = routing_config_json(&config)?;
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
            .bind(backends_json)
            .bind(rules_json)
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

/// The configuration; with `keys_after`, `keys` holds only the keys changed after that version.
async fn load_config(
    conn: &mut SqliteConnection,
    keys_after: Option<u64>,
) -> Result<ConfigState, StoreError> {
    let version: i64 = sqlx::query("SELECT version FROM config_version WHERE id = 1")
        .fetch_one(&mut *conn)
        .await?
        .try_get(0)?;
    let keys = match keys_after {
        None => load_keys(conn).await?,
        Some(after) => sqlx::query(&format!(
            "{KEY_SELECT} WHERE changed_version > ? ORDER BY created_at_ms, id"
        ))
        .bind(i64::try_from(after).unwrap_or(i64::MAX))
        .fetch_all(&mut *conn)
        .await?
        .iter()
        .map(key_from_row)
        .collect::<Result<_, _>>()?,
    };
    Ok(ConfigState {
        version: to_u64(version),
        keys,
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

/// Stores the batch's long traces that `traces` has no id for in `rule_traces` (unless stored
/// already) and takes their ids (migration 0011): two statements per chunk of new traces, so a
/// batch of many distinct traces (a rule on a per-user value) costs a few round trips, not two
/// per trace.
async fn store_traces(
    conn: &mut SqliteConnection,
    traces: &mut BatchTraces<'_>,
) -> Result<(), StoreError> {
    let unknown = traces.unknown();
    for chunk in unknown.chunks(USAGE_ROWS_PER_INSERT) {
        let mut insert =
            sqlx::QueryBuilder::<sqlx::Sqlite>::new("INSERT INTO rule_traces (digest, trace_lz4) ");
        insert.push_values(chunk, |mut row, (_, text, digest)| {
            row.push_bind(&digest[..])
                .push_bind(lz4_flex::block::compress_prepend_size(text.as_bytes()));
        });
        insert.push(" ON CONFLICT (digest) DO NOTHING");
        insert.build().execute(&mut *conn).await?;
        let mut select = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
            "SELECT digest, id FROM rule_traces WHERE digest IN (",
        );
        let mut digests = select.separated(", ");
        for (_, _, digest) in chunk {
            digests.push_bind(&digest[..]);
        }
        select.push(")");
        let ids: HashMap<Vec<u8>, i64> = select
            .build()
            .fetch_all(&mut *conn)
            .await?
            .iter()
            .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
            .collect::<Result<_, sqlx::Error>>()?;
        traces.set_ids(chunk, &ids)?;
    }
    Ok(())
}

/// Most bytes a stored trace may unpack to (the record carrying it came in one FilterSync
/// message, far smaller); a larger size prefix is a corrupt row, not an allocation.
const TRACE_UNPACK_MAX_BYTES: usize = 64 * 1024 * 1024;

/// A row's own trace: text, or (migration 0010, rows stored before 0011) an LZ4 block with its
/// length prepended.
fn unpack_trace(text: String, lz4: Option<Vec<u8>>) -> Result<String, StoreError> {
    match lz4 {
        Some(packed) => unpack_lz4(&packed, "request_logs.rule_trace_lz4"),
        None => Ok(text),
    }
}

/// A trace packed by `lz4_flex::block::compress_prepend_size`; `column` names it in the error.
fn unpack_lz4(packed: &[u8], column: &str) -> Result<String, StoreError> {
    let corrupt = |why: String| StoreError::Corrupt(format!("{column}: {why}"));
    let (size, block) =
        lz4_flex::block::uncompressed_size(packed).map_err(|e| corrupt(e.to_string()))?;
    if size > TRACE_UNPACK_MAX_BYTES {
        return Err(corrupt(format!("size prefix {size} over the limit")));
    }
    let bytes = lz4_flex::block::decompress(block, size).map_err(|e| corrupt(e.to_string()))?;
    String::from_utf8(bytes).map_err(|e| corrupt(e.to_string()))
}

/// A log row's trace: the shared one it names (migration 0011), else its own.
fn row_trace(row: &sqlx::sqlite::SqliteRow) -> Result<String, StoreError> {
    let Some(id) = row.try_get::<Option<i64>, _>("rule_trace_id")? else {
        return unpack_trace(row.try_get("rule_trace")?, row.try_get("rule_trace_lz4")?);
    };
    match row.try_get::<Option<Vec<u8>>, _>("shared_trace_lz4")? {
        Some(packed) => unpack_lz4(&packed, "rule_traces.trace_lz4"),
        None => Err(StoreError::Corrupt(format!(
            "request_logs.rule_trace_id {id}: no such rule trace"
        ))),
    }
}

/// A request log row as [`log_from_row`] reads it: the name and workspace of the key fall back
/// to the key's current ones for rows recorded without them; bodies are only flagged.
const LOG_SELECT: &str = "SELECT l.request_id, l.started_at_ms, l.key_id, l.client_api, \
     l.requested_model, l.provider, l.model, l.status, l.input_tokens, l.output_tokens, \
     l.cached_tokens, l.reasoning_tokens, l.latency_ms, l.cost_picos, l.stream, l.error_type, \
     l.node_id, l.received_at_ms, l.firewall_actions, l.warnings, l.mode, l.tier, l.rule_trace, \
     l.rule_trace_lz4, l.rule_trace_id, t.trace_lz4 AS shared_trace_lz4, l.attempts_json, \
     l.ttfb_ms, l.retry_after_s, l.metadata_json, l.idempotency_key, l.replay_of, \
     CASE WHEN l.key_name = '' THEN COALESCE(k.name, '') ELSE l.key_name END AS key_name, \
     CASE WHEN l.workspace_id = '' THEN COALESCE(k.workspace_id, '') ELSE l.workspace_id END \
     AS workspace_id, \
     EXISTS (SELECT 1 FROM request_bodies b WHERE b.request_id = l.request_id) AS has_bodies \
     FROM request_logs l LEFT JOIN api_keys k ON k.id = l.key_id \
     LEFT JOIN rule_traces t ON t.id = l.rule_trace_id";

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
            rule_trace: row_trace(row)?,
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

/// The [`USAGE_SUMS`] columns (as many as [`USAGE_SUM_COLUMNS`]) starting at `first`.
fn usage_totals_at(row: &sqlx::sqlite::SqliteRow, first: usize) -> Result<UsageTotals, StoreError> {
    let mut columns = [0_i64; USAGE_SUM_COLUMNS];
    for (i, column) in columns.iter_mut().enumerate() {
        *column = row.try_get(first + i)?;
    }
    Ok(usage_totals(columns))
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
    limit_columns(limits)
        .into_iter()
        .fold(query, |query, column| query.bind(column))
}

fn limits_from_row(row: &sqlx::sqlite::SqliteRow) -> Result<Limits, StoreError> {
    Ok(limits_from_columns([
        row.try_get("rps_limit")?,
        row.try_get("hour_total_tokens")?,
        row.try_get("hour_input_tokens")?,
        row.try_get("hour_output_tokens")?,
    ]))
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

/// Records that a key changed at `version` (what [`Store::load_config_since`] reads).
pub(super) async fn mark_key_changed(
    conn: &mut SqliteConnection,
    id: &str,
    version: i64,
) -> Result<(), StoreError> {
    sqlx::query("UPDATE api_keys SET changed_version = ? WHERE id = ?")
        .bind(version)
        .bind(id)
        .execute(&mut *conn)
        .await?;
    Ok(())
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
        Ok(to_u32_saturating(row.try_get(column)?))
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
        routing_config_from_columns(RoutingConfigColumns {
            key_id: row.try_get("key_id")?,
            active: row.try_get("active")?,
            strategy: row.try_get("strategy")?,
            backends_json: row.try_get("backends_json")?,
            rules_json: row.try_get("rules_json")?,
            updated_at_ms: row.try_get("updated_at_ms")?,
        })
    })
    .collect()
}

// The backend-independent tests are in `super::conformance`, run against every backend.
#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::store::Proposed;

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

    /// SQLite's side of traces stored once (sharing itself is a conformance test): the shared
    /// trace is an LZ4 block, a fraction of its text, keyed by its SHA-256; a row from before
    /// migration 0011 still reads its own packed trace.
    #[tokio::test]
    async fn long_rule_traces_are_stored_once() {
        let (store, _dir) = temp_store().await;
        let rule = r#"{"conditions":[{"actual":"chat","condition":"task","expected":"coding","matched":false}],"id":1,"matched":false,"priority":10,"rule":"coding"}"#;
        let long = format!("[{}]", vec![rule; 20].join(","));
        let batch = ["a", "b"].map(|id| UsageRecord {
            rule_trace: long.clone(),
            ..record(id)
        });
        store.insert_usage(&batch, 1).await.unwrap();
        let (digest, packed): (Vec<u8>, i64) = sqlx::query_as(
            "SELECT digest, length(trace_lz4) FROM rule_traces \
             WHERE id = (SELECT rule_trace_id FROM request_logs WHERE request_id = 'a')",
        )
        .fetch_one(store.pool())
        .await
        .unwrap();
        assert_eq!(digest, super::super::traces::digest(&long));
        assert!(packed * 5 < long.len() as i64, "{packed} bytes");

        sqlx::query(
            "UPDATE request_logs SET rule_trace_id = NULL, rule_trace_lz4 = ? \
             WHERE request_id = 'b'",
        )
        .bind(lz4_flex::block::compress_prepend_size(b"[\"old\"]"))
        .execute(store.pool())
        .await
        .unwrap();
        let got = |id: &'static str| {
            let store = store.clone();
            async move { store.get_log(id).await.unwrap().unwrap().record.rule_trace }
        };
        assert_eq!(got("a").await, long);
        assert_eq!(got("b").await, r#"["old"]"#);

        // A row naming a trace that is not there is a typed error.
        sqlx::query("UPDATE request_logs SET rule_trace_id = 999 WHERE request_id = 'a'")
            .execute(store.pool())
            .await
            .unwrap();
        match store.get_log("a").await {
            Err(StoreError::Corrupt(m)) => assert!(m.contains("rule_trace_id 999"), "{m}"),
            other => panic!("{other:?}"),
        }
    }

    /// A damaged packed trace is a typed error naming the column, never a panic or a huge
    /// allocation.
    #[test]
    fn damaged_packed_traces_are_corrupt_rows() {
        let text = "x".repeat(2048);
        let packed = lz4_flex::block::compress_prepend_size(text.as_bytes());
        assert_eq!(
            unpack_trace(String::new(), Some(packed.clone())).unwrap(),
            text
        );
        let mut huge = packed.clone();
        huge[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        let mut cut = packed.clone();
        cut.truncate(packed.len() / 2);
        let mut not_utf8 = lz4_flex::block::compress_prepend_size(&[0xff; 600]);
        not_utf8.shrink_to_fit();
        for bad in [vec![1, 2], huge, cut, not_utf8] {
            match unpack_trace(String::new(), Some(bad)) {
                Err(StoreError::Corrupt(m)) => assert!(m.contains("rule_trace_lz4"), "{m}"),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(unpack_trace("[]".into(), None).unwrap(), "[]");
    }

    /// A batch's rows go into statements of a power-of-two row count, largest first, covering
    /// every row once.
    #[test]
    fn insert_chunks_are_powers_of_two() {
        let sizes = |n| insert_chunks(n).map(|r| r.len()).collect::<Vec<_>>();
        assert_eq!(sizes(0), Vec::<usize>::new());
        assert_eq!(sizes(1), [1]);
        assert_eq!(sizes(37), [32, 4, 1]);
        assert_eq!(sizes(64), [64]);
        assert_eq!(sizes(500), [256, 128, 64, 32, 16, 4]);
        assert_eq!(sizes(700), [256, 256, 128, 32, 16, 8, 4]);
        for n in 0..1100 {
            let mut next = 0;
            for r in insert_chunks(n) {
                assert_eq!(r.start, next);
                assert!(r.len().is_power_of_two() && r.len() <= USAGE_ROWS_PER_INSERT);
                next = r.end;
            }
            assert_eq!(next, n);
        }
    }

    /// Every pooled connection has the bounded page cache, and the process the heap limit.
    #[tokio::test]
    async fn page_cache_is_bounded_on_every_connection() {
        let (store, _dir) = temp_store().await;
        let mut held = Vec::new();
        for _ in 0..3 {
            let mut conn = store.pool().acquire().await.unwrap();
            let cache: i64 = sqlx::query_scalar("PRAGMA cache_size")
                .fetch_one(&mut *conn)
                .await
                .unwrap();
            assert_eq!(cache, -i64::from(CACHE_KIB));
            let limit: i64 = sqlx::query_scalar("PRAGMA soft_heap_limit")
                .fetch_one(&mut *conn)
                .await
                .unwrap();
            assert_eq!(u64::try_from(limit).unwrap(), HEAP_LIMIT_BYTES);
            held.push(conn); // the next acquire opens another connection
        }
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
}
