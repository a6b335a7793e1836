use diesel::prelude::*;
use gatehouse::storage::schema::{access_tokens, token_families};
use serde_json::Value;

use crate::on_both_backends;
use crate::support::*;

on_both_backends!(
    a_client_gets_a_token_for_itself,
    only_authenticated_clients_with_the_grant
);

fn claims_of(body: &Value) -> Value {
    jsonwebtoken::dangerous::insecure_decode::<Value>(body["access_token"].as_str().unwrap())
        .unwrap()
        .claims
}

fn a_client_gets_a_token_for_itself(db: TestDb) {
    let app = OAuthServer::start(db);
    let response = app.token(
        &[("grant_type", "client_credentials")],
        Some((SERVICE, SERVICE_SECRET)),
    );
    assert_eq!(response.status, 200, "{}", response.body);
    assert_eq!(response.header("cache-control"), Some("no-store"));
    let body = response.json();
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 900);
    assert_eq!(body["scope"], "read", "the client's default scopes");
    assert!(
        body.get("refresh_token").is_none(),
        "no refresh token for client credentials"
    );
    let claims = claims_of(&body);
    assert_eq!(claims["sub"], SERVICE, "sub is the client id");
    assert_eq!(claims["client_id"], SERVICE);
    assert_eq!(
        claims["aud"],
        serde_json::json!([SERVICE_AUDIENCE]),
        "the client's own audience"
    );

    let write = app.token(
        &[
            ("grant_type", "client_credentials"),
            ("scope", "write read"),
        ],
        Some((SERVICE, SERVICE_SECRET)),
    );
    assert_eq!(write.json()["scope"], "read write");
    let post = app.token(
        &[
            ("grant_type", "client_credentials"),
            ("client_id", SERVICE),
            ("client_secret", SERVICE_SECRET),
        ],
        None,
    );
    assert_eq!(post.status, 200, "client_secret_post: {}", post.body);
    let admin = app.token(
        &[("grant_type", "client_credentials"), ("scope", "admin")],
        Some((SERVICE, SERVICE_SECRET)),
    );
    assert_eq!(admin.status, 400);
    assert_eq!(admin.json()["error"], "invalid_scope");

    // The hot path writes nothing.
    let mut conn = app.db.connect();
    let families: i64 = token_families::table.count().get_result(&mut conn).unwrap();
    let accesses: i64 = access_tokens::table.count().get_result(&mut conn).unwrap();
    assert_eq!((families, accesses), (0, 0));
}

fn only_authenticated_clients_with_the_grant(db: TestDb) {
    let app = OAuthServer::start(db);
    let wrong = app.token(
        &[("grant_type", "client_credentials")],
        Some((SERVICE, "not-the-secret")),
    );
    assert_eq!(wrong.status, 401);
    assert_eq!(wrong.json()["error"], "invalid_client");
    // A cached right secret does not make a wrong one pass.
    let right = app.token(
        &[("grant_type", "client_credentials")],
        Some((SERVICE, SERVICE_SECRET)),
    );
    assert_eq!(right.status, 200);
    let again = app.token(
        &[("grant_type", "client_credentials")],
        Some((SERVICE, SERVICE_SECRET)),
    );
    assert_eq!(again.status, 200, "verified from the cache");
    let wrong_again = app.token(
        &[("grant_type", "client_credentials")],
        Some((SERVICE, "not-the-secret")),
    );
    assert_eq!(wrong_again.status, 401);

    let public = app.token(
        &[("grant_type", "client_credentials"), ("client_id", SPA)],
        None,
    );
    assert_eq!(
        public.status, 401,
        "a public client cannot: {}",
        public.body
    );
    let not_allowed = app.token(
        &[("grant_type", "client_credentials")],
        Some((WEBAPP, WEBAPP_SECRET)),
    );
    assert_eq!(not_allowed.status, 400);
    assert_eq!(not_allowed.json()["error"], "unauthorized_client");

    // RFC 6749 5.2: a client that may use only client_credentials hears unauthorized_client
    // for any other grant, whatever it presents with it (here webapp's own tokens).
    let webapp_tokens = app.webapp_tokens("read");
    let webapp_refresh = webapp_tokens["refresh_token"].as_str().unwrap();
    for form in [
        vec![("grant_type", "authorization_code"), ("code", "some-code")],
        vec![
            ("grant_type", "refresh_token"),
            ("refresh_token", webapp_refresh),
        ],
        vec![
            ("grant_type", "password"),
            ("username", USERNAME),
            ("password", PASSWORD),
        ],
    ] {
        let refused = app.token(&form, Some((SERVICE, SERVICE_SECRET)));
        assert_eq!(refused.status, 400, "{form:?}: {}", refused.body);
        assert_eq!(refused.json()["error"], "unauthorized_client", "{form:?}");
        assert_eq!(
            refused.json()["error_description"],
            format!("this client may not use the {} grant", form[0].1)
        );
    }
    assert_eq!(
        app.refresh(webapp_refresh, None).status,
        200,
        "the refresh token was not touched"
    );
}

/// After a restart every connection of a busy client misses the cache of verified secrets at
/// once. They share one argon2 verification of the secret they present (each wrong secret
/// still costs its own), instead of each stalling the hash threads, and with them every
/// password login, for one hash more.
#[test]
fn requests_that_present_the_same_secret_together_share_one_hash() {
    let app = OAuthServer::start(TestDb::create(Backend::Sqlite).unwrap());
    let hashes = || {
        let text = get(&app.url("/metrics"), &[]).body;
        sample(&text, "gatehouse_password_hashes_total")
            .unwrap_or_else(|| panic!("gatehouse_password_hashes_total in\n{text}"))
    };
    let before = hashes();
    // Every third racer presents a wrong secret of its own.
    let wrong = |n: usize| n.is_multiple_of(3).then(|| format!("wrong-secret-{n}"));
    let statuses = race(12, |n| {
        let secret = wrong(n).unwrap_or_else(|| SERVICE_SECRET.to_owned());
        app.token(
            &[("grant_type", "client_credentials")],
            Some((SERVICE, &secret)),
        )
        .status
    });
    let expected: Vec<u16> = (0..12)
        .map(|n| if wrong(n).is_some() { 401 } else { 200 })
        .collect();
    assert_eq!(statuses, expected);
    assert_eq!(
        hashes() - before,
        5.0,
        "one hash for the 8 right secrets, one for each of the 4 wrong ones"
    );
    let again = app.token(
        &[("grant_type", "client_credentials")],
        Some((SERVICE, SERVICE_SECRET)),
    );
    assert_eq!(again.status, 200);
    assert_eq!(hashes() - before, 5.0, "the right secret is remembered");
}
