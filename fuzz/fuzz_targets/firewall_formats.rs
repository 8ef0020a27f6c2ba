//! The firewall's walkers over client-format bodies (`firewall::formats`): request bodies
//! (prompt and metadata texts), response bodies, and client-format SSE streams through
//! `StreamFilter` (held text, inserted delta events, re-numbered Responses events, block
//! errors), with a fixed set of block / mask / warn rules of both match types in every scope.
//!
//! Properties: no panic; walkers visit only the scopes of their body kind and leave a body that
//! still serialises; a filtered stream's output, verdict and blocked state do not depend on how
//! the stream was split into chunks.
//!
//! Input: `[api] [kind] [key] [n] n × u16 cut… body…` (kind: request, response, stream).

#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value};
use tokenrouter_engine::firewall::formats::{self, StreamFilter};
use tokenrouter_engine::firewall::{Firewall, Inspection, Scope, Subject};
use tokenrouter_engine::request::ClientApi;
use tokenrouter_fuzz::{fixed_firewall, split, Reader, CLIENT_APIS, KEY_IDS, REQUEST_ID};

static FIREWALL: LazyLock<Firewall> = LazyLock::new(fixed_firewall);

fn filtered(api: ClientApi, key: &str, chunks: &[&[u8]]) -> Option<(Vec<u8>, bool, Vec<String>)> {
    let fw = &*FIREWALL;
    let mut f = StreamFilter::new(api, Subject::new(key, "default"), REQUEST_ID)?;
    let mut out = Vec::new();
    for (i, c) in chunks.iter().enumerate() {
        out.extend(f.feed(fw, c, i + 1 == chunks.len()));
    }
    Some((out, f.blocked(), f.verdict(fw).labels()))
}

fuzz_target!(|data: &[u8]| {
    let mut r = Reader::new(data);
    let api = CLIENT_APIS[r.pick(CLIENT_APIS.len())];
    let kind = r.pick(3);
    let key = KEY_IDS[r.pick(KEY_IDS.len())];
    let cuts = r.cuts();
    let body = r.rest();
    let fw = &*FIREWALL;

    match kind {
        0 => {
            let Ok(mut request) = serde_json::from_slice::<Map<String, Value>>(body) else {
                return;
            };
            let mut inspection = Inspection::new(fw, Subject::new(key, "default"));
            formats::request_walker(api)(&mut request, &mut |scope, text| {
                assert!(matches!(scope, Scope::Prompt | Scope::Metadata));
                inspection.check_in_place(scope, text);
            });
            let v = inspection.verdict();
            assert_eq!(inspection.blocked(), v.blocked_by.is_some());
            serde_json::to_vec(&request).expect("a walked body serialises");
        }
        1 => {
            let Ok(mut response) = serde_json::from_slice::<Value>(body) else {
                return;
            };
            let mut inspection = Inspection::new(fw, Subject::new(key, "default"));
            formats::response_walker(api)(&mut response, &mut |scope, text| {
                assert_eq!(scope, Scope::Response);
                inspection.check_in_place(scope, text);
            });
            let _ = inspection.verdict().warnings();
            serde_json::to_vec(&response).expect("a walked body serialises");
        }
        _ => {
            let whole = filtered(api, key, &[body]);
            let chunked = filtered(api, key, &split(body, &cuts));
            assert_eq!(whole.is_some(), formats::stream_walker(api).is_some());
            let (Some(whole), Some(chunked)) = (whole, chunked) else {
                return;
            };
            assert!(
                whole.0 == chunked.0,
                "chunking changed the output:\nwhole:   {:?}\nchunked: {:?}",
                String::from_utf8_lossy(&whole.0),
                String::from_utf8_lossy(&chunked.0)
            );
            assert_eq!(whole.1, chunked.1);
            assert_eq!(whole.2, chunked.2);
        }
    }
});
