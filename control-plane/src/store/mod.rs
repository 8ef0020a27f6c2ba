//! Persistence behind one trait, one implementation per database (SQLite, the embedded
//! default; PostgreSQL, for replicas sharing one database), each owning its migrations
//! (`migrations/<backend>/`, the same schema numbered alike). Helpers that are not SQL are
//! shared (`rows`); the storage tests run against both (`conformance`).
//!
//! Every configuration write goes through [`Store::change_config`]: the backend bumps the config
//! version, applies the change and hands what it would commit ([`Proposed`]: the changed entity,
//! or the whole collection where validity depends on more than one entity) to a check supplied by
//! the service — all in one transaction, so a change the engine would refuse is never committed.
//! The cost of a write is independent of the configuration's size: nothing reads every key
//! inside a write. The full configuration is read ([`Store::load_config`]) only to publish it,
//! outside any write transaction (`crate::publisher::Coalescer`).

pub mod idempotency;
pub mod metering;
pub mod postgres;
pub(crate) mod rows;
pub mod sqlite;
pub(crate) mod traces;

#[cfg(test)]
mod conformance;
#[cfg(test)]
pub(crate) mod test_db;

use async_trait::async_trait;
use tokenrouter_proto::config::v1 as pb;
use tokenrouter_proto::sync::v1::UsageRecord;

pub use postgres::PostgresStore;
pub use sqlite::SqliteStore;

/// Whether a key still authenticates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyStatus {
    Active,
    Revoked,
}

impl KeyStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyStatus::Active => "active",
            KeyStatus::Revoked => "revoked",
        }
    }

    pub fn parse(s: &str) -> Option<KeyStatus> {
        match s {
            "active" => Some(KeyStatus::Active),
            "revoked" => Some(KeyStatus::Revoked),
            _ => None,
        }
    }
}

/// A gateway key as stored: never the raw key, only its hash and display prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyRow {
    pub id: String,
    pub name: String,
    pub key_prefix: String,
    pub sha256: [u8; 32],
    pub workspace_id: String,
    pub status: KeyStatus,
    pub created_at_ms: i64,
    pub revoked_at_ms: Option<i64>,
    /// Request and response bodies of this key's requests are recorded (pushed to the edge as
    /// `ApiKey.store_bodies`; the edge sends them in the usage record).
    pub store_bodies: bool,
    /// The key's own limits (unset fields inherit from its workspace).
    pub limits: Limits,
    /// The key has a balance (its amount lives outside the configuration: see
    /// [`metering::MeteringStore`]); only metered keys are refused for credit.
    pub metered: bool,
}

/// Limits of a key or a workspace. `None` = inherit (a key from its workspace, a workspace from
/// the server's defaults); `Some(0)` = off.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Limits {
    /// Burst requests per second.
    pub rps: Option<u32>,
    /// Rolling one-hour token budgets.
    pub hour_total_tokens: Option<u64>,
    pub hour_input_tokens: Option<u64>,
    pub hour_output_tokens: Option<u64>,
}

impl Limits {
    /// These limits, with every unset field taken from `parent`.
    pub fn or(self, parent: Limits) -> Limits {
        Limits {
            rps: self.rps.or(parent.rps),
            hour_total_tokens: self.hour_total_tokens.or(parent.hour_total_tokens),
            hour_input_tokens: self.hour_input_tokens.or(parent.hour_input_tokens),
            hour_output_tokens: self.hour_output_tokens.or(parent.hour_output_tokens),
        }
    }

    /// Whether any field is set.
    pub fn any_set(&self) -> bool {
        *self != Limits::default()
    }

    /// Whether anything is enforced (after inheritance: unset counts as off).
    pub fn any(&self) -> bool {
        let on = |v: Option<u64>| v.is_some_and(|n| n > 0);
        self.rps.is_some_and(|n| n > 0)
            || on(self.hour_total_tokens)
            || on(self.hour_input_tokens)
            || on(self.hour_output_tokens)
    }
}

/// A workspace: owns keys, and lends them its limits, balance and firewall rules.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkspaceRow {
    pub id: String,
    pub created_at_ms: i64,
    pub limits: Limits,
    /// The workspace has a balance of its own (its keys' requests are charged to it too).
    pub metered: bool,
}

/// A key's totals over its request log rows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KeyUsage {
    /// Every request, whatever its status.
    pub requests: u64,
    /// Requests whose status was not 2xx.
    pub failed_requests: u64,
    /// Tokens and cost of successful (2xx) requests that were not replays.
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cost_picos: i128,
    /// Latest receive time of any of its requests; `None` = never used.
    pub last_used_at_ms: Option<i64>,
}

impl KeyUsage {
    /// Input plus output tokens of successful requests.
    pub fn total_tokens(&self) -> u64 {
        self.input_tokens.saturating_add(self.output_tokens)
    }

    /// Spend as an exact decimal USD string.
    pub fn spend_usd(&self) -> String {
        tokenrouter_engine::money::format_picos_usd(self.cost_picos)
    }
}

/// A provider as stored; the credential stays sealed until the snapshot is built.
#[derive(Clone, PartialEq, Eq)]
pub struct ProviderRow {
    pub name: String,
    pub kind: String,
    pub base_url: String,
    /// AES-256-GCM output of [`crate::crypto::Sealer::seal`]; `None` = no credential.
    pub credential_sealed: Option<Vec<u8>>,
    /// Fallback credentials: [`crate::crypto::Sealer::seal`] over a JSON array of strings.
    pub fallbacks_sealed: Option<Vec<u8>>,
    /// How many fallback credentials `fallbacks_sealed` holds (for display without opening it).
    pub fallback_count: u32,
    pub enabled: bool,
    pub created_at_ms: i64,
}

impl std::fmt::Debug for ProviderRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProviderRow")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("base_url", &self.base_url)
            .field("has_credential", &self.credential_sealed.is_some())
            .field("fallback_count", &self.fallback_count)
            .field("enabled", &self.enabled)
            .field("created_at_ms", &self.created_at_ms)
            .finish()
    }
}

/// A firewall rule as stored. The engine validates it (`firewall::validate`) before it is
/// written; the snapshot carries it as `config.v1.FirewallRule`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FirewallRuleRow {
    /// Assigned by the store on creation (0 before).
    pub id: i64,
    pub name: String,
    pub priority: i32,
    pub is_enabled: bool,
    pub scope: String,
    pub match_type: String,
    pub pattern: String,
    pub action: String,
    /// Empty = the engine's default replacement.
    pub replacement: String,
    /// Empty = every key.
    pub key_id: String,
    /// Empty = every workspace; else only keys of that workspace.
    pub workspace_id: String,
    /// Regex rules; 0 = the engine's default.
    pub max_match_chars: u32,
    pub check: String,
    /// Template the rule was created from; empty for hand-written rules.
    pub template: String,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

impl FirewallRuleRow {
    /// The rule as the snapshot (and the engine's validator) takes it.
    pub fn to_proto(&self) -> pb::FirewallRule {
        pb::FirewallRule {
            id: self.id,
            name: self.name.clone(),
            priority: self.priority,
            enabled: self.is_enabled,
            scope: self.scope.clone(),
            r#type: self.match_type.clone(),
            pattern: self.pattern.clone(),
            action: self.action.clone(),
            replacement: self.replacement.clone(),
            key_id: self.key_id.clone(),
            workspace_id: self.workspace_id.clone(),
            max_match_chars: self.max_match_chars,
            check: self.check.clone(),
        }
    }
}

/// A catalogue model as stored: the snapshot's model, and when it was last changed through the
/// API.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelRow {
    pub model: pb::Model,
    /// 0 = as seeded from the built-in catalogue and never edited since.
    pub updated_at_ms: i64,
}

/// A routing rule as stored (seed 003's `routing_rules`). The engine validates it
/// (`routing::rules::validate`) before it is written; the snapshot carries it as
/// `config.v1.RoutingRule`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoutingRuleRow {
    /// Assigned by the store on creation (0 before); never reused.
    pub id: i64,
    pub name: String,
    /// Higher first.
    pub priority: i32,
    pub is_enabled: bool,
    /// JSON object, as the SDK sends it.
    pub match_json: String,
    /// JSON object, as the SDK sends it.
    pub action_json: String,
    /// Empty = every key.
    pub key_id: String,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

impl RoutingRuleRow {
    /// The rule as the snapshot (and the engine's validator) takes it.
    pub fn to_proto(&self) -> pb::RoutingRule {
        pb::RoutingRule {
            id: self.id,
            name: self.name.clone(),
            priority: self.priority,
            enabled: self.is_enabled,
            match_json: self.match_json.clone(),
            action_json: self.action_json.clone(),
            key_id: self.key_id.clone(),
        }
    }
}

/// A key's routing configuration as stored (one per key). The engine validates it
/// (`routing::config::validate`) before it is written.
#[derive(Clone, Debug, PartialEq)]
pub struct RoutingConfigRow {
    /// The key it belongs to; the key must exist.
    pub key_id: String,
    /// Inactive configurations are kept (and pushed) but not enforced.
    pub active: bool,
    /// fallback | split | rules.
    pub strategy: String,
    pub backends: Vec<pb::Backend>,
    /// `rules` strategy only.
    pub rules: Vec<pb::ConfigRule>,
    pub updated_at_ms: i64,
}

impl RoutingConfigRow {
    /// The configuration as the snapshot (and the engine's validator) takes it.
    pub fn to_proto(&self) -> pb::RoutingConfig {
        pb::RoutingConfig {
            key_id: self.key_id.clone(),
            active: self.active,
            strategy: self.strategy.clone(),
            backends: self.backends.clone(),
            rules: self.rules.clone(),
        }
    }
}

/// The whole configuration at one version (read in one transaction, so the two agree).
#[derive(Clone, Debug, Default)]
pub struct ConfigState {
    pub version: u64,
    pub keys: Vec<KeyRow>,
    pub workspaces: Vec<WorkspaceRow>,
    pub providers: Vec<ProviderRow>,
    /// Catalogue entries; the engine's catalogue type doubles as the stored model.
    pub models: Vec<pb::Model>,
    /// Firewall rules, enabled or not, by id.
    pub firewall_rules: Vec<FirewallRuleRow>,
    /// Routing rules, enabled or not, by id.
    pub routing_rules: Vec<RoutingRuleRow>,
    /// Routing configurations, active or not, by key id.
    pub routing_configs: Vec<RoutingConfigRow>,
}

/// One configuration write.
#[derive(Clone, Debug)]
pub enum ConfigChange {
    CreateKey(KeyRow),
    /// Idempotent: revoking a revoked key changes nothing.
    RevokeKey {
        id: String,
        at_ms: i64,
    },
    /// Sets the fields that are `Some`; `NotFound` when there is no such key. Setting what is
    /// already there changes nothing (no new version).
    UpdateKey {
        id: String,
        name: Option<String>,
        store_bodies: Option<bool>,
        /// Fields set here replace the key's.
        limits: Limits,
    },
    /// A taken id is `AlreadyExists`.
    CreateWorkspace(WorkspaceRow),
    /// Fields of `limits` that are set replace the workspace's; `NotFound` when there is none.
    UpdateWorkspace {
        id: String,
        limits: Limits,
    },
    PutProvider {
        row: ProviderRow,
        replace: bool,
    },
    RemoveProvider {
        name: String,
    },
    /// Inserts the built-in models the table lacks (every start). An existing row is never
    /// overwritten, except that the columns added with capabilities are filled in on rows
    /// seeded before they existed (`price_source` still empty, never edited).
    SeedModels(Vec<pb::Model>),
    /// Inserts the model, or replaces every field of the one with the same `(kind, id)` (which
    /// keeps its place in catalogue order).
    UpsertModel(ModelRow),
    /// Replaces the model with the same `(kind, id)`; `NotFound` when there is none.
    UpdateModel(ModelRow),
    /// Inserts a rule; the store assigns its id. A taken name is `AlreadyExists`.
    CreateFirewallRule(FirewallRuleRow),
    /// Replaces the rule with this id (its creation time is kept).
    UpdateFirewallRule(FirewallRuleRow),
    DeleteFirewallRule {
        id: i64,
    },
    /// Inserts a routing rule; the store assigns its id. A taken name is `AlreadyExists`.
    CreateRoutingRule(RoutingRuleRow),
    /// Replaces the routing rule with this id (its creation time is kept).
    UpdateRoutingRule(RoutingRuleRow),
    DeleteRoutingRule {
        id: i64,
    },
    /// Creates or replaces the key's configuration; `NotFound` when the key does not exist.
    SetRoutingConfig(RoutingConfigRow),
    DeleteRoutingConfig {
        key_id: String,
    },
}

/// What a configuration write did.
#[derive(Clone, Debug, PartialEq)]
pub enum Changed {
    Key(KeyRow),
    Workspace(WorkspaceRow),
    Provider(ProviderRow),
    ProviderRemoved(String),
    /// The models inserted or filled in, in catalogue order (empty: nothing to do).
    ModelsSeeded(Vec<pb::Model>),
    Model(ModelRow),
    FirewallRule(FirewallRuleRow),
    FirewallRuleRemoved(i64),
    RoutingRule(RoutingRuleRow),
    RoutingRuleRemoved(i64),
    RoutingConfig(RoutingConfigRow),
    RoutingConfigRemoved(String),
}

/// Outcome of [`Store::change_config`]: what changed, and the version committed (`None` for a
/// no-op such as a repeated revoke, which commits nothing).
#[derive(Debug)]
pub struct ChangeOutcome {
    pub changed: Changed,
    pub version: Option<u64>,
}

/// What a write would commit, as the pre-commit [`Check`] sees it: just enough to decide whether
/// the resulting configuration is valid, given the invariants the database itself enforces
/// (unique key hashes, unique provider names, unique `(kind, id)` models, unique rule names).
#[derive(Clone, Copy, Debug)]
pub enum Proposed<'a> {
    /// A created, updated or revoked key. The only cross-key rule, hash uniqueness, is a unique
    /// index.
    Key(&'a KeyRow),
    /// A created or updated workspace (its id is the primary key; limits need no check).
    Workspace(&'a WorkspaceRow),
    /// An added or replaced provider; its name is the primary key.
    Provider(&'a ProviderRow),
    /// Models seeded, added or changed (`(kind, id)` is the primary key).
    Models(&'a [pb::Model]),
    /// A created or updated firewall rule and how many rules exist after the write. Beyond the
    /// rule itself, the engine's only rule-set constraints are the rule count and unique ids
    /// (the primary key).
    FirewallRule {
        rule: &'a FirewallRuleRow,
        count: usize,
    },
    /// A created or updated routing rule and how many routing rules exist after the write
    /// (names and ids are unique indexes).
    RoutingRule {
        rule: &'a RoutingRuleRow,
        count: usize,
    },
    /// A set routing configuration (one per key: the primary key; the key exists: checked in
    /// the same transaction).
    RoutingConfig(&'a RoutingConfigRow),
    /// A removal (provider, firewall or routing rule, routing configuration): fewer valid
    /// entries stay a valid configuration.
    Removal,
}

/// Called before commit with what the write would commit; an `Err` rolls the change back.
pub type Check = dyn Fn(Proposed<'_>) -> Result<(), String> + Send + Sync;

/// A stored usage record with the time the control plane received it.
///
/// Lists leave the record's bodies empty; [`Store::get_log`] fills them in.
#[derive(Clone, Debug, PartialEq)]
pub struct LogEntry {
    /// `key_name` and `workspace_id` fall back to the key's current ones for rows recorded
    /// without them.
    pub record: UsageRecord,
    pub received_at_ms: i64,
    /// A `request_bodies` row exists for this request.
    pub has_bodies: bool,
}

/// A status filter: one code, or a class (`4` = 400-499).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatusFilter {
    Exact(u32),
    Class(u32),
}

impl StatusFilter {
    /// `"404"` (100-599) or `"4xx"` (1xx-5xx; `X` too).
    pub fn parse(text: &str) -> Result<StatusFilter, String> {
        let t = text.trim();
        let bad =
            || format!("status {t:?} is neither an HTTP status (100-599) nor a class (1xx-5xx)");
        let b = t.as_bytes();
        if b.len() != 3 || !(b'1'..=b'5').contains(&b[0]) {
            return Err(bad());
        }
        let first = u32::from(b[0] - b'0');
        if b[1..].eq_ignore_ascii_case(b"xx") {
            return Ok(StatusFilter::Class(first));
        }
        if b[1..].iter().all(u8::is_ascii_digit) {
            let rest = u32::from(b[1] - b'0') * 10 + u32::from(b[2] - b'0');
            return Ok(StatusFilter::Exact(first * 100 + rest));
        }
        Err(bad())
    }

    /// The inclusive range of statuses it matches.
    pub fn range(self) -> (u32, u32) {
        match self {
            StatusFilter::Exact(s) => (s, s),
            StatusFilter::Class(c) => (c * 100, c * 100 + 99),
        }
    }
}

/// Which request logs to list, newest first. `None` filters match every row.
#[derive(Clone, Debug, Default)]
pub struct LogQuery {
    pub limit: u32,
    pub key_id: Option<String>,
    /// The served (upstream) model or the model the client asked for.
    pub model: Option<String>,
    pub provider: Option<String>,
    /// HTTP status returned to the client.
    pub status: Option<StatusFilter>,
    /// Received at or after this time (Unix ms).
    pub since_ms: Option<i64>,
    /// Received before this time (Unix ms).
    pub until_ms: Option<i64>,
    /// ASCII case-insensitive substring of the metadata JSON.
    pub metadata_contains: Option<String>,
    /// Only rows received before this request id.
    pub before_request_id: Option<String>,
}

/// How a usage summary breaks its totals down.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UsageGroupBy {
    Key,
    /// The served model.
    Model,
    Provider,
    /// UTC calendar day of receipt.
    Day,
}

impl UsageGroupBy {
    pub const ALL: [UsageGroupBy; 4] = [
        UsageGroupBy::Key,
        UsageGroupBy::Model,
        UsageGroupBy::Provider,
        UsageGroupBy::Day,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            UsageGroupBy::Key => "key",
            UsageGroupBy::Model => "model",
            UsageGroupBy::Provider => "provider",
            UsageGroupBy::Day => "day",
        }
    }

    pub fn parse(s: &str) -> Option<UsageGroupBy> {
        UsageGroupBy::ALL.into_iter().find(|g| g.as_str() == s)
    }
}

/// Which request logs a usage summary adds up: those received at or after `since_ms`, of one
/// key or of all.
#[derive(Clone, Debug, Default)]
pub struct UsageQuery {
    pub since_ms: i64,
    pub key_id: Option<String>,
    pub group_by: Option<UsageGroupBy>,
}

/// Sums over request logs. Tokens and cost are those of successful (2xx) requests that were
/// not replays (a replay calls no provider and is not charged).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UsageTotals {
    /// Every request, whatever its status.
    pub requests: u64,
    /// Requests whose status was not 2xx.
    pub failed_requests: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// Exact; an `i128` so no number of rows can overflow it.
    pub cost_picos: i128,
}

impl UsageTotals {
    /// Successful (2xx) requests (seed 002's `total_requests`).
    pub fn successful(&self) -> u64 {
        self.requests.saturating_sub(self.failed_requests)
    }

    pub fn total_tokens(&self) -> u64 {
        self.input_tokens.saturating_add(self.output_tokens)
    }
}

/// What identifies one group of a breakdown.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UsageGroupKey {
    /// Key id and its current name ("" for ids no key has).
    Key {
        id: String,
        name: String,
    },
    Model(String),
    Provider(String),
    /// Days since the Unix epoch (UTC).
    Day(i64),
}

/// A usage summary: the totals, and the breakdown when one was asked for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UsageReport {
    pub totals: UsageTotals,
    /// Groups with at least one request, in no particular order.
    pub groups: Vec<(UsageGroupKey, UsageTotals)>,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0} already exists")]
    AlreadyExists(String),
    /// The check refused the resulting configuration; nothing was committed.
    #[error("configuration rejected: {0}")]
    Rejected(String),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("corrupt row: {0}")]
    Corrupt(String),
}

/// The control plane's persistence. Implementations must make each method atomic.
#[async_trait]
pub trait Store: std::fmt::Debug + Send + Sync + 'static {
    /// Applies one configuration write in a transaction that also bumps the config version,
    /// runs `check` on what it would commit and commits only if it passes. Writes are
    /// serialised: concurrent calls wait their turn rather than fail.
    async fn change_config(
        &self,
        change: ConfigChange,
        check: &Check,
    ) -> Result<ChangeOutcome, StoreError>;

    /// The current configuration, read in one transaction so the version matches the rows.
    async fn load_config(&self) -> Result<ConfigState, StoreError>;

    /// [`Store::load_config`], except that `keys` holds only the keys changed after version
    /// `keys_after` (created, revoked, updated or made metered by a version above it), in the
    /// same order. A publisher that holds the keys of version `keys_after` applies these to them
    /// instead of reading every key again.
    async fn load_config_since(&self, keys_after: u64) -> Result<ConfigState, StoreError>;

    async fn list_keys(&self) -> Result<Vec<KeyRow>, StoreError>;
    async fn get_key(&self, id: &str) -> Result<Option<KeyRow>, StoreError>;
    /// The key with this SHA-256 (active or revoked), if any.
    async fn find_key_by_hash(&self, sha256: &[u8; 32]) -> Result<Option<KeyRow>, StoreError>;
    async fn list_providers(&self) -> Result<Vec<ProviderRow>, StoreError>;
    /// Catalogue order.
    async fn list_models(&self) -> Result<Vec<ModelRow>, StoreError>;
    /// Firewall rules by id.
    async fn list_firewall_rules(&self) -> Result<Vec<FirewallRuleRow>, StoreError>;
    /// Routing rules by id.
    async fn list_routing_rules(&self) -> Result<Vec<RoutingRuleRow>, StoreError>;
    /// Routing configurations by key id.
    async fn list_routing_configs(&self) -> Result<Vec<RoutingConfigRow>, StoreError>;

    /// One workspace, without its key count (a primary-key read, whatever the number of keys).
    async fn get_workspace(&self, id: &str) -> Result<Option<WorkspaceRow>, StoreError>;
    /// Every workspace by id, with how many active keys it has.
    async fn list_workspaces(&self) -> Result<Vec<(WorkspaceRow, u32)>, StoreError>;

    /// Stores a batch in one transaction; records whose request id is already stored (or
    /// repeated earlier in the batch) are skipped. Returns the positions in `records` of those
    /// that were new, in order: only they may be counted (scores, metrics). The cost of each
    /// new record that is not a replay is charged, in the same transaction, to its key's and
    /// its workspace's balance where they have one (never below zero): exactly once. A record
    /// marked `rule_trace_as_previous` is stored with the trace of the last record before it
    /// that carries one (`trace_runs::restore`), or none when there is no such record.
    async fn insert_usage(
        &self,
        records: &[UsageRecord],
        received_at_ms: i64,
    ) -> Result<Vec<usize>, StoreError>;

    /// Request logs, newest first. An unknown cursor is `NotFound`.
    async fn list_logs(&self, query: &LogQuery) -> Result<Vec<LogEntry>, StoreError>;

    /// One request log row with its bodies (in the record) when stored.
    async fn get_log(&self, request_id: &str) -> Result<Option<LogEntry>, StoreError>;

    /// Totals, and the breakdown the query asks for, of the request logs it selects.
    async fn usage(&self, query: &UsageQuery) -> Result<UsageReport, StoreError>;

    /// Totals per key id over every request log row (one grouped query), or of one key. Keys
    /// without requests are absent.
    async fn key_usage(
        &self,
        key_id: Option<&str>,
    ) -> Result<std::collections::HashMap<String, KeyUsage>, StoreError>;

    /// Closes the connections (waiting for queries in flight). Later calls fail.
    async fn close(&self);

    /// Configuration versions committed by other processes sharing this database (replicas of
    /// the control plane on one PostgreSQL database): the newest one seen, which only grows.
    /// The receiver may also show versions this process committed itself. `None` where no other
    /// process can write the configuration (SQLite: one server per file).
    fn config_notifications(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        None
    }

    /// `Idempotency-Key` entries.
    fn idempotency(&self) -> &dyn idempotency::IdempotencyStore;

    /// Balances, the credit ledger, top-up sessions and token windows.
    fn metering(&self) -> &dyn metering::MeteringStore;
}
