//! GET /metrics: Prometheus (OpenMetrics) text with requests, latency, tokens, protocol
//! errors, reuse detections, the pool and the password-hash queue.

use crate::on_both_backends;
use crate::support::*;

on_both_backends!(metrics_count_what_happened);

fn metrics_count_what_happened(db: TestDb) {
    let app = OAuthServer::start(db);
    for _ in 0..3 {
        let issued = app.token(
            &[("grant_type", "client_credentials")],
            Some((SERVICE, SERVICE_SECRET)),
        );
        assert_eq!(issued.status, 200);
    }
    let tokens = app.webapp_tokens("read");
    let refresh = tokens["refresh_token"].as_str().unwrap();
    assert_eq!(app.refresh(refresh, None).status, 200);
    assert_eq!(app.refresh(refresh, None).status, 400);
    assert_eq!(get(&app.url("/wp-admin/setup.php"), &[]).status, 404);

    let scraped = get(&app.url("/metrics"), &[]);
    assert_eq!(scraped.status, 200);
    assert!(
        scraped
            .header("content-type")
            .is_some_and(|t| t.starts_with("application/openmetrics-text")),
        "{:?}",
        scraped.header("content-type")
    );
    let text = &scraped.body;
    let value =
        |series: &str| sample(text, series).unwrap_or_else(|| panic!("{series} in\n{text}"));

    assert_eq!(
        value(r#"gatehouse_tokens_issued_total{grant_type="client_credentials"}"#),
        3.0
    );
    assert_eq!(
        value(r#"gatehouse_tokens_issued_total{grant_type="authorization_code"}"#),
        1.0
    );
    assert_eq!(
        value(r#"gatehouse_tokens_issued_total{grant_type="refresh_token"}"#),
        1.0
    );
    assert_eq!(
        value(r#"gatehouse_oauth_errors_total{error="invalid_grant"}"#),
        1.0
    );
    assert_eq!(value("gatehouse_refresh_token_reuse_total"), 1.0);
    assert_eq!(
        value(r#"gatehouse_http_requests_total{route="/token",status="200"}"#),
        5.0
    );
    assert_eq!(
        value(r#"gatehouse_http_requests_total{route="/token",status="400"}"#),
        1.0
    );
    assert_eq!(
        value(r#"gatehouse_http_requests_total{route="other",status="404"}"#),
        1.0,
        "unknown paths share one series"
    );
    assert!(!text.contains("wp-admin"));
    assert_eq!(
        value(r#"gatehouse_http_request_duration_seconds_count{route="/token"}"#),
        6.0
    );
    assert!(text
        .contains(r#"gatehouse_http_request_duration_seconds_bucket{le="0.005",route="/token"}"#));
    assert_eq!(value("gatehouse_db_pool_waiting"), 0.0);
    assert!(value("gatehouse_db_pool_connections_idle") >= 1.0);
    assert_eq!(value("gatehouse_password_hashes_queued"), 0.0);
    assert_eq!(value("gatehouse_password_hashes_running"), 0.0);
    assert!(text.trim_end().ends_with("# EOF"));
}
