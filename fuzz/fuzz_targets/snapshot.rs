//! Configuration pushed to the edge as protobuf: `Snapshot::decode` / `decode_after` (keys,
//! providers and base URLs, catalogue models, firewall rules, routing rules and per-key
//! configurations, chain clusters, settings) and the provider scores (`config.v1.Scores`); then
//! what the edge derives from an accepted snapshot: the `/v1/models` list, the chains to
//! materialise, model resolution and a routing decision for a request of every API.
//!
//! Properties: no panic; decoding after a previous snapshot (reusing its compiled regexes)
//! accepts and refuses the same bytes and gives the same firewall; the models list is JSON;
//! decisions have at least one attempt, each a pair the gateway can translate.
//!
//! The snapshot bytes are also read as a key delta (`config.v1.KeyDelta`) applied to a fixed
//! snapshot: no panic, accepted only when `validate_key_delta` accepts it, and every key it
//! lists is then found by its hash.
//!
//! Input: `[flags] [scores length u16] scores… snapshot…`.

#![no_main]

use std::collections::HashMap;
use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use prost::Message;
use serde_json::Value;
use tokenrouter_engine::models;
use tokenrouter_engine::request::ClientApi;
use tokenrouter_engine::routing::{self, config_chains, ScoreBoard};
use tokenrouter_engine::Snapshot;
use tokenrouter_fuzz::{fixed_snapshot, minimal_body, Reader, CLIENT_APIS};
use tokenrouter_proto::config::v1 as pb;

static PREVIOUS: LazyLock<Snapshot> = LazyLock::new(fixed_snapshot);

fuzz_target!(|data: &[u8]| {
    let mut r = Reader::new(data);
    let flags = r.byte();
    let scores_len = usize::from(r.u16()) % 4096;
    let rest = r.rest();
    let (scores, bytes) = rest.split_at(scores_len.min(rest.len()));

    let board = pb::Scores::decode(scores)
        .map(ScoreBoard::from_proto)
        .unwrap_or_default();

    // The same bytes as a key delta on the fixed snapshot: accepted only when its own checks
    // pass, and then every key it lists is found by its hash as that key.
    if let Ok(delta) = pb::KeyDelta::decode(bytes) {
        let valid = tokenrouter_engine::snapshot::validate_key_delta(&delta).is_ok();
        if let Ok(applied) = PREVIOUS.with_key_delta(delta.clone()) {
            assert!(valid, "with_key_delta accepted what validate_key_delta refuses");
            assert_eq!(applied.version, delta.version);
            assert!(applied.key_count() >= PREVIOUS.key_count());
            for k in &delta.keys {
                let hash: [u8; 32] = k.sha256.as_slice().try_into().expect("checked: 32 bytes");
                let found = applied.key_by_hash(&hash).map(|e| e.id.as_str());
                assert_eq!(found, Some(k.id.as_str()));
            }
        }
    }

    let decoded = Snapshot::decode(bytes);
    let after = Snapshot::decode_after(bytes, Some(&PREVIOUS));
    let (s, after) = match (decoded, after) {
        (Ok(s), Ok(a)) => (s, a),
        (Err(a), Err(b)) => {
            assert_eq!(a, b);
            return;
        }
        (a, b) => panic!(
            "decode and decode_after disagree: {:?} / {:?}",
            a.err(),
            b.err()
        ),
    };
    assert_eq!(s.firewall().rules(), after.firewall().rules());
    assert_eq!(s.version, after.version);
    assert!(s.max_attempts >= 1 && s.max_attempts <= routing::MAX_ATTEMPTS);
    assert!(s.auto_chain_len <= s.max_attempts);

    let list: Value = serde_json::from_slice(&models::list_json(&s)).expect("models list is JSON");
    assert_eq!(list["object"], "list");
    let _ = config_chains(&s);
    for m in s.models().take(8) {
        let _ = models::capabilities(m);
        let _ = routing::resolve(&s, &format!("{}/{}", m.kind, m.id));
        let _ = routing::resolve(&s, &m.id);
    }

    // A request of every API from every key with a configuration, and from no such key.
    let mut keys: Vec<&str> = s
        .routing_configs()
        .map(|c| c.key_id.as_str())
        .take(4)
        .collect();
    keys.push("key_none");
    let models = ["auto", "auto:cost", "gpt-4o-mini", "openai/gpt-4o"];
    let model = models[usize::from(flags) % models.len()];
    let headers = HashMap::from([("x-tier".to_string(), "gold".to_string())]);
    for api in CLIENT_APIS {
        let mut body: serde_json::Map<String, Value> =
            serde_json::from_slice(&minimal_body(api, flags & 0x80 != 0)).expect("JSON body");
        body.insert("model".into(), Value::from(model));
        let body = serde_json::to_vec(&body).expect("serialises");
        for key in &keys {
            let random = u64::from(flags).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            let Ok(d) = routing::preview(&s, &board, key, api, &body, &headers, random, 1_000)
            else {
                continue;
            };
            assert!(!d.attempts.is_empty());
            for t in &d.attempts {
                assert!(
                    routing::check_pair(api, t).is_ok(),
                    "{api:?} {:?}",
                    t.provider.kind
                );
            }
            let _ = d.trace.header_value();
        }
    }
    let _ = ClientApi::Models;
});
