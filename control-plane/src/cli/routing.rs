//! `tokenrouter routing set|get|list|delete|activate|deactivate`: per-key routing
//! configurations (one per key).

use std::path::PathBuf;

use clap::{Args, Subcommand};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokenrouter_proto::admin::v1 as api;

use super::output::{table, time, Output};
use super::{client, CliError, ErrorKind, Globals};

#[derive(Debug, Subcommand)]
pub enum RoutingCommand {
    /// Create or replace a key's routing configuration.
    ///
    /// Fallback (backends tried in order until one answers):
    ///   tokenrouter routing set --key-id K --strategy fallback
    ///     --backend openai/gpt-4o --backend anthropic/claude-sonnet-4-5
    ///
    /// Traffic split (by weight, on every request):
    ///   tokenrouter routing set --key-id K --strategy split
    ///     --backend openai/gpt-4o --weight 3 --backend anthropic/claude-sonnet-4-5 --weight 1
    ///
    /// Backends are `provider/model` (a registered provider, or a provider kind) or a bare
    /// enabled catalogue model. Priorities default to the order given (0, 1, …); --weight and
    /// --priority, when given, apply to the backends in order and must be given for each.
    /// Advanced rules (strategy `rules`) need --json-file: {"strategy": "rules", "active": true,
    /// "backends": [{"model", "priority", "weight"}], "rules": [{"name", "match_json": {…},
    /// "backends": [...]}]} (the shape `routing get --json` prints; "key_id" optional).
    #[command(verbatim_doc_comment)]
    Set(SetArgs),
    /// Show a key's routing configuration.
    Get { key_id: String },
    /// List every routing configuration.
    List,
    /// Delete a key's routing configuration (its requests route by their `model` again).
    #[command(visible_alias = "remove")]
    Delete { key_id: String },
    /// Enforce a key's saved configuration again.
    Activate { key_id: String },
    /// Keep a key's configuration but stop enforcing it.
    Deactivate { key_id: String },
}

#[derive(Debug, Args)]
pub struct SetArgs {
    /// The key the configuration belongs to.
    #[arg(long, alias = "key")]
    key_id: Option<String>,
    /// fallback, split or rules.
    #[arg(long, required_unless_present = "json_file")]
    strategy: Option<String>,
    /// A backend (repeat, in priority order).
    #[arg(long = "backend", value_name = "MODEL")]
    backends: Vec<String>,
    /// Traffic-split weight of each backend, in order.
    #[arg(long = "weight", value_name = "N")]
    weights: Vec<u32>,
    /// Fallback priority of each backend, in order (lower first).
    #[arg(long = "priority", value_name = "N", allow_negative_numbers = true)]
    priorities: Vec<i32>,
    /// Save the configuration without enforcing it.
    #[arg(long)]
    inactive: bool,
    /// Read the configuration from this JSON file.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["strategy", "backends", "weights", "priorities"])]
    json_file: Option<PathBuf>,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct BackendJson {
    model: String,
    #[serde(default)]
    priority: i32,
    #[serde(default)]
    weight: u32,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigRuleJson {
    #[serde(default)]
    name: String,
    /// A JSON object (a string holding one is accepted too).
    #[serde(default)]
    match_json: Value,
    #[serde(default)]
    backends: Vec<BackendJson>,
}

/// The fields of `admin.v1.RoutingConfig`, with each rule's `match_json` as a JSON object.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigJson {
    #[serde(default)]
    key_id: String,
    #[serde(default = "yes")]
    active: bool,
    strategy: String,
    #[serde(default)]
    backends: Vec<BackendJson>,
    #[serde(default)]
    rules: Vec<ConfigRuleJson>,
    #[serde(default)]
    updated_at_unix_ms: i64,
}

fn backend_json(b: api::Backend) -> BackendJson {
    BackendJson {
        model: b.model,
        priority: b.priority,
        weight: b.weight,
    }
}

fn backend(b: BackendJson) -> api::Backend {
    api::Backend {
        model: b.model,
        priority: b.priority,
        weight: b.weight,
    }
}

impl From<api::RoutingConfig> for ConfigJson {
    fn from(c: api::RoutingConfig) -> ConfigJson {
        ConfigJson {
            key_id: c.key_id,
            active: c.active,
            strategy: c.strategy,
            backends: c.backends.into_iter().map(backend_json).collect(),
            rules: c
                .rules
                .into_iter()
                .map(|r| ConfigRuleJson {
                    name: r.name,
                    match_json: if r.match_json.trim().is_empty() {
                        Value::Object(serde_json::Map::new())
                    } else {
                        serde_json::from_str(&r.match_json).unwrap_or(Value::String(r.match_json))
                    },
                    backends: r.backends.into_iter().map(backend_json).collect(),
                })
                .collect(),
            updated_at_unix_ms: c.updated_at_unix_ms,
        }
    }
}

impl From<ConfigJson> for api::RoutingConfig {
    fn from(c: ConfigJson) -> api::RoutingConfig {
        api::RoutingConfig {
            key_id: c.key_id,
            active: c.active,
            strategy: c.strategy,
            backends: c.backends.into_iter().map(backend).collect(),
            rules: c
                .rules
                .into_iter()
                .map(|r| api::ConfigRule {
                    name: r.name,
                    match_json: match r.match_json {
                        Value::String(s) => s,
                        Value::Null => String::new(),
                        other => other.to_string(),
                    },
                    backends: r.backends.into_iter().map(backend).collect(),
                })
                .collect(),
            updated_at_unix_ms: 0,
        }
    }
}

fn backends_text(backends: &[BackendJson]) -> String {
    backends
        .iter()
        .map(|b| format!("{} (priority {}, weight {})", b.model, b.priority, b.weight))
        .collect::<Vec<_>>()
        .join(", ")
}

fn describe(c: &ConfigJson) -> String {
    let mut text = format!(
        "routing configuration of key {}: {}, {} (updated {})\n",
        c.key_id,
        c.strategy,
        if c.active { "active" } else { "inactive" },
        time(c.updated_at_unix_ms)
    );
    let rows: Vec<Vec<String>> = c
        .backends
        .iter()
        .map(|b| {
            vec![
                b.priority.to_string(),
                b.weight.to_string(),
                b.model.clone(),
            ]
        })
        .collect();
    if !rows.is_empty() {
        text.push_str(&table(&["PRIORITY", "WEIGHT", "BACKEND"], &rows));
    }
    for r in &c.rules {
        text.push_str(&format!(
            "rule {:?} when {}: {}\n",
            r.name,
            r.match_json,
            backends_text(&r.backends)
        ));
    }
    text
}

/// The configuration `routing set` sends.
fn config_to_set(a: SetArgs) -> Result<api::RoutingConfig, CliError> {
    let usage = |m: String| CliError::new(ErrorKind::Usage, m);
    if let Some(path) = a.json_file {
        let text = std::fs::read_to_string(&path)
            .map_err(|e| CliError::config(format!("cannot read {}: {e}", path.display())))?;
        let mut config: ConfigJson = serde_json::from_str(&text).map_err(|e| {
            CliError::new(
                ErrorKind::InvalidArgument,
                format!("{}: not a routing configuration: {e}", path.display()),
            )
        })?;
        match (a.key_id, config.key_id.is_empty()) {
            (Some(k), _) => config.key_id = k,
            (None, true) => {
                return Err(usage(
                    "--key-id is required (or \"key_id\" in the file)".into(),
                ))
            }
            (None, false) => {}
        }
        if a.inactive {
            config.active = false;
        }
        return Ok(config.into());
    }
    let key_id = a
        .key_id
        .ok_or_else(|| usage("--key-id is required".into()))?;
    let n = a.backends.len();
    for (option, given) in [
        ("--weight", a.weights.len()),
        ("--priority", a.priorities.len()),
    ] {
        if given != 0 && given != n {
            return Err(usage(format!(
                "{given} {option} values for {n} backends: give one per --backend, in order"
            )));
        }
    }
    let backends = a
        .backends
        .into_iter()
        .enumerate()
        .map(|(i, model)| api::Backend {
            model,
            priority: a
                .priorities
                .get(i)
                .copied()
                .unwrap_or_else(|| i32::try_from(i).unwrap_or(i32::MAX)),
            weight: a.weights.get(i).copied().unwrap_or(1),
        })
        .collect();
    Ok(api::RoutingConfig {
        key_id,
        active: !a.inactive,
        strategy: a.strategy.unwrap_or_default(),
        backends,
        ..api::RoutingConfig::default()
    })
}

async fn set(
    admin: &mut client::Admin,
    config: api::RoutingConfig,
) -> Result<ConfigJson, CliError> {
    Ok(admin
        .set_routing_config(api::SetRoutingConfigRequest {
            config: Some(config),
        })
        .await?
        .into_inner()
        .into())
}

/// Saves the key's configuration again with `active` changed.
async fn toggle(
    admin: &mut client::Admin,
    key_id: String,
    active: bool,
    out: &Output,
) -> Result<(), CliError> {
    let mut config = admin
        .get_routing_config(api::GetRoutingConfigRequest { key_id })
        .await?
        .into_inner();
    config.active = active;
    let saved = set(admin, config).await?;
    out.print(&saved, || {
        format!(
            "routing configuration of key {} {}",
            saved.key_id,
            if active { "activated" } else { "deactivated" }
        )
    })
}

pub async fn run(cmd: RoutingCommand, g: &Globals, out: &Output) -> Result<(), CliError> {
    if let RoutingCommand::Set(a) = cmd {
        // Local input is checked before connecting: a usage error needs no control plane.
        let config = config_to_set(a)?;
        let mut admin = client::connect(g).await?;
        let saved = set(&mut admin, config).await?;
        return out.print(&saved, || format!("saved {}", describe(&saved)));
    }
    let mut admin = client::connect(g).await?;
    match cmd {
        RoutingCommand::Set(_) => Ok(()), // handled above
        RoutingCommand::Get { key_id } => {
            let config: ConfigJson = admin
                .get_routing_config(api::GetRoutingConfigRequest { key_id })
                .await?
                .into_inner()
                .into();
            out.print(&config, || describe(&config))
        }
        RoutingCommand::List => {
            let configs: Vec<ConfigJson> = admin
                .list_routing_configs(api::ListRoutingConfigsRequest {})
                .await?
                .into_inner()
                .configs
                .into_iter()
                .map(ConfigJson::from)
                .collect();
            out.print(&configs, || {
                let rows: Vec<Vec<String>> = configs
                    .iter()
                    .map(|c| {
                        vec![
                            c.key_id.clone(),
                            c.strategy.clone(),
                            if c.active { "yes" } else { "no" }.into(),
                            c.backends
                                .iter()
                                .map(|b| b.model.as_str())
                                .collect::<Vec<_>>()
                                .join(", "),
                            c.rules.len().to_string(),
                        ]
                    })
                    .collect();
                table(&["KEY", "STRATEGY", "ACTIVE", "BACKENDS", "RULES"], &rows)
            })
        }
        RoutingCommand::Delete { key_id } => {
            admin
                .delete_routing_config(api::DeleteRoutingConfigRequest {
                    key_id: key_id.clone(),
                })
                .await?;
            out.print(&serde_json::json!({"removed": key_id}), || {
                format!("routing configuration of key {key_id} removed")
            })
        }
        RoutingCommand::Activate { key_id } => toggle(&mut admin, key_id, true, out).await,
        RoutingCommand::Deactivate { key_id } => toggle(&mut admin, key_id, false, out).await,
    }
}
