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
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use aws_lc_rs::hmac;
use tokio::sync::watch;

pub struct SecretCache {
    key: hmac::Key,
    entries: RwLock<HashMap<String, Entry>>,
    /// Verifications queued or running, each with where its answer will appear.
    in_flight: Mutex<HashMap<Flight, Answer>>,
}

/// An HMAC-SHA256 of a client id and a secret under the process's key.
type Tag = [u8; 32];

/// `None` until the verification has answered. Closed without an answer when it failed.
type Answer = watch::Receiver<Option<bool>>;

struct Entry {
    phc: String,
    tag: Tag,
}

/// What one verification checks. The secret appears only as its tag, so comparing keys
/// (not in constant time) tells a timing observer nothing about it.
#[derive(Clone, PartialEq, Eq, Hash)]
struct Flight {
    client_id: String,
    phc: String,
    tag: Tag,
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

    fn tag(&self, client_id: &str, secret: &str) -> Tag {
        let mut context = hmac::Context::with_key(&self.key);
        context.update(client_id.as_bytes());
        context.update(&[0]);
        context.update(secret.as_bytes());
        let mut tag = [0; 32];
        tag.copy_from_slice(context.sign().as_ref());
        tag
    }

    /// Whether `secret` is the one verified before against this very `phc`.
    pub fn recognises(&self, client_id: &str, secret: &str, phc: &str) -> bool {
        self.recognises_tag(client_id, &self.tag(client_id, secret), phc)
    }

    fn recognises_tag(&self, client_id: &str, tag: &Tag, phc: &str) -> bool {
        let entries = self.entries.read().unwrap_or_else(|p| p.into_inner());
        entries
            .get(client_id)
            .filter(|e| e.phc == phc)
            .is_some_and(|entry| {
                aws_lc_rs::constant_time::verify_slices_are_equal(tag, &entry.tag).is_ok()
            })
    }

    /// Records a secret that argon2 just verified against `phc`.
    fn remember(&self, flight: &Flight) {
        let mut entries = self.entries.write().unwrap_or_else(|p| p.into_inner());
        if entries.len() >= MAX_ENTRIES && !entries.contains_key(&flight.client_id) {
            entries.clear();
        }
        entries.insert(
            flight.client_id.clone(),
            Entry {
                phc: flight.phc.clone(),
                tag: flight.tag,
            },
        );
    }

    fn in_flight(&self) -> MutexGuard<'_, HashMap<Flight, Answer>> {
        self.in_flight.lock().unwrap_or_else(|p| p.into_inner())
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
        let flight = Flight {
            client_id: client_id.to_owned(),
            phc: phc.to_owned(),
            tag: self.tag(client_id, secret),
        };
        match self.join(flight, secret) {
            Some(answer) => answered(answer).await,
            None => true,
        }
    }

    /// The answer to wait for: that of a verification of the same secret already in
    /// flight, else of one queued now; `None` when the cache recognises the secret.
    fn join(self: &Arc<Self>, flight: Flight, secret: &str) -> Option<Answer> {
        let mut in_flight = self.in_flight();
        if let Some(answer) = in_flight.get(&flight) {
            return Some(answer.clone());
        }
        // Checked under the lock: a verification remembers its right secret before it
        // leaves the map, so none that ended just now is run again.
        if self.recognises_tag(&flight.client_id, &flight.tag, &flight.phc) {
            return None;
        }
        let (sender, answer) = watch::channel(None);
        in_flight.insert(flight.clone(), answer.clone());
        // Queued after the lock is released: a landing that is not queued is dropped at
        // once, and its drop takes the lock (and tells the waiters `false`).
        drop(in_flight);
        let phc = flight.phc.clone();
        let mut landing = Landing {
            cache: Arc::clone(self),
            flight,
            sender,
            answer: None,
        };
        super::password::verify_detached(secret, &phc, move |right| landing.land(right));
        Some(answer)
    }

    #[cfg(test)]
    fn flights(&self) -> usize {
        self.in_flight().len()
    }
}

/// What a verification answered; `false` for one that ended without an answer.
async fn answered(mut answer: Answer) -> bool {
    answer
        .wait_for(Option::is_some)
        .await
        .is_ok_and(|right| *right == Some(true))
}

/// A verification's way back, owned by the hash thread's job. However the job ends
/// (answered, panicked, or never queued), dropping it takes the verification out of the
/// map first and only then tells the waiters: `false` unless it answered.
struct Landing {
    cache: Arc<SecretCache>,
    flight: Flight,
    sender: watch::Sender<Option<bool>>,
    answer: Option<bool>,
}

impl Landing {
    fn land(&mut self, right: bool) {
        if right {
            self.cache.remember(&self.flight);
        }
        self.answer = Some(right);
    }
}

impl Drop for Landing {
    fn drop(&mut self) {
        self.cache.in_flight().remove(&self.flight);
        if let Some(right) = self.answer {
            self.sender.send_replace(Some(right));
        }
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
