//! `/keys`: gateway keys, each with its totals over the request logs. The raw key is in the
//! create answer only; only its SHA-256 is kept.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use tokenrouter_engine::money::format_picos_usd;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::{ApiError, ApiJson, ApiPath, ApiQuery};
use super::metering::{EffectiveLimits, Limits};
use super::page::{paginate, Data, Page};
use super::ApiState;
use crate::service::{parse_optional_balance_usd, KeyPatch, KeyWithUsage};
use crate::store::KeyStatus;

/// A gateway key (never the raw key) and its totals over every request made with it.
#[derive(Debug, Serialize, ToSchema)]
pub struct Key {
    /// `key_<hex>`.
    pub id: String,
    pub name: String,
    /// The raw key's first characters, e.g. `sk-tr-abcd`, for recognising it.
    pub key_prefix: String,
    pub status: KeyState,
    pub workspace_id: String,
    pub created_at_unix_ms: i64,
    /// Null while active.
    pub revoked_at_unix_ms: Option<i64>,
    /// Request and response bodies of this key's requests are kept in the request log.
    pub store_bodies: bool,
    /// Every request made with the key, whatever its status.
    pub requests: u64,
    /// Requests that did not succeed (status not 2xx).
    pub failed_requests: u64,
    /// Tokens and spend count successful (2xx) requests only.
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub total_tokens: u64,
    /// Exact decimal USD, e.g. "0.00135".
    pub spend_usd: String,
    /// When the control plane last received a request of this key; null = never used.
    pub last_used_at_unix_ms: Option<i64>,
    /// The key's own balance, exact decimal USD; null = not metered (its requests are never
    /// refused for credit, unless its workspace has a balance).
    pub balance_usd: Option<String>,
    /// The key's own limits (null fields inherit from its workspace).
    pub limits: Limits,
    /// What is enforced after inheriting from the workspace and the server's defaults.
    pub effective_limits: EffectiveLimits,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum KeyState {
    Active,
    Revoked,
}

impl From<KeyStatus> for KeyState {
    fn from(s: KeyStatus) -> KeyState {
        match s {
            KeyStatus::Active => KeyState::Active,
            KeyStatus::Revoked => KeyState::Revoked,
        }
    }
}

impl From<KeyWithUsage> for Key {
    fn from(
        KeyWithUsage {
            key: k,
            usage: u,
            balance_picos,
            effective,
        }: KeyWithUsage,
    ) -> Key {
        Key {
            balance_usd: balance_picos.map(|b| format_picos_usd(i128::from(b))),
            limits: k.limits.into(),
            effective_limits: effective.into(),
            status: k.status.into(),
            id: k.id,
            name: k.name,
            key_prefix: k.key_prefix,
            workspace_id: k.workspace_id,
            created_at_unix_ms: k.created_at_ms,
            revoked_at_unix_ms: k.revoked_at_ms,
            store_bodies: k.store_bodies,
            requests: u.requests,
            failed_requests: u.failed_requests,
            input_tokens: u.input_tokens,
            output_tokens: u.output_tokens,
            total_tokens: u.total_tokens(),
            spend_usd: u.spend_usd(),
            last_used_at_unix_ms: u.last_used_at_ms,
        }
    }
}

/// A new key, with the raw key: shown exactly once.
#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedKey {
    #[serde(flatten)]
    pub key: Key,
    /// The raw `sk-tr-…` key. Returned only here.
    pub raw: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"name": "ci", "workspace_id": "default", "balance_usd": "5",
    "limits": {"rps": 10}}))]
pub struct CreateKey {
    /// 1-100 characters.
    #[schema(min_length = 1, max_length = 100)]
    pub name: String,
    /// 1-64 of a-z, 0-9, `-`, `_`; empty or absent = `default`.
    #[serde(default)]
    #[schema(pattern = "^[a-z0-9_-]{0,64}$")]
    pub workspace_id: Option<String>,
    /// A starting balance, exact decimal USD (e.g. "5" or "0.25"; "0" = metered with nothing
    /// to spend yet): the key's requests are charged to it and refused with 402 once it cannot
    /// pay. Absent or null = not metered.
    #[serde(default)]
    pub balance_usd: Option<String>,
    /// The key's own limits; absent fields inherit from its workspace.
    #[serde(default)]
    pub limits: Option<Limits>,
}

/// The fields to change; absent ones stay as they are (`{}` changes nothing).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"name": "ci-prod", "store_bodies": true}))]
pub struct UpdateKey {
    /// 1-100 characters.
    #[schema(min_length = 1, max_length = 100)]
    pub name: Option<String>,
    /// Record the request and response bodies of this key's requests (firewall masks applied)
    /// in the request log, from the next snapshot on.
    pub store_bodies: Option<bool>,
    /// Set fields replace the key's limits; absent or null ones are kept.
    #[serde(default)]
    pub limits: Option<Limits>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListKeys {
    /// Page size, 1-1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
    pub status: Option<KeyState>,
    pub workspace_id: Option<String>,
}

pub fn router() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new()
        .routes(routes!(list_keys, create_key))
        .routes(routes!(get_key, update_key, delete_key))
        .routes(routes!(revoke_key))
}

/// Create a key.
#[utoipa::path(post, path = "/keys", tag = "keys", request_body = CreateKey,
    responses((status = 201, description = "The key; `raw` is shown only here",
        body = Data<CreatedKey>, links(
            ("GetKey" = (operation_id = "get_key",
                parameters(("id" = "$response.body#/data/id")))),
            ("RevokeKey" = (operation_id = "revoke_key",
                parameters(("id" = "$response.body#/data/id")))),
            ("UpdateKey" = (operation_id = "update_key",
                parameters(("id" = "$response.body#/data/id")))),
            ("SetRoutingConfig" = (operation_id = "put_routing_config",
                parameters(("key_id" = "$response.body#/data/id")))),
        ))))]
async fn create_key(
    State(state): State<ApiState>,
    ApiJson(body): ApiJson<CreateKey>,
) -> Result<(StatusCode, Json<Data<CreatedKey>>), ApiError> {
    let balance = parse_optional_balance_usd(body.balance_usd.as_deref())?;
    let (key, raw) = state
        .service
        .create_key_with(
            &body.name,
            body.workspace_id.as_deref().unwrap_or(""),
            balance,
            body.limits.unwrap_or_default().into(),
        )
        .await?;
    tracing::info!(id = %key.id, name = %key.name, "key created");
    let created = CreatedKey {
        key: state.service.key_usage(key).await?.into(),
        raw,
    };
    Ok((StatusCode::CREATED, Json(Data::new(created))))
}

/// List keys, oldest first, with their totals (requests, tokens, spend, last use).
#[utoipa::path(get, path = "/keys", tag = "keys", params(ListKeys),
    responses((status = 200, description = "A page of keys", body = Page<Key>)))]
async fn list_keys(
    State(state): State<ApiState>,
    ApiQuery(q): ApiQuery<ListKeys>,
) -> Result<Json<Page<Key>>, ApiError> {
    let keys: Vec<KeyWithUsage> = state
        .service
        .list_keys_with_usage()
        .await?
        .into_iter()
        .filter(|k| q.status.is_none_or(|s| KeyState::from(k.key.status) == s))
        .filter(|k| {
            q.workspace_id
                .as_ref()
                .is_none_or(|w| &k.key.workspace_id == w)
        })
        .collect();
    let page = paginate(
        keys,
        q.limit,
        q.cursor.as_deref(),
        |k| k.key.id.clone(),
        Key::from,
    )?;
    Ok(Json(page))
}

/// Retrieve a key with its totals.
#[utoipa::path(get, path = "/keys/{id}", tag = "keys",
    params(("id" = String, Path, description = "Key id")),
    responses((status = 200, description = "The key", body = Data<Key>)))]
async fn get_key(
    State(state): State<ApiState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Data<Key>>, ApiError> {
    let key = state.service.get_key(&id).await?;
    let key = state.service.key_usage(key).await?;
    Ok(Json(Data::new(key.into())))
}

/// Rename a key, switch the recording of its request and response bodies, or change its
/// limits. Credit is added with `POST /credits`.
#[utoipa::path(patch, path = "/keys/{id}", tag = "keys", request_body = UpdateKey,
    params(("id" = String, Path, description = "Key id")),
    responses((status = 200, description = "The updated key", body = Data<Key>)))]
async fn update_key(
    State(state): State<ApiState>,
    ApiPath(id): ApiPath<String>,
    ApiJson(u): ApiJson<UpdateKey>,
) -> Result<Json<Data<Key>>, ApiError> {
    let patch = KeyPatch {
        name: u.name,
        store_bodies: u.store_bodies,
        limits: u.limits.unwrap_or_default().into(),
    };
    let key = state.service.update_key(&id, patch).await?;
    tracing::info!(id = %key.id, name = %key.name, store_bodies = key.store_bodies, "key updated");
    let key = state.service.key_usage(key).await?;
    Ok(Json(Data::new(key.into())))
}

/// Revoke a key (same as `POST /keys/{id}/revoke`); the key stays listed as revoked.
#[utoipa::path(delete, path = "/keys/{id}", tag = "keys",
    params(("id" = String, Path, description = "Key id")),
    responses((status = 200, description = "The revoked key", body = Data<Key>)))]
async fn delete_key(
    state: State<ApiState>,
    id: ApiPath<String>,
) -> Result<Json<Data<Key>>, ApiError> {
    revoke_key(state, id).await
}

/// Revoke a key: requests with it get 401 from the next snapshot on. Idempotent.
#[utoipa::path(post, path = "/keys/{id}/revoke", tag = "keys",
    params(("id" = String, Path, description = "Key id")),
    responses((status = 200, description = "The revoked key", body = Data<Key>)))]
async fn revoke_key(
    State(state): State<ApiState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Data<Key>>, ApiError> {
    let key = state.service.revoke_key(&id).await?;
    tracing::info!(id = %key.id, "key revoked");
    let key = state.service.key_usage(key).await?;
    Ok(Json(Data::new(key.into())))
}
