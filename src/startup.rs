//! Builds the running server: storage ready, clients synced, keys loaded, socket bound.

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::Server;
use actix_web::{middleware, web, App, HttpServer};
use tracing_actix_web::TracingLogger;

use actix_web::http::header;

use crate::config::Settings;
use crate::crypto::mac::Mac;
use crate::crypto::secret_cache::SecretCache;
use crate::http::{self, AppState};
use crate::keys::KeyRing;
use crate::oauth::client::ClientRegistry;
use crate::oauth::client_sync::sync_clients;
use crate::ratelimit::ClientRateLimiter;
use crate::storage::{self, Pool};
use crate::telemetry::RequestSpan;

/// How many blocking-pool threads each worker may start, where gatehouse bounds it.
///
/// The blocking pool starts a thread whenever a task arrives and none is idle, and wakes
/// the longest-idle thread first, so under steady load the work rotates over dozens of
/// threads (32 under the authorization-code benchmark), each with a cold cache. On SQLite
/// every blocking task is CPU work on a local file behind one writer, so more threads than
/// twice the cores only add switches: bounding them gave 5-9% more refresh rotations and
/// authorization-code flows at 8 connections, 13-18% at 64. On PostgreSQL a task mostly
/// waits for the network, the bound made no difference, and the pool's own limit
/// (`database.pool_size`) is left to decide.
pub fn blocking_threads_per_worker(sqlite: bool, cores: usize, workers: usize) -> Option<usize> {
    sqlite.then(|| (2 * cores).div_ceil(workers.max(1)).max(2))
}

/// Two years, the HSTS preload list's minimum; no includeSubDomains, which would bind every
/// other host of the operator's domain.
const HSTS: &str = "max-age=63072000";

pub struct Application {
    server: Server,
    port: u16,
}

/// What `audit.log_only` keeps out of the audit table, said in the server's log; and when
/// the log filter drops the audit target too, that those events are recorded nowhere.
fn announce_log_only(selectors: &[crate::audit::Selector]) {
    if selectors.is_empty() {
        return;
    }
    let names = crate::audit::Selector::list(selectors);
    if tracing::enabled!(target: crate::audit::TARGET, tracing::Level::INFO) {
        tracing::info!(log_only = %names, "audit events kept in the log only, not in the audit table");
    } else {
        tracing::warn!(
            log_only = %names,
            "audit.log_only keeps these events out of the audit table, and the log filter drops \
             gatehouse::audit lines: they are recorded nowhere"
        );
    }
}

/// Opens the pool and brings the schema, the clients and the signing key up to date. Runs
/// before the async runtime starts, so its blocking database work blocks nothing else.
pub fn prepare(settings: &Settings) -> anyhow::Result<Prepared> {
    announce_log_only(&settings.audit.log_only);
    let system_secret = settings.resolve_system_secret()?;
    let pool = storage::open_pool(&settings.database.url, settings.database.pool_size)
        .map_err(|e| anyhow::anyhow!("database.url: {e}"))?;
    let mut conn = pool.get()?;
    if settings.database.migrate_on_start {
        let applied = storage::run_migrations(&mut conn)?;
        if applied > 0 {
            tracing::info!(applied, "database migrations applied");
        }
    } else {
        storage::ensure_migrated(&mut conn)?;
    }
    sync_clients(&mut conn, settings)?;
    let clients = ClientRegistry::load(&mut conn)?;
    let keys = KeyRing::open(
        &mut conn,
        &system_secret,
        settings.keys.rsa_bits,
        &settings.issuer,
    )?;
    Ok(Prepared {
        pool,
        clients,
        keys,
        csrf_mac: Mac::new(&system_secret, "csrf"),
    })
}

/// Everything the server needs that touches the database or the system secret, made
/// before the runtime starts.
pub struct Prepared {
    pub pool: Pool,
    pub clients: ClientRegistry,
    pub keys: KeyRing,
    pub csrf_mac: Mac,
}

impl Application {
    /// Binds `server.bind` (port 0 picks a free port, which `port()` reports).
    pub fn build(settings: Settings, prepared: Prepared) -> anyhow::Result<Application> {
        let listener = TcpListener::bind(settings.server.bind).map_err(|e| {
            anyhow::anyhow!(
                "server.bind: cannot listen on {}: {e}",
                settings.server.bind
            )
        })?;
        let addr = listener.local_addr()?;
        let route_settings = http::RouteSettings::new(&settings);
        let client_rate = ClientRateLimiter::new(&settings);
        let revocations = http::RevocationLookups::new(prepared.pool.clone());
        let introspections = http::IntrospectionCache::new(settings.tokens.introspection_cache_ttl);
        let state = AppState {
            metadata: http::build_metadata(&settings),
            jwks_cache_control: http::jwks_cache_control(&settings),
            settings: Arc::new(settings),
            pool: prepared.pool,
            clients: Arc::new(prepared.clients),
            keys: Arc::new(prepared.keys),
            csrf_mac: Arc::new(prepared.csrf_mac),
            secret_cache: Arc::new(SecretCache::new()),
            client_rate: Arc::new(client_rate),
            revocations,
            introspections: Arc::new(introspections),
        };
        crate::audit::start_writer(state.pool.clone());
        spawn_refresh(state.clone());
        spawn_housekeeping(state.clone());
        let is_sqlite = storage::Backend::from_url(&state.settings.database.url)
            .is_ok_and(|(backend, _)| backend == storage::Backend::Sqlite);
        if is_sqlite {
            spawn_checkpoints(state.pool.clone());
        }
        let server_settings = state.settings.server.clone();
        let workers = server_settings.worker_count();
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let blocking_threads = blocking_threads_per_worker(is_sqlite, cores, workers);
        let hsts = server_settings.tls.is_some();
        let track_requests = server_settings.metrics;
        let data = web::Data::new(state);
        let server = HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                .wrap(middleware::from_fn(http::limit_body_time))
                .wrap(middleware::from_fn(http::echo_request_id))
                .wrap(TracingLogger::<RequestSpan>::new())
                .wrap(middleware::Condition::new(
                    track_requests,
                    middleware::from_fn(http::track_requests),
                ))
                .wrap(middleware::Condition::new(
                    hsts,
                    middleware::DefaultHeaders::new()
                        .add((header::STRICT_TRANSPORT_SECURITY, HSTS)),
                ))
                .configure(|cfg| http::routes(cfg, &route_settings))
        })
        .workers(workers);
        let server = match blocking_threads {
            Some(threads) => server.worker_max_blocking_threads(threads),
            None => server,
        };
        let server = server
            .max_connections(server_settings.max_connections_per_worker())
            .client_request_timeout(server_settings.header_timeout)
            .keep_alive(server_settings.keep_alive);
        let server = match &server_settings.tls {
            Some(tls) => server.listen_rustls_0_23(listener, rustls::ServerConfig::clone(tls))?,
            None => server.listen(listener)?,
        };
        let scheme = if hsts { "https" } else { "http" };
        tracing::info!(addr = %addr, scheme, "listening");
        Ok(Application {
            server: server.run(),
            port: addr.port(),
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        self.server.await
    }
}

/// Picks up keys rotated by another instance or by `gatehouse keys rotate`, drops retired
/// keys from the JWK Set once their window has passed, picks up clients another instance's
/// configuration changed, and forgets full rate-limit buckets.
fn spawn_refresh(state: AppState) {
    let period = state.settings.keys.refresh_interval;
    actix_web::rt::spawn(async move {
        let mut ticker = tokio::time::interval(period);
        ticker.tick().await;
        loop {
            ticker.tick().await;
            let keys = Arc::clone(&state.keys);
            let refreshed = http::run_blocking(&state.pool, move |conn| keys.refresh(conn)).await;
            if let Err(e) = refreshed {
                tracing::warn!(error = %e, "could not refresh signing keys; keeping the current ones");
            }
            let clients = Arc::clone(&state.clients);
            let reloaded = http::run_blocking(&state.pool, move |conn| clients.reload(conn)).await;
            if let Err(e) = reloaded {
                tracing::warn!(error = %e, "could not reload clients; keeping the current ones");
            }
            state.client_rate.forget_idle();
        }
    });
}

/// Often enough that the log, which each tick restarts, stays small: about 30 MB at 1,500
/// authorization-code flows/s (some 18 pages written per flow), so that lookups through the
/// WAL index stay cheap and each checkpoint holds the writers for a few milliseconds (longer
/// only after ticks that could not restart the log: see `storage::Checkpoints`).
const CHECKPOINT_PERIOD: Duration = Duration::from_millis(250);

/// SQLite: checkpoints the WAL off the request path (the pool's connections do not). Public
/// for the load benchmark's least server, which must do the same.
pub fn spawn_checkpoints(pool: storage::Pool) {
    actix_web::rt::spawn(async move {
        let checkpoints = Arc::new(storage::Checkpoints::default());
        let mut ticker = tokio::time::interval(CHECKPOINT_PERIOD);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            let checkpoints = checkpoints.clone();
            if let Err(e) = http::run_blocking(&pool, move |conn| checkpoints.run(conn)).await {
                tracing::warn!(error = %e, "WAL checkpoint failed; will retry");
            }
        }
    });
}

/// How long a redeemed or expired code is kept, so that a late replay is still recognised
/// (and revokes its tokens) instead of looking like garbage.
const CODE_RETENTION: Duration = Duration::from_secs(24 * 3600);
const HOUSEKEEPING_PERIOD: Duration = Duration::from_secs(300);

/// Deletes expired browser sessions and old authorization codes. Every instance runs it;
/// the deletes are idempotent.
fn spawn_housekeeping(state: AppState) {
    actix_web::rt::spawn(async move {
        let mut ticker = tokio::time::interval(HOUSEKEEPING_PERIOD);
        loop {
            ticker.tick().await;
            let window = state.settings.limits.window.as_secs() as i64;
            // A family's last access token may outlive the family by one access_ttl; its
            // revocation must be remembered until then.
            let access_ttl = state.settings.tokens.access_ttl.as_secs() as i64;
            let audit_retention = state.settings.audit.retention.as_secs() as i64;
            let swept = http::run_blocking(&state.pool, move |conn| {
                let now = storage::now_unix();
                storage::auth_failures::delete_before(conn, now - window)?;
                storage::audit::delete_before(conn, now - audit_retention)?;
                storage::tokens::delete_expired_before(conn, now - access_ttl)?;
                let sessions = storage::sessions::delete_expired(conn, now)?;
                let codes = storage::codes::delete_expired_before(
                    conn,
                    now - CODE_RETENTION.as_secs() as i64,
                )?;
                Ok::<_, storage::StorageError>((sessions, codes))
            })
            .await;
            match swept {
                Ok((sessions, codes)) if sessions + codes > 0 => {
                    tracing::debug!(sessions, codes, "deleted expired sessions and codes")
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "housekeeping failed; will retry"),
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::blocking_threads_per_worker;

    #[test]
    fn sqlite_bounds_blocking_threads_to_twice_the_cores() {
        assert_eq!(blocking_threads_per_worker(true, 2, 2), Some(2));
        assert_eq!(blocking_threads_per_worker(true, 8, 8), Some(2));
        assert_eq!(blocking_threads_per_worker(true, 8, 3), Some(6));
        // Never fewer than two per worker, so one slow task cannot stall a worker's others.
        assert_eq!(blocking_threads_per_worker(true, 1, 4), Some(2));
        assert_eq!(blocking_threads_per_worker(true, 4, 0), Some(8));
        assert_eq!(blocking_threads_per_worker(false, 2, 2), None);
    }
}
