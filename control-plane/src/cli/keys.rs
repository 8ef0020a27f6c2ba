//! `tokenrouter keys create|list|get|update|revoke`, with balances and limits. `create` caches
//! the raw key in `<data-dir>/last_key` for `env` and `test` (unless `--no-cache`).

use clap::Subcommand;
use serde::Serialize;
use tokenrouter_proto::admin::v1 as api;

use super::gateway::{self, Cached};
use super::limits::{describe, EffectiveJson, LimitArgs, LimitsJson};
use super::output::{table, time, Output};
use super::{client, CliError, ErrorKind, Globals};

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
        /// A starting balance, exact decimal USD (0 = metered with nothing to spend yet): the
        /// key's requests are charged to it and refused with 402 once it cannot pay. Without
        /// it the key is not metered.
        #[arg(long, value_name = "USD")]
        balance: Option<String>,
        #[command(flatten)]
        limits: LimitArgs,
        /// Do not cache the raw key in <data-dir>/last_key (where `env` and `test` find it).
        #[arg(long)]
        no_cache: bool,
    },
    /// List keys (never their raw values) with their requests, tokens and spend.
    List,
    /// One key with its requests, tokens and spend.
    Get {
        /// Key id (`key_…`).
        id: String,
    },
    /// Rename a key, switch the recording of its request and response bodies, or change its
    /// limits.
    Update {
        /// Key id (`key_…`).
        id: String,
        /// A new name (at most 100 characters).
        #[arg(long)]
        name: Option<String>,
        /// Record this key's request and response bodies in the request log (true|false).
        #[arg(long, value_name = "BOOL", value_parser = clap::builder::BoolishValueParser::new())]
        store_bodies: Option<bool>,
        #[command(flatten)]
        limits: LimitArgs,
    },
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
    store_bodies: bool,
    /// Every request made with the key; tokens and spend count successful ones only.
    requests: u64,
    failed_requests: u64,
    input_tokens: u64,
    output_tokens: u64,
    total_tokens: u64,
    /// Exact decimal USD.
    spend_usd: String,
    /// `null` = never used.
    last_used_at_unix_ms: Option<i64>,
    /// Exact decimal USD; `null` = not metered.
    balance_usd: Option<String>,
    /// The key's own limits (`null` = inherited from its workspace; 0 = off).
    limits: LimitsJson,
    /// What is enforced after inheriting.
    effective_limits: EffectiveJson,
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
            store_bodies: k.store_bodies,
            requests: k.requests,
            failed_requests: k.failed_requests,
            input_tokens: k.input_tokens,
            output_tokens: k.output_tokens,
            total_tokens: k.total_tokens,
            spend_usd: k.spend_usd,
            last_used_at_unix_ms: (k.last_used_at_unix_ms > 0).then_some(k.last_used_at_unix_ms),
            balance_usd: k.balance_usd,
            limits: k.limits.into(),
            effective_limits: k.effective_limits.into(),
        }
    }

    /// `$5`, or `—` when not metered.
    fn balance(&self) -> String {
        self.balance_usd
            .as_ref()
            .map_or_else(|| "—".to_string(), |b| format!("${b}"))
    }

    /// `key_… (name): 12 requests (1 failed), 1,234 tokens (1,000 in, 234 out), $0.0012`.
    fn summary(&self) -> String {
        format!(
            "{} ({}) {}: {} requests ({} failed), {} tokens ({} in, {} out), ${}, last used {}, \
             bodies {}, balance {}, limits {}",
            self.id,
            self.name,
            self.status,
            self.requests,
            self.failed_requests,
            self.total_tokens,
            self.input_tokens,
            self.output_tokens,
            self.spend_usd,
            self.last_used_at_unix_ms
                .map_or_else(|| "never".into(), time),
            if self.store_bodies {
                "stored"
            } else {
                "not stored"
            },
            self.balance_usd
                .as_ref()
                .map_or_else(|| "none (not metered)".to_string(), |b| format!("${b}")),
            describe(&self.effective_limits),
        )
    }
}

/// Caches a new raw key for `env` and `test`; a failure is only a warning (the key exists and
/// is printed either way).
fn cache(data_dir: &std::path::Path, raw: &str) -> Option<std::path::PathBuf> {
    match gateway::cache_last_key(data_dir, raw) {
        Ok(Cached::Written(path)) => Some(path),
        Ok(Cached::NoDataDir) => {
            eprintln!(
                "note: the key is not cached for `tokenrouter env` / `tokenrouter test`: no data \
                 directory {} (pass --data-dir or set TOKENROUTER_DATA_DIR)",
                data_dir.display()
            );
            None
        }
        Err(e) => {
            eprintln!(
                "warning: cannot cache the key in {}: {e}",
                data_dir.join(gateway::LAST_KEY_FILE).display()
            );
            None
        }
    }
}

pub async fn run(cmd: KeysCommand, g: &Globals, out: &Output) -> Result<(), CliError> {
    if let KeysCommand::Update {
        name,
        store_bodies,
        limits,
        ..
    } = &cmd
    {
        if name.is_none() && store_bodies.is_none() && limits.is_empty() {
            return Err(CliError::new(
                ErrorKind::Usage,
                "nothing to update: pass --name, --store-bodies and/or limits (--rps, \
                 --hour-tokens, --hour-input-tokens, --hour-output-tokens)",
            ));
        }
    }
    let mut admin = client::connect(g).await?;
    match cmd {
        KeysCommand::Create {
            name,
            workspace,
            balance,
            limits,
            no_cache,
        } => {
            let r = admin
                .create_key(api::CreateKeyRequest {
                    balance_usd: balance.map(|b| b.trim().to_string()),
                    limits: limits.to_proto(),
                    name,
                    workspace_id: workspace,
                })
                .await?
                .into_inner();
            let cached = if no_cache {
                None
            } else {
                cache(&g.data_dir, &r.raw)
            };
            let key = KeyJson::new(r.key.unwrap_or_default(), Some(r.raw));
            out.print(&key, || {
                let mut text = format!(
                    "{}\n\nThis key is shown only once: store it now.\nid: {}  name: {}  workspace: {}  \
                     balance: {}",
                    key.raw.as_deref().unwrap_or(""),
                    key.id,
                    key.name,
                    key.workspace_id,
                    key.balance()
                );
                if let Some(path) = &cached {
                    text.push_str(&format!(
                        "\ncached in {} for `tokenrouter env` and `tokenrouter test`",
                        path.display()
                    ));
                }
                text
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
                            k.requests.to_string(),
                            k.input_tokens.to_string(),
                            k.output_tokens.to_string(),
                            k.total_tokens.to_string(),
                            format!("${}", k.spend_usd),
                            k.balance(),
                            k.last_used_at_unix_ms.map_or_else(|| "-".into(), time),
                            if k.store_bodies { "yes" } else { "no" }.into(),
                            time(k.created_at_unix_ms),
                        ]
                    })
                    .collect();
                table(
                    &[
                        "ID",
                        "NAME",
                        "PREFIX",
                        "STATUS",
                        "REQUESTS",
                        "IN",
                        "OUT",
                        "TOKENS",
                        "SPEND",
                        "BALANCE",
                        "LAST USED",
                        "BODIES",
                        "CREATED",
                    ],
                    &rows,
                )
            })
        }
        KeysCommand::Get { id } => {
            let k = admin.get_key(api::GetKeyRequest { id }).await?.into_inner();
            let key = KeyJson::new(k, None);
            out.print(&key, || key.summary())
        }
        KeysCommand::Update {
            id,
            name,
            store_bodies,
            limits,
        } => {
            let k = admin
                .update_key(api::UpdateKeyRequest {
                    limits: limits.to_proto(),
                    id,
                    name,
                    store_bodies,
                })
                .await?
                .into_inner();
            let key = KeyJson::new(k, None);
            out.print(&key, || format!("updated {}", key.summary()))
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
