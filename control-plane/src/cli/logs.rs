//! `tokenrouter logs`.

use clap::Args;
use serde::Serialize;
use tokenrouter_proto::admin::v1 as api;

use super::output::{table, time, Output};
use super::{client, CliError, Globals};

#[derive(Debug, Args)]
pub struct LogsArgs {
    /// How many rows (at most 1000).
    #[arg(long, default_value_t = 50)]
    limit: u32,
    /// Only this key's requests.
    #[arg(long = "key")]
    key: Option<String>,
    /// Only rows received before this request id (paging).
    #[arg(long)]
    before: Option<String>,
}

/// Exactly the fields of `admin.v1.LogRow`.
#[derive(Debug, Serialize)]
struct LogJson {
    request_id: String,
    started_at_unix_ms: i64,
    key_id: String,
    client_api: String,
    requested_model: String,
    provider: String,
    model: String,
    status: u32,
    input_tokens: u64,
    output_tokens: u64,
    cached_tokens: u64,
    reasoning_tokens: u64,
    latency_ms: u64,
    cost_picos: i64,
    cost_usd: String,
    stream: bool,
    /// `null` for successful requests.
    error_type: Option<String>,
    node_id: String,
    received_at_unix_ms: i64,
    /// Firewall rules applied, `action:scope:name`.
    firewall_actions: Vec<String>,
    warnings: Vec<String>,
    /// Routing mode (cost | quality | latency | balance); `null` when none applied.
    mode: Option<String>,
    /// Prompt tier the classifier found; `null` outside auto modes.
    tier: Option<String>,
    /// The rule trace (a JSON array, as a string, as sent in `x-tokenrouter-rule-trace`);
    /// `null` when there is none.
    rule_trace: Option<String>,
    /// Every attempt, in order; the last one produced the response.
    attempts: Vec<AttemptJson>,
    /// Time to the first response byte; 0 = none.
    ttfb_ms: u64,
}

/// Exactly the fields of `admin.v1.LogAttempt`.
#[derive(Debug, Serialize)]
struct AttemptJson {
    provider: String,
    model: String,
    /// 0 = no response.
    status: u32,
    latency_ms: u64,
    /// `null` for an attempt that did not fail.
    error: Option<String>,
}

impl LogJson {
    /// `openai:503 → claude:200` when the request took more than one attempt, else the
    /// provider.
    fn route(&self) -> String {
        if self.attempts.len() < 2 {
            return self.provider.clone();
        }
        self.attempts
            .iter()
            .map(|a| format!("{}:{}", a.provider, a.status))
            .collect::<Vec<_>>()
            .join(" → ")
    }
}

fn non_empty(s: String) -> Option<String> {
    Some(s).filter(|s| !s.is_empty())
}

impl From<api::LogRow> for LogJson {
    fn from(r: api::LogRow) -> LogJson {
        LogJson {
            request_id: r.request_id,
            started_at_unix_ms: r.started_at_unix_ms,
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
            cost_picos: r.cost_picos,
            cost_usd: r.cost_usd,
            stream: r.stream,
            error_type: non_empty(r.error_type),
            node_id: r.node_id,
            received_at_unix_ms: r.received_at_unix_ms,
            firewall_actions: r.firewall_actions,
            warnings: r.warnings,
            mode: non_empty(r.mode),
            tier: non_empty(r.tier),
            rule_trace: non_empty(r.rule_trace),
            attempts: r
                .attempts
                .into_iter()
                .map(|a| AttemptJson {
                    provider: a.provider,
                    model: a.model,
                    status: a.status,
                    latency_ms: a.latency_ms,
                    error: non_empty(a.error),
                })
                .collect(),
            ttfb_ms: r.ttfb_ms,
        }
    }
}

pub async fn run(args: LogsArgs, g: &Globals, out: &Output) -> Result<(), CliError> {
    let mut admin = client::connect(g).await?;
    let rows: Vec<LogJson> = admin
        .list_logs(api::ListLogsRequest {
            limit: args.limit,
            key_id: args.key.unwrap_or_default(),
            before_request_id: args.before.unwrap_or_default(),
        })
        .await?
        .into_inner()
        .logs
        .into_iter()
        .map(LogJson::from)
        .collect();
    out.print(&rows, || {
        let cells: Vec<Vec<String>> = rows
            .iter()
            .map(|r| {
                vec![
                    time(r.started_at_unix_ms),
                    r.request_id.clone(),
                    r.key_id.clone(),
                    r.route(),
                    r.model.clone(),
                    r.status.to_string(),
                    r.mode.clone().unwrap_or_else(|| "-".into()),
                    r.tier.clone().unwrap_or_else(|| "-".into()),
                    r.input_tokens.to_string(),
                    r.output_tokens.to_string(),
                    format!("${}", r.cost_usd),
                    format!("{}ms", r.latency_ms),
                ]
            })
            .collect();
        table(
            &[
                "STARTED", "REQUEST", "KEY", "ROUTE", "MODEL", "STATUS", "MODE", "TIER", "IN",
                "OUT", "COST", "LATENCY",
            ],
            &cells,
        )
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn attempt(provider: &str, status: u32) -> api::LogAttempt {
        api::LogAttempt {
            provider: provider.into(),
            model: "m".into(),
            status,
            latency_ms: 5,
            error: if status == 200 {
                String::new()
            } else {
                format!("http_{status}")
            },
        }
    }

    #[test]
    fn route_shows_the_attempts_when_there_was_a_failover() {
        let row = |attempts| {
            LogJson::from(api::LogRow {
                provider: "claude".into(),
                attempts,
                ..api::LogRow::default()
            })
        };
        assert_eq!(row(vec![]).route(), "claude");
        assert_eq!(row(vec![attempt("claude", 200)]).route(), "claude");
        assert_eq!(
            row(vec![attempt("openai", 503), attempt("claude", 200)]).route(),
            "openai:503 → claude:200"
        );
    }

    #[test]
    fn json_has_every_field_and_null_for_none() {
        let json = serde_json::to_value(LogJson::from(api::LogRow {
            mode: "latency".into(),
            attempts: vec![attempt("openai", 0), attempt("claude", 200)],
            ttfb_ms: 90,
            ..api::LogRow::default()
        }))
        .unwrap();
        assert_eq!(json["mode"], "latency");
        assert!(json["tier"].is_null() && json["rule_trace"].is_null());
        assert_eq!(json["ttfb_ms"], 90);
        assert_eq!(json["attempts"][0]["error"], "http_0");
        assert!(json["attempts"][1]["error"].is_null());
        assert_eq!(json["attempts"][1]["provider"], "claude");
    }
}
