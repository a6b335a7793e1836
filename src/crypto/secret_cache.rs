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
//!
//! Requests that miss together share one verification: after a restart, every connection
//! of a busy client misses at once, and each running its own argon2 stalled the hash
//! threads (and every password login queued behind them) for as many hashes as the client
//! had connections. A request joins only a verification of the very secret it presents, so
//! none is answered from a hash of another secret. The verification belongs to no request:
//! one that goes away (its client timed out) neither wastes the hash nor sends the others
//! to the back of the queue, and a right secret is remembered regardless.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use aws_lc_rs::hmac;
use tokio::sync::watch;

pub struct SecretCache {
    key: hmac::Key,
    entries: RwLock<HashMap<String, Entry>>,
    /// Verifications queued or running, each with where its answer will appear.
    in_flight: Mutex<HashMap<Flight, Answer>>,
}

/// `None` until the verification has answered. Closed without an answer when it failed.
type Answer = watch::Receiver<Option<bool>>;

struct Entry {
    phc: String,
    tag: hmac::Tag,
}

/// What one verification checks. The secret appears only as its HMAC under the process's
/// key, so comparing keys (not in constant time) tells a timing observer nothing about it.
#[derive(Clone, PartialEq, Eq, Hash)]
struct Flight {
    client_id: String,
    phc: String,
    tag: Vec<u8>,
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
            in_flight: Mutex::new(HashMap::new()),
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
        self.recognises_tag(client_id, &self.tag(client_id, secret), phc)
    }

    fn recognises_tag(&self, client_id: &str, tag: &hmac::Tag, phc: &str) -> bool {
        let entries = self.entries.read().unwrap_or_else(|p| p.into_inner());
        entries
            .get(client_id)
            .filter(|e| e.phc == phc)
            .is_some_and(|entry| {
                aws_lc_rs::constant_time::verify_slices_are_equal(tag.as_ref(), entry.tag.as_ref())
                    .is_ok()
            })
    }

    /// Records a secret that argon2 just verified against `phc`.
    fn remember(&self, client_id: &str, tag: hmac::Tag, phc: &str) {
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
    /// with argon2 (and remembered when right), sharing the argon2 of any request verifying
    /// the same secret at this moment. `None` for `phc` costs a dummy verification.
    pub async fn verify(
        self: &Arc<Self>,
        client_id: &str,
        secret: &str,
        phc: Option<&str>,
    ) -> bool {
        let Some(phc) = phc else {
            return super::password::verify_dummy_async(secret).await;
        };
        let tag = self.tag(client_id, secret);
        let flight = Flight {
            client_id: client_id.to_owned(),
            phc: phc.to_owned(),
            tag: tag.as_ref().to_vec(),
        };
        let mut answer = {
            let mut in_flight = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
            match in_flight.get(&flight) {
                Some(answer) => answer.clone(),
                // Checked under the lock: a verification remembers its right secret before
                // it leaves the map, so none that ended just now is run again.
                None if self.recognises_tag(client_id, &tag, phc) => return true,
                None => {
                    let (sender, answer) = watch::channel(None);
                    in_flight.insert(flight.clone(), answer.clone());
                    let landing = Landing {
                        cache: Arc::clone(self),
                        flight,
                        tag,
                        sender,
                        left: false,
                    };
                    // Queued after the lock is released: a landing that cannot be queued
                    // is dropped, and its drop takes the lock.
                    drop(in_flight);
                    if !super::password::verify_detached(secret, phc, move |right| {
                        landing.land(right)
                    }) {
                        return false;
                    }
                    answer
                }
            }
        };
        answer
            .wait_for(Option::is_some)
            .await
            .is_ok_and(|right| *right == Some(true))
    }

    #[cfg(test)]
    fn flights(&self) -> usize {
        self.in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }
}

/// Where a verification's answer goes, on the hash thread that computed it. However it ends
/// (answered, panicked, or never queued), the verification leaves the map, before anyone
/// hears its answer; its waiters hear `false` if it ended without one.
struct Landing {
    cache: Arc<SecretCache>,
    flight: Flight,
    tag: hmac::Tag,
    sender: watch::Sender<Option<bool>>,
    left: bool,
}

impl Landing {
    fn land(mut self, right: bool) {
        if right {
            self.cache
                .remember(&self.flight.client_id, self.tag, &self.flight.phc);
        }
        self.leave();
        self.sender.send_replace(Some(right));
    }

    /// Once only: after it, a verification of the same secret may start and be in the map.
    fn leave(&mut self) {
        if !std::mem::replace(&mut self.left, true) {
            self.cache
                .in_flight
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&self.flight);
        }
    }
}

impl Drop for Landing {
    fn drop(&mut self) {
        self.leave();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[actix_web::test]
    async fn only_the_verified_secret_for_the_same_hash_is_recognised() {
        let cache = Arc::new(SecretCache::new());
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
        assert_eq!(cache.flights(), 0, "answered verifications are forgotten");
    }

    #[actix_web::test]
    async fn requests_verifying_together_each_get_their_own_answer() {
        let cache = Arc::new(SecretCache::new());
        let phc = Arc::new(super::super::password::hash("the right secret"));
        let presented: [&'static str; 6] = [
            "the right secret",
            "a wrong secret",
            "the right secret",
            "another wrong secret",
            "the right secret",
            "a wrong secret",
        ];
        let tasks: Vec<_> = presented
            .into_iter()
            .map(|secret| {
                let (cache, phc) = (Arc::clone(&cache), Arc::clone(&phc));
                actix_web::rt::spawn(async move { cache.verify("c", secret, Some(&phc)).await })
            })
            .collect();
        let mut answers = Vec::new();
        for task in tasks {
            answers.push(task.await.unwrap());
        }
        assert_eq!(answers, [true, false, true, false, true, false]);
        assert!(cache.recognises("c", "the right secret", &phc));
        assert!(!cache.recognises("c", "a wrong secret", &phc));
        assert_eq!(cache.flights(), 0);
    }

    #[actix_web::test]
    async fn a_verification_outlives_the_request_that_went_away() {
        let cache = Arc::new(SecretCache::new());
        let phc = super::super::password::hash("the right secret");
        let abandoned = tokio::time::timeout(
            std::time::Duration::ZERO,
            cache.verify("c", "the right secret", Some(&phc)),
        )
        .await;
        assert!(abandoned.is_err(), "gone before argon2 answered");
        // Nobody waits for it any more, and still its answer is not thrown away.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while !cache.recognises("c", "the right secret", &phc) {
            assert!(std::time::Instant::now() < deadline, "never remembered");
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        assert_eq!(cache.flights(), 0);
        assert!(cache.verify("c", "the right secret", Some(&phc)).await);
    }

    #[actix_web::test]
    async fn a_string_that_is_no_hash_fails_and_leaves_nothing_behind() {
        let cache = Arc::new(SecretCache::new());
        assert!(!cache.verify("c", "secret", Some("not a hash")).await);
        assert_eq!(cache.flights(), 0);
    }
}
