//! Domain logic: validates inputs, calls the store, publishes every configuration change.
//!
//! The API layers only convert wire types to and from these calls.

mod firewall;
mod metering;
mod models;
mod routing;

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use rand::RngCore;
use tokenrouter_engine::keys;
use tokenrouter_engine::snapshot::valid_name;
use tokenrouter_engine::upstream::{BaseUrl, ProviderKind};
use tokenrouter_proto::config::v1 as pb;
use tokenrouter_proto::sync::v1::UsageRecord;
use tokenrouter_proto::trace_runs;
use tokio::sync::watch;

use crate::calendar::{day_of_ms, format_day, DAY_MS};
use crate::crypto::{provider_aad, Sealer};
use crate::limits::{Counters, Effective, Limiter};
use crate::metrics::Metrics;
use crate::publisher::{Coalescer, Publisher};
use crate::scores::{ScoreKeeper, SystemClock};
use crate::store::metering::Owner;
use crate::store::{
    Changed, ConfigChange, KeyRow, KeyStatus, KeyUsage, Limits, LogEntry, LogQuery, Proposed,
    ProviderRow, StatusFilter, Store, StoreError, UsageGroupBy, UsageGroupKey, UsageQuery,
    UsageTotals,
};
use crate::xds::ClusterSet;

/// Longest key name accepted.
pub const MAX_KEY_NAME_CHARS: usize = 100;
/// Request logs returned when the caller names no limit, and the most ever returned.
pub const DEFAULT_LOG_LIMIT: u32 = 50;
pub const MAX_LOG_LIMIT: u32 = 1000;
/// Workspace of keys created without one.
pub const DEFAULT_WORKSPACE: &str = "default";
/// The longest usage summary, in days (seed 002: `usage --days N`, 1-365).
pub const MAX_USAGE_DAYS: u32 = 365;
/// Days a usage summary covers when the caller names none.
pub const DEFAULT_USAGE_DAYS: u32 = 30;
/// Longest `metadata_contains` search text.
pub const MAX_SEARCH_CHARS: usize = 256;

/// Errors the API layers map to status codes. `Internal` carries detail for the log only.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    /// A dependency (payment backend) cannot do it now.
    #[error("{0}")]
    Unavailable(String),
    /// A signed call whose signature does not verify.
    #[error("{0}")]
    Unauthenticated(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<StoreError> for ServiceError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(what) => ServiceError::NotFound(format!("{what} not found")),
            StoreError::AlreadyExists(what) => {
                ServiceError::AlreadyExists(format!("{what} already exists"))
            }
            StoreError::Rejected(why) => {
                ServiceError::InvalidArgument(format!("configuration rejected: {why}"))
            }
            other => ServiceError::Internal(other.to_string()),
        }
    }
}

type Result<T> = std::result::Result<T, ServiceError>;

pub use firewall::{FirewallRulePatch, NewFirewallRule, TemplateOverrides};
pub use metering::{
    parse_balance_usd, parse_credit_usd, parse_optional_balance_usd, BalanceView, WebhookOutcome,
};
pub use models::{parse_price, ModelPatch, NewModel};
pub use routing::{NewRoutingRule, RoutingRulePatch};

/// A provider to register.
#[derive(Clone)]
pub struct NewProvider {
    pub name: String,
    pub kind: String,
    pub base_url: String,
    /// Empty = no credential.
    pub api_key: String,
    /// Replace a provider of the same name instead of failing.
    pub replace: bool,
    /// Fallback credentials, in order.
    pub fallback_api_keys: Vec<String>,
}

/// At most this many fallback credentials per provider.
pub const MAX_FALLBACK_CREDENTIALS: usize = 4;

/// A page of request logs and the cursor for the next one.
#[derive(Debug)]
pub struct LogPage {
    pub entries: Vec<LogEntry>,
    /// Request id to pass as `before` for the next page; `None` on the last page.
    pub next_cursor: Option<String>,
}

/// Which request logs to list; `None` (or an empty string) matches everything.
#[derive(Clone, Debug, Default)]
pub struct LogFilter {
    pub key_id: Option<String>,
    /// The served model or the model the client asked for.
    pub model: Option<String>,
    pub provider: Option<String>,
    /// An exact status (`404`) or a class (`4xx`); see [`StatusFilter::parse`].
    pub status: Option<String>,
    /// Received at or after (Unix ms).
    pub since_ms: Option<i64>,
    /// Received before (Unix ms).
    pub until_ms: Option<i64>,
    /// ASCII case-insensitive substring of the request's metadata JSON.
    pub metadata_contains: Option<String>,
}

/// The fields of a key an update sets; `None` leaves one as it is.
#[derive(Clone, Debug, Default)]
pub struct KeyPatch {
    pub name: Option<String>,
    pub store_bodies: Option<bool>,
    /// Set fields replace the key's limits.
    pub limits: Limits,
}

/// A key and its totals over the request logs.
#[derive(Clone, Debug, PartialEq)]
pub struct KeyWithUsage {
    pub key: KeyRow,
    pub usage: KeyUsage,
    /// The key's balance (pico-dollars); `None` = not metered.
    pub balance_picos: Option<i64>,
    /// Limits enforced after inheriting from its workspace and the server's defaults.
    pub effective: Effective,
}

/// One group of a usage breakdown.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsageGroup {
    pub key: UsageGroupKey,
    pub totals: UsageTotals,
}

/// Usage over the last `range_days` UTC calendar days (today included): every request is
/// counted, tokens and spend only for successful (2xx) ones (seed 002).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsageSummary {
    pub range_days: u32,
    /// First day counted (days since 1970-01-01, UTC).
    pub since_day: i64,
    pub totals: UsageTotals,
    pub group_by: Option<UsageGroupBy>,
    /// Days in order, every day of the range (empty ones too); other groups by spend, then
    /// requests, most first, then by name.
    pub breakdown: Vec<UsageGroup>,
}

impl UsageSummary {
    /// `YYYY-MM-DD` of the first day counted.
    pub fn since(&self) -> String {
        format_day(self.since_day)
    }
}

/// Publishes the versions other replicas commit (they share the database) as if committed
/// here, until the service is gone or the store stops announcing.
async fn follow(
    mut versions: tokio::sync::watch::Receiver<u64>,
    coalescer: std::sync::Weak<Coalescer>,
) {
    while versions.changed().await.is_ok() {
        let version = *versions.borrow_and_update();
        match coalescer.upgrade() {
            Some(coalescer) => coalescer.committed(version),
            None => return,
        }
    }
}

/// The control plane's domain operations. Cheap to clone (shared state behind `Arc`s).
#[derive(Clone, Debug)]
pub struct Service {
    store: Arc<dyn Store>,
    sealer: Sealer,
    publisher: Arc<Publisher>,
    /// Publishes committed writes in the background, one build per burst.
    coalescer: Arc<Coalescer>,
    metrics: Arc<Metrics>,
    /// Live provider scores from the usage ingested here, pushed to every edge.
    scores: Arc<ScoreKeeper>,
    /// Request rates, token budgets and balance reservations of every edge's requests.
    limiter: Arc<Limiter>,
    /// Where `topup` gets checkout URLs (`None`: no payment backend configured).
    payments: Option<Arc<dyn crate::payments::PaymentBackend>>,
}

impl Service {
    /// Adds the built-in models the catalogue lacks, publishes the stored configuration (refusing to
    /// start if it is invalid) and starts publishing later writes. Needs a tokio runtime.
    ///
    /// Limits are counted in Redis when `TOKENROUTER_REDIS_URL` is set (shared with every
    /// replica using the same server), else in this process.
    pub async fn start(store: Arc<dyn Store>, sealer: Sealer) -> Result<Service> {
        let counters = match crate::limits::shared::from_env()
            .await
            .map_err(|e| ServiceError::Internal(e.to_string()))?
        {
            Some(shared) => Counters::Shared(shared),
            None => Counters::local(),
        };
        Service::start_with(store, sealer, counters).await
    }

    /// [`Service::start`] with the limiter's counters given.
    pub async fn start_with(
        store: Arc<dyn Store>,
        sealer: Sealer,
        counters: Counters,
    ) -> Result<Service> {
        let metrics = Arc::new(Metrics::default());
        let publisher = Arc::new(Publisher::new(sealer.clone(), metrics.clone()));
        let builtin = tokenrouter_engine::catalogue::builtin()
            .map_err(|e| ServiceError::Internal(format!("built-in catalogue: {e}")))?;
        let checker = publisher.clone();
        let check = move |proposed: Proposed<'_>| checker.check(proposed);
        store
            .change_config(ConfigChange::SeedModels(builtin), &check)
            .await?;
        let state = store.load_config().await?;
        publisher
            .publish(&state)
            .map_err(|e| ServiceError::Internal(format!("stored configuration is invalid: {e}")))?;
        let scores = Arc::new(ScoreKeeper::new(Arc::new(SystemClock)));
        scores.spawn_ticker();
        let limiter = Arc::new(Limiter::new(store.clone(), publisher.policies(), counters));
        let coalescer = Arc::new(Coalescer::spawn(store.clone(), publisher.clone()));
        if let Some(versions) = store.config_notifications() {
            if !limiter.shared() {
                tracing::warn!(
                    "the database is shared but limits are counted in this process: with \
                     several control planes, set TOKENROUTER_REDIS_URL so limits and balances \
                     hold for all of them"
                );
            }
            tokio::spawn(follow(versions, Arc::downgrade(&coalescer)));
        }
        Ok(Service {
            coalescer,
            scores,
            limiter,
            payments: crate::payments::from_env()
                .map_err(|e| ServiceError::Internal(format!("payment backend: {e}")))?,
            store,
            publisher,
            sealer,
            metrics,
        })
    }

    /// One configuration write: validated before commit, published shortly after (see
    /// `crate::publisher` for the bound); returns once committed.
    async fn write(&self, change: ConfigChange) -> Result<Changed> {
        let publisher = self.publisher.clone();
        let check = move |proposed: Proposed<'_>| publisher.check(proposed);
        let outcome = self.store.change_config(change, &check).await?;
        if let Some(version) = outcome.version {
            self.coalescer.committed(version);
        }
        Ok(outcome.changed)
    }

    /// Waits until every write committed so far has been published to the snapshot and
    /// cluster channels.
    pub async fn settled(&self) {
        self.coalescer.settled().await;
    }

    pub async fn create_key(&self, name: &str, workspace: &str) -> Result<(KeyRow, String)> {
        self.create_key_with(name, workspace, None, Limits::default())
            .await
    }

    /// A key with a starting balance (`Some`: metered from its first request; the amount is
    /// recorded in the credit ledger) and limits of its own.
    pub async fn create_key_with(
        &self,
        name: &str,
        workspace: &str,
        balance_picos: Option<i64>,
        limits: Limits,
    ) -> Result<(KeyRow, String)> {
        if balance_picos.is_some_and(|b| b < 0) {
            return Err(ServiceError::InvalidArgument(
                "a balance cannot be negative".into(),
            ));
        }
        let name = key_name(name)?;
        let workspace = match workspace.trim() {
            "" => DEFAULT_WORKSPACE,
            w if valid_name(w) => w,
            w => {
                return Err(ServiceError::InvalidArgument(format!(
                    "workspace {w:?} is not valid: use 1-64 of a-z, 0-9, '-' and '_'"
                )))
            }
        };
        let mut secret = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut secret);
        let raw = keys::format_key(&secret);
        let mut id = [0u8; 8];
        rand::rngs::OsRng.fill_bytes(&mut id);
        let row = KeyRow {
            id: format!("key_{}", hex::encode(id)),
            name: name.to_string(),
            key_prefix: keys::display_prefix(&raw),
            sha256: keys::hash_key(&raw),
            workspace_id: workspace.to_string(),
            status: KeyStatus::Active,
            created_at_ms: now_ms(),
            revoked_at_ms: None,
            store_bodies: false,
            limits,
            metered: balance_picos.is_some(),
        };
        let key = match self.write(ConfigChange::CreateKey(row)).await? {
            Changed::Key(k) => k,
            other => return Err(unexpected(other)),
        };
        if let Some(amount) = balance_picos.filter(|b| *b > 0) {
            self.grant(
                Owner::Key(key.id.clone()),
                amount,
                "initial",
                None,
                "balance at creation",
            )
            .await?;
        }
        Ok((key, raw))
    }

    pub async fn list_keys(&self) -> Result<Vec<KeyRow>> {
        Ok(self.store.list_keys().await?)
    }

    pub async fn get_key(&self, id: &str) -> Result<KeyRow> {
        let id = id.trim();
        self.store
            .get_key(id)
            .await?
            .ok_or_else(|| ServiceError::NotFound(format!("key {id} not found")))
    }

    /// Every key with its totals, computed by one grouped query over the request logs.
    pub async fn list_keys_with_usage(&self) -> Result<Vec<KeyWithUsage>> {
        let keys = self.store.list_keys().await?;
        let mut usage = self.store.key_usage(None).await?;
        let mut balances = self.store.metering().key_balances().await?;
        let workspaces: std::collections::HashMap<String, Limits> = self
            .store
            .list_workspaces()
            .await?
            .into_iter()
            .map(|(w, _)| (w.id, w.limits))
            .collect();
        let default_rps = self.publisher.default_rps();
        Ok(keys
            .into_iter()
            .map(|key| KeyWithUsage {
                usage: usage.remove(&key.id).unwrap_or_default(),
                balance_picos: balances.remove(&key.id),
                effective: Effective::resolve(
                    key.limits,
                    workspaces
                        .get(&key.workspace_id)
                        .copied()
                        .unwrap_or_default(),
                    default_rps,
                ),
                key,
            })
            .collect())
    }

    /// A key's totals over the request logs.
    pub async fn key_usage(&self, key: KeyRow) -> Result<KeyWithUsage> {
        let usage = self
            .store
            .key_usage(Some(&key.id))
            .await?
            .remove(&key.id)
            .unwrap_or_default();
        let balance_picos = self
            .store
            .metering()
            .balance(&Owner::Key(key.id.clone()))
            .await?;
        let effective = self.effective_limits(&key).await?;
        Ok(KeyWithUsage {
            key,
            usage,
            balance_picos,
            effective,
        })
    }

    /// What the limiter enforces for `key`: its limits, else its workspace's, else the
    /// server's defaults. (Every key call answers with this: one primary-key read, not the
    /// workspace list, whose key counts scan every key.)
    pub async fn effective_limits(&self, key: &KeyRow) -> Result<Effective> {
        let workspace = self
            .store
            .get_workspace(&key.workspace_id)
            .await?
            .map(|w| w.limits)
            .unwrap_or_default();
        Ok(Effective::resolve(
            key.limits,
            workspace,
            self.publisher.default_rps(),
        ))
    }

    /// Renames a key and/or switches the recording of its request and response bodies; the
    /// change reaches the edges with the next snapshot. Setting nothing (or what is already
    /// there) returns the key unchanged.
    pub async fn update_key(&self, id: &str, patch: KeyPatch) -> Result<KeyRow> {
        let id = id.trim();
        if id.is_empty() {
            return Err(ServiceError::InvalidArgument("key id is required".into()));
        }
        let name = patch.name.as_deref().map(key_name).transpose()?;
        let change = ConfigChange::UpdateKey {
            id: id.to_string(),
            name: name.map(str::to_string),
            store_bodies: patch.store_bodies,
            limits: patch.limits,
        };
        match self.write(change).await? {
            Changed::Key(k) => Ok(k),
            other => Err(unexpected(other)),
        }
    }

    /// The stored key a raw `sk-tr-…` key hashes to (active or revoked), if any.
    pub async fn find_key_by_raw(&self, raw: &str) -> Result<Option<KeyRow>> {
        Ok(self.store.find_key_by_hash(&keys::hash_key(raw)).await?)
    }

    /// Revokes a key. Revoking a revoked key returns it unchanged.
    pub async fn revoke_key(&self, id: &str) -> Result<KeyRow> {
        let id = id.trim();
        if id.is_empty() {
            return Err(ServiceError::InvalidArgument("key id is required".into()));
        }
        let change = ConfigChange::RevokeKey {
            id: id.to_string(),
            at_ms: now_ms(),
        };
        match self.write(change).await? {
            Changed::Key(k) => Ok(k),
            other => Err(unexpected(other)),
        }
    }

    pub async fn add_provider(&self, p: NewProvider) -> Result<ProviderRow> {
        if !valid_name(&p.name) {
            return Err(ServiceError::InvalidArgument(format!(
                "provider name {:?} is not valid: use 1-64 of a-z, 0-9, '-' and '_'",
                p.name
            )));
        }
        let kind = ProviderKind::parse(p.kind.trim()).ok_or_else(|| {
            let valid: Vec<&str> = ProviderKind::ALL.iter().map(|k| k.as_str()).collect();
            ServiceError::InvalidArgument(format!(
                "unknown provider kind {:?}: use one of {}",
                p.kind,
                valid.join(", ")
            ))
        })?;
        let base_url = p.base_url.trim();
        BaseUrl::parse(base_url).map_err(ServiceError::InvalidArgument)?;
        let credential_sealed = match p.api_key.trim() {
            "" => None,
            key => Some(
                self.sealer
                    .seal(key.as_bytes(), &provider_aad(&p.name))
                    .map_err(|e| ServiceError::Internal(e.to_string()))?,
            ),
        };
        let (fallbacks_sealed, fallback_count) =
            self.seal_fallbacks(&p.name, &p.fallback_api_keys)?;
        let row = ProviderRow {
            name: p.name,
            kind: kind.as_str().to_string(),
            base_url: base_url.to_string(),
            credential_sealed,
            fallbacks_sealed,
            fallback_count,
            enabled: true,
            created_at_ms: now_ms(),
        };
        match self
            .write(ConfigChange::PutProvider {
                row,
                replace: p.replace,
            })
            .await?
        {
            Changed::Provider(p) => Ok(p),
            other => Err(unexpected(other)),
        }
    }

    /// Seals a provider's fallback credentials (blank ones are an error).
    fn seal_fallbacks(&self, provider: &str, keys: &[String]) -> Result<(Option<Vec<u8>>, u32)> {
        if keys.is_empty() {
            return Ok((None, 0));
        }
        if keys.len() > MAX_FALLBACK_CREDENTIALS {
            return Err(ServiceError::InvalidArgument(format!(
                "at most {MAX_FALLBACK_CREDENTIALS} fallback credentials per provider"
            )));
        }
        let keys: Vec<&str> = keys.iter().map(|k| k.trim()).collect();
        if keys.iter().any(|k| k.is_empty()) {
            return Err(ServiceError::InvalidArgument(
                "a fallback credential cannot be empty".into(),
            ));
        }
        let json = serde_json::to_vec(&keys).map_err(|e| ServiceError::Internal(e.to_string()))?;
        let sealed = self
            .sealer
            .seal(&json, &provider_aad(provider))
            .map_err(|e| ServiceError::Internal(e.to_string()))?;
        Ok((Some(sealed), u32::try_from(keys.len()).unwrap_or(u32::MAX)))
    }

    /// Replaces a provider's primary credential (and optionally its fallbacks). With
    /// `keep_previous`, the previous primary goes last among the fallbacks, so a request the
    /// new key cannot serve yet is served by the old one.
    pub async fn rotate_provider_key(
        &self,
        name: &str,
        api_key: &str,
        keep_previous: bool,
        fallbacks: Option<Vec<String>>,
    ) -> Result<ProviderRow> {
        let api_key = api_key.trim();
        if api_key.is_empty() {
            return Err(ServiceError::InvalidArgument(
                "the new api key is empty".into(),
            ));
        }
        let mut row = self.get_provider(name).await?;
        let aad = provider_aad(&row.name);
        let open = |sealed: &[u8]| {
            self.sealer
                .open(sealed, &aad)
                .map_err(|e| ServiceError::Internal(format!("provider {}: {e}", row.name)))
        };
        let mut keys: Vec<String> = match (fallbacks, &row.fallbacks_sealed) {
            (Some(given), _) => given,
            (None, Some(sealed)) => serde_json::from_slice(&open(sealed)?)
                .map_err(|e| ServiceError::Internal(format!("provider {}: {e}", row.name)))?,
            (None, None) => Vec::new(),
        };
        if keep_previous {
            if let Some(sealed) = &row.credential_sealed {
                let previous = String::from_utf8(open(sealed)?).map_err(|_| {
                    ServiceError::Internal(format!(
                        "provider {}: credential is not UTF-8",
                        row.name
                    ))
                })?;
                if previous != api_key && !keys.contains(&previous) {
                    keys.push(previous);
                }
            }
        }
        keys.retain(|k| k.trim() != api_key);
        let (fallbacks_sealed, fallback_count) = self.seal_fallbacks(&row.name, &keys)?;
        row.credential_sealed = Some(
            self.sealer
                .seal(api_key.as_bytes(), &aad)
                .map_err(|e| ServiceError::Internal(e.to_string()))?,
        );
        row.fallbacks_sealed = fallbacks_sealed;
        row.fallback_count = fallback_count;
        match self
            .write(ConfigChange::PutProvider { row, replace: true })
            .await?
        {
            Changed::Provider(p) => Ok(p),
            other => Err(unexpected(other)),
        }
    }

    pub async fn list_providers(&self) -> Result<Vec<ProviderRow>> {
        Ok(self.store.list_providers().await?)
    }

    pub async fn get_provider(&self, name: &str) -> Result<ProviderRow> {
        let name = name.trim();
        self.list_providers()
            .await?
            .into_iter()
            .find(|p| p.name == name)
            .ok_or_else(|| ServiceError::NotFound(format!("provider {name} not found")))
    }

    pub async fn remove_provider(&self, name: &str) -> Result<()> {
        let name = name.trim();
        if name.is_empty() {
            return Err(ServiceError::InvalidArgument(
                "provider name is required".into(),
            ));
        }
        self.write(ConfigChange::RemoveProvider {
            name: name.to_string(),
        })
        .await?;
        Ok(())
    }

    /// Newest first. `limit` 0 means the default; above the maximum is clamped.
    pub async fn list_logs(
        &self,
        limit: u32,
        key_id: Option<String>,
        before: Option<String>,
    ) -> Result<LogPage> {
        let filter = LogFilter {
            key_id,
            ..LogFilter::default()
        };
        self.query_logs(limit, filter, before).await
    }

    /// [`Service::list_logs`] with every filter. Empty strings match everything.
    pub async fn query_logs(
        &self,
        limit: u32,
        filter: LogFilter,
        before: Option<String>,
    ) -> Result<LogPage> {
        let limit = match limit {
            0 => DEFAULT_LOG_LIMIT,
            n => n.min(MAX_LOG_LIMIT),
        };
        if let (Some(since), Some(until)) = (filter.since_ms, filter.until_ms) {
            if since > until {
                return Err(ServiceError::InvalidArgument(format!(
                    "since ({since}) is after until ({until})"
                )));
            }
        }
        let set = |s: Option<String>| s.filter(|s| !s.is_empty());
        let status = set(filter.status)
            .map(|s| StatusFilter::parse(&s))
            .transpose()
            .map_err(ServiceError::InvalidArgument)?;
        let metadata_contains = set(filter.metadata_contains);
        if let Some(text) = &metadata_contains {
            if text.chars().count() > MAX_SEARCH_CHARS {
                return Err(ServiceError::InvalidArgument(format!(
                    "metadata_contains must be at most {MAX_SEARCH_CHARS} characters"
                )));
            }
        }
        let query = LogQuery {
            limit,
            key_id: set(filter.key_id),
            model: set(filter.model),
            provider: set(filter.provider),
            status,
            since_ms: filter.since_ms,
            until_ms: filter.until_ms,
            metadata_contains,
            before_request_id: set(before),
        };
        let entries = self.store.list_logs(&query).await.map_err(|e| match e {
            StoreError::NotFound(_) => {
                ServiceError::InvalidArgument("unknown cursor (before_request_id)".into())
            }
            other => other.into(),
        })?;
        let next_cursor = if entries.len() == limit as usize {
            entries.last().map(|e| e.record.request_id.clone())
        } else {
            None
        };
        Ok(LogPage {
            entries,
            next_cursor,
        })
    }

    /// One request log row with its stored bodies. `only_key` (a gateway key reading) sees
    /// only its own rows: another key's is `NotFound`, exactly like a row that does not exist,
    /// so request ids of other keys cannot be probed.
    pub async fn get_log(&self, request_id: &str, only_key: Option<&str>) -> Result<LogEntry> {
        let id = request_id.trim();
        let not_found = || ServiceError::NotFound(format!("request {id} not found"));
        if id.is_empty() {
            return Err(not_found());
        }
        let entry = self.store.get_log(id).await?.ok_or_else(not_found)?;
        match only_key {
            Some(key) if entry.record.key_id != key => Err(not_found()),
            _ => Ok(entry),
        }
    }

    /// Usage of the last `days` UTC calendar days, today included (1 to [`MAX_USAGE_DAYS`]),
    /// of one key (which must exist) or of all, broken down by `group_by` when given.
    pub async fn usage_summary(
        &self,
        days: u32,
        group_by: Option<UsageGroupBy>,
        key_id: Option<String>,
    ) -> Result<UsageSummary> {
        if !(1..=MAX_USAGE_DAYS).contains(&days) {
            return Err(ServiceError::InvalidArgument(format!(
                "days must be between 1 and {MAX_USAGE_DAYS}"
            )));
        }
        let key_id = key_id
            .map(|k| k.trim().to_string())
            .filter(|k| !k.is_empty());
        if let Some(id) = &key_id {
            self.get_key(id).await?;
        }
        let today = day_of_ms(now_ms());
        let since_day = today - i64::from(days) + 1;
        let query = UsageQuery {
            since_ms: since_day.saturating_mul(DAY_MS),
            key_id,
            group_by,
        };
        let report = self.store.usage(&query).await?;
        let mut breakdown: Vec<UsageGroup> = report
            .groups
            .into_iter()
            .map(|(key, totals)| UsageGroup { key, totals })
            .collect();
        if group_by == Some(UsageGroupBy::Day) {
            // Every day of the range, in order; a day without requests is a zero row.
            let mut by_day: std::collections::HashMap<i64, UsageTotals> = breakdown
                .into_iter()
                .filter_map(|g| match g.key {
                    UsageGroupKey::Day(d) => Some((d, g.totals)),
                    _ => None,
                })
                .collect();
            breakdown = (since_day..=today)
                .map(|d| UsageGroup {
                    key: UsageGroupKey::Day(d),
                    totals: by_day.remove(&d).unwrap_or_default(),
                })
                .collect();
        } else {
            let name = |k: &UsageGroupKey| match k {
                UsageGroupKey::Key { id, .. } => id.clone(),
                UsageGroupKey::Model(s) | UsageGroupKey::Provider(s) => s.clone(),
                UsageGroupKey::Day(d) => format_day(*d),
            };
            breakdown.sort_by(|a, b| {
                b.totals
                    .cost_picos
                    .cmp(&a.totals.cost_picos)
                    .then(b.totals.requests.cmp(&a.totals.requests))
                    .then_with(|| name(&a.key).cmp(&name(&b.key)))
            });
        }
        Ok(UsageSummary {
            range_days: days,
            since_day,
            totals: report.totals,
            group_by,
            breakdown,
        })
    }

    /// Stores one usage batch (one transaction; resent records are skipped). Records without a
    /// request id cannot be deduplicated and are dropped. Records may carry runs of equal
    /// traces sent once (`rule_trace_as_previous`); the store resolves them. Returns how many
    /// records were new; only those feed the live scores, so a resent batch is not counted twice.
    pub async fn ingest_usage(&self, records: &[UsageRecord]) -> Result<u64> {
        // Copied only when some record must go (each carries its rule trace, a few KB).
        let valid: Cow<'_, [UsageRecord]> = if records.iter().all(|r| !r.request_id.is_empty()) {
            Cow::Borrowed(records)
        } else {
            // A dropped record may be the one that carries its run's trace.
            let mut restored = records.to_vec();
            trace_runs::restore(&mut restored);
            let kept: Vec<UsageRecord> = restored
                .into_iter()
                .filter(|r| !r.request_id.is_empty())
                .collect();
            tracing::warn!(
                dropped = records.len() - kept.len(),
                "usage records without a request id dropped"
            );
            Cow::Owned(kept)
        };
        let stored = self.store.insert_usage(&valid, now_ms()).await;
        match stored {
            Ok(new) => {
                // After the commit that charged them: a reservation ends when its cost is in
                // the balance.
                self.limiter
                    .settle(new.iter().filter_map(|&i| valid.get(i)), now_ms())
                    .await;
                self.scores
                    .observe(new.iter().filter_map(|&i| valid.get(i)));
                self.metrics
                    .observe_usage(new.iter().filter_map(|&i| valid.get(i)));
                let n = new.len() as u64;
                Metrics::add(&self.metrics.usage_records_ingested, n);
                Metrics::add(&self.metrics.usage_batches_acked, 1);
                Ok(n)
            }
            Err(e) => {
                Metrics::add(&self.metrics.usage_batches_failed, 1);
                Err(e.into())
            }
        }
    }

    /// Every published set of live provider scores, starting with the current one.
    pub fn scores(&self) -> watch::Receiver<Arc<pb::Scores>> {
        self.scores.subscribe()
    }

    /// Every published snapshot, starting with the current one; a key-delta version's has no
    /// keys ([`Publisher::snapshots`]).
    pub fn snapshots(&self) -> watch::Receiver<Arc<pb::Snapshot>> {
        self.publisher.snapshots()
    }

    /// The published version with every key ([`Publisher::whole_snapshot`]).
    pub fn whole_snapshot(&self) -> Arc<pb::Snapshot> {
        self.publisher.whole_snapshot()
    }

    /// The key delta of the published version, if it has one ([`Publisher::key_delta`]).
    pub fn key_delta(&self) -> Option<Arc<pb::KeyDelta>> {
        self.publisher.key_delta()
    }

    /// Every published cluster set (for ADS), starting with the current one.
    pub fn clusters(&self) -> watch::Receiver<ClusterSet> {
        self.publisher.clusters()
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }
}

/// A key name as stored: trimmed, 1 to [`MAX_KEY_NAME_CHARS`] characters.
fn key_name(name: &str) -> Result<&str> {
    let name = name.trim();
    if name.is_empty() {
        return Err(ServiceError::InvalidArgument("key name is required".into()));
    }
    if name.chars().count() > MAX_KEY_NAME_CHARS {
        return Err(ServiceError::InvalidArgument(format!(
            "key name must be at most {MAX_KEY_NAME_CHARS} characters"
        )));
    }
    Ok(name)
}

fn unexpected(changed: Changed) -> ServiceError {
    ServiceError::Internal(format!("store reported an unexpected change: {changed:?}"))
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
pub(crate) mod tests {
    use super::*;
    use crate::store::SqliteStore;

    pub(crate) async fn service() -> (Service, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/t.db?mode=rwc", dir.path().display());
        let store = SqliteStore::open(&url).await.unwrap();
        let svc = Service::start(Arc::new(store), Sealer::new(&[9; 32]))
            .await
            .unwrap();
        (svc, dir)
    }

    fn provider(name: &str, kind: &str, url: &str) -> NewProvider {
        NewProvider {
            name: name.into(),
            kind: kind.into(),
            base_url: url.into(),
            api_key: "sk-up".into(),
            replace: false,
            fallback_api_keys: Vec::new(),
        }
    }

    #[tokio::test]
    async fn keys_are_validated_hashed_and_published() {
        let (svc, _dir) = service().await;
        let mut snaps = svc.snapshots();
        let v0 = snaps.borrow_and_update().version;
        assert!(v0 >= 1, "the seeded catalogue is version 1 or later");
        assert!(!snaps.borrow().models.is_empty());

        for bad in ["", "   ", &"x".repeat(101)] {
            assert!(matches!(
                svc.create_key(bad, "").await,
                Err(ServiceError::InvalidArgument(_))
            ));
        }
        assert!(matches!(
            svc.create_key("a", "Bad WS").await,
            Err(ServiceError::InvalidArgument(_))
        ));

        let (key, raw) = svc.create_key("ci", "").await.unwrap();
        assert!(raw.starts_with(keys::KEY_PREFIX));
        assert_eq!(key.key_prefix, keys::display_prefix(&raw));
        assert_eq!(key.sha256, keys::hash_key(&raw));
        assert_eq!(key.workspace_id, DEFAULT_WORKSPACE);
        assert!(key.id.starts_with("key_"));
        svc.settled().await;
        assert!(snaps.has_changed().unwrap());
        snaps.borrow_and_update();
        assert_eq!(svc.whole_snapshot().keys.len(), 1);

        let revoked = svc.revoke_key(&key.id).await.unwrap();
        assert_eq!(revoked.status, KeyStatus::Revoked);
        svc.settled().await;
        snaps.borrow_and_update();
        let snap = svc.whole_snapshot();
        assert!(snap.keys[0].revoked);
        assert!(snap.version > v0 + 1);
        // Idempotent, and publishes nothing new.
        assert_eq!(
            svc.revoke_key(&key.id).await.unwrap().status,
            KeyStatus::Revoked
        );
        svc.settled().await;
        assert!(!snaps.has_changed().unwrap());
        assert!(matches!(
            svc.revoke_key("key_nope").await,
            Err(ServiceError::NotFound(_))
        ));

        let (_, _) = svc.create_key("other", "team-a").await.unwrap();
        assert_eq!(svc.list_keys().await.unwrap().len(), 2);
    }

    #[tokio::test]
    async fn providers_are_validated_and_credentials_sealed() {
        let (svc, _dir) = service().await;
        let cases = [
            provider("Bad Name", "openai", "http://x"),
            provider("p", "nonsense", "http://x"),
            provider("p", "openai", "ftp://x"),
        ];
        for p in cases {
            assert!(matches!(
                svc.add_provider(p).await,
                Err(ServiceError::InvalidArgument(_))
            ));
        }
        let err = svc
            .add_provider(provider("p", "nonsense", "http://x"))
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("openai-compatible"), "{err}");

        let row = svc
            .add_provider(provider("p", "openai", "http://127.0.0.1:9/v1"))
            .await
            .unwrap();
        let sealed = row.credential_sealed.unwrap();
        assert!(
            !sealed.windows(5).any(|w| w == b"sk-up"),
            "stored encrypted"
        );
        svc.settled().await;
        let snap = svc.snapshots().borrow().clone();
        assert_eq!(snap.providers[0].credential, "sk-up");
        assert_eq!(
            svc.clusters().borrow().providers[0].cluster,
            "tr_provider_p"
        );

        assert!(matches!(
            svc.add_provider(provider("p", "anthropic", "https://api.anthropic.com"))
                .await,
            Err(ServiceError::AlreadyExists(_))
        ));
        let mut replacement = provider("p", "anthropic", "https://api.anthropic.com");
        replacement.replace = true;
        replacement.api_key = String::new();
        svc.add_provider(replacement).await.unwrap();
        svc.settled().await;
        let snap = svc.snapshots().borrow().clone();
        assert_eq!(snap.providers.len(), 1);
        assert_eq!(snap.providers[0].kind, "anthropic");
        assert_eq!(snap.providers[0].credential, "");

        svc.remove_provider("p").await.unwrap();
        svc.settled().await;
        assert!(svc.snapshots().borrow().providers.is_empty());
        assert!(svc.clusters().borrow().providers.is_empty());
        assert!(matches!(
            svc.remove_provider("p").await,
            Err(ServiceError::NotFound(_))
        ));
    }

    #[tokio::test]
    async fn usage_and_log_paging() {
        let (svc, _dir) = service().await;
        let records: Vec<UsageRecord> = (0..5)
            .map(|i| UsageRecord {
                request_id: format!("r{i}"),
                ..UsageRecord::default()
            })
            .chain(std::iter::once(UsageRecord::default()))
            .collect();
        assert_eq!(svc.ingest_usage(&records).await.unwrap(), 5);
        assert_eq!(svc.ingest_usage(&records).await.unwrap(), 0);
        let page = svc.list_logs(2, None, None).await.unwrap();
        assert_eq!(page.entries.len(), 2);
        assert_eq!(page.next_cursor.as_deref(), Some("r3"));
        let page = svc.list_logs(10, None, page.next_cursor).await.unwrap();
        assert_eq!(page.entries.len(), 3);
        assert_eq!(page.next_cursor, None);
        assert_eq!(svc.list_logs(0, None, None).await.unwrap().entries.len(), 5);
        assert!(matches!(
            svc.list_logs(1, None, Some("zz".into())).await,
            Err(ServiceError::InvalidArgument(_))
        ));
    }

    #[tokio::test]
    async fn a_dropped_record_leaves_its_trace_to_its_run() {
        let (svc, _dir) = service().await;
        let trace = format!(r#"[{{"rule":"r","pad":"{}"}}]"#, "x".repeat(600));
        let sent = |id: &str, trace: &str, as_previous: bool| UsageRecord {
            request_id: id.into(),
            rule_trace: trace.into(),
            rule_trace_as_previous: as_previous,
            ..UsageRecord::default()
        };
        // The record that carries the run's trace has no request id, so it is dropped.
        let records = [
            sent("", &trace, false),
            sent("a", "", true),
            sent("b", "", true),
        ];
        assert_eq!(svc.ingest_usage(&records).await.unwrap(), 2);
        for id in ["a", "b"] {
            let entry = svc.get_log(id, None).await.unwrap();
            assert_eq!(entry.record.rule_trace, trace, "{id}");
        }
    }

    #[tokio::test]
    async fn usage_summary_counts_recent_successes() {
        let (svc, _dir) = service().await;
        let (key, raw) = svc.create_key("k", "").await.unwrap();
        let record = |id: &str, status: u32| UsageRecord {
            request_id: id.into(),
            key_id: key.id.clone(),
            status,
            input_tokens: 3,
            output_tokens: 4,
            cost_picos: 180_000_000_000,
            ..UsageRecord::default()
        };
        svc.ingest_usage(&[record("ok", 200), record("bad", 429)])
            .await
            .unwrap();
        let summary = svc.usage_summary(7, None, None).await.unwrap();
        assert_eq!(summary.range_days, 7);
        assert_eq!(
            summary.totals,
            UsageTotals {
                requests: 2,
                failed_requests: 1,
                input_tokens: 3,
                output_tokens: 4,
                cost_picos: 180_000_000_000,
            }
        );
        assert!(summary.breakdown.is_empty() && summary.group_by.is_none());
        let today = day_of_ms(now_ms());
        assert_eq!(summary.since_day, today - 6, "today and the 6 days before");
        let by_day = svc
            .usage_summary(3, Some(UsageGroupBy::Day), Some(key.id.clone()))
            .await
            .unwrap();
        let days: Vec<_> = by_day.breakdown.iter().map(|g| g.key.clone()).collect();
        assert_eq!(
            days,
            [today - 2, today - 1, today].map(UsageGroupKey::Day),
            "every day of the range, empty ones too"
        );
        assert_eq!(by_day.breakdown[2].totals, summary.totals);
        assert_eq!(by_day.breakdown[0].totals, UsageTotals::default());
        assert!(matches!(
            svc.usage_summary(1, None, Some("key_other".into())).await,
            Err(ServiceError::NotFound(_))
        ));
        for days in [0, 366] {
            assert!(matches!(
                svc.usage_summary(days, None, None).await,
                Err(ServiceError::InvalidArgument(_))
            ));
        }
        assert_eq!(svc.find_key_by_raw(&raw).await.unwrap(), Some(key.clone()));
        assert_eq!(svc.find_key_by_raw("sk-tr-nope").await.unwrap(), None);
        assert_eq!(svc.get_key(&key.id).await.unwrap(), key);
        assert!(matches!(
            svc.get_key("key_nope").await,
            Err(ServiceError::NotFound(_))
        ));
        let with_usage = svc.key_usage(key.clone()).await.unwrap();
        assert_eq!(
            (with_usage.usage.requests, with_usage.usage.input_tokens),
            (2, 3)
        );
        assert!(with_usage.usage.last_used_at_ms.is_some());
        let listed = svc.list_keys_with_usage().await.unwrap();
        assert_eq!(listed, [with_usage]);
        let status = |s: &str| LogFilter {
            status: Some(s.into()),
            ..LogFilter::default()
        };
        for s in ["429", "4xx"] {
            let page = svc.query_logs(0, status(s), None).await.unwrap();
            assert_eq!(page.entries.len(), 1);
            assert_eq!(page.entries[0].record.request_id, "bad");
        }
        for bad in ["42", "600", "6xx", "4x", "abc", "4xxx"] {
            assert!(
                matches!(
                    svc.query_logs(0, status(bad), None).await,
                    Err(ServiceError::InvalidArgument(_))
                ),
                "{bad}"
            );
        }
        let long = LogFilter {
            metadata_contains: Some("x".repeat(MAX_SEARCH_CHARS + 1)),
            ..LogFilter::default()
        };
        assert!(matches!(
            svc.query_logs(0, long, None).await,
            Err(ServiceError::InvalidArgument(_))
        ));
        let backwards = LogFilter {
            since_ms: Some(2),
            until_ms: Some(1),
            ..LogFilter::default()
        };
        assert!(matches!(
            svc.query_logs(0, backwards, None).await,
            Err(ServiceError::InvalidArgument(_))
        ));

        // One row: a gateway key reads only its own; anyone else's is not found.
        assert_eq!(svc.get_log("ok", None).await.unwrap().record.status, 200);
        assert!(svc.get_log("ok", Some(&key.id)).await.is_ok());
        for (id, only) in [("ok", Some("key_other")), ("nope", None), ("", None)] {
            assert!(
                matches!(svc.get_log(id, only).await, Err(ServiceError::NotFound(_))),
                "{id}"
            );
        }
    }

    #[tokio::test]
    async fn key_updates_are_validated_and_published() {
        let (svc, _dir) = service().await;
        let (key, _) = svc.create_key("k", "").await.unwrap();
        let mut snaps = svc.snapshots();
        let patch = |name: Option<&str>, store_bodies| KeyPatch {
            name: name.map(str::to_string),
            store_bodies,
            ..KeyPatch::default()
        };
        let updated = svc
            .update_key(&key.id, patch(Some("  renamed "), Some(true)))
            .await
            .unwrap();
        assert_eq!(
            (updated.name.as_str(), updated.store_bodies),
            ("renamed", true)
        );
        svc.settled().await;
        snaps.borrow_and_update();
        let snap = svc.whole_snapshot();
        let pushed = snap.keys.iter().find(|k| k.id == key.id).unwrap();
        assert!(pushed.store_bodies);
        assert_eq!(pushed.name, "renamed");
        // Nothing to change: the key as it is, and nothing published.
        assert_eq!(
            svc.update_key(&key.id, patch(None, None)).await.unwrap(),
            updated
        );
        svc.settled().await;
        assert!(!snaps.has_changed().unwrap());
        for bad in ["", "  ", &"x".repeat(101)] {
            assert!(matches!(
                svc.update_key(&key.id, patch(Some(bad), None)).await,
                Err(ServiceError::InvalidArgument(_))
            ));
        }
        assert!(matches!(
            svc.update_key("key_nope", patch(None, Some(true))).await,
            Err(ServiceError::NotFound(_))
        ));
        assert!(matches!(
            svc.update_key(" ", patch(None, Some(true))).await,
            Err(ServiceError::InvalidArgument(_))
        ));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_writes_all_commit_and_the_newest_is_published() {
        let (svc, _dir) = service().await;
        let v0 = svc.snapshots().borrow().version;
        let tasks: Vec<_> = (0..16)
            .map(|i| {
                let svc = svc.clone();
                tokio::spawn(async move { svc.create_key(&format!("k{i}"), "").await })
            })
            .collect();
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        svc.settled().await;
        let snap = svc.whole_snapshot();
        assert_eq!(snap.version, v0 + 16);
        assert_eq!(snap.keys.len(), 16);
        assert_eq!(svc.clusters().borrow().version, v0 + 16);
    }

    #[tokio::test]
    async fn restart_republishes_the_same_configuration() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/t.db?mode=rwc", dir.path().display());
        let open = || async {
            let store = SqliteStore::open(&url).await.unwrap();
            Service::start(Arc::new(store), Sealer::new(&[9; 32]))
                .await
                .unwrap()
        };
        let svc = open().await;
        svc.add_provider(provider("p", "openai", "http://127.0.0.1:9/v1"))
            .await
            .unwrap();
        svc.settled().await;
        let before = svc.snapshots().borrow().clone();
        drop(svc);
        let again = open().await;
        let after = again.snapshots().borrow().clone();
        assert_eq!(before, after);
    }
    /// A burst of concurrent writes: every one commits, the publisher ends on the newest
    /// version with everything in it, it never goes backwards, and bursts share builds.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_burst_is_published_whole_in_order_and_coalesced() {
        const TASKS: usize = 8;
        const KEYS_PER_TASK: usize = 25;
        let (svc, _dir) = service().await;
        let v0 = svc.snapshots().borrow().version;
        let mut snaps = svc.snapshots();
        let mut clusters = svc.clusters();
        let watcher = tokio::spawn(async move {
            let mut seen = Vec::new();
            while snaps.changed().await.is_ok() {
                let version = snaps.borrow_and_update().version;
                seen.push(version);
                if version == v0 + (TASKS * KEYS_PER_TASK) as u64 + 1 {
                    break;
                }
            }
            seen
        });
        let tasks: Vec<_> = (0..TASKS)
            .map(|t| {
                let svc = svc.clone();
                tokio::spawn(async move {
                    for i in 0..KEYS_PER_TASK {
                        svc.create_key(&format!("k{t}-{i}"), "").await?;
                    }
                    Ok::<_, ServiceError>(())
                })
            })
            .collect();
        svc.add_provider(provider("p", "openai", "http://127.0.0.1:9/v1"))
            .await
            .unwrap();
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        svc.settled().await;
        let seen = watcher.await.unwrap();
        let writes = TASKS * KEYS_PER_TASK + 1;
        let newest = v0 + writes as u64;
        assert!(seen.windows(2).all(|w| w[0] < w[1]), "{seen:?}");
        assert_eq!(seen.last(), Some(&newest));
        assert!(
            seen.len() < writes,
            "{} builds for {writes} writes",
            seen.len()
        );
        let snap = svc.whole_snapshot();
        assert_eq!(snap.version, newest);
        assert_eq!(snap.keys.len(), TASKS * KEYS_PER_TASK);
        assert_eq!(snap.providers.len(), 1);
        let set = clusters.borrow_and_update().clone();
        assert_eq!((set.version, set.providers.len()), (newest, 1));
    }

    /// A write the engine would refuse is rolled back whole: no version, no row, no publish.
    /// (The service's own validation catches these first; this drives the store's check.)
    #[tokio::test]
    async fn invalid_writes_are_refused_whole() {
        let (svc, _dir) = service().await;
        let v0 = svc.snapshots().borrow().version;
        let row = |name: &str, kind: &str, url: &str, sealed: Option<Vec<u8>>| ProviderRow {
            name: name.into(),
            kind: kind.into(),
            base_url: url.into(),
            credential_sealed: sealed,
            fallbacks_sealed: None,
            fallback_count: 0,
            enabled: true,
            created_at_ms: 1,
        };
        let put = |row| ConfigChange::PutProvider {
            row,
            replace: false,
        };
        let bad_rule = crate::store::FirewallRuleRow {
            id: 0,
            name: "r".into(),
            priority: 0,
            is_enabled: true,
            scope: "prompt".into(),
            match_type: "regex".into(),
            pattern: "(".into(),
            action: "block".into(),
            replacement: String::new(),
            key_id: String::new(),
            workspace_id: String::new(),
            max_match_chars: 0,
            check: String::new(),
            template: String::new(),
            created_at_ms: 1,
            updated_at_ms: 1,
        };
        let cases = [
            ("kind", put(row("p", "nonsense", "http://x", None))),
            ("url", put(row("p", "openai", "ftp://x", None))),
            ("name", put(row("Bad Name", "openai", "http://x", None))),
            (
                "credential",
                put(row("p", "openai", "http://x", Some(vec![0; 40]))),
            ),
            ("rule", ConfigChange::CreateFirewallRule(bad_rule)),
        ];
        for (case, change) in cases {
            let err = svc.write(change).await.unwrap_err();
            assert!(
                matches!(&err, ServiceError::InvalidArgument(m) if m.contains("rejected")),
                "{case}: {err:?}"
            );
        }
        let state = svc.store.load_config().await.unwrap();
        assert_eq!(state.version, v0, "nothing committed");
        assert!(state.providers.is_empty() && state.firewall_rules.is_empty());
        svc.settled().await;
        assert_eq!(svc.snapshots().borrow().version, v0);
    }
}
