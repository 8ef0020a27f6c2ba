//! `tokenrouter logs [filters]` and `tokenrouter logs get REQUEST_ID`.

use clap::{Args, Subcommand};
use serde::Serialize;
use serde_json::Value;
use tokenrouter_proto::admin::v1 as api;

use super::output::{table, time, Output};
use super::{client, CliError, Globals};
use crate::api::rest::logs::{body_text, metadata_object};
use crate::calendar::{days_from_civil, DAY_MS};

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct LogsArgs {
    #[command(subcommand)]
    command: Option<LogsCommand>,
    #[command(flatten)]
    list: ListArgs,
}

#[derive(Debug, Subcommand)]
enum LogsCommand {
    /// One request with its stored request and response bodies.
    Get {
        /// The request id (`x-request-id`).
        request_id: String,
    },
}

/// Filters combine with AND, and with `--before`.
#[derive(Debug, Args)]
struct ListArgs {
    /// How many rows (at most 1000).
    #[arg(long, default_value_t = 50)]
    limit: u32,
    /// Only this key's requests.
    #[arg(long = "key")]
    key: Option<String>,
    /// Only rows received before this request id (paging).
    #[arg(long)]
    before: Option<String>,
    /// The served model or the model the client asked for.
    #[arg(long)]
    model: Option<String>,
    #[arg(long)]
    provider: Option<String>,
    /// A status (`404`) or a class (`4xx`).
    #[arg(long)]
    status: Option<String>,
    /// Received at or after: Unix ms, `YYYY-MM-DD[THH:MM[:SS]]` (UTC), or an age (`30m`, `6h`,
    /// `7d`).
    #[arg(long, value_parser = parse_time)]
    since: Option<i64>,
    /// Received before (same forms as --since).
    #[arg(long, value_parser = parse_time)]
    until: Option<i64>,
    /// Text the request's metadata contains (ASCII case-insensitive).
    #[arg(long, visible_alias = "search")]
    metadata_contains: Option<String>,
}

/// The fields of `admin.v1.LogRow`, with `metadata` as a JSON object.
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
    /// The request's `metadata` object; `null` when it had none.
    metadata: Value,
    key_name: String,
    workspace_id: String,
    /// `null` when none.
    idempotency_key: Option<String>,
    /// The request replayed (nothing charged); `null` when not a replay.
    replay_of: Option<String>,
    /// Bodies are stored (`tokenrouter logs get` shows them).
    has_bodies: bool,
}

/// `logs get`: the row and its bodies (UTF-8 text, else base64 with the flag set).
#[derive(Debug, Serialize)]
struct LogDetailJson {
    #[serde(flatten)]
    log: LogJson,
    request_body: Option<String>,
    request_body_base64: bool,
    response_body: Option<String>,
    response_body_base64: bool,
    bodies_truncated: bool,
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
            metadata: metadata_object(&r.metadata_json),
            key_name: r.key_name,
            workspace_id: r.workspace_id,
            idempotency_key: non_empty(r.idempotency_key),
            replay_of: non_empty(r.replay_of),
            has_bodies: r.has_bodies,
        }
    }
}

/// A time for `--since` / `--until`, as Unix ms.
fn parse_time(text: &str) -> Result<i64, String> {
    parse_time_at(text, crate::service::now_ms())
}

fn parse_time_at(text: &str, now_ms: i64) -> Result<i64, String> {
    let t = text.trim();
    let bad = || {
        format!(
            "{t:?} is not a time: use Unix ms, YYYY-MM-DD[THH:MM[:SS]] (UTC) or an age such as \
             30m, 6h, 7d"
        )
    };
    if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
        return t.parse().map_err(|_| bad());
    }
    if let Some(unit) = t.chars().last().filter(|c| "smhd".contains(*c)) {
        let n = &t[..t.len() - 1];
        if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) {
            let n: i64 = n.parse().map_err(|_| bad())?;
            let unit_ms = match unit {
                's' => 1_000,
                'm' => 60_000,
                'h' => 3_600_000,
                _ => DAY_MS,
            };
            return n
                .checked_mul(unit_ms)
                .map(|ago| now_ms.saturating_sub(ago))
                .ok_or_else(bad);
        }
    }
    // YYYY-MM-DD, then optionally T or a space and HH:MM[:SS], and an optional Z.
    let t = t.strip_suffix('Z').unwrap_or(t);
    let (date, clock) = match t.split_once(['T', ' ']) {
        Some((d, c)) => (d, Some(c)),
        None => (t, None),
    };
    let number = |s: &str, len: usize| -> Option<i64> {
        (s.len() == len && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse().ok())
            .flatten()
    };
    let mut parts = date.split('-');
    let (Some(y), Some(m), Some(d), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad());
    };
    let (y, m, d) = (
        number(y, 4).ok_or_else(bad)?,
        number(m, 2).ok_or_else(bad)?,
        number(d, 2).ok_or_else(bad)?,
    );
    let day = days_from_civil(
        y,
        u32::try_from(m).map_err(|_| bad())?,
        u32::try_from(d).map_err(|_| bad())?,
    )
    .ok_or_else(bad)?;
    let mut secs = 0;
    if let Some(clock) = clock {
        let fields: Vec<&str> = clock.split(':').collect();
        if !(2..=3).contains(&fields.len()) {
            return Err(bad());
        }
        let limits = [24, 60, 60];
        for (i, (field, limit)) in fields.iter().zip(limits).enumerate() {
            let v = number(field, 2).filter(|v| *v < limit).ok_or_else(bad)?;
            secs += v * [3600, 60, 1][i];
        }
    }
    Ok(day * DAY_MS + secs * 1000)
}

pub async fn run(args: LogsArgs, g: &Globals, out: &Output) -> Result<(), CliError> {
    let mut admin = client::connect(g).await?;
    if let Some(LogsCommand::Get { request_id }) = args.command {
        let r = admin
            .get_log(api::GetLogRequest { request_id })
            .await?
            .into_inner();
        let (request_body, request_body_base64) = body_text(r.request_body);
        let (response_body, response_body_base64) = body_text(r.response_body);
        let detail = LogDetailJson {
            log: LogJson::from(r.log.unwrap_or_default()),
            request_body,
            request_body_base64,
            response_body,
            response_body_base64,
            bodies_truncated: r.bodies_truncated,
        };
        return out.print(&detail, || detail.human());
    }
    let args = args.list;
    let rows: Vec<LogJson> = admin
        .list_logs(api::ListLogsRequest {
            limit: args.limit,
            key_id: args.key.unwrap_or_default(),
            before_request_id: args.before.unwrap_or_default(),
            model: args.model.unwrap_or_default(),
            provider: args.provider.unwrap_or_default(),
            status: args.status.unwrap_or_default(),
            since_unix_ms: args.since.unwrap_or(0),
            until_unix_ms: args.until.unwrap_or(0),
            metadata_contains: args.metadata_contains.unwrap_or_default(),
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

impl LogDetailJson {
    /// `field: value` lines, then the bodies.
    fn human(&self) -> String {
        let l = &self.log;
        let mut lines = vec![
            format!("request:   {}", l.request_id),
            format!("started:   {}", time(l.started_at_unix_ms)),
            format!(
                "key:       {} ({}, workspace {})",
                l.key_id, l.key_name, l.workspace_id
            ),
            format!("route:     {} → {}", l.requested_model, l.route()),
            format!("model:     {}", l.model),
            format!(
                "status:    {}{}",
                l.status,
                l.error_type
                    .as_deref()
                    .map(|e| format!(" {e}"))
                    .unwrap_or_default()
            ),
            format!(
                "tokens:    {} in, {} out; cost ${}; {} ms",
                l.input_tokens, l.output_tokens, l.cost_usd, l.latency_ms
            ),
        ];
        if !l.metadata.is_null() {
            lines.push(format!("metadata:  {}", l.metadata));
        }
        if let Some(k) = &l.idempotency_key {
            lines.push(format!("idempotency key: {k}"));
        }
        if let Some(r) = &l.replay_of {
            lines.push(format!("replay of: {r}"));
        }
        let body = |name: &str, text: &Option<String>, base64: bool| match text {
            None => format!("{name}: (not stored)"),
            Some(t) if base64 => format!("{name} (base64):\n{t}"),
            Some(t) => format!("{name}:\n{t}"),
        };
        lines.push(body(
            "request body",
            &self.request_body,
            self.request_body_base64,
        ));
        lines.push(body(
            "response body",
            &self.response_body,
            self.response_body_base64,
        ));
        if self.bodies_truncated {
            lines.push("(bodies truncated at the edge's limit)".into());
        }
        lines.join("\n")
    }
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
    fn times_are_ms_dates_or_ages() {
        let now = 1_700_000_000_000;
        assert_eq!(parse_time_at("1700000000000", now), Ok(now));
        assert_eq!(parse_time_at("30m", now), Ok(now - 1_800_000));
        assert_eq!(parse_time_at("7d", now), Ok(now - 7 * DAY_MS));
        assert_eq!(parse_time_at("2023-11-14", now), Ok(1_699_920_000_000));
        assert_eq!(
            parse_time_at("2023-11-14T22:13:20Z", now),
            Ok(1_700_000_000_000)
        );
        assert_eq!(
            parse_time_at("2023-11-14 22:13", now),
            Ok(1_699_999_980_000)
        );
        for bad in [
            "",
            "yesterday",
            "2023-02-29",
            "2023-11-14T25:00",
            "2023-1-14",
            "-5",
            "5w",
            "m",
            "99999999999999999999",
            "2023-11-14T10",
            "9999999999999999999d",
        ] {
            assert!(parse_time_at(bad, now).is_err(), "{bad}");
        }
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
        assert!(json["metadata"].is_null() && json["replay_of"].is_null());
        let json = serde_json::to_value(LogJson::from(api::LogRow {
            metadata_json: r#"{"user":"u1"}"#.into(),
            idempotency_key: "k".into(),
            ..api::LogRow::default()
        }))
        .unwrap();
        assert_eq!(json["metadata"]["user"], "u1");
        assert_eq!(json["idempotency_key"], "k");
    }
}
