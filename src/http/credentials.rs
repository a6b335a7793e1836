//! Checking passwords and client secrets for the HTTP handlers: the row is read with a
//! pooled connection, then argon2 runs on the hash threads with no connection and no
//! blocking-pool thread held, so requests queued for a hash starve neither.

use std::sync::Arc;

use super::{AppState, HttpError};
use crate::crypto::password;
use crate::oauth::client::Client;
use crate::ratelimit::client_rate::Caller;
use crate::ratelimit::{self, Attempt, Pending, Verdict};
use crate::storage::now_unix;
use crate::storage::users::UserRow;

pub enum PasswordCheck {
    /// The attempt still counts as a failure until the caller settles `attempt` with
    /// `ratelimit::succeeded`, first thing in the blocking-pool hop it makes next anyway: one
    /// hop fewer per login than settling it here. Should that hop never run (no pooled
    /// connection), the attempt stays a failure; the user got neither token nor session.
    Passed { user: UserRow, attempt: Pending },
    /// Unknown user, wrong password or disabled user; `user_id` is known for the latter two.
    Failed { user_id: Option<String> },
    /// Too many recent failures for this username or address: refused unchecked.
    Limited { retry_after: u64 },
}

/// Unknown, disabled and wrong-password users cost the same verification, so neither the
/// answer nor its timing tells them apart. Attempts past a failure budget are refused before
/// any verification, and every failure is counted.
pub async fn check_password(
    state: &AppState,
    username: &str,
    secret: &str,
    ip: Option<String>,
) -> Result<PasswordCheck, HttpError> {
    let settings = state.settings.clone();
    let name = username.to_owned();
    let verdict = super::run_blocking(&state.pool, move |conn| {
        let attempt = Attempt {
            username: &name,
            ip: ip.as_deref(),
        };
        ratelimit::begin(conn, &settings.limits, &attempt, now_unix())
    })
    .await?;
    let (pending, user) = match verdict {
        Verdict::Allowed { pending, user } => (pending, user),
        Verdict::Limited { retry_after } => return Ok(PasswordCheck::Limited { retry_after }),
    };
    let verified = match &user {
        Some(user) => password::verify_async(secret, &user.password_hash).await,
        None => password::verify_dummy_async(secret).await,
    };
    match user {
        Some(user) if verified && !user.disabled => Ok(PasswordCheck::Passed {
            user,
            attempt: pending,
        }),
        // The attempt's rows stay: it counts as a failure.
        other => Ok(PasswordCheck::Failed {
            user_id: other.map(|u| u.id),
        }),
    }
}

/// What checking a client's secret concluded.
pub enum ClientCheck {
    Authenticated(Arc<Client>),
    Refused,
    /// Over the request rate (the client's, or the address's while unauthenticated).
    Limited {
        retry_after: u64,
    },
}

/// Checks a client secret against the registry: from the cache of verified secrets when it
/// can (microseconds, on this thread), else with argon2 on the blocking pool. A secret that
/// needs argon2 is charged to the caller's address first; the client's own request budget
/// only once the secret checked out, so naming a client costs it nothing.
pub async fn check_client_secret(
    state: &AppState,
    client_id: &str,
    secret: &str,
    ip: Option<&str>,
) -> Result<ClientCheck, HttpError> {
    let client = state.clients.get(client_id);
    let hash = client.as_ref().and_then(|c| c.secret_hash.clone());
    let verified = match &hash {
        Some(hash) if state.secret_cache.recognises(client_id, secret, hash) => true,
        _ => {
            if let Err(retry_after) = state.client_rate.check(Caller::Unauthenticated { ip }) {
                return Ok(ClientCheck::Limited { retry_after });
            }
            state
                .secret_cache
                .verify(client_id, secret, hash.as_deref())
                .await
        }
    };
    let Some(client) = client.filter(|_| verified) else {
        return Ok(ClientCheck::Refused);
    };
    Ok(
        match state.client_rate.check(Caller::Authenticated(&client.id)) {
            Ok(()) => ClientCheck::Authenticated(client),
            Err(retry_after) => ClientCheck::Limited { retry_after },
        },
    )
}

/// Charges a request that presents no secret: a registered public client per address,
/// anything else to the address alone. Returns the public client it named, if any.
pub fn charge_unauthenticated(
    state: &AppState,
    client_id: Option<&str>,
    ip: Option<&str>,
) -> Result<Option<Arc<Client>>, u64> {
    let public = client_id
        .and_then(|id| state.clients.get(id))
        .filter(|client| client.is_public());
    let caller = match &public {
        Some(client) => Caller::Public {
            client_id: &client.id,
            ip,
        },
        None => Caller::Unauthenticated { ip },
    };
    state.client_rate.check(caller).map(|()| public)
}
