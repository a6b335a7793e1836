//! POST /revoke (RFC 7009) and POST /introspect (RFC 7662).

use std::sync::Arc;

use actix_web::web::{self, Bytes};
use actix_web::{HttpRequest, HttpResponse};
use serde_json::Value;

use super::credentials::{self, ClientCheck};
use super::introspection_cache::Remembered;
use super::token::{answer, failure, rate_limited, read_request, rendered_answer};
use super::AppState;
use super::HttpError;
use crate::keys::VerifiedClaims;
use crate::oauth::revocation;
use crate::oauth::token::{TokenAnswer, TokenRequest};
use crate::storage::StorageError;

/// Which clients an endpoint serves.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Callers {
    /// Confidential clients with their secret, and public clients by client_id (RFC 7009 2.1).
    AnyClient,
    /// Confidential clients only (resource servers).
    ConfidentialOnly,
}

/// The authenticated client's id, or the answer that refuses the request.
async fn authenticate(
    state: &AppState,
    request: &TokenRequest,
    callers: Callers,
    ip: Option<&str>,
) -> Result<String, HttpResponse> {
    if let Some((client_id, secret)) = request.client_secret() {
        return match credentials::check_client_secret(state, client_id, secret, ip).await {
            Ok(ClientCheck::Authenticated(client)) => Ok(client.id.clone()),
            Ok(ClientCheck::Refused) => Err(answer(TokenAnswer::invalid_client())),
            Ok(ClientCheck::Limited { retry_after }) => Err(rate_limited(retry_after)),
            Err(e) => Err(failure(e)),
        };
    }
    match credentials::charge_unauthenticated(state, request.param("client_id"), ip) {
        Err(retry_after) => Err(rate_limited(retry_after)),
        Ok(Some(public)) if callers == Callers::AnyClient => Ok(public.id.clone()),
        Ok(_) => Err(answer(TokenAnswer::invalid_client())),
    }
}

/// The client that authenticated, and its address.
struct Caller {
    client_id: String,
    ip: Option<String>,
}

/// The shape both endpoints share: read the form, authenticate the caller, require
/// `token`. Returns the caller and the token, or the answer that refuses the request.
async fn admit(
    req: &HttpRequest,
    state: &AppState,
    body: &[u8],
    callers: Callers,
) -> Result<(Caller, String), HttpResponse> {
    let request = read_request(req, body).map_err(|refusal| *refusal)?;
    let ip = state.client_ip(req);
    let client_id = authenticate(state, &request, callers, ip.as_deref()).await?;
    let Some(token) = request.param("token").map(str::to_owned) else {
        return Err(answer(TokenAnswer::error(
            400,
            "invalid_request",
            "token is required",
        )));
    };
    Ok((Caller { client_id, ip }, token))
}

fn respond(result: Result<Value, HttpError>) -> HttpResponse {
    match result {
        Ok(body) => answer(TokenAnswer::ok(body)),
        Err(e) => failure(e),
    }
}

pub async fn revoke(
    req: HttpRequest,
    state: web::Data<AppState>,
    body: web::Bytes,
) -> HttpResponse {
    let (caller, token) = match admit(&req, &state, &body, Callers::AnyClient).await {
        Ok(admitted) => admitted,
        Err(refusal) => return refusal,
    };
    let (settings, keys) = (state.settings.clone(), state.keys.current());
    let result = super::run_blocking(&state.pool, move |conn| {
        let revoked = revocation::revoke(conn, &settings, &keys, &caller.client_id, &token)?;
        if let Some(event) = revoked {
            event.ip(caller.ip.as_deref()).record();
        }
        Ok::<_, StorageError>(serde_json::json!({}))
    })
    .await;
    respond(result)
}

pub async fn introspect(
    req: HttpRequest,
    state: web::Data<AppState>,
    body: web::Bytes,
) -> HttpResponse {
    let (caller, token) = match admit(&req, &state, &body, Callers::ConfidentialOnly).await {
        Ok(admitted) => admitted,
        Err(refusal) => return refusal,
    };
    if !revocation::looks_like_jwt(&token) {
        let settings = state.settings.clone();
        let keys = state.keys.current();
        let result = super::run_blocking(&state.pool, move |conn| {
            revocation::introspect_refresh(conn, &settings, &keys, &caller.client_id, &token)
        })
        .await;
        return respond(result);
    }
    // A token of a client no longer registered is inactive, as its refresh tokens are no
    // longer redeemable (Keycloak answers the same for a disabled client).
    let registered = |claims: &VerifiedClaims| state.clients.get(&claims.client_id).is_some();
    let keys = state.keys.current();
    let digest = state.introspections.digest(&token);
    let remembered = digest.and_then(|digest| state.introspections.active(digest, &keys));
    if let Some(remembered) = remembered {
        crate::metrics::global().introspection_answered_from_memory();
        if !registered(&remembered.claims) {
            return respond(Ok(revocation::inactive()));
        }
        return rendered_answer(remembered.answer.clone());
    }
    // Checking the signature is CPU work without the database, so it runs here; only the
    // revocation check goes to the blocking pool, joined with concurrent requests' checks.
    let Some(claims) =
        revocation::verify_access(&state.settings, &keys, &token).filter(|c| registered(c))
    else {
        return respond(Ok(revocation::inactive()));
    };
    let check = state.introspections.begin_check();
    match state.revocations.is_revoked(claims.jti.clone()).await {
        Ok(false) => {}
        revoked => return respond(revoked.map(|_| revocation::inactive())),
    }
    // Rendered once, for this answer and every one given from memory.
    let answer = Bytes::from(revocation::introspect_access(&claims).to_string());
    if let Some(digest) = digest {
        let remembered = Remembered {
            claims,
            answer: answer.clone(),
        };
        state
            .introspections
            .remember(digest, Arc::new(remembered), &keys, check);
    }
    rendered_answer(answer)
}
