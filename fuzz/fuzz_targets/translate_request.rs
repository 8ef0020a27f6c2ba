//! Client request bodies translated to every provider's wire format (`Translator::request`):
//! Chat Completions, Responses and Messages to OpenAI Chat, Anthropic Messages and Gemini, and
//! Embeddings to OpenAI and Gemini; pass-through pairs included.
//!
//! Input: `[pair] [flags] body…` (pair: client API × provider kind; flags: stream, and an
//! upstream model name that cannot be a URL path segment).

#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use tokenrouter_engine::translate::{translator_for, AttemptTarget};
use tokenrouter_engine::upstream::ProviderKind;
use tokenrouter_fuzz::{base_url, Reader, CLIENT_APIS, MODEL, NOW, REQUEST_ID};

fuzz_target!(|data: &[u8]| {
    let mut r = Reader::new(data);
    let pair = r.pick(CLIENT_APIS.len() * ProviderKind::ALL.len());
    let client = CLIENT_APIS[pair % CLIENT_APIS.len()];
    let kind = ProviderKind::ALL[pair / CLIENT_APIS.len()];
    let flags = r.byte();
    let body = r.rest();

    let Ok(mut t) = translator_for(client, kind) else {
        return;
    };
    let base = base_url(kind);
    let target = AttemptTarget {
        provider: "p1",
        kind,
        base_url: &base,
        upstream_model: if flags & 2 != 0 { "../x y" } else { MODEL },
        stream: flags & 1 != 0,
        request_id: REQUEST_ID,
        now_unix_s: NOW,
    };
    let needs_body = t.needs_request_body();
    let Ok(req) = t.request(body, &target) else {
        return;
    };
    assert!(req.path.starts_with('/'), "path {:?}", req.path);
    assert!(
        !req.path.contains(".."),
        "model escaped its path segment: {}",
        req.path
    );
    match req.body {
        Some(b) => {
            assert!(needs_body, "a translator that skips the body rewrote it");
            let v: Value = serde_json::from_slice(&b).expect("translated body is JSON");
            assert!(v.is_object());
            for (name, value) in &req.set_headers {
                if name == "content-length" {
                    assert_eq!(value, &b.len().to_string());
                }
            }
        }
        None => assert!(req.set_headers.iter().all(|(n, _)| n != "content-length")),
    }
});
