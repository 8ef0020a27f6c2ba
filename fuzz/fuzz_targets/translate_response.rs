//! Provider responses translated back to the client's format (`Translator::response_headers`,
//! `Translator::response_body`): JSON replies, SSE streams and error bodies of OpenAI Chat,
//! Anthropic and Gemini, for every client API, fed whole and in arbitrary chunks.
//!
//! Properties: no panic; the bytes the client receives do not depend on how the provider's body
//! was split into chunks; error envelopes and translated JSON replies are JSON; translated
//! streams carry JSON events; the edge's usage observers read the output without panicking.
//!
//! Input: `[pair] [flags] [status] [n] n × u16 cut… body…` (pair: client API × provider kind;
//! flags: the client asked for a stream, the content type).

#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use tokenrouter_engine::request::ClientApi;
use tokenrouter_engine::translate::sse::SseSplitter;
use tokenrouter_engine::translate::Translator;
use tokenrouter_engine::upstream::ProviderKind;
use tokenrouter_engine::usage::{self, ClientStreamObserver};
use tokenrouter_fuzz::{base_url, emit, minimal_body, split, started, Reader, CLIENT_APIS};

const STATUSES: [u16; 12] = [200, 200, 200, 201, 400, 401, 404, 429, 500, 503, 529, 302];
const CONTENT_TYPES: [Option<&str>; 4] = [
    Some("text/event-stream"),
    Some("application/json"),
    None,
    Some("text/event-stream; charset=utf-8"),
];

/// Client and provider share a wire format: the body passes through.
fn passthrough(client: ClientApi, kind: ProviderKind) -> bool {
    let openai_wire = !matches!(kind, ProviderKind::Anthropic | ProviderKind::Gemini);
    match client {
        ClientApi::ChatCompletions | ClientApi::Embeddings => openai_wire,
        ClientApi::Messages => kind == ProviderKind::Anthropic,
        _ => false,
    }
}

fn run(t: &mut dyn Translator, chunks: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, c) in chunks.iter().enumerate() {
        let o = t.response_body(c, i + 1 == chunks.len());
        emit(&mut out, o, c);
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let mut r = Reader::new(data);
    let pair = r.pick(CLIENT_APIS.len() * ProviderKind::ALL.len());
    let client = CLIENT_APIS[pair % CLIENT_APIS.len()];
    let kind = ProviderKind::ALL[pair / CLIENT_APIS.len()];
    let flags = r.byte();
    let status = STATUSES[r.pick(STATUSES.len())];
    let cuts = r.cuts();
    let body = r.rest();
    let stream = flags & 1 != 0 && client != ClientApi::Embeddings;
    let content_type = CONTENT_TYPES[usize::from(flags >> 1) % CONTENT_TYPES.len()];

    let base = base_url(kind);
    let request = minimal_body(client, stream);
    let Some(mut whole) = started(client, kind, &base, &request, stream) else {
        return;
    };
    let Some(mut chunked) = started(client, kind, &base, &request, stream) else {
        panic!("the same request was refused once");
    };
    let headers = whole.response_headers(status, content_type);
    assert_eq!(headers, chunked.response_headers(status, content_type));

    let out = run(whole.as_mut(), &[body]);
    let chunks = split(body, &cuts);
    let out_chunked = run(chunked.as_mut(), &chunks);
    assert!(
        out == out_chunked,
        "chunking changed the output:\nwhole:   {:?}\nchunked: {:?}",
        String::from_utf8_lossy(&out),
        String::from_utf8_lossy(&out_chunked)
    );

    let ok = (200..300).contains(&status);
    let hub = !passthrough(client, kind);
    let json_out = !ok || (hub && !stream);
    if json_out {
        let v: Value = serde_json::from_slice(&out).unwrap_or_else(|e| {
            panic!(
                "output is not JSON ({e}): {:?}",
                String::from_utf8_lossy(&out)
            )
        });
        assert!(v.is_object());
        let _ = usage::from_client_body(client, &out);
    } else if hub {
        // A translated stream: every event's data is JSON (or Chat's `[DONE]`).
        let events = SseSplitter::default()
            .feed(&out, true)
            .expect("a translated stream splits");
        for e in events {
            assert!(
                e.data == b"[DONE]" || serde_json::from_slice::<Value>(&e.data).is_ok(),
                "event data is not JSON: {:?}",
                String::from_utf8_lossy(&e.data)
            );
        }
    }
    if stream {
        let mut o = ClientStreamObserver::new(client, false);
        for c in split(&out, &cuts) {
            let _ = o.feed(c, false);
        }
        let _ = o.feed(b"", true);
        let _ = (o.usage(), o.done());
    }
});
