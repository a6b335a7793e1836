use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use diesel::prelude::*;
use gatehouse::storage::schema::auth_failures;

use crate::on_both_backends;
use crate::support::*;

on_both_backends!(
    a_username_past_its_budget_is_refused_even_with_the_right_password,
    an_address_past_its_budget_is_refused_for_every_username,
);

const LIMITS: &str = "[limits]\nwindow = \"15m\"\nfailures_per_username = 3\nfailures_per_ip = 6\n";

fn password_grant(app: &OAuthServer, username: &str, password: &str) -> Response {
    app.token(
        &[
            ("grant_type", "password"),
            ("username", username),
            ("password", password),
        ],
        Some((LEGACY, LEGACY_SECRET)),
    )
}

fn login(app: &OAuthServer, username: &str, password: &str) -> Response {
    app.sign_in(&mut Browser::new(), username, password)
}

fn retry_after(response: &Response) -> u64 {
    response
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .expect("seconds")
}

fn a_username_past_its_budget_is_refused_even_with_the_right_password(db: TestDb) {
    let app = OAuthServer::start_configured(db, "", LIMITS);
    gatehouse::accounts::add_user(&mut app.db.connect(), "bob", PASSWORD).unwrap();

    assert_eq!(password_grant(&app, USERNAME, "wrong-1").status, 400);
    // A success, on either path, neither counts as a failure nor refills the budget.
    assert_eq!(login(&app, USERNAME, PASSWORD).status, 303);
    assert_eq!(login(&app, USERNAME, "wrong-2").status, 401);
    assert_eq!(password_grant(&app, USERNAME, PASSWORD).status, 200);
    assert_eq!(password_grant(&app, USERNAME, "wrong-3").status, 400);

    let refused = password_grant(&app, USERNAME, PASSWORD);
    assert_eq!(refused.status, 429, "{}", refused.body);
    assert_eq!(refused.header("cache-control"), Some("no-store"));
    assert!(
        (1..=900).contains(&retry_after(&refused)),
        "{:?}",
        refused.header("retry-after")
    );
    let page = login(&app, USERNAME, PASSWORD);
    assert_eq!(page.status, 429, "the login page shares the budget");
    assert!(page.body.contains("role=\"alert\""));
    assert!(page.header("retry-after").is_some());

    assert_eq!(
        password_grant(&app, "bob", PASSWORD).status,
        200,
        "other usernames are unaffected"
    );

    // When the window has passed, alice may try again.
    diesel::update(auth_failures::table)
        .set(auth_failures::occurred_at.eq(gatehouse::storage::now_unix() - 16 * 60))
        .execute(&mut app.db.connect())
        .unwrap();
    assert_eq!(password_grant(&app, USERNAME, PASSWORD).status, 200);
}

fn an_address_past_its_budget_is_refused_for_every_username(db: TestDb) {
    let app = OAuthServer::start_configured(db, "", LIMITS);
    for i in 0..6 {
        let response = password_grant(&app, &format!("nobody-{i}"), "guess");
        assert_eq!(response.status, 400, "attempt {i}");
    }
    let refused = password_grant(&app, USERNAME, PASSWORD);
    assert_eq!(
        refused.status, 429,
        "six failures from this address: {}",
        refused.body
    );
    assert!(retry_after(&refused) > 0);
}

on_both_backends!(
    concurrent_guesses_cannot_outrun_the_budget,
    a_client_without_the_password_grant_counts_nothing
);

fn concurrent_guesses_cannot_outrun_the_budget(db: TestDb) {
    let app = OAuthServer::start_configured(db, "", LIMITS);
    let statuses: Vec<u16> = std::thread::scope(|s| {
        let guesses: Vec<_> = (0..12)
            .map(|i| {
                let app = &app;
                s.spawn(move || password_grant(app, USERNAME, &format!("guess-{i}")).status)
            })
            .collect();
        guesses.into_iter().map(|g| g.join().unwrap()).collect()
    });
    let checked = statuses.iter().filter(|s| **s == 400).count();
    assert!(
        checked <= 3,
        "at most the budget of passwords is checked: {statuses:?}"
    );
    assert!(
        statuses.iter().all(|s| *s == 400 || *s == 429),
        "{statuses:?}"
    );
    // Each checked guess left its failure; a refused one took its row back. When every
    // guess saw the others' rows and stood back, none was checked and the budget is whole,
    // so what is left of it decides the right password's fate, not the burst's size.
    let expected = if checked < 3 { 200 } else { 429 };
    assert_eq!(
        password_grant(&app, USERNAME, PASSWORD).status,
        expected,
        "after {checked} checked guesses: {statuses:?}"
    );
}

fn a_client_without_the_password_grant_counts_nothing(db: TestDb) {
    let app = OAuthServer::start_configured(db, "", LIMITS);
    for _ in 0..5 {
        let response = app.token(
            &[
                ("grant_type", "password"),
                ("username", USERNAME),
                ("password", "guess"),
            ],
            Some((SERVICE, SERVICE_SECRET)),
        );
        assert_eq!(response.json()["error"], "unauthorized_client");
    }
    assert_eq!(
        password_grant(&app, USERNAME, PASSWORD).status,
        200,
        "alice is not locked out"
    );
}

on_both_backends!(
    a_client_past_its_request_rate_gets_429_and_others_do_not,
    forwarded_addresses_count_only_from_trusted_proxies,
);

fn a_client_past_its_request_rate_gets_429_and_others_do_not(db: TestDb) {
    // One request a second after a burst of five: twenty quick requests overrun it unless
    // they take fifteen seconds. Requests come through a trusted proxy so that an attacker
    // and the client can have different addresses.
    let app = OAuthServer::start_full(
        db,
        "trusted_proxies = [\"127.0.0.1\"]",
        "",
        "[limits]\nclient_requests_per_second = 1\nclient_burst = 5\n",
    );
    let token_from = |forwarded_for: &str, basic: &str| {
        let response = http()
            .post(&app.url("/token"))
            .header("Content-Type", "application/x-www-form-urlencoded")
            .header("X-Forwarded-For", forwarded_for)
            .header("Authorization", format!("Basic {}", STANDARD.encode(basic)))
            .send("grant_type=client_credentials".as_bytes())
            .unwrap();
        Response::from_ureq(response)
    };

    // Someone else names the client with wrong secrets (and without any): that spends their
    // address's budget, not the client's.
    let wrong = format!("{SERVICE}:not-the-secret-at-all");
    let attacker: Vec<u16> = (0..20)
        .map(|_| token_from("203.0.113.66", &wrong).status)
        .collect();
    assert!(attacker.contains(&429), "{attacker:?}");
    assert!(
        attacker.iter().all(|s| *s == 401 || *s == 429),
        "{attacker:?}"
    );

    let right = format!("{SERVICE}:{SERVICE_SECRET}");
    let answers: Vec<Response> = (0..20)
        .map(|_| token_from("198.51.100.1", &right))
        .collect();
    assert!(
        answers[..5].iter().all(|a| a.status == 200),
        "the client's own burst is intact: {:?}",
        answers.iter().map(|a| a.status).collect::<Vec<_>>()
    );
    let limited = answers
        .iter()
        .find(|a| a.status == 429)
        .expect("past the rate a request is refused");
    assert_eq!(limited.json()["error"], "temporarily_unavailable");
    assert_eq!(limited.header("cache-control"), Some("no-store"));
    assert!(retry_after(limited) >= 1);

    // Another client has its own budget.
    assert_eq!(password_grant(&app, USERNAME, PASSWORD).status, 200);
}

fn password_grant_from(app: &OAuthServer, username: &str, forwarded_for: &str) -> Response {
    let basic = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        format!("{LEGACY}:{LEGACY_SECRET}"),
    );
    let body = format!("grant_type=password&username={username}&password=guess");
    let response = http()
        .post(&app.url("/token"))
        .header("Content-Type", "application/x-www-form-urlencoded")
        .header("Authorization", format!("Basic {basic}"))
        .header("X-Forwarded-For", forwarded_for)
        .send(body.as_bytes())
        .unwrap();
    Response::from_ureq(response)
}

fn forwarded_addresses_count_only_from_trusted_proxies(db: TestDb) {
    let limits = "[limits]\nfailures_per_username = 100\nfailures_per_ip = 2\n";
    let app = OAuthServer::start_full(db, "trusted_proxies = [\"127.0.0.0/8\"]", "", limits);
    // Behind a trusted proxy each forwarded client has its own budget.
    for i in 0..2 {
        let answer = password_grant_from(&app, &format!("a-{i}"), "203.0.113.1");
        assert_eq!(answer.status, 400);
    }
    assert_eq!(
        password_grant_from(&app, "a-3", "198.51.100.7, 203.0.113.1").status,
        429,
        "the nearest untrusted hop is the client"
    );
    assert_eq!(
        password_grant_from(&app, "a-4", "junk, 203.0.113.1").status,
        429,
        "garbage in front of the address does not move the count elsewhere"
    );
    assert_eq!(password_grant_from(&app, "b-1", "203.0.113.2").status, 400);
    let recorded: Vec<String> = auth_failures::table
        .select(auth_failures::bucket)
        .load(&mut app.db.connect())
        .unwrap();
    assert!(
        recorded.iter().any(|b| b.ends_with("203.0.113.1")),
        "{recorded:?}"
    );
    assert!(
        !recorded.iter().any(|b| b.ends_with("127.0.0.1")),
        "{recorded:?}"
    );
}

#[test]
fn forwarded_addresses_from_an_untrusted_peer_are_ignored() {
    let db = TestDb::create(Backend::Sqlite).unwrap();
    let limits = "[limits]\nfailures_per_username = 100\nfailures_per_ip = 2\n";
    let app = OAuthServer::start_configured(db, "", limits);
    assert_eq!(password_grant_from(&app, "a-1", "203.0.113.1").status, 400);
    assert_eq!(password_grant_from(&app, "a-2", "203.0.113.2").status, 400);
    assert_eq!(
        password_grant_from(&app, "a-3", "203.0.113.3").status,
        429,
        "a client cannot escape its budget by forging X-Forwarded-For"
    );
}
