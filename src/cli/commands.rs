use std::io::BufRead;
use std::process::ExitCode;
use std::time::{Duration, UNIX_EPOCH};

use super::{AuditCommand, Cli, ClientsCommand, Command, KeysCommand, UsersCommand};
use crate::audit::{AuditEvent, Event};
use crate::config::{ConfigError, Settings};
use crate::startup::{self, Application};
use crate::storage::clients::ClientRow;
use crate::storage::{self, now_unix, DbConnection};
use crate::telemetry::{self, LogTarget};

const EXIT_FAILURE: u8 = 1;
const EXIT_BAD_CONFIG: u8 = 2;

pub fn dispatch(cli: Cli) -> ExitCode {
    let command = cli.command.unwrap_or(Command::Serve);
    if let Command::HashSecret { stdin } = command {
        return finish(hash_secret(stdin));
    }
    let settings = match Settings::load(cli.config.as_deref()) {
        Ok(settings) => settings,
        Err(e) => return config_failure(&e),
    };
    if let Command::CheckConfig = command {
        return check_config(&settings);
    }
    let log_target = match command {
        Command::Serve => LogTarget::Stdout,
        _ => LogTarget::Stderr,
    };
    telemetry::init(&settings.log, log_target);
    // The server's last lines, still in the log buffer when it stops, are written out when
    // this returns, or unwinds from a panic.
    let _flush_at_exit = telemetry::FlushOnDrop;
    // Before any verb records an event (`serve`: the client sync, a key generated at start).
    crate::audit::keep_in_log_only(&settings.audit.log_only);
    finish(match command {
        Command::Serve => serve(settings),
        Command::Migrate => migrate(&settings),
        Command::Users(command) => users(&settings, command),
        Command::Clients(ClientsCommand::List) => list_clients(&settings),
        Command::Keys(KeysCommand::List) => list_keys(&settings),
        Command::Keys(KeysCommand::Rotate) => rotate_key(&settings),
        Command::Audit(AuditCommand::Tail { lines, json }) => audit_tail(&settings, lines, json),
        Command::CheckConfig | Command::HashSecret { .. } => Ok(()),
    })
}

fn finish(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if e.downcast_ref::<ConfigError>().is_some() {
                eprintln!("gatehouse: invalid configuration:\n{e:#}");
                return ExitCode::from(EXIT_BAD_CONFIG);
            }
            eprintln!("gatehouse: {e:#}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

fn config_failure(e: &ConfigError) -> ExitCode {
    eprintln!("gatehouse: invalid configuration:");
    for line in e.to_string().lines() {
        eprintln!("  {line}");
    }
    ExitCode::from(EXIT_BAD_CONFIG)
}

fn check_config(settings: &Settings) -> ExitCode {
    println!("configuration OK");
    println!("  issuer: {}", settings.issuer);
    println!("  database: {}", redact_url(&settings.database.url));
    println!("  clients: {}", settings.clients.len());
    if !settings.audit.log_only.is_empty() {
        let names = crate::audit::Selector::list(&settings.audit.log_only);
        println!("  audit events in the log only: {names}");
    }
    if settings.secrets.system.is_none() {
        println!("  warning: secrets.system is not set; a development secret will be generated in ./data/");
    }
    ExitCode::SUCCESS
}

/// Hides a password in a database URL before printing it.
fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("****"));
            parsed.to_string()
        }
        _ => url.to_owned(),
    }
}

fn serve(settings: Settings) -> anyhow::Result<()> {
    let prepared = startup::prepare(&settings)?;
    actix_web::rt::System::new().block_on(async move {
        let app = Application::build(settings, prepared)?;
        let outcome = app.run_until_stopped().await;
        crate::audit::stop_writer(Duration::from_secs(5));
        outcome?;
        Ok(())
    })
}

fn connect(settings: &Settings) -> anyhow::Result<DbConnection> {
    let manager = storage::ConnectionManager::new(&settings.database.url)?;
    let mut conn = manager
        .connect()
        .map_err(|e| anyhow::anyhow!("database.url: {e}"))?;
    storage::ensure_migrated(&mut conn)?;
    Ok(conn)
}

fn migrate(settings: &Settings) -> anyhow::Result<()> {
    let manager = storage::ConnectionManager::new(&settings.database.url)?;
    let mut conn = manager
        .connect()
        .map_err(|e| anyhow::anyhow!("database.url: {e}"))?;
    let applied = storage::run_migrations(&mut conn)?;
    crate::oauth::client_sync::sync_clients(&mut conn, settings)?;
    println!("{applied} migrations applied; schema is up to date");
    Ok(())
}

fn list_clients(settings: &Settings) -> anyhow::Result<()> {
    let mut conn = connect(settings)?;
    let clients = storage::clients::list(&mut conn)?;
    println!(
        "{:<24} {:<12} {:<9} {:<44} NAME",
        "ID", "TYPE", "STATE", "GRANT TYPES"
    );
    for c in clients {
        let kind = if c.secret_hash.is_some() {
            "confidential"
        } else {
            "public"
        };
        let state = if c.enabled { "enabled" } else { "disabled" };
        let grants = ClientRow::list(&c.grant_types)?.join(",");
        println!(
            "{:<24} {:<12} {:<9} {:<44} {}",
            c.id, kind, state, grants, c.name
        );
    }
    Ok(())
}

/// A secret from the first line of stdin, or typed twice at a prompt that does not echo.
fn read_secret(from_stdin: bool, prompt: &str) -> anyhow::Result<String> {
    if from_stdin {
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line)?;
        return Ok(line.trim_end_matches(['\r', '\n']).to_owned());
    }
    let first = rpassword::prompt_password(format!("{prompt}: "))?;
    let again = rpassword::prompt_password("Repeat: ")?;
    if first != again {
        anyhow::bail!("the two entries differ");
    }
    Ok(first)
}

fn users(settings: &Settings, command: UsersCommand) -> anyhow::Result<()> {
    use crate::accounts;
    let mut conn = connect(settings)?;
    match command {
        UsersCommand::Add {
            name,
            password_stdin,
        } => {
            accounts::validate_username(&name)?;
            let password = read_secret(password_stdin, "Password")?;
            let user = accounts::add_user(&mut conn, &name, &password)?;
            admin_event(Event::UserAdded, &user.id, &mut conn)?;
            println!("{}", user.id);
        }
        UsersCommand::SetPassword {
            name,
            password_stdin,
        } => {
            let password = read_secret(password_stdin, "New password")?;
            let user = accounts::set_password(&mut conn, &name, &password)?;
            admin_event(Event::PasswordChanged, &user.id, &mut conn)?;
        }
        UsersCommand::Disable { name } => {
            let user = accounts::set_disabled(&mut conn, &name, true)?;
            admin_event(Event::UserDisabled, &user.id, &mut conn)?;
        }
        UsersCommand::Enable { name } => {
            let user = accounts::set_disabled(&mut conn, &name, false)?;
            admin_event(Event::UserEnabled, &user.id, &mut conn)?;
        }
        UsersCommand::List => {
            println!("{:<36} {:<9} {:<22} USERNAME", "ID", "STATE", "CREATED");
            for user in storage::users::list(&mut conn)? {
                let state = if user.disabled { "disabled" } else { "enabled" };
                println!(
                    "{:<36} {:<9} {:<22} {}",
                    user.id,
                    state,
                    timestamp(user.created_at),
                    user.username
                );
            }
        }
    }
    Ok(())
}

fn admin_event(event: Event, user_id: &str, conn: &mut DbConnection) -> anyhow::Result<()> {
    AuditEvent::new(event, "success")
        .user(Some(user_id))
        .detail("via the CLI")
        .record_now(conn)?;
    Ok(())
}

fn audit_tail(settings: &Settings, lines: u32, json: bool) -> anyhow::Result<()> {
    let mut conn = connect(settings)?;
    let rows = storage::audit::latest(&mut conn, i64::from(lines))?;
    for row in rows {
        if json {
            println!(
                "{}",
                serde_json::json!({
                    "time": timestamp(row.occurred_at),
                    "event": row.event,
                    "outcome": row.outcome,
                    "user_id": row.user_id,
                    "client_id": row.client_id,
                    "ip": row.ip,
                    "detail": row.detail,
                })
            );
            continue;
        }
        let or_dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".to_owned());
        println!(
            "{}  {:<22} {:<9} user={} client={} ip={} {}",
            timestamp(row.occurred_at),
            row.event,
            row.outcome,
            or_dash(&row.user_id),
            or_dash(&row.client_id),
            or_dash(&row.ip),
            row.detail.unwrap_or_default()
        );
    }
    Ok(())
}

fn hash_secret(from_stdin: bool) -> anyhow::Result<()> {
    let secret = read_secret(from_stdin, "Client secret")?;
    if secret.len() < 16 {
        anyhow::bail!("a client secret must be at least 16 characters");
    }
    println!("{}", crate::crypto::password::hash(&secret));
    Ok(())
}

fn list_keys(settings: &Settings) -> anyhow::Result<()> {
    let mut conn = connect(settings)?;
    let now = now_unix();
    let keys = storage::keys::list_public(&mut conn)?;
    let active = keys
        .iter()
        .find(|k| k.retired_at.is_none())
        .map(|k| k.kid.clone());
    println!(
        "{:<45} {:<10} {:<5} {:<22} PUBLISHED UNTIL",
        "KID", "STATE", "BITS", "CREATED"
    );
    for k in keys {
        let state = if Some(&k.kid) == active.as_ref() {
            "active"
        } else if k.is_published(now) {
            "retired"
        } else {
            "expired"
        };
        let until = match (k.retired_at, k.publish_until) {
            (None, _) => "-".to_owned(),
            (Some(_), Some(t)) => timestamp(t),
            (Some(_), None) => "-".to_owned(),
        };
        println!(
            "{:<45} {:<10} {:<5} {:<22} {}",
            k.kid,
            state,
            k.key_bits,
            timestamp(k.created_at),
            until
        );
    }
    Ok(())
}

fn rotate_key(settings: &Settings) -> anyhow::Result<()> {
    let secret = settings.resolve_system_secret()?;
    let mut conn = connect(settings)?;
    // Tokens signed by the old key live at most access_ttl; other instances may sign with it
    // for one more refresh interval before they notice; a minute of clock skew on top.
    let window =
        settings.tokens.access_ttl + settings.keys.refresh_interval + Duration::from_secs(60);
    let kid = crate::keys::rotate(&mut conn, &secret, settings.keys.rsa_bits, window)?;
    AuditEvent::new(Event::KeyRotated, "success")
        .detail(format!("kid={kid}; via the CLI"))
        .record_now(&mut conn)?;
    println!("{kid}");
    Ok(())
}

fn timestamp(unix: i64) -> String {
    let time = UNIX_EPOCH + Duration::from_secs(unix.max(0) as u64);
    humantime::format_rfc3339_seconds(time).to_string()
}
