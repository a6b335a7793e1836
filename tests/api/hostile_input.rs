//! Hostile input (issue #5, item 1): every endpoint answers malformed, oversized, repeated,
//! mistyped and random input with a clean 4xx and the right error code, never a 5xx, a
//! panic or a hung connection.

use crate::on_both_backends;
use crate::support::*;

on_both_backends!(a_nul_byte_names_no_client_and_no_user);

/// Regression: PostgreSQL refuses text that holds a NUL byte, so a `client_id` or a
/// username with `%00` reached a query and was answered 500 (SQLite took it). Such names
/// cannot exist; they are unknown, with the answer an unknown client or user gets.
fn a_nul_byte_names_no_client_and_no_user(db: TestDb) {
    let app = OAuthServer::start(db);
    let mut browser = Browser::new();
    let page = browser.get(&app.authorize_url(&[
        ("response_type", "code"),
        ("client_id", "webapp\0"),
        ("redirect_uri", WEBAPP_REDIRECT),
    ]));
    assert_eq!(page.status, 400, "{}", page.body);
    assert!(page.header("location").is_none());

    let error_of = |response: &Response, status: u16| {
        assert_eq!(response.status, status, "{}", response.body);
        response.json()["error"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    let posted = app.token(
        &[
            ("grant_type", "client_credentials"),
            ("client_id", "service\0"),
            ("client_secret", SERVICE_SECRET),
        ],
        None,
    );
    assert_eq!(error_of(&posted, 401), "invalid_client");
    let basic = app.token(
        &[("grant_type", "client_credentials")],
        Some(("service\0", SERVICE_SECRET)),
    );
    assert_eq!(error_of(&basic, 401), "invalid_client");
    let password = app.token(
        &[
            ("grant_type", "password"),
            ("username", "alice\0"),
            ("password", PASSWORD),
        ],
        Some((LEGACY, LEGACY_SECRET)),
    );
    assert_eq!(error_of(&password, 400), "invalid_grant");
    let revoke = Response::from_ureq(
        http()
            .post(&app.url("/revoke"))
            .header("Content-Type", "application/x-www-form-urlencoded")
            .send(&b"token=x&client_id=spa%00"[..])
            .unwrap(),
    );
    assert_eq!(error_of(&revoke, 401), "invalid_client");
    let login = app.sign_in(&mut Browser::new(), "alice\0", PASSWORD);
    assert_eq!(login.status, 401, "{}", login.body);

    // The same requests without the NUL byte succeed.
    assert_eq!(
        app.token(
            &[("grant_type", "client_credentials")],
            Some((SERVICE, SERVICE_SECRET))
        )
        .status,
        200
    );
    assert_eq!(
        app.sign_in(&mut Browser::new(), USERNAME, PASSWORD).status,
        303
    );
    assert_eq!(get(&app.url("/readyz"), &[]).status, 200);
}
