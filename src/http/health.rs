use std::time::Duration;

use actix_web::{web, HttpResponse};

use super::AppState;
use crate::storage::StorageError;

const READINESS_DB_TIMEOUT: Duration = Duration::from_secs(2);

pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok()
        .insert_header(("Cache-Control", "no-store"))
        .json(serde_json::json!({"status": "ok"}))
}

/// Ready when the database answers within a bound and a signing key is loaded.
pub async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    let pool = state.pool.clone();
    let database = web::block(move || -> Result<(), StorageError> {
        let mut conn = pool.get_timeout(READINESS_DB_TIMEOUT)?;
        crate::storage::ping(&mut conn)
    })
    .await;
    let database_ok = matches!(database, Ok(Ok(())));
    if let Ok(Err(e)) = &database {
        tracing::warn!(error = %e, "readiness: database unreachable");
    }
    let kid = state.keys.current().signing.kid().to_owned();
    let body = serde_json::json!({
        "status": if database_ok { "ready" } else { "unavailable" },
        "database": if database_ok { "ok" } else { "unreachable" },
        "signing_key": kid,
    });
    let mut response = if database_ok {
        HttpResponse::Ok()
    } else {
        HttpResponse::ServiceUnavailable()
    };
    response
        .insert_header(("Cache-Control", "no-store"))
        .json(body)
}
