//! Firewall scan cost against the number of enabled rules (criterion).
//!
//! `cargo bench -p tokenrouter-engine --bench firewall`. Every case scans a typical ~1 KiB
//! prompt that matches no rule (the common case: every rule is tried, nothing is rewritten):
//! - `firewall/substring_{10,100,1000}`: substring rules only (one Aho-Corasick automaton);
//! - `firewall/regex_{10,100,1000}`: regex rules with a literal prefix (`secret-7-\d{4,8}`):
//!   the prefix prefilter skips them when the prefix is absent;
//! - `firewall/regex_classes_{10,100,1000}`: regex rules that start with a class (`\d{3}-7-…`,
//!   like the PII templates): each one scans the text;
//! - `firewall/mixed_{10,100,1000}`: 90 % substring, 5 % prefixed regex, 5 % class regex;
//! - `firewall/templates_5`: the five built-in templates (SSN, card + Luhn, email, phone, key);
//! - `firewall/chat_request_mixed_100`: the Chat Completions walker over a parsed body;
//! - `firewall/stream_50_chunks_mixed_100`: a 50-event SSE response through the stream filter.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use tokenrouter_engine::firewall::formats::{self, StreamFilter};
use tokenrouter_engine::firewall::{Firewall, Inspection, Scope};
use tokenrouter_engine::request::ClientApi;
use tokenrouter_proto::config::v1 as pb;

const PROMPT: &str = "You are a helpful assistant for an online bookshop. The customer writes: \
I ordered three books last week, a novel about the sea, a cookbook with recipes from southern \
Italy and a travel guide to Portugal, but only two of them arrived. The parcel was left at the \
door and the box looked damaged. Could you check where the third book is, whether it was sent \
separately, and if it is lost, send a replacement or refund it? I would also like to know if \
you have the second volume of the novel in stock and when the next edition of the travel guide \
comes out. My order number is in the confirmation mail you sent me. Please answer briefly and \
politely, list the next steps, and do not promise delivery dates you cannot keep. Thank you.";

/// `n` rules: `prefixed` % regexes with a literal prefix, `classes` % regexes starting with a
/// class, the rest substrings; none matches [`PROMPT`].
fn rules(n: usize, prefixed: usize, classes: usize) -> Vec<pb::FirewallRule> {
    let prefixed = n * prefixed / 100;
    let classes = prefixed + n * classes / 100;
    (0..n)
        .map(|i| {
            let (kind, pattern) = if i < prefixed {
                ("regex", format!(r"secret-{i}-\d{{4,8}}"))
            } else if i < classes {
                ("regex", format!(r"\d{{3}}-{i}-\d{{4}}"))
            } else {
                ("substring", format!("forbidden term {i}"))
            };
            pb::FirewallRule {
                id: i as i64 + 1,
                name: format!("rule {i}"),
                priority: (i % 100) as i32,
                enabled: true,
                scope: "prompt".into(),
                r#type: kind.into(),
                pattern,
                action: ["block", "mask", "warn"][i % 3].into(),
                ..pb::FirewallRule::default()
            }
        })
        .collect()
}

fn scan(c: &mut Criterion) {
    let mut group = c.benchmark_group("firewall");
    group
        .measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(500));
    let cases = [
        ("substring", 0, 0),
        ("regex", 100, 0),
        ("regex_classes", 0, 100),
        ("mixed", 5, 5),
    ];
    for (label, prefixed, classes) in cases {
        for n in [10, 100, 1000] {
            let fw = Firewall::compile(&rules(n, prefixed, classes)).unwrap();
            group.bench_function(format!("{label}_{n}"), |b| {
                b.iter(|| {
                    fw.scan(Scope::Prompt, "key", black_box(PROMPT))
                        .0
                        .is_empty()
                })
            });
        }
    }

    let templates: Vec<pb::FirewallRule> = tokenrouter_engine::firewall::templates::TEMPLATES
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let mut r = t.rule(Some(Scope::Prompt), None, None);
            r.id = i as i64 + 1;
            r
        })
        .collect();
    let fw = Firewall::compile(&templates).unwrap();
    group.bench_function("templates_5", |b| {
        b.iter(|| {
            fw.scan(Scope::Prompt, "key", black_box(PROMPT))
                .0
                .is_empty()
        })
    });

    let fw = Firewall::compile(&rules(100, 5, 5)).unwrap();
    let body = serde_json::json!({"model": "gpt-4o-mini", "messages": [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": PROMPT}]});
    group.bench_function("chat_request_mixed_100", |b| {
        b.iter_batched(
            || body.as_object().cloned().unwrap(),
            |mut body| {
                let mut inspection = Inspection::new(&fw, "key");
                formats::chat_completions_request(&mut body, &mut |scope, text| {
                    inspection.check_in_place(scope, text)
                });
                inspection.verdict().is_empty()
            },
            BatchSize::SmallInput,
        )
    });

    let mut response_rules = rules(100, 5, 5);
    for r in &mut response_rules {
        r.scope = "response".into();
    }
    let fw = Firewall::compile(&response_rules).unwrap();
    let chunks: Vec<Vec<u8>> = PROMPT
        .split_inclusive(' ')
        .take(50)
        .map(|word| {
            format!(
                "data: {}\n\n",
                serde_json::json!({"id": "c", "object": "chat.completion.chunk", "model": "m",
                    "choices": [{"index": 0, "delta": {"content": word}, "finish_reason": null}]})
            )
            .into_bytes()
        })
        .chain(std::iter::once(b"data: [DONE]\n\n".to_vec()))
        .collect();
    group.bench_function("stream_50_chunks_mixed_100", |b| {
        b.iter_batched(
            || StreamFilter::new(ClientApi::ChatCompletions, "key", "req").unwrap(),
            |mut filter| {
                let last = chunks.len() - 1;
                for (i, chunk) in chunks.iter().enumerate() {
                    black_box(filter.feed(&fw, black_box(chunk), i == last));
                }
                filter.blocked()
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

criterion_group!(benches, scan);
criterion_main!(benches);
