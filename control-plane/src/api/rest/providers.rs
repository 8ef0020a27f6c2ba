//! `/providers`: upstream providers. The credential is sealed on the way in and never returned
//! (`has_credential` says whether there is one).

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::{ApiError, ApiJson, ApiPath, ApiQuery};
use super::page::{paginate, Data, Deleted, Page};
use super::ApiState;
use crate::publisher::cluster_name;
use crate::service::NewProvider;
use crate::store::ProviderRow;

#[derive(Debug, Serialize, ToSchema)]
pub struct Provider {
    pub name: String,
    /// openai | anthropic | gemini | mistral | deepseek | azure | openai-compatible | …
    pub kind: String,
    pub base_url: String,
    /// Whether a credential is stored (it is never returned).
    pub has_credential: bool,
    /// The Envoy cluster serving it.
    pub cluster: String,
    pub enabled: bool,
    pub created_at_unix_ms: i64,
}

impl From<ProviderRow> for Provider {
    fn from(p: ProviderRow) -> Provider {
        Provider {
            cluster: cluster_name(&p.name),
            has_credential: p.credential_sealed.is_some(),
            name: p.name,
            kind: p.kind,
            base_url: p.base_url,
            enabled: p.enabled,
            created_at_unix_ms: p.created_at_ms,
        }
    }
}

/// A provider to register (`POST /providers`; a taken name is a 409).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"name": "openai", "kind": "openai",
    "base_url": "https://api.openai.com/v1", "api_key": "sk-upstream"}))]
pub struct CreateProvider {
    /// 1-64 of a-z, 0-9, `-`, `_`.
    #[schema(pattern = "^[a-z0-9_-]{1,64}$")]
    pub name: String,
    pub kind: String,
    /// `http(s)://host[:port][/path]`.
    pub base_url: String,
    /// Stored encrypted; never returned. Omit for none.
    #[serde(default)]
    pub api_key: Option<String>,
}

/// A provider to register or replace (`PUT /providers/{name}`).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"kind": "openai-compatible", "base_url": "http://127.0.0.1:11434/v1"}))]
pub struct PutProvider {
    pub kind: String,
    pub base_url: String,
    /// Stored encrypted; never returned. Omit for none.
    #[serde(default)]
    pub api_key: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListProviders {
    /// Page size, 1-1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
    pub kind: Option<String>,
    pub enabled: Option<bool>,
}

pub fn router() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new()
        .routes(routes!(list_providers, create_provider))
        .routes(routes!(get_provider, put_provider, delete_provider))
}

async fn save(state: &ApiState, p: NewProvider) -> Result<Provider, ApiError> {
    let row = state.service.add_provider(p).await?;
    tracing::info!(name = %row.name, kind = %row.kind, "provider saved");
    Ok(row.into())
}

/// Register a provider.
#[utoipa::path(post, path = "/providers", tag = "providers", request_body = CreateProvider,
    responses((status = 201, description = "The provider", body = Data<Provider>,
        links(
            ("GetProvider" = (operation_id = "get_provider",
                parameters(("name" = "$response.body#/data/name")))),
            ("DeleteProvider" = (operation_id = "delete_provider",
                parameters(("name" = "$response.body#/data/name")))),
        ))))]
async fn create_provider(
    State(state): State<ApiState>,
    ApiJson(body): ApiJson<CreateProvider>,
) -> Result<(StatusCode, Json<Data<Provider>>), ApiError> {
    let provider = save(
        &state,
        NewProvider {
            name: body.name,
            kind: body.kind,
            base_url: body.base_url,
            api_key: body.api_key.unwrap_or_default(),
            replace: false,
            fallback_api_keys: Vec::new(),
        },
    )
    .await?;
    Ok((StatusCode::CREATED, Json(Data::new(provider))))
}

/// Register or replace the provider of this name.
#[utoipa::path(put, path = "/providers/{name}", tag = "providers", request_body = PutProvider,
    params(("name" = String, Path, description = "Provider name")),
    responses((status = 200, description = "The provider", body = Data<Provider>,
        links(
            ("GetProvider" = (operation_id = "get_provider",
                parameters(("name" = "$response.body#/data/name")))),
            ("DeleteProvider" = (operation_id = "delete_provider",
                parameters(("name" = "$response.body#/data/name")))),
        ))))]
async fn put_provider(
    State(state): State<ApiState>,
    ApiPath(name): ApiPath<String>,
    ApiJson(body): ApiJson<PutProvider>,
) -> Result<Json<Data<Provider>>, ApiError> {
    let provider = save(
        &state,
        NewProvider {
            name,
            kind: body.kind,
            base_url: body.base_url,
            api_key: body.api_key.unwrap_or_default(),
            replace: true,
            fallback_api_keys: Vec::new(),
        },
    )
    .await?;
    Ok(Json(Data::new(provider)))
}

/// List providers in registration order.
#[utoipa::path(get, path = "/providers", tag = "providers", params(ListProviders),
    responses((status = 200, description = "A page of providers", body = Page<Provider>)))]
async fn list_providers(
    State(state): State<ApiState>,
    ApiQuery(q): ApiQuery<ListProviders>,
) -> Result<Json<Page<Provider>>, ApiError> {
    let providers: Vec<ProviderRow> = state
        .service
        .list_providers()
        .await?
        .into_iter()
        .filter(|p| q.kind.as_ref().is_none_or(|k| &p.kind == k))
        .filter(|p| q.enabled.is_none_or(|e| p.enabled == e))
        .collect();
    let page = paginate(
        providers,
        q.limit,
        q.cursor.as_deref(),
        |p| p.name.clone(),
        Provider::from,
    )?;
    Ok(Json(page))
}

/// Retrieve a provider.
#[utoipa::path(get, path = "/providers/{name}", tag = "providers",
    params(("name" = String, Path, description = "Provider name")),
    responses((status = 200, description = "The provider", body = Data<Provider>)))]
async fn get_provider(
    State(state): State<ApiState>,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<Data<Provider>>, ApiError> {
    let provider = state.service.get_provider(&name).await?;
    Ok(Json(Data::new(provider.into())))
}

/// Remove a provider (its cluster goes away with the next push).
#[utoipa::path(delete, path = "/providers/{name}", tag = "providers",
    params(("name" = String, Path, description = "Provider name")),
    responses((status = 200, description = "Removed", body = Data<Deleted>)))]
async fn delete_provider(
    State(state): State<ApiState>,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<Data<Deleted>>, ApiError> {
    state.service.remove_provider(&name).await?;
    tracing::info!(name = %name, "provider removed");
    Ok(Json(Deleted::new(name.trim())))
}
