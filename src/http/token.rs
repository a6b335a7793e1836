//! POST /token: every answer is JSON with `Cache-Control: no-store` and `Pragma: no-cache`
//! (RFC 6749 5.1), errors per RFC 6749 5.2.

use actix_web::http::header;
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};

use super::credentials::{self, ClientCheck, PasswordCheck};
use super::{forms, AppState, HttpError};
use crate::accounts;
use crate::audit::{AuditEvent, Event};
use crate::config::GrantType;
use crate::oauth::token::{self, TokenAnswer, TokenRequest, UserCheck, Verified};
use crate::ratelimit;

pub async fn token(req: HttpRequest, state: web::Data<AppState>, body: web::Bytes) -> HttpResponse {
    let request = match read_request(&req, &body) {
        Ok(request) => request,
        Err(refusal) => return *refusal,
    };
    let ip = state.client_ip(&req);
    // A password that checked out: its attempt is settled in the grant's own hop below
    // (never on the client_credentials fast path: only grant_type=password checks one).
    let mut attempt_to_settle = None;
    let mut verified = Verified {
        client_ip: ip.clone(),
        ..Verified::default()
    };
    if let Some((client_id, secret)) = request.client_secret() {
        match credentials::check_client_secret(&state, client_id, secret, ip.as_deref()).await {
            Ok(ClientCheck::Authenticated(client)) => verified.client = Some(client),
            Ok(ClientCheck::Refused) => return answer(TokenAnswer::invalid_client()),
            Ok(ClientCheck::Limited { retry_after }) => return rate_limited(retry_after),
            Err(e) => return failure(e),
        }
    } else {
        match credentials::charge_unauthenticated(
            &state,
            request.claimed_client_id(),
            ip.as_deref(),
        ) {
            Ok(public_client) => verified.public_client = public_client,
            Err(retry_after) => return rate_limited(retry_after),
        }
    }
    // Only an authenticated client that may use the password grant makes gatehouse check
    // a password (or count a failure against a user).
    let may_check_password = verified
        .client
        .as_ref()
        .is_some_and(|c| c.allows(GrantType::Password));
    let user_credentials = request
        .password_credentials()
        .filter(|_| may_check_password);
    // A name no account can have fails without a lookup (see login.rs).
    if user_credentials.is_some_and(|(username, _)| accounts::validate_username(username).is_err())
    {
        verified.user = Some(UserCheck::Failed);
    } else if let Some((username, password)) = user_credentials {
        let login_event = |outcome| {
            AuditEvent::new(Event::Login, outcome)
                .client(request.claimed_client_id())
                .ip(ip.as_deref())
        };
        match credentials::check_password(&state, username, password, ip.clone()).await {
            Ok(PasswordCheck::Passed { user, attempt }) => {
                attempt_to_settle = Some(attempt);
                verified.user = Some(UserCheck::Passed { user_id: user.id })
            }
            Ok(PasswordCheck::Limited { retry_after }) => {
                login_event("refused")
                    .detail("password grant; rate limited")
                    .record();
                return too_many_requests(
                    "invalid_grant",
                    &format!("too many failed attempts; retry after {retry_after} seconds"),
                    retry_after,
                );
            }
            Ok(PasswordCheck::Failed { user_id }) => {
                login_event("failure")
                    .user(user_id.as_deref())
                    .detail("password grant")
                    .record();
                verified.user = Some(UserCheck::Failed)
            }
            Err(e) => return failure(e),
        }
    }
    let settings = state.settings.clone();
    let keys = state.keys.current();
    // Parsed once here for the fast path, the metrics and the audit event; the grant's own
    // checks (unknown, unsupported, not allowed for this client) answer in `token::token`.
    let grant = request.param("grant_type").and_then(GrantType::parse);
    let client_id = request.claimed_client_id().map(str::to_owned);
    let result = if grant == Some(GrantType::ClientCredentials) && settings.keys.rsa_bits <= 2048 {
        // No database and no password hash: one RSA-2048 signature (under a millisecond),
        // cheaper to run here than to hand to the blocking pool and back. Larger keys take
        // several milliseconds and go to the pool like everything else.
        token::client_credentials(&settings, &keys, verified.client.as_deref(), &request)
            .map_err(HttpError::from)
    } else {
        let clients = state.clients.clone();
        super::run_blocking(&state.pool, move |conn| {
            if let Some(attempt) = attempt_to_settle {
                ratelimit::succeeded(conn, attempt)?;
            }
            token::token(conn, &settings, &clients, keys, request, verified)
        })
        .await
    };
    match result {
        Ok(token_answer) => {
            // A token is only ever issued for a grant type gatehouse knows.
            if let (200, Some(grant)) = (token_answer.status, grant) {
                record_issued(&token_answer, grant, client_id.as_deref(), ip.as_deref());
            }
            answer(token_answer)
        }
        Err(e) => failure(e),
    }
}

fn record_issued(
    issued: &TokenAnswer,
    grant: GrantType,
    client_id: Option<&str>,
    ip: Option<&str>,
) {
    crate::metrics::global().token_issued(grant);
    AuditEvent::new(Event::TokenIssued, "success")
        .user(issued.subject.as_deref())
        .client(client_id)
        .ip(ip)
        .grant(grant)
        .record();
}

/// The form body and the Authorization header of a request to /token, /revoke or
/// /introspect, checked for what needs no database.
pub(super) fn read_request(
    req: &HttpRequest,
    body: &[u8],
) -> Result<TokenRequest, Box<HttpResponse>> {
    let refuse = |refusal: TokenAnswer| Box::new(answer(refusal));
    let Some(params) = forms::form_params(req, body) else {
        return Err(refuse(TokenAnswer::error(
            400,
            "invalid_request",
            "the body must be application/x-www-form-urlencoded",
        )));
    };
    let mut authorization = req.headers().get_all(header::AUTHORIZATION);
    let header_value = match (authorization.next(), authorization.next()) {
        (None, _) => None,
        (Some(value), None) => Some(
            value
                .to_str()
                .map_err(|_| refuse(TokenAnswer::invalid_client()))?
                .to_owned(),
        ),
        (Some(_), Some(_)) => {
            return Err(refuse(TokenAnswer::error(
                400,
                "invalid_request",
                "more than one Authorization header",
            )))
        }
    };
    TokenRequest::parse(params, header_value.as_deref()).map_err(refuse)
}

/// 429 with Retry-After (RFC 6585). RFC 6749 defines no error code for it; the body says
/// which limit was hit.
pub(super) fn too_many_requests(error: &str, description: &str, retry_after: u64) -> HttpResponse {
    let mut response = answer(TokenAnswer::error(429, error, description));
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, header::HeaderValue::from(retry_after));
    response
}

pub(super) fn answer(answer: TokenAnswer) -> HttpResponse {
    if let Some(error) = answer.body["error"].as_str() {
        crate::metrics::global().protocol_error(error);
    }
    let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = uncached(status);
    if status == StatusCode::UNAUTHORIZED {
        response.insert_header((header::WWW_AUTHENTICATE, "Basic realm=\"gatehouse\""));
    }
    response.json(answer.body)
}

/// A 200 whose JSON body was rendered before (an introspection answered from memory).
pub(super) fn rendered_answer(body: web::Bytes) -> HttpResponse {
    uncached(StatusCode::OK)
        .insert_header(header::ContentType::json())
        .body(body)
}

/// RFC 6749 5.1: no protocol answer may be stored.
fn uncached(status: StatusCode) -> actix_web::HttpResponseBuilder {
    let mut response = HttpResponse::build(status);
    response
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .insert_header((header::PRAGMA, "no-cache"));
    response
}

pub(super) fn failure(error: HttpError) -> HttpResponse {
    let mut response = actix_web::ResponseError::error_response(&error);
    response
        .headers_mut()
        .insert(header::PRAGMA, header::HeaderValue::from_static("no-cache"));
    response
}

/// 405 for any method but POST at a protocol endpoint, in its own JSON terms.
pub(super) async fn post_only() -> HttpResponse {
    let mut response = answer(TokenAnswer::error(
        405,
        "invalid_request",
        "this endpoint accepts only POST",
    ));
    response
        .headers_mut()
        .insert(header::ALLOW, header::HeaderValue::from_static("POST"));
    response
}

/// 429 for a caller over its request rate.
pub(super) fn rate_limited(retry_after: u64) -> HttpResponse {
    too_many_requests(
        "temporarily_unavailable",
        &format!("too many requests; retry after {retry_after} seconds"),
        retry_after,
    )
}
