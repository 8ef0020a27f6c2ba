//! `/workspaces`: groups of keys. A key inherits its workspace's limits (where it sets none of
//! its own) and is charged to its workspace's balance too when the workspace has one. Creating
//! a key in a workspace that does not exist creates the workspace.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use tokenrouter_engine::money::format_picos_usd;
use tokenrouter_engine::snapshot::valid_name;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::{ApiError, ApiJson, ApiPath, ApiQuery};
use super::metering::Limits;
use super::page::{paginate, Data, Page};
use super::ApiState;
use crate::service::{parse_optional_balance_usd, Service};
use crate::store::metering::Owner;
use crate::store::WorkspaceRow;

/// A workspace.
#[derive(Debug, Serialize, ToSchema)]
pub struct Workspace {
    /// 1-64 of a-z, 0-9, `-` and `_`.
    pub id: String,
    pub created_at_unix_ms: i64,
    /// The workspace's own balance, exact decimal USD; null = it has none (only its keys'
    /// balances apply).
    pub balance_usd: Option<String>,
    pub limits: Limits,
    /// Keys in the workspace that are not revoked.
    pub active_keys: u32,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"id": "team-a", "balance_usd": "20", "limits": {"rps": 5}}))]
pub struct CreateWorkspace {
    /// 1-64 of a-z, 0-9, `-` and `_`.
    #[schema(pattern = "^[a-z0-9_-]{1,64}$")]
    pub id: String,
    /// A starting balance, exact decimal USD: every key of the workspace is then charged to it
    /// too (402 once it cannot pay). Absent = no workspace balance.
    #[serde(default)]
    pub balance_usd: Option<String>,
    #[serde(default)]
    pub limits: Option<Limits>,
}

/// The fields to change; absent ones stay as they are.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"limits": {"hour_total_tokens": 500000}}))]
pub struct UpdateWorkspace {
    /// Set fields replace the workspace's; absent or null ones are kept.
    #[serde(default)]
    pub limits: Option<Limits>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListWorkspaces {
    /// Page size, 1-1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

pub fn router() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new()
        .routes(routes!(list_workspaces, create_workspace))
        .routes(routes!(get_workspace, update_workspace))
}

async fn balance(service: &Service, id: &str) -> Result<Option<String>, ApiError> {
    let view = service
        .balance(Some(Owner::Workspace(id.to_string())))
        .await?;
    Ok(view
        .metered
        .then(|| format_picos_usd(i128::from(view.balance_picos))))
}

fn workspace((w, active_keys): (WorkspaceRow, u32), balance_usd: Option<String>) -> Workspace {
    Workspace {
        id: w.id,
        created_at_unix_ms: w.created_at_ms,
        balance_usd,
        limits: w.limits.into(),
        active_keys,
    }
}

async fn found(service: &Service, id: &str) -> Result<Workspace, ApiError> {
    let row = service.get_workspace(id).await?;
    let balance = balance(service, &row.0.id).await?;
    Ok(workspace(row, balance))
}

/// Create a workspace, optionally with a balance and limits.
#[utoipa::path(post, path = "/workspaces", tag = "workspaces", request_body = CreateWorkspace,
    responses((status = 201, description = "The workspace", body = Data<Workspace>, links(
        ("GetWorkspace" = (operation_id = "get_workspace",
            parameters(("id" = "$response.body#/data/id")))),
        ("UpdateWorkspace" = (operation_id = "update_workspace",
            parameters(("id" = "$response.body#/data/id")))),
    ))))]
async fn create_workspace(
    State(state): State<ApiState>,
    ApiJson(body): ApiJson<CreateWorkspace>,
) -> Result<(StatusCode, Json<Data<Workspace>>), ApiError> {
    if !valid_name(&body.id) {
        return Err(ApiError::bad_request(format!(
            "workspace {:?} is not valid: use 1-64 of a-z, 0-9, '-' and '_'",
            body.id
        )));
    }
    let balance = parse_optional_balance_usd(body.balance_usd.as_deref())?;
    let w = state
        .service
        .create_workspace(&body.id, balance, body.limits.unwrap_or_default().into())
        .await?;
    tracing::info!(id = %w.id, "workspace created");
    let created = found(&state.service, &w.id).await?;
    Ok((StatusCode::CREATED, Json(Data::new(created))))
}

/// List workspaces by id, with their balances, limits and number of active keys.
#[utoipa::path(get, path = "/workspaces", tag = "workspaces", params(ListWorkspaces),
    responses((status = 200, description = "A page of workspaces", body = Page<Workspace>)))]
async fn list_workspaces(
    State(state): State<ApiState>,
    ApiQuery(q): ApiQuery<ListWorkspaces>,
) -> Result<Json<Page<Workspace>>, ApiError> {
    let rows = state.service.list_workspaces().await?;
    let page = paginate(
        rows,
        q.limit,
        q.cursor.as_deref(),
        |(w, _)| w.id.clone(),
        |r| r,
    )?;
    let mut data = Vec::with_capacity(page.data.len());
    for row in page.data {
        let balance = balance(&state.service, &row.0.id).await?;
        data.push(workspace(row, balance));
    }
    Ok(Json(Page {
        data,
        next_cursor: page.next_cursor,
    }))
}

/// Retrieve a workspace.
#[utoipa::path(get, path = "/workspaces/{id}", tag = "workspaces",
    params(("id" = String, Path, description = "Workspace id")),
    responses((status = 200, description = "The workspace", body = Data<Workspace>)))]
async fn get_workspace(
    State(state): State<ApiState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Data<Workspace>>, ApiError> {
    Ok(Json(Data::new(found(&state.service, &id).await?)))
}

/// Change a workspace's limits (its keys that set none of their own follow from the next
/// snapshot on). Credit is added with `POST /credits`.
#[utoipa::path(patch, path = "/workspaces/{id}", tag = "workspaces",
    request_body = UpdateWorkspace,
    params(("id" = String, Path, description = "Workspace id")),
    responses((status = 200, description = "The updated workspace", body = Data<Workspace>)))]
async fn update_workspace(
    State(state): State<ApiState>,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<UpdateWorkspace>,
) -> Result<Json<Data<Workspace>>, ApiError> {
    let w = state
        .service
        .update_workspace(&id, body.limits.unwrap_or_default().into())
        .await?;
    tracing::info!(id = %w.id, "workspace updated");
    Ok(Json(Data::new(found(&state.service, &w.id).await?)))
}
