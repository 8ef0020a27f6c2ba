//! Firewall rules: every rule is validated by the engine's own compiler before it is stored, so
//! an invalid or oversized pattern is refused here and never reaches an edge.

use tokenrouter_engine::firewall::templates::{self, Template};
use tokenrouter_engine::firewall::{self, Action, Scope};

use super::{now_ms, unexpected, Result, Service, ServiceError};
use crate::store::{Changed, ConfigChange, FirewallRuleRow};

/// A rule to create: the stored fields the caller chooses.
#[derive(Clone, Debug, Default)]
pub struct NewFirewallRule {
    pub name: String,
    pub priority: i32,
    pub is_enabled: bool,
    pub scope: String,
    pub match_type: String,
    pub pattern: String,
    pub action: String,
    pub replacement: String,
    pub key_id: String,
    pub max_match_chars: u32,
    pub check: String,
    /// Empty = every workspace.
    pub workspace_id: String,
}

/// Fields to change; `None` keeps the stored value.
#[derive(Clone, Debug, Default)]
pub struct FirewallRulePatch {
    pub name: Option<String>,
    pub priority: Option<i32>,
    pub is_enabled: Option<bool>,
    pub scope: Option<String>,
    pub match_type: Option<String>,
    pub pattern: Option<String>,
    pub action: Option<String>,
    pub replacement: Option<String>,
    pub key_id: Option<String>,
    pub max_match_chars: Option<u32>,
    pub check: Option<String>,
    /// `Some("")`: every workspace.
    pub workspace_id: Option<String>,
}

/// What a user may change when enabling a template; `None` keeps the template's default.
#[derive(Clone, Debug, Default)]
pub struct TemplateOverrides {
    pub scope: Option<String>,
    pub action: Option<String>,
    pub priority: Option<i32>,
    pub key_id: Option<String>,
    pub workspace_id: Option<String>,
}

impl Service {
    /// Refuses what the engine would refuse, per-key rules for keys that do not exist,
    /// per-workspace rules for workspaces that do not exist, and rules naming a key and a
    /// workspace the key is not in.
    async fn check_rule(&self, row: &mut FirewallRuleRow) -> Result<()> {
        row.name = row.name.trim().to_string();
        row.key_id = row.key_id.trim().to_string();
        row.workspace_id = row.workspace_id.trim().to_string();
        firewall::validate(&row.to_proto())
            .map_err(|e| ServiceError::InvalidArgument(e.to_string()))?;
        if !row.workspace_id.is_empty() {
            let workspaces = self.store.list_workspaces().await?;
            if !workspaces.iter().any(|(w, _)| w.id == row.workspace_id) {
                return Err(ServiceError::InvalidArgument(format!(
                    "firewall rule {:?}: workspace {} does not exist",
                    row.name, row.workspace_id
                )));
            }
        }
        if !row.key_id.is_empty() {
            let keys = self.store.list_keys().await?;
            let Some(key) = keys.iter().find(|k| k.id == row.key_id) else {
                return Err(ServiceError::InvalidArgument(format!(
                    "firewall rule {:?}: key {} does not exist",
                    row.name, row.key_id
                )));
            };
            if !row.workspace_id.is_empty() && key.workspace_id != row.workspace_id {
                return Err(ServiceError::InvalidArgument(format!(
                    "firewall rule {:?}: key {} is in workspace {}, not {}",
                    row.name, row.key_id, key.workspace_id, row.workspace_id
                )));
            }
        }
        Ok(())
    }

    async fn write_rule(&self, change: ConfigChange) -> Result<FirewallRuleRow> {
        match self.write(change).await? {
            Changed::FirewallRule(rule) => Ok(rule),
            other => Err(unexpected(other)),
        }
    }

    pub async fn create_firewall_rule(&self, new: NewFirewallRule) -> Result<FirewallRuleRow> {
        let now = now_ms();
        let mut row = FirewallRuleRow {
            id: 0,
            name: new.name,
            priority: new.priority,
            is_enabled: new.is_enabled,
            scope: new.scope.trim().to_string(),
            match_type: new.match_type.trim().to_string(),
            pattern: new.pattern,
            action: new.action.trim().to_string(),
            replacement: new.replacement,
            key_id: new.key_id,
            workspace_id: new.workspace_id,
            max_match_chars: new.max_match_chars,
            check: new.check.trim().to_string(),
            template: String::new(),
            created_at_ms: now,
            updated_at_ms: now,
        };
        self.check_rule(&mut row).await?;
        self.write_rule(ConfigChange::CreateFirewallRule(row)).await
    }

    pub async fn list_firewall_rules(&self) -> Result<Vec<FirewallRuleRow>> {
        Ok(self.store.list_firewall_rules().await?)
    }

    pub async fn get_firewall_rule(&self, id: i64) -> Result<FirewallRuleRow> {
        self.list_firewall_rules()
            .await?
            .into_iter()
            .find(|r| r.id == id)
            .ok_or_else(|| ServiceError::NotFound(format!("firewall rule {id} not found")))
    }

    pub async fn update_firewall_rule(
        &self,
        id: i64,
        patch: FirewallRulePatch,
    ) -> Result<FirewallRuleRow> {
        let mut row = self.get_firewall_rule(id).await?;
        let FirewallRulePatch {
            name,
            priority,
            is_enabled,
            scope,
            match_type,
            pattern,
            action,
            replacement,
            key_id,
            max_match_chars,
            check,
            workspace_id,
        } = patch;
        let changes_match = match_type.is_some() || pattern.is_some();
        row.name = name.unwrap_or(row.name);
        row.priority = priority.unwrap_or(row.priority);
        row.is_enabled = is_enabled.unwrap_or(row.is_enabled);
        row.scope = scope.map_or(row.scope, |s| s.trim().to_string());
        row.match_type = match_type.map_or(row.match_type, |s| s.trim().to_string());
        row.pattern = pattern.unwrap_or(row.pattern);
        row.action = action.map_or(row.action, |s| s.trim().to_string());
        row.replacement = replacement.unwrap_or(row.replacement);
        row.key_id = key_id.unwrap_or(row.key_id);
        row.workspace_id = workspace_id.unwrap_or(row.workspace_id);
        row.max_match_chars = max_match_chars.unwrap_or(row.max_match_chars);
        row.check = check.map_or(row.check, |s| s.trim().to_string());
        if changes_match {
            // A rewritten pattern is no longer the template's.
            row.template.clear();
        }
        row.updated_at_ms = now_ms();
        self.check_rule(&mut row).await?;
        self.write_rule(ConfigChange::UpdateFirewallRule(row)).await
    }

    pub async fn delete_firewall_rule(&self, id: i64) -> Result<()> {
        match self.write(ConfigChange::DeleteFirewallRule { id }).await? {
            Changed::FirewallRuleRemoved(_) => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    pub fn firewall_templates(&self) -> &'static [Template] {
        templates::TEMPLATES
    }

    /// Creates the template's rule; when a rule of that name exists, enables it (and applies
    /// the overrides) instead.
    pub async fn enable_firewall_template(
        &self,
        name: &str,
        overrides: TemplateOverrides,
    ) -> Result<FirewallRuleRow> {
        let template = templates::template(name.trim()).ok_or_else(|| {
            let names: Vec<&str> = templates::TEMPLATES.iter().map(|t| t.name).collect();
            ServiceError::NotFound(format!(
                "no firewall template named {name:?}; templates: {}",
                names.join(", ")
            ))
        })?;
        let scope = match overrides.scope.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(s) => Some(Scope::parse(s).ok_or_else(|| {
                ServiceError::InvalidArgument(format!(
                    "unknown scope {s:?}: use prompt, response or metadata"
                ))
            })?),
        };
        let action = match overrides.action.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(a) => Some(Action::parse(a).ok_or_else(|| {
                ServiceError::InvalidArgument(format!(
                    "unknown action {a:?}: use block, mask or warn"
                ))
            })?),
        };
        let proto = template.rule(scope, action, overrides.priority);
        let existing = self
            .list_firewall_rules()
            .await?
            .into_iter()
            .find(|r| r.name == template.rule_name);
        if let Some(rule) = existing {
            return self
                .update_firewall_rule(
                    rule.id,
                    FirewallRulePatch {
                        is_enabled: Some(true),
                        scope: scope.map(|_| proto.scope.clone()),
                        action: action.map(|_| proto.action.clone()),
                        priority: overrides.priority,
                        key_id: overrides.key_id,
                        workspace_id: overrides.workspace_id,
                        ..FirewallRulePatch::default()
                    },
                )
                .await;
        }
        let now = now_ms();
        let mut row = FirewallRuleRow {
            id: 0,
            name: proto.name,
            priority: proto.priority,
            is_enabled: true,
            scope: proto.scope,
            match_type: proto.r#type,
            pattern: proto.pattern,
            action: proto.action,
            replacement: proto.replacement,
            key_id: overrides.key_id.unwrap_or_default(),
            workspace_id: overrides.workspace_id.unwrap_or_default(),
            max_match_chars: proto.max_match_chars,
            check: proto.check,
            template: template.name.to_string(),
            created_at_ms: now,
            updated_at_ms: now,
        };
        self.check_rule(&mut row).await?;
        self.write_rule(ConfigChange::CreateFirewallRule(row)).await
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::service::tests::service;

    fn rule(name: &str, kind: &str, pattern: &str) -> NewFirewallRule {
        NewFirewallRule {
            name: name.into(),
            priority: 100,
            is_enabled: true,
            scope: "prompt".into(),
            match_type: kind.into(),
            pattern: pattern.into(),
            action: "block".into(),
            ..NewFirewallRule::default()
        }
    }

    #[tokio::test]
    async fn crud_is_validated_and_published() {
        let (svc, _dir) = service().await;
        let mut snaps = svc.snapshots();
        snaps.borrow_and_update();

        let created = svc
            .create_firewall_rule(rule(" Block Cards ", "regex", r"\d{4}-\d{4}"))
            .await
            .unwrap();
        assert!(created.id > 0);
        assert_eq!(created.name, "Block Cards");
        svc.settled().await;
        let snap = snaps.borrow_and_update().clone();
        assert_eq!(snap.firewall_rules.len(), 1);
        assert_eq!(snap.firewall_rules[0].id, created.id);
        assert_eq!(snap.firewall_rules[0].pattern, r"\d{4}-\d{4}");

        assert!(matches!(
            svc.create_firewall_rule(rule("Block Cards", "substring", "x"))
                .await,
            Err(ServiceError::AlreadyExists(_))
        ));
        assert_eq!(svc.get_firewall_rule(created.id).await.unwrap(), created);

        let updated = svc
            .update_firewall_rule(
                created.id,
                FirewallRulePatch {
                    is_enabled: Some(false),
                    action: Some("warn".into()),
                    ..FirewallRulePatch::default()
                },
            )
            .await
            .unwrap();
        assert!(!updated.is_enabled);
        assert_eq!(updated.action, "warn");
        assert_eq!(updated.pattern, created.pattern);
        assert_eq!(updated.created_at_ms, created.created_at_ms);
        svc.settled().await;
        assert!(!snaps.borrow_and_update().firewall_rules[0].enabled);

        svc.delete_firewall_rule(created.id).await.unwrap();
        svc.settled().await;
        assert!(snaps.borrow_and_update().firewall_rules.is_empty());
        assert!(matches!(
            svc.delete_firewall_rule(created.id).await,
            Err(ServiceError::NotFound(_))
        ));
        assert!(matches!(
            svc.get_firewall_rule(created.id).await,
            Err(ServiceError::NotFound(_))
        ));
        assert!(matches!(
            svc.update_firewall_rule(created.id, FirewallRulePatch::default())
                .await,
            Err(ServiceError::NotFound(_))
        ));
    }

    #[tokio::test]
    async fn invalid_rules_are_refused_before_storing() {
        let (svc, _dir) = service().await;
        let v0 = svc.snapshots().borrow().version;
        let cases = [
            (rule("r", "regex", "(unclosed"), "invalid regex"),
            (rule("r", "regex", &"a".repeat(2000)), "at most 1024"),
            (rule("r", "regex", "((a{50}){50}){50}"), "too large"),
            (rule("r", "glob", "x"), "unknown type"),
            (rule("", "substring", "x"), "name is required"),
            (
                NewFirewallRule {
                    key_id: "key_missing".into(),
                    ..rule("r", "substring", "x")
                },
                "does not exist",
            ),
        ];
        for (new, want) in cases {
            match svc.create_firewall_rule(new).await {
                Err(ServiceError::InvalidArgument(m)) => assert!(m.contains(want), "{m}"),
                other => panic!("{want}: {other:?}"),
            }
        }
        let ok = svc
            .create_firewall_rule(rule("r", "substring", "x"))
            .await
            .unwrap();
        let bad_patch = FirewallRulePatch {
            pattern: Some("[".into()),
            match_type: Some("regex".into()),
            ..FirewallRulePatch::default()
        };
        assert!(matches!(
            svc.update_firewall_rule(ok.id, bad_patch).await,
            Err(ServiceError::InvalidArgument(_))
        ));
        assert_eq!(svc.get_firewall_rule(ok.id).await.unwrap(), ok);
        svc.settled().await;
        assert_eq!(svc.snapshots().borrow().version, v0 + 1);
    }

    #[tokio::test]
    async fn templates_enable_by_name_once() {
        let (svc, _dir) = service().await;
        assert_eq!(svc.firewall_templates().len(), 5);
        let card = svc
            .enable_firewall_template("credit_card", TemplateOverrides::default())
            .await
            .unwrap();
        assert_eq!(card.check, "luhn");
        assert_eq!(card.template, "credit_card");
        assert!(card.is_enabled);
        svc.update_firewall_rule(
            card.id,
            FirewallRulePatch {
                is_enabled: Some(false),
                ..FirewallRulePatch::default()
            },
        )
        .await
        .unwrap();
        let again = svc
            .enable_firewall_template(
                "credit_card",
                TemplateOverrides {
                    action: Some("mask".into()),
                    ..TemplateOverrides::default()
                },
            )
            .await
            .unwrap();
        assert_eq!(again.id, card.id);
        assert!(again.is_enabled);
        assert_eq!(again.action, "mask");
        assert_eq!(svc.list_firewall_rules().await.unwrap().len(), 1);
        assert!(matches!(
            svc.enable_firewall_template("nope", TemplateOverrides::default())
                .await,
            Err(ServiceError::NotFound(_))
        ));
        let email = svc
            .enable_firewall_template(
                "email",
                TemplateOverrides {
                    scope: Some("prompt".into()),
                    ..TemplateOverrides::default()
                },
            )
            .await
            .unwrap();
        assert_eq!(email.scope, "prompt");
        svc.settled().await;
        assert_eq!(svc.snapshots().borrow().firewall_rules.len(), 2);
    }

    #[tokio::test]
    async fn workspace_rules_need_an_existing_workspace_and_its_keys() {
        let (svc, _dir) = service().await;
        let in_ws = |name: &str, ws: &str, key: &str| NewFirewallRule {
            workspace_id: ws.into(),
            key_id: key.into(),
            ..rule(name, "substring", "x")
        };
        for (new, want) in [
            (in_ws("r", "team-a", ""), "workspace team-a does not exist"),
            (in_ws("r", "Team A", ""), "is not valid"),
        ] {
            match svc.create_firewall_rule(new).await {
                Err(ServiceError::InvalidArgument(m)) => assert!(m.contains(want), "{m}"),
                other => panic!("{want}: {other:?}"),
            }
        }
        let (a, _) = svc.create_key("a", "team-a").await.unwrap();
        let (b, _) = svc.create_key("b", "team-b").await.unwrap();

        let team = svc
            .create_firewall_rule(in_ws("team", " team-a ", ""))
            .await
            .unwrap();
        assert_eq!(team.workspace_id, "team-a");
        assert_eq!(svc.get_firewall_rule(team.id).await.unwrap(), team);
        match svc
            .create_firewall_rule(in_ws("both", "team-a", &b.id))
            .await
        {
            Err(ServiceError::InvalidArgument(m)) => {
                assert!(m.contains("is in workspace team-b, not team-a"), "{m}")
            }
            other => panic!("{other:?}"),
        }
        let both = svc
            .create_firewall_rule(in_ws("both", "team-a", &a.id))
            .await
            .unwrap();
        assert_eq!(
            (both.key_id.as_str(), both.workspace_id.as_str()),
            (a.id.as_str(), "team-a")
        );

        // Moving the rule to a workspace its key is not in is refused; "" clears it.
        let to = |ws: &str| FirewallRulePatch {
            workspace_id: Some(ws.into()),
            ..FirewallRulePatch::default()
        };
        assert!(matches!(
            svc.update_firewall_rule(both.id, to("team-b")).await,
            Err(ServiceError::InvalidArgument(_))
        ));
        let cleared = svc.update_firewall_rule(both.id, to("")).await.unwrap();
        assert_eq!(cleared.workspace_id, "");
        let moved = svc
            .update_firewall_rule(team.id, to("team-b"))
            .await
            .unwrap();
        assert_eq!(moved.workspace_id, "team-b");
        // Patches that leave the workspace alone keep it.
        let kept = svc
            .update_firewall_rule(
                team.id,
                FirewallRulePatch {
                    action: Some("warn".into()),
                    ..FirewallRulePatch::default()
                },
            )
            .await
            .unwrap();
        assert_eq!(kept.workspace_id, "team-b");

        let email = svc
            .enable_firewall_template(
                "email",
                TemplateOverrides {
                    workspace_id: Some("team-a".into()),
                    ..TemplateOverrides::default()
                },
            )
            .await
            .unwrap();
        assert_eq!(email.workspace_id, "team-a");
        assert!(matches!(
            svc.enable_firewall_template(
                "ssn",
                TemplateOverrides {
                    workspace_id: Some("nope".into()),
                    ..TemplateOverrides::default()
                },
            )
            .await,
            Err(ServiceError::InvalidArgument(_))
        ));

        svc.settled().await;
        let snap = svc.snapshots().borrow().clone();
        let published: Vec<(&str, &str)> = snap
            .firewall_rules
            .iter()
            .map(|r| (r.name.as_str(), r.workspace_id.as_str()))
            .collect();
        assert!(published.contains(&("team", "team-b")), "{published:?}");
        assert!(published.contains(&("both", "")), "{published:?}");
        assert!(
            published.contains(&(email.name.as_str(), "team-a")),
            "{published:?}"
        );
    }
}
