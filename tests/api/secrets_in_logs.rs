//! No secret in a log line or a table (issue #5, item 5): every flow runs against a server
//! logging at `trace` for every crate, and every secret used or produced (passwords, client
//! secrets, codes, PKCE verifiers, tokens, CSRF tokens, cookies, the system secret) is then
//! looked for, whole and as any 20-character fragment, in everything the server and the CLI
//! wrote and in every row of every table.

use std::collections::HashSet;
use std::path::Path;
use std::process::Output;

use diesel::{QueryableByName, RunQueryDsl};
use gatehouse::storage::DbConnection;
use serde_json::Value;

use crate::on_both_backends;
use crate::support::*;

on_both_backends!(no_secret_reaches_a_log_line_or_a_table);

/// Fragments this long or longer are looked for; shorter values only whole.
const WINDOW: usize = 20;

#[derive(Default)]
struct Secrets {
    items: Vec<(String, String)>,
}

impl Secrets {
    fn add(&mut self, what: &str, value: &str) {
        assert!(!value.is_empty(), "{what} is empty");
        if !self.items.iter().any(|(_, v)| v == value) {
            self.items.push((what.to_owned(), value.to_owned()));
        }
    }

    fn add_json(&mut self, what: &str, body: &Value) {
        for field in ["access_token", "refresh_token"] {
            if let Some(token) = body[field].as_str() {
                self.add(&format!("{what} {field}"), token);
            }
        }
    }

    fn add_cookies(&mut self, what: &str, browser: &Browser) {
        for (name, value) in &browser.cookies {
            self.add(&format!("{what} cookie {name}"), value);
        }
    }

    /// Every fragment worth looking for, with what it belongs to. A JWT's header is public
    /// (algorithm, type, key id), so only its claims and signature are fragmented.
    fn fragments(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for (what, value) in &self.items {
            out.push((what.clone(), value.clone()));
            let parts: Vec<&str> = value.split('.').collect();
            let fragmented: Vec<&str> = if parts.len() == 3 {
                parts[1..].to_vec()
            } else {
                vec![value.as_str()]
            };
            for part in fragmented {
                let chars: Vec<char> = part.chars().collect();
                for window in chars.windows(WINDOW) {
                    out.push((what.clone(), window.iter().collect()));
                }
            }
        }
        out
    }
}

/// Where `text` (many lines) contains a secret or a fragment of one.
fn leaks(secrets: &Secrets, sources: &[(String, String)]) -> Vec<String> {
    let fragments = secrets.fragments();
    let windows: HashSet<&[u8]> = fragments
        .iter()
        .filter(|(_, f)| f.len() == WINDOW)
        .map(|(_, f)| f.as_bytes())
        .collect();
    let mut found = Vec::new();
    for (source, text) in sources {
        let bytes = text.as_bytes();
        let hit = bytes.windows(WINDOW).find(|w| windows.contains(w));
        if let Some(hit) = hit {
            let fragment = String::from_utf8_lossy(hit).into_owned();
            let what = fragments
                .iter()
                .find(|(_, f)| *f == fragment)
                .map(|(w, _)| w.clone())
                .unwrap_or_default();
            found.push(format!("{what} (fragment {fragment:?}) in {source}"));
            continue;
        }
        for (what, value) in &secrets.items {
            if text.contains(value.as_str()) {
                found.push(format!("{what} in {source}"));
            }
        }
    }
    found
}

fn cli(db: &TestDb, config: &Path, args: &[&str], input: &str) -> Output {
    let mut cmd = gatehouse(db.dir.path());
    cmd.arg("--config")
        .arg(config)
        .args(args)
        .env("RUST_LOG", "trace,actix_http=trace");
    output_with_stdin(cmd, input)
}

#[derive(QueryableByName)]
struct Text {
    #[diesel(sql_type = diesel::sql_types::Text)]
    text: String,
}

/// Every row of every table, as text: (table, row).
fn dump(db: &TestDb) -> Vec<(String, String)> {
    let mut rows = Vec::new();
    match db.connect() {
        DbConnection::Postgresql(mut conn) => {
            let tables: Vec<Text> = diesel::sql_query(
                "SELECT tablename::text AS text FROM pg_tables WHERE schemaname = 'public'",
            )
            .load(&mut conn)
            .unwrap();
            for table in tables {
                let query = format!("SELECT CAST(t AS TEXT) AS text FROM \"{}\" t", table.text);
                for row in diesel::sql_query(query).load::<Text>(&mut conn).unwrap() {
                    rows.push((table.text.clone(), row.text));
                }
            }
        }
        DbConnection::Sqlite(mut conn) => {
            let tables: Vec<Text> =
                diesel::sql_query("SELECT name AS text FROM sqlite_master WHERE type = 'table'")
                    .load(&mut conn)
                    .unwrap();
            for table in tables {
                let columns: Vec<Text> = diesel::sql_query(format!(
                    "SELECT name AS text FROM pragma_table_info('{}')",
                    table.text
                ))
                .load(&mut conn)
                .unwrap();
                let row_text = columns
                    .iter()
                    .map(|c| format!("COALESCE(quote(\"{}\"), '')", c.text))
                    .collect::<Vec<_>>()
                    .join(" || '|' || ");
                let query = format!("SELECT {row_text} AS text FROM \"{}\"", table.text);
                for row in diesel::sql_query(query).load::<Text>(&mut conn).unwrap() {
                    rows.push((table.text.clone(), row.text));
                }
            }
        }
    }
    rows
}

fn no_secret_reaches_a_log_line_or_a_table(db: TestDb) {
    let app = OAuthServer::start_logging(
        db,
        "",
        "",
        "trace",
        // actix_http named, so that its dispatcher's lines are not silenced.
        &[("RUST_LOG", "trace,actix_http=trace")],
    );
    let mut secrets = Secrets::default();
    for (what, value) in [
        ("alice's password", PASSWORD),
        ("webapp's secret", WEBAPP_SECRET),
        ("the other clients' secret", OTHER_SECRET),
        ("the system secret", SYSTEM_SECRET),
    ] {
        secrets.add(what, value);
    }
    let wrong_password = "wrong-password-of-alice-4711";
    let wrong_secret = "a-wrong-client-secret-0815";
    secrets.add("a wrong password", wrong_password);
    secrets.add("a wrong client secret", wrong_secret);

    // Authorization code with PKCE: a wrong then the right password, consent, redemption
    // with client_secret_post.
    let mut browser = Browser::new();
    let p = pkce();
    secrets.add("PKCE verifier", &p.verifier);
    let params = [
        ("response_type", "code"),
        ("client_id", WEBAPP),
        ("redirect_uri", WEBAPP_REDIRECT),
        ("scope", "read openid"),
        ("state", "st"),
        ("code_challenge", &p.challenge),
        ("code_challenge_method", "S256"),
    ];
    let first = browser.get(&app.authorize_url(&params));
    let login = browser.get(&app.url(first.header("location").unwrap()));
    let csrf = hidden_field(&login.body, "csrf_token").unwrap();
    secrets.add("login CSRF token", &csrf);
    let return_to = hidden_field(&login.body, "return_to").unwrap();
    let failed = browser.post_form(
        &app.url("/login"),
        &[
            ("username", USERNAME),
            ("password", wrong_password),
            ("csrf_token", &csrf),
            ("return_to", &return_to),
        ],
    );
    assert_eq!(failed.status, 401);
    let after_login = app.login(&mut browser, &first);
    secrets.add_cookies("after login", &browser);
    let consent = browser.get(&app.url(after_login.header("location").unwrap()));
    let consent_csrf = hidden_field(&consent.body, "csrf_token").unwrap();
    secrets.add("consent CSRF token", &consent_csrf);
    let redirect = app.decide(&mut browser, &consent, "allow");
    let location = url::Url::parse(redirect.header("location").unwrap()).unwrap();
    let code = query_value(&location, "code").unwrap();
    secrets.add("authorization code", &code);
    let redeemed = app.token(
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
    assert_eq!(redeemed.status, 200, "{}", redeemed.body);
    let tokens = redeemed.json();
    secrets.add_json("code redemption", &tokens);

    // Refresh rotation, then reuse of the rotated token (the family is revoked).
    let old_refresh = tokens["refresh_token"].as_str().unwrap();
    let rotated = app.refresh(old_refresh, None);
    assert_eq!(rotated.status, 200, "{}", rotated.body);
    let rotated = rotated.json();
    secrets.add_json("rotation", &rotated);
    let reused = app.refresh(old_refresh, None);
    assert_eq!(reused.json()["error"], "invalid_grant");

    // A second code, redeemed with Basic, then replayed.
    let p2 = pkce();
    secrets.add("second PKCE verifier", &p2.verifier);
    let second = [
        ("response_type", "code"),
        ("client_id", WEBAPP),
        ("redirect_uri", WEBAPP_REDIRECT),
        ("scope", "read openid"),
        ("code_challenge", p2.challenge.as_str()),
        ("code_challenge_method", "S256"),
    ];
    let redirect = app.authorize_with_consent(&mut browser, &second);
    let code2 = query_value(&redirect, "code").unwrap();
    secrets.add("second authorization code", &code2);
    let redeemed = app.redeem_webapp_code(&code2, &p2.verifier);
    assert_eq!(redeemed.status, 200, "{}", redeemed.body);
    secrets.add_json("second redemption", &redeemed.json());
    let replayed = app.redeem_webapp_code(&code2, &p2.verifier);
    assert_eq!(replayed.json()["error"], "invalid_grant");

    // Password grant, right and wrong; client credentials, right and wrong.
    let granted = app.token(
        &[
            ("grant_type", "password"),
            ("username", USERNAME),
            ("password", PASSWORD),
        ],
        Some((LEGACY, LEGACY_SECRET)),
    );
    assert_eq!(granted.status, 200, "{}", granted.body);
    let password_tokens = granted.json();
    secrets.add_json("password grant", &password_tokens);
    let refused = app.token(
        &[
            ("grant_type", "password"),
            ("username", USERNAME),
            ("password", wrong_password),
        ],
        Some((LEGACY, LEGACY_SECRET)),
    );
    assert_eq!(refused.json()["error"], "invalid_grant");
    let service = app.token(
        &[("grant_type", "client_credentials")],
        Some((SERVICE, SERVICE_SECRET)),
    );
    assert_eq!(service.status, 200, "{}", service.body);
    let service_tokens = service.json();
    secrets.add_json("client credentials", &service_tokens);
    let wrong = app.token(
        &[("grant_type", "client_credentials")],
        Some((SERVICE, wrong_secret)),
    );
    assert_eq!(wrong.status, 401);

    // Introspection and revocation.
    let introspected = app.post_form(
        "/introspect",
        &[("token", rotated["access_token"].as_str().unwrap())],
        Some((SERVICE, SERVICE_SECRET)),
    );
    assert_eq!(
        introspected.json()["active"],
        false,
        "revoked with its family"
    );
    let introspected = app.post_form(
        "/introspect",
        &[("token", service_tokens["access_token"].as_str().unwrap())],
        Some((SERVICE, SERVICE_SECRET)),
    );
    assert_eq!(introspected.json()["active"], true);
    for token in [
        password_tokens["access_token"].as_str().unwrap(),
        password_tokens["refresh_token"].as_str().unwrap(),
    ] {
        let revoked = app.post_form(
            "/revoke",
            &[("token", token)],
            Some((LEGACY, LEGACY_SECRET)),
        );
        assert_eq!(revoked.status, 200, "{}", revoked.body);
    }

    // Logout.
    let logout = browser.get(&app.url("/logout"));
    let logout_csrf = hidden_field(&logout.body, "csrf_token").unwrap();
    secrets.add("logout CSRF token", &logout_csrf);
    let out = browser.post_form(&app.url("/logout"), &[("csrf_token", &logout_csrf)]);
    assert_eq!(out.status, 200);

    // The CLI: users add, set-password, hash-secret, each at trace level.
    let bob_first = "bob-first-password-2468";
    let bob_second = "bob-second-password-1357";
    let hashed_secret = "a-client-secret-to-hash-9753";
    secrets.add("bob's first password", bob_first);
    secrets.add("bob's second password", bob_second);
    secrets.add("a client secret given to hash-secret", hashed_secret);
    let config = app.config.clone();
    let added = cli(
        &app.db,
        &config,
        &["users", "add", "bob", "--password-stdin"],
        &format!("{bob_first}\n"),
    );
    assert!(added.status.success(), "{}", stderr(&added));
    let changed = cli(
        &app.db,
        &config,
        &["users", "set-password", "bob", "--password-stdin"],
        &format!("{bob_second}\n"),
    );
    assert!(changed.status.success(), "{}", stderr(&changed));
    let hashed = cli(
        &app.db,
        &config,
        &["hash-secret", "--stdin"],
        &format!("{hashed_secret}\n"),
    );
    assert!(hashed.status.success(), "{}", stderr(&hashed));
    assert!(
        stdout(&hashed).trim().starts_with("$argon2id$"),
        "hash-secret prints the hash: {}",
        stdout(&hashed)
    );
    let mut bob = Browser::new();
    assert_eq!(app.sign_in(&mut bob, "bob", bob_second).status, 303);
    secrets.add_cookies("bob", &bob);

    let logs = eventually(std::time::Duration::from_secs(10), || {
        let logs = app.server.logs();
        logs.iter()
            .any(|l| l.contains("\"outcome\":\"success\"") && l.contains("login"))
            .then_some(logs)
    })
    .expect("the last login is logged");

    // The logs are as verbose as they get: every crate's trace lines are there.
    let trace_lines = logs
        .iter()
        .filter(|l| l.contains("\"level\":\"TRACE\""))
        .count();
    assert!(trace_lines > 0, "no TRACE line among {} lines", logs.len());
    let foreign_targets: HashSet<String> = logs
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|e| {
            e["target"]
                .as_str()
                .map(|t| t.split("::").next().unwrap_or(t).to_owned())
        })
        .filter(|t| t != "gatehouse")
        .collect();
    assert!(!foreign_targets.is_empty(), "only gatehouse logged");

    let mut sources: Vec<(String, String)> = vec![
        ("server stdout".into(), logs.join("\n")),
        ("server stderr".into(), app.server.stderr_lines().join("\n")),
    ];
    for (verb, output) in [
        ("users add", &added),
        ("users set-password", &changed),
        ("hash-secret", &hashed),
    ] {
        sources.push((format!("`{verb}` stdout"), stdout(output)));
        sources.push((format!("`{verb}` stderr"), stderr(output)));
    }
    let found = leaks(&secrets, &sources);
    assert!(
        found.is_empty(),
        "secrets in logs ({} lines, targets {foreign_targets:?}):\n{}",
        logs.len(),
        found.join("\n")
    );

    // The database holds digests and hashes only.
    let rows = dump(&app.db);
    let tables: HashSet<&str> = rows.iter().map(|(t, _)| t.as_str()).collect();
    for table in [
        "users",
        "clients",
        "browser_sessions",
        "consents",
        "token_families",
        "authorization_codes",
        // Refresh tokens are digests in token_families; refresh_tokens holds only tokens
        // of the earlier format, which no server writes any more.
        "access_tokens",
        "signing_keys",
        "auth_failures",
    ] {
        assert!(
            tables.contains(table),
            "no rows read from {table}: {tables:?}"
        );
    }
    let by_row: Vec<(String, String)> = rows
        .iter()
        .enumerate()
        .map(|(i, (table, row))| (format!("{table} row {i}"), row.clone()))
        .collect();
    // The dump can see what is stored: the digest of the live refresh token is there.
    let digest = gatehouse::crypto::mac::digest_secret(rotated["refresh_token"].as_str().unwrap());
    assert!(
        by_row.iter().any(|(_, row)| row.contains(&digest)),
        "the refresh token's digest is stored"
    );
    let found = leaks(&secrets, &by_row);
    assert!(
        found.is_empty(),
        "secrets stored in the clear:\n{}",
        found.join("\n")
    );
}
