//! Client request bodies, per client API, through everything the edge does with them before the
//! request leaves: bounded parsing (`ClientRequest::parse_api`), the upstream rewrite, the
//! prompt and metadata firewall walkers, routing features and the complexity classifier, and the
//! whole routing decision (`routing::preview`) against a fixed snapshot.
//!
//! Input: `[api] [flags] [key] body…` (api: chat, responses, messages, embeddings; flags pick
//! request headers and the traffic-split draw; key: one of `KEY_IDS`).

#![no_main]

use std::collections::HashMap;
use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use tokenrouter_engine::firewall::{formats, Inspection, Scope, Subject};
use tokenrouter_engine::request::{ClientApi, ClientRequest, MAX_METADATA_ENTRIES};
use tokenrouter_engine::routing::{
    self, attempts_header, complexity, features, parse_attempts_header, scores::ScoreBoard,
    trace::MAX_HEADER_BYTES,
};
use tokenrouter_engine::Snapshot;
use tokenrouter_fuzz::{fixed_snapshot, Reader, CLIENT_APIS, KEY_IDS};

static SNAPSHOT: LazyLock<Snapshot> = LazyLock::new(fixed_snapshot);

fuzz_target!(|data: &[u8]| {
    let mut r = Reader::new(data);
    let api = CLIENT_APIS[r.pick(CLIENT_APIS.len())];
    let flags = r.byte();
    let key_id = KEY_IDS[r.pick(KEY_IDS.len())];
    let body = r.rest();

    // The Models API takes no body, whatever it is.
    assert!(ClientRequest::parse_api(ClientApi::Models, body).is_err());

    let parsed = ClientRequest::parse_api(api, body);
    // `with_model` (failover to another model of a pass-through provider) accepts exactly the
    // JSON objects.
    let object = serde_json::from_slice::<serde_json::Map<String, Value>>(body).is_ok();
    assert_eq!(routing::with_model(body, "other").is_some(), object);
    let Ok(mut request) = parsed else {
        return;
    };
    assert!(object);
    assert!(!request.model.is_empty() && request.model.trim() == request.model);
    assert!(!(api == ClientApi::Embeddings && request.stream));
    assert!(request
        .metadata
        .as_ref()
        .is_none_or(|m| m.len() <= MAX_METADATA_ENTRIES));

    // The edge's prompt and metadata firewall, masking in place.
    let fw = SNAPSHOT.firewall();
    let mut inspection = Inspection::new(fw, Subject::new(key_id, "default"));
    formats::request_walker(api)(request.body_mut(), &mut |scope, text| {
        assert!(matches!(scope, Scope::Prompt | Scope::Metadata));
        inspection.check_in_place(scope, text)
    });
    let verdict = inspection.verdict();
    assert_eq!(verdict.error().is_some(), verdict.blocked_by.is_some());
    let _ = tokenrouter_engine::firewall::header_value(&verdict.labels());

    // Routing features and the classifier.
    let feats = features::features(api, request.body_mut(), body.len());
    let c = complexity::classify(&feats.text, feats.turns, feats.has_tools);
    assert!((0.0..=1.0).contains(&c.score), "score {}", c.score);
    assert_eq!(c.task, complexity::detect_task(&feats.text));

    // The upstream body is still a request of the same API, now for the upstream model
    // (checked on a body the firewall did not mask: a mask may lengthen a metadata value
    // beyond what the parser accepts, which only the provider would then refuse).
    let mut plain = ClientRequest::parse_api(api, body).expect("parsed once");
    let upstream = plain.upstream_body("up-model");
    let again = ClientRequest::parse_api(api, &upstream)
        .unwrap_or_else(|e| panic!("upstream body does not parse again: {}", e.message));
    assert_eq!(again.model, "up-model");
    assert_eq!(again.stream, plain.stream);
    assert_eq!(again.router_mode, None);
    assert_eq!(again.metadata, plain.metadata);
    if api == ClientApi::ChatCompletions && plain.stream {
        assert!(
            again.client_wants_usage,
            "the usage chunk was not requested"
        );
    }
    // The masked body serialises too.
    let _ = request.upstream_body("up-model");

    // The whole routing decision.
    let mut headers = HashMap::new();
    if flags & 1 != 0 {
        headers.insert("X-Tier".to_string(), "gold".to_string());
    }
    if flags & 2 != 0 {
        headers.insert("x-anthropic-key".to_string(), "sk-ant".to_string());
    }
    if flags & 4 != 0 {
        headers.insert("x-openai-key".to_string(), "sk-oai".to_string());
    }
    let random = u64::from(flags >> 3).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let scores = ScoreBoard::default();
    let decision = routing::preview(
        &SNAPSHOT, &scores, key_id, api, body, &headers, random, 1_000,
    );
    let Ok(decision) = decision else {
        return;
    };
    assert!(!decision.attempts.is_empty());
    assert!(decision.attempts.len() <= SNAPSHOT.max_attempts as usize);
    for target in &decision.attempts {
        assert!(routing::check_pair(api, target).is_ok());
    }
    let header = attempts_header(&decision.attempts);
    assert!(header.is_ascii());
    let pairs: Vec<(String, String)> = decision
        .attempts
        .iter()
        .map(|t| (t.provider.name.clone(), t.upstream_model.clone()))
        .collect();
    assert_eq!(parse_attempts_header(&header), pairs);
    let json = decision.trace.to_json();
    assert!(json.is_ascii());
    serde_json::from_str::<Value>(&json).expect("trace is JSON");
    serde_json::from_str::<Value>(&decision.trace.to_log_json()).expect("log trace is JSON");
    if let Some(h) = decision.trace.header_value() {
        assert!(
            h.is_ascii() && h.len() <= MAX_HEADER_BYTES,
            "{} bytes",
            h.len()
        );
    }
});
