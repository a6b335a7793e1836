//! The HTTP layer: actix only. Handlers extract, call one function, and map the result;
//! `error.rs` is the one place errors become responses.

mod authorize;
mod blocking;
mod credentials;
mod csrf;
mod error;
mod forms;
mod health;
mod login;
mod pages;
mod request_id;
mod revocation;
mod session;
mod token;
mod well_known;

use std::sync::Arc;

use actix_web::web;

pub use blocking::run_blocking;
pub use error::HttpError;

use crate::config::Settings;
use crate::crypto::mac::Mac;
use crate::crypto::secret_cache::SecretCache;
use crate::keys::KeyRing;
use crate::storage::Pool;

/// Shared by every worker; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub settings: Arc<Settings>,
    pub pool: Pool,
    pub keys: Arc<KeyRing>,
    pub metadata: web::Bytes,
    pub csrf_mac: Arc<Mac>,
    pub secret_cache: Arc<SecretCache>,
}

impl AppState {
    pub fn csrf(&self) -> csrf::Csrf<'_> {
        csrf::Csrf {
            mac: &self.csrf_mac,
            secure: self.secure_cookies(),
        }
    }

    /// Cookies are `Secure` whenever the issuer is https.
    pub fn secure_cookies(&self) -> bool {
        self.settings.issuer.starts_with("https://")
    }
}

/// Request bodies larger than this are refused with 413 before any handler runs.
pub const MAX_FORM_BYTES: usize = 16 * 1024;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.app_data(web::PayloadConfig::new(MAX_FORM_BYTES))
        .route("/authorize", web::get().to(authorize::authorize))
        .route("/consent", web::get().to(authorize::authorize))
        .route("/consent", web::post().to(authorize::consent_submit))
        .route("/login", web::get().to(login::show))
        .route("/login", web::post().to(login::submit))
        .route("/login/done", web::get().to(login::done))
        .route("/logout", web::get().to(login::logout_page))
        .route("/logout", web::post().to(login::logout))
        .route("/token", web::post().to(token::token))
        .route("/revoke", web::post().to(revocation::revoke))
        .route("/introspect", web::post().to(revocation::introspect))
        .route("/static/gatehouse.css", web::get().to(pages::stylesheet))
        .route("/healthz", web::get().to(health::healthz))
        .route("/readyz", web::get().to(health::readyz))
        .route("/.well-known/jwks.json", web::get().to(well_known::jwks))
        .route(
            "/.well-known/oauth-authorization-server",
            web::get().to(well_known::metadata),
        );
}

pub use request_id::echo_request_id;
pub use well_known::build_metadata;
