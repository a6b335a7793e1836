use std::path::Path;
use std::process::Output;

use crate::on_both_backends;
use crate::support::*;

on_both_backends!(users_are_managed_from_the_cli);

fn with_stdin(db: &TestDb, config: &Path, args: &[&str], input: &str) -> Output {
    let mut cmd = gatehouse(db.dir.path());
    cmd.arg("--config").arg(config).args(args);
    output_with_stdin(cmd, input)
}

fn user_line(db: &TestDb, config: &Path, name: &str) -> String {
    let list = run_cli(db, config, &["users", "list"]);
    assert!(list.status.success(), "{}", stderr(&list));
    stdout(&list)
        .lines()
        .find(|l| l.ends_with(&format!(" {name}")))
        .unwrap_or_default()
        .to_owned()
}

fn stored_hash(db: &TestDb, name: &str) -> String {
    let mut conn = db.connect();
    gatehouse::storage::users::find_by_username(&mut conn, name)
        .unwrap()
        .expect("user exists")
        .password_hash
}

fn users_are_managed_from_the_cli(db: TestDb) {
    let config = write_config(&db, "gatehouse.toml", "");
    assert!(run_cli(&db, &config, &["migrate"]).status.success());

    let add = with_stdin(
        &db,
        &config,
        &["users", "add", "alice", "--password-stdin"],
        "correct horse battery\n",
    );
    assert!(add.status.success(), "{}", stderr(&add));
    let hash = stored_hash(&db, "alice");
    assert!(
        hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
        "OWASP parameters: {hash}"
    );
    assert!(gatehouse::crypto::password::verify(
        "correct horse battery",
        &hash
    ));
    assert!(!stdout(&add).contains("correct horse") && !stderr(&add).contains("correct horse"));
    assert!(user_line(&db, &config, "alice").contains("enabled"));

    let again = with_stdin(
        &db,
        &config,
        &["users", "add", "alice", "--password-stdin"],
        "another password\n",
    );
    assert_eq!(again.status.code(), Some(1));
    assert!(
        stderr(&again).contains("already exists"),
        "{}",
        stderr(&again)
    );

    let short = with_stdin(
        &db,
        &config,
        &["users", "add", "bob", "--password-stdin"],
        "short\n",
    );
    assert!(!short.status.success());
    assert!(
        stderr(&short).contains("at least 8 characters"),
        "{}",
        stderr(&short)
    );

    assert!(run_cli(&db, &config, &["users", "disable", "alice"])
        .status
        .success());
    assert!(user_line(&db, &config, "alice").contains("disabled"));
    assert!(run_cli(&db, &config, &["users", "enable", "alice"])
        .status
        .success());
    assert!(user_line(&db, &config, "alice").contains("enabled"));

    let set = with_stdin(
        &db,
        &config,
        &["users", "set-password", "alice", "--password-stdin"],
        "a brand new passphrase\n",
    );
    assert!(set.status.success(), "{}", stderr(&set));
    let new_hash = stored_hash(&db, "alice");
    assert!(gatehouse::crypto::password::verify(
        "a brand new passphrase",
        &new_hash
    ));
    assert!(!gatehouse::crypto::password::verify(
        "correct horse battery",
        &new_hash
    ));

    let missing = run_cli(&db, &config, &["users", "disable", "nobody"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(stderr(&missing).contains("no user named nobody"));
}
