//! The REST listener: `/healthz`, `/metrics` and the built-in demo provider (`/demo/v1/*`).
//! The REST management API (`/api/v1/*`) comes later.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};

use crate::service::Service;

use super::demo;

pub fn router(service: Service) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/demo/v1/chat/completions", post(demo::chat_completions))
        .route("/demo/v1/models", get(demo::models))
        .with_state(service)
}

async fn healthz() -> impl IntoResponse {
    Json(serde_json::json!({"status": "ok"}))
}

async fn metrics(State(service): State<Service>) -> impl IntoResponse {
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        service.metrics().render(),
    )
}
