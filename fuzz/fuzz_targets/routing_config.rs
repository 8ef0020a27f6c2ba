//! Per-key routing configurations (fallback policy, traffic split, advanced rules) compiled by
//! the validator both hosts run (`routing::config::compile`), then asked for the chain of a
//! request (`KeyConfig::chain`, `fallback_order`, `split_order`) with facts and a random draw
//! from the fuzz input.
//!
//! Properties: no panic; `validate` and `compile` agree; every order is a permutation of the
//! backends it was given, fallback orders are sorted by priority; weights are within bounds.
//!
//! Input: records (0x1e) of fields (0x1f). Record 0: `[random × 8] [active], key_id, strategy,
//! facts text` (facts as in `routing_rules`). Then records that are backends
//! (`[0b0x…] [priority] [weight × 4], model`; with bit 1 of the first byte set the backend
//! belongs to the last rule) or rules (`[0b…1], name, match_json`).

#![no_main]
// Protobuf literals end in `..Default::default()` so they survive new fields.
#![allow(clippy::needless_update)]

use libfuzzer_sys::fuzz_target;
use tokenrouter_engine::routing::config::{
    self, fallback_order, split_order, Backend, Strategy, MAX_WEIGHT,
};
use tokenrouter_fuzz::{field, records, FuzzFacts};
use tokenrouter_proto::config::v1 as pb;

const MAX_RECORDS: usize = 80;

/// `order` holds each of `backends` exactly once.
fn is_permutation(order: &[&Backend], backends: &[Backend]) -> bool {
    let mut got: Vec<*const Backend> = order.iter().map(|b| *b as *const Backend).collect();
    let mut want: Vec<*const Backend> = backends.iter().map(|b| b as *const Backend).collect();
    got.sort_unstable();
    want.sort_unstable();
    got == want
}

fn check_orders(backends: &[Backend], random: u64) {
    let f = fallback_order(backends, random);
    assert!(is_permutation(&f, backends));
    assert!(f.windows(2).all(|w| w[0].priority <= w[1].priority));
    assert!(is_permutation(&split_order(backends, random), backends));
}

fuzz_target!(|data: &[u8]| {
    let records = records(data);
    let Some((first, rest)) = records.split_first() else {
        return;
    };
    let head = field(first, 0).as_bytes();
    let b = |i: usize| head.get(i).copied().unwrap_or(0);
    let random = u64::from_le_bytes(std::array::from_fn(b));
    let facts = FuzzFacts::parse(field(first, 3), b(8) % 5);

    let mut cfg = pb::RoutingConfig {
        key_id: field(first, 1).into(),
        active: b(8) & 0x80 != 0,
        strategy: field(first, 2).into(),
        backends: Vec::new(),
        rules: Vec::new(),
        ..pb::RoutingConfig::default()
    };
    for r in rest.iter().take(MAX_RECORDS) {
        let flags = field(r, 0).as_bytes();
        let f = |i: usize| flags.get(i).copied().unwrap_or(0);
        if f(0) & 1 == 0 {
            let backend = pb::Backend {
                model: field(r, 1).into(),
                priority: i32::from(f(1) as i8),
                weight: u32::from_le_bytes([f(2), f(3), f(4), f(5)]),
                ..pb::Backend::default()
            };
            match cfg.rules.last_mut() {
                Some(rule) if f(0) & 2 != 0 => rule.backends.push(backend),
                _ => cfg.backends.push(backend),
            }
        } else {
            cfg.rules.push(pb::ConfigRule {
                name: field(r, 1).into(),
                match_json: field(r, 2).into(),
                backends: Vec::new(),
                ..pb::ConfigRule::default()
            });
        }
    }

    let compiled = config::compile(&cfg);
    assert_eq!(config::validate(&cfg).is_ok(), compiled.is_ok());
    let Ok(kc) = compiled else {
        return;
    };
    assert_eq!(Strategy::parse(kc.strategy.as_str()), Some(kc.strategy));
    let all = kc
        .backends
        .iter()
        .chain(kc.rules.iter().flat_map(|r| &r.backends));
    for backend in all {
        assert!((1..=MAX_WEIGHT).contains(&backend.weight));
        assert!(!backend.model.is_empty() && backend.model.trim() == backend.model);
    }
    check_orders(&kc.backends, random);
    for rule in &kc.rules {
        assert!(!rule.backends.is_empty());
        check_orders(&rule.backends, random);
    }
    let mut conditions = Vec::new();
    let chain = kc.chain(&facts, random, &mut conditions);
    match kc.strategy {
        Strategy::Fallback | Strategy::Split => {
            let chain = chain.expect("fallback and split always give a chain");
            assert!(is_permutation(&chain, &kc.backends));
        }
        Strategy::Rules => {
            assert!(conditions.len() <= kc.rules.len());
            match (chain, conditions.last()) {
                (Some(chain), Some((_, true, _))) => {
                    let rule = &kc.rules[conditions.len() - 1];
                    assert!(is_permutation(&chain, &rule.backends));
                }
                (Some(chain), _) => assert!(is_permutation(&chain, &kc.backends)),
                (None, _) => assert!(kc.backends.is_empty()),
            }
        }
    }
});
