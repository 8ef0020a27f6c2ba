//! `tokenrouter workspaces create|list|get|update`.

use clap::Subcommand;
use serde::Serialize;
use tokenrouter_proto::admin::v1 as api;

use super::limits::{cell, LimitArgs, LimitsJson};
use super::output::{table, time, Output};
use super::{client, CliError, ErrorKind, Globals};

#[derive(Debug, Subcommand)]
pub enum WorkspacesCommand {
    /// Create a workspace (keys created in a workspace that does not exist create it too).
    Create {
        /// 1-64 of a-z, 0-9, '-' and '_'.
        id: String,
        /// A balance of its own, exact decimal USD: every key of the workspace is then charged
        /// to it too (requests are refused with 402 once it cannot pay).
        #[arg(long, value_name = "USD")]
        balance: Option<String>,
        #[command(flatten)]
        limits: LimitArgs,
    },
    /// List workspaces with their balances, limits and active keys.
    List,
    /// One workspace.
    Get {
        /// Workspace id.
        id: String,
    },
    /// Change a workspace's limits (its keys that set none of their own follow).
    Update {
        /// Workspace id.
        id: String,
        #[command(flatten)]
        limits: LimitArgs,
    },
}

/// A workspace as printed.
#[derive(Debug, Serialize)]
struct WorkspaceJson {
    id: String,
    created_at_unix_ms: i64,
    /// Exact decimal USD; `null` = no balance of its own.
    balance_usd: Option<String>,
    /// `null` fields = the server's defaults; 0 = off.
    limits: LimitsJson,
    active_keys: u32,
}

impl From<api::WorkspaceInfo> for WorkspaceJson {
    fn from(w: api::WorkspaceInfo) -> WorkspaceJson {
        WorkspaceJson {
            id: w.id,
            created_at_unix_ms: w.created_at_unix_ms,
            balance_usd: w.balance_usd,
            limits: w.limits.into(),
            active_keys: w.active_keys,
        }
    }
}

impl WorkspaceJson {
    fn balance(&self) -> String {
        self.balance_usd
            .as_ref()
            .map_or_else(|| "—".to_string(), |b| format!("${b}"))
    }

    fn summary(&self) -> String {
        let l = &self.limits;
        format!(
            "{}: {} active keys, balance {}, limits: rps {}, tokens/h {}, input tokens/h {}, \
             output tokens/h {} (- = server default)",
            self.id,
            self.active_keys,
            self.balance_usd
                .as_ref()
                .map_or_else(|| "none".to_string(), |b| format!("${b}")),
            cell(l.rps),
            cell(l.hour_total_tokens),
            cell(l.hour_input_tokens),
            cell(l.hour_output_tokens),
        )
    }
}

pub async fn run(cmd: WorkspacesCommand, g: &Globals, out: &Output) -> Result<(), CliError> {
    if let WorkspacesCommand::Update { limits, .. } = &cmd {
        if limits.is_empty() {
            return Err(CliError::new(
                ErrorKind::Usage,
                "nothing to update: pass --rps, --hour-tokens, --hour-input-tokens and/or \
                 --hour-output-tokens",
            ));
        }
    }
    let mut admin = client::connect(g).await?;
    match cmd {
        WorkspacesCommand::Create {
            id,
            balance,
            limits,
        } => {
            let w: WorkspaceJson = admin
                .create_workspace(api::CreateWorkspaceRequest {
                    id,
                    balance_usd: balance,
                    limits: limits.to_proto(),
                })
                .await?
                .into_inner()
                .into();
            out.print(&w, || format!("created workspace {}", w.summary()))
        }
        WorkspacesCommand::List => {
            let all: Vec<WorkspaceJson> = admin
                .list_workspaces(api::ListWorkspacesRequest {})
                .await?
                .into_inner()
                .workspaces
                .into_iter()
                .map(WorkspaceJson::from)
                .collect();
            out.print(&all, || {
                let rows: Vec<Vec<String>> = all
                    .iter()
                    .map(|w| {
                        vec![
                            w.id.clone(),
                            w.active_keys.to_string(),
                            w.balance(),
                            cell(w.limits.rps),
                            cell(w.limits.hour_total_tokens),
                            cell(w.limits.hour_input_tokens),
                            cell(w.limits.hour_output_tokens),
                            time(w.created_at_unix_ms),
                        ]
                    })
                    .collect();
                table(
                    &[
                        "ID", "KEYS", "BALANCE", "RPS", "TOKENS/H", "IN/H", "OUT/H", "CREATED",
                    ],
                    &rows,
                )
            })
        }
        WorkspacesCommand::Get { id } => {
            let w: WorkspaceJson = admin
                .get_workspace(api::GetWorkspaceRequest { id })
                .await?
                .into_inner()
                .into();
            out.print(&w, || w.summary())
        }
        WorkspacesCommand::Update { id, limits } => {
            let w: WorkspaceJson = admin
                .update_workspace(api::UpdateWorkspaceRequest {
                    id,
                    limits: limits.to_proto(),
                })
                .await?
                .into_inner()
                .into();
            out.print(&w, || format!("updated workspace {}", w.summary()))
        }
    }
}
