use std::path::Path;
use std::process::Output;

use crate::support::*;

fn check_config(dir: &Path, config: Option<&Path>, env: &[(&str, &str)]) -> Output {
    let mut cmd = gatehouse(dir);
    if let Some(config) = config {
        cmd.arg("--config").arg(config);
    }
    cmd.arg("check-config");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run check-config")
}

fn write(dir: &Path, text: &str) -> std::path::PathBuf {
    let path = dir.join("gatehouse.toml");
    std::fs::write(&path, text).unwrap();
    path
}

const VALID_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$9sTbSlTio3Biev89thdrlKKiCaYsjjYVJxGAL3swxpQ";

#[test]
fn built_in_defaults_are_valid_without_any_file() {
    let dir = tempfile::tempdir().unwrap();
    let output = check_config(dir.path(), None, &[]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(stdout(&output).contains("configuration OK"));
    assert!(
        stdout(&output).contains("clients: 1"),
        "the demo client: {}",
        stdout(&output)
    );
}

#[test]
fn every_problem_is_reported_at_once_naming_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = write(
        dir.path(),
        &format!(
            r#"
issuer = "http://auth.example.com"

[tokens]
access_ttl = "fifteen minutes"
code_ttl = "0s"
introspection_cache_ttl = "2m"

[log]
flush_interval = "5s"

[[clients]]
id = "web"
redirect_uris = ["/callback", "https://app.example.com/cb#frag", "http://app.example.com/cb"]
grant_types = ["authorization_code", "implicit"]
scopes = ["read"]

[[clients]]
id = "web"
redirect_uris = ["https://other.example.com/cb"]
grant_types = ["authorization_code"]

[[clients]]
id = "spa"
redirect_uris = ["https://spa.example.com/cb"]
grant_types = ["client_credentials", "password"]

[[clients]]
id = "service"
secret_env = "GATEHOUSE_TEST_UNSET_SECRET"
grant_types = ["client_credentials"]

[[clients]]
id = "good"
secret_hash = "{VALID_HASH}"
grant_types = ["client_credentials"]
"#
        ),
    );
    let output = check_config(dir.path(), Some(&config), &[]);
    assert_eq!(
        output.status.code(),
        Some(2),
        "exit code 2 for invalid configuration"
    );
    let errors = stderr(&output);
    for expected in [
        "issuer: must use https",
        "tokens.access_ttl: `fifteen minutes` is not a duration",
        "tokens.code_ttl: must be longer than zero",
        "tokens.introspection_cache_ttl: must be at most 1m",
        "log.flush_interval: must be at most 1s",
        "clients[0].redirect_uris[0]: must be an absolute URI without a fragment",
        "clients[0].redirect_uris[1]: must be an absolute URI without a fragment",
        "clients[0].redirect_uris[2]: must use https",
        "clients[0].grant_types[1]: unknown grant type `implicit`",
        "clients[1].id: duplicate client id `web`",
        "clients[2].grant_types[0]: `client_credentials` needs a confidential client",
        "clients[2].grant_types[1]: `password` needs a confidential client",
        "clients[3].secret_env: environment variable GATEHOUSE_TEST_UNSET_SECRET is not set",
    ] {
        assert!(
            errors.contains(expected),
            "missing `{expected}` in:\n{errors}"
        );
    }
    assert!(
        !errors.contains("clients[4]"),
        "the valid client has no problem:\n{errors}"
    );
    assert_eq!(
        errors
            .lines()
            .filter(|l| l.trim_start().starts_with("clients[")
                || l.trim_start().starts_with("issuer")
                || l.trim_start().starts_with("tokens"))
            .count(),
        12,
        "{errors}"
    );

    // `serve` refuses the same file with the same messages, before touching anything.
    let serve = gatehouse(dir.path())
        .arg("--config")
        .arg(&config)
        .arg("serve")
        .output()
        .unwrap();
    assert_eq!(serve.status.code(), Some(2));
    assert!(stderr(&serve).contains("clients[1].id: duplicate client id `web`"));
    assert!(
        !dir.path().join("data").exists(),
        "nothing created for an invalid config"
    );
}

#[test]
fn secret_env_is_satisfied_by_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let config = write(
        dir.path(),
        r#"
[[clients]]
id = "service"
secret_env = "GATEHOUSE_TEST_SERVICE_SECRET"
grant_types = ["client_credentials"]
"#,
    );
    let output = check_config(
        dir.path(),
        Some(&config),
        &[(
            "GATEHOUSE_TEST_SERVICE_SECRET",
            "s3cret-from-the-environment",
        )],
    );
    assert!(output.status.success(), "{}", stderr(&output));
}

#[test]
fn environment_overrides_file_and_names_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = write(dir.path(), "[tokens]\naccess_ttl = \"5m\"\n");
    let output = check_config(
        dir.path(),
        Some(&config),
        &[("GATEHOUSE__TOKENS__ACCESS_TTL", "soon")],
    );
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("tokens.access_ttl: `soon` is not a duration"),
        "{}",
        stderr(&output)
    );

    let output = check_config(
        dir.path(),
        Some(&config),
        &[("GATEHOUSE__ISSUER", "https://auth.example.com")],
    );
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(stdout(&output).contains("issuer: https://auth.example.com"));

    let output = check_config(
        dir.path(),
        Some(&config),
        &[("GATEHOUSE__LIMITS__FAILURES_PER_IP", "0")],
    );
    assert!(
        stderr(&output).contains("limits.failures_per_ip: must be at least 1"),
        "{}",
        stderr(&output)
    );

    let output = check_config(
        dir.path(),
        Some(&config),
        &[("GATEHOUSE__DATABASE__POOL_SIZE", "0")],
    );
    assert!(
        stderr(&output).contains("database.pool_size"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn audit_events_kept_in_the_log_only_are_named_and_checked() {
    let dir = tempfile::tempdir().unwrap();
    let config = write(
        dir.path(),
        "[audit]\nlog_only = [\"token_issued\", \"tokens_issued\", \"token_issued.password\", \"token_issued.implicit\"]\n",
    );
    let output = check_config(dir.path(), Some(&config), &[]);
    assert_eq!(output.status.code(), Some(2), "{}", stdout(&output));
    let errors = stderr(&output);
    assert!(
        errors.contains("audit.log_only[1]: unknown audit event `tokens_issued`"),
        "{errors}"
    );
    assert!(
        errors.contains("audit.log_only[3]: unknown audit event `token_issued.implicit`"),
        "{errors}"
    );
    // The message says what GRANT may be, so the fix needs no trip to the README.
    assert!(
        errors.contains(
            "GRANT one of: authorization_code, refresh_token, password, client_credentials"
        ),
        "{errors}"
    );
    for valid in ["audit.log_only[0]", "audit.log_only[2]"] {
        assert!(!errors.contains(valid), "{errors}");
    }

    let config = write(dir.path(), "");
    let output = check_config(
        dir.path(),
        Some(&config),
        &[(
            "GATEHOUSE__AUDIT__LOG_ONLY",
            "token_issued.client_credentials, consent",
        )],
    );
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(
        stdout(&output)
            .contains("audit events in the log only: token_issued.client_credentials, consent"),
        "{}",
        stdout(&output)
    );
    // An empty variable clears a file's list.
    let config = write(dir.path(), "[audit]\nlog_only = [\"consent\"]\n");
    let output = check_config(
        dir.path(),
        Some(&config),
        &[("GATEHOUSE__AUDIT__LOG_ONLY", "")],
    );
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(
        !stdout(&output).contains("in the log only"),
        "{}",
        stdout(&output)
    );
}

#[test]
fn config_file_can_come_from_gatehouse_config() {
    let dir = tempfile::tempdir().unwrap();
    let config = write(dir.path(), "issuer = \"https://login.example.org\"\n");
    let output = check_config(
        dir.path(),
        None,
        &[("GATEHOUSE_CONFIG", config.to_str().unwrap())],
    );
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(stdout(&output).contains("issuer: https://login.example.org"));
    assert!(
        stdout(&output).contains("clients: 0"),
        "a config file replaces the demo client"
    );
}

#[test]
fn unknown_keys_and_wrong_types_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let config = write(dir.path(), "[database]\npool_sise = 3\n");
    let output = check_config(dir.path(), Some(&config), &[]);
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("pool_sise"), "{}", stderr(&output));

    let config = write(dir.path(), "[database]\npool_size = \"many\"\n");
    let output = check_config(dir.path(), Some(&config), &[]);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("database.pool_size"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn missing_config_file_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let output = check_config(dir.path(), Some(&dir.path().join("nope.toml")), &[]);
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("nope.toml"), "{}", stderr(&output));
}
