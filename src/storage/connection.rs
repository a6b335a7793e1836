use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use diesel::r2d2;

use diesel::connection::SimpleConnection;
use diesel::{Connection, PgConnection, RunQueryDsl, SqliteConnection};

use super::{StorageError, StorageResult};

#[derive(diesel::MultiConnection)]
pub enum DbConnection {
    Postgresql(PgConnection),
    Sqlite(SqliteConnection),
}

pub type PooledConnection = r2d2::PooledConnection<ConnectionManager>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Postgres,
    Sqlite,
}

impl Backend {
    /// The backend named by the URL scheme, and the string diesel expects for it.
    pub fn from_url(url: &str) -> StorageResult<(Backend, String)> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok((Backend::Postgres, url.to_owned()))
        } else if let Some(path) = url.strip_prefix("sqlite://") {
            if path.is_empty() {
                return Err(StorageError::UnsupportedUrl);
            }
            Ok((Backend::Sqlite, path.to_owned()))
        } else {
            Err(StorageError::UnsupportedUrl)
        }
    }
}

/// An r2d2 manager that opens the backend the URL names. diesel's own manager would call
/// `MultiConnection::establish`, which tries every backend in turn and so would quietly
/// create a SQLite file named after a mistyped PostgreSQL URL.
#[derive(Debug)]
pub struct ConnectionManager {
    backend: Backend,
    target: String,
    /// SQLite only: the server checkpoints the WAL on a timer (see `checkpoint`) instead of
    /// letting whichever request commits past 1000 pages do it while other writers wait.
    background_checkpoints: bool,
}

/// One connection for every write of a pool. In WAL mode a connection drops its whole page
/// cache when another connection has written since its last transaction; with writes
/// spread over the pool's connections that was every write, which then read each page it
/// touched back from the file (a fifth of the time the writer gate was held under the
/// authorization-code flow). A connection that does all of the process's writes keeps its
/// cache.
pub struct DedicatedWriter {
    manager: ConnectionManager,
    /// Opened on the first write.
    connection: std::sync::Mutex<Option<DbConnection>>,
}

impl DedicatedWriter {
    /// Runs `work` on the writer's connection, opening it when there is none yet. The
    /// caller holds the writer gate.
    ///
    /// A connection that `work` leaves inside a transaction (it panicked) or with diesel's
    /// transaction manager in error (a ROLLBACK failed) is closed at once, which rolls back
    /// what it left open and releases SQLite's write lock; the next write opens a fresh
    /// one. Kept, it would fail every later write of the process.
    pub(super) fn run<T>(
        &self,
        work: impl FnOnce(&mut DbConnection) -> StorageResult<T>,
    ) -> StorageResult<T> {
        let mut slot = self
            .connection
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let connection = match slot.as_mut() {
            Some(connection) => connection,
            None => slot.insert(self.manager.connect()?),
        };
        let outcome =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| work(&mut *connection)));
        if outcome.is_err() || !outside_any_transaction(connection) {
            *slot = None;
        }
        drop(slot);
        outcome.unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    }
}

/// Whether the connection is usable for the next write: no transaction left open, and
/// diesel's transaction manager not in error.
fn outside_any_transaction(conn: &mut DbConnection) -> bool {
    use diesel::connection::TransactionManager;
    matches!(
        <DbConnection as Connection>::TransactionManager::transaction_manager_status_mut(conn)
            .transaction_depth(),
        Ok(None)
    )
}

/// The server's connections: a pool, and on SQLite the dedicated writer beside it.
#[derive(Clone)]
pub struct Pool {
    connections: r2d2::Pool<ConnectionManager>,
    writer: Option<Arc<DedicatedWriter>>,
}

impl Pool {
    pub(super) fn dedicated_writer(&self) -> Option<Arc<DedicatedWriter>> {
        self.writer.clone()
    }
}

impl std::ops::Deref for Pool {
    type Target = r2d2::Pool<ConnectionManager>;

    fn deref(&self) -> &Self::Target {
        &self.connections
    }
}

const SQLITE_BUSY_TIMEOUT_MS: u32 = 5_000;
const WAL_SIZE_LIMIT: u64 = 64 * 1024 * 1024;

impl ConnectionManager {
    pub fn new(url: &str) -> StorageResult<Self> {
        let (backend, target) = Backend::from_url(url)?;
        if backend == Backend::Sqlite {
            if let Some(parent) = std::path::Path::new(&target).parent() {
                if !parent.as_os_str().is_empty() {
                    std::fs::create_dir_all(parent).map_err(|source| {
                        StorageError::SqliteDirectory {
                            path: target.clone(),
                            source,
                        }
                    })?;
                }
            }
        }
        Ok(ConnectionManager {
            backend,
            target,
            background_checkpoints: false,
        })
    }

    pub fn connect(&self) -> StorageResult<DbConnection> {
        match self.backend {
            Backend::Postgres => Ok(DbConnection::Postgresql(PgConnection::establish(
                &self.target,
            )?)),
            Backend::Sqlite => {
                let mut conn = SqliteConnection::establish(&self.target)?;
                // WAL lets readers run beside the one writer; busy_timeout makes writers
                // queue instead of failing with SQLITE_BUSY under concurrent requests.
                for pragma in [
                    format!("PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}"),
                    "PRAGMA journal_mode = WAL".to_owned(),
                    "PRAGMA synchronous = NORMAL".to_owned(),
                    "PRAGMA foreign_keys = ON".to_owned(),
                ] {
                    diesel::sql_query(pragma).execute(&mut conn)?;
                }
                if self.background_checkpoints {
                    diesel::sql_query("PRAGMA wal_autocheckpoint = 0").execute(&mut conn)?;
                    // A restarted log keeps its file, so that writes reuse pages the kernel
                    // already has; after a burst, the file is cut back to this size.
                    diesel::sql_query(format!("PRAGMA journal_size_limit = {WAL_SIZE_LIMIT}"))
                        .execute(&mut conn)?;
                }
                Ok(DbConnection::Sqlite(conn))
            }
        }
    }
}

/// The server's timed checkpoint of the SQLite write-ahead log (`run`). It remembers how
/// many ticks in a row could not restart the log, because each of them lets the log grow by
/// a tick's writes, and waits longer for readers the more there were.
#[derive(Debug, Default)]
pub struct Checkpoints {
    missed_restarts: AtomicU32,
}

impl Checkpoints {
    /// Copies the write-ahead log into the database file and makes sure the next write starts
    /// the log again from its beginning. The server runs it on a timer because its
    /// connections do not checkpoint on commit. Nothing to do on PostgreSQL.
    ///
    /// A PASSIVE checkpoint alone is not enough under load: the log restarts only when a
    /// write begins after a checkpoint that copied everything, and with writes arriving every
    /// few hundred microseconds and some reader always inside the log that never happened, so
    /// the -wal file grew by every write (800 MB in ten seconds of authorization-code flows).
    /// So the bulk is copied first beside the writers; then, with our own writers held at the
    /// process's writer gate, the rest is copied and a RESTART checkpoint waits for the
    /// readers of older snapshots to leave, after which the next writer restarts the log.
    /// SQLite's busy handler is off for that wait and the wait is bounded, because readers
    /// that keep arriving could otherwise starve it while our writers wait at the gate. The
    /// bound starts at a few milliseconds, enough for the server's own readers, and doubles
    /// with every tick in a row that missed the restart (see `restart_patience`): on a loaded
    /// machine a reader can be descheduled inside its transaction for longer than that, and a
    /// fixed bound then missed tick after tick while the log grew.
    pub fn run(&self, conn: &mut DbConnection) -> StorageResult<()> {
        let DbConnection::Sqlite(sqlite) = conn else {
            return Ok(());
        };
        sqlite.batch_execute("PRAGMA wal_checkpoint(PASSIVE)")?;
        let patience = restart_patience(self.missed_restarts.load(Ordering::Relaxed));
        // Under the gate `write` may hand over another connection (the dedicated writer), so
        // the busy handler is switched off on whichever connection runs the RESTART.
        let restarted = super::write(conn, |conn| {
            let DbConnection::Sqlite(sqlite) = conn else {
                return Ok(true);
            };
            sqlite.batch_execute("PRAGMA busy_timeout = 0")?;
            let restarted = restart_log(sqlite, patience);
            let restored =
                sqlite.batch_execute(&format!("PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}"));
            restored?;
            restarted
        })?;
        if restarted {
            self.missed_restarts.store(0, Ordering::Relaxed);
            return Ok(());
        }
        let missed = self.missed_restarts.fetch_add(1, Ordering::Relaxed) + 1;
        let waited_ms = patience.as_millis() as u64;
        if patience == restart_patience(RESTART_WAIT_DOUBLINGS) {
            tracing::warn!(
                missed,
                waited_ms,
                "a reader stayed inside the SQLite write-ahead log for the longest wait; \
                 the log grows until it leaves (an open transaction in another process?)"
            );
        } else {
            tracing::debug!(missed, waited_ms, "readers kept the WAL from restarting");
        }
        Ok(())
    }
}

/// Retries a RESTART checkpoint until it finishes or `patience` has passed; true when it
/// finished.
fn restart_log(sqlite: &mut SqliteConnection, patience: Duration) -> StorageResult<bool> {
    let deadline = std::time::Instant::now() + patience;
    loop {
        let outcome: CheckpointOutcome =
            diesel::sql_query("PRAGMA wal_checkpoint(RESTART)").get_result(sqlite)?;
        if outcome.busy == 0 {
            return Ok(true);
        }
        if std::time::Instant::now() >= deadline {
            return Ok(false);
        }
        std::thread::sleep(Duration::from_micros(100));
    }
}

/// How long the writers may be held while a checkpoint waits for readers to leave the log,
/// after `missed` ticks in a row that could not restart it. Past the longest wait it starts
/// again from the shortest, so that a reader that never leaves holds the writers for the
/// longest wait only at every fifth tick, not at every one.
fn restart_patience(missed: u32) -> Duration {
    RESTART_WAIT * (1 << (missed % (RESTART_WAIT_DOUBLINGS + 1)))
}

/// The first wait for readers to leave the log; past it, the log restarts at a later tick.
const RESTART_WAIT: Duration = Duration::from_millis(5);

/// How often the wait doubles at most (to 80 ms): a reader that never leaves (an open
/// transaction in a `sqlite3` shell) holds the writers for a bounded time per tick.
const RESTART_WAIT_DOUBLINGS: u32 = 4;

#[derive(diesel::QueryableByName)]
struct CheckpointOutcome {
    /// 1 when readers or a writer kept the checkpoint from finishing.
    #[diesel(sql_type = diesel::sql_types::Integer)]
    busy: i32,
}

impl r2d2::ManageConnection for ConnectionManager {
    type Connection = DbConnection;
    type Error = StorageError;

    fn connect(&self) -> Result<DbConnection, StorageError> {
        ConnectionManager::connect(self)
    }

    fn is_valid(&self, conn: &mut DbConnection) -> Result<(), StorageError> {
        super::ping(conn)
    }

    fn has_broken(&self, _conn: &mut DbConnection) -> bool {
        false
    }
}

/// Opens the server's pool; fails at once when the database cannot be reached, so that a bad URL
/// stops the start with a clear message instead of a server that answers 503 forever.
pub fn open_pool(url: &str, max_size: u32) -> StorageResult<Pool> {
    let server_manager = || {
        ConnectionManager::new(url).map(|mut manager| {
            manager.background_checkpoints = true;
            manager
        })
    };
    let manager = server_manager()?;
    let writer = match manager.backend {
        Backend::Sqlite => Some(Arc::new(DedicatedWriter {
            manager: server_manager()?,
            connection: std::sync::Mutex::new(None),
        })),
        Backend::Postgres => None,
    };
    let pool = r2d2::Pool::builder()
        .max_size(max_size)
        .min_idle(Some(1))
        .connection_timeout(Duration::from_secs(5))
        .test_on_check_out(false)
        .build(manager)?;
    Ok(Pool {
        connections: pool,
        writer,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_restart_wait_doubles_with_each_missed_tick_then_starts_again() {
        let waits: Vec<u128> = (0..12).map(|m| restart_patience(m).as_millis()).collect();
        assert_eq!(waits, [5, 10, 20, 40, 80, 5, 10, 20, 40, 80, 5, 10]);
        assert!(restart_patience(u32::MAX) <= Duration::from_millis(80));
    }
}
