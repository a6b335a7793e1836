//! POST /revoke (RFC 7009) and POST /introspect (RFC 7662).

use actix_web::{web, HttpRequest, HttpResponse};

use super::credentials::{self, ClientCheck};
use super::token::{answer, failure, rate_limited, read_request};
use super::AppState;
use crate::config::Settings;
use crate::keys::KeyState;
use crate::oauth::revocation;
use crate::oauth::token::{TokenAnswer, TokenRequest};
use crate::storage::{DbConnection, StorageResult};
use serde_json::Value;

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
            Ok(ClientCheck::Authenticated(client)) => Ok(client.id),
            Ok(ClientCheck::Refused) => Err(answer(TokenAnswer::invalid_client())),
            Ok(ClientCheck::Limited { retry_after }) => Err(rate_limited(retry_after)),
            Err(e) => Err(failure(e)),
        };
    }
    match credentials::charge_unauthenticated(state, request.param("client_id"), ip) {
        Err(retry_after) => Err(rate_limited(retry_after)),
        Ok(Some(public)) if callers == Callers::AnyClient => Ok(public.id),
        Ok(_) => Err(answer(TokenAnswer::invalid_client())),
    }
}

/// The client that authenticated, and its address.
struct Caller {
    client_id: String,
    ip: Option<String>,
}

/// The shape both endpoints share: read the form, authenticate the caller, require
/// `token`, and run `operation` on the blocking pool.
async fn run<F>(
    req: HttpRequest,
    state: web::Data<AppState>,
    body: web::Bytes,
    callers: Callers,
    operation: F,
) -> HttpResponse
where
    F: FnOnce(&mut DbConnection, &Settings, &KeyState, &Caller, &str) -> StorageResult<Value>
        + Send
        + 'static,
{
    let request = match read_request(&req, &body) {
        Ok(request) => request,
        Err(refusal) => return *refusal,
    };
    let ip = state.client_ip(&req);
    let client_id = match authenticate(&state, &request, callers, ip.as_deref()).await {
        Ok(client_id) => client_id,
        Err(refusal) => return refusal,
    };
    let Some(token) = request.param("token").map(str::to_owned) else {
        return answer(TokenAnswer::error(
            400,
            "invalid_request",
            "token is required",
        ));
    };
    let (settings, keys) = (state.settings.clone(), state.keys.current());
    let caller = Caller { client_id, ip };
    let result = super::run_blocking(&state.pool, move |conn| {
        operation(conn, &settings, &keys, &caller, &token)
    })
    .await;
    match result {
        Ok(body) => answer(TokenAnswer { status: 200, body }),
        Err(e) => failure(e),
    }
}

pub async fn revoke(
    req: HttpRequest,
    state: web::Data<AppState>,
    body: web::Bytes,
) -> HttpResponse {
    run(
        req,
        state,
        body,
        Callers::AnyClient,
        |conn, settings, keys, caller, token| {
            let revoked = revocation::revoke(conn, settings, keys, &caller.client_id, token)?;
            if let Some(event) = revoked {
                event.ip(caller.ip.as_deref()).record();
            }
            Ok(serde_json::json!({}))
        },
    )
    .await
}

pub async fn introspect(
    req: HttpRequest,
    state: web::Data<AppState>,
    body: web::Bytes,
) -> HttpResponse {
    run(
        req,
        state,
        body,
        Callers::ConfidentialOnly,
        |conn, settings, keys, caller, token| {
            revocation::introspect(conn, settings, keys, &caller.client_id, token)
        },
    )
    .await
}
