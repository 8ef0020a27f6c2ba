//! What the fuzz targets share: input decoding (selector bytes, chunk split points), fixed
//! configuration (a firewall, a snapshot), and small helpers around the engine's chunked APIs.
//!
//! Inputs are decoded with [`arbitrary::Unstructured`], one byte or one `u16` at a time from the
//! front, and the rest of the input is the payload (a body, a stream, a text). Seeds are made
//! by hand in that layout (`fuzz/README.md`), so a JSON or SSE seed stays readable after its few
//! header bytes.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
// Protobuf literals end in `..Default::default()` even when they name every field today, so
// the targets keep building as the config messages grow.
#![allow(clippy::needless_update)]

use std::collections::HashMap;

use arbitrary::Unstructured;
use tokenrouter_engine::firewall::Firewall;
use tokenrouter_engine::request::ClientApi;
use tokenrouter_engine::routing::rules::Facts;
use tokenrouter_engine::routing::Mode;
use tokenrouter_engine::translate::{translator_for, AttemptTarget, Translator};
use tokenrouter_engine::upstream::{BaseUrl, ProviderKind};
use tokenrouter_engine::usage::ChunkOutput;
use tokenrouter_engine::Snapshot;
use tokenrouter_proto::config::v1 as pb;

/// The client APIs that carry a body.
pub const CLIENT_APIS: [ClientApi; 4] = [
    ClientApi::ChatCompletions,
    ClientApi::Responses,
    ClientApi::Messages,
    ClientApi::Embeddings,
];

/// Most chunk boundaries one input may ask for.
pub const MAX_CUTS: usize = 32;

/// Front-to-back reader of a fuzz input.
pub struct Reader<'a> {
    u: Unstructured<'a>,
}

impl<'a> Reader<'a> {
    pub fn new(data: &'a [u8]) -> Reader<'a> {
        Reader {
            u: Unstructured::new(data),
        }
    }

    /// One byte (0 once the input is exhausted).
    pub fn byte(&mut self) -> u8 {
        self.u.arbitrary::<u8>().unwrap_or(0)
    }

    pub fn u16(&mut self) -> u16 {
        self.u.arbitrary::<u16>().unwrap_or(0)
    }

    /// `byte() % n`.
    pub fn pick(&mut self, n: usize) -> usize {
        usize::from(self.byte()) % n.max(1)
    }

    /// A count byte (mod [`MAX_CUTS`] + 1) followed by that many `u16` split points.
    pub fn cuts(&mut self) -> Vec<u16> {
        let n = self.pick(MAX_CUTS + 1);
        (0..n).map(|_| self.u16()).collect()
    }

    /// Everything not read yet.
    pub fn rest(self) -> &'a [u8] {
        self.u.take_rest()
    }
}

/// `data` cut at `cuts` (each taken modulo `len + 1`, sorted): empty chunks included, as Envoy
/// may deliver them. Never returns an empty list.
pub fn split<'d>(data: &'d [u8], cuts: &[u16]) -> Vec<&'d [u8]> {
    let mut at: Vec<usize> = cuts
        .iter()
        .map(|&c| usize::from(c) % (data.len() + 1))
        .collect();
    at.sort_unstable();
    let mut out = Vec::with_capacity(at.len() + 1);
    let mut start = 0;
    for a in at {
        out.push(&data[start..a]);
        start = a;
    }
    out.push(&data[start..]);
    out
}

/// `text` cut at `cuts` moved down to char boundaries.
pub fn split_str<'t>(text: &'t str, cuts: &[u16]) -> Vec<&'t str> {
    let mut at: Vec<usize> = cuts
        .iter()
        .map(|&c| {
            let mut i = usize::from(c) % (text.len() + 1);
            while !text.is_char_boundary(i) {
                i -= 1;
            }
            i
        })
        .collect();
    at.sort_unstable();
    let mut out = Vec::with_capacity(at.len() + 1);
    let mut start = 0;
    for a in at {
        out.push(&text[start..a]);
        start = a;
    }
    out.push(&text[start..]);
    out
}

/// What the client receives for one chunk.
pub fn emit(out: &mut Vec<u8>, o: ChunkOutput, chunk: &[u8]) {
    match o {
        ChunkOutput::Unchanged => out.extend_from_slice(chunk),
        ChunkOutput::Replace(b) => out.extend_from_slice(&b),
    }
}

/// Base URL of a provider kind, as the golden fixtures use.
pub fn base_url(kind: ProviderKind) -> BaseUrl {
    BaseUrl::parse(base_url_str(kind)).expect("fixed base URL")
}

/// [`base_url`] as configured.
pub fn base_url_str(kind: ProviderKind) -> &'static str {
    match kind {
        ProviderKind::OpenAi => "https://api.openai.com/v1",
        ProviderKind::Mistral => "https://api.mistral.ai/v1",
        ProviderKind::DeepSeek => "https://api.deepseek.com",
        ProviderKind::Azure => "https://res.openai.azure.com/?api-version=2025-01-01-preview",
        ProviderKind::Anthropic => "https://api.anthropic.com",
        ProviderKind::Gemini => "https://generativelanguage.googleapis.com",
        ProviderKind::OpenAiCompatible => "http://127.0.0.1:9001/v1",
    }
}

pub const MODEL: &str = "test-model";
pub const REQUEST_ID: &str = "req_0123456789abcdef";
pub const NOW: u64 = 1_700_000_000;

/// A minimal client body, for inputs that test only the response direction.
pub fn minimal_body(client: ClientApi, stream: bool) -> Vec<u8> {
    let v = match client {
        ClientApi::Responses => {
            serde_json::json!({"model": MODEL, "input": "hi", "stream": stream})
        }
        ClientApi::Embeddings => serde_json::json!({"model": MODEL, "input": "hi"}),
        _ => serde_json::json!({"model": MODEL, "messages": [{"role": "user", "content": "hi"}],
                    "max_tokens": 16, "stream": stream}),
    };
    v.to_string().into_bytes()
}

/// A translator for `(client, kind)` whose request already went out (`None` for pairs the
/// gateway does not serve, or a body the translation refuses).
pub fn started(
    client: ClientApi,
    kind: ProviderKind,
    base: &BaseUrl,
    body: &[u8],
    stream: bool,
) -> Option<Box<dyn Translator>> {
    let mut t = translator_for(client, kind).ok()?;
    let target = AttemptTarget {
        provider: "p1",
        kind,
        base_url: base,
        upstream_model: MODEL,
        stream,
        request_id: REQUEST_ID,
        now_unix_s: NOW,
    };
    t.request(body, &target).ok()?;
    Some(t)
}

/// Firewall rules of every action, match type and scope: what the targets that do not fuzz the
/// rules themselves run bodies through.
pub fn fixed_firewall_rules() -> Vec<pb::FirewallRule> {
    use tokenrouter_engine::firewall::templates::TEMPLATES;
    let mut rules = Vec::new();
    let substring = |id, name: &str, scope: &str, pattern: &str, action: &str| pb::FirewallRule {
        id,
        name: name.into(),
        priority: 10,
        enabled: true,
        scope: scope.into(),
        r#type: "substring".into(),
        pattern: pattern.into(),
        action: action.into(),
        replacement: "[S]".into(),
        key_id: String::new(),
        max_match_chars: 0,
        check: String::new(),
        ..pb::FirewallRule::default()
    };
    for (i, scope) in ["prompt", "response", "metadata"].into_iter().enumerate() {
        let base = 100 * (i as i64 + 1);
        rules.push(substring(base + 1, "secret", scope, "secret", "mask"));
        rules.push(substring(
            base + 2,
            "forbidden",
            scope,
            "forbidden",
            "block",
        ));
        rules.push(substring(base + 3, "beta", scope, "beta", "warn"));
        rules.push(substring(base + 4, "uni", scope, "Ωmega", "mask"));
        for (j, t) in TEMPLATES.iter().enumerate() {
            // Masks rather than blocks, so a stream goes on after a match.
            let action = if t.name == "openai_key" {
                "block"
            } else {
                "mask"
            };
            let mut r = t.rule(None, None, None);
            r.id = base + 10 + j as i64;
            r.scope = scope.into();
            r.action = action.into();
            rules.push(r);
        }
    }
    // A rule of one key only.
    let mut only = substring(900, "key only", "prompt", "classified", "mask");
    only.key_id = "key_other".into();
    rules.push(only);
    rules
}

/// [`fixed_firewall_rules`], compiled.
pub fn fixed_firewall() -> Firewall {
    Firewall::compile(&fixed_firewall_rules()).expect("fixed firewall rules compile")
}

/// A snapshot with a provider of every kind, the built-in catalogue, the fixed firewall,
/// routing rules and per-key routing configurations.
pub fn fixed_snapshot_proto() -> pb::Snapshot {
    use tokenrouter_engine::keys::hash_key;
    let kinds = [
        ("openai", "openai"),
        ("anthropic", "anthropic"),
        ("gemini", "gemini"),
        ("mistral", "mistral"),
        ("deepseek", "deepseek"),
        ("azure", "azure"),
        ("local", "openai-compatible"),
    ];
    let providers = kinds
        .iter()
        .map(|(name, kind)| pb::Provider {
            name: (*name).into(),
            kind: (*kind).into(),
            base_url: base_url_str(ProviderKind::parse(kind).expect("kind")).into(),
            cluster: format!("tr_provider_{name}"),
            credential: "sk-provider".into(),
            enabled: true,
            ..pb::Provider::default()
        })
        .collect();
    let key = |id: &str| pb::ApiKey {
        id: id.into(),
        sha256: hash_key(&format!("sk-tr-{id}")).to_vec(),
        name: id.into(),
        workspace_id: "default".into(),
        revoked: false,
        ..pb::ApiKey::default()
    };
    let rule = |id, priority, m: &str, a: &str| pb::RoutingRule {
        id,
        name: format!("rule {id}"),
        priority,
        enabled: true,
        match_json: m.into(),
        action_json: a.into(),
        key_id: String::new(),
        ..pb::RoutingRule::default()
    };
    let backend = |model: &str, priority, weight| pb::Backend {
        model: model.into(),
        priority,
        weight,
        ..pb::Backend::default()
    };
    pb::Snapshot {
        schema: tokenrouter_engine::snapshot::SCHEMA,
        version: 1,
        keys: vec![key("key_live"), key("key_split"), key("key_rules")],
        providers,
        models: tokenrouter_engine::catalogue::builtin().expect("built-in catalogue"),
        settings: Some(pb::Settings {
            max_request_body_bytes: 1 << 20,
            max_attempts: 3,
            per_try_timeout_ms: 0,
            auto_chain_len: 2,
            ..pb::Settings::default()
        }),
        firewall_rules: fixed_firewall_rules(),
        routing_rules: vec![
            rule(
                1,
                10,
                r#"{"contains":["translate","übersetze"]}"#,
                r#"{"set_mode":"cost"}"#,
            ),
            rule(
                2,
                9,
                r#"{"metadata_equals":{"team":"research"}}"#,
                r#"{"set_provider":"anthropic","add_warning":{"message":"routed"}}"#,
            ),
            rule(
                3,
                8,
                r#"{"model":"gpt-*","headers":{"x-tier":"gold"}}"#,
                r#"{"set_model":"gpt-4o"}"#,
            ),
            rule(
                4,
                7,
                r#"{"task":"code","mode":"quality"}"#,
                r#"{"add_warning":"code"}"#,
            ),
        ],
        routing_configs: vec![
            pb::RoutingConfig {
                key_id: "key_split".into(),
                active: true,
                strategy: "split".into(),
                backends: vec![
                    backend("openai/gpt-4o-mini", 0, 3),
                    backend("anthropic/claude-3-5-haiku-latest", 0, 1),
                    backend("local/any-model", 1, 1),
                ],
                rules: Vec::new(),
                ..pb::RoutingConfig::default()
            },
            pb::RoutingConfig {
                key_id: "key_rules".into(),
                active: true,
                strategy: "rules".into(),
                backends: vec![backend("gpt-4o-mini", 0, 1)],
                rules: vec![pb::ConfigRule {
                    name: "code".into(),
                    match_json: r#"{"contains":"fn main"}"#.into(),
                    backends: vec![backend("gemini/gemini-2.0-flash", 0, 1)],
                    ..pb::ConfigRule::default()
                }],
            },
        ],
        chain_clusters: vec![pb::ChainCluster {
            providers: vec!["openai".into(), "anthropic".into()],
            cluster: "tr_chain_openai_anthropic".into(),
            ..pb::ChainCluster::default()
        }],
    }
}

/// Key ids the targets pick from (with and without a routing configuration, and unknown).
pub const KEY_IDS: [&str; 4] = ["key_live", "key_split", "key_rules", "key_other"];

/// [`fixed_snapshot_proto`], validated.
pub fn fixed_snapshot() -> Snapshot {
    Snapshot::from_proto(fixed_snapshot_proto()).expect("fixed snapshot validates")
}

/// Request facts for routing rules, all from the fuzz input.
#[derive(Debug, Default)]
pub struct FuzzFacts {
    pub prompt_lower: String,
    pub metadata: HashMap<String, String>,
    pub mode: Option<Mode>,
    pub task: Option<String>,
    pub model: String,
    pub headers: HashMap<String, String>,
}

impl FuzzFacts {
    /// Facts from `text`: lines `prompt`, `model`, `task`, then `k=v` pairs (`h:k=v` for
    /// headers); `mode` from `mode_byte`.
    pub fn parse(text: &str, mode_byte: u8) -> FuzzFacts {
        let mut lines = text.split('\n');
        let prompt = lines.next().unwrap_or_default();
        let model = lines.next().unwrap_or_default();
        let task = lines.next().filter(|t| !t.is_empty());
        let mut f = FuzzFacts {
            prompt_lower: prompt.to_ascii_lowercase(),
            model: model.to_string(),
            task: task.map(str::to_ascii_lowercase),
            mode: Mode::ALL.get(usize::from(mode_byte)).copied(),
            ..FuzzFacts::default()
        };
        for line in lines {
            let (k, v) = line.split_once('=').unwrap_or((line, ""));
            match k.strip_prefix("h:") {
                Some(h) => f.headers.insert(h.to_ascii_lowercase(), v.to_string()),
                None => f.metadata.insert(k.to_string(), v.to_string()),
            };
        }
        f
    }
}

impl Facts for FuzzFacts {
    fn prompt_lower(&self) -> &str {
        &self.prompt_lower
    }
    fn metadata(&self, key: &str) -> Option<&str> {
        self.metadata.get(key).map(String::as_str)
    }
    fn mode(&self) -> Option<Mode> {
        self.mode
    }
    fn task(&self) -> Option<&str> {
        self.task.as_deref()
    }
    fn requested_model(&self) -> &str {
        &self.model
    }
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }
}

/// Splits `data` into records (`0x1e`) of fields (`0x1f`), lossily decoded.
pub fn records(data: &[u8]) -> Vec<Vec<String>> {
    data.split(|&b| b == 0x1e)
        .map(|r| {
            r.split(|&b| b == 0x1f)
                .map(|f| String::from_utf8_lossy(f).into_owned())
                .collect()
        })
        .collect()
}

/// Field `i` of a record, or "".
pub fn field(record: &[String], i: usize) -> &str {
    record.get(i).map_or("", String::as_str)
}

/// Most rules one firewall input compiles (compiling is the slow part).
pub const MAX_FUZZ_RULES: usize = 12;

/// Firewall rules from records `flags 0x1f pattern 0x1f replacement 0x1f name 0x1f key_id 0x1f
/// workspace_id`,
/// where the first bytes of `flags` choose scope, type, action, check, enabled, priority and
/// `max_match_chars` (see `fuzz/README.md`).
pub fn fuzz_firewall_rules(data: &[u8]) -> Vec<pb::FirewallRule> {
    const SCOPES: [&str; 4] = ["prompt", "response", "metadata", "bogus"];
    const TYPES: [&str; 2] = ["substring", "regex"];
    const ACTIONS: [&str; 3] = ["block", "mask", "warn"];
    const CHECKS: [&str; 3] = ["", "luhn", "none"];
    records(data)
        .into_iter()
        .take(MAX_FUZZ_RULES)
        .enumerate()
        .map(|(i, r)| {
            let flags = field(&r, 0).as_bytes();
            let b = |n: usize| flags.get(n).copied().unwrap_or(0);
            let name = field(&r, 3);
            pb::FirewallRule {
                // Ids collide on purpose when bit 7 of byte 1 is set.
                id: if b(1) & 0x80 != 0 { 0 } else { i as i64 + 1 },
                name: if name.is_empty() {
                    format!("r{i}")
                } else {
                    name.to_string()
                },
                priority: i32::from(b(2) as i8),
                enabled: b(1) & 1 == 0,
                scope: SCOPES[usize::from(b(0)) % 4].into(),
                r#type: TYPES[usize::from(b(0) >> 2) % 2].into(),
                pattern: field(&r, 1).into(),
                action: ACTIONS[usize::from(b(0) >> 3) % 3].into(),
                replacement: field(&r, 2).into(),
                key_id: field(&r, 4).into(),
                workspace_id: field(&r, 5).into(),
                // 0 (the default) most of the time; up to 4_335 (above the limit) otherwise.
                max_match_chars: u32::from(b(3)) * 17,
                check: CHECKS[usize::from(b(0) >> 5) % 3].into(),
                ..pb::FirewallRule::default()
            }
        })
        .collect()
}
