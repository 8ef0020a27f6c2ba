//! Micro-benchmarks of the engine's per-request hot functions (criterion).
//!
//! `cargo bench -p tokenrouter-engine --bench engine` runs them; `cargo xtask bench` runs them
//! too and copies the figures into BENCHMARKS.md.
//!
//! # Layout
//! - `auth/*`: key extraction + SHA-256 + snapshot lookup, with 100 and 100 000 keys;
//! - `request/*`: parse of a realistic Chat Completions body and its rewrite for the upstream;
//! - `routing/*`: `provider/model` and bare-model resolution; the whole decision for the load
//!   benchmark's request with 10 and 1 000 enabled routing rules that do not match it, as the
//!   edge decides (`Tracing::Served`: above 32 rules an unmatched rule stops at its first
//!   failing condition) and as the preview does (`decide_full_trace_*`: every condition
//!   evaluated and traced), and with a 2 KB prompt; the trace's JSON for the log row and the
//!   `x-tokenrouter-rule-trace` header;
//! - `complexity/*`: the prompt complexity classifier over a 2 KB prompt with a code block;
//! - `usage/*`: the SSE usage observer over a 50-chunk stream (fed as the provider sent it).
//!
//! Benches that another module adds (firewall, translation) belong in this file as new groups.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use tokenrouter_engine::auth::authenticate;
use tokenrouter_engine::keys::hash_key;
use tokenrouter_engine::request::{ChatRequest, ClientApi};
use tokenrouter_engine::routing::complexity::classify;
use tokenrouter_engine::routing::features::features;
use tokenrouter_engine::routing::{
    decide, decide_traced, resolve, RouteInput, ScoreBoard, Tracing,
};
use tokenrouter_engine::snapshot::SCHEMA;
use tokenrouter_engine::usage::OpenAiStreamObserver;
use tokenrouter_engine::Snapshot;
use tokenrouter_proto::config::v1 as pb;

/// The raw key of entry `i` of [`snapshot`].
fn raw_key(i: usize) -> String {
    format!("sk-tr-bench-{i:08}")
}

/// A snapshot with `keys` keys, an `openai` and an `openai-compatible` provider and the built-in
/// catalogue: what an edge holds in production.
fn snapshot(keys: usize) -> Snapshot {
    snapshot_with_rules(keys, 0)
}

/// [`snapshot`] with `rules` enabled routing rules from [`routing_rule`].
fn snapshot_with_rules(keys: usize, rules: usize) -> Snapshot {
    let proto = pb::Snapshot {
        schema: SCHEMA,
        version: 1,
        keys: (0..keys)
            .map(|i| pb::ApiKey {
                id: format!("key_{i:08}"),
                sha256: hash_key(&raw_key(i)).to_vec(),
                name: format!("bench {i}"),
                workspace_id: "default".into(),
                revoked: false,
                store_bodies: false,
                ..pb::ApiKey::default()
            })
            .collect(),
        providers: vec![
            pb::Provider {
                name: "openai".into(),
                kind: "openai".into(),
                base_url: "https://api.openai.com/v1".into(),
                cluster: "tr_provider_openai".into(),
                credential: "sk-provider".into(),
                enabled: true,
                fallback_credentials: Vec::new(),
            },
            pb::Provider {
                name: "bench".into(),
                kind: "openai-compatible".into(),
                base_url: "http://127.0.0.1:9000/v1".into(),
                cluster: "tr_provider_bench".into(),
                credential: String::new(),
                enabled: true,
                fallback_credentials: Vec::new(),
            },
        ],
        models: tokenrouter_engine::catalogue::builtin().expect("built-in catalogue"),
        routing_rules: (0..rules).map(routing_rule).collect(),
        // Other sections stay empty here.
        ..pb::Snapshot::default()
    };
    Snapshot::from_proto(proto).expect("valid snapshot")
}

/// Words of the rules' `contains` lists: what deployments route on, none of them in
/// [`CHAT_BODY`]'s prompt.
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

/// The `i`-th routing rule, the same shapes as the load benchmark seeds
/// (`routing_rule` in `xtask/src/bench/admin.rs`): two or three conditions each (prompt
/// substrings, metadata, headers, model pattern, task, mode), none of which holds for
/// [`CHAT_BODY`] without metadata or headers, so every condition of every rule is evaluated.
fn routing_rule(i: usize) -> pb::RoutingRule {
    let w = |k: usize| RULE_WORDS[(i * 7 + k * 5) % RULE_WORDS.len()];
    let (match_json, action_json) = match i % 5 {
        0 => (
            format!(
                r#"{{"contains": ["{}", "{}", "ticket-{i:05}"], "metadata_equals": {{"team": "team-{i}"}}}}"#,
                w(0),
                w(1)
            ),
            r#"{"set_mode": "cost"}"#.to_string(),
        ),
        1 => (
            format!(r#"{{"headers": {{"x-team": "team-{i}"}}, "model": "gpt-4*"}}"#),
            r#"{"set_mode": "quality"}"#.to_string(),
        ),
        2 => (
            format!(
                r#"{{"contains": ["{}", "{} {i}"], "model": "claude-*"}}"#,
                w(2),
                w(3)
            ),
            r#"{"set_model": "gpt-4o", "add_warning": "routed by rule"}"#.to_string(),
        ),
        3 => (
            format!(
                r#"{{"metadata_equals": {{"team": "team-{i}", "env": "prod"}}, "headers": {{"x-project": "p{i}"}}}}"#
            ),
            r#"{"set_provider": "openai"}"#.to_string(),
        ),
        _ => (
            format!(
                r#"{{"task": "translation", "contains": "{} {i}", "mode": "quality"}}"#,
                w(4)
            ),
            r#"{"set_mode": "latency"}"#.to_string(),
        ),
    };
    pb::RoutingRule {
        id: i64::try_from(i).expect("small") + 1,
        name: format!("bench-route-{i}"),
        priority: i32::try_from(i % 100).expect("small"),
        enabled: true,
        match_json,
        action_json,
        key_id: String::new(),
    }
}

/// The request body the load benchmark sends (same shape as `xtask/src/bench/fake.rs` expects).
const CHAT_BODY: &[u8] = br#"{"model":"bench/gpt-4o-mini","messages":[{"role":"system","content":"You are a helpful assistant."},{"role":"user","content":"Write one sentence about the sea."}],"temperature":0.7,"max_tokens":64}"#;

/// A 50-chunk OpenAI stream with the trailing usage chunk and `[DONE]`, one event per chunk.
fn sse_chunks() -> Vec<Vec<u8>> {
    let mut chunks: Vec<Vec<u8>> = (0..50)
        .map(|i| {
            format!(
                "data: {{\"id\":\"chatcmpl-bench\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"gpt-4o-mini\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"tok{i} \"}},\"finish_reason\":null}}]}}\n\n"
            )
            .into_bytes()
        })
        .collect();
    chunks.push(
        b"data: {\"id\":\"chatcmpl-bench\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"gpt-4o-mini\",\"choices\":[],\"usage\":{\"prompt_tokens\":21,\"completion_tokens\":50,\"total_tokens\":71}}\n\n"
            .to_vec(),
    );
    chunks.push(b"data: [DONE]\n\n".to_vec());
    chunks
}

fn auth(c: &mut Criterion) {
    let mut group = c.benchmark_group("auth");
    for keys in [100, 100_000] {
        let s = snapshot(keys);
        let header = format!("Bearer {}", raw_key(keys / 2));
        group.bench_function(format!("lookup_{keys}_keys"), |b| {
            b.iter(|| authenticate(black_box(&s), black_box(Some(header.as_str())), None).is_ok())
        });
    }
    group.finish();
}

fn request(c: &mut Criterion) {
    let mut group = c.benchmark_group("request");
    group.bench_function("parse", |b| {
        b.iter(|| ChatRequest::parse(black_box(CHAT_BODY)).is_ok())
    });
    group.bench_function("parse_and_rewrite", |b| {
        b.iter(|| {
            let mut req = ChatRequest::parse(black_box(CHAT_BODY)).expect("valid body");
            req.upstream_body("gpt-4o-mini").len()
        })
    });
    group.finish();
}

fn routing(c: &mut Criterion) {
    let s = snapshot(100);
    let mut group = c.benchmark_group("routing");
    group.bench_function("resolve_pinned", |b| {
        b.iter(|| resolve(black_box(&s), black_box("bench/gpt-4o-mini")).is_ok())
    });
    group.bench_function("resolve_bare", |b| {
        b.iter(|| resolve(black_box(&s), black_box("gpt-4o-mini")).is_ok())
    });
    // The load benchmark's request, then the same with a 2 KB prompt (`contains` conditions
    // scan the prompt).
    let long_body = serde_json::json!({
        "model": "bench/gpt-4o-mini",
        "messages": [{"role": "user", "content": prompt_2kb()}],
    })
    .to_string();
    for (body, suffix, sizes) in [
        (CHAT_BODY, "", &[10, 1000][..]),
        (long_body.as_bytes(), "_2kb_prompt", &[1000][..]),
    ] {
        let mut request = ChatRequest::parse(body).expect("valid body");
        let feats = features(ClientApi::ChatCompletions, request.body_mut(), body.len());
        let header = |_: &str| None;
        let scores = ScoreBoard::default();
        let input = RouteInput {
            api: ClientApi::ChatCompletions,
            model: &request.model,
            router_mode: None,
            metadata: request.metadata.as_ref(),
            features: &feats,
            stream: false,
            key_id: "key_00000000",
            header: &header,
            byok: &[],
            random: 0,
            now_ms: 1_000,
        };
        for &rules in sizes {
            let s = snapshot_with_rules(100, rules);
            // As the edge decides (the preview's full trace is `decide`).
            let d = decide_traced(&s, &scores, &input, Tracing::Served).expect("routed");
            assert_eq!(d.attempts[0].provider.name, "bench");
            assert!(d.trace.rule_count() == rules && d.trace.rules.iter().all(|r| !r.matched));
            group.bench_function(format!("decide_{rules}_rules{suffix}"), |b| {
                b.iter(|| {
                    decide_traced(black_box(&s), &scores, black_box(&input), Tracing::Served)
                        .is_ok()
                })
            });
            if rules > 10 && suffix.is_empty() {
                group.bench_function(format!("decide_full_trace_{rules}_rules"), |b| {
                    b.iter(|| decide(black_box(&s), &scores, black_box(&input)).is_ok())
                });
            }
            if !suffix.is_empty() {
                continue;
            }
            // What the edge does with the decision's trace on every request: the log row's
            // JSON and the bounded `x-tokenrouter-rule-trace` header.
            group.bench_function(format!("trace_json_{rules}_rules"), |b| {
                b.iter(|| {
                    let (log, header) = d.trace.render();
                    (log.len(), header.map(|h| h.len()))
                })
            });
        }
    }
    group.finish();
}

/// A 2 KB prompt: a system prompt, a question with constraints and a code block (what an auto
/// request carries to the classifier).
fn prompt_2kb() -> String {
    let mut p = String::from(
        "You are a senior engineer who reviews code for correctness and performance.\n\
         Refactor the function below so that it is testable, keep the public signature, and \
         explain why each change is needed. It must not allocate in the loop.\n```python\n",
    );
    while p.len() < 2000 {
        p.push_str("def total(orders):\n    return sum(o['price'] * o['qty'] for o in orders)\n");
    }
    p.push_str("```\nWhat is the time complexity after your change?");
    p
}

fn complexity(c: &mut Criterion) {
    let prompt = prompt_2kb();
    let mut group = c.benchmark_group("complexity");
    group.bench_function("classify_2kb", |b| {
        b.iter(|| classify(black_box(&prompt), black_box(3), black_box(false)).tier)
    });
    group.finish();
}

fn usage(c: &mut Criterion) {
    let chunks = sse_chunks();
    let mut group = c.benchmark_group("usage");
    group.bench_function("sse_observer_50_chunks", |b| {
        b.iter_batched(
            || OpenAiStreamObserver::new(true),
            |mut observer| {
                let last = chunks.len() - 1;
                for (i, chunk) in chunks.iter().enumerate() {
                    black_box(observer.feed(black_box(chunk), i == last));
                }
                observer.usage
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

criterion_group!(benches, auth, request, routing, complexity, usage);
criterion_main!(benches);
