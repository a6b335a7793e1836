//! What each scenario does per operation, and the two ways of driving them: closed loop
//! (fixed connections, each sending as fast as answers come) and paced (a fixed rate,
//! latency counted from when each request was due, so a stall is not hidden).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use aws_lc_rs::digest;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;

use crate::client::{form, hidden_fields, Conn};
use crate::server::{PASSWORD, SECRET, USER};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scenario {
    Healthz,
    Jwks,
    Metadata,
    ClientCredentials,
    Refresh,
    AuthorizationCode,
    Password,
    Introspection,
    /// Not a target: /readyz is a database round trip behind the blocking pool and nothing
    /// else, the most any endpoint that consults the database per request can do.
    Readyz,
}

impl Scenario {
    pub const ALL: [Scenario; 9] = [
        Scenario::Healthz,
        Scenario::Jwks,
        Scenario::Metadata,
        Scenario::ClientCredentials,
        Scenario::Refresh,
        Scenario::AuthorizationCode,
        Scenario::Password,
        Scenario::Introspection,
        Scenario::Readyz,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Scenario::Healthz => "B2 /healthz",
            Scenario::Jwks => "JWKS",
            Scenario::Metadata => "metadata",
            Scenario::ClientCredentials => "client_credentials",
            Scenario::Refresh => "refresh rotation",
            Scenario::AuthorizationCode => "authorization-code flow",
            Scenario::Password => "password grant",
            Scenario::Introspection => "introspection",
            Scenario::Readyz => "/readyz (one database round trip)",
        }
    }
}

/// Per-connection state a scenario carries from one operation to the next.
#[derive(Default)]
pub struct State {
    refresh_token: String,
    access_token: String,
    counter: u64,
}

fn basic(client: &str) -> String {
    format!(
        "Authorization: Basic {}\r\n",
        STANDARD.encode(format!("{client}:{SECRET}"))
    )
}

fn expect(
    reply: std::io::Result<crate::client::Reply>,
    status: u16,
) -> Result<crate::client::Reply, String> {
    let reply = reply.map_err(|e| format!("I/O: {e}"))?;
    if reply.status != status {
        return Err(format!(
            "status {} (wanted {status}): {}",
            reply.status,
            reply.text()
        ));
    }
    Ok(reply)
}

fn password_grant(conn: &mut Conn) -> Result<crate::client::Reply, String> {
    let body = form(&[
        ("grant_type", "password"),
        ("username", USER),
        ("password", PASSWORD),
    ]);
    expect(conn.post_form("/token", &body, &basic("legacy")), 200)
}

const REDIRECT_URI: &str = "https://app.example.com/callback";

fn authorize_path(challenge: &str) -> String {
    format!(
        "/authorize?{}",
        form(&[
            ("response_type", "code"),
            ("client_id", "webapp"),
            ("redirect_uri", REDIRECT_URI),
            ("scope", "read"),
            ("state", "bench"),
            ("code_challenge", challenge),
            ("code_challenge_method", "S256"),
        ])
    )
}

fn pkce(seed: u64) -> (String, String) {
    let verifier = format!("bench-verifier-{seed:020}-0123456789abcdefghijkl");
    let challenge = URL_SAFE_NO_PAD.encode(digest::digest(&digest::SHA256, verifier.as_bytes()));
    (verifier, challenge)
}

/// Signs in (CSRF cookie, form, session cookie) and grants consent once, so that every
/// later authorization request goes straight to the redirect with a code.
fn sign_in_and_consent(conn: &mut Conn) -> Result<(), String> {
    let page = expect(conn.get("/login", ""), 200)?;
    conn.keep_cookies(&page);
    let csrf = hidden_fields(page.text())
        .into_iter()
        .find(|(name, _)| name == "csrf_token")
        .map(|(_, v)| v)
        .ok_or("no csrf_token on the login page")?;
    let body = form(&[
        ("username", USER),
        ("password", PASSWORD),
        ("csrf_token", &csrf),
        ("return_to", ""),
    ]);
    let signed_in = expect(conn.post_form("/login", &body, ""), 303)?;
    conn.keep_cookies(&signed_in);
    let (_, challenge) = pkce(0);
    let consent = conn
        .get(&authorize_path(&challenge), "")
        .map_err(|e| e.to_string())?;
    conn.keep_cookies(&consent);
    match consent.status {
        303 => Ok(()),
        200 => {
            let mut fields = hidden_fields(consent.text());
            fields.push(("decision".into(), "allow".into()));
            let pairs: Vec<(&str, &str)> = fields
                .iter()
                .map(|(n, v)| (n.as_str(), v.as_str()))
                .collect();
            expect(conn.post_form("/consent", &form(&pairs), ""), 303).map(|_| ())
        }
        other => Err(format!(
            "authorize during setup: {other}: {}",
            consent.text()
        )),
    }
}

pub fn setup(scenario: Scenario, conn: &mut Conn) -> Result<State, String> {
    let mut state = State::default();
    match scenario {
        Scenario::Refresh => {
            state.refresh_token = password_grant(conn)?
                .json_str("refresh_token")
                .ok_or("no refresh_token from the password grant")?;
        }
        Scenario::AuthorizationCode => sign_in_and_consent(conn)?,
        Scenario::Introspection => {
            let body = "grant_type=client_credentials";
            state.access_token = expect(conn.post_form("/token", body, &basic("service")), 200)?
                .json_str("access_token")
                .ok_or("no access_token")?;
        }
        _ => {}
    }
    Ok(state)
}

/// One operation; for the authorization-code flow that is an authorization request and
/// the redemption of its code.
pub fn step(scenario: Scenario, conn: &mut Conn, state: &mut State) -> Result<(), String> {
    match scenario {
        Scenario::Healthz => expect(conn.get("/healthz", ""), 200).map(drop),
        Scenario::Readyz => expect(conn.get("/readyz", ""), 200).map(drop),
        Scenario::Jwks => expect(conn.get("/.well-known/jwks.json", ""), 200).map(drop),
        Scenario::Metadata => {
            expect(conn.get("/.well-known/oauth-authorization-server", ""), 200).map(drop)
        }
        Scenario::ClientCredentials => expect(
            conn.post_form("/token", "grant_type=client_credentials", &basic("service")),
            200,
        )
        .map(drop),
        Scenario::Refresh => {
            let body = form(&[
                ("grant_type", "refresh_token"),
                ("refresh_token", &state.refresh_token),
            ]);
            let reply = expect(conn.post_form("/token", &body, &basic("legacy")), 200)?;
            state.refresh_token = reply.json_str("refresh_token").ok_or("no refresh_token")?;
            Ok(())
        }
        Scenario::AuthorizationCode => {
            state.counter += 1;
            let (verifier, challenge) = pkce(state.counter);
            let redirect = expect(conn.get(&authorize_path(&challenge), ""), 303)?;
            let location = redirect.header("location").ok_or("no Location")?;
            let url = url::Url::parse(location).map_err(|e| e.to_string())?;
            let code = url
                .query_pairs()
                .find(|(k, _)| k == "code")
                .map(|(_, v)| v.into_owned())
                .ok_or_else(|| format!("no code in {location}"))?;
            let body = form(&[
                ("grant_type", "authorization_code"),
                ("code", &code),
                ("redirect_uri", REDIRECT_URI),
                ("code_verifier", &verifier),
            ]);
            expect(conn.post_form("/token", &body, &basic("webapp")), 200).map(drop)
        }
        Scenario::Password => password_grant(conn).map(drop),
        Scenario::Introspection => {
            let body = form(&[("token", &state.access_token)]);
            let reply = expect(conn.post_form("/introspect", &body, &basic("service")), 200)?;
            if !reply.text().contains("\"active\":true") {
                return Err(format!("inactive: {}", reply.text()));
            }
            Ok(())
        }
    }
}

/// Operations completed in the measured window, their latencies, and failures.
#[derive(Default)]
pub struct Outcome {
    pub ops: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    pub seconds: f64,
    pub latencies_us: Vec<u32>,
}

impl Outcome {
    pub fn per_second(&self) -> f64 {
        self.ops as f64 / self.seconds
    }

    /// Several measurements of the same thing as one: operations over the time of all.
    pub fn merged(parts: impl IntoIterator<Item = Outcome>) -> Outcome {
        let mut outcome = Outcome::default();
        for part in parts {
            outcome.ops += part.ops;
            outcome.errors += part.errors;
            outcome.seconds += part.seconds;
            outcome.first_error = outcome.first_error.or(part.first_error);
            outcome.latencies_us.extend(part.latencies_us);
        }
        outcome
    }

    pub fn percentile_ms(&self, p: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return 0.0;
        }
        let mut sorted = self.latencies_us.clone();
        sorted.sort_unstable();
        let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
        f64::from(sorted[index]) / 1000.0
    }
}

/// `connections` threads, each with its own keep-alive connection, send as fast as answers
/// come; only operations started after `warmup` are counted.
pub fn closed_loop(
    addr: SocketAddr,
    scenario: Scenario,
    connections: usize,
    warmup: Duration,
    duration: Duration,
) -> Outcome {
    run(addr, scenario, connections, warmup, duration, None)
}

/// Sends `rate` operations per second in total, spread over `connections`; latency counts
/// from when each operation was due.
pub fn paced(
    addr: SocketAddr,
    scenario: Scenario,
    connections: usize,
    rate: f64,
    warmup: Duration,
    duration: Duration,
) -> Outcome {
    run(addr, scenario, connections, warmup, duration, Some(rate))
}

/// Time for the connections to open and each scenario's setup before the clock starts: 8
/// sign-ins (argon2) for the refresh and authorization-code scenarios fit with room to spare
/// on 2 cores; each of a scenario's slices opens its connections again.
pub const LEAD: Duration = Duration::from_millis(500);

fn run(
    addr: SocketAddr,
    scenario: Scenario,
    connections: usize,
    warmup: Duration,
    duration: Duration,
    rate: Option<f64>,
) -> Outcome {
    let errors = AtomicU64::new(0);
    let begin = Instant::now() + LEAD;
    let measure_from = begin + warmup;
    let end = measure_from + duration;
    let results: Vec<(Vec<u32>, Option<String>)> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..connections)
            .map(|worker| {
                let errors = &errors;
                scope.spawn(move || {
                    let mut latencies = Vec::with_capacity(64 * 1024);
                    let mut first_error = None;
                    let fail = |e: String, first_error: &mut Option<String>| {
                        errors.fetch_add(1, Ordering::Relaxed);
                        first_error.get_or_insert(e);
                    };
                    let mut conn = match Conn::open(addr) {
                        Ok(conn) => conn,
                        Err(e) => {
                            fail(format!("connect: {e}"), &mut first_error);
                            return (latencies, first_error);
                        }
                    };
                    let mut state = match setup(scenario, &mut conn) {
                        Ok(state) => state,
                        Err(e) => {
                            fail(format!("setup: {e}"), &mut first_error);
                            return (latencies, first_error);
                        }
                    };
                    // A setup that ends after the warm-up (8 sign-ins, each an argon2 hash,
                    // on a slow machine) costs this connection measured time: say so.
                    let late = Instant::now().saturating_duration_since(measure_from);
                    if !late.is_zero() {
                        eprintln!(
                            "  warning: a connection's setup ended {} ms into the measured window",
                            late.as_millis()
                        );
                    }
                    // Paced workers start staggered so the total rate is even.
                    let interval = rate.map(|r| Duration::from_secs_f64(connections as f64 / r));
                    let mut due = begin
                        + interval.map_or(Duration::ZERO, |i| {
                            i.mul_f64(worker as f64 / connections as f64)
                        });
                    while Instant::now() < begin {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    loop {
                        if interval.is_some() {
                            let now = Instant::now();
                            if due > now {
                                std::thread::sleep(due - now);
                            }
                        } else {
                            due = Instant::now();
                        }
                        if due >= end {
                            break;
                        }
                        let result = step(scenario, &mut conn, &mut state);
                        let done = Instant::now();
                        if due >= measure_from {
                            match result {
                                Ok(()) => latencies.push(
                                    u32::try_from(done.duration_since(due).as_micros())
                                        .unwrap_or(u32::MAX),
                                ),
                                Err(e) => fail(e, &mut first_error),
                            }
                        } else if let Err(e) = result {
                            fail(e, &mut first_error);
                        }
                        if let Some(interval) = interval {
                            due += interval;
                        }
                    }
                    (latencies, first_error)
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| {
                w.join()
                    .unwrap_or_else(|_| (Vec::new(), Some("worker panicked".into())))
            })
            .collect()
    });
    let mut latencies_us = Vec::new();
    let mut first_error = None;
    for (mut l, e) in results {
        latencies_us.append(&mut l);
        if first_error.is_none() {
            first_error = e;
        }
    }
    Outcome {
        ops: latencies_us.len() as u64,
        errors: errors.into_inner(),
        first_error,
        seconds: duration.as_secs_f64(),
        latencies_us,
    }
}

/// How many times a second `threads` threads together complete an operation, each running
/// its own (made by `make`, so that it may keep state) flat out for `duration`.
pub fn per_second_on_every_core<Op: FnMut()>(
    threads: usize,
    duration: Duration,
    make: impl Fn() -> Op + Sync,
) -> f64 {
    let total = AtomicU64::new(0);
    let started = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                let mut operation = make();
                let end = Instant::now() + duration;
                let mut n = 0u64;
                while Instant::now() < end {
                    operation();
                    n += 1;
                }
                total.fetch_add(n, Ordering::Relaxed);
            });
        }
    });
    // The last operation of each thread ends after `duration`: divided by `duration`, an
    // argon2 baseline over 1 s slices read about 1% high.
    total.into_inner() as f64 / started.elapsed().as_secs_f64()
}

/// B1: raw RS256 signatures per second on every core, with the key size gatehouse uses and
/// its library (aws-lc-rs, key pair parsed once), over a payload the size of an access
/// token's signing input.
pub fn rsa_baseline(threads: usize, duration: Duration) -> f64 {
    use aws_lc_rs::rand::SystemRandom;
    use aws_lc_rs::rsa::KeySize;
    use aws_lc_rs::signature::{RsaKeyPair, RSA_PKCS1_SHA256};
    let key = RsaKeyPair::generate(KeySize::Rsa2048).expect("generate an RSA key");
    let message = vec![b'x'; 420];
    per_second_on_every_core(threads, duration, || {
        let rng = SystemRandom::new();
        let mut signature = vec![0u8; key.public_modulus_len()];
        let (key, message) = (&key, &message);
        move || {
            key.sign(&RSA_PKCS1_SHA256, &rng, message, &mut signature)
                .expect("sign")
        }
    })
}

/// B3: argon2id verifications per second on every core with gatehouse's parameters and
/// code (`crypto::password::verify`).
pub fn argon2_baseline(threads: usize, duration: Duration) -> f64 {
    let hash = gatehouse::crypto::password::hash(PASSWORD);
    per_second_on_every_core(threads, duration, || {
        || assert!(gatehouse::crypto::password::verify(PASSWORD, &hash))
    })
}
