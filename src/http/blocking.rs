use crate::storage::{DbConnection, Pool, StorageError};

use super::HttpError;

/// Runs `work` with a pooled connection on actix's blocking thread pool: diesel is
/// synchronous and must never run on an async worker thread.
pub async fn run_blocking<T, E, F>(pool: &Pool, work: F) -> Result<T, HttpError>
where
    F: FnOnce(&mut DbConnection) -> Result<T, E> + Send + 'static,
    T: Send + 'static,
    E: Into<HttpError> + Send + 'static,
{
    let pool = pool.clone();
    actix_web::web::block(move || with_pooled_connection(&pool, work))
        .await
        .map_err(|e| HttpError::internal(format!("blocking task failed: {e}")))?
}

/// Runs `work` with a pooled connection on this (blocking) thread, counting the wait for
/// the connection in the pool metrics.
pub fn with_pooled_connection<T, E, F>(pool: &Pool, work: F) -> Result<T, HttpError>
where
    F: FnOnce(&mut DbConnection) -> Result<T, E>,
    E: Into<HttpError>,
{
    let metrics = crate::metrics::global();
    metrics.pool_wait_started();
    let conn = pool.get();
    metrics.pool_wait_ended();
    let mut conn = conn.map_err(StorageError::from)?;
    let _writes = crate::storage::writes_through(pool);
    work(&mut conn).map_err(Into::into)
}
