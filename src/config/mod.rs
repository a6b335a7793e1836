//! Typed settings. `load` layers the built-in defaults, a file and the environment;
//! `validate` turns the raw values into `Settings`, reporting every problem at once.

mod raw;
mod validate;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub use raw::RawSettings;
pub use validate::ConfigProblem;

pub const DEFAULT_CONFIG: &str = include_str!("../../config/default.toml");

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{0}")]
    Load(#[from] config::ConfigError),
    #[error("{}", .0.iter().map(|p| p.to_string()).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<ConfigProblem>),
    #[error("secrets.system: cannot use the development secret file {path}: {source}")]
    DevSecret {
        path: PathBuf,
        source: std::io::Error,
    },
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub issuer: String,
    pub server: ServerSettings,
    pub database: DatabaseSettings,
    pub secrets: SecretSettings,
    pub tokens: TokenSettings,
    pub keys: KeySettings,
    pub limits: LimitSettings,
    pub log: LogSettings,
    pub audit: AuditSettings,
    pub clients: Vec<ClientSettings>,
}

#[derive(Debug, Clone)]
pub struct AuditSettings {
    /// Audit rows older than this are deleted by housekeeping.
    pub retention: Duration,
    /// Events written to the log but not to the audit table.
    pub log_only: Vec<crate::audit::Selector>,
}

#[derive(Debug, Clone)]
pub struct ServerSettings {
    pub bind: SocketAddr,
    pub workers: Option<usize>,
    /// Present when `tls_cert` and `tls_key` are set: loaded and checked at validation, so
    /// a bad certificate stops the start with the key's name.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    pub max_body_bytes: usize,
    pub header_timeout: Duration,
    pub body_timeout: Duration,
    pub keep_alive: Duration,
    pub max_connections: usize,
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Serve GET /metrics and time every request for it.
    pub metrics: bool,
}

impl ServerSettings {
    /// actix counts connections per worker; the setting is for the whole process.
    pub fn worker_count(&self) -> usize {
        self.workers.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        })
    }

    pub fn max_connections_per_worker(&self) -> usize {
        self.max_connections.div_ceil(self.worker_count()).max(1)
    }
}

#[derive(Debug, Clone)]
pub struct DatabaseSettings {
    pub url: String,
    pub pool_size: u32,
    pub migrate_on_start: bool,
}

/// `system` is `None` when neither config nor environment set it; `resolve_system_secret`
/// then supplies a development secret.
#[derive(Clone)]
pub struct SecretSettings {
    pub system: Option<String>,
}

impl std::fmt::Debug for SecretSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretSettings")
            .field("system", &self.system.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

#[derive(Debug, Clone)]
pub struct TokenSettings {
    pub access_ttl: Duration,
    pub refresh_idle_ttl: Duration,
    pub refresh_absolute_ttl: Duration,
    pub code_ttl: Duration,
    /// How long introspection may answer for an access token it found active from memory;
    /// zero: never (see `http::IntrospectionCache`).
    pub introspection_cache_ttl: Duration,
    pub audience: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct KeySettings {
    pub rsa_bits: u32,
    pub refresh_interval: Duration,
}

/// Budgets of failed password attempts within a sliding window.
#[derive(Debug, Clone)]
pub struct LimitSettings {
    pub window: Duration,
    pub failures_per_username: u32,
    pub failures_per_ip: u32,
    /// Per client id, per instance, at /token, /revoke and /introspect.
    pub client_requests_per_second: u32,
    pub client_burst: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone)]
pub struct LogSettings {
    pub format: LogFormat,
    pub level: String,
    /// How long the server's lines may wait to be written in a batch; `None`: each line is
    /// written as it is logged.
    pub flush_interval: Option<Duration>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GrantType {
    AuthorizationCode,
    RefreshToken,
    Password,
    ClientCredentials,
}

impl GrantType {
    pub const ALL: [GrantType; 4] = [
        GrantType::AuthorizationCode,
        GrantType::RefreshToken,
        GrantType::Password,
        GrantType::ClientCredentials,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            GrantType::AuthorizationCode => "authorization_code",
            GrantType::RefreshToken => "refresh_token",
            GrantType::Password => "password",
            GrantType::ClientCredentials => "client_credentials",
        }
    }

    pub fn parse(s: &str) -> Option<GrantType> {
        GrantType::ALL.into_iter().find(|g| g.as_str() == s)
    }
}

/// How a client proves who it is. A secret given through `secret_env` is hashed when the
/// configuration is synced, so the database only ever holds PHC strings.
#[derive(Clone)]
pub enum ClientSecret {
    None,
    Hash(String),
    FromEnv { variable: String, value: String },
}

impl std::fmt::Debug for ClientSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientSecret::None => f.write_str("None"),
            ClientSecret::Hash(_) => f.write_str("Hash(<redacted>)"),
            ClientSecret::FromEnv { variable, .. } => write!(f, "FromEnv({variable})"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct ClientSettings {
    pub id: String,
    pub name: String,
    pub secret: ClientSecret,
    pub redirect_uris: Vec<String>,
    pub grant_types: Vec<GrantType>,
    pub scopes: Vec<String>,
    pub default_scopes: Vec<String>,
    pub audience: Vec<String>,
    pub skip_consent: bool,
    pub allowed_origins: Vec<String>,
}

impl ClientSettings {
    pub fn is_public(&self) -> bool {
        matches!(self.secret, ClientSecret::None)
    }
}

impl Settings {
    /// Loads and validates the layered configuration. `file` is `--config FILE` or
    /// `GATEHOUSE_CONFIG`; the environment is read from the process.
    pub fn load(file: Option<&Path>) -> Result<Settings, ConfigError> {
        let raw = RawSettings::load(file, std::env::vars())?;
        validate::validate(raw, &|name| std::env::var(name).ok()).map_err(ConfigError::Invalid)
    }

    /// The secret that encrypts signing keys at rest. Without one configured, a development
    /// secret is kept in `./data/system_secret` (created on first use) and a warning logged.
    pub fn resolve_system_secret(&self) -> Result<String, ConfigError> {
        if let Some(secret) = &self.secrets.system {
            return Ok(secret.clone());
        }
        let path = PathBuf::from("data/system_secret");
        let secret = crate::crypto::dev_secret::read_or_create(&path).map_err(|source| {
            ConfigError::DevSecret {
                path: path.clone(),
                source,
            }
        })?;
        tracing::warn!(
            path = %path.display(),
            "secrets.system is not set: using a generated development secret; set GATEHOUSE__SECRETS__SYSTEM in production"
        );
        Ok(secret)
    }

    pub fn token_audience_for(&self, client: &ClientSettings) -> Vec<String> {
        if client.audience.is_empty() {
            self.tokens.audience.clone()
        } else {
            client.audience.clone()
        }
    }
}
