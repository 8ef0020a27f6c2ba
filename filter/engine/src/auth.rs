//! Gateway key extraction and lookup.

use crate::error::{ErrorKind, GatewayError};
use crate::keys::hash_key;
use crate::snapshot::{KeyEntry, Snapshot};

/// Longest key we hash; anything longer is not one of ours.
const MAX_KEY_LEN: usize = 256;

/// The raw key from `Authorization: Bearer …` or, for Anthropic clients, `x-api-key`.
pub fn presented_key<'a>(
    authorization: Option<&'a str>,
    x_api_key: Option<&'a str>,
) -> Option<&'a str> {
    let bearer = authorization.and_then(|v| {
        let v = v.trim();
        let (scheme, rest) = v.split_once(' ')?;
        scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
    });
    bearer
        .or(x_api_key.map(str::trim))
        .filter(|k| !k.is_empty())
}

/// Looks the presented key up. The lookup is by SHA-256, so timing reveals nothing about keys.
pub fn authenticate<'s>(
    snapshot: &'s Snapshot,
    authorization: Option<&str>,
    x_api_key: Option<&str>,
) -> Result<&'s KeyEntry, GatewayError> {
    let raw = presented_key(authorization, x_api_key).ok_or_else(|| {
        GatewayError::new(
            ErrorKind::Authentication,
            "Missing API key. Pass it as 'Authorization: Bearer sk-tr-…'.",
        )
    })?;
    let invalid = || GatewayError::new(ErrorKind::Authentication, "Invalid API key.");
    if raw.len() > MAX_KEY_LEN {
        return Err(invalid());
    }
    let key = snapshot.key_by_hash(&hash_key(raw)).ok_or_else(invalid)?;
    if key.revoked {
        return Err(GatewayError::new(
            ErrorKind::Authentication,
            "This API key has been revoked.",
        ));
    }
    Ok(key)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::snapshot::tests::sample;

    #[test]
    fn key_sources() {
        assert_eq!(presented_key(Some("Bearer sk-tr-a"), None), Some("sk-tr-a"));
        assert_eq!(
            presented_key(Some("bearer  sk-tr-a "), None),
            Some("sk-tr-a")
        );
        assert_eq!(presented_key(None, Some("sk-tr-b")), Some("sk-tr-b"));
        assert_eq!(
            presented_key(Some("Basic xyz"), Some("sk-tr-b")),
            Some("sk-tr-b")
        );
        assert_eq!(presented_key(Some("Bearer "), None), None);
        assert_eq!(presented_key(None, None), None);
    }

    #[test]
    fn lookup_table() {
        let s = Snapshot::from_proto(sample()).unwrap();
        let long = format!("Bearer {}", "x".repeat(10_000));
        let cases: [(Option<&str>, Result<&str, &str>); 5] = [
            (Some("Bearer sk-tr-live"), Ok("key_live")),
            (Some("Bearer sk-tr-dead"), Err("revoked")),
            (Some("Bearer sk-tr-unknown"), Err("Invalid")),
            (None, Err("Missing")),
            (Some(long.as_str()), Err("Invalid")),
        ];
        for (header, want) in cases {
            match (authenticate(&s, header, None), want) {
                (Ok(k), Ok(id)) => assert_eq!(k.id, id),
                (Err(e), Err(msg)) => {
                    assert_eq!(e.status(), 401);
                    assert!(e.message.contains(msg), "{}", e.message);
                }
                (got, want) => panic!("{header:?}: got {got:?}, want {want:?}"),
            }
        }
    }
}
