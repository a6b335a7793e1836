//! Checking passwords and client secrets for the HTTP handlers: the row is read with a
//! pooled connection, then argon2 runs on the blocking pool with no connection held, so
//! requests queued for a hash cannot starve the pool.

use actix_web::web;

use super::{AppState, HttpError};
use crate::crypto::password;
use crate::storage::users::{self as user_store, UserRow};

pub enum PasswordCheck {
    Passed(UserRow),
    /// Unknown user, wrong password or disabled user; `user_id` is known for the latter two.
    Failed {
        user_id: Option<String>,
    },
}

/// Unknown, disabled and wrong-password users cost the same verification, so neither the
/// answer nor its timing tells them apart.
pub async fn check_password(
    state: &AppState,
    username: &str,
    secret: &str,
) -> Result<PasswordCheck, HttpError> {
    let name = username.to_owned();
    let user = super::run_blocking(&state.pool, move |conn| {
        user_store::find_by_username(conn, &name)
    })
    .await?;
    let hash = user.as_ref().map(|u| u.password_hash.clone());
    let secret = secret.to_owned();
    let verified = web::block(move || match hash {
        Some(hash) => password::verify(&secret, &hash),
        None => password::verify_dummy(&secret),
    })
    .await
    .map_err(|e| HttpError::internal(format!("blocking task failed: {e}")))?;
    Ok(match user {
        Some(user) if verified && !user.disabled => PasswordCheck::Passed(user),
        other => PasswordCheck::Failed {
            user_id: other.map(|u| u.id),
        },
    })
}

/// Checks a client secret: from the cache of verified secrets when it can (microseconds,
/// on this thread), else with argon2.
pub async fn check_client_secret(
    state: &AppState,
    client_id: &str,
    secret: &str,
) -> Result<bool, HttpError> {
    let id = client_id.to_owned();
    let hash = super::run_blocking(&state.pool, move |conn| {
        crate::oauth::token::client_secret_hash(conn, &id)
    })
    .await?;
    if let Some(hash) = &hash {
        if state.secret_cache.recognises(client_id, secret, hash) {
            return Ok(true);
        }
    }
    let cache = state.secret_cache.clone();
    let (id, secret) = (client_id.to_owned(), secret.to_owned());
    web::block(move || cache.verify(&id, &secret, hash.as_deref()))
        .await
        .map_err(|e| HttpError::internal(format!("blocking task failed: {e}")))
}
