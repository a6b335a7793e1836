use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use gatehouse::crypto::secret_box::SecretBox;
use gatehouse::keys::SigningKey;
use serde_json::{json, Value};

use crate::on_both_backends;
use crate::support::*;

/// An access token of webapp's, from a whole authorization-code flow.
fn webapp_access_token(app: &OAuthServer) -> String {
    app.webapp_tokens("read")["access_token"]
        .as_str()
        .unwrap()
        .to_owned()
}

on_both_backends!(
    introspection_reports_live_tokens,
    revoking_a_refresh_token_ends_its_whole_grant,
    revoking_an_access_token_and_other_clients_tokens,
    forged_and_expired_tokens_are_inactive,
    only_the_right_clients_may_call,
    concurrent_introspections_each_get_their_own_answer,
    tokens_of_a_client_no_longer_registered_are_inactive,
    tokens_of_a_user_erased_by_hand_are_inactive,
    introspection_remembers_active_tokens_until_a_revocation_here,
);

/// With a long `tokens.introspection_cache_ttl`, a token asked about again is answered from
/// memory, and a revocation made at this instance still counts for the very next answer:
/// a refresh token's family (and so its access token), an access token on its own; other
/// grants' answers stay in memory.
fn introspection_remembers_active_tokens_until_a_revocation_here(db: TestDb) {
    let app = OAuthServer::start_with(db, "introspection_cache_ttl = \"60s\"");
    let tokens = app.webapp_tokens("read");
    let (access, refresh) = (
        tokens["access_token"].as_str().unwrap(),
        tokens["refresh_token"].as_str().unwrap(),
    );
    let service = app.token(
        &[("grant_type", "client_credentials")],
        Some((SERVICE, SERVICE_SECRET)),
    );
    let service_token = service.json()["access_token"].as_str().unwrap().to_owned();

    let first = introspect(&app, access);
    assert_eq!(first["active"], true);
    assert_eq!(
        app.introspections_from_memory(),
        0.0,
        "the first answer reads the database"
    );
    assert_eq!(
        introspect(&app, access),
        first,
        "the same answer from memory"
    );
    assert_eq!(introspect(&app, &service_token)["active"], true);
    assert_eq!(introspect(&app, &service_token)["active"], true);
    assert_eq!(app.introspections_from_memory(), 2.0);

    assert_eq!(revoke(&app, refresh, (WEBAPP, WEBAPP_SECRET)).status, 200);
    assert_eq!(introspect(&app, access), json!({"active": false}));
    // The family's revocation reaches nothing else: the service token is still remembered.
    assert_eq!(introspect(&app, &service_token)["active"], true);
    assert_eq!(app.introspections_from_memory(), 3.0);
    assert_eq!(
        revoke(&app, &service_token, (SERVICE, SERVICE_SECRET)).status,
        200
    );
    assert_eq!(introspect(&app, &service_token), json!({"active": false}));
    assert_eq!(
        app.introspections_from_memory(),
        3.0,
        "no stale answer from memory"
    );

    // Answers are remembered again after a revocation; revoking an already revoked token
    // changes nothing, and does not cost the remembered answers (a client could repeat it).
    let another = webapp_access_token(&app);
    assert_eq!(introspect(&app, &another)["active"], true);
    assert_eq!(introspect(&app, &another)["active"], true);
    assert_eq!(app.introspections_from_memory(), 4.0);
    for token in [refresh, &service_token] {
        assert_eq!(revoke(&app, token, (WEBAPP, WEBAPP_SECRET)).status, 200);
    }
    assert_eq!(
        revoke(&app, &service_token, (SERVICE, SERVICE_SECRET)).status,
        200
    );
    assert_eq!(introspect(&app, &another)["active"], true);
    assert_eq!(app.introspections_from_memory(), 5.0);

    // A revocation of another grant's token leaves this one's answer in memory.
    let fresh = app.token(
        &[("grant_type", "client_credentials")],
        Some((SERVICE, SERVICE_SECRET)),
    );
    let fresh = fresh.json()["access_token"].as_str().unwrap().to_owned();
    assert_eq!(revoke(&app, &fresh, (SERVICE, SERVICE_SECRET)).status, 200);
    assert_eq!(introspect(&app, &fresh), json!({"active": false}));
    assert_eq!(introspect(&app, &another)["active"], true);
    assert_eq!(app.introspections_from_memory(), 6.0);
}

/// gatehouse only disables users, but an operator may erase one in SQL; the cascades take
/// the user's families, and their unexpired access tokens introspect as inactive with them
/// (at once with the introspection cache off, as here; within its time otherwise).
fn tokens_of_a_user_erased_by_hand_are_inactive(db: TestDb) {
    use diesel::prelude::*;
    use gatehouse::storage::schema::users;

    let app = OAuthServer::start_with(db, "introspection_cache_ttl = \"0s\"");
    let tokens = app.webapp_tokens("read");
    let access = tokens["access_token"].as_str().unwrap();
    let refresh = tokens["refresh_token"].as_str().unwrap();
    assert_eq!(app.introspect(access)["active"], true);

    let erased = diesel::delete(users::table.filter(users::username.eq(USERNAME)))
        .execute(&mut app.db.connect())
        .unwrap();
    assert_eq!(erased, 1);
    assert_eq!(app.introspect(access), json!({"active": false}));
    let refused = app.refresh(refresh, None);
    assert_eq!(refused.status, 400, "{}", refused.body);
    assert_eq!(refused.json()["error"], "invalid_grant");
}

/// A client removed from the configuration can no longer refresh; its access tokens, still
/// unexpired, introspect as inactive too, while other clients' stay active.
fn tokens_of_a_client_no_longer_registered_are_inactive(db: TestDb) {
    let app = OAuthServer::start(db);
    let webapp_access = webapp_access_token(&app);
    let service = app.token(
        &[("grant_type", "client_credentials")],
        Some((SERVICE, SERVICE_SECRET)),
    );
    let service_access = service.json()["access_token"].as_str().unwrap().to_owned();
    assert_eq!(app.introspect(&webapp_access)["active"], true);

    let config = app.config_without_client(WEBAPP);
    let after = OAuthServer {
        db: std::sync::Arc::clone(&app.db),
        server: TestServer::start(&app.db, &config),
        user_id: app.user_id.clone(),
        config,
    };
    assert_eq!(after.introspect(&webapp_access), json!({"active": false}));
    assert_eq!(after.introspect(&service_access)["active"], true);
}

fn introspect(app: &OAuthServer, token: &str) -> Value {
    app.introspect(token)
}

fn revoke(app: &OAuthServer, token: &str, client: (&str, &str)) -> Response {
    app.post_form("/revoke", &[("token", token)], Some(client))
}

fn introspection_reports_live_tokens(db: TestDb) {
    let app = OAuthServer::start(db);
    let tokens = app.webapp_tokens("read");
    let access = introspect(&app, tokens["access_token"].as_str().unwrap());
    assert_eq!(access["active"], true);
    assert_eq!(access["scope"], "read");
    assert_eq!(access["client_id"], WEBAPP);
    assert_eq!(access["sub"], app.user_id.as_str());
    assert_eq!(access["iss"], "http://127.0.0.1:8080");
    assert_eq!(access["aud"], json!([AUDIENCE]));
    assert_eq!(access["token_type"], "Bearer");
    assert!(access["exp"].as_i64().unwrap() > access["iat"].as_i64().unwrap());
    assert!(access["jti"].is_string());

    let refresh = tokens["refresh_token"].as_str().unwrap();
    let own = app
        .post_form(
            "/introspect",
            &[("token", refresh)],
            Some((WEBAPP, WEBAPP_SECRET)),
        )
        .json();
    assert_eq!(own["active"], true);
    assert_eq!(own["token_type"], "refresh_token");
    assert_eq!(own["client_id"], WEBAPP);
    assert_eq!(
        introspect(&app, refresh),
        json!({"active": false}),
        "another client's refresh token"
    );
    assert_eq!(introspect(&app, "no-such-token"), json!({"active": false}));
}

fn revoking_a_refresh_token_ends_its_whole_grant(db: TestDb) {
    let app = OAuthServer::start(db);
    let first = app.webapp_tokens("read");
    let refreshed = app
        .refresh(first["refresh_token"].as_str().unwrap(), None)
        .json();
    let refresh = refreshed["refresh_token"].as_str().unwrap();

    let response = revoke(&app, refresh, (WEBAPP, WEBAPP_SECRET));
    assert_eq!(response.status, 200, "{}", response.body);
    assert_eq!(app.refresh(refresh, None).json()["error"], "invalid_grant");
    for token in [&first["access_token"], &refreshed["access_token"]] {
        assert_eq!(
            introspect(&app, token.as_str().unwrap()),
            json!({"active": false})
        );
    }
    assert_eq!(
        revoke(&app, refresh, (WEBAPP, WEBAPP_SECRET)).status,
        200,
        "already revoked: still 200"
    );
    assert_eq!(
        revoke(&app, "unknown-token", (WEBAPP, WEBAPP_SECRET)).status,
        200
    );
}

fn revoking_an_access_token_and_other_clients_tokens(db: TestDb) {
    let app = OAuthServer::start(db);
    let tokens = app.webapp_tokens("read");
    let access = tokens["access_token"].as_str().unwrap();
    let refresh = tokens["refresh_token"].as_str().unwrap();

    // Another client's attempt changes nothing.
    assert_eq!(revoke(&app, access, (OTHER, OTHER_SECRET)).status, 200);
    assert_eq!(revoke(&app, refresh, (OTHER, OTHER_SECRET)).status, 200);
    assert_eq!(introspect(&app, access)["active"], true);
    assert_eq!(app.refresh(refresh, None).status, 200);

    // Its own client revokes the access token alone: its family lives on.
    assert_eq!(revoke(&app, access, (WEBAPP, WEBAPP_SECRET)).status, 200);
    assert_eq!(introspect(&app, access), json!({"active": false}));
    assert_eq!(app.live_families(), 1);

    // A client-credentials token has no family; its jti is recorded as revoked.
    let service = app
        .token(
            &[("grant_type", "client_credentials")],
            Some((SERVICE, SERVICE_SECRET)),
        )
        .json();
    let service_token = service["access_token"].as_str().unwrap();
    assert_eq!(introspect(&app, service_token)["active"], true);
    assert_eq!(
        revoke(&app, service_token, (SERVICE, SERVICE_SECRET)).status,
        200
    );
    assert_eq!(introspect(&app, service_token), json!({"active": false}));
}

fn sign(db: &TestDb, claims: &Value) -> String {
    let mut conn = db.connect();
    let row = gatehouse::storage::keys::active(&mut conn)
        .unwrap()
        .unwrap();
    let seal = SecretBox::new(SYSTEM_SECRET, gatehouse::keys::SEAL_PURPOSE);
    SigningKey::from_row(&row, &seal)
        .unwrap()
        .sign_access_token(claims)
        .unwrap()
}

fn forged_and_expired_tokens_are_inactive(db: TestDb) {
    let app = OAuthServer::start(db);
    let now = gatehouse::storage::now_unix();
    let claims = |exp: i64| {
        json!({"iss": "http://127.0.0.1:8080", "sub": "u", "aud": [AUDIENCE], "exp": exp, "iat": now,
               "jti": format!("j{exp}"), "client_id": WEBAPP, "scope": "read"})
    };
    let good = sign(&app.db, &claims(now + 600));
    assert_eq!(
        introspect(&app, &good)["active"],
        true,
        "the control: our own live token"
    );

    let expired = sign(&app.db, &claims(now - 10));
    assert_eq!(
        introspect(&app, &expired),
        json!({"active": false}),
        "expired"
    );

    let mut parts: Vec<String> = good.split('.').map(str::to_owned).collect();
    parts[1] = URL_SAFE_NO_PAD.encode(claims(now + 6000).to_string());
    assert_eq!(
        introspect(&app, &parts.join(".")),
        json!({"active": false}),
        "tampered"
    );

    let none_header = URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"at+jwt"}"#);
    let unsigned = format!(
        "{none_header}.{}.",
        URL_SAFE_NO_PAD.encode(claims(now + 600).to_string())
    );
    assert_eq!(
        introspect(&app, &unsigned),
        json!({"active": false}),
        "alg=none"
    );

    // HS256 keyed with the public key (the classic algorithm-confusion forgery).
    let jwks = get(&app.url("/.well-known/jwks.json"), &[]).json();
    let kid = jwks["keys"][0]["kid"].as_str().unwrap().to_owned();
    let n = URL_SAFE_NO_PAD
        .decode(jwks["keys"][0]["n"].as_str().unwrap())
        .unwrap();
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    header.kid = Some(kid.clone());
    let hs256 = jsonwebtoken::encode(
        &header,
        &claims(now + 600),
        &jsonwebtoken::EncodingKey::from_secret(&n),
    )
    .unwrap();
    assert_eq!(
        introspect(&app, &hs256),
        json!({"active": false}),
        "HS256 with the public key"
    );

    // Signed by a key that was never published.
    let stranger = SecretBox::new(
        "another-system-secret-0123456789abcdef",
        gatehouse::keys::SEAL_PURPOSE,
    );
    let (unknown_key, _) = SigningKey::generate(2048, &stranger, now).unwrap();
    let unknown = unknown_key.sign_access_token(&claims(now + 600)).unwrap();
    assert_eq!(
        introspect(&app, &unknown),
        json!({"active": false}),
        "unknown kid"
    );

    // Another issuer's token, signed with our key.
    let mut foreign = claims(now + 600);
    foreign["iss"] = json!("https://evil.example.com");
    assert_eq!(
        introspect(&app, &sign(&app.db, &foreign)),
        json!({"active": false}),
        "wrong iss"
    );
}

fn only_the_right_clients_may_call(db: TestDb) {
    let app = OAuthServer::start(db);
    let token = webapp_access_token(&app);
    let public = app.post_form(
        "/introspect",
        &[("token", &token), ("client_id", SPA)],
        None,
    );
    assert_eq!(public.status, 401, "a public client cannot introspect");
    assert_eq!(public.json()["error"], "invalid_client");
    let anonymous = app.post_form("/introspect", &[("token", &token)], None);
    assert_eq!(anonymous.status, 401);
    let wrong = app.post_form(
        "/introspect",
        &[("token", &token)],
        Some((SERVICE, "wrong")),
    );
    assert_eq!(wrong.status, 401);
    let missing = app.post_form("/introspect", &[], Some((SERVICE, SERVICE_SECRET)));
    assert_eq!(missing.json()["error"], "invalid_request");

    // RFC 7009 2.1: a public client revokes by client_id alone.
    let by_public = app.post_form(
        "/revoke",
        &[("token", "whatever"), ("client_id", SPA)],
        None,
    );
    assert_eq!(by_public.status, 200, "{}", by_public.body);
    let unauthenticated = app.post_form("/revoke", &[("token", &token)], None);
    assert_eq!(unauthenticated.status, 401);
    let impostor = app.post_form("/revoke", &[("token", &token), ("client_id", WEBAPP)], None);
    assert_eq!(
        impostor.status, 401,
        "a confidential client must authenticate"
    );
}

/// Introspections in flight together share one revocation query; each must still get the
/// answer for its own token. Every third token is revoked: client-credentials tokens by
/// their jti, and a refresh grant's access token through its family.
fn concurrent_introspections_each_get_their_own_answer(db: TestDb) {
    let app = OAuthServer::start(db);
    let mut tokens: Vec<(String, bool)> = (0..18)
        .map(|i| {
            let minted = app
                .token(
                    &[("grant_type", "client_credentials")],
                    Some((SERVICE, SERVICE_SECRET)),
                )
                .json();
            let token = minted["access_token"].as_str().unwrap().to_owned();
            let revoked = i % 3 == 0;
            if revoked {
                assert_eq!(revoke(&app, &token, (SERVICE, SERVICE_SECRET)).status, 200);
            }
            (token, revoked)
        })
        .collect();
    for revoked in [true, false] {
        let grant = app.webapp_tokens("read");
        if revoked {
            let refresh = grant["refresh_token"].as_str().unwrap();
            assert_eq!(revoke(&app, refresh, (WEBAPP, WEBAPP_SECRET)).status, 200);
        }
        tokens.push((grant["access_token"].as_str().unwrap().to_owned(), revoked));
    }

    // Two threads per token, so that one query may be asked about the same jti twice.
    let asked: Vec<&(String, bool)> = tokens.iter().chain(&tokens).collect();
    let answers: Vec<Vec<bool>> = std::thread::scope(|s| {
        let workers: Vec<_> = asked
            .iter()
            .map(|(token, _)| {
                let app = &app;
                s.spawn(move || {
                    (0..4)
                        .map(|_| introspect(app, token)["active"] == true)
                        .collect::<Vec<bool>>()
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).collect()
    });
    for ((_, revoked), answers) in asked.iter().zip(&answers) {
        assert!(
            answers.iter().all(|active| active != revoked),
            "revoked {revoked}, answers {answers:?}"
        );
    }
}
