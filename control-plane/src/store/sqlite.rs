//! The embedded default: SQLite through sqlx, in WAL mode, migrations from `migrations/sqlite/`.
//!
//! Writes (configuration changes and usage batches) are serialised in the process by a FIFO
//! mutex and run in `BEGIN IMMEDIATE` transactions, so they queue in arrival order instead of
//! racing for SQLite's write lock; the `busy_timeout` covers writers outside this process (the
//! CLI on the same file). Reads run concurrently with a write (WAL).

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, SqliteConnection, SqlitePool};
use tokenrouter_proto::config::v1 as pb;
use tokenrouter_proto::sync::v1::UsageRecord;

use super::{
    ChangeOutcome, Changed, Check, ConfigChange, ConfigState, FirewallRuleRow, KeyRow, KeyStatus,
    LogEntry, LogQuery, Proposed, ProviderRow, Store, StoreError,
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
            Changed::Provider(provider) => check(Proposed::Provider(provider)),
            Changed::ModelsSeeded(_) => {
                let models = load_models(&mut tx).await?;
                check(Proposed::Models(&models))
            }
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
            Changed::ProviderRemoved(_) | Changed::FirewallRuleRemoved(_) => {
                check(Proposed::Removal)
            }
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

    async fn list_providers(&self) -> Result<Vec<ProviderRow>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        load_providers(&mut conn).await
    }

    async fn list_models(&self) -> Result<Vec<pb::Model>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        load_models(&mut conn).await
    }

    async fn list_firewall_rules(&self) -> Result<Vec<FirewallRuleRow>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        load_firewall_rules(&mut conn).await
    }

    async fn insert_usage(
        &self,
        records: &[UsageRecord],
        received_at_ms: i64,
    ) -> Result<u64, StoreError> {
        let _writer = self.writer.lock().await;
        let mut tx = self.pool.begin_with(BEGIN_WRITE).await?;
        let mut inserted = 0;
        for r in records {
            let done = sqlx::query(
                "INSERT INTO request_logs (request_id, started_at_ms, key_id, client_api, \
                 requested_model, provider, model, status, input_tokens, output_tokens, \
                 cached_tokens, reasoning_tokens, latency_ms, cost_picos, stream, error_type, \
                 node_id, received_at_ms, firewall_actions, warnings) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) \
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
            .execute(&mut *tx)
            .await?;
            inserted += done.rows_affected();
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
        let rows = sqlx::query(
            "SELECT request_id, started_at_ms, key_id, client_api, requested_model, provider, \
             model, status, input_tokens, output_tokens, cached_tokens, reasoning_tokens, \
             latency_ms, cost_picos, stream, error_type, node_id, received_at_ms, \
             firewall_actions, warnings \
             FROM request_logs \
             WHERE (?1 IS NULL OR key_id = ?1) AND (?2 IS NULL OR rowid < ?2) \
             ORDER BY rowid DESC LIMIT ?3",
        )
        .bind(&query.key_id)
        .bind(before)
        .bind(i64::from(query.limit))
        .fetch_all(&mut *conn)
        .await?;
        rows.iter()
            .map(|row| {
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
                        ..UsageRecord::default()
                    },
                    received_at_ms: row.try_get("received_at_ms")?,
                })
            })
            .collect()
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
            sqlx::query(
                "INSERT INTO api_keys (id, name, key_prefix, sha256, workspace_id, status, \
                 created_at_ms, revoked_at_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            )
            .bind(&key.id)
            .bind(&key.name)
            .bind(&key.key_prefix)
            .bind(key.sha256.as_slice())
            .bind(&key.workspace_id)
            .bind(key.status.as_str())
            .bind(key.created_at_ms)
            .bind(key.revoked_at_ms)
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
                         enabled = ? WHERE name = ?",
                    )
                    .bind(&row.kind)
                    .bind(&row.base_url)
                    .bind(&row.credential_sealed)
                    .bind(row.enabled)
                    .bind(&row.name)
                    .execute(&mut *conn)
                    .await?;
                }
                None => {
                    sqlx::query(
                        "INSERT INTO providers (name, kind, base_url, credential_sealed, enabled, \
                         created_at_ms) VALUES (?, ?, ?, ?, ?, ?)",
                    )
                    .bind(&row.name)
                    .bind(&row.kind)
                    .bind(&row.base_url)
                    .bind(&row.credential_sealed)
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
            let count: i64 = sqlx::query("SELECT COUNT(*) FROM models")
                .fetch_one(&mut *conn)
                .await?
                .try_get(0)?;
            if count > 0 {
                Applied::Nothing(Changed::ModelsSeeded(0))
            } else {
                for m in &models {
                    sqlx::query(
                        "INSERT INTO models (provider_kind, id, upstream_model, \
                         input_price_micros_per_mtok, output_price_micros_per_mtok, \
                         cached_input_price_micros_per_mtok, context_window, enabled) \
                         VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    )
                    .bind(&m.provider_kind)
                    .bind(&m.id)
                    .bind(&m.upstream_model)
                    .bind(m.input_price_micros_per_mtok)
                    .bind(m.output_price_micros_per_mtok)
                    .bind(m.cached_input_price_micros_per_mtok)
                    .bind(i64::from(m.context_window))
                    .bind(m.enabled)
                    .execute(&mut *conn)
                    .await
                    .map_err(|e| {
                        unique_violation(e, || format!("model {}/{}", m.provider_kind, m.id))
                    })?;
                }
                Applied::Committed(Changed::ModelsSeeded(models.len()))
            }
        }
        ConfigChange::CreateFirewallRule(mut rule) => {
            let done = bind_rule(
                sqlx::query(
                    "INSERT INTO firewall_rules (name, priority, is_enabled, scope, type, \
                     pattern, action, replacement, key_id, max_match_chars, \"check\", template, \
                     created_at_ms, updated_at_ms) \
                     VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
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
                     max_match_chars = ?, \"check\" = ?, template = ?, updated_at_ms = ? \
                     WHERE id = ?",
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
        providers: load_providers(conn).await?,
        models: load_models(conn).await?,
        firewall_rules: load_firewall_rules(conn).await?,
    })
}

type Query<'q> = sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments<'q>>;

/// Binds a rule's columns from `name` to `template`, in table order.
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
}

async fn load_firewall_rules(
    conn: &mut SqliteConnection,
) -> Result<Vec<FirewallRuleRow>, StoreError> {
    sqlx::query(
        "SELECT id, name, priority, is_enabled, scope, type, pattern, action, replacement, key_id, \
         max_match_chars, \"check\", template, created_at_ms, updated_at_ms \
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

const KEY_SELECT: &str = "SELECT id, name, key_prefix, sha256, workspace_id, status, \
                          created_at_ms, revoked_at_ms FROM api_keys";

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
        id,
    })
}

async fn load_providers(conn: &mut SqliteConnection) -> Result<Vec<ProviderRow>, StoreError> {
    sqlx::query(
        "SELECT name, kind, base_url, credential_sealed, enabled, created_at_ms FROM providers \
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
            enabled: row.try_get("enabled")?,
            created_at_ms: row.try_get("created_at_ms")?,
        })
    })
    .collect()
}

async fn load_models(conn: &mut SqliteConnection) -> Result<Vec<pb::Model>, StoreError> {
    // rowid = seeding order = catalogue order, which bare-model resolution relies on.
    sqlx::query(
        "SELECT provider_kind, id, upstream_model, input_price_micros_per_mtok, \
         output_price_micros_per_mtok, cached_input_price_micros_per_mtok, context_window, \
         enabled FROM models ORDER BY rowid",
    )
    .fetch_all(&mut *conn)
    .await?
    .iter()
    .map(|row| {
        Ok(pb::Model {
            id: row.try_get("id")?,
            provider_kind: row.try_get("provider_kind")?,
            upstream_model: row.try_get("upstream_model")?,
            input_price_micros_per_mtok: row.try_get("input_price_micros_per_mtok")?,
            output_price_micros_per_mtok: row.try_get("output_price_micros_per_mtok")?,
            cached_input_price_micros_per_mtok: row
                .try_get("cached_input_price_micros_per_mtok")?,
            context_window: u32::try_from(row.try_get::<i64, _>("context_window")?)
                .unwrap_or(u32::MAX),
            enabled: row.try_get("enabled")?,
            ..pb::Model::default()
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
            revoked_at_ms: None,
        }
    }

    fn provider(name: &str, url: &str) -> ProviderRow {
        ProviderRow {
            name: name.into(),
            kind: "openai".into(),
            base_url: url.into(),
            credential_sealed: Some(vec![1, 2, 3]),
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
        assert_eq!(out.changed, Changed::ModelsSeeded(builtin.len()));
        let again = store
            .change_config(ConfigChange::SeedModels(builtin.clone()), &ok)
            .await
            .unwrap();
        assert!(again.version.is_none());
        assert_eq!(store.list_models().await.unwrap(), builtin);
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
    async fn usage_batches_are_idempotent() {
        let (store, _dir) = temp_store().await;
        let batch = vec![record("r1"), record("r2")];
        assert_eq!(store.insert_usage(&batch, 100).await.unwrap(), 2);
        assert_eq!(store.insert_usage(&batch, 200).await.unwrap(), 0);
        assert_eq!(
            store
                .insert_usage(&[record("r2"), record("r3")], 300)
                .await
                .unwrap(),
            1
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
            })
            .await
            .unwrap();
        assert!(none.is_empty());
        let bad = store
            .list_logs(&LogQuery {
                limit: 10,
                key_id: None,
                before_request_id: Some("nope".into()),
            })
            .await;
        assert!(matches!(bad, Err(StoreError::NotFound(_))));
    }
}
