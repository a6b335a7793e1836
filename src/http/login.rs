//! GET/POST /login and GET/POST /logout.

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};

use super::credentials::{self, PasswordCheck};
use super::pages::{self, LoginPage, LogoutPage};
use super::{forms, session, AppState};
use crate::accounts::{self, MAX_PASSWORD_BYTES};
use crate::audit::{AuditEvent, Event};
use crate::ratelimit;

const LOGIN_FORM: &str = "login";
const LOGOUT_FORM: &str = "logout";
const BAD_CREDENTIALS: &str = "Incorrect username or password.";

/// Only a pending authorization request may be continued after login; anything else would
/// make the login form an open redirector.
fn safe_return_to(value: Option<&str>) -> &str {
    match value {
        Some(v) if v.starts_with("/authorize?") && v.bytes().all(|b| b.is_ascii_graphic()) => v,
        _ => "",
    }
}

pub async fn show(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let params = forms::query_params(&req);
    let return_to = safe_return_to(params.get("return_to")).to_owned();
    render(&req, &state, StatusCode::OK, &return_to, "", None)
}

fn render(
    req: &HttpRequest,
    state: &AppState,
    status: StatusCode,
    return_to: &str,
    username: &str,
    error: Option<&str>,
) -> HttpResponse {
    forms::page_with_form(req, state, LOGIN_FORM, |csrf_token| {
        pages::html(
            status,
            &LoginPage {
                client_name: None,
                error,
                csrf_token,
                return_to,
                username,
            },
        )
    })
}

/// The answer to every failed sign-in: the form again, with one message for all causes.
fn refuse(req: &HttpRequest, state: &AppState, return_to: &str, username: &str) -> HttpResponse {
    render(
        req,
        state,
        StatusCode::UNAUTHORIZED,
        return_to,
        username,
        Some(BAD_CREDENTIALS),
    )
}

pub async fn submit(
    req: HttpRequest,
    state: web::Data<AppState>,
    body: web::Bytes,
) -> HttpResponse {
    let params = match forms::protected_form(&req, &state, &body, LOGIN_FORM) {
        Ok(params) => params,
        Err(refusal) => return *refusal,
    };
    let return_to = safe_return_to(params.get("return_to")).to_owned();
    let username = params.get("username").unwrap_or_default().to_owned();
    let password_text = params.get("password").unwrap_or_default().to_owned();
    if username.is_empty() || password_text.is_empty() || password_text.len() > MAX_PASSWORD_BYTES {
        return refuse(&req, &state, &return_to, &username);
    }
    let ip = state.client_ip(&req);
    let login_event = |outcome| AuditEvent::new(Event::Login, outcome).ip(ip.as_deref());
    // A name no account can have is refused without a lookup: a NUL byte, for one, is not
    // text to PostgreSQL, and a 10 KB name need not become a rate-limit bucket.
    if accounts::validate_username(&username).is_err() {
        login_event("failure").detail("unknown user").record();
        return refuse(&req, &state, &return_to, &username);
    }
    let check = credentials::check_password(&state, &username, &password_text, ip.clone()).await;
    let (user, attempt) = match check {
        Ok(PasswordCheck::Passed { user, attempt }) => (user, attempt),
        Ok(PasswordCheck::Limited { retry_after }) => {
            login_event("refused").detail("rate limited").record();
            let minutes = retry_after.div_ceil(60);
            let message = format!("Too many failed attempts. Try again in {minutes} minute(s).");
            let mut response =
                pages::error_page(StatusCode::TOO_MANY_REQUESTS, "Too many attempts", &message);
            if let Ok(value) =
                actix_web::http::header::HeaderValue::from_str(&retry_after.to_string())
            {
                response
                    .headers_mut()
                    .insert(actix_web::http::header::RETRY_AFTER, value);
            }
            return response;
        }
        Ok(PasswordCheck::Failed { user_id }) => {
            // Only ids are recorded: a username field sometimes holds a mistyped password.
            let event = login_event("failure").user(user_id.as_deref());
            match user_id {
                Some(_) => event.record(),
                None => event.detail("unknown user").record(),
            }
            return refuse(&req, &state, &return_to, &username);
        }
        Err(e) => return pages::failure_page(e),
    };
    let user_id = user.id.clone();
    match super::run_blocking(&state.pool, move |conn| {
        ratelimit::succeeded(conn, attempt)?;
        session::start(conn, &user)
    })
    .await
    {
        Ok(cookie) => {
            login_event("success").user(Some(&user_id)).record();
            let mut response = pages::see_other(if return_to.is_empty() {
                "/login/done"
            } else {
                &return_to
            });
            let _ = response.add_cookie(&session::set_cookie(cookie, state.secure_cookies()));
            response
        }
        Err(e) => pages::failure_page(e),
    }
}

pub async fn done() -> HttpResponse {
    pages::error_page(
        StatusCode::OK,
        "You are signed in",
        "You can return to the application.",
    )
}

pub async fn logout_page(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let signed_in = session::cookie_value(&req).is_some();
    forms::page_with_form(&req, &state, LOGOUT_FORM, |csrf_token| {
        pages::html(
            StatusCode::OK,
            &LogoutPage {
                signed_out: !signed_in,
                csrf_token,
            },
        )
    })
}

pub async fn logout(
    req: HttpRequest,
    state: web::Data<AppState>,
    body: web::Bytes,
) -> HttpResponse {
    if let Err(refusal) = forms::protected_form(&req, &state, &body, LOGOUT_FORM) {
        return *refusal;
    }
    if let Some(cookie) = session::cookie_value(&req) {
        if let Err(e) =
            super::run_blocking(&state.pool, move |conn| session::end(conn, &cookie)).await
        {
            return pages::failure_page(e);
        }
    }
    let mut response = pages::html(
        StatusCode::OK,
        &LogoutPage {
            signed_out: true,
            csrf_token: "",
        },
    );
    let _ = response.add_cookie(&session::clear_cookie(state.secure_cookies()));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_authorization_requests_are_continued_after_login() {
        assert_eq!(
            safe_return_to(Some("/authorize?client_id=a")),
            "/authorize?client_id=a"
        );
        assert_eq!(safe_return_to(Some("https://evil.example/authorize?x")), "");
        assert_eq!(safe_return_to(Some("//evil.example/authorize?x")), "");
        assert_eq!(safe_return_to(Some("/authorize?x\r\nSet-Cookie: a")), "");
        assert_eq!(safe_return_to(Some("/authorize?x=\u{e9}")), "");
        assert_eq!(safe_return_to(Some("/authorize?x=\u{e9}")), "");
        assert_eq!(safe_return_to(None), "");
    }
}
