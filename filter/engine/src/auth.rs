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
    authenticate_by(snapshot, authorization, x_api_key, None)
}

/// [`authenticate`] with the digests of keys that authenticated lately taken from `cache`.
pub fn authenticate_cached<'s>(
    snapshot: &'s Snapshot,
    authorization: Option<&str>,
    x_api_key: Option<&str>,
    cache: &mut KeyHashCache,
) -> Result<&'s KeyEntry, GatewayError> {
    authenticate_by(snapshot, authorization, x_api_key, Some(cache))
}

fn authenticate_by<'s>(
    snapshot: &'s Snapshot,
    authorization: Option<&str>,
    x_api_key: Option<&str>,
    cache: Option<&mut KeyHashCache>,
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
    let key = match cache {
        None => snapshot.key_by_hash(&hash_key(raw)),
        Some(cache) => match cache.digests.get(raw) {
            Some(digest) => snapshot.key_by_hash(digest),
            None => {
                let digest = hash_key(raw);
                let key = snapshot.key_by_hash(&digest);
                if key.is_some() {
                    cache.remember(raw, digest);
                }
                key
            }
        },
    }
    .ok_or_else(invalid)?;
    if key.revoked {
        return Err(GatewayError::new(
            ErrorKind::Authentication,
            "This API key has been revoked.",
        ));
    }
    Ok(key)
}

/// Most keys a [`KeyHashCache`] holds; a full cache starts again empty.
pub const CACHED_KEYS: usize = 1024;

/// The SHA-256 digests of keys that authenticated lately, by raw key: a client that presents
/// the same key on every request costs one hash, not one per request (the hash was 7 % of an
/// edge's own work per request; BENCHMARKS.md, finding 25).
///
/// - Only keys some snapshot held go in, so unknown keys cannot fill it.
/// - A key's digest never changes, so a new snapshot needs no invalidation: every request is
///   still looked up by digest in the current snapshot, and a revoked or removed key is refused
///   as before.
/// - The raw keys stay in the worker's memory, as the requests' own headers do; they are never
///   logged, stored or sent. The map's hasher is seeded at random (std's SipHash), so which
///   cached key a presented one is compared with is not the client's choice. Its `Debug`
///   shows how many keys it holds, never the keys.
#[derive(Default)]
pub struct KeyHashCache {
    digests: std::collections::HashMap<Box<str>, [u8; 32]>,
}

impl std::fmt::Debug for KeyHashCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyHashCache")
            .field("keys", &self.digests.len())
            .finish()
    }
}

impl KeyHashCache {
    fn remember(&mut self, raw: &str, digest: [u8; 32]) {
        if self.digests.len() >= CACHED_KEYS {
            self.digests.clear();
        }
        self.digests.insert(raw.into(), digest);
    }

    /// How many keys it holds.
    pub fn len(&self) -> usize {
        self.digests.len()
    }

    pub fn is_empty(&self) -> bool {
        self.digests.is_empty()
    }
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
        let mut cache = KeyHashCache::default();
        // Without the cache, then twice with it (the second time from it).
        for round in 0..3 {
            for (header, want) in cases {
                let got = if round == 0 {
                    authenticate(&s, header, None)
                } else {
                    authenticate_cached(&s, header, None, &mut cache)
                };
                match (got, want) {
                    (Ok(k), Ok(id)) => assert_eq!(k.id, id),
                    (Err(e), Err(msg)) => {
                        assert_eq!(e.status(), 401);
                        assert!(e.message.contains(msg), "{}", e.message);
                    }
                    (got, want) => panic!("{header:?}: got {got:?}, want {want:?}"),
                }
            }
        }
        // Revoked keys are known keys: the live and the revoked one are cached.
        assert_eq!(cache.len(), 2);
    }

    #[test]
    fn the_cache_holds_known_keys_only_and_follows_revocations() {
        let s = Snapshot::from_proto(sample()).unwrap();
        let mut cache = KeyHashCache::default();
        for _ in 0..2 {
            let k = authenticate_cached(&s, Some("Bearer sk-tr-live"), None, &mut cache);
            assert_eq!(k.unwrap().id, "key_live");
        }
        assert!(authenticate_cached(&s, Some("Bearer sk-tr-nope"), None, &mut cache).is_err());
        assert_eq!(cache.len(), 1);
        // The same key revoked in a later snapshot: refused although its digest is cached.
        let mut revoked = sample();
        for k in &mut revoked.keys {
            k.revoked = true;
        }
        let later = Snapshot::from_proto(revoked).unwrap();
        let e = authenticate_cached(&later, Some("Bearer sk-tr-live"), None, &mut cache);
        assert!(e.unwrap_err().message.contains("revoked"));
        // A full cache starts again.
        for i in 0..CACHED_KEYS {
            cache.remember(&format!("sk-tr-{i}"), [0; 32]);
        }
        assert!(cache.len() <= CACHED_KEYS);
        assert!(!cache.is_empty());
        // Its debug form never shows a key.
        assert!(!format!("{cache:?}").contains("sk-tr-"));
    }
}
