//! Argon2id for user passwords and client secrets, with parameters no weaker than OWASP's
//! recommendation (m = 19 MiB, t = 2, p = 1).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};

use argon2::password_hash::{PasswordHash, PasswordHasher, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};

use super::hash_memory::HashMemory;

pub const MEMORY_KIB: u32 = 19_456;
pub const ITERATIONS: u32 = 2;
pub const PARALLELISM: u32 = 1;

/// Argon2id with gatehouse's parameters, as every new hash is made.
pub fn hasher() -> Argon2<'static> {
    #[allow(clippy::expect_used)]
    let params = Params::new(MEMORY_KIB, ITERATIONS, PARALLELISM, None)
        .expect("constant argon2 parameters are valid");
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

/// What a hash thread runs: a verification, given the thread's reusable working memory.
type Job = Box<dyn FnOnce(&mut HashMemory) + Send>;

/// At most one argon2 computation per core at a time, each on one of as many dedicated
/// threads: each takes 19 MiB, so a burst of logins queues here instead of exhausting
/// memory. A hash thread that finishes takes the next queued job at once; with a limiter
/// that handed the core to a waiting caller instead, the core idled through each hand-over
/// (5% of both cores under the password-grant benchmark). Callers are blocking-pool
/// threads; they wait for their result.
struct HashPool {
    shared: Arc<Shared>,
    threads: usize,
}

struct Shared {
    queue: Mutex<VecDeque<Job>>,
    queued_or_freed: Condvar,
    /// Jobs running now, for the metrics.
    running: AtomicUsize,
}

impl HashPool {
    fn start(threads: usize) -> HashPool {
        let shared = Arc::new(Shared {
            queue: Mutex::new(VecDeque::new()),
            queued_or_freed: Condvar::new(),
            running: AtomicUsize::new(0),
        });
        let started = (0..threads)
            .filter(|n| {
                let shared = Arc::clone(&shared);
                std::thread::Builder::new()
                    .name(format!("argon2-{n}"))
                    .spawn(move || shared.work())
                    .map_err(|error| tracing::error!(%error, "cannot start a hash thread"))
                    .is_ok()
            })
            .count();
        HashPool {
            shared,
            threads: started,
        }
    }

    fn global() -> &'static HashPool {
        static POOL: OnceLock<HashPool> = OnceLock::new();
        POOL.get_or_init(|| {
            HashPool::start(std::thread::available_parallelism().map_or(1, |n| n.get()))
        })
    }

    /// Runs `work` on a hash thread and waits for it. Without any hash thread (none could
    /// be started) it runs here instead, unbounded, rather than never.
    fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut HashMemory) -> T + Send + 'static,
    ) -> Option<T> {
        if self.threads == 0 {
            return Some(work(&mut HashMemory::default()));
        }
        let (sender, receiver) = std::sync::mpsc::sync_channel(1);
        self.enqueue(Box::new(move |memory| {
            let _ = sender.send(work(memory));
        }));
        // A job that panicked dropped its sender: the caller hears of a failure, not a hang.
        receiver.recv().ok()
    }

    /// `run` for async callers: the job is queued and awaited, so the caller holds no
    /// thread while its hash waits for a core. Without any hash thread it fails (`None`):
    /// an async worker must never hash.
    async fn run_async<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut HashMemory) -> T + Send + 'static,
    ) -> Option<T> {
        let (sender, receiver) = tokio::sync::oneshot::channel();
        let queued = self.detach(move |memory| {
            let _ = sender.send(work(memory));
        });
        if !queued {
            return None;
        }
        receiver.await.ok()
    }

    /// Queues `work` and returns at once; `false` (and `work` dropped) without any hash
    /// thread.
    fn detach(&self, work: impl FnOnce(&mut HashMemory) + Send + 'static) -> bool {
        if self.threads == 0 {
            return false;
        }
        self.enqueue(Box::new(work));
        true
    }

    fn enqueue(&self, job: Job) {
        self.shared
            .queue
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push_back(job);
        self.shared.queued_or_freed.notify_one();
    }
}

impl Shared {
    fn work(&self) {
        let mut memory = HashMemory::default();
        loop {
            let job = {
                let mut queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
                loop {
                    match queue.pop_front() {
                        Some(job) => break job,
                        None => {
                            queue = self
                                .queued_or_freed
                                .wait(queue)
                                .unwrap_or_else(|p| p.into_inner());
                        }
                    }
                }
            };
            self.running.fetch_add(1, Ordering::Relaxed);
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(&mut memory)));
            self.running.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// Hashes running and hashes waiting for a core, for the metrics.
pub fn hash_load() -> (usize, usize) {
    let pool = HashPool::global();
    let queued = pool
        .shared
        .queue
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .len();
    (pool.shared.running.load(Ordering::Relaxed), queued)
}

/// A PHC string such as `$argon2id$v=19$m=19456,t=2,p=1$...`.
pub fn hash(secret: &str) -> String {
    let owned = secret.to_owned();
    HashPool::global()
        .run(move |_| hash_unbounded(&owned))
        .unwrap_or_else(|| hash_unbounded(secret))
}

fn hash_unbounded(secret: &str) -> String {
    let salt = SaltString::encode_b64(&super::random::bytes::<16>())
        .unwrap_or_else(|_| unreachable!("16 bytes always encode as a salt"));
    let hashed = hasher().hash_password(secret.as_bytes(), &salt);
    count_computation();
    match hashed {
        Ok(hash) => hash.to_string(),
        Err(e) => unreachable!("argon2 with valid parameters cannot fail: {e}"),
    }
}

/// Constant-time verification. Parameters are read from the PHC string, so hashes made with
/// older parameters still verify.
pub fn verify(secret: &str, phc: &str) -> bool {
    verification(secret, phc)
        .and_then(|job| HashPool::global().run(job))
        .unwrap_or(false)
}

/// `verify` for the HTTP handlers: awaited on the async worker, which neither hashes nor
/// lends a blocking-pool thread to wait for the hash (a burst of logins would otherwise
/// occupy every blocking thread, and every database request would queue behind the hashes).
pub async fn verify_async(secret: &str, phc: &str) -> bool {
    match verification(secret, phc) {
        Some(job) => HashPool::global().run_async(job).await.unwrap_or(false),
        None => false,
    }
}

/// Queues a verification of `secret` against `phc` that no caller waits on: `then` gets its
/// answer on the hash thread, whether or not whoever asked for it is still there. For a
/// string that is no hash, or without any hash thread, `then` is dropped unrun.
pub fn verify_detached(secret: &str, phc: &str, then: impl FnOnce(bool) + Send + 'static) {
    if let Some(job) = verification(secret, phc) {
        HashPool::global().detach(move |memory| then(job(memory)));
    }
}

/// The hash thread's job that verifies `secret` against `phc`; `None` for a string that is
/// no hash, which fails at once, without queueing behind other callers' hashes.
fn verification(
    secret: &str,
    phc: &str,
) -> Option<impl FnOnce(&mut HashMemory) -> bool + Send + 'static> {
    PasswordHash::new(phc).ok()?;
    let (secret, phc) = (secret.to_owned(), phc.to_owned());
    Some(move |memory: &mut HashMemory| verify_phc(&secret, &phc, memory))
}

/// `verify_dummy` for the HTTP handlers (see `verify_async`). The dummy hash is made on a
/// hash thread the first time, never on the async worker.
pub async fn verify_dummy_async(secret: &str) -> bool {
    let secret = secret.to_owned();
    let _ = HashPool::global()
        .run_async(move |memory| verify_phc(&secret, dummy_phc(), memory))
        .await;
    false
}

fn verify_phc(secret: &str, phc: &str, memory: &mut HashMemory) -> bool {
    PasswordHash::new(phc).is_ok_and(|parsed| verify_parsed(secret.as_bytes(), &parsed, memory))
}

/// `PasswordVerifier::verify_password`, but in the hash thread's working memory, which is
/// reused: argon2 otherwise allocates its 19 MiB afresh each time, and the allocator keeps a
/// freed block in each thread's arena, so RSS grew with the number of threads that ever
/// hashed (500 MiB under the password-grant benchmark) instead of with the hashes running.
/// The memory is backed by huge pages where the kernel allows (see `hash_memory`).
fn verify_parsed(secret: &[u8], hash: &PasswordHash<'_>, memory: &mut HashMemory) -> bool {
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
    let hashed =
        argon2.hash_password_into_with_memory(secret, salt, &mut computed, memory.blocks(blocks));
    count_computation();
    hashed.is_ok()
        && aws_lc_rs::constant_time::verify_slices_are_equal(&computed, expected.as_bytes()).is_ok()
}

/// Counts an argon2 computation where it happens, on the thread that computed it and so
/// before its caller hears the answer: whoever was answered sees the count include it.
fn count_computation() {
    crate::metrics::global().password_hash_computed();
}

/// Spends the same time as verifying against a real hash and always fails: used when there is
/// no such user or client, so that the answer's timing does not say which.
pub fn verify_dummy(secret: &str) -> bool {
    let _ = verify(secret, dummy_phc());
    false
}

/// Made on first use, by whichever thread needs it first (a hash thread, for the handlers).
fn dummy_phc() -> &'static str {
    static DUMMY: OnceLock<String> = OnceLock::new();
    DUMMY.get_or_init(|| hash_unbounded("gatehouse dummy password"))
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
    fn the_pool_never_runs_more_hashes_than_its_threads_at_once() {
        let pool = HashPool::start(2);
        let running = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let finished = std::thread::scope(|s| {
            let callers: Vec<_> = (0..8)
                .map(|caller| {
                    let (pool, running, most) = (&pool, Arc::clone(&running), Arc::clone(&most));
                    s.spawn(move || {
                        pool.run(move |_| {
                            let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                            most.fetch_max(now, Ordering::SeqCst);
                            std::thread::sleep(std::time::Duration::from_millis(20));
                            running.fetch_sub(1, Ordering::SeqCst);
                            caller
                        })
                    })
                })
                .collect();
            callers
                .into_iter()
                .map(|c| c.join().unwrap())
                .collect::<Vec<_>>()
        });
        assert_eq!(
            finished,
            (0..8).map(Some).collect::<Vec<_>>(),
            "each caller gets its own result"
        );
        assert_eq!(
            most.load(Ordering::SeqCst),
            2,
            "eight callers, two at a time"
        );
    }

    #[test]
    fn a_job_that_panics_fails_its_caller_and_spares_the_pool() {
        let pool = HashPool::start(1);
        assert_eq!(pool.run(|_| -> u8 { panic!("argon2 failed") }), None);
        assert_eq!(pool.run(|_| 7), Some(7));
    }

    #[test]
    fn other_algorithms_are_not_argon2id() {
        assert!(!is_argon2id_phc(
            "$argon2i$v=19$m=16,t=2,p=1$c29tZXNhbHQ$aGFzaGhhc2g"
        ));
        assert!(!is_argon2id_phc("plaintext"));
    }
}
