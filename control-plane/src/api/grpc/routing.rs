//! Admin routing RPCs (routing rules, per-key routing configurations): wire ↔ domain
//! conversion only (the service validates).

use tokenrouter_proto::admin::v1 as api;
use tokenrouter_proto::config::v1 as pb;
use tonic::{Response, Status};

use super::status;
use crate::service::{NewRoutingRule, RoutingRulePatch, Service};
use crate::store::{RoutingConfigRow, RoutingRuleRow};

pub fn rule_info(r: RoutingRuleRow) -> api::RoutingRule {
    api::RoutingRule {
        id: r.id,
        name: r.name,
        priority: r.priority,
        is_enabled: r.is_enabled,
        match_json: r.match_json,
        action_json: r.action_json,
        key_id: r.key_id,
        created_at_unix_ms: r.created_at_ms,
        updated_at_unix_ms: r.updated_at_ms,
    }
}

fn backend_info(b: pb::Backend) -> api::Backend {
    api::Backend {
        model: b.model,
        priority: b.priority,
        weight: b.weight,
    }
}

fn backend(b: api::Backend) -> pb::Backend {
    pb::Backend {
        model: b.model,
        priority: b.priority,
        weight: b.weight,
    }
}

pub fn config_info(c: RoutingConfigRow) -> api::RoutingConfig {
    api::RoutingConfig {
        key_id: c.key_id,
        active: c.active,
        strategy: c.strategy,
        backends: c.backends.into_iter().map(backend_info).collect(),
        rules: c
            .rules
            .into_iter()
            .map(|r| api::ConfigRule {
                name: r.name,
                match_json: r.match_json,
                backends: r.backends.into_iter().map(backend_info).collect(),
            })
            .collect(),
        updated_at_unix_ms: c.updated_at_ms,
    }
}

fn config(c: api::RoutingConfig) -> pb::RoutingConfig {
    pb::RoutingConfig {
        key_id: c.key_id,
        active: c.active,
        strategy: c.strategy,
        backends: c.backends.into_iter().map(backend).collect(),
        rules: c
            .rules
            .into_iter()
            .map(|r| pb::ConfigRule {
                name: r.name,
                match_json: r.match_json,
                backends: r.backends.into_iter().map(backend).collect(),
            })
            .collect(),
    }
}

type Reply<T> = Result<Response<T>, Status>;

pub async fn create_rule(
    service: &Service,
    r: api::CreateRoutingRuleRequest,
) -> Reply<api::RoutingRule> {
    let rule = service
        .create_routing_rule(NewRoutingRule {
            name: r.name,
            priority: r.priority,
            is_enabled: r.is_enabled,
            match_json: r.match_json,
            action_json: r.action_json,
            key_id: r.key_id,
        })
        .await
        .map_err(status)?;
    tracing::info!(id = rule.id, name = %rule.name, "routing rule created");
    Ok(Response::new(rule_info(rule)))
}

pub async fn list_rules(service: &Service) -> Reply<api::ListRoutingRulesResponse> {
    let rules = service.list_routing_rules().await.map_err(status)?;
    Ok(Response::new(api::ListRoutingRulesResponse {
        rules: rules.into_iter().map(rule_info).collect(),
    }))
}

pub async fn get_rule(service: &Service, id: i64) -> Reply<api::RoutingRule> {
    let rule = service.get_routing_rule(id).await.map_err(status)?;
    Ok(Response::new(rule_info(rule)))
}

pub async fn update_rule(
    service: &Service,
    r: api::UpdateRoutingRuleRequest,
) -> Reply<api::RoutingRule> {
    let rule = service
        .update_routing_rule(
            r.id,
            RoutingRulePatch {
                name: r.name,
                priority: r.priority,
                is_enabled: r.is_enabled,
                match_json: r.match_json,
                action_json: r.action_json,
                key_id: r.key_id,
            },
        )
        .await
        .map_err(status)?;
    tracing::info!(id = rule.id, name = %rule.name, "routing rule updated");
    Ok(Response::new(rule_info(rule)))
}

pub async fn delete_rule(service: &Service, id: i64) -> Reply<api::DeleteRoutingRuleResponse> {
    service.delete_routing_rule(id).await.map_err(status)?;
    tracing::info!(id, "routing rule deleted");
    Ok(Response::new(api::DeleteRoutingRuleResponse {}))
}

pub async fn set_config(
    service: &Service,
    r: api::SetRoutingConfigRequest,
) -> Reply<api::RoutingConfig> {
    let c = r
        .config
        .ok_or_else(|| Status::invalid_argument("config is required"))?;
    let saved = service
        .set_routing_config(config(c))
        .await
        .map_err(status)?;
    tracing::info!(key = %saved.key_id, strategy = %saved.strategy, active = saved.active,
        "routing configuration saved");
    Ok(Response::new(config_info(saved)))
}

pub async fn get_config(service: &Service, key_id: &str) -> Reply<api::RoutingConfig> {
    let c = service.get_routing_config(key_id).await.map_err(status)?;
    Ok(Response::new(config_info(c)))
}

pub async fn list_configs(service: &Service) -> Reply<api::ListRoutingConfigsResponse> {
    let configs = service.list_routing_configs().await.map_err(status)?;
    Ok(Response::new(api::ListRoutingConfigsResponse {
        configs: configs.into_iter().map(config_info).collect(),
    }))
}

pub async fn delete_config(
    service: &Service,
    key_id: &str,
) -> Reply<api::DeleteRoutingConfigResponse> {
    service
        .delete_routing_config(key_id)
        .await
        .map_err(status)?;
    tracing::info!(key = %key_id, "routing configuration deleted");
    Ok(Response::new(api::DeleteRoutingConfigResponse {}))
}
