//! The Rate Limit Service answer the edge reads (`admission::verdict`) and the question it
//! sends (`Ask::encode`).
//!
//! Properties: no panic on any bytes; an answer read as "go on" has code OK; a refusal is a
//! rate limit or insufficient quota with a message; an OVER_LIMIT answer built from the input
//! (status header, Retry-After, envelope) is read back as built; an encoded question decodes to
//! the same descriptor entries.
//!
//! Input: `[selector] [retry-after u16] text 0x00 text…` (the texts name the key, the request
//! id and the refusal's message).

#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use tokenrouter_engine::admission::{
    verdict, Ask, HeaderValue, RateLimitRequest, RateLimitResponse, CODE_OK, CODE_OVER_LIMIT,
    INPUT_TOKENS, KEY_ID, REQUEST_ID, RESERVE_PICOS, STATUS_HEADER,
};
use tokenrouter_engine::ErrorKind;
use tokenrouter_fuzz::Reader;

fuzz_target!(|data: &[u8]| {
    // Any bytes as an answer.
    match verdict(data) {
        Ok(()) => {
            let decoded = RateLimitResponse::decode(data).expect("read as OK: decodes");
            assert_eq!(decoded.overall_code, CODE_OK);
        }
        Err(Some((error, _))) => {
            assert!(matches!(
                error.kind,
                ErrorKind::RateLimit | ErrorKind::InsufficientQuota
            ));
            assert!(!error.message.is_empty());
        }
        Err(None) => {}
    }

    let mut r = Reader::new(data);
    let selector = r.byte();
    let retry_after = r.u16();
    let rest = r.rest();
    let mut parts = rest.splitn(3, |&b| b == 0);
    let key_id = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
    let request_id = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
    let message = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();

    // A refusal built as the control plane builds it is read back as built.
    let quota = selector & 1 == 1;
    let mut headers = vec![HeaderValue {
        key: STATUS_HEADER.into(),
        value: if quota { "402" } else { "429" }.into(),
    }];
    if selector & 2 == 2 {
        headers.push(HeaderValue {
            key: "Retry-After".into(),
            value: retry_after.to_string(),
        });
    }
    let envelope = serde_json::json!({"error": {"message": message}});
    let answer = RateLimitResponse {
        overall_code: CODE_OVER_LIMIT,
        response_headers_to_add: headers,
        raw_body: envelope.to_string().into_bytes(),
    };
    match verdict(&answer.encode_to_vec()) {
        Err(Some((error, got_retry_after))) => {
            let kind = if quota {
                ErrorKind::InsufficientQuota
            } else {
                ErrorKind::RateLimit
            };
            assert_eq!(error.kind, kind);
            if !message.is_empty() {
                assert_eq!(error.message, message);
            }
            assert_eq!(
                got_retry_after,
                (selector & 2 == 2).then_some(u32::from(retry_after))
            );
        }
        other => panic!("a refusal read as {other:?}"),
    }

    // The question decodes to what was asked.
    let ask = Ask {
        key_id: key_id.clone(),
        request_id: request_id.clone(),
        input_tokens: u64::from(retry_after) * 1000,
        output_tokens: u64::from(selector),
        reserve_picos: i64::from(retry_after) - 1000,
    };
    let request = RateLimitRequest::decode(ask.encode().as_slice()).expect("decodes");
    let entries: Vec<(String, String)> = request.descriptors[0]
        .entries
        .iter()
        .map(|e| (e.key.clone(), e.value.clone()))
        .collect();
    let value = |k: &str| entries.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone());
    assert_eq!(value(KEY_ID), Some(key_id));
    assert_eq!(value(REQUEST_ID), Some(request_id));
    assert_eq!(value(INPUT_TOKENS), Some(ask.input_tokens.to_string()));
    assert_eq!(value(RESERVE_PICOS), Some(ask.reserve_picos.to_string()));
});
