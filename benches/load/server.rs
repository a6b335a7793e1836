//! The gatehouse under test: a release binary started on a fresh port against a prepared
//! database, observed through /proc (CPU time, resident memory); and, the same way, the
//! least server (see `least_server`).

use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_gatehouse");
pub const USER: &str = "bench";
pub const PASSWORD: &str = "bench password 0123";
pub const SECRET: &str = "bench-client-secret-0123456789";
const SYSTEM_SECRET: &str = "bench-system-secret-0123456789abcdef0123456789";
/// A run's database is this and its process id.
const BENCH_DATABASE_PREFIX: &str = "gatehouse_bench_";

#[path = "../../tests/shared/orphaned_databases.rs"]
mod orphaned_databases;
#[path = "../../tests/shared/prometheus_text.rs"]
pub mod prometheus_text;

#[derive(Clone, Debug)]
pub enum Backend {
    Sqlite,
    Postgres { admin_url: String },
}

impl Backend {
    pub fn name(&self) -> &'static str {
        match self {
            Backend::Sqlite => "SQLite",
            Backend::Postgres { .. } => "PostgreSQL",
        }
    }
}

/// A directory with the configuration and (for SQLite) the database; a PostgreSQL
/// database is dropped when this is.
pub struct Workspace {
    dir: tempfile::TempDir,
    config: PathBuf,
    url: String,
    pg: Option<(String, String)>,
    /// Settings given to every gatehouse process (`--server-env`).
    env: Vec<(String, String)>,
}

/// gatehouse's SQLite file in the workspace, and the least server's copy of it.
const SQLITE_FILE: &str = "gatehouse.db";
const LEAST_SQLITE_FILE: &str = "least.db";

fn sqlite_url(file: &Path) -> String {
    format!("sqlite://{}", file.display())
}

impl Workspace {
    pub fn create(
        backend: &Backend,
        port: u16,
        env: &[(String, String)],
    ) -> Result<Workspace, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let (url, pg) = match backend {
            Backend::Sqlite => (sqlite_url(&dir.path().join(SQLITE_FILE)), None),
            Backend::Postgres { admin_url } => {
                let name = format!("{BENCH_DATABASE_PREFIX}{}", std::process::id());
                postgres_admin(
                    admin_url,
                    &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
                )?;
                postgres_admin(admin_url, &format!("CREATE DATABASE {name}"))?;
                let mut url = url::Url::parse(admin_url).map_err(|e| e.to_string())?;
                url.set_path(&name);
                (url.to_string(), Some((admin_url.clone(), name)))
            }
        };
        let config = dir.path().join("gatehouse.toml");
        std::fs::write(&config, config_text(&url, port)).map_err(|e| e.to_string())?;
        let workspace = Workspace {
            dir,
            config,
            url,
            pg,
            env: env.to_vec(),
        };
        workspace.cli(&["migrate"], None)?;
        workspace.cli(&["users", "add", USER, "--password-stdin"], Some(PASSWORD))?;
        // The least server takes turns with gatehouse while both run. On one SQLite file
        // the idle one's timed WAL checkpoints would take the log's locks under the other's
        // writes (SQLite's busy handler, not gatehouse's writer gate, which is per process)
        // and copy its log on CPU not counted as its own; so it gets a file of its own, with
        // the same user. No process has the file open here (the CLI verbs have exited), so
        // the copy is whole.
        if workspace.pg.is_none() {
            for suffix in ["", "-wal"] {
                let from = workspace.path().join(format!("{SQLITE_FILE}{suffix}"));
                if from.exists() {
                    let to = workspace
                        .path()
                        .join(format!("{LEAST_SQLITE_FILE}{suffix}"));
                    std::fs::copy(&from, to).map_err(|e| e.to_string())?;
                }
            }
        }
        Ok(workspace)
    }

    pub fn cli(&self, args: &[&str], stdin: Option<&str>) -> Result<String, String> {
        let mut child = self
            .command()
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| e.to_string())?;
        if let Some(input) = stdin {
            let _ = child
                .stdin
                .take()
                .map(|mut s| s.write_all(format!("{input}\n").as_bytes()));
        }
        let output = child.wait_with_output().map_err(|e| e.to_string())?;
        if !output.status.success() {
            return Err(format!(
                "gatehouse {args:?}: {}",
                String::from_utf8_lossy(&output.stderr)
            ));
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    fn command(&self) -> Command {
        self.command_under(&[])
    }

    /// The binary's command, run by `wrapper` (a program and its arguments) when one is
    /// given, e.g. valgrind. `GATEHOUSE_BENCH_BIN` names another build to measure.
    fn command_under(&self, wrapper: &[String]) -> Command {
        let binary = std::env::var("GATEHOUSE_BENCH_BIN").unwrap_or_else(|_| BIN.to_owned());
        let mut cmd = wrapped(wrapper, binary);
        cmd.current_dir(self.dir.path())
            .arg("--config")
            .arg(&self.config);
        for (key, _) in std::env::vars() {
            if key.starts_with("GATEHOUSE") {
                cmd.env_remove(key);
            }
        }
        cmd.envs(self.env.iter().map(|(key, value)| (key, value)));
        cmd
    }

    /// The database's URL, as the server's configuration gives it.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The least server's database: on SQLite its copy of gatehouse's, made by `create`
    /// before either server ran; on PostgreSQL gatehouse's own (an idle pool does nothing).
    pub fn least_url(&self) -> String {
        match self.pg {
            Some(_) => self.url.clone(),
            None => sqlite_url(&self.path().join(LEAST_SQLITE_FILE)),
        }
    }

    /// gatehouse's config file, which a measurement may rewrite (and must put back).
    pub fn config(&self) -> &Path {
        &self.config
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Workspace {
    fn drop(&mut self) {
        if let Some((admin_url, name)) = &self.pg {
            let _ = postgres_admin(
                admin_url,
                &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
            );
        }
    }
}

/// `program` as its own command, or as the argument of `wrapper` (a profiler, say) when
/// one is given.
fn wrapped(wrapper: &[String], program: impl AsRef<std::ffi::OsStr>) -> Command {
    match wrapper.split_first() {
        Some((wrapping, args)) => {
            let mut cmd = Command::new(wrapping);
            cmd.args(args).arg(program);
            cmd
        }
        None => Command::new(program),
    }
}

/// Drops the databases of earlier runs that were killed before they could drop their own.
pub fn drop_orphaned_databases(admin_url: &str) {
    use diesel::Connection;
    let Ok(mut conn) = diesel::PgConnection::establish(admin_url) else {
        return;
    };
    for name in orphaned_databases::drop_orphaned_databases(&mut conn, BENCH_DATABASE_PREFIX) {
        eprintln!("dropped {name}, left by a run that was killed");
    }
}

fn postgres_admin(admin_url: &str, sql: &str) -> Result<(), String> {
    use diesel::{Connection, RunQueryDsl};
    let mut conn = diesel::PgConnection::establish(admin_url).map_err(|e| e.to_string())?;
    diesel::sql_query(sql)
        .execute(&mut conn)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

pub fn postgres_reachable(admin_url: &str) -> bool {
    use diesel::Connection;
    diesel::PgConnection::establish(admin_url).is_ok()
}

/// The server's version and the settings that weigh on a write's cost, for the report:
/// a reader comparing figures needs to know, say, that autovacuum was off on this machine.
pub fn postgres_settings(admin_url: &str) -> Option<String> {
    use diesel::{Connection, QueryableByName, RunQueryDsl};
    #[derive(QueryableByName)]
    struct Settings {
        #[diesel(sql_type = diesel::sql_types::Text)]
        settings: String,
    }
    let mut conn = diesel::PgConnection::establish(admin_url).ok()?;
    let query = "SELECT concat_ws(', ', \
         'PostgreSQL ' || current_setting('server_version'), \
         'autovacuum ' || current_setting('autovacuum'), \
         'fsync ' || current_setting('fsync'), \
         'synchronous_commit ' || current_setting('synchronous_commit'), \
         'wal_sync_method ' || current_setting('wal_sync_method'), \
         'shared_buffers ' || current_setting('shared_buffers'), \
         'max_wal_size ' || current_setting('max_wal_size')) AS settings";
    let found: Settings = diesel::sql_query(query).get_result(&mut conn).ok()?;
    Some(found.settings)
}

/// A free port on loopback (the server binds it right after).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(18080)
}

/// The defaults, plus the clients the scenarios use, with limits out of the way: the
/// benchmark measures throughput, not the rate limiter.
fn config_text(url: &str, port: u16) -> String {
    let hash = gatehouse::crypto::password::hash(SECRET);
    format!(
        r#"
issuer = "http://127.0.0.1:{port}"

[server]
bind = "127.0.0.1:{port}"

[database]
url = "{url}"

[secrets]
system = "{SYSTEM_SECRET}"

[tokens]
audience = ["https://api.example.com"]

[limits]
client_requests_per_second = 100000000
client_burst = 100000000
failures_per_username = 100000000
failures_per_ip = 100000000

[log]
format = "json"
level = "info"

[[clients]]
id = "service"
secret_hash = "{hash}"
grant_types = ["client_credentials"]
scopes = ["read", "write"]
default_scopes = ["read"]

[[clients]]
id = "legacy"
secret_hash = "{hash}"
grant_types = ["password", "refresh_token"]
scopes = ["read", "write"]
default_scopes = ["read"]

[[clients]]
id = "webapp"
name = "Bench Web App"
secret_hash = "{hash}"
redirect_uris = ["https://app.example.com/callback"]
grant_types = ["authorization_code", "refresh_token"]
scopes = ["read", "write"]
default_scopes = ["read"]
"#
    )
}

pub struct Server {
    child: Child,
    pub addr: SocketAddr,
    /// From spawning the process to the first 200 from /healthz.
    pub ready_after: Duration,
}

impl Server {
    pub fn start(workspace: &Workspace, port: u16) -> Result<Server, String> {
        Server::start_under(workspace, port, &[])
    }

    /// `start`, with the server run by `wrapper` (see `Workspace::command_under`).
    pub fn start_under(
        workspace: &Workspace,
        port: u16,
        wrapper: &[String],
    ) -> Result<Server, String> {
        let log = std::fs::File::create(workspace.path().join("server.log"))
            .map_err(|e| e.to_string())?;
        let mut command = workspace.command_under(wrapper);
        command.arg("serve").stdout(log).stderr(Stdio::null());
        Server::spawn("gatehouse", command, port)
    }

    /// The least server (see `least_server`) on the workspace's database.
    pub fn start_least(workspace: &Workspace, port: u16) -> Result<Server, String> {
        Server::start_least_under(workspace, port, &[])
    }

    /// `start_least`, with the least server run by `wrapper`.
    pub fn start_least_under(
        workspace: &Workspace,
        port: u16,
        wrapper: &[String],
    ) -> Result<Server, String> {
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let mut command = wrapped(wrapper, exe);
        command
            .arg(crate::least_server::FLAG)
            .arg(workspace.least_url())
            .arg(port.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        Server::spawn("the least server", command, port)
    }

    /// Starts `command` and waits for its first 200 from /healthz.
    fn spawn(name: &str, mut command: Command, port: u16) -> Result<Server, String> {
        let started = Instant::now();
        let child = command.spawn().map_err(|e| e.to_string())?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let mut server = Server {
            child,
            addr,
            ready_after: Duration::ZERO,
        };
        loop {
            if let Ok(mut conn) = super::client::Conn::open(addr) {
                if conn.get("/healthz", "").is_ok_and(|r| r.status == 200) {
                    server.ready_after = started.elapsed();
                    return Ok(server);
                }
            }
            if started.elapsed() > Duration::from_secs(30) {
                return Err(format!("{name} did not become ready within 30 s"));
            }
            if let Ok(Some(status)) = server.child.try_wait() {
                return Err(format!("{name} exited: {status}"));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident memory now and at its peak, in KiB.
    pub fn rss_kib(&self) -> (u64, u64) {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
                .unwrap_or(0)
        };
        (field("VmRSS:"), field("VmHWM:"))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// User plus system CPU time of every PostgreSQL process on this machine (the postmaster,
/// its helpers and the server's backends): PostgreSQL shares the cores with gatehouse and
/// the load generator, so what it spends is what the grants cannot.
pub fn postgres_cpu_seconds() -> f64 {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0.0;
    };
    entries
        .filter_map(Result::ok)
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .map(|e| e.path().join("stat"))
        .filter(|stat| std::fs::read_to_string(stat).is_ok_and(|line| line.contains("(postgres)")))
        .map(|stat| process_cpu_seconds(&stat.to_string_lossy()))
        .sum()
}

/// User plus system CPU time of a process, from /proc/PID/stat (clock ticks of 1/100 s).
pub fn process_cpu_seconds(stat_path: &str) -> f64 {
    let stat = std::fs::read_to_string(stat_path).unwrap_or_default();
    // The command name may hold spaces; fields are counted after its closing parenthesis.
    let after = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    (ticks(11) + ticks(12)) / 100.0
}
