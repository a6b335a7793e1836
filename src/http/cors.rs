//! CORS for browser-based clients, only where RFC 9700 2.6 allows it: /token, /revoke, the
//! metadata and the JWK Set, and only for the origins clients registered (by default the
//! origins of their redirect URIs). Browser-facing pages (/authorize, /login, /consent)
//! never carry CORS headers. A request from any other origin is answered as if CORS did not
//! exist, so the browser withholds the response from the page.

use std::collections::HashSet;
use std::sync::Arc;

use actix_cors::Cors;
use actix_web::http::{header, Method};

use crate::config::Settings;

/// The union of every client's allowed origins. A preflight names no client, so the check
/// cannot be narrower than this; the client itself is then authenticated as usual.
pub fn client_origins(settings: &Settings) -> Arc<HashSet<String>> {
    Arc::new(
        settings
            .clients
            .iter()
            .flat_map(|client| client.allowed_origins.iter().cloned())
            .collect(),
    )
}

pub fn for_client_origins(origins: &Arc<HashSet<String>>, methods: &[Method]) -> Cors {
    let origins = Arc::clone(origins);
    Cors::default()
        .allowed_origin_fn(move |origin, _| {
            origin.to_str().is_ok_and(|origin| origins.contains(origin))
        })
        .allowed_methods(methods.iter().cloned())
        .allowed_headers([header::AUTHORIZATION, header::CONTENT_TYPE, header::ACCEPT])
        .expose_headers([header::WWW_AUTHENTICATE, header::RETRY_AFTER])
        .block_on_origin_mismatch(false)
        .max_age(3600)
}
