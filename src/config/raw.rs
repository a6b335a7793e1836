//! The configuration as written: strings where the value needs checking, so that
//! `validate` can report every bad value by its key instead of stopping at the first.

use std::path::Path;

use serde::Deserialize;

use super::{ConfigError, DEFAULT_CONFIG};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSettings {
    pub issuer: String,
    pub server: RawServer,
    pub database: RawDatabase,
    #[serde(default)]
    pub secrets: RawSecrets,
    pub tokens: RawTokens,
    pub keys: RawKeys,
    pub limits: RawLimits,
    pub log: RawLog,
    pub audit: RawAudit,
    #[serde(default)]
    pub clients: Vec<RawClient>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAudit {
    pub retention: String,
    #[serde(default)]
    pub log_only: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    pub bind: String,
    pub workers: Option<usize>,
    pub tls_cert: Option<String>,
    pub tls_key: Option<String>,
    pub max_body_bytes: usize,
    pub header_timeout: String,
    pub body_timeout: String,
    pub keep_alive: String,
    pub max_connections: usize,
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    pub metrics: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDatabase {
    pub url: String,
    pub pool_size: u32,
    pub migrate_on_start: bool,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSecrets {
    pub system: Option<String>,
}

impl std::fmt::Debug for RawSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RawSecrets { .. }")
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTokens {
    pub access_ttl: String,
    pub refresh_idle_ttl: String,
    pub refresh_absolute_ttl: String,
    pub code_ttl: String,
    pub introspection_cache_ttl: String,
    #[serde(default)]
    pub audience: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawKeys {
    pub rsa_bits: u32,
    pub refresh_interval: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    pub window: String,
    pub failures_per_username: u32,
    pub failures_per_ip: u32,
    pub client_requests_per_second: u32,
    pub client_burst: u32,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLog {
    pub format: String,
    pub level: String,
    pub flush_interval: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawClient {
    pub id: String,
    pub name: Option<String>,
    pub secret_hash: Option<String>,
    pub secret_env: Option<String>,
    #[serde(default)]
    pub redirect_uris: Vec<String>,
    #[serde(default)]
    pub grant_types: Vec<String>,
    #[serde(default)]
    pub scopes: Vec<String>,
    #[serde(default)]
    pub default_scopes: Vec<String>,
    #[serde(default)]
    pub audience: Vec<String>,
    #[serde(default)]
    pub skip_consent: bool,
    pub allowed_origins: Option<Vec<String>>,
}

impl RawSettings {
    /// Layers, later wins: built-in defaults, then `file`, then `GATEHOUSE__SECTION__KEY`
    /// variables from `env`.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<RawSettings, ConfigError> {
        let env: config::Map<String, String> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with("GATEHOUSE__"))
            .collect();
        let mut builder = config::Config::builder();
        builder = match file {
            // The demo client is for a machine with no configuration at all; once an
            // operator writes a file, its clients are the whole list.
            Some(path) => builder
                .add_source(defaults_source(defaults_without_clients()))
                .add_source(config::File::from(path).format(config::FileFormat::Toml)),
            None => builder.add_source(defaults_source(DEFAULT_CONFIG)),
        };
        let raw = builder
            .add_source(
                config::Environment::with_prefix("GATEHOUSE")
                    .prefix_separator("__")
                    .separator("__")
                    .try_parsing(true)
                    .list_separator(",")
                    .with_list_parse_key("tokens.audience")
                    .with_list_parse_key("server.trusted_proxies")
                    .with_list_parse_key("audit.log_only")
                    .source(Some(env)),
            )
            .build()?
            .try_deserialize()?;
        Ok(raw)
    }
}

fn defaults_source(text: &str) -> config::File<config::FileSourceString, config::FileFormat> {
    config::File::from_str(text, config::FileFormat::Toml)
}

fn defaults_without_clients() -> &'static str {
    match DEFAULT_CONFIG.find("\n[[clients]]") {
        Some(end) => &DEFAULT_CONFIG[..end],
        None => DEFAULT_CONFIG,
    }
}
