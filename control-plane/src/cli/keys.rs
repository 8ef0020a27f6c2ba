//! `tokenrouter keys create|list|revoke`.

use clap::Subcommand;
use serde::Serialize;
use tokenrouter_proto::admin::v1 as api;

use super::output::{table, time, Output};
use super::{client, CliError, Globals};

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Create a key; its raw `sk-tr-…` value is shown once.
    Create {
        /// A name to recognise the key by (at most 100 characters).
        #[arg(long)]
        name: String,
        /// Workspace (created on first use).
        #[arg(long, default_value = crate::service::DEFAULT_WORKSPACE)]
        workspace: String,
    },
    /// List keys (never their raw values).
    List,
    /// Revoke a key (revoking a revoked key is fine).
    Revoke {
        /// Key id (`key_…`).
        id: String,
    },
}

/// A key as printed.
#[derive(Debug, Serialize)]
struct KeyJson {
    id: String,
    name: String,
    key_prefix: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    raw: Option<String>,
    status: String,
    workspace_id: String,
    created_at_unix_ms: i64,
    revoked_at_unix_ms: Option<i64>,
}

impl KeyJson {
    fn new(k: api::KeyInfo, raw: Option<String>) -> KeyJson {
        KeyJson {
            id: k.id,
            name: k.name,
            key_prefix: k.key_prefix,
            raw,
            status: k.status,
            workspace_id: k.workspace_id,
            created_at_unix_ms: k.created_at_unix_ms,
            revoked_at_unix_ms: (k.revoked_at_unix_ms > 0).then_some(k.revoked_at_unix_ms),
        }
    }
}

pub async fn run(cmd: KeysCommand, g: &Globals, out: &Output) -> Result<(), CliError> {
    let mut admin = client::connect(g).await?;
    match cmd {
        KeysCommand::Create { name, workspace } => {
            let r = admin
                .create_key(api::CreateKeyRequest {
                    name,
                    workspace_id: workspace,
                })
                .await?
                .into_inner();
            let key = KeyJson::new(r.key.unwrap_or_default(), Some(r.raw));
            out.print(&key, || {
                format!(
                    "{}\n\nThis key is shown only once: store it now.\nid: {}  name: {}  workspace: {}",
                    key.raw.as_deref().unwrap_or(""),
                    key.id,
                    key.name,
                    key.workspace_id
                )
            })
        }
        KeysCommand::List => {
            let keys: Vec<KeyJson> = admin
                .list_keys(api::ListKeysRequest {})
                .await?
                .into_inner()
                .keys
                .into_iter()
                .map(|k| KeyJson::new(k, None))
                .collect();
            out.print(&keys, || {
                let rows: Vec<Vec<String>> = keys
                    .iter()
                    .map(|k| {
                        vec![
                            k.id.clone(),
                            k.name.clone(),
                            k.key_prefix.clone(),
                            k.status.clone(),
                            time(k.created_at_unix_ms),
                        ]
                    })
                    .collect();
                table(&["ID", "NAME", "PREFIX", "STATUS", "CREATED"], &rows)
            })
        }
        KeysCommand::Revoke { id } => {
            let k = admin
                .revoke_key(api::RevokeKeyRequest { id })
                .await?
                .into_inner();
            let key = KeyJson::new(k, None);
            out.print(&key, || format!("{} ({}) revoked", key.id, key.name))
        }
    }
}
