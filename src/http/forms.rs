//! Reading form bodies: only `application/x-www-form-urlencoded`, size-limited by the
//! payload configuration, parsed so that repeated fields can be detected.

use actix_web::http::header;
use actix_web::HttpRequest;

use crate::oauth::request::Params;

/// `None` when the body is not a urlencoded form.
pub fn form_params(req: &HttpRequest, body: &[u8]) -> Option<Params> {
    let is_form = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| {
            v.trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        });
    is_form.then(|| Params::parse(body))
}

pub fn query_params(req: &HttpRequest) -> Params {
    Params::parse(req.query_string().as_bytes())
}

/// A submitted form whose CSRF token is valid for `purpose`, or the page that refuses it.
pub fn protected_form(
    req: &HttpRequest,
    state: &super::AppState,
    body: &[u8],
    purpose: &str,
) -> Result<Params, Box<actix_web::HttpResponse>> {
    protected_form_for(req, state, body, |_| purpose.to_owned())
}

/// As `protected_form`, for a form whose purpose follows from its own fields (the consent
/// form names the request it shows).
pub fn protected_form_for(
    req: &HttpRequest,
    state: &super::AppState,
    body: &[u8],
    purpose_of: impl FnOnce(&Params) -> String,
) -> Result<Params, Box<actix_web::HttpResponse>> {
    use actix_web::http::StatusCode;
    let Some(params) = form_params(req, body) else {
        return Err(Box::new(super::pages::error_page(
            StatusCode::BAD_REQUEST,
            "Bad request",
            "The form could not be read.",
        )));
    };
    let purpose = purpose_of(&params);
    if !state.csrf().verify(req, &purpose, params.get("csrf_token")) {
        return Err(Box::new(super::pages::error_page(
            StatusCode::FORBIDDEN,
            "Please try again",
            "This form has expired or did not come from this site. Go back, reload the page and try again.",
        )));
    }
    Ok(params)
}

/// Renders a page holding a form for `purpose`: `render` gets the CSRF token, and the CSRF
/// cookie is set when this browser has none yet.
pub fn page_with_form(
    req: &HttpRequest,
    state: &super::AppState,
    purpose: &str,
    render: impl FnOnce(&str) -> actix_web::HttpResponse,
) -> actix_web::HttpResponse {
    let csrf = state.csrf();
    let cookie = csrf.cookie_of(req);
    let mut response = render(&csrf.token(req, &cookie, purpose));
    if cookie.is_new {
        let _ = response.add_cookie(&csrf.set_cookie(&cookie));
    }
    response
}
