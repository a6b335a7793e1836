//! Argon2id for user passwords and client secrets, with parameters no weaker than OWASP's
//! recommendation (m = 19 MiB, t = 2, p = 1).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, OnceLock};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};

pub const MEMORY_KIB: u32 = 19_456;
pub const ITERATIONS: u32 = 2;
pub const PARALLELISM: u32 = 1;

fn hasher() -> Argon2<'static> {
    #[allow(clippy::expect_used)]
    let params = Params::new(MEMORY_KIB, ITERATIONS, PARALLELISM, None)
        .expect("constant argon2 parameters are valid");
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

/// At most one argon2 computation per core at a time: each takes 19 MiB, so a burst of
/// logins queues here instead of exhausting memory. Callers are blocking-pool threads.
struct HashLimiter {
    running: Mutex<usize>,
    freed: Condvar,
    limit: usize,
    /// Threads waiting for a core, for the metrics.
    queued: AtomicUsize,
}

impl HashLimiter {
    fn new(limit: usize) -> HashLimiter {
        HashLimiter {
            running: Mutex::new(0),
            freed: Condvar::new(),
            limit,
            queued: AtomicUsize::new(0),
        }
    }

    fn global() -> &'static HashLimiter {
        static LIMITER: OnceLock<HashLimiter> = OnceLock::new();
        LIMITER.get_or_init(|| {
            HashLimiter::new(std::thread::available_parallelism().map_or(1, |n| n.get()))
        })
    }

    fn run<T>(&self, work: impl FnOnce() -> T) -> T {
        {
            let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
            if *running >= self.limit {
                self.queued.fetch_add(1, Ordering::Relaxed);
                while *running >= self.limit {
                    running = self.freed.wait(running).unwrap_or_else(|p| p.into_inner());
                }
                self.queued.fetch_sub(1, Ordering::Relaxed);
            }
            *running += 1;
        }
        let result = work();
        *self.running.lock().unwrap_or_else(|p| p.into_inner()) -= 1;
        self.freed.notify_one();
        result
    }
}

/// Hashes running and hashes waiting for a core, for the metrics.
pub fn hash_load() -> (usize, usize) {
    let limiter = HashLimiter::global();
    let running = *limiter.running.lock().unwrap_or_else(|p| p.into_inner());
    (running, limiter.queued.load(Ordering::Relaxed))
}

/// A PHC string such as `$argon2id$v=19$m=19456,t=2,p=1$...`.
pub fn hash(secret: &str) -> String {
    HashLimiter::global().run(|| hash_unbounded(secret))
}

fn hash_unbounded(secret: &str) -> String {
    let salt = SaltString::encode_b64(&super::random::bytes::<16>())
        .unwrap_or_else(|_| unreachable!("16 bytes always encode as a salt"));
    match hasher().hash_password(secret.as_bytes(), &salt) {
        Ok(hash) => hash.to_string(),
        Err(e) => unreachable!("argon2 with valid parameters cannot fail: {e}"),
    }
}

/// Constant-time verification (the comparison inside argon2 is constant time). Parameters
/// are read from the PHC string, so hashes made with older parameters still verify.
pub fn verify(secret: &str, phc: &str) -> bool {
    match PasswordHash::new(phc) {
        Ok(parsed) => HashLimiter::global()
            .run(|| hasher().verify_password(secret.as_bytes(), &parsed).is_ok()),
        Err(_) => false,
    }
}

/// Spends the same time as verifying against a real hash and always fails: used when there is
/// no such user or client, so that the answer's timing does not say which.
pub fn verify_dummy(secret: &str) -> bool {
    static DUMMY: OnceLock<String> = OnceLock::new();
    let phc = DUMMY.get_or_init(|| hash_unbounded("gatehouse dummy password"));
    let _ = verify(secret, phc);
    false
}

pub fn is_argon2id_phc(phc: &str) -> bool {
    PasswordHash::new(phc)
        .map(|h| h.algorithm.as_str() == "argon2id" && h.hash.is_some())
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_verifies_only_the_same_secret() {
        let phc = hash("correct horse");
        assert!(phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"));
        assert!(is_argon2id_phc(&phc));
        assert!(verify("correct horse", &phc));
        assert!(!verify("correct horsf", &phc));
        assert!(!verify("correct horse", "not a phc string"));
    }

    #[test]
    fn the_limiter_never_lets_more_than_its_limit_run_at_once() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let limiter = HashLimiter::new(2);
        let running = AtomicUsize::new(0);
        let most = AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    limiter.run(|| {
                        let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                        most.fetch_max(now, Ordering::SeqCst);
                        std::thread::sleep(std::time::Duration::from_millis(20));
                        running.fetch_sub(1, Ordering::SeqCst);
                    })
                });
            }
        });
        assert_eq!(
            most.load(Ordering::SeqCst),
            2,
            "eight callers, two at a time"
        );
    }

    #[test]
    fn other_algorithms_are_not_argon2id() {
        assert!(!is_argon2id_phc(
            "$argon2i$v=19$m=16,t=2,p=1$c29tZXNhbHQ$aGFzaGhhc2g"
        ));
        assert!(!is_argon2id_phc("plaintext"));
    }
}
