//! Shared test support: a fresh database per test (a SQLite file or a PostgreSQL database
//! that is dropped afterwards), the real `gatehouse` binary started on a random port, and
//! small HTTP helpers.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use diesel::{Connection, PgConnection, RunQueryDsl};

#[path = "../../shared/orphaned_databases.rs"]
mod orphaned_databases;
#[path = "../../shared/prometheus_text.rs"]
mod prometheus_text;
pub use prometheus_text::sample;

pub const BIN: &str = env!("CARGO_BIN_EXE_gatehouse");
pub const SYSTEM_SECRET: &str = "test-system-secret-0123456789abcdef0123456789";
const START_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Generates `mod name { sqlite, postgres }` tests calling `name(TestDb)` on each backend.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[test]
                fn sqlite() {
                    let db = $crate::support::TestDb::create($crate::support::Backend::Sqlite)
                        .expect("SQLite is always available");
                    super::$name(db);
                }

                #[test]
                fn postgres() {
                    if let Some(db) = $crate::support::TestDb::create($crate::support::Backend::Postgres) {
                        super::$name(db);
                    }
                }
            }
        )*
    };
}

pub fn postgres_admin_url() -> String {
    std::env::var("GATEHOUSE_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// A test database is this, the test process's id and a UUID: a run stopped before its
/// tests dropped their databases (Ctrl-C) leaves them to the next run to drop.
const TEST_DATABASE_PREFIX: &str = "gatehouse_test_";

/// CI sets this so that a missing PostgreSQL fails the run instead of skipping.
pub fn postgres_required() -> bool {
    std::env::var("GATEHOUSE_REQUIRE_POSTGRES").is_ok_and(|v| v == "1" || v == "true")
}

/// Written straight to the process's stderr: libtest captures `eprintln!` of passing tests,
/// and a skip must be seen.
fn announce_skip(reason: &str) {
    let message = format!(
        "\n*** POSTGRESQL TESTS SKIPPED: {reason}\n*** (start PostgreSQL at 127.0.0.1:5432 or set GATEHOUSE_TEST_POSTGRES_URL; \
         set GATEHOUSE_REQUIRE_POSTGRES=1 to make this a failure)\n"
    );
    let _ = std::io::stderr().lock().write_all(message.as_bytes());
}

/// SQLite's write lock, held from another connection as a backup or a hand-run `sqlite3`
/// session would hold it, until dropped. The connection is set up as the server's are, so
/// its busy timeout waits out a write the server is making (an audit batch, a checkpoint),
/// as `sqlite3` or a backup would, instead of failing at once.
pub struct SqliteWriteLock(gatehouse::storage::DbConnection);

impl SqliteWriteLock {
    pub fn take(db: &TestDb) -> SqliteWriteLock {
        use diesel::connection::SimpleConnection;
        let mut conn = db.connect();
        assert!(
            matches!(conn, gatehouse::storage::DbConnection::Sqlite(_)),
            "a SQLite database"
        );
        conn.batch_execute("BEGIN EXCLUSIVE").unwrap();
        SqliteWriteLock(conn)
    }
}

impl Drop for SqliteWriteLock {
    fn drop(&mut self) {
        use diesel::connection::SimpleConnection;
        let _ = self.0.batch_execute("COMMIT");
    }
}

/// One test's database, removed when dropped.
pub struct TestDb {
    pub url: String,
    pub dir: tempfile::TempDir,
    pg_database: Option<String>,
}

impl TestDb {
    /// `None` when PostgreSQL is unreachable and not required (the skip is announced).
    pub fn create(backend: Backend) -> Option<TestDb> {
        let dir = tempfile::tempdir().expect("temporary directory");
        match backend {
            Backend::Sqlite => Some(TestDb {
                url: format!(
                    "sqlite://{}",
                    dir.path().join("data/gatehouse.db").display()
                ),
                dir,
                pg_database: None,
            }),
            Backend::Postgres => {
                let admin_url = postgres_admin_url();
                let mut admin = match PgConnection::establish(&admin_url) {
                    Ok(conn) => conn,
                    Err(e) if !postgres_required() => {
                        announce_skip(&format!("cannot connect to {admin_url}: {e}"));
                        return None;
                    }
                    Err(e) => panic!("PostgreSQL is required (GATEHOUSE_REQUIRE_POSTGRES) but {admin_url} is unreachable: {e}"),
                };
                static SWEEP: std::sync::Once = std::sync::Once::new();
                SWEEP.call_once(|| {
                    orphaned_databases::drop_orphaned_databases(&mut admin, TEST_DATABASE_PREFIX);
                });
                let name = format!(
                    "{TEST_DATABASE_PREFIX}{}_{}",
                    std::process::id(),
                    uuid::Uuid::new_v4().simple()
                );
                diesel::sql_query(format!("CREATE DATABASE {name}"))
                    .execute(&mut admin)
                    .expect("create the test database");
                let mut url = url::Url::parse(&admin_url).expect("admin url");
                url.set_path(&name);
                Some(TestDb {
                    url: url.to_string(),
                    dir,
                    pg_database: Some(name),
                })
            }
        }
    }

    /// Makes the database unreachable: PostgreSQL drops it, closing every connection.
    pub fn destroy(&mut self) {
        if let Some(name) = self.pg_database.take() {
            drop_pg_database(&name);
        }
    }

    pub fn connect(&self) -> gatehouse::storage::DbConnection {
        gatehouse::storage::ConnectionManager::new(&self.url)
            .expect("database url")
            .connect()
            .expect("connect to the test database")
    }
}

fn drop_pg_database(name: &str) {
    if let Ok(mut admin) = PgConnection::establish(&postgres_admin_url()) {
        let _ = diesel::sql_query(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .execute(&mut admin);
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        self.destroy();
    }
}

/// The configuration a test server runs with; `extra` is appended TOML.
pub fn write_config(db: &TestDb, name: &str, extra: &str) -> PathBuf {
    write_config_full(db, name, "", DEFAULT_LOG_LEVEL, extra)
}

const DEFAULT_LOG_LEVEL: &str = "info,gatehouse=debug";

/// As `write_config`, with `server` lines added to the `[server]` table and an issuer
/// given by `issuer = ...` in them replacing the default.
pub fn write_config_with(db: &TestDb, name: &str, server: &str, extra: &str) -> PathBuf {
    write_config_full(db, name, server, DEFAULT_LOG_LEVEL, extra)
}

pub fn write_config_full(
    db: &TestDb,
    name: &str,
    server: &str,
    log_level: &str,
    extra: &str,
) -> PathBuf {
    let path = db.dir.path().join(name);
    let (issuer, server): (Vec<&str>, Vec<&str>) = server
        .lines()
        .partition(|l| l.trim_start().starts_with("issuer"));
    let issuer = issuer
        .first()
        .copied()
        .unwrap_or("issuer = \"http://127.0.0.1:8080\"");
    let server = server.join("\n");
    let text = format!(
        r#"
{issuer}

[server]
bind = "127.0.0.1:0"
workers = 1
{server}

[database]
url = "{url}"
pool_size = 4

[secrets]
system = "{SYSTEM_SECRET}"

[keys]
refresh_interval = "1s"

[log]
format = "json"
level = "{log_level}"

{extra}
"#,
        url = db.url,
    );
    std::fs::write(&path, text).expect("write config");
    path
}

/// A `gatehouse` command in `dir`, with no GATEHOUSE* variables and no `RUST_LOG` inherited
/// from the caller: a test that reads the log sets the filter it needs.
pub fn gatehouse(dir: &Path) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.current_dir(dir).env_remove("RUST_LOG");
    for (key, _) in std::env::vars() {
        if key.starts_with("GATEHOUSE") {
            cmd.env_remove(key);
        }
    }
    cmd
}

pub fn run_cli(db: &TestDb, config: &Path, args: &[&str]) -> Output {
    gatehouse(db.dir.path())
        .arg("--config")
        .arg(config)
        .args(args)
        .output()
        .expect("run gatehouse")
}

/// Runs `cmd` with `input` on its standard input.
pub fn output_with_stdin(mut cmd: Command, input: &str) -> Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn gatehouse");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes())
        .expect("write stdin");
    child.wait_with_output().expect("wait for gatehouse")
}

pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// A running `gatehouse serve`, killed when dropped. Its JSON log lines (stdout) and its
/// standard error are kept.
pub struct TestServer {
    child: Child,
    pub base_url: String,
    logs: Arc<Mutex<Vec<String>>>,
    /// Reads stdout until the server closes it.
    logs_reader: Option<std::thread::JoinHandle<()>>,
    stderr: Arc<Mutex<Vec<String>>>,
}

/// Collects the lines `source` writes, until it closes.
fn collect_lines(
    source: impl std::io::Read + Send + 'static,
    sink: Arc<Mutex<Vec<String>>>,
    mut on_line: impl FnMut(&str) + Send + 'static,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        for line in BufReader::new(source).lines().map_while(Result::ok) {
            on_line(&line);
            sink.lock().expect("log lock").push(line);
        }
    })
}

impl TestServer {
    pub fn start(db: &TestDb, config: &Path) -> TestServer {
        TestServer::try_start(db, config).unwrap_or_else(|e| panic!("server did not start: {e}"))
    }

    /// Starts the server with extra environment variables (e.g. `RUST_LOG`).
    pub fn start_with_env(db: &TestDb, config: &Path, env: &[(&str, &str)]) -> TestServer {
        TestServer::try_start_with_env(db, config, env)
            .unwrap_or_else(|e| panic!("server did not start: {e}"))
    }

    /// Starts the server and waits for its `listening` log line; on failure returns what
    /// the process wrote to stderr.
    pub fn try_start(db: &TestDb, config: &Path) -> Result<TestServer, String> {
        TestServer::try_start_with_env(db, config, &[])
    }

    pub fn try_start_with_env(
        db: &TestDb,
        config: &Path,
        env: &[(&str, &str)],
    ) -> Result<TestServer, String> {
        let mut command = gatehouse(db.dir.path());
        command
            .arg("--config")
            .arg(config)
            .arg("serve")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (key, value) in env {
            command.env(key, value);
        }
        let mut child = command.spawn().expect("spawn gatehouse");
        let logs = Arc::new(Mutex::new(Vec::new()));
        let stderr_lines = Arc::new(Mutex::new(Vec::new()));
        let (addr_tx, addr_rx) = mpsc::channel();
        let logs_reader = collect_lines(
            child.stdout.take().expect("stdout"),
            Arc::clone(&logs),
            move |line| {
                if let Ok(event) = serde_json::from_str::<serde_json::Value>(line) {
                    if event["message"] == "listening" {
                        let scheme = event["scheme"].as_str().unwrap_or("http");
                        let addr = event["addr"].as_str().unwrap_or_default();
                        let _ = addr_tx.send(format!("{scheme}://{addr}"));
                    }
                }
            },
        );
        // Read so that a chatty stderr can never fill its pipe and stall the server.
        let stderr_reader = collect_lines(
            child.stderr.take().expect("stderr"),
            Arc::clone(&stderr_lines),
            |_| {},
        );
        match addr_rx.recv_timeout(START_TIMEOUT) {
            Ok(base_url) => Ok(TestServer {
                child,
                base_url,
                logs,
                logs_reader: Some(logs_reader),
                stderr: stderr_lines,
            }),
            Err(_) => {
                let _ = child.kill();
                let status = child.wait().expect("wait for gatehouse");
                let _ = stderr_reader.join();
                let text = stderr_lines.lock().expect("log lock").join("\n");
                Err(format!("status {status:?}, stderr:\n{text}"))
            }
        }
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The address the server listens on, `IP:PORT`.
    pub fn addr(&self) -> &str {
        self.base_url.trim_start_matches("http://")
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base_url, path)
    }

    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().expect("log lock").clone()
    }

    /// Stops the server as an orchestrator does, with SIGTERM, and returns every line it
    /// logged, once it has exited and closed its stdout.
    pub fn stop(&mut self) -> Vec<String> {
        let pid = i32::try_from(self.child.id()).expect("a pid fits an i32");
        // SAFETY: kill(2) with a pid this test started and has not reaped; no memory is shared.
        let sent = unsafe { libc::kill(pid, libc::SIGTERM) };
        assert_eq!(sent, 0, "kill: {}", std::io::Error::last_os_error());
        let status = eventually(Duration::from_secs(30), || {
            self.child.try_wait().ok().flatten()
        })
        .expect("the server exits within 30 s of SIGTERM");
        assert!(status.success(), "the server stopped with {status}");
        if let Some(reader) = self.logs_reader.take() {
            reader.join().expect("the log reader");
        }
        self.logs()
    }

    /// What the server wrote to its standard error so far (panics land here).
    pub fn stderr_lines(&self) -> Vec<String> {
        self.stderr.lock().expect("log lock").clone()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `attempt(n)` for n in 0..racers from as many threads at once; their results, in n
/// order.
pub fn race<T: Send>(racers: usize, attempt: impl Fn(usize) -> T + Sync) -> Vec<T> {
    std::thread::scope(|s| {
        let attempt = &attempt;
        let threads: Vec<_> = (0..racers).map(|n| s.spawn(move || attempt(n))).collect();
        threads.into_iter().map(|t| t.join().unwrap()).collect()
    })
}

/// An HTTP client that reports every status instead of turning 4xx/5xx into errors.
pub fn http() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into()
}

pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Response {
    pub fn from_ureq(mut response: ureq::http::Response<ureq::Body>) -> Response {
        let status = response.status().as_u16();
        let headers = response
            .headers()
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_owned(),
                    v.to_str().unwrap_or_default().to_owned(),
                )
            })
            .collect();
        let body = response.body_mut().read_to_string().unwrap_or_default();
        Response {
            status,
            headers,
            body,
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

pub fn get(url: &str, headers: &[(&str, &str)]) -> Response {
    let mut request = http().get(url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    Response::from_ureq(request.call().unwrap_or_else(|e| panic!("GET {url}: {e}")))
}

/// Polls `check` until it returns `Some`, for at most `limit`.
pub fn eventually<T>(limit: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = check() {
            return Some(value);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

mod browser;
mod oauth;
mod raw;

pub use browser::*;
pub use oauth::*;
pub use raw::*;
