//! The connection layer: TLS served directly with HSTS, the body size limit, and timeouts
//! that keep slow clients from holding connections.

use std::io::Write;
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;

use crate::support::*;

/// A self-signed certificate for 127.0.0.1, written as PEM files into the test's directory.
fn self_signed(db: &TestDb) -> (String, std::path::PathBuf, std::path::PathBuf) {
    let certified = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()])
        .expect("generate a certificate");
    let cert_pem = certified.cert.pem();
    let cert = db.dir.path().join("cert.pem");
    let key = db.dir.path().join("key.pem");
    std::fs::write(&cert, &cert_pem).unwrap();
    std::fs::write(&key, certified.signing_key.serialize_pem()).unwrap();
    (cert_pem, cert, key)
}

/// An HTTPS client that trusts exactly `cert_pem`.
fn https_client(cert_pem: &str) -> ureq::Agent {
    let cert = ureq::tls::Certificate::from_pem(cert_pem.as_bytes()).expect("PEM certificate");
    let tls = ureq::tls::TlsConfig::builder()
        .root_certs(ureq::tls::RootCerts::new_with_certs(&[cert]))
        .unversioned_rustls_crypto_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .build();
    ureq::Agent::config_builder()
        .tls_config(tls)
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into()
}

#[test]
fn with_a_certificate_gatehouse_serves_https_and_sends_hsts() {
    let db = TestDb::create(Backend::Sqlite).unwrap();
    let (cert_pem, cert, key) = self_signed(&db);
    let server = format!(
        "issuer = \"https://127.0.0.1:8443\"\ntls_cert = \"{}\"\ntls_key = \"{}\"",
        cert.display(),
        key.display()
    );
    let app = OAuthServer::start_full(db, &server, "", "");
    assert!(
        app.server.base_url.starts_with("https://"),
        "{}",
        app.server.base_url
    );

    let client = https_client(&cert_pem);
    let body = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs([
            ("grant_type", "client_credentials"),
            ("client_id", SERVICE),
            ("client_secret", SERVICE_SECRET),
        ])
        .finish();
    let response = client
        .post(&app.url("/token"))
        .header("Content-Type", "application/x-www-form-urlencoded")
        .send(body.as_bytes())
        .expect("a token request over TLS");
    let response = Response::from_ureq(response);
    assert_eq!(response.status, 200, "{}", response.body);
    assert!(response.json()["access_token"].as_str().is_some());
    let hsts = response
        .header("strict-transport-security")
        .expect("HSTS on an HTTPS answer");
    assert!(hsts.starts_with("max-age="), "{hsts}");

    let health = Response::from_ureq(client.get(&app.url("/healthz")).call().unwrap());
    assert!(health.header("strict-transport-security").is_some());

    // Plain HTTP on the TLS port gets no HTTP answer.
    let plain = http()
        .get(&app.url("/healthz").replacen("https", "http", 1))
        .call();
    assert!(plain.is_err() || plain.unwrap().status() != 200);
}

#[test]
fn without_tls_there_is_no_hsts() {
    let db = TestDb::create(Backend::Sqlite).unwrap();
    let config = write_config(&db, "gatehouse.toml", "");
    let server = TestServer::start(&db, &config);
    let health = get(&server.url("/healthz"), &[]);
    assert_eq!(health.status, 200);
    assert_eq!(health.header("strict-transport-security"), None);
}

#[test]
fn bad_tls_files_are_refused_by_key() {
    let db = TestDb::create(Backend::Sqlite).unwrap();
    let (_, cert, key) = self_signed(&db);
    let other = db.dir.path().join("other-key.pem");
    std::fs::write(&other, rcgen::KeyPair::generate().unwrap().serialize_pem()).unwrap();
    let cases = [
        (
            format!("tls_cert = \"{}\"", cert.display()),
            "server.tls_key: must be set",
        ),
        (
            format!(
                "tls_cert = \"{}/missing.pem\"\ntls_key = \"{}\"",
                db.dir.path().display(),
                key.display()
            ),
            "server.tls_cert: cannot read",
        ),
        (
            format!(
                "tls_cert = \"{}\"\ntls_key = \"{}\"",
                cert.display(),
                other.display()
            ),
            "server.tls_key: does not match",
        ),
    ];
    for (server, expected) in cases {
        let config = write_config_with(&db, "gatehouse.toml", &server, "");
        let output = run_cli(&db, &config, &["check-config"]);
        assert_eq!(output.status.code(), Some(2), "{server}");
        assert!(stderr(&output).contains(expected), "{}", stderr(&output));
    }
}

#[test]
fn a_body_over_the_configured_limit_is_refused_with_413() {
    let db = TestDb::create(Backend::Sqlite).unwrap();
    let app = OAuthServer::start_full(db, "max_body_bytes = 2048", "", "");
    let post = |size: usize| {
        let body = format!("grant_type=client_credentials&pad={}", "a".repeat(size));
        let response = http()
            .post(&app.url("/token"))
            .header("Content-Type", "application/x-www-form-urlencoded")
            .send(body.as_bytes())
            .unwrap();
        Response::from_ureq(response)
    };
    assert_eq!(post(3000).status, 413);
    let under = post(1500);
    assert_eq!(
        under.status, 401,
        "under the limit the request is read: {}",
        under.body
    );
}

#[test]
fn stalled_clients_hold_no_worker_and_are_cut_off() {
    let db = TestDb::create(Backend::Sqlite).unwrap();
    // One worker: if a stalled client held it, nothing else would be served.
    let app = OAuthServer::start_full(
        db,
        "header_timeout = \"1s\"\nbody_timeout = \"1s\"\nkeep_alive = \"1s\"",
        "",
        "",
    );
    let addr = app.server.base_url.trim_start_matches("http://").to_owned();

    let mut headers_stalled = TcpStream::connect(&addr).unwrap();
    headers_stalled
        .write_all(b"POST /token HTTP/1.1\r\nHost: gatehouse\r\n")
        .unwrap();
    let mut body_stalled = TcpStream::connect(&addr).unwrap();
    body_stalled
        .write_all(
            b"POST /token HTTP/1.1\r\nHost: gatehouse\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 100\r\n\r\ngrant_type",
        )
        .unwrap();

    // Both are stalled; others are served meanwhile.
    for _ in 0..3 {
        assert_eq!(get(&app.url("/healthz"), &[]).status, 200);
    }

    let answer = read_until_closed(&mut body_stalled);
    assert!(
        answer.starts_with("HTTP/1.1 408"),
        "a body that never arrives gets 408: {answer:?}"
    );
    // In the token endpoint's own terms (RFC 6749 5.2).
    let lowered = answer.to_ascii_lowercase();
    assert!(lowered.contains("cache-control: no-store"), "{answer:?}");
    assert!(
        answer.contains(r#""error":"invalid_request""#),
        "{answer:?}"
    );
    read_until_closed(&mut headers_stalled);

    // An idle keep-alive connection is closed after keep_alive.
    let mut idle = TcpStream::connect(&addr).unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: gatehouse\r\n\r\n")
        .unwrap();
    let answer = read_until_closed(&mut idle);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
}

#[test]
fn server_limits_are_validated_by_key() {
    let db = TestDb::create(Backend::Sqlite).unwrap();
    let config = write_config_with(
        &db,
        "gatehouse.toml",
        "max_body_bytes = 10\nheader_timeout = \"soon\"\nmax_connections = 0\ntrusted_proxies = [\"10.0.0.0/8\", \"proxy.example\"]",
        "",
    );
    let output = run_cli(&db, &config, &["check-config"]);
    assert_eq!(output.status.code(), Some(2));
    let errors = stderr(&output);
    for key in [
        "server.max_body_bytes",
        "server.header_timeout",
        "server.max_connections",
        "server.trusted_proxies[1]",
    ] {
        assert!(errors.contains(key), "{key} missing from {errors}");
    }
    assert!(!errors.contains("trusted_proxies[0]"), "{errors}");
}
