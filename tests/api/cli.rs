use crate::on_both_backends;
use crate::support::*;

on_both_backends!(
    clients_are_synced_and_removed_ones_disabled,
    migrate_then_serve_without_auto_migration
);

const TWO_CLIENTS: &str = r#"
[[clients]]
id = "webapp"
name = "Example Web App"
secret_env = "GATEHOUSE_TEST_WEBAPP_SECRET"
redirect_uris = ["https://app.example.com/callback"]
grant_types = ["authorization_code", "refresh_token"]
scopes = ["read"]

[[clients]]
id = "spa"
redirect_uris = ["http://127.0.0.1:3000/cb"]
grant_types = ["authorization_code"]
scopes = ["read"]
"#;

fn clients_are_synced_and_removed_ones_disabled(db: TestDb) {
    let config = write_config(&db, "two.toml", TWO_CLIENTS);
    let migrate = gatehouse(db.dir.path())
        .args(["--config", config.to_str().unwrap(), "migrate"])
        .env(
            "GATEHOUSE_TEST_WEBAPP_SECRET",
            "webapp-secret-of-enough-length",
        )
        .output()
        .unwrap();
    assert!(migrate.status.success(), "{}", stderr(&migrate));

    let list = gatehouse(db.dir.path())
        .args(["--config", config.to_str().unwrap(), "clients", "list"])
        .env(
            "GATEHOUSE_TEST_WEBAPP_SECRET",
            "webapp-secret-of-enough-length",
        )
        .output()
        .unwrap();
    assert!(list.status.success(), "{}", stderr(&list));
    let listing = stdout(&list);
    assert!(
        listing
            .lines()
            .any(|l| l.starts_with("webapp ") && l.contains("enabled")),
        "{listing}"
    );
    assert!(
        listing
            .lines()
            .any(|l| l.starts_with("spa ") && l.contains("enabled")),
        "{listing}"
    );

    let mut conn = db.connect();
    let webapp = gatehouse::storage::clients::find(&mut conn, "webapp")
        .unwrap()
        .expect("synced");
    assert_eq!(webapp.name, "Example Web App");
    let hash = webapp.secret_hash.expect("a confidential client");
    assert!(
        gatehouse::crypto::password::verify("webapp-secret-of-enough-length", &hash),
        "the env secret is stored hashed"
    );
    assert!(!hash.contains("webapp-secret"));

    let one = write_config(
        &db,
        "one.toml",
        &TWO_CLIENTS[TWO_CLIENTS.find("[[clients]]\nid = \"spa\"").unwrap()..],
    );
    let server = TestServer::start(&db, &one);
    let list = run_cli(&db, &one, &["clients", "list"]);
    assert!(list.status.success(), "{}", stderr(&list));
    let listing = stdout(&list);
    let line = |id: &str| {
        listing
            .lines()
            .find(|l| l.starts_with(&format!("{id} ")))
            .unwrap_or_default()
            .to_owned()
    };
    assert!(
        line("spa").contains("public") && line("spa").contains("enabled"),
        "{listing}"
    );
    assert!(
        line("webapp").contains("confidential") && line("webapp").contains("disabled"),
        "{listing}"
    );
    drop(server);
}

fn migrate_then_serve_without_auto_migration(db: TestDb) {
    let manual = write_config(&db, "manual.toml", "").to_owned();
    let text = std::fs::read_to_string(&manual)
        .unwrap()
        .replace("pool_size = 4", "pool_size = 4\nmigrate_on_start = false");
    std::fs::write(&manual, text).unwrap();

    let refused = TestServer::try_start(&db, &manual)
        .err()
        .expect("an unmigrated database is refused");
    assert!(refused.contains("gatehouse migrate"), "{refused}");

    let migrate = run_cli(&db, &manual, &["migrate"]);
    assert!(migrate.status.success(), "{}", stderr(&migrate));
    assert!(
        stdout(&migrate).contains("3 migrations applied"),
        "{}",
        stdout(&migrate)
    );
    let again = run_cli(&db, &manual, &["migrate"]);
    assert!(
        stdout(&again).contains("0 migrations applied"),
        "{}",
        stdout(&again)
    );

    let server = TestServer::start(&db, &manual);
    assert_eq!(get(&server.url("/readyz"), &[]).status, 200);
}

#[test]
fn hash_secret_prints_an_argon2id_phc_string_that_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = gatehouse(dir.path());
    cmd.args(["hash-secret", "--stdin"]);
    let output = output_with_stdin(cmd, "a-client-secret-for-tests\n");
    assert!(output.status.success(), "{}", stderr(&output));
    let phc = stdout(&output).trim().to_owned();
    assert!(phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{phc}");
    assert!(gatehouse::crypto::password::verify(
        "a-client-secret-for-tests",
        &phc
    ));
    assert!(!gatehouse::crypto::password::verify(
        "a-client-secret-for-test",
        &phc
    ));
}

#[test]
fn migration_folders_are_identical_across_backends() {
    let names = |backend: &str| {
        let mut names: Vec<String> = std::fs::read_dir(format!(
            "{}/migrations/{backend}",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
        names.sort();
        names
    };
    assert!(!names("sqlite").is_empty());
    assert_eq!(names("sqlite"), names("postgresql"));
    // The SQL may differ only in the binary column type.
    for name in names("sqlite") {
        for file in ["up.sql", "down.sql"] {
            let read = |backend: &str| {
                std::fs::read_to_string(format!(
                    "{}/migrations/{backend}/{name}/{file}",
                    env!("CARGO_MANIFEST_DIR")
                ))
                .unwrap()
            };
            assert_eq!(
                read("sqlite").replace("BLOB", "BYTEA"),
                read("postgresql"),
                "{name}/{file} drifted"
            );
        }
    }
}
