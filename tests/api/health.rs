use std::time::Duration;

use crate::on_both_backends;
use crate::support::*;

on_both_backends!(
    health_and_readiness_answer,
    every_request_has_an_id_in_header_and_log
);

fn health_and_readiness_answer(db: TestDb) {
    let config = write_config(&db, "gatehouse.toml", "");
    let server = TestServer::start(&db, &config);
    let health = get(&server.url("/healthz"), &[]);
    assert_eq!(health.status, 200);
    let ready = get(&server.url("/readyz"), &[]);
    assert_eq!(ready.status, 200);
    assert_eq!(ready.json()["database"], "ok");
    assert!(ready.json()["signing_key"]
        .as_str()
        .is_some_and(|k| !k.is_empty()));
}

fn every_request_has_an_id_in_header_and_log(db: TestDb) {
    let config = write_config(&db, "gatehouse.toml", "");
    let server = TestServer::start(&db, &config);
    let response = get(&server.url("/healthz"), &[]);
    let id = response
        .header("x-request-id")
        .expect("X-Request-Id")
        .to_owned();
    assert_eq!(id.len(), 36, "a UUID: {id}");
    let logged = eventually(Duration::from_secs(10), || {
        server.logs().into_iter().find(|line| {
            serde_json::from_str::<serde_json::Value>(line).is_ok_and(|event| {
                event["span"]["request_id"] == id.as_str() && event["span"]["path"] == "/healthz"
            })
        })
    });
    assert!(
        logged.is_some(),
        "no log line carries request_id {id}:\n{}",
        server.logs().join("\n")
    );
    assert!(
        server
            .logs()
            .iter()
            .all(|l| serde_json::from_str::<serde_json::Value>(l).is_ok()),
        "log.format = json gives JSON lines"
    );
}

/// Dependencies that log through the `log` crate (mio, r2d2, actix) reach the JSON log
/// through tracing-log, as events whose own target is `log`; their lines name the module
/// they came from, so that a log pipeline's filter on `target` finds them.
#[test]
fn json_lines_of_log_crate_records_name_their_module() {
    let db = TestDb::create(Backend::Sqlite).expect("SQLite needs no server");
    let config = write_config_full(&db, "gatehouse.toml", "", "info,mio=trace", "");
    let server = TestServer::start(&db, &config);
    assert_eq!(get(&server.url("/healthz"), &[]).status, 200);
    let events = || -> Vec<serde_json::Value> {
        server
            .logs()
            .iter()
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect()
    };
    let from_mio = eventually(Duration::from_secs(10), || {
        events().into_iter().find(|event| {
            event["log.target"]
                .as_str()
                .is_some_and(|t| t.starts_with("mio"))
        })
    })
    .expect("mio logs through the log crate at trace");
    assert_eq!(from_mio["target"], from_mio["log.target"], "{from_mio}");
    let unnamed: Vec<_> = events()
        .into_iter()
        .filter(|event| event["target"] == "log")
        .collect();
    assert!(unnamed.is_empty(), "{unnamed:?}");
}

/// Log lines the writer refuses (a full disk, a closed pipe) are reported on stderr, not
/// dropped without a word: stdout here is /dev/full, where every write fails. The server
/// writes its lines in batches (`log.flush_interval`); the batch that failed is reported.
#[cfg(target_os = "linux")]
#[test]
fn a_log_line_that_cannot_be_written_is_reported_on_stderr() {
    // Batched, as by default, and line by line.
    for (flush_interval, report) in [
        ("10ms", "log lines could not be written"),
        ("0s", "Unable to write an event"),
    ] {
        let stderr = stderr_with_stdout_on_dev_full(flush_interval);
        assert!(stderr.contains(report), "{flush_interval}: {stderr}");
        assert!(
            stderr.contains("No space left on device"),
            "{flush_interval}: {stderr}"
        );
    }
}

/// What the server writes to stderr, up to its first report of a failed write, with stdout
/// on /dev/full.
#[cfg(target_os = "linux")]
fn stderr_with_stdout_on_dev_full(flush_interval: &str) -> String {
    use std::io::Read;
    use std::process::Stdio;

    let db = TestDb::create(Backend::Sqlite).expect("SQLite needs no server");
    let config = write_config(&db, "gatehouse.toml", "");
    let mut server = gatehouse(db.dir.path())
        .arg("--config")
        .arg(&config)
        .arg("serve")
        .env("GATEHOUSE__LOG__FLUSH_INTERVAL", flush_interval)
        .stdout(std::fs::File::create("/dev/full").expect("/dev/full"))
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the server");
    let mut stderr = server.stderr.take().expect("piped stderr");
    let reader = std::thread::spawn(move || {
        // The server logs at startup; the first whole report is enough.
        let mut seen = Vec::new();
        let mut chunk = [0; 4096];
        while let Ok(n @ 1..) = stderr.read(&mut chunk) {
            seen.extend_from_slice(&chunk[..n]);
            if String::from_utf8_lossy(&seen).contains("No space left on device") {
                break;
            }
        }
        String::from_utf8_lossy(&seen).into_owned()
    });
    let reported = eventually(Duration::from_secs(10), || {
        reader.is_finished().then_some(())
    });
    let _ = server.kill();
    let _ = server.wait();
    let stderr = reader.join().expect("stderr reader");
    assert!(
        reported.is_some(),
        "{flush_interval}: no report within 10 s: {stderr}"
    );
    stderr
}

/// PostgreSQL only: a SQLite file held open by the pool cannot be taken away from it.
#[test]
fn readiness_turns_503_when_the_database_is_gone() {
    let Some(mut db) = TestDb::create(Backend::Postgres) else {
        return;
    };
    let config = write_config(&db, "gatehouse.toml", "");
    let server = TestServer::start(&db, &config);
    assert_eq!(get(&server.url("/readyz"), &[]).status, 200);

    db.destroy();
    let unready = eventually(Duration::from_secs(20), || {
        let response = get(&server.url("/readyz"), &[]);
        (response.status == 503).then_some(response)
    })
    .expect("readiness reports the lost database");
    assert_eq!(unready.json()["database"], "unreachable");
    assert_eq!(
        get(&server.url("/healthz"), &[]).status,
        200,
        "liveness does not depend on the database"
    );
}

/// SQLite's blocking work is CPU on a local file: the server keeps at most two blocking
/// threads per core however many requests arrive at once (unbounded, the pool grew to
/// 10-16 threads here, and to 32 under the benchmark).
#[cfg(target_os = "linux")]
#[test]
fn sqlite_server_bounds_its_blocking_threads() {
    let db = TestDb::create(Backend::Sqlite).expect("SQLite needs no server");
    let config = write_config(&db, "gatehouse.toml", "");
    let server = TestServer::start(&db, &config);
    let url = server.url("/readyz");
    let statuses = race(32, |_| {
        (0..25).map(|_| get(&url, &[]).status).collect::<Vec<_>>()
    })
    .concat();
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    // Checkpoints, housekeeping and the key refresh run one task each on the main
    // runtime's blocking pool, which the bound does not cover.
    const BACKGROUND: usize = 3;
    let blocking_threads = std::fs::read_dir(format!("/proc/{}/task", server.pid()))
        .expect("the server's threads")
        .filter_map(Result::ok)
        .filter(|task| {
            std::fs::read_to_string(task.path().join("comm"))
                .is_ok_and(|name| name.trim() == "tokio-rt-worker")
        })
        .count();
    assert!(
        blocking_threads >= 1 && blocking_threads <= 2 * cores.max(2) + BACKGROUND,
        "{blocking_threads} blocking threads on {cores} cores"
    );
}
