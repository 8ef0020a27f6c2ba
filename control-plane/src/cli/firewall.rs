//! `tokenrouter firewall add|list|get|update|remove|templates|enable-template`.

use clap::{Args, Subcommand};
use serde::Serialize;
use tokenrouter_proto::admin::v1 as api;

use super::output::{table, Output};
use super::{client, CliError, Globals};

#[derive(Debug, Subcommand)]
pub enum FirewallCommand {
    /// Create a rule (validated by the control plane before it is stored).
    Add(AddArgs),
    /// List rules, highest priority first.
    List,
    /// Show one rule.
    Get { id: i64 },
    /// Change a rule; only the options given change.
    Update(UpdateArgs),
    /// Delete a rule.
    Remove { id: i64 },
    /// Ready-made rules (ssn, credit_card, email, phone, openai_key).
    Templates,
    /// Create a template's rule, or enable it again.
    EnableTemplate(EnableArgs),
}

#[derive(Debug, Args)]
pub struct AddArgs {
    /// Unique rule name (shown in errors and headers).
    #[arg(long)]
    name: String,
    /// prompt, response or metadata.
    #[arg(long)]
    scope: String,
    /// substring (ASCII case-insensitive) or regex.
    #[arg(long = "type")]
    kind: String,
    /// The text or regular expression (at most 1 KiB).
    #[arg(long)]
    pattern: String,
    /// block, mask or warn.
    #[arg(long)]
    action: String,
    /// Higher runs first.
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    priority: i32,
    /// What a masked match becomes [default: [REDACTED]].
    #[arg(long, default_value = "", hide_default_value = true)]
    replacement: String,
    /// Apply to this key only [default: every key].
    #[arg(long = "key", default_value = "", hide_default_value = true)]
    key_id: String,
    /// Apply to the keys of this workspace only [default: every workspace].
    #[arg(long = "workspace", default_value = "", hide_default_value = true)]
    workspace_id: String,
    /// Regex rules: longest match caught across streamed chunks [default: 256].
    #[arg(long, default_value_t = 0, hide_default_value = true)]
    max_match_chars: u32,
    /// Extra check a match must pass: luhn.
    #[arg(long, default_value = "", hide_default_value = true)]
    check: String,
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
    #[arg(long)]
    scope: Option<String>,
    #[arg(long = "type")]
    kind: Option<String>,
    #[arg(long)]
    pattern: Option<String>,
    #[arg(long)]
    action: Option<String>,
    #[arg(long)]
    replacement: Option<String>,
    /// Key id, or "" for every key.
    #[arg(long = "key")]
    key_id: Option<String>,
    /// Workspace id, or "" for every workspace.
    #[arg(long = "workspace")]
    workspace_id: Option<String>,
    #[arg(long)]
    max_match_chars: Option<u32>,
    #[arg(long)]
    check: Option<String>,
}

#[derive(Debug, Args)]
pub struct EnableArgs {
    /// Template name (see `tokenrouter firewall templates`).
    name: String,
    #[arg(long, default_value = "", hide_default_value = true)]
    scope: String,
    #[arg(long, default_value = "", hide_default_value = true)]
    action: String,
    #[arg(long, allow_negative_numbers = true)]
    priority: Option<i32>,
    #[arg(long = "key", default_value = "", hide_default_value = true)]
    key_id: String,
    /// Apply to the keys of this workspace only.
    #[arg(long = "workspace", default_value = "", hide_default_value = true)]
    workspace_id: String,
}

/// Exactly the fields of `admin.v1.FirewallRule`.
#[derive(Debug, Serialize)]
struct RuleJson {
    id: i64,
    name: String,
    priority: i32,
    is_enabled: bool,
    scope: String,
    #[serde(rename = "type")]
    kind: String,
    pattern: String,
    action: String,
    replacement: String,
    key_id: String,
    workspace_id: String,
    max_match_chars: u32,
    check: String,
    template: String,
    created_at_unix_ms: i64,
    updated_at_unix_ms: i64,
}

impl From<api::FirewallRule> for RuleJson {
    fn from(r: api::FirewallRule) -> RuleJson {
        RuleJson {
            id: r.id,
            name: r.name,
            priority: r.priority,
            is_enabled: r.is_enabled,
            scope: r.scope,
            kind: r.r#type,
            pattern: r.pattern,
            action: r.action,
            replacement: r.replacement,
            key_id: r.key_id,
            workspace_id: r.workspace_id,
            max_match_chars: r.max_match_chars,
            check: r.check,
            template: r.template,
            created_at_unix_ms: r.created_at_unix_ms,
            updated_at_unix_ms: r.updated_at_unix_ms,
        }
    }
}

#[derive(Debug, Serialize)]
struct TemplateJson {
    name: String,
    rule_name: String,
    description: String,
    #[serde(rename = "type")]
    kind: String,
    pattern: String,
    scope: String,
    action: String,
    priority: i32,
    replacement: String,
    check: String,
}

fn describe(r: &RuleJson) -> String {
    let mut only = String::new();
    if !r.workspace_id.is_empty() {
        only.push_str(&format!(", workspace {}", r.workspace_id));
    }
    if !r.key_id.is_empty() {
        only.push_str(&format!(", key {}", r.key_id));
    }
    format!(
        "firewall rule {} {:?}: {} {} {} {:?} (priority {}{}{})",
        r.id,
        r.name,
        r.action,
        r.scope,
        r.kind,
        r.pattern,
        r.priority,
        only,
        if r.is_enabled { "" } else { ", disabled" }
    )
}

/// A table cell: the id, or `*` for every one.
fn or_every(id: &str) -> String {
    if id.is_empty() {
        "*".into()
    } else {
        id.to_string()
    }
}

pub async fn run(cmd: FirewallCommand, g: &Globals, out: &Output) -> Result<(), CliError> {
    let mut admin = client::connect(g).await?;
    match cmd {
        FirewallCommand::Add(a) => {
            let rule: RuleJson = admin
                .create_firewall_rule(api::CreateFirewallRuleRequest {
                    name: a.name,
                    priority: a.priority,
                    is_enabled: !a.disabled,
                    scope: a.scope,
                    r#type: a.kind,
                    pattern: a.pattern,
                    action: a.action,
                    replacement: a.replacement,
                    key_id: a.key_id,
                    max_match_chars: a.max_match_chars,
                    check: a.check,
                    workspace_id: a.workspace_id,
                })
                .await?
                .into_inner()
                .into();
            out.print(&rule, || format!("created {}", describe(&rule)))
        }
        FirewallCommand::List => {
            let mut rules: Vec<RuleJson> = admin
                .list_firewall_rules(api::ListFirewallRulesRequest {})
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
                            r.scope.clone(),
                            r.kind.clone(),
                            r.action.clone(),
                            if r.is_enabled { "yes" } else { "no" }.into(),
                            or_every(&r.workspace_id),
                            or_every(&r.key_id),
                            r.pattern.clone(),
                        ]
                    })
                    .collect();
                table(
                    &[
                        "ID",
                        "PRIORITY",
                        "NAME",
                        "SCOPE",
                        "TYPE",
                        "ACTION",
                        "ENABLED",
                        "WORKSPACE",
                        "KEY",
                        "PATTERN",
                    ],
                    &rows,
                )
            })
        }
        FirewallCommand::Get { id } => {
            let rule: RuleJson = admin
                .get_firewall_rule(api::GetFirewallRuleRequest { id })
                .await?
                .into_inner()
                .into();
            out.print(&rule, || describe(&rule))
        }
        FirewallCommand::Update(u) => {
            let is_enabled = match (u.enable, u.disable) {
                (true, _) => Some(true),
                (_, true) => Some(false),
                _ => None,
            };
            let rule: RuleJson = admin
                .update_firewall_rule(api::UpdateFirewallRuleRequest {
                    id: u.id,
                    name: u.name,
                    priority: u.priority,
                    is_enabled,
                    scope: u.scope,
                    r#type: u.kind,
                    pattern: u.pattern,
                    action: u.action,
                    replacement: u.replacement,
                    key_id: u.key_id,
                    max_match_chars: u.max_match_chars,
                    check: u.check,
                    workspace_id: u.workspace_id,
                })
                .await?
                .into_inner()
                .into();
            out.print(&rule, || format!("updated {}", describe(&rule)))
        }
        FirewallCommand::Remove { id } => {
            admin
                .delete_firewall_rule(api::DeleteFirewallRuleRequest { id })
                .await?;
            out.print(&serde_json::json!({"removed": id}), || {
                format!("firewall rule {id} removed")
            })
        }
        FirewallCommand::Templates => {
            let templates: Vec<TemplateJson> = admin
                .list_firewall_templates(api::ListFirewallTemplatesRequest {})
                .await?
                .into_inner()
                .templates
                .into_iter()
                .map(|t| TemplateJson {
                    name: t.name,
                    rule_name: t.rule_name,
                    description: t.description,
                    kind: t.r#type,
                    pattern: t.pattern,
                    scope: t.scope,
                    action: t.action,
                    priority: t.priority,
                    replacement: t.replacement,
                    check: t.check,
                })
                .collect();
            out.print(&templates, || {
                let rows: Vec<Vec<String>> = templates
                    .iter()
                    .map(|t| {
                        vec![
                            t.name.clone(),
                            t.scope.clone(),
                            t.action.clone(),
                            t.description.clone(),
                        ]
                    })
                    .collect();
                table(&["NAME", "SCOPE", "ACTION", "DESCRIPTION"], &rows)
            })
        }
        FirewallCommand::EnableTemplate(e) => {
            let rule: RuleJson = admin
                .enable_firewall_template(api::EnableFirewallTemplateRequest {
                    name: e.name,
                    scope: e.scope,
                    action: e.action,
                    priority: e.priority,
                    key_id: e.key_id,
                    workspace_id: e.workspace_id,
                })
                .await?
                .into_inner()
                .into();
            out.print(&rule, || format!("enabled {}", describe(&rule)))
        }
    }
}
