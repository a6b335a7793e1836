//! The HTTP layer: actix only. Handlers extract, call one function, and map the result;
//! `error.rs` is the one place errors become responses.

mod blocking;
mod error;
mod health;
mod request_id;
mod well_known;

use std::sync::Arc;

use actix_web::web;

pub use blocking::run_blocking;
pub use error::HttpError;

use crate::config::Settings;
use crate::keys::KeyRing;
use crate::storage::Pool;

/// Shared by every worker; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub settings: Arc<Settings>,
    pub pool: Pool,
    pub keys: Arc<KeyRing>,
    pub metadata: web::Bytes,
}

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/healthz", web::get().to(health::healthz))
        .route("/readyz", web::get().to(health::readyz))
        .route("/.well-known/jwks.json", web::get().to(well_known::jwks))
        .route(
            "/.well-known/oauth-authorization-server",
            web::get().to(well_known::metadata),
        );
}

pub use request_id::echo_request_id;
pub use well_known::build_metadata;
