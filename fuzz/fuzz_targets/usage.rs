//! Token usage extraction from client-format responses: whole JSON bodies of every API, and
//! SSE streams watched chunk by chunk (`ClientStreamObserver`, which for Chat Completions may
//! also remove the usage chunk the gateway asked for); then the cost of that usage.
//!
//! Properties: no panic; what the observers report (usage, done) and what the Chat observer lets
//! through do not depend on the chunking; without stripping, the stream passes unchanged; the
//! cost never panics and is never negative.
//!
//! Input: `[api] [flags] [price × 3 bytes] [n] n × u16 cut… body…`.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tokenrouter_engine::money::{cost_picos, format_picos_usd, Price};
use tokenrouter_engine::request::ClientApi;
use tokenrouter_engine::usage::{self, ClientStreamObserver, Usage, MAX_EVENT_BYTES};
use tokenrouter_fuzz::{emit, split, Reader};

const APIS: [ClientApi; 5] = [
    ClientApi::ChatCompletions,
    ClientApi::Responses,
    ClientApi::Messages,
    ClientApi::Embeddings,
    ClientApi::Models,
];

struct Seen {
    out: Vec<u8>,
    usage: Option<Usage>,
    done: bool,
}

fn observe(api: ClientApi, strip: bool, chunks: &[&[u8]]) -> Seen {
    let mut o = ClientStreamObserver::new(api, strip);
    let mut out = Vec::new();
    for (i, c) in chunks.iter().enumerate() {
        let got = o.feed(c, i + 1 == chunks.len());
        emit(&mut out, got, c);
    }
    Seen {
        out,
        usage: o.usage(),
        done: o.done(),
    }
}

/// A price from one byte: 0, small, or huge (the snapshot accepts any non-negative i64).
fn price(b: u8) -> i64 {
    match b % 4 {
        0 => 0,
        1 => i64::from(b) * 1_000,
        2 => i64::MAX - i64::from(b),
        _ => i64::from(b) << 40,
    }
}

fuzz_target!(|data: &[u8]| {
    let mut r = Reader::new(data);
    let api = APIS[r.pick(APIS.len())];
    let strip = r.byte() & 1 != 0;
    let price = Price {
        input: price(r.byte()),
        output: price(r.byte()),
        cached_input: price(r.byte()),
    };
    let cuts = r.cuts();
    let body = r.rest();

    let mut usages = Vec::new();
    for a in APIS {
        usages.push(usage::from_client_body(a, body));
    }
    usages.push(usage::from_openai_body(body));

    if body.len() <= MAX_EVENT_BYTES {
        let whole = observe(api, strip, &[body]);
        let chunked = observe(api, strip, &split(body, &cuts));
        assert_eq!(whole.usage, chunked.usage);
        assert_eq!(whole.done, chunked.done);
        assert!(
            whole.out == chunked.out,
            "chunking changed the output:\nwhole:   {:?}\nchunked: {:?}",
            String::from_utf8_lossy(&whole.out),
            String::from_utf8_lossy(&chunked.out)
        );
        // Only the Chat observer (every API but Responses and Messages) removes anything.
        if !strip || matches!(api, ClientApi::Responses | ClientApi::Messages) {
            assert_eq!(whole.out, body);
        }
        usages.push(whole.usage);
    }

    for u in usages.into_iter().flatten() {
        let cost = cost_picos(&u, &price);
        assert!(cost >= 0, "negative cost {cost} for {u:?} at {price:?}");
        let _ = format_picos_usd(i128::from(cost));
    }
});
