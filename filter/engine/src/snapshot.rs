//! The validated, indexed form of a pushed `config.v1.Snapshot`.
//!
//! Built once per config version (never per request): the filter decodes it when the version in
//! shared data changes, and the control plane builds it before every push to refuse an invalid
//! configuration before it reaches an edge.

use std::collections::HashMap;

use prost::Message;
use tokenrouter_proto::config::v1 as pb;

use crate::firewall::Firewall;
use crate::money::Price;
use crate::routing::complexity::Tier;
use crate::routing::config::KeyConfig;
use crate::routing::rules::{Rule, RuleSet};
use crate::upstream::{BaseUrl, ProviderKind};

/// Snapshot wire schema this engine understands.
pub const SCHEMA: u32 = 1;

/// Request bodies above this are refused with 413 unless the snapshot says otherwise.
pub const DEFAULT_MAX_REQUEST_BODY_BYTES: u64 = 4 * 1024 * 1024;

/// A gateway key as the edge knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyEntry {
    pub id: String,
    pub name: String,
    pub workspace_id: String,
    pub revoked: bool,
    /// Request and response bodies go into the request log (masks applied).
    pub store_bodies: bool,
    /// The control plane admits each request of this key (balance or limits).
    pub admission: bool,
    /// The key or its workspace has a balance (refused when admission cannot be asked).
    pub metered: bool,
}

/// A registered provider.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProviderEntry {
    pub name: String,
    pub kind: ProviderKind,
    pub base_url: BaseUrl,
    pub cluster: String,
    pub credential: String,
    pub enabled: bool,
    /// Tried in order after `credential` when a request this provider serves alone is refused
    /// or limited.
    pub fallback_credentials: Vec<String>,
}

/// A catalogue model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelEntry {
    pub id: String,
    pub kind: ProviderKind,
    pub upstream_model: String,
    pub price: Price,
    pub context_window: u32,
    pub enabled: bool,
    pub tools: bool,
    pub vision: bool,
    pub json_mode: bool,
    pub streaming: bool,
    pub embeddings: bool,
    /// 0–100.
    pub quality: u32,
    /// Hardest prompt tier the model is fit for (`None`: not set, fit for any).
    pub tier: Option<Tier>,
    pub max_output_tokens: u32,
    pub display_name: String,
    pub price_source: String,
    pub price_as_of: String,
}

/// Why a snapshot was refused. The previous snapshot stays active.
#[derive(Debug, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

/// Everything the request path needs, indexed for O(1) lookups.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub version: u64,
    pub max_request_body_bytes: u64,
    keys: HashMap<[u8; 32], KeyEntry>,
    providers: Vec<ProviderEntry>,
    provider_by_name: HashMap<String, usize>,
    /// (kind, model id) → model.
    models: HashMap<(ProviderKind, String), ModelEntry>,
    /// Bare model id → kinds that offer it, in catalogue order.
    model_kinds: HashMap<String, Vec<ProviderKind>>,
    /// Firewall rules, compiled once per version.
    firewall: Firewall,
    /// Routing rules, enabled or not, higher priority first (then lower id).
    routing_rules: RuleSet,
    /// Key id → its routing configuration.
    routing_configs: HashMap<String, KeyConfig>,
    /// Provider names in attempt order → chain cluster (explicitly materialised chains).
    chain_clusters: HashMap<Vec<String>, String>,
    /// Kind → ids of its catalogue models, in catalogue order.
    kind_models: HashMap<ProviderKind, Vec<String>>,
    pub max_attempts: u32,
    pub per_try_timeout_ms: u32,
    pub auto_chain_len: u32,
}

impl Snapshot {
    /// Decodes and validates an encoded snapshot.
    pub fn decode(bytes: &[u8]) -> Result<Snapshot, ConfigError> {
        let proto = pb::Snapshot::decode(bytes)
            .map_err(|e| ConfigError(format!("snapshot does not decode: {e}")))?;
        Snapshot::from_proto(proto)
    }

    /// [`Snapshot::decode`] of the snapshot replacing `previous`: firewall regexes whose pattern
    /// `previous` already compiled are reused (a change usually touches a rule or two, and
    /// compiling regexes is most of the work of a snapshot with many rules).
    pub fn decode_after(
        bytes: &[u8],
        previous: Option<&Snapshot>,
    ) -> Result<Snapshot, ConfigError> {
        let proto = pb::Snapshot::decode(bytes)
            .map_err(|e| ConfigError(format!("snapshot does not decode: {e}")))?;
        Snapshot::from_proto_after(proto, previous.map(|p| &p.firewall))
    }

    /// Validates and indexes a snapshot. Refuses the whole snapshot on any invalid entry.
    pub fn from_proto(p: pb::Snapshot) -> Result<Snapshot, ConfigError> {
        Snapshot::from_proto_after(p, None)
    }

    /// [`Snapshot::from_proto`], reusing the compiled regexes of `previous`, the firewall of the
    /// snapshot being replaced (see [`decode_after`]).
    ///
    /// [`decode_after`]: Snapshot::decode_after
    pub fn from_proto_after(
        p: pb::Snapshot,
        previous: Option<&Firewall>,
    ) -> Result<Snapshot, ConfigError> {
        if p.schema != SCHEMA {
            return Err(ConfigError(format!(
                "snapshot schema {} is not supported (this edge understands {SCHEMA})",
                p.schema
            )));
        }
        let mut keys = HashMap::with_capacity(p.keys.len());
        for k in p.keys {
            let hash: [u8; 32] = k
                .sha256
                .as_slice()
                .try_into()
                .map_err(|_| ConfigError(format!("key {}: sha256 must be 32 bytes", k.id)))?;
            let entry = KeyEntry {
                id: k.id,
                name: k.name,
                workspace_id: k.workspace_id,
                revoked: k.revoked,
                store_bodies: k.store_bodies,
                admission: k.admission,
                metered: k.metered,
            };
            if keys.insert(hash, entry).is_some() {
                return Err(ConfigError("two keys share one hash".into()));
            }
        }
        let mut providers = Vec::with_capacity(p.providers.len());
        let mut provider_by_name = HashMap::new();
        for pr in p.providers {
            let entry = provider_entry(pr)?;
            if provider_by_name
                .insert(entry.name.clone(), providers.len())
                .is_some()
            {
                return Err(ConfigError(format!(
                    "provider {} appears twice",
                    entry.name
                )));
            }
            providers.push(entry);
        }
        let mut models = HashMap::with_capacity(p.models.len());
        let mut model_kinds: HashMap<String, Vec<ProviderKind>> = HashMap::new();
        let mut kind_models: HashMap<ProviderKind, Vec<String>> = HashMap::new();
        for m in p.models {
            let entry = model_entry(m)?;
            let kind = entry.kind;
            model_kinds.entry(entry.id.clone()).or_default().push(kind);
            kind_models.entry(kind).or_default().push(entry.id.clone());
            if let Some(twice) = models.insert((kind, entry.id.clone()), entry) {
                return Err(ConfigError(format!(
                    "model {} appears twice for {kind}",
                    twice.id
                )));
            }
        }
        let firewall = match previous {
            Some(prev) => Firewall::compile_reusing(&p.firewall_rules, prev),
            None => Firewall::compile(&p.firewall_rules),
        }
        .map_err(|e| ConfigError(e.to_string()))?;
        if p.routing_rules.len() > crate::routing::rules::MAX_RULES {
            return Err(ConfigError(format!(
                "{} routing rules; at most {} are accepted",
                p.routing_rules.len(),
                crate::routing::rules::MAX_RULES
            )));
        }
        let mut routing_rules = p
            .routing_rules
            .iter()
            .map(crate::routing::rules::compile)
            .collect::<Result<Vec<_>, _>>()?;
        routing_rules.sort_by(|a, b| b.priority.cmp(&a.priority).then(a.id.cmp(&b.id)));
        let mut routing_configs = HashMap::with_capacity(p.routing_configs.len());
        for c in &p.routing_configs {
            let compiled = crate::routing::config::compile(c)?;
            if routing_configs
                .insert(compiled.key_id.clone(), compiled)
                .is_some()
            {
                return Err(ConfigError(format!(
                    "key {} has two routing configurations",
                    c.key_id
                )));
            }
        }
        let chain_clusters = p
            .chain_clusters
            .into_iter()
            .map(|c| (c.providers, c.cluster))
            .collect();
        let settings = p.settings.unwrap_or_default();
        let max_request_body_bytes = match settings.max_request_body_bytes {
            n if n > 0 => n,
            _ => DEFAULT_MAX_REQUEST_BODY_BYTES,
        };
        let max_attempts = match settings.max_attempts {
            0 => crate::routing::DEFAULT_MAX_ATTEMPTS,
            n => n.min(crate::routing::MAX_ATTEMPTS),
        };
        let per_try_timeout_ms = match settings.per_try_timeout_ms {
            0 => crate::routing::DEFAULT_PER_TRY_TIMEOUT_MS,
            n => n,
        };
        Ok(Snapshot {
            version: p.version,
            max_request_body_bytes,
            keys,
            providers,
            provider_by_name,
            models,
            model_kinds,
            firewall,
            routing_rules: RuleSet::new(routing_rules),
            routing_configs,
            chain_clusters,
            kind_models,
            max_attempts,
            per_try_timeout_ms,
            auto_chain_len: settings.auto_chain_len.min(max_attempts),
        })
    }

    /// The key with this SHA-256, revoked or not.
    pub fn key_by_hash(&self, hash: &[u8; 32]) -> Option<&KeyEntry> {
        self.keys.get(hash)
    }

    /// The key with this id, revoked or not: a scan of every key, for previews (the edge finds
    /// keys by hash).
    pub fn key_by_id(&self, id: &str) -> Option<&KeyEntry> {
        self.keys.values().find(|k| k.id == id)
    }

    pub fn provider(&self, name: &str) -> Option<&ProviderEntry> {
        self.provider_by_name
            .get(name)
            .and_then(|&i| self.providers.get(i))
    }

    /// Enabled providers of a kind, in registration order.
    pub fn providers_of_kind(&self, kind: ProviderKind) -> impl Iterator<Item = &ProviderEntry> {
        self.providers
            .iter()
            .filter(move |p| p.enabled && p.kind == kind)
    }

    pub fn model(&self, kind: ProviderKind, id: &str) -> Option<&ModelEntry> {
        self.models.get(&(kind, id.to_string()))
    }

    /// Every catalogue model, enabled or not, in no particular order.
    pub fn models(&self) -> impl Iterator<Item = &ModelEntry> {
        self.models.values()
    }

    /// Kinds whose catalogue has this bare model id.
    pub fn kinds_of_model(&self, id: &str) -> &[ProviderKind] {
        self.model_kinds.get(id).map(Vec::as_slice).unwrap_or(&[])
    }

    /// Routing rules, higher priority first.
    pub fn routing_rules(&self) -> &[Rule] {
        self.routing_rules.rules()
    }

    /// Routing rules with what evaluates them per request.
    pub fn routing_rule_set(&self) -> &RuleSet {
        &self.routing_rules
    }

    /// Every key's routing configuration.
    pub fn routing_configs(&self) -> impl Iterator<Item = &KeyConfig> {
        self.routing_configs.values()
    }

    /// The key's routing configuration, active or not.
    pub fn routing_config(&self, key_id: &str) -> Option<&KeyConfig> {
        self.routing_configs.get(key_id)
    }

    /// The chain cluster materialised for these provider names in this order, if any.
    pub fn explicit_chain(&self, providers: &[&str]) -> Option<&str> {
        let key: Vec<String> = providers.iter().map(|p| (*p).to_string()).collect();
        self.chain_clusters.get(&key).map(String::as_str)
    }

    /// Every enabled provider, in registration order.
    pub fn enabled_providers(&self) -> impl Iterator<Item = &ProviderEntry> {
        self.providers.iter().filter(|p| p.enabled)
    }

    /// Catalogue models of a kind (ids), in catalogue order.
    pub fn models_of_kind(&self, kind: ProviderKind) -> &[String] {
        self.kind_models
            .get(&kind)
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }

    /// Keeps only the compiled firewall (for reuse by the next snapshot's validation).
    pub fn into_firewall(self) -> Firewall {
        self.firewall
    }

    /// The compiled firewall rules.
    pub fn firewall(&self) -> &Firewall {
        &self.firewall
    }

    pub fn key_count(&self) -> usize {
        self.keys.len()
    }
}

/// Validates one provider on its own: everything [`Snapshot::from_proto`] checks about a
/// provider except that its name is unique in the snapshot. The control plane runs it on the
/// provider a write changes, instead of rebuilding the whole snapshot.
pub fn provider_entry(pr: pb::Provider) -> Result<ProviderEntry, ConfigError> {
    let kind = ProviderKind::parse(&pr.kind)
        .ok_or_else(|| ConfigError(format!("provider {}: unknown kind {:?}", pr.name, pr.kind)))?;
    let base_url = BaseUrl::parse(&pr.base_url)
        .map_err(|e| ConfigError(format!("provider {}: {e}", pr.name)))?;
    if !valid_name(&pr.name) {
        return Err(ConfigError(format!(
            "provider name {:?} is not valid",
            pr.name
        )));
    }
    Ok(ProviderEntry {
        name: pr.name,
        kind,
        base_url,
        cluster: pr.cluster,
        credential: pr.credential,
        enabled: pr.enabled,
        fallback_credentials: pr.fallback_credentials,
    })
}

/// Validates one catalogue model on its own: everything [`Snapshot::from_proto`] checks about a
/// model except that `(kind, id)` is unique in the snapshot.
pub fn model_entry(m: pb::Model) -> Result<ModelEntry, ConfigError> {
    let kind = ProviderKind::parse(&m.provider_kind).ok_or_else(|| {
        ConfigError(format!(
            "model {}: unknown provider kind {:?}",
            m.id, m.provider_kind
        ))
    })?;
    let price = Price {
        input: m.input_price_micros_per_mtok,
        output: m.output_price_micros_per_mtok,
        cached_input: m.cached_input_price_micros_per_mtok,
    };
    if price.input < 0 || price.output < 0 || price.cached_input < 0 {
        return Err(ConfigError(format!("model {}: negative price", m.id)));
    }
    let tier = match m.tier.as_str() {
        "" => None,
        t => Some(Tier::parse(t).ok_or_else(|| {
            ConfigError(format!(
                "model {}: tier {t:?} is not simple, medium, complex or reasoning",
                m.id
            ))
        })?),
    };
    Ok(ModelEntry {
        upstream_model: if m.upstream_model.is_empty() {
            m.id.clone()
        } else {
            m.upstream_model
        },
        id: m.id,
        kind,
        price,
        context_window: m.context_window,
        enabled: m.enabled,
        tools: m.tools,
        vision: m.vision,
        json_mode: m.json_mode,
        streaming: m.streaming,
        embeddings: m.embeddings,
        quality: m.quality.min(100),
        tier,
        max_output_tokens: m.max_output_tokens,
        display_name: m.display_name,
        price_source: m.price_source,
        price_as_of: m.price_as_of,
    })
}

/// Provider names become cluster names and the first segment of `provider/model`.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
pub(crate) mod tests {
    use super::*;
    use crate::keys::hash_key;

    /// A small snapshot used across the engine's tests.
    pub fn sample() -> pb::Snapshot {
        pb::Snapshot {
            schema: SCHEMA,
            version: 7,
            keys: vec![
                pb::ApiKey {
                    id: "key_live".into(),
                    sha256: hash_key("sk-tr-live").to_vec(),
                    name: "live".into(),
                    workspace_id: "default".into(),
                    revoked: false,
                    store_bodies: false,
                    admission: false,
                    metered: false,
                },
                pb::ApiKey {
                    id: "key_dead".into(),
                    sha256: hash_key("sk-tr-dead").to_vec(),
                    name: "dead".into(),
                    workspace_id: "default".into(),
                    revoked: true,
                    store_bodies: false,
                    admission: false,
                    metered: false,
                },
            ],
            providers: vec![
                pb::Provider {
                    name: "openai".into(),
                    kind: "openai".into(),
                    base_url: "http://127.0.0.1:9000/v1".into(),
                    cluster: "tr_provider_openai".into(),
                    credential: "sk-provider".into(),
                    enabled: true,
                    fallback_credentials: Vec::new(),
                },
                pb::Provider {
                    name: "local".into(),
                    kind: "openai-compatible".into(),
                    base_url: "http://127.0.0.1:9001/v1".into(),
                    cluster: "tr_provider_local".into(),
                    credential: String::new(),
                    enabled: true,
                    fallback_credentials: Vec::new(),
                },
            ],
            models: crate::catalogue::builtin().unwrap(),
            settings: Some(pb::Settings {
                max_request_body_bytes: 1000,
                ..pb::Settings::default()
            }),
            ..pb::Snapshot::default()
        }
    }

    #[test]
    fn sample_validates_and_indexes() {
        let s = Snapshot::from_proto(sample()).unwrap();
        assert_eq!(s.version, 7);
        assert_eq!(s.max_request_body_bytes, 1000);
        assert_eq!(
            s.key_by_hash(&hash_key("sk-tr-live")).unwrap().id,
            "key_live"
        );
        assert!(s.key_by_hash(&hash_key("sk-tr-nope")).is_none());
        assert_eq!(s.provider("openai").unwrap().cluster, "tr_provider_openai");
        assert_eq!(s.kinds_of_model("gpt-4o-mini"), &[ProviderKind::OpenAi]);
    }

    #[test]
    fn encoded_round_trip() {
        let bytes = sample().encode_to_vec();
        assert_eq!(Snapshot::decode(&bytes).unwrap().key_count(), 2);
        assert!(Snapshot::decode(b"\xff\xff\xff").is_err());
    }

    #[test]
    fn invalid_snapshots_are_refused_whole() {
        type Break = fn(&mut pb::Snapshot);
        let cases: [(&str, Break); 7] = [
            ("schema", |s| s.schema = 99),
            ("short hash", |s| s.keys[0].sha256 = vec![1, 2, 3]),
            ("dup hash", |s| s.keys[1].sha256 = s.keys[0].sha256.clone()),
            ("bad kind", |s| s.providers[0].kind = "nonsense".into()),
            ("bad url", |s| s.providers[0].base_url = "ftp://x".into()),
            ("dup provider", |s| s.providers[1].name = "openai".into()),
            ("negative price", |s| {
                s.models[0].input_price_micros_per_mtok = -1
            }),
        ];
        for (name, break_it) in cases {
            let mut s = sample();
            break_it(&mut s);
            assert!(Snapshot::from_proto(s).is_err(), "{name} was accepted");
        }
    }

    #[test]
    fn default_body_limit() {
        let mut s = sample();
        s.settings = None;
        assert_eq!(
            Snapshot::from_proto(s).unwrap().max_request_body_bytes,
            DEFAULT_MAX_REQUEST_BODY_BYTES
        );
    }

    #[test]
    fn names() {
        assert!(valid_name("openai-eu_2"));
        assert!(!valid_name(""));
        assert!(!valid_name("Open AI"));
        assert!(!valid_name("a/b"));
    }
}
