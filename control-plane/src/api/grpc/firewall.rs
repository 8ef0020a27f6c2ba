//! Admin firewall RPCs: wire ↔ domain conversion only (the service validates).

use tokenrouter_engine::firewall::templates::Template;
use tokenrouter_proto::admin::v1 as api;
use tonic::{Response, Status};

use super::status;
use crate::service::{FirewallRulePatch, NewFirewallRule, Service, TemplateOverrides};
use crate::store::FirewallRuleRow;

pub fn rule_info(r: FirewallRuleRow) -> api::FirewallRule {
    api::FirewallRule {
        id: r.id,
        name: r.name,
        priority: r.priority,
        is_enabled: r.is_enabled,
        scope: r.scope,
        r#type: r.match_type,
        pattern: r.pattern,
        action: r.action,
        replacement: r.replacement,
        key_id: r.key_id,
        max_match_chars: r.max_match_chars,
        check: r.check,
        template: r.template,
        created_at_unix_ms: r.created_at_ms,
        updated_at_unix_ms: r.updated_at_ms,
        workspace_id: r.workspace_id,
    }
}

fn template_info(t: &Template) -> api::FirewallTemplate {
    api::FirewallTemplate {
        name: t.name.into(),
        rule_name: t.rule_name.into(),
        description: t.description.into(),
        r#type: t.match_type.as_str().into(),
        pattern: t.pattern.into(),
        scope: t.scope.as_str().into(),
        action: t.action.as_str().into(),
        priority: t.priority,
        replacement: t.replacement.into(),
        check: t.check.as_str().into(),
    }
}

type Reply<T> = Result<Response<T>, Status>;

pub async fn create(
    service: &Service,
    r: api::CreateFirewallRuleRequest,
) -> Reply<api::FirewallRule> {
    let rule = service
        .create_firewall_rule(NewFirewallRule {
            name: r.name,
            priority: r.priority,
            is_enabled: r.is_enabled,
            scope: r.scope,
            match_type: r.r#type,
            pattern: r.pattern,
            action: r.action,
            replacement: r.replacement,
            key_id: r.key_id,
            max_match_chars: r.max_match_chars,
            check: r.check,
            workspace_id: r.workspace_id,
        })
        .await
        .map_err(status)?;
    tracing::info!(id = rule.id, name = %rule.name, "firewall rule created");
    Ok(Response::new(rule_info(rule)))
}

pub async fn list(service: &Service) -> Reply<api::ListFirewallRulesResponse> {
    let rules = service.list_firewall_rules().await.map_err(status)?;
    Ok(Response::new(api::ListFirewallRulesResponse {
        rules: rules.into_iter().map(rule_info).collect(),
    }))
}

pub async fn get(service: &Service, id: i64) -> Reply<api::FirewallRule> {
    let rule = service.get_firewall_rule(id).await.map_err(status)?;
    Ok(Response::new(rule_info(rule)))
}

pub async fn update(
    service: &Service,
    r: api::UpdateFirewallRuleRequest,
) -> Reply<api::FirewallRule> {
    let rule = service
        .update_firewall_rule(
            r.id,
            FirewallRulePatch {
                name: r.name,
                priority: r.priority,
                is_enabled: r.is_enabled,
                scope: r.scope,
                match_type: r.r#type,
                pattern: r.pattern,
                action: r.action,
                replacement: r.replacement,
                key_id: r.key_id,
                max_match_chars: r.max_match_chars,
                check: r.check,
                workspace_id: r.workspace_id,
            },
        )
        .await
        .map_err(status)?;
    tracing::info!(id = rule.id, name = %rule.name, "firewall rule updated");
    Ok(Response::new(rule_info(rule)))
}

pub async fn delete(service: &Service, id: i64) -> Reply<api::DeleteFirewallRuleResponse> {
    service.delete_firewall_rule(id).await.map_err(status)?;
    tracing::info!(id, "firewall rule deleted");
    Ok(Response::new(api::DeleteFirewallRuleResponse {}))
}

pub fn templates(service: &Service) -> Reply<api::ListFirewallTemplatesResponse> {
    Ok(Response::new(api::ListFirewallTemplatesResponse {
        templates: service
            .firewall_templates()
            .iter()
            .map(template_info)
            .collect(),
    }))
}

pub async fn enable_template(
    service: &Service,
    r: api::EnableFirewallTemplateRequest,
) -> Reply<api::FirewallRule> {
    let rule = service
        .enable_firewall_template(
            &r.name,
            TemplateOverrides {
                scope: Some(r.scope).filter(|s| !s.is_empty()),
                action: Some(r.action).filter(|a| !a.is_empty()),
                priority: r.priority,
                key_id: Some(r.key_id).filter(|k| !k.is_empty()),
                workspace_id: Some(r.workspace_id).filter(|w| !w.is_empty()),
            },
        )
        .await
        .map_err(status)?;
    tracing::info!(id = rule.id, template = %r.name, "firewall template enabled");
    Ok(Response::new(rule_info(rule)))
}
