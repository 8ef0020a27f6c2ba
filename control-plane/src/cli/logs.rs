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
            error_type: Some(r.error_type).filter(|t| !t.is_empty()),
            node_id: r.node_id,
            received_at_unix_ms: r.received_at_unix_ms,
            firewall_actions: r.firewall_actions,
            warnings: r.warnings,
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
                    format!("{}/{}", r.provider, r.model),
                    r.status.to_string(),
                    r.input_tokens.to_string(),
                    r.output_tokens.to_string(),
                    format!("${}", r.cost_usd),
                    format!("{}ms", r.latency_ms),
                ]
            })
            .collect();
        table(
            &[
                "STARTED", "REQUEST", "KEY", "MODEL", "STATUS", "IN", "OUT", "COST", "LATENCY",
            ],
            &cells,
        )
    })
}
