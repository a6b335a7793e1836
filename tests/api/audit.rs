//! The audit trail: events with user, client, address and outcome, in the log under
//! `gatehouse::audit` and in the audit table, which `gatehouse audit tail` shows.

use serde_json::Value;

use crate::on_both_backends;
use crate::support::*;

on_both_backends!(every_security_event_is_in_the_audit_trail);
on_both_backends!(events_kept_in_the_log_only_are_logged_but_not_rows);
on_both_backends!(a_stop_by_sigterm_writes_out_every_buffered_log_line);

fn revoke(app: &OAuthServer, token: &str) -> Response {
    app.post_form(
        "/revoke",
        &[("token", token)],
        Some((WEBAPP, WEBAPP_SECRET)),
    )
}

fn audit_tail(app: &OAuthServer) -> Vec<Value> {
    let config = app.db.dir.path().join("gatehouse.toml");
    let output = run_cli(&app.db, &config, &["audit", "tail", "-n", "200", "--json"]);
    assert!(output.status.success(), "{}", stderr(&output));
    stdout(&output)
        .lines()
        .map(|line| serde_json::from_str(line).expect("one JSON object per line"))
        .collect()
}

/// A client_credentials token for the service and a password-grant token for the legacy app.
fn issue_service_and_legacy_tokens(app: &OAuthServer) {
    let service = app.token(
        &[("grant_type", "client_credentials")],
        Some((SERVICE, SERVICE_SECRET)),
    );
    assert_eq!(service.status, 200);
    let legacy = app.token(
        &[
            ("grant_type", "password"),
            ("username", USERNAME),
            ("password", PASSWORD),
        ],
        Some((LEGACY, LEGACY_SECRET)),
    );
    assert_eq!(legacy.status, 200);
}

fn find<'a>(events: &'a [Value], event: &str, outcome: &str) -> Option<&'a Value> {
    events
        .iter()
        .find(|e| e["event"] == event && e["outcome"] == outcome)
}

fn every_security_event_is_in_the_audit_trail(db: TestDb) {
    let app = OAuthServer::start(db);
    let config = app.db.dir.path().join("gatehouse.toml");

    assert_eq!(
        app.sign_in(&mut Browser::new(), USERNAME, "wrong password")
            .status,
        401
    );
    let tokens = app.webapp_tokens("read");
    let refresh = tokens["refresh_token"].as_str().unwrap().to_owned();
    let rotated = app.refresh(&refresh, None);
    assert_eq!(rotated.status, 200);
    assert_eq!(app.refresh(&refresh, None).status, 400, "reuse");
    issue_service_and_legacy_tokens(&app);
    let second = app.webapp_tokens("read");
    assert_eq!(
        revoke(&app, second["refresh_token"].as_str().unwrap()).status,
        200
    );
    let rotation = run_cli(&app.db, &config, &["keys", "rotate"]);
    assert!(rotation.status.success(), "{}", stderr(&rotation));
    let new_kid = stdout(&rotation).trim().to_owned();

    // Rows are appended by a writer thread; wait until the last of them is in.
    let events = eventually(std::time::Duration::from_secs(10), || {
        let events = audit_tail(&app);
        find(&events, "token_revoked", "success").map(|_| events.clone())
    })
    .expect("the revocation reached the audit table");

    let user = Some(app.user_id.as_str());
    let failed = find(&events, "login", "failure").expect("failed login");
    assert_eq!(failed["user_id"].as_str(), user);
    assert_eq!(failed["ip"], "127.0.0.1");
    let login = find(&events, "login", "success").expect("login");
    assert_eq!(login["user_id"].as_str(), user);
    assert_eq!(login["ip"], "127.0.0.1");
    let consent = find(&events, "consent", "granted").expect("consent");
    assert_eq!(consent["client_id"], WEBAPP);
    assert_eq!(consent["user_id"].as_str(), user);
    let issued: Vec<&Value> = events
        .iter()
        .filter(|e| e["event"] == "token_issued")
        .collect();
    let by_grant = |grant: &str| {
        issued
            .iter()
            .find(|e| e["detail"].as_str() == Some(&format!("grant_type={grant}")))
            .unwrap_or_else(|| panic!("token_issued for {grant}: {issued:?}"))
    };
    assert_eq!(by_grant("authorization_code")["user_id"].as_str(), user);
    assert_eq!(by_grant("authorization_code")["client_id"], WEBAPP);
    assert_eq!(by_grant("refresh_token")["user_id"].as_str(), user);
    assert_eq!(by_grant("client_credentials")["client_id"], SERVICE);
    assert!(by_grant("client_credentials")["user_id"].is_null());
    assert_eq!(by_grant("password")["user_id"].as_str(), user);
    assert_eq!(by_grant("password")["client_id"], LEGACY);
    let reuse = find(&events, "refresh_reuse_detected", "detected").expect("reuse");
    assert_eq!(reuse["client_id"], WEBAPP);
    assert_eq!(reuse["user_id"].as_str(), user);
    assert_eq!(reuse["ip"], "127.0.0.1");
    let revoked = find(&events, "token_revoked", "success").expect("revocation");
    assert_eq!(revoked["client_id"], WEBAPP);
    let rotated_key = find(&events, "key_rotated", "success").expect("key rotation");
    assert!(rotated_key["detail"].as_str().unwrap().contains(&new_kid));
    let synced = find(&events, "clients_synced", "success").expect("clients synced at start");
    assert!(
        synced["detail"].as_str().unwrap().contains("added=6"),
        "{synced}"
    );

    // The same events are log lines under the audit target; neither holds a secret.
    let logs = app.server.logs();
    let audit_lines: Vec<&String> = logs
        .iter()
        .filter(|line| line.contains("\"target\":\"gatehouse::audit\""))
        .collect();
    for event in [
        "login",
        "consent",
        "token_issued",
        "refresh_reuse_detected",
        "token_revoked",
    ] {
        assert!(
            audit_lines
                .iter()
                .any(|line| line.contains(&format!("\"event\":\"{event}\""))),
            "{event} is not in the log"
        );
    }
    let everything = format!("{events:?}{audit_lines:?}");
    for secret in [PASSWORD, WEBAPP_SECRET, SERVICE_SECRET, refresh.as_str()] {
        assert!(
            !everything.contains(secret),
            "a secret is in the audit trail"
        );
    }

    // The plain listing shows the newest events last.
    let output = run_cli(&app.db, &config, &["audit", "tail", "-n", "1"]);
    let last = stdout(&output);
    assert_eq!(last.lines().count(), 1, "{last}");
    assert!(last.contains("key_rotated"), "{last}");
}

fn events_kept_in_the_log_only_are_logged_but_not_rows(db: TestDb) {
    let app = OAuthServer::start_configured(
        db,
        "",
        "[audit]\nlog_only = [\"token_issued.client_credentials\", \"key_rotated\"]\n",
    );
    let config = app.db.dir.path().join("gatehouse.toml");

    issue_service_and_legacy_tokens(&app);
    // The CLI reads the same file: its events obey the same list.
    let rotation = run_cli(&app.db, &config, &["keys", "rotate"]);
    assert!(rotation.status.success(), "{}", stderr(&rotation));
    assert_eq!(
        app.sign_in(&mut Browser::new(), USERNAME, "wrong password")
            .status,
        401
    );

    // The writer appends rows in the order they were queued: once the failed login, queued
    // after the client_credentials token, is in the table, that token's row would be too.
    let events = eventually(std::time::Duration::from_secs(10), || {
        let events = audit_tail(&app);
        find(&events, "login", "failure").map(|_| events.clone())
    })
    .expect("the failed login reached the audit table");
    assert!(
        find(&events, "clients_synced", "success").is_some(),
        "{events:?}"
    );
    let issued: Vec<&Value> = events
        .iter()
        .filter(|e| e["event"] == "token_issued")
        .collect();
    assert_eq!(issued.len(), 1, "{issued:?}");
    assert_eq!(issued[0]["detail"], "grant_type=password");
    assert_eq!(issued[0]["client_id"], LEGACY);
    assert!(
        !events.iter().any(|e| e["event"] == "key_rotated"),
        "key_rotated is in the table: {events:?}"
    );

    let logged = |lines: &[String], event: &str, detail: &str| {
        lines.iter().any(|line| {
            line.contains("\"target\":\"gatehouse::audit\"")
                && line.contains(&format!("\"event\":\"{event}\""))
                && line.contains(detail)
        })
    };
    let server_lines = app.server.logs();
    for grant in ["client_credentials", "password"] {
        let detail = format!("grant_type={grant}");
        assert!(
            logged(&server_lines, "token_issued", &detail),
            "{grant}: {server_lines:?}"
        );
    }
    let cli_lines: Vec<String> = stderr(&rotation).lines().map(str::to_owned).collect();
    assert!(logged(&cli_lines, "key_rotated", ""), "{cli_lines:?}");
    assert!(
        server_lines.iter().any(|line| line
            .contains("token_issued.client_credentials, key_rotated")
            && line.contains("kept in the log only")),
        "the server says at start what the table will miss: {server_lines:?}"
    );
}

/// With the audit target filtered out of the log, events kept out of the table are kept
/// nowhere: the server says so at start.
#[test]
fn log_only_events_filtered_out_of_the_log_are_warned_about() {
    let sections = "[audit]\nlog_only = [\"token_issued\"]\n";
    let db = TestDb::create(Backend::Sqlite).expect("SQLite is always available");
    let app = OAuthServer::start_logging(db, "", sections, "info,gatehouse::audit=off", &[]);
    let lines = app.server.logs();
    assert!(
        lines.iter().any(|line| line.contains("\"level\":\"WARN\"")
            && line.contains("recorded nowhere")
            && line.contains("token_issued")),
        "{lines:?}"
    );
    assert!(
        !lines.iter().any(|l| l.contains("gatehouse::audit\"")),
        "{lines:?}"
    );
}

/// The server writes its log lines in batches (`log.flush_interval`): with an interval far
/// longer than issuing a few tokens takes, their lines are still in memory when SIGTERM
/// arrives, and must still reach stdout before the process ends.
fn a_stop_by_sigterm_writes_out_every_buffered_log_line(db: TestDb) {
    const FLUSH_INTERVAL: (&str, &str) = ("GATEHOUSE__LOG__FLUSH_INTERVAL", "1s");
    const TOKENS: usize = 5;
    let first = OAuthServer::start_logging(db, "", "", "info", &[FLUSH_INTERVAL]);
    let token_lines = |lines: &[String]| {
        lines
            .iter()
            .filter(|line| {
                line.contains("\"target\":\"gatehouse::audit\"")
                    && line.contains("\"event\":\"token_issued\"")
                    && line.contains("grant_type=client_credentials")
            })
            .count()
    };
    // A machine that stalls for the whole interval lets the flusher write the lines before
    // SIGTERM, which proves nothing about the stop: then again, on a fresh instance.
    for attempt in 1..=3 {
        let mut app = first.another_instance_with_env(&[FLUSH_INTERVAL]);
        for _ in 0..TOKENS {
            let issued = app.token(
                &[("grant_type", "client_credentials")],
                Some((SERVICE, SERVICE_SECRET)),
            );
            assert_eq!(issued.status, 200, "{}", issued.body);
        }
        let written_before_the_stop = token_lines(&app.server.logs());
        let lines = app.server.stop();
        if written_before_the_stop > 0 {
            eprintln!("attempt {attempt}: the lines were written before SIGTERM; again");
            continue;
        }
        assert_eq!(token_lines(&lines), TOKENS, "{lines:#?}");
        return;
    }
    panic!("in 3 attempts the tokens' lines never waited in memory for SIGTERM");
}
