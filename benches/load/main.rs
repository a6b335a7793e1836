//! `cargo bench --bench load`: gatehouse against the limits of this machine, in one run.
//!
//! Starts the release binary on SQLite (and PostgreSQL when reachable), drives each
//! scenario for a fixed time at fixed concurrency, measures the baselines in the same run
//! (B1 raw RS256 signing on every core, B2 the server's own /healthz, B3 argon2id
//! verifications on every core), and writes BENCHMARKS.md and benchmarks.svg.
//!
//! Options: `--seconds N` per scenario (5), `--runs N` (3, the median is reported),
//! `--sqlite-only`, `--smoke` (every scenario once for half a second, nothing written to
//! the repository, failing on any error: what CI runs so the benchmark cannot rot),
//! `--only NAME` (the scenarios whose name contains NAME, without baselines and without a
//! report: for profiling), `--baselines` (with `--only`: their baselines and ratios too,
//! and the least server's, see `least_server`),
//! `--paced` (with `--only client_credentials`: the p99 at half its peak rate too, paced in
//! turns with the least server, as the full run measures it; for studying the tail),
//! `--instructions --only NAME [--ops N]` (instructions per operation under callgrind; see
//! `instructions`), `--hash-memory [--runs N]` (argon2 in huge pages against a plain
//! buffer, N pairs of turns, 40 by default; see `hash_memory`). `GATEHOUSE_BENCH_BIN=PATH`
//! measures another build of the server; `--server-env KEY=VALUE` (with `--only`;
//! repeatable) sets one of gatehouse's settings in its environment
//! (`GATEHOUSE__LOG__LEVEL=warn`), to price a setting against the benchmark's own
//! configuration.

mod client;
mod floors;
mod hash_memory;
mod instructions;
mod least_server;
mod report;
mod scenarios;
mod server;

use std::time::{Duration, Instant};

use scenarios::{Outcome, Scenario};
use server::{Backend, Server, Workspace};

pub const CONNECTIONS: usize = 8;

pub struct Options {
    seconds: f64,
    runs: usize,
    smoke: bool,
    /// `--hash-memory`: argon2 in huge pages against a plain buffer, `runs` pairs of turns.
    hash_memory: bool,
    sqlite_only: bool,
    /// `--only NAME`: just this scenario (for profiling); no report is written.
    only: Option<String>,
    /// `--baselines`: with `--only`, measure the scenario's baseline too and print the ratio.
    baselines: bool,
    /// `--paced`: with `--only client_credentials`, the paced p99 at half its peak rate too.
    paced: bool,
    /// `--instructions`: count instructions per operation instead (needs `--only`).
    instructions: bool,
    /// `--ops N`: how many operations `--instructions` counts.
    ops: usize,
    /// `--server-env KEY=VALUE`, each: settings for gatehouse's processes, which otherwise
    /// get none from the bench's own environment.
    server_env: Vec<(String, String)>,
}

impl Options {
    /// The options on the command line, or why they do not go together (checked before
    /// anything is measured or any database touched).
    fn parse() -> Result<Options, String> {
        let args: Vec<String> = std::env::args().collect();
        let value = |flag: &str| {
            args.iter()
                .position(|a| a == flag)
                .and_then(|i| args.get(i + 1))
                .and_then(|v| v.parse::<f64>().ok())
        };
        let smoke = args.iter().any(|a| a == "--smoke");
        let hash_memory = args.iter().any(|a| a == "--hash-memory");
        let server_env = args
            .iter()
            .enumerate()
            .filter(|(_, a)| *a == "--server-env")
            .map(|(i, _)| setting(args.get(i + 1).map_or("", String::as_str)))
            .collect::<Result<Vec<_>, String>>()?;
        let options = Options {
            seconds: value("--seconds").unwrap_or(if smoke { 0.5 } else { 5.0 }),
            runs: value("--runs").map_or(
                match (smoke, hash_memory) {
                    (true, _) => 1,
                    (false, true) => 40,
                    (false, false) => 3,
                },
                |r| r.max(1.0) as usize,
            ),
            smoke,
            hash_memory,
            sqlite_only: args.iter().any(|a| a == "--sqlite-only"),
            // The paced turns compare gatehouse with the least server, which runs only beside
            // its baselines.
            baselines: args.iter().any(|a| a == "--baselines" || a == "--paced"),
            paced: args.iter().any(|a| a == "--paced"),
            only: args
                .iter()
                .position(|a| a == "--only")
                .and_then(|i| args.get(i + 1))
                .cloned(),
            instructions: args.iter().any(|a| a == "--instructions"),
            ops: value("--ops").map_or(2000, |n| n.max(1.0) as usize),
            server_env,
        };
        if options.paced
            && (options.only.is_none() || options.leaves_out(Scenario::ClientCredentials))
        {
            return Err(
                "--paced needs --only NAME naming client_credentials, whose peak it paces at half"
                    .to_owned(),
            );
        }
        if !options.server_env.is_empty() && options.only.is_none() {
            // BENCHMARKS.md reports the benchmark's own configuration, the same in every report.
            return Err(
                "--server-env needs --only NAME: the full run measures the benchmark's \
                own configuration"
                    .to_owned(),
            );
        }
        Ok(options)
    }

    fn duration(&self) -> Duration {
        Duration::from_secs_f64(self.seconds)
    }

    /// Whether `--only` leaves `scenario` out.
    fn leaves_out(&self, scenario: Scenario) -> bool {
        self.only
            .as_ref()
            .is_some_and(|only| !scenario.name().contains(only.as_str()))
    }

    pub fn warmup(&self) -> Duration {
        Duration::from_secs_f64((self.seconds / 5.0).min(1.0))
    }
}

/// One scenario in one run.
#[derive(Clone, Default)]
pub struct Measured {
    pub per_second: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub peak_rss_mib: f64,
    pub server_cpu: f64,
    pub loadgen_cpu: f64,
    /// PostgreSQL's processes, when the backend is PostgreSQL (SQLite runs inside the server).
    pub database_cpu: f64,
    /// The scenario's baseline (B1, B2 or B3), measured in turns with it (and with the least
    /// server, where it serves the scenario) so that all see the machine in the same state; 0
    /// for a scenario judged against none.
    pub baseline: f64,
}

/// Everything one backend produced in one run.
pub struct RunResult {
    pub scenarios: Vec<(Scenario, Measured)>,
    pub p99_half_rate_ms: f64,
    /// The same paced client_credentials against the least server; `None` when it did not run.
    pub least_p99_half_rate_ms: Option<f64>,
    pub half_rate: f64,
    /// client_credentials with and without /metrics, measured back to back on fresh servers
    /// so that the difference is the metrics and not the order of the scenarios.
    pub metrics_on_per_second: f64,
    pub metrics_off_per_second: f64,
    /// The prices of the least work each scenario must do (see `floors`).
    pub floors: floors::Floors,
    /// The scenarios that sign, against the least server (see `least_server`), each
    /// measured in the same turns as gatehouse's and with the same baseline.
    pub least: Vec<(Scenario, Measured)>,
    /// The share of the introspection scenario's answers that came from the introspection
    /// cache, by the server's /metrics; `None` when not measured.
    pub introspections_from_memory: Option<f64>,
}

pub struct BackendResult {
    pub backend: Backend,
    pub runs: Vec<RunResult>,
    pub ready_ms: Vec<f64>,
    pub idle_rss_mib: f64,
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some(least_server::FLAG) {
        if let Err(e) = least_server::serve(&args[2..]) {
            eprintln!("the least server: {e}");
            std::process::exit(1);
        }
        return;
    }
    let options = Options::parse().unwrap_or_else(|refusal| {
        eprintln!("{refusal}");
        std::process::exit(2);
    });
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    if options.hash_memory {
        if let Err(e) = hash_memory::compare(cores, options.runs.max(2)) {
            eprintln!("{e}");
            std::process::exit(1);
        }
        return;
    }
    let mut backends = vec![Backend::Sqlite];
    let admin_url = std::env::var("GATEHOUSE_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
    if !options.sqlite_only {
        if server::postgres_reachable(&admin_url) {
            server::drop_orphaned_databases(&admin_url);
            backends.push(Backend::Postgres { admin_url });
        } else {
            eprintln!("PostgreSQL is not reachable at {admin_url}: measuring SQLite only");
        }
    }

    if options.instructions {
        let Some(scenario) = options
            .only
            .as_deref()
            .and_then(|only| Scenario::ALL.into_iter().find(|s| s.name().contains(only)))
        else {
            eprintln!("--instructions needs --only NAME, a part of a scenario's name");
            std::process::exit(2);
        };
        for backend in &backends {
            if let Err(e) = instructions::count(backend, scenario, options.ops, &options.server_env)
            {
                eprintln!("{}: {e}", backend.name());
                std::process::exit(1);
            }
        }
        return;
    }

    let mut results: Vec<BackendResult> = backends
        .iter()
        .map(|backend| BackendResult {
            backend: backend.clone(),
            runs: Vec::new(),
            ready_ms: Vec::new(),
            idle_rss_mib: 0.0,
        })
        .collect();
    let mut failures = Vec::new();
    for run in 0..options.runs {
        eprintln!("run {}/{}", run + 1, options.runs);
        for result in &mut results {
            let backend = result.backend.clone();
            match run_backend(&options, cores, &backend, result, &mut failures) {
                Ok(run_result) => result.runs.push(run_result),
                Err(e) => failures.push(format!("{}: {e}", result.backend.name())),
            }
        }
    }

    if options.only.is_some() && failures.is_empty() {
        return;
    }
    if !failures.is_empty() {
        eprintln!("\nFAILED:");
        for failure in &failures {
            eprintln!("  {failure}");
        }
        std::process::exit(1);
    }
    let markdown = report::markdown(&options, cores, &results);
    let svg = report::svg(&results, cores as f64);
    let dir = if options.smoke {
        std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("bench-smoke")
    } else {
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
    };
    let _ = std::fs::create_dir_all(&dir);
    let written = std::fs::write(dir.join("BENCHMARKS.md"), &markdown)
        .and_then(|()| std::fs::write(dir.join("benchmarks.svg"), &svg));
    if let Err(e) = written {
        eprintln!("cannot write the report into {}: {e}", dir.display());
        std::process::exit(1);
    }
    println!("{markdown}");
    eprintln!("written: {}", dir.join("BENCHMARKS.md").display());
}

/// One `--server-env` argument, `GATEHOUSE__SECTION__KEY=VALUE`, as a key and its value. A
/// refusal names the key alone: the value may be a secret.
fn setting(argument: &str) -> Result<(String, String), String> {
    match argument.split_once('=') {
        Some((key, value)) if key.starts_with("GATEHOUSE__") => {
            Ok((key.to_owned(), value.to_owned()))
        }
        Some((key, _)) => Err(format!(
            "--server-env {key:?}=…: expected GATEHOUSE__SECTION__KEY=VALUE"
        )),
        None => Err(format!(
            "--server-env {argument:?}: expected GATEHOUSE__SECTION__KEY=VALUE"
        )),
    }
}

fn run_backend(
    options: &Options,
    cores: usize,
    backend: &Backend,
    result: &mut BackendResult,
    failures: &mut Vec<String>,
) -> Result<RunResult, String> {
    let port = server::free_port();
    let workspace = Workspace::create(backend, port, &options.server_env)?;
    // The first start generates the signing key; later starts find it.
    drop(Server::start(&workspace, port)?);
    for _ in 0..3 {
        let server = Server::start(&workspace, port)?;
        result
            .ready_ms
            .push(server.ready_after.as_secs_f64() * 1000.0);
        std::thread::sleep(Duration::from_millis(if options.smoke {
            100
        } else {
            1000
        }));
        result.idle_rss_mib = result.idle_rss_mib.max(server.rss_kib().0 as f64 / 1024.0);
    }

    let mut scenarios = Vec::new();
    let mut least = Vec::new();
    let mut introspections_from_memory = None;
    let with_baselines = options.only.is_none() || options.baselines;
    // Its own port, so that it can run beside gatehouse and take turns with it.
    let least_port = (0..100)
        .map(|_| server::free_port())
        .find(|&p| p != port)
        .unwrap_or(if port == u16::MAX { port - 1 } else { port + 1 });
    for scenario in Scenario::ALL {
        if options.leaves_out(scenario) {
            continue;
        }
        let server = Server::start(&workspace, port)?;
        let base = report::target(scenario)
            .filter(|_| with_baselines)
            .map(|(base, _)| base);
        let least_server = if with_baselines && least_server::SCENARIOS.contains(&scenario) {
            Some(Server::start_least(&workspace, least_port)?)
        } else {
            None
        };
        let servers: Vec<&Server> = std::iter::once(&server).chain(&least_server).collect();
        let mut turns = measure_in_turns(options, cores, &servers, scenario, base).into_iter();
        let (outcome, measured) = turns.next().expect("one measurement per server");
        report_outcome(backend, scenario.name(), &outcome, &measured, failures);
        if let Some((outcome, measured)) = turns.next() {
            let name = format!("{} (least server)", scenario.name());
            report_outcome(backend, &name, &outcome, &measured, failures);
            least.push((scenario, measured));
        }
        if scenario == Scenario::Introspection {
            introspections_from_memory = answered_from_memory(&server);
            match introspections_from_memory {
                Some(share) => eprintln!(
                    "  {:<10} introspections answered from memory: {:.2} %",
                    backend.name(),
                    share * 100.0
                ),
                None => failures.push(format!(
                    "{}: no introspection counters in /metrics, or no introspection answered",
                    backend.name()
                )),
            }
        }
        scenarios.push((scenario, measured));
    }
    // No least server ran (`--only` named none of its scenarios): nothing to drop.
    if !least.is_empty() {
        least_server::drop_tables(&workspace.least_url())?;
    }

    // `--only client_credentials --paced` goes on to the paced turns, and only to them
    // (`--paced` is refused without `--only`).
    let paced_only = options.paced;
    if options.only.is_some() && !paced_only {
        return Ok(RunResult {
            scenarios,
            p99_half_rate_ms: 0.0,
            least_p99_half_rate_ms: None,
            half_rate: 0.0,
            metrics_on_per_second: 0.0,
            metrics_off_per_second: 0.0,
            floors: floors::Floors::default(),
            least,
            introspections_from_memory,
        });
    }
    // No server runs while the floors are measured: they are the machine's, not gatehouse's.
    let floors = if paced_only {
        floors::Floors::default()
    } else {
        let floors = floors::measure(backend, workspace.url(), cores, options.duration());
        eprintln!(
            "  {:<10} floors: {:.0} RS256 verifications/s; {:.0} durable one-row writes/s at {:.0} µs of CPU each",
            backend.name(),
            floors.verifications_per_second,
            floors.writes_per_second,
            floors.write_cpu_seconds * 1e6
        );
        if floors.writes_per_second <= 0.0 {
            failures.push(format!("{}: durable writes not measured", backend.name()));
        }
        floors
    };
    // p99 of /token at half the peak client-credentials rate, paced so a stall shows.
    let peak = scenarios
        .iter()
        .find(|(s, _)| *s == Scenario::ClientCredentials)
        .map_or(100.0, |(_, m)| m.per_second);
    let half_rate = (peak / 2.0).max(1.0);
    // The least server at the same rate tells a tail that this machine (these cores shared
    // with the load generator, the kernel, a hypervisor) gives any server on these parts from
    // one that is gatehouse's. They take turns, gatehouse first, then the least server,
    // then gatehouse again and the least server again, each on a fresh process; the p99 of
    // each is over both of its turns.
    let with_least = !least.is_empty();
    let mut gatehouse_paced = Vec::new();
    let mut least_paced = Vec::new();
    for _ in 0..2 {
        let server = Server::start(&workspace, port)?;
        gatehouse_paced.push(paced_client_credentials(options, &server, half_rate));
        drop(server);
        if with_least {
            let server = Server::start_least(&workspace, port)?;
            least_paced.push(paced_client_credentials(options, &server, half_rate));
            drop(server);
        }
    }
    if with_least {
        least_server::drop_tables(&workspace.least_url())?;
    }
    let measured_p99 = report_paced(
        backend,
        "client_credentials at half rate",
        gatehouse_paced,
        failures,
    );
    let least_p99 = with_least.then(|| {
        report_paced(
            backend,
            "client_credentials at half rate (least server)",
            least_paced,
            failures,
        )
    });

    let (metrics_on, metrics_off) = if paced_only {
        (0.0, 0.0)
    } else {
        measure_metrics_cost(options, backend, &workspace, port, failures)?
    };

    Ok(RunResult {
        scenarios,
        p99_half_rate_ms: measured_p99,
        least_p99_half_rate_ms: least_p99,
        half_rate,
        metrics_on_per_second: metrics_on,
        metrics_off_per_second: metrics_off,
        introspections_from_memory,
        floors,
        least,
    })
}

/// The cost of /metrics: client_credentials on a fresh server with metrics and on one
/// without, back to back; their throughputs, with and without.
fn measure_metrics_cost(
    options: &Options,
    backend: &Backend,
    workspace: &Workspace,
    port: u16,
    failures: &mut Vec<String>,
) -> Result<(f64, f64), String> {
    let config = workspace.config();
    let metrics_on_text = std::fs::read_to_string(config).map_err(|e| e.to_string())?;
    // With, without, without, with: the machine's drift over the four measurements (and
    // anything that favours going first or last) falls equally on both sides. Single pairs
    // disagreed by up to 10% in either direction.
    let mut per_second = [0.0; 2];
    for metrics in [true, false, false, true] {
        let (text, label) = if metrics {
            (metrics_on_text.clone(), "client_credentials with /metrics")
        } else {
            (
                metrics_on_text.replace("[server]\n", "[server]\nmetrics = false\n"),
                "client_credentials without /metrics",
            )
        };
        std::fs::write(config, text).map_err(|e| e.to_string())?;
        let server = Server::start(workspace, port)?;
        let (outcome, measured) = measure(&server, options.warmup(), |addr| {
            scenarios::closed_loop(
                addr,
                Scenario::ClientCredentials,
                CONNECTIONS,
                options.warmup(),
                options.duration(),
            )
        });
        report_outcome(backend, label, &outcome, &measured, failures);
        per_second[usize::from(!metrics)] += measured.per_second / 2.0;
    }
    std::fs::write(config, metrics_on_text).map_err(|e| e.to_string())?;
    let [metrics_on, metrics_off] = per_second;
    Ok((metrics_on, metrics_off))
}

/// client_credentials paced at `rate` on `server`, so that a stall shows as latency.
fn paced_client_credentials(options: &Options, server: &Server, rate: f64) -> Outcome {
    measure(server, options.warmup(), |addr| {
        scenarios::paced(
            addr,
            Scenario::ClientCredentials,
            CONNECTIONS,
            rate,
            options.warmup(),
            options.duration(),
        )
    })
    .0
}

/// Reports the paced turns as one outcome and returns its p99 in milliseconds.
fn report_paced(
    backend: &Backend,
    label: &str,
    turns: Vec<Outcome>,
    failures: &mut Vec<String>,
) -> f64 {
    let paced = Outcome::merged(turns);
    let p99 = paced.percentile_ms(0.99);
    report_outcome(
        backend,
        label,
        &paced,
        &Measured {
            per_second: paced.per_second(),
            p50_ms: paced.percentile_ms(0.5),
            p99_ms: p99,
            peak_rss_mib: 0.0,
            server_cpu: 0.0,
            loadgen_cpu: 0.0,
            database_cpu: 0.0,
            baseline: 0.0,
        },
        failures,
    );
    p99
}

/// Slices of the measured time in which a scenario, its baseline and, for the scenarios
/// that sign, the least server take turns.
///
/// The machine's speed drifts by more than the margins judged here: B1 moved by 25% within
/// minutes on a shared host, and back-to-back 5 s measurements of B2 and JWKS, one after the
/// other, gave ratios from 0.72 to 1.31 over five runs. Measured in turns, all see the same
/// drift. Six, a multiple of two and of three, so that each of two or three parties holds
/// each place in a turn equally often.
pub const SLICES: usize = 6;

/// The share of successful introspections the server answered from its introspection cache
/// since it started, by its /metrics.
fn answered_from_memory(server: &Server) -> Option<f64> {
    let mut conn = client::Conn::open(server.addr).ok()?;
    let reply = conn.get("/metrics", "").ok()?;
    let text = reply.text();
    let sample = |series: &str| server::prometheus_text::sample(text, series);
    let answered = sample(r#"gatehouse_http_requests_total{route="/introspect",status="200"}"#)?;
    let from_memory = sample("gatehouse_introspections_from_memory_total")?;
    (answered > 0.0).then(|| from_memory / answered)
}

/// Measures `scenario` on each of `servers` for the run's duration; with a baseline, in
/// `SLICES` turns in which the baseline and each server take one slice, each turn a fresh
/// set of connections after a short warm-up. A server's figures are over all its slices;
/// the baseline, the mean of its slices, is every server's. A B2 baseline is the first
/// server's /healthz.
///
/// Before, the least server was measured after gatehouse, in turns with a baseline of its
/// own: on a host whose B1 moved by 10% from one minute to the next, the two ratios were
/// measured on different machines, so to speak.
fn measure_in_turns(
    options: &Options,
    cores: usize,
    servers: &[&Server],
    scenario: Scenario,
    base: Option<report::Baseline>,
) -> Vec<(Outcome, Measured)> {
    let drive = |server: &Server, scenario: Scenario, warmup: Duration, duration: Duration| {
        measure(server, warmup, |addr| {
            scenarios::closed_loop(addr, scenario, CONNECTIONS, warmup, duration)
        })
    };
    let Some(base) = base else {
        return servers
            .iter()
            .map(|server| drive(server, scenario, options.warmup(), options.duration()))
            .collect();
    };
    let slices = if options.smoke { 1 } else { SLICES };
    let (slice, warmup) = (
        options.duration() / slices as u32,
        options.warmup() / slices as u32,
    );
    let mut baselines = Vec::with_capacity(slices);
    let mut parts: Vec<Vec<(Outcome, Measured)>> =
        servers.iter().map(|_| Vec::with_capacity(slices)).collect();
    // Place 0 is the baseline's, place i the i-th server's. Each turn starts one place
    // further along (B S, S B, ...; or B G L, G L B, L B G, ...), so that a steady drift
    // favours none.
    let parties = servers.len() + 1;
    for turn in 0..slices {
        for place in 0..parties {
            match (turn + place) % parties {
                0 => baselines.push(match base {
                    report::Baseline::B1 => scenarios::rsa_baseline(cores, slice),
                    report::Baseline::B3 => scenarios::argon2_baseline(cores, slice),
                    report::Baseline::B2 => {
                        drive(servers[0], Scenario::Healthz, warmup, slice)
                            .1
                            .per_second
                    }
                }),
                server => {
                    parts[server - 1].push(drive(servers[server - 1], scenario, warmup, slice))
                }
            }
        }
    }
    let baseline = baselines.iter().sum::<f64>() / slices as f64;
    parts
        .into_iter()
        .map(|slices| {
            let (outcome, mut measured) = combine(slices);
            measured.baseline = baseline;
            (outcome, measured)
        })
        .collect()
}

/// One scenario's slices as one measurement: operations over the time of all of them, CPU
/// averaged over equal slices, the highest peak.
fn combine(parts: Vec<(Outcome, Measured)>) -> (Outcome, Measured) {
    let n = parts.len().max(1) as f64;
    let (outcomes, measurements): (Vec<Outcome>, Vec<Measured>) = parts.into_iter().unzip();
    let outcome = Outcome::merged(outcomes);
    let mut measured = Measured::default();
    for m in measurements {
        measured.server_cpu += m.server_cpu / n;
        measured.loadgen_cpu += m.loadgen_cpu / n;
        measured.database_cpu += m.database_cpu / n;
        measured.peak_rss_mib = measured.peak_rss_mib.max(m.peak_rss_mib);
    }
    measured.per_second = outcome.per_second();
    measured.p50_ms = outcome.percentile_ms(0.5);
    measured.p99_ms = outcome.percentile_ms(0.99);
    (outcome, measured)
}

/// Runs `drive` against `server` and adds what /proc says about both processes. CPU is
/// counted over the measured window only (after the lead and the warm-up), the window that
/// `per_second` counts operations in, so that CPU per operation is right.
fn measure(
    server: &Server,
    warmup: Duration,
    drive: impl FnOnce(std::net::SocketAddr) -> Outcome,
) -> (Outcome, Measured) {
    let pid = server.pid();
    let sample = move || CpuSample {
        server: server::process_cpu_seconds(&format!("/proc/{pid}/stat")),
        loadgen: server::process_cpu_seconds("/proc/self/stat"),
        database: server::postgres_cpu_seconds(),
        at: Instant::now(),
    };
    let window_start = Instant::now() + scenarios::LEAD + warmup;
    let sampler = std::thread::spawn(move || {
        std::thread::sleep(window_start.saturating_duration_since(Instant::now()));
        sample()
    });
    let outcome = drive(server.addr);
    let after = sample();
    let before = sampler.join().expect("the CPU sampler does not panic");
    let wall = after.at.duration_since(before.at).as_secs_f64().max(1e-3);
    let measured = Measured {
        per_second: outcome.per_second(),
        p50_ms: outcome.percentile_ms(0.5),
        p99_ms: outcome.percentile_ms(0.99),
        peak_rss_mib: server.rss_kib().1 as f64 / 1024.0,
        server_cpu: (after.server - before.server) / wall,
        loadgen_cpu: (after.loadgen - before.loadgen) / wall,
        database_cpu: (after.database - before.database) / wall,
        baseline: 0.0,
    };
    (outcome, measured)
}

struct CpuSample {
    server: f64,
    loadgen: f64,
    database: f64,
    at: Instant,
}

fn report_outcome(
    backend: &Backend,
    name: &str,
    outcome: &Outcome,
    measured: &Measured,
    failures: &mut Vec<String>,
) {
    // `--only --baselines` writes no report, so the line carries the ratio.
    let ratio = if measured.baseline > 0.0 {
        format!(
            "  baseline {:.0}/s  ratio {}",
            measured.baseline,
            report::ratio_text(measured.per_second / measured.baseline)
        )
    } else {
        String::new()
    };
    eprintln!(
        "  {:<10} {:<38} {:>9.1}/s  p50 {:>7.2} ms  p99 {:>7.2} ms  server {:.2} cores  loadgen {:.2} cores  PostgreSQL {:.2} cores  peak RSS {:.0} MiB{ratio}",
        backend.name(),
        name,
        measured.per_second,
        measured.p50_ms,
        measured.p99_ms,
        measured.server_cpu,
        measured.loadgen_cpu,
        measured.database_cpu,
        measured.peak_rss_mib
    );
    if outcome.errors > 0 || outcome.ops == 0 {
        failures.push(format!(
            "{} {name}: {} operations, {} errors; first: {}",
            backend.name(),
            outcome.ops,
            outcome.errors,
            outcome.first_error.as_deref().unwrap_or("none")
        ));
    }
}
