//! `/logs` (request logs, newest first, cursor-paginated) and `/usage?days=N` (seed 002's
//! summary: successful requests only). The admin sees every key's; a gateway key sees only its
//! own.

use axum::extract::State;
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokenrouter_engine::money::format_picos_usd;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::auth::Caller;
use super::error::{ApiError, ApiQuery};
use super::page::{self, Page};
use super::ApiState;
use crate::service::LogFilter;
use crate::store::LogEntry;

/// Days a usage summary covers when the caller names none.
pub const DEFAULT_USAGE_DAYS: u32 = 30;

/// One request, as the edge reported it.
#[derive(Debug, Serialize, ToSchema)]
pub struct LogRow {
    pub request_id: String,
    pub started_at_unix_ms: i64,
    /// When the control plane received the record (what `since`/`until` filter on).
    pub received_at_unix_ms: i64,
    pub key_id: String,
    /// chat.completions | responses | messages | embeddings | models.
    pub client_api: String,
    pub requested_model: String,
    pub provider: String,
    /// The model the provider served.
    pub model: String,
    /// HTTP status returned to the client.
    pub status: u32,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cached_tokens: u64,
    pub reasoning_tokens: u64,
    pub latency_ms: u64,
    /// Time to first byte of a streamed reply; 0 = not streamed.
    pub ttfb_ms: u64,
    /// Exact cost in USD, e.g. "0.000123".
    pub cost_usd: String,
    /// Exact cost in pico-dollars.
    pub cost_picos: i64,
    pub stream: bool,
    pub error_type: String,
    pub node_id: String,
    /// Firewall rules applied, "action:scope:name".
    pub firewall_actions: Vec<String>,
    pub warnings: Vec<String>,
    pub mode: String,
    pub tier: String,
    /// The routing rule trace (as in `x-tokenrouter-rule-trace`); null when none.
    pub rule_trace: Value,
    pub attempts: Vec<LogAttempt>,
}

/// One try of a request at a provider.
#[derive(Debug, Serialize, ToSchema)]
pub struct LogAttempt {
    pub provider: String,
    pub model: String,
    /// 0 = no response.
    pub status: u32,
    pub latency_ms: u64,
    pub error: String,
}

impl From<LogEntry> for LogRow {
    fn from(e: LogEntry) -> LogRow {
        let r = e.record;
        let rule_trace = if r.rule_trace.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&r.rule_trace).unwrap_or(Value::String(r.rule_trace))
        };
        LogRow {
            cost_usd: format_picos_usd(i128::from(r.cost_picos)),
            request_id: r.request_id,
            started_at_unix_ms: r.started_at_unix_ms,
            received_at_unix_ms: e.received_at_ms,
            key_id: r.key_id,
            client_api: r.client_api,
            requested_model: r.requested_model,
            provider: r.provider,
            model: r.model,
            status: r.status,
            input_tokens: r.input_tokens,
            output_tokens: r.output_tokens,
            cached_tokens: r.cached_tokens,
            reasoning_tokens: r.reasoning_tokens,
            latency_ms: r.latency_ms,
            ttfb_ms: r.ttfb_ms,
            cost_picos: r.cost_picos,
            stream: r.stream,
            error_type: r.error_type,
            node_id: r.node_id,
            firewall_actions: r.firewall_actions,
            warnings: r.warnings,
            mode: r.mode,
            tier: r.tier,
            rule_trace,
            attempts: r
                .attempts
                .into_iter()
                .map(|a| LogAttempt {
                    provider: a.provider,
                    model: a.model,
                    status: a.status,
                    latency_ms: a.latency_ms,
                    error: a.error,
                })
                .collect(),
        }
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListLogs {
    /// Page size, 1-1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page (a request id).
    pub cursor: Option<String>,
    /// Only this key's requests (a gateway key: only its own id).
    pub key_id: Option<String>,
    /// The served model or the model the client asked for.
    pub model: Option<String>,
    pub provider: Option<String>,
    /// HTTP status returned to the client.
    #[param(minimum = 100, maximum = 599)]
    pub status: Option<u32>,
    /// Received at or after (Unix ms).
    pub since: Option<i64>,
    /// Received before (Unix ms).
    pub until: Option<i64>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct UsageParams {
    /// The last N days, 1-365 (default 30).
    #[param(minimum = 1, maximum = 365)]
    pub days: Option<u32>,
    /// Only this key (a gateway key: only its own id).
    pub key_id: Option<String>,
}

/// Spend over the last `range_days` days; only successful (2xx) requests count.
#[derive(Debug, Serialize, ToSchema)]
pub struct Usage {
    pub range_days: u32,
    pub total_requests: u64,
    pub total_tokens_in: u64,
    pub total_tokens_out: u64,
    /// Exact decimal USD, e.g. "0.18".
    pub total_cost_usd: String,
}

pub fn router() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new()
        .routes(routes!(list_logs))
        .routes(routes!(get_usage))
}

/// The key a caller may read: the admin any (or all), a gateway key only its own.
fn scope(caller: &Caller, requested: Option<String>) -> Result<Option<String>, ApiError> {
    let requested = requested.filter(|k| !k.is_empty());
    match caller {
        Caller::Admin => Ok(requested),
        Caller::Key(own) => match requested {
            Some(other) if &other != own => Err(ApiError::forbidden(
                "a gateway key may read only its own logs and usage",
            )),
            _ => Ok(Some(own.clone())),
        },
    }
}

/// List request logs, newest first.
#[utoipa::path(get, path = "/logs", tag = "usage", params(ListLogs),
    responses((status = 200, description = "A page of request logs", body = Page<LogRow>)))]
async fn list_logs(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    ApiQuery(q): ApiQuery<ListLogs>,
) -> Result<Json<Page<LogRow>>, ApiError> {
    let limit = page::limit(q.limit)?;
    if let Some(status) = q.status.filter(|s| !(100..=599).contains(s)) {
        return Err(ApiError::bad_request(format!(
            "status {status} is not an HTTP status (100-599)"
        )));
    }
    let filter = LogFilter {
        key_id: scope(&caller, q.key_id)?,
        model: q.model,
        provider: q.provider,
        status: q.status,
        since_ms: q.since,
        until_ms: q.until,
    };
    let logs = state.service.query_logs(limit, filter, q.cursor).await?;
    Ok(Json(Page {
        data: logs.entries.into_iter().map(LogRow::from).collect(),
        next_cursor: logs.next_cursor,
    }))
}

/// Usage over the last N days (successful requests only).
#[utoipa::path(get, path = "/usage", tag = "usage", params(UsageParams),
    responses((status = 200, description = "The summary", body = Usage)))]
async fn get_usage(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    ApiQuery(q): ApiQuery<UsageParams>,
) -> Result<Json<Usage>, ApiError> {
    let summary = state
        .service
        .usage_summary(
            q.days.unwrap_or(DEFAULT_USAGE_DAYS),
            scope(&caller, q.key_id)?,
        )
        .await?;
    let t = summary.totals;
    Ok(Json(Usage {
        range_days: summary.range_days,
        total_requests: t.requests,
        total_tokens_in: t.input_tokens,
        total_tokens_out: t.output_tokens,
        total_cost_usd: format_picos_usd(t.cost_picos),
    }))
}
