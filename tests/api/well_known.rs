use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;

use crate::on_both_backends;
use crate::support::*;

on_both_backends!(
    jwks_is_an_rfc7517_key_set,
    jwks_is_cached_by_etag,
    metadata_names_the_issuer
);

fn jwks_is_an_rfc7517_key_set(db: TestDb) {
    let config = write_config(&db, "gatehouse.toml", "");
    let server = TestServer::start(&db, &config);

    let response = get(&server.url("/.well-known/jwks.json"), &[]);
    assert_eq!(response.status, 200);
    assert!(response
        .header("content-type")
        .unwrap()
        .starts_with("application/json"));
    let jwks = response.json();
    let keys = jwks["keys"].as_array().expect("keys array");
    assert_eq!(keys.len(), 1, "one active key on a fresh database: {jwks}");
    let key = &keys[0];
    assert_eq!(key["kty"], "RSA");
    assert_eq!(key["use"], "sig");
    assert_eq!(key["alg"], "RS256");
    assert!(key["kid"].as_str().is_some_and(|k| !k.is_empty()));
    let n = URL_SAFE_NO_PAD
        .decode(key["n"].as_str().unwrap())
        .expect("n is base64url");
    assert_eq!(n.len(), 256, "a 2048-bit modulus without leading zeros");
    assert_ne!(n[0], 0);
    let e = URL_SAFE_NO_PAD
        .decode(key["e"].as_str().unwrap())
        .expect("e is base64url");
    assert_eq!(e, vec![1, 0, 1]);
    for private_member in ["d", "p", "q", "dp", "dq", "qi"] {
        assert!(
            key.get(private_member).is_none(),
            "private member {private_member} published"
        );
    }
}

fn jwks_is_cached_by_etag(db: TestDb) {
    let config = write_config(&db, "gatehouse.toml", "");
    let server = TestServer::start(&db, &config);
    let url = server.url("/.well-known/jwks.json");

    let first = get(&url, &[]);
    let etag = first.header("etag").expect("ETag").to_owned();
    assert!(
        etag.starts_with('"') && etag.ends_with('"'),
        "strong, quoted ETag: {etag}"
    );
    assert!(first.header("cache-control").unwrap().contains("max-age=1"));

    let again = get(&url, &[("If-None-Match", &etag)]);
    assert_eq!(again.status, 304);
    assert!(again.body.is_empty());

    let stale = get(&url, &[("If-None-Match", "\"something-else\"")]);
    assert_eq!(stale.status, 200);
    assert_eq!(stale.body, first.body);
}

fn metadata_names_the_issuer(db: TestDb) {
    let config = write_config(&db, "gatehouse.toml", "");
    let server = TestServer::start(&db, &config);
    let response = get(&server.url("/.well-known/oauth-authorization-server"), &[]);
    assert_eq!(response.status, 200);
    let metadata = response.json();
    assert_eq!(metadata["issuer"], "http://127.0.0.1:8080");
    assert_eq!(
        metadata["jwks_uri"],
        "http://127.0.0.1:8080/.well-known/jwks.json"
    );
    assert_eq!(
        metadata["authorization_endpoint"],
        "http://127.0.0.1:8080/authorize"
    );
    assert_eq!(metadata["token_endpoint"], "http://127.0.0.1:8080/token");
    assert_eq!(
        metadata["revocation_endpoint"],
        "http://127.0.0.1:8080/revoke"
    );
    assert_eq!(
        metadata["introspection_endpoint"],
        "http://127.0.0.1:8080/introspect"
    );
    assert_eq!(
        metadata["introspection_endpoint_auth_methods_supported"],
        serde_json::json!(["client_secret_basic", "client_secret_post"])
    );
    assert_eq!(
        metadata["response_types_supported"],
        serde_json::json!(["code"])
    );
    assert_eq!(
        metadata["grant_types_supported"],
        serde_json::json!([
            "authorization_code",
            "refresh_token",
            "password",
            "client_credentials"
        ]),
        "exactly the grants /token serves"
    );
    assert_eq!(
        metadata["code_challenge_methods_supported"],
        serde_json::json!(["S256"])
    );
    assert_eq!(
        metadata["token_endpoint_auth_methods_supported"],
        serde_json::json!(["client_secret_basic", "client_secret_post", "none"])
    );
    assert_eq!(
        metadata["authorization_response_iss_parameter_supported"],
        true
    );
}
