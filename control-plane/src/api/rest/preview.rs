//! `POST /preview`: the routing decision and trace for a request body and key, computed by the
//! same code as the gRPC `PreviewDecision` ([`crate::api::grpc::preview::decide`]). Nothing is
//! sent to a provider.

use std::collections::HashMap;

use axum::extract::State;
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokenrouter_proto::admin::v1 as api;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::{ApiError, ApiJson};
use super::page::Data;
use super::ApiState;
use crate::api::grpc::preview::decide;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"client_api": "chat.completions", "body": {"model": "gpt-4o-mini",
    "messages": [{"role": "user", "content": "Write a haiku about routers"}]}}))]
pub struct PreviewRequest {
    /// Key whose rules and configuration apply; omit for none.
    #[serde(default)]
    pub key_id: Option<String>,
    /// chat.completions (default) | responses | messages | embeddings.
    #[serde(default)]
    pub client_api: Option<String>,
    /// The request body as the client would send it: a JSON object, or a string holding the
    /// raw body.
    pub body: Value,
    /// Request headers the rules may match (names lower-case), and BYOK headers.
    #[serde(default)]
    pub headers: HashMap<String, String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PreviewAttempt {
    pub provider: String,
    pub model: String,
    pub cluster: String,
}

/// The decision an edge would take.
#[derive(Debug, Serialize, ToSchema)]
pub struct Preview {
    /// In order: the first, then the failovers.
    pub attempts: Vec<PreviewAttempt>,
    pub mode: String,
    pub tier: String,
    /// The rule trace, as the edge sends it in `x-tokenrouter-rule-trace`.
    pub rule_trace: Value,
    pub warnings: Vec<String>,
    /// Envoy cluster of the first attempt (a chain cluster when it can fail over).
    pub cluster: String,
    /// When the edge would refuse the request: its error envelope; else null.
    pub error: Value,
}

fn json_or_null(text: &str) -> Value {
    if text.trim().is_empty() {
        return Value::Null;
    }
    serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_string()))
}

impl From<api::PreviewDecisionResponse> for Preview {
    fn from(d: api::PreviewDecisionResponse) -> Preview {
        Preview {
            attempts: d
                .attempts
                .into_iter()
                .map(|a| PreviewAttempt {
                    provider: a.provider,
                    model: a.model,
                    cluster: a.cluster,
                })
                .collect(),
            mode: d.mode,
            tier: d.tier,
            rule_trace: json_or_null(&d.rule_trace),
            warnings: d.warnings,
            cluster: d.cluster,
            error: json_or_null(&d.error_json),
        }
    }
}

pub fn router() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new().routes(routes!(preview_decision))
}

/// Preview the routing decision for a request.
#[utoipa::path(post, path = "/preview", tag = "preview", request_body = PreviewRequest,
    responses((status = 200, description = "The decision (or the error the edge would answer)",
        body = Data<Preview>)))]
async fn preview_decision(
    State(state): State<ApiState>,
    ApiJson(r): ApiJson<PreviewRequest>,
) -> Result<Json<Data<Preview>>, ApiError> {
    let body_json = match r.body {
        Value::String(raw) => raw,
        other => other.to_string(),
    };
    let request = api::PreviewDecisionRequest {
        key_id: r.key_id.unwrap_or_default(),
        client_api: r.client_api.unwrap_or_default(),
        body_json,
        headers: r.headers,
    };
    let decision = decide(&state.service, &state.previews, request)?;
    Ok(Json(Data::new(decision.into())))
}
