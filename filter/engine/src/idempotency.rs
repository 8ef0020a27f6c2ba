//! `Idempotency-Key`: the header's rules and the fingerprint that ties a key to one request.

use sha2::{Digest, Sha256};

use crate::{ErrorKind, GatewayError};

/// Longest key accepted (as Stripe's API).
pub const MAX_KEY_LEN: usize = 255;

/// The key of an `Idempotency-Key` header value: 1–255 visible ASCII characters.
pub fn parse_key(value: Option<&str>) -> Result<Option<String>, GatewayError> {
    let Some(value) = value else {
        return Ok(None);
    };
    let value = value.trim();
    if value.is_empty()
        || value.len() > MAX_KEY_LEN
        || !value.bytes().all(|b| b.is_ascii_graphic() || b == b' ')
    {
        return Err(GatewayError::invalid(format!(
            "'Idempotency-Key' must be 1-{MAX_KEY_LEN} visible ASCII characters."
        )));
    }
    Ok(Some(value.to_string()))
}

/// SHA-256 over method, path and body (each length-prefixed, so no two requests collide by
/// moving bytes between parts).
pub fn fingerprint(method: &str, path: &str, body: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    for part in [method.as_bytes(), path.as_bytes(), body] {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part);
    }
    h.finalize().into()
}

/// The key was used with another request.
pub fn mismatch(original_request_id: &str) -> GatewayError {
    GatewayError::invalid(format!(
        "This Idempotency-Key was already used with a different request ({original_request_id}); \
         use a new key for a new request."
    ))
}

/// The request holding the key is still running.
pub fn in_flight(original_request_id: &str) -> GatewayError {
    GatewayError::new(
        ErrorKind::Conflict,
        format!(
            "A request with this Idempotency-Key ({original_request_id}) is still in progress; \
             retry once it has finished."
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_bounded_visible_ascii() {
        assert_eq!(parse_key(None).ok(), Some(None));
        assert_eq!(parse_key(Some(" k-1 ")).ok(), Some(Some("k-1".into())));
        for bad in ["", "   ", "ключ", "a\tb", &"x".repeat(256)] {
            let e = parse_key(Some(bad)).err().map(|e| e.kind);
            assert_eq!(e, Some(ErrorKind::InvalidRequest), "{bad:?}");
        }
        assert!(parse_key(Some(&"x".repeat(255))).is_ok());
    }

    #[test]
    fn fingerprint_separates_parts() {
        let a = fingerprint("POST", "/v1/chat/completions", b"{}");
        assert_eq!(a, fingerprint("POST", "/v1/chat/completions", b"{}"));
        assert_ne!(a, fingerprint("POST", "/v1/chat/completions", b"{ }"));
        assert_ne!(a, fingerprint("POST", "/v1/responses", b"{}"));
        assert_ne!(
            fingerprint("POST", "/a", b"b"),
            fingerprint("POST", "/ab", b"")
        );
    }
}
