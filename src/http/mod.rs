//! The HTTP layer: actix only. Handlers extract, call one function, and map the result;
//! `error.rs` is the one place errors become responses.

mod authorize;
mod blocking;
mod body_timeout;
mod client_ip;
mod cors;
mod credentials;
mod csrf;
mod error;
mod forms;
mod health;
mod introspection_cache;
mod login;
mod metrics;
mod pages;
mod request_id;
mod revocation;
mod revocation_lookups;
mod session;
mod token;
mod well_known;

use std::sync::Arc;

use actix_web::web;

pub use blocking::run_blocking;
pub use error::HttpError;
pub use introspection_cache::IntrospectionCache;
pub use revocation_lookups::RevocationLookups;

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
    pub clients: Arc<crate::oauth::client::ClientRegistry>,
    pub keys: Arc<KeyRing>,
    pub metadata: web::Bytes,
    pub jwks_cache_control: actix_web::http::header::HeaderValue,
    pub csrf_mac: Arc<Mac>,
    pub secret_cache: Arc<SecretCache>,
    pub client_rate: Arc<crate::ratelimit::ClientRateLimiter>,
    pub revocations: Arc<RevocationLookups>,
    pub introspections: Arc<IntrospectionCache>,
}

impl AppState {
    pub fn csrf(&self) -> csrf::Csrf<'_> {
        csrf::Csrf {
            mac: &self.csrf_mac,
            secure: self.secure_cookies(),
        }
    }

    /// The client's address: the TCP peer, or what a trusted proxy forwarded.
    pub fn client_ip(&self, req: &actix_web::HttpRequest) -> Option<String> {
        client_ip::client_ip(req, &self.settings.server.trusted_proxies)
    }

    /// Cookies are `Secure` whenever the issuer is https.
    pub fn secure_cookies(&self) -> bool {
        self.settings.issuer.starts_with("https://")
    }
}

/// Everything a worker's `App` needs besides `AppState`, computed once.
#[derive(Clone)]
pub struct RouteSettings {
    pub max_body_bytes: usize,
    pub metrics: bool,
    pub cors_origins: Arc<std::collections::HashSet<String>>,
}

impl RouteSettings {
    pub fn new(settings: &Settings) -> RouteSettings {
        RouteSettings {
            max_body_bytes: settings.server.max_body_bytes,
            metrics: settings.server.metrics,
            cors_origins: cors::client_origins(settings),
        }
    }
}

/// The endpoints that speak RFC 6749's JSON errors, even when refusing a request before
/// their handler runs (a body too large or too slow, a method other than POST).
const PROTOCOL_ENDPOINTS: [&str; 3] = ["/token", "/revoke", "/introspect"];

fn is_protocol_endpoint(path: &str) -> bool {
    PROTOCOL_ENDPOINTS.contains(&path)
}

/// GET, and HEAD with it: every general-purpose server supports both (RFC 9110 9.1), and
/// actix sends the answer to a HEAD without its body.
fn get() -> actix_web::Route {
    use actix_web::guard;
    web::route().guard(guard::Any(guard::Get()).or(guard::Head()))
}

pub fn routes(cfg: &mut web::ServiceConfig, route_settings: &RouteSettings) {
    use actix_web::http::Method;
    let cors = |methods: &[Method]| cors::for_client_origins(&route_settings.cors_origins, methods);
    // actix tries resources one by one in the order registered, at about 200 instructions
    // each (callgrind), so the busiest come first: the token endpoint, the JWK Set (which
    // the benchmark holds to /healthz's rate), the other protocol endpoints, then the pages
    // a person loads and the operators' probes. Paths are exact and distinct, so the order
    // never changes which handler answers. A page taking GET and POST is one resource, so
    // another method there gets 405 naming both.
    cfg
        // Larger bodies are refused with 413 before any handler runs.
        .app_data(web::PayloadConfig::new(route_settings.max_body_bytes))
        .service(
            web::resource("/token")
                .wrap(cors(&[Method::POST]))
                .route(web::post().to(token::token))
                .default_service(web::to(token::post_only)),
        )
        .service(
            web::resource("/.well-known/jwks.json")
                .wrap(cors(&[Method::GET]))
                .route(get().to(well_known::jwks)),
        )
        .service(
            web::resource("/introspect")
                .route(web::post().to(revocation::introspect))
                .default_service(web::to(token::post_only)),
        )
        .service(
            web::resource("/revoke")
                .wrap(cors(&[Method::POST]))
                .route(web::post().to(revocation::revoke))
                .default_service(web::to(token::post_only)),
        )
        .service(
            web::resource("/.well-known/oauth-authorization-server")
                .wrap(cors(&[Method::GET]))
                .route(get().to(well_known::metadata)),
        )
        .route("/authorize", get().to(authorize::authorize))
        .service(
            web::resource("/consent")
                .route(get().to(authorize::authorize))
                .route(web::post().to(authorize::consent_submit)),
        )
        .service(
            web::resource("/login")
                .route(get().to(login::show))
                .route(web::post().to(login::submit)),
        )
        .route("/login/done", get().to(login::done))
        .service(
            web::resource("/logout")
                .route(get().to(login::logout_page))
                .route(web::post().to(login::logout)),
        )
        .route("/static/gatehouse.css", get().to(pages::stylesheet))
        .route("/healthz", get().to(health::healthz))
        .route("/readyz", get().to(health::readyz))
        .configure(|cfg| {
            if route_settings.metrics {
                cfg.route("/metrics", get().to(metrics::metrics));
            }
        });
}

pub use body_timeout::limit_body_time;
pub use metrics::track_requests;
pub use request_id::echo_request_id;
pub use well_known::{build_metadata, jwks_cache_control};
