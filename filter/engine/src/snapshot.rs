//! The validated, indexed form of a pushed `config.v1.Snapshot`.
//!
//! Built once per config version (never per request): the filter decodes it when the version in
//! shared data changes, and the control plane builds it before every push to refuse an invalid
//! configuration before it reaches an edge.

use std::sync::Arc;

use prost::Message;
use tokenrouter_proto::config::v1 as pb;

use crate::firewall::Firewall;
use crate::money::Price;
use crate::routing::complexity::Tier;
use crate::routing::config::KeyConfig;
use crate::routing::rules::{Rule, RuleSet};
use crate::upstream::{BaseUrl, ProviderKind};
use crate::HashMap;

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
    /// Keys of the full snapshot this one was built from, and its version.
    keys: Arc<HashMap<[u8; 32], KeyEntry>>,
    keys_version: u64,
    /// Keys changed since that snapshot ([`Snapshot::with_key_delta`]), looked up first.
    changed_keys: HashMap<[u8; 32], KeyEntry>,
    /// Everything else, shared by the snapshots a key delta derives from one full snapshot.
    parts: Arc<Parts>,
    pub max_attempts: u32,
    pub per_try_timeout_ms: u32,
    pub auto_chain_len: u32,
    /// The control plane reads usage records whose trace is "as the previous record's"
    /// (`Settings.accepts_trace_runs`).
    pub accepts_trace_runs: bool,
}

/// What a snapshot holds besides keys.
#[derive(Debug, Default)]
struct Parts {
    providers: Vec<ProviderEntry>,
    provider_by_name: HashMap<String, usize>,
    /// Kind → model id → model (looked up by `&str`, without building a key per request).
    models: HashMap<ProviderKind, HashMap<String, ModelEntry>>,
    /// Bare model id → kinds that offer it, in catalogue order.
    model_kinds: HashMap<String, Vec<ProviderKind>>,
    /// Firewall rules, compiled once per version.
    firewall: Firewall,
    /// Routing rules, enabled or not, higher priority first (then lower id); shared with the
    /// traces that list rules by position (`routing::trace::PassedOver`).
    routing_rules: Arc<RuleSet>,
    /// Key id → its routing configuration.
    routing_configs: HashMap<String, KeyConfig>,
    /// Provider names in attempt order → chain cluster (explicitly materialised chains).
    chain_clusters: HashMap<Vec<String>, String>,
    /// Kind → ids of its catalogue models, in catalogue order.
    kind_models: HashMap<ProviderKind, Vec<String>>,
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
        Snapshot::from_proto_after(proto, previous.map(|p| &p.parts.firewall))
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
        let mut keys = HashMap::with_capacity_and_hasher(p.keys.len(), Default::default());
        for k in p.keys {
            let (hash, entry) = key_entry(k)?;
            if keys.insert(hash, entry).is_some() {
                return Err(ConfigError("two keys share one hash".into()));
            }
        }
        let mut providers = Vec::with_capacity(p.providers.len());
        let mut provider_by_name = HashMap::default();
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
        let mut models: HashMap<ProviderKind, HashMap<String, ModelEntry>> = HashMap::default();
        let mut model_kinds: HashMap<String, Vec<ProviderKind>> = HashMap::default();
        let mut kind_models: HashMap<ProviderKind, Vec<String>> = HashMap::default();
        for m in p.models {
            let entry = model_entry(m)?;
            let kind = entry.kind;
            model_kinds.entry(entry.id.clone()).or_default().push(kind);
            kind_models.entry(kind).or_default().push(entry.id.clone());
            if let Some(twice) = models
                .entry(kind)
                .or_default()
                .insert(entry.id.clone(), entry)
            {
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
        let mut routing_configs =
            HashMap::with_capacity_and_hasher(p.routing_configs.len(), Default::default());
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
            keys: Arc::new(keys),
            keys_version: p.version,
            changed_keys: HashMap::default(),
            parts: Arc::new(Parts {
                providers,
                provider_by_name,
                models,
                model_kinds,
                firewall,
                routing_rules: Arc::new(RuleSet::new(routing_rules)),
                routing_configs,
                chain_clusters,
                kind_models,
            }),
            max_attempts,
            per_try_timeout_ms,
            auto_chain_len: settings.auto_chain_len.min(max_attempts),
            accepts_trace_runs: settings.accepts_trace_runs,
        })
    }

    /// The key with this SHA-256, revoked or not.
    pub fn key_by_hash(&self, hash: &[u8; 32]) -> Option<&KeyEntry> {
        self.changed_keys.get(hash).or_else(|| self.keys.get(hash))
    }

    /// The key with this id, revoked or not: a scan of every key, for previews (the edge finds
    /// keys by hash).
    pub fn key_by_id(&self, id: &str) -> Option<&KeyEntry> {
        self.changed_keys
            .values()
            .find(|k| k.id == id)
            .or_else(|| self.keys.values().find(|k| k.id == id))
    }

    /// This snapshot with the keys of `delta` (the configuration at `delta.version`), sharing
    /// everything else. `delta` must apply to this snapshot: it lists the keys changed since a
    /// version at or below the one this snapshot was built from, when nothing but keys changed
    /// (the control plane sends one only then). Keys a previous delta changed are replaced:
    /// deltas are cumulative. Refused whole, as a snapshot would be, when a hash is not 32
    /// bytes or belongs to two keys.
    pub fn with_key_delta(&self, delta: pb::KeyDelta) -> Result<Snapshot, ConfigError> {
        validate_key_delta(&delta)?;
        if !key_delta_applies(&delta, self.keys_version) {
            return Err(ConfigError(format!(
                "key delta {}..{} does not apply to snapshot {}",
                delta.base_version, delta.version, self.keys_version
            )));
        }
        let mut changed_keys =
            HashMap::with_capacity_and_hasher(delta.keys.len(), Default::default());
        for k in delta.keys {
            let (hash, entry) = key_entry(k)?;
            if self.keys.get(&hash).is_some_and(|held| held.id != entry.id) {
                return Err(ConfigError("two keys share one hash".into()));
            }
            changed_keys.insert(hash, entry);
        }
        Ok(Snapshot {
            version: delta.version,
            keys: self.keys.clone(),
            changed_keys,
            parts: self.parts.clone(),
            ..*self
        })
    }

    pub fn provider(&self, name: &str) -> Option<&ProviderEntry> {
        self.parts
            .provider_by_name
            .get(name)
            .and_then(|&i| self.parts.providers.get(i))
    }

    /// Enabled providers of a kind, in registration order.
    pub fn providers_of_kind(&self, kind: ProviderKind) -> impl Iterator<Item = &ProviderEntry> {
        self.parts
            .providers
            .iter()
            .filter(move |p| p.enabled && p.kind == kind)
    }

    pub fn model(&self, kind: ProviderKind, id: &str) -> Option<&ModelEntry> {
        self.parts.models.get(&kind)?.get(id)
    }

    /// Every catalogue model, enabled or not, in no particular order.
    pub fn models(&self) -> impl Iterator<Item = &ModelEntry> {
        self.parts.models.values().flat_map(HashMap::values)
    }

    /// Kinds whose catalogue has this bare model id.
    pub fn kinds_of_model(&self, id: &str) -> &[ProviderKind] {
        self.parts
            .model_kinds
            .get(id)
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }

    /// Routing rules, higher priority first.
    pub fn routing_rules(&self) -> &[Rule] {
        self.parts.routing_rules.rules()
    }

    /// Routing rules with what evaluates them per request.
    pub fn routing_rule_set(&self) -> &Arc<RuleSet> {
        &self.parts.routing_rules
    }

    /// Every key's routing configuration.
    pub fn routing_configs(&self) -> impl Iterator<Item = &KeyConfig> {
        self.parts.routing_configs.values()
    }

    /// The key's routing configuration, active or not.
    pub fn routing_config(&self, key_id: &str) -> Option<&KeyConfig> {
        self.parts.routing_configs.get(key_id)
    }

    /// The chain cluster materialised for these provider names in this order, if any.
    pub fn explicit_chain(&self, providers: &[&str]) -> Option<&str> {
        let key: Vec<String> = providers.iter().map(|p| (*p).to_string()).collect();
        self.parts.chain_clusters.get(&key).map(String::as_str)
    }

    /// Every enabled provider, in registration order.
    pub fn enabled_providers(&self) -> impl Iterator<Item = &ProviderEntry> {
        self.parts.providers.iter().filter(|p| p.enabled)
    }

    /// Catalogue models of a kind (ids), in catalogue order.
    pub fn models_of_kind(&self, kind: ProviderKind) -> &[String] {
        self.parts
            .kind_models
            .get(&kind)
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }

    /// Keeps only the compiled firewall (for reuse by the next snapshot's validation).
    pub fn into_firewall(self) -> Firewall {
        match Arc::try_unwrap(self.parts) {
            Ok(parts) => parts.firewall,
            Err(shared) => shared.firewall.clone(),
        }
    }

    /// The compiled firewall rules.
    pub fn firewall(&self) -> &Firewall {
        &self.parts.firewall
    }

    pub fn key_count(&self) -> usize {
        let added = self
            .changed_keys
            .keys()
            .filter(|hash| !self.keys.contains_key(*hash))
            .count();
        self.keys.len() + added
    }
}

/// What can be checked of a key delta without the snapshot it applies to: its schema, 32-byte
/// hashes and no hash twice (the sync singleton runs it before publishing a delta to the
/// workers, who run [`Snapshot::with_key_delta`]).
pub fn validate_key_delta(delta: &pb::KeyDelta) -> Result<(), ConfigError> {
    if delta.schema != SCHEMA {
        return Err(ConfigError(format!(
            "key delta schema {} is not supported (this edge understands {SCHEMA})",
            delta.schema
        )));
    }
    let mut seen = std::collections::HashSet::with_capacity(delta.keys.len());
    for k in &delta.keys {
        if !seen.insert(key_hash(k)?) {
            return Err(ConfigError("two keys share one hash".into()));
        }
    }
    Ok(())
}

/// Whether `delta` applies to a full snapshot of version `snapshot_version`: the delta lists
/// every key changed since a version at or below it, up to a version at or above it.
pub fn key_delta_applies(delta: &pb::KeyDelta, snapshot_version: u64) -> bool {
    (delta.base_version..=delta.version).contains(&snapshot_version)
}

/// A key's SHA-256, which must be 32 bytes.
fn key_hash(k: &pb::ApiKey) -> Result<[u8; 32], ConfigError> {
    k.sha256
        .as_slice()
        .try_into()
        .map_err(|_| ConfigError(format!("key {}: sha256 must be 32 bytes", k.id)))
}

/// A key as the edge indexes it: its hash (which must be 32 bytes) and the rest.
fn key_entry(k: pb::ApiKey) -> Result<([u8; 32], KeyEntry), ConfigError> {
    let hash = key_hash(&k)?;
    let entry = KeyEntry {
        id: k.id,
        name: k.name,
        workspace_id: k.workspace_id,
        revoked: k.revoked,
        store_bodies: k.store_bodies,
        admission: k.admission,
        metered: k.metered,
    };
    Ok((hash, entry))
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

    fn delta(base_version: u64, version: u64, keys: Vec<pb::ApiKey>) -> pb::KeyDelta {
        pb::KeyDelta {
            schema: SCHEMA,
            base_version,
            version,
            keys,
        }
    }

    fn key(id: &str, raw: &str, revoked: bool) -> pb::ApiKey {
        pb::ApiKey {
            id: id.into(),
            sha256: hash_key(raw).to_vec(),
            name: id.into(),
            workspace_id: "default".into(),
            revoked,
            ..pb::ApiKey::default()
        }
    }

    #[test]
    fn key_deltas_revoke_add_and_replace_keys() {
        let base = Snapshot::from_proto(sample()).unwrap();
        let live = hash_key("sk-tr-live");
        let new = hash_key("sk-tr-new");
        // Version 8 revokes a key; 9 adds one (cumulative: the revoke is listed again).
        let v8 = base
            .with_key_delta(delta(7, 8, vec![key("key_live", "sk-tr-live", true)]))
            .unwrap();
        assert_eq!(v8.version, 8);
        assert!(v8.key_by_hash(&live).unwrap().revoked);
        assert!(!base.key_by_hash(&live).unwrap().revoked, "base untouched");
        assert_eq!(v8.key_count(), 2);
        let both = vec![
            key("key_live", "sk-tr-live", true),
            key("key_new", "sk-tr-new", false),
        ];
        for from in [&base, &v8] {
            let v9 = from.with_key_delta(delta(7, 9, both.clone())).unwrap();
            assert!(v9.key_by_hash(&live).unwrap().revoked);
            assert_eq!(v9.key_by_hash(&new).unwrap().id, "key_new");
            assert_eq!(v9.key_by_id("key_new").unwrap().name, "key_new");
            assert!(v9.key_by_id("key_live").unwrap().revoked);
            assert_eq!(v9.key_count(), 3);
            assert_eq!(v9.provider("openai").unwrap().cluster, "tr_provider_openai");
            assert_eq!(v9.firewall().rules().len(), base.firewall().rules().len());
        }
        // A delta from an older base applies to a newer full snapshot it covers.
        let mut s = sample();
        s.version = 8;
        let at8 = Snapshot::from_proto(s).unwrap();
        assert_eq!(at8.with_key_delta(delta(7, 9, both)).unwrap().version, 9);
    }

    #[test]
    fn key_deltas_that_do_not_apply_are_refused() {
        let base = Snapshot::from_proto(sample()).unwrap();
        let cases = [
            ("newer base", delta(8, 9, vec![])),
            ("older than the snapshot", delta(5, 6, vec![])),
            (
                "schema",
                pb::KeyDelta {
                    schema: 99,
                    ..delta(7, 8, vec![])
                },
            ),
            ("short hash", {
                let mut k = key("key_x", "sk-tr-x", false);
                k.sha256 = vec![1, 2, 3];
                delta(7, 8, vec![k])
            }),
            (
                "hash of another key",
                delta(7, 8, vec![key("key_other", "sk-tr-live", false)]),
            ),
            (
                "one hash twice",
                delta(
                    7,
                    8,
                    vec![
                        key("key_a", "sk-tr-a", false),
                        key("key_b", "sk-tr-a", false),
                    ],
                ),
            ),
        ];
        for (name, d) in cases {
            assert!(base.with_key_delta(d).is_err(), "{name} was accepted");
        }
        // A derived snapshot checks against the full snapshot its keys came from (7), not its
        // own version.
        let v9 = base.with_key_delta(delta(7, 9, vec![])).unwrap();
        assert!(v9.with_key_delta(delta(8, 10, vec![])).is_err());
        assert!(v9.with_key_delta(delta(7, 10, vec![])).is_ok());
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
