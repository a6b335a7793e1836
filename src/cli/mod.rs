//! The `gatehouse` command line: one binary for the server and its administration.

mod commands;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "gatehouse",
    version,
    about = "An OAuth 2.0 authorization server"
)]
pub struct Cli {
    /// A TOML file layered over the built-in defaults.
    #[arg(long, global = true, env = "GATEHOUSE_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server (the default).
    Serve,
    /// Apply pending database migrations and sync clients from the configuration.
    Migrate,
    /// Validate the configuration and print every problem found.
    CheckConfig,
    /// User accounts.
    #[command(subcommand)]
    Users(UsersCommand),
    /// Registered clients.
    #[command(subcommand)]
    Clients(ClientsCommand),
    /// Print an argon2id PHC string for a client secret, for `secret_hash`.
    HashSecret {
        /// Read the secret from the first line of standard input instead of prompting.
        #[arg(long)]
        stdin: bool,
    },
    /// Signing keys.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// The audit trail.
    #[command(subcommand)]
    Audit(AuditCommand),
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Print the latest audit events, oldest first.
    Tail {
        /// How many events.
        #[arg(short = 'n', long, default_value_t = 20)]
        lines: u32,
        /// One JSON object per line instead of columns.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum UsersCommand {
    /// Create a user; prompts for the password unless --password-stdin.
    Add {
        name: String,
        /// Read the password from the first line of standard input.
        #[arg(long)]
        password_stdin: bool,
    },
    /// List users and whether each is enabled.
    List,
    /// Refuse all further logins of a user.
    Disable { name: String },
    /// Allow a disabled user to log in again.
    Enable { name: String },
    /// Replace a user's password; prompts unless --password-stdin.
    SetPassword {
        name: String,
        /// Read the password from the first line of standard input.
        #[arg(long)]
        password_stdin: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum ClientsCommand {
    /// List clients as synced from the configuration into the database.
    List,
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// List signing keys and whether each is active, published or expired.
    List,
    /// Make a new key active; old keys stay published until their tokens have expired.
    Rotate,
}

/// Exit codes: 0 success, 1 runtime failure, 2 invalid configuration or usage.
pub fn run() -> ExitCode {
    let cli = Cli::parse();
    commands::dispatch(cli)
}
