//! Open redirects and escaping (issue #5, item 4): no input reaches a Location header unless
//! it is an exact registered redirect URI, and every value rendered into a page is escaped.

use crate::on_both_backends;
use crate::support::*;

on_both_backends!(
    redirect_uri_lookalikes_get_a_page_never_a_redirect,
    every_location_is_ours_or_the_registered_redirect_uri,
    every_rendered_value_is_escaped,
);

/// A client whose display name and one scope are markup; public, with an https redirect,
/// so the consent page is shown.
const XSS_NAME: &str = "<script>alert(1)</script> \"double\" 'single' & ampersand";
const XSS_SCOPE: &str = "<img/src=x/onerror=alert(2)>";
const XSS_REDIRECT: &str = "https://xss.example.com/cb";

fn xss_client() -> String {
    format!(
        r#"
[[clients]]
id = "xss"
name = '''{XSS_NAME}'''
redirect_uris = ["{XSS_REDIRECT}"]
grant_types = ["authorization_code"]
scopes = ["read", "{XSS_SCOPE}"]
default_scopes = ["read"]
"#
    )
}

/// An HTML 400 without a Location header.
#[track_caller]
fn assert_refused_without_redirect(response: &Response, why: &str) {
    assert_eq!(response.status, 400, "{why}: {}", response.body);
    assert!(
        response.header("location").is_none(),
        "{why}: redirected to {:?}",
        response.header("location")
    );
    assert!(
        response
            .header("content-type")
            .is_some_and(|t| t.starts_with("text/html")),
        "{why}"
    );
}

fn redirect_uri_lookalikes_get_a_page_never_a_redirect(db: TestDb) {
    let app = OAuthServer::start(db);
    let mut browser = Browser::new();
    let p = pkce();
    // A signed-in browser would otherwise be sent straight on: the strictest case.
    assert_eq!(app.sign_in(&mut browser, USERNAME, PASSWORD).status, 303);
    let request = |client: &str, redirect_uri: &str| {
        app.authorize_url(&[
            ("response_type", "code"),
            ("client_id", client),
            ("redirect_uri", redirect_uri),
            ("scope", "read"),
            ("state", "s"),
            ("code_challenge", &p.challenge),
            ("code_challenge_method", "S256"),
        ])
    };
    let webapp_lookalikes = [
        "https://evil.com/callback",
        "https://app.example.com.evil.com/callback",
        "https://app.example.com/callback.evil.com",
        "https://app.example.com/callbackx",
        "https://app.example.com/callback/../x",
        "https://app.example.com/x/../callback",
        "https://app.example.com/./callback",
        "https://app.example.com@evil.com/callback",
        "https://evil.com@app.example.com/callback",
        "https://evil.com#@app.example.com/callback",
        "https://APP.EXAMPLE.COM/callback",
        "https://app.example.com/Callback",
        "HTTPS://app.example.com/callback",
        "https://app.example.com/callback/",
        "https://app.example.com/callback?x=1",
        "https://app.example.com/callback?",
        "https://app.example.com/callback#",
        "https://app.example.com/callback#frag",
        "https://app.example.com/callback%2F..%2Fx",
        "https://app.example.com/%63allback",
        "https://app.example.com:443/callback",
        "https://app.example.com:8443/callback",
        "http://app.example.com/callback",
        "https:/app.example.com/callback",
        "https:app.example.com/callback",
        "//app.example.com/callback",
        "/callback",
        " https://app.example.com/callback",
        "https://app.example.com/callback ",
        "https://app.example.com/callback\t",
        "https://app.example.com/callback\r\nLocation: https://evil.com",
        "https://app.example.com\\@evil.com/callback",
        "https://app.example.com/callback\u{0}",
        "javascript:alert(1)//https://app.example.com/callback",
        "javascript://app.example.com/callback%0Aalert(1)",
        "data:text/html,<script>alert(1)</script>",
        "",
    ];
    for uri in webapp_lookalikes {
        assert_refused_without_redirect(&browser.get(&request(WEBAPP, uri)), uri);
    }
    // The public loopback client: only the port may differ (RFC 8252 7.3).
    let spa_lookalikes = [
        "http://127.0.0.1.evil.com/callback",
        "http://127.0.0.1:4711@evil.com/callback",
        "http://evil.com@127.0.0.1:4711/callback",
        "http://localhost:4711/callback",
        "http://[::1]:4711/callback",
        "http://0x7f.0.0.1:4711/callback",
        "http://2130706433:4711/callback",
        "https://127.0.0.1:4711/callback",
        "http://127.0.0.1:4711/callback/",
        "http://127.0.0.1:4711/callback?x=1",
        "http://127.0.0.1:4711/callback#x",
        "http://127.0.0.1:4711/x/../callback",
        "http://127.0.0.1:4711/Callback",
    ];
    for uri in spa_lookalikes {
        assert_refused_without_redirect(&browser.get(&request(SPA, uri)), uri);
    }
    for client in ["nobody", "", "WEBAPP", "webapp ", "webapp\u{0}"] {
        assert_refused_without_redirect(
            &browser.get(&request(client, WEBAPP_REDIRECT)),
            &format!("client {client:?}"),
        );
    }
    // Positive control: the exact URIs are accepted (the consent page is shown).
    for (client, uri) in [
        (WEBAPP, WEBAPP_REDIRECT),
        (SPA, "http://127.0.0.1:4711/callback"),
    ] {
        let response = browser.get(&request(client, uri));
        assert_eq!(response.status, 200, "{uri}: {}", response.body);
        assert!(response.body.contains("name=\"decision\""), "{uri}");
    }
}

/// A Location is safe when it stays on gatehouse (a path, not `//host` or `/\host`) or is
/// exactly a registered redirect URI followed by its query.
fn is_safe_location(location: &str, registered: &[&str]) -> bool {
    let on_gatehouse = location.starts_with('/')
        && !location.starts_with("//")
        && !location.contains('\\')
        && location.bytes().all(|b| b.is_ascii_graphic());
    let to_client = registered
        .iter()
        .any(|uri| location.starts_with(&format!("{uri}?")));
    on_gatehouse || to_client
}

#[test]
fn the_location_check_itself_can_fail() {
    for bad in [
        "https://evil.com",
        "//evil.com",
        "/\\evil.com",
        "https://app.example.com/callback.evil.com?code=x",
        "https://app.example.com/callback/../x?code=x",
    ] {
        assert!(!is_safe_location(bad, &[WEBAPP_REDIRECT]), "{bad}");
    }
    assert!(is_safe_location("/login?return_to=x", &[WEBAPP_REDIRECT]));
    assert!(is_safe_location(
        "https://app.example.com/callback?code=x",
        &[WEBAPP_REDIRECT]
    ));
}

const EVIL_TARGETS: [&str; 10] = [
    "https://evil.com",
    "//evil.com",
    "/\\evil.com",
    "\\\\evil.com",
    "https:evil.com",
    "/%2F%2Fevil.com",
    "/authorize?x=1\r\nLocation: https://evil.com",
    " /authorize?x=1",
    "javascript:alert(1)",
    "/authorize/../..//evil.com",
];

fn every_location_is_ours_or_the_registered_redirect_uri(db: TestDb) {
    let app = OAuthServer::start(db);
    let registered = [WEBAPP_REDIRECT, "https://app.example.com/other"];
    let mut seen: Vec<(String, String)> = Vec::new();
    let mut note = |what: &str, response: &Response| {
        if let Some(location) = response.header("location") {
            seen.push((what.to_owned(), location.to_owned()));
        }
    };
    let p = pkce();
    let params = |scope: &'static str, response_type: &'static str| {
        vec![
            ("response_type", response_type),
            ("client_id", WEBAPP),
            ("redirect_uri", WEBAPP_REDIRECT),
            ("scope", scope),
            ("state", "https://evil.com"),
            ("code_challenge", p.challenge.as_str()),
            ("code_challenge_method", "S256"),
        ]
    };

    // The whole flow, hop by hop, then a denial and error answers.
    let mut browser = Browser::new();
    let first = browser.get(&app.authorize_url(&params("read", "code")));
    note("authorize", &first);
    let after_login = app.login(&mut browser, &first);
    note("login", &after_login);
    let consent = browser.get(&app.url(after_login.header("location").unwrap()));
    note("consent page", &consent);
    let allowed = app.decide(&mut browser, &consent, "allow");
    note("allow", &allowed);
    let consent = browser.get(&app.authorize_url(&params("read write", "code")));
    let denied = app.decide(&mut browser, &consent, "deny");
    note("deny", &denied);
    assert!(denied
        .header("location")
        .is_some_and(|l| l.contains("error=access_denied")));
    for (scope, response_type) in [("admin", "code"), ("read", "token"), ("read", "")] {
        note(
            "error",
            &browser.get(&app.authorize_url(&params(scope, response_type))),
        );
    }

    // /login's return parameter, on the page and in the form post.
    for target in EVIL_TARGETS {
        for name in ["return_to", "next", "redirect", "redirect_uri"] {
            let mut fresh = Browser::new();
            let url = format!(
                "/login?{}",
                url::form_urlencoded::Serializer::new(String::new())
                    .append_pair(name, target)
                    .finish()
            );
            let page = fresh.get(&app.url(&url));
            note("login page", &page);
            let carried = hidden_field(&page.body, "return_to").unwrap_or_default();
            assert!(
                carried.is_empty() || carried.starts_with("/authorize?"),
                "{name}={target:?} carried as {carried:?}"
            );
            let csrf = hidden_field(&page.body, "csrf_token").unwrap();
            let signed_in = fresh.post_form(
                &app.url("/login"),
                &[
                    ("username", USERNAME),
                    ("password", PASSWORD),
                    ("csrf_token", &csrf),
                    (name, target),
                ],
            );
            assert_eq!(signed_in.status, 303, "{name}={target:?}");
            note("login post", &signed_in);
            if name == "return_to" {
                assert_eq!(
                    signed_in.header("location"),
                    Some("/login/done"),
                    "return_to={target:?}"
                );
            }
            // /logout ignores any return parameter: a page, never a redirect.
            let logout_page = fresh.get(&app.url(&url.replacen("/login", "/logout", 1)));
            note("logout page", &logout_page);
            assert_eq!(logout_page.status, 200);
            let csrf = hidden_field(&logout_page.body, "csrf_token").unwrap();
            let out = fresh.post_form(
                &app.url("/logout"),
                &[("csrf_token", &csrf), (name, target)],
            );
            assert_eq!(out.status, 200, "{}", out.body);
            note("logout", &out);
        }
    }

    assert!(seen.len() >= 45, "{seen:?}");
    for (what, location) in &seen {
        assert!(
            is_safe_location(location, &registered),
            "{what} sent the browser to {location:?}"
        );
    }
    let to_client = seen
        .iter()
        .filter(|(_, l)| l.starts_with(WEBAPP_REDIRECT))
        .count();
    assert!(to_client >= 5, "the flow reached the client: {seen:?}");
}

/// No markup from input survives unescaped: the literal never appears, the text does.
#[track_caller]
fn assert_escaped(body: &str, markup: &str, why: &str) {
    assert!(
        !body.contains(markup),
        "{why}: {markup:?} rendered raw:\n{body}"
    );
}

fn every_rendered_value_is_escaped(db: TestDb) {
    let app = OAuthServer::start_configured(db, "", &xss_client());
    let p = pkce();
    let state = "\"><script>alert(3)</script>";
    let nonce = "<img src=x onerror=alert(4)>";
    let odd_name = "\"><script>alert(5)</script>";
    let odd_value = "</textarea><b>6</b>";
    let params = [
        ("response_type", "code"),
        ("client_id", "xss"),
        ("redirect_uri", XSS_REDIRECT),
        ("scope", &format!("read {XSS_SCOPE}")),
        ("state", state),
        ("nonce", nonce),
        ("code_challenge", &p.challenge),
        ("code_challenge_method", "S256"),
        ("error", "<script>alert(7)</script>"),
        (odd_name, odd_value),
    ];
    let markups = ["<script>", "<img", "<b>", "</textarea>"];
    let mut browser = Browser::new();
    let first = browser.get(&app.authorize_url(&params));
    assert_eq!(first.status, 303, "{}", first.body);
    let login_url = first.header("location").unwrap().to_owned();
    let login = browser.get(&app.url(&login_url));
    assert_eq!(login.status, 200);
    for m in markups {
        assert_escaped(&login.body, m, "login page");
    }
    let return_to = hidden_field(&login.body, "return_to").unwrap();
    assert!(return_to.starts_with("/authorize?"), "{return_to}");

    // A failed sign-in re-renders the username it was given.
    let username = "<script>alert(8)</script>\"'&";
    let csrf = hidden_field(&login.body, "csrf_token").unwrap();
    let failed = browser.post_form(
        &app.url("/login"),
        &[
            ("username", username),
            ("password", "wrong password"),
            ("csrf_token", &csrf),
            ("return_to", &return_to),
        ],
    );
    assert_eq!(failed.status, 401);
    assert_escaped(&failed.body, "<script>", "failed login");
    assert!(
        html_unescape(&failed.body).contains(username),
        "the username is shown back, escaped:\n{}",
        failed.body
    );
    assert!(failed.body.contains("role=\"alert\""));

    // The consent page shows the client's name and scope as text.
    let after_login = app.login(&mut browser, &first);
    let consent = browser.get(&app.url(after_login.header("location").unwrap()));
    assert_eq!(consent.status, 200, "{}", consent.body);
    for m in markups {
        assert_escaped(&consent.body, m, "consent page");
    }
    let heading_start = consent.body.find("<h1>").unwrap() + 4;
    let heading_end = consent.body.find("</h1>").unwrap();
    assert_eq!(
        html_unescape(&consent.body[heading_start..heading_end]),
        format!("Allow {XSS_NAME} access?")
    );
    assert!(
        html_unescape(&consent.body).contains(XSS_SCOPE),
        "the scope is listed"
    );
    // Every request field travels through the form unchanged.
    let fields = hidden_fields(&consent.body);
    for (name, value) in [
        ("state", state),
        ("nonce", nonce),
        (odd_name, odd_value),
        ("error", "<script>alert(7)</script>"),
    ] {
        assert!(
            fields.iter().any(|(k, v)| k == name && v == value),
            "{name} round-trips: {fields:?}"
        );
    }
    let redirect = app.decide(&mut browser, &consent, "allow");
    assert_eq!(redirect.status, 303, "{}", redirect.body);
    let location = url::Url::parse(redirect.header("location").unwrap()).unwrap();
    assert!(location.as_str().starts_with(&format!("{XSS_REDIRECT}?")));
    assert_eq!(query_value(&location, "state").as_deref(), Some(state));
    assert!(
        !redirect.header("location").unwrap().contains('<'),
        "the state is encoded in the Location"
    );

    // Error pages reflect nothing they are given.
    for query in [
        "client_id=%3Cscript%3Ealert(9)%3C%2Fscript%3E",
        "client_id=webapp&redirect_uri=%3Cscript%3Ealert(9)%3C%2Fscript%3E",
        "error=%3Cscript%3Ealert(9)%3C%2Fscript%3E&error_description=%3Cb%3Ex%3C%2Fb%3E",
    ] {
        let page = browser.get(&app.url(&format!("/authorize?{query}")));
        assert_eq!(page.status, 400, "{query}");
        assert_escaped(&page.body, "<script>", query);
        assert_escaped(&page.body, "alert(9)", query);
        assert_escaped(&page.body, "<b>", query);
    }
    let page = browser.get(&app.url(
        "/login?return_to=%2Fauthorize%3F%22%3E%3Cscript%3Ealert(10)%3C%2Fscript%3E&error=%3Cscript%3E",
    ));
    assert_eq!(page.status, 200);
    assert_escaped(&page.body, "<script>", "login return_to");
    assert_eq!(
        hidden_field(&page.body, "return_to").as_deref(),
        Some("/authorize?\"><script>alert(10)</script>"),
        "carried as text"
    );
}

#[test]
fn a_scope_that_is_not_a_scope_token_is_rejected_by_name() {
    let db = TestDb::create(Backend::Sqlite).unwrap();
    let config = write_config(
        &db,
        "gatehouse.toml",
        r#"
[[clients]]
id = "bad"
redirect_uris = ["https://bad.example.com/cb"]
grant_types = ["authorization_code"]
scopes = ["read", "say \"hi\"", "a\\b"]
"#,
    );
    let check = run_cli(&db, &config, &["check-config"]);
    assert_eq!(check.status.code(), Some(2), "{}", stdout(&check));
    let message = stderr(&check);
    assert!(message.contains("clients[0].scopes[1]"), "{message}");
    assert!(message.contains("clients[0].scopes[2]"), "{message}");
    assert!(!message.contains("clients[0].scopes[0]"), "{message}");
}
