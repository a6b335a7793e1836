//! Storage: diesel only. One code path for PostgreSQL and SQLite through diesel's
//! `MultiConnection`; the backend is chosen from the URL scheme, never guessed. The hot
//! lookups and the prepared statements run on the connection it wraps
//! (`on_native_connection!`), where diesel finds a prepared statement without rendering
//! its SQL first.
//!
//! Lookups by a unique key end in `get_result`, not `first`: `first` adds `LIMIT ?`, and
//! SQLite (3.47 on) plans with the bound LIMIT value and so re-prepares such a statement
//! on every execution, which cost about 7% of the CPU of a refresh grant.

pub mod audit;
pub mod auth_failures;
pub mod clients;
pub mod codes;
mod connection;
pub mod consents;
pub mod keys;
mod prepared;
pub mod revocation_log;
pub mod schema;
pub mod sessions;
pub mod tokens;
pub mod users;

pub use connection::{
    open_pool, Backend, Checkpoints, ConnectionManager, DbConnection, Pool, PooledConnection,
};

use connection::DedicatedWriter;
use std::sync::Arc;

use diesel::{Connection, RunQueryDsl};
use diesel_migrations::{embed_migrations, EmbeddedMigrations, MigrationHarness};

const SQLITE_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/sqlite");
const POSTGRES_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/postgresql");

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("database url must start with sqlite:// or postgres://")]
    UnsupportedUrl,
    #[error("cannot open the database: {0}")]
    Connect(#[from] diesel::ConnectionError),
    #[error("database pool: {0}")]
    Pool(#[from] diesel::r2d2::PoolError),
    #[error("database query failed: {0}")]
    Query(#[from] diesel::result::Error),
    #[error("database migration failed: {0}")]
    Migration(String),
    #[error("the database schema is behind this binary ({0} pending migrations); run `gatehouse migrate`")]
    PendingMigrations(usize),
    #[error("cannot create the directory for the SQLite file {path}: {source}")]
    SqliteDirectory {
        path: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Conflict(String),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
}

pub type StorageResult<T> = Result<T, StorageError>;

impl StorageError {
    /// A failure that says nothing about the request and may pass: the database cannot be
    /// reached, or SQLite stayed locked past its busy timeout (another process, a backup or
    /// a hand-run `sqlite3` session, held the write lock). The statement wrote nothing.
    pub fn is_transient(&self) -> bool {
        match self {
            StorageError::Pool(_) | StorageError::Connect(_) => true,
            // SQLITE_BUSY; diesel files it under Unknown, with SQLite's own message.
            StorageError::Query(diesel::result::Error::DatabaseError(
                diesel::result::DatabaseErrorKind::Unknown,
                info,
            )) => info.message() == "database is locked",
            _ => false,
        }
    }
}

/// Runs a diesel query on the connection `MultiConnection` wraps:
/// `on_native_connection!(conn, |c| query.get_result(c))`, the query built in each arm
/// (a query that selects a struct names its backend in its type). Through the wrapper,
/// diesel renders the query's whole SQL text again on each of its passes over the query
/// (to ask whether the statement may be kept prepared, to collect the binds) before it
/// looks the statement up in its cache, on every execution: under the refresh grant that
/// was an eighth of what gatehouse executed besides the RSA signature (callgrind). On the
/// connection itself, a query with a static query id is found in the cache at once.
/// Exported for the load benchmark's least server, which must run its statements the same way.
#[macro_export]
macro_rules! on_native_connection {
    ($conn:expr, |$c:ident| $body:expr) => {
        match $conn {
            $crate::storage::DbConnection::Postgresql($c) => $body,
            $crate::storage::DbConnection::Sqlite($c) => $body,
        }
    };
}
pub use crate::on_native_connection;

/// Applies every pending migration of the connection's backend; returns how many ran.
pub fn run_migrations(conn: &mut DbConnection) -> StorageResult<usize> {
    let applied = match conn {
        DbConnection::Sqlite(c) => c.run_pending_migrations(SQLITE_MIGRATIONS).map(|v| v.len()),
        DbConnection::Postgresql(c) => c
            .run_pending_migrations(POSTGRES_MIGRATIONS)
            .map(|v| v.len()),
    };
    applied.map_err(|e| StorageError::Migration(e.to_string()))
}

/// Fails when the schema is older than this binary, so that a server started with
/// `database.migrate_on_start = false` never runs against a half-made schema.
pub fn ensure_migrated(conn: &mut DbConnection) -> StorageResult<()> {
    let pending = match conn {
        DbConnection::Sqlite(c) => c.pending_migrations(SQLITE_MIGRATIONS).map(|v| v.len()),
        DbConnection::Postgresql(c) => c.pending_migrations(POSTGRES_MIGRATIONS).map(|v| v.len()),
    }
    .map_err(|e| StorageError::Migration(e.to_string()))?;
    match pending {
        0 => Ok(()),
        n => Err(StorageError::PendingMigrations(n)),
    }
}

/// One SQLite writer per process at a time. SQLite itself admits one writer per database;
/// when two of our own connections collide, the loser sleeps in SQLite's busy handler in
/// steps of 1, 2, 5, 10 … 100 ms, which under load left the CPU idle and put tens of
/// milliseconds on p99. Queuing our own writers on a mutex instead hands the lock over as
/// soon as it is free; the busy handler (`busy_timeout`) is left for other processes, such
/// as the admin CLI. PostgreSQL has row locks and needs no gate.
static SQLITE_WRITER: std::sync::Mutex<()> = std::sync::Mutex::new(());

thread_local! {
    /// Whether this thread holds the gate already, so that a write inside a write (a
    /// storage function calling another) does not wait on itself.
    static HOLDS_SQLITE_WRITER: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `work`, which writes, behind the SQLite writer gate (see `SQLITE_WRITER`). Work of
/// more than one statement that must be atomic goes through `write_transaction` instead.
pub fn write<T>(
    conn: &mut DbConnection,
    work: impl FnOnce(&mut DbConnection) -> StorageResult<T>,
) -> StorageResult<T> {
    let gated = matches!(conn, DbConnection::Sqlite(_)) && !HOLDS_SQLITE_WRITER.get();
    if !gated {
        return work(conn);
    }
    // A panic while holding the gate leaves nothing behind to protect: the mutex guards no
    // data, SQLite rolls back the half-done transaction.
    let _gate = SQLITE_WRITER
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    HOLDS_SQLITE_WRITER.set(true);
    let _release = ReleaseOnDrop;
    match WRITES_THROUGH.with_borrow(Clone::clone) {
        Some(writer) => writer.run(work),
        None => work(conn),
    }
}

thread_local! {
    /// The dedicated writer this thread's SQLite writes go through while it works for the
    /// pool it belongs to (see `writes_through`).
    static WRITES_THROUGH: std::cell::RefCell<Option<Arc<DedicatedWriter>>> =
        const { std::cell::RefCell::new(None) };
}

/// Sends this thread's SQLite writes through `pool`'s dedicated writer connection until the
/// returned guard is dropped. Without it, a write runs on the connection it was given.
pub fn writes_through(pool: &Pool) -> WritesThrough {
    WritesThrough(WRITES_THROUGH.replace(pool.dedicated_writer()))
}

/// Restores the thread's previous writer when dropped.
pub struct WritesThrough(Option<Arc<DedicatedWriter>>);

impl Drop for WritesThrough {
    fn drop(&mut self) {
        WRITES_THROUGH.set(self.0.take());
    }
}

/// `write`, in one transaction.
pub fn write_transaction<T>(
    conn: &mut DbConnection,
    work: impl FnOnce(&mut DbConnection) -> StorageResult<T>,
) -> StorageResult<T> {
    write(conn, |conn| conn.transaction(work))
}

/// Whether a write on `conn` would join a transaction the caller already holds open (on
/// SQLite, any `write` in progress on this thread), and so commit only when that one does.
pub fn in_open_transaction(conn: &mut DbConnection) -> bool {
    use diesel::connection::TransactionManager;
    let depth =
        <DbConnection as Connection>::TransactionManager::transaction_manager_status_mut(conn)
            .transaction_depth();
    HOLDS_SQLITE_WRITER.get() || !matches!(depth, Ok(None))
}

/// Clears the thread's gate flag however `write`'s work ends, panics included.
struct ReleaseOnDrop;

impl Drop for ReleaseOnDrop {
    fn drop(&mut self) {
        HOLDS_SQLITE_WRITER.set(false);
    }
}

/// The cheapest query that proves the database answers.
pub fn ping(conn: &mut DbConnection) -> StorageResult<()> {
    diesel::sql_query("SELECT 1").execute(conn)?;
    Ok(())
}

pub fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sqlite() -> (tempfile::TempDir, DbConnection) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("gate.db").display());
        let conn = ConnectionManager::new(&url).unwrap().connect().unwrap();
        (dir, conn)
    }

    #[derive(diesel::QueryableByName)]
    struct CompileOption {
        #[diesel(sql_type = diesel::sql_types::Text)]
        compile_options: String,
    }

    /// .cargo/config.toml builds SQLite without the two process-wide mutexes every pooled
    /// connection would otherwise queue on (see there).
    #[test]
    fn sqlite_is_built_without_process_wide_allocation_locks() {
        let (_dir, mut conn) = sqlite();
        let options: Vec<String> = diesel::sql_query("PRAGMA compile_options")
            .load::<CompileOption>(&mut conn)
            .unwrap()
            .into_iter()
            .map(|o| o.compile_options)
            .collect();
        assert!(
            options.iter().any(|o| o == "DEFAULT_MEMSTATUS=0"),
            "memory statistics are on: {options:?}"
        );
        assert!(
            !options.iter().any(|o| o == "ENABLE_MEMORY_MANAGEMENT"),
            "one page-cache group for all connections: {options:?}"
        );
    }

    /// SQLITE_BUSY from a lock held by another connection is transient (503); other
    /// database errors of the same diesel kind are not.
    #[test]
    fn only_a_locked_database_among_query_errors_is_transient() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("busy.db").display());
        let connect = || ConnectionManager::new(&url).unwrap().connect().unwrap();
        let (mut holder, mut waiter) = (connect(), connect());
        diesel::sql_query("CREATE TABLE t (x INTEGER PRIMARY KEY)")
            .execute(&mut holder)
            .unwrap();
        diesel::sql_query("BEGIN EXCLUSIVE")
            .execute(&mut holder)
            .unwrap();
        diesel::sql_query("PRAGMA busy_timeout = 0")
            .execute(&mut waiter)
            .unwrap();
        let busy = diesel::sql_query("INSERT INTO t VALUES (1)").execute(&mut waiter);
        let busy = StorageError::from(busy.unwrap_err());
        assert!(busy.is_transient(), "{busy}");
        diesel::sql_query("COMMIT").execute(&mut holder).unwrap();

        let unknown_table =
            diesel::sql_query("INSERT INTO nowhere VALUES (1)").execute(&mut waiter);
        assert!(!StorageError::from(unknown_table.unwrap_err()).is_transient());
        diesel::sql_query("INSERT INTO t VALUES (1)")
            .execute(&mut waiter)
            .unwrap();
        let duplicate = diesel::sql_query("INSERT INTO t VALUES (1)").execute(&mut waiter);
        assert!(!StorageError::from(duplicate.unwrap_err()).is_transient());
    }

    #[test]
    fn a_write_inside_a_write_does_not_wait_on_itself() {
        let (_dir, mut conn) = sqlite();
        let nested = write_transaction(&mut conn, |conn| {
            write(conn, |conn| {
                diesel::sql_query("CREATE TABLE t (x INTEGER)").execute(conn)?;
                Ok(7)
            })
        });
        assert_eq!(nested.unwrap(), 7);
    }

    /// What keeps a revocation from being recorded before it commits (`tokens::recorded`).
    #[test]
    fn an_open_transaction_or_write_is_recognised() {
        let (_dir, mut conn) = sqlite();
        assert!(!in_open_transaction(&mut conn));
        let inside_transaction =
            conn.transaction(|conn| Ok::<_, diesel::result::Error>(in_open_transaction(conn)));
        assert!(inside_transaction.unwrap());
        let inside_write = write(&mut conn, |conn| Ok(in_open_transaction(conn)));
        assert!(inside_write.unwrap());
        assert!(!in_open_transaction(&mut conn));
    }

    #[test]
    fn a_panic_inside_a_write_releases_the_gate() {
        let (_dir, mut conn) = sqlite();
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _ = write(&mut conn, |_| -> StorageResult<()> { panic!("boom") });
        }));
        assert!(panicked.is_err());
        // Another thread must get the gate, and this thread must take it again.
        let (_other_dir, mut other) = sqlite();
        let from_another_thread = std::thread::spawn(move || write(&mut other, |_| Ok(1)).unwrap());
        assert_eq!(from_another_thread.join().unwrap(), 1);
        assert!(!HOLDS_SQLITE_WRITER.get());
        assert_eq!(write(&mut conn, |_| Ok(2)).unwrap(), 2);
    }

    /// The server's pool on a fresh SQLite file with one table, `t`.
    fn server_pool() -> (tempfile::TempDir, Pool) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("writer.db").display());
        let pool = open_pool(&url, 2).unwrap();
        diesel::sql_query("CREATE TABLE t (x INTEGER)")
            .execute(&mut pool.get().unwrap())
            .unwrap();
        (dir, pool)
    }

    #[derive(diesel::QueryableByName)]
    struct Count {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }

    /// Rows this connection itself has written since it opened.
    fn changes_by(conn: &mut DbConnection) -> i64 {
        diesel::sql_query("SELECT total_changes() AS n")
            .get_result::<Count>(conn)
            .unwrap()
            .n
    }

    fn rows_in_t(conn: &mut DbConnection) -> i64 {
        diesel::sql_query("SELECT count(*) AS n FROM t")
            .get_result::<Count>(conn)
            .unwrap()
            .n
    }

    fn insert_into_t(conn: &mut DbConnection) -> StorageResult<usize> {
        Ok(diesel::sql_query("INSERT INTO t VALUES (1)").execute(conn)?)
    }

    #[test]
    fn the_server_writes_sqlite_through_its_dedicated_writer() {
        let (_dir, pool) = server_pool();
        let mut pooled = pool.get().unwrap();
        let before = changes_by(&mut pooled);
        {
            let _writes = writes_through(&pool);
            write(&mut pooled, insert_into_t).unwrap();
            write_transaction(&mut pooled, insert_into_t).unwrap();
        }
        assert_eq!(
            changes_by(&mut pooled),
            before,
            "the pooled connection wrote"
        );
        assert_eq!(
            rows_in_t(&mut pooled),
            2,
            "the writes are visible to the pool"
        );
        // Outside the scope (the CLI, start-up) a write runs on the connection it is given.
        write(&mut pooled, insert_into_t).unwrap();
        assert_eq!(changes_by(&mut pooled), before + 1);
    }

    #[test]
    fn a_panic_inside_a_transaction_on_the_dedicated_writer_loses_only_that_transaction() {
        let (_dir, pool) = server_pool();
        let mut pooled = pool.get().unwrap();
        let _writes = writes_through(&pool);
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _ = write_transaction(&mut pooled, |conn| -> StorageResult<()> {
                insert_into_t(conn)?;
                panic!("boom")
            });
        }));
        assert!(panicked.is_err());
        // The writer left inside that transaction was closed at once: another connection
        // can write without waiting for SQLite's write lock.
        diesel::sql_query("PRAGMA busy_timeout = 0")
            .execute(&mut pooled)
            .unwrap();
        insert_into_t(&mut pooled).expect("the write lock was released");
        // The next write through the writer commits, and the half-done transaction never
        // does.
        write_transaction(&mut pooled, insert_into_t).unwrap();
        assert_eq!(rows_in_t(&mut pooled), 2);
    }

    #[test]
    fn a_dedicated_writer_whose_transaction_manager_broke_is_replaced() {
        use diesel::connection::TransactionManager;
        let (_dir, pool) = server_pool();
        let mut pooled = pool.get().unwrap();
        let _writes = writes_through(&pool);
        let failed = write_transaction(&mut pooled, |conn| -> StorageResult<()> {
            insert_into_t(conn)?;
            // What diesel does when a ROLLBACK itself fails.
            <DbConnection as Connection>::TransactionManager::transaction_manager_status_mut(conn)
                .set_in_error();
            Err(diesel::result::Error::RollbackTransaction.into())
        });
        assert!(failed.is_err());
        write_transaction(&mut pooled, insert_into_t).expect("a fresh writer");
        assert_eq!(rows_in_t(&mut pooled), 1);
    }
}
