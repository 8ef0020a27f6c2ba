//! The REST listener: `/healthz`, `/metrics`, the built-in demo provider (`/demo/v1/*`) and the
//! management API under `/api/v1`, described by `/api/v1/openapi.json` (also `/openapi.json`).
//!
//! # Layout
//! - [`error`]: the error envelope and the extractors that answer malformed input with it.
//! - [`auth`]: who is calling (the admin token, or a gateway key that may read only its own
//!   logs, usage and balance, and top up its own key).
//! - [`page`]: the `{"data": …}` wrappers and cursor pagination of lists.
//! - one module per resource, wire ↔ domain conversion only (the service validates):
//!   [`keys`], [`providers`], [`models`], [`routing`] (routing rules and per-key routing
//!   configurations), [`firewall`], [`logs`] (request logs and the usage summary),
//!   [`preview`], [`workspaces`], [`metering`] (balances, credit, top-ups, the payment
//!   webhook, the limits objects).
//! - [`openapi`]: the document, generated from the handlers' annotations.

pub mod auth;
pub mod error;
pub mod firewall;
pub mod keys;
pub mod logs;
pub mod metering;
pub mod models;
pub mod openapi;
pub mod page;
pub mod preview;
pub mod providers;
pub mod routing;
pub mod workspaces;

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{middleware, Json, Router};
use utoipa_axum::router::OpenApiRouter;

use super::demo;
use super::grpc::preview::{SnapshotCache, MAX_PREVIEW_BODY};
use super::grpc::BearerAuth;
use crate::service::Service;
use error::ApiError;

/// Where the management API lives.
pub const API_PREFIX: &str = "/api/v1";

/// Largest request body the management API reads: a preview's body plus room for its envelope.
pub const MAX_API_BODY: usize = MAX_PREVIEW_BODY + 64 * 1024;

/// What every REST handler shares. Cheap to clone.
#[derive(Clone, Debug)]
pub struct ApiState {
    pub service: Service,
    /// Checks the admin token (the same check the gRPC Admin API uses).
    pub admin: BearerAuth,
    /// The decoded snapshot previews run on, rebuilt only when a new one is published.
    pub previews: Arc<SnapshotCache>,
}

/// The whole REST listener.
pub fn router(service: Service, admin: BearerAuth) -> Router {
    let state = ApiState {
        service,
        admin,
        previews: Arc::default(),
    };
    let (api, mut document) = api_router(state.clone()).split_for_parts();
    openapi::complete(&mut document);
    let document: Result<Bytes, String> = serde_json::to_vec(&document)
        .map(Bytes::from)
        .map_err(|e| e.to_string());
    let openapi_json = get(move || {
        let document = document.clone();
        async move { openapi_response(document) }
    });
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/demo/v1/chat/completions", post(demo::chat_completions))
        .route("/demo/v1/models", get(demo::models))
        .route("/topup/success", get(topup_success))
        .route("/topup/cancel", get(topup_cancel))
        .route("/openapi.json", openapi_json.clone())
        .route(&format!("{API_PREFIX}/openapi.json"), openapi_json)
        .merge(api)
        .fallback(error::not_found)
        .method_not_allowed_fallback(error::method_not_allowed)
        .with_state(state)
}

/// `/api/v1/*` with its OpenAPI document: admin-only resources, those a gateway key may also
/// call for itself, and the payment webhook (authenticated by its signature, not a token).
fn api_router(state: ApiState) -> OpenApiRouter<ApiState> {
    let admin = OpenApiRouter::new()
        .merge(keys::router())
        .merge(workspaces::router())
        .merge(metering::admin())
        .merge(providers::router())
        .merge(models::router())
        .merge(routing::router())
        .merge(firewall::router())
        .merge(preview::router())
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            auth::require_admin,
        ));
    let readers = logs::router()
        .merge(metering::readers())
        .route_layer(middleware::from_fn_with_state(state, auth::require_caller));
    let api = admin
        .merge(readers)
        .merge(metering::webhooks())
        .layer(DefaultBodyLimit::max(MAX_API_BODY));
    OpenApiRouter::with_openapi(openapi::base()).nest(API_PREFIX, api)
}

fn openapi_response(document: Result<Bytes, String>) -> Response {
    match document {
        Ok(bytes) => ([(header::CONTENT_TYPE, "application/json")], bytes).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "cannot encode the OpenAPI document");
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal error").into_response()
        }
    }
}

async fn healthz() -> impl IntoResponse {
    Json(serde_json::json!({"status": "ok"}))
}

/// Where Stripe sends a payer after paying (`TOKENROUTER_TOPUP_SUCCESS_URL`'s default).
async fn topup_success() -> &'static str {
    "Payment received. The credit is added when the payment provider confirms it to the \
     control plane (usually within seconds); check it with `tokenrouter balance`.\n"
}

/// Where Stripe sends a payer who gave up (`TOKENROUTER_TOPUP_CANCEL_URL`'s default).
async fn topup_cancel() -> &'static str {
    "Payment cancelled: nothing was charged. Run `tokenrouter topup` again for a new link.\n"
}

async fn metrics(State(state): State<ApiState>) -> impl IntoResponse {
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.service.metrics().render(),
    )
}
