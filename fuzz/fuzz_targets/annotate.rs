//! The `tokenrouter` annotation of responses (`annotate`): the annotation object from rule
//! labels and warnings, its splice into JSON bodies, and `SseAnnotator` on client streams in
//! arbitrary chunks (holding a final `data: [DONE]` back so the annotation goes before it).
//!
//! Properties: no panic; the object is JSON; spliced into a JSON object it gives a JSON object
//! whose other members are unchanged; an annotated stream is the original stream with exactly
//! the one annotation event added, and without an annotation the stream passes unchanged.
//!
//! Input: `[api] [flags] [n] n × u16 cut… labels 0x00 warnings 0x00 body…` (labels and warnings
//! are `\n`-separated).

#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value};
use tokenrouter_engine::annotate::{object_json, splice_into_object, sse_event, SseAnnotator};
use tokenrouter_fuzz::{split, Reader, CLIENT_APIS};

fn annotate(
    api: tokenrouter_engine::request::ClientApi,
    chunks: &[&[u8]],
    annotation: Option<&str>,
) -> Vec<u8> {
    let mut a = SseAnnotator::new(api);
    let mut out = Vec::new();
    for (i, c) in chunks.iter().enumerate() {
        out.extend(a.feed(c.to_vec(), i + 1 == chunks.len(), || {
            annotation.map(str::to_string)
        }));
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let mut r = Reader::new(data);
    let api = CLIENT_APIS[r.pick(CLIENT_APIS.len())];
    let flags = r.byte();
    let cuts = r.cuts();
    let rest = r.rest();
    let mut parts = rest.splitn(3, |&b| b == 0);
    let lines = |p: Option<&[u8]>| -> Vec<String> {
        let text = String::from_utf8_lossy(p.unwrap_or_default()).into_owned();
        if text.is_empty() {
            Vec::new()
        } else {
            text.split('\n').map(str::to_string).collect()
        }
    };
    let labels = lines(parts.next());
    let warnings = lines(parts.next());
    let body = parts.next().unwrap_or_default();

    let object = object_json("req_1", &labels, &warnings);
    assert_eq!(object.is_none(), labels.is_empty() && warnings.is_empty());
    let annotation = object.unwrap_or_else(|| r#"{"warnings":[]}"#.to_string());
    let parsed: Value = serde_json::from_str(&annotation).expect("annotation is JSON");

    // JSON bodies.
    let spliced = splice_into_object(body, &annotation);
    if let Ok(original) = serde_json::from_slice::<Map<String, Value>>(body) {
        let spliced = spliced.expect("a JSON object takes the annotation");
        let mut got: Map<String, Value> =
            serde_json::from_slice(&spliced).expect("spliced body is a JSON object");
        if !original.contains_key("tokenrouter") {
            assert_eq!(got.remove("tokenrouter").as_ref(), Some(&parsed));
            assert_eq!(got, original);
        }
    }

    // Streams.
    let chunks = split(body, &cuts);
    assert_eq!(annotate(api, &chunks, None), body);
    if flags & 1 != 0 {
        let out = annotate(api, &chunks, Some(&annotation));
        let event = sse_event(api, &annotation);
        let removed_once = (0..out.len().saturating_sub(event.len()) + 1).any(|at| {
            out[at..].starts_with(&event)
                && out[..at]
                    .iter()
                    .chain(&out[at + event.len()..])
                    .eq(body.iter())
        });
        assert!(
            removed_once,
            "not the stream plus one annotation event: {:?}",
            String::from_utf8_lossy(&out)
        );
    }
});
