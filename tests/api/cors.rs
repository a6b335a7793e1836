//! CORS (RFC 9700 2.6): only /token, /revoke, the metadata and the JWK Set, and only for
//! the origins of registered clients.

use crate::on_both_backends;
use crate::support::*;

on_both_backends!(cors_answers_only_client_origins_and_only_on_the_token_endpoints);

const CLIENT_ORIGIN: &str = "https://app.example.com";
const EXPLICIT_ORIGIN: &str = "https://spa.example.org";
const FOREIGN_ORIGIN: &str = "https://evil.example.net";

const EXPLICIT_CLIENT: &str = r#"
[[clients]]
id = "browser-app"
redirect_uris = ["https://login.example.org/cb"]
grant_types = ["authorization_code"]
scopes = ["read"]
default_scopes = ["read"]
allowed_origins = ["https://SPA.example.org:443"]
"#;

fn preflight(app: &OAuthServer, path: &str, origin: &str, method: &str) -> Response {
    let request = ureq::http::Request::builder()
        .method("OPTIONS")
        .uri(app.url(path))
        .header("Origin", origin)
        .header("Access-Control-Request-Method", method)
        .header(
            "Access-Control-Request-Headers",
            "authorization, content-type",
        )
        .body(())
        .unwrap();
    Response::from_ureq(http().run(request).expect("preflight"))
}

fn with_origin(app: &OAuthServer, method: &str, path: &str, origin: &str) -> Response {
    let builder = ureq::http::Request::builder()
        .method(method)
        .uri(app.url(path))
        .header("Origin", origin);
    let response = if method == "POST" {
        let request = builder
            .header("Content-Type", "application/x-www-form-urlencoded")
            .body("token=x&client_id=spa".as_bytes().to_vec())
            .unwrap();
        http().run(request)
    } else {
        http().run(builder.body(()).unwrap())
    };
    Response::from_ureq(response.expect("request"))
}

fn allow_origin(response: &Response) -> Option<&str> {
    response.header("access-control-allow-origin")
}

fn cors_answers_only_client_origins_and_only_on_the_token_endpoints(db: TestDb) {
    let app = OAuthServer::start_configured(db, "", EXPLICIT_CLIENT);
    let cors_endpoints = [
        ("POST", "/token"),
        ("POST", "/revoke"),
        ("GET", "/.well-known/oauth-authorization-server"),
        ("GET", "/.well-known/jwks.json"),
    ];
    for (method, path) in cors_endpoints {
        for origin in [CLIENT_ORIGIN, EXPLICIT_ORIGIN] {
            let pre = preflight(&app, path, origin, method);
            assert!(pre.status < 300, "{path} preflight: {}", pre.status);
            assert_eq!(allow_origin(&pre), Some(origin), "{path} preflight");
            let methods = pre
                .header("access-control-allow-methods")
                .unwrap_or_default();
            assert!(methods.contains(method), "{path}: {methods}");
            let headers = pre
                .header("access-control-allow-headers")
                .unwrap_or_default()
                .to_ascii_lowercase();
            assert!(headers.contains("authorization"), "{path}: {headers}");
            assert_eq!(pre.header("access-control-allow-credentials"), None);

            let actual = with_origin(&app, method, path, origin);
            assert_eq!(allow_origin(&actual), Some(origin), "{path} actual request");
            assert!(actual
                .header("vary")
                .is_some_and(|v| v.to_ascii_lowercase().contains("origin")));
        }
        let pre = preflight(&app, path, FOREIGN_ORIGIN, method);
        assert_eq!(allow_origin(&pre), None, "{path}: a foreign origin");
        let actual = with_origin(&app, method, path, FOREIGN_ORIGIN);
        assert_eq!(allow_origin(&actual), None, "{path}: a foreign origin");
        assert!(actual.status < 500);
    }

    // Browser-facing pages and the resource servers' endpoint carry no CORS at all.
    let no_cors = [
        ("GET", "/authorize?client_id=webapp&response_type=code"),
        ("GET", "/login"),
        ("GET", "/consent"),
        ("POST", "/introspect"),
        ("GET", "/healthz"),
    ];
    for (method, path) in no_cors {
        let response = with_origin(&app, method, path, CLIENT_ORIGIN);
        assert!(
            response
                .headers
                .iter()
                .all(|(name, _)| !name.starts_with("access-control-")),
            "{path} carries CORS headers: {:?}",
            response.headers
        );
        let pre = preflight(&app, path, CLIENT_ORIGIN, method);
        assert_eq!(allow_origin(&pre), None, "{path} preflight");
    }
}
