//! Provider credentials at rest: AES-256-GCM under the master key.
//!
//! Sealed form: `nonce (12 bytes) || ciphertext || tag (16 bytes)`, a fresh random nonce per seal.
//! The provider name is bound as associated data, so a sealed credential copied to another row
//! does not open.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use rand::RngCore;

const NONCE_LEN: usize = 12;

/// Why a credential could not be sealed or opened. Deliberately without detail.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    #[error("credential could not be encrypted")]
    Seal,
    #[error("credential could not be decrypted (wrong master key or tampered data)")]
    Open,
}

/// Seals and opens credentials with one master key.
#[derive(Clone)]
pub struct Sealer {
    cipher: Aes256Gcm,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer(<redacted>)")
    }
}

impl Sealer {
    pub fn new(master_key: &[u8; 32]) -> Sealer {
        Sealer {
            cipher: Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(master_key)),
        }
    }

    pub fn seal(&self, plaintext: &[u8], aad: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let mut nonce = [0u8; NONCE_LEN];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let ciphertext = self
            .cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad,
                },
            )
            .map_err(|_| CryptoError::Seal)?;
        let mut out = Vec::with_capacity(NONCE_LEN + ciphertext.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ciphertext);
        Ok(out)
    }

    pub fn open(&self, sealed: &[u8], aad: &[u8]) -> Result<Vec<u8>, CryptoError> {
        if sealed.len() < NONCE_LEN {
            return Err(CryptoError::Open);
        }
        let (nonce, ciphertext) = sealed.split_at(NONCE_LEN);
        self.cipher
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: ciphertext,
                    aad,
                },
            )
            .map_err(|_| CryptoError::Open)
    }
}

/// Associated data for a provider's credential.
pub fn provider_aad(name: &str) -> Vec<u8> {
    format!("tokenrouter.provider.{name}").into_bytes()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_with_fresh_nonces() {
        let s = Sealer::new(&[7; 32]);
        let a = s.seal(b"sk-secret", b"ad").unwrap();
        let b = s.seal(b"sk-secret", b"ad").unwrap();
        assert_ne!(a, b, "nonces must differ");
        assert_eq!(a.len(), 12 + 9 + 16);
        assert_eq!(s.open(&a, b"ad").unwrap(), b"sk-secret");
        assert_eq!(s.open(&b, b"ad").unwrap(), b"sk-secret");
    }

    #[test]
    fn tampering_and_wrong_keys_are_detected() {
        let s = Sealer::new(&[7; 32]);
        let sealed = s.seal(b"sk-secret", b"ad").unwrap();
        for i in [0, 12, sealed.len() - 1] {
            let mut t = sealed.clone();
            t[i] ^= 1;
            assert_eq!(s.open(&t, b"ad"), Err(CryptoError::Open), "byte {i}");
        }
        assert_eq!(s.open(&sealed, b"other"), Err(CryptoError::Open));
        assert_eq!(
            Sealer::new(&[8; 32]).open(&sealed, b"ad"),
            Err(CryptoError::Open)
        );
        assert_eq!(s.open(&sealed[..5], b"ad"), Err(CryptoError::Open));
    }

    #[test]
    fn debug_hides_the_key() {
        assert_eq!(format!("{:?}", Sealer::new(&[7; 32])), "Sealer(<redacted>)");
    }
}
