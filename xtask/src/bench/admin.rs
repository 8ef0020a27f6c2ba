//! Seeding the tokenrouter candidate through the control plane's gRPC Admin API (never the
//! database): keys (concurrently, or one with limits or a balance), the provider, revokes,
//! routing rules and firewall rules; and the stored usage per key.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use tokenrouter_proto::admin::v1 as pb;
use tokenrouter_proto::admin::v1::admin_client::AdminClient;
use tokio::sync::Mutex;
use tonic::metadata::MetadataValue;
use tonic::transport::{Channel, Endpoint};

/// Key creations in flight at once. The store serialises writes, so more buys little beyond
/// overlapping the gRPC round trips.
pub const SEED_CONCURRENCY: usize = 4;
/// Retries of a `CreateKey` that failed with `Internal`. Concurrent writes used to fail with
/// SQLite's "database is locked"; the control plane now queues them, and the report still
/// counts retries to show it.
const CREATE_RETRIES: usize = 5;

/// A created key: its id (to revoke it) and its raw value (to use it).
#[derive(Clone, Debug)]
pub struct Key {
    pub id: String,
    pub raw: String,
}

/// How seeding `count` items went.
#[derive(Clone, Debug)]
pub struct Seeded {
    pub count: usize,
    pub elapsed: Duration,
    /// `CreateKey` calls that failed with `Internal` and were retried.
    pub retried: usize,
}

/// The Admin API with the admin token attached to every call.
#[derive(Clone)]
pub struct Admin {
    client: AdminClient<Channel>,
    token: MetadataValue<tonic::metadata::Ascii>,
}

impl Admin {
    pub async fn connect(grpc_addr: &str, admin_token: &str) -> Result<Admin> {
        let channel = Endpoint::from_shared(format!("http://{grpc_addr}"))?
            .connect_timeout(Duration::from_secs(3))
            .timeout(Duration::from_secs(60))
            .connect()
            .await
            .with_context(|| format!("cannot reach the control plane at {grpc_addr}"))?;
        let token = format!("Bearer {admin_token}")
            .parse()
            .map_err(|_| anyhow!("admin token is not a valid header value"))?;
        Ok(Admin {
            client: AdminClient::new(channel),
            token,
        })
    }

    fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request
            .metadata_mut()
            .insert("authorization", self.token.clone());
        request
    }

    /// Registers (or replaces) an `openai-compatible` provider.
    pub async fn add_provider(&self, name: &str, base_url: &str) -> Result<()> {
        let message = pb::AddProviderRequest {
            name: name.into(),
            kind: "openai-compatible".into(),
            base_url: base_url.into(),
            api_key: "sk-bench-upstream".into(),
            replace: true,
            ..Default::default()
        };
        self.client
            .clone()
            .add_provider(self.request(message))
            .await
            .with_context(|| format!("AddProvider {name}"))?;
        Ok(())
    }

    pub async fn create_key(&self, name: String) -> Result<Key> {
        let message = pb::CreateKeyRequest {
            name,
            ..Default::default()
        };
        let reply = self
            .client
            .clone()
            .create_key(self.request(message))
            .await
            .context("CreateKey")?
            .into_inner();
        let id = reply
            .key
            .map(|k| k.id)
            .ok_or_else(|| anyhow!("CreateKey answered without a key"))?;
        Ok(Key { id, raw: reply.raw })
    }

    /// `CreateKey` with per-key limits and/or a balance (exact decimal USD): such a key is
    /// admitted by the control plane (one Rate Limit Service call per request).
    pub async fn create_key_with(
        &self,
        name: String,
        limits: Option<pb::Limits>,
        balance_usd: Option<String>,
    ) -> Result<Key> {
        let message = pb::CreateKeyRequest {
            name: name.clone(),
            balance_usd,
            limits,
            ..Default::default()
        };
        let reply = self
            .client
            .clone()
            .create_key(self.request(message))
            .await
            .with_context(|| format!("CreateKey {name}"))?
            .into_inner();
        let id = reply
            .key
            .map(|k| k.id)
            .ok_or_else(|| anyhow!("CreateKey answered without a key"))?;
        Ok(Key { id, raw: reply.raw })
    }

    /// Requests stored per key over the last `days` UTC days (`GetUsage`, grouped by key):
    /// every stored usage row, failed ones included.
    pub async fn requests_by_key(&self, days: u32) -> Result<Vec<(String, u64)>> {
        let message = pb::GetUsageRequest {
            days,
            group_by: "key".into(),
            key_id: String::new(),
        };
        let reply = self
            .client
            .clone()
            .get_usage(self.request(message))
            .await
            .context("GetUsage")?
            .into_inner();
        Ok(reply
            .breakdown
            .into_iter()
            .map(|g| (g.key_id, g.requests))
            .collect())
    }

    /// [`Admin::create_key`], retried (up to [`CREATE_RETRIES`] times) when the control plane
    /// answers `Internal`; every retry is counted in `retried`.
    async fn create_key_retrying(&self, name: String, retried: &AtomicUsize) -> Result<Key> {
        let mut attempt = 0;
        loop {
            match self.create_key(name.clone()).await {
                Ok(key) => return Ok(key),
                Err(e) if attempt < CREATE_RETRIES && is_internal(&e) => {
                    attempt += 1;
                    retried.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(20 * attempt as u64)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    pub async fn revoke_key(&self, id: &str) -> Result<()> {
        let message = pb::RevokeKeyRequest { id: id.into() };
        self.client
            .clone()
            .revoke_key(self.request(message))
            .await
            .with_context(|| format!("RevokeKey {id}"))?;
        Ok(())
    }

    /// Creates keys `bench-<first>…` concurrently until `count` exist or `budget` is spent.
    /// Returns the keys created (fewer than `count` when the budget ran out) and the time taken.
    pub async fn seed_keys(
        &self,
        first: usize,
        count: usize,
        budget: Duration,
    ) -> Result<(Vec<Key>, Seeded)> {
        let started = Instant::now();
        let next = Arc::new(Mutex::new(0usize));
        let created = Arc::new(Mutex::new(Vec::with_capacity(count)));
        let retried = Arc::new(AtomicUsize::new(0));
        let mut workers = Vec::new();
        for _ in 0..SEED_CONCURRENCY {
            let (admin, next, created, retried) =
                (self.clone(), next.clone(), created.clone(), retried.clone());
            workers.push(tokio::spawn(async move {
                loop {
                    let i = {
                        let mut next = next.lock().await;
                        if *next >= count || started.elapsed() > budget {
                            return Ok::<(), anyhow::Error>(());
                        }
                        *next += 1;
                        *next - 1
                    };
                    let key = admin
                        .create_key_retrying(format!("bench-{}", first + i), &retried)
                        .await?;
                    created.lock().await.push(key);
                }
            }));
        }
        let mut last_report = Instant::now();
        for worker in workers {
            while !worker.is_finished() {
                tokio::time::sleep(Duration::from_millis(200)).await;
                if last_report.elapsed() > Duration::from_secs(10) {
                    last_report = Instant::now();
                    let done = created.lock().await.len();
                    println!(
                        "  … {done}/{count} keys after {:.0}s",
                        started.elapsed().as_secs_f64()
                    );
                }
            }
            worker.await.context("key seeding task failed")??;
        }
        let keys = std::mem::take(&mut *created.lock().await);
        let seeded = Seeded {
            count: keys.len(),
            elapsed: started.elapsed(),
            retried: retried.load(Ordering::Relaxed),
        };
        Ok((keys, seeded))
    }

    /// Seeds routing rules `bench-route-<first>…` until `n` more exist: enabled, for every key,
    /// a realistic mix of conditions (see [`routing_rule`]), none of which holds for the
    /// benchmark's request, so the edge evaluates every condition of every rule and the request
    /// still goes to the fake provider.
    pub async fn seed_routing_rules(&self, first: usize, n: usize) -> Result<Seeded> {
        let started = Instant::now();
        for i in first..first + n {
            let message = routing_rule(i);
            let name = message.name.clone();
            self.client
                .clone()
                .create_routing_rule(self.request(message))
                .await
                .with_context(|| format!("CreateRoutingRule {name}"))?;
        }
        Ok(Seeded {
            count: n,
            elapsed: started.elapsed(),
            retried: 0,
        })
    }

    /// Seeds firewall rules `bench-fw-<first>…` until `n` more exist: enabled prompt-scope
    /// rules, a realistic mix of substring and regex patterns (see [`firewall_rule`]), none of
    /// which matches the benchmark's request, so every rule is scanned and none acts.
    pub async fn seed_firewall_rules(&self, first: usize, n: usize) -> Result<Seeded> {
        let started = Instant::now();
        for i in first..first + n {
            let message = firewall_rule(i);
            let name = message.name.clone();
            self.client
                .clone()
                .create_firewall_rule(self.request(message))
                .await
                .with_context(|| format!("CreateFirewallRule {name}"))?;
        }
        Ok(Seeded {
            count: n,
            elapsed: started.elapsed(),
            retried: 0,
        })
    }
}

/// The `i`-th benchmark firewall rule. Patterns rotate through shapes a deployment writes
/// (code names and ticket ids as substrings; account numbers, internal hosts, tokens and
/// document markers as bounded regexes) and embed `i`, so no two rules are identical and none
/// matches the benchmark's prompt ("You are a helpful assistant." / "Write one sentence about
/// the sea."). Actions rotate through block, mask and warn.
pub fn firewall_rule(i: usize) -> pb::CreateFirewallRuleRequest {
    let (match_type, pattern) = match i % 6 {
        0 => ("substring", format!("project-nightingale-{i}")),
        1 => ("substring", format!("TICKET-{i:05}")),
        2 => ("regex", format!(r"\bacct-{i}-\d{{8}}\b")),
        3 => (
            "regex",
            format!(r"(?i)\bhost{i}\.corp\.example\.(?:com|net)\b"),
        ),
        4 => ("regex", format!(r"\btok_{i}_[A-Za-z0-9]{{16,32}}\b")),
        _ => ("regex", format!(r"(?i)internal use only[ -]{i}\b")),
    };
    let action = ["block", "mask", "warn"][i % 3];
    pb::CreateFirewallRuleRequest {
        name: format!("bench-fw-{i}"),
        priority: i32::try_from(i % 100).unwrap_or(0),
        is_enabled: true,
        scope: "prompt".into(),
        r#type: match_type.into(),
        pattern,
        action: action.into(),
        replacement: String::new(),
        key_id: String::new(),
        max_match_chars: 0,
        check: String::new(),
        workspace_id: String::new(),
    }
}

/// Words of the routing rules' `contains` lists: what deployments route on. None occurs in the
/// benchmark's prompt (`contains` is a substring test, so short words like "sea" or "one"
/// would).
const RULE_WORDS: [&str; 24] = [
    "invoice",
    "refund",
    "kubernetes",
    "terraform",
    "contract",
    "diagnosis",
    "lawsuit",
    "payroll",
    "sql query",
    "stack trace",
    "unit test",
    "translate",
    "quarterly report",
    "churn",
    "gdpr",
    "incident",
    "pull request",
    "spreadsheet",
    "tax return",
    "api key",
    "migration",
    "benchmark",
    "regex",
    "compliance",
];

/// The `i`-th benchmark routing rule. Shapes rotate through what the seeds' examples write,
/// two or three conditions each: prompt substrings with a team's metadata, a team header with a
/// model pattern, substrings with another model family, metadata with a project header, and a
/// task with a substring and a mode; each embeds `i` (team names, ticket ids), so no two rules
/// are identical. None holds for the benchmark's request (no metadata, no such headers, model
/// `bench/gpt-4o-mini`, task "writing", no mode), and conditions are all evaluated (no
/// short-circuit), so every rule costs its full evaluation. Actions rotate through
/// `set_mode`, `set_model` + `add_warning` and `set_provider`. The engine's criterion bench
/// (`filter/engine/benches/engine.rs`) builds the same rules.
pub fn routing_rule(i: usize) -> pb::CreateRoutingRuleRequest {
    let w = |k: usize| RULE_WORDS[(i * 7 + k * 5) % RULE_WORDS.len()];
    let (match_json, action_json) = match i % 5 {
        0 => (
            format!(
                r#"{{"contains": ["{}", "{}", "ticket-{i:05}"], "metadata_equals": {{"team": "team-{i}"}}}}"#,
                w(0),
                w(1)
            ),
            r#"{"set_mode": "cost"}"#,
        ),
        1 => (
            format!(r#"{{"headers": {{"x-team": "team-{i}"}}, "model": "gpt-4*"}}"#),
            r#"{"set_mode": "quality"}"#,
        ),
        2 => (
            format!(
                r#"{{"contains": ["{}", "{} {i}"], "model": "claude-*"}}"#,
                w(2),
                w(3)
            ),
            r#"{"set_model": "gpt-4o", "add_warning": "routed by rule"}"#,
        ),
        3 => (
            format!(
                r#"{{"metadata_equals": {{"team": "team-{i}", "env": "prod"}}, "headers": {{"x-project": "p{i}"}}}}"#
            ),
            r#"{"set_provider": "openai"}"#,
        ),
        _ => (
            format!(
                r#"{{"task": "translation", "contains": "{} {i}", "mode": "quality"}}"#,
                w(4)
            ),
            r#"{"set_mode": "latency"}"#,
        ),
    };
    pb::CreateRoutingRuleRequest {
        name: format!("bench-route-{i}"),
        priority: i32::try_from(i % 100).unwrap_or(0),
        is_enabled: true,
        match_json,
        action_json: action_json.into(),
        key_id: String::new(),
    }
}

fn is_internal(e: &anyhow::Error) -> bool {
    e.downcast_ref::<tonic::Status>()
        .is_some_and(|status| status.code() == tonic::Code::Internal)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use serde_json::{json, Map, Value};
    use tokenrouter_engine::firewall::{Firewall, Scope, Subject};
    use tokenrouter_engine::request::{ChatRequest, ClientApi};
    use tokenrouter_engine::routing::features::features;
    use tokenrouter_engine::routing::rules::{self, Facts};
    use tokenrouter_engine::routing::{decide, Mode, RouteInput, ScoreBoard};
    use tokenrouter_engine::Snapshot;
    use tokenrouter_proto::config::v1 as config;

    use super::{firewall_rule, routing_rule};

    fn as_config(i: usize) -> config::FirewallRule {
        let r = firewall_rule(i);
        config::FirewallRule {
            id: i64::try_from(i).unwrap() + 1,
            name: r.name,
            priority: r.priority,
            enabled: r.is_enabled,
            scope: r.scope,
            r#type: r.r#type,
            pattern: r.pattern,
            action: r.action,
            replacement: r.replacement,
            key_id: r.key_id,
            max_match_chars: r.max_match_chars,
            check: r.check,
            workspace_id: r.workspace_id,
        }
    }

    /// The 1 000 seeded rules compile, match nothing in the benchmark's prompt, and do match
    /// what they are written for (so the scan is real work, not a no-op).
    #[test]
    fn bench_rules_are_valid_and_miss_the_prompt() {
        let rules: Vec<_> = (0..1000).map(as_config).collect();
        let firewall = Firewall::compile(&rules).unwrap();
        let body = super::super::request_body(super::super::TR_MODEL, false);
        for text in [
            "You are a helpful assistant.",
            "Write one sentence about the sea.",
            body.as_str(),
        ] {
            let (verdict, masked) =
                firewall.scan(Scope::Prompt, Subject::new("key_1", "default"), text);
            assert!(verdict.is_empty() && masked.is_none(), "{text}");
        }
        let cases = [
            (0, "about project-nightingale-0 today"),
            (1, "see TICKET-00001"),
            (2, "pay acct-2-12345678 now"),
            (3, "ssh HOST3.corp.example.com"),
            (4, "tok_4_abcdefghijklmnop"),
            (5, "Internal use only-5"),
        ];
        for (i, text) in cases {
            let (verdict, _) = firewall.scan(Scope::Prompt, Subject::new("key_1", "default"), text);
            assert!(!verdict.is_empty(), "rule {i} should match {text:?}");
        }
    }

    fn routing_as_config(i: usize) -> config::RoutingRule {
        let r = routing_rule(i);
        config::RoutingRule {
            id: i64::try_from(i).unwrap() + 1,
            name: r.name,
            priority: r.priority,
            enabled: r.is_enabled,
            match_json: r.match_json,
            action_json: r.action_json,
            key_id: r.key_id,
        }
    }

    /// The 1 000 seeded routing rules compile; the benchmark's request still goes to the bench
    /// provider with every rule evaluated (each condition traced) and none matched.
    #[test]
    fn bench_routing_rules_are_valid_and_miss_the_request() {
        let snapshot = Snapshot::from_proto(config::Snapshot {
            schema: tokenrouter_engine::snapshot::SCHEMA,
            version: 1,
            providers: vec![config::Provider {
                name: super::super::PROVIDER.into(),
                kind: "openai-compatible".into(),
                base_url: "http://127.0.0.1:9/v1".into(),
                cluster: "tr_provider_bench".into(),
                credential: String::new(),
                enabled: true,
                fallback_credentials: Vec::new(),
            }],
            models: tokenrouter_engine::catalogue::builtin().unwrap(),
            routing_rules: (0..1000).map(routing_as_config).collect(),
            ..config::Snapshot::default()
        })
        .unwrap();
        let body = super::super::request_body(super::super::TR_MODEL, false);
        let mut request = ChatRequest::parse(body.as_bytes()).unwrap();
        let feats = features(ClientApi::ChatCompletions, request.body_mut(), body.len());
        let header = |_: &str| None;
        let input = RouteInput {
            api: ClientApi::ChatCompletions,
            model: &request.model,
            router_mode: None,
            metadata: request.metadata.as_ref(),
            features: &feats,
            stream: false,
            key_id: "key_1",
            header: &header,
            byok: &[],
            random: 0,
            now_ms: 1_000,
        };
        let d = decide(&snapshot, &ScoreBoard::default(), &input).unwrap();
        assert_eq!(d.attempts[0].provider.name, super::super::PROVIDER);
        assert_eq!(d.trace.rules.len(), 1000);
        for (rule, traced) in snapshot.routing_rules().iter().zip(&d.trace.rules) {
            assert!(!traced.matched, "{} matched", rule.name);
            assert_eq!(d.trace.conditions_of(traced).len(), rule.conditions.len());
            assert!(rule.conditions.len() >= 2, "{}", rule.name);
        }
    }

    /// Facts of a request written for one rule.
    struct Written {
        prompt: String,
        metadata: Map<String, Value>,
        headers: Vec<(&'static str, String)>,
        model: &'static str,
    }

    impl Facts for Written {
        fn prompt_lower(&self) -> &str {
            &self.prompt
        }
        fn metadata(&self, key: &str) -> Option<&str> {
            self.metadata.get(key)?.as_str()
        }
        fn mode(&self) -> Option<Mode> {
            Some(Mode::Quality)
        }
        fn task(&self) -> Option<&str> {
            Some("translation")
        }
        fn requested_model(&self) -> &str {
            self.model
        }
        fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.as_str())
        }
    }

    /// Each rule shape does match the request it is written for (so the benchmark measures
    /// real conditions, not ones that can never hold).
    #[test]
    fn bench_routing_rules_match_what_they_are_written_for() {
        for i in 0..10 {
            let rule = rules::compile(&routing_as_config(i)).unwrap();
            let needle = match &rule.conditions.iter().find_map(|c| match c {
                rules::Condition::Contains(items) => Some(items.clone()),
                _ => None,
            }) {
                Some(items) => items[items.len() - 1].clone(),
                None => String::new(),
            };
            let team = format!("team-{i}");
            let facts = Written {
                prompt: format!("please look at this: {needle}"),
                metadata: json!({"team": team, "env": "prod"})
                    .as_object()
                    .unwrap()
                    .clone(),
                headers: vec![("x-team", team.clone()), ("x-project", format!("p{i}"))],
                model: if i % 5 == 2 {
                    "claude-sonnet-4-5"
                } else {
                    "gpt-4o"
                },
            };
            let mut conditions = Vec::new();
            let (held, trace) = rule.check(&rules::Evaluation::new(&facts), &mut conditions);
            assert!(held, "rule {i}: {trace:?} {conditions:?}");
        }
    }
}
