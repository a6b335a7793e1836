//! `cargo bench --bench load -- --instructions --only NAME [--ops N] [--sqlite-only]`:
//! instructions the server executes per operation, counted by valgrind's callgrind.
//!
//! This host's throughput moves by up to ±20% between adjacent runs, which hides any change
//! smaller than that; an instruction count of the same operations repeats to within a
//! fraction of a percent. It counts gatehouse's own user-space work only (not the kernel,
//! PostgreSQL or waiting), and under valgrind aws-lc takes its AVX2 path instead of
//! AVX-512, so RSA weighs differently than on the real CPU: it ranks two builds of a change
//! to gatehouse's own work (`GATEHOUSE_BENCH_BIN=PATH` names the other build), and does
//! not replace the throughput run. For the scenarios the least server serves it counts
//! that server too: the difference is the work gatehouse does beyond the least, measured
//! the same way on any host.

use std::process::Command;

use crate::client::Conn;
use crate::scenarios::{self, Scenario};
use crate::server::{self, Backend, Server, Workspace};

const CONNECTIONS: usize = 4;
const WARMUP_OPS: usize = 200;

/// Counts `ops` operations of `scenario` on `backend` and prints the count per operation:
/// gatehouse's, then the least server's where it serves the scenario, so that the two
/// counts say how much of an operation's work is gatehouse's own. `env` holds settings for
/// gatehouse (`--server-env`).
pub fn count(
    backend: &Backend,
    scenario: Scenario,
    ops: usize,
    env: &[(String, String)],
) -> Result<(), String> {
    count_server(backend, env, scenario, ops, Server::start_under, "")?;
    if crate::least_server::SCENARIOS.contains(&scenario) {
        count_server(
            backend,
            env,
            scenario,
            ops,
            Server::start_least_under,
            " (least server)",
        )?;
    }
    Ok(())
}

type Start = fn(&Workspace, u16, &[String]) -> Result<Server, String>;

fn count_server(
    backend: &Backend,
    env: &[(String, String)],
    scenario: Scenario,
    ops: usize,
    start: Start,
    label: &str,
) -> Result<(), String> {
    let port = server::free_port();
    let workspace = Workspace::create(backend, port, env)?;
    let profile = workspace.path().join("callgrind.out");
    let valgrind = vec![
        "valgrind".to_owned(),
        "--tool=callgrind".to_owned(),
        "--quiet".to_owned(),
        format!("--callgrind-out-file={}", profile.display()),
    ];
    let server =
        start(&workspace, port, &valgrind).map_err(|e| format!("{e} (is valgrind installed?)"))?;
    let mut connections = (0..CONNECTIONS)
        .map(|_| {
            let mut conn = Conn::open(server.addr).map_err(|e| e.to_string())?;
            let state = scenarios::setup(scenario, &mut conn)?;
            Ok((conn, state))
        })
        .collect::<Result<Vec<_>, String>>()?;
    let mut drive = |n: usize| -> Result<(), String> {
        for i in 0..n {
            let (conn, state) = &mut connections[i % CONNECTIONS];
            scenarios::step(scenario, conn, state)?;
        }
        Ok(())
    };
    drive(WARMUP_OPS)?;
    callgrind_control("--zero", server.pid())?;
    drive(ops)?;
    callgrind_control("--dump", server.pid())?;
    // The dump is the profile's first part; the one at exit would add the shutdown.
    let dumped = profile.with_extension("out.1");
    let text =
        std::fs::read_to_string(&dumped).map_err(|e| format!("{}: {e}", dumped.display()))?;
    let total: u64 = text
        .lines()
        .find_map(|line| line.strip_prefix("summary: "))
        .and_then(|v| v.trim().parse().ok())
        .ok_or("no summary line in the callgrind profile")?;
    let name = format!("{}{label}", scenario.name());
    let kept = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "instructions-{}-{}.callgrind",
        backend.name(),
        name.replace([' ', '/', '(', ')'], "_")
    ));
    std::fs::copy(&dumped, &kept).map_err(|e| e.to_string())?;
    println!(
        "{:<10} {:<46} {:>12} instructions per operation over {ops} operations; profile: {}",
        backend.name(),
        name,
        total / ops as u64,
        kept.display()
    );
    Ok(())
}

fn callgrind_control(command: &str, pid: u32) -> Result<(), String> {
    let status = Command::new("callgrind_control")
        .arg(command)
        .arg(pid.to_string())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .map_err(|e| format!("callgrind_control: {e}"))?;
    status
        .success()
        .then_some(())
        .ok_or_else(|| format!("callgrind_control {command} failed: {status}"))
}
