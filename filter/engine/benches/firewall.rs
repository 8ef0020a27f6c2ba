//! Firewall scan cost against the number of enabled rules (criterion).
//!
//! `cargo bench -p tokenrouter-engine --bench firewall`. Every case scans a typical ~1 KiB
//! prompt that matches no rule (the common case: every rule is tried, nothing is rewritten):
//! - `firewall/substring_{10,100,1000}`: substring rules only (one Aho-Corasick automaton);
//! - `firewall/regex_{10,100,1000}`: regex rules with a literal prefix (`secret-7-\d{4,8}`);
//! - `firewall/regex_classes_{10,100,1000}`: regex rules that start with a class (`\d{3}-7-…`,
//!   like the PII templates) but contain a literal (`-7-`);
//! - `firewall/mixed_{10,100,1000}`: 90 % substring, 5 % prefixed regex, 5 % class regex;
//! - `firewall/templates_5`: the five built-in templates (SSN, card + Luhn, email, phone, key);
//! - `firewall/chat_request_mixed_100`: the Chat Completions walker over a parsed body;
//! - `firewall/stream_50_chunks_mixed_100`: a 50-event SSE response through the stream filter.
//!
//! A workspace's rule set, as the gateway benchmark seeds it (`xtask bench`, firewall step):
//! [`workspace_rules`], half literal words (substring rules), half regexes shaped like the PII
//! templates and the gateway benchmark's rules, most without a literal prefix (`\d{3}-…`,
//! `\bacct-…`, `(?i)\bhost…`), plus the five templates themselves; none matches the prompts.
//! - `firewall/chat2k_{ascii,unicode}_{10,100,1000}`: a ~2 KiB chat prompt (the `unicode` one
//!   with curly quotes, dashes, accents and an emoji, as chat UIs send them);
//! - `firewall/chat2k_varied_{10,100,1000}`: the same prompt with fresh numbers and names at
//!   every call (what a multi-pattern automaton learnt from the previous prompt helps less);
//! - `firewall/stress16k_{digits,base64}_1000`: texts built to be hard for a multi-pattern
//!   automaton, a fresh one at every call (see [`StressTexts`]);
//! - `firewall/short_texts_{10,1000}`: the gateway benchmark's request (a system and a user
//!   message of a few words) through the Chat Completions walker: per-text cost dominates;
//! - `firewall/compile_{100,1000}`: `Firewall::compile` (validation included), what every
//!   worker does on every new snapshot; `firewall/compile_reusing_1000`: the same after one
//!   rule was added, reusing the previous firewall's compiled regexes.
//!
//! Both regex prefilters (`firewall::prefilter`) are measured: the required-literal automaton
//! and the lazy DFA of the rules without literals (the templates). The sizes of their
//! automata and of one worker's lazy-DFA caches are printed after the `stress16k` cases.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use tokenrouter_engine::firewall::formats::{self, StreamFilter};
use tokenrouter_engine::firewall::{Firewall, Inspection, Scope, Subject};
use tokenrouter_engine::request::ClientApi;
use tokenrouter_proto::config::v1 as pb;

/// The requests' key and its workspace.
const KEY: Subject<'static> = Subject {
    key_id: "key",
    workspace_id: "default",
};

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

/// A ~2 KiB support chat prompt with numbers, dates, prices and a URL, as chat UIs send it
/// (curly quotes, dashes, accents, an emoji). Matches none of [`workspace_rules`].
const CHAT_PROMPT: &str =
    "You are Ava, the support assistant of Northwind Outdoor Gear. Answer in \
the customer’s language, keep a friendly tone, never invent order details, and hand over to a \
human agent when the customer asks for a refund above 500 EUR.\n\nCustomer: Hi! I’m writing \
about order 88213 from 14 March 2025. I bought the Alpine Trek 45 backpack (size M, colour \
“glacier blue”), two pairs of merino hiking socks and the lightweight rain cover — the total \
was 214.90 EUR including shipping. The parcel arrived on Tuesday, but the backpack’s left hip \
belt buckle is cracked and one of the zips on the lid pocket doesn’t close properly. I’ve \
attached three photos to my previous message. I was planning to use it for a week-long hike \
in the Pyrenees starting on the 2nd of April, so time is a bit tight 😅. Could you tell me \
whether you can send a replacement before then, or whether it’s better to return it for a \
refund and buy a new one in your store in Toulouse? The store page at \
https://www.northwind.example/stores/toulouse says they have it in stock, but I’m not sure \
if the stock there is the same as online. Also, the café next to the store told me you run \
repair days on Saturdays — is that still true, and could they fix the buckle on the spot? \
If I return it, do I need the original box? I already recycled it, sorry. One more thing: \
the socks are great, but the rain cover seems a bit small for a 45-litre pack when it’s \
fully loaded; is there a larger size (L or XL) that fits packs between 40 and 55 litres? \
I’d rather exchange it than keep something that won’t protect my gear in a storm. Last \
year I had a similar issue with a tent pole and your colleague Marta solved it in two days, \
which was brilliant. Thanks a lot for your help, and please let me know what information you \
need from me (photos, the delivery note, the payment receipt) to speed things up.\n\n\
Assistant: Thank you for the details! Let me check the options for you.\n\nCustomer: Great, \
I’ll wait. If you need my phone number, I’d prefer email — it’s on the account.";

/// [`CHAT_PROMPT`] with every non-ASCII character replaced by an ASCII one (same length in
/// characters).
fn ascii_prompt() -> String {
    CHAT_PROMPT
        .chars()
        .map(|c| match c {
            '’' => '\'',
            '“' | '”' => '"',
            '—' => '-',
            'é' => 'e',
            c if c.is_ascii() => c,
            _ => ':',
        })
        .collect()
}

/// A syllable-built word, different for every `i`, that no prompt contains.
fn word(i: usize) -> String {
    const SYLLABLES: [&str; 16] = [
        "ka", "vo", "ril", "tha", "mun", "zel", "dor", "qui", "fen", "sab", "lox", "ew", "tri",
        "gor", "pha", "nyx",
    ];
    let mut x = i as u64 * 0x9E37_79B9_7F4A_7C15 + 0x2545_F491;
    let mut w = String::new();
    for _ in 0..3 {
        x ^= x >> 29;
        x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
        w.push_str(SYLLABLES[(x % 16) as usize]);
    }
    format!("{w}{i}")
}

/// `n` rules of a workspace: the five templates, then alternately a literal word list entry
/// (substring) and a regex of one of eight shapes, six without a literal prefix.
fn workspace_rules(n: usize) -> Vec<pb::FirewallRule> {
    let templates = tokenrouter_engine::firewall::templates::TEMPLATES;
    (0..n)
        .map(|i| {
            let k = i / 2;
            let (kind, pattern, check) = if let Some(t) = templates.get(i) {
                ("regex", t.pattern.to_string(), t.check.as_str())
            } else if i % 2 == 0 {
                let phrase = match k % 3 {
                    0 => word(i),
                    1 => format!("project {}", word(i)),
                    _ => format!("{} {}", word(i), word(i + n)),
                };
                ("substring", phrase, "")
            } else {
                let pattern = match k % 8 {
                    0 => format!(r"\d{{3}}-\d{{2}}-{:04}", k % 10_000),
                    1 => format!(
                        r"\+?1?\s?\(?\d{{3}}\)?[\s.-]?\d{{3}}[\s.-]?{:04}",
                        k % 10_000
                    ),
                    2 => format!(r"[a-zA-Z0-9._%+-]+@dept{k}\.example\.(?:com|org)"),
                    3 => format!(r"\d{{4}}[\s-]?\d{{4}}[\s-]?\d{{4}}[\s-]?{:04}", k % 10_000),
                    4 => format!(r"\bacct-{k}-\d{{8}}\b"),
                    5 => format!(r"(?i)\bhost{k}\.corp\.example\.(?:com|net)\b"),
                    6 => format!(r"\btok_{k}_[A-Za-z0-9]{{16,32}}\b"),
                    _ => format!(r"sk-{k}-[a-zA-Z0-9]{{24,}}"),
                };
                ("regex", pattern, "")
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
                check: check.into(),
                ..pb::FirewallRule::default()
            }
        })
        .collect()
}

/// [`CHAT_PROMPT`] with fresh numbers (order number, dates, prices, sizes) and names each
/// call, as real prompts differ from one request to the next.
fn varied_prompt(texts: &mut StressTexts) -> String {
    let mut out = String::with_capacity(CHAT_PROMPT.len() + 64);
    for c in CHAT_PROMPT.chars() {
        if c.is_ascii_digit() {
            out.push(char::from(b'0' + (texts.next() % 10) as u8));
        } else {
            out.push(c);
        }
    }
    for name in ["Marta", "Toulouse", "Pyrenees", "Ava"] {
        let fresh = format!("{}{}", &name[..2], word(texts.next() as usize % 100_000));
        out = out.replace(name, &fresh);
    }
    out
}

/// 16 KiB texts meant to be hard for a multi-pattern automaton, a new one each call (so
/// nothing learnt from the previous text helps): `digits` packs fragments of the rules' shapes
/// (digit groups, separators, `acct-`, `tok_`, `@dept`, …) so that many partial matches are in
/// progress at every byte; `base64` is a pasted random blob.
struct StressTexts(u64);

impl StressTexts {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn text(&mut self, kind: &str) -> String {
        const FRAGMENTS: [&str; 16] = [
            "123", "45", "-", " ", "(555)", "+1", ".", "4111", "acct-", "tok_", "@dept", "host",
            "7", "0042", "sk-", "x",
        ];
        const BASE64: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut text = String::with_capacity(16 * 1024 + 8);
        while text.len() < 16 * 1024 {
            match kind {
                "digits" => text.push_str(FRAGMENTS[(self.next() % 16) as usize]),
                _ => text.push(char::from(BASE64[(self.next() % 64) as usize])),
            }
        }
        text
    }
}

/// Prints what the regex prefilter of `fw` holds once it has scanned the bench's texts.
fn report_memory(fw: &Firewall) {
    let (automata, caches) = fw.prefilter_bytes();
    eprintln!(
        "workspace_rules(1000): regex prefilter automata {automata} bytes, \
         this thread's lazy-DFA caches {caches} bytes"
    );
}

fn workspace(c: &mut Criterion) {
    let mut group = c.benchmark_group("firewall");
    group
        .measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(500));
    let ascii = ascii_prompt();
    for n in [10, 100, 1000] {
        let fw = Firewall::compile(&workspace_rules(n)).unwrap();
        for (label, prompt) in [("ascii", ascii.as_str()), ("unicode", CHAT_PROMPT)] {
            let (verdict, _) = fw.scan(Scope::Prompt, KEY, prompt);
            assert!(verdict.is_empty(), "{:?}", verdict.labels());
            group.bench_function(format!("chat2k_{label}_{n}"), |b| {
                b.iter(|| fw.scan(Scope::Prompt, KEY, black_box(prompt)).0.is_empty())
            });
        }
    }
    let fw = Firewall::compile(&workspace_rules(1000)).unwrap();
    let mut texts = StressTexts(0x243F_6A88_85A3_08D3);
    for label in ["digits", "base64"] {
        group.bench_function(format!("stress16k_{label}_1000"), |b| {
            b.iter_batched(
                || texts.text(label),
                |text| fw.scan(Scope::Prompt, KEY, &text).0.is_empty(),
                BatchSize::SmallInput,
            )
        });
    }
    report_memory(&fw);
    let mut texts = StressTexts(0x1319_8A2E_0370_7344);
    for n in [10, 100, 1000] {
        let fw = Firewall::compile(&workspace_rules(n)).unwrap();
        group.bench_function(format!("chat2k_varied_{n}"), |b| {
            b.iter_batched(
                || varied_prompt(&mut texts),
                |text| fw.scan(Scope::Prompt, KEY, &text).0.is_empty(),
                BatchSize::SmallInput,
            )
        });
    }
    let body = serde_json::json!({"model": "gpt-4o-mini", "messages": [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "Write one sentence about the sea."}]});
    for n in [10, 1000] {
        let fw = Firewall::compile(&workspace_rules(n)).unwrap();
        group.bench_function(format!("short_texts_{n}"), |b| {
            b.iter_batched(
                || body.as_object().cloned().unwrap(),
                |mut body| {
                    let mut inspection = Inspection::new(&fw, KEY);
                    formats::chat_completions_request(&mut body, &mut |scope, text| {
                        inspection.check_in_place(scope, text)
                    });
                    inspection.verdict().is_empty()
                },
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();

    let mut group = c.benchmark_group("firewall");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(5))
        .warm_up_time(Duration::from_millis(500));
    for n in [100, 1000] {
        let rules = workspace_rules(n);
        group.bench_function(format!("compile_{n}"), |b| {
            b.iter(|| Firewall::compile(black_box(&rules)).unwrap())
        });
    }
    let rules = workspace_rules(1000);
    let previous = Firewall::compile(&rules[..999]).unwrap();
    group.bench_function("compile_reusing_1000", |b| {
        b.iter(|| Firewall::compile_reusing(black_box(&rules), &previous).unwrap())
    });
    group.finish();
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
                b.iter(|| fw.scan(Scope::Prompt, KEY, black_box(PROMPT)).0.is_empty())
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
        b.iter(|| fw.scan(Scope::Prompt, KEY, black_box(PROMPT)).0.is_empty())
    });

    let fw = Firewall::compile(&rules(100, 5, 5)).unwrap();
    let body = serde_json::json!({"model": "gpt-4o-mini", "messages": [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": PROMPT}]});
    group.bench_function("chat_request_mixed_100", |b| {
        b.iter_batched(
            || body.as_object().cloned().unwrap(),
            |mut body| {
                let mut inspection = Inspection::new(&fw, KEY);
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
            || StreamFilter::new(ClientApi::ChatCompletions, KEY, "req").unwrap(),
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

criterion_group!(benches, scan, workspace);
criterion_main!(benches);
