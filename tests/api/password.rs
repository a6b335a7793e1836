use diesel::prelude::*;
use gatehouse::storage::schema::token_families;
use serde_json::Value;

use crate::on_both_backends;
use crate::support::*;

on_both_backends!(
    the_password_grant_issues_tokens_for_the_user,
    failures_look_alike_and_are_refused
);

fn password_grant(
    app: &OAuthServer,
    username: &str,
    password: &str,
    client: (&str, &str),
) -> Response {
    app.token(
        &[
            ("grant_type", "password"),
            ("username", username),
            ("password", password),
        ],
        Some(client),
    )
}

fn the_password_grant_issues_tokens_for_the_user(db: TestDb) {
    let app = OAuthServer::start(db);
    let response = password_grant(&app, USERNAME, PASSWORD, (LEGACY, LEGACY_SECRET));
    assert_eq!(response.status, 200, "{}", response.body);
    assert_eq!(response.header("cache-control"), Some("no-store"));
    let body = response.json();
    assert_eq!(body["scope"], "read");
    let claims =
        jsonwebtoken::dangerous::insecure_decode::<Value>(body["access_token"].as_str().unwrap())
            .unwrap()
            .claims;
    assert_eq!(claims["sub"], app.user_id.as_str());
    assert_eq!(claims["client_id"], LEGACY);
    let refresh = body["refresh_token"].as_str().expect("legacy may refresh");
    let grant_type: String = token_families::table
        .select(token_families::grant_type)
        .first(&mut app.db.connect())
        .unwrap();
    assert_eq!(grant_type, "password");
    let refreshed = app.token(
        &[("grant_type", "refresh_token"), ("refresh_token", refresh)],
        Some((LEGACY, LEGACY_SECRET)),
    );
    assert_eq!(refreshed.status, 200, "{}", refreshed.body);
}

fn failures_look_alike_and_are_refused(db: TestDb) {
    let app = OAuthServer::start(db);
    let wrong = password_grant(&app, USERNAME, "not the password", (LEGACY, LEGACY_SECRET));
    let unknown = password_grant(&app, "mallory", "not the password", (LEGACY, LEGACY_SECRET));
    assert_eq!(wrong.status, 400);
    assert_eq!(wrong.json()["error"], "invalid_grant");
    assert_eq!(
        wrong.body, unknown.body,
        "unknown user and wrong password give the same body"
    );
    assert_eq!(wrong.status, unknown.status);

    gatehouse::accounts::set_disabled(&mut app.db.connect(), USERNAME, true).unwrap();
    let disabled = password_grant(&app, USERNAME, PASSWORD, (LEGACY, LEGACY_SECRET));
    assert_eq!(
        disabled.body, wrong.body,
        "a disabled user is refused alike"
    );
    gatehouse::accounts::set_disabled(&mut app.db.connect(), USERNAME, false).unwrap();

    let not_allowed = password_grant(&app, USERNAME, PASSWORD, (WEBAPP, WEBAPP_SECRET));
    assert_eq!(not_allowed.json()["error"], "unauthorized_client");
    let unauthenticated = app.token(
        &[
            ("grant_type", "password"),
            ("username", USERNAME),
            ("password", PASSWORD),
            ("client_id", LEGACY),
        ],
        None,
    );
    assert_eq!(unauthenticated.status, 401);
    let missing = app.token(
        &[("grant_type", "password"), ("username", USERNAME)],
        Some((LEGACY, LEGACY_SECRET)),
    );
    assert_eq!(missing.json()["error"], "invalid_request");
    let wider = app.token(
        &[
            ("grant_type", "password"),
            ("username", USERNAME),
            ("password", PASSWORD),
            ("scope", "admin"),
        ],
        Some((LEGACY, LEGACY_SECRET)),
    );
    assert_eq!(wider.json()["error"], "invalid_scope");
}
