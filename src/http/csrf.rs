//! CSRF protection for every form: a random value in an HttpOnly cookie, and in the form an
//! HMAC of that value and the form's purpose. A cross-site page can make the browser send
//! the cookie but can neither read it nor compute the tag.

use actix_web::cookie::{Cookie, SameSite};
use actix_web::HttpRequest;

use crate::crypto::mac::Mac;
use crate::crypto::random;

pub const COOKIE: &str = "gatehouse_csrf";

pub struct Csrf<'a> {
    pub mac: &'a Mac,
    pub secure: bool,
}

/// The cookie value to use for this response, and whether it must be (re)sent.
pub struct CsrfCookie {
    pub value: String,
    pub is_new: bool,
}

impl Csrf<'_> {
    pub fn cookie_of(&self, req: &HttpRequest) -> CsrfCookie {
        match req
            .cookie(COOKIE)
            .map(|c| c.value().to_owned())
            .filter(|v| v.len() >= 32)
        {
            Some(value) => CsrfCookie {
                value,
                is_new: false,
            },
            None => CsrfCookie {
                value: random::token::<32>(),
                is_new: true,
            },
        }
    }

    /// The tag also covers the session cookie, so a token planted by another site (or a
    /// sibling subdomain that can set cookies) is useless once the user has a session.
    pub fn token(&self, req: &HttpRequest, cookie: &CsrfCookie, purpose: &str) -> String {
        self.mac
            .sign(tagged(purpose, &cookie.value, &session_of(req)).as_bytes())
    }

    /// Whether the submitted token belongs to this browser's cookies and this form.
    pub fn verify(&self, req: &HttpRequest, purpose: &str, submitted: Option<&str>) -> bool {
        let (Some(cookie), Some(submitted)) = (req.cookie(COOKIE), submitted) else {
            return false;
        };
        self.mac.verify(
            tagged(purpose, cookie.value(), &session_of(req)).as_bytes(),
            submitted,
        )
    }

    pub fn set_cookie(&self, cookie: &CsrfCookie) -> Cookie<'static> {
        Cookie::build(COOKIE, cookie.value.clone())
            .path("/")
            .http_only(true)
            .secure(self.secure)
            .same_site(SameSite::Lax)
            .finish()
    }
}

fn session_of(req: &HttpRequest) -> String {
    super::session::cookie_value(req).unwrap_or_default()
}

fn tagged(purpose: &str, csrf_cookie: &str, session_cookie: &str) -> String {
    format!("{purpose}:{csrf_cookie}:{session_cookie}")
}
