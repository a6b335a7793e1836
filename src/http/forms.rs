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
