//! `/models`: the model catalogue with every field (prices both as exact decimal USD strings
//! and as integer micro-dollars per million tokens).

use axum::extract::State;
use axum::Json;
use serde::{Deserialize, Serialize};
use tokenrouter_engine::money::format_micros_usd;
use tokenrouter_proto::config::v1 as pb;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::{ApiError, ApiJson, ApiPath, ApiQuery};
use super::page::{paginate, Data, Page};
use super::ApiState;
use crate::service::{ModelPatch, NewModel};
use crate::store::ModelRow;

/// A catalogue model.
#[derive(Debug, Serialize, ToSchema)]
pub struct Model {
    pub id: String,
    pub provider_kind: String,
    /// The name sent to the provider.
    pub upstream_model: String,
    /// Decimal USD per million input tokens, exact, e.g. "2.5".
    pub input_usd_per_mtok: String,
    pub output_usd_per_mtok: String,
    pub cached_input_usd_per_mtok: String,
    pub input_price_micros_per_mtok: i64,
    pub output_price_micros_per_mtok: i64,
    pub cached_input_price_micros_per_mtok: i64,
    pub context_window: u32,
    pub max_output_tokens: u32,
    pub enabled: bool,
    pub tools: bool,
    pub vision: bool,
    pub json_mode: bool,
    pub streaming: bool,
    pub embeddings: bool,
    /// 0-100.
    pub quality: u32,
    pub tier: String,
    pub price_source: String,
    /// YYYY-MM-DD.
    pub price_as_of: String,
    pub display_name: String,
    /// 0 = as seeded from the built-in catalogue and never edited.
    pub updated_at_unix_ms: i64,
}

impl From<ModelRow> for Model {
    fn from(row: ModelRow) -> Model {
        let m = row.model;
        Model {
            input_usd_per_mtok: format_micros_usd(m.input_price_micros_per_mtok),
            output_usd_per_mtok: format_micros_usd(m.output_price_micros_per_mtok),
            cached_input_usd_per_mtok: format_micros_usd(m.cached_input_price_micros_per_mtok),
            id: m.id,
            provider_kind: m.provider_kind,
            upstream_model: m.upstream_model,
            input_price_micros_per_mtok: m.input_price_micros_per_mtok,
            output_price_micros_per_mtok: m.output_price_micros_per_mtok,
            cached_input_price_micros_per_mtok: m.cached_input_price_micros_per_mtok,
            context_window: m.context_window,
            max_output_tokens: m.max_output_tokens,
            enabled: m.enabled,
            tools: m.tools,
            vision: m.vision,
            json_mode: m.json_mode,
            streaming: m.streaming,
            embeddings: m.embeddings,
            quality: m.quality,
            tier: m.tier,
            price_source: m.price_source,
            price_as_of: m.price_as_of,
            display_name: m.display_name,
            updated_at_unix_ms: row.updated_at_ms,
        }
    }
}

/// A model to add, or to replace whole (same `provider_kind` and `id`). Prices: decimal USD
/// strings or micro-dollars; when both are given they must agree.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"id": "llama3.1-8b", "provider_kind": "openai-compatible",
    "input_usd_per_mtok": "0.05", "output_usd_per_mtok": "0.08", "context_window": 131072,
    "quality": 40, "tier": "simple"}))]
pub struct UpsertModel {
    pub id: String,
    pub provider_kind: String,
    /// Default: `id`.
    #[serde(default)]
    pub upstream_model: String,
    #[serde(default)]
    pub input_usd_per_mtok: String,
    #[serde(default)]
    pub output_usd_per_mtok: String,
    #[serde(default)]
    pub cached_input_usd_per_mtok: String,
    #[schema(minimum = 0)]
    #[serde(default)]
    pub input_price_micros_per_mtok: i64,
    #[schema(minimum = 0)]
    #[serde(default)]
    pub output_price_micros_per_mtok: i64,
    #[schema(minimum = 0)]
    #[serde(default)]
    pub cached_input_price_micros_per_mtok: i64,
    #[serde(default)]
    pub context_window: u32,
    #[serde(default)]
    pub max_output_tokens: u32,
    #[serde(default = "yes")]
    #[schema(default = true)]
    pub enabled: bool,
    #[serde(default)]
    pub tools: bool,
    #[serde(default)]
    pub vision: bool,
    #[serde(default)]
    pub json_mode: bool,
    #[serde(default = "yes")]
    #[schema(default = true)]
    pub streaming: bool,
    #[serde(default)]
    pub embeddings: bool,
    #[schema(minimum = 0, maximum = 100)]
    #[serde(default)]
    pub quality: u32,
    #[serde(default)]
    pub tier: String,
    #[serde(default)]
    pub price_source: String,
    #[serde(default)]
    pub price_as_of: String,
    #[serde(default)]
    pub display_name: String,
}

fn yes() -> bool {
    true
}

/// Fields to change; absent fields keep their value. Prices are decimal USD strings.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(default, deny_unknown_fields)]
#[schema(example = json!({"input_usd_per_mtok": "2.50", "enabled": true}))]
pub struct UpdateModel {
    pub enabled: Option<bool>,
    pub input_usd_per_mtok: Option<String>,
    pub output_usd_per_mtok: Option<String>,
    pub cached_input_usd_per_mtok: Option<String>,
    pub context_window: Option<u32>,
    #[schema(minimum = 0, maximum = 100)]
    pub quality: Option<u32>,
    pub tier: Option<String>,
    pub price_source: Option<String>,
    pub price_as_of: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListModels {
    /// Page size, 1-1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
    pub provider_kind: Option<String>,
    pub enabled: Option<bool>,
    pub tier: Option<String>,
}

pub fn router() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new()
        .routes(routes!(list_models, upsert_model))
        .routes(routes!(get_model, update_model))
}

/// List the catalogue, in catalogue order.
#[utoipa::path(get, path = "/models", tag = "models", params(ListModels),
    responses((status = 200, description = "A page of models", body = Page<Model>)))]
async fn list_models(
    State(state): State<ApiState>,
    ApiQuery(q): ApiQuery<ListModels>,
) -> Result<Json<Page<Model>>, ApiError> {
    let models: Vec<ModelRow> = state
        .service
        .list_models()
        .await?
        .into_iter()
        .filter(|r| {
            q.provider_kind
                .as_ref()
                .is_none_or(|k| &r.model.provider_kind == k)
        })
        .filter(|r| q.enabled.is_none_or(|e| r.model.enabled == e))
        .filter(|r| q.tier.as_ref().is_none_or(|t| &r.model.tier == t))
        .collect();
    let page = paginate(
        models,
        q.limit,
        q.cursor.as_deref(),
        |r| format!("{}/{}", r.model.provider_kind, r.model.id),
        Model::from,
    )?;
    Ok(Json(page))
}

/// Add a model, or replace every field of the one with the same kind and id.
#[utoipa::path(post, path = "/models", tag = "models", request_body = UpsertModel,
    responses((status = 200, description = "The stored model", body = Data<Model>, links(
        ("GetModel" = (operation_id = "get_model", parameters(
            ("provider_kind" = "$response.body#/data/provider_kind"),
            ("id" = "$response.body#/data/id")))),
        ("UpdateModel" = (operation_id = "update_model", parameters(
            ("provider_kind" = "$response.body#/data/provider_kind"),
            ("id" = "$response.body#/data/id")))),
    ))))]
async fn upsert_model(
    State(state): State<ApiState>,
    ApiJson(m): ApiJson<UpsertModel>,
) -> Result<Json<Data<Model>>, ApiError> {
    let new = NewModel {
        model: pb::Model {
            id: m.id,
            provider_kind: m.provider_kind,
            upstream_model: m.upstream_model,
            input_price_micros_per_mtok: m.input_price_micros_per_mtok,
            output_price_micros_per_mtok: m.output_price_micros_per_mtok,
            cached_input_price_micros_per_mtok: m.cached_input_price_micros_per_mtok,
            context_window: m.context_window,
            enabled: m.enabled,
            tools: m.tools,
            vision: m.vision,
            json_mode: m.json_mode,
            streaming: m.streaming,
            embeddings: m.embeddings,
            quality: m.quality,
            tier: m.tier,
            max_output_tokens: m.max_output_tokens,
            price_source: m.price_source,
            price_as_of: m.price_as_of,
            display_name: m.display_name,
        },
        input_usd_per_mtok: m.input_usd_per_mtok,
        output_usd_per_mtok: m.output_usd_per_mtok,
        cached_input_usd_per_mtok: m.cached_input_usd_per_mtok,
    };
    let row = state.service.upsert_model(new).await?;
    tracing::info!(kind = %row.model.provider_kind, id = %row.model.id, "model saved");
    Ok(Json(Data::new(row.into())))
}

/// Retrieve a model.
#[utoipa::path(get, path = "/models/{provider_kind}/{id}", tag = "models",
    params(
        ("provider_kind" = String, Path, description = "Provider kind"),
        ("id" = String, Path, description = "Model id (percent-encode a `/` in it)"),
    ),
    responses((status = 200, description = "The model", body = Data<Model>)))]
async fn get_model(
    State(state): State<ApiState>,
    ApiPath((kind, id)): ApiPath<(String, String)>,
) -> Result<Json<Data<Model>>, ApiError> {
    let row = state.service.get_model(&kind, &id).await?;
    Ok(Json(Data::new(row.into())))
}

/// Change some fields of a model.
#[utoipa::path(patch, path = "/models/{provider_kind}/{id}", tag = "models",
    request_body = UpdateModel,
    params(
        ("provider_kind" = String, Path, description = "Provider kind"),
        ("id" = String, Path, description = "Model id (percent-encode a `/` in it)"),
    ),
    responses((status = 200, description = "The updated model", body = Data<Model>)))]
async fn update_model(
    State(state): State<ApiState>,
    ApiPath((kind, id)): ApiPath<(String, String)>,
    ApiJson(u): ApiJson<UpdateModel>,
) -> Result<Json<Data<Model>>, ApiError> {
    let patch = ModelPatch {
        enabled: u.enabled,
        input_usd_per_mtok: u.input_usd_per_mtok,
        output_usd_per_mtok: u.output_usd_per_mtok,
        cached_input_usd_per_mtok: u.cached_input_usd_per_mtok,
        context_window: u.context_window,
        quality: u.quality,
        tier: u.tier,
        price_source: u.price_source,
        price_as_of: u.price_as_of,
    };
    let row = state.service.update_model(&kind, &id, patch).await?;
    tracing::info!(kind = %row.model.provider_kind, id = %row.model.id, "model updated");
    Ok(Json(Data::new(row.into())))
}
