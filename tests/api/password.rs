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

/// A burst of logins waits at the hash threads (one per core), not in the blocking pool: on
/// SQLite, which bounds that pool to two threads per core, more hashes queue than there are
/// blocking threads, and database requests still get a thread meanwhile. When each waiting
/// login held a blocking thread, the queue could not grow past the pool's bound and every
/// database request waited behind the hashes.
#[test]
fn a_burst_of_logins_does_not_hold_the_blocking_pool() {
    let db = TestDb::create(Backend::Sqlite).expect("SQLite needs no server");
    // Attempts in flight count against the failure budgets until they succeed.
    let app = OAuthServer::start_configured(
        db,
        "",
        "[limits]\nfailures_per_username = 1000\nfailures_per_ip = 1000\n",
    );
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let blocking_threads = 2 * cores.max(2);
    let queued = || {
        let text = get(&app.server.url("/metrics"), &[]).body;
        sample(&text, "gatehouse_password_hashes_queued").unwrap_or(0.0)
    };
    // The client's secret is verified once and then recognised: only passwords hash below.
    let first = password_grant(&app, USERNAME, PASSWORD, (LEGACY, LEGACY_SECRET));
    assert_eq!(first.status, 200, "{}", first.body);
    std::thread::scope(|scope| {
        let logins: Vec<_> = (0..16 * blocking_threads)
            .map(|_| {
                scope.spawn(|| {
                    password_grant(&app, USERNAME, PASSWORD, (LEGACY, LEGACY_SECRET)).status
                })
            })
            .collect();
        let backlog = eventually(std::time::Duration::from_secs(60), || {
            let waiting = queued();
            (waiting > blocking_threads as f64).then_some(waiting)
        });
        let ready = get(&app.server.url("/readyz"), &[]);
        let statuses: Vec<u16> = logins.into_iter().map(|l| l.join().unwrap()).collect();
        assert!(
            backlog.is_some(),
            "no more than {blocking_threads} hashes ever waited at once"
        );
        assert_eq!(ready.status, 200);
        assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    });
}
