//! `tokenrouter rules create|list|get|update|delete`: routing rules (seed 003's
//! `routing_rules`).

use clap::{Args, Subcommand};
use serde::Serialize;
use serde_json::Value;
use tokenrouter_proto::admin::v1 as api;

use super::output::{table, Output};
use super::{client, CliError, Globals};

#[derive(Debug, Subcommand)]
pub enum RulesCommand {
    /// Create a rule (validated by the control plane's routing engine before it is stored).
    ///
    /// Example: tokenrouter rules create --name "Coding Tasks → OpenAI" --priority 100
    ///   --match '{"task":"coding"}' --action '{"set_provider":"openai","set_model":"gpt-4o"}'
    ///
    /// Conditions (all must hold): contains (string or list, case-insensitive, any),
    /// metadata_equals (object), mode, task, model, headers (object). Actions: set_provider,
    /// set_model, set_mode, add_warning ({"message": …}).
    #[command(visible_alias = "add", verbatim_doc_comment)]
    Create(CreateArgs),
    /// List rules, highest priority first.
    List,
    /// Show one rule.
    Get { id: i64 },
    /// Change a rule; only the options given change.
    Update(UpdateArgs),
    /// Delete a rule.
    #[command(visible_alias = "remove")]
    Delete { id: i64 },
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Unique rule name (shown in the rule trace).
    #[arg(long)]
    name: String,
    /// Higher runs first.
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    priority: i32,
    /// The conditions, a JSON object ({} matches every request).
    #[arg(long = "match", value_name = "JSON")]
    match_json: String,
    /// The actions, a JSON object.
    #[arg(long = "action", value_name = "JSON")]
    action_json: String,
    /// Apply to this key only [default: every key].
    #[arg(long, alias = "key", default_value = "", hide_default_value = true)]
    key_id: String,
    /// Store the rule disabled.
    #[arg(long)]
    disabled: bool,
}

#[derive(Debug, Args)]
pub struct UpdateArgs {
    id: i64,
    #[arg(long)]
    name: Option<String>,
    #[arg(long, allow_negative_numbers = true)]
    priority: Option<i32>,
    #[arg(long, conflicts_with = "disable")]
    enable: bool,
    #[arg(long)]
    disable: bool,
    /// The conditions, a JSON object.
    #[arg(long = "match", value_name = "JSON")]
    match_json: Option<String>,
    /// The actions, a JSON object.
    #[arg(long = "action", value_name = "JSON")]
    action_json: Option<String>,
    /// Key id, or "" for every key.
    #[arg(long, alias = "key")]
    key_id: Option<String>,
}

/// The fields of `admin.v1.RoutingRule`, with `match_json` and `action_json` as JSON objects
/// (as the SDK shows them).
#[derive(Debug, Serialize)]
struct RuleJson {
    id: i64,
    name: String,
    priority: i32,
    is_enabled: bool,
    match_json: Value,
    action_json: Value,
    key_id: String,
    created_at_unix_ms: i64,
    updated_at_unix_ms: i64,
}

/// A stored JSON text as a value (`{}` when empty; the text itself if it does not parse).
fn json_value(text: &str) -> Value {
    if text.trim().is_empty() {
        return Value::Object(serde_json::Map::new());
    }
    serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_string()))
}

impl From<api::RoutingRule> for RuleJson {
    fn from(r: api::RoutingRule) -> RuleJson {
        RuleJson {
            id: r.id,
            name: r.name,
            priority: r.priority,
            is_enabled: r.is_enabled,
            match_json: json_value(&r.match_json),
            action_json: json_value(&r.action_json),
            key_id: r.key_id,
            created_at_unix_ms: r.created_at_unix_ms,
            updated_at_unix_ms: r.updated_at_unix_ms,
        }
    }
}

fn describe(r: &RuleJson) -> String {
    format!(
        "routing rule {} {:?} (priority {}{}{}): match {} → {}",
        r.id,
        r.name,
        r.priority,
        if r.is_enabled { "" } else { ", disabled" },
        if r.key_id.is_empty() {
            String::new()
        } else {
            format!(", key {}", r.key_id)
        },
        r.match_json,
        r.action_json
    )
}

pub async fn run(cmd: RulesCommand, g: &Globals, out: &Output) -> Result<(), CliError> {
    let mut admin = client::connect(g).await?;
    match cmd {
        RulesCommand::Create(a) => {
            let rule: RuleJson = admin
                .create_routing_rule(api::CreateRoutingRuleRequest {
                    name: a.name,
                    priority: a.priority,
                    is_enabled: !a.disabled,
                    match_json: a.match_json,
                    action_json: a.action_json,
                    key_id: a.key_id,
                })
                .await?
                .into_inner()
                .into();
            out.print(&rule, || format!("created {}", describe(&rule)))
        }
        RulesCommand::List => {
            let mut rules: Vec<RuleJson> = admin
                .list_routing_rules(api::ListRoutingRulesRequest {})
                .await?
                .into_inner()
                .rules
                .into_iter()
                .map(RuleJson::from)
                .collect();
            rules.sort_by(|a, b| b.priority.cmp(&a.priority).then(a.id.cmp(&b.id)));
            out.print(&rules, || {
                let rows: Vec<Vec<String>> = rules
                    .iter()
                    .map(|r| {
                        vec![
                            r.id.to_string(),
                            r.priority.to_string(),
                            r.name.clone(),
                            if r.is_enabled { "yes" } else { "no" }.into(),
                            if r.key_id.is_empty() {
                                "*".into()
                            } else {
                                r.key_id.clone()
                            },
                            r.match_json.to_string(),
                            r.action_json.to_string(),
                        ]
                    })
                    .collect();
                table(
                    &[
                        "ID", "PRIORITY", "NAME", "ENABLED", "KEY", "MATCH", "ACTION",
                    ],
                    &rows,
                )
            })
        }
        RulesCommand::Get { id } => {
            let rule: RuleJson = admin
                .get_routing_rule(api::GetRoutingRuleRequest { id })
                .await?
                .into_inner()
                .into();
            out.print(&rule, || describe(&rule))
        }
        RulesCommand::Update(u) => {
            let is_enabled = match (u.enable, u.disable) {
                (true, _) => Some(true),
                (_, true) => Some(false),
                _ => None,
            };
            let rule: RuleJson = admin
                .update_routing_rule(api::UpdateRoutingRuleRequest {
                    id: u.id,
                    name: u.name,
                    priority: u.priority,
                    is_enabled,
                    match_json: u.match_json,
                    action_json: u.action_json,
                    key_id: u.key_id,
                })
                .await?
                .into_inner()
                .into();
            out.print(&rule, || format!("updated {}", describe(&rule)))
        }
        RulesCommand::Delete { id } => {
            admin
                .delete_routing_rule(api::DeleteRoutingRuleRequest { id })
                .await?;
            out.print(&serde_json::json!({"removed": id}), || {
                format!("routing rule {id} removed")
            })
        }
    }
}
