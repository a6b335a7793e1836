//! Logging: readable text by default, one JSON object per line with `log.format = "json"`.
//! Every line logged while serving a request carries that request's id.

use std::io::IsTerminal;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::HttpMessage;
use tracing::Span;
use tracing_actix_web::{RequestId, RootSpanBuilder};
use tracing_subscriber::EnvFilter;

use crate::config::{LogFormat, LogSettings};

/// Where log lines go: the server logs to stdout; CLI verbs log to stderr so that their
/// stdout stays clean for scripts.
#[derive(Debug, Clone, Copy)]
pub enum LogTarget {
    Stdout,
    Stderr,
}

/// actix-http logs at ERROR every request its parser refuses and every connection that ends
/// in a transport error ("stream error: ..."): any client could fill the error log, and an
/// alert on it, at will. The client gets its 400 or its closed connection either way, and
/// none of these is the server's fault (gatehouse streams no response bodies), so the
/// target stays silent unless the filter names `actix_http` itself. Hydra's HTTP server
/// (Go's net/http) logs nothing for them either.
const CLIENT_FAULTS: &str = "actix_http::h1::dispatcher=off";

/// Installs the global subscriber. `RUST_LOG`, when set, wins over `log.level`.
pub fn init(settings: &LogSettings, target: LogTarget) {
    let filter = log_filter(std::env::var("RUST_LOG").ok().as_deref(), &settings.level);
    let is_terminal = match target {
        LogTarget::Stdout => std::io::stdout().is_terminal(),
        LogTarget::Stderr => std::io::stderr().is_terminal(),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(is_terminal)
        .with_writer(move || -> Box<dyn std::io::Write> {
            match target {
                LogTarget::Stdout => Box::new(std::io::stdout()),
                LogTarget::Stderr => Box::new(std::io::stderr()),
            }
        });
    // A second init (tests, or a CLI verb after config load) keeps the first subscriber.
    let _ = match settings.format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
    };
}

/// The filter `RUST_LOG` (when set and valid) or else `level` asks for, with actix-http's
/// reports of client faults silenced unless it names them.
fn log_filter(rust_log: Option<&str>, level: &str) -> EnvFilter {
    let spec = rust_log
        .filter(|spec| EnvFilter::try_new(spec).is_ok())
        .or_else(|| EnvFilter::try_new(level).is_ok().then_some(level))
        .unwrap_or("info");
    let filter = EnvFilter::new(spec);
    if spec.contains("actix_http") {
        return filter;
    }
    match CLIENT_FAULTS.parse() {
        Ok(directive) => filter.add_directive(directive),
        Err(_) => filter,
    }
}

/// The root span of each request: method, path (never the query string, which may carry
/// codes or tokens) and request id. The status is a field of the line that ends the request
/// (`status`), not of the span (JSON logs had it twice, also as `span.status`): recording a
/// field on a span made the JSON log layer format all of the span's fields again, about 11k
/// instructions on every request, for the one line still to come.
pub struct RequestSpan;

impl RootSpanBuilder for RequestSpan {
    fn on_request_start(request: &ServiceRequest) -> Span {
        let request_id = request
            .extensions()
            .get::<RequestId>()
            .map(|id| id.to_string())
            .unwrap_or_default();
        tracing::info_span!(
            "request",
            request_id = %request_id,
            method = %request.method(),
            path = %request.path(),
        )
    }

    fn on_request_end<B: MessageBody>(
        span: Span,
        outcome: &Result<ServiceResponse<B>, actix_web::Error>,
    ) {
        let status = match outcome {
            Ok(response) => response.status().as_u16(),
            Err(error) => error.as_response_error().status_code().as_u16(),
        };
        let _entered = span.enter();
        if status >= 500 {
            tracing::warn!(status, "request finished");
        } else {
            tracing::debug!(status, "request finished");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::log_filter;

    #[test]
    fn client_faults_are_silent_unless_the_filter_names_actix_http() {
        let quiet = "actix_http::h1::dispatcher=off";
        assert!(log_filter(None, "info").to_string().contains(quiet));
        assert!(log_filter(Some("trace"), "info")
            .to_string()
            .contains(quiet));
        let named = log_filter(Some("info,actix_http=debug"), "info").to_string();
        assert!(!named.contains(quiet), "{named}");
        assert!(named.contains("actix_http=debug"), "{named}");
    }

    #[test]
    fn an_invalid_rust_log_falls_back_to_the_level_and_then_to_info() {
        let from_level = log_filter(Some("not a [valid filter"), "warn").to_string();
        assert!(from_level.contains("warn"), "{from_level}");
        let fallback = log_filter(None, "[[").to_string();
        assert!(fallback.contains("info"), "{fallback}");
    }
}
