//! The incremental SSE parser (`translate::sse::SseSplitter`) on arbitrary bytes in arbitrary
//! chunks, and the SSE writers.
//!
//! Properties: no panic; the events do not depend on the chunking (for streams whose events
//! fit `MAX_EVENT_BYTES`); an event written with `write_event` / `write_data` parses back to
//! itself.
//!
//! Input: `[n] n × u16 cut… stream…`.

#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use tokenrouter_engine::translate::sse::{write_data, write_event, SseEvent, SseSplitter};
use tokenrouter_engine::usage::MAX_EVENT_BYTES;
use tokenrouter_fuzz::{split, Reader};

fn events(chunks: &[&[u8]]) -> Vec<SseEvent> {
    let mut s = SseSplitter::default();
    let mut out = Vec::new();
    for (i, c) in chunks.iter().enumerate() {
        out.extend(s.feed(c, i + 1 == chunks.len()).expect("small events fit"));
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let mut r = Reader::new(data);
    let cuts = r.cuts();
    let stream = r.rest();
    if stream.len() > MAX_EVENT_BYTES {
        return;
    }
    let whole = events(&[stream]);
    let chunked = events(&split(stream, &cuts));
    assert_eq!(whole, chunked);

    for e in &whole {
        // Data that is JSON is what the gateway writes back out.
        let Ok(json) = serde_json::from_slice::<Value>(&e.data) else {
            continue;
        };
        let mut out = Vec::new();
        match &e.event {
            // A name read from a line holds no `\n`; a lone `\r` inside it is kept, but then
            // it could end the written event early, so such names are left out.
            Some(name) if !name.contains('\r') => write_event(&mut out, name, &json),
            Some(_) => continue,
            None => write_data(&mut out, &json),
        }
        let back = events(&[&out]);
        let want = SseEvent {
            event: e.event.clone(),
            data: json.to_string().into_bytes(),
        };
        assert_eq!(back, vec![want], "{:?}", String::from_utf8_lossy(&out));
    }
});
