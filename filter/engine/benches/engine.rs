//! Micro-benchmarks of the engine's per-request hot functions (criterion).
//!
//! `cargo bench -p tokenrouter-engine --bench engine` runs them; `cargo xtask bench` runs them
//! too and copies the figures into BENCHMARKS.md.
//!
//! # Layout
//! - `auth/*`: key extraction + SHA-256 + snapshot lookup, with 100 and 100 000 keys;
//! - `request/*`: parse of a realistic Chat Completions body and its rewrite for the upstream;
//! - `routing/*`: `provider/model` and bare-model resolution;
//! - `complexity/*`: the prompt complexity classifier over a 2 KB prompt with a code block;
//! - `usage/*`: the SSE usage observer over a 50-chunk stream (fed as the provider sent it).
//!
//! Benches that another module adds (firewall, translation) belong in this file as new groups.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use tokenrouter_engine::auth::authenticate;
use tokenrouter_engine::keys::hash_key;
use tokenrouter_engine::request::ChatRequest;
use tokenrouter_engine::routing::complexity::classify;
use tokenrouter_engine::routing::resolve;
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
            },
            pb::Provider {
                name: "bench".into(),
                kind: "openai-compatible".into(),
                base_url: "http://127.0.0.1:9000/v1".into(),
                cluster: "tr_provider_bench".into(),
                credential: String::new(),
                enabled: true,
            },
        ],
        models: tokenrouter_engine::catalogue::builtin().expect("built-in catalogue"),
        // Rules and other sections that later versions add stay empty here.
        ..pb::Snapshot::default()
    };
    Snapshot::from_proto(proto).expect("valid snapshot")
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
