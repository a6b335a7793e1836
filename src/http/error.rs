use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};

use crate::keys::KeyError;
use crate::storage::StorageError;

/// Every error a handler can return, mapped to a response here and nowhere else.
#[derive(Debug, Clone, thiserror::Error)]
pub enum HttpError {
    /// The database or another dependency is unreachable: 503, the client may retry.
    #[error("service unavailable: {0}")]
    Unavailable(String),
    /// A bug or an unexpected failure: 500 with an id; the cause goes to the log only.
    #[error("internal error: {0}")]
    Internal(String),
}

impl HttpError {
    pub fn internal(cause: impl Into<String>) -> HttpError {
        HttpError::Internal(cause.into())
    }
}

impl From<StorageError> for HttpError {
    fn from(e: StorageError) -> HttpError {
        if e.is_transient() {
            HttpError::Unavailable(e.to_string())
        } else {
            HttpError::Internal(e.to_string())
        }
    }
}

impl From<KeyError> for HttpError {
    fn from(e: KeyError) -> HttpError {
        match e {
            KeyError::Storage(inner) => inner.into(),
            other => HttpError::Internal(other.to_string()),
        }
    }
}

impl ResponseError for HttpError {
    fn status_code(&self) -> StatusCode {
        match self {
            HttpError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            HttpError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let error_id = uuid::Uuid::new_v4();
        tracing::error!(%error_id, cause = %self, "request failed");
        let (error, description) = match self {
            HttpError::Unavailable(_) => (
                "temporarily_unavailable",
                "the service is temporarily unavailable",
            ),
            HttpError::Internal(_) => ("server_error", "an internal error occurred"),
        };
        HttpResponse::build(self.status_code())
            .insert_header(("Cache-Control", "no-store"))
            .json(serde_json::json!({
                "error": error,
                "error_description": description,
                "error_id": error_id.to_string(),
            }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unreachable_database_is_503_and_bugs_are_500() {
        let pool_error = HttpError::from(StorageError::Migration("x".into()));
        assert_eq!(pool_error.status_code(), StatusCode::INTERNAL_SERVER_ERROR);
        let unavailable = HttpError::Unavailable("db down".into());
        assert_eq!(unavailable.status_code(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            unavailable.error_response().status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
    }
}
