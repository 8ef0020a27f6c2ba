//! `/firewall_rules` (seed 003's resource) and `/firewall_templates`. Every rule is compiled by
//! the engine before it is stored; an invalid one is a 400 with the reason.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use tokenrouter_engine::firewall::templates::Template;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::{ApiError, ApiJson, ApiPath, ApiQuery};
use super::page::{paginate, Data, Deleted, Page};
use super::ApiState;
use crate::service::{FirewallRulePatch, NewFirewallRule, TemplateOverrides};
use crate::store::FirewallRuleRow;

#[derive(Debug, Serialize, ToSchema)]
pub struct FirewallRule {
    pub id: i64,
    pub name: String,
    /// Higher first.
    pub priority: i32,
    pub is_enabled: bool,
    /// prompt | response | metadata.
    pub scope: String,
    /// substring | regex.
    #[serde(rename = "type")]
    #[schema(rename = "type")]
    pub kind: String,
    pub pattern: String,
    /// block | mask | warn.
    pub action: String,
    /// Mask text; empty = the default.
    pub replacement: String,
    /// Empty = every key.
    pub key_id: String,
    /// Empty = every workspace; else only requests of keys in this workspace.
    pub workspace_id: String,
    /// Regex rules: longest match considered; 0 = the default.
    pub max_match_chars: u32,
    /// "" | luhn.
    pub check: String,
    /// Template the rule was created from, if any.
    pub template: String,
    pub created_at_unix_ms: i64,
    pub updated_at_unix_ms: i64,
}

impl From<FirewallRuleRow> for FirewallRule {
    fn from(r: FirewallRuleRow) -> FirewallRule {
        FirewallRule {
            id: r.id,
            name: r.name,
            priority: r.priority,
            is_enabled: r.is_enabled,
            scope: r.scope,
            kind: r.match_type,
            pattern: r.pattern,
            action: r.action,
            replacement: r.replacement,
            key_id: r.key_id,
            workspace_id: r.workspace_id,
            max_match_chars: r.max_match_chars,
            check: r.check,
            template: r.template,
            created_at_unix_ms: r.created_at_ms,
            updated_at_unix_ms: r.updated_at_ms,
        }
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"name": "Block Credit Cards", "priority": 100, "is_enabled": true,
    "scope": "prompt", "type": "regex",
    "pattern": "\\d{4}[\\s-]?\\d{4}[\\s-]?\\d{4}[\\s-]?\\d{4}", "action": "block"}))]
pub struct CreateFirewallRule {
    pub name: String,
    #[serde(default)]
    pub priority: i32,
    #[serde(default = "yes")]
    #[schema(default = true)]
    pub is_enabled: bool,
    /// prompt | response | metadata.
    pub scope: String,
    /// substring | regex.
    #[serde(rename = "type")]
    #[schema(rename = "type")]
    pub kind: String,
    pub pattern: String,
    /// block | mask | warn.
    pub action: String,
    #[serde(default)]
    pub replacement: Option<String>,
    /// Only this key's requests; omit for every key.
    #[serde(default)]
    pub key_id: Option<String>,
    /// Only requests of keys in this (existing) workspace; omit for every workspace. With
    /// `key_id`, the key must be in it.
    #[serde(default)]
    pub workspace_id: Option<String>,
    #[serde(default)]
    pub max_match_chars: Option<u32>,
    /// "" | luhn.
    #[serde(default)]
    pub check: Option<String>,
}

fn yes() -> bool {
    true
}

/// Fields to change; absent (or null) fields keep their value.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(default, deny_unknown_fields)]
#[schema(example = json!({"action": "warn"}))]
pub struct UpdateFirewallRule {
    pub name: Option<String>,
    pub priority: Option<i32>,
    pub is_enabled: Option<bool>,
    pub scope: Option<String>,
    #[serde(rename = "type")]
    #[schema(rename = "type")]
    pub kind: Option<String>,
    pub pattern: Option<String>,
    pub action: Option<String>,
    pub replacement: Option<String>,
    /// Empty string = every key.
    pub key_id: Option<String>,
    /// Empty string = every workspace.
    pub workspace_id: Option<String>,
    pub max_match_chars: Option<u32>,
    pub check: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListFirewallRules {
    /// Page size, 1-1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
    pub is_enabled: Option<bool>,
    pub scope: Option<String>,
    pub action: Option<String>,
    pub key_id: Option<String>,
    /// Rules of this workspace ("" for rules of every workspace).
    pub workspace_id: Option<String>,
}

/// A built-in rule template.
#[derive(Debug, Serialize, ToSchema)]
pub struct FirewallTemplate {
    pub name: String,
    /// Name of the rule it creates.
    pub rule_name: String,
    pub description: String,
    #[serde(rename = "type")]
    #[schema(rename = "type")]
    pub kind: String,
    pub pattern: String,
    pub scope: String,
    pub action: String,
    pub priority: i32,
    pub replacement: String,
    pub check: String,
}

impl From<&Template> for FirewallTemplate {
    fn from(t: &Template) -> FirewallTemplate {
        FirewallTemplate {
            name: t.name.into(),
            rule_name: t.rule_name.into(),
            description: t.description.into(),
            kind: t.match_type.as_str().into(),
            pattern: t.pattern.into(),
            scope: t.scope.as_str().into(),
            action: t.action.as_str().into(),
            priority: t.priority,
            replacement: t.replacement.into(),
            check: t.check.as_str().into(),
        }
    }
}

/// Overrides of a template's defaults; absent = the template's.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(default, deny_unknown_fields)]
#[schema(example = json!({"action": "mask"}))]
pub struct EnableTemplate {
    pub scope: Option<String>,
    pub action: Option<String>,
    pub priority: Option<i32>,
    pub key_id: Option<String>,
    pub workspace_id: Option<String>,
}

pub fn router() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new()
        .routes(routes!(list_firewall_rules, create_firewall_rule))
        .routes(routes!(
            get_firewall_rule,
            update_firewall_rule,
            delete_firewall_rule
        ))
        .routes(routes!(list_firewall_templates))
        .routes(routes!(enable_firewall_template))
}

/// Create a firewall rule.
#[utoipa::path(post, path = "/firewall_rules", tag = "firewall",
    request_body = CreateFirewallRule,
    responses((status = 201, description = "The rule", body = Data<FirewallRule>, links(
        ("GetFirewallRule" = (operation_id = "get_firewall_rule",
            parameters(("id" = "$response.body#/data/id")))),
        ("UpdateFirewallRule" = (operation_id = "update_firewall_rule",
            parameters(("id" = "$response.body#/data/id")))),
        ("DeleteFirewallRule" = (operation_id = "delete_firewall_rule",
            parameters(("id" = "$response.body#/data/id")))),
    ))))]
async fn create_firewall_rule(
    State(state): State<ApiState>,
    ApiJson(r): ApiJson<CreateFirewallRule>,
) -> Result<(StatusCode, Json<Data<FirewallRule>>), ApiError> {
    let rule = state
        .service
        .create_firewall_rule(NewFirewallRule {
            name: r.name,
            priority: r.priority,
            is_enabled: r.is_enabled,
            scope: r.scope,
            match_type: r.kind,
            pattern: r.pattern,
            action: r.action,
            replacement: r.replacement.unwrap_or_default(),
            key_id: r.key_id.unwrap_or_default(),
            max_match_chars: r.max_match_chars.unwrap_or_default(),
            check: r.check.unwrap_or_default(),
            workspace_id: r.workspace_id.unwrap_or_default(),
        })
        .await?;
    tracing::info!(id = rule.id, name = %rule.name, "firewall rule created");
    Ok((StatusCode::CREATED, Json(Data::new(rule.into()))))
}

/// List firewall rules by id.
#[utoipa::path(get, path = "/firewall_rules", tag = "firewall", params(ListFirewallRules),
    responses((status = 200, description = "A page of rules", body = Page<FirewallRule>)))]
async fn list_firewall_rules(
    State(state): State<ApiState>,
    ApiQuery(q): ApiQuery<ListFirewallRules>,
) -> Result<Json<Page<FirewallRule>>, ApiError> {
    let rules: Vec<FirewallRuleRow> = state
        .service
        .list_firewall_rules()
        .await?
        .into_iter()
        .filter(|r| q.is_enabled.is_none_or(|e| r.is_enabled == e))
        .filter(|r| q.scope.as_ref().is_none_or(|s| &r.scope == s))
        .filter(|r| q.action.as_ref().is_none_or(|a| &r.action == a))
        .filter(|r| q.key_id.as_ref().is_none_or(|k| &r.key_id == k))
        .filter(|r| q.workspace_id.as_ref().is_none_or(|w| &r.workspace_id == w))
        .collect();
    let page = paginate(
        rules,
        q.limit,
        q.cursor.as_deref(),
        |r| r.id.to_string(),
        FirewallRule::from,
    )?;
    Ok(Json(page))
}

/// Retrieve a firewall rule.
#[utoipa::path(get, path = "/firewall_rules/{id}", tag = "firewall",
    params(("id" = i64, Path, description = "Rule id")),
    responses((status = 200, description = "The rule", body = Data<FirewallRule>)))]
async fn get_firewall_rule(
    State(state): State<ApiState>,
    ApiPath(id): ApiPath<i64>,
) -> Result<Json<Data<FirewallRule>>, ApiError> {
    let rule = state.service.get_firewall_rule(id).await?;
    Ok(Json(Data::new(rule.into())))
}

/// Change some fields of a firewall rule.
#[utoipa::path(patch, path = "/firewall_rules/{id}", tag = "firewall",
    request_body = UpdateFirewallRule,
    params(("id" = i64, Path, description = "Rule id")),
    responses((status = 200, description = "The updated rule", body = Data<FirewallRule>)))]
async fn update_firewall_rule(
    State(state): State<ApiState>,
    ApiPath(id): ApiPath<i64>,
    ApiJson(u): ApiJson<UpdateFirewallRule>,
) -> Result<Json<Data<FirewallRule>>, ApiError> {
    let patch = FirewallRulePatch {
        name: u.name,
        priority: u.priority,
        is_enabled: u.is_enabled,
        scope: u.scope,
        match_type: u.kind,
        pattern: u.pattern,
        action: u.action,
        replacement: u.replacement,
        key_id: u.key_id,
        max_match_chars: u.max_match_chars,
        check: u.check,
        workspace_id: u.workspace_id,
    };
    let rule = state.service.update_firewall_rule(id, patch).await?;
    tracing::info!(id = rule.id, name = %rule.name, "firewall rule updated");
    Ok(Json(Data::new(rule.into())))
}

/// Delete a firewall rule.
#[utoipa::path(delete, path = "/firewall_rules/{id}", tag = "firewall",
    params(("id" = i64, Path, description = "Rule id")),
    responses((status = 200, description = "Deleted", body = Data<Deleted>)))]
async fn delete_firewall_rule(
    State(state): State<ApiState>,
    ApiPath(id): ApiPath<i64>,
) -> Result<Json<Data<Deleted>>, ApiError> {
    state.service.delete_firewall_rule(id).await?;
    tracing::info!(id, "firewall rule deleted");
    Ok(Json(Deleted::new(id)))
}

/// List the built-in rule templates.
#[utoipa::path(get, path = "/firewall_templates", tag = "firewall",
    responses((status = 200, description = "Every template",
        body = Data<Vec<FirewallTemplate>>)))]
async fn list_firewall_templates(
    State(state): State<ApiState>,
) -> Json<Data<Vec<FirewallTemplate>>> {
    let templates = state
        .service
        .firewall_templates()
        .iter()
        .map(FirewallTemplate::from)
        .collect();
    Json(Data::new(templates))
}

/// Create the template's rule, or enable it again (with the overrides) when it exists.
#[utoipa::path(post, path = "/firewall_templates/{name}/enable", tag = "firewall",
    request_body = EnableTemplate,
    params(("name" = String, Path, description = "Template name")),
    responses((status = 200, description = "The rule", body = Data<FirewallRule>)))]
async fn enable_firewall_template(
    State(state): State<ApiState>,
    ApiPath(name): ApiPath<String>,
    ApiJson(o): ApiJson<EnableTemplate>,
) -> Result<Json<Data<FirewallRule>>, ApiError> {
    let rule = state
        .service
        .enable_firewall_template(
            &name,
            TemplateOverrides {
                scope: o.scope.filter(|s| !s.is_empty()),
                action: o.action.filter(|a| !a.is_empty()),
                priority: o.priority,
                key_id: o.key_id.filter(|k| !k.is_empty()),
                workspace_id: o.workspace_id.filter(|w| !w.is_empty()),
            },
        )
        .await?;
    tracing::info!(id = rule.id, template = %name, "firewall template enabled");
    Ok(Json(Data::new(rule.into())))
}
