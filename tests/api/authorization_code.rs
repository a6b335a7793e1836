use std::time::Duration;

use diesel::prelude::*;
use gatehouse::storage::schema::token_families;
use jsonwebtoken::{decode, decode_header, Algorithm, DecodingKey, Validation};
use serde_json::Value;

use crate::on_both_backends;
use crate::support::*;

on_both_backends!(
    the_whole_flow_issues_an_rfc9068_token,
    unknown_clients_and_redirects_get_an_html_400_never_a_redirect,
    other_authorization_errors_redirect_with_state_and_iss,
    pkce_is_s256_only_and_required_for_public_clients,
    token_endpoint_pkce_failures_are_invalid_grant,
    a_second_redemption_fails_and_revokes_the_tokens,
    a_code_is_recorded_only_when_presented,
    a_code_opens_only_where_it_was_sealed,
    a_code_of_a_user_disabled_since_gives_nothing,
    a_code_of_a_user_deleted_since_gives_nothing,
    a_code_issued_without_redirect_uri_redeems_without_it,
    a_code_is_bound_to_its_client,
    an_expired_code_is_refused,
    concurrent_redemptions_have_exactly_one_winner,
    a_failed_presentation_racing_a_redemption_revokes_it,
    forms_without_a_valid_csrf_token_are_refused,
    the_consent_form_is_bound_to_the_request_it_shows,
    fields_a_browser_alters_do_not_reach_the_consent_form,
    consent_is_remembered_denied_or_skipped,
    client_authentication_methods,
    wrong_credentials_rerender_the_login_page_alike,
    logout_ends_the_session,
);

fn webapp_params<'a>(p: &'a Pkce, scope: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("response_type", "code"),
        ("client_id", WEBAPP),
        ("redirect_uri", WEBAPP_REDIRECT),
        ("scope", scope),
        ("state", "st-123"),
        ("code_challenge", &p.challenge),
        ("code_challenge_method", "S256"),
    ]
}

fn redeem(app: &OAuthServer, code: &str, verifier: &str) -> Response {
    app.redeem_webapp_code(code, verifier)
}

/// The consent page an authorization request leads to, alice signing in on the way.
fn consent_page(app: &OAuthServer, browser: &mut Browser, params: &[(&str, &str)]) -> Response {
    let first = browser.get(&app.authorize_url(params));
    let after_login = app.login(browser, &first);
    browser.get(&app.url(after_login.header("location").unwrap()))
}

fn code_for_webapp(app: &OAuthServer, browser: &mut Browser, p: &Pkce) -> String {
    let redirect = app.authorize_with_consent(browser, &webapp_params(p, "read"));
    query_value(&redirect, "code").expect("a code")
}

fn the_whole_flow_issues_an_rfc9068_token(db: TestDb) {
    let app = OAuthServer::start(db);
    let mut browser = Browser::new();
    let p = pkce();

    let first = browser.get(&app.authorize_url(&webapp_params(&p, "read openid")));
    let after_login = app.login(&mut browser, &first);
    assert_eq!(
        after_login.status, 303,
        "RFC 9700 4.12: 303 after the login POST"
    );
    let session_cookie = browser
        .set_cookie_headers
        .iter()
        .find(|h| h.starts_with("gatehouse_session="))
        .expect("a session cookie")
        .to_ascii_lowercase();
    assert!(
        session_cookie.contains("httponly") && session_cookie.contains("samesite=lax"),
        "{session_cookie}"
    );
    assert!(
        !session_cookie.contains("secure"),
        "not Secure for an http issuer: {session_cookie}"
    );

    let consent = browser.get(&app.url(after_login.header("location").unwrap()));
    assert_eq!(consent.status, 200);
    assert!(
        consent.body.contains("Example Web App"),
        "client name on the consent page"
    );
    assert!(
        consent.body.contains("read your data") && consent.body.contains("openid"),
        "scopes in plain words"
    );
    assert!(consent
        .header("content-security-policy")
        .unwrap()
        .contains("frame-ancestors 'none'"));
    let redirect = app.decide(&mut browser, &consent, "allow");
    assert_eq!(redirect.status, 303);
    let location = url::Url::parse(redirect.header("location").unwrap()).unwrap();
    assert!(location.as_str().starts_with(WEBAPP_REDIRECT));
    assert_eq!(query_value(&location, "state").as_deref(), Some("st-123"));
    assert_eq!(
        query_value(&location, "iss").as_deref(),
        Some("http://127.0.0.1:8080"),
        "RFC 9207"
    );
    let code = query_value(&location, "code").unwrap();
    assert!(code.len() >= 43, "at least 256 bits: {code}");

    let response = redeem(&app, &code, &p.verifier);
    assert_eq!(response.status, 200, "{}", response.body);
    assert_eq!(response.header("cache-control"), Some("no-store"));
    assert_eq!(response.header("pragma"), Some("no-cache"));
    let body = response.json();
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["scope"], "openid read");
    assert_eq!(body["expires_in"], 900, "{body}");
    let refresh = body["refresh_token"].as_str().expect("webapp may refresh");
    assert!(refresh.len() >= 43);

    let token = body["access_token"].as_str().unwrap();
    let header = decode_header(token).unwrap();
    assert_eq!(header.typ.as_deref(), Some("at+jwt"));
    let jwks = get(&app.url("/.well-known/jwks.json"), &[]).json();
    let jwk = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == header.kid.clone().unwrap().as_str())
        .unwrap()
        .clone();
    let key =
        DecodingKey::from_rsa_components(jwk["n"].as_str().unwrap(), jwk["e"].as_str().unwrap())
            .unwrap();
    let mut validation = Validation::new(Algorithm::RS256);
    validation.set_issuer(&["http://127.0.0.1:8080"]);
    validation.set_audience(&[AUDIENCE]);
    let claims = decode::<Value>(token, &key, &validation)
        .expect("verifies with the JWKS")
        .claims;
    assert_eq!(claims["sub"], app.user_id.as_str());
    assert_eq!(claims["client_id"], WEBAPP);
    assert_eq!(claims["scope"], "openid read");
    assert_eq!(
        claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
        900
    );
    assert!(claims["jti"].as_str().is_some_and(|j| !j.is_empty()));

    // Stored only as digests.
    let mut conn = app.db.connect();
    let codes: Vec<String> = gatehouse::storage::schema::authorization_codes::table
        .select(gatehouse::storage::schema::authorization_codes::code_hash)
        .load(&mut conn)
        .unwrap();
    assert!(!codes.contains(&code));
    use gatehouse::storage::schema::token_families;
    let refreshes: Vec<Option<String>> = token_families::table
        .select(token_families::refresh_hash)
        .load(&mut conn)
        .unwrap();
    assert_eq!(refreshes.len(), 1);
    let stored = refreshes[0]
        .as_deref()
        .expect("the family holds its refresh token");
    assert_ne!(stored, refresh);
    assert_eq!(stored, gatehouse::crypto::mac::digest_secret(refresh));
}

fn assert_html_400(response: &Response, why: &str) {
    assert_eq!(response.status, 400, "{why}: {}", response.body);
    assert!(
        response.header("location").is_none(),
        "{why}: must not redirect"
    );
    assert!(
        response
            .header("content-type")
            .unwrap()
            .starts_with("text/html"),
        "{why}"
    );
    assert!(response.body.contains("role=\"alert\""), "{why}");
}

fn unknown_clients_and_redirects_get_an_html_400_never_a_redirect(db: TestDb) {
    let app = OAuthServer::start(db);
    let mut browser = Browser::new();
    let p = pkce();
    let with = |key: &str, value: &str| -> Vec<(String, String)> {
        webapp_params(&p, "read")
            .into_iter()
            .map(|(k, v)| {
                (
                    k.to_owned(),
                    if k == key {
                        value.to_owned()
                    } else {
                        v.to_owned()
                    },
                )
            })
            .collect()
    };
    let url_of = |params: &[(String, String)]| {
        let pairs: Vec<(&str, &str)> = params
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        app.authorize_url(&pairs)
    };
    for (why, params) in [
        ("unknown client", with("client_id", "nobody")),
        (
            "unregistered redirect_uri",
            with("redirect_uri", "https://evil.example.com/callback"),
        ),
        (
            "redirect_uri with a trailing slash",
            with("redirect_uri", "https://app.example.com/callback/"),
        ),
        (
            "redirect_uri with a query",
            with("redirect_uri", "https://app.example.com/callback?x=1"),
        ),
        (
            "redirect_uri in another case",
            with("redirect_uri", "https://APP.example.com/callback"),
        ),
        (
            "redirect_uri on another port",
            with("redirect_uri", "https://app.example.com:444/callback"),
        ),
    ] {
        assert_html_400(&browser.get(&url_of(&params)), why);
    }
    let no_client: Vec<(String, String)> = with("", "")
        .into_iter()
        .filter(|(k, _)| k != "client_id")
        .collect();
    assert_html_400(&browser.get(&url_of(&no_client)), "no client_id");
    let no_redirect: Vec<(String, String)> = with("", "")
        .into_iter()
        .filter(|(k, _)| k != "redirect_uri")
        .collect();
    assert_html_400(
        &browser.get(&url_of(&no_redirect)),
        "webapp has two URIs: redirect_uri is required",
    );
    let mut twice = with("", "");
    twice.push(("redirect_uri".into(), WEBAPP_REDIRECT.into()));
    assert_html_400(&browser.get(&url_of(&twice)), "redirect_uri sent twice");
    let mut client_twice = with("", "");
    client_twice.push(("client_id".into(), WEBAPP.into()));
    assert_html_400(&browser.get(&url_of(&client_twice)), "client_id sent twice");
}

fn error_of(response: &Response) -> (url::Url, String) {
    assert_eq!(response.status, 303, "{}", response.body);
    let location = url::Url::parse(response.header("location").unwrap()).unwrap();
    let error = query_value(&location, "error").unwrap_or_default();
    (location, error)
}

fn other_authorization_errors_redirect_with_state_and_iss(db: TestDb) {
    let app = OAuthServer::start(db);
    let mut browser = Browser::new();
    let p = pkce();
    let mut implicit = webapp_params(&p, "read");
    implicit[0] = ("response_type", "token");
    let (location, error) = error_of(&browser.get(&app.authorize_url(&implicit)));
    assert_eq!(error, "unsupported_response_type");
    assert!(location.as_str().starts_with(WEBAPP_REDIRECT));
    assert_eq!(query_value(&location, "state").as_deref(), Some("st-123"));
    assert_eq!(
        query_value(&location, "iss").as_deref(),
        Some("http://127.0.0.1:8080")
    );
    assert!(query_value(&location, "error_description").is_some());

    let (location, error) =
        error_of(&browser.get(&app.authorize_url(&webapp_params(&p, "read admin"))));
    assert_eq!(error, "invalid_scope", "{location}");
    assert_eq!(query_value(&location, "state").as_deref(), Some("st-123"));

    let mut repeated = webapp_params(&p, "read");
    repeated.push(("scope", "write"));
    let (_, error) = error_of(&browser.get(&app.authorize_url(&repeated)));
    assert_eq!(error, "invalid_request");

    // No scope: the client's default_scopes.
    let params: Vec<(&str, &str)> = webapp_params(&p, "")
        .into_iter()
        .filter(|(k, _)| *k != "scope")
        .collect();
    let redirect = app.authorize_with_consent(&mut browser, &params);
    let code = query_value(&redirect, "code").unwrap();
    assert_eq!(redeem(&app, &code, &p.verifier).json()["scope"], "read");
}

fn spa_params<'a>(
    challenge: Option<&'a str>,
    method: Option<&'a str>,
    redirect: &'a str,
) -> Vec<(&'a str, &'a str)> {
    let mut params = vec![
        ("response_type", "code"),
        ("client_id", SPA),
        ("redirect_uri", redirect),
        ("state", "s"),
    ];
    if let Some(challenge) = challenge {
        params.push(("code_challenge", challenge));
    }
    if let Some(method) = method {
        params.push(("code_challenge_method", method));
    }
    params
}

fn pkce_is_s256_only_and_required_for_public_clients(db: TestDb) {
    let app = OAuthServer::start(db);
    let mut browser = Browser::new();
    let p = pkce();
    for (why, params) in [
        (
            "public client without PKCE",
            spa_params(None, None, SPA_REDIRECT),
        ),
        (
            "plain",
            spa_params(Some(&p.verifier), Some("plain"), SPA_REDIRECT),
        ),
        (
            "no method means plain",
            spa_params(Some(&p.challenge), None, SPA_REDIRECT),
        ),
        (
            "unknown method",
            spa_params(Some(&p.challenge), Some("S512"), SPA_REDIRECT),
        ),
        (
            "malformed challenge",
            spa_params(Some("short"), Some("S256"), SPA_REDIRECT),
        ),
    ] {
        let (_, error) = error_of(&browser.get(&app.authorize_url(&params)));
        assert_eq!(error, "invalid_request", "{why}");
    }

    // RFC 8252 7.3: a loopback redirect of a public client may use any port.
    let redirect_uri = "http://127.0.0.1:53127/callback";
    let redirect = app.authorize_with_consent(
        &mut browser,
        &spa_params(Some(&p.challenge), Some("S256"), redirect_uri),
    );
    assert!(redirect.as_str().starts_with(redirect_uri), "{redirect}");
    let code = query_value(&redirect, "code").unwrap();
    let response = app.token(
        &[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", redirect_uri),
            ("client_id", SPA),
            ("code_verifier", &p.verifier),
        ],
        None,
    );
    assert_eq!(response.status, 200, "{}", response.body);
    assert!(
        response.json().get("refresh_token").is_none(),
        "spa has no refresh_token grant"
    );
}

fn token_endpoint_pkce_failures_are_invalid_grant(db: TestDb) {
    let app = OAuthServer::start(db);
    let mut browser = Browser::new();
    let p = pkce();

    let code = code_for_webapp(&app, &mut browser, &p);
    let wrong = redeem(&app, &code, &pkce().verifier);
    assert_eq!(wrong.status, 400);
    assert_eq!(wrong.json()["error"], "invalid_grant");
    // A code is good for one attempt: the right verifier after a wrong one is too late.
    let retry = redeem(&app, &code, &p.verifier);
    assert_eq!(retry.json()["error"], "invalid_grant", "{}", retry.body);
    let families: i64 = token_families::table
        .count()
        .get_result(&mut app.db.connect())
        .unwrap();
    assert_eq!(families, 0, "nothing was issued for the code");
    let replay_detail = eventually(Duration::from_secs(10), || {
        use gatehouse::storage::schema::audit_events;
        audit_events::table
            .filter(audit_events::event.eq("code_replay_detected"))
            .select(audit_events::detail)
            .first::<Option<String>>(&mut app.db.connect())
            .ok()
            .flatten()
    });
    assert_eq!(
        replay_detail.as_deref(),
        Some("an authorization code was presented again; it had issued no tokens"),
        "the trail does not claim a revocation that did not happen"
    );

    let code = code_for_webapp(&app, &mut browser, &p);
    let missing = app.token(
        &[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", WEBAPP_REDIRECT),
        ],
        Some((WEBAPP, WEBAPP_SECRET)),
    );
    assert_eq!(missing.json()["error"], "invalid_grant", "{}", missing.body);

    // A confidential client may skip PKCE, but then must not send a verifier (RFC 9700 2.1.1).
    let params: Vec<(&str, &str)> = webapp_params(&p, "read")
        .into_iter()
        .filter(|(k, _)| !k.starts_with("code_challenge"))
        .collect();
    let redirect = app.authorize_with_consent(&mut browser, &params);
    let code = query_value(&redirect, "code").unwrap();
    let stray = redeem(&app, &code, &p.verifier);
    assert_eq!(stray.json()["error"], "invalid_grant", "{}", stray.body);

    let redirect = app.authorize_with_consent(&mut browser, &params);
    let code = query_value(&redirect, "code").unwrap();
    let plain = app.token(
        &[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", WEBAPP_REDIRECT),
        ],
        Some((WEBAPP, WEBAPP_SECRET)),
    );
    assert_eq!(plain.status, 200, "{}", plain.body);
}

fn a_second_redemption_fails_and_revokes_the_tokens(db: TestDb) {
    let app = OAuthServer::start(db);
    let mut browser = Browser::new();
    let p = pkce();
    let code = code_for_webapp(&app, &mut browser, &p);
    let first = redeem(&app, &code, &p.verifier);
    assert_eq!(first.status, 200);
    let token = first.json()["access_token"].as_str().unwrap().to_owned();
    assert_eq!(app.introspect(&token)["active"], true);

    let second = redeem(&app, &code, &p.verifier);
    assert_eq!(second.status, 400);
    assert_eq!(second.json()["error"], "invalid_grant");

    assert_eq!(
        app.introspect(&token),
        serde_json::json!({"active": false}),
        "the access token from the first redemption is revoked"
    );
    assert_eq!(
        app.live_families(),
        0,
        "its refresh token family is revoked"
    );

    let garbage = redeem(&app, "not-a-code", &p.verifier);
    assert_eq!(garbage.json()["error"], "invalid_grant");
}

/// The rows of `authorization_codes`: digest, family, and whether it is marked redeemed.
fn code_rows(app: &OAuthServer) -> Vec<(String, Option<String>, bool)> {
    use gatehouse::storage::schema::authorization_codes as codes;
    codes::table
        .select((codes::code_hash, codes::family_id, codes::redeemed_at))
        .load::<(String, Option<String>, Option<i64>)>(&mut app.db.connect())
        .unwrap()
        .into_iter()
        .map(|(hash, family, redeemed)| (hash, family, redeemed.is_some()))
        .collect()
}

/// A code carries its grant sealed: issuing it writes nothing, an altered one opens to
/// nothing, and the code is recorded (by its digest) in the commit that issues its tokens.
fn a_code_is_recorded_only_when_presented(db: TestDb) {
    let app = OAuthServer::start(db);
    let mut browser = Browser::new();
    let p = pkce();
    let code = code_for_webapp(&app, &mut browser, &p);
    assert_eq!(code_rows(&app), vec![], "/authorize stored nothing");
    for hidden in [WEBAPP, "app.example.com", "alice", "read"] {
        assert!(!code.contains(hidden), "the code shows {hidden:?}: {code}");
    }

    let mut altered = code.clone().into_bytes();
    let middle = altered.len() / 2;
    altered[middle] = if altered[middle] == b'x' { b'y' } else { b'x' };
    let altered = String::from_utf8(altered).unwrap();
    let refused = redeem(&app, &altered, &p.verifier);
    assert_eq!(refused.status, 400);
    assert_eq!(refused.json()["error"], "invalid_grant");
    assert_eq!(code_rows(&app), vec![], "an altered code spends nothing");

    let redeemed = redeem(&app, &code, &p.verifier);
    assert_eq!(redeemed.status, 200, "{}", redeemed.body);
    let family: String = token_families::table
        .select(token_families::id)
        .get_result(&mut app.db.connect())
        .unwrap();
    assert_eq!(
        code_rows(&app),
        vec![(
            gatehouse::crypto::mac::digest_secret(&code),
            Some(family),
            true
        )]
    );
}

/// The key that seals codes is made per deployment and kept in its database (sealed under
/// `secrets.system`): another deployment with the same secret cannot open this one's codes.
fn a_code_opens_only_where_it_was_sealed(db: TestDb) {
    let backend = if db.url.starts_with("sqlite") {
        Backend::Sqlite
    } else {
        Backend::Postgres
    };
    let app = OAuthServer::start(db);
    let mut browser = Browser::new();
    let p = pkce();
    let code = code_for_webapp(&app, &mut browser, &p);

    let elsewhere = OAuthServer::start(TestDb::create(backend).expect("a second database"));
    let refused = redeem(&elsewhere, &code, &p.verifier);
    assert_eq!(refused.status, 400, "{}", refused.body);
    assert_eq!(refused.json()["error"], "invalid_grant");
    assert_eq!(code_rows(&elsewhere), vec![]);

    let redeemed = redeem(&app, &code, &p.verifier);
    assert_eq!(redeemed.status, 200, "still good where it was sealed");
}

/// Disabling a user revokes their grants; a code issued a moment before must not start a
/// new one. The code is spent.
fn a_code_of_a_user_disabled_since_gives_nothing(db: TestDb) {
    let app = OAuthServer::start(db);
    let mut browser = Browser::new();
    let p = pkce();
    let code = code_for_webapp(&app, &mut browser, &p);
    gatehouse::accounts::set_disabled(&mut app.db.connect(), USERNAME, true).unwrap();

    let refused = redeem(&app, &code, &p.verifier);
    assert_eq!(refused.status, 400, "{}", refused.body);
    assert_eq!(refused.json()["error"], "invalid_grant");
    assert_eq!(app.live_families(), 0);
    let rows = code_rows(&app);
    assert_eq!(rows.len(), 1);
    assert_eq!(
        (&rows[0].1, rows[0].2),
        (&None, true),
        "spent, for no family"
    );
}

/// gatehouse only disables users, but an operator may erase one in SQL (the cascades take
/// the sessions, consents and families). A code issued before that is refused like any
/// invalid code, not with a 500 from a foreign key, and writes nothing.
fn a_code_of_a_user_deleted_since_gives_nothing(db: TestDb) {
    let app = OAuthServer::start(db);
    let mut browser = Browser::new();
    let p = pkce();
    let code = code_for_webapp(&app, &mut browser, &p);
    {
        use gatehouse::storage::schema::users;
        let mut conn = app.db.connect();
        let deleted = diesel::delete(users::table.filter(users::username.eq(USERNAME)))
            .execute(&mut conn)
            .unwrap();
        assert_eq!(deleted, 1);
    }

    for attempt in ["first", "again"] {
        let refused = redeem(&app, &code, &p.verifier);
        assert_eq!(refused.status, 400, "{attempt}: {}", refused.body);
        assert_eq!(refused.json()["error"], "invalid_grant", "{attempt}");
        assert_eq!(
            refused.json()["error_description"],
            "the authorization code is invalid",
            "{attempt}"
        );
    }
    assert_eq!(app.live_families(), 0);
    assert_eq!(
        code_rows(&app),
        vec![],
        "no row for a user that does not exist"
    );
}

/// RFC 6749 4.1.3: the token request repeats redirect_uri only if the authorization request
/// sent it. The server reads the bound one from the code (opened once for both uses).
fn a_code_issued_without_redirect_uri_redeems_without_it(db: TestDb) {
    let app = OAuthServer::start(db);
    let mut browser = Browser::new();
    let p = pkce();
    let params: Vec<(&str, &str)> = spa_params(Some(&p.challenge), Some("S256"), SPA_REDIRECT)
        .into_iter()
        .filter(|(k, _)| *k != "redirect_uri")
        .collect();
    let redirect = app.authorize_with_consent(&mut browser, &params);
    assert!(redirect.as_str().starts_with(SPA_REDIRECT), "{redirect}");
    let code = query_value(&redirect, "code").unwrap();
    let redeem_as_spa = |code: &str| {
        app.token(
            &[
                ("grant_type", "authorization_code"),
                ("code", code),
                ("client_id", SPA),
                ("code_verifier", &p.verifier),
            ],
            None,
        )
    };
    let redeemed = redeem_as_spa(&code);
    assert_eq!(redeemed.status, 200, "{}", redeemed.body);
    let replayed = redeem_as_spa(&code);
    assert_eq!(
        replayed.json()["error"],
        "invalid_grant",
        "{}",
        replayed.body
    );
    assert_eq!(
        app.live_families(),
        0,
        "the replay revoked the first redemption"
    );
}

fn a_code_is_bound_to_its_client(db: TestDb) {
    let app = OAuthServer::start(db);
    let mut browser = Browser::new();
    let p = pkce();
    let code = code_for_webapp(&app, &mut browser, &p);
    let stolen = app.token(
        &[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", WEBAPP_REDIRECT),
            ("code_verifier", &p.verifier),
        ],
        Some((OTHER, OTHER_SECRET)),
    );
    assert_eq!(stolen.status, 400);
    assert_eq!(stolen.json()["error"], "invalid_grant");

    let code = code_for_webapp(&app, &mut browser, &p);
    let other_redirect = app.token(
        &[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", "https://app.example.com/other"),
            ("code_verifier", &p.verifier),
        ],
        Some((WEBAPP, WEBAPP_SECRET)),
    );
    assert_eq!(
        other_redirect.json()["error"],
        "invalid_grant",
        "{}",
        other_redirect.body
    );
}

fn an_expired_code_is_refused(db: TestDb) {
    let app = OAuthServer::start_with(db, "code_ttl = \"1s\"");
    let mut browser = Browser::new();
    let p = pkce();
    let code = code_for_webapp(&app, &mut browser, &p);
    std::thread::sleep(Duration::from_millis(2200));
    let late = redeem(&app, &code, &p.verifier);
    assert_eq!(late.status, 400);
    assert_eq!(late.json()["error"], "invalid_grant");
}

fn concurrent_redemptions_have_exactly_one_winner(db: TestDb) {
    let app = OAuthServer::start(db);
    let mut browser = Browser::new();
    let p = pkce();
    for _ in 0..3 {
        let code = code_for_webapp(&app, &mut browser, &p);
        let statuses = race(4, |_| redeem(&app, &code, &p.verifier).status);
        assert_eq!(
            statuses.iter().filter(|s| **s == 200).count(),
            1,
            "{statuses:?}"
        );
        assert_eq!(
            statuses.iter().filter(|s| **s == 400).count(),
            3,
            "{statuses:?}"
        );
        // The losers were replays: whatever the interleaving, the winner's family ends revoked.
        assert_eq!(app.live_families(), 0);
    }
}

/// A presentation that fails its PKCE check is still a presentation: racing a correct one,
/// whichever order they commit in, no tokens stay live.
fn a_failed_presentation_racing_a_redemption_revokes_it(db: TestDb) {
    let app = OAuthServer::start(db);
    let mut browser = Browser::new();
    let p = pkce();
    for _ in 0..12 {
        let code = code_for_webapp(&app, &mut browser, &p);
        let wrong = pkce().verifier;
        let statuses = race(4, |n| {
            let verifier = if n == 0 { &p.verifier } else { &wrong };
            redeem(&app, &code, verifier).status
        });
        assert!(
            statuses.iter().filter(|s| **s == 200).count() <= 1,
            "{statuses:?}"
        );
        assert!(
            statuses[1..].iter().all(|s| *s == 400),
            "a wrong verifier is invalid_grant, never a server error: {statuses:?}"
        );
        assert_eq!(app.live_families(), 0, "{statuses:?}");
    }
}

/// The consent form's token is good only for the request the page showed: changing a hidden
/// field (a wider scope, another client), adding or dropping one is refused, and nothing is
/// granted or remembered; the form as shown goes through.
fn the_consent_form_is_bound_to_the_request_it_shows(db: TestDb) {
    let app = OAuthServer::start(db);
    let mut browser = Browser::new();
    let p = pkce();
    let page = consent_page(&app, &mut browser, &webapp_params(&p, "read"));
    assert_eq!(page.status, 200, "{}", page.body);
    let shown = hidden_fields(&page.body);
    let submit = |browser: &mut Browser, fields: &[(String, String)]| {
        let mut form: Vec<(&str, &str)> = fields
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        form.push(("decision", "allow"));
        browser.post_form(&app.url("/consent"), &form)
    };
    let with = |name: &str, value: &str| -> Vec<(String, String)> {
        shown
            .iter()
            .map(|(k, v)| match k == name {
                true => (k.clone(), value.to_owned()),
                false => (k.clone(), v.clone()),
            })
            .collect()
    };
    let mut added = shown.clone();
    added.push(("prompt".to_owned(), "none".to_owned()));
    let dropped: Vec<(String, String)> = shown
        .iter()
        .filter(|(k, _)| k != "state")
        .cloned()
        .collect();
    for (why, fields) in [
        ("a wider scope", with("scope", "read write")),
        ("another client", with("client_id", OTHER)),
        ("a field added", added),
        ("a field dropped", dropped),
    ] {
        let refused = submit(&mut browser, &fields);
        assert_eq!(refused.status, 403, "{why}: {}", refused.body);
        assert!(refused.header("location").is_none(), "{why}");
    }
    let granted = submit(&mut browser, &shown);
    assert_eq!(granted.status, 303, "{}", granted.body);
    let location = url::Url::parse(granted.header("location").unwrap()).unwrap();
    assert!(query_value(&location, "code").is_some(), "{location}");
    // Only what was shown is remembered: a wider request asks again.
    let wider = browser.get(&app.authorize_url(&webapp_params(&p, "read write")));
    assert_eq!(
        wider.status,
        200,
        "the consent page again: {:?}",
        wider.header("location")
    );
}

/// A browser skips an input without a name and rewrites a hidden `_charset_` to the page's
/// encoding; such request parameters (unknown, so ignored) are left out of the consent form,
/// whose token covers every field it carries, so the form goes through.
fn fields_a_browser_alters_do_not_reach_the_consent_form(db: TestDb) {
    let app = OAuthServer::start(db);
    let mut browser = Browser::new();
    let p = pkce();
    let mut params = webapp_params(&p, "read");
    params.extend([("", "x"), ("_charset_", "ISO-8859-1"), ("_CHARSET_", "x")]);
    let page = consent_page(&app, &mut browser, &params);
    assert_eq!(page.status, 200, "{}", page.body);
    let shown = hidden_fields(&page.body);
    assert!(
        shown
            .iter()
            .all(|(k, _)| !k.is_empty() && !k.eq_ignore_ascii_case("_charset_")),
        "{shown:?}"
    );
    assert!(shown.iter().any(|(k, v)| k == "state" && v == "st-123"));
    // As a browser submits the form: no nameless field, `_charset_` as the page's encoding.
    let mut form: Vec<(&str, &str)> = shown
        .iter()
        .filter(|(k, _)| !k.is_empty())
        .map(|(k, v)| match k.eq_ignore_ascii_case("_charset_") {
            true => (k.as_str(), "UTF-8"),
            false => (k.as_str(), v.as_str()),
        })
        .collect();
    form.push(("decision", "allow"));
    let granted = browser.post_form(&app.url("/consent"), &form);
    assert_eq!(granted.status, 303, "{}", granted.body);
    let location = url::Url::parse(granted.header("location").unwrap()).unwrap();
    assert!(query_value(&location, "code").is_some(), "{location}");
}

fn forms_without_a_valid_csrf_token_are_refused(db: TestDb) {
    let app = OAuthServer::start(db);
    let mut browser = Browser::new();
    let p = pkce();
    let first = browser.get(&app.authorize_url(&webapp_params(&p, "read")));
    let page = browser.get(&app.url(first.header("location").unwrap()));
    let return_to = hidden_field(&page.body, "return_to").unwrap();
    let token = hidden_field(&page.body, "csrf_token").unwrap();
    for (why, csrf) in [
        ("missing", None),
        ("wrong", Some("forged-token")),
        ("other form's", Some("x")),
    ] {
        let mut form = vec![
            ("username", USERNAME),
            ("password", PASSWORD),
            ("return_to", return_to.as_str()),
        ];
        if let Some(csrf) = csrf {
            form.push(("csrf_token", csrf));
        }
        let response = browser.post_form(&app.url("/login"), &form);
        assert_eq!(response.status, 403, "{why} CSRF token");
        assert!(response.header("location").is_none());
    }
    // Another browser (no CSRF cookie) cannot replay this browser's token.
    let mut stranger = Browser::new();
    let replay = stranger.post_form(
        &app.url("/login"),
        &[
            ("username", USERNAME),
            ("password", PASSWORD),
            ("return_to", &return_to),
            ("csrf_token", &token),
        ],
    );
    assert_eq!(replay.status, 403);

    let after_login = app.login(&mut browser, &first);
    let consent = browser.get(&app.url(after_login.header("location").unwrap()));
    let mut fields = hidden_fields(&consent.body);
    fields.retain(|(k, _)| k != "csrf_token");
    let mut form: Vec<(&str, &str)> = fields
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    form.push(("decision", "allow"));
    form.push(("csrf_token", &token));
    let response = browser.post_form(&app.url("/consent"), &form);
    assert_eq!(
        response.status, 403,
        "the login form's token is not the consent form's"
    );
}

fn consent_is_remembered_denied_or_skipped(db: TestDb) {
    let app = OAuthServer::start(db);
    let mut browser = Browser::new();
    let p = pkce();

    let consent = consent_page(&app, &mut browser, &webapp_params(&p, "read"));
    let denied = app.decide(&mut browser, &consent, "deny");
    let (location, error) = error_of(&denied);
    assert_eq!(error, "access_denied");
    assert_eq!(query_value(&location, "state").as_deref(), Some("st-123"));
    assert!(query_value(&location, "iss").is_some());
    assert!(query_value(&location, "code").is_none());

    // Allow once; the same request is then granted without asking.
    let consent = browser.get(&app.authorize_url(&webapp_params(&p, "read")));
    assert_eq!(consent.status, 200, "denial is not remembered");
    let allowed = app.decide(&mut browser, &consent, "allow");
    assert!(query_value(
        &url::Url::parse(allowed.header("location").unwrap()).unwrap(),
        "code"
    )
    .is_some());
    let again = browser.get(&app.authorize_url(&webapp_params(&p, "read")));
    assert_eq!(
        again.status, 303,
        "remembered consent: straight back to the client"
    );
    assert!(again
        .header("location")
        .unwrap()
        .starts_with(WEBAPP_REDIRECT));
    let wider = browser.get(&app.authorize_url(&webapp_params(&p, "read write")));
    assert_eq!(wider.status, 200, "a wider scope asks again");
    assert!(wider.body.contains("write"));
    // The consent is this client's only: another client with the same scope still asks.
    let other = browser.get(&app.authorize_url(&[
        ("response_type", "code"),
        ("client_id", OTHER),
        ("redirect_uri", "https://other.example.com/cb"),
        ("scope", "read"),
        ("state", "o"),
        ("code_challenge", &p.challenge),
        ("code_challenge_method", "S256"),
    ]));
    assert_eq!(other.status, 200, "{}", other.body);
    assert!(other.body.contains("Another App"));

    // A skip_consent client never shows the page.
    let console = browser.get(&app.authorize_url(&[
        ("response_type", "code"),
        ("client_id", FIRST_PARTY),
        ("state", "c"),
    ]));
    assert_eq!(console.status, 303, "{}", console.body);
    let location = url::Url::parse(console.header("location").unwrap()).unwrap();
    assert!(location.as_str().starts_with(FIRST_PARTY_REDIRECT));
    let code = query_value(&location, "code").unwrap();
    // It sent no redirect_uri, so the token request need not repeat it (RFC 6749 4.1.3).
    let response = app.token(
        &[("grant_type", "authorization_code"), ("code", &code)],
        Some((FIRST_PARTY, OTHER_SECRET)),
    );
    assert_eq!(response.status, 200, "{}", response.body);
}

fn client_authentication_methods(db: TestDb) {
    let app = OAuthServer::start(db);
    let mut browser = Browser::new();
    let p = pkce();

    let code = code_for_webapp(&app, &mut browser, &p);
    let post = app.token(
        &[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", WEBAPP_REDIRECT),
            ("code_verifier", &p.verifier),
            ("client_id", WEBAPP),
            ("client_secret", WEBAPP_SECRET),
        ],
        None,
    );
    assert_eq!(post.status, 200, "client_secret_post: {}", post.body);

    let code = code_for_webapp(&app, &mut browser, &p);
    let base = [
        ("grant_type", "authorization_code"),
        ("code", code.as_str()),
        ("redirect_uri", WEBAPP_REDIRECT),
        ("code_verifier", p.verifier.as_str()),
    ];
    let wrong = app.token(&base, Some((WEBAPP, "wrong-secret")));
    assert_eq!(wrong.status, 401);
    assert_eq!(wrong.json()["error"], "invalid_client");
    assert!(wrong
        .header("www-authenticate")
        .unwrap()
        .starts_with("Basic"));
    assert_eq!(wrong.header("cache-control"), Some("no-store"));

    let mut public_style = base.to_vec();
    public_style.push(("client_id", WEBAPP));
    let no_secret = app.token(&public_style, None);
    assert_eq!(
        no_secret.status, 401,
        "a confidential client without its secret: {}",
        no_secret.body
    );
    assert_eq!(no_secret.json()["error"], "invalid_client");

    let unknown = app.token(&base, Some(("nobody", "whatever-secret")));
    assert_eq!(unknown.status, 401);
    assert_eq!(unknown.body, wrong.body, "unknown and wrong look the same");

    // No client it could be from, whatever else the request lacks (here redirect_uri,
    // which may be omitted only when /authorize had none): invalid_client first.
    let without_redirect: Vec<(&str, &str)> = base
        .iter()
        .filter(|(k, _)| *k != "redirect_uri")
        .copied()
        .collect();
    for (why, claimed) in [
        ("an unknown client", Some("nobody")),
        ("a confidential client without its secret", Some(WEBAPP)),
        ("no client at all", None),
    ] {
        let mut form = without_redirect.clone();
        form.extend(claimed.map(|id| ("client_id", id)));
        let refused = app.token(&form, None);
        assert_eq!(refused.status, 401, "{why}: {}", refused.body);
        assert_eq!(refused.json()["error"], "invalid_client", "{why}");
    }

    // The code was not spent by failed client authentication.
    let ok = app.token(&base, Some((WEBAPP, WEBAPP_SECRET)));
    assert_eq!(ok.status, 200, "{}", ok.body);

    let mut twice = base.to_vec();
    twice.push(("grant_type", "authorization_code"));
    let repeated = app.token(&twice, Some((WEBAPP, WEBAPP_SECRET)));
    assert_eq!(repeated.status, 400);
    assert_eq!(repeated.json()["error"], "invalid_request");

    let unsupported = app.token(&[("grant_type", "implicit")], Some((WEBAPP, WEBAPP_SECRET)));
    assert_eq!(unsupported.json()["error"], "unsupported_grant_type");

    let json_body = http()
        .post(&app.url("/token"))
        .header("Content-Type", "application/json")
        .send(br#"{"grant_type":"authorization_code"}"#.as_slice())
        .unwrap();
    assert_eq!(
        json_body.status().as_u16(),
        400,
        "a JSON body is invalid_request, not a 500"
    );
}

fn wrong_credentials_rerender_the_login_page_alike(db: TestDb) {
    let app = OAuthServer::start(db);
    let mut browser = Browser::new();
    let attempt = |browser: &mut Browser, username: &str, password: &str| {
        app.sign_in(browser, username, password)
    };
    let wrong_password = attempt(&mut browser, USERNAME, "not the password");
    let unknown_user = attempt(&mut browser, "mallory", "not the password");
    for response in [&wrong_password, &unknown_user] {
        assert_eq!(response.status, 401);
        assert!(response.body.contains("Incorrect username or password."));
        assert!(response.body.contains("role=\"alert\""));
        assert!(!browser.cookies.contains_key("gatehouse_session"));
    }
    let normalize = |r: &Response, name: &str| r.body.replace(name, "NAME");
    assert_eq!(
        normalize(&wrong_password, USERNAME),
        normalize(&unknown_user, "mallory"),
        "no hint whether the user exists"
    );

    gatehouse::accounts::set_disabled(&mut app.db.connect(), USERNAME, true).unwrap();
    let disabled = attempt(&mut browser, USERNAME, PASSWORD);
    assert_eq!(disabled.status, 401, "a disabled user cannot sign in");
}

fn logout_ends_the_session(db: TestDb) {
    let app = OAuthServer::start(db);
    let mut browser = Browser::new();
    let p = pkce();
    code_for_webapp(&app, &mut browser, &p);
    assert!(browser.cookies.contains_key("gatehouse_session"));

    let page = browser.get(&app.url("/logout"));
    assert_eq!(page.status, 200);
    let csrf = hidden_field(&page.body, "csrf_token").unwrap();
    let done = browser.post_form(&app.url("/logout"), &[("csrf_token", &csrf)]);
    assert_eq!(done.status, 200);
    assert!(
        !browser.cookies.contains_key("gatehouse_session"),
        "the cookie is cleared"
    );

    let again = browser.get(&app.authorize_url(&webapp_params(&p, "read")));
    assert!(
        again.header("location").unwrap().starts_with("/login?"),
        "signed out: login again"
    );
}

/// A database locked past the busy timeout at the exchange answers 503, which invites a
/// retry: the code is not spent (nor taken for a replay), and the retry redeems it.
#[test]
fn a_locked_sqlite_database_is_503_and_leaves_the_code_good() {
    let app = OAuthServer::start(TestDb::create(Backend::Sqlite).unwrap());
    let mut browser = Browser::new();
    let p = pkce();
    let code = code_for_webapp(&app, &mut browser, &p);

    let lock = SqliteWriteLock::take(&app.db);
    let refused = redeem(&app, &code, &p.verifier);
    drop(lock);
    assert_eq!(refused.status, 503, "{}", refused.body);
    assert_eq!(refused.json()["error"], "temporarily_unavailable");
    assert_eq!(code_rows(&app), vec![], "nothing recorded");
    // Spending it would have been tried under the same lock, and failed aloud.
    let tried_to_spend = app
        .server
        .logs()
        .into_iter()
        .find(|line| line.contains("cannot spend an authorization code"));
    assert_eq!(tried_to_spend, None, "no attempt to spend the code");

    let redeemed = redeem(&app, &code, &p.verifier);
    assert_eq!(redeemed.status, 200, "{}", redeemed.body);
    assert_eq!(app.live_families(), 1);
}

#[test]
fn cookies_are_secure_when_the_issuer_is_https() {
    let db = TestDb::create(Backend::Sqlite).unwrap();
    let config = write_config(&db, "gatehouse.toml", &clients_toml(""));
    let text = std::fs::read_to_string(&config).unwrap().replace(
        "issuer = \"http://127.0.0.1:8080\"",
        "issuer = \"https://auth.example.com\"",
    );
    std::fs::write(&config, text).unwrap();
    let server = TestServer::start(&db, &config);
    gatehouse::accounts::add_user(&mut db.connect(), USERNAME, PASSWORD).unwrap();

    let mut browser = Browser::new();
    let page = browser.get(&server.url("/login"));
    let csrf = hidden_field(&page.body, "csrf_token").unwrap();
    let signed_in = browser.post_form(
        &server.url("/login"),
        &[
            ("username", USERNAME),
            ("password", PASSWORD),
            ("csrf_token", &csrf),
            ("return_to", ""),
        ],
    );
    assert_eq!(signed_in.status, 303, "{}", signed_in.body);
    for name in ["gatehouse_csrf=", "gatehouse_session="] {
        let cookie = browser
            .set_cookie_headers
            .iter()
            .find(|h| h.starts_with(name))
            .expect(name)
            .to_ascii_lowercase();
        assert!(cookie.contains("; secure"), "{cookie}");
        assert!(
            cookie.contains("httponly") && cookie.contains("samesite=lax"),
            "{cookie}"
        );
    }
}

on_both_backends!(
    a_public_loopback_client_is_asked_every_time,
    another_client_can_neither_spend_nor_revoke_a_code,
    double_submitted_consent_does_not_fail,
    our_form_fields_in_the_query_are_ignored,
);

fn a_public_loopback_client_is_asked_every_time(db: TestDb) {
    let app = OAuthServer::start(db);
    let mut browser = Browser::new();
    let p = pkce();
    let params = spa_params(
        Some(&p.challenge),
        Some("S256"),
        "http://127.0.0.1:5555/callback",
    );
    let redirect = app.authorize_with_consent(&mut browser, &params);
    assert!(query_value(&redirect, "code").is_some());
    // Any local program could send this request: remembered consent does not apply.
    let other_port = spa_params(
        Some(&p.challenge),
        Some("S256"),
        "http://127.0.0.1:6666/callback",
    );
    let again = browser.get(&app.authorize_url(&other_port));
    assert_eq!(
        again.status,
        200,
        "the consent page again, not a code: {:?}",
        again.header("location")
    );
    assert!(again.body.contains("decision"));
}

fn another_client_can_neither_spend_nor_revoke_a_code(db: TestDb) {
    let app = OAuthServer::start(db);
    let mut browser = Browser::new();
    let p = pkce();
    let as_spa = |code: &str| {
        app.token(
            &[
                ("grant_type", "authorization_code"),
                ("code", code),
                ("redirect_uri", WEBAPP_REDIRECT),
                ("client_id", SPA),
                ("code_verifier", &p.verifier),
            ],
            None,
        )
    };
    // An unspent code presented by another client stays good for its own client.
    let code = code_for_webapp(&app, &mut browser, &p);
    assert_eq!(as_spa(&code).json()["error"], "invalid_grant");
    assert_eq!(
        redeem(&app, &code, &p.verifier).status,
        200,
        "not spent by the other client"
    );

    // A spent code presented by another client does not revoke the tokens it gave.
    let mut conn = app.db.connect();
    let live = |conn: &mut gatehouse::storage::DbConnection| -> i64 {
        token_families::table
            .filter(token_families::revoked_at.is_null())
            .count()
            .get_result(conn)
            .unwrap()
    };
    assert_eq!(live(&mut conn), 1);
    assert_eq!(as_spa(&code).json()["error"], "invalid_grant");
    assert_eq!(
        live(&mut conn),
        1,
        "another client's replay revokes nothing"
    );
    assert_eq!(
        redeem(&app, &code, &p.verifier).json()["error"],
        "invalid_grant"
    );
    assert_eq!(
        live(&mut conn),
        0,
        "the owning client's replay revokes the family"
    );
}

fn double_submitted_consent_does_not_fail(db: TestDb) {
    let app = OAuthServer::start(db);
    let mut browser = Browser::new();
    let p = pkce();
    let consent = consent_page(&app, &mut browser, &webapp_params(&p, "read write"));
    let fields = hidden_fields(&consent.body);
    let mut form: Vec<(String, String)> = fields.clone();
    form.push(("decision".into(), "allow".into()));
    let cookies = browser.cookies.clone();
    let statuses: Vec<u16> = std::thread::scope(|s| {
        let clicks: Vec<_> = (0..6)
            .map(|_| {
                let form = form.clone();
                let cookies = cookies.clone();
                let url = app.url("/consent");
                s.spawn(move || {
                    let mut twin = Browser::new();
                    twin.cookies = cookies;
                    let pairs: Vec<(&str, &str)> =
                        form.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                    twin.post_form(&url, &pairs).status
                })
            })
            .collect();
        clicks.into_iter().map(|c| c.join().unwrap()).collect()
    });
    assert!(statuses.iter().all(|s| *s == 303), "{statuses:?}");
}

fn our_form_fields_in_the_query_are_ignored(db: TestDb) {
    let app = OAuthServer::start(db);
    let mut browser = Browser::new();
    let p = pkce();
    let mut params = webapp_params(&p, "read");
    params.push(("decision", "allow"));
    let consent = consent_page(&app, &mut browser, &params);
    assert_eq!(consent.status, 200);
    let fields = hidden_fields(&consent.body);
    assert!(!fields.iter().any(|(k, _)| k == "decision"), "{fields:?}");
    let allowed = app.decide(&mut browser, &consent, "allow");
    assert_eq!(allowed.status, 303, "{}", allowed.body);

    // The consent form's token is bound to the session it was shown in.
    let consent = browser.get(&app.authorize_url(&webapp_params(&p, "read write")));
    browser.cookies.remove("gatehouse_session");
    let orphan = app.decide(&mut browser, &consent, "allow");
    assert_eq!(orphan.status, 403);
}

#[test]
fn failed_logins_log_no_username() {
    let app = OAuthServer::start(TestDb::create(Backend::Sqlite).unwrap());
    let mut browser = Browser::new();
    let page = browser.get(&app.url("/login"));
    let csrf = hidden_field(&page.body, "csrf_token").unwrap();
    let typo = "MyPassw0rdTypedAsName";
    let response = browser.post_form(
        &app.url("/login"),
        &[
            ("username", typo),
            ("password", "whatever"),
            ("csrf_token", &csrf),
            ("return_to", ""),
        ],
    );
    assert_eq!(response.status, 401);
    let logged = eventually(Duration::from_secs(10), || {
        let logs = app.server.logs();
        logs.iter()
            .any(|l| l.contains("\"event\":\"login\""))
            .then_some(logs)
    })
    .expect("the failed login is logged");
    assert!(
        logged.iter().all(|l| !l.contains(typo)),
        "the username field never reaches the log"
    );
}
