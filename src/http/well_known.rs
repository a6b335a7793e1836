use actix_web::http::header::{self, HeaderValue};
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Serialize;

use super::AppState;
use crate::config::Settings;

/// Serves the prepared JWK Set; a matching `If-None-Match` gets 304.
pub async fn jwks(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let keys = state.keys.current();
    let jwks = &keys.jwks;
    let cache_control = state.jwks_cache_control.clone();
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

/// The JWK Set's `Cache-Control`, built once: caches may keep it for one key refresh
/// interval, the same bound within which instances pick up a rotation.
pub fn jwks_cache_control(settings: &Settings) -> HeaderValue {
    let max_age = settings.keys.refresh_interval.as_secs().clamp(1, 3600);
    // Digits after ASCII text: always a valid header value.
    HeaderValue::try_from(format!("public, max-age={max_age}"))
        .unwrap_or(HeaderValue::from_static("no-cache"))
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
    authorization_endpoint: String,
    token_endpoint: String,
    revocation_endpoint: String,
    introspection_endpoint: String,
    jwks_uri: String,
    scopes_supported: Vec<String>,
    response_types_supported: Vec<&'static str>,
    response_modes_supported: Vec<&'static str>,
    grant_types_supported: Vec<&'static str>,
    token_endpoint_auth_methods_supported: Vec<&'static str>,
    revocation_endpoint_auth_methods_supported: Vec<&'static str>,
    introspection_endpoint_auth_methods_supported: Vec<&'static str>,
    code_challenge_methods_supported: Vec<&'static str>,
    authorization_response_iss_parameter_supported: bool,
}

pub fn build_metadata(settings: &Settings) -> web::Bytes {
    let mut scopes: Vec<String> = settings
        .clients
        .iter()
        .flat_map(|c| c.scopes.iter().cloned())
        .collect();
    scopes.sort();
    scopes.dedup();
    let issuer = &settings.issuer;
    let metadata = Metadata {
        issuer: issuer.clone(),
        authorization_endpoint: format!("{issuer}/authorize"),
        token_endpoint: format!("{issuer}/token"),
        revocation_endpoint: format!("{issuer}/revoke"),
        introspection_endpoint: format!("{issuer}/introspect"),
        jwks_uri: format!("{issuer}/.well-known/jwks.json"),
        scopes_supported: scopes,
        response_types_supported: vec!["code"],
        response_modes_supported: vec!["query"],
        grant_types_supported: vec![
            "authorization_code",
            "refresh_token",
            "password",
            "client_credentials",
        ],
        token_endpoint_auth_methods_supported: vec![
            "client_secret_basic",
            "client_secret_post",
            "none",
        ],
        revocation_endpoint_auth_methods_supported: vec![
            "client_secret_basic",
            "client_secret_post",
            "none",
        ],
        introspection_endpoint_auth_methods_supported: vec![
            "client_secret_basic",
            "client_secret_post",
        ],
        code_challenge_methods_supported: vec!["S256"],
        authorization_response_iss_parameter_supported: true,
    };
    serde_json::to_vec(&metadata)
        .unwrap_or_else(|_| b"{}".to_vec())
        .into()
}
