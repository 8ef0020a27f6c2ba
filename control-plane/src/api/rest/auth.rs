//! Who is calling the management API, and what they may do.
//!
//! `Authorization: Bearer <admin token>` may do everything; the token is compared as the gRPC
//! Admin API compares it ([`BearerAuth::is_admin`], constant time). A gateway key
//! (`Bearer sk-tr-…`, found by its SHA-256 as the edge finds it) may read only its own request
//! logs, usage and balance and ask for a top-up of itself; every other endpoint answers it 403.
//! No credential, an unknown or a revoked key: 401. (The payment webhook takes no bearer token:
//! its signature authenticates it.)

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tokenrouter_engine::keys::KEY_PREFIX;

use super::error::ApiError;
use super::ApiState;
use crate::api::grpc::bearer_token;
use crate::store::KeyStatus;

/// The authenticated caller, in the request's extensions behind [`require_caller`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Caller {
    Admin,
    /// A gateway key, by id.
    Key(String),
}

/// Authenticates the request's bearer token.
pub async fn authenticate(state: &ApiState, headers: &HeaderMap) -> Result<Caller, ApiError> {
    let value = headers
        .get(header::AUTHORIZATION)
        .ok_or_else(|| {
            ApiError::unauthorized(
                "missing Authorization header: send `Bearer <admin token>` (or a gateway key for \
                 its own logs, usage, balance and top-ups)",
            )
        })?
        .to_str()
        .map_err(|_| ApiError::unauthorized("Authorization header is not valid text"))?;
    let token = bearer_token(value)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| ApiError::unauthorized("Authorization must be `Bearer <token>`"))?;
    if state.admin.is_admin(token) {
        return Ok(Caller::Admin);
    }
    if !token.starts_with(KEY_PREFIX) {
        return Err(ApiError::unauthorized("invalid admin token"));
    }
    match state.service.find_key_by_raw(token).await? {
        Some(key) if key.status == KeyStatus::Active => Ok(Caller::Key(key.id)),
        Some(_) => Err(ApiError::unauthorized("this API key has been revoked")),
        None => Err(ApiError::unauthorized("invalid API key")),
    }
}

/// Layer for admin-only routes.
pub async fn require_admin(State(state): State<ApiState>, req: Request, next: Next) -> Response {
    match authenticate(&state, req.headers()).await {
        Ok(Caller::Admin) => next.run(req).await,
        Ok(Caller::Key(_)) => ApiError::forbidden(
            "a gateway key may read only its own logs, usage and balance and top up itself; this \
             endpoint needs the admin token",
        )
        .into_response(),
        Err(e) => e.into_response(),
    }
}

/// Layer for routes a gateway key may read too: puts the [`Caller`] in the extensions.
pub async fn require_caller(
    State(state): State<ApiState>,
    mut req: Request,
    next: Next,
) -> Response {
    match authenticate(&state, req.headers()).await {
        Ok(caller) => {
            req.extensions_mut().insert(caller);
            next.run(req).await
        }
        Err(e) => e.into_response(),
    }
}
