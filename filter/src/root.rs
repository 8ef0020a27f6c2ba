//! The root context: reads the role from the plugin configuration and hands out HTTP contexts.

use std::time::Duration;

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::ContextType;
use serde::Deserialize;

use crate::{edge, host, sync, upstream, vm};

/// How often a worker's edge looks for a new configuration version: the bound a revoke waits
/// on the worker (one 8-byte shared-data read when nothing changed).
const EDGE_TICK: Duration = Duration::from_millis(20);

/// How often a provider cluster's upstream filter looks. There is one per cluster (up to
/// hundreds with chain clusters), and in the usual deployment it shares the edge's VM, whose
/// configuration the edge's tick already keeps current: a look within this period of another
/// root's reads nothing (`vm::refresh_snapshot_unless_checked`), so it only matters for a VM
/// without an edge, where one upstream root reads for all.
const UPSTREAM_TICK_MS: i64 = 100;
const UPSTREAM_TICK: Duration = Duration::from_millis(UPSTREAM_TICK_MS.unsigned_abs());

#[derive(Deserialize)]
#[serde(tag = "role", rename_all = "lowercase")]
enum RoleConfig {
    Edge {
        /// This Envoy's body limit (its listener buffer is sized for it); the snapshot's
        /// limit applies when it is lower.
        #[serde(default)]
        max_request_body_bytes: Option<u64>,
        /// The control plane's gRPC cluster, for `Idempotency-Key` verdicts.
        #[serde(default)]
        control_cluster: Option<String>,
        /// Token of the control plane's edge services.
        #[serde(default)]
        token: Option<String>,
        /// This Envoy has the control plane's `tr_direct_<provider>` clusters (CDS from the
        /// control plane): a one-attempt request goes there, prepared by the edge.
        #[serde(default)]
        direct_clusters: bool,
        /// The route's per-try timeout (ms), when it has one: the edge then sends its own only
        /// when the snapshot's differs.
        #[serde(default)]
        route_per_try_timeout_ms: Option<u32>,
        /// Envoy's connection manager copies `x-request-id` into every response.
        #[serde(default)]
        request_id_in_response: bool,
        /// The route rewrites a direct request's authority from its endpoint's hostname.
        #[serde(default)]
        auto_host_rewrite: bool,
    },
    Upstream {
        provider: String,
    },
    Sync(sync::SyncConfig),
}

#[derive(Default)]
pub enum Root {
    /// No valid configuration: HTTP contexts answer 503 rather than pass traffic unchecked.
    #[default]
    Unconfigured,
    Edge(edge::EdgeConfig),
    Upstream {
        provider: String,
    },
    Sync(Box<sync::Sync>),
}

impl Context for Root {
    fn on_done(&mut self) -> bool {
        // Records a worker still holds go to the sync singleton before its VM stops.
        if let Root::Edge(_) = self {
            vm::flush_usage_backlog();
        }
        true
    }

    fn on_grpc_stream_message(&mut self, token: u32, size: usize) {
        if let Root::Sync(s) = self {
            s.on_message(token, size);
        }
    }

    fn on_grpc_stream_close(&mut self, token: u32, status: u32) {
        if let Root::Sync(s) = self {
            s.on_close(token, status);
        }
    }
}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let raw = host::plugin_configuration().unwrap_or_default();
        let config: RoleConfig = match serde_json::from_slice(&raw) {
            Ok(c) => c,
            Err(e) => {
                log::error!("invalid plugin configuration: {e}");
                return false;
            }
        };
        *self = match config {
            RoleConfig::Edge {
                max_request_body_bytes,
                control_cluster,
                token,
                direct_clusters,
                route_per_try_timeout_ms,
                request_id_in_response,
                auto_host_rewrite,
            } => {
                vm::refresh_snapshot();
                vm::refresh_scores();
                Root::Edge(edge::EdgeConfig {
                    metrics: edge::Metrics::define(),
                    max_request_body_bytes,
                    direct_clusters,
                    envoy_does: edge::EnvoyDoes {
                        route_per_try_timeout_ms,
                        request_id_in_response,
                        // Only a direct request relies on it, and only Envoys with direct
                        // clusters have them.
                        auto_host_rewrite: auto_host_rewrite && direct_clusters,
                    },
                    control: control_cluster.zip(token).map(|(cluster, token)| {
                        std::rc::Rc::new(edge::ControlCalls { cluster, token })
                    }),
                })
            }
            RoleConfig::Upstream { provider } => {
                vm::refresh_snapshot();
                Root::Upstream { provider }
            }
            RoleConfig::Sync(cfg) => match sync::Sync::start(cfg) {
                Ok(s) => Root::Sync(Box::new(s)),
                Err(e) => {
                    log::error!("sync service failed to start: {e}");
                    return false;
                }
            },
        };
        let tick = match self {
            Root::Sync(_) => sync::TICK,
            Root::Edge(_) => EDGE_TICK,
            _ => UPSTREAM_TICK,
        };
        if let Err(e) = proxy_wasm::hostcalls::set_tick_period(tick) {
            log::error!("cannot set tick period: {e:?}");
        }
        true
    }

    fn on_tick(&mut self) {
        match self {
            Root::Sync(s) => s.on_tick(),
            Root::Edge(_) => {
                let now = host::now_ms();
                vm::refresh_snapshot_unless_checked(now, 0);
                // Only the edge routes, so only it reads the scores.
                vm::refresh_scores_when_due(now);
                vm::flush_usage_backlog_when_due(now);
            }
            Root::Upstream { .. } => {
                vm::refresh_snapshot_unless_checked(host::now_ms(), UPSTREAM_TICK_MS)
            }
            Root::Unconfigured => {}
        }
    }

    fn on_queue_ready(&mut self, queue_id: u32) {
        if let Root::Sync(s) = self {
            s.on_queue_ready(queue_id);
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(match self {
            Root::Edge(config) => Box::new(edge::Edge::new(config.clone())),
            Root::Upstream { provider } => Box::new(upstream::Upstream::new(provider.clone())),
            Root::Sync(_) | Root::Unconfigured => Box::new(edge::Unavailable),
        })
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}
