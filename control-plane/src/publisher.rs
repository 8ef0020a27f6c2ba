//! Turns a stored [`ConfigState`] into what the edges receive, and publishes it.
//!
//! One component builds both outputs from the same state — the `config.v1.Snapshot` for
//! FilterSync and the [`ClusterSet`] for ADS — so they can never disagree.
//!
//! Validation happens twice, at different grains. Before commit, [`Publisher::check`] runs the
//! engine's own per-entity checks on what a write changes (`snapshot::provider_entry`,
//! `model_entry`, `firewall::validate`, `routing::rules::validate`, `routing::config::validate`
//! and the rule counts), which with the store's unique indexes is everything
//! `Snapshot::from_proto` would refuse — at a cost independent of the number of keys and rules.
//! (`Firewall::compile` also builds Aho-Corasick automata over all patterns;
//! their only failure is running out of 32-bit state ids, which `MAX_RULES` ×
//! `MAX_PATTERN_BYTES` stays far below.)
//! Before publishing, [`Publisher::build`] validates the snapshot with `from_proto` (the very
//! code the filter runs), so an edge is never sent something it would refuse. The keys are left
//! out of that run: what the engine checks of them (a 32-byte hash, no hash twice) is already
//! the key row's type and a unique index.
//!
//! Reading is incremental: the publishing loop keeps the last configuration it read and then
//! reads every table again except the keys, of which only those changed since
//! ([`Store::load_config_since`], by the `changed_version` column).
//!
//! Publishing is coalesced by [`Coalescer`]: a background task reads the configuration, builds
//! and publishes it at most once per [`PUBLISH_INTERVAL`] while writes keep arriving, always the
//! latest committed version. A committed write is published within `build + PUBLISH_INTERVAL +
//! build` (a build already running, the pause, then the build that includes it); an isolated
//! write (none in the last interval) within one build.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokenrouter_engine::firewall::{self, MAX_RULES};
use tokenrouter_engine::routing;
use tokenrouter_engine::snapshot::{self, Snapshot as EngineSnapshot, SCHEMA};
use tokenrouter_proto::config::v1 as pb;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::crypto::{provider_aad, Sealer};
use crate::limits::{self, Policies, Policy};
use crate::metrics::Metrics;
use crate::store::{
    ConfigState, KeyRow, Proposed, ProviderRow, RoutingRuleRow, Store, StoreError, WorkspaceRow,
};
use crate::xds::{ChainCluster, ClusterSet, ProviderCluster};

/// Shortest pause between two full snapshot builds while writes keep arriving. Bursts of
/// writes share one build; a lone write is published at once.
pub const PUBLISH_INTERVAL: Duration = Duration::from_millis(25);

/// Wait before retrying a publish that failed (database error, or a committed configuration
/// that does not build — which the pre-commit checks are there to prevent).
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// Most implied chain clusters (ordered tuples of distinct providers) materialised; fewer
/// positions are used when the providers would need more.
pub const MAX_IMPLIED_CHAINS: usize = 512;

/// Cluster name of a provider (ARCHITECTURE.md, "Provider clusters").
pub fn cluster_name(provider: &str) -> String {
    routing::provider_cluster_name(provider)
}

/// Routing rules as the snapshot carries them: higher priority first, then lower id (the
/// order the edge evaluates them in).
fn routing_rules(rows: &[RoutingRuleRow]) -> Vec<pb::RoutingRule> {
    let mut rules: Vec<pb::RoutingRule> = rows.iter().map(RoutingRuleRow::to_proto).collect();
    rules.sort_by(|a, b| b.priority.cmp(&a.priority).then(a.id.cmp(&b.id)));
    rules
}

/// Most keys one delta lists; past this a full snapshot, a new base, is published instead (a
/// delta's keys are decoded by every worker on every version, a base's only once).
pub const MAX_DELTA_KEYS: usize = 4096;

/// What the last publish left for the next one: the base that key deltas are computed against,
/// and what the current keys were built from, so a version that changes a few keys of 100 000
/// builds only those (a revoke reaches the edges without an O(keys) build).
#[derive(Debug)]
struct Held {
    /// The last full snapshot (a delta base), with its keys.
    base: Arc<pb::Snapshot>,
    /// `base` without its keys and version, to compare later configurations with.
    rest: pb::Snapshot,
    /// The key rows of the published version, position for position (the publishing loop keeps
    /// each key where it was and appends new ones).
    rows: Vec<KeyRow>,
    /// The workspaces the policies were resolved with.
    workspaces: Vec<WorkspaceRow>,
    /// Keys that differ from the base's since it, by position: the cumulative delta.
    changed: BTreeMap<usize, pb::ApiKey>,
    policies: Policies,
    /// The published version, whole (base with `changed` applied), once a stream asked for it.
    whole: Option<Arc<pb::Snapshot>>,
}

impl Held {
    /// Brings the held rows up to `keys`, copying only the rows that differ, and returns their
    /// positions; `None` when a key moved or went away (a full read ordered them otherwise),
    /// after copying every row.
    fn update_rows(&mut self, keys: &[KeyRow]) -> Option<Vec<usize>> {
        if keys.len() < self.rows.len() {
            self.rows = keys.to_vec();
            return None;
        }
        let mut positions = Vec::new();
        for (at, key) in keys.iter().enumerate() {
            match self.rows.get_mut(at) {
                Some(row) if row.id != key.id => {
                    self.rows = keys.to_vec();
                    return None;
                }
                Some(row) if row == key => {}
                Some(row) => {
                    *row = key.clone();
                    positions.push(at);
                }
                None => {
                    self.rows.push(key.clone());
                    positions.push(at);
                }
            }
        }
        Some(positions)
    }

    /// Whether a configuration whose keys differ from the last version's at `positions` can
    /// travel as a delta from the base: the rest of it is the base's and at most
    /// [`MAX_DELTA_KEYS`] keys would then differ from the base's.
    fn takes_delta(&self, rest: &pb::Snapshot, state: &ConfigState, positions: &[usize]) -> bool {
        let more = positions
            .iter()
            .filter(|at| !self.changed.contains_key(at))
            .count();
        *rest == self.rest
            && state.workspaces == self.workspaces
            && self.changed.len() + more <= MAX_DELTA_KEYS
    }

    /// The delta to the base as it stands, at `version`.
    fn delta(&self, version: u64) -> pb::KeyDelta {
        pb::KeyDelta {
            schema: SCHEMA,
            base_version: self.base.version,
            version,
            keys: self.changed.values().cloned().collect(),
        }
    }
}

/// A key as the snapshot carries it.
fn api_key(k: &KeyRow, policy: &Policy) -> pb::ApiKey {
    pb::ApiKey {
        id: k.id.clone(),
        sha256: k.sha256.to_vec(),
        name: k.name.clone(),
        workspace_id: k.workspace_id.clone(),
        revoked: k.status == crate::store::KeyStatus::Revoked,
        store_bodies: k.store_bodies,
        admission: policy.admission(),
        metered: policy.key_metered || policy.workspace_metered,
    }
}

/// Both outputs of one configuration version.
#[derive(Debug)]
pub struct Built {
    pub snapshot: pb::Snapshot,
    pub clusters: ClusterSet,
    /// What the limiter enforces for each key at this version.
    pub policies: Policies,
}

pub struct Publisher {
    sealer: Sealer,
    snapshots: watch::Sender<Arc<pb::Snapshot>>,
    clusters: watch::Sender<ClusterSet>,
    policies: watch::Sender<Arc<Policies>>,
    /// Key deltas: the one from the base below to the version in `snapshots`, when only keys
    /// changed in between (`None` when that version is itself a base).
    key_deltas: watch::Sender<Option<Arc<pb::KeyDelta>>>,
    /// The delta base and what the current keys were built from. Held while comparing versions
    /// and sending on the channels, so two concurrent publishes cannot interleave and an older
    /// version never replaces a newer one.
    order: Mutex<Option<Held>>,
    metrics: Arc<Metrics>,
    /// Time an attempt may take to answer before failover (`TOKENROUTER_PER_TRY_TIMEOUT_MS`).
    per_try_timeout_ms: u32,
    /// Requests per second of keys whose limits and workspace's set none
    /// (`TOKENROUTER_DEFAULT_RPS`, default [`limits::DEFAULT_RPS`]; 0 = none).
    default_rps: u32,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher")
            .field("version", &self.snapshots.borrow().version)
            .finish_non_exhaustive()
    }
}

impl Publisher {
    /// A publisher whose channels hold an empty version-0 configuration until the first publish.
    pub fn new(sealer: Sealer, metrics: Arc<Metrics>) -> Publisher {
        let (snapshots, _) = watch::channel(Arc::new(pb::Snapshot {
            schema: SCHEMA,
            ..pb::Snapshot::default()
        }));
        let (clusters, _) = watch::channel(ClusterSet::default());
        let (policies, _) = watch::channel(Arc::new(Policies::default()));
        Publisher {
            sealer,
            snapshots,
            clusters,
            policies,
            key_deltas: watch::channel(None).0,
            order: Mutex::new(None),
            metrics,
            per_try_timeout_ms: std::env::var("TOKENROUTER_PER_TRY_TIMEOUT_MS")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(routing::DEFAULT_PER_TRY_TIMEOUT_MS),
            default_rps: std::env::var("TOKENROUTER_DEFAULT_RPS")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(limits::DEFAULT_RPS),
        }
    }

    /// A provider as the snapshot and ADS carry it (credential decrypted).
    fn provider(&self, p: &ProviderRow) -> Result<(pb::Provider, ProviderCluster), String> {
        let credential = match &p.credential_sealed {
            Some(sealed) => {
                let plain = self
                    .sealer
                    .open(sealed, &provider_aad(&p.name))
                    .map_err(|e| format!("provider {}: {e}", p.name))?;
                String::from_utf8(plain)
                    .map_err(|_| format!("provider {}: credential is not UTF-8", p.name))?
            }
            None => String::new(),
        };
        let fallback_credentials: Vec<String> = match &p.fallbacks_sealed {
            Some(sealed) => {
                let plain = self
                    .sealer
                    .open(sealed, &provider_aad(&p.name))
                    .map_err(|e| format!("provider {}: fallback credentials: {e}", p.name))?;
                serde_json::from_slice(&plain).map_err(|_| {
                    format!("provider {}: fallback credentials are not a list", p.name)
                })?
            }
            None => Vec::new(),
        };
        let cluster = cluster_name(&p.name);
        let provider_cluster = ProviderCluster {
            name: p.name.clone(),
            cluster: cluster.clone(),
            base_url: p.base_url.clone(),
        };
        let provider = pb::Provider {
            name: p.name.clone(),
            kind: p.kind.clone(),
            base_url: p.base_url.clone(),
            cluster,
            credential,
            enabled: p.enabled,
            fallback_credentials,
        };
        Ok((provider, provider_cluster))
    }

    /// Builds and validates both outputs, whole. The error is a message fit for the operator.
    /// [`Publisher::publish`] builds a version this way when it is a new base.
    pub fn build(&self, state: &ConfigState) -> Result<Built, String> {
        let (mut snapshot, clusters) = self.build_config(state)?;
        let policies;
        (snapshot.keys, policies) = self.build_keys(state);
        Ok(Built {
            snapshot,
            clusters,
            policies,
        })
    }

    /// Every key of `state` and its policy.
    fn build_keys(&self, state: &ConfigState) -> (Vec<pb::ApiKey>, Policies) {
        let policies = limits::policies(state, self.default_rps);
        let keys = state
            .keys
            .iter()
            .filter_map(|k| policies.get(&k.id).map(|p| api_key(k, p)))
            .collect();
        (keys, policies)
    }

    /// The snapshot without its keys, validated, and the cluster set. The keys are checked by
    /// their types and the store (a 32-byte hash each, unique by index), so the engine
    /// validates the rest without them: a build at 100 000 keys neither copies nor hashes
    /// every key twice.
    fn build_config(&self, state: &ConfigState) -> Result<(pb::Snapshot, ClusterSet), String> {
        let mut providers = Vec::new();
        let mut clusters = Vec::new();
        for p in state.providers.iter().filter(|p| p.enabled) {
            let (provider, cluster) = self.provider(p)?;
            clusters.push(cluster);
            providers.push(provider);
        }
        let snapshot = pb::Snapshot {
            schema: SCHEMA,
            version: state.version,
            providers,
            models: state.models.clone(),
            settings: Some(pb::Settings {
                max_request_body_bytes: 0,
                ..pb::Settings::default()
            }),
            firewall_rules: state
                .firewall_rules
                .iter()
                .map(crate::store::FirewallRuleRow::to_proto)
                .collect(),
            routing_rules: routing_rules(&state.routing_rules),
            routing_configs: state
                .routing_configs
                .iter()
                .map(crate::store::RoutingConfigRow::to_proto)
                .collect(),
            ..pb::Snapshot::default()
        };
        let mut snapshot = snapshot;
        let names: Vec<String> = clusters.iter().map(|c| c.name.clone()).collect();
        let name_refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let settings = pb::Settings {
            max_request_body_bytes: 0,
            max_attempts: routing::DEFAULT_MAX_ATTEMPTS,
            per_try_timeout_ms: self.per_try_timeout_ms,
            auto_chain_len: routing::auto_chain_len(
                name_refs.len(),
                routing::DEFAULT_MAX_ATTEMPTS,
                MAX_IMPLIED_CHAINS,
            ),
            // `api::grpc::sync` resolves `UsageRecord.rule_trace_as_previous`.
            accepts_trace_runs: true,
        };
        snapshot.settings = Some(settings);
        // The chains key configurations need beyond the implied ones are found by the engine
        // on the validated snapshot, then added to it.
        let explicit = routing::config_chains(
            &EngineSnapshot::from_proto(snapshot.clone()).map_err(|e| e.to_string())?,
        );
        snapshot.chain_clusters = explicit
            .iter()
            .map(|providers| {
                let refs: Vec<&str> = providers.iter().map(String::as_str).collect();
                pb::ChainCluster {
                    providers: providers.clone(),
                    cluster: routing::chain_cluster_name(&refs),
                }
            })
            .collect();
        EngineSnapshot::from_proto(snapshot.clone()).map_err(|e| e.to_string())?;
        let mut chains = Vec::new();
        let mut slots = Vec::new();
        let implied = routing::implied_chains(&name_refs, settings.auto_chain_len);
        for providers in implied.iter().chain(explicit.iter()) {
            let refs: Vec<&str> = providers.iter().map(String::as_str).collect();
            let children = routing::chain_children(&refs);
            for (child, provider) in children.iter().zip(&refs) {
                if child.contains('~')
                    && !slots.iter().any(|s: &ProviderCluster| &s.cluster == child)
                {
                    if let Some(base) = clusters.iter().find(|c| c.name == *provider) {
                        slots.push(ProviderCluster {
                            cluster: child.clone(),
                            ..base.clone()
                        });
                    }
                }
            }
            chains.push(ChainCluster {
                cluster: routing::chain_cluster_name(&refs),
                children,
            });
        }
        clusters.extend(slots);
        Ok((
            snapshot,
            ClusterSet {
                version: state.version,
                providers: clusters,
                chains,
            },
        ))
    }

    /// The store's pre-commit check: what a write changes must pass the engine's checks for
    /// that entity (see the module docs for why that suffices).
    pub fn check(&self, proposed: Proposed<'_>) -> Result<(), String> {
        match proposed {
            // A key's only constraints are a 32-byte hash (its type) and a unique hash (an index).
            Proposed::Key(_) | Proposed::Workspace(_) | Proposed::Removal => Ok(()),
            // Disabled providers are left out of the snapshot, so they cannot break it.
            Proposed::Provider(p) if !p.enabled => Ok(()),
            Proposed::Provider(p) => {
                let (provider, _) = self.provider(p)?;
                snapshot::provider_entry(provider)
                    .map(drop)
                    .map_err(|e| e.to_string())
            }
            Proposed::Models(models) => models.iter().try_for_each(|m| {
                snapshot::model_entry(m.clone())
                    .map(drop)
                    .map_err(|e| e.to_string())
            }),
            Proposed::FirewallRule { count, .. } if count > MAX_RULES => Err(format!(
                "{count} firewall rules; at most {MAX_RULES} are accepted"
            )),
            Proposed::FirewallRule { rule, .. } => firewall::validate(&rule.to_proto())
                .map(drop)
                .map_err(|e| e.to_string()),
            Proposed::RoutingRule { count, .. } if count > routing::rules::MAX_RULES => {
                Err(format!(
                    "{count} routing rules; at most {} are accepted",
                    routing::rules::MAX_RULES
                ))
            }
            Proposed::RoutingRule { rule, .. } => {
                routing::rules::validate(&rule.to_proto()).map_err(|e| e.to_string())
            }
            Proposed::RoutingConfig(config) => {
                routing::config::validate(&config.to_proto()).map_err(|e| e.to_string())
            }
        }
    }

    /// Builds and publishes `state` unless a newer version is already out. Returns whether it
    /// was published.
    ///
    /// A version that changes only keys (and few enough) is a key delta from the last base:
    /// only the keys that changed are built, and the snapshot on [`Publisher::snapshots`] has
    /// the configuration without keys ([`Publisher::whole_snapshot`] has them). Any other
    /// version is built whole and becomes the new base.
    pub fn publish(&self, state: &ConfigState) -> Result<bool, String> {
        let (config, clusters) = self.build_config(state)?;
        let mut held = self
            .order
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if state.version <= self.snapshots.borrow().version {
            return Ok(false);
        }
        let version = state.version;
        let rest = pb::Snapshot {
            version: 0,
            ..config.clone()
        };
        let changed = held.as_mut().and_then(|h| h.update_rows(&state.keys));
        let delta_positions = changed.filter(|positions| {
            held.as_ref()
                .is_some_and(|h| h.takes_delta(&rest, state, positions))
        });
        let (snapshot, delta, policies) = match (held.as_mut(), delta_positions) {
            (Some(h), Some(positions)) => {
                let workspaces = limits::workspaces(state);
                for at in positions {
                    let row = &state.keys[at];
                    let policy = limits::policy(row, &workspaces, self.default_rps);
                    h.changed.insert(at, api_key(row, &policy));
                    h.policies.set(&row.id, policy);
                }
                h.whole = None;
                let delta = h.delta(version);
                (Arc::new(config), Some(Arc::new(delta)), h.policies.clone())
            }
            _ => {
                let mut snapshot = config;
                let policies;
                (snapshot.keys, policies) = self.build_keys(state);
                let snapshot = Arc::new(snapshot);
                // Already brought up to these keys, unless this is the first version.
                let rows = held.take().map_or_else(|| state.keys.clone(), |h| h.rows);
                *held = Some(Held {
                    base: snapshot.clone(),
                    rest,
                    rows,
                    workspaces: state.workspaces.clone(),
                    changed: BTreeMap::new(),
                    policies: policies.clone(),
                    whole: None,
                });
                (snapshot, None, policies)
            }
        };
        self.clusters.send_replace(clusters);
        // Before the snapshot: an edge that learns of a limit finds it enforced here.
        self.policies.send_replace(Arc::new(policies));
        // Before the snapshot too: a stream woken by the snapshot finds its delta.
        self.key_deltas.send_replace(delta);
        self.snapshots.send_replace(snapshot);
        self.metrics
            .config_version
            .store(version, std::sync::atomic::Ordering::Relaxed);
        tracing::info!(version, "configuration published");
        Ok(true)
    }

    /// The published version with every key: the snapshot itself for a base, else the base
    /// with the delta applied (built once per version, for a stream that must be sent a whole
    /// snapshot).
    pub fn whole_snapshot(&self) -> Arc<pb::Snapshot> {
        let mut held = self
            .order
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let current = self.snapshots.borrow().clone();
        let Some(h) = held.as_mut() else {
            return current;
        };
        if h.base.version == current.version {
            return h.base.clone();
        }
        if let Some(whole) = h.whole.as_ref().filter(|w| w.version == current.version) {
            return whole.clone();
        }
        let mut whole = pb::Snapshot {
            version: current.version,
            ..pb::Snapshot::clone(&h.base)
        };
        for (&at, key) in &h.changed {
            match whole.keys.get_mut(at) {
                Some(slot) => *slot = key.clone(),
                None => whole.keys.push(key.clone()),
            }
        }
        let whole = Arc::new(whole);
        h.whole = Some(whole.clone());
        whole
    }

    /// Every published version. A key-delta version's snapshot has no keys (they are the
    /// base's with [`Publisher::key_delta`] applied; [`Publisher::whole_snapshot`] has them all).
    pub fn snapshots(&self) -> watch::Receiver<Arc<pb::Snapshot>> {
        self.snapshots.subscribe()
    }

    /// The key delta of the published version, if that version is not a base (see
    /// [`pb::KeyDelta`]). Read it after the snapshot: it is sent first.
    pub fn key_delta(&self) -> Option<Arc<pb::KeyDelta>> {
        self.key_deltas.borrow().clone()
    }

    pub fn clusters(&self) -> watch::Receiver<ClusterSet> {
        self.clusters.subscribe()
    }

    /// Requests per second of keys that set none (`TOKENROUTER_DEFAULT_RPS`).
    pub fn default_rps(&self) -> u32 {
        self.default_rps
    }

    pub fn policies(&self) -> watch::Receiver<Arc<Policies>> {
        self.policies.subscribe()
    }

    /// Version currently published (0 before the first publish).
    pub fn version(&self) -> u64 {
        self.snapshots.borrow().version
    }
}

/// Publishes committed versions from a background task, coalescing bursts of writes (module
/// docs). The task stops when the `Coalescer` is dropped or the store is closed.
#[derive(Debug)]
pub struct Coalescer {
    /// Newest committed version; the task publishes until the publisher has caught up with it.
    committed: watch::Sender<u64>,
    publisher: Arc<Publisher>,
}

impl Coalescer {
    /// Starts the publishing task. `publisher` should already hold the stored configuration.
    pub fn spawn(store: Arc<dyn Store>, publisher: Arc<Publisher>) -> Coalescer {
        let (committed, receiver) = watch::channel(publisher.version());
        tokio::spawn(run(store, publisher.clone(), receiver));
        Coalescer {
            committed,
            publisher,
        }
    }

    /// Records a committed version; it will be published (with any later ones) shortly.
    pub fn committed(&self, version: u64) {
        self.committed.send_if_modified(|newest| {
            let newer = version > *newest;
            if newer {
                *newest = version;
            }
            newer
        });
    }

    /// Waits until every version committed so far is published (or superseded).
    pub async fn settled(&self) {
        let mut published = self.publisher.snapshots();
        let target = *self.committed.borrow();
        // The sender lives in `self.publisher`, so the channel cannot close while we wait.
        let _ = published.wait_for(|s| s.version >= target).await;
    }
}

/// The publishing loop: wait for a commit newer than what is out, pause so that at least
/// [`PUBLISH_INTERVAL`] separates two builds, then read, build and publish the latest state.
async fn run(
    store: Arc<dyn Store>,
    publisher: Arc<Publisher>,
    mut committed: watch::Receiver<u64>,
) {
    let mut last_build: Option<Instant> = None;
    let mut cache = ConfigCache::default();
    loop {
        if committed
            .wait_for(|&newest| newest > publisher.version())
            .await
            .is_err()
        {
            return; // The coalescer was dropped: nothing more will be committed through it.
        }
        if let Some(done) = last_build {
            tokio::time::sleep_until(done + PUBLISH_INTERVAL).await;
        }
        let outcome = match cache.read(store.as_ref()).await {
            Ok(state) => publisher.publish(state),
            Err(StoreError::Database(sqlx::Error::PoolClosed)) => return,
            Err(e) => Err(format!("reading the configuration: {e}")),
        };
        last_build = Some(Instant::now());
        if let Err(e) = outcome {
            tracing::error!(error = %e, "configuration not published; retrying");
            // Retry after a while, or as soon as a newer commit may have fixed it.
            let _ = tokio::time::timeout(RETRY_AFTER, committed.changed()).await;
        }
    }
}

/// The configuration last read by the publishing loop. The next read fetches every table but
/// the keys again (they are small) and, of the keys, only those changed since
/// ([`Store::load_config_since`]), so a publish at 100 000 keys does not read 100 000 rows.
#[derive(Default)]
struct ConfigCache {
    state: Option<ConfigState>,
    /// Key id → position in `state.keys`.
    positions: HashMap<String, usize>,
}

impl ConfigCache {
    async fn read(&mut self, store: &dyn Store) -> Result<&ConfigState, StoreError> {
        let mut fresh = match &self.state {
            Some(held) => store.load_config_since(held.version).await?,
            None => store.load_config().await?,
        };
        // A version below the one held means the database is not the one read before
        // (restored, replaced): start over from a full read.
        if self
            .state
            .as_ref()
            .is_some_and(|held| fresh.version < held.version)
        {
            self.state = None;
            fresh = store.load_config().await?;
        }
        let state = match self.state.take() {
            Some(mut held) => {
                for key in fresh.keys.drain(..) {
                    match self.positions.get(&key.id) {
                        Some(&at) => held.keys[at] = key,
                        None => {
                            self.positions.insert(key.id.clone(), held.keys.len());
                            held.keys.push(key);
                        }
                    }
                }
                ConfigState {
                    keys: held.keys,
                    ..fresh
                }
            }
            None => {
                self.positions = fresh
                    .keys
                    .iter()
                    .enumerate()
                    .map(|(at, k)| (k.id.clone(), at))
                    .collect();
                fresh
            }
        };
        Ok(self.state.insert(state))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::store::{KeyRow, KeyStatus, ProviderRow};

    fn state(version: u64) -> (Publisher, ConfigState) {
        let sealer = Sealer::new(&[1; 32]);
        let sealed = sealer.seal(b"sk-up", &provider_aad("up")).unwrap();
        let state = ConfigState {
            version,
            keys: vec![KeyRow {
                id: "key_1".into(),
                name: "k".into(),
                key_prefix: "sk-tr-0000".into(),
                sha256: [3; 32],
                workspace_id: "default".into(),
                status: KeyStatus::Revoked,
                created_at_ms: 1,
                revoked_at_ms: Some(2),
                limits: Default::default(),
                metered: false,
                store_bodies: true,
            }],
            providers: vec![ProviderRow {
                name: "up".into(),
                kind: "openai".into(),
                base_url: "http://127.0.0.1:1/v1".into(),
                credential_sealed: Some(sealed),
                fallbacks_sealed: None,
                fallback_count: 0,
                enabled: true,
                created_at_ms: 1,
            }],
            models: tokenrouter_engine::catalogue::builtin().unwrap(),
            ..ConfigState::default()
        };
        (Publisher::new(sealer, Arc::new(Metrics::default())), state)
    }

    /// How long one publish takes on a real database: `TOKENROUTER_PROFILE_DB=<dir with
    /// tokenrouter.db, a copy: the store migrates it> cargo test --release -p tokenrouter-control-plane --lib publish_cost --
    /// --ignored --nocapture` (e.g. the benchmark's `target/bench/run/cp-large`).
    #[tokio::test]
    #[ignore = "profiling aid: needs TOKENROUTER_PROFILE_DB"]
    async fn publish_cost() {
        use crate::store::{SqliteStore, Store};
        use std::time::Instant;
        let dir = std::env::var("TOKENROUTER_PROFILE_DB").unwrap();
        let url = format!("sqlite://{dir}/tokenrouter.db?mode=rwc");
        let store = SqliteStore::open(&url).await.unwrap();
        let publisher = Publisher::new(Sealer::new(&[0; 32]), Arc::new(Metrics::default()));
        for _ in 0..3 {
            let t = Instant::now();
            let mut state = store.load_config().await.unwrap();
            let loaded = t.elapsed();
            // The benchmark's master key is not ours: leave the credentials out.
            state
                .providers
                .iter_mut()
                .for_each(|p| p.credential_sealed = None);
            let built = publisher.build(&state).unwrap();
            let total = t.elapsed();
            let bytes = prost::Message::encoded_len(&built.snapshot);
            println!(
                "{} keys: load {loaded:?}, load+build+validate {total:?}, snapshot {bytes} bytes",
                state.keys.len()
            );
        }
        // What the publishing loop does after its first read: the keys changed since, then
        // the build.
        let mut cache = ConfigCache::default();
        cache.read(&store).await.unwrap();
        for _ in 0..3 {
            let t = Instant::now();
            let state = cache.read(&store).await.unwrap();
            let loaded = t.elapsed();
            let mut state = state.clone();
            let cloned = t.elapsed();
            state
                .providers
                .iter_mut()
                .for_each(|p| p.credential_sealed = None);
            publisher.build(&state).unwrap();
            println!(
                "incremental: load {loaded:?}, build+validate {:?}",
                t.elapsed() - cloned
            );
        }
    }

    /// How long a key-only publish takes at 100 000 keys (no database): `cargo test --release
    /// -p tokenrouter-control-plane --lib publish_cost_synthetic -- --ignored --nocapture`.
    #[test]
    #[ignore = "profiling aid"]
    fn publish_cost_synthetic() {
        use std::time::Instant;
        let (p, mut s) = state(1);
        let template = s.keys[0].clone();
        s.keys = (0..100_000u32)
            .map(|i| {
                let mut sha256 = [0; 32];
                sha256[..4].copy_from_slice(&i.to_le_bytes());
                KeyRow {
                    id: format!("key_{i:08}"),
                    name: format!("bench-{i}"),
                    sha256,
                    status: KeyStatus::Active,
                    ..template.clone()
                }
            })
            .collect();
        let t = Instant::now();
        assert!(p.publish(&s).unwrap());
        println!("first publish {:?}", t.elapsed());
        for round in 0..5 {
            s.version += 1;
            s.keys[round * 7].status = KeyStatus::Revoked;
            let t = Instant::now();
            let built = p.build(&s).unwrap();
            let build = t.elapsed();
            drop(built);
            let t = Instant::now();
            assert!(p.publish(&s).unwrap());
            println!("revoke: build {build:?}, publish {:?}", t.elapsed());
        }
        // A change besides keys: a new base, every key built again.
        s.version += 1;
        s.providers[0].base_url = "http://127.0.0.1:2/v1".into();
        let t = Instant::now();
        assert!(p.publish(&s).unwrap());
        println!("provider change (a new base): publish {:?}", t.elapsed());
    }

    /// The publishing loop's incremental read gives the configuration a full read gives, over
    /// creations, revocations, updates and changes to other tables.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn incremental_reads_match_full_reads() {
        use crate::store::test_db::TestDb;
        use crate::store::{ConfigChange, Limits};
        let db = TestDb::sqlite().await;
        let store = db.store.as_ref();
        let ok = |_: Proposed<'_>| Ok::<(), String>(());
        let key = |i: u8| KeyRow {
            id: format!("key_{i}"),
            name: "k".into(),
            key_prefix: "sk-tr-0000".into(),
            sha256: [i; 32],
            workspace_id: "default".into(),
            status: KeyStatus::Active,
            created_at_ms: i64::from(i),
            revoked_at_ms: None,
            limits: Limits::default(),
            metered: false,
            store_bodies: false,
        };
        let same = |a: &ConfigState, b: &ConfigState| {
            let sorted = |s: &ConfigState| {
                let mut keys = s.keys.clone();
                keys.sort_by(|x, y| x.id.cmp(&y.id));
                keys
            };
            assert_eq!(a.version, b.version);
            assert_eq!(sorted(a), sorted(b));
            assert_eq!(a.workspaces, b.workspaces);
            assert_eq!(a.routing_configs, b.routing_configs);
        };
        let mut cache = ConfigCache::default();
        for i in 1..=5 {
            store
                .change_config(ConfigChange::CreateKey(key(i)), &ok)
                .await
                .unwrap();
        }
        same(
            cache.read(store).await.unwrap(),
            &store.load_config().await.unwrap(),
        );
        let changes = [
            ConfigChange::RevokeKey {
                id: "key_2".into(),
                at_ms: 7,
            },
            ConfigChange::CreateKey(key(6)),
            ConfigChange::UpdateKey {
                id: "key_4".into(),
                name: Some("renamed".into()),
                store_bodies: Some(true),
                limits: Limits {
                    rps: Some(3),
                    ..Limits::default()
                },
            },
            ConfigChange::UpdateWorkspace {
                id: "default".into(),
                limits: Limits {
                    rps: Some(9),
                    ..Limits::default()
                },
            },
        ];
        for change in changes {
            store.change_config(change, &ok).await.unwrap();
            let full = store.load_config().await.unwrap();
            same(cache.read(store).await.unwrap(), &full);
        }
        // Nothing changed: the same configuration again.
        let full = store.load_config().await.unwrap();
        same(cache.read(store).await.unwrap(), &full);
        assert_eq!(cache.state.as_ref().unwrap().keys.len(), 6);
    }

    #[test]
    fn snapshot_and_clusters_agree() {
        let (p, s) = state(3);
        let mut snaps = p.snapshots();
        let clusters = p.clusters();
        assert!(p.publish(&s).unwrap());
        assert!(snaps.has_changed().unwrap());
        let snap = snaps.borrow_and_update().clone();
        assert_eq!(snap.version, 3);
        assert!(snap.keys[0].revoked, "revoked keys stay in the snapshot");
        assert!(
            snap.keys[0].store_bodies,
            "the edge records this key's bodies"
        );
        assert_eq!(
            snap.providers[0].credential, "sk-up",
            "credential decrypted"
        );
        assert_eq!(snap.providers[0].cluster, "tr_provider_up");
        assert_eq!(snap.settings.unwrap().max_request_body_bytes, 0);
        let c = clusters.borrow().clone();
        assert_eq!(c.version, 3);
        assert_eq!(c.providers[0].cluster, "tr_provider_up");
        assert_eq!(c.providers[0].base_url, "http://127.0.0.1:1/v1");
    }

    /// Versions that change only keys get a delta from the last base, cumulative; any other
    /// change, a key out of place or too many keys make a new base.
    #[test]
    fn key_only_versions_are_published_as_deltas() {
        let (p, mut s) = state(3);
        let template = s.keys[0].clone();
        let key = |i: u8| KeyRow {
            id: format!("key_{i}"),
            sha256: [i; 32],
            status: KeyStatus::Active,
            ..template.clone()
        };
        s.keys = (10..15).map(key).collect();
        assert!(p.publish(&s).unwrap());
        assert!(p.key_delta().is_none(), "the first version is a base");

        s.version = 4;
        s.keys[1].status = KeyStatus::Revoked;
        assert!(p.publish(&s).unwrap());
        let d = p.key_delta().unwrap();
        assert_eq!((d.base_version, d.version), (3, 4));
        assert_eq!(d.keys.len(), 1);
        assert!(d.keys[0].revoked && d.keys[0].id == "key_11");

        s.version = 5;
        s.keys.push(key(20));
        assert!(p.publish(&s).unwrap());
        let d = p.key_delta().unwrap();
        assert_eq!((d.base_version, d.version), (3, 5));
        let ids: Vec<&str> = d.keys.iter().map(|k| k.id.as_str()).collect();
        assert_eq!(ids, ["key_11", "key_20"], "cumulative since the base");
        assert!(
            p.snapshots().borrow().keys.is_empty(),
            "a delta version has no keys"
        );
        let whole = p.whole_snapshot();
        assert_eq!(whole.version, 5);
        assert_eq!(whole.keys.len(), 6, "the whole snapshot has every key");
        assert!(whole.keys[1].revoked && whole.keys[5].id == "key_20");

        // A change besides keys: a new base.
        s.version = 6;
        s.providers[0].base_url = "http://127.0.0.1:2/v1".into();
        assert!(p.publish(&s).unwrap());
        assert!(p.key_delta().is_none());
        s.version = 7;
        s.keys[0].name = "renamed".into();
        assert!(p.publish(&s).unwrap());
        assert_eq!(p.key_delta().unwrap().base_version, 6);

        // Keys out of place (a full read sorted them otherwise): a new base.
        s.version = 8;
        s.keys.swap(0, 1);
        assert!(p.publish(&s).unwrap());
        assert!(p.key_delta().is_none());

        // More than MAX_DELTA_KEYS changed keys: a new base.
        s.version = 9;
        for i in 0..=MAX_DELTA_KEYS {
            let mut sha256 = [0xee; 32];
            sha256[..8].copy_from_slice(&(i as u64).to_le_bytes());
            s.keys.push(KeyRow {
                id: format!("key_bulk_{i}"),
                sha256,
                ..s.keys[0].clone()
            });
        }
        assert!(p.publish(&s).unwrap());
        assert!(p.key_delta().is_none());
    }

    /// Whatever sequence of versions is published, delta or base, the whole snapshot and the
    /// limiter's policies are what a full build of the same configuration gives.
    #[test]
    fn incremental_publishes_match_full_builds() {
        use crate::store::{Limits, WorkspaceRow};
        let (p, mut s) = state(1);
        let template = s.keys[0].clone();
        let key = |i: u8| KeyRow {
            id: format!("key_{i}"),
            name: format!("k{i}"),
            sha256: [i; 32],
            status: KeyStatus::Active,
            ..template.clone()
        };
        s.keys = (10..20).map(key).collect();
        s.workspaces = vec![WorkspaceRow {
            id: "default".into(),
            created_at_ms: 1,
            limits: Limits::default(),
            metered: false,
        }];
        type Change = fn(&mut ConfigState);
        let changes: [(&str, Change, bool); 9] = [
            ("first", |_| {}, false),
            ("revoke", |s| s.keys[3].status = KeyStatus::Revoked, true),
            (
                "create",
                |s| {
                    let mut k = s.keys[0].clone();
                    k.id = "key_new".into();
                    k.sha256 = [0xaa; 32];
                    s.keys.push(k);
                },
                true,
            ),
            ("key limits", |s| s.keys[5].limits.rps = Some(3), true),
            ("metered key", |s| s.keys[6].metered = true, true),
            (
                "the same key again",
                |s| s.keys[3].name = "renamed".into(),
                true,
            ),
            (
                "workspace metered",
                |s| s.workspaces[0].metered = true,
                false,
            ),
            ("after a new base", |s| s.keys[7].store_bodies = false, true),
            (
                "provider",
                |s| s.providers[0].base_url = "http://127.0.0.1:9/v1".into(),
                false,
            ),
        ];
        for (what, change, is_delta) in changes {
            s.version += 1;
            change(&mut s);
            assert!(p.publish(&s).unwrap(), "{what}");
            assert_eq!(p.key_delta().is_some(), is_delta, "{what}");
            let built = p.build(&s).unwrap();
            assert_eq!(*p.whole_snapshot(), built.snapshot, "{what}");
            let policies = p.policies().borrow().clone();
            for k in &s.keys {
                assert_eq!(policies.get(&k.id), built.policies.get(&k.id), "{what}");
            }
            let published = p.snapshots().borrow().clone();
            assert_eq!(published.version, s.version, "{what}");
            if is_delta {
                assert!(published.keys.is_empty(), "{what}");
            }
        }
    }

    #[test]
    fn older_versions_are_not_published() {
        let (p, s) = state(5);
        assert!(p.publish(&s).unwrap());
        let (_, older) = state(4);
        assert!(!p.publish(&older).unwrap());
        assert_eq!(p.version(), 5);
    }

    #[test]
    fn invalid_configurations_are_refused() {
        type Breaks = fn(&mut ProviderRow);
        let cases: [(&str, Breaks, &str); 4] = [
            ("kind", |p| p.kind = "nonsense".into(), "unknown kind"),
            ("url", |p| p.base_url = "ftp://x".into(), "provider up"),
            (
                "name",
                |p| {
                    p.name = "Bad Name".into();
                    p.credential_sealed = None;
                },
                "not valid",
            ),
            (
                "credential",
                |p| p.credential_sealed = Some(vec![0; 40]),
                "could not be decrypted",
            ),
        ];
        for (case, breaks, expected) in cases {
            let (p, mut s) = state(1);
            breaks(&mut s.providers[0]);
            // The pre-commit check on the one provider and the full build agree.
            let err = p.check(Proposed::Provider(&s.providers[0])).unwrap_err();
            assert!(err.contains(expected), "{case}: {err}");
            assert!(p.build(&s).is_err(), "{case}");
            // Disabled providers are left out, so they cannot break the snapshot.
            s.providers[0].enabled = false;
            assert!(
                p.check(Proposed::Provider(&s.providers[0])).is_ok(),
                "{case}"
            );
            let built = p.build(&s).unwrap();
            assert!(built.snapshot.providers.is_empty() && built.clusters.providers.is_empty());
        }
    }

    #[test]
    fn routing_rules_and_configs_are_checked_and_published_in_order() {
        let (p, mut s) = state(1);
        let rule = |id: i64, priority: i32, action: &str| RoutingRuleRow {
            id,
            name: format!("r{id}"),
            priority,
            is_enabled: id != 2,
            match_json: r#"{"task":"coding"}"#.into(),
            action_json: action.into(),
            key_id: String::new(),
            created_at_ms: 0,
            updated_at_ms: 0,
        };
        let valid = r#"{"set_model":"gpt-4o"}"#;
        let cases = [
            (rule(1, 0, valid), 1, true),
            (rule(1, 0, "{"), 1, false),
            (rule(1, 0, valid), routing::rules::MAX_RULES, true),
            (rule(1, 0, valid), routing::rules::MAX_RULES + 1, false),
        ];
        for (r, count, ok) in cases {
            let verdict = p.check(Proposed::RoutingRule { rule: &r, count });
            assert_eq!(
                verdict.is_ok(),
                ok,
                "{} × {count}: {verdict:?}",
                r.action_json
            );
        }
        let err = p
            .check(Proposed::RoutingRule {
                rule: &rule(1, 0, valid),
                count: 1001,
            })
            .unwrap_err();
        assert!(err.contains("at most 1000"), "{err}");

        let config = crate::store::RoutingConfigRow {
            key_id: "key_1".into(),
            active: true,
            strategy: "fallback".into(),
            backends: vec![pb::Backend {
                model: "up/gpt-4o".into(),
                priority: 0,
                weight: 1,
            }],
            rules: Vec::new(),
            updated_at_ms: 0,
        };
        assert!(p.check(Proposed::RoutingConfig(&config)).is_ok());
        let no_backends = crate::store::RoutingConfigRow {
            backends: Vec::new(),
            ..config.clone()
        };
        assert!(p.check(Proposed::RoutingConfig(&no_backends)).is_err());

        s.routing_rules = vec![rule(1, 10, valid), rule(2, 50, valid), rule(3, 10, valid)];
        s.routing_configs = vec![config];
        let built = p.build(&s).unwrap().snapshot;
        let order: Vec<(i64, bool)> = built
            .routing_rules
            .iter()
            .map(|r| (r.id, r.enabled))
            .collect();
        assert_eq!(order, [(2, false), (1, true), (3, true)]);
        assert_eq!(built.routing_configs.len(), 1);
        assert_eq!(built.routing_configs[0].backends[0].model, "up/gpt-4o");
    }

    #[test]
    fn checks_of_models_and_rules_are_the_engines() {
        let (p, s) = state(1);
        assert!(p.check(Proposed::Models(&s.models)).is_ok());
        let mut bad = s.models.clone();
        bad[0].input_price_micros_per_mtok = -1;
        assert!(p
            .check(Proposed::Models(&bad))
            .unwrap_err()
            .contains("negative price"));
        let rule = |pattern: &str| crate::store::FirewallRuleRow {
            id: 1,
            name: "r".into(),
            priority: 0,
            is_enabled: true,
            scope: "prompt".into(),
            match_type: "regex".into(),
            pattern: pattern.into(),
            action: "block".into(),
            replacement: String::new(),
            key_id: String::new(),
            workspace_id: String::new(),
            max_match_chars: 0,
            check: "none".into(),
            template: String::new(),
            created_at_ms: 0,
            updated_at_ms: 0,
        };
        let cases = [
            ("a+b", 1, true),
            ("(", 1, false),
            ("a+b", MAX_RULES, true),
            ("a+b", MAX_RULES + 1, false),
        ];
        for (pattern, count, valid) in cases {
            let r = rule(pattern);
            let proposed = Proposed::FirewallRule { rule: &r, count };
            assert_eq!(p.check(proposed).is_ok(), valid, "{pattern} × {count}");
        }
    }
}
