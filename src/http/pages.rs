//! HTML pages rendered from templates/ by askama, sent with the headers every page gets:
//! a Content-Security-Policy that forbids framing, no caching, no referrer, no sniffing.

use actix_web::http::header::{self, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::HttpResponse;
use askama::Template;

const CONTENT_SECURITY_POLICY: &str =
    "default-src 'none'; style-src 'self'; img-src 'self'; frame-ancestors 'none'; base-uri 'none'";

#[derive(Template)]
#[template(path = "login.html")]
pub struct LoginPage<'a> {
    pub client_name: Option<&'a str>,
    pub error: Option<&'a str>,
    pub csrf_token: &'a str,
    pub return_to: &'a str,
    pub username: &'a str,
}

pub struct ScopeView {
    pub name: String,
    pub description: Option<&'static str>,
}

impl ScopeView {
    /// Plain words for the scopes most clients ask for; others are shown by name.
    pub fn new(name: &str) -> ScopeView {
        let description = match name {
            "openid" => Some("confirm who you are"),
            "profile" => Some("see your basic profile"),
            "email" => Some("see your email address"),
            "offline_access" => Some("keep access while you are away"),
            "read" => Some("read your data"),
            "write" => Some("create and change your data"),
            _ => None,
        };
        ScopeView {
            name: name.to_owned(),
            description,
        }
    }
}

#[derive(Template)]
#[template(path = "consent.html")]
pub struct ConsentPage<'a> {
    pub client_name: &'a str,
    pub username: &'a str,
    pub scopes: Vec<ScopeView>,
    pub csrf_token: &'a str,
    pub request_fields: &'a [(String, String)],
}

#[derive(Template)]
#[template(path = "error.html")]
pub struct ErrorPage<'a> {
    pub title: &'a str,
    pub message: &'a str,
}

#[derive(Template)]
#[template(path = "logout.html")]
pub struct LogoutPage<'a> {
    pub signed_out: bool,
    pub csrf_token: &'a str,
}

/// Renders `page` with `status`; a template that fails to render is a bug, answered 500.
pub fn html(status: StatusCode, page: &impl Template) -> HttpResponse {
    match page.render() {
        Ok(body) => {
            let mut response = HttpResponse::build(status);
            secure_headers(&mut response);
            response.content_type("text/html; charset=utf-8").body(body)
        }
        Err(e) => {
            tracing::error!(error = %e, "template rendering failed");
            let mut response = HttpResponse::InternalServerError();
            secure_headers(&mut response);
            response
                .content_type("text/plain; charset=utf-8")
                .body("internal error")
        }
    }
}

pub fn error_page(status: StatusCode, title: &str, message: &str) -> HttpResponse {
    html(status, &ErrorPage { title, message })
}

/// A 500 for a browser: the cause goes to the log with an id, the page shows only the id.
pub fn failure_page(error: super::HttpError) -> HttpResponse {
    let error_id = uuid::Uuid::new_v4();
    tracing::error!(%error_id, cause = %error, "request failed");
    let status = actix_web::ResponseError::status_code(&error);
    let message = format!(
        "Something went wrong on our side. If it keeps happening, quote error id {error_id}."
    );
    error_page(status, "Something went wrong", &message)
}

pub fn secure_headers(response: &mut actix_web::HttpResponseBuilder) {
    response
        .insert_header((header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY))
        .insert_header((header::X_FRAME_OPTIONS, "DENY"))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .insert_header((header::REFERRER_POLICY, "no-referrer"))
        .insert_header((header::CACHE_CONTROL, "no-store"));
}

/// A 303 See Other: after a form POST the user agent must follow with a GET (RFC 9700 4.12).
pub fn see_other(location: &str) -> HttpResponse {
    let mut response = HttpResponse::SeeOther();
    secure_headers(&mut response);
    match HeaderValue::from_str(location) {
        Ok(value) => response.insert_header((header::LOCATION, value)).finish(),
        Err(_) => response.status(StatusCode::BAD_REQUEST).finish(),
    }
}

pub const STYLESHEET: &str = include_str!("../../static/gatehouse.css");

pub async fn stylesheet() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/css; charset=utf-8")
        .insert_header((header::CACHE_CONTROL, "public, max-age=3600"))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .body(STYLESHEET)
}
