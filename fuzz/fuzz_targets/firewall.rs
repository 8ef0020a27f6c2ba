//! Firewall rules from the fuzz input, compiled as a snapshot's are (`Firewall::compile`, the
//! validator the control plane also runs, with its pattern, regex size and nesting limits), then
//! a text from the fuzz input scanned whole (`Firewall::find`, `Firewall::scan`) and streamed in
//! arbitrary pieces (`firewall::stream::TextStream`).
//!
//! Properties: no panic, no hang (the validator bounds every regex); the regex prefilter never
//! hides a match: `find` returns exactly the hits of running every applicable rule on its own;
//! the per-scope index of keys and workspaces (`Firewall::applies`) agrees with the rules;
//! compiling again while reusing the previous firewall's regexes gives the same rules; a stream
//! releases exactly the text it was given (masked as a whole scan masks it when the scope has
//! only substring rules, whose matches a stream always catches).
//!
//! Input: `[key] [workspace] [from] [n] n × u16 cut… rules 0x00 text…`; rules are records
//! (0x1e) of fields (0x1f): `flags, pattern, replacement, name, key_id, workspace_id` (see
//! `fuzz_firewall_rules`).

#![no_main]

use std::collections::BTreeSet;

use libfuzzer_sys::fuzz_target;
use regex::RegexBuilder;
use tokenrouter_engine::firewall::stream::{StreamGuard, TextStream, MAX_EXTRA_HELD_BYTES};
use tokenrouter_engine::firewall::{
    self, templates, Action, Check, Firewall, Hit, MatchType, Rule, Scope, Subject,
    REGEX_NEST_LIMIT,
};
use tokenrouter_fuzz::{fuzz_firewall_rules, split_str, Reader};

const KEYS: [&str; 3] = ["", "k1", "k2"];
const WORKSPACES: [&str; 3] = ["default", "w1", "w2"];

/// Whether `rule` applies to requests of `subject`, spelled out: its key (if any) is the
/// subject's, and so is its workspace (if any).
fn applies(rule: &Rule, subject: Subject<'_>) -> bool {
    rule.key_id.as_deref().is_none_or(|k| k == subject.key_id)
        && rule
            .workspace_id
            .as_deref()
            .is_none_or(|w| w == subject.workspace_id)
}

fn next_char(text: &str, at: usize) -> usize {
    text.get(at..)
        .and_then(|rest| rest.chars().next())
        .map_or(text.len() + 1, |c| at + c.len_utf8())
}

/// Every hit of every enabled rule of `scope` that applies to `subject`, each rule run on its
/// own.
fn reference_hits(
    fw: &Firewall,
    scope: Scope,
    subject: Subject<'_>,
    text: &str,
    from: usize,
) -> Vec<Hit> {
    let mut hits = Vec::new();
    if from >= text.len() {
        return hits;
    }
    for (i, rule) in fw.rules().iter().enumerate() {
        if rule.scope != scope || !applies(rule, subject) {
            continue;
        }
        match rule.match_type {
            MatchType::Substring => {
                let p = rule.pattern.as_bytes();
                let t = text.as_bytes();
                for start in from..t.len() {
                    if t.len() - start >= p.len()
                        && t[start..start + p.len()].eq_ignore_ascii_case(p)
                    {
                        hits.push(Hit {
                            rule: i,
                            start,
                            end: start + p.len(),
                        });
                    }
                }
            }
            MatchType::Regex => {
                let re = RegexBuilder::new(&rule.pattern)
                    .nest_limit(REGEX_NEST_LIMIT)
                    .size_limit(firewall::MAX_REGEX_SIZE)
                    .build()
                    .expect("a validated regex compiles");
                let mut at = from;
                while at <= text.len() {
                    let Some(m) = re.find_at(text, at) else {
                        break;
                    };
                    if m.is_empty() {
                        at = next_char(text, m.end());
                        continue;
                    }
                    let passes = match rule.check {
                        Check::None => true,
                        Check::Luhn => templates::luhn_valid(m.as_str()),
                    };
                    if passes {
                        hits.push(Hit {
                            rule: i,
                            start: m.start(),
                            end: m.end(),
                        });
                        at = m.end();
                    } else {
                        at = next_char(text, m.start());
                    }
                }
            }
        }
    }
    hits
}

fn sorted(mut hits: Vec<Hit>) -> Vec<(usize, usize, usize)> {
    let mut v: Vec<_> = hits.drain(..).map(|h| (h.rule, h.start, h.end)).collect();
    v.sort_unstable();
    v
}

fuzz_target!(|data: &[u8]| {
    let mut r = Reader::new(data);
    let key = KEYS[r.pick(KEYS.len())];
    let workspace = WORKSPACES[r.pick(WORKSPACES.len())];
    let subject = Subject::new(key, workspace);
    let from_byte = r.byte();
    let cuts = r.cuts();
    let rest = r.rest();
    let (rules_part, text) = match rest.iter().position(|&b| b == 0) {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, &b""[..]),
    };
    let text = String::from_utf8_lossy(text);
    let text = text.as_ref();
    let rules = fuzz_firewall_rules(rules_part);

    let Ok(fw) = Firewall::compile(&rules) else {
        return;
    };
    for rule in &rules {
        firewall::validate(rule).expect("a rule of a compiled firewall validates alone");
    }
    let reused = Firewall::compile_reusing(&rules, &fw).expect("compiles again");
    assert_eq!(reused.rules(), fw.rules());
    let _ = fw.prefilter_bytes();

    for scope in Scope::ALL {
        // The per-scope index (O(1) lookups) agrees with the rules one by one.
        let any = fw
            .rules()
            .iter()
            .any(|r| r.scope == scope && applies(r, subject));
        assert_eq!(
            fw.applies(scope, subject),
            any,
            "scope {scope:?}, {subject:?}"
        );
        for rule in fw.rules() {
            assert_eq!(rule.applies_to(subject), applies(rule, subject));
        }
        // The prefilter never hides a match, from the start or from a later char boundary.
        let mut from = usize::from(from_byte) % (text.len() + 1);
        while !text.is_char_boundary(from) {
            from -= 1;
        }
        for at in [0, from] {
            let got = fw.find(scope, subject, text, at);
            for h in &got {
                assert!(h.start >= at && h.start < h.end && h.end <= text.len());
                assert!(text.is_char_boundary(h.start) && text.is_char_boundary(h.end));
            }
            assert_eq!(
                sorted(got),
                sorted(reference_hits(&fw, scope, subject, text, at)),
                "scope {scope:?}, from {at}"
            );
        }

        let (verdict, masked) = fw.scan(scope, subject, text);
        let hits = fw.find(scope, subject, text, 0);
        let masks = hits
            .iter()
            .any(|h| fw.rules()[h.rule].action == Action::Mask);
        assert_eq!(masked.is_some(), masks);
        assert_eq!(verdict.error().is_some(), verdict.blocked_by.is_some());
        let _ = firewall::header_value(&verdict.labels());
        let _ = verdict.warnings();

        // The same text streamed in pieces.
        let mut stream = TextStream::new();
        let mut guard = StreamGuard::default();
        let mut released = String::new();
        for piece in split_str(text, &cuts) {
            released.push_str(&stream.push(&fw, subject, scope, piece, &mut guard));
        }
        released.push_str(&stream.finish(&fw, subject, scope, &mut guard));
        assert_eq!(stream.held(), 0);
        let scope_rules: Vec<_> = fw.rules().iter().filter(|r| r.scope == scope).collect();
        if !scope_rules.iter().any(|r| r.action == Action::Mask) {
            assert_eq!(released, text, "text changed without a mask rule");
        }
        let substrings_only = scope_rules
            .iter()
            .all(|r| r.match_type == MatchType::Substring);
        if substrings_only && text.len() < MAX_EXTRA_HELD_BYTES {
            assert_eq!(&released, masked.as_deref().unwrap_or(text));
            let whole: BTreeSet<i64> = verdict.applied.iter().map(|a| a.rule_id).collect();
            let streamed: BTreeSet<i64> = guard
                .verdict(&fw)
                .applied
                .iter()
                .map(|a| a.rule_id)
                .collect();
            assert_eq!(whole, streamed);
        }
    }
});
