//! `/routing_rules` (seed 003's resource: `match_json` / `action_json` are JSON objects on the
//! wire, stored as the JSON text the engine validates) and `/routing_configs/{key_id}` (one
//! routing configuration per key).

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokenrouter_proto::config::v1 as pb;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::{ApiError, ApiJson, ApiPath, ApiQuery};
use super::page::{paginate, Data, Deleted, Page};
use super::ApiState;
use crate::service::{NewRoutingRule, RoutingRulePatch};
use crate::store::{RoutingConfigRow, RoutingRuleRow};

/// A JSON object as received.
type Object = Map<String, Value>;

/// Stored JSON text as a value: `{}` when empty, the text itself if it does not parse (it
/// always does: the engine validated it before it was stored).
fn json_value(text: &str) -> Value {
    if text.trim().is_empty() {
        return Value::Object(Map::new());
    }
    serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_string()))
}

fn json_text(object: Object) -> String {
    Value::Object(object).to_string()
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RoutingRule {
    pub id: i64,
    pub name: String,
    /// Higher first.
    pub priority: i32,
    pub is_enabled: bool,
    /// Conditions, all of which must hold, e.g. `{"task": "coding"}`.
    #[schema(value_type = Object)]
    pub match_json: Value,
    /// What to do, e.g. `{"set_provider": "openai", "set_model": "gpt-4o"}`.
    #[schema(value_type = Object)]
    pub action_json: Value,
    /// Empty = every key.
    pub key_id: String,
    pub created_at_unix_ms: i64,
    pub updated_at_unix_ms: i64,
}

impl From<RoutingRuleRow> for RoutingRule {
    fn from(r: RoutingRuleRow) -> RoutingRule {
        RoutingRule {
            match_json: json_value(&r.match_json),
            action_json: json_value(&r.action_json),
            id: r.id,
            name: r.name,
            priority: r.priority,
            is_enabled: r.is_enabled,
            key_id: r.key_id,
            created_at_unix_ms: r.created_at_ms,
            updated_at_unix_ms: r.updated_at_ms,
        }
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"name": "Coding Tasks → OpenAI", "priority": 100,
    "is_enabled": true, "match_json": {"task": "coding"},
    "action_json": {"set_provider": "openai", "set_model": "gpt-4o"}}))]
pub struct CreateRoutingRule {
    pub name: String,
    #[serde(default)]
    pub priority: i32,
    #[serde(default = "yes")]
    #[schema(default = true)]
    pub is_enabled: bool,
    #[schema(value_type = Object)]
    pub match_json: Object,
    #[schema(value_type = Object)]
    pub action_json: Object,
    /// Only this key's requests; omit for every key.
    #[serde(default)]
    pub key_id: Option<String>,
}

fn yes() -> bool {
    true
}

/// Fields to change; absent (or null) fields keep their value.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(default, deny_unknown_fields)]
#[schema(example = json!({"priority": 150, "is_enabled": false}))]
pub struct UpdateRoutingRule {
    pub name: Option<String>,
    pub priority: Option<i32>,
    pub is_enabled: Option<bool>,
    #[schema(value_type = Option<Object>)]
    pub match_json: Option<Object>,
    #[schema(value_type = Option<Object>)]
    pub action_json: Option<Object>,
    /// Empty string = every key.
    pub key_id: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListRoutingRules {
    /// Page size, 1-1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
    pub is_enabled: Option<bool>,
    pub key_id: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Backend {
    /// `provider/model` or a catalogue model.
    pub model: String,
    /// Fallback order, lower first.
    #[serde(default)]
    pub priority: i32,
    /// Traffic-split weight (0 counts as 1).
    #[serde(default)]
    pub weight: u32,
}

impl From<pb::Backend> for Backend {
    fn from(b: pb::Backend) -> Backend {
        Backend {
            model: b.model,
            priority: b.priority,
            weight: b.weight,
        }
    }
}

impl From<Backend> for pb::Backend {
    fn from(b: Backend) -> pb::Backend {
        pb::Backend {
            model: b.model,
            priority: b.priority,
            weight: b.weight,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ConfigRule {
    pub name: String,
    #[schema(value_type = Object)]
    pub match_json: Value,
    pub backends: Vec<Backend>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewConfigRule {
    pub name: String,
    #[schema(value_type = Object)]
    pub match_json: Object,
    #[serde(default)]
    pub backends: Vec<Backend>,
}

/// A key's routing configuration.
#[derive(Debug, Serialize, ToSchema)]
pub struct RoutingConfig {
    pub key_id: String,
    /// Inactive configurations are kept but not enforced.
    pub active: bool,
    /// fallback | split | rules.
    pub strategy: String,
    pub backends: Vec<Backend>,
    /// `rules` strategy only.
    pub rules: Vec<ConfigRule>,
    pub updated_at_unix_ms: i64,
}

impl From<RoutingConfigRow> for RoutingConfig {
    fn from(c: RoutingConfigRow) -> RoutingConfig {
        RoutingConfig {
            key_id: c.key_id,
            active: c.active,
            strategy: c.strategy,
            backends: c.backends.into_iter().map(Backend::from).collect(),
            rules: c
                .rules
                .into_iter()
                .map(|r| ConfigRule {
                    name: r.name,
                    match_json: json_value(&r.match_json),
                    backends: r.backends.into_iter().map(Backend::from).collect(),
                })
                .collect(),
            updated_at_unix_ms: c.updated_at_ms,
        }
    }
}

/// The configuration to store for a key (replaces any it has).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"strategy": "fallback", "backends": [
    {"model": "gpt-4o", "priority": 0}, {"model": "gpt-4o-mini", "priority": 1}]}))]
pub struct PutRoutingConfig {
    /// When given, must be the key in the path.
    #[serde(default)]
    pub key_id: Option<String>,
    #[serde(default = "yes")]
    #[schema(default = true)]
    pub active: bool,
    /// fallback | split | rules.
    pub strategy: String,
    #[serde(default)]
    pub backends: Vec<Backend>,
    #[serde(default)]
    pub rules: Vec<NewConfigRule>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListRoutingConfigs {
    /// Page size, 1-1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
    pub active: Option<bool>,
    pub strategy: Option<String>,
}

pub fn router() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new()
        .routes(routes!(list_routing_rules, create_routing_rule))
        .routes(routes!(
            get_routing_rule,
            update_routing_rule,
            delete_routing_rule
        ))
        .routes(routes!(list_routing_configs))
        .routes(routes!(
            get_routing_config,
            put_routing_config,
            delete_routing_config
        ))
}

/// Create a routing rule.
#[utoipa::path(post, path = "/routing_rules", tag = "routing", request_body = CreateRoutingRule,
    responses((status = 201, description = "The rule", body = Data<RoutingRule>, links(
        ("GetRoutingRule" = (operation_id = "get_routing_rule",
            parameters(("id" = "$response.body#/data/id")))),
        ("UpdateRoutingRule" = (operation_id = "update_routing_rule",
            parameters(("id" = "$response.body#/data/id")))),
        ("DeleteRoutingRule" = (operation_id = "delete_routing_rule",
            parameters(("id" = "$response.body#/data/id")))),
    ))))]
async fn create_routing_rule(
    State(state): State<ApiState>,
    ApiJson(r): ApiJson<CreateRoutingRule>,
) -> Result<(StatusCode, Json<Data<RoutingRule>>), ApiError> {
    let rule = state
        .service
        .create_routing_rule(NewRoutingRule {
            name: r.name,
            priority: r.priority,
            is_enabled: r.is_enabled,
            match_json: json_text(r.match_json),
            action_json: json_text(r.action_json),
            key_id: r.key_id.unwrap_or_default(),
        })
        .await?;
    tracing::info!(id = rule.id, name = %rule.name, "routing rule created");
    Ok((StatusCode::CREATED, Json(Data::new(rule.into()))))
}

/// List routing rules by id.
#[utoipa::path(get, path = "/routing_rules", tag = "routing", params(ListRoutingRules),
    responses((status = 200, description = "A page of rules", body = Page<RoutingRule>)))]
async fn list_routing_rules(
    State(state): State<ApiState>,
    ApiQuery(q): ApiQuery<ListRoutingRules>,
) -> Result<Json<Page<RoutingRule>>, ApiError> {
    let rules: Vec<RoutingRuleRow> = state
        .service
        .list_routing_rules()
        .await?
        .into_iter()
        .filter(|r| q.is_enabled.is_none_or(|e| r.is_enabled == e))
        .filter(|r| q.key_id.as_ref().is_none_or(|k| &r.key_id == k))
        .collect();
    let page = paginate(
        rules,
        q.limit,
        q.cursor.as_deref(),
        |r| r.id.to_string(),
        RoutingRule::from,
    )?;
    Ok(Json(page))
}

/// Retrieve a routing rule.
#[utoipa::path(get, path = "/routing_rules/{id}", tag = "routing",
    params(("id" = i64, Path, description = "Rule id")),
    responses((status = 200, description = "The rule", body = Data<RoutingRule>)))]
async fn get_routing_rule(
    State(state): State<ApiState>,
    ApiPath(id): ApiPath<i64>,
) -> Result<Json<Data<RoutingRule>>, ApiError> {
    let rule = state.service.get_routing_rule(id).await?;
    Ok(Json(Data::new(rule.into())))
}

/// Change some fields of a routing rule.
#[utoipa::path(patch, path = "/routing_rules/{id}", tag = "routing",
    request_body = UpdateRoutingRule,
    params(("id" = i64, Path, description = "Rule id")),
    responses((status = 200, description = "The updated rule", body = Data<RoutingRule>)))]
async fn update_routing_rule(
    State(state): State<ApiState>,
    ApiPath(id): ApiPath<i64>,
    ApiJson(u): ApiJson<UpdateRoutingRule>,
) -> Result<Json<Data<RoutingRule>>, ApiError> {
    let patch = RoutingRulePatch {
        name: u.name,
        priority: u.priority,
        is_enabled: u.is_enabled,
        match_json: u.match_json.map(json_text),
        action_json: u.action_json.map(json_text),
        key_id: u.key_id,
    };
    let rule = state.service.update_routing_rule(id, patch).await?;
    tracing::info!(id = rule.id, name = %rule.name, "routing rule updated");
    Ok(Json(Data::new(rule.into())))
}

/// Delete a routing rule.
#[utoipa::path(delete, path = "/routing_rules/{id}", tag = "routing",
    params(("id" = i64, Path, description = "Rule id")),
    responses((status = 200, description = "Deleted", body = Data<Deleted>)))]
async fn delete_routing_rule(
    State(state): State<ApiState>,
    ApiPath(id): ApiPath<i64>,
) -> Result<Json<Data<Deleted>>, ApiError> {
    state.service.delete_routing_rule(id).await?;
    tracing::info!(id, "routing rule deleted");
    Ok(Json(Deleted::new(id)))
}

/// List routing configurations by key id.
#[utoipa::path(get, path = "/routing_configs", tag = "routing", params(ListRoutingConfigs),
    responses((status = 200, description = "A page of configurations",
        body = Page<RoutingConfig>)))]
async fn list_routing_configs(
    State(state): State<ApiState>,
    ApiQuery(q): ApiQuery<ListRoutingConfigs>,
) -> Result<Json<Page<RoutingConfig>>, ApiError> {
    let configs: Vec<RoutingConfigRow> = state
        .service
        .list_routing_configs()
        .await?
        .into_iter()
        .filter(|c| q.active.is_none_or(|a| c.active == a))
        .filter(|c| q.strategy.as_ref().is_none_or(|s| &c.strategy == s))
        .collect();
    let page = paginate(
        configs,
        q.limit,
        q.cursor.as_deref(),
        |c| c.key_id.clone(),
        RoutingConfig::from,
    )?;
    Ok(Json(page))
}

/// Retrieve a key's routing configuration.
#[utoipa::path(get, path = "/routing_configs/{key_id}", tag = "routing",
    params(("key_id" = String, Path, description = "Key id")),
    responses((status = 200, description = "The configuration", body = Data<RoutingConfig>)))]
async fn get_routing_config(
    State(state): State<ApiState>,
    ApiPath(key_id): ApiPath<String>,
) -> Result<Json<Data<RoutingConfig>>, ApiError> {
    let config = state.service.get_routing_config(&key_id).await?;
    Ok(Json(Data::new(config.into())))
}

/// Set (create or replace) a key's routing configuration.
#[utoipa::path(put, path = "/routing_configs/{key_id}", tag = "routing",
    request_body = PutRoutingConfig,
    params(("key_id" = String, Path, description = "Key id")),
    responses((status = 200, description = "The stored configuration",
        body = Data<RoutingConfig>, links(
            ("GetRoutingConfig" = (operation_id = "get_routing_config",
                parameters(("key_id" = "$response.body#/data/key_id")))),
            ("DeleteRoutingConfig" = (operation_id = "delete_routing_config",
                parameters(("key_id" = "$response.body#/data/key_id")))),
        ))))]
async fn put_routing_config(
    State(state): State<ApiState>,
    ApiPath(key_id): ApiPath<String>,
    ApiJson(c): ApiJson<PutRoutingConfig>,
) -> Result<Json<Data<RoutingConfig>>, ApiError> {
    if let Some(body_key) = c.key_id.as_deref() {
        if body_key.trim() != key_id.trim() {
            return Err(ApiError::bad_request(format!(
                "key_id {body_key:?} in the body is not the key in the path ({key_id:?})"
            )));
        }
    }
    let config = pb::RoutingConfig {
        key_id,
        active: c.active,
        strategy: c.strategy,
        backends: c.backends.into_iter().map(pb::Backend::from).collect(),
        rules: c
            .rules
            .into_iter()
            .map(|r| pb::ConfigRule {
                name: r.name,
                match_json: json_text(r.match_json),
                backends: r.backends.into_iter().map(pb::Backend::from).collect(),
            })
            .collect(),
    };
    let saved = state.service.set_routing_config(config).await?;
    tracing::info!(key = %saved.key_id, strategy = %saved.strategy, active = saved.active,
        "routing configuration saved");
    Ok(Json(Data::new(saved.into())))
}

/// Delete a key's routing configuration.
#[utoipa::path(delete, path = "/routing_configs/{key_id}", tag = "routing",
    params(("key_id" = String, Path, description = "Key id")),
    responses((status = 200, description = "Deleted", body = Data<Deleted>)))]
async fn delete_routing_config(
    State(state): State<ApiState>,
    ApiPath(key_id): ApiPath<String>,
) -> Result<Json<Data<Deleted>>, ApiError> {
    state.service.delete_routing_config(&key_id).await?;
    tracing::info!(key = %key_id, "routing configuration deleted");
    Ok(Json(Deleted::new(key_id.trim())))
}
