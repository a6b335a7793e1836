//! POST /token: every answer is JSON with `Cache-Control: no-store` and `Pragma: no-cache`
//! (RFC 6749 5.1), errors per RFC 6749 5.2.

use actix_web::http::header;
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};

use super::credentials::{self, PasswordCheck};
use super::{forms, AppState, HttpError};
use crate::accounts;
use crate::config::GrantType;
use crate::oauth::token::{self, TokenAnswer, TokenRequest, UserCheck, Verified};

pub async fn token(req: HttpRequest, state: web::Data<AppState>, body: web::Bytes) -> HttpResponse {
    let request = match read_request(&req, &body) {
        Ok(request) => request,
        Err(refusal) => return answer(refusal),
    };
    let mut verified = Verified::default();
    if let Some((client_id, secret)) = request.client_secret() {
        match credentials::check_client_secret(&state, client_id, secret).await {
            Ok(Some(client)) => verified.client = Some(client),
            Ok(None) => return answer(TokenAnswer::invalid_client()),
            Err(e) => return failure(e),
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
        let ip = credentials::client_ip(&req);
        match credentials::check_password(&state, username, password, ip).await {
            Ok(PasswordCheck::Passed(user)) => {
                verified.user = Some(UserCheck::Passed { user_id: user.id })
            }
            Ok(PasswordCheck::Limited { retry_after }) => {
                let description =
                    format!("too many failed attempts; retry after {retry_after} seconds");
                let mut response = answer(TokenAnswer::error(429, "invalid_grant", &description));
                if let Ok(value) = header::HeaderValue::from_str(&retry_after.to_string()) {
                    response.headers_mut().insert(header::RETRY_AFTER, value);
                }
                return response;
            }
            Ok(PasswordCheck::Failed { .. }) => verified.user = Some(UserCheck::Failed),
            Err(e) => return failure(e),
        }
    }
    let settings = state.settings.clone();
    let keys = state.keys.current();
    let result = super::run_blocking(&state.pool, move |conn| {
        token::token(conn, &settings, keys, request, verified)
    })
    .await;
    match result {
        Ok(token_answer) => answer(token_answer),
        Err(e) => failure(e),
    }
}

/// The form body and the Authorization header of a request to /token, /revoke or
/// /introspect, checked for what needs no database.
pub(super) fn read_request(req: &HttpRequest, body: &[u8]) -> Result<TokenRequest, TokenAnswer> {
    let Some(params) = forms::form_params(req, body) else {
        return Err(TokenAnswer::error(
            400,
            "invalid_request",
            "the body must be application/x-www-form-urlencoded",
        ));
    };
    let mut authorization = req.headers().get_all(header::AUTHORIZATION);
    let header_value = match (authorization.next(), authorization.next()) {
        (None, _) => None,
        (Some(value), None) => Some(
            value
                .to_str()
                .map_err(|_| TokenAnswer::invalid_client())?
                .to_owned(),
        ),
        (Some(_), Some(_)) => {
            return Err(TokenAnswer::error(
                400,
                "invalid_request",
                "more than one Authorization header",
            ))
        }
    };
    TokenRequest::parse(&params, header_value.as_deref())
}

pub(super) fn answer(answer: TokenAnswer) -> HttpResponse {
    let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = HttpResponse::build(status);
    response
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .insert_header((header::PRAGMA, "no-cache"));
    if status == StatusCode::UNAUTHORIZED {
        response.insert_header((header::WWW_AUTHENTICATE, "Basic realm=\"gatehouse\""));
    }
    response.json(answer.body)
}

pub(super) fn failure(error: HttpError) -> HttpResponse {
    let mut response = actix_web::ResponseError::error_response(&error);
    response
        .headers_mut()
        .insert(header::PRAGMA, header::HeaderValue::from_static("no-cache"));
    response
}
