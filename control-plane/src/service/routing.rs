//! Routing rules (seed 003's `routing_rules`) and per-key routing configurations (seed 004).
//! Both are validated by the engine's own compilers (`routing::rules::validate`,
//! `routing::config::validate`) before they are stored; the control plane adds what only it can
//! check: that the key exists and that every backend names something routable.

use tokenrouter_engine::routing::config::{self as key_config, Strategy};
use tokenrouter_engine::routing::rules;
use tokenrouter_engine::upstream::ProviderKind;
use tokenrouter_proto::config::v1 as pb;

use super::{now_ms, unexpected, Result, Service, ServiceError};
use crate::store::{Changed, ConfigChange, ProviderRow, RoutingConfigRow, RoutingRuleRow};

/// A routing rule to create.
#[derive(Clone, Debug, Default)]
pub struct NewRoutingRule {
    pub name: String,
    pub priority: i32,
    pub is_enabled: bool,
    pub match_json: String,
    pub action_json: String,
    /// Empty = every key.
    pub key_id: String,
}

/// Fields to change; `None` keeps the stored value.
#[derive(Clone, Debug, Default)]
pub struct RoutingRulePatch {
    pub name: Option<String>,
    pub priority: Option<i32>,
    pub is_enabled: Option<bool>,
    pub match_json: Option<String>,
    pub action_json: Option<String>,
    pub key_id: Option<String>,
}

/// Why `backend` names nothing the gateway can route to, if it does not. Accepted: a bare
/// enabled catalogue model; `kind/model` naming an enabled catalogue model (or any model when a
/// registered provider of that kind accepts any); `provider/model` of a registered provider
/// whose kind's catalogue has the model enabled, or whose kind accepts any model
/// (`openai-compatible`, `azure`). The split at the first `/` is the edge's own
/// (`routing::resolve`), so a catalogue id that contains `/` is named `<provider>/<id>`.
fn check_backend(backend: &str, models: &[pb::Model], providers: &[ProviderRow]) -> Result<()> {
    let invalid =
        |why: String| ServiceError::InvalidArgument(format!("backend {backend:?}: {why}"));
    let catalogued = |kinds: &[ProviderKind], id: &str| {
        models
            .iter()
            .find(|m| m.id == id && kinds.iter().any(|k| k.as_str() == m.provider_kind))
    };
    let Some((prefix, id)) = backend.split_once('/') else {
        return match models
            .iter()
            .filter(|m| m.id == backend)
            .max_by_key(|m| m.enabled)
        {
            Some(m) if m.enabled => Ok(()),
            Some(_) => Err(invalid("the model is disabled in the catalogue".into())),
            None => Err(invalid(
                "not in the catalogue; name a catalogue model or `provider/model`".into(),
            )),
        };
    };
    let (kind, accepts_any) = match providers.iter().find(|p| p.name == prefix) {
        Some(p) => {
            let kind = ProviderKind::parse(&p.kind)
                .ok_or_else(|| invalid(format!("provider {prefix} has unknown kind {}", p.kind)))?;
            (kind, kind.accepts_any_model())
        }
        None => {
            let kind = ProviderKind::parse(prefix).ok_or_else(|| {
                let hint = if models.iter().any(|m| m.id == backend) {
                    " (a catalogue model whose id contains '/' is named `<provider>/<id>`)"
                } else {
                    ""
                };
                invalid(format!("provider {prefix:?} is not registered{hint}"))
            })?;
            let served = providers.iter().any(|p| p.kind == kind.as_str());
            (kind, served && kind.accepts_any_model())
        }
    };
    match catalogued(&[kind, kind.catalogue_kind()], id) {
        Some(m) if m.enabled => Ok(()),
        Some(_) => Err(invalid("the model is disabled in the catalogue".into())),
        None if accepts_any => Ok(()),
        None => Err(invalid(format!("{kind} has no catalogue model {id:?}"))),
    }
}

impl Service {
    /// Refuses what the engine would refuse, an empty name, and per-key rules for keys that do
    /// not exist.
    async fn check_routing_rule(&self, row: &mut RoutingRuleRow) -> Result<()> {
        row.name = row.name.trim().to_string();
        row.key_id = row.key_id.trim().to_string();
        if row.name.is_empty() {
            return Err(ServiceError::InvalidArgument(
                "routing rule name is required".into(),
            ));
        }
        rules::validate(&row.to_proto())
            .map_err(|e| ServiceError::InvalidArgument(e.to_string()))?;
        if !row.key_id.is_empty() {
            let keys = self.store.list_keys().await?;
            if !keys.iter().any(|k| k.id == row.key_id) {
                return Err(ServiceError::InvalidArgument(format!(
                    "routing rule {:?}: key {} does not exist",
                    row.name, row.key_id
                )));
            }
        }
        Ok(())
    }

    async fn write_routing_rule(&self, change: ConfigChange) -> Result<RoutingRuleRow> {
        match self.write(change).await? {
            Changed::RoutingRule(rule) => Ok(rule),
            other => Err(unexpected(other)),
        }
    }

    pub async fn create_routing_rule(&self, new: NewRoutingRule) -> Result<RoutingRuleRow> {
        let now = now_ms();
        let mut row = RoutingRuleRow {
            id: 0,
            name: new.name,
            priority: new.priority,
            is_enabled: new.is_enabled,
            match_json: new.match_json,
            action_json: new.action_json,
            key_id: new.key_id,
            created_at_ms: now,
            updated_at_ms: now,
        };
        self.check_routing_rule(&mut row).await?;
        self.write_routing_rule(ConfigChange::CreateRoutingRule(row))
            .await
    }

    /// Routing rules by id.
    pub async fn list_routing_rules(&self) -> Result<Vec<RoutingRuleRow>> {
        Ok(self.store.list_routing_rules().await?)
    }

    pub async fn get_routing_rule(&self, id: i64) -> Result<RoutingRuleRow> {
        self.list_routing_rules()
            .await?
            .into_iter()
            .find(|r| r.id == id)
            .ok_or_else(|| ServiceError::NotFound(format!("routing rule {id} not found")))
    }

    pub async fn update_routing_rule(
        &self,
        id: i64,
        patch: RoutingRulePatch,
    ) -> Result<RoutingRuleRow> {
        let mut row = self.get_routing_rule(id).await?;
        let RoutingRulePatch {
            name,
            priority,
            is_enabled,
            match_json,
            action_json,
            key_id,
        } = patch;
        row.name = name.unwrap_or(row.name);
        row.priority = priority.unwrap_or(row.priority);
        row.is_enabled = is_enabled.unwrap_or(row.is_enabled);
        row.match_json = match_json.unwrap_or(row.match_json);
        row.action_json = action_json.unwrap_or(row.action_json);
        row.key_id = key_id.unwrap_or(row.key_id);
        row.updated_at_ms = now_ms();
        self.check_routing_rule(&mut row).await?;
        self.write_routing_rule(ConfigChange::UpdateRoutingRule(row))
            .await
    }

    pub async fn delete_routing_rule(&self, id: i64) -> Result<()> {
        match self.write(ConfigChange::DeleteRoutingRule { id }).await? {
            Changed::RoutingRuleRemoved(_) => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    /// Creates or replaces the key's routing configuration. An unknown key is `NotFound`; a
    /// configuration the engine refuses, or a backend that names nothing routable, is
    /// `InvalidArgument` naming the backend.
    pub async fn set_routing_config(&self, config: pb::RoutingConfig) -> Result<RoutingConfigRow> {
        let key_id = config.key_id.trim().to_string();
        if key_id.is_empty() {
            return Err(ServiceError::InvalidArgument("key id is required".into()));
        }
        if !self.store.list_keys().await?.iter().any(|k| k.id == key_id) {
            return Err(ServiceError::NotFound(format!("key {key_id} not found")));
        }
        let trim = |backends: Vec<pb::Backend>| -> Vec<pb::Backend> {
            backends
                .into_iter()
                .map(|b| pb::Backend {
                    model: b.model.trim().to_string(),
                    ..b
                })
                .collect()
        };
        let config = pb::RoutingConfig {
            key_id,
            strategy: config.strategy.trim().to_string(),
            backends: trim(config.backends),
            rules: config
                .rules
                .into_iter()
                .map(|r| pb::ConfigRule {
                    name: r.name.trim().to_string(),
                    backends: trim(r.backends),
                    ..r
                })
                .collect(),
            ..config
        };
        key_config::validate(&config).map_err(|e| ServiceError::InvalidArgument(e.to_string()))?;
        let models = self.store.list_models().await?;
        let models: Vec<pb::Model> = models.into_iter().map(|r| r.model).collect();
        let providers = self.store.list_providers().await?;
        let all_backends = config
            .backends
            .iter()
            .chain(config.rules.iter().flat_map(|r| &r.backends));
        for b in all_backends {
            check_backend(&b.model, &models, &providers)?;
        }
        // Stored in the engine's spelling ("fallback_policy" → "fallback").
        let strategy = Strategy::parse(&config.strategy)
            .map(|s| s.as_str().to_string())
            .unwrap_or(config.strategy);
        let row = RoutingConfigRow {
            key_id: config.key_id,
            active: config.active,
            strategy,
            backends: config.backends,
            rules: config.rules,
            updated_at_ms: now_ms(),
        };
        match self.write(ConfigChange::SetRoutingConfig(row)).await? {
            Changed::RoutingConfig(row) => Ok(row),
            other => Err(unexpected(other)),
        }
    }

    /// Routing configurations by key id.
    pub async fn list_routing_configs(&self) -> Result<Vec<RoutingConfigRow>> {
        Ok(self.store.list_routing_configs().await?)
    }

    pub async fn get_routing_config(&self, key_id: &str) -> Result<RoutingConfigRow> {
        let key_id = key_id.trim();
        self.list_routing_configs()
            .await?
            .into_iter()
            .find(|c| c.key_id == key_id)
            .ok_or_else(|| {
                ServiceError::NotFound(format!("key {key_id} has no routing configuration"))
            })
    }

    pub async fn delete_routing_config(&self, key_id: &str) -> Result<()> {
        let change = ConfigChange::DeleteRoutingConfig {
            key_id: key_id.trim().to_string(),
        };
        match self.write(change).await? {
            Changed::RoutingConfigRemoved(_) => Ok(()),
            other => Err(unexpected(other)),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::service::tests::service;
    use crate::service::NewProvider;

    fn rule(name: &str, priority: i32) -> NewRoutingRule {
        NewRoutingRule {
            name: name.into(),
            priority,
            is_enabled: true,
            match_json: r#"{"task":"coding"}"#.into(),
            action_json: r#"{"set_provider":"openai","set_model":"gpt-4o"}"#.into(),
            key_id: String::new(),
        }
    }

    fn backend(model: &str) -> pb::Backend {
        pb::Backend {
            model: model.into(),
            priority: 0,
            weight: 1,
        }
    }

    #[tokio::test]
    async fn routing_rules_crud_is_validated_and_published_in_priority_order() {
        let (svc, _dir) = service().await;
        let low = svc.create_routing_rule(rule(" Low ", 10)).await.unwrap();
        assert_eq!(low.name, "Low");
        let high = svc.create_routing_rule(rule("High", 100)).await.unwrap();
        assert!(high.id > low.id);
        svc.settled().await;
        let snap = svc.snapshots().borrow().clone();
        let names: Vec<&str> = snap.routing_rules.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["High", "Low"]);
        assert!(snap.routing_rules[0].enabled);

        assert!(matches!(
            svc.create_routing_rule(rule("High", 1)).await,
            Err(ServiceError::AlreadyExists(_))
        ));
        let updated = svc
            .update_routing_rule(
                high.id,
                RoutingRulePatch {
                    priority: Some(1),
                    is_enabled: Some(false),
                    ..RoutingRulePatch::default()
                },
            )
            .await
            .unwrap();
        assert_eq!((updated.priority, updated.is_enabled), (1, false));
        assert_eq!(updated.created_at_ms, high.created_at_ms);
        assert_eq!(updated.match_json, high.match_json);
        svc.settled().await;
        let snap = svc.snapshots().borrow().clone();
        let names: Vec<&str> = snap.routing_rules.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["Low", "High"]);
        assert!(!snap.routing_rules[1].enabled);

        svc.delete_routing_rule(low.id).await.unwrap();
        assert!(matches!(
            svc.delete_routing_rule(low.id).await,
            Err(ServiceError::NotFound(_))
        ));
        assert!(matches!(
            svc.get_routing_rule(low.id).await,
            Err(ServiceError::NotFound(_))
        ));
        assert!(matches!(
            svc.update_routing_rule(low.id, RoutingRulePatch::default())
                .await,
            Err(ServiceError::NotFound(_))
        ));
        assert_eq!(svc.list_routing_rules().await.unwrap(), [updated]);
    }

    #[tokio::test]
    async fn invalid_routing_rules_are_refused_before_storing() {
        let (svc, _dir) = service().await;
        let v0 = svc.snapshots().borrow().version;
        let cases = [
            (
                NewRoutingRule {
                    match_json: "{".into(),
                    ..rule("r", 1)
                },
                "match_json",
            ),
            (
                NewRoutingRule {
                    action_json: "[1]".into(),
                    ..rule("r", 1)
                },
                "action_json",
            ),
            (rule("  ", 1), "name is required"),
            (
                NewRoutingRule {
                    key_id: "key_missing".into(),
                    ..rule("r", 1)
                },
                "does not exist",
            ),
        ];
        for (new, want) in cases {
            match svc.create_routing_rule(new).await {
                Err(ServiceError::InvalidArgument(m)) => assert!(m.contains(want), "{m}"),
                other => panic!("{want}: {other:?}"),
            }
        }
        svc.settled().await;
        assert_eq!(svc.snapshots().borrow().version, v0);
    }

    #[tokio::test]
    async fn routing_configs_check_key_and_backends() {
        let (svc, _dir) = service().await;
        let (key, _) = svc.create_key("k", "").await.unwrap();
        svc.add_provider(NewProvider {
            name: "together".into(),
            kind: "openai-compatible".into(),
            base_url: "https://api.together.xyz/v1".into(),
            api_key: String::new(),
            replace: false,
            fallback_api_keys: Vec::new(),
        })
        .await
        .unwrap();
        let config = |backends: Vec<pb::Backend>| pb::RoutingConfig {
            key_id: key.id.clone(),
            active: true,
            strategy: "Fallback Policy".into(),
            backends,
            ..pb::RoutingConfig::default()
        };
        let set = svc
            .set_routing_config(config(vec![
                backend("gpt-4o"),
                backend("anthropic/claude-sonnet-4-5"),
                backend("together/meta-llama/Llama-4-Scout-17B-16E-Instruct"),
                backend("together/my-finetune"),
            ]))
            .await
            .unwrap();
        assert_eq!(set.strategy, "fallback");
        svc.settled().await;
        let snap = svc.snapshots().borrow().clone();
        assert_eq!(snap.routing_configs.len(), 1);
        assert_eq!(snap.routing_configs[0].backends.len(), 4);

        let cases = [
            ("gpt-9", "not in the catalogue"),
            ("nobody/gpt-4o", "not registered"),
            ("anthropic/gpt-4o", "no catalogue model"),
            (
                "meta-llama/Llama-4-Scout-17B-16E-Instruct",
                "named `<provider>/<id>`",
            ),
        ];
        for (model, want) in cases {
            match svc.set_routing_config(config(vec![backend(model)])).await {
                Err(ServiceError::InvalidArgument(m)) => {
                    assert!(m.contains(want) && m.contains(model), "{m}")
                }
                other => panic!("{model}: {other:?}"),
            }
        }
        // Disabled catalogue models are refused.
        svc.update_model(
            "openai",
            "gpt-4o-mini",
            crate::service::ModelPatch {
                enabled: Some(false),
                ..crate::service::ModelPatch::default()
            },
        )
        .await
        .unwrap();
        let err = svc
            .set_routing_config(config(vec![backend("openai/gpt-4o-mini")]))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("disabled"), "{err}");
        // The engine's own checks.
        let err = svc
            .set_routing_config(pb::RoutingConfig {
                strategy: "random".into(),
                ..config(vec![backend("gpt-4o")])
            })
            .await
            .unwrap_err();
        assert!(matches!(err, ServiceError::InvalidArgument(_)), "{err:?}");
        assert!(matches!(
            svc.set_routing_config(pb::RoutingConfig {
                key_id: "key_missing".into(),
                ..config(vec![backend("gpt-4o")])
            })
            .await,
            Err(ServiceError::NotFound(_))
        ));

        assert_eq!(svc.get_routing_config(&key.id).await.unwrap(), set);
        svc.delete_routing_config(&key.id).await.unwrap();
        assert!(matches!(
            svc.get_routing_config(&key.id).await,
            Err(ServiceError::NotFound(_))
        ));
        assert!(matches!(
            svc.delete_routing_config(&key.id).await,
            Err(ServiceError::NotFound(_))
        ));
        svc.settled().await;
        assert!(svc.snapshots().borrow().routing_configs.is_empty());
    }
}
