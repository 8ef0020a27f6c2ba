//! `Idempotency-Key` header values (`idempotency::parse_key`) and the request fingerprint that
//! ties a key to one request (`idempotency::fingerprint`).
//!
//! Properties: no panic; an accepted key is 1–255 visible ASCII characters without surrounding
//! spaces, and parsing it again gives itself; the fingerprint is deterministic and moving bytes
//! between method, path and body changes it.
//!
//! Input: `[cut] header value 0x00 path 0x00 body…`.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tokenrouter_engine::idempotency::{fingerprint, parse_key, MAX_KEY_LEN};
use tokenrouter_engine::ErrorKind;
use tokenrouter_fuzz::Reader;

fuzz_target!(|data: &[u8]| {
    let mut r = Reader::new(data);
    let cut = r.byte();
    let rest = r.rest();
    let mut parts = rest.splitn(3, |&b| b == 0);
    let value = String::from_utf8_lossy(parts.next().unwrap_or_default());
    let path = String::from_utf8_lossy(parts.next().unwrap_or_default());
    let body = parts.next().unwrap_or_default();

    match parse_key(Some(&value)) {
        Ok(Some(key)) => {
            assert!(!key.is_empty() && key.len() <= MAX_KEY_LEN);
            assert!(key.bytes().all(|b| b.is_ascii_graphic() || b == b' '));
            assert_eq!(key.trim(), key);
            assert_eq!(parse_key(Some(&key)).ok(), Some(Some(key.clone())));
        }
        Ok(None) => panic!("a present header gave no key"),
        Err(e) => assert_eq!(e.kind, ErrorKind::InvalidRequest),
    }
    assert_eq!(parse_key(None).ok(), Some(None));

    let a = fingerprint("POST", &path, body);
    assert_eq!(a, fingerprint("POST", &path, body));
    // The same bytes, split differently between path and body.
    let mut joined = path.as_bytes().to_vec();
    joined.extend_from_slice(body);
    let at = usize::from(cut) % (joined.len() + 1);
    if at != path.len() {
        if let Ok(p) = std::str::from_utf8(&joined[..at]) {
            assert_ne!(a, fingerprint("POST", p, &joined[at..]));
        }
    }
});
