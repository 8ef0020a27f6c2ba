//! Gateway keys: format and hashing. Only the SHA-256 of a key is ever stored or pushed.

use sha2::{Digest, Sha256};

/// Every gateway key starts with this.
pub const KEY_PREFIX: &str = "sk-tr-";

/// How many characters of a raw key are kept for display (`sk-tr-` plus four).
pub const DISPLAY_PREFIX_LEN: usize = KEY_PREFIX.len() + 4;

/// SHA-256 of a raw key.
pub fn hash_key(raw: &str) -> [u8; 32] {
    Sha256::digest(raw.as_bytes()).into()
}

/// A new raw key from 32 random bytes (the caller supplies the randomness).
pub fn format_key(random: &[u8; 32]) -> String {
    format!("{KEY_PREFIX}{}", hex::encode(random))
}

/// The displayable prefix of a raw key.
pub fn display_prefix(raw: &str) -> String {
    raw.chars().take(DISPLAY_PREFIX_LEN).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_is_sha256() {
        assert_eq!(
            hex::encode(hash_key("abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn format_and_prefix() {
        let k = format_key(&[0xab; 32]);
        assert!(k.starts_with("sk-tr-abab"));
        assert_eq!(k.len(), 6 + 64);
        assert_eq!(display_prefix(&k), "sk-tr-abab");
    }
}
