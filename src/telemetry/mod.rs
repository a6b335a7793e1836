//! Logging: readable text by default, one JSON object per line with `log.format = "json"`.
//! Every line logged while serving a request carries that request's id.

mod line_buffer;

pub use line_buffer::FlushOnDrop;

use std::io::IsTerminal;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::HttpMessage;
use tracing::Span;
use tracing_actix_web::{RequestId, RootSpanBuilder};
use tracing_log::NormalizeEvent;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::fmt::writer::EitherWriter;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

use crate::config::{LogFormat, LogSettings};

/// Where log lines go: the server logs to stdout; CLI verbs log to stderr so that their
/// stdout stays clean for scripts.
#[derive(Debug, Clone, Copy)]
pub enum LogTarget {
    Stdout,
    Stderr,
}

/// The one actix-http module that logs at ERROR for what clients do: every request its
/// parser refuses (400, 431, ...) and every connection that ends in a transport error
/// ("stream error: ..."). Any client could fill the error log, and page whoever alerts on
/// it, at will. The client gets its answer or its closed connection either way. Besides
/// these the module logs failed streamed response bodies, which gatehouse does not send,
/// and the inconsistencies it answers with a 500 of its own ("unexpected payload chunk");
/// those are silenced too, at every level, unless the filter names this target or a
/// prefix of it (`actix_http=error`). Hydra's HTTP server (Go's net/http) logs none of them.
const DISPATCHER: &str = "actix_http::h1::dispatcher";

/// Installs the global subscriber. `RUST_LOG`, when set, wins over `log.level`.
pub fn init(settings: &LogSettings, target: LogTarget) {
    let filter = log_filter(std::env::var("RUST_LOG").ok().as_deref(), &settings.level);
    let is_terminal = match target {
        LogTarget::Stdout => std::io::stdout().is_terminal(),
        LogTarget::Stderr => std::io::stderr().is_terminal(),
    };
    // The server's lines are batched (`log.flush_interval`); a CLI verb's are few, and
    // should reach the terminal as they happen.
    let buffer = match (target, settings.flush_interval) {
        (LogTarget::Stdout, Some(interval)) => line_buffer::LineBuffer::install(interval),
        _ => None,
    };
    // One writer per line: an enum, not a Box, so that no line costs an allocation.
    let writer = move || match (buffer, target) {
        (Some(buffer), _) => EitherWriter::A(buffer.writer()),
        (None, LogTarget::Stdout) => EitherWriter::B(EitherWriter::A(std::io::stdout())),
        (None, LogTarget::Stderr) => EitherWriter::B(EitherWriter::B(std::io::stderr())),
    };
    // A second init (tests, or a CLI verb after config load) keeps the first subscriber.
    let _ = match settings.format {
        LogFormat::Text => tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(is_terminal)
            .with_writer(writer)
            .try_init()
            .map_err(|e| e.to_string()),
        LogFormat::Json => tracing_subscriber::registry()
            .with(json_lines(writer))
            .with(filter)
            .try_init()
            .map_err(|e| e.to_string()),
    };
}

/// The lines of tracing-subscriber's JSON format (`flatten_event`, the current span under
/// `span`, no span list), written by json-subscriber: it keeps each span's fields as JSON
/// ready to copy into every line of the span, where tracing-subscriber parses them back
/// into a map and serializes the map again for each line (callgrind: 12.6k of the 116k
/// instructions a client_credentials token cost beyond the least server).
fn json_lines<S, W>(writer: W) -> json_subscriber::fmt::Layer<S, W>
where
    S: tracing::Subscriber + for<'span> LookupSpan<'span>,
    W: for<'writer> MakeWriter<'writer> + 'static,
{
    let mut layer = json_subscriber::fmt::layer()
        .with_writer(writer)
        .flatten_event(true)
        .with_current_span(true)
        .with_span_list(false)
        .with_target(false)
        // As tracing-subscriber's format does: a line the writer refused (a closed pipe, a
        // full disk) is reported on stderr instead of vanishing without a word.
        .log_internal_errors(true);
    // A record of a dependency that logs through the `log` crate (r2d2, actix) is an event
    // of tracing-log's, whose own target is `log`: its line names the module it came from,
    // as tracing-subscriber's lines do.
    // Written straight into the line, as the built-in target is: a field returned as a value
    // would be copied into a `serde_json::Value` for every line.
    layer
        .inner_layer_mut()
        .add_multiple_dynamic_fields(|event, _, line| {
            let _ = match event.normalized_metadata() {
                Some(logged) => line.write_field("target", logged.target()),
                None => line.write_field("target", event.metadata().target()),
            };
        });
    layer
}

/// The filter `RUST_LOG` asks for, when it is set, not blank and valid; else `level`'s, when
/// not blank and valid; else `info`. The dispatcher's lines are silenced unless it names
/// them.
fn log_filter(rust_log: Option<&str>, level: &str) -> EnvFilter {
    // A spec that is usable, parsed once, with whether it names the dispatcher.
    fn usable(spec: &str) -> Option<(bool, EnvFilter)> {
        let filter = EnvFilter::try_new(spec)
            .ok()
            .filter(|_| !spec.trim().is_empty())?;
        Some((names_dispatcher(spec), filter))
    }
    let (named, filter) = rust_log
        .and_then(usable)
        .or_else(|| usable(level))
        .unwrap_or_else(|| (false, EnvFilter::new("info")));
    if named {
        return filter;
    }
    // A target and a level always make a directive; the unit tests check this one.
    match format!("{DISPATCHER}=off").parse() {
        Ok(quiet) => filter.add_directive(quiet),
        Err(_) => filter,
    }
}

/// Whether a directive of `spec` matches the dispatcher's target: EnvFilter matches a
/// directive's target as a prefix of the event's.
fn names_dispatcher(spec: &str) -> bool {
    spec.split(',').any(|directive| {
        // A directive that is only a level (`info`, `off`) names no target.
        let target = directive.split(['[', '=']).next().unwrap_or("").trim();
        !target.is_empty()
            && target.parse::<LevelFilter>().is_err()
            && DISPATCHER.starts_with(target)
    })
}

/// The root span of each request: method, path (never the query string, which may carry
/// codes or tokens) and request id. The status is a field of the line that ends the request
/// (`status`), not of the span (JSON logs had it twice, also as `span.status`): recording a
/// field on a span made the JSON log layer format all of the span's fields again, about 11k
/// instructions on every request, for the one line still to come.
pub struct RequestSpan;

impl RootSpanBuilder for RequestSpan {
    fn on_request_start(request: &ServiceRequest) -> Span {
        // Formatted once, by the log layer, straight from the id: no String on every request.
        let request_id = request.extensions().get::<RequestId>().copied();
        tracing::info_span!(
            "request",
            request_id = request_id.map(tracing::field::display),
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

    const QUIET: &str = "actix_http::h1::dispatcher=off";

    #[test]
    fn the_dispatcher_is_silent_unless_the_filter_names_it() {
        assert!(log_filter(None, "info").to_string().contains(QUIET));
        assert!(log_filter(Some("trace"), "info")
            .to_string()
            .contains(QUIET));
        assert!(log_filter(Some("info,actix_web=debug"), "info")
            .to_string()
            .contains(QUIET));
        for naming in [
            "info,actix_http=debug",
            "info,actix=error",
            "warn,actix_http::h1::dispatcher=trace",
        ] {
            let filter = log_filter(Some(naming), "info").to_string();
            assert!(!filter.contains(QUIET), "{naming}: {filter}");
        }
        let elsewhere = log_filter(Some("info,actix_http::h1::decoder=trace"), "info");
        assert!(elsewhere.to_string().contains(QUIET), "{elsewhere}");
    }

    #[test]
    fn a_blank_or_invalid_rust_log_falls_back_to_the_level_and_then_to_info() {
        for unusable in ["", "  ", "not a [valid filter"] {
            let filter = log_filter(Some(unusable), "warn").to_string();
            assert!(
                filter.split(',').any(|d| d == "warn"),
                "{unusable:?}: {filter}"
            );
        }
        for unusable in ["", "[["] {
            let filter = log_filter(None, unusable).to_string();
            assert!(
                filter.split(',').any(|d| d == "info"),
                "{unusable:?}: {filter}"
            );
        }
    }
}
