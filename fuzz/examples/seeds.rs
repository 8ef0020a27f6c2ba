//! Writes the seed corpus of every fuzz target into `fuzz/corpus/<target>/`, from the engine's
//! golden fixtures (`filter/engine/tests/fixtures`) and hand-written cases, in each target's
//! input layout (see `fuzz/README.md`). Files are named by content hash, so running it again
//! adds nothing that is already there.
//!
//! Run from the repository root: `cargo run --manifest-path fuzz/Cargo.toml --example seeds`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
// Protobuf literals end in `..Default::default()` so they survive new fields.
#![allow(clippy::needless_update)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use prost::Message;
use tokenrouter_engine::firewall::templates::TEMPLATES;
use tokenrouter_engine::upstream::ProviderKind;
use tokenrouter_fuzz::fixed_snapshot_proto;
use tokenrouter_proto::config::v1 as pb;

const STATUSES: [u16; 12] = [200, 200, 200, 201, 400, 401, 404, 429, 500, 503, 529, 302];

struct Corpus {
    root: PathBuf,
    written: BTreeMap<&'static str, usize>,
}

impl Corpus {
    fn add(&mut self, target: &'static str, input: &[u8]) {
        let dir = self.root.join(target);
        std::fs::create_dir_all(&dir).unwrap();
        // FNV-1a 64: a stable name for the same bytes.
        let hash = input.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
        });
        let path = dir.join(format!("seed-{hash:016x}"));
        if !path.exists() {
            std::fs::write(path, input).unwrap();
            *self.written.entry(target).or_default() += 1;
        }
    }
}

fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

fn api_index(client: &str) -> u8 {
    match client {
        "chat" => 0,
        "responses" => 1,
        "messages" => 2,
        "embeddings" => 3,
        other => panic!("unknown client {other}"),
    }
}

fn kind_of(provider: &str) -> ProviderKind {
    match provider {
        "openai" => ProviderKind::OpenAi,
        "mistral" => ProviderKind::Mistral,
        "deepseek" => ProviderKind::DeepSeek,
        "azure" => ProviderKind::Azure,
        "anthropic" => ProviderKind::Anthropic,
        "gemini" => ProviderKind::Gemini,
        other => panic!("unknown provider {other}"),
    }
}

fn kind_index(kind: ProviderKind) -> u8 {
    ProviderKind::ALL.iter().position(|&k| k == kind).unwrap() as u8
}

/// `pair` byte of the translate targets.
fn pair(api: u8, kind: ProviderKind) -> u8 {
    api + 4 * kind_index(kind)
}

fn status_index(status: u16) -> u8 {
    STATUSES.iter().position(|&s| s == status).unwrap_or(8) as u8
}

/// `[n] n × u16` cut points.
fn cuts(points: &[u16]) -> Vec<u8> {
    let mut out = vec![points.len() as u8];
    for p in points {
        out.extend_from_slice(&p.to_le_bytes());
    }
    out
}

fn fixtures(repo: &Path, corpus: &mut Corpus) {
    let root = repo.join("filter/engine/tests/fixtures");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    dirs.sort();
    for dir in dirs {
        let name = dir.file_name().unwrap().to_string_lossy().to_string();
        let (client, provider) = name.split_once('_').unwrap();
        let api = api_index(client);
        let kind = kind_of(provider);
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        for file in files {
            let file_name = file.file_name().unwrap().to_string_lossy().to_string();
            if file_name.ends_with(".usage.json") {
                continue;
            }
            let bytes = std::fs::read(&file).unwrap();
            let input = file_name.contains(".in.");
            let sse = file_name.ends_with(".sse");
            let streamed = sse && input;
            if file_name.starts_with("request_") {
                if input {
                    for key in 0..2 {
                        corpus.add("request", &cat(&[&[api, 0, key], &bytes]));
                    }
                    let wires = [
                        kind,
                        ProviderKind::OpenAi,
                        ProviderKind::Anthropic,
                        ProviderKind::Gemini,
                    ];
                    for (i, k) in wires.into_iter().enumerate() {
                        if i > 0 && api == 3 && k == ProviderKind::Anthropic {
                            continue;
                        }
                        let stream = u8::from(bytes.windows(13).any(|w| w == b"\"stream\":true"));
                        corpus.add(
                            "translate_request",
                            &cat(&[&[pair(api, k), stream], &bytes]),
                        );
                    }
                    corpus.add(
                        "firewall_formats",
                        &cat(&[&[api, 0, 0], &cuts(&[]), &bytes]),
                    );
                    corpus.add(
                        "idempotency",
                        &cat(&[&[7], b"req-1\0/v1/chat/completions\0", &bytes]),
                    );
                }
                continue;
            }
            if file_name.starts_with("error_") {
                let status: u16 = file_name[6..9].parse().unwrap();
                if input {
                    corpus.add(
                        "translate_response",
                        &cat(&[
                            &[pair(api, kind), 2, status_index(status)],
                            &cuts(&[]),
                            &bytes,
                        ]),
                    );
                } else {
                    corpus.add(
                        "annotate",
                        &cat(&[&[api, 1], &cuts(&[]), b"mask:prompt:Email\0\0", &bytes]),
                    );
                }
                continue;
            }
            if input {
                // Provider replies and streams.
                if streamed {
                    for client_stream in [1u8, 0] {
                        corpus.add(
                            "translate_response",
                            &cat(&[&[pair(api, kind), client_stream, 0], &cuts(&[]), &bytes]),
                        );
                    }
                    let third = (bytes.len() / 3) as u16;
                    corpus.add(
                        "translate_response",
                        &cat(&[
                            &[pair(api, kind), 1, 0],
                            &cuts(&[third, 2 * third + 1, 7]),
                            &bytes,
                        ]),
                    );
                    corpus.add("sse", &cat(&[&cuts(&[]), &bytes]));
                } else {
                    for client_stream in [0u8, 1] {
                        corpus.add(
                            "translate_response",
                            &cat(&[&[pair(api, kind), 2 | client_stream, 0], &cuts(&[]), &bytes]),
                        );
                    }
                }
                continue;
            }
            // Client-format outputs: what the edge reads usage from, filters and annotates.
            corpus.add("usage", &cat(&[&[api, 1, 1, 5, 0], &cuts(&[]), &bytes]));
            corpus.add(
                "annotate",
                &cat(&[
                    &[api, 1],
                    &cuts(&[]),
                    b"warn:response:Beta\nmask:prompt:Email: work\0beta model\0",
                    &bytes,
                ]),
            );
            if sse {
                corpus.add("sse", &cat(&[&cuts(&[5, 40, 41, 300]), &bytes]));
                corpus.add(
                    "firewall_formats",
                    &cat(&[&[api, 2, 0], &cuts(&[]), &bytes]),
                );
                let half = (bytes.len() / 2) as u16;
                corpus.add(
                    "firewall_formats",
                    &cat(&[&[api, 2, 1], &cuts(&[half, half + 3]), &bytes]),
                );
                corpus.add(
                    "usage",
                    &cat(&[&[api, 0, 2, 3, 4], &cuts(&[100, 101]), &bytes]),
                );
            } else {
                corpus.add(
                    "firewall_formats",
                    &cat(&[&[api, 1, 0], &cuts(&[]), &bytes]),
                );
            }
        }
    }
}

/// One firewall rule record: `flags 0x1f pattern 0x1f replacement 0x1f name 0x1f key_id 0x1f
/// workspace_id`.
fn fw_rule(scope: u8, regex: bool, action: u8, check: u8, pattern: &str, key: &str) -> Vec<u8> {
    fw_rule_in(scope, regex, action, check, pattern, key, "")
}

/// [`fw_rule`] limited to a workspace.
fn fw_rule_in(
    scope: u8,
    regex: bool,
    action: u8,
    check: u8,
    pattern: &str,
    key: &str,
    workspace: &str,
) -> Vec<u8> {
    let b0 = scope | (u8::from(regex) << 2) | (action << 3) | (check << 5);
    let mut r = vec![b0, 0, 10, 0, 0x1f];
    r.extend_from_slice(pattern.as_bytes());
    r.extend_from_slice(b"\x1f[X]\x1f");
    r.extend_from_slice(pattern.chars().take(12).collect::<String>().as_bytes());
    r.push(0x1f);
    r.extend_from_slice(key.as_bytes());
    r.push(0x1f);
    r.extend_from_slice(workspace.as_bytes());
    r
}

fn firewall(corpus: &mut Corpus) {
    let texts: [&str; 6] = [
        "Contact bob.smith@example.com or call +1 (555) 123-4567.",
        "My SSN is 123-45-6789 and my card is 4111 1111 1111 1111; the key is sk-abcdefghijklmnopqrstuvwxyz0123456789.",
        "The secret word is SECRET, the Ωmega project is forbidden, and beta testers know it.",
        "déjà vu: ÉCOLE école ß straße ǅ ﬃ 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 \u{0}\u{7f} tabs\tand\nnewlines",
        "acct-12345678 acct-1234 ACCT-87654321 ref #0042-0042",
        "",
    ];
    // The templates, each in every scope, with a substring mask and warn beside them.
    let mut all = Vec::new();
    for (i, t) in TEMPLATES.iter().enumerate() {
        let check = if t.check == tokenrouter_engine::firewall::Check::Luhn {
            1
        } else {
            0
        };
        all.push(fw_rule(
            (i % 3) as u8,
            true,
            (i % 3) as u8,
            check,
            t.pattern,
            "",
        ));
    }
    all.push(fw_rule(0, false, 1, 0, "secret", ""));
    all.push(fw_rule(1, false, 2, 0, "beta", "k1"));
    all.push(fw_rule(0, false, 0, 0, "forbidden", ""));
    all.push(fw_rule(0, false, 1, 0, "Ωmega", ""));
    all.push(fw_rule_in(0, false, 1, 0, "project", "", "w1"));
    all.push(fw_rule_in(1, false, 0, 0, "testers", "k1", "w2"));
    all.push(fw_rule_in(0, true, 1, 0, r"\d{3}", "k2", "w1"));
    let joined = all.join(&[0x1e][..]);
    let extra: [Vec<u8>; 6] = [
        fw_rule(0, true, 1, 0, r"\bacct-\d{8}\b", ""),
        fw_rule(0, true, 1, 0, r"(?i)acct-\d+|ref #\d{4}", "k2"),
        fw_rule(1, true, 2, 0, r"^\w+", ""),
        fw_rule(2, true, 1, 0, r"\d{3}-\d{2}-0042", ""),
        fw_rule(0, true, 1, 0, r"[a-z]+$", ""),
        fw_rule(0, true, 1, 0, r"(a|b)*", ""),
    ];
    for (i, text) in texts.iter().enumerate() {
        let rules: &[u8] = match i {
            4 => &extra[..2].concat(),
            _ => &joined,
        };
        corpus.add(
            "firewall",
            &cat(&[&[0, 0, 5], &cuts(&[]), rules, b"\0", text.as_bytes()]),
        );
        corpus.add(
            "firewall",
            &cat(&[
                &[1, 1, 17],
                &cuts(&[3, 9, 10, 30]),
                rules,
                b"\0",
                text.as_bytes(),
            ]),
        );
    }
    for rule in &extra {
        corpus.add(
            "firewall",
            &cat(&[&[0, 2, 0], &cuts(&[4]), rule, b"\0", texts[4].as_bytes()]),
        );
    }
    // One of each template alone (what the prefilter sees most).
    for t in TEMPLATES {
        let r = fw_rule(1, true, 1, u8::from(t.name == "credit_card"), t.pattern, "");
        corpus.add(
            "firewall",
            &cat(&[
                &[2, 0, 0],
                &cuts(&[11, 12, 13]),
                &r,
                b"\0",
                texts[1].as_bytes(),
            ]),
        );
    }

    // Client streams with texts the fixed firewall acts on, split inside the matches.
    let chat = concat!(
        "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"Mail bob.sm\"}}]}\n\n",
        "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"ith@example.com, the sec\"}}]}\n\n",
        "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"ret is beta\"},\"finish_reason\":\"stop\"}]}\n\n",
        "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":5}}\n\n",
        "data: [DONE]\n\n",
    );
    let messages = concat!(
        "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"m\",\"usage\":{\"input_tokens\":6,\"output_tokens\":1}}}\n\n",
        "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
        "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"the forb\"}}\n\n",
        "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"idden word, secret\"}}\n\n",
        "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n",
        "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":3}}\n\n",
        "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
    );
    let responses = concat!(
        "event: response.created\ndata: {\"type\":\"response.created\",\"sequence_number\":0,\"response\":{\"id\":\"resp_1\",\"object\":\"response\",\"output\":[]}}\n\n",
        "event: response.output_item.added\ndata: {\"type\":\"response.output_item.added\",\"sequence_number\":1,\"output_index\":0,\"item\":{\"id\":\"msg_1\",\"type\":\"message\",\"content\":[]}}\n\n",
        "event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"sequence_number\":2,\"item_id\":\"msg_1\",\"output_index\":0,\"content_index\":0,\"delta\":\"my secr\"}\n\n",
        "event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"sequence_number\":3,\"item_id\":\"msg_1\",\"output_index\":0,\"content_index\":0,\"delta\":\"et is 123-45-6789\"}\n\n",
        "event: response.output_text.done\ndata: {\"type\":\"response.output_text.done\",\"sequence_number\":4,\"item_id\":\"msg_1\",\"output_index\":0,\"content_index\":0,\"text\":\"my secret is 123-45-6789\"}\n\n",
        "event: response.completed\ndata: {\"type\":\"response.completed\",\"sequence_number\":5,\"response\":{\"id\":\"resp_1\",\"output\":[{\"id\":\"msg_1\",\"type\":\"message\",\"content\":[{\"type\":\"output_text\",\"text\":\"my secret is 123-45-6789\"}]}],\"usage\":{\"input_tokens\":2,\"output_tokens\":4}}}\n\n",
    );
    for (api, stream) in [(0u8, chat), (2, messages), (1, responses)] {
        let s = stream.as_bytes();
        corpus.add("firewall_formats", &cat(&[&[api, 2, 0], &cuts(&[]), s]));
        corpus.add(
            "firewall_formats",
            &cat(&[&[api, 2, 0], &cuts(&[120, 121, 250, 251, 400]), s]),
        );
        corpus.add("usage", &cat(&[&[api, 1, 1, 1, 1], &cuts(&[200, 201]), s]));
        corpus.add("sse", &cat(&[&cuts(&[77]), s]));
        corpus.add(
            "annotate",
            &cat(&[
                &[api, 1],
                &cuts(&[(s.len() - 14) as u16]),
                b"mask:response:secret\0beta\0",
                s,
            ]),
        );
    }
    let requests: [(u8, &str); 4] = [
        (
            0,
            r#"{"model":"auto","messages":[{"role":"system","content":"be brief"},{"role":"user","content":[{"type":"text","text":"my secret: bob@example.com"}]},{"role":"assistant","content":null,"tool_calls":[{"id":"t","type":"function","function":{"name":"f","arguments":"{\"q\":\"forbidden\"}"}}]}],"metadata":{"team":"beta"}}"#,
        ),
        (
            1,
            r#"{"model":"auto:cost","instructions":"secret","input":[{"role":"user","content":[{"type":"input_text","text":"4111 1111 1111 1111"}]},{"type":"function_call_output","call_id":"c","output":"Ωmega"}],"metadata":{"k":"classified"}}"#,
        ),
        (
            2,
            r#"{"model":"claude-3-5-haiku-latest","max_tokens":10,"system":[{"type":"text","text":"sk-abcdefghijklmnopqrstuvwxyz0123456789"}],"messages":[{"role":"user","content":[{"type":"tool_result","tool_use_id":"t","content":[{"type":"text","text":"beta"}]},{"type":"tool_use","id":"u","name":"n","input":{"a":["secret",{"b":"123-45-6789"}]}}]}]}"#,
        ),
        (
            3,
            r#"{"model":"text-embedding-3-small","input":["secret","beta"],"encoding_format":"base64","dimensions":8}"#,
        ),
    ];
    for (api, body) in requests {
        corpus.add(
            "firewall_formats",
            &cat(&[&[api, 0, 3], &cuts(&[]), body.as_bytes()]),
        );
        for key in 0..4 {
            corpus.add("request", &cat(&[&[api, key * 3, key], body.as_bytes()]));
        }
    }
}

fn request(corpus: &mut Corpus) {
    let bodies: [(u8, &str); 8] = [
        (
            0,
            r#"{"model":"auto:quality","messages":[{"role":"user","content":"Prove that there are infinitely many primes, step by step."}],"stream":true}"#,
        ),
        (
            0,
            r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"translate this to German"}],"metadata":{"team":"research","task":"code"},"tools":[{"type":"function","function":{"name":"f","parameters":{}}}],"response_format":{"type":"json_object"},"max_tokens":20}"#,
        ),
        (
            0,
            r#"{"model":"openai/gpt-4o","messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"data:,"}}]}],"stream":true,"stream_options":{"include_usage":true}}"#,
        ),
        (
            0,
            r#"{"model":"local/my-model","messages":[{"role":"user","content":"fn main() { println!(\"hi\"); }"}]}"#,
        ),
        (
            1,
            r#"{"model":"auto","router_mode":"latency","input":"What is the capital of France?","metadata":{"team":"research"}}"#,
        ),
        (
            2,
            r#"{"model":"anthropic/claude-3-5-haiku-latest","max_tokens":5,"messages":[{"role":"user","content":"hello"}],"stream":true}"#,
        ),
        (
            3,
            r#"{"model":"gemini/text-embedding-004","input":"hello"}"#,
        ),
        (
            0,
            r#"{"model":"gpt-*","messages":[{"role":"user","content":"x"}],"stream":false,"metadata":{}}"#,
        ),
    ];
    for (api, body) in bodies {
        for (flags, key) in [(0u8, 0u8), (7, 1), (0x81, 2), (2, 3)] {
            corpus.add("request", &cat(&[&[api, flags, key], body.as_bytes()]));
        }
        corpus.add(
            "translate_request",
            &cat(&[&[pair(api, ProviderKind::Anthropic), 1], body.as_bytes()]),
        );
        corpus.add(
            "translate_request",
            &cat(&[&[pair(api, ProviderKind::Gemini), 0], body.as_bytes()]),
        );
        corpus.add(
            "translate_request",
            &cat(&[&[pair(api, ProviderKind::Azure), 2], body.as_bytes()]),
        );
    }
}

fn routing(corpus: &mut Corpus) {
    let facts =
        "Please TRANSLATE this code\ngpt-4o-mini\ncode\nteam=research\nh:X-Tier=gold\ntask=code";
    let rules: [(&str, &str); 9] = [
        (
            r#"{"contains":["translate","übersetze","CODE"]}"#,
            r#"{"set_mode":"cost"}"#,
        ),
        (
            r#"{"metadata_equals":{"team":"research","n":1,"b":true}}"#,
            r#"{"set_provider":"anthropic","add_warning":{"message":"routed"}}"#,
        ),
        (
            r#"{"model":"gpt-*","headers":{"X-Tier":"gold"}}"#,
            r#"{"set_model":"gpt-4o"}"#,
        ),
        (
            r#"{"task":"Code","mode":"quality"}"#,
            r#"{"add_warning":"code"}"#,
        ),
        ("", r#"{"set_mode":"balanced"}"#),
        (
            r#"{"contains":"please"}"#,
            r#"{"set_provider":"Not A Name"}"#,
        ),
        (r#"{"nope":1}"#, r#"{}"#),
        (r#"[1,2]"#, r#"{"set_mode":"fast"}"#),
        (r#"{"contains":[]}"#, "not json"),
    ];
    let rule = |flags: &[u8], name: &str, m: &str, a: &str, key: &str| -> Vec<u8> {
        cat(&[
            flags,
            b"\x1f",
            name.as_bytes(),
            b"\x1f",
            m.as_bytes(),
            b"\x1f",
            a.as_bytes(),
            b"\x1f",
            key.as_bytes(),
        ])
    };
    let mut all: Vec<Vec<u8>> = vec![cat(&[&[1, 0], b"\x1f", facts.as_bytes()])];
    for (i, (m, a)) in rules.iter().enumerate() {
        all.push(rule(
            &[i as u8, 0],
            &format!("rule {i}"),
            m,
            a,
            if i == 3 { "k1" } else { "" },
        ));
    }
    corpus.add("routing_rules", &all.join(&[0x1e][..]));
    for (i, (m, a)) in rules.iter().enumerate() {
        let one = [
            cat(&[&[(i % 5) as u8, 1], b"\x1f", facts.as_bytes()]),
            rule(&[0, 0], "", m, a, ""),
        ];
        corpus.add("routing_rules", &one.join(&[0x1e][..]));
    }

    let backend = |flags: u8, priority: u8, weight: u32, model: &str| -> Vec<u8> {
        let w = weight.to_le_bytes();
        cat(&[
            &[flags, priority, w[0], w[1], w[2], w[3]],
            b"\x1f",
            model.as_bytes(),
        ])
    };
    let cfg_rule =
        |name: &str, m: &str| cat(&[&[1], b"\x1f", name.as_bytes(), b"\x1f", m.as_bytes()]);
    for (strategy, random) in [
        ("split", 7u64),
        ("fallback", 1 << 40),
        ("rules", 3),
        ("Traffic-Split", 9),
        ("advanced", 0),
        ("nope", 1),
    ] {
        let mut records = vec![cat(&[
            &random.to_le_bytes(),
            &[0x80 | 1],
            b"\x1fkey_1\x1f",
            strategy.as_bytes(),
            b"\x1f",
            facts.as_bytes(),
        ])];
        records.push(backend(0, 0, 3, "openai/gpt-4o-mini"));
        records.push(backend(0, 0, 1, "anthropic/claude-3-5-haiku-latest"));
        records.push(backend(0, 1, 0, " local/any "));
        records.push(backend(0, 255, 1_000_000, "gpt-4o"));
        records.push(cfg_rule("code", r#"{"contains":"code"}"#));
        records.push(backend(2, 0, 1, "gemini/gemini-2.0-flash"));
        records.push(backend(2, 0, 2, "mistral/mistral-small-latest"));
        records.push(cfg_rule(
            "research",
            r#"{"metadata_equals":{"team":"research"}}"#,
        ));
        records.push(backend(2, 3, 5, "deepseek/deepseek-chat"));
        corpus.add("routing_config", &records.join(&[0x1e][..]));
    }
}

fn snapshot(corpus: &mut Corpus) {
    let full = fixed_snapshot_proto();
    let mut small = full.clone();
    small.models.truncate(6);
    let mut empty = pb::Snapshot {
        schema: 1,
        ..pb::Snapshot::default()
    };
    empty.settings = None;
    let scores = pb::Scores {
        version: 1,
        computed_at_unix_ms: 1,
        scores: vec![
            pb::ProviderScore {
                provider: "openai".into(),
                model: String::new(),
                latency_p50_ms: 300,
                ttfb_p50_ms: 100,
                error_rate_permille: 20,
                samples: 50,
                cooldown_until_unix_ms: 5_000,
                ..pb::ProviderScore::default()
            },
            pb::ProviderScore {
                provider: "anthropic".into(),
                model: "claude-3-5-haiku-20241022".into(),
                latency_p50_ms: 200,
                samples: 2,
                ..pb::ProviderScore::default()
            },
        ],
    }
    .encode_to_vec();
    // Key deltas on the fixed snapshot: one adding a key and revoking another, one whose hash
    // belongs to another key (refused).
    let mut revoked = full.keys[0].clone();
    revoked.revoked = true;
    let added = pb::ApiKey {
        id: "key_added".into(),
        sha256: vec![0xab; 32],
        name: "added".into(),
        workspace_id: "default".into(),
        ..pb::ApiKey::default()
    };
    let clash = pb::ApiKey {
        id: "key_clash".into(),
        ..revoked.clone()
    };
    for keys in [vec![revoked, added], vec![clash]] {
        let delta = pb::KeyDelta {
            schema: 1,
            base_version: full.version,
            version: full.version + 2,
            keys,
        };
        corpus.add("snapshot", &cat(&[&[0, 0, 0], &delta.encode_to_vec()]));
    }
    for (flags, s) in [(0u8, &full), (0x81, &small), (2, &empty)] {
        let bytes = s.encode_to_vec();
        corpus.add("snapshot", &cat(&[&[flags, 0, 0], &bytes]));
        let len = (scores.len() as u16).to_le_bytes();
        corpus.add("snapshot", &cat(&[&[flags | 1], &len, &scores, &bytes]));
    }
}

fn small(corpus: &mut Corpus) {
    let cases: [(u8, &str); 22] = [
        (0, "https://api.openai.com/v1"),
        (0, "http://127.0.0.1:9001/v1/"),
        (
            0,
            "https://res.openai.azure.com/?api-version=2025-01-01-preview",
        ),
        (0, "http://[::1]:8080/base?x=1&y=%20"),
        (0, "https://host:443"),
        (1, "Bearer sk-tr-abc \nsk-tr-xyz"),
        (1, "bearer\t x\n"),
        (1, "Basic abc\n  sk-tr-ключ  "),
        (
            2,
            r#"[["openai","gpt-4o"],["local","org/model \u00e9\"x"]]"#,
        ),
        (2, "/v1/chat/completions?x=1"),
        (2, "/v1/models/"),
        (3, "0.15"),
        (3, "12"),
        (3, ".5"),
        (3, "9223372036854.775807"),
        (3, "+1.000001"),
        (3, "balanced"),
        (4, "mask:prompt:Email, work\nwarn:response:Ωmega 100%"),
        (4, "\n\u{0}\u{7f}"),
        (
            5,
            r#"[{"id":"m","provider_kind":"openai","input_usd_per_mtok":"0.1","output_usd_per_mtok":"0.2","cached_input_usd_per_mtok":"0","context_window":1000,"quality":50}]"#,
        ),
        (5, "[]"),
        (5, r#"[{"id":"m","quality":101}]"#),
    ];
    for (which, text) in cases {
        corpus.add("small_parsers", &cat(&[&[which], text.as_bytes()]));
    }
    let catalogue = tokenrouter_engine::catalogue::BUILTIN_JSON;
    corpus.add("small_parsers", &cat(&[&[5], catalogue.as_bytes()]));
    for key in ["req-1", "  spaced key  ", "ключ", &"x".repeat(256), ""] {
        corpus.add(
            "idempotency",
            &cat(&[
                &[3],
                key.as_bytes(),
                b"\0/v1/responses\0{\"model\":\"m\",\"input\":\"x\"}",
            ]),
        );
    }
}

fn main() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf();
    let mut corpus = Corpus {
        root: repo.join("fuzz/corpus"),
        written: BTreeMap::new(),
    };
    fixtures(&repo, &mut corpus);
    firewall(&mut corpus);
    request(&mut corpus);
    routing(&mut corpus);
    snapshot(&mut corpus);
    small(&mut corpus);
    for (target, n) in &corpus.written {
        println!("{target}: {n} new seeds");
    }
}
