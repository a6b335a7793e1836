use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Serialize;

use super::AppState;
use crate::config::Settings;

/// Serves the prepared JWK Set; a matching `If-None-Match` gets 304. Caches may keep it for
/// one key refresh interval, the same bound within which instances pick up a rotation.
pub async fn jwks(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let keys = state.keys.current();
    let jwks = &keys.jwks;
    let max_age = state
        .settings
        .keys
        .refresh_interval
        .as_secs()
        .clamp(1, 3600);
    let cache_control = format!("public, max-age={max_age}");
    let not_modified = req
        .headers()
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',')
                .any(|tag| tag.trim() == jwks.etag || tag.trim() == "*")
        });
    if not_modified {
        return HttpResponse::NotModified()
            .insert_header((header::ETAG, jwks.etag.clone()))
            .insert_header((header::CACHE_CONTROL, cache_control))
            .finish();
    }
    HttpResponse::Ok()
        .content_type("application/json")
        .insert_header((header::ETAG, jwks.etag.clone()))
        .insert_header((header::CACHE_CONTROL, cache_control))
        .body(jwks.body.clone())
}

pub async fn metadata(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .insert_header((header::CACHE_CONTROL, "public, max-age=3600"))
        .body(state.metadata.clone())
}

/// RFC 8414 metadata listing only what this server implements.
#[derive(Serialize)]
struct Metadata {
    issuer: String,
    jwks_uri: String,
    scopes_supported: Vec<String>,
    response_types_supported: Vec<&'static str>,
    grant_types_supported: Vec<&'static str>,
    token_endpoint_auth_methods_supported: Vec<&'static str>,
    code_challenge_methods_supported: Vec<&'static str>,
}

pub fn build_metadata(settings: &Settings) -> web::Bytes {
    let mut scopes: Vec<String> = settings
        .clients
        .iter()
        .flat_map(|c| c.scopes.iter().cloned())
        .collect();
    scopes.sort();
    scopes.dedup();
    let metadata = Metadata {
        issuer: settings.issuer.clone(),
        jwks_uri: format!("{}/.well-known/jwks.json", settings.issuer),
        scopes_supported: scopes,
        // The authorization and token endpoints arrive with the grants; until then nothing
        // is advertised that would not work.
        response_types_supported: vec![],
        grant_types_supported: vec![],
        token_endpoint_auth_methods_supported: vec![],
        code_challenge_methods_supported: vec![],
    };
    serde_json::to_vec(&metadata)
        .unwrap_or_else(|_| b"{}".to_vec())
        .into()
}
