//! `tokenrouter preview`: where a request would go and why, without sending it.

use std::collections::HashMap;

use clap::Args;
use serde::Serialize;
use tokenrouter_proto::admin::v1 as api;

use super::output::{table, Output};
use super::{client, CliError, ErrorKind, Globals};

#[derive(Debug, Args)]
pub struct PreviewArgs {
    /// Key whose rules and routing configuration apply (id).
    #[arg(long = "key-id")]
    key_id: Option<String>,
    /// Client API: chat.completions, responses, messages or embeddings.
    #[arg(long, default_value = "chat.completions")]
    api: String,
    /// The request body (JSON), as the client would send it.
    #[arg(long, conflicts_with = "body_file")]
    body: Option<String>,
    /// Read the request body from this file.
    #[arg(long = "body-file")]
    body_file: Option<std::path::PathBuf>,
    /// A request header the rules may match, `name: value` (repeatable).
    #[arg(long = "header")]
    headers: Vec<String>,
}

#[derive(Debug, Serialize)]
struct AttemptJson {
    provider: String,
    model: String,
    cluster: String,
}

/// The fields of `admin.v1.PreviewDecisionResponse`, the trace and error decoded.
#[derive(Debug, Serialize)]
struct PreviewJson {
    attempts: Vec<AttemptJson>,
    cluster: String,
    mode: Option<String>,
    tier: Option<String>,
    rule_trace: serde_json::Value,
    warnings: Vec<String>,
    /// The error envelope the client would get, when the request would be refused.
    error: Option<serde_json::Value>,
}

pub async fn run(args: PreviewArgs, g: &Globals, out: &Output) -> Result<(), CliError> {
    let body = match (args.body, args.body_file) {
        (Some(b), _) => b,
        (None, Some(path)) => std::fs::read_to_string(&path).map_err(|e| {
            CliError::new(
                ErrorKind::Config,
                format!("cannot read {}: {e}", path.display()),
            )
        })?,
        (None, None) => {
            return Err(CliError::new(
                ErrorKind::Usage,
                "give the request body with --body or --body-file",
            ))
        }
    };
    let mut headers = HashMap::new();
    for h in args.headers {
        let (name, value) = h.split_once(':').ok_or_else(|| {
            CliError::new(
                ErrorKind::Usage,
                format!("header {h:?} is not `name: value`"),
            )
        })?;
        headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_string());
    }
    let mut admin = client::connect(g).await?;
    let r = admin
        .preview_decision(api::PreviewDecisionRequest {
            key_id: args.key_id.unwrap_or_default(),
            client_api: args.api,
            body_json: body,
            headers,
        })
        .await?
        .into_inner();
    let parse = |s: &str| serde_json::from_str(s).unwrap_or(serde_json::Value::Null);
    let preview = PreviewJson {
        attempts: r
            .attempts
            .into_iter()
            .map(|a| AttemptJson {
                provider: a.provider,
                model: a.model,
                cluster: a.cluster,
            })
            .collect(),
        cluster: r.cluster,
        mode: Some(r.mode).filter(|m| !m.is_empty()),
        tier: Some(r.tier).filter(|t| !t.is_empty()),
        rule_trace: if r.rule_trace.is_empty() {
            serde_json::Value::Array(Vec::new())
        } else {
            parse(&r.rule_trace)
        },
        warnings: r.warnings,
        error: Some(r.error_json)
            .filter(|e| !e.is_empty())
            .map(|e| parse(&e)),
    };
    out.print(&preview, || {
        if let Some(e) = &preview.error {
            return format!(
                "refused: {}",
                e["error"]["message"].as_str().unwrap_or_default()
            );
        }
        let rows: Vec<Vec<String>> = preview
            .attempts
            .iter()
            .enumerate()
            .map(|(i, a)| vec![(i + 1).to_string(), a.provider.clone(), a.model.clone()])
            .collect();
        let mut text = table(&["ATTEMPT", "PROVIDER", "MODEL"], &rows);
        text.push_str(&format!(
            "\ncluster: {}\nmode: {}\ntier: {}\n",
            preview.cluster,
            preview.mode.as_deref().unwrap_or("-"),
            preview.tier.as_deref().unwrap_or("-"),
        ));
        for w in &preview.warnings {
            text.push_str(&format!("warning: {w}\n"));
        }
        text.push_str(&format!(
            "trace: {}\n",
            serde_json::to_string_pretty(&preview.rule_trace).unwrap_or_default()
        ));
        text
    })
}
