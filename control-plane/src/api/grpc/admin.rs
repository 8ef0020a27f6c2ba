//! `tokenrouter.admin.v1.Admin`: the operator API over the service layer.

use std::sync::Arc;
use tokenrouter_engine::money::format_picos_usd;
use tokenrouter_proto::admin::v1 as api;
use tokenrouter_proto::admin::v1::admin_server::Admin;
use tonic::{Request, Response, Status};

use super::status;
use crate::calendar::format_day;
use crate::limits::Effective;
use crate::publisher::cluster_name;
use crate::service::{
    parse_credit_usd, parse_optional_balance_usd, BalanceView, KeyPatch, KeyWithUsage, LogFilter,
    NewProvider, Service, UsageSummary, DEFAULT_USAGE_DAYS,
};
use crate::store::metering::Owner;
use crate::store::{Limits, LogEntry, ProviderRow, UsageGroupBy, UsageGroupKey, WorkspaceRow};

/// The Admin service. Authentication is an interceptor around it (see [`super::BearerAuth`]).
#[derive(Clone, Debug)]
pub struct AdminApi {
    service: Service,
    previews: Arc<super::preview::SnapshotCache>,
}

impl AdminApi {
    pub fn new(service: Service) -> AdminApi {
        AdminApi {
            service,
            previews: Arc::default(),
        }
    }

    async fn workspace_balance(&self, id: &str) -> Result<Option<i64>, Status> {
        let view = self
            .service
            .balance(Some(Owner::Workspace(id.to_string())))
            .await
            .map_err(status)?;
        Ok(view.metered.then_some(view.balance_picos))
    }

    async fn workspace(&self, id: &str) -> Result<api::WorkspaceInfo, Status> {
        let found = self.service.get_workspace(id).await.map_err(status)?;
        let balance = self.workspace_balance(&found.0.id).await?;
        Ok(workspace_info(found, balance))
    }
}

pub fn key_info(
    KeyWithUsage {
        key: k,
        usage: u,
        balance_picos,
        effective,
    }: KeyWithUsage,
) -> api::KeyInfo {
    api::KeyInfo {
        balance_usd: balance_picos.map(|b| format_picos_usd(i128::from(b))),
        limits: Some(limits_msg(k.limits)),
        effective_limits: Some(effective_msg(effective)),
        status: k.status.as_str().to_string(),
        id: k.id,
        name: k.name,
        key_prefix: k.key_prefix,
        workspace_id: k.workspace_id,
        created_at_unix_ms: k.created_at_ms,
        revoked_at_unix_ms: k.revoked_at_ms.unwrap_or(0),
        store_bodies: k.store_bodies,
        requests: u.requests,
        failed_requests: u.failed_requests,
        input_tokens: u.input_tokens,
        output_tokens: u.output_tokens,
        total_tokens: u.total_tokens(),
        spend_usd: u.spend_usd(),
        last_used_at_unix_ms: u.last_used_at_ms.unwrap_or(0),
    }
}

pub fn limits_msg(l: Limits) -> api::Limits {
    api::Limits {
        rps: l.rps,
        hour_total_tokens: l.hour_total_tokens,
        hour_input_tokens: l.hour_input_tokens,
        hour_output_tokens: l.hour_output_tokens,
    }
}

pub fn effective_msg(e: Effective) -> api::Limits {
    api::Limits {
        rps: Some(e.rps),
        hour_total_tokens: Some(e.hour_total_tokens),
        hour_input_tokens: Some(e.hour_input_tokens),
        hour_output_tokens: Some(e.hour_output_tokens),
    }
}

pub fn limits_from_msg(l: Option<api::Limits>) -> Limits {
    let l = l.unwrap_or_default();
    Limits {
        rps: l.rps,
        hour_total_tokens: l.hour_total_tokens,
        hour_input_tokens: l.hour_input_tokens,
        hour_output_tokens: l.hour_output_tokens,
    }
}

/// The owner a balance request names: exactly one of key and workspace, or neither (total).
fn owner(key_id: &str, workspace_id: &str) -> Result<Option<Owner>, Status> {
    match (key_id.trim(), workspace_id.trim()) {
        ("", "") => Ok(None),
        (key, "") => Ok(Some(Owner::Key(key.to_string()))),
        ("", workspace) => Ok(Some(Owner::Workspace(workspace.to_string()))),
        _ => Err(Status::invalid_argument(
            "give key_id or workspace_id, not both",
        )),
    }
}

pub fn balance_info(b: BalanceView) -> api::BalanceInfo {
    let usd = |p: i64| format_picos_usd(i128::from(p));
    api::BalanceInfo {
        owner: b.owner.to_string(),
        available_usd: usd(b.available_picos()),
        id: b.id,
        metered: b.metered,
        balance_usd: usd(b.balance_picos),
        reserved_usd: usd(b.reserved_picos),
        currency: "USD".into(),
    }
}

pub fn workspace_info(
    (w, active_keys): (WorkspaceRow, u32),
    balance: Option<i64>,
) -> api::WorkspaceInfo {
    api::WorkspaceInfo {
        id: w.id,
        created_at_unix_ms: w.created_at_ms,
        balance_usd: balance.map(|b| format_picos_usd(i128::from(b))),
        limits: Some(limits_msg(w.limits)),
        active_keys,
    }
}

pub fn provider_info(p: ProviderRow) -> api::ProviderInfo {
    api::ProviderInfo {
        cluster: cluster_name(&p.name),
        fallback_credentials: p.fallback_count,
        has_credential: p.credential_sealed.is_some(),
        name: p.name,
        kind: p.kind,
        base_url: p.base_url,
        enabled: p.enabled,
        created_at_unix_ms: p.created_at_ms,
    }
}

pub fn log_row(e: LogEntry) -> api::LogRow {
    let r = e.record;
    api::LogRow {
        metadata_json: r.metadata_json,
        key_name: r.key_name,
        workspace_id: r.workspace_id,
        idempotency_key: r.idempotency_key,
        replay_of: r.replay_of,
        has_bodies: e.has_bodies,
        cost_usd: format_picos_usd(i128::from(r.cost_picos)),
        request_id: r.request_id,
        started_at_unix_ms: r.started_at_unix_ms,
        key_id: r.key_id,
        client_api: r.client_api,
        requested_model: r.requested_model,
        provider: r.provider,
        model: r.model,
        status: r.status,
        input_tokens: r.input_tokens,
        output_tokens: r.output_tokens,
        cached_tokens: r.cached_tokens,
        reasoning_tokens: r.reasoning_tokens,
        latency_ms: r.latency_ms,
        cost_picos: r.cost_picos,
        stream: r.stream,
        error_type: r.error_type,
        node_id: r.node_id,
        received_at_unix_ms: e.received_at_ms,
        firewall_actions: r.firewall_actions,
        warnings: r.warnings,
        mode: r.mode,
        tier: r.tier,
        rule_trace: r.rule_trace,
        attempts: r
            .attempts
            .into_iter()
            .map(|a| api::LogAttempt {
                provider: a.provider,
                model: a.model,
                status: a.status,
                latency_ms: a.latency_ms,
                error: a.error,
            })
            .collect(),
        ttfb_ms: r.ttfb_ms,
    }
}

/// `since_unix_ms` / `until_unix_ms`: 0 = unbounded.
fn bound(ms: i64) -> Option<i64> {
    (ms != 0).then_some(ms)
}

pub fn usage_response(s: UsageSummary) -> api::GetUsageResponse {
    let t = s.totals;
    api::GetUsageResponse {
        range_days: s.range_days,
        total_requests: t.successful(),
        total_tokens_in: t.input_tokens,
        total_tokens_out: t.output_tokens,
        total_cost_usd: format_picos_usd(t.cost_picos),
        requests: t.requests,
        failed_requests: t.failed_requests,
        group_by: s
            .group_by
            .map(|g| g.as_str().to_string())
            .unwrap_or_default(),
        since_day: format_day(s.since_day),
        breakdown: s
            .breakdown
            .into_iter()
            .map(|g| {
                let t = g.totals;
                let mut row = api::UsageGroup {
                    requests: t.requests,
                    failed_requests: t.failed_requests,
                    input_tokens: t.input_tokens,
                    output_tokens: t.output_tokens,
                    total_tokens: t.total_tokens(),
                    cost_usd: format_picos_usd(t.cost_picos),
                    ..api::UsageGroup::default()
                };
                match g.key {
                    UsageGroupKey::Key { id, name } => {
                        row.key_id = id;
                        row.key_name = name;
                    }
                    UsageGroupKey::Model(m) => row.model = m,
                    UsageGroupKey::Provider(p) => row.provider = p,
                    UsageGroupKey::Day(d) => row.day = format_day(d),
                }
                row
            })
            .collect(),
    }
}

#[tonic::async_trait]
impl Admin for AdminApi {
    async fn create_key(
        &self,
        request: Request<api::CreateKeyRequest>,
    ) -> Result<Response<api::CreateKeyResponse>, Status> {
        let r = request.into_inner();
        let balance = parse_optional_balance_usd(r.balance_usd.as_deref()).map_err(status)?;
        let (key, raw) = self
            .service
            .create_key_with(&r.name, &r.workspace_id, balance, limits_from_msg(r.limits))
            .await
            .map_err(status)?;
        tracing::info!(id = %key.id, name = %key.name, "key created");
        let key = self.service.key_usage(key).await.map_err(status)?;
        Ok(Response::new(api::CreateKeyResponse {
            key: Some(key_info(key)),
            raw,
        }))
    }

    async fn list_keys(
        &self,
        _request: Request<api::ListKeysRequest>,
    ) -> Result<Response<api::ListKeysResponse>, Status> {
        let keys = self.service.list_keys_with_usage().await.map_err(status)?;
        Ok(Response::new(api::ListKeysResponse {
            keys: keys.into_iter().map(key_info).collect(),
        }))
    }

    async fn get_key(
        &self,
        request: Request<api::GetKeyRequest>,
    ) -> Result<Response<api::KeyInfo>, Status> {
        let key = self
            .service
            .get_key(&request.into_inner().id)
            .await
            .map_err(status)?;
        let key = self.service.key_usage(key).await.map_err(status)?;
        Ok(Response::new(key_info(key)))
    }

    async fn update_key(
        &self,
        request: Request<api::UpdateKeyRequest>,
    ) -> Result<Response<api::KeyInfo>, Status> {
        let r = request.into_inner();
        let patch = KeyPatch {
            name: r.name,
            store_bodies: r.store_bodies,
            limits: limits_from_msg(r.limits),
        };
        let key = self
            .service
            .update_key(&r.id, patch)
            .await
            .map_err(status)?;
        tracing::info!(id = %key.id, name = %key.name, store_bodies = key.store_bodies, "key updated");
        let key = self.service.key_usage(key).await.map_err(status)?;
        Ok(Response::new(key_info(key)))
    }

    async fn revoke_key(
        &self,
        request: Request<api::RevokeKeyRequest>,
    ) -> Result<Response<api::KeyInfo>, Status> {
        let key = self
            .service
            .revoke_key(&request.into_inner().id)
            .await
            .map_err(status)?;
        tracing::info!(id = %key.id, "key revoked");
        let key = self.service.key_usage(key).await.map_err(status)?;
        Ok(Response::new(key_info(key)))
    }

    async fn create_workspace(
        &self,
        request: Request<api::CreateWorkspaceRequest>,
    ) -> Result<Response<api::WorkspaceInfo>, Status> {
        let r = request.into_inner();
        let balance = parse_optional_balance_usd(r.balance_usd.as_deref()).map_err(status)?;
        let w = self
            .service
            .create_workspace(&r.id, balance, limits_from_msg(r.limits))
            .await
            .map_err(status)?;
        tracing::info!(id = %w.id, "workspace created");
        self.workspace(&w.id).await.map(Response::new)
    }

    async fn list_workspaces(
        &self,
        _request: Request<api::ListWorkspacesRequest>,
    ) -> Result<Response<api::ListWorkspacesResponse>, Status> {
        let mut workspaces = Vec::new();
        for (w, n) in self.service.list_workspaces().await.map_err(status)? {
            let balance = self.workspace_balance(&w.id).await?;
            workspaces.push(workspace_info((w, n), balance));
        }
        Ok(Response::new(api::ListWorkspacesResponse { workspaces }))
    }

    async fn get_workspace(
        &self,
        request: Request<api::GetWorkspaceRequest>,
    ) -> Result<Response<api::WorkspaceInfo>, Status> {
        self.workspace(&request.into_inner().id)
            .await
            .map(Response::new)
    }

    async fn update_workspace(
        &self,
        request: Request<api::UpdateWorkspaceRequest>,
    ) -> Result<Response<api::WorkspaceInfo>, Status> {
        let r = request.into_inner();
        let w = self
            .service
            .update_workspace(&r.id, limits_from_msg(r.limits))
            .await
            .map_err(status)?;
        tracing::info!(id = %w.id, "workspace updated");
        self.workspace(&w.id).await.map(Response::new)
    }

    async fn grant_credit(
        &self,
        request: Request<api::GrantCreditRequest>,
    ) -> Result<Response<api::BalanceInfo>, Status> {
        let r = request.into_inner();
        let owner = owner(&r.key_id, &r.workspace_id)?
            .ok_or_else(|| Status::invalid_argument("key_id or workspace_id is required"))?;
        let amount = parse_credit_usd(&r.amount_usd).map_err(status)?;
        self.service
            .grant(owner.clone(), amount, "admin", None, &r.note)
            .await
            .map_err(status)?;
        tracing::info!(owner = owner.kind(), id = owner.id(), amount_usd = %r.amount_usd, "credit granted");
        let view = self.service.balance(Some(owner)).await.map_err(status)?;
        Ok(Response::new(balance_info(view)))
    }

    async fn get_balance(
        &self,
        request: Request<api::GetBalanceRequest>,
    ) -> Result<Response<api::BalanceInfo>, Status> {
        let r = request.into_inner();
        let view = self
            .service
            .balance(owner(&r.key_id, &r.workspace_id)?)
            .await
            .map_err(status)?;
        Ok(Response::new(balance_info(view)))
    }

    async fn create_topup(
        &self,
        request: Request<api::CreateTopupRequest>,
    ) -> Result<Response<api::TopupInfo>, Status> {
        let r = request.into_inner();
        let amount = parse_credit_usd(&r.amount_usd).map_err(status)?;
        let session = self
            .service
            .create_topup(&r.key_id, amount)
            .await
            .map_err(status)?;
        Ok(Response::new(api::TopupInfo {
            checkout_url: session.checkout_url,
            session_id: session.session_id,
            amount_usd: format_picos_usd(i128::from(session.amount_picos)),
            expires_at: session.expires_at_ms / 1000,
        }))
    }

    async fn add_provider(
        &self,
        request: Request<api::AddProviderRequest>,
    ) -> Result<Response<api::ProviderInfo>, Status> {
        let r = request.into_inner();
        let provider = self
            .service
            .add_provider(NewProvider {
                name: r.name,
                kind: r.kind,
                base_url: r.base_url,
                api_key: r.api_key,
                replace: r.replace,
                fallback_api_keys: r.fallback_api_keys,
            })
            .await
            .map_err(status)?;
        tracing::info!(name = %provider.name, kind = %provider.kind, "provider saved");
        Ok(Response::new(provider_info(provider)))
    }

    async fn rotate_provider_key(
        &self,
        request: Request<api::RotateProviderKeyRequest>,
    ) -> Result<Response<api::ProviderInfo>, Status> {
        let r = request.into_inner();
        let fallbacks = if r.clear_fallbacks {
            Some(Vec::new())
        } else if r.fallback_api_keys.is_empty() {
            None
        } else {
            Some(r.fallback_api_keys)
        };
        let provider = self
            .service
            .rotate_provider_key(&r.name, &r.api_key, r.keep_previous, fallbacks)
            .await
            .map_err(status)?;
        tracing::info!(
            name = %provider.name,
            fallbacks = provider.fallback_count,
            "provider credentials rotated"
        );
        Ok(Response::new(provider_info(provider)))
    }

    async fn list_providers(
        &self,
        _request: Request<api::ListProvidersRequest>,
    ) -> Result<Response<api::ListProvidersResponse>, Status> {
        let providers = self.service.list_providers().await.map_err(status)?;
        Ok(Response::new(api::ListProvidersResponse {
            providers: providers.into_iter().map(provider_info).collect(),
        }))
    }

    async fn remove_provider(
        &self,
        request: Request<api::RemoveProviderRequest>,
    ) -> Result<Response<api::RemoveProviderResponse>, Status> {
        let name = request.into_inner().name;
        self.service.remove_provider(&name).await.map_err(status)?;
        tracing::info!(name = %name, "provider removed");
        Ok(Response::new(api::RemoveProviderResponse {}))
    }

    async fn list_models(
        &self,
        _request: Request<api::ListModelsRequest>,
    ) -> Result<Response<api::ListModelsResponse>, Status> {
        super::models::list(&self.service).await
    }

    async fn list_logs(
        &self,
        request: Request<api::ListLogsRequest>,
    ) -> Result<Response<api::ListLogsResponse>, Status> {
        let r = request.into_inner();
        let filter = LogFilter {
            key_id: Some(r.key_id),
            model: Some(r.model),
            provider: Some(r.provider),
            status: Some(r.status),
            since_ms: bound(r.since_unix_ms),
            until_ms: bound(r.until_unix_ms),
            metadata_contains: Some(r.metadata_contains),
        };
        let page = self
            .service
            .query_logs(r.limit, filter, Some(r.before_request_id))
            .await
            .map_err(status)?;
        Ok(Response::new(api::ListLogsResponse {
            logs: page.entries.into_iter().map(log_row).collect(),
            next_cursor: page.next_cursor.unwrap_or_default(),
        }))
    }

    async fn get_log(
        &self,
        request: Request<api::GetLogRequest>,
    ) -> Result<Response<api::GetLogResponse>, Status> {
        let mut entry = self
            .service
            .get_log(&request.into_inner().request_id, None)
            .await
            .map_err(status)?;
        let request_body = std::mem::take(&mut entry.record.request_body);
        let response_body = std::mem::take(&mut entry.record.response_body);
        let bodies_truncated = entry.record.bodies_truncated;
        Ok(Response::new(api::GetLogResponse {
            log: Some(log_row(entry)),
            request_body,
            response_body,
            bodies_truncated,
        }))
    }

    async fn get_usage(
        &self,
        request: Request<api::GetUsageRequest>,
    ) -> Result<Response<api::GetUsageResponse>, Status> {
        let r = request.into_inner();
        let days = match r.days {
            0 => DEFAULT_USAGE_DAYS,
            n => n,
        };
        let group_by = match r.group_by.trim() {
            "" => None,
            g => Some(UsageGroupBy::parse(g).ok_or_else(|| {
                Status::invalid_argument(format!(
                    "group_by {g:?} is not one of key, model, provider, day"
                ))
            })?),
        };
        let summary = self
            .service
            .usage_summary(days, group_by, Some(r.key_id))
            .await
            .map_err(status)?;
        Ok(Response::new(usage_response(summary)))
    }

    async fn create_firewall_rule(
        &self,
        request: Request<api::CreateFirewallRuleRequest>,
    ) -> Result<Response<api::FirewallRule>, Status> {
        super::firewall::create(&self.service, request.into_inner()).await
    }

    async fn list_firewall_rules(
        &self,
        _request: Request<api::ListFirewallRulesRequest>,
    ) -> Result<Response<api::ListFirewallRulesResponse>, Status> {
        super::firewall::list(&self.service).await
    }

    async fn get_firewall_rule(
        &self,
        request: Request<api::GetFirewallRuleRequest>,
    ) -> Result<Response<api::FirewallRule>, Status> {
        super::firewall::get(&self.service, request.into_inner().id).await
    }

    async fn update_firewall_rule(
        &self,
        request: Request<api::UpdateFirewallRuleRequest>,
    ) -> Result<Response<api::FirewallRule>, Status> {
        super::firewall::update(&self.service, request.into_inner()).await
    }

    async fn delete_firewall_rule(
        &self,
        request: Request<api::DeleteFirewallRuleRequest>,
    ) -> Result<Response<api::DeleteFirewallRuleResponse>, Status> {
        super::firewall::delete(&self.service, request.into_inner().id).await
    }

    async fn list_firewall_templates(
        &self,
        _request: Request<api::ListFirewallTemplatesRequest>,
    ) -> Result<Response<api::ListFirewallTemplatesResponse>, Status> {
        super::firewall::templates(&self.service)
    }

    async fn enable_firewall_template(
        &self,
        request: Request<api::EnableFirewallTemplateRequest>,
    ) -> Result<Response<api::FirewallRule>, Status> {
        super::firewall::enable_template(&self.service, request.into_inner()).await
    }

    async fn upsert_model(
        &self,
        request: Request<api::UpsertModelRequest>,
    ) -> Result<Response<api::ModelInfo>, Status> {
        super::models::upsert(&self.service, request.into_inner()).await
    }

    async fn update_model(
        &self,
        request: Request<api::UpdateModelRequest>,
    ) -> Result<Response<api::ModelInfo>, Status> {
        super::models::update(&self.service, request.into_inner()).await
    }

    async fn create_routing_rule(
        &self,
        request: Request<api::CreateRoutingRuleRequest>,
    ) -> Result<Response<api::RoutingRule>, Status> {
        super::routing::create_rule(&self.service, request.into_inner()).await
    }

    async fn list_routing_rules(
        &self,
        _request: Request<api::ListRoutingRulesRequest>,
    ) -> Result<Response<api::ListRoutingRulesResponse>, Status> {
        super::routing::list_rules(&self.service).await
    }

    async fn get_routing_rule(
        &self,
        request: Request<api::GetRoutingRuleRequest>,
    ) -> Result<Response<api::RoutingRule>, Status> {
        super::routing::get_rule(&self.service, request.into_inner().id).await
    }

    async fn update_routing_rule(
        &self,
        request: Request<api::UpdateRoutingRuleRequest>,
    ) -> Result<Response<api::RoutingRule>, Status> {
        super::routing::update_rule(&self.service, request.into_inner()).await
    }

    async fn delete_routing_rule(
        &self,
        request: Request<api::DeleteRoutingRuleRequest>,
    ) -> Result<Response<api::DeleteRoutingRuleResponse>, Status> {
        super::routing::delete_rule(&self.service, request.into_inner().id).await
    }

    async fn set_routing_config(
        &self,
        request: Request<api::SetRoutingConfigRequest>,
    ) -> Result<Response<api::RoutingConfig>, Status> {
        super::routing::set_config(&self.service, request.into_inner()).await
    }

    async fn get_routing_config(
        &self,
        request: Request<api::GetRoutingConfigRequest>,
    ) -> Result<Response<api::RoutingConfig>, Status> {
        super::routing::get_config(&self.service, &request.into_inner().key_id).await
    }

    async fn list_routing_configs(
        &self,
        _request: Request<api::ListRoutingConfigsRequest>,
    ) -> Result<Response<api::ListRoutingConfigsResponse>, Status> {
        super::routing::list_configs(&self.service).await
    }

    async fn delete_routing_config(
        &self,
        request: Request<api::DeleteRoutingConfigRequest>,
    ) -> Result<Response<api::DeleteRoutingConfigResponse>, Status> {
        super::routing::delete_config(&self.service, &request.into_inner().key_id).await
    }

    async fn preview_decision(
        &self,
        request: Request<api::PreviewDecisionRequest>,
    ) -> Result<Response<api::PreviewDecisionResponse>, Status> {
        super::preview::preview(&self.service, &self.previews, request.into_inner())
    }
}
