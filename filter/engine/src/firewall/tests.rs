use std::collections::BTreeMap;

use serde_json::{json, Value};

use super::formats::{self, StreamFilter};
use super::stream::{StreamGuard, TextStream};
use super::*;
use crate::request::ClientApi;

pub fn rule(
    id: i64,
    name: &str,
    priority: i32,
    scope: &str,
    kind: &str,
    pattern: &str,
    action: &str,
) -> pb::FirewallRule {
    pb::FirewallRule {
        id,
        name: name.into(),
        priority,
        enabled: true,
        scope: scope.into(),
        r#type: kind.into(),
        pattern: pattern.into(),
        action: action.into(),
        ..pb::FirewallRule::default()
    }
}

/// A key of the default workspace.
const K: Subject<'static> = Subject {
    key_id: "k",
    workspace_id: "default",
};

/// Key `id` of the default workspace.
fn key(id: &str) -> Subject<'_> {
    Subject::new(id, "default")
}

fn firewall(rules: &[pb::FirewallRule]) -> Firewall {
    Firewall::compile(rules).unwrap()
}

/// Each text of `cases` comes out of the prompt scope's scan as its second member.
fn assert_masks(fw: &Firewall, cases: &[(&str, &str)]) {
    for &(text, want) in cases {
        let (_, masked) = fw.scan(Scope::Prompt, K, text);
        assert_eq!(masked.as_deref().unwrap_or(text), want, "{text}");
    }
}

fn names(v: &Verdict) -> Vec<&str> {
    v.applied.iter().map(|a| a.name.as_str()).collect()
}

#[test]
fn invalid_rules_are_refused_with_a_clear_message() {
    type Break = fn(&mut pb::FirewallRule);
    let cases: &[(&str, Break)] = &[
        ("name is required", |r| r.name = "  ".into()),
        ("control characters", |r| r.name = "a\nb".into()),
        ("unknown scope", |r| r.scope = "body".into()),
        ("unknown type", |r| r.r#type = "glob".into()),
        ("unknown action", |r| r.action = "drop".into()),
        ("unknown check", |r| r.check = "crc".into()),
        ("pattern is required", |r| r.pattern = String::new()),
        ("at most 1024", |r| r.pattern = "x".repeat(1025)),
        ("invalid regex", |r| r.pattern = "(unclosed".into()),
        ("invalid regex", |r| r.pattern = r"\p{Greek}".into()),
        ("too large", |r| r.pattern = "(((a{50}){50}){50})".into()),
        ("empty string", |r| r.pattern = "x*".into()),
        ("empty string", |r| r.pattern = r"\b".into()),
        ("at most 4096", |r| r.max_match_chars = 5000),
        ("replacement", |r| r.replacement = "r".repeat(201)),
        ("workspace", |r| r.workspace_id = "Team A".into()),
        ("workspace", |r| r.workspace_id = "w".repeat(65)),
        ("regex rules only", |r| {
            r.r#type = "substring".into();
            r.max_match_chars = 10;
        }),
    ];
    for (want, break_it) in cases {
        let mut r = rule(1, "r", 1, "prompt", "regex", "abc", "block");
        break_it(&mut r);
        let e = validate(&r).unwrap_err().to_string();
        assert!(e.contains(want), "{want:?} not in {e:?}");
    }
    // A disabled rule is validated too: a bad stored rule cannot hide.
    let mut bad = rule(1, "r", 1, "prompt", "regex", "(", "block");
    bad.enabled = false;
    assert!(Firewall::compile(&[bad]).is_err());
    let dup = [
        rule(1, "a", 1, "prompt", "substring", "x", "warn"),
        rule(1, "b", 1, "prompt", "substring", "y", "warn"),
    ];
    assert!(Firewall::compile(&dup)
        .unwrap_err()
        .to_string()
        .contains("twice"));
}

#[test]
fn defaults() {
    let r = validate(&rule(1, " n ", 1, "prompt", "regex", "a+", "mask")).unwrap();
    assert_eq!(r.name, "n");
    assert_eq!(r.replacement, DEFAULT_REPLACEMENT);
    assert_eq!(r.max_match_chars, DEFAULT_MAX_MATCH_CHARS);
    assert_eq!(r.key_id, None);
}

/// Every scope × type × action: the rule acts on its own scope and on no other.
#[test]
fn each_scope_type_and_action() {
    for scope in Scope::ALL {
        for (kind, pattern) in [("substring", "SeCrEt"), ("regex", r"secret-\d+")] {
            for action in ["block", "mask", "warn"] {
                let fw = firewall(&[rule(7, "r", 1, scope.as_str(), kind, pattern, action)]);
                let text = "a secret-42 here";
                for other in Scope::ALL {
                    let (v, masked) = fw.scan(other, K, text);
                    let case = format!("{scope:?} {kind} {action} scanned as {other:?}");
                    if other != scope {
                        assert!(v.is_empty() && masked.is_none(), "{case}");
                        continue;
                    }
                    assert_eq!(names(&v), ["r"], "{case}");
                    assert_eq!(v.applied[0].action.as_str(), action, "{case}");
                    match action {
                        "block" => {
                            let e = v.error().unwrap();
                            assert_eq!(e.status(), 422, "{case}");
                            assert_eq!(e.kind, ErrorKind::Firewall);
                            assert!(e.message.contains("'r'"), "{case}: {}", e.message);
                            assert!(!e.message.contains("secret-42"), "no matched text");
                        }
                        "mask" => {
                            let want = if kind == "substring" {
                                "a [REDACTED]-42 here"
                            } else {
                                "a [REDACTED] here"
                            };
                            assert_eq!(masked.as_deref(), Some(want), "{case}");
                            assert!(v.error().is_none());
                        }
                        _ => {
                            assert_eq!(masked, None, "{case}");
                            assert_eq!(
                                v.warnings(),
                                ["firewall rule 'r' matched the ".to_string() + scope.as_str()]
                            );
                            assert!(v.error().is_none());
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn priority_order_names_the_first_block_and_picks_the_replacement() {
    let fw = firewall(&[
        rule(1, "low block", 10, "prompt", "substring", "card", "block"),
        rule(2, "high block", 100, "prompt", "substring", "card", "block"),
        rule(3, "warn", 200, "prompt", "substring", "card", "warn"),
        rule(4, "later tie", 100, "prompt", "substring", "card", "block"),
    ]);
    let (v, _) = fw.scan(Scope::Prompt, K, "my card");
    assert_eq!(v.blocked_by.as_ref().unwrap().name, "high block");
    // Evaluated in priority order up to the block; equal priorities by id.
    assert_eq!(names(&v), ["warn", "high block"]);
    assert_eq!(v.labels(), ["warn:prompt:warn", "block:prompt:high block"]);

    let mut a = rule(
        1,
        "a",
        1,
        "response",
        "substring",
        "bob@example.com",
        "mask",
    );
    a.replacement = "[LOW]".into();
    let mut b = rule(2, "b", 9, "response", "regex", r"[a-z]+@[a-z.]+", "mask");
    b.replacement = "[HIGH]".into();
    let fw = firewall(&[a, b]);
    let (v, masked) = fw.scan(Scope::Response, K, "to bob@example.com!");
    assert_eq!(masked.as_deref(), Some("to [HIGH]!"));
    assert_eq!(names(&v), ["b", "a"]);
}

#[test]
fn overlapping_matches_merge_into_one_span() {
    let fw = firewall(&[
        rule(1, "abc", 1, "prompt", "substring", "abc", "mask"),
        rule(2, "bcd", 2, "prompt", "substring", "bcd", "mask"),
        rule(3, "aa", 3, "prompt", "substring", "aa", "mask"),
    ]);
    let cases = [
        ("xabcdy", "x[REDACTED]y"),
        ("aaaa", "[REDACTED]"),
        ("abc bcd", "[REDACTED] [REDACTED]"),
        ("abcabc", "[REDACTED][REDACTED]"),
        ("nothing", "nothing"),
    ];
    assert_masks(&fw, &cases);
}

#[test]
fn unicode_text() {
    let fw = firewall(&[
        rule(1, "straße", 1, "prompt", "substring", "straße", "mask"),
        rule(2, "café", 1, "prompt", "substring", "CAFÉ", "mask"),
        rule(3, "emoji", 1, "prompt", "regex", "🔑+[a-z]+", "mask"),
        rule(4, "greek", 1, "prompt", "substring", "ωμέγα", "warn"),
    ]);
    let cases = [
        // ASCII letters fold, ß matches itself only.
        ("Die STRAßE.", "Die [REDACTED].", true),
        ("Die STRASSE.", "Die STRASSE.", false),
        // É and é are different code points: no Unicode case folding.
        ("un café", "un café", false),
        ("un CAFÉ, un Café", "un [REDACTED], un Café", true),
        ("日本🔑🔑key語", "日本[REDACTED]語", true),
    ];
    for (text, want, matched) in cases {
        let (v, masked) = fw.scan(Scope::Prompt, K, text);
        assert_eq!(masked.as_deref().unwrap_or(text), want, "{text}");
        assert_eq!(!v.is_empty(), matched, "{text}");
    }
    let (v, _) = fw.scan(Scope::Prompt, K, "ΩΜΈΓΑ ωμέγα");
    assert_eq!(names(&v), ["greek"]);
    let (v, _) = fw.scan(Scope::Prompt, K, "ΩΜΈΓΑ");
    assert!(v.is_empty(), "non-ASCII letters do not fold");
}

#[test]
fn per_key_rules_apply_to_their_key_only() {
    let mut own = rule(1, "own", 1, "prompt", "substring", "x", "block");
    own.key_id = "key_a".into();
    let fw = firewall(&[own, rule(2, "all", 1, "response", "substring", "y", "warn")]);
    assert!(fw.applies(Scope::Prompt, key("key_a")));
    assert!(!fw.applies(Scope::Prompt, key("key_b")));
    assert!(fw.applies(Scope::Response, key("key_b")));
    assert!(!fw.applies(Scope::Metadata, key("key_a")));
    assert!(fw
        .scan(Scope::Prompt, key("key_a"), "x")
        .0
        .blocked_by
        .is_some());
    assert!(fw.scan(Scope::Prompt, key("key_b"), "x").0.is_empty());
}

#[test]
fn disabled_rules_do_nothing() {
    let mut r = rule(1, "off", 1, "prompt", "substring", "x", "block");
    r.enabled = false;
    let fw = firewall(&[r]);
    assert!(!fw.applies(Scope::Prompt, K));
    assert!(fw.scan(Scope::Prompt, K, "x").0.is_empty());
}

#[test]
fn luhn() {
    let cases = [
        ("4532015112830366", true),
        ("4532-0151-1283-0366", true),
        ("5555 5555 5555 4444", true),
        ("4111111111111111", true),
        ("4111111111111112", false),
        ("4532-1234-5678-9010", false),
        ("0000", false),
        ("", false),
    ];
    for (text, want) in cases {
        assert_eq!(templates::luhn_valid(text), want, "{text}");
    }
}

#[test]
fn templates_compile_and_match_their_examples() {
    let examples = [
        ("ssn", "my ssn is 123-45-6789.", true),
        ("ssn", "call 12-345-678", false),
        ("credit_card", "card 4532 0151 1283 0366 ok", true),
        ("credit_card", "card 4532-1234-5678-9010 fails luhn", false),
        ("email", "write to Jane.Doe+x@mail.example.org", true),
        ("email", "no at sign here", false),
        ("phone", "call +1 (555) 123-4567", true),
        (
            "openai_key",
            "key sk-abcdefghijklmnopqrstuvwxyz0123456789",
            true,
        ),
        ("openai_key", "key sk-short", false),
    ];
    for (name, text, want) in examples {
        let t = templates::template(name).unwrap();
        let mut r = t.rule(Some(Scope::Prompt), Some(Action::Mask), None);
        r.id = 1;
        let fw = firewall(&[r]);
        let (v, masked) = fw.scan(Scope::Prompt, K, text);
        assert_eq!(!v.is_empty(), want, "{name}: {text}");
        if want {
            assert!(masked.unwrap().contains(t.replacement), "{name}");
        }
    }
    assert!(templates::template("nope").is_none());
    // Luhn is checked per candidate: a failing match does not hide a valid one after it.
    let t = templates::template("credit_card").unwrap();
    let mut r = t.rule(None, Some(Action::Mask), None);
    r.id = 1;
    let fw = firewall(&[r]);
    let (_, masked) = fw.scan(Scope::Prompt, K, "94532015112830366");
    assert_eq!(masked.as_deref(), Some("9[CARD_REDACTED]"));
}

#[test]
fn invalid_rule_refuses_the_whole_snapshot() {
    let mut s = crate::snapshot::tests::sample();
    s.firewall_rules = vec![rule(1, "r", 1, "prompt", "regex", "(", "block")];
    assert!(crate::Snapshot::from_proto(s.clone()).is_err());
    s.firewall_rules = vec![rule(1, "r", 1, "prompt", "regex", "x", "block")];
    let snap = crate::Snapshot::from_proto(s).unwrap();
    assert_eq!(snap.firewall().rules().len(), 1);
}

// ---------------------------------------------------------------------------------------------
// Streaming

/// Splits `text` into pieces of `size` characters.
fn pieces(text: &str, size: usize) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    chars.chunks(size).map(|c| c.iter().collect()).collect()
}

/// Streams `text` in pieces of `size`; returns (released text, guard, largest hold).
fn stream(fw: &Firewall, text: &str, size: usize) -> (String, StreamGuard, usize) {
    let mut s = TextStream::new();
    let mut g = StreamGuard::default();
    let mut out = String::new();
    let mut max_held = 0;
    for p in pieces(text, size) {
        out.push_str(&s.push(fw, K, Scope::Response, &p, &mut g));
        max_held = max_held.max(s.held());
    }
    out.push_str(&s.finish(fw, K, Scope::Response, &mut g));
    (out, g, max_held)
}

#[test]
fn streamed_text_is_masked_like_whole_text_at_every_piece_size() {
    let fw = firewall(&[
        rule(
            1,
            "email",
            5,
            "response",
            "regex",
            r"[a-z.]+@[a-z]+\.[a-z]{2,}",
            "mask",
        ),
        rule(
            2,
            "word",
            4,
            "response",
            "substring",
            "Confidential",
            "mask",
        ),
        rule(
            3,
            "bounded",
            3,
            "response",
            "regex",
            r"\bid-\d{3}\b",
            "mask",
        ),
        rule(4, "uni", 2, "response", "substring", "naïve", "mask"),
    ]);
    let texts = [
        "write to bob@example.com now, it is CONFIDENTIAL.",
        "confidentialconfidential and bob@x.io",
        "ids: id-123 id-1234 xid-123 id-999",
        "ünïcödé naïve NAÏVE naïvety 🔑 a.b@c.de",
        "no match at all in this one",
    ];
    for text in texts {
        let (whole_v, whole) = fw.scan(Scope::Response, K, text);
        let whole = whole.unwrap_or_else(|| text.to_string());
        for size in 1..=text.chars().count() {
            let (out, g, _) = stream(&fw, text, size);
            assert_eq!(out, whole, "{text:?} in pieces of {size}");
            assert_eq!(g.verdict(&fw), whole_v, "{text:?} in pieces of {size}");
        }
    }
}

#[test]
fn substring_holdback_is_longest_pattern_minus_one() {
    let fw = firewall(&[
        rule(1, "a", 1, "response", "substring", "abcdef", "mask"),
        rule(2, "b", 1, "response", "substring", "xy", "mask"),
    ]);
    let text = "z".repeat(100);
    for size in 1..20 {
        let (out, _, held) = stream(&fw, &text, size);
        assert_eq!(out, text);
        assert!(held <= 5, "held {held} bytes at piece size {size}");
    }
    let fw = firewall(&[rule(1, "r", 1, "response", "regex", "q+", "warn")]);
    let mut r = rule(1, "r", 1, "response", "regex", "q+", "warn");
    r.max_match_chars = 10;
    let fw10 = firewall(&[r]);
    let (_, _, held) = stream(&fw10, &"z".repeat(100), 1);
    assert_eq!(held, 11, "regex: max_match_chars + 1");
    let (_, _, held) = stream(&fw, &"z".repeat(1000), 7);
    assert!(held <= 257 + 7, "default regex holdback: {held}");
}

#[test]
fn block_across_pieces_releases_nothing_of_the_match() {
    let fw = firewall(&[
        rule(
            1,
            "card",
            1,
            "response",
            "regex",
            r"\d{4}-\d{4}-\d{4}-\d{4}",
            "block",
        ),
        rule(2, "word", 1, "response", "substring", "topsecret", "block"),
    ]);
    for text in ["pay 4532-1234-5678-9010 now", "this is TopSecret stuff"] {
        for size in 1..=text.len() {
            let mut s = TextStream::new();
            let mut g = StreamGuard::default();
            let mut released = String::new();
            let mut blocked_at = None;
            for (i, p) in pieces(text, size).iter().enumerate() {
                released.push_str(&s.push(&fw, K, Scope::Response, p, &mut g));
                if g.blocked(&fw) {
                    blocked_at = Some(i);
                    break;
                }
            }
            if blocked_at.is_none() {
                s.finish(&fw, K, Scope::Response, &mut g);
            }
            assert!(g.blocked(&fw), "{text} / {size}");
            // What was released before the block was noticed holds no part of the match.
            let before_block: String = {
                let mut s = TextStream::new();
                let mut g2 = StreamGuard::default();
                let mut out = String::new();
                for p in pieces(text, size)
                    .iter()
                    .take(blocked_at.unwrap_or(usize::MAX))
                {
                    out.push_str(&s.push(&fw, K, Scope::Response, p, &mut g2));
                }
                out
            };
            for secret in ["4532", "TopS", "T"] {
                if text.contains(secret) && secret.len() > 1 {
                    assert!(
                        !before_block.contains(secret),
                        "{text} / {size}: {before_block:?}"
                    );
                }
            }
        }
    }
}

#[test]
fn over_long_regex_matches_still_release_text() {
    let mut r = rule(1, "digits", 1, "response", "regex", r"\d+", "mask");
    r.max_match_chars = 4;
    let fw = firewall(&[r]);
    let text = "1".repeat(100_000);
    let (out, _, held) = stream(&fw, &text, 1000);
    assert!(
        held <= 4 * 5 + stream::MAX_EXTRA_HELD_BYTES + 1000,
        "{held}"
    );
    assert!(!out.contains('1'), "every digit is masked, in parts");
}

// ---------------------------------------------------------------------------------------------
// Formats

fn inspect(fw: &Firewall, api: ClientApi, body: &mut Value) -> Verdict {
    let mut inspection = Inspection::new(fw, K);
    let walker = formats::request_walker(api);
    if let Value::Object(o) = body {
        walker(o, &mut |scope, text| inspection.check_in_place(scope, text));
    }
    inspection.verdict()
}

#[test]
fn chat_request_every_text_is_checked() {
    let fw = firewall(&[
        rule(1, "p", 1, "prompt", "substring", "pii", "mask"),
        rule(2, "m", 1, "metadata", "substring", "pii", "mask"),
    ]);
    let mut body = json!({
        "model": "m",
        "messages": [
            {"role": "system", "content": "sys pii"},
            {"role": "developer", "content": [{"type": "text", "text": "dev PII"}]},
            {"role": "user", "content": [{"type": "text", "text": "user pii"},
                                         {"type": "image_url", "image_url": {"url": "pii"}}]},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "pii", "arguments": "{\"q\":\"pii\"}"}}],
             "function_call": {"name": "f", "arguments": "pii"}},
            {"role": "tool", "tool_call_id": "c1", "content": "tool pii"},
            {"role": "assistant", "content": [{"type": "refusal", "refusal": "pii"}]}
        ],
        "metadata": {"user": "pii", "n": 1},
        "user": "pii"
    });
    let v = inspect(&fw, ClientApi::ChatCompletions, &mut body);
    assert_eq!(names(&v), ["p", "m"]);
    let text = body.to_string();
    assert_eq!(text.matches("[REDACTED]").count(), 8, "{text}");
    // Not prompt text: the image URL, the tool's name, the end-user id.
    assert_eq!(body["messages"][2]["content"][1]["image_url"]["url"], "pii");
    assert_eq!(
        body["messages"][3]["tool_calls"][0]["function"]["name"],
        "pii"
    );
    assert_eq!(body["user"], "pii");
    assert_eq!(body["metadata"]["n"], 1);
}

#[test]
fn other_client_apis_requests() {
    let fw = firewall(&[rule(1, "p", 1, "prompt", "substring", "pii", "mask")]);
    let cases = [
        (
            ClientApi::Responses,
            json!({"model": "m", "instructions": "pii", "input": [
                {"role": "user", "content": [{"type": "input_text", "text": "pii"}]},
                {"type": "function_call", "call_id": "c", "name": "f", "arguments": "pii"},
                {"type": "function_call_output", "call_id": "c", "output": "pii"}]}),
            4,
        ),
        (
            ClientApi::Responses,
            json!({"model": "m", "input": "pii"}),
            1,
        ),
        (
            ClientApi::Messages,
            json!({"model": "m", "system": [{"type": "text", "text": "pii"}], "messages": [
                {"role": "user", "content": "pii"},
                {"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "f", "input": {"q": "pii"}}]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t", "content": "pii"}]}]}),
            4,
        ),
        (
            ClientApi::Embeddings,
            json!({"model": "m", "input": ["pii", "x pii"]}),
            2,
        ),
    ];
    for (api, mut body, want) in cases {
        inspect(&fw, api, &mut body);
        assert_eq!(
            body.to_string().matches("[REDACTED]").count(),
            want,
            "{api:?}: {body}"
        );
    }
}

#[test]
fn chat_response_texts() {
    let fw = firewall(&[rule(1, "r", 1, "response", "substring", "pii", "mask")]);
    let mut body = json!({"choices": [{"index": 0, "message": {"role": "assistant",
        "content": "a pii", "refusal": "pii",
        "tool_calls": [{"function": {"name": "pii", "arguments": "pii"}}]}}]});
    let mut inspection = Inspection::new(&fw, K);
    formats::response_walker(ClientApi::ChatCompletions)(&mut body, &mut |scope, text| {
        inspection.check_in_place(scope, text)
    });
    assert_eq!(body["choices"][0]["message"]["content"], "a [REDACTED]");
    assert_eq!(body.to_string().matches("[REDACTED]").count(), 3);
}

fn chunk(content: &str) -> String {
    format!(
        "data: {}\n\n",
        json!({"id": "c1", "object": "chat.completion.chunk", "model": "m",
               "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": null}]})
    )
}

const FINISH: &str = "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n";

/// Feeds `sse` in byte chunks of `size`; returns the client's bytes.
fn run_sse(fw: &Firewall, sse: &str, size: usize) -> (String, StreamFilter) {
    let mut f = StreamFilter::new(ClientApi::ChatCompletions, K, "req_1").unwrap();
    let mut out = Vec::new();
    let bytes = sse.as_bytes();
    let chunks: Vec<&[u8]> = bytes.chunks(size).collect();
    for (i, c) in chunks.iter().enumerate() {
        out.extend(f.feed(fw, c, i + 1 == chunks.len()));
    }
    (String::from_utf8(out).unwrap(), f)
}

/// The text the client reads: all `delta.content` joined, or the error.
fn client_text(sse: &str) -> (String, Option<Value>) {
    let mut text = String::new();
    for line in sse.lines().filter_map(|l| l.strip_prefix("data: ")) {
        if line == "[DONE]" {
            continue;
        }
        let v: Value = serde_json::from_str(line).unwrap();
        if v.get("error").is_some() {
            return (text, Some(v));
        }
        for c in v["choices"].as_array().unwrap() {
            if let Some(s) = c["delta"]["content"].as_str() {
                text.push_str(s);
            }
        }
    }
    (text, None)
}

#[test]
fn sse_email_split_across_events_is_masked_at_every_chunk_size() {
    let mut r = rule(
        1,
        "email",
        1,
        "response",
        "regex",
        r"[a-z.]+@[a-z]+\.[a-z]{2,}",
        "mask",
    );
    r.replacement = "[EMAIL]".into();
    let fw = firewall(&[
        r,
        rule(2, "w", 1, "response", "substring", "inappropriate", "warn"),
    ]);
    let sse = [
        chunk(""),
        chunk("Mail jane.d"),
        chunk("oe@exam"),
        chunk("ple.com today, inappro"),
        chunk("priate"),
        FINISH.to_string(),
        "data: {\"id\":\"c1\",\"choices\":[],\"usage\":{\"prompt_tokens\":1}}\n\n".to_string(),
        "data: [DONE]\n\n".to_string(),
    ]
    .concat();
    for size in 1..=sse.len() {
        let (out, f) = run_sse(&fw, &sse, size);
        let (text, error) = client_text(&out);
        assert_eq!(error, None);
        assert_eq!(text, "Mail [EMAIL] today, inappropriate", "chunk {size}");
        assert!(
            out.contains("\"usage\":{\"prompt_tokens\":1}"),
            "usage chunk passes"
        );
        assert!(out.ends_with("data: [DONE]\n\n"));
        assert_eq!(names(&f.verdict(&fw)), ["email", "w"]);
    }
}

#[test]
fn sse_block_ends_the_stream_with_an_error_and_leaks_nothing() {
    let fw = firewall(&[rule(
        9,
        "Block Cards",
        100,
        "response",
        "regex",
        r"\d{4}[\s-]?\d{4}[\s-]?\d{4}[\s-]?\d{4}",
        "block",
    )]);
    let sse = [
        chunk("Your card: 4532-"),
        chunk("1234-5678"),
        chunk("-9010, thanks"),
        FINISH.to_string(),
        "data: [DONE]\n\n".to_string(),
    ]
    .concat();
    for size in 1..=sse.len() {
        let (out, f) = run_sse(&fw, &sse, size);
        assert!(f.blocked());
        let (text, error) = client_text(&out);
        let error = error.unwrap_or_else(|| panic!("no error at chunk {size}: {out}"));
        assert_eq!(error["error"]["type"], "firewall_error");
        assert_eq!(error["error"]["code"], 422);
        assert_eq!(error["request_id"], "req_1");
        assert!(error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Block Cards"));
        assert!(
            !out.contains("4532") && !out.contains("9010"),
            "leak at {size}: {out}"
        );
        assert!(!out.contains("[DONE]"));
        assert!("Your card: ".starts_with(&text), "{text:?}");
    }
}

#[test]
fn sse_tool_call_arguments_and_stream_without_finish() {
    let fw = firewall(&[rule(1, "k", 1, "response", "substring", "hunter2", "mask")]);
    let ev = |args: &str| {
        format!(
            "data: {}\n\n",
            json!({"id": "c", "object": "chat.completion.chunk", "model": "m", "choices": [
                {"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": args}}]},
                 "finish_reason": null}]})
        )
    };
    let sse = [
        ev("{\"pw\":\"hun"),
        ev("ter2\"}"),
        "data: [DONE]\n\n".to_string(),
    ]
    .concat();
    for size in [1, 5, 17, sse.len()] {
        let (out, _) = run_sse(&fw, &sse, size);
        let mut args = String::new();
        for line in out.lines().filter_map(|l| l.strip_prefix("data: ")) {
            if line == "[DONE]" {
                continue;
            }
            let v: Value = serde_json::from_str(line).unwrap();
            for call in v["choices"][0]["delta"]["tool_calls"]
                .as_array()
                .into_iter()
                .flatten()
            {
                args.push_str(call["function"]["arguments"].as_str().unwrap_or(""));
            }
        }
        assert_eq!(args, "{\"pw\":\"[REDACTED]\"}", "chunk {size}: {out}");
        assert!(out.ends_with("data: [DONE]\n\n"));
    }
}

#[test]
fn only_apis_that_do_not_stream_have_no_stream_filter() {
    for api in [
        ClientApi::ChatCompletions,
        ClientApi::Responses,
        ClientApi::Messages,
    ] {
        assert!(StreamFilter::new(api, K, "r").is_some(), "{api:?}");
    }
    assert!(StreamFilter::new(ClientApi::Embeddings, K, "r").is_none());
}

// ---------------------------------------------------------------------------------------------
// Responses and Messages streams, as the translators write them

use crate::translate::canonical::{Event, Finish};
use crate::translate::{anthropic, openai_responses};

/// A reply's text in four deltas that split an email address and a warned word, then a tool
/// call whose arguments split a masked word.
fn reply_events() -> Vec<Event> {
    vec![
        Event::Text("Mail jane.d".into()),
        Event::Text("oe@exam".into()),
        Event::Text("ple.com today, inappro".into()),
        Event::Text("priate".into()),
        Event::ToolCallStart {
            index: 0,
            id: "call_1".into(),
            name: "login".into(),
        },
        Event::ToolCallArgs {
            index: 0,
            arguments: "{\"pw\":\"hun".into(),
        },
        Event::ToolCallArgs {
            index: 0,
            arguments: "ter2\"}".into(),
        },
        Event::Finish(Finish::ToolCalls),
        Event::Usage(crate::usage::Usage {
            input: 3,
            output: 9,
            ..Default::default()
        }),
        Event::End,
    ]
}

fn card_events() -> Vec<Event> {
    vec![
        Event::Text("Your card: 4532-".into()),
        Event::Text("1234-5678".into()),
        Event::Text("-9010, thanks".into()),
        Event::Finish(Finish::Stop),
        Event::End,
    ]
}

fn responses_sse(events: Vec<Event>) -> String {
    let mut w = openai_responses::StreamEncoder::new("resp_1".into(), "m".into(), 1);
    let mut out = Vec::new();
    for e in events {
        w.event(e, &mut out);
    }
    String::from_utf8(out).unwrap()
}

fn messages_sse(events: Vec<Event>) -> String {
    let mut w = anthropic::StreamEncoder::new("msg_1".into(), "m".into());
    let mut out = Vec::new();
    for e in events {
        w.event(e, &mut out);
    }
    String::from_utf8(out).unwrap()
}

/// Feeds `sse` to a filter for `api` in byte chunks of `size`; returns the client's bytes.
fn run_stream(fw: &Firewall, api: ClientApi, sse: &str, size: usize) -> (String, StreamFilter) {
    let mut f = StreamFilter::new(api, K, "req_1").unwrap();
    let mut out = Vec::new();
    let chunks: Vec<&[u8]> = sse.as_bytes().chunks(size).collect();
    for (i, c) in chunks.iter().enumerate() {
        out.extend(f.feed(fw, c, i + 1 == chunks.len()));
    }
    (String::from_utf8(out).unwrap(), f)
}

/// `(event name, data)` of every event; the name must equal the data's `type`.
fn named_events(sse: &str) -> Vec<(String, Value)> {
    sse.split("\n\n")
        .filter(|e| !e.is_empty())
        .map(|e| {
            let (name, data) = e
                .strip_prefix("event: ")
                .and_then(|e| e.split_once("\ndata: "))
                .unwrap_or_else(|| panic!("not an event: {e:?}"));
            let v: Value = serde_json::from_str(data).unwrap();
            assert_eq!(v["type"], name, "{e}");
            (name.to_string(), v)
        })
        .collect()
}

fn mask_rules() -> Firewall {
    let mut email = rule(
        1,
        "email",
        1,
        "response",
        "regex",
        r"[a-z.]+@[a-z]+\.[a-z]{2,}",
        "mask",
    );
    email.replacement = "[EMAIL]".into();
    firewall(&[
        email,
        rule(2, "pw", 1, "response", "substring", "hunter2", "mask"),
        rule(3, "w", 1, "response", "substring", "inappropriate", "warn"),
    ])
}

fn card_rule() -> Firewall {
    firewall(&[rule(
        9,
        "Block Cards",
        100,
        "response",
        "regex",
        r"\d{4}[\s-]?\d{4}[\s-]?\d{4}[\s-]?\d{4}",
        "block",
    )])
}

const MASKED_TEXT: &str = "Mail [EMAIL] today, inappropriate";
const MASKED_ARGS: &str = "{\"pw\":\"[REDACTED]\"}";

#[test]
fn responses_stream_is_masked_in_deltas_and_whole_texts_at_every_chunk_size() {
    let fw = mask_rules();
    let sse = responses_sse(reply_events());
    for size in 1..=sse.len() {
        let (out, f) = run_stream(&fw, ClientApi::Responses, &sse, size);
        assert!(
            !out.contains("jane") && !out.contains("hunter2"),
            "leak at {size}: {out}"
        );
        let events = named_events(&out);
        let seqs: Vec<u64> = events
            .iter()
            .map(|(_, v)| v["sequence_number"].as_u64().unwrap())
            .collect();
        assert_eq!(
            seqs,
            (0..events.len() as u64).collect::<Vec<_>>(),
            "chunk {size}"
        );
        let (mut text, mut args) = (String::new(), String::new());
        let mut whole = Vec::new();
        for (name, v) in &events {
            match name.as_str() {
                "response.output_text.delta" => {
                    assert_eq!(v["item_id"], "msg_1");
                    text.push_str(v["delta"].as_str().unwrap());
                }
                "response.function_call_arguments.delta" => {
                    assert_eq!(v["item_id"], "fc_1");
                    assert_eq!(v["output_index"], 1);
                    args.push_str(v["delta"].as_str().unwrap());
                }
                "response.output_text.done" => whole.push(v["text"].clone()),
                "response.content_part.done" => whole.push(v["part"]["text"].clone()),
                "response.function_call_arguments.done" => whole.push(v["arguments"].clone()),
                "response.output_item.done" if v["output_index"] == 0 => {
                    whole.push(v["item"]["content"][0]["text"].clone())
                }
                "response.output_item.done" => whole.push(v["item"]["arguments"].clone()),
                "response.completed" => {
                    let output = &v["response"]["output"];
                    whole.push(output[0]["content"][0]["text"].clone());
                    whole.push(output[1]["arguments"].clone());
                    assert_eq!(v["response"]["usage"]["output_tokens"], 9);
                }
                _ => {}
            }
        }
        assert_eq!(text, MASKED_TEXT, "chunk {size}: {out}");
        assert_eq!(args, MASKED_ARGS, "chunk {size}: {out}");
        assert_eq!(
            whole,
            [
                MASKED_TEXT,
                MASKED_TEXT,
                MASKED_TEXT,
                MASKED_ARGS,
                MASKED_ARGS,
                MASKED_TEXT,
                MASKED_ARGS
            ],
            "chunk {size}"
        );
        assert_eq!(events.last().unwrap().0, "response.completed");
        assert_eq!(names(&f.verdict(&fw)), ["email", "pw", "w"]);
    }
}

#[test]
fn responses_stream_holds_back_only_what_a_match_needs() {
    // Substring rules only: the longest pattern ("inappropriate", 13 bytes) − 1 is held.
    let fw = firewall(&[rule(
        1,
        "w",
        1,
        "response",
        "substring",
        "inappropriate",
        "warn",
    )]);
    let text = "x".repeat(100);
    let sse = responses_sse(vec![Event::Text(text.clone()), Event::End]);
    let (out, _) = run_stream(&fw, ClientApi::Responses, &sse, sse.len());
    let deltas: Vec<String> = named_events(&out)
        .into_iter()
        .filter(|(n, _)| n == "response.output_text.delta")
        .map(|(_, v)| v["delta"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(deltas, ["x".repeat(88), "x".repeat(12)]);
}

#[test]
fn responses_stream_block_ends_with_error_and_response_failed_and_leaks_nothing() {
    let fw = card_rule();
    let sse = responses_sse(card_events());
    for size in 1..=sse.len() {
        let (out, f) = run_stream(&fw, ClientApi::Responses, &sse, size);
        assert!(f.blocked());
        assert!(
            !out.contains("4532") && !out.contains("9010"),
            "leak at {size}: {out}"
        );
        let events = named_events(&out);
        let n = events.len();
        let (error, failed) = (&events[n - 2], &events[n - 1]);
        assert_eq!(error.0, "error", "chunk {size}: {out}");
        assert_eq!(error.1["code"], "firewall_error");
        assert!(error.1["message"].as_str().unwrap().contains("Block Cards"));
        assert_eq!(failed.0, "response.failed");
        assert_eq!(failed.1["response"]["status"], "failed");
        assert_eq!(failed.1["response"]["id"], "resp_1");
        assert_eq!(failed.1["response"]["error"]["code"], "firewall_error");
        let seqs: Vec<u64> = events
            .iter()
            .map(|(_, v)| v["sequence_number"].as_u64().unwrap())
            .collect();
        assert_eq!(seqs, (0..n as u64).collect::<Vec<_>>());
        let text: String = events
            .iter()
            .filter(|(name, _)| name == "response.output_text.delta")
            .map(|(_, v)| v["delta"].as_str().unwrap())
            .collect();
        assert!("Your card: ".starts_with(&text), "{text:?}");
        assert!(!out.contains("response.completed"));
    }
}

#[test]
fn messages_stream_is_masked_at_every_chunk_size() {
    let fw = mask_rules();
    let sse = messages_sse(reply_events());
    for size in 1..=sse.len() {
        let (out, f) = run_stream(&fw, ClientApi::Messages, &sse, size);
        assert!(
            !out.contains("jane") && !out.contains("hunter2"),
            "leak at {size}: {out}"
        );
        let events = named_events(&out);
        let mut blocks: BTreeMap<u64, String> = BTreeMap::new();
        let mut stopped = Vec::new();
        for (name, v) in &events {
            let index = v["index"].as_u64().unwrap_or(u64::MAX);
            match name.as_str() {
                "content_block_delta" => {
                    assert!(!stopped.contains(&index), "delta after its block's stop");
                    let delta = &v["delta"];
                    let piece = delta["text"].as_str().or(delta["partial_json"].as_str());
                    blocks.entry(index).or_default().push_str(piece.unwrap());
                }
                "content_block_stop" => stopped.push(index),
                _ => {}
            }
        }
        assert_eq!(blocks[&0], MASKED_TEXT, "chunk {size}: {out}");
        assert_eq!(blocks[&1], MASKED_ARGS, "chunk {size}: {out}");
        assert_eq!(stopped, [0, 1]);
        assert_eq!(events.last().unwrap().0, "message_stop");
        assert_eq!(names(&f.verdict(&fw)), ["email", "pw", "w"]);
    }
}

#[test]
fn messages_stream_block_ends_with_an_error_event_and_leaks_nothing() {
    let fw = card_rule();
    let sse = messages_sse(card_events());
    for size in 1..=sse.len() {
        let (out, f) = run_stream(&fw, ClientApi::Messages, &sse, size);
        assert!(f.blocked());
        assert!(
            !out.contains("4532") && !out.contains("9010"),
            "leak at {size}: {out}"
        );
        let events = named_events(&out);
        let (name, error) = events.last().unwrap();
        assert_eq!(name, "error", "chunk {size}: {out}");
        assert_eq!(error["error"]["type"], "firewall_error");
        assert_eq!(error["error"]["code"], 422);
        assert_eq!(error["request_id"], "req_1");
        assert!(error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Block Cards"));
        assert!(!out.contains("message_stop"));
    }
}

#[test]
fn responses_and_messages_replies_are_walked() {
    let fw = mask_rules();
    let reply = || crate::translate::canonical::Reply {
        text: "Mail jane.doe@example.com".into(),
        tool_calls: vec![crate::translate::canonical::ToolCall {
            id: "call_1".into(),
            name: "login".into(),
            arguments: "{\"pw\":\"hunter2\",\"nested\":{\"list\":[\"hunter2\"]}}".into(),
        }],
        finish: Some(Finish::ToolCalls),
        usage: crate::usage::Usage::default(),
    };
    let mut responses = openai_responses::write_reply("resp_1", "m", 1, reply());
    let mut messages = anthropic::write_reply("msg_1", "m", reply());
    for (api, body) in [
        (ClientApi::Responses, &mut responses),
        (ClientApi::Messages, &mut messages),
    ] {
        let mut inspection = Inspection::new(&fw, K);
        formats::response_walker(api)(body, &mut |scope, text| {
            inspection.check_in_place(scope, text)
        });
        assert_eq!(names(&inspection.verdict()), ["email", "pw"], "{api:?}");
        let text = body.to_string();
        assert!(
            !text.contains("jane") && !text.contains("hunter2"),
            "{text}"
        );
        assert!(text.contains("Mail [EMAIL]"), "{text}");
    }
    assert_eq!(
        responses["output"][1]["arguments"],
        "{\"pw\":\"[REDACTED]\",\"nested\":{\"list\":[\"[REDACTED]\"]}}"
    );
    assert_eq!(
        messages["content"][1]["input"]["nested"]["list"][0],
        "[REDACTED]"
    );
}

#[test]
fn header_values_cannot_be_split_or_broken() {
    let items = [
        "mask:prompt:Mask Emails".to_string(),
        "warn:response:a, b%\r\nc é".to_string(),
    ];
    assert_eq!(
        header_value(&items),
        "mask:prompt:Mask Emails, warn:response:a%2C b%25%0D%0Ac %C3%A9"
    );
    assert_eq!(header_value(&[]), "");
}

#[test]
fn regex_prefilter_approximations_match_at_least_what_their_regex_matches() {
    // (pattern, texts its regex matches somewhere): each approximation matches them too, has
    // no look-around left, and keeps literal text exact.
    let cases: &[(&str, &[&str])] = &[
        (
            "sk-[a-zA-Z0-9]{32,}",
            &["sk-abcdefghijklmnopqrstuvwxyz0123456789"],
        ),
        (r"secret-\d+", &["secret-42", "secret-٤٢"]),
        ("abc*", &["ab", "abccc"]),
        ("ab|cd", &["xcd"]),
        ("a(b|c)", &["ac"]),
        ("(?P<n>x)y", &["xy"]),
        ("[|]x", &["|x"]),
        (r"\d{3}-\d{2}-\d{4}", &["123-45-6789", "١٢٣-٤٥-٦٧٨٩"]),
        ("(?i)abc", &["ABC", "aBc"]),
        // The Kelvin sign folds to k.
        ("(?i)kelvin", &["\u{212A}ELVIN"]),
        ("^abc", &["abc"]),
        (r"\bwörd\b", &["ein wörd."]),
        (r"\Bx\B", &["axa"]),
        (r"(?m)^key=\w+$", &["a\nkey=wert\nb", "key=日本"]),
        (r"(?-u:[a-z])+\s", &["ab "]),
        ("🔑+[a-z]+", &["🔑🔑key"]),
        ("héllo wörld", &["héllo wörld"]),
    ];
    for (pattern, texts) in cases {
        let wide = prefilter::approximate(pattern).unwrap().to_string();
        let re = Regex::new(&wide).unwrap();
        assert!(
            !wide.contains("\\b") && !wide.contains("\\B") && !wide.contains('^'),
            "{pattern}: {wide}"
        );
        for text in *texts {
            assert!(
                Regex::new(pattern).unwrap().is_match(text),
                "{pattern} {text}"
            );
            assert!(re.is_match(text), "{pattern} -> {wide} misses {text:?}");
        }
    }
    assert!(
        !Regex::new(&prefilter::approximate("héllo").unwrap().to_string())
            .unwrap()
            .is_match("hello")
    );
}

#[test]
fn regex_prefilter_required_literals() {
    let lits = |pattern: &str| {
        let hir = regex_syntax::parse(pattern).unwrap();
        prefilter::required_literals(&hir).map(|lits| {
            lits.into_iter()
                .map(|l| String::from_utf8(l).unwrap())
                .collect::<Vec<_>>()
        })
    };
    let cases: &[(&str, Option<&[&str]>)] = &[
        (r"\bacct-5-\d{8}\b", Some(&["acct-5-"])),
        (r"sk-[a-zA-Z0-9]{32,}", Some(&["sk-"])),
        // Inner literals (neither a prefix nor a suffix) and suffixes.
        (r"\d{3}-\d{2}-0042", Some(&["-0042"])),
        (r"\d{3}-77-\d{4}", Some(&["-77-"])),
        (r"\w+ wort7", Some(&[" wort7"])),
        // Both literals would do; one is fewer.
        (
            r"[a-z.]+@dept5\.example\.(?:com|org)",
            Some(&["@dept5.example."]),
        ),
        (r"(?:key|token)=\d+", Some(&["key=", "token="])),
        // Every branch must have literals of its own.
        (r"x\d+|secret", None),
        (
            r"(?i)abc",
            Some(&["ABC", "ABc", "AbC", "Abc", "aBC", "aBc", "abC", "abc"]),
        ),
        (r"(?:foo)+bar", Some(&["foobar"])),
        // Too short, or none at all: left to the lazy DFA.
        (r"\d{3}-\d{2}-\d{4}", None),
        (r"[a-zA-Z0-9._%+-]+@[a-zA-Z0-9.-]+\.[a-zA-Z]{2,}", None),
        ("ab|cd", None),
        (r"(?:abc)?\d+", None),
    ];
    let mut wrong = Vec::new();
    for (pattern, want) in cases {
        let mut got = lits(pattern);
        if let Some(got) = &mut got {
            got.sort();
        }
        let want = want.map(|w| w.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        if got != want {
            wrong.push(format!("{pattern}: {got:?}, want {want:?}"));
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}

#[test]
fn regex_prefilter_keeps_what_each_regex_finds() {
    // With the prefilter, matches are the same as without it.
    let fw = firewall(&[
        rule(1, "a", 1, "prompt", "regex", "sk-[a-z]{3}", "mask"),
        rule(
            2,
            "b",
            1,
            "prompt",
            "regex",
            "key=[0-9]+|token=[0-9]+",
            "mask",
        ),
        rule(3, "c", 1, "prompt", "regex", "ab*c", "mask"),
    ]);
    let cases = [
        ("x sk-abc y", "x [REDACTED] y"),
        ("SK-xyz", "SK-xyz"),
        ("token=12 key=3", "[REDACTED] [REDACTED]"),
        ("ac abbbc", "[REDACTED] [REDACTED]"),
        ("nothing", "nothing"),
    ];
    assert_masks(&fw, &cases);
}

#[test]
fn substrings_and_regex_literals_share_one_scan() {
    // One automaton holds the substring patterns and the regexes' literals (in ASCII lower
    // case, scanned case-insensitively): each kind still finds exactly its own matches.
    let fw = firewall(&[
        rule(1, "a", 1, "prompt", "substring", "Ticket-7", "mask"),
        rule(2, "b", 1, "prompt", "regex", r"sk-[a-z]{3}", "mask"),
        rule(
            3,
            "c",
            1,
            "prompt",
            "regex",
            r"(?i)internal use only \d",
            "mask",
        ),
        rule(4, "d", 1, "prompt", "substring", "sk-", "warn"),
    ]);
    let cases = [
        ("TICKET-7 sk-abc", "[REDACTED] [REDACTED]"),
        // The literal `sk-` occurs in another case: the regex runs, and does not match.
        ("SK-abc", "SK-abc"),
        ("Internal USE only 4.", "[REDACTED]."),
        ("internal use only", "internal use only"),
        ("nothing here", "nothing here"),
    ];
    assert_masks(&fw, &cases);
    // The warn-only substring is found in any case, as before.
    let (verdict, _) = fw.scan(Scope::Prompt, K, "SK-abc");
    assert_eq!(names(&verdict), ["d"]);
}

/// A small deterministic generator (xorshift64*), so the differential test needs no crate.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }
}

/// `digits` followed by their Luhn check digit.
fn with_luhn_digit(digits: &str) -> String {
    let sum: u32 = digits
        .chars()
        .rev()
        .filter_map(|c| c.to_digit(10))
        .enumerate()
        .map(|(i, d)| match (i % 2, d * 2) {
            (0, doubled) if doubled > 9 => doubled - 9,
            (0, doubled) => doubled,
            _ => d,
        })
        .sum();
    format!("{digits}{}", (10 - sum % 10) % 10)
}

/// Rule `i` of a generated workspace (substring and regex rules of many shapes: look-arounds,
/// `(?i)`, `(?m)`, Unicode classes and literals, the `luhn` check), and a text it matches.
fn generated_rule(i: usize, rng: &mut Rng) -> (pb::FirewallRule, String) {
    let k = i;
    let (kind, pattern, example) = match i % 15 {
        0 => ("substring", format!("word{k}x"), format!("WoRd{k}X")),
        1 => ("substring", format!("straße{k}"), format!("STRAße{k}")),
        2 => (
            "regex",
            format!(r"\d{{3}}-\d{{2}}-{:04}", k % 10_000),
            format!("١٢٣-45-{:04}", k % 10_000),
        ),
        3 => (
            "regex",
            format!(r"\bacct-{k}-\d{{8}}\b"),
            format!("acct-{k}-12345678"),
        ),
        4 => (
            "regex",
            format!(r"(?i)\bhost{k}\.corp\.example\.(?:com|net)\b"),
            format!("HOST{k}.Corp.example.net"),
        ),
        5 => (
            "regex",
            format!(r"\btok_{k}_[A-Za-z0-9]{{16,32}}\b"),
            format!("tok_{k}_abcdefghijklmnopq"),
        ),
        6 => (
            "regex",
            format!(r"[a-zA-Z0-9._%+-]+@dept{k}\.example\.(?:com|org)"),
            format!("jane.doe@dept{k}.example.org"),
        ),
        7 => (
            "regex",
            format!(r"{}\d{{3}}[\s-]?\d{{4}}[\s-]?\d{{4}}[\s-]?\d{{4}}", k % 10),
            with_luhn_digit(&format!("{}53201511283036", k % 10)),
        ),
        8 => (
            "regex",
            format!(r"(?m)^note {k}: \w+$"),
            format!("\nnote {k}: wörter\n"),
        ),
        9 => ("regex", format!(r"(?i)straße {k}\b"), format!("STRAẞE {k}")),
        10 => ("regex", format!(r"\w+ wort{k}"), format!("日本 wort{k}")),
        11 => ("regex", format!(r"[^\s@]{{2,}}@x{k}\b"), format!("üb@x{k}")),
        12 => ("regex", format!(r"\B{k}z"), format!("a{k}z")),
        // Literals only per branch (inner in one, a prefix in the other).
        14 => (
            "regex",
            format!(r"\d+-foo{k}\b|\bbar{k}-\d+"),
            [format!("12-foo{k}"), format!("bar{k}-34")][rng.below(2)].clone(),
        ),
        _ => (
            "regex",
            format!(r"sk-{k}-[a-zA-Z0-9]{{8,}}"),
            format!("sk-{k}-abcdEFGH12"),
        ),
    };
    let mut r = rule(
        i as i64 + 1,
        &format!("rule {i}"),
        rng.below(5) as i32,
        "prompt",
        kind,
        &pattern,
        ["block", "mask", "warn"][rng.below(3)],
    );
    if i % 15 == 7 {
        r.check = "luhn".into();
    }
    if rng.below(5) == 0 {
        r.key_id = "key_a".into();
    }
    // Workspace rules (some also per key), without drawing from `rng`.
    if i % 7 == 3 {
        r.workspace_id = "team-a".into();
    }
    (r, example)
}

/// Every hit of every rule applying to `key` (a subject), found rule by rule with the rule's own regex
/// (`regexes[i]`: rule `i`'s, compiled on its own; the scan as it was before the prefilter),
/// sorted.
fn rule_by_rule(
    fw: &Firewall,
    regexes: &[Option<Regex>],
    key: Subject<'_>,
    text: &str,
    from: usize,
) -> Vec<(usize, usize, usize)> {
    let mut hits = Vec::new();
    for ((i, r), re) in fw.rules().iter().enumerate().zip(regexes) {
        if !r.applies_to(key) {
            continue;
        }
        match r.match_type {
            MatchType::Substring => {
                let (t, p) = (text.as_bytes(), r.pattern.as_bytes());
                for start in from..t.len() {
                    if t.len() - start >= p.len()
                        && t[start..start + p.len()].eq_ignore_ascii_case(p)
                    {
                        hits.push((i, start, start + p.len()));
                    }
                }
            }
            MatchType::Regex => {
                let re = re.as_ref().unwrap();
                let mut at = from;
                while let Some(m) = (at <= text.len()).then(|| re.find_at(text, at)).flatten() {
                    if r.check.passes(m.as_str()) {
                        hits.push((i, m.start(), m.end()));
                        at = m.end();
                    } else {
                        at = next_char(text, m.start());
                    }
                }
            }
        }
    }
    hits.sort_unstable();
    hits
}

/// Differential test: a 1,000-rule firewall (one prefilter pass for all its regexes) finds
/// exactly what scanning rule by rule finds, on a few hundred generated texts, for a key with
/// rules of its own and one without, in a workspace with rules of its own and one without,
/// from the start and from inside the text (streams).
#[test]
fn thousand_rules_find_what_rule_by_rule_scanning_finds() {
    let mut rng = Rng(0x5EED_F00D_CAFE_1234);
    let (rules, examples): (Vec<_>, Vec<_>) =
        (0..1000).map(|i| generated_rule(i, &mut rng)).unzip();
    let fw = firewall(&rules);
    // Both prefilters are exercised, and they cover every regex.
    let (by_literals, by_dfa, unfiltered) = fw.scopes[Scope::Prompt.index()].regexes.coverage();
    assert!(by_literals > 300 && by_dfa > 50, "{by_literals} {by_dfa}");
    assert_eq!(unfiltered, 0);
    // Compiled again over a previous firewall that shares half its patterns: the same.
    let previous = firewall(&rules[..500]);
    let reused = Firewall::compile_reusing(&rules, &previous).unwrap();
    let regexes: Vec<Option<Regex>> = fw
        .rules()
        .iter()
        .map(|r| (r.match_type == MatchType::Regex).then(|| Regex::new(&r.pattern).unwrap()))
        .collect();
    let filler = [
        "the",
        "order",
        "café",
        "’",
        "—",
        "😅",
        "日本語",
        " ",
        " ",
        "\n",
        "12",
        "-",
        "ü",
        "ω",
        "4111 1111 1111 1111",
        "x@y.z",
        "key=",
        "tok_",
        "acct-",
        "HOST",
        "straße",
        "wort",
    ];
    let (mut total, mut texts_with_hits) = (0, 0);
    for n in 0..300 {
        let mut text = String::new();
        for _ in 0..1 + rng.below(10) {
            match rng.below(4) {
                0 => text.push_str(rng.pick(&filler)),
                1 => text.push_str(&examples[rng.below(examples.len())]),
                2 => {
                    // A near miss: one character of an example replaced or dropped.
                    let mut chars: Vec<char> =
                        examples[rng.below(examples.len())].chars().collect();
                    let at = rng.below(chars.len());
                    if rng.below(2) == 0 {
                        chars.remove(at);
                    } else {
                        chars[at] = ['é', '0', 'Z', ' ', '_'][rng.below(5)];
                    }
                    text.extend(chars);
                }
                _ => {
                    text.push_str(rng.pick(&filler));
                    text.push(' ');
                }
            }
            if rng.below(3) == 0 {
                text.push(' ');
            }
        }
        let boundaries: Vec<usize> = text.char_indices().map(|(i, _)| i).collect();
        let from = if n % 3 == 0 {
            boundaries[rng.below(boundaries.len())]
        } else {
            0
        };
        for key in [
            key("key_a"),
            key("key_b"),
            Subject::new("key_a", "team-a"),
            Subject::new("key_b", "team-a"),
        ] {
            let mut hits: Vec<_> = fw
                .find(Scope::Prompt, key, &text, from)
                .into_iter()
                .map(|h| (h.rule, h.start, h.end))
                .collect();
            hits.sort_unstable();
            let want = rule_by_rule(&fw, &regexes, key, &text, from);
            assert_eq!(hits, want, "{key:?} from {from} in {text:?}");
            let mut again: Vec<_> = reused
                .find(Scope::Prompt, key, &text, from)
                .into_iter()
                .map(|h| (h.rule, h.start, h.end))
                .collect();
            again.sort_unstable();
            assert_eq!(again, want, "reused: {key:?} from {from} in {text:?}");
            total += want.len();
            texts_with_hits += usize::from(!want.is_empty());
        }
    }
    eprintln!("{texts_with_hits} texts with hits, {total} hits");
    // The texts are not trivial: most contain matches.
    assert_eq!(reused.rules(), fw.rules());
    assert!(
        texts_with_hits > 300 && total > 1000,
        "{texts_with_hits} texts, {total} hits"
    );
}

#[test]
fn workspace_rules_apply_to_keys_of_their_workspace_only() {
    let mut team = rule(1, "team", 1, "prompt", "substring", "secret", "block");
    team.workspace_id = "team-a".into();
    let fw = firewall(&[team]);
    assert_eq!(fw.rules()[0].workspace_id.as_deref(), Some("team-a"));
    for key_id in ["key_a", "key_b"] {
        let member = Subject::new(key_id, "team-a");
        assert!(fw.applies(Scope::Prompt, member));
        let (v, _) = fw.scan(Scope::Prompt, member, "a secret");
        assert_eq!(v.blocked_by.map(|a| a.name).as_deref(), Some("team"));
        for other in [
            Subject::new(key_id, "team-b"),
            key(key_id),
            Subject::new(key_id, ""),
        ] {
            assert!(!fw.applies(Scope::Prompt, other), "{other:?}");
            assert!(fw.scan(Scope::Prompt, other, "a secret").0.is_empty());
        }
    }
    // The rule's scope only.
    assert!(!fw.applies(Scope::Response, Subject::new("key_a", "team-a")));
}

#[test]
fn key_and_workspace_rule_needs_both() {
    let mut both = rule(1, "both", 1, "prompt", "substring", "x", "block");
    both.key_id = "key_a".into();
    both.workspace_id = "team-a".into();
    let fw = firewall(&[both]);
    let cases = [
        (Subject::new("key_a", "team-a"), true),
        (Subject::new("key_a", "team-b"), false),
        (Subject::new("key_b", "team-a"), false),
        (Subject::new("key_b", "team-b"), false),
    ];
    for (subject, want) in cases {
        assert_eq!(fw.applies(Scope::Prompt, subject), want, "{subject:?}");
        let (v, _) = fw.scan(Scope::Prompt, subject, "x");
        assert_eq!(v.blocked_by.is_some(), want, "{subject:?}");
    }
}

#[test]
fn global_rules_still_apply_to_every_key_and_workspace() {
    let mut team = rule(1, "team", 2, "prompt", "substring", "x", "warn");
    team.workspace_id = "team-a".into();
    let fw = firewall(&[team, rule(2, "all", 1, "prompt", "substring", "x", "warn")]);
    for (subject, want) in [
        (Subject::new("key_a", "team-a"), vec!["team", "all"]),
        (Subject::new("key_b", "team-b"), vec!["all"]),
        (key("k"), vec!["all"]),
        (Subject::default(), vec!["all"]),
    ] {
        assert!(fw.applies(Scope::Prompt, subject));
        let (v, _) = fw.scan(Scope::Prompt, subject, "x");
        assert_eq!(names(&v), want, "{subject:?}");
    }
}

/// The O(1) per-scope check ([`Firewall::applies`]) says yes exactly when some rule of the
/// scope applies to the subject ([`Rule::applies_to`]), which is when [`Firewall::find`] finds
/// something in a text every pattern matches — for every combination of rule scoping.
#[test]
fn applies_fast_path_agrees_with_find() {
    // (key_id, workspace_id) of each rule; every rule matches "x".
    let scoping: &[&[(&str, &str)]] = &[
        &[],
        &[("", "")],
        &[("key_a", "")],
        &[("", "team-a")],
        &[("key_a", "team-a")],
        &[("key_a", "team-a"), ("key_a", "team-b")],
        &[("key_a", "team-a"), ("key_a", "")],
        &[("key_a", ""), ("key_a", "team-a")],
        &[("key_a", "team-b"), ("", "team-a")],
        &[("key_b", ""), ("", "team-b")],
        &[("key_a", "team-a"), ("key_b", "team-b"), ("", "team-c")],
    ];
    let subjects = [
        Subject::new("key_a", "team-a"),
        Subject::new("key_a", "team-b"),
        Subject::new("key_a", "team-c"),
        Subject::new("key_b", "team-a"),
        Subject::new("key_b", "team-b"),
        Subject::new("key_c", "team-c"),
        Subject::new("key_c", "default"),
        Subject::new("", ""),
    ];
    for rules in scoping {
        for (kind, pattern) in [("substring", "x"), ("regex", "x+")] {
            let mut pbs = Vec::new();
            for (i, (k, w)) in rules.iter().enumerate() {
                // Each rule in the prompt scope, and a disabled twin in the response scope.
                for (n, scope, enabled) in [(0, "prompt", true), (1, "response", false)] {
                    let mut r = rule(
                        (2 * i + n) as i64 + 1,
                        &format!("r{i}{scope}"),
                        1,
                        scope,
                        kind,
                        pattern,
                        "warn",
                    );
                    (r.key_id, r.workspace_id, r.enabled) = (k.to_string(), w.to_string(), enabled);
                    pbs.push(r);
                }
            }
            let fw = firewall(&pbs);
            for subject in subjects {
                let want = rules.iter().any(|(k, w)| {
                    (k.is_empty() || *k == subject.key_id)
                        && (w.is_empty() || *w == subject.workspace_id)
                });
                for scope in Scope::ALL {
                    let by_rules = fw
                        .rules()
                        .iter()
                        .any(|r| r.scope == scope && r.applies_to(subject));
                    let applies = fw.applies(scope, subject);
                    let found = !fw.find(scope, subject, "a x b", 0).is_empty();
                    let ctx = format!("{rules:?} {kind} {subject:?} {scope:?}");
                    assert_eq!(applies, by_rules, "{ctx}");
                    assert_eq!(found, applies, "{ctx}");
                    assert_eq!(applies, want && scope == Scope::Prompt, "{ctx}");
                }
            }
        }
    }
}

/// The routing preview runs the prompt firewall with the rules of the key's workspace, which
/// it finds in the snapshot by key id.
#[test]
fn preview_applies_the_rules_of_the_keys_workspace() {
    use crate::routing::{preview, ScoreBoard};
    let mut p = crate::snapshot::tests::sample();
    p.keys[1].workspace_id = "team-b".into();
    p.keys[1].revoked = false;
    let mut team = rule(1, "team", 1, "prompt", "substring", "falcon", "block");
    team.workspace_id = "default".into();
    p.firewall_rules = vec![team];
    let s = crate::Snapshot::from_proto(p).unwrap();
    let body = br#"{"model":"openai/gpt-4o","messages":[{"role":"user","content":"Falcon?"}]}"#;
    let run = |key_id: &str| {
        preview(
            &s,
            &ScoreBoard::default(),
            key_id,
            ClientApi::ChatCompletions,
            body,
            &Default::default(),
            0,
            0,
        )
        .err()
        .map(|e| e.message)
    };
    let blocked = run("key_live").unwrap_or_default();
    assert!(blocked.contains("firewall rule 'team'"), "{blocked}");
    for other in ["key_dead", "key_unknown", ""] {
        assert!(
            run(other).is_none_or(|m| !m.contains("firewall")),
            "{other}"
        );
    }
}
