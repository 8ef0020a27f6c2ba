//! Turns a stored [`ConfigState`] into what the edges receive, and publishes it.
//!
//! One component builds both outputs from the same state — the `config.v1.Snapshot` for
//! FilterSync and the [`ClusterSet`] for ADS — so they can never disagree. Every snapshot is
//! validated by the engine (`Snapshot::from_proto`, the very code the filter runs) before it is
//! committed (through the store's check) and again before it is published.

use std::sync::{Arc, Mutex};

use tokenrouter_engine::snapshot::{Snapshot as EngineSnapshot, SCHEMA};
use tokenrouter_proto::config::v1 as pb;
use tokio::sync::watch;

use crate::crypto::{provider_aad, Sealer};
use crate::metrics::Metrics;
use crate::store::ConfigState;
use crate::xds::{ClusterSet, ProviderCluster};

/// Cluster name of a provider (ARCHITECTURE.md, "Provider clusters").
pub fn cluster_name(provider: &str) -> String {
    format!("tr_provider_{provider}")
}

/// Both outputs of one configuration version.
#[derive(Debug)]
pub struct Built {
    pub snapshot: pb::Snapshot,
    pub clusters: ClusterSet,
}

pub struct Publisher {
    sealer: Sealer,
    snapshots: watch::Sender<Arc<pb::Snapshot>>,
    clusters: watch::Sender<ClusterSet>,
    /// Held while comparing versions and sending on both channels, so two concurrent publishes
    /// cannot interleave and an older version never replaces a newer one.
    order: Mutex<()>,
    metrics: Arc<Metrics>,
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
        let (clusters, _) = watch::channel(ClusterSet {
            version: 0,
            providers: Vec::new(),
        });
        Publisher {
            sealer,
            snapshots,
            clusters,
            order: Mutex::new(()),
            metrics,
        }
    }

    /// Builds and validates both outputs. The error is a message fit for the operator.
    pub fn build(&self, state: &ConfigState) -> Result<Built, String> {
        let mut providers = Vec::new();
        let mut clusters = Vec::new();
        for p in state.providers.iter().filter(|p| p.enabled) {
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
            let cluster = cluster_name(&p.name);
            clusters.push(ProviderCluster {
                name: p.name.clone(),
                cluster: cluster.clone(),
                base_url: p.base_url.clone(),
            });
            providers.push(pb::Provider {
                name: p.name.clone(),
                kind: p.kind.clone(),
                base_url: p.base_url.clone(),
                cluster,
                credential,
                enabled: p.enabled,
            });
        }
        let snapshot = pb::Snapshot {
            schema: SCHEMA,
            version: state.version,
            keys: state
                .keys
                .iter()
                .map(|k| pb::ApiKey {
                    id: k.id.clone(),
                    sha256: k.sha256.to_vec(),
                    name: k.name.clone(),
                    workspace_id: k.workspace_id.clone(),
                    revoked: k.status == crate::store::KeyStatus::Revoked,
                })
                .collect(),
            providers,
            models: state.models.clone(),
            settings: Some(pb::Settings {
                max_request_body_bytes: 0,
            }),
            firewall_rules: state
                .firewall_rules
                .iter()
                .map(crate::store::FirewallRuleRow::to_proto)
                .collect(),
        };
        EngineSnapshot::from_proto(snapshot.clone()).map_err(|e| e.to_string())?;
        Ok(Built {
            snapshot,
            clusters: ClusterSet {
                version: state.version,
                providers: clusters,
            },
        })
    }

    /// The store's pre-commit check: the state must build into a valid snapshot.
    pub fn check(&self, state: &ConfigState) -> Result<(), String> {
        self.build(state).map(drop)
    }

    /// Builds and publishes `state` unless a newer version is already out. Returns whether it
    /// was published.
    pub fn publish(&self, state: &ConfigState) -> Result<bool, String> {
        let built = self.build(state)?;
        let _order = self
            .order
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if built.snapshot.version <= self.snapshots.borrow().version {
            return Ok(false);
        }
        let version = built.snapshot.version;
        self.clusters.send_replace(built.clusters);
        self.snapshots.send_replace(Arc::new(built.snapshot));
        self.metrics
            .config_version
            .store(version, std::sync::atomic::Ordering::Relaxed);
        tracing::info!(version, "configuration published");
        Ok(true)
    }

    pub fn snapshots(&self) -> watch::Receiver<Arc<pb::Snapshot>> {
        self.snapshots.subscribe()
    }

    pub fn clusters(&self) -> watch::Receiver<ClusterSet> {
        self.clusters.subscribe()
    }

    /// Version currently published (0 before the first publish).
    pub fn version(&self) -> u64 {
        self.snapshots.borrow().version
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
            }],
            providers: vec![ProviderRow {
                name: "up".into(),
                kind: "openai".into(),
                base_url: "http://127.0.0.1:1/v1".into(),
                credential_sealed: Some(sealed),
                enabled: true,
                created_at_ms: 1,
            }],
            models: tokenrouter_engine::catalogue::builtin().unwrap(),
            firewall_rules: Vec::new(),
        };
        (Publisher::new(sealer, Arc::new(Metrics::default())), state)
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
        let (p, mut s) = state(1);
        s.providers[0].kind = "nonsense".into();
        assert!(p.check(&s).is_err());
        let (p, mut s) = state(1);
        s.providers[0].credential_sealed = Some(vec![0; 40]);
        assert!(p.check(&s).unwrap_err().contains("could not be decrypted"));
        // Disabled providers are left out, so they cannot break the snapshot.
        s.providers[0].enabled = false;
        let built = p.build(&s).unwrap();
        assert!(built.snapshot.providers.is_empty() && built.clusters.providers.is_empty());
    }
}
