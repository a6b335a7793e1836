//! AES-256-GCM with a key derived from `secrets.system` by HKDF-SHA256. Used to keep
//! private signing keys and the key that seals authorization codes encrypted in the
//! database: a database dump alone reveals nothing.

use aws_lc_rs::aead::{Aad, Algorithm, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use aws_lc_rs::hkdf::{Salt, HKDF_SHA256};

/// Bumped if the format below changes: version byte, nonce, ciphertext with tag.
const FORMAT_VERSION: u8 = 1;

#[derive(Debug, thiserror::Error)]
pub enum SecretBoxError {
    #[error("the sealed data is malformed")]
    Malformed,
    #[error("cannot decrypt: the data was sealed with a different secrets.system, or altered")]
    Decrypt,
}

pub struct SecretBox {
    key: LessSafeKey,
}

impl SecretBox {
    /// `purpose` separates keys derived from one system secret for different uses.
    pub fn new(system_secret: &str, purpose: &'static str) -> SecretBox {
        let salt = Salt::new(HKDF_SHA256, b"gatehouse secret box v1");
        let prk = salt.extract(system_secret.as_bytes());
        let info = [purpose.as_bytes()];
        let mut key_bytes = [0u8; 32];
        // HKDF-expand to 32 bytes with a fixed info never fails.
        #[allow(clippy::expect_used)]
        prk.expand(&info, &AES_256_GCM)
            .and_then(|okm| okm.fill(&mut key_bytes))
            .expect("HKDF output of the AEAD key length");
        #[allow(clippy::expect_used)]
        SecretBox::with_key(&AES_256_GCM, &key_bytes).expect("32-byte AES-256 key")
    }

    /// A box over `key` itself, for a key that is not derived from the system secret (the
    /// code-sealing key); `None` unless `key` has the algorithm's key length.
    pub fn with_key(algorithm: &'static Algorithm, key: &[u8]) -> Option<SecretBox> {
        let unbound = UnboundKey::new(algorithm, key).ok()?;
        Some(SecretBox {
            key: LessSafeKey::new(unbound),
        })
    }

    /// `context` (e.g. a key id) is authenticated, so sealed data cannot be moved to another row.
    pub fn seal(&self, plaintext: &[u8], context: &[u8]) -> Vec<u8> {
        let nonce_bytes = super::random::bytes::<NONCE_LEN>();
        let mut in_out = plaintext.to_vec();
        #[allow(clippy::expect_used)]
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce_bytes),
                Aad::from(context),
                &mut in_out,
            )
            .expect("AES-GCM sealing of a bounded buffer");
        let mut out = Vec::with_capacity(1 + NONCE_LEN + in_out.len());
        out.push(FORMAT_VERSION);
        out.extend_from_slice(&nonce_bytes);
        out.extend_from_slice(&in_out);
        out
    }

    pub fn open(&self, sealed: &[u8], context: &[u8]) -> Result<Vec<u8>, SecretBoxError> {
        let (version, rest) = sealed.split_first().ok_or(SecretBoxError::Malformed)?;
        if *version != FORMAT_VERSION || rest.len() < NONCE_LEN {
            return Err(SecretBoxError::Malformed);
        }
        let (nonce, ciphertext) = rest.split_at(NONCE_LEN);
        let nonce =
            Nonce::try_assume_unique_for_key(nonce).map_err(|_| SecretBoxError::Malformed)?;
        let mut in_out = ciphertext.to_vec();
        let plaintext = self
            .key
            .open_in_place(nonce, Aad::from(context), &mut in_out)
            .map_err(|_| SecretBoxError::Decrypt)?;
        Ok(plaintext.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_and_open_round_trip_only_with_the_same_secret_and_context() {
        let sealed =
            SecretBox::new("a system secret of enough length!", "test").seal(b"private", b"kid-1");
        assert!(!sealed.windows(7).any(|w| w == b"private"));
        let same = SecretBox::new("a system secret of enough length!", "test");
        assert_eq!(same.open(&sealed, b"kid-1").unwrap(), b"private");
        assert!(same.open(&sealed, b"kid-2").is_err());
        let other = SecretBox::new("another system secret of length!!", "test");
        assert!(other.open(&sealed, b"kid-1").is_err());
        assert!(same.open(&sealed[..5], b"kid-1").is_err());
    }
}
