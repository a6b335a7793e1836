//! Prometheus metrics (OpenMetrics text at `GET /metrics`). One process-wide registry:
//! counters are bumped where things happen, gauges that mirror a state (pool, hash queue)
//! are read when scraped, so the hot paths pay a few atomic operations and nothing else.

use std::sync::LazyLock;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// The routes gatehouse serves; any other path is counted as `other`, so that a scanner
/// cannot blow up the number of series.
pub const ROUTES: [&str; 15] = [
    "/authorize",
    "/consent",
    "/login",
    "/login/done",
    "/logout",
    "/token",
    "/revoke",
    "/introspect",
    "/static/gatehouse.css",
    "/healthz",
    "/readyz",
    "/metrics",
    "/.well-known/jwks.json",
    "/.well-known/oauth-authorization-server",
    "other",
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub route: &'static str,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub route: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GrantLabels {
    pub grant_type: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub error: &'static str,
}

/// RFC 6749 and RFC 7009 error codes gatehouse answers with; anything else is `other`.
const ERROR_CODES: [&str; 9] = [
    "invalid_request",
    "invalid_client",
    "invalid_grant",
    "unauthorized_client",
    "unsupported_grant_type",
    "invalid_scope",
    "unsupported_token_type",
    "temporarily_unavailable",
    "server_error",
];

pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: Family<RouteLabels, Histogram, fn() -> Histogram>,
    tokens_issued: Family<GrantLabels, Counter>,
    protocol_errors: Family<ErrorLabels, Counter>,
    refresh_reuse: Counter,
    code_replay: Counter,
    introspection_from_memory: Counter,
    pool_in_use: Gauge,
    pool_idle: Gauge,
    pool_waiting: Gauge,
    hashes_running: Gauge,
    hashes_queued: Gauge,
    hashes_computed: Counter,
}

fn latency_histogram() -> Histogram {
    // 100 µs to ~3 s.
    Histogram::new([
        0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    ])
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

pub fn global() -> &'static Metrics {
    &METRICS
}

impl Metrics {
    fn new() -> Metrics {
        let mut metrics = Metrics {
            requests: Family::default(),
            latency: Family::new_with_constructor(latency_histogram),
            tokens_issued: Family::default(),
            protocol_errors: Family::default(),
            refresh_reuse: Counter::default(),
            code_replay: Counter::default(),
            introspection_from_memory: Counter::default(),
            pool_in_use: Gauge::default(),
            pool_idle: Gauge::default(),
            pool_waiting: Gauge::default(),
            hashes_running: Gauge::default(),
            hashes_queued: Gauge::default(),
            hashes_computed: Counter::default(),
            registry: Registry::with_prefix("gatehouse"),
        };
        metrics.registry.register(
            "http_requests",
            "HTTP requests answered, by route and status",
            metrics.requests.clone(),
        );
        metrics.registry.register(
            "http_request_duration_seconds",
            "Time from request head to response, by route",
            metrics.latency.clone(),
        );
        metrics.registry.register(
            "tokens_issued",
            "Access tokens issued, by grant type",
            metrics.tokens_issued.clone(),
        );
        metrics.registry.register(
            "oauth_errors",
            "Protocol error answers at /token, /revoke and /introspect, by error code",
            metrics.protocol_errors.clone(),
        );
        metrics.registry.register(
            "refresh_token_reuse",
            "Rotated refresh tokens presented again (each revoked its family)",
            metrics.refresh_reuse.clone(),
        );
        metrics.registry.register(
            "authorization_code_replay",
            "Authorization codes presented again (each revoked its tokens)",
            metrics.code_replay.clone(),
        );
        metrics.registry.register(
            "introspections_from_memory",
            "Introspections of an access token answered from the introspection cache",
            metrics.introspection_from_memory.clone(),
        );
        metrics.registry.register(
            "db_pool_connections_in_use",
            "Database connections checked out of the pool",
            metrics.pool_in_use.clone(),
        );
        metrics.registry.register(
            "db_pool_connections_idle",
            "Open database connections waiting in the pool",
            metrics.pool_idle.clone(),
        );
        metrics.registry.register(
            "db_pool_waiting",
            "Requests waiting for a database connection",
            metrics.pool_waiting.clone(),
        );
        metrics.registry.register(
            "password_hashes_running",
            "argon2id hashes or verifications running (at most one per core)",
            metrics.hashes_running.clone(),
        );
        metrics.registry.register(
            "password_hashes_queued",
            "argon2id hashes or verifications waiting for a core",
            metrics.hashes_queued.clone(),
        );
        metrics.registry.register(
            "password_hashes",
            "argon2id hashes or verifications computed (of passwords, client secrets, and the \
             dummy ones that hide an unknown name)",
            metrics.hashes_computed.clone(),
        );
        metrics
    }

    pub fn request_finished(&self, path: &str, status: u16, seconds: f64) {
        let route = ROUTES
            .iter()
            .find(|r| **r == path)
            .copied()
            .unwrap_or("other");
        self.requests
            .get_or_create(&RequestLabels { route, status })
            .inc();
        self.latency
            .get_or_create(&RouteLabels { route })
            .observe(seconds);
    }

    pub fn token_issued(&self, grant: crate::config::GrantType) {
        self.tokens_issued
            .get_or_create(&GrantLabels {
                grant_type: grant.as_str(),
            })
            .inc();
    }

    pub fn protocol_error(&self, error: &str) {
        let error = ERROR_CODES
            .iter()
            .find(|e| **e == error)
            .copied()
            .unwrap_or("other");
        self.protocol_errors
            .get_or_create(&ErrorLabels { error })
            .inc();
    }

    pub fn refresh_reuse_detected(&self) {
        self.refresh_reuse.inc();
    }

    pub fn introspection_answered_from_memory(&self) {
        self.introspection_from_memory.inc();
    }

    pub fn code_replay_detected(&self) {
        self.code_replay.inc();
    }

    pub fn password_hash_computed(&self) {
        self.hashes_computed.inc();
    }

    pub fn pool_wait_started(&self) {
        self.pool_waiting.inc();
    }

    pub fn pool_wait_ended(&self) {
        self.pool_waiting.dec();
    }

    /// The OpenMetrics text, with the pool and hash gauges read now.
    pub fn render(&self, pool: &crate::storage::Pool) -> String {
        let state = pool.state();
        self.pool_idle.set(i64::from(state.idle_connections));
        self.pool_in_use
            .set(i64::from(state.connections - state.idle_connections));
        let (running, queued) = crate::crypto::password::hash_load();
        self.hashes_running.set(running as i64);
        self.hashes_queued.set(queued as i64);
        let mut text = String::with_capacity(8 * 1024);
        if let Err(e) = prometheus_client::encoding::text::encode(&mut text, &self.registry) {
            tracing::error!(error = %e, "cannot encode metrics");
        }
        text
    }
}
