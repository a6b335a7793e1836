//! HMAC-SHA256 under a key derived from `secrets.system`, for values the server hands out
//! and must recognise later (CSRF tokens), and the SHA-256 digests that stand in for
//! session ids, codes and tokens in the database.

use aws_lc_rs::{digest, hkdf, hmac};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;

pub struct Mac {
    key: hmac::Key,
}

impl Mac {
    /// `purpose` separates keys derived from one system secret for different uses.
    pub fn new(system_secret: &str, purpose: &'static str) -> Mac {
        let salt = hkdf::Salt::new(hkdf::HKDF_SHA256, b"gatehouse mac v1");
        let prk = salt.extract(system_secret.as_bytes());
        let info = [purpose.as_bytes()];
        // Expanding to the HMAC key length with a fixed info cannot fail.
        #[allow(clippy::expect_used)]
        let okm = prk
            .expand(&info, hmac::HMAC_SHA256)
            .expect("HKDF output of the HMAC key length");
        Mac {
            key: hmac::Key::from(okm),
        }
    }

    pub fn sign(&self, data: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(hmac::sign(&self.key, data))
    }

    /// Constant-time check of a tag made by `sign`.
    pub fn verify(&self, data: &[u8], tag: &str) -> bool {
        match URL_SAFE_NO_PAD.decode(tag) {
            Ok(tag) => hmac::verify(&self.key, data, &tag).is_ok(),
            Err(_) => false,
        }
    }
}

/// What the database keeps instead of a bearer secret: a leaked table reveals no usable value.
/// Secrets are 128+ random bits, so a plain digest (no salt, no stretching) is enough.
pub fn digest_secret(secret: &str) -> String {
    URL_SAFE_NO_PAD.encode(digest::digest(&digest::SHA256, secret.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_verify_only_for_the_same_key_and_data() {
        let mac = Mac::new("a system secret of enough length!", "csrf");
        let tag = mac.sign(b"data");
        assert!(mac.verify(b"data", &tag));
        assert!(!mac.verify(b"datb", &tag));
        assert!(!mac.verify(b"data", "not-base64!"));
        assert!(!Mac::new("a system secret of enough length!", "other").verify(b"data", &tag));
    }

    #[test]
    fn digests_are_stable_and_distinct() {
        assert_eq!(digest_secret("a"), digest_secret("a"));
        assert_ne!(digest_secret("a"), digest_secret("b"));
        assert_eq!(digest_secret("a").len(), 43);
    }
}
