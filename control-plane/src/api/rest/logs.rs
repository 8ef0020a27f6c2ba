//! `/logs` (request logs, newest first, cursor-paginated, filtered), `/logs/{request_id}` (one
//! row with its stored bodies) and `/usage?days=N[&group_by=…]` (seed 002's summary: only
//! successful requests count as spend and tokens, plus a breakdown). The admin sees every
//! key's; a gateway key sees only its own.

use axum::extract::State;
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokenrouter_engine::money::format_picos_usd;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::auth::Caller;
use super::error::{ApiError, ApiPath, ApiQuery, ErrorBody};
use super::page::{self, Data, Page};
use super::ApiState;
use crate::calendar::format_day;
use crate::service::{LogFilter, UsageGroup, UsageSummary, DEFAULT_USAGE_DAYS};
use crate::store::{LogEntry, UsageGroupBy, UsageGroupKey};

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
    /// The request's `metadata` object; null when it had none.
    #[schema(value_type = Option<Object>)]
    pub metadata: Value,
    /// The key's name when the request was made.
    pub key_name: String,
    pub workspace_id: String,
    /// The request's `Idempotency-Key`; null when none.
    pub idempotency_key: Option<String>,
    /// The request whose answer this one replayed (nothing charged); null when not a replay.
    pub replay_of: Option<String>,
    /// Request and response bodies are stored (`GET /logs/{request_id}` returns them).
    pub has_bodies: bool,
}

/// One request with its stored bodies.
#[derive(Debug, Serialize, ToSchema)]
pub struct LogDetail {
    #[serde(flatten)]
    pub log: LogRow,
    /// The request body as the provider received it (firewall masks applied): UTF-8 text, or
    /// base64 when `request_body_base64`; null when not stored.
    pub request_body: Option<String>,
    pub request_body_base64: bool,
    /// The response body as the client received it, encoded the same way.
    pub response_body: Option<String>,
    pub response_body_base64: bool,
    /// A body was cut at the edge's limit (256 KiB each).
    pub bodies_truncated: bool,
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

/// The metadata column as a JSON object; anything that is not one (never written by the edge)
/// is kept as `{"_raw": text}`.
pub fn metadata_object(text: &str) -> Value {
    if text.trim().is_empty() {
        return Value::Null;
    }
    match serde_json::from_str::<Value>(text) {
        Ok(v @ Value::Object(_)) => v,
        _ => serde_json::json!({ "_raw": text }),
    }
}

fn non_empty(s: String) -> Option<String> {
    Some(s).filter(|s| !s.is_empty())
}

/// A body as JSON text: `(text, is_base64)`; `None` when empty (not stored). The CLI prints
/// bodies the same way.
pub fn body_text(bytes: Vec<u8>) -> (Option<String>, bool) {
    if bytes.is_empty() {
        return (None, false);
    }
    match String::from_utf8(bytes) {
        Ok(text) => (Some(text), false),
        Err(e) => (Some(base64(e.as_bytes())), true),
    }
}

/// Standard base64 with padding (RFC 4648 §4).
fn base64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

impl From<LogEntry> for LogDetail {
    fn from(mut e: LogEntry) -> LogDetail {
        let (request_body, request_body_base64) =
            body_text(std::mem::take(&mut e.record.request_body));
        let (response_body, response_body_base64) =
            body_text(std::mem::take(&mut e.record.response_body));
        let bodies_truncated = e.record.bodies_truncated;
        LogDetail {
            log: e.into(),
            request_body,
            request_body_base64,
            response_body,
            response_body_base64,
            bodies_truncated,
        }
    }
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
            metadata: metadata_object(&r.metadata_json),
            key_name: r.key_name,
            workspace_id: r.workspace_id,
            idempotency_key: non_empty(r.idempotency_key),
            replay_of: non_empty(r.replay_of),
            has_bodies: e.has_bodies,
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
    /// HTTP status returned to the client: a code (`404`) or a class (`4xx`); empty = any.
    #[param(pattern = "^([1-5][0-9][0-9]|[1-5][xX][xX])?$")]
    pub status: Option<String>,
    /// Received at or after (Unix ms).
    pub since: Option<i64>,
    /// Received before (Unix ms).
    pub until: Option<i64>,
    /// Text the request's metadata JSON contains (ASCII case-insensitive).
    #[param(max_length = 256)]
    pub metadata_contains: Option<String>,
}

/// How a usage summary is broken down.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, ToSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum GroupBy {
    /// Per key (`key_id`, `key_name`).
    Key,
    /// Per served model (`model`; "" when no provider answered).
    Model,
    /// Per provider (`provider`; "" when none was reached).
    Provider,
    /// Per UTC day (`day`, YYYY-MM-DD), every day of the range.
    Day,
}

impl From<GroupBy> for UsageGroupBy {
    fn from(g: GroupBy) -> UsageGroupBy {
        match g {
            GroupBy::Key => UsageGroupBy::Key,
            GroupBy::Model => UsageGroupBy::Model,
            GroupBy::Provider => UsageGroupBy::Provider,
            GroupBy::Day => UsageGroupBy::Day,
        }
    }
}

impl From<UsageGroupBy> for GroupBy {
    fn from(g: UsageGroupBy) -> GroupBy {
        match g {
            UsageGroupBy::Key => GroupBy::Key,
            UsageGroupBy::Model => GroupBy::Model,
            UsageGroupBy::Provider => GroupBy::Provider,
            UsageGroupBy::Day => GroupBy::Day,
        }
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct UsageParams {
    /// The last N UTC calendar days, today included: 1-365 (default 30).
    #[param(minimum = 1, maximum = 365)]
    pub days: Option<u32>,
    /// Only this key (a gateway key: only its own id). An unknown key is a 404.
    pub key_id: Option<String>,
    /// Add a `breakdown` by key, model, provider or day.
    pub group_by: Option<GroupBy>,
}

/// Spend over the last `range_days` UTC days; only successful (2xx) requests count as spend and
/// tokens. Without `group_by` exactly seed 002's five fields.
#[derive(Debug, Serialize, ToSchema)]
pub struct Usage {
    pub range_days: u32,
    /// Successful (2xx) requests.
    pub total_requests: u64,
    pub total_tokens_in: u64,
    pub total_tokens_out: u64,
    /// Exact decimal USD, e.g. "0.18".
    pub total_cost_usd: String,
    /// With `group_by`: every request, whatever its status.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requests: Option<u64>,
    /// With `group_by`: requests that did not succeed (status not 2xx).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failed_requests: Option<u64>,
    /// With `group_by`: the first day counted, YYYY-MM-DD (UTC).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub since_day: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group_by: Option<GroupBy>,
    /// With `group_by`: one row per group (days in order, others by spend, most first).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub breakdown: Option<Vec<UsageRow>>,
}

/// One group of a usage breakdown: the group's own field(s), then its totals.
#[derive(Debug, Serialize, ToSchema)]
pub struct UsageRow {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    /// YYYY-MM-DD (UTC).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub day: Option<String>,
    pub requests: u64,
    pub failed_requests: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub total_tokens: u64,
    /// Exact decimal USD.
    pub cost_usd: String,
}

impl From<UsageGroup> for UsageRow {
    fn from(g: UsageGroup) -> UsageRow {
        let t = g.totals;
        let mut row = UsageRow {
            key_id: None,
            key_name: None,
            model: None,
            provider: None,
            day: None,
            requests: t.requests,
            failed_requests: t.failed_requests,
            input_tokens: t.input_tokens,
            output_tokens: t.output_tokens,
            total_tokens: t.total_tokens(),
            cost_usd: format_picos_usd(t.cost_picos),
        };
        match g.key {
            UsageGroupKey::Key { id, name } => {
                row.key_id = Some(id);
                row.key_name = Some(name);
            }
            UsageGroupKey::Model(m) => row.model = Some(m),
            UsageGroupKey::Provider(p) => row.provider = Some(p),
            UsageGroupKey::Day(d) => row.day = Some(format_day(d)),
        }
        row
    }
}

impl From<UsageSummary> for Usage {
    fn from(s: UsageSummary) -> Usage {
        let t = s.totals;
        let grouped = s.group_by.is_some();
        Usage {
            range_days: s.range_days,
            total_requests: t.successful(),
            total_tokens_in: t.input_tokens,
            total_tokens_out: t.output_tokens,
            total_cost_usd: format_picos_usd(t.cost_picos),
            requests: grouped.then_some(t.requests),
            failed_requests: grouped.then_some(t.failed_requests),
            since_day: grouped.then(|| format_day(s.since_day)),
            group_by: s.group_by.map(GroupBy::from),
            breakdown: grouped.then(|| s.breakdown.into_iter().map(UsageRow::from).collect()),
        }
    }
}

pub fn router() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new()
        .routes(routes!(list_logs))
        .routes(routes!(get_log))
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

/// List request logs, newest first. Filters combine with AND and with the cursor.
#[utoipa::path(get, path = "/logs", tag = "usage", params(ListLogs),
    responses((status = 200, description = "A page of request logs", body = Page<LogRow>,
        links(("GetLog" = (operation_id = "get_log",
            parameters(("request_id" = "$response.body#/data/0/request_id"))))))))]
async fn list_logs(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    ApiQuery(q): ApiQuery<ListLogs>,
) -> Result<Json<Page<LogRow>>, ApiError> {
    let limit = page::limit(q.limit)?;
    let filter = LogFilter {
        key_id: scope(&caller, q.key_id)?,
        model: q.model,
        provider: q.provider,
        status: q.status,
        since_ms: q.since,
        until_ms: q.until,
        metadata_contains: q.metadata_contains,
    };
    let logs = state.service.query_logs(limit, filter, q.cursor).await?;
    Ok(Json(Page {
        data: logs.entries.into_iter().map(LogRow::from).collect(),
        next_cursor: logs.next_cursor,
    }))
}

/// Retrieve one request log row with its stored bodies. A gateway key sees only its own
/// requests (another key's is a 404, like one that does not exist).
#[utoipa::path(get, path = "/logs/{request_id}", tag = "usage",
    params(("request_id" = String, Path, description = "The request id (`x-request-id`)")),
    responses((status = 200, description = "The request", body = Data<LogDetail>)))]
async fn get_log(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    ApiPath(request_id): ApiPath<String>,
) -> Result<Json<Data<LogDetail>>, ApiError> {
    let only = match &caller {
        Caller::Admin => None,
        Caller::Key(own) => Some(own.as_str()),
    };
    let entry = state.service.get_log(&request_id, only).await?;
    Ok(Json(Data::new(entry.into())))
}

/// Usage over the last N UTC days (only successful requests count as spend and tokens),
/// optionally broken down by key, model, provider or day.
#[utoipa::path(get, path = "/usage", tag = "usage", params(UsageParams),
    responses(
        (status = 200, description = "The summary", body = Usage),
        (status = 404, description = "No key has this `key_id`", body = ErrorBody),
    ))]
async fn get_usage(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    ApiQuery(q): ApiQuery<UsageParams>,
) -> Result<Json<Usage>, ApiError> {
    let summary = state
        .service
        .usage_summary(
            q.days.unwrap_or(DEFAULT_USAGE_DAYS),
            q.group_by.map(UsageGroupBy::from),
            scope(&caller, q.key_id)?,
        )
        .await?;
    Ok(Json(summary.into()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_text_or_base64() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
        assert_eq!(base64(&[0xff, 0x00, 0xfe]), "/wD+");
        assert_eq!(body_text(Vec::new()), (None, false));
        assert_eq!(body_text("é".into()), (Some("é".into()), false));
        assert_eq!(body_text(vec![0xff]), (Some("/w==".into()), true));
    }

    #[test]
    fn metadata_is_an_object_or_null() {
        assert_eq!(metadata_object(""), Value::Null);
        assert_eq!(metadata_object(r#"{"a":1}"#), serde_json::json!({"a": 1}));
        assert_eq!(metadata_object("[1]"), serde_json::json!({"_raw": "[1]"}));
    }
}
