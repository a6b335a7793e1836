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

pub type Pool = r2d2::Pool<ConnectionManager>;
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

const SQLITE_BUSY_TIMEOUT_MS: u32 = 5_000;

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
                }
                Ok(DbConnection::Sqlite(conn))
            }
        }
    }
}

/// Copies the SQLite write-ahead log into the database file as far as readers allow
/// (a PASSIVE checkpoint: it waits for no reader and no writer). The server runs it on a
/// timer because its connections do not checkpoint on commit. Nothing to do on PostgreSQL.
pub fn checkpoint(conn: &mut DbConnection) -> StorageResult<()> {
    if let DbConnection::Sqlite(conn) = conn {
        conn.batch_execute("PRAGMA wal_checkpoint(PASSIVE)")?;
    }
    Ok(())
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
    let mut manager = ConnectionManager::new(url)?;
    manager.background_checkpoints = true;
    let pool = r2d2::Pool::builder()
        .max_size(max_size)
        .min_idle(Some(1))
        .connection_timeout(Duration::from_secs(5))
        .test_on_check_out(false)
        .build(manager)?;
    Ok(pool)
}
