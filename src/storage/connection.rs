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
    /// SQLite only: the server checkpoints the WAL on a timer (see `Checkpoints`) instead of
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

/// The server's timed checkpoint of the SQLite write-ahead log (`run`), with how long it
/// waits for readers at the next tick (`Patience`).
#[derive(Debug, Default)]
pub struct Checkpoints {
    patience: std::sync::Mutex<Patience>,
}

impl Checkpoints {
    /// Copies the write-ahead log into the database file and makes sure the next write starts
    /// the log again from its beginning; true when it did. The server runs it on a timer
    /// because its connections do not checkpoint on commit. Nothing to do on PostgreSQL.
    ///
    /// A PASSIVE checkpoint alone is not enough under load: the log restarts only when a
    /// write begins after a checkpoint that copied everything, and with writes arriving every
    /// few hundred microseconds and some reader always inside the log that never happened, so
    /// the -wal file grew by every write (800 MB in ten seconds of authorization-code flows).
    /// So the bulk is copied first beside the writers; then, with our own writers held at the
    /// process's writer gate, the rest is copied and a RESTART checkpoint waits for the
    /// readers inside the log to leave (readers that begin once it is all copied read the
    /// database file and do not hold it up), after which the next writer restarts the log.
    /// The wait is ours, bounded by `Patience`, with SQLite's busy handler off: the handler
    /// would hold our writers at the gate for up to its whole timeout (5 s) behind a reader
    /// that does not leave.
    pub fn run(&self, conn: &mut DbConnection) -> StorageResult<bool> {
        let DbConnection::Sqlite(sqlite) = conn else {
            return Ok(true);
        };
        sqlite.batch_execute("PRAGMA wal_checkpoint(PASSIVE)")?;
        let mut patience = self.patience.lock().unwrap_or_else(|p| p.into_inner());
        let wait = patience.wait();
        // Under the gate `write` may hand over another connection (the dedicated writer), so
        // the busy handler is switched off on whichever connection runs the RESTART.
        let restarted = super::write(conn, |conn| {
            let DbConnection::Sqlite(sqlite) = conn else {
                return Ok(true);
            };
            sqlite.batch_execute("PRAGMA busy_timeout = 0")?;
            let restarted = restart_log(sqlite, wait);
            let restored =
                sqlite.batch_execute(&format!("PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}"));
            let restarted = restarted?;
            restored?;
            Ok(restarted)
        })?;
        let before = *patience;
        *patience = before.after(restarted);
        let wait_ms = wait.as_millis() as u64;
        match (before.stuck, patience.stuck) {
            (false, true) => tracing::warn!(
                wait_ms,
                "the SQLite write-ahead log cannot restart: something stays inside it (an open \
                 transaction in another process?) and it grows until that ends"
            ),
            (true, false) => tracing::info!("the SQLite write-ahead log restarts again"),
            _ if !restarted => tracing::debug!(
                wait_ms,
                "readers kept the SQLite write-ahead log from restarting"
            ),
            _ => {}
        }
        Ok(restarted)
    }
}

/// Retries a RESTART checkpoint until it finishes or, after the first try (which copies what
/// is left of the log), `wait` has passed; true when it finished.
fn restart_log(sqlite: &mut SqliteConnection, wait: Duration) -> StorageResult<bool> {
    let mut deadline = None;
    loop {
        let outcome: CheckpointOutcome =
            diesel::sql_query("PRAGMA wal_checkpoint(RESTART)").get_result(sqlite)?;
        if outcome.busy == 0 {
            return Ok(true);
        }
        let deadline = *deadline.get_or_insert_with(|| std::time::Instant::now() + wait);
        if std::time::Instant::now() >= deadline {
            return Ok(false);
        }
        std::thread::sleep(Duration::from_micros(100));
    }
}

/// How long a checkpoint holds the writers while it waits for readers to leave the log.
///
/// The wait starts at 5 ms, enough for the server's own readers on an idle machine, doubles
/// with every miss up to 80 ms, and steps down by one after each restart: on a loaded
/// machine a reader descheduled inside its transaction outlasts 5 ms, and a fixed 5 ms then
/// missed tick after tick while the log grew (52 MB in a CI run of the storage test). A
/// longer wait costs nothing when readers leave sooner. A miss at 80 ms means something
/// stays inside the log, and waiting cannot help: the checkpoint then rests, waiting 5 ms
/// for `RESTING_TICKS` ticks before it tries 80 ms again, so that the writers are held about
/// 5% of the time instead of a third.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Patience {
    /// The wait is `RESTART_WAIT` doubled this many times (at most `LONGEST`).
    level: u32,
    /// Ticks left to rest after a miss at the longest wait.
    resting: u32,
    /// No restart since a miss at the longest wait.
    stuck: bool,
}

impl Patience {
    const LONGEST: u32 = 4;
    const RESTING_TICKS: u32 = 8;

    fn wait(&self) -> Duration {
        let level = if self.is_resting() { 0 } else { self.level };
        RESTART_WAIT * (1 << level.min(Self::LONGEST))
    }

    fn is_resting(&self) -> bool {
        self.resting > 0
    }

    /// The patience for the next tick, after this one `restarted` the log or not.
    fn after(self, restarted: bool) -> Patience {
        if restarted {
            return Patience {
                level: self.level.saturating_sub(1),
                resting: 0,
                stuck: false,
            };
        }
        if self.is_resting() {
            return Patience {
                resting: self.resting - 1,
                ..self
            };
        }
        if self.level < Self::LONGEST {
            return Patience {
                level: self.level + 1,
                ..self
            };
        }
        Patience {
            resting: Self::RESTING_TICKS,
            stuck: true,
            ..self
        }
    }
}

/// The first wait for readers to leave the log (see `Patience`).
const RESTART_WAIT: Duration = Duration::from_millis(5);

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

    /// The waits of successive ticks that each restart the log or not.
    fn waits(outcomes: &[bool]) -> Vec<u128> {
        let mut patience = Patience::default();
        let mut waits = vec![];
        for &restarted in outcomes {
            waits.push(patience.wait().as_millis());
            patience = patience.after(restarted);
        }
        waits
    }

    #[test]
    fn the_wait_doubles_with_each_miss_and_steps_down_with_each_restart() {
        let (miss, hit) = (false, true);
        assert_eq!(
            waits(&[hit, miss, miss, hit, hit, hit, miss, miss, miss, hit]),
            [5, 5, 10, 20, 10, 5, 5, 10, 20, 40]
        );
    }

    #[test]
    fn after_a_miss_at_the_longest_wait_the_checkpoint_rests_before_it_tries_again() {
        let mut outcomes = vec![false; 5 + 8 + 1];
        outcomes.push(true);
        outcomes.push(true);
        let expected: Vec<u128> = [5, 10, 20, 40, 80]
            .into_iter()
            .chain([5; 8])
            .chain([80, 5, 40])
            .collect();
        assert_eq!(waits(&outcomes), expected);
    }
}
