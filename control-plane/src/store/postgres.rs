//! PostgreSQL through sqlx, migrations from `migrations/postgres/`: the backend for several
//! control-plane replicas sharing one database. Observable behaviour is the SQLite backend's
//! (the storage tests in `conformance` run against both); what differs is how writes stay
//! correct when other processes write too:
//!
//! - configuration writes lock the `config_version` row first (the `UPDATE` that bumps the
//!   version), so they are serialised across processes, each gets the next version, and the
//!   check runs before commit holding that lock; the transaction also sends
//!   `pg_notify('tokenrouter_config', <version>)`, delivered on commit to every replica
//!   ([`Store::config_notifications`]);
//! - a usage batch inserts with `ON CONFLICT DO NOTHING` and charges only the rows it inserted,
//!   in the same transaction: a batch that two replicas store at once is stored and charged
//!   once (the second waits for the first transaction on the request ids' locks, then skips);
//! - idempotency claims and credits with an external id rely on the primary key and the unique
//!   index, not on a read before the write.
//!
//! Text is ordered byte-wise (`COLLATE "C"`), as SQLite orders it, whatever the database's
//! collation. Locks are taken in a fixed order (request ids, then key ids, then workspace ids; the
//! configuration row before a key or workspace row), so concurrent writers queue instead of
//! deadlocking. Reads use the default `READ COMMITTED`, except [`Store::load_config`], which
//! reads one snapshot so the version matches the rows.

use std::collections::{BTreeMap, HashMap};
use std::str::FromStr;

use async_trait::async_trait;
use sha2::{Digest, Sha256};
use sqlx::postgres::{PgArguments, PgConnectOptions, PgPoolOptions, PgRow};
use sqlx::{PgConnection, PgPool, Postgres, Row};
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

mod idempotency;
mod metering;
mod notifications;

/// The channel committed configuration versions are announced on (payload: the version).
pub const CONFIG_CHANNEL: &str = "tokenrouter_config";

/// One snapshot for the whole transaction (plain `BEGIN` is `READ COMMITTED`: a new snapshot
/// per statement).
const BEGIN_SNAPSHOT: &str = "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY";

/// PostgreSQL-backed [`Store`].
#[derive(Clone, Debug)]
pub struct PostgresStore {
    pool: PgPool,
    /// Newest configuration version announced on [`CONFIG_CHANNEL`] (or read on connecting).
    notifications: tokio::sync::watch::Receiver<u64>,
    /// Ids of the rule traces stored once (migration 0011) that this process has seen.
    traces: std::sync::Arc<KnownTraces>,
}

impl PostgresStore {
    /// Connects to `url` (`postgres://user:password@host:port/database`), runs the migrations
    /// (sqlx holds an advisory lock meanwhile, so replicas starting together migrate once) and
    /// starts following configuration versions.
    pub async fn open(url: &str) -> Result<PostgresStore, StoreError> {
        PostgresStore::open_with(PgConnectOptions::from_str(url)?).await
    }

    /// [`PostgresStore::open`] with options already parsed.
    pub async fn open_with(options: PgConnectOptions) -> Result<PostgresStore, StoreError> {
        let pool = PgPoolOptions::new()
            .max_connections(10)
            .connect_with(options)
            .await?;
        sqlx::migrate!("./migrations/postgres").run(&pool).await?;
        let notifications = notifications::follow(pool.clone());
        Ok(PostgresStore {
            pool,
            notifications,
            traces: Default::default(),
        })
    }

    /// The pool, for tests that edit rows behind the store's back.
    #[cfg(test)]
    pub(crate) fn pool(&self) -> &PgPool {
        &self.pool
    }
}

/// Announces `version` to every listening replica when the transaction commits (PostgreSQL
/// delivers notifications on commit only, in commit order).
async fn notify_version(conn: &mut PgConnection, version: i64) -> Result<(), StoreError> {
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(CONFIG_CHANNEL)
        .bind(version.to_string())
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Takes the next configuration version. The row lock this takes is held to commit, so it
/// serialises configuration writes of every process: a concurrent writer waits here, then
/// reads the version this one committed.
async fn bump_version(conn: &mut PgConnection) -> Result<i64, StoreError> {
    Ok(sqlx::query(
        "UPDATE config_version SET version = version + 1 WHERE id = 1 RETURNING version",
    )
    .fetch_one(&mut *conn)
    .await?
    .try_get(0)?)
}

#[async_trait]
impl Store for PostgresStore {
    async fn change_config(
        &self,
        change: ConfigChange,
        check: &Check,
    ) -> Result<ChangeOutcome, StoreError> {
        let mut tx = self.pool.begin().await?;
        let version = bump_version(&mut tx).await?;
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
        notify_version(&mut tx, version).await?;
        tx.commit().await?;
        Ok(ChangeOutcome {
            changed,
            version: Some(to_u64(version)),
        })
    }

    async fn load_config(&self) -> Result<ConfigState, StoreError> {
        let mut tx = self.pool.begin_with(BEGIN_SNAPSHOT).await?;
        let state = load_config(&mut tx, None).await?;
        tx.commit().await?;
        Ok(state)
    }

    async fn load_config_since(&self, keys_after: u64) -> Result<ConfigState, StoreError> {
        let mut tx = self.pool.begin_with(BEGIN_SNAPSHOT).await?;
        let state = load_config(&mut tx, Some(keys_after)).await?;
        tx.commit().await?;
        Ok(state)
    }

    async fn list_keys(&self) -> Result<Vec<KeyRow>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        load_keys(&mut conn).await
    }

    async fn get_key(&self, id: &str) -> Result<Option<KeyRow>, StoreError> {
        sqlx::query(&format!("{KEY_SELECT} WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .as_ref()
            .map(key_from_row)
            .transpose()
    }

    async fn find_key_by_hash(&self, sha256: &[u8; 32]) -> Result<Option<KeyRow>, StoreError> {
        sqlx::query(&format!("{KEY_SELECT} WHERE sha256 = $1"))
            .bind(&sha256[..])
            .fetch_optional(&self.pool)
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
        sqlx::query(&format!("{WORKSPACE_SELECT} WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
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
        // Traces are stored before, and apart from, the batch's transaction: a stored trace is
        // only content, harmless if the batch then fails, and the transaction takes no lock
        // another replica's batch could be waiting for in turn.
        let mut traces = BatchTraces::group(records, &self.traces);
        store_traces(&self.pool, &mut traces).await?;
        self.traces.learn(&traces);
        let mut tx = self.pool.begin().await?;
        lock_request_ids(&mut tx, records).await?;
        let mut inserted = Vec::new();
        let mut charges: BTreeMap<&str, i64> = BTreeMap::new();
        for (i, r) in records.iter().enumerate() {
            let trace = (traces.id_of(i), traces.text_of(i));
            if !insert_log(&mut tx, r, trace, received_at_ms).await? {
                continue;
            }
            inserted.push(i);
            if r.cost_picos > 0 && r.replay_of.is_empty() {
                let due = charges.entry(r.key_id.as_str()).or_insert(0);
                *due = due.saturating_add(r.cost_picos);
            }
        }
        metering::charge(&mut tx, &charges).await?;
        tx.commit().await?;
        Ok(inserted)
    }

    async fn list_logs(&self, query: &LogQuery) -> Result<Vec<LogEntry>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        let before: Option<i64> = match &query.before_request_id {
            Some(id) => Some(
                sqlx::query("SELECT seq FROM request_logs WHERE request_id = $1")
                    .bind(id)
                    .fetch_optional(&mut *conn)
                    .await?
                    .ok_or_else(|| StoreError::NotFound(format!("request {id}")))?
                    .try_get(0)?,
            ),
            None => None,
        };
        // Only the filters given become conditions, so each can use its index.
        let mut sql = sqlx::QueryBuilder::<Postgres>::new(LOG_SELECT);
        sql.push(" WHERE TRUE");
        if let Some(key) = &query.key_id {
            sql.push(" AND l.key_id = ").push_bind(key);
        }
        if let Some(before) = before {
            sql.push(" AND l.seq < ").push_bind(before);
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
            // SQLite's LIKE folds ASCII letters only; `lower`/`ILIKE` would fold others too.
            sql.push(format!(
                " AND translate(l.metadata_json, '{ASCII_UPPER}', '{ASCII_LOWER}') LIKE "
            ))
            .push_bind(like_pattern(&text.to_ascii_lowercase()))
            .push(" ESCAPE '\\'");
        }
        sql.push(" ORDER BY l.seq DESC LIMIT ")
            .push_bind(i64::from(query.limit));
        let rows = sql.build().fetch_all(&mut *conn).await?;
        rows.iter().map(log_from_row).collect()
    }

    async fn get_log(&self, request_id: &str) -> Result<Option<LogEntry>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        let Some(row) = sqlx::query(&format!("{LOG_SELECT} WHERE l.request_id = $1"))
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
                 WHERE request_id = $1",
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
        // The covering indexes of migration 0005 (request_logs_received, or request_logs_key
        // with a key) hold every column read.
        let group = match query.group_by {
            None => "0",
            Some(UsageGroupBy::Key) => "key_id",
            Some(UsageGroupBy::Model) => "model",
            Some(UsageGroupBy::Provider) => "provider",
            Some(UsageGroupBy::Day) => "received_at_ms / 86400000",
        };
        // A condition only for a given key, so that the planner picks the key index then.
        let mut inner = format!(
            "SELECT {group} AS g, {USAGE_SUMS} FROM request_logs WHERE received_at_ms >= $1"
        );
        if query.key_id.is_some() {
            inner.push_str(" AND key_id = $2");
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
        let rows = statement.fetch_all(&self.pool).await?;
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
        let filter = if key_id.is_some() {
            "WHERE key_id = $1"
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
        let rows = statement.fetch_all(&self.pool).await?;
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
        // Also ends the notification task (it waits on the pool's close event).
        self.pool.close().await;
    }

    fn config_notifications(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        Some(self.notifications.clone())
    }
}

const ASCII_UPPER: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZ";
const ASCII_LOWER: &str = "abcdefghijklmnopqrstuvwxyz";

/// The class of the advisory locks [`lock_request_ids`] takes (their first key), apart from
/// any other use of advisory locks in the database.
const REQUEST_ID_LOCKS: i32 = 0x7472_6964;

/// Locks the batch's request ids (transaction-scoped advisory locks on a 32-bit hash of each,
/// taken in hash order) before any is inserted. Two replicas storing overlapping batches then
/// queue on the first id they share instead of each waiting on an insert of the other (a
/// deadlock); the records themselves are inserted in batch order, which the log lists by. A hash
/// shared by two ids only makes their batches wait for one another.
async fn lock_request_ids(
    conn: &mut PgConnection,
    records: &[UsageRecord],
) -> Result<(), StoreError> {
    let mut hashes: Vec<i32> = records
        .iter()
        .map(|r| {
            let digest = Sha256::digest(r.request_id.as_bytes());
            i32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]])
        })
        .collect();
    hashes.sort_unstable();
    hashes.dedup();
    // unnest yields the array in order, and each row's lock is taken as it is produced.
    sqlx::query("SELECT pg_advisory_xact_lock($1, h) FROM unnest($2::INTEGER[]) AS h")
        .bind(REQUEST_ID_LOCKS)
        .bind(&hashes)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Stores the batch's long traces that `traces` has no id for in `rule_traces` (unless stored
/// already) and takes their ids (migration 0011); each statement commits by itself.
async fn store_traces(pool: &PgPool, traces: &mut BatchTraces<'_>) -> Result<(), StoreError> {
    let unknown = traces.unknown();
    if unknown.is_empty() {
        return Ok(());
    }
    let digests: Vec<&[u8]> = unknown.iter().map(|(_, _, d)| &d[..]).collect();
    let texts: Vec<&str> = unknown.iter().map(|(_, t, _)| *t).collect();
    // In digest order, so that replicas storing the same new traces wait for one another in
    // one order.
    sqlx::query(
        "INSERT INTO rule_traces (digest, trace) \
         SELECT * FROM unnest($1::BYTEA[], $2::TEXT[]) ON CONFLICT (digest) DO NOTHING",
    )
    .bind(&digests)
    .bind(&texts)
    .execute(pool)
    .await?;
    let ids: HashMap<Vec<u8>, i64> =
        sqlx::query("SELECT digest, id FROM rule_traces WHERE digest = ANY($1)")
            .bind(&digests)
            .fetch_all(pool)
            .await?
            .iter()
            .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
            .collect::<Result<_, sqlx::Error>>()?;
    traces.set_ids(&unknown, &ids)
}

/// Inserts one usage record (and its bodies) unless its request id is stored; whether it was
/// new. A concurrent transaction inserting the same id makes this wait for its outcome.
async fn insert_log(
    conn: &mut PgConnection,
    r: &UsageRecord,
    (trace_id, trace_text): (Option<i64>, &str),
    received_at_ms: i64,
) -> Result<bool, StoreError> {
    let done = sqlx::query(
        "INSERT INTO request_logs (request_id, started_at_ms, key_id, client_api, \
         requested_model, provider, model, status, input_tokens, output_tokens, \
         cached_tokens, reasoning_tokens, latency_ms, cost_picos, stream, error_type, \
         node_id, received_at_ms, firewall_actions, warnings, mode, tier, rule_trace, \
         rule_trace_id, attempts_json, ttfb_ms, retry_after_s, metadata_json, idempotency_key, \
         replay_of, key_name, workspace_id) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, \
         $18, $19, $20, $21, $22, $23, $24, $25, $26, $27, $28, $29, $30, $31, $32) \
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
    // A long trace is stored once, in `rule_traces` (store_traces above).
    .bind(if trace_id.is_some() { "" } else { trace_text })
    .bind(trace_id)
    .bind(attempts_json(&r.attempts))
    .bind(to_i64(r.ttfb_ms))
    .bind(i64::from(r.retry_after_s))
    .bind(&r.metadata_json)
    .bind(&r.idempotency_key)
    .bind(&r.replay_of)
    .bind(&r.key_name)
    .bind(&r.workspace_id)
    .execute(&mut *conn)
    .await?;
    if done.rows_affected() == 0 {
        return Ok(false);
    }
    // Only keys with store_bodies send bodies; every other record costs nothing here.
    if !r.request_body.is_empty() || !r.response_body.is_empty() {
        sqlx::query(
            "INSERT INTO request_bodies (request_id, request_body, response_body, truncated) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (request_id) DO NOTHING",
        )
        .bind(&r.request_id)
        .bind(&r.request_body)
        .bind(&r.response_body)
        .bind(r.bodies_truncated)
        .execute(&mut *conn)
        .await?;
    }
    Ok(true)
}

/// Whether a change wrote something (commit and publish) or nothing (roll back).
enum Applied {
    Committed(Changed),
    Nothing(Changed),
}

async fn apply(conn: &mut PgConnection, change: ConfigChange) -> Result<Applied, StoreError> {
    match change {
        ConfigChange::CreateKey(key) => create_key(conn, key).await,
        ConfigChange::RevokeKey { id, at_ms } => revoke_key(conn, id, at_ms).await,
        ConfigChange::UpdateKey {
            id,
            name,
            store_bodies,
            limits,
        } => update_key(conn, id, name, store_bodies, limits).await,
        ConfigChange::CreateWorkspace(workspace) => create_workspace(conn, workspace).await,
        ConfigChange::UpdateWorkspace { id, limits } => update_workspace(conn, id, limits).await,
        ConfigChange::PutProvider { row, replace } => put_provider(conn, row, replace).await,
        ConfigChange::RemoveProvider { name } => {
            let done = sqlx::query("DELETE FROM providers WHERE name = $1")
                .bind(&name)
                .execute(&mut *conn)
                .await?;
            if done.rows_affected() == 0 {
                return Err(StoreError::NotFound(format!("provider {name}")));
            }
            Ok(Applied::Committed(Changed::ProviderRemoved(name)))
        }
        ConfigChange::SeedModels(models) => seed_models(conn, models).await,
        ConfigChange::UpsertModel(row) => {
            // ON CONFLICT … DO UPDATE keeps the row's `seq`, so a replaced model keeps its
            // place in catalogue order.
            bind_model(sqlx::query(&insert_model_sql(true)), &row.model)
                .bind(row.updated_at_ms)
                .execute(&mut *conn)
                .await?;
            Ok(Applied::Committed(Changed::Model(row)))
        }
        ConfigChange::UpdateModel(row) => update_model(conn, row).await,
        ConfigChange::CreateFirewallRule(rule) => create_firewall_rule(conn, rule).await,
        ConfigChange::UpdateFirewallRule(rule) => update_firewall_rule(conn, rule).await,
        ConfigChange::DeleteFirewallRule { id } => {
            let done = sqlx::query("DELETE FROM firewall_rules WHERE id = $1")
                .bind(id)
                .execute(&mut *conn)
                .await?;
            if done.rows_affected() == 0 {
                return Err(StoreError::NotFound(format!("firewall rule {id}")));
            }
            Ok(Applied::Committed(Changed::FirewallRuleRemoved(id)))
        }
        ConfigChange::CreateRoutingRule(rule) => create_routing_rule(conn, rule).await,
        ConfigChange::UpdateRoutingRule(rule) => update_routing_rule(conn, rule).await,
        ConfigChange::DeleteRoutingRule { id } => {
            let done = sqlx::query("DELETE FROM routing_rules WHERE id = $1")
                .bind(id)
                .execute(&mut *conn)
                .await?;
            if done.rows_affected() == 0 {
                return Err(StoreError::NotFound(format!("routing rule {id}")));
            }
            Ok(Applied::Committed(Changed::RoutingRuleRemoved(id)))
        }
        ConfigChange::SetRoutingConfig(config) => set_routing_config(conn, config).await,
        ConfigChange::DeleteRoutingConfig { key_id } => {
            let done = sqlx::query("DELETE FROM routing_configs WHERE key_id = $1")
                .bind(&key_id)
                .execute(&mut *conn)
                .await?;
            if done.rows_affected() == 0 {
                return Err(StoreError::NotFound(format!(
                    "routing configuration of key {key_id}"
                )));
            }
            Ok(Applied::Committed(Changed::RoutingConfigRemoved(key_id)))
        }
    }
}

async fn create_key(conn: &mut PgConnection, key: KeyRow) -> Result<Applied, StoreError> {
    sqlx::query(
        "INSERT INTO workspaces (id, name, created_at_ms) VALUES ($1, $1, $2) \
         ON CONFLICT (id) DO NOTHING",
    )
    .bind(&key.workspace_id)
    .bind(key.created_at_ms)
    .execute(&mut *conn)
    .await?;
    let query = sqlx::query(
        "INSERT INTO api_keys (id, name, key_prefix, sha256, workspace_id, status, \
         created_at_ms, revoked_at_ms, store_bodies, balance_picos, rps_limit, \
         hour_total_tokens, hour_input_tokens, hour_output_tokens) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
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
    Ok(Applied::Committed(Changed::Key(key)))
}

async fn find_key(conn: &mut PgConnection, id: &str) -> Result<KeyRow, StoreError> {
    let row = sqlx::query(&format!("{KEY_SELECT} WHERE id = $1"))
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("key {id}")))?;
    key_from_row(&row)
}

async fn revoke_key(
    conn: &mut PgConnection,
    id: String,
    at_ms: i64,
) -> Result<Applied, StoreError> {
    let mut key = find_key(conn, &id).await?;
    if key.status == KeyStatus::Revoked {
        return Ok(Applied::Nothing(Changed::Key(key)));
    }
    sqlx::query("UPDATE api_keys SET status = 'revoked', revoked_at_ms = $1 WHERE id = $2")
        .bind(at_ms)
        .bind(&id)
        .execute(&mut *conn)
        .await?;
    key.status = KeyStatus::Revoked;
    key.revoked_at_ms = Some(at_ms);
    Ok(Applied::Committed(Changed::Key(key)))
}

async fn update_key(
    conn: &mut PgConnection,
    id: String,
    name: Option<String>,
    store_bodies: Option<bool>,
    limits: Limits,
) -> Result<Applied, StoreError> {
    let before = find_key(conn, &id).await?;
    let mut key = before.clone();
    if let Some(name) = name {
        key.name = name;
    }
    if let Some(store_bodies) = store_bodies {
        key.store_bodies = store_bodies;
    }
    key.limits = limits.or(key.limits);
    if key == before {
        return Ok(Applied::Nothing(Changed::Key(key)));
    }
    let query = sqlx::query(
        "UPDATE api_keys SET name = $1, store_bodies = $2, rps_limit = $3, \
         hour_total_tokens = $4, hour_input_tokens = $5, hour_output_tokens = $6 WHERE id = $7",
    )
    .bind(&key.name)
    .bind(key.store_bodies);
    bind_limits(query, &key.limits)
        .bind(&id)
        .execute(&mut *conn)
        .await?;
    Ok(Applied::Committed(Changed::Key(key)))
}

async fn create_workspace(
    conn: &mut PgConnection,
    workspace: WorkspaceRow,
) -> Result<Applied, StoreError> {
    let query = sqlx::query(
        "INSERT INTO workspaces (id, name, created_at_ms, balance_picos, rps_limit, \
         hour_total_tokens, hour_input_tokens, hour_output_tokens) \
         VALUES ($1, $1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(&workspace.id)
    .bind(workspace.created_at_ms)
    .bind(workspace.metered.then_some(0_i64));
    bind_limits(query, &workspace.limits)
        .execute(&mut *conn)
        .await
        .map_err(|e| unique_violation(e, || format!("workspace {}", workspace.id)))?;
    Ok(Applied::Committed(Changed::Workspace(workspace)))
}

async fn update_workspace(
    conn: &mut PgConnection,
    id: String,
    limits: Limits,
) -> Result<Applied, StoreError> {
    let row = sqlx::query(&format!("{WORKSPACE_SELECT} WHERE id = $1"))
        .bind(&id)
        .fetch_optional(&mut *conn)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("workspace {id}")))?;
    let before = workspace_from_row(&row)?;
    let mut workspace = before.clone();
    workspace.limits = limits.or(workspace.limits);
    if workspace == before {
        return Ok(Applied::Nothing(Changed::Workspace(workspace)));
    }
    let query = sqlx::query(
        "UPDATE workspaces SET rps_limit = $1, hour_total_tokens = $2, \
         hour_input_tokens = $3, hour_output_tokens = $4 WHERE id = $5",
    );
    bind_limits(query, &workspace.limits)
        .bind(&id)
        .execute(&mut *conn)
        .await?;
    Ok(Applied::Committed(Changed::Workspace(workspace)))
}

async fn put_provider(
    conn: &mut PgConnection,
    mut row: ProviderRow,
    replace: bool,
) -> Result<Applied, StoreError> {
    let existing: Option<i64> = sqlx::query("SELECT created_at_ms FROM providers WHERE name = $1")
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
                "UPDATE providers SET kind = $1, base_url = $2, credential_sealed = $3, \
                 fallbacks_sealed = $4, fallback_count = $5, enabled = $6 WHERE name = $7",
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
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
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
            .await
            .map_err(|e| unique_violation(e, || format!("provider {}", row.name)))?;
        }
    }
    Ok(Applied::Committed(Changed::Provider(row)))
}

async fn seed_models(
    conn: &mut PgConnection,
    models: Vec<pb::Model>,
) -> Result<Applied, StoreError> {
    let mut seeded = Vec::new();
    for m in models {
        let inserted = bind_model(sqlx::query(&insert_model_sql(false)), &m)
            .bind(0_i64)
            .execute(&mut *conn)
            .await?
            .rows_affected();
        // A row seeded before the capability columns existed gets them once; prices, context
        // window and status stay as they are.
        let filled = inserted == 0
            && sqlx::query(
                "UPDATE models SET tools = $1, vision = $2, json_mode = $3, streaming = $4, \
                 embeddings = $5, quality = $6, tier = $7, max_output_tokens = $8, \
                 price_source = $9, price_as_of = $10, display_name = $11 \
                 WHERE provider_kind = $12 AND id = $13 AND price_source = '' \
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
    Ok(if seeded.is_empty() {
        Applied::Nothing(Changed::ModelsSeeded(seeded))
    } else {
        Applied::Committed(Changed::ModelsSeeded(seeded))
    })
}

async fn update_model(conn: &mut PgConnection, row: ModelRow) -> Result<Applied, StoreError> {
    let n = MODEL_FIELDS.len();
    let sets: Vec<String> = MODEL_FIELDS
        .iter()
        .enumerate()
        .map(|(i, f)| format!("{f} = ${}", i + 1))
        .collect();
    let sql = format!(
        "UPDATE models SET {}, updated_at_ms = ${} WHERE provider_kind = ${} AND id = ${}",
        sets.join(", "),
        n + 1,
        n + 2,
        n + 3
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
    Ok(Applied::Committed(Changed::Model(row)))
}

/// The columns a firewall rule binds with [`bind_rule`], in that order.
const RULE_COLUMNS: &str = "name, priority, is_enabled, scope, type, pattern, action, \
                            replacement, key_id, max_match_chars, \"check\", template, \
                            workspace_id";

async fn create_firewall_rule(
    conn: &mut PgConnection,
    mut rule: FirewallRuleRow,
) -> Result<Applied, StoreError> {
    let id: i64 = bind_rule(
        sqlx::query(&format!(
            "INSERT INTO firewall_rules ({RULE_COLUMNS}, created_at_ms, updated_at_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15) \
             RETURNING id"
        )),
        &rule,
    )
    .bind(rule.created_at_ms)
    .bind(rule.updated_at_ms)
    .fetch_one(&mut *conn)
    .await
    .map_err(|e| unique_violation(e, || format!("firewall rule named {:?}", rule.name)))?
    .try_get(0)?;
    rule.id = id;
    Ok(Applied::Committed(Changed::FirewallRule(rule)))
}

async fn update_firewall_rule(
    conn: &mut PgConnection,
    mut rule: FirewallRuleRow,
) -> Result<Applied, StoreError> {
    let created: i64 = sqlx::query("SELECT created_at_ms FROM firewall_rules WHERE id = $1")
        .bind(rule.id)
        .fetch_optional(&mut *conn)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("firewall rule {}", rule.id)))?
        .try_get(0)?;
    rule.created_at_ms = created;
    bind_rule(
        sqlx::query(
            "UPDATE firewall_rules SET name = $1, priority = $2, is_enabled = $3, scope = $4, \
             type = $5, pattern = $6, action = $7, replacement = $8, key_id = $9, \
             max_match_chars = $10, \"check\" = $11, template = $12, workspace_id = $13, \
             updated_at_ms = $14 WHERE id = $15",
        ),
        &rule,
    )
    .bind(rule.updated_at_ms)
    .bind(rule.id)
    .execute(&mut *conn)
    .await
    .map_err(|e| unique_violation(e, || format!("firewall rule named {:?}", rule.name)))?;
    Ok(Applied::Committed(Changed::FirewallRule(rule)))
}

async fn create_routing_rule(
    conn: &mut PgConnection,
    mut rule: RoutingRuleRow,
) -> Result<Applied, StoreError> {
    let id: i64 = bind_routing_rule(
        sqlx::query(
            "INSERT INTO routing_rules (name, priority, is_enabled, match_json, action_json, \
             key_id, created_at_ms, updated_at_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
             RETURNING id",
        ),
        &rule,
    )
    .bind(rule.created_at_ms)
    .bind(rule.updated_at_ms)
    .fetch_one(&mut *conn)
    .await
    .map_err(|e| unique_violation(e, || format!("routing rule named {:?}", rule.name)))?
    .try_get(0)?;
    rule.id = id;
    Ok(Applied::Committed(Changed::RoutingRule(rule)))
}

async fn update_routing_rule(
    conn: &mut PgConnection,
    mut rule: RoutingRuleRow,
) -> Result<Applied, StoreError> {
    let created: i64 = sqlx::query("SELECT created_at_ms FROM routing_rules WHERE id = $1")
        .bind(rule.id)
        .fetch_optional(&mut *conn)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("routing rule {}", rule.id)))?
        .try_get(0)?;
    rule.created_at_ms = created;
    bind_routing_rule(
        sqlx::query(
            "UPDATE routing_rules SET name = $1, priority = $2, is_enabled = $3, \
             match_json = $4, action_json = $5, key_id = $6, updated_at_ms = $7 WHERE id = $8",
        ),
        &rule,
    )
    .bind(rule.updated_at_ms)
    .bind(rule.id)
    .execute(&mut *conn)
    .await
    .map_err(|e| unique_violation(e, || format!("routing rule named {:?}", rule.name)))?;
    Ok(Applied::Committed(Changed::RoutingRule(rule)))
}

async fn set_routing_config(
    conn: &mut PgConnection,
    config: RoutingConfigRow,
) -> Result<Applied, StoreError> {
    // The key must exist; checked in the write transaction, and it stays true (keys are
    // revoked, never deleted).
    let key = sqlx::query("SELECT 1 FROM api_keys WHERE id = $1")
        .bind(&config.key_id)
        .fetch_optional(&mut *conn)
        .await?;
    if key.is_none() {
        return Err(StoreError::NotFound(format!("key {}", config.key_id)));
    }
    let (backends_json, rules_json) = routing_config_json(&config)?;
    sqlx::query(
        "INSERT INTO routing_configs (key_id, active, strategy, backends_json, rules_json, \
         updated_at_ms) VALUES ($1, $2, $3, $4, $5, $6) \
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
    Ok(Applied::Committed(Changed::RoutingConfig(config)))
}

/// The configuration; with `keys_after`, `keys` holds only the keys changed after that version.
async fn load_config(
    conn: &mut PgConnection,
    keys_after: Option<u64>,
) -> Result<ConfigState, StoreError> {
    let version = to_u64(read_version(conn).await?);
    let keys = match keys_after {
        None => load_keys(conn).await?,
        Some(after) => sqlx::query(&format!(
            "{KEY_SELECT} WHERE changed_version > $1 ORDER BY created_at_ms, id COLLATE \"C\""
        ))
        .bind(i64::try_from(after).unwrap_or(i64::MAX))
        .fetch_all(&mut *conn)
        .await?
        .iter()
        .map(key_from_row)
        .collect::<Result<_, _>>()?,
    };
    Ok(ConfigState {
        version,
        keys,
        workspaces: load_workspaces(conn).await?,
        providers: load_providers(conn).await?,
        models: load_model_rows(conn)
            .await?
            .into_iter()
            .map(|r| r.model)
            .collect(),
        firewall_rules: load_firewall_rules(conn).await?,
        routing_rules: load_routing_rules(conn).await?,
        routing_configs: load_routing_configs(conn).await?,
    })
}

/// The committed configuration version.
async fn read_version(conn: &mut PgConnection) -> Result<i64, StoreError> {
    Ok(
        sqlx::query("SELECT version FROM config_version WHERE id = 1")
            .fetch_one(&mut *conn)
            .await?
            .try_get(0)?,
    )
}

type Query<'q> = sqlx::query::Query<'q, Postgres, PgArguments>;

/// Binds a rule's [`RULE_COLUMNS`].
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

async fn load_firewall_rules(conn: &mut PgConnection) -> Result<Vec<FirewallRuleRow>, StoreError> {
    sqlx::query(&format!(
        "SELECT id, {RULE_COLUMNS}, created_at_ms, updated_at_ms FROM firewall_rules ORDER BY id"
    ))
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
            max_match_chars: u32::try_from(row.try_get::<i64, _>("max_match_chars")?).unwrap_or(0),
            check: row.try_get("check")?,
            template: row.try_get("template")?,
            created_at_ms: row.try_get("created_at_ms")?,
            updated_at_ms: row.try_get("updated_at_ms")?,
        })
    })
    .collect()
}

/// A request log row as [`log_from_row`] reads it: the name and workspace of the key fall back
/// to the key's current ones for rows recorded without them; bodies are only flagged.
const LOG_SELECT: &str = "SELECT l.request_id, l.started_at_ms, l.key_id, l.client_api, \
     l.requested_model, l.provider, l.model, l.status, l.input_tokens, l.output_tokens, \
     l.cached_tokens, l.reasoning_tokens, l.latency_ms, l.cost_picos, l.stream, l.error_type, \
     l.node_id, l.received_at_ms, l.firewall_actions, l.warnings, l.mode, l.tier, l.rule_trace, \
     l.rule_trace_id, t.trace AS shared_trace, l.attempts_json, l.ttfb_ms, l.retry_after_s, \
     l.metadata_json, l.idempotency_key, l.replay_of, \
     CASE WHEN l.key_name = '' THEN COALESCE(k.name, '') ELSE l.key_name END AS key_name, \
     CASE WHEN l.workspace_id = '' THEN COALESCE(k.workspace_id, '') ELSE l.workspace_id END \
     AS workspace_id, \
     EXISTS (SELECT 1 FROM request_bodies b WHERE b.request_id = l.request_id) AS has_bodies \
     FROM request_logs l LEFT JOIN api_keys k ON k.id = l.key_id \
     LEFT JOIN rule_traces t ON t.id = l.rule_trace_id";

/// A log row's trace: the shared one it names (migration 0011), else its own.
fn row_trace(row: &PgRow) -> Result<String, StoreError> {
    let Some(id) = row.try_get::<Option<i64>, _>("rule_trace_id")? else {
        return Ok(row.try_get("rule_trace")?);
    };
    row.try_get::<Option<String>, _>("shared_trace")?
        .ok_or_else(|| {
            StoreError::Corrupt(format!(
                "request_logs.rule_trace_id {id}: no such rule trace"
            ))
        })
}

fn log_from_row(row: &PgRow) -> Result<LogEntry, StoreError> {
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

/// The aggregates of a usage summary (`rows::USAGE_SUM_COLUMNS` of them), read back by
/// [`usage_totals_at`]. PostgreSQL's SUM of BIGINT is NUMERIC; each sum is split as on SQLite
/// (x = hi * 1e6 + lo), so that it fits a BIGINT again and is put together exactly in Rust.
const USAGE_SUMS: &str = "COUNT(*), \
     COALESCE(SUM(CASE WHEN status BETWEEN 200 AND 299 THEN 0 ELSE 1 END), 0)::BIGINT, \
     COALESCE(SUM(CASE WHEN status BETWEEN 200 AND 299 AND replay_of = '' \
         THEN input_tokens / 1000000 ELSE 0 END), 0)::BIGINT, \
     COALESCE(SUM(CASE WHEN status BETWEEN 200 AND 299 AND replay_of = '' \
         THEN input_tokens % 1000000 ELSE 0 END), 0)::BIGINT, \
     COALESCE(SUM(CASE WHEN status BETWEEN 200 AND 299 AND replay_of = '' \
         THEN output_tokens / 1000000 ELSE 0 END), 0)::BIGINT, \
     COALESCE(SUM(CASE WHEN status BETWEEN 200 AND 299 AND replay_of = '' \
         THEN output_tokens % 1000000 ELSE 0 END), 0)::BIGINT, \
     COALESCE(SUM(CASE WHEN status BETWEEN 200 AND 299 AND replay_of = '' \
         THEN cost_picos / 1000000 ELSE 0 END), 0)::BIGINT, \
     COALESCE(SUM(CASE WHEN status BETWEEN 200 AND 299 AND replay_of = '' \
         THEN cost_picos % 1000000 ELSE 0 END), 0)::BIGINT";

/// The [`USAGE_SUMS`] columns starting at `first`.
fn usage_totals_at(row: &PgRow, first: usize) -> Result<UsageTotals, StoreError> {
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

fn limits_from_row(row: &PgRow) -> Result<Limits, StoreError> {
    Ok(limits_from_columns([
        row.try_get("rps_limit")?,
        row.try_get("hour_total_tokens")?,
        row.try_get("hour_input_tokens")?,
        row.try_get("hour_output_tokens")?,
    ]))
}

async fn load_workspaces(conn: &mut PgConnection) -> Result<Vec<WorkspaceRow>, StoreError> {
    sqlx::query(&format!("{WORKSPACE_SELECT} ORDER BY id COLLATE \"C\""))
        .fetch_all(&mut *conn)
        .await?
        .iter()
        .map(workspace_from_row)
        .collect()
}

fn workspace_from_row(row: &PgRow) -> Result<WorkspaceRow, StoreError> {
    Ok(WorkspaceRow {
        id: row.try_get("id")?,
        created_at_ms: row.try_get("created_at_ms")?,
        limits: limits_from_row(row)?,
        metered: row.try_get("metered")?,
    })
}

async fn load_keys(conn: &mut PgConnection) -> Result<Vec<KeyRow>, StoreError> {
    sqlx::query(&format!(
        "{KEY_SELECT} ORDER BY created_at_ms, id COLLATE \"C\""
    ))
    .fetch_all(&mut *conn)
    .await?
    .iter()
    .map(key_from_row)
    .collect()
}

/// Records that a key changed at `version` (what [`Store::load_config_since`] reads).
pub(super) async fn mark_key_changed(
    conn: &mut PgConnection,
    id: &str,
    version: i64,
) -> Result<(), StoreError> {
    sqlx::query("UPDATE api_keys SET changed_version = $1 WHERE id = $2")
        .bind(version)
        .bind(id)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

fn key_from_row(row: &PgRow) -> Result<KeyRow, StoreError> {
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

async fn load_providers(conn: &mut PgConnection) -> Result<Vec<ProviderRow>, StoreError> {
    sqlx::query(
        "SELECT name, kind, base_url, credential_sealed, fallbacks_sealed, fallback_count, \
         enabled, created_at_ms FROM providers ORDER BY created_at_ms, name COLLATE \"C\"",
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
    // The key, the fields, then updated_at_ms.
    let placeholders: Vec<String> = (1..=MODEL_FIELDS.len() + 3)
        .map(|i| format!("${i}"))
        .collect();
    format!(
        "INSERT INTO models (provider_kind, id, {}, updated_at_ms) VALUES ({}) \
         ON CONFLICT (provider_kind, id) DO {on_conflict}",
        MODEL_FIELDS.join(", "),
        placeholders.join(", "),
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

async fn load_model_rows(conn: &mut PgConnection) -> Result<Vec<ModelRow>, StoreError> {
    // seq = seeding order = catalogue order, which bare-model resolution relies on.
    let u32_of = |row: &PgRow, column: &str| -> Result<u32, StoreError> {
        Ok(to_u32_saturating(row.try_get(column)?))
    };
    sqlx::query(&format!(
        "SELECT provider_kind, id, {}, updated_at_ms FROM models ORDER BY seq",
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

async fn load_routing_rules(conn: &mut PgConnection) -> Result<Vec<RoutingRuleRow>, StoreError> {
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
    conn: &mut PgConnection,
) -> Result<Vec<RoutingConfigRow>, StoreError> {
    sqlx::query(
        "SELECT key_id, active, strategy, backends_json, rules_json, updated_at_ms \
         FROM routing_configs ORDER BY key_id COLLATE \"C\"",
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

/// What only shows with several processes on one database: two stores on one database are two
/// replicas. The backend-independent tests are in `super::conformance`.
#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::store::idempotency::{Claim, ClaimState};
    use crate::store::metering::{Grant, Owner};
    use sqlx::Connection;

    use crate::store::test_db::PgDatabase;
    use crate::store::Proposed;

    /// Two replicas on a new database; `None` when there is no server (outside CI).
    async fn replicas() -> Option<(PgDatabase, Arc<PostgresStore>, Arc<PostgresStore>)> {
        let db = PgDatabase::create().await?;
        let (a, b) = tokio::join!(db.open(), db.open());
        Some((db, Arc::new(a), Arc::new(b)))
    }

    fn key(id: &str, byte: u8, metered: bool) -> KeyRow {
        KeyRow {
            id: id.into(),
            name: "n".into(),
            key_prefix: "sk-tr-abcd".into(),
            sha256: [byte; 32],
            workspace_id: "default".into(),
            status: KeyStatus::Active,
            created_at_ms: 1,
            limits: Limits::default(),
            metered,
            revoked_at_ms: None,
            store_bodies: false,
        }
    }

    fn ok(_: Proposed<'_>) -> Result<(), String> {
        Ok(())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_config_writes_of_two_replicas_get_consecutive_versions() {
        let Some((_db, a, b)) = replicas().await else {
            return;
        };
        let v0 = a.load_config().await.unwrap().version;
        // A slow check keeps each write transaction open while the others queue.
        let slow = |_: Proposed<'_>| {
            std::thread::sleep(Duration::from_millis(10));
            Ok(())
        };
        let writes: Vec<_> = (0..16u8)
            .map(|i| {
                let store = if i % 2 == 0 { a.clone() } else { b.clone() };
                tokio::spawn(async move {
                    let change = ConfigChange::CreateKey(key(&format!("key_{i:02}"), i, false));
                    store.change_config(change, &slow).await
                })
            })
            .collect();
        let mut versions = Vec::new();
        for w in writes {
            versions.push(w.await.unwrap().unwrap().version.unwrap());
        }
        versions.sort_unstable();
        assert_eq!(versions, (v0 + 1..=v0 + 16).collect::<Vec<u64>>());
        let state = b.load_config().await.unwrap();
        assert_eq!((state.version, state.keys.len()), (v0 + 16, 16));
    }

    /// Waits (at most `within`) until `store`'s notifications show `version`.
    async fn sees(store: &PostgresStore, version: u64, within: Duration) -> bool {
        let mut versions = store.config_notifications().unwrap();
        tokio::time::timeout(within, versions.wait_for(|&v| v >= version))
            .await
            .is_ok_and(|seen| seen.is_ok())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_replica_is_notified_of_the_others_writes_also_after_reconnecting() {
        let Some((db, a, b)) = replicas().await else {
            return;
        };
        let second = Duration::from_secs(1);
        let v1 = a
            .change_config(ConfigChange::CreateKey(key("key_a", 1, false)), &ok)
            .await
            .unwrap()
            .version
            .unwrap();
        assert!(sees(&b, v1, second).await, "the write was announced");
        // A grant that makes a key metered is a configuration change too.
        let granted = a
            .metering()
            .grant(&Grant {
                owner: Owner::Key("key_a".into()),
                amount_picos: 5,
                source: "admin".into(),
                external_id: None,
                note: String::new(),
                at_ms: 1,
            })
            .await
            .unwrap();
        let v2 = granted.new_version.unwrap();
        assert!(sees(&b, v2, second).await, "the grant was announced");

        // B's listening connection dies; a write while it is down is seen once it is back.
        let mut admin = PgConnection::connect_with(&db.options).await.unwrap();
        let killed: i64 = sqlx::query(
            "SELECT COUNT(pg_terminate_backend(pid)) FROM pg_stat_activity \
             WHERE datname = current_database() AND query LIKE 'LISTEN%'",
        )
        .fetch_one(&mut admin)
        .await
        .unwrap()
        .try_get(0)
        .unwrap();
        assert!(killed >= 2, "both replicas listen ({killed})");
        let v3 = a
            .change_config(ConfigChange::CreateKey(key("key_b", 2, false)), &ok)
            .await
            .unwrap()
            .version
            .unwrap();
        assert!(
            sees(&b, v3, Duration::from_secs(5)).await,
            "caught up after reconnecting"
        );
        let v4 = a
            .change_config(ConfigChange::CreateKey(key("key_c", 3, false)), &ok)
            .await
            .unwrap()
            .version
            .unwrap();
        assert!(sees(&b, v4, second).await, "listening again");

        // Closing the store ends the task, which closes the channel.
        let mut versions = b.config_notifications().unwrap();
        b.close().await;
        let ended =
            tokio::time::timeout(second, async { while versions.changed().await.is_ok() {} }).await;
        assert!(ended.is_ok(), "the notification task ended with the store");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_batch_stored_by_two_replicas_at_once_is_stored_and_charged_once() {
        let Some((_db, a, b)) = replicas().await else {
            return;
        };
        for (i, id) in ["key_a", "key_b"].into_iter().enumerate() {
            a.change_config(ConfigChange::CreateKey(key(id, i as u8, true)), &ok)
                .await
                .unwrap();
        }
        for owner in [
            Owner::Key("key_a".into()),
            Owner::Key("key_b".into()),
            Owner::Workspace("default".into()),
        ] {
            a.metering()
                .grant(&Grant {
                    owner,
                    amount_picos: 1_000_000,
                    source: "admin".into(),
                    external_id: None,
                    note: String::new(),
                    at_ms: 1,
                })
                .await
                .unwrap();
        }
        let record = |i: usize| UsageRecord {
            request_id: format!("r{i:03}"),
            key_id: if i.is_multiple_of(2) {
                "key_a"
            } else {
                "key_b"
            }
            .into(),
            status: 200,
            cost_picos: 10,
            ..UsageRecord::default()
        };
        let batch: Vec<UsageRecord> = (0..60).map(record).collect();
        // The same batch twice, and overlapping batches in opposite orders (two edges resending
        // to different replicas), all at once.
        let mut reversed = batch[20..].to_vec();
        reversed.reverse();
        let jobs = [
            (a.clone(), batch.clone()),
            (b.clone(), batch.clone()),
            (a.clone(), reversed.clone()),
            (b.clone(), reversed),
        ];
        let tasks: Vec<_> = jobs
            .into_iter()
            .map(|(store, records)| {
                tokio::spawn(async move { store.insert_usage(&records, 5).await })
            })
            .collect();
        let mut stored = 0;
        for t in tasks {
            stored += t.await.unwrap().unwrap().len();
        }
        assert_eq!(stored, 60, "each record is new to exactly one insert");
        let usage = b.key_usage(None).await.unwrap();
        assert_eq!(usage["key_a"].requests + usage["key_b"].requests, 60);
        let m = b.metering();
        assert_eq!(
            m.balance(&Owner::Key("key_a".into())).await.unwrap(),
            Some(999_700)
        );
        assert_eq!(
            m.balance(&Owner::Key("key_b".into())).await.unwrap(),
            Some(999_700)
        );
        assert_eq!(
            m.balance(&Owner::Workspace("default".into()))
                .await
                .unwrap(),
            Some(999_400)
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_claims_through_two_replicas_have_one_winner() {
        let Some((_db, a, b)) = replicas().await else {
            return;
        };
        let tasks: Vec<_> = (0..20)
            .map(|i| {
                let store = if i % 2 == 0 { a.clone() } else { b.clone() };
                tokio::spawn(async move {
                    let claim = Claim {
                        key_id: "key_1".into(),
                        idempotency_key: "idem-1".into(),
                        request_sha256: vec![1; 32],
                        request_id: format!("r{i}"),
                    };
                    store.idempotency().claim(&claim, 1000).await
                })
            })
            .collect();
        let mut won = 0;
        for t in tasks {
            if t.await.unwrap().unwrap() == ClaimState::Claimed {
                won += 1;
            }
        }
        assert_eq!(won, 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn an_event_credited_through_two_replicas_at_once_is_credited_once() {
        let Some((_db, a, b)) = replicas().await else {
            return;
        };
        a.change_config(ConfigChange::CreateKey(key("key_a", 1, false)), &ok)
            .await
            .unwrap();
        let tasks: Vec<_> = (0..10)
            .map(|i| {
                let store = if i % 2 == 0 { a.clone() } else { b.clone() };
                tokio::spawn(async move {
                    store
                        .metering()
                        .grant(&Grant {
                            owner: Owner::Key("key_a".into()),
                            amount_picos: 100,
                            source: "stripe".into(),
                            external_id: Some("evt_1".into()),
                            note: String::new(),
                            at_ms: 1,
                        })
                        .await
                })
            })
            .collect();
        let mut credited = 0;
        let mut versions = 0;
        for t in tasks {
            let granted = t.await.unwrap().unwrap();
            credited += usize::from(granted.credited);
            versions += usize::from(granted.new_version.is_some());
        }
        assert_eq!((credited, versions), (1, 1));
        let balance = a.metering().balance(&Owner::Key("key_a".into())).await;
        assert_eq!(balance.unwrap(), Some(100));
        let ledger: i64 = sqlx::query("SELECT COUNT(*) FROM credit_ledger")
            .fetch_one(a.pool())
            .await
            .unwrap()
            .try_get(0)
            .unwrap();
        assert_eq!(ledger, 1);
    }
}
