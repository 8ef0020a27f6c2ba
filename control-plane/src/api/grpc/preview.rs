//! `PreviewDecision`: the routing decision and trace for a request body and key, computed by
//! the engine's own [`routing::preview`] on the published snapshot and the live scores —
//! exactly what an edge holding that snapshot would decide. Nothing is sent to a provider.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokenrouter_engine::request::ClientApi;
use tokenrouter_engine::routing::{self, ScoreBoard};
use tokenrouter_engine::Snapshot;
use tokenrouter_proto::admin::v1 as api;
use tonic::{Response, Status};

use crate::service::{Service, ServiceError};

/// Largest body a preview takes.
pub const MAX_PREVIEW_BODY: usize = 4 * 1024 * 1024;

/// The last decoded snapshot, so previews do not rebuild it for every call.
#[derive(Default)]
pub struct SnapshotCache(Mutex<Option<(u64, Arc<Snapshot>)>>);

impl std::fmt::Debug for SnapshotCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SnapshotCache")
    }
}

impl SnapshotCache {
    fn get(&self, service: &Service) -> Result<Arc<Snapshot>, ServiceError> {
        let proto = service.snapshots().borrow().clone();
        let mut cached = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((version, snap)) = cached.as_ref() {
            if *version == proto.version {
                return Ok(Arc::clone(snap));
            }
        }
        let snap = Arc::new(
            Snapshot::from_proto((*proto).clone())
                .map_err(|e| ServiceError::Internal(format!("published snapshot: {e}")))?,
        );
        *cached = Some((proto.version, Arc::clone(&snap)));
        Ok(snap)
    }
}

pub fn preview(
    service: &Service,
    cache: &SnapshotCache,
    r: api::PreviewDecisionRequest,
) -> Result<Response<api::PreviewDecisionResponse>, Status> {
    decide(service, cache, r)
        .map(Response::new)
        .map_err(super::status)
}

/// The decision for one request; shared by the gRPC and REST APIs. A request the edge would
/// refuse is an `Ok` carrying `error_json`; only a malformed preview request is an `Err`.
pub fn decide(
    service: &Service,
    cache: &SnapshotCache,
    r: api::PreviewDecisionRequest,
) -> Result<api::PreviewDecisionResponse, ServiceError> {
    let client_api = if r.client_api.is_empty() {
        ClientApi::ChatCompletions
    } else {
        ClientApi::parse(&r.client_api)
            .filter(|a| *a != ClientApi::Models)
            .ok_or_else(|| {
                ServiceError::InvalidArgument(format!(
                    "client_api {:?} is not chat.completions, responses, messages or embeddings",
                    r.client_api
                ))
            })?
    };
    if r.body_json.len() > MAX_PREVIEW_BODY {
        return Err(ServiceError::InvalidArgument(format!(
            "body_json is larger than {MAX_PREVIEW_BODY} bytes"
        )));
    }
    let snapshot = cache.get(service)?;
    let scores = ScoreBoard::from_proto((*service.scores().borrow().clone()).clone());
    let headers: HashMap<String, String> = r.headers;
    let random = routing::config::mix(r.body_json.len() as u64);
    let now = crate::service::now_ms();
    let response = match routing::preview(
        &snapshot,
        &scores,
        &r.key_id,
        client_api,
        r.body_json.as_bytes(),
        &headers,
        random,
        now,
    ) {
        Ok(d) => api::PreviewDecisionResponse {
            attempts: d
                .attempts
                .iter()
                .map(|t| api::PreviewAttempt {
                    provider: t.provider.name.clone(),
                    model: t.upstream_model.clone(),
                    cluster: t.provider.cluster.clone(),
                })
                .collect(),
            mode: d.mode.map(|m| m.as_str().to_string()).unwrap_or_default(),
            tier: d.tier.map(|t| t.as_str().to_string()).unwrap_or_default(),
            rule_trace: d.trace.to_json(),
            warnings: d.warnings,
            cluster: d.cluster,
            error_json: String::new(),
        },
        Err(e) => api::PreviewDecisionResponse {
            error_json: String::from_utf8_lossy(&e.to_json("preview")).into_owned(),
            ..api::PreviewDecisionResponse::default()
        },
    };
    Ok(response)
}
