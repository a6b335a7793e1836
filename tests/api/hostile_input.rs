//! Hostile input (issue #5, item 1): every endpoint answers malformed, oversized, repeated,
//! mistyped and random input with a clean 4xx and the right error code, never a 5xx, a
//! panic or a hung connection.

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use diesel::prelude::*;
use serde_json::{json, Value};

use crate::on_both_backends;
use crate::support::*;

on_both_backends!(
    a_nul_byte_names_no_client_and_no_user,
    a_parameter_sent_twice_is_invalid_request,
    oversized_bodies_are_413_and_oversized_values_4xx,
    wrong_content_types_are_refused,
    invalid_utf8_and_nul_bytes_are_refused_cleanly,
    sql_looking_strings_are_only_strings,
    malformed_basic_credentials_are_refused,
    malformed_jwts_are_inactive,
);

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

/// Sends a request as raw bytes; panics when no HTTP answer comes back.
fn send(
    app: &OAuthServer,
    method: &str,
    target: &[u8],
    headers: &[(&[u8], &[u8])],
    body: &[u8],
) -> RawResponse {
    raw_exchange(
        app.server.addr(),
        raw_request(method, target, headers, body),
    )
    .unwrap_or_else(|e| {
        panic!(
            "{method} {}: {e}",
            String::from_utf8_lossy(&target[..target.len().min(200)])
        )
    })
}

const FORM: &[u8] = b"application/x-www-form-urlencoded";

fn encode(pairs: &[(&str, &str)]) -> String {
    url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs.iter())
        .finish()
}

/// POST `body` as a urlencoded form with optional extra headers.
fn post(app: &OAuthServer, path: &str, headers: &[(&[u8], &[u8])], body: &[u8]) -> RawResponse {
    let mut all: Vec<(&[u8], &[u8])> = vec![(b"Content-Type", FORM)];
    all.extend_from_slice(headers);
    send(app, "POST", path.as_bytes(), &all, body)
}

fn service_basic() -> String {
    basic_auth(SERVICE, SERVICE_SECRET)
}

fn webapp_basic() -> String {
    basic_auth(WEBAPP, WEBAPP_SECRET)
}

/// An RFC 6749 5.2 error: the status, JSON with `error`, and no caching.
#[track_caller]
fn assert_oauth_error(response: &RawResponse, status: u16, error: &str, why: &str) {
    assert_eq!(response.status, status, "{why}: {}", response.text());
    assert!(
        response
            .header("content-type")
            .is_some_and(|t| t.starts_with("application/json")),
        "{why}: {:?}",
        response.headers
    );
    assert_eq!(response.json()["error"], error, "{why}");
    assert_eq!(response.header("cache-control"), Some("no-store"), "{why}");
    if status == 401 {
        assert!(
            response.header("www-authenticate").is_some(),
            "{why}: 401 names its scheme"
        );
    }
}

/// An HTML error page with `status` and never a redirect.
#[track_caller]
fn assert_html_error(response: &RawResponse, status: u16, why: &str) {
    assert_eq!(response.status, status, "{why}: {}", response.text());
    assert!(
        response
            .header("content-type")
            .is_some_and(|t| t.starts_with("text/html")),
        "{why}: {:?}",
        response.headers
    );
    assert!(response.header("location").is_none(), "{why}: no redirect");
}

/// A 4xx of any kind: the request was refused cleanly.
#[track_caller]
fn assert_4xx(response: &RawResponse, why: &str) {
    assert!(
        (400..500).contains(&response.status),
        "{why}: {} {}",
        response.status,
        response.text()
    );
}

/// An error redirect to webapp's registered URI (RFC 6749 4.1.2.1).
#[track_caller]
fn assert_error_redirect(response: &RawResponse, error: &str, why: &str) -> url::Url {
    let location = response.header("location").unwrap_or_default();
    let shown: String = location.chars().take(300).collect();
    assert_eq!(response.status, 303, "{why}: {shown} {}", response.text());
    assert!(
        location.starts_with(&format!("{WEBAPP_REDIRECT}?")),
        "{why}: {shown}"
    );
    let url = url::Url::parse(location).expect("absolute redirect");
    assert_eq!(
        query_value(&url, "error").as_deref(),
        Some(error),
        "{why}: {shown}"
    );
    url
}

fn authorize_target(pairs: &[(&str, &str)]) -> Vec<u8> {
    format!("/authorize?{}", encode(pairs)).into_bytes()
}

fn webapp_authorize(p: &Pkce) -> Vec<(&str, &str)> {
    vec![
        ("response_type", "code"),
        ("client_id", WEBAPP),
        ("redirect_uri", WEBAPP_REDIRECT),
        ("scope", "read"),
        ("state", "st"),
        ("code_challenge", &p.challenge),
        ("code_challenge_method", "S256"),
    ]
}

/// A browser with a CSRF cookie, the login form's token and a signed-in session's consent
/// form (cookies and hidden fields) for webapp.
struct Forms {
    login_csrf: String,
    login_cookies: String,
    consent_fields: Vec<(String, String)>,
    consent_cookies: String,
}

fn cookie_header(browser: &Browser) -> String {
    browser
        .cookies
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("; ")
}

fn forms(app: &OAuthServer) -> Forms {
    let mut login = Browser::new();
    let page = login.get(&app.url("/login"));
    let login_csrf = hidden_field(&page.body, "csrf_token").expect("csrf_token");
    let mut browser = Browser::new();
    let p = pkce();
    let first = browser.get(&app.authorize_url(&webapp_authorize(&p)));
    let after_login = app.login(&mut browser, &first);
    let consent = browser.get(&app.url(after_login.header("location").unwrap()));
    assert_eq!(consent.status, 200, "{}", consent.body);
    Forms {
        login_csrf,
        login_cookies: cookie_header(&login),
        consent_fields: hidden_fields(&consent.body),
        consent_cookies: cookie_header(&browser),
    }
}

fn with_cookies(cookies: &str) -> Vec<(&'static [u8], &[u8])> {
    vec![(b"Cookie", cookies.as_bytes())]
}

fn consent_body(forms: &Forms, extra: &[(&str, &str)]) -> String {
    let mut pairs: Vec<(&str, &str)> = forms
        .consent_fields
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    pairs.extend_from_slice(extra);
    encode(&pairs)
}

fn a_parameter_sent_twice_is_invalid_request(db: TestDb) {
    let app = OAuthServer::start(db);
    let p = pkce();

    // /authorize: without exactly one client and redirect URI there is no one to redirect to.
    for name in ["client_id", "redirect_uri"] {
        let mut pairs = webapp_authorize(&p);
        let value = pairs.iter().find(|(k, _)| *k == name).unwrap().1;
        pairs.push((name, value));
        assert_html_error(
            &send(&app, "GET", &authorize_target(&pairs), &[], b""),
            400,
            &format!("/authorize with {name} twice"),
        );
    }
    for name in [
        "response_type",
        "scope",
        "state",
        "code_challenge",
        "code_challenge_method",
    ] {
        let mut pairs = webapp_authorize(&p);
        let value = pairs.iter().find(|(k, _)| *k == name).unwrap().1;
        pairs.push((name, value));
        assert_error_redirect(
            &send(&app, "GET", &authorize_target(&pairs), &[], b""),
            "invalid_request",
            &format!("/authorize with {name} twice"),
        );
    }

    // /token: a request that succeeds once each parameter is sent once.
    let good = [
        ("grant_type", "client_credentials"),
        ("scope", "read"),
        ("client_id", SERVICE),
        ("client_secret", SERVICE_SECRET),
    ];
    assert_eq!(
        post(&app, "/token", &[], encode(&good).as_bytes()).status,
        200
    );
    for (i, (name, value)) in good.iter().enumerate() {
        let mut pairs = good.to_vec();
        pairs.insert(i + 1, (name, value));
        assert_oauth_error(
            &post(&app, "/token", &[], encode(&pairs).as_bytes()),
            400,
            "invalid_request",
            &format!("/token with {name} twice"),
        );
    }
    for name in ["code", "redirect_uri", "code_verifier"] {
        let body = encode(&[
            ("grant_type", "authorization_code"),
            (name, "x"),
            (name, "x"),
        ]);
        assert_oauth_error(
            &post(
                &app,
                "/token",
                &[(b"Authorization", webapp_basic().as_bytes())],
                body.as_bytes(),
            ),
            400,
            "invalid_request",
            &format!("/token with {name} twice"),
        );
    }

    // /revoke and /introspect.
    let token = post(&app, "/token", &[], encode(&good).as_bytes()).json()["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    for path in ["/revoke", "/introspect"] {
        for body in [
            encode(&[("token", &token), ("token", &token)]),
            encode(&[
                ("token", &token),
                ("client_id", SERVICE),
                ("client_id", SERVICE),
                ("client_secret", SERVICE_SECRET),
            ]),
            encode(&[
                ("token", &token),
                ("client_id", SERVICE),
                ("client_secret", SERVICE_SECRET),
                ("client_secret", SERVICE_SECRET),
            ]),
        ] {
            assert_oauth_error(
                &post(&app, path, &[], body.as_bytes()),
                400,
                "invalid_request",
                &format!("{path}: {body}"),
            );
        }
    }
    let introspection = post(
        &app,
        "/introspect",
        &[(b"Authorization", service_basic().as_bytes())],
        encode(&[("token", &token)]).as_bytes(),
    );
    assert_eq!(
        introspection.json()["active"],
        true,
        "the refused /revoke calls changed nothing"
    );

    // /login: a repeated field is never read, so even alice's right password signs no one in.
    let forms = forms(&app);
    for pairs in [
        vec![
            ("username", USERNAME),
            ("username", USERNAME),
            ("password", PASSWORD),
        ],
        vec![
            ("username", USERNAME),
            ("password", PASSWORD),
            ("password", PASSWORD),
        ],
        vec![
            ("username", USERNAME),
            ("password", PASSWORD),
            ("return_to", "/authorize?a=b"),
            ("return_to", "/authorize?c=d"),
        ],
    ] {
        let mut pairs = pairs;
        pairs.push(("csrf_token", &forms.login_csrf));
        let body = encode(&pairs);
        let response = post(
            &app,
            "/login",
            &with_cookies(&forms.login_cookies),
            body.as_bytes(),
        );
        if pairs.iter().filter(|(k, _)| *k == "return_to").count() > 1 {
            // The other fields are fine: alice signs in, but nothing is continued.
            assert_eq!(response.status, 303, "{body}");
            assert_eq!(response.header("location"), Some("/login/done"), "{body}");
            continue;
        }
        assert_4xx(&response, &format!("/login {body}"));
        assert!(
            response
                .header("set-cookie")
                .is_none_or(|c| !c.contains("gatehouse_session=")),
            "no session for {body}"
        );
    }
    let body = encode(&[
        ("username", USERNAME),
        ("password", PASSWORD),
        ("csrf_token", &forms.login_csrf),
        ("csrf_token", &forms.login_csrf),
    ]);
    assert_html_error(
        &post(
            &app,
            "/login",
            &with_cookies(&forms.login_cookies),
            body.as_bytes(),
        ),
        403,
        "csrf_token twice",
    );

    // /consent: the decision and the carried request.
    let cookies = with_cookies(&forms.consent_cookies);
    assert_html_error(
        &post(
            &app,
            "/consent",
            &cookies,
            consent_body(&forms, &[("decision", "allow"), ("decision", "allow")]).as_bytes(),
        ),
        400,
        "decision twice",
    );
    // A repeated request field is a field the page did not show: the form's token, bound
    // to the request shown, no longer matches.
    for field in [("client_id", WEBAPP), ("scope", "read")] {
        assert_html_error(
            &post(
                &app,
                "/consent",
                &cookies,
                consent_body(&forms, &[field, ("decision", "allow")]).as_bytes(),
            ),
            403,
            &format!("{} twice in the consent form", field.0),
        );
    }
    // Positive control: the same form without repeats is accepted.
    let allowed = post(
        &app,
        "/consent",
        &cookies,
        consent_body(&forms, &[("decision", "allow")]).as_bytes(),
    );
    assert_eq!(allowed.status, 303, "{}", allowed.text());
    assert!(allowed
        .header("location")
        .unwrap()
        .starts_with(&format!("{WEBAPP_REDIRECT}?code=")));
}

const ONE_MIB: usize = 1024 * 1024;
/// The origin of webapp's redirect URI, allowed CORS by default.
const WEBAPP_ORIGIN: &str = "https://app.example.com";

/// 413 in the endpoint's own terms: RFC 6749's JSON error at a protocol endpoint, a page
/// for a browser elsewhere.
#[track_caller]
fn assert_body_refusal(response: &RawResponse, path: &str, why: &str) {
    if ["/token", "/revoke", "/introspect"].contains(&path) {
        assert_eq!(response.status, 413, "{path} {why}: {}", response.text());
        assert_eq!(response.json()["error"], "invalid_request", "{path} {why}");
        assert_eq!(response.header("cache-control"), Some("no-store"), "{path}");
        // A browser client must be able to read it, as any other answer of the endpoint.
        if path != "/introspect" {
            assert_eq!(
                response.header("access-control-allow-origin"),
                Some(WEBAPP_ORIGIN),
                "{path} {why}"
            );
        }
    } else {
        assert_html_error(response, 413, &format!("{path} {why}"));
    }
}

fn oversized_bodies_are_413_and_oversized_values_4xx(db: TestDb) {
    let app = OAuthServer::start(db);
    let forms = forms(&app);
    let huge = format!(
        "grant_type=client_credentials&token=t&username=alice&csrf_token={}&scope={}",
        forms.login_csrf,
        "a".repeat(ONE_MIB)
    );
    for path in [
        "/token",
        "/revoke",
        "/introspect",
        "/login",
        "/consent",
        "/logout",
    ] {
        let response = post(
            &app,
            path,
            &[
                (b"Authorization", service_basic().as_bytes()),
                (b"Cookie", forms.consent_cookies.as_bytes()),
                (b"Origin", WEBAPP_ORIGIN.as_bytes()),
            ],
            huge.as_bytes(),
        );
        assert_body_refusal(&response, path, "with a 1 MiB body");
        // Without a Content-Length the limit holds as the body streams in.
        let mut chunked = format!("{:x}\r\n", huge.len()).into_bytes();
        chunked.extend_from_slice(huge.as_bytes());
        chunked.extend_from_slice(b"\r\n0\r\n\r\n");
        let response = post(
            &app,
            path,
            &[
                (b"Transfer-Encoding", b"chunked"),
                (b"Origin", WEBAPP_ORIGIN.as_bytes()),
            ],
            &chunked,
        );
        assert_body_refusal(&response, path, "with a chunked 1 MiB body");
    }

    // Long values inside the body limit: refused by the protocol, never a 5xx.
    let p = pkce();
    let long = "x".repeat(10 * 1024);
    let mut pairs = webapp_authorize(&p);
    pairs[1] = ("client_id", &long);
    assert_html_error(
        &send(&app, "GET", &authorize_target(&pairs), &[], b""),
        400,
        "10 KB client_id",
    );
    let mut pairs = webapp_authorize(&p);
    pairs[2] = ("redirect_uri", &long);
    assert_html_error(
        &send(&app, "GET", &authorize_target(&pairs), &[], b""),
        400,
        "10 KB redirect_uri",
    );
    for name in ["state", "scope", "nonce", "code_challenge"] {
        let mut pairs: Vec<(&str, &str)> = webapp_authorize(&p)
            .into_iter()
            .filter(|(k, _)| *k != name)
            .collect();
        pairs.push((name, &long));
        let response = send(&app, "GET", &authorize_target(&pairs), &[], b"");
        let location = assert_error_redirect(&response, "invalid_request", name);
        assert!(
            location.as_str().len() < 2048,
            "an oversized {name} is not echoed back: {} bytes",
            location.as_str().len()
        );
    }

    let code = "c".repeat(15 * 1024);
    assert_oauth_error(
        &post(
            &app,
            "/token",
            &[(b"Authorization", webapp_basic().as_bytes())],
            encode(&[
                ("grant_type", "authorization_code"),
                ("code", &code),
                ("redirect_uri", WEBAPP_REDIRECT),
                ("code_verifier", &p.verifier),
            ])
            .as_bytes(),
        ),
        400,
        "invalid_grant",
        "15 KB code",
    );
    assert_oauth_error(
        &post(
            &app,
            "/token",
            &[(b"Authorization", webapp_basic().as_bytes())],
            encode(&[("grant_type", "refresh_token"), ("refresh_token", &code)]).as_bytes(),
        ),
        400,
        "invalid_grant",
        "15 KB refresh_token",
    );
    assert_oauth_error(
        &post(
            &app,
            "/token",
            &[],
            encode(&[
                ("grant_type", "client_credentials"),
                ("client_id", &code[..12 * 1024]),
                ("client_secret", "x"),
            ])
            .as_bytes(),
        ),
        401,
        "invalid_client",
        "12 KB client_id",
    );
    let introspection = post(
        &app,
        "/introspect",
        &[(b"Authorization", service_basic().as_bytes())],
        encode(&[("token", &code)]).as_bytes(),
    );
    assert_eq!(introspection.status, 200);
    assert_eq!(introspection.json(), json!({"active": false}));

    for (username, password) in [(long.as_str(), PASSWORD), (USERNAME, &"p".repeat(4 * 1024))] {
        let body = encode(&[
            ("username", username),
            ("password", password),
            ("csrf_token", &forms.login_csrf),
        ]);
        let response = post(
            &app,
            "/login",
            &with_cookies(&forms.login_cookies),
            body.as_bytes(),
        );
        assert_html_error(&response, 401, "long username or password");
    }
}

/// The same fields as JSON, plain text, multipart or with no type at all.
fn mistyped_bodies(pairs: &[(&str, &str)]) -> Vec<(Option<&'static str>, Vec<u8>)> {
    let object: serde_json::Map<String, Value> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), Value::from(*v)))
        .collect();
    let mut multipart = Vec::new();
    for (k, v) in pairs {
        multipart.extend_from_slice(
            format!("--XyZ\r\nContent-Disposition: form-data; name=\"{k}\"\r\n\r\n{v}\r\n")
                .as_bytes(),
        );
    }
    multipart.extend_from_slice(b"--XyZ--\r\n");
    let form = encode(pairs).into_bytes();
    vec![
        (
            Some("application/json"),
            Value::Object(object).to_string().into_bytes(),
        ),
        (Some("text/plain"), form.clone()),
        (Some("multipart/form-data; boundary=XyZ"), multipart),
        (None, form.clone()),
        (Some("application/x-www-form-urlencodedx"), form.clone()),
        (Some("application/x-www-form"), form.clone()),
        (Some(""), form.clone()),
        (Some("; application/x-www-form-urlencoded"), form),
    ]
}

fn post_typed(
    app: &OAuthServer,
    path: &str,
    content_type: Option<&str>,
    cookies: &str,
    body: &[u8],
) -> RawResponse {
    let mut headers: Vec<(&[u8], &[u8])> = vec![(b"Cookie", cookies.as_bytes())];
    if let Some(t) = content_type {
        headers.push((b"Content-Type", t.as_bytes()));
    }
    send(app, "POST", path.as_bytes(), &headers, body)
}

fn wrong_content_types_are_refused(db: TestDb) {
    let app = OAuthServer::start(db);
    let forms = forms(&app);
    let token_form = [
        ("grant_type", "client_credentials"),
        ("client_id", SERVICE),
        ("client_secret", SERVICE_SECRET),
    ];
    // Positive control: a urlencoded form, with a charset parameter, is read.
    let ok = post_typed(
        &app,
        "/token",
        Some("Application/X-WWW-Form-Urlencoded; charset=UTF-8"),
        "",
        encode(&token_form).as_bytes(),
    );
    assert_eq!(ok.status, 200, "{}", ok.text());
    let token = ok.json()["access_token"].as_str().unwrap().to_owned();
    let token_pairs = [
        ("token", token.as_str()),
        ("client_id", SERVICE),
        ("client_secret", SERVICE_SECRET),
    ];
    for (path, pairs) in [
        ("/token", &token_form[..]),
        ("/revoke", &token_pairs[..]),
        ("/introspect", &token_pairs[..]),
    ] {
        for (content_type, body) in mistyped_bodies(pairs) {
            assert_oauth_error(
                &post_typed(&app, path, content_type, "", &body),
                400,
                "invalid_request",
                &format!("{path} as {content_type:?}"),
            );
        }
    }
    let login = [
        ("username", USERNAME),
        ("password", PASSWORD),
        ("csrf_token", forms.login_csrf.as_str()),
    ];
    let consent: Vec<(&str, &str)> = forms
        .consent_fields
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .chain([("decision", "allow")])
        .collect();
    for (path, pairs, cookies) in [
        ("/login", &login[..], &forms.login_cookies),
        ("/consent", &consent[..], &forms.consent_cookies),
    ] {
        for (content_type, body) in mistyped_bodies(pairs) {
            let response = post_typed(&app, path, content_type, cookies, &body);
            assert_html_error(&response, 400, &format!("{path} as {content_type:?}"));
            assert!(
                response
                    .header("set-cookie")
                    .is_none_or(|c| !c.contains("gatehouse_session=")),
                "{path} as {content_type:?} signs no one in"
            );
        }
    }
    assert_eq!(
        post(
            &app,
            "/revoke",
            &[],
            encode(&[
                ("token", &token),
                ("client_id", SERVICE),
                ("client_secret", SERVICE_SECRET)
            ])
            .as_bytes()
        )
        .status,
        200,
        "positive control for /revoke"
    );
}

fn invalid_utf8_and_nul_bytes_are_refused_cleanly(db: TestDb) {
    let app = OAuthServer::start(db);
    let forms = forms(&app);
    let p = pkce();
    let authorize = encode(&webapp_authorize(&p));

    // Raw bytes in the request line and headers: refused by the HTTP parser or the endpoint.
    for (why, target) in [
        (
            "raw 0xFF in the query",
            b"/authorize?client_id=web\xffapp&state=\xfe".to_vec(),
        ),
        (
            "raw NUL in the query",
            b"/authorize?client_id=web\x00app".to_vec(),
        ),
        ("raw 0xFF in the path", b"/author\xffize".to_vec()),
        ("raw NUL in the path", b"/authorize\x00?x=1".to_vec()),
        (
            "raw 0xFF in the login query",
            b"/login?return_to=/authorize?\xff".to_vec(),
        ),
    ] {
        let response = send(&app, "GET", &target, &[], b"");
        assert_4xx(&response, why);
        assert!(response.header("location").is_none(), "{why}");
    }
    // A header that cannot be read is refused; a cookie that cannot be read is no cookie:
    // either way nobody is signed in.
    for (why, name, value) in [
        (
            "raw NUL in a cookie",
            &b"Cookie"[..],
            &b"gatehouse_session=a\x00b"[..],
        ),
        (
            "raw 0xFF in a cookie",
            b"Cookie",
            b"gatehouse_session=\xff\xfe",
        ),
        ("raw NUL in a header", b"X-Anything", b"\x00"),
    ] {
        let target = format!("/authorize?{authorize}");
        let response = send(&app, "GET", target.as_bytes(), &[(name, value)], b"");
        if response.status != 303 {
            assert_4xx(&response, why);
        } else {
            assert!(
                response.header("location").unwrap().starts_with("/login?"),
                "{why}: {:?}",
                response.header("location")
            );
        }
    }
    let raw_utf8 = post(
        &app,
        "/token",
        &[(b"Authorization", b"Basic \xff\xfe\x00")],
        b"grant_type=client_credentials",
    );
    assert_4xx(&raw_utf8, "raw bytes in Authorization");

    // Percent-encoded %FF and %00 in the query.
    for (why, query) in [
        ("%FF in client_id", "client_id=web%FFapp".to_owned()),
        ("%00 in client_id", "client_id=webapp%00".to_owned()),
        ("%00 alone as client_id", "client_id=%00".to_owned()),
        (
            "%00 in redirect_uri",
            format!("client_id={WEBAPP}&redirect_uri=https%3A%2F%2Fapp.example.com%2Fcallback%00"),
        ),
    ] {
        let target = format!("/authorize?response_type=code&{query}");
        assert_html_error(&send(&app, "GET", target.as_bytes(), &[], b""), 400, why);
    }
    for name in ["state", "scope", "nonce", "code_challenge", "response_type"] {
        for bad in ["a%00b", "%FF%FE", "%C3%28"] {
            let pairs: Vec<(&str, &str)> = webapp_authorize(&p)
                .into_iter()
                .filter(|(k, _)| *k != name)
                .collect();
            let target = format!("/authorize?{}&{name}={bad}", encode(&pairs));
            let response = send(&app, "GET", target.as_bytes(), &[], b"");
            assert_error_redirect(&response, "invalid_request", &format!("{name}={bad}"));
        }
    }
    // Signed in, a NUL or invalid UTF-8 still never reaches a stored code.
    for bad in ["a%00b", "%FF"] {
        let target = format!("/authorize?{authorize}&nonce={bad}");
        let response = send(
            &app,
            "GET",
            target.as_bytes(),
            &with_cookies(&forms.consent_cookies),
            b"",
        );
        assert_error_redirect(
            &response,
            "invalid_request",
            &format!("signed in, nonce={bad}"),
        );
    }

    // In bodies: raw bytes and percent-encoded ones.
    let service = service_basic();
    let webapp = webapp_basic();
    let legacy = basic_auth(LEGACY, LEGACY_SECRET);
    for (why, auth, body, status, error) in [
        (
            "raw 0xFF in grant_type",
            Some(&service),
            &b"grant_type=client_credentials\xff"[..],
            400,
            "unsupported_grant_type",
        ),
        (
            "raw NUL in grant_type",
            Some(&service),
            b"grant_type=client_\x00credentials",
            400,
            "unsupported_grant_type",
        ),
        (
            "%00 in client_id",
            None,
            b"grant_type=client_credentials&client_id=service%00&client_secret=x",
            401,
            "invalid_client",
        ),
        (
            "%FF in client_id",
            None,
            b"grant_type=client_credentials&client_id=%FF&client_secret=x",
            401,
            "invalid_client",
        ),
        (
            "%00 in a code",
            Some(&webapp),
            b"grant_type=authorization_code&code=a%00b&redirect_uri=https%3A%2F%2Fapp.example.com%2Fcallback&code_verifier=0123456789012345678901234567890123456789abc",
            400,
            "invalid_grant",
        ),
        (
            "%FF in a refresh token",
            Some(&webapp),
            b"grant_type=refresh_token&refresh_token=%FF%FE",
            400,
            "invalid_grant",
        ),
        (
            "%00 in a username",
            Some(&legacy),
            b"grant_type=password&username=alice%00&password=x",
            400,
            "invalid_grant",
        ),
        (
            "%FF in a username",
            Some(&legacy),
            b"grant_type=password&username=%FFalice&password=x",
            400,
            "invalid_grant",
        ),
        (
            "%00 in a password",
            Some(&legacy),
            b"grant_type=password&username=alice&password=%00",
            400,
            "invalid_grant",
        ),
        (
            "%00 in a scope",
            Some(&service),
            b"grant_type=client_credentials&scope=read%00",
            400,
            "invalid_scope",
        ),
    ] {
        let headers: Vec<(&[u8], &[u8])> = auth
            .map(|a| vec![(&b"Authorization"[..], a.as_bytes())])
            .unwrap_or_default();
        assert_oauth_error(&post(&app, "/token", &headers, body), status, error, why);
    }
    for (path, body) in [
        ("/revoke", &b"token=a%00b&client_id=spa%00"[..]),
        ("/revoke", b"token=x&client_id=%FF"),
        (
            "/introspect",
            b"token=x&client_id=service%00&client_secret=x",
        ),
    ] {
        assert_oauth_error(
            &post(&app, path, &[], body),
            401,
            "invalid_client",
            &format!("{path} {}", String::from_utf8_lossy(body)),
        );
    }
    for token in [
        &b"a%00b"[..],
        b"%FF%FE%FD",
        b"\xff\xfe",
        b"a.b%00.c",
        b"eyJhbGciOiJSUzI1NiJ9.%00.%FF",
    ] {
        let mut body = b"token=".to_vec();
        body.extend_from_slice(token);
        let response = post(
            &app,
            "/introspect",
            &[(b"Authorization", service.as_bytes())],
            &body,
        );
        assert_eq!(response.status, 200, "{}", response.text());
        assert_eq!(response.json(), json!({"active": false}));
        let revoked = post(
            &app,
            "/revoke",
            &[(b"Authorization", webapp.as_bytes())],
            &body,
        );
        assert_eq!(revoked.status, 200, "{}", revoked.text());
    }
    for (why, username, password) in [
        ("%00 in the username", "alice%00", "x"),
        ("%FF in the username", "%FFalice", "x"),
        ("raw 0xFF in the username", "ali\u{ff}ce", "x"),
        ("%00 in the password", "alice", "%00"),
    ] {
        let mut body = format!("csrf_token={}&username=", forms.login_csrf).into_bytes();
        if username.contains('\u{ff}') {
            body.extend_from_slice(b"ali\xffce");
        } else {
            body.extend_from_slice(username.as_bytes());
        }
        body.extend_from_slice(format!("&password={password}").as_bytes());
        let response = post(&app, "/login", &with_cookies(&forms.login_cookies), &body);
        assert_html_error(&response, 401, why);
    }
    // The server is still whole.
    assert_eq!(get(&app.url("/readyz"), &[]).status, 200);
}

const SQL: [&str; 7] = [
    "' OR 1=1 --",
    "\"; DROP TABLE users; --",
    "'; DROP TABLE clients; --",
    "1; DELETE FROM refresh_tokens",
    "' UNION SELECT password_hash FROM users --",
    "\\'; DROP TABLE browser_sessions; --",
    "%' OR '%'='",
];

fn sql_looking_strings_are_only_strings(db: TestDb) {
    let app = OAuthServer::start(db);
    let forms = forms(&app);
    let tokens = app.webapp_tokens("read");
    let refresh = tokens["refresh_token"].as_str().unwrap().to_owned();
    let webapp = webapp_basic();
    let service = service_basic();
    let legacy = basic_auth(LEGACY, LEGACY_SECRET);
    let verifier = pkce().verifier;
    for s in SQL {
        let body = encode(&[
            ("username", s),
            ("password", s),
            ("csrf_token", &forms.login_csrf),
        ]);
        assert_html_error(
            &post(
                &app,
                "/login",
                &with_cookies(&forms.login_cookies),
                body.as_bytes(),
            ),
            401,
            &format!("login as {s}"),
        );
        for (why, auth, pairs, status, error) in [
            (
                "username",
                Some(&legacy),
                vec![("grant_type", "password"), ("username", s), ("password", s)],
                400,
                "invalid_grant",
            ),
            (
                "client_id",
                None,
                vec![
                    ("grant_type", "client_credentials"),
                    ("client_id", s),
                    ("client_secret", s),
                ],
                401,
                "invalid_client",
            ),
            (
                "code",
                Some(&webapp),
                vec![
                    ("grant_type", "authorization_code"),
                    ("code", s),
                    ("redirect_uri", WEBAPP_REDIRECT),
                    ("code_verifier", &verifier),
                ],
                400,
                "invalid_grant",
            ),
            (
                "refresh_token",
                Some(&webapp),
                vec![("grant_type", "refresh_token"), ("refresh_token", s)],
                400,
                "invalid_grant",
            ),
            (
                "scope",
                Some(&service),
                vec![("grant_type", "client_credentials"), ("scope", s)],
                400,
                "invalid_scope",
            ),
        ] {
            let headers: Vec<(&[u8], &[u8])> = auth
                .map(|a| vec![(&b"Authorization"[..], a.as_bytes())])
                .unwrap_or_default();
            assert_oauth_error(
                &post(&app, "/token", &headers, encode(&pairs).as_bytes()),
                status,
                error,
                &format!("{why} {s}"),
            );
        }
        let basic = basic_auth(s, s);
        assert_oauth_error(
            &post(
                &app,
                "/token",
                &[(b"Authorization", basic.as_bytes())],
                b"grant_type=client_credentials",
            ),
            401,
            "invalid_client",
            &format!("Basic {s}"),
        );
        let revoked = post(
            &app,
            "/revoke",
            &[(b"Authorization", webapp.as_bytes())],
            encode(&[("token", s)]).as_bytes(),
        );
        assert_eq!(revoked.status, 200, "revoke {s}");
        let revoked = post(
            &app,
            "/revoke",
            &[],
            encode(&[("token", s), ("client_id", s)]).as_bytes(),
        );
        assert_oauth_error(&revoked, 401, "invalid_client", &format!("revoke as {s}"));
        let introspection = post(
            &app,
            "/introspect",
            &[(b"Authorization", service.as_bytes())],
            encode(&[("token", s)]).as_bytes(),
        );
        assert_eq!(introspection.json(), json!({"active": false}), "{s}");
        let p = pkce();
        let mut pairs = webapp_authorize(&p);
        pairs[1] = ("client_id", s);
        assert_html_error(
            &send(&app, "GET", &authorize_target(&pairs), &[], b""),
            400,
            &format!("/authorize client_id {s}"),
        );
    }

    // Every table is still there with its rows, and the grant from before still works.
    use gatehouse::storage::schema::*;
    let mut conn = app.db.connect();
    let users: i64 = users::table.count().get_result(&mut conn).unwrap();
    assert_eq!(users, 1);
    let clients: i64 = clients::table.count().get_result(&mut conn).unwrap();
    assert_eq!(clients, 6);
    let refreshes: i64 = token_families::table
        .filter(token_families::refresh_hash.is_not_null())
        .count()
        .get_result(&mut conn)
        .unwrap();
    assert_eq!(refreshes, 1);
    let sessions: i64 = browser_sessions::table
        .count()
        .get_result(&mut conn)
        .unwrap();
    assert!(sessions >= 1);
    let refreshed = app.refresh(&refresh, None);
    assert_eq!(refreshed.status, 200, "{}", refreshed.body);
    let mut browser = Browser::new();
    assert_eq!(app.sign_in(&mut browser, USERNAME, PASSWORD).status, 303);
}

fn malformed_basic_credentials_are_refused(db: TestDb) {
    let app = OAuthServer::start(db);
    let b64 = |s: &[u8]| STANDARD.encode(s);
    let invalid_client: Vec<(&str, Vec<u8>)> = vec![
        ("Basic with nothing", b"Basic".to_vec()),
        ("Basic and a space", b"Basic ".to_vec()),
        (
            "no colon",
            format!("Basic {}", b64(b"service")).into_bytes(),
        ),
        ("bad base64", b"Basic !!!not*base64$$$".to_vec()),
        (
            "truncated base64",
            format!("Basic {}", &b64(b"service:x")[..5]).into_bytes(),
        ),
        (
            "empty client id",
            format!("Basic {}", b64(b":secret")).into_bytes(),
        ),
        ("empty both", format!("Basic {}", b64(b":")).into_bytes()),
        (
            "wrong secret",
            format!("Basic {}", b64(b"service:wrong")).into_bytes(),
        ),
        (
            "unknown client",
            format!("Basic {}", b64(b"nobody:secret")).into_bytes(),
        ),
        (
            "invalid UTF-8 inside",
            format!("Basic {}", b64(b"serv\xffice:x")).into_bytes(),
        ),
        (
            "bad percent-encoding inside",
            format!("Basic {}", b64(b"service:%FF")).into_bytes(),
        ),
        (
            "non-ASCII header",
            "Basic sérvice:sécret".as_bytes().to_vec(),
        ),
        (
            "huge",
            format!(
                "Basic {}",
                b64(format!("service:{}", "x".repeat(6000)).as_bytes())
            )
            .into_bytes(),
        ),
        ("Bearer scheme", b"Bearer abc.def.ghi".to_vec()),
        ("unknown scheme", b"Digest username=service".to_vec()),
        ("scheme only, other", b"Negotiate".to_vec()),
    ];
    let bodies: [(&str, &[u8]); 3] = [
        ("/token", b"grant_type=client_credentials"),
        ("/revoke", b"token=abc"),
        ("/introspect", b"token=abc"),
    ];
    for (path, body) in bodies {
        for (why, value) in &invalid_client {
            assert_oauth_error(
                &post(&app, path, &[(b"Authorization", value)], body),
                401,
                "invalid_client",
                &format!("{path}: {why}"),
            );
        }
        let good = service_basic();
        let ok = post(&app, path, &[(b"Authorization", good.as_bytes())], body);
        assert_eq!(ok.status, 200, "{path}: positive control: {}", ok.text());
        assert_oauth_error(
            &post(
                &app,
                path,
                &[
                    (b"Authorization", good.as_bytes()),
                    (b"Authorization", good.as_bytes()),
                ],
                body,
            ),
            400,
            "invalid_request",
            &format!("{path}: two Authorization headers"),
        );
        let mut both = body.to_vec();
        both.extend_from_slice(format!("&client_secret={SERVICE_SECRET}").as_bytes());
        assert_oauth_error(
            &post(&app, path, &[(b"Authorization", good.as_bytes())], &both),
            400,
            "invalid_request",
            &format!("{path}: Basic and client_secret"),
        );
        let mut other = body.to_vec();
        other.extend_from_slice(b"&client_id=webapp");
        assert_oauth_error(
            &post(&app, path, &[(b"Authorization", good.as_bytes())], &other),
            400,
            "invalid_request",
            &format!("{path}: Basic and another client_id"),
        );
    }
}

fn b64_json(value: &Value) -> String {
    URL_SAFE_NO_PAD.encode(value.to_string())
}

fn malformed_jwts_are_inactive(db: TestDb) {
    let app = OAuthServer::start(db);
    let service = service_basic();
    let introspect = |token: &str| {
        let response = post(
            &app,
            "/introspect",
            &[(b"Authorization", service.as_bytes())],
            encode(&[("token", token)]).as_bytes(),
        );
        assert_eq!(response.status, 200, "{token:.80}: {}", response.text());
        response.json()
    };
    let issued = app.token(
        &[("grant_type", "client_credentials")],
        Some((SERVICE, SERVICE_SECRET)),
    );
    let real = issued.json()["access_token"].as_str().unwrap().to_owned();
    assert_eq!(introspect(&real)["active"], true, "positive control");
    let parts: Vec<&str> = real.split('.').collect();
    let header: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).unwrap()).unwrap();
    let kid = header["kid"].as_str().unwrap();
    let claims = parts[1];
    let none = b64_json(&json!({"alg": "none", "typ": "at+jwt", "kid": kid}));
    let hs256 = b64_json(&json!({"alg": "HS256", "typ": "at+jwt", "kid": kid}));
    let unknown_kid = b64_json(&json!({"alg": "RS256", "typ": "at+jwt", "kid": "nope"}));
    let no_typ = b64_json(&json!({"alg": "RS256", "kid": kid}));
    let forged_claims = b64_json(&json!({
        "iss": "http://127.0.0.1:8080", "sub": "admin", "aud": [AUDIENCE], "exp": 4102444800u64,
        "iat": 0, "jti": "j", "client_id": SERVICE, "scope": "read write",
    }));
    let huge = format!("{}.{}.{}", parts[0], "A".repeat(14 * 1024), parts[2]);
    let cases: Vec<(&str, String)> = vec![
        ("garbage", "garbage".into()),
        ("two segments", format!("{}.{}", parts[0], parts[1])),
        ("four segments", format!("{real}.x")),
        ("dots only", "..".into()),
        ("one dot", ".".into()),
        ("bad base64", "!!!.@@@.###".into()),
        (
            "header not JSON",
            format!("{}.{claims}.{}", URL_SAFE_NO_PAD.encode("nope"), parts[2]),
        ),
        (
            "header a JSON array",
            format!("{}.{claims}.{}", URL_SAFE_NO_PAD.encode("[]"), parts[2]),
        ),
        ("alg none, no signature", format!("{none}.{claims}.")),
        (
            "alg none, forged claims",
            format!("{none}.{forged_claims}."),
        ),
        ("alg HS256", format!("{hs256}.{claims}.{}", parts[2])),
        (
            "unknown kid",
            format!("{unknown_kid}.{claims}.{}", parts[2]),
        ),
        ("no typ", format!("{no_typ}.{claims}.{}", parts[2])),
        (
            "forged claims",
            format!("{}.{forged_claims}.{}", parts[0], parts[2]),
        ),
        ("signature removed", format!("{}.{claims}.", parts[0])),
        (
            "signature truncated",
            format!("{}.{claims}.{}", parts[0], &parts[2][..20]),
        ),
        ("huge", huge),
        (
            "payload not JSON",
            format!(
                "{}.{}.{}",
                parts[0],
                URL_SAFE_NO_PAD.encode("\u{0}\u{1}"),
                parts[2]
            ),
        ),
        ("whitespace around", format!(" {real} ")),
        ("empty", String::new()),
    ];
    for (why, token) in &cases {
        assert_eq!(introspect(token), json!({"active": false}), "{why}");
    }
    assert_eq!(
        introspect(&real)["active"],
        true,
        "the real token is unaffected"
    );
}

// ---------------------------------------------------------------------------------------
// A seeded random corpus: mutations of valid requests, sent until one is answered 5xx.

/// SplitMix64: tiny, deterministic, good enough to spread mutations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

pub const DEFAULT_SEED: u64 = 0x6761_7465_686f_7573; // "gatehous"

/// The corpus is about robustness, not the request rate limiter (rate_limits.rs tests
/// that): thousands of requests from one address must not turn into 429s on a fast machine.
fn corpus_server(db: TestDb) -> OAuthServer {
    OAuthServer::start_configured(
        db,
        "",
        "[limits]\nclient_requests_per_second = 1000000\nclient_burst = 1000000\n",
    )
}

fn corpus_seed() -> u64 {
    std::env::var("GATEHOUSE_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEFAULT_SEED)
}

type Pairs = Vec<(Vec<u8>, Vec<u8>)>;

fn pairs(items: &[(&str, &str)]) -> Pairs {
    items
        .iter()
        .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
        .collect()
}

/// One request before it is put on the wire.
#[derive(Clone)]
struct Draft {
    method: &'static str,
    path: &'static str,
    query: Pairs,
    form: Pairs,
    /// Write names and values unencoded, bytes as they are.
    raw_query: bool,
    raw_form: bool,
    content_type: Option<Vec<u8>>,
    authorization: Vec<Vec<u8>>,
    cookie: Option<Vec<u8>>,
    extra_headers: Vec<(Vec<u8>, Vec<u8>)>,
}

fn urlencode(items: &Pairs, raw: bool) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, (k, v)) in items.iter().enumerate() {
        if i > 0 {
            out.push(b'&');
        }
        if raw {
            out.extend_from_slice(k);
            out.push(b'=');
            out.extend_from_slice(v);
        } else {
            out.extend(url::form_urlencoded::byte_serialize(k).flat_map(str::bytes));
            out.push(b'=');
            out.extend(url::form_urlencoded::byte_serialize(v).flat_map(str::bytes));
        }
    }
    out
}

impl Draft {
    fn target(&self) -> Vec<u8> {
        let mut target = self.path.as_bytes().to_vec();
        if !self.query.is_empty() {
            target.push(b'?');
            target.extend(urlencode(&self.query, self.raw_query));
        }
        target
    }

    fn body(&self) -> Vec<u8> {
        urlencode(&self.form, self.raw_form)
    }

    fn headers(&self) -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut headers = Vec::new();
        if let Some(t) = &self.content_type {
            headers.push((b"Content-Type".to_vec(), t.clone()));
        }
        for a in &self.authorization {
            headers.push((b"Authorization".to_vec(), a.clone()));
        }
        if let Some(c) = &self.cookie {
            headers.push((b"Cookie".to_vec(), c.clone()));
        }
        headers.extend(self.extra_headers.iter().cloned());
        headers
    }

    /// Whether an HTTP library would send this as is; otherwise it goes over a raw socket.
    fn well_formed(&self) -> bool {
        let safe_target = self
            .target()
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~%+=&*!$'(),;:@/?".contains(b));
        let safe_headers = self.headers().iter().all(|(k, v)| {
            k.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'-')
                && v.iter().all(|b| (0x20..0x7f).contains(b))
        });
        let header_names: Vec<Vec<u8>> = self
            .headers()
            .iter()
            .map(|(k, _)| k.to_ascii_lowercase())
            .collect();
        let repeated = header_names
            .iter()
            .enumerate()
            .any(|(i, n)| header_names[..i].contains(n));
        safe_target
            && safe_headers
            && !repeated
            && matches!(self.method, "GET" | "POST")
            && (self.method == "POST" || self.form.is_empty())
    }

    fn describe(&self) -> String {
        let clip = |b: &[u8]| {
            let s = String::from_utf8_lossy(b).into_owned();
            if s.chars().count() > 300 {
                let head: String = s.chars().take(300).collect();
                format!("{head}...({} bytes)", b.len())
            } else {
                s
            }
        };
        let headers: Vec<String> = self
            .headers()
            .iter()
            .map(|(k, v)| format!("{}: {}", clip(k), clip(v)))
            .collect();
        format!(
            "{} {}\n  headers: {headers:?}\n  body: {}",
            self.method,
            clip(&self.target()),
            clip(&self.body())
        )
    }
}

/// What a corpus run starts from: live credentials and form tokens to mutate.
struct Material {
    values: Vec<Vec<u8>>,
    login_csrf: String,
    login_cookies: String,
    consent_fields: Vec<(String, String)>,
    consent_cookies: String,
    logout_csrf: String,
    challenge: String,
    verifier: String,
}

const NAMES: &[&str] = &[
    "response_type",
    "client_id",
    "redirect_uri",
    "scope",
    "state",
    "code_challenge",
    "code_challenge_method",
    "nonce",
    "grant_type",
    "code",
    "code_verifier",
    "refresh_token",
    "username",
    "password",
    "client_secret",
    "token",
    "token_type_hint",
    "csrf_token",
    "return_to",
    "decision",
    "prompt",
    "next",
    "",
    "client_id[]",
    "%00",
];

fn material(app: &OAuthServer) -> Material {
    let forms = forms(app);
    let tokens = app.webapp_tokens("read");
    let service = app
        .token(
            &[("grant_type", "client_credentials")],
            Some((SERVICE, SERVICE_SECRET)),
        )
        .json();
    let mut browser = Browser::new();
    assert_eq!(app.sign_in(&mut browser, USERNAME, PASSWORD).status, 303);
    let logout = browser.get(&app.url("/logout"));
    let p = pkce();
    let mut values: Vec<Vec<u8>> = [
        "",
        "code",
        "token",
        "code token",
        "none",
        WEBAPP,
        SPA,
        FIRST_PARTY,
        SERVICE,
        LEGACY,
        OTHER,
        "nobody",
        WEBAPP_REDIRECT,
        SPA_REDIRECT,
        "http://127.0.0.1:9/callback",
        FIRST_PARTY_REDIRECT,
        "https://evil.example/cb",
        "javascript:alert(1)",
        "//evil.example",
        "read",
        "write",
        "openid",
        "read write",
        "admin",
        "read  read",
        "authorization_code",
        "refresh_token",
        "password",
        "client_credentials",
        "implicit",
        "urn:ietf:params:oauth:grant-type:jwt-bearer",
        "S256",
        "plain",
        USERNAME,
        PASSWORD,
        "wrong password",
        WEBAPP_SECRET,
        OTHER_SECRET,
        "allow",
        "deny",
        "/authorize?client_id=webapp",
        "https://evil.example",
        "/\\evil.example",
        "a.b.c",
        "eyJhbGciOiJub25lIn0.e30.",
        "' OR 1=1 --",
        "\"; DROP TABLE users; --",
        "<script>alert(1)</script>",
        "\0",
        "\u{fffd}",
        "webapp\0",
        "spa\0",
        "service\0",
        "alice\0",
        "\0alice",
        "é",
        "𝕏",
        "\r\nSet-Cookie: x=y",
        "../../etc/passwd",
        "${jndi:ldap://x}",
        "{{7*7}}",
        "-1",
        "0",
        "99999999999999999999",
        "true",
        "null",
        "[]",
        "{}",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect();
    for live in [
        &tokens["access_token"],
        &tokens["refresh_token"],
        &service["access_token"],
    ] {
        values.push(live.as_str().unwrap().as_bytes().to_vec());
    }
    for v in [&forms.login_csrf, &p.challenge, &p.verifier] {
        values.push(v.as_bytes().to_vec());
    }
    Material {
        values,
        login_csrf: forms.login_csrf,
        login_cookies: forms.login_cookies,
        consent_fields: forms.consent_fields,
        consent_cookies: forms.consent_cookies,
        logout_csrf: hidden_field(&logout.body, "csrf_token").expect("logout csrf"),
        challenge: p.challenge,
        verifier: p.verifier,
    }
}

fn random_value(rng: &mut Rng, m: &Material) -> (Vec<u8>, bool) {
    match rng.below(10) {
        0 => {
            let len = 256 + rng.below(12 * 1024);
            let c = *rng.pick(b"aZ9%&=.-");
            (vec![c; len], false)
        }
        1 => {
            let n = 1 + rng.below(48);
            (rng.bytes(n), rng.chance(50))
        }
        _ => (rng.pick(&m.values).clone(), false),
    }
}

fn random_name(rng: &mut Rng) -> (Vec<u8>, bool) {
    if rng.chance(8) {
        let n = 1 + rng.below(16);
        (rng.bytes(n), rng.chance(50))
    } else {
        (rng.pick(NAMES).as_bytes().to_vec(), false)
    }
}

/// Applies 0 to 4 mutations to `params`; returns whether any needs raw bytes on the wire.
fn mutate(rng: &mut Rng, m: &Material, params: &mut Pairs) -> bool {
    let mut raw = false;
    for _ in 0..rng.below(5) {
        if params.is_empty() {
            let (name, r1) = random_name(rng);
            let (value, r2) = random_value(rng, m);
            params.push((name, value));
            raw |= r1 || r2;
            continue;
        }
        let i = rng.below(params.len());
        match rng.below(20) {
            0 | 1 => {
                params.remove(i);
            }
            2 | 3 => {
                let pair = params[i].clone();
                params.insert(rng.below(params.len() + 1), pair);
            }
            4..=8 => {
                let (value, r) = random_value(rng, m);
                params[i].1 = value;
                raw |= r;
            }
            9 => {
                let (name, r) = random_name(rng);
                params[i].0 = name;
                raw |= r;
            }
            10 | 11 => {
                let cut = rng.below(params[i].1.len() + 1);
                params[i].1.truncate(cut);
            }
            12..=15 => {
                // A byte that is not text, or a quote, added to a value that was fine.
                const TAILS: [&[u8]; 6] = [b"\0", b"\0", b"\xff", b"\xc3\x28", b"'", b"\""];
                let tail = *rng.pick(&TAILS);
                if rng.chance(50) {
                    params[i].1.extend_from_slice(tail);
                } else {
                    params[i].1.splice(0..0, tail.iter().copied());
                }
            }
            _ => {
                let (name, r1) = random_name(rng);
                let (value, r2) = random_value(rng, m);
                params.insert(rng.below(params.len() + 1), (name, value));
                raw |= r1 || r2;
            }
        }
    }
    raw
}

fn random_authorization(rng: &mut Rng) -> Vec<Vec<u8>> {
    let basic = |id: &str, secret: &str| basic_auth(id, secret).into_bytes();
    match rng.below(20) {
        0..=5 => vec![],
        6..=8 => vec![basic(SERVICE, SERVICE_SECRET)],
        9 | 10 => vec![basic(WEBAPP, WEBAPP_SECRET)],
        11 => vec![basic(LEGACY, LEGACY_SECRET)],
        12 => {
            // A wrong secret costs a full argon2 verification: rare, to keep the run short.
            if rng.chance(30) {
                vec![basic(SERVICE, "wrong-secret")]
            } else {
                vec![b"Basic".to_vec()]
            }
        }
        13 => vec![b"Basic !!!".to_vec()],
        14 => vec![format!("Basic {}", STANDARD.encode(b"no-colon")).into_bytes()],
        15 => vec![b"Bearer a.b.c".to_vec()],
        16 => vec![basic(SERVICE, SERVICE_SECRET), basic(WEBAPP, WEBAPP_SECRET)],
        17 => vec![b"Basic \xff\xfe".to_vec()],
        18 => vec![format!("Basic {}", "A".repeat(6000)).into_bytes()],
        _ => vec![rng.bytes(24)],
    }
}

fn random_cookie(rng: &mut Rng, m: &Material) -> Option<Vec<u8>> {
    Some(match rng.below(9) {
        0 => return None,
        1 => m.consent_cookies.as_bytes().to_vec(),
        2 => m.login_cookies.as_bytes().to_vec(),
        3 => b"gatehouse_session=' OR 1=1 --".to_vec(),
        4 => format!("gatehouse_session={}", "x".repeat(5000)).into_bytes(),
        5 => {
            b"gatehouse_session=a; gatehouse_session=b; gatehouse_csrf=c; gatehouse_csrf=d".to_vec()
        }
        6 => b"=;=;;;gatehouse_csrf".to_vec(),
        7 => b"gatehouse_session=\xff\x00".to_vec(),
        _ => {
            let mut c = b"gatehouse_csrf=".to_vec();
            c.extend(rng.bytes(40));
            c
        }
    })
}

const CONTENT_TYPES: &[&[u8]] = &[
    b"application/json",
    b"text/plain",
    b"multipart/form-data; boundary=x",
    b"application/x-www-form-urlencoded; charset=latin1",
    b"application/x-www-form-urlencoded, text/plain",
    b"\xff/\xfe",
    b"",
];

/// A valid request for one endpoint, before mutation.
fn template(rng: &mut Rng, m: &Material) -> Draft {
    let client = *rng.pick(&[WEBAPP, SPA, FIRST_PARTY, OTHER]);
    let redirect = match client {
        WEBAPP => WEBAPP_REDIRECT,
        SPA => "http://127.0.0.1:4711/callback",
        FIRST_PARTY => FIRST_PARTY_REDIRECT,
        _ => "https://other.example.com/cb",
    };
    let authorize = pairs(&[
        ("response_type", "code"),
        ("client_id", client),
        ("redirect_uri", redirect),
        ("scope", "read"),
        ("state", "s"),
        ("code_challenge", &m.challenge),
        ("code_challenge_method", "S256"),
    ]);
    let form = Some(FORM.to_vec());
    let basic = |id: &str, secret: &str| vec![basic_auth(id, secret).into_bytes()];
    let mut d = Draft {
        method: "POST",
        path: "/token",
        query: vec![],
        form: vec![],
        raw_query: false,
        raw_form: false,
        content_type: form.clone(),
        authorization: vec![],
        cookie: None,
        extra_headers: vec![],
    };
    match rng.below(13) {
        0 | 1 => {
            d.method = "GET";
            d.path = "/authorize";
            d.query = authorize;
            d.content_type = None;
            d.cookie = rng
                .chance(50)
                .then(|| m.consent_cookies.as_bytes().to_vec());
        }
        2 => {
            d.method = "GET";
            d.path = "/consent";
            d.query = authorize;
            d.content_type = None;
            d.cookie = Some(m.consent_cookies.as_bytes().to_vec());
        }
        3 => {
            d.method = "GET";
            d.path = "/login";
            let return_to = format!(
                "/authorize?{}",
                String::from_utf8_lossy(&urlencode(&authorize, false))
            );
            d.query = pairs(&[("return_to", &return_to)]);
            d.content_type = None;
        }
        4 => {
            d.path = "/login";
            let password = if rng.chance(5) {
                PASSWORD
            } else {
                "not the password"
            };
            d.form = pairs(&[
                ("csrf_token", &m.login_csrf),
                ("return_to", ""),
                ("username", USERNAME),
                ("password", password),
            ]);
            d.cookie = Some(m.login_cookies.as_bytes().to_vec());
        }
        5 => {
            d.path = "/consent";
            d.form = m
                .consent_fields
                .iter()
                .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
                .collect();
            let decision = *rng.pick(&["allow", "deny"]);
            d.form
                .push((b"decision".to_vec(), decision.as_bytes().to_vec()));
            d.cookie = Some(m.consent_cookies.as_bytes().to_vec());
        }
        6 => {
            d.form = pairs(&[("grant_type", "client_credentials"), ("scope", "read")]);
            d.authorization = basic(SERVICE, SERVICE_SECRET);
        }
        7 => {
            d.form = pairs(&[
                ("grant_type", "authorization_code"),
                (
                    "code",
                    "Zm9vYmFyYmF6cXV4cXV1eGNvcmdlZ3JhdWx0Z2FycGx5d2FsZG8",
                ),
                ("redirect_uri", WEBAPP_REDIRECT),
                ("code_verifier", &m.verifier),
            ]);
            d.authorization = basic(WEBAPP, WEBAPP_SECRET);
        }
        8 => {
            let refresh = m.values[m.values.len() - 5].clone();
            d.form = vec![
                (b"grant_type".to_vec(), b"refresh_token".to_vec()),
                (b"refresh_token".to_vec(), refresh),
            ];
            d.authorization = basic(WEBAPP, WEBAPP_SECRET);
        }
        9 => {
            d.form = pairs(&[
                ("grant_type", "password"),
                ("username", USERNAME),
                ("password", "a wrong guess"),
            ]);
            d.authorization = basic(LEGACY, LEGACY_SECRET);
        }
        10 => {
            d.path = "/revoke";
            let token = rng.pick(&m.values[m.values.len() - 6..]).clone();
            d.form = vec![(b"token".to_vec(), token)];
            if rng.chance(50) {
                d.form
                    .push((b"client_id".to_vec(), SPA.as_bytes().to_vec()));
            } else {
                d.authorization = basic(WEBAPP, WEBAPP_SECRET);
            }
        }
        11 => {
            d.path = "/introspect";
            let token = rng.pick(&m.values[m.values.len() - 6..]).clone();
            d.form = vec![(b"token".to_vec(), token)];
            d.authorization = basic(SERVICE, SERVICE_SECRET);
        }
        _ => {
            d.path = "/logout";
            d.cookie = Some(m.consent_cookies.as_bytes().to_vec());
            if rng.chance(50) {
                d.method = "GET";
                d.content_type = None;
            } else {
                d.form = pairs(&[("csrf_token", &m.logout_csrf)]);
            }
        }
    }
    d
}

fn draft(rng: &mut Rng, m: &Material) -> Draft {
    let mut d = template(rng, m);
    if d.method == "GET" || rng.chance(10) {
        d.raw_query = mutate(rng, m, &mut d.query);
    }
    if d.method == "POST" || rng.chance(5) {
        d.raw_form = mutate(rng, m, &mut d.form);
    }
    if rng.chance(20) {
        d.content_type = if rng.chance(15) {
            None
        } else if rng.chance(40) {
            Some(FORM.to_vec())
        } else {
            Some(rng.pick(CONTENT_TYPES).to_vec())
        };
    }
    if rng.chance(25) {
        d.authorization = random_authorization(rng);
    }
    if rng.chance(20) {
        d.cookie = random_cookie(rng, m);
    }
    if rng.chance(5) {
        d.extra_headers.push(
            rng.pick(&[
                (b"X-Forwarded-For".to_vec(), b"1.2.3.4, ' OR 1=1".to_vec()),
                (b"Origin".to_vec(), b"https://evil.example".to_vec()),
                (
                    b"Accept".to_vec(),
                    b"application/json, text/html;q=0.1".to_vec(),
                ),
                (b"X-\xff".to_vec(), b"x".to_vec()),
                (b"Expect".to_vec(), b"100-continue".to_vec()),
            ])
            .clone(),
        );
    }
    if rng.chance(3) {
        d.method = *rng.pick(&["PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"]);
    }
    d
}

/// Sends one draft: through the keep-alive agent when it is well formed, else raw.
fn fire(agent: &ureq::Agent, addr: &str, d: &Draft) -> Result<u16, String> {
    let body = d.body();
    if d.well_formed() {
        let uri = format!("http://{addr}{}", String::from_utf8_lossy(&d.target()));
        let mut builder = ureq::http::Request::builder().method(d.method).uri(&uri);
        for (k, v) in d.headers() {
            builder = builder.header(k, v);
        }
        let sent = match d.method {
            "POST" => builder
                .body(body.clone())
                .map_err(|e| e.to_string())
                .and_then(|r| agent.run(r).map_err(|e| e.to_string())),
            _ => builder
                .body(())
                .map_err(|e| e.to_string())
                .and_then(|r| agent.run(r).map_err(|e| e.to_string())),
        };
        if let Ok(mut response) = sent {
            let status = response.status().as_u16();
            let _ = response
                .body_mut()
                .with_config()
                .limit(1 << 20)
                .read_to_vec();
            return Ok(status);
        }
        // The library refused or the connection broke: the raw path tells which.
    }
    let headers = d.headers();
    let headers: Vec<(&[u8], &[u8])> = headers
        .iter()
        .map(|(k, v)| (k.as_slice(), v.as_slice()))
        .collect();
    raw_exchange(addr, raw_request(d.method, &d.target(), &headers, &body)).map(|r| r.status)
}

fn run_corpus(app: &OAuthServer, requests: usize) {
    let seed = corpus_seed();
    eprintln!("hostile_input corpus: seed {seed} (replay with GATEHOUSE_FUZZ_SEED={seed}), {requests} requests");
    let started = std::time::Instant::now();
    let m = material(app);
    let mut rng = Rng(seed);
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .timeout_global(Some(std::time::Duration::from_secs(30)))
        .build()
        .into();
    let mut failures = Vec::new();
    let mut statuses = std::collections::BTreeMap::<u16, usize>::new();
    let mut paths = std::collections::BTreeMap::<&str, usize>::new();
    let mut raw = 0;
    for i in 0..requests {
        let d = draft(&mut rng, &m);
        *paths.entry(d.path).or_default() += 1;
        raw += usize::from(!d.well_formed());
        match fire(&agent, app.server.addr(), &d) {
            Ok(status) if status < 500 => *statuses.entry(status).or_default() += 1,
            Ok(status) => failures.push(format!("#{i}: {status} for {}", d.describe())),
            Err(e) => failures.push(format!("#{i}: no answer ({e}) for {}", d.describe())),
        }
    }
    eprintln!(
        "corpus done in {:?}: statuses {statuses:?}, paths {paths:?}, {raw} sent raw",
        started.elapsed()
    );
    assert!(
        failures.is_empty(),
        "seed {seed}: {} of {requests} requests got a 5xx or no answer; the first:\n{}",
        failures.len(),
        failures[0]
    );
    // The corpus was not trivially refused: it reached the protocol and the pages.
    assert!(paths.values().all(|n| *n >= requests / 40), "{paths:?}");
    for class in [200, 303, 400, 401, 403] {
        assert!(statuses.contains_key(&class), "no {class} in {statuses:?}");
    }

    // Afterwards the server is alive, ready and still issues tokens.
    assert_eq!(get(&app.url("/healthz"), &[]).status, 200);
    assert_eq!(get(&app.url("/readyz"), &[]).status, 200);
    let token = app.token(
        &[("grant_type", "client_credentials")],
        Some((SERVICE, SERVICE_SECRET)),
    );
    assert_eq!(token.status, 200, "{}", token.body);
    let stderr = app.server.stderr_lines();
    assert!(
        !stderr.iter().any(|l| l.contains("panicked")),
        "the server panicked:\n{}",
        stderr.join("\n")
    );
    assert!(
        !app.server.logs().iter().any(|l| l.contains("panicked")),
        "a panic was logged"
    );
}

#[test]
fn random_corpus_gets_no_5xx_sqlite() {
    let app = corpus_server(TestDb::create(Backend::Sqlite).unwrap());
    run_corpus(&app, 3000);
}

#[test]
fn random_corpus_gets_no_5xx_postgres() {
    if let Some(db) = TestDb::create(Backend::Postgres) {
        run_corpus(&corpus_server(db), 1000);
    }
}

/// A protocol endpoint refuses other methods in its JSON terms, naming POST, and a page
/// with a form refuses them naming GET and POST; every GET route answers HEAD as it
/// answers GET, without the body (RFC 9110 9.3.2).
#[test]
fn other_methods_are_refused_and_head_is_get_without_a_body() {
    let app = OAuthServer::start(TestDb::create(Backend::Sqlite).unwrap());
    for path in ["/token", "/revoke", "/introspect"] {
        for method in ["GET", "PUT", "DELETE"] {
            let response = send(&app, method, path.as_bytes(), &[], b"");
            assert_eq!(response.status, 405, "{method} {path}: {}", response.text());
            assert_eq!(response.header("allow"), Some("POST"), "{method} {path}");
            assert_eq!(
                response.json()["error"],
                "invalid_request",
                "{method} {path}"
            );
        }
    }
    // A page that takes GET and POST refuses any other method as such, not as a missing
    // page.
    for path in ["/login", "/logout", "/consent"] {
        for method in ["PUT", "DELETE"] {
            let response = send(&app, method, path.as_bytes(), &[], b"");
            assert_eq!(response.status, 405, "{method} {path}: {}", response.text());
            let allow = response.header("allow").unwrap_or_default();
            assert!(
                allow.contains("GET") && allow.contains("POST"),
                "{method} {path}: Allow {allow:?}"
            );
        }
    }
    for path in [
        "/healthz",
        "/readyz",
        "/.well-known/jwks.json",
        "/.well-known/oauth-authorization-server",
        "/login",
        "/logout",
        "/consent",
        "/authorize",
        "/static/gatehouse.css",
    ] {
        let get = send(&app, "GET", path.as_bytes(), &[], b"");
        let head = send(&app, "HEAD", path.as_bytes(), &[], b"");
        assert_eq!(head.status, get.status, "HEAD {path}");
        assert_ne!(head.status, 404, "HEAD {path}");
        assert!(head.body.is_empty(), "HEAD {path}: {}", head.text());
        assert!(!get.body.is_empty(), "GET {path}");
        assert_eq!(
            head.header("content-type"),
            get.header("content-type"),
            "HEAD {path}"
        );
    }
}

/// A request the HTTP parser refuses is the client's fault: it gets its 400, and the log at
/// the default level gets no ERROR line for it, or any client could flood the error log (and
/// page whoever watches it). An operator who names actix_http in RUST_LOG sees them again.
#[test]
fn requests_the_parser_refuses_are_not_errors_in_the_log() {
    use std::io::Write;
    use std::time::Duration;

    let malformed: [(&str, &[u8]); 4] = [
        ("a request line of garbage", b"GARBAGE\r\n\r\n"),
        (
            "a header without a colon",
            b"GET /healthz HTTP/1.1\r\nHost x\r\n\r\n",
        ),
        (
            "a raw NUL in the path",
            b"GET /heal\x00thz HTTP/1.1\r\nHost: x\r\n\r\n",
        ),
        (
            "two Content-Lengths that disagree",
            b"POST /token HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
        ),
    ];
    // Each malformed request is answered and its connection closed; the server logs what
    // it logs about it before it closes. A request after that is logged after it, so once
    // that request's line is in the log, every line about the malformed ones is too.
    let send_all = |app: &OAuthServer| -> Vec<String> {
        for (why, request) in malformed {
            let mut stream = std::net::TcpStream::connect(app.server.addr()).unwrap();
            stream.write_all(request).unwrap();
            let answer = read_until_closed(&mut stream);
            assert!(answer.starts_with("HTTP/1.1 400"), "{why}: {answer}");
        }
        let marker = get(&app.url("/healthz"), &[]);
        let id = marker.header("x-request-id").unwrap().to_owned();
        eventually(Duration::from_secs(10), || {
            let logs = app.server.logs();
            logs.iter().any(|line| line.contains(&id)).then_some(logs)
        })
        .expect("the request after the malformed ones is logged")
    };
    let errors = |logs: Vec<String>| -> Vec<String> {
        logs.into_iter()
            .filter(|line| line.contains("\"level\":\"ERROR\""))
            .collect()
    };

    let app = OAuthServer::start_logging(
        TestDb::create(Backend::Sqlite).unwrap(),
        "",
        "",
        "info,gatehouse=debug",
        &[],
    );
    let logged = errors(send_all(&app));
    assert!(logged.is_empty(), "ERROR lines: {logged:#?}");

    // The control: with actix_http named, its reports are there, so the check above
    // looked where they would have been.
    let app = OAuthServer::start_logging(
        TestDb::create(Backend::Sqlite).unwrap(),
        "",
        "",
        "info",
        &[("RUST_LOG", "info,gatehouse=debug,actix_http=error")],
    );
    let logged = errors(send_all(&app));
    assert!(
        logged
            .iter()
            .any(|line| line.contains("actix_http::h1::dispatcher")),
        "no ERROR line from actix_http with RUST_LOG naming it: {logged:#?}"
    );
}
