//! Argon2id for user passwords and client secrets, with parameters no weaker than OWASP's
//! recommendation (m = 19 MiB, t = 2, p = 1).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, OnceLock};

use argon2::password_hash::{PasswordHash, PasswordHasher, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};

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

/// Constant-time verification. Parameters are read from the PHC string, so hashes made with
/// older parameters still verify.
pub fn verify(secret: &str, phc: &str) -> bool {
    match PasswordHash::new(phc) {
        Ok(parsed) => HashLimiter::global().run(|| verify_parsed(secret.as_bytes(), &parsed)),
        Err(_) => false,
    }
}

/// `PasswordVerifier::verify_password`, but in working memory that is reused: argon2
/// otherwise allocates its 19 MiB afresh each time, and the allocator keeps a freed block
/// in each thread's arena, so RSS grew with the number of threads that ever hashed
/// (500 MiB under the password-grant benchmark) instead of with the hashes running.
fn verify_parsed(secret: &[u8], hash: &PasswordHash<'_>) -> bool {
    let (Some(salt), Some(expected)) = (&hash.salt, &hash.hash) else {
        return false;
    };
    let Ok(algorithm) = Algorithm::try_from(hash.algorithm) else {
        return false;
    };
    let version = match hash.version.map(Version::try_from).transpose() {
        Ok(version) => version.unwrap_or_default(),
        Err(_) => return false,
    };
    let Ok(params) = Params::try_from(hash) else {
        return false;
    };
    let mut salt_buffer = [0u8; 64];
    let Ok(salt) = salt.decode_b64(&mut salt_buffer) else {
        return false;
    };
    let blocks = params.block_count();
    let argon2 = Argon2::new(algorithm, version, params);
    let mut computed = vec![0u8; expected.len()];
    let hashed = with_working_memory(blocks, |memory| {
        argon2.hash_password_into_with_memory(secret, salt, &mut computed, memory)
    });
    hashed.is_ok()
        && aws_lc_rs::constant_time::verify_slices_are_equal(&computed, expected.as_bytes()).is_ok()
}

/// Lends a buffer of at least `blocks` argon2 blocks. Buffers are kept for reuse; the hash
/// limiter lets at most one hash per core run, so at most that many buffers ever exist.
fn with_working_memory<T>(blocks: usize, work: impl FnOnce(&mut [Block]) -> T) -> T {
    static SPARE: Mutex<Vec<Vec<Block>>> = Mutex::new(Vec::new());
    let mut buffer = SPARE
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .pop()
        .unwrap_or_default();
    if buffer.len() < blocks {
        buffer.resize(blocks, Block::new());
    }
    let result = work(&mut buffer[..blocks]);
    SPARE.lock().unwrap_or_else(|p| p.into_inner()).push(buffer);
    result
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
    fn hashes_made_elsewhere_with_other_parameters_verify() {
        // Made by the argon2 crate's own hasher, with other parameters and algorithm: the
        // reused working memory must size itself from the PHC string.
        let salt = SaltString::encode_b64(b"some salt bytes!").unwrap();
        for (algorithm, m, t, p) in [
            (Algorithm::Argon2id, 4096, 3, 1),
            (Algorithm::Argon2id, 32768, 1, 2),
            (Algorithm::Argon2i, 1024, 2, 1),
        ] {
            let params = Params::new(m, t, p, None).unwrap();
            let phc = Argon2::new(algorithm, Version::V0x13, params)
                .hash_password(b"password", &salt)
                .unwrap()
                .to_string();
            assert!(verify("password", &phc), "{phc}");
            assert!(!verify("passwore", &phc), "{phc}");
            assert!(!verify("password", &phc[..phc.len() - 2]), "{phc}");
        }
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
