//! Many instances on one PostgreSQL database (issue #5, item 6): codes, sessions, refresh
//! tokens and signing keys work across instances, and races between them have one winner.

use std::sync::Barrier;
use std::time::Duration;

use jsonwebtoken::{decode, decode_header, Algorithm, DecodingKey, Validation};
use serde_json::{json, Value};

use crate::support::*;

/// Two instances, A and B, on one fresh PostgreSQL database; `None` when PostgreSQL is
/// unavailable and not required (the skip is announced).
fn two_instances() -> Option<(OAuthServer, OAuthServer)> {
    two_instances_with("")
}

/// `two_instances` with `tokens_extra` in both configurations' `[tokens]` table.
fn two_instances_with(tokens_extra: &str) -> Option<(OAuthServer, OAuthServer)> {
    let a = OAuthServer::start_with(TestDb::create(Backend::Postgres)?, tokens_extra);
    let b = a.another_instance();
    assert_ne!(a.server.base_url, b.server.base_url);
    Some((a, b))
}

fn webapp_params(p: &Pkce) -> Vec<(&str, &str)> {
    vec![
        ("response_type", "code"),
        ("client_id", WEBAPP),
        ("redirect_uri", WEBAPP_REDIRECT),
        ("scope", "read"),
        ("state", "s"),
        ("code_challenge", &p.challenge),
        ("code_challenge_method", "S256"),
    ]
}

fn introspect(at: &OAuthServer, token: &str) -> Value {
    at.introspect(token)
}

#[test]
fn codes_and_sessions_cross_instances() {
    let Some((a, b)) = two_instances_with("introspection_cache_ttl = \"1s\"") else {
        return;
    };
    // Login and consent at A; the code is redeemed at B.
    let mut browser = Browser::new();
    let p = pkce();
    let redirect = a.authorize_with_consent(&mut browser, &webapp_params(&p));
    let code = query_value(&redirect, "code").unwrap();
    let redeemed = b.redeem_webapp_code(&code, &p.verifier);
    assert_eq!(redeemed.status, 200, "{}", redeemed.body);
    let access = redeemed.json()["access_token"].as_str().unwrap().to_owned();
    assert_eq!(introspect(&a, &access)["active"], true);
    assert_eq!(introspect(&b, &access)["sub"], a.user_id.as_str());
    // Replayed at A: refused, and the tokens B issued are revoked for both: at once at A,
    // within tokens.introspection_cache_ttl (1s) at B, which answered from memory.
    let replayed = a.redeem_webapp_code(&code, &p.verifier);
    assert_eq!(
        replayed.json()["error"],
        "invalid_grant",
        "{}",
        replayed.body
    );
    assert_eq!(introspect(&a, &access), json!({"active": false}));
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(introspect(&b, &access), json!({"active": false}));

    // The session made at A continues at B: consent remembered, straight to the client.
    let p = pkce();
    let at_b = browser.get(&b.authorize_url(&webapp_params(&p)));
    assert_eq!(at_b.status, 303, "{}", at_b.body);
    let location = at_b.header("location").unwrap();
    assert!(
        location.starts_with(&format!("{WEBAPP_REDIRECT}?code=")),
        "{location}"
    );

    // A new request at B needs consent, shown and decided at B with A's session.
    let mut scopes = webapp_params(&p);
    scopes[3] = ("scope", "read write");
    let consent = browser.get(&b.authorize_url(&scopes));
    assert_eq!(consent.status, 200, "{}", consent.body);
    let allowed = b.decide(&mut browser, &consent, "allow");
    assert_eq!(allowed.status, 303, "{}", allowed.body);
    let code = query_value(
        &url::Url::parse(allowed.header("location").unwrap()).unwrap(),
        "code",
    )
    .unwrap();
    let redeemed = a.redeem_webapp_code(&code, &p.verifier);
    assert_eq!(redeemed.status, 200, "{}", redeemed.body);
    assert_eq!(redeemed.json()["scope"], "read write");

    // A login form served by A is accepted by B (CSRF keys derive from the shared secret).
    let mut fresh = Browser::new();
    let page = fresh.get(&a.url("/login"));
    let csrf = hidden_field(&page.body, "csrf_token").unwrap();
    let signed_in = fresh.post_form(
        &b.url("/login"),
        &[
            ("username", USERNAME),
            ("password", PASSWORD),
            ("csrf_token", &csrf),
            ("return_to", ""),
        ],
    );
    assert_eq!(signed_in.status, 303, "{}", signed_in.body);
    // Logging out at A ends the session at B too, even for a cookie kept after logout.
    let session = fresh.cookies["gatehouse_session"].clone();
    let logout = fresh.get(&a.url("/logout"));
    let csrf = hidden_field(&logout.body, "csrf_token").unwrap();
    assert_eq!(
        fresh
            .post_form(&a.url("/logout"), &[("csrf_token", &csrf)])
            .status,
        200
    );
    fresh.cookies.insert("gatehouse_session".into(), session);
    let p = pkce();
    let after = fresh.get(&b.authorize_url(&webapp_params(&p)));
    assert!(
        after
            .header("location")
            .is_some_and(|l| l.starts_with("/login?")),
        "signed out everywhere: {:?}",
        after.header("location")
    );
}

/// With `tokens.introspection_cache_ttl = "0s"` every introspection reads the database, so a
/// revocation at one instance counts at once at the other, which had just seen the token.
#[test]
fn without_the_introspection_cache_a_revocation_elsewhere_counts_at_once() {
    let Some((a, b)) = two_instances_with("introspection_cache_ttl = \"0s\"") else {
        return;
    };
    let tokens = a.webapp_tokens("read");
    let access = tokens["access_token"].as_str().unwrap();
    assert_eq!(introspect(&b, access)["active"], true);
    assert_eq!(introspect(&b, access)["active"], true);
    let revoked = a.post_form(
        "/revoke",
        &[("token", tokens["refresh_token"].as_str().unwrap())],
        Some((WEBAPP, WEBAPP_SECRET)),
    );
    assert_eq!(revoked.status, 200, "{}", revoked.body);
    assert_eq!(introspect(&b, access), json!({"active": false}));
}

/// A client that another instance's configuration no longer lists is disabled in the
/// database; this instance reloads its clients on the key-refresh timer (1s in the tests),
/// and from then on refuses the client's tokens even when it remembers them as active.
#[test]
fn a_client_removed_elsewhere_ends_the_answers_remembered_here() {
    let Some(db) = TestDb::create(Backend::Postgres) else {
        return;
    };
    let a = OAuthServer::start_with(db, "introspection_cache_ttl = \"60s\"");
    let access = a.webapp_tokens("read")["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(introspect(&a, &access)["active"], true);
    assert_eq!(introspect(&a, &access)["active"], true);
    assert_eq!(a.introspections_from_memory(), 1.0);

    let _c = TestServer::start(&a.db, &a.config_without_client(WEBAPP));
    let refused = eventually(Duration::from_secs(10), || {
        (introspect(&a, &access) == json!({"active": false})).then_some(())
    });
    assert!(
        refused.is_some(),
        "A still answers active for a removed client"
    );
    assert!(
        a.introspections_from_memory() > 1.0,
        "the refusal came from memory, the entry still fresh"
    );
    // The answers asked for while waiting came from memory too; so does this one.
    let before = a.introspections_from_memory();
    assert_eq!(introspect(&a, &access), json!({"active": false}));
    assert_eq!(a.introspections_from_memory(), before + 1.0);
}

#[test]
fn refresh_reuse_is_detected_across_instances() {
    let Some((a, b)) = two_instances() else {
        return;
    };
    let first = a.webapp_tokens("read");
    let old = first["refresh_token"].as_str().unwrap();
    let rotated = a.refresh(old, None);
    assert_eq!(rotated.status, 200, "{}", rotated.body);
    let rotated = rotated.json();
    let successor = rotated["refresh_token"].as_str().unwrap();
    assert_eq!(
        introspect(&b, rotated["access_token"].as_str().unwrap())["active"],
        true
    );

    let reused = b.refresh(old, None);
    assert_eq!(reused.status, 400, "{}", reused.body);
    assert_eq!(reused.json()["error"], "invalid_grant");
    for (name, at) in [("A", &a), ("B", &b)] {
        let refused = at.refresh(successor, None);
        assert_eq!(
            refused.json()["error"],
            "invalid_grant",
            "the family is revoked at {name}: {}",
            refused.body
        );
        assert_eq!(
            introspect(at, rotated["access_token"].as_str().unwrap()),
            json!({"active": false}),
            "at {name}"
        );
    }

    // Rotation itself works across instances: issued at A, rotated at B, then at A.
    let fresh = a.webapp_tokens("read");
    let at_b = b.refresh(fresh["refresh_token"].as_str().unwrap(), None);
    assert_eq!(at_b.status, 200, "{}", at_b.body);
    let at_a = a.refresh(at_b.json()["refresh_token"].as_str().unwrap(), None);
    assert_eq!(at_a.status, 200, "{}", at_a.body);
}

/// POST /token at `base` redeeming webapp's `code`, as a bare request from any thread.
fn redeem_at(base: &str, code: &str, verifier: &str) -> (u16, Value) {
    let body = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs([
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", WEBAPP_REDIRECT),
            ("code_verifier", verifier),
        ])
        .finish();
    let response = http()
        .post(&format!("{base}/token"))
        .header("Content-Type", "application/x-www-form-urlencoded")
        .header("Authorization", basic_auth(WEBAPP, WEBAPP_SECRET))
        .send(body.as_bytes())
        .expect("POST /token");
    let response = Response::from_ureq(response);
    (response.status, response.json())
}

#[test]
fn concurrent_redemptions_across_instances_have_one_winner() {
    let Some((a, b)) = two_instances() else {
        return;
    };
    const PER_INSTANCE: usize = 4;
    let mut browser = Browser::new();
    for round in 0..3 {
        let p = pkce();
        let redirect = a.authorize_with_consent(&mut browser, &webapp_params(&p));
        let code = query_value(&redirect, "code").unwrap();
        let barrier = Barrier::new(2 * PER_INSTANCE);
        let results: Vec<(u16, Value)> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..2 * PER_INSTANCE)
                .map(|i| {
                    let base = if i % 2 == 0 {
                        a.server.base_url.clone()
                    } else {
                        b.server.base_url.clone()
                    };
                    let (barrier, code, verifier) = (&barrier, &code, &p.verifier);
                    s.spawn(move || {
                        barrier.wait();
                        redeem_at(&base, code, verifier)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let winners: Vec<&Value> = results
            .iter()
            .filter(|(status, _)| *status == 200)
            .map(|(_, body)| body)
            .collect();
        assert_eq!(winners.len(), 1, "round {round}: {results:?}");
        for (status, body) in &results {
            if *status != 200 {
                assert_eq!(*status, 400, "round {round}: {body}");
                assert_eq!(body["error"], "invalid_grant", "round {round}: {body}");
            }
        }
        // The losers were replays: the winner's tokens are revoked, at both instances.
        let access = winners[0]["access_token"].as_str().unwrap();
        let revoked = eventually(Duration::from_secs(5), || {
            (introspect(&a, access)["active"] == false && introspect(&b, access)["active"] == false)
                .then_some(())
        });
        assert!(
            revoked.is_some(),
            "round {round}: the winner's token is revoked"
        );
    }
}

fn fetch_jwks(server: &OAuthServer) -> Value {
    get(&server.url("/.well-known/jwks.json"), &[]).json()
}

fn active_kid(server: &OAuthServer) -> String {
    get(&server.url("/readyz"), &[]).json()["signing_key"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn kid_of(token: &str) -> String {
    decode_header(token).unwrap().kid.unwrap()
}

/// What a resource server does with a JWK Set: verify RS256 with the token's kid.
fn verify(token: &str, jwks: &Value) -> Result<Value, String> {
    let kid = kid_of(token);
    let jwk = jwks["keys"]
        .as_array()
        .and_then(|keys| keys.iter().find(|k| k["kid"] == kid.as_str()))
        .ok_or_else(|| format!("kid {kid} not in {jwks}"))?;
    let key =
        DecodingKey::from_rsa_components(jwk["n"].as_str().unwrap(), jwk["e"].as_str().unwrap())
            .map_err(|e| e.to_string())?;
    let mut validation = Validation::new(Algorithm::RS256);
    validation.set_issuer(&["http://127.0.0.1:8080"]);
    validation.set_audience(&[SERVICE_AUDIENCE]);
    decode::<Value>(token, &key, &validation)
        .map(|d| d.claims)
        .map_err(|e| e.to_string())
}

fn service_token(at: &OAuthServer) -> String {
    let response = at.token(
        &[("grant_type", "client_credentials")],
        Some((SERVICE, SERVICE_SECRET)),
    );
    assert_eq!(response.status, 200, "{}", response.body);
    response.json()["access_token"].as_str().unwrap().to_owned()
}

#[test]
fn key_rotation_reaches_every_instance() {
    let Some((a, b)) = two_instances() else {
        return;
    };
    let old_kid = active_kid(&a);
    assert_eq!(active_kid(&b), old_kid, "both sign with the one stored key");
    let old_tokens = [service_token(&a), service_token(&b)];
    for token in &old_tokens {
        assert_eq!(kid_of(token), old_kid);
    }

    let rotate = run_cli(&a.db, &a.config, &["keys", "rotate"]);
    assert!(rotate.status.success(), "{}", stderr(&rotate));
    let new_kid = stdout(&rotate).trim().to_owned();
    assert_ne!(new_kid, old_kid);

    // keys.refresh_interval is 1s: both notice well within 10s.
    for (name, at) in [("A", &a), ("B", &b)] {
        let noticed = eventually(Duration::from_secs(10), || {
            (active_kid(at) == new_kid).then_some(())
        });
        assert!(noticed.is_some(), "{name} signs with {new_kid}");
        let jwks = eventually(Duration::from_secs(10), || {
            let jwks = fetch_jwks(at);
            let kids: Vec<&str> = jwks["keys"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|k| k["kid"].as_str())
                .collect();
            (kids.contains(&new_kid.as_str()) && kids.contains(&old_kid.as_str()))
                .then_some(jwks.clone())
        })
        .unwrap_or_else(|| panic!("{name} publishes both keys: {}", fetch_jwks(at)));
        let new_token = service_token(at);
        assert_eq!(kid_of(&new_token), new_kid, "new tokens from {name}");
        verify(&new_token, &jwks).unwrap_or_else(|e| panic!("{name}: {e}"));
        for (i, old) in old_tokens.iter().enumerate() {
            verify(old, &jwks).unwrap_or_else(|e| panic!("old token {i} at {name}: {e}"));
            assert_eq!(
                introspect(at, old)["active"],
                true,
                "old token {i} introspected at {name}"
            );
        }
    }
    // A token signed by B after the rotation verifies with A's key set, and the reverse.
    let (from_a, from_b) = (service_token(&a), service_token(&b));
    verify(&from_b, &fetch_jwks(&a)).unwrap();
    verify(&from_a, &fetch_jwks(&b)).unwrap();
    assert_eq!(introspect(&a, &from_b)["active"], true);
    assert_eq!(introspect(&b, &from_a)["active"], true);
}
