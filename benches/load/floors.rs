//! What this machine allows each scenario, whatever the server: the least work one
//! operation must do, priced by measurements taken in the same run, added up. A target above
//! that bound asks for more than the hardware can give; one below it leaves the gap to
//! gatehouse.
//!
//! Everything an operation does here shares the same cores (the load generator, the server,
//! PostgreSQL), so the price of each part is CPU time per operation, not its latency: an
//! operation that costs `c` core-seconds in all can run at most `cores / c` times a second.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use diesel::connection::SimpleConnection;
use diesel::{ExpressionMethods, RunQueryDsl};
use gatehouse::storage::ConnectionManager;

use crate::report::{target, Baseline};
use crate::scenarios::Scenario;
use crate::server::{self, Backend};
use crate::Measured;

diesel::table! {
    bench_floor (id) {
        id -> Text,
        at -> BigInt,
    }
}

/// The prices measured once per run and backend, besides the scenarios' own figures.
#[derive(Clone, Copy, Default)]
pub struct Floors {
    /// RS256 verifications per second on every core (aws-lc-rs, RSA-2048, as introspection
    /// verifies: the public key parsed once from its components, then used for every token).
    pub verifications_per_second: f64,
    /// Single-row INSERT transactions per second, each committed durably on its own.
    pub writes_per_second: f64,
    /// CPU core-seconds per such write: the writing threads plus, on PostgreSQL, the
    /// database's processes.
    pub write_cpu_seconds: f64,
}

pub fn measure(backend: &Backend, url: &str, cores: usize, duration: Duration) -> Floors {
    let verifications_per_second = verify_baseline(cores, duration);
    let (writes_per_second, write_cpu_seconds) = match durable_writes(backend, url, duration) {
        Ok(prices) => prices,
        Err(e) => {
            eprintln!("  {:<10} durable writes not measured: {e}", backend.name());
            (0.0, 0.0)
        }
    };
    Floors {
        verifications_per_second,
        writes_per_second,
        write_cpu_seconds,
    }
}

/// RS256 verifications per second on every core.
fn verify_baseline(threads: usize, duration: Duration) -> f64 {
    use aws_lc_rs::rand::SystemRandom;
    use aws_lc_rs::rsa::KeySize;
    use aws_lc_rs::rsa::PublicKeyComponents;
    use aws_lc_rs::signature::{KeyPair, RsaKeyPair, RSA_PKCS1_2048_8192_SHA256, RSA_PKCS1_SHA256};
    let key = RsaKeyPair::generate(KeySize::Rsa2048).expect("generate an RSA key");
    let message = vec![b'x'; 420];
    let mut signature = vec![0u8; key.public_modulus_len()];
    key.sign(
        &RSA_PKCS1_SHA256,
        &SystemRandom::new(),
        &message,
        &mut signature,
    )
    .expect("sign");
    // As `keys::TokenVerifier` holds it: parsed once, its Montgomery context kept.
    let public = PublicKeyComponents {
        n: key
            .public_key()
            .modulus()
            .big_endian_without_leading_zero()
            .to_vec(),
        e: key
            .public_key()
            .exponent()
            .big_endian_without_leading_zero()
            .to_vec(),
    }
    .to_parsed_public_key(&RSA_PKCS1_2048_8192_SHA256)
    .expect("parse the public key");
    crate::scenarios::per_second_on_every_core(threads, duration, || {
        || public.verify_sig(&message, &signature).expect("verify")
    })
}

/// The cheapest durable record there is: a one-row INSERT into a table with only a primary
/// key, each its own transaction, through gatehouse's own connection settings (SQLite: WAL,
/// `synchronous = NORMAL`). SQLite takes one writer at a time, so one thread writes; on
/// PostgreSQL as many threads as the benchmark has connections, so that commits group.
/// Returns writes per second and CPU core-seconds per write.
fn durable_writes(backend: &Backend, url: &str, duration: Duration) -> Result<(f64, f64), String> {
    let manager = ConnectionManager::new(url).map_err(|e| e.to_string())?;
    let connect = || manager.connect().map_err(|e| e.to_string());
    let setup =
        "CREATE TABLE IF NOT EXISTS bench_floor (id TEXT PRIMARY KEY NOT NULL, at BIGINT NOT NULL)";
    connect()?.batch_execute(setup).map_err(|e| e.to_string())?;
    let threads = match backend {
        Backend::Sqlite => 1,
        Backend::Postgres { .. } => crate::CONNECTIONS,
    };
    let mut connections = (0..threads)
        .map(|_| connect())
        .collect::<Result<Vec<_>, _>>()?;
    let own_stat = "/proc/self/stat";
    let database_cpu = || match backend {
        Backend::Sqlite => 0.0,
        Backend::Postgres { .. } => server::postgres_cpu_seconds(),
    };
    let (own_before, database_before) = (server::process_cpu_seconds(own_stat), database_cpu());
    let started = Instant::now();
    let total = AtomicU64::new(0);
    let failure = std::sync::Mutex::new(None);
    std::thread::scope(|scope| {
        for (thread, conn) in connections.iter_mut().enumerate() {
            let (total, failure) = (&total, &failure);
            scope.spawn(move || {
                let end = Instant::now() + duration;
                let mut n = 0i64;
                while Instant::now() < end {
                    // A typed INSERT has a static query id, so diesel keeps it prepared, as
                    // it keeps gatehouse's own writes.
                    let written = diesel::insert_into(bench_floor::table)
                        .values((
                            bench_floor::id.eq(format!("{thread}-{n}")),
                            bench_floor::at.eq(n),
                        ))
                        .execute(conn);
                    if let Err(e) = written {
                        *failure.lock().unwrap() = Some(e.to_string());
                        break;
                    }
                    n += 1;
                }
                total.fetch_add(n as u64, Ordering::Relaxed);
            });
        }
    });
    let wall = started.elapsed().as_secs_f64();
    let cpu = server::process_cpu_seconds(own_stat) - own_before + database_cpu() - database_before;
    let _ = connections[0].batch_execute("DROP TABLE bench_floor");
    if let Some(e) = failure.into_inner().unwrap() {
        return Err(e);
    }
    let writes = total.into_inner() as f64;
    Ok((writes / wall, cpu / writes.max(1.0)))
}

/// The prices of one run, in CPU core-seconds per unit of work.
pub struct Prices {
    /// At client_credentials' B1, for the scenario that is judged against another baseline
    /// but signs (the password grant).
    signature: f64,
    verification: f64,
    /// An HTTP request answered without work: /healthz, load generator included.
    request: f64,
    /// An HTTP request that reads the database once: /readyz, load generator and database
    /// included.
    reading_request: f64,
    write: f64,
}

impl Prices {
    /// `None` when a part was not measured in this run.
    pub fn of_run(
        cores: f64,
        floors: &Floors,
        scenarios: &[(Scenario, Measured)],
        b1: f64,
        on_postgres: bool,
    ) -> Option<Prices> {
        let cost = |wanted: Scenario| {
            scenarios
                .iter()
                .find(|(s, _)| *s == wanted)
                .map(|(_, m)| {
                    // On SQLite the database is inside the server; PostgreSQL's idle
                    // processes are not part of the work.
                    let database = if on_postgres { m.database_cpu } else { 0.0 };
                    (m.server_cpu + m.loadgen_cpu + database) / m.per_second
                })
                .filter(|c| c.is_finite() && *c > 0.0)
        };
        let positive = |rate: f64| (rate > 0.0).then(|| cores / rate);
        Some(Prices {
            signature: positive(b1)?,
            verification: positive(floors.verifications_per_second)?,
            request: cost(Scenario::Healthz)?,
            reading_request: cost(Scenario::Readyz)?,
            write: (floors.write_cpu_seconds > 0.0).then_some(floors.write_cpu_seconds)?,
        })
    }
}

/// The least work one operation of a scenario must do, in words and priced.
pub struct Bound {
    pub work: &'static str,
    pub per_second: f64,
}

/// The bound for each scenario with a target that depends on more than the web framework;
/// `None` for the rest. `baseline` is the scenario's own, measured next to it, and prices
/// the part the scenario is judged by (a B1 scenario's signature, the password grant's
/// hash), so that the bound and the measured ratio see the machine in the same state.
pub fn bound(scenario: Scenario, prices: &Prices, cores: f64, baseline: f64) -> Option<Bound> {
    let p = prices;
    let (judged_by, _) = target(scenario)?;
    if baseline <= 0.0 {
        return None;
    }
    let own = cores / baseline;
    let signature = if judged_by == Baseline::B1 {
        own
    } else {
        p.signature
    };
    let (work, cost) = match scenario {
        Scenario::ClientCredentials => ("one HTTP request, one signature", p.request + signature),
        Scenario::Refresh => (
            "one HTTP request, one durable write that also reads the token it replaces \
             (UPDATE … RETURNING), one signature",
            p.request + p.write + signature,
        ),
        Scenario::AuthorizationCode => (
            "one HTTP request that reads the database (/authorize: the session; the code is \
             sealed, not stored), one HTTP request with one durable write (/token: the code's \
             row and the token family), one signature",
            p.reading_request + p.request + p.write + signature,
        ),
        Scenario::Password => (
            "one argon2id verification, one HTTP request that reads the database (the user), \
             one durable write, one signature",
            own + p.reading_request + p.write + signature,
        ),
        Scenario::Introspection => (
            "one HTTP request (the same token again within `tokens.introspection_cache_ttl`: \
             answered from memory, with no verification and no read)",
            p.request,
        ),
        _ => return None,
    };
    Some(Bound {
        work,
        per_second: cores / cost,
    })
}

/// Introspection that reads revocation for every request (`tokens.introspection_cache_ttl =
/// "0s"`): a request that reads the database and a signature verification.
pub fn introspection_reading_every_time(prices: &Prices, cores: f64) -> f64 {
    cores / (prices.reading_request + prices.verification)
}
