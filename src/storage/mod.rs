//! Storage: diesel only. One code path for PostgreSQL and SQLite through diesel's
//! `MultiConnection`; the backend is chosen from the URL scheme, never guessed.

pub mod audit;
pub mod auth_failures;
pub mod clients;
pub mod codes;
mod connection;
pub mod consents;
pub mod keys;
pub mod schema;
pub mod sessions;
pub mod tokens;
pub mod users;

pub use connection::{open_pool, Backend, ConnectionManager, DbConnection, Pool, PooledConnection};

use diesel::RunQueryDsl;
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
