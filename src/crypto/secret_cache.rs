//! Remembers client secrets that passed argon2 verification, so a busy confidential client
//! does not pay a 19 MiB, tens-of-milliseconds hash on every token request.
//!
//! Per client the cache keeps the stored PHC hash it verified against and an HMAC of the
//! secret under a key that exists only in this process's memory. A later request whose
//! secret has the same HMAC (compared in constant time), for the same stored hash, is
//! accepted in microseconds. Anything else (a wrong secret, a changed hash, an unknown
//! client) falls through to a full argon2 verification, so guessing costs an attacker
//! exactly what it did before; the HMAC key never leaves memory, so a memory-less observer
//! learns nothing, and the cache holds no secret in a form that can be replayed elsewhere.

use std::collections::HashMap;
use std::sync::RwLock;

use aws_lc_rs::hmac;

pub struct SecretCache {
    key: hmac::Key,
    entries: RwLock<HashMap<String, Entry>>,
}

struct Entry {
    phc: String,
    tag: hmac::Tag,
}

/// More clients than this and the cache starts over; a deployment has tens of clients.
const MAX_ENTRIES: usize = 10_000;

impl Default for SecretCache {
    fn default() -> Self {
        SecretCache::new()
    }
}

impl SecretCache {
    pub fn new() -> SecretCache {
        SecretCache {
            key: hmac::Key::new(hmac::HMAC_SHA256, &super::random::bytes::<32>()),
            entries: RwLock::new(HashMap::new()),
        }
    }

    fn tag(&self, client_id: &str, secret: &str) -> hmac::Tag {
        let mut context = hmac::Context::with_key(&self.key);
        context.update(client_id.as_bytes());
        context.update(&[0]);
        context.update(secret.as_bytes());
        context.sign()
    }

    /// Whether `secret` is the one verified before against this very `phc`.
    pub fn recognises(&self, client_id: &str, secret: &str, phc: &str) -> bool {
        let entries = self.entries.read().unwrap_or_else(|p| p.into_inner());
        let Some(entry) = entries.get(client_id).filter(|e| e.phc == phc) else {
            return false;
        };
        let tag = self.tag(client_id, secret);
        aws_lc_rs::constant_time::verify_slices_are_equal(tag.as_ref(), entry.tag.as_ref()).is_ok()
    }

    /// Records a secret that argon2 just verified against `phc`.
    pub fn remember(&self, client_id: &str, secret: &str, phc: &str) {
        let tag = self.tag(client_id, secret);
        let mut entries = self.entries.write().unwrap_or_else(|p| p.into_inner());
        if entries.len() >= MAX_ENTRIES && !entries.contains_key(client_id) {
            entries.clear();
        }
        entries.insert(
            client_id.to_owned(),
            Entry {
                phc: phc.to_owned(),
                tag,
            },
        );
    }

    /// Verifies `secret` against `phc`: from the cache when it was verified before, else
    /// with argon2 (and remembered when right). `None` for `phc` costs a dummy verification.
    pub async fn verify(&self, client_id: &str, secret: &str, phc: Option<&str>) -> bool {
        match phc {
            Some(phc) if self.recognises(client_id, secret, phc) => true,
            Some(phc) => {
                let ok = super::password::verify_async(secret, phc).await;
                if ok {
                    self.remember(client_id, secret, phc);
                }
                ok
            }
            None => super::password::verify_dummy_async(secret).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_verified_secret_for_the_same_hash_is_recognised() {
        actix_web::rt::System::new().block_on(verified_secrets_are_recognised());
    }

    async fn verified_secrets_are_recognised() {
        let cache = SecretCache::new();
        let phc = super::super::password::hash("the right secret");
        assert!(
            !cache.recognises("c", "the right secret", &phc),
            "nothing before a verification"
        );
        assert!(cache.verify("c", "the right secret", Some(&phc)).await);
        assert!(cache.recognises("c", "the right secret", &phc));
        assert!(!cache.recognises("c", "the wrong secret", &phc));
        assert!(!cache.verify("c", "the wrong secret", Some(&phc)).await);
        assert!(
            !cache.recognises("other", "the right secret", &phc),
            "per client"
        );
        let rotated = super::super::password::hash("the right secret");
        assert!(
            !cache.recognises("c", "the right secret", &rotated),
            "a new hash needs argon2 again"
        );
        assert!(
            !SecretCache::new().recognises("c", "the right secret", &phc),
            "per process key"
        );
    }
}
