//! The flow in a real browser: headless Chromium, driven by Playwright, fills the login
//! form, approves consent and lands on the client's redirect_uri with a code that redeems;
//! axe-core audits the login, consent, error and logout pages on the way.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::*;

fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser")
}

/// What is missing to run the browser test, if anything.
fn missing_tools() -> Option<String> {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".to_owned());
    if !Path::new(&chromium).exists() {
        return Some(format!(
            "no Chromium at {chromium} (apt-get install chromium, or set CHROMIUM)"
        ));
    }
    if Command::new("node").arg("--version").output().is_err() {
        return Some("no node on PATH".to_owned());
    }
    if !browser_dir().join("node_modules/playwright-core").exists() {
        return Some("run `npm ci --prefix tests/browser` first".to_owned());
    }
    None
}

fn browser_required() -> bool {
    std::env::var("GATEHOUSE_REQUIRE_BROWSER").is_ok_and(|v| v == "1" || v == "true")
}

#[test]
fn a_person_signs_in_and_approves_in_chromium() {
    if let Some(missing) = missing_tools() {
        assert!(
            !browser_required(),
            "GATEHOUSE_REQUIRE_BROWSER is set but {missing}"
        );
        let _ = std::io::stderr().lock().write_all(
            format!("\n*** BROWSER TEST SKIPPED: {missing}; set GATEHOUSE_REQUIRE_BROWSER=1 to make this a failure\n").as_bytes(),
        );
        return;
    }
    let app = OAuthServer::start(TestDb::create(Backend::Sqlite).unwrap());
    let p = pkce();
    let authorize_url = app.authorize_url(&[
        ("response_type", "code"),
        ("client_id", WEBAPP),
        ("redirect_uri", WEBAPP_REDIRECT),
        ("scope", "openid read"),
        ("state", "browser-state"),
        ("code_challenge", &p.challenge),
        ("code_challenge_method", "S256"),
    ]);
    let output = Command::new("node")
        .current_dir(browser_dir())
        .args([
            "flow.mjs",
            &app.server.base_url,
            &authorize_url,
            USERNAME,
            PASSWORD,
            WEBAPP_REDIRECT,
        ])
        .output()
        .expect("run node");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let result: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| {
            panic!(
                "no JSON from the browser run ({e}): {stdout}\n{}",
                String::from_utf8_lossy(&output.stderr)
            )
        });
    assert!(
        result.get("error").is_none(),
        "browser run failed: {}",
        result["error"]
    );

    for page in [
        "login",
        "login_error",
        "consent",
        "error",
        "logout",
        "logged_out",
    ] {
        let violations = &result["audits"][page];
        assert!(
            violations.is_array(),
            "page {page} was not audited: {result}"
        );
        assert_eq!(
            violations.as_array().unwrap().len(),
            0,
            "axe-core violations on {page}: {violations:#}"
        );
    }

    let redirect =
        url::Url::parse(result["redirect"].as_str().expect("arrived at the client")).unwrap();
    assert!(redirect.as_str().starts_with(WEBAPP_REDIRECT));
    assert_eq!(
        query_value(&redirect, "state").as_deref(),
        Some("browser-state")
    );
    let code = query_value(&redirect, "code").expect("a code");
    let response = app.redeem_webapp_code(&code, &p.verifier);
    assert_eq!(response.status, 200, "{}", response.body);
    assert!(response.json()["access_token"].as_str().is_some());
}
