//! `tokenrouter providers add|list|remove`.

use clap::Subcommand;
use serde::Serialize;
use tokenrouter_proto::admin::v1 as api;

use super::output::{table, time, Output};
use super::{client, CliError, Globals};

#[derive(Debug, Subcommand)]
pub enum ProvidersCommand {
    /// Register a provider (becomes cluster `tr_provider_<name>` in every Envoy).
    Add {
        /// Unique name: 1-64 of a-z, 0-9, '-' and '_'.
        #[arg(long)]
        name: String,
        /// openai, anthropic, gemini, mistral, deepseek, azure or openai-compatible.
        #[arg(long)]
        kind: String,
        /// Base URL as the provider's SDK takes it, e.g. https://api.openai.com/v1.
        #[arg(long)]
        base_url: String,
        /// Provider credential; stored encrypted, never shown again.
        #[arg(long, default_value = "", hide_default_value = true)]
        api_key: String,
        /// Replace a provider of the same name.
        #[arg(long)]
        replace: bool,
        /// A fallback credential (repeatable, in order): a request this provider serves alone
        /// is retried with the next one when the provider refuses or limits a key.
        #[arg(long = "fallback-key")]
        fallback_keys: Vec<String>,
    },
    /// Replace a provider's credential without dropping traffic: with --keep-previous the old
    /// key stays as the last fallback until you rotate again without it.
    ///
    /// Example: tokenrouter providers rotate-key openai --api-key sk-new --keep-previous
    RotateKey {
        name: String,
        #[arg(long)]
        api_key: String,
        /// Keep the previous primary as a fallback.
        #[arg(long)]
        keep_previous: bool,
        /// Replace the fallbacks (repeatable); without it they are kept.
        #[arg(long = "fallback-key")]
        fallback_keys: Vec<String>,
        /// Drop every fallback (except a kept previous key).
        #[arg(long, conflicts_with = "fallback_keys")]
        clear_fallbacks: bool,
    },
    /// List providers (never their credentials).
    List,
    /// Remove a provider.
    Remove { name: String },
}

#[derive(Debug, Serialize)]
struct ProviderJson {
    name: String,
    kind: String,
    base_url: String,
    has_credential: bool,
    fallback_credentials: u32,
    cluster: String,
    enabled: bool,
    created_at_unix_ms: i64,
}

impl From<api::ProviderInfo> for ProviderJson {
    fn from(p: api::ProviderInfo) -> ProviderJson {
        ProviderJson {
            name: p.name,
            kind: p.kind,
            base_url: p.base_url,
            has_credential: p.has_credential,
            fallback_credentials: p.fallback_credentials,
            cluster: p.cluster,
            enabled: p.enabled,
            created_at_unix_ms: p.created_at_unix_ms,
        }
    }
}

pub async fn run(cmd: ProvidersCommand, g: &Globals, out: &Output) -> Result<(), CliError> {
    let mut admin = client::connect(g).await?;
    match cmd {
        ProvidersCommand::Add {
            name,
            kind,
            base_url,
            api_key,
            replace,
            fallback_keys,
        } => {
            let p: ProviderJson = admin
                .add_provider(api::AddProviderRequest {
                    name,
                    kind,
                    base_url,
                    api_key,
                    replace,
                    fallback_api_keys: fallback_keys,
                })
                .await?
                .into_inner()
                .into();
            out.print(&p, || {
                format!(
                    "provider {} ({}, {}) saved; cluster {}{}",
                    p.name,
                    p.kind,
                    p.base_url,
                    p.cluster,
                    if p.has_credential {
                        ", credential stored"
                    } else {
                        ""
                    }
                )
            })
        }
        ProvidersCommand::RotateKey {
            name,
            api_key,
            keep_previous,
            fallback_keys,
            clear_fallbacks,
        } => {
            let p: ProviderJson = admin
                .rotate_provider_key(api::RotateProviderKeyRequest {
                    name,
                    api_key,
                    keep_previous,
                    fallback_api_keys: fallback_keys,
                    clear_fallbacks,
                })
                .await?
                .into_inner()
                .into();
            out.print(&p, || {
                format!(
                    "provider {}: new credential stored, {} fallback credential(s)",
                    p.name, p.fallback_credentials
                )
            })
        }
        ProvidersCommand::List => {
            let providers: Vec<ProviderJson> = admin
                .list_providers(api::ListProvidersRequest {})
                .await?
                .into_inner()
                .providers
                .into_iter()
                .map(ProviderJson::from)
                .collect();
            out.print(&providers, || {
                let rows: Vec<Vec<String>> = providers
                    .iter()
                    .map(|p| {
                        vec![
                            p.name.clone(),
                            p.kind.clone(),
                            p.base_url.clone(),
                            if p.has_credential { "yes" } else { "no" }.into(),
                            p.cluster.clone(),
                            time(p.created_at_unix_ms),
                        ]
                    })
                    .collect();
                table(
                    &[
                        "NAME",
                        "KIND",
                        "BASE URL",
                        "CREDENTIAL",
                        "CLUSTER",
                        "CREATED",
                    ],
                    &rows,
                )
            })
        }
        ProvidersCommand::Remove { name } => {
            admin
                .remove_provider(api::RemoveProviderRequest { name: name.clone() })
                .await?;
            out.print(&serde_json::json!({"removed": name}), || {
                format!("provider {name} removed")
            })
        }
    }
}
