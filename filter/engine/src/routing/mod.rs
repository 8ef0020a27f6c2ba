//! The routing engine: from a request to an ordered chain of attempts (provider, model) and
//! the trace of why. Plain Rust: the edge filter, the control plane's preview and the tests all
//! run this same code (ARCHITECTURE.md, "Routing").
//!
//! Order of decisions: the `model` form and `router_mode` give the mode; routing rules run next
//! (priority order, higher first; a field set by a higher rule is not overridden by a lower one);
//! then, in this precedence, a provider pinned by the request (compliance), the rules'
//! `set_provider`/`set_model`, the key's active routing configuration, and finally the mode's
//! ranking of every eligible catalogue model (auto) or of the providers serving the named model.

pub mod complexity;
pub mod config;
pub mod features;
pub mod rules;
pub mod scores;
pub mod trace;

mod decide;

pub use complexity::Tier;
pub use decide::{
    auto_chain_len, chain_children, chain_cluster_name, config_chains, decide, decide_traced,
    direct_cluster_name, implied_chains, is_provider_cluster, provider_cluster_name, Decision,
    RouteInput, Tracing, DEFAULT_MAX_ATTEMPTS, DEFAULT_PER_TRY_TIMEOUT_MS, MAX_ATTEMPTS,
};
pub use scores::ScoreBoard;

use crate::error::{ErrorKind, GatewayError};
use crate::money::Price;
use crate::request::ClientApi;
use crate::snapshot::{ProviderEntry, Snapshot};
use crate::upstream::ProviderKind;

/// How auto routing ranks candidates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mode {
    Cost,
    Quality,
    Latency,
    /// The documented blend: 40 % cost, 40 % quality, 20 % latency, discounted by error rate.
    Balance,
}

impl Mode {
    pub const ALL: [Mode; 4] = [Mode::Cost, Mode::Quality, Mode::Latency, Mode::Balance];

    pub fn parse(s: &str) -> Option<Mode> {
        match s.trim().to_ascii_lowercase().as_str() {
            "cost" => Some(Mode::Cost),
            "quality" => Some(Mode::Quality),
            "latency" => Some(Mode::Latency),
            "balance" | "balanced" => Some(Mode::Balance),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Cost => "cost",
            Mode::Quality => "quality",
            Mode::Latency => "latency",
            Mode::Balance => "balance",
        }
    }
}

/// Where one attempt goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target<'s> {
    pub provider: &'s ProviderEntry,
    /// Catalogue id (for the log), or the upstream model when uncatalogued.
    pub model_id: String,
    /// Model name the provider receives.
    pub upstream_model: String,
    pub price: Price,
    /// Whether the model was found in the catalogue (false: self-hosted, unpriced).
    pub catalogued: bool,
    /// Which of the provider's credentials this attempt uses: 0 = the primary, n = fallback n.
    pub credential: usize,
}

/// Resolves `provider/model` or a bare catalogue model.
///
/// `provider` is a registered provider's name, or else a provider kind (its first enabled
/// provider). Only `openai-compatible` providers accept models outside the catalogue.
pub fn resolve<'s>(snapshot: &'s Snapshot, model: &str) -> Result<Target<'s>, GatewayError> {
    match model.split_once('/') {
        Some((provider, model_id)) => resolve_pinned(snapshot, provider, model_id, &model),
        None => resolve_bare(snapshot, model),
    }
}

/// Checks that the chosen provider can serve the client's API
/// ([`crate::translate::check_pairing`], the one place that decides which (client API, provider
/// wire format) pairs exist). Unsupported pairs get a typed 422 naming the provider.
pub fn check_pair(api: ClientApi, target: &Target<'_>) -> Result<(), GatewayError> {
    match crate::translate::check_pairing(api, target.provider.kind) {
        Ok(_) => Ok(()),
        Err(e) => Err(GatewayError {
            kind: ErrorKind::Routing,
            message: format!(
                "Provider '{}' ({}) cannot serve {} requests: {}",
                target.provider.name,
                target.provider.kind,
                api.as_str(),
                e.message
            ),
            provider: Some(target.provider.name.clone()),
            raw: None,
        }),
    }
}

pub(crate) fn resolve_pinned<'s>(
    snapshot: &'s Snapshot,
    provider_name: &str,
    model_id: &str,
    full: &dyn std::fmt::Display,
) -> Result<Target<'s>, GatewayError> {
    let provider = snapshot
        .provider(provider_name)
        .filter(|p| p.enabled)
        .or_else(|| {
            crate::upstream::ProviderKind::parse(provider_name)
                .and_then(|kind| snapshot.providers_of_kind(kind).next())
        })
        .ok_or_else(|| {
            GatewayError::new(
                ErrorKind::NotFound,
                format!("Provider '{provider_name}' is not registered (model '{full}')."),
            )
        })?;
    if model_id.is_empty() {
        return Err(GatewayError::invalid(format!(
            "Model '{full}' names no model after the provider."
        )));
    }
    let entry = snapshot
        .model(provider.kind, model_id)
        .or_else(|| snapshot.model(provider.kind.catalogue_kind(), model_id));
    match entry {
        // An Azure deployment keeps its own name even when priced from OpenAI's catalogue.
        Some(m) if m.enabled && provider.kind == ProviderKind::Azure => Ok(Target {
            provider,
            model_id: m.id.clone(),
            upstream_model: model_id.to_string(),
            price: m.price,
            catalogued: true,
            credential: 0,
        }),
        Some(m) if m.enabled => Ok(Target {
            provider,
            model_id: m.id.clone(),
            upstream_model: m.upstream_model.clone(),
            price: m.price,
            catalogued: true,
            credential: 0,
        }),
        Some(_) => Err(GatewayError::new(
            ErrorKind::NotFound,
            format!("Model '{full}' is disabled in the catalogue."),
        )),
        None if provider.kind.accepts_any_model() => Ok(Target {
            provider,
            model_id: model_id.to_string(),
            upstream_model: model_id.to_string(),
            price: Price::default(),
            catalogued: false,
            credential: 0,
        }),
        None => Err(GatewayError::new(
            ErrorKind::NotFound,
            format!("Model '{full}' is not in the catalogue."),
        )),
    }
}

fn resolve_bare<'s>(snapshot: &'s Snapshot, model: &str) -> Result<Target<'s>, GatewayError> {
    let kinds = snapshot.kinds_of_model(model);
    if kinds.is_empty() {
        return Err(GatewayError::new(
            ErrorKind::NotFound,
            format!("Model '{model}' is not in the catalogue. Use 'provider/model' or see GET /v1/models."),
        ));
    }
    for &kind in kinds {
        let Some(m) = snapshot.model(kind, model).filter(|m| m.enabled) else {
            continue;
        };
        if let Some(provider) = snapshot.providers_of_kind(kind).next() {
            return Ok(Target {
                provider,
                model_id: m.id.clone(),
                upstream_model: m.upstream_model.clone(),
                price: m.price,
                catalogued: true,
                credential: 0,
            });
        }
    }
    Err(GatewayError::new(
        ErrorKind::Routing,
        format!("No eligible providers available for model '{model}'."),
    ))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::snapshot::tests::sample;

    #[test]
    fn resolution_table() {
        let s = Snapshot::from_proto(sample()).unwrap();
        // (model, Ok((provider, upstream model, input price)) | Err(status))
        type Want = Result<(&'static str, &'static str, i64), u16>;
        let cases: [(&str, Want); 10] = [
            ("openai/gpt-4o-mini", Ok(("openai", "gpt-4o-mini", 150_000))),
            ("gpt-4o-mini", Ok(("openai", "gpt-4o-mini", 150_000))),
            ("gpt-4o", Ok(("openai", "gpt-4o", 2_500_000))),
            ("local/my-llama", Ok(("local", "my-llama", 0))),
            ("local/org/model-x", Ok(("local", "org/model-x", 0))),
            ("openai-compatible/echo", Ok(("local", "echo", 0))),
            ("openai/gpt-99", Err(404)),
            ("nope/x", Err(404)),
            ("unknown-model", Err(404)),
            ("claude-haiku-4-5", Err(422)), // catalogued but no anthropic provider registered
        ];
        for (model, want) in cases {
            match (resolve(&s, model), want) {
                (Ok(t), Ok((p, m, price))) => {
                    assert_eq!(
                        (
                            t.provider.name.as_str(),
                            t.upstream_model.as_str(),
                            t.price.input
                        ),
                        (p, m, price),
                        "{model}"
                    );
                }
                (Err(e), Err(status)) => assert_eq!(e.status(), status, "{model}: {}", e.message),
                (got, want) => panic!("{model}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn unsupported_pairs_are_422() {
        let mut p = sample();
        p.providers.push(tokenrouter_proto::config::v1::Provider {
            name: "claude".into(),
            kind: "anthropic".into(),
            base_url: "https://api.anthropic.com".into(),
            cluster: "tr_provider_claude".into(),
            credential: String::new(),
            enabled: true,
            fallback_credentials: Vec::new(),
        });
        let s = Snapshot::from_proto(p).unwrap();
        let claude = resolve(&s, "claude/claude-haiku-4-5").unwrap();
        let e = check_pair(ClientApi::Embeddings, &claude).unwrap_err();
        assert_eq!((e.status(), e.provider.as_deref()), (422, Some("claude")));
        assert!(e.message.contains("embeddings"), "{}", e.message);
        for api in [
            ClientApi::ChatCompletions,
            ClientApi::Responses,
            ClientApi::Messages,
        ] {
            assert!(check_pair(api, &claude).is_ok(), "{api:?}");
        }
        let openai = resolve(&s, "openai/gpt-4o").unwrap();
        assert!(check_pair(ClientApi::ChatCompletions, &openai).is_ok());
        assert!(check_pair(ClientApi::Embeddings, &openai).is_ok());
        assert_eq!(
            check_pair(ClientApi::Models, &openai).unwrap_err().status(),
            422
        );
    }

    #[test]
    fn azure_deployments_are_priced_from_openai_and_any_name_is_accepted() {
        let mut p = sample();
        p.providers.push(tokenrouter_proto::config::v1::Provider {
            name: "az".into(),
            kind: "azure".into(),
            base_url: "https://r.openai.azure.com".into(),
            cluster: "tr_provider_az".into(),
            credential: String::new(),
            enabled: true,
            fallback_credentials: Vec::new(),
        });
        let s = Snapshot::from_proto(p).unwrap();
        let priced = resolve(&s, "az/gpt-4o-mini").unwrap();
        assert_eq!(
            (priced.upstream_model.as_str(), priced.price.input),
            ("gpt-4o-mini", 150_000)
        );
        let custom = resolve(&s, "az/my-deployment").unwrap();
        assert_eq!(
            (custom.upstream_model.as_str(), custom.price.input),
            ("my-deployment", 0)
        );
    }

    #[test]
    fn disabled_provider_is_not_used() {
        let mut p = sample();
        p.providers[0].enabled = false;
        let s = Snapshot::from_proto(p).unwrap();
        assert_eq!(resolve(&s, "openai/gpt-4o-mini").unwrap_err().status(), 404);
        assert_eq!(resolve(&s, "gpt-4o-mini").unwrap_err().status(), 422);
    }
}

/// The `x-tr-attempts` header the edge hands the upstream filters: the chain as a JSON array of
/// `[provider, upstream model]` pairs (ASCII-escaped), attempt `n` being entry `n - 1`.
pub fn attempts_header(attempts: &[Target<'_>]) -> String {
    let pairs: Vec<[&str; 2]> = attempts
        .iter()
        .map(|t| [t.provider.name.as_str(), t.upstream_model.as_str()])
        .collect();
    trace::ascii_json(&serde_json::json!(pairs))
}

/// Reads `x-tr-attempts` (at most [`MAX_ATTEMPTS`] entries; anything else is empty).
pub fn parse_attempts_header(value: &str) -> Vec<(String, String)> {
    if value.len() > 16 * 1024 {
        return Vec::new();
    }
    serde_json::from_str::<Vec<(String, String)>>(value)
        .map(|mut v| {
            v.truncate(MAX_ATTEMPTS as usize);
            v
        })
        .unwrap_or_default()
}

/// The body with its `model` replaced (a failover attempt to another model of a pass-through
/// provider). `None` when the body is not a JSON object.
pub fn with_model(body: &[u8], model: &str) -> Option<Vec<u8>> {
    let mut v: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(body).ok()?;
    v.insert("model".into(), serde_json::Value::String(model.to_string()));
    serde_json::to_vec(&v).ok()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod header_tests {
    use super::*;
    use crate::snapshot::tests::sample;

    #[test]
    fn attempts_header_round_trip() {
        let s = Snapshot::from_proto(sample()).unwrap();
        let a = resolve(&s, "openai/gpt-4o").unwrap();
        let b = resolve(&s, "local/org/model \u{e9}\"x").unwrap();
        let h = attempts_header(&[a, b]);
        assert!(h.is_ascii());
        assert_eq!(
            parse_attempts_header(&h),
            vec![
                ("openai".to_string(), "gpt-4o".to_string()),
                ("local".to_string(), "org/model \u{e9}\"x".to_string())
            ]
        );
        assert!(parse_attempts_header("nonsense").is_empty());
        assert_eq!(
            with_model(br#"{"model":"a","x":1}"#, "b").unwrap(),
            br#"{"model":"b","x":1}"#.to_vec()
        );
        assert!(with_model(b"[1]", "b").is_none());
    }
}

/// The decision a request would get, without sending it: the edge's own steps (body parse,
/// prompt firewall, features, BYOK headers, [`decide`]) on a body and headers. The firewall
/// rules are those of `key_id` and of its workspace (looked up in the snapshot). The control
/// plane's preview calls this; `random` fixes the traffic-split draw.
#[allow(clippy::too_many_arguments)]
pub fn preview<'s>(
    snapshot: &'s Snapshot,
    scores: &ScoreBoard,
    key_id: &str,
    api: ClientApi,
    body: &[u8],
    headers: &std::collections::HashMap<String, String>,
    random: u64,
    now_ms: i64,
) -> Result<Decision<'s>, GatewayError> {
    use crate::firewall::{formats, Inspection, Scope, Subject};
    let mut request = crate::request::ClientRequest::parse_api(api, body)?;
    let fw = snapshot.firewall();
    // The key's workspace, as the edge has it from the key it authenticated.
    let workspace_id = snapshot
        .key_by_id(key_id)
        .map_or("", |k| k.workspace_id.as_str());
    let subject = Subject::new(key_id, workspace_id);
    if fw.applies(Scope::Prompt, subject) || fw.applies(Scope::Metadata, subject) {
        let mut inspection = Inspection::new(fw, subject);
        formats::request_walker(api)(request.body_mut(), &mut |scope, text| {
            inspection.check_in_place(scope, text)
        });
        if let Some(e) = inspection.verdict().error() {
            return Err(e);
        }
    }
    let feats = features::features(api, request.body_mut(), body.len());
    let lower: std::collections::HashMap<String, String> = headers
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
        .collect();
    let header = |name: &str| lower.get(name).map(String::as_str);
    let byok: Vec<ProviderKind> = BYOK_HEADER_KINDS
        .iter()
        .filter(|(_, h)| lower.contains_key(*h))
        .filter_map(|(k, _)| ProviderKind::parse(k))
        .collect();
    let input = RouteInput {
        api,
        model: &request.model,
        router_mode: request.router_mode.as_deref(),
        metadata: request.metadata.as_ref(),
        features: &feats,
        stream: request.stream,
        key_id,
        header: &header,
        byok: &byok,
        random,
        now_ms,
    };
    decide(snapshot, scores, &input)
}

/// Bring-your-own-key headers by provider kind (the edge's upstream filter uses the one of the
/// attempt's kind as that attempt's credential).
pub const BYOK_HEADER_KINDS: [(&str, &str); 5] = [
    ("openai", "x-openai-key"),
    ("anthropic", "x-anthropic-key"),
    ("gemini", "x-gemini-key"),
    ("deepseek", "x-deepseek-key"),
    ("mistral", "x-mistral-key"),
];
