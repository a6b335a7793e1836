//! Revocation checks for introspection, coalesced. An introspection of an access token that
//! the introspection cache cannot answer asks the database whether the token was revoked
//! (another instance may have revoked it a moment ago), but concurrent requests need not ask
//! one at a time: each queues its `jti`, one task on the blocking pool answers everything
//! queued with one query and repeats until the queue is empty. A lookup queued while a
//! query runs waits for the next query, so every answer reflects the database as it was
//! after its request arrived.
//!
//! One query runs at a time: a statement that hangs holds up every introspection, as a
//! hung database would hold up each of them before. When the database is unreachable, every
//! queued lookup fails at once instead of one batch per pool timeout.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::oneshot;

use super::blocking::with_pooled_connection;
use super::HttpError;
use crate::storage::{tokens, Pool};

/// Bounds the IN list of one query (SQLite allows 32766 bound parameters).
const MAX_BATCH: usize = 256;

type Reply = oneshot::Sender<Result<bool, HttpError>>;

/// Which of the given jtis are revoked.
type Lookup = dyn Fn(&[&str]) -> Result<HashSet<String>, HttpError> + Send + Sync;

#[derive(Default)]
struct Queue {
    waiting: Vec<(String, Reply)>,
    /// A drain task is running or about to: lookups only need to queue.
    draining: bool,
}

pub struct RevocationLookups {
    lookup: Box<Lookup>,
    queue: Mutex<Queue>,
}

impl RevocationLookups {
    pub fn new(pool: Pool) -> Arc<RevocationLookups> {
        RevocationLookups::with_lookup(move |jtis| {
            with_pooled_connection(&pool, |conn| tokens::revoked_among(conn, jtis))
        })
    }

    fn with_lookup(
        lookup: impl Fn(&[&str]) -> Result<HashSet<String>, HttpError> + Send + Sync + 'static,
    ) -> Arc<RevocationLookups> {
        Arc::new(RevocationLookups {
            lookup: Box::new(lookup),
            queue: Mutex::new(Queue::default()),
        })
    }

    /// Whether the access token `jti` is recorded as revoked, or its family is.
    pub async fn is_revoked(self: &Arc<Self>, jti: String) -> Result<bool, HttpError> {
        let (reply, answer) = oneshot::channel();
        let start_draining = {
            let mut queue = self.lock();
            queue.waiting.push((jti, reply));
            !std::mem::replace(&mut queue.draining, true)
        };
        if start_draining {
            let drain = Drain {
                lookups: Arc::clone(self),
                finished: false,
            };
            // Detached: the task answers through the queued senders.
            drop(actix_web::rt::task::spawn_blocking(move || drain.run()));
        }
        answer
            .await
            .unwrap_or_else(|_| Err(HttpError::internal("revocation lookup was abandoned")))
    }

    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Answers every queued lookup, a batch per query, and returns once the queue is empty.
    fn drain(&self) {
        loop {
            let batch: Vec<(String, Reply)> = {
                let mut queue = self.lock();
                // Requests whose client went away need no query.
                queue.waiting.retain(|(_, reply)| !reply.is_closed());
                if queue.waiting.is_empty() {
                    queue.draining = false;
                    return;
                }
                let take = queue.waiting.len().min(MAX_BATCH);
                queue.waiting.drain(..take).collect()
            };
            let jtis: Vec<&str> = batch.iter().map(|(jti, _)| jti.as_str()).collect();
            let revoked =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (self.lookup)(&jtis)))
                    .unwrap_or_else(|_| Err(HttpError::internal("revocation lookup panicked")));
            let mut answered = batch;
            if let Err(outage @ HttpError::Unavailable(_)) = &revoked {
                // The next query would wait out the same pool timeout: fail them all now.
                // An error is no stale answer, so this costs no consistency.
                answered.append(&mut self.lock().waiting);
                tracing::warn!(error = %outage, failed = answered.len(), "revocation lookups failed");
            }
            for (jti, reply) in answered {
                let _ = reply.send(match &revoked {
                    Ok(set) => Ok(set.contains(&jti)),
                    Err(e) => Err(e.clone()),
                });
            }
        }
    }
}

/// The drain task. Should the runtime drop it unrun (shutdown) or should it unwind, the
/// lookups still queued are failed and the next lookup starts a new drain: no request waits
/// for a task that will never come.
struct Drain {
    lookups: Arc<RevocationLookups>,
    finished: bool,
}

impl Drain {
    fn run(mut self) {
        self.lookups.drain();
        self.finished = true;
    }
}

impl Drop for Drain {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let mut queue = self.lookups.lock();
        for (_, reply) in queue.waiting.drain(..) {
            let _ = reply.send(Err(HttpError::internal("revocation lookup did not run")));
        }
        queue.draining = false;
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use diesel::prelude::*;

    use super::*;
    use crate::storage::schema::access_tokens;
    use crate::storage::tokens::AccessRow;
    use crate::storage::{open_pool, run_migrations};

    /// A fresh SQLite pool; `migrated` decides whether it has any tables.
    fn pool(migrated: bool) -> (tempfile::TempDir, Pool) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("lookups.db").display());
        let pool = open_pool(&url, 2).unwrap();
        if migrated {
            run_migrations(&mut pool.get().unwrap()).unwrap();
        }
        (dir, pool)
    }

    fn record(pool: &Pool, jti: &str, revoked: bool) {
        let row = AccessRow {
            jti: jti.to_owned(),
            family_id: None,
            client_id: "service".to_owned(),
            expires_at: i64::MAX,
            revoked_at: revoked.then_some(1),
        };
        diesel::insert_into(access_tokens::table)
            .values(&row)
            .execute(&mut pool.get().unwrap())
            .unwrap();
    }

    /// Fails instead of hanging when an answer never comes.
    async fn ask(lookups: &Arc<RevocationLookups>, jti: &str) -> Result<bool, HttpError> {
        tokio::time::timeout(Duration::from_secs(10), lookups.is_revoked(jti.to_owned()))
            .await
            .expect("the lookup was never answered")
    }

    #[actix_web::test]
    async fn lookups_in_flight_together_each_get_their_own_answer() {
        let (_dir, pool) = pool(true);
        for i in 0..60 {
            record(&pool, &format!("jti-{i}"), i % 4 == 1);
        }
        let lookups = RevocationLookups::new(pool);
        // Recorded, revoked or not, and never recorded (a live client-credentials token).
        let tasks: Vec<_> = (0..80)
            .map(|i| {
                let lookups = Arc::clone(&lookups);
                actix_web::rt::spawn(async move {
                    (i, ask(&lookups, &format!("jti-{i}")).await.unwrap())
                })
            })
            .collect();
        for task in tasks {
            let (i, revoked) = task.await.unwrap();
            assert_eq!(revoked, i < 60 && i % 4 == 1, "jti-{i}");
        }
    }

    #[actix_web::test]
    async fn a_failed_query_fails_its_lookups_and_the_next_lookup_runs_again() {
        let (_dir, pool) = pool(false);
        let lookups = RevocationLookups::new(pool.clone());
        assert!(matches!(
            ask(&lookups, "jti").await,
            Err(HttpError::Internal(_))
        ));
        run_migrations(&mut pool.get().unwrap()).unwrap();
        record(&pool, "jti", true);
        assert!(ask(&lookups, "jti").await.unwrap());
    }

    #[test]
    fn a_drain_that_never_ran_fails_what_was_queued_and_lets_the_next_one_start() {
        let (_dir, pool) = pool(true);
        let lookups = RevocationLookups::new(pool);
        let (reply, mut answer) = oneshot::channel();
        {
            let mut queue = lookups.lock();
            queue.waiting.push(("jti".to_owned(), reply));
            queue.draining = true;
        }
        drop(Drain {
            lookups: Arc::clone(&lookups),
            finished: false,
        });
        assert!(matches!(answer.try_recv(), Ok(Err(HttpError::Internal(_)))));
        let queue = lookups.lock();
        assert!(!queue.draining && queue.waiting.is_empty());
    }

    /// A lookup function that reports each call's batch, then waits for the test's word.
    struct Scripted {
        calls: std::sync::mpsc::Receiver<Vec<String>>,
        proceed: std::sync::mpsc::Sender<Result<HashSet<String>, HttpError>>,
        lookups: Arc<RevocationLookups>,
    }

    fn scripted() -> Scripted {
        let (call_tx, calls) = std::sync::mpsc::channel();
        let (proceed, answer_rx) = std::sync::mpsc::channel();
        let (call_tx, answer_rx) = (Mutex::new(call_tx), Mutex::new(answer_rx));
        let lookups = RevocationLookups::with_lookup(move |jtis| {
            let batch = jtis.iter().map(|jti| jti.to_string()).collect();
            call_tx.lock().unwrap().send(batch).unwrap();
            answer_rx.lock().unwrap().recv().unwrap()
        });
        Scripted {
            calls,
            proceed,
            lookups,
        }
    }

    /// Waits, yielding to the runtime, until `done` holds.
    async fn until(mut done: impl FnMut() -> bool) {
        tokio::time::timeout(Duration::from_secs(10), async {
            while !done() {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
        .await
        .expect("waited 10 s");
    }

    #[actix_web::test]
    async fn a_lookup_queued_while_a_query_runs_is_answered_by_a_later_query() {
        let s = scripted();
        let first = actix_web::rt::spawn({
            let lookups = Arc::clone(&s.lookups);
            async move { ask(&lookups, "a").await }
        });
        let mut first_batch = None;
        until(|| {
            first_batch = first_batch.take().or_else(|| s.calls.try_recv().ok());
            first_batch.is_some()
        })
        .await;
        // The first query has started; "b" arrives now, and is revoked in between.
        let second = actix_web::rt::spawn({
            let lookups = Arc::clone(&s.lookups);
            async move { ask(&lookups, "b").await }
        });
        until(|| s.lookups.lock().waiting.len() == 1).await;
        s.proceed.send(Ok(HashSet::new())).unwrap();
        let mut second_batch = None;
        until(|| {
            second_batch = second_batch.take().or_else(|| s.calls.try_recv().ok());
            second_batch.is_some()
        })
        .await;
        s.proceed.send(Ok(HashSet::from(["b".to_owned()]))).unwrap();

        assert_eq!(first_batch.unwrap(), ["a"]);
        assert_eq!(second_batch.unwrap(), ["b"]);
        assert!(!first.await.unwrap().unwrap());
        assert!(second.await.unwrap().unwrap(), "b saw the revocation");
    }

    #[actix_web::test]
    async fn an_unreachable_database_fails_every_queued_lookup_at_once() {
        let s = scripted();
        let asking = |jti: &'static str| {
            let lookups = Arc::clone(&s.lookups);
            actix_web::rt::spawn(async move { ask(&lookups, jti).await })
        };
        let first = asking("a");
        let mut started = false;
        until(|| {
            started = started || s.calls.try_recv().is_ok();
            started
        })
        .await;
        let queued = [asking("b"), asking("c")];
        until(|| s.lookups.lock().waiting.len() == 2).await;
        s.proceed
            .send(Err(HttpError::Unavailable("pool timed out".into())))
            .unwrap();
        for task in std::iter::once(first).chain(queued) {
            assert!(matches!(
                task.await.unwrap(),
                Err(HttpError::Unavailable(_))
            ));
        }
        assert!(s.calls.try_recv().is_err(), "no second query was made");
    }
}
