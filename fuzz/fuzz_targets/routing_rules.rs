//! Routing rules as the control plane stores them (`match_json`, `action_json`) compiled by the
//! validator both hosts run (`routing::rules::compile`), then evaluated against request facts
//! from the fuzz input, and the resulting trace serialised (header, log row, preview).
//!
//! Properties: no panic; `validate` and `compile` agree; a rule set evaluates each rule exactly
//! as the plain evaluator does (the set's shared Aho-Corasick automaton for `contains` vs one
//! substring search per string): same outcome, same trace; traces are ASCII JSON and the header
//! form stays within `MAX_HEADER_BYTES`.
//!
//! Input: records (0x1e) of fields (0x1f). Record 0: `[mode] [key], facts text` (facts: lines
//! `prompt`, `model`, `task`, then `k=v` metadata or `h:k=v` headers). Then one record per rule:
//! `[flags], name, match_json, action_json, key_id`.

#![no_main]
// Protobuf literals end in `..Default::default()` so they survive new fields.
#![allow(clippy::needless_update)]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use tokenrouter_engine::routing::rules::{self, Evaluation, RuleSet};
use tokenrouter_engine::routing::trace::{Trace, MAX_HEADER_BYTES};
use tokenrouter_fuzz::{field, records, FuzzFacts};
use tokenrouter_proto::config::v1 as pb;

const KEYS: [&str; 3] = ["", "k1", "k2"];
const MAX_FUZZ_RULES: usize = 40;

fuzz_target!(|data: &[u8]| {
    let records = records(data);
    let Some((first, rest)) = records.split_first() else {
        return;
    };
    let head = field(first, 0).as_bytes();
    let b = |i: usize| head.get(i).copied().unwrap_or(0);
    let facts = FuzzFacts::parse(field(first, 1), b(0) % 5);
    let key = KEYS[usize::from(b(1)) % KEYS.len()];

    let mut compiled = Vec::new();
    for (i, r) in rest.iter().take(MAX_FUZZ_RULES).enumerate() {
        let flags = field(r, 0).as_bytes();
        let f = |n: usize| flags.get(n).copied().unwrap_or(0);
        let rule = pb::RoutingRule {
            id: i as i64,
            name: field(r, 1).into(),
            priority: i32::from(f(0) as i8),
            enabled: f(1) & 1 == 0,
            match_json: field(r, 2).into(),
            action_json: field(r, 3).into(),
            key_id: field(r, 4).into(),
            ..pb::RoutingRule::default()
        };
        let c = rules::compile(&rule);
        assert_eq!(rules::validate(&rule).is_ok(), c.is_ok());
        if let Ok(c) = c {
            assert!(rules::parse_conditions(&rule.match_json).is_ok());
            compiled.push(c);
        }
    }
    compiled.sort_by(|a, b| b.priority.cmp(&a.priority).then(a.id.cmp(&b.id)));
    let set = RuleSet::new(compiled);
    let evaluation = Evaluation::of_rules(&facts, &set);
    let mut trace = Trace::default();
    for rule in set.rules() {
        let _ = rule.in_scope(key);
        let (held, rule_trace) = rule.check(&evaluation, &mut trace.conditions);
        let mut plain = Vec::new();
        let plain_held = rules::evaluate(&rule.conditions, &facts, &mut plain);
        assert_eq!(held, plain_held, "rule {}", rule.id);
        let traced = trace.conditions_of(&rule_trace);
        assert_eq!(traced, plain.as_slice(), "rule {}", rule.id);
        assert_eq!(held, traced.iter().all(|c| c.matched));
        trace.rules.push(rule_trace);
    }
    let json = trace.to_json();
    assert!(json.is_ascii());
    serde_json::from_str::<Value>(&json).expect("trace is JSON");
    serde_json::from_str::<Value>(&trace.to_log_json()).expect("log trace is JSON");
    if let Some(h) = trace.header_value() {
        assert!(
            h.is_ascii() && h.len() <= MAX_HEADER_BYTES,
            "{} bytes",
            h.len()
        );
    }
});
