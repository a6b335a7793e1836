use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use super::raw::{RawClient, RawSettings};
use super::*;
use crate::audit::{Event, Selector};
use crate::storage::Backend;

/// One problem with the configuration, named by its key (`clients[1].redirect_uris[0]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

#[derive(Default)]
struct Problems(Vec<ConfigProblem>);

impl Problems {
    fn add(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.0.push(ConfigProblem {
            key: key.into(),
            message: message.into(),
        });
    }

    fn duration(&mut self, key: &str, value: &str) -> Duration {
        let parsed = self.parsed_duration(key, value);
        if parsed.is_some_and(|d| d.is_zero()) {
            self.add(key, "must be longer than zero");
        }
        parsed.unwrap_or_default()
    }

    /// A duration longer than `max` is a problem; `why` follows the limit in the message.
    fn at_most(&mut self, key: &str, value: Duration, max: Duration, why: &str) {
        if value > max {
            self.add(
                key,
                format!("must be at most {}{why}", humantime::format_duration(max)),
            );
        }
    }

    fn parsed_duration(&mut self, key: &str, value: &str) -> Option<Duration> {
        let parsed = humantime::parse_duration(value).ok();
        if parsed.is_none() {
            self.add(
                key,
                format!("`{value}` is not a duration (examples: \"60s\", \"15m\", \"14d\")"),
            );
        }
        parsed
    }
}

const MAX_CODE_TTL: Duration = Duration::from_secs(600);
/// The revocation log keeps its records this long; a longer cache could miss one.
const MAX_INTROSPECTION_CACHE: Duration = crate::storage::revocation_log::KEPT_FOR;

const MAX_LOG_FLUSH_INTERVAL: Duration = Duration::from_secs(1);

/// `env` looks up environment variables named by `secret_env`.
pub fn validate(
    raw: RawSettings,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Settings, Vec<ConfigProblem>> {
    let mut p = Problems::default();

    check_issuer(&mut p, &raw.issuer);

    let bind = raw.server.bind.parse::<SocketAddr>().unwrap_or_else(|_| {
        p.add(
            "server.bind",
            format!("`{}` is not an IP:PORT address", raw.server.bind),
        );
        SocketAddr::from(([127, 0, 0, 1], 8080))
    });
    if raw.server.workers == Some(0) {
        p.add("server.workers", "must be at least 1");
    }
    let tls = match (&raw.server.tls_cert, &raw.server.tls_key) {
        (None, None) => None,
        (Some(_), None) => {
            p.add("server.tls_key", "must be set when server.tls_cert is");
            None
        }
        (None, Some(_)) => {
            p.add("server.tls_cert", "must be set when server.tls_key is");
            None
        }
        (Some(cert), Some(key)) => match crate::crypto::tls::server_config(cert, key) {
            Ok(config) => Some(Arc::new(config)),
            Err(problem) => {
                p.add(problem.key, problem.message);
                None
            }
        },
    };
    if !(1024..=16 * 1024 * 1024).contains(&raw.server.max_body_bytes) {
        p.add("server.max_body_bytes", "must be between 1024 and 16777216");
    }
    let header_timeout = p.duration("server.header_timeout", &raw.server.header_timeout);
    let body_timeout = p.duration("server.body_timeout", &raw.server.body_timeout);
    let keep_alive = p.duration("server.keep_alive", &raw.server.keep_alive);
    if raw.server.max_connections == 0 {
        p.add("server.max_connections", "must be at least 1");
    }
    let mut trusted_proxies = Vec::with_capacity(raw.server.trusted_proxies.len());
    for (i, proxy) in raw.server.trusted_proxies.iter().enumerate() {
        match parse_network(proxy) {
            Some(net) => trusted_proxies.push(net),
            None => p.add(
                format!("server.trusted_proxies[{i}]"),
                format!("`{proxy}` is not an IP address or CIDR range"),
            ),
        }
    }

    if Backend::from_url(&raw.database.url).is_err() {
        p.add(
            "database.url",
            "must start with sqlite:// (a file path) or postgres:// (a connection URL)",
        );
    }
    if !(1..=1000).contains(&raw.database.pool_size) {
        p.add("database.pool_size", "must be between 1 and 1000");
    }

    if let Some(secret) = &raw.secrets.system {
        if secret.len() < 32 {
            p.add(
                "secrets.system",
                "must be at least 32 characters of random text",
            );
        }
    }

    let tokens = TokenSettings {
        access_ttl: p.duration("tokens.access_ttl", &raw.tokens.access_ttl),
        refresh_idle_ttl: p.duration("tokens.refresh_idle_ttl", &raw.tokens.refresh_idle_ttl),
        refresh_absolute_ttl: p.duration(
            "tokens.refresh_absolute_ttl",
            &raw.tokens.refresh_absolute_ttl,
        ),
        code_ttl: p.duration("tokens.code_ttl", &raw.tokens.code_ttl),
        introspection_cache_ttl: p
            .parsed_duration(
                "tokens.introspection_cache_ttl",
                &raw.tokens.introspection_cache_ttl,
            )
            .unwrap_or_default(),
        audience: raw.tokens.audience.clone(),
    };
    p.at_most(
        "tokens.code_ttl",
        tokens.code_ttl,
        MAX_CODE_TTL,
        " (RFC 6749 section 4.1.2)",
    );
    p.at_most(
        "tokens.introspection_cache_ttl",
        tokens.introspection_cache_ttl,
        MAX_INTROSPECTION_CACHE,
        ": it is how long a revocation made elsewhere may go unseen",
    );
    if tokens.refresh_idle_ttl > tokens.refresh_absolute_ttl {
        p.add(
            "tokens.refresh_idle_ttl",
            "must not be longer than tokens.refresh_absolute_ttl",
        );
    }
    for (i, aud) in tokens.audience.iter().enumerate() {
        if aud.trim().is_empty() {
            p.add(format!("tokens.audience[{i}]"), "must not be empty");
        }
    }

    if ![2048, 3072, 4096].contains(&raw.keys.rsa_bits) {
        p.add("keys.rsa_bits", "must be 2048, 3072 or 4096");
    }
    let refresh_interval = p.duration("keys.refresh_interval", &raw.keys.refresh_interval);

    let limits = LimitSettings {
        window: p.duration("limits.window", &raw.limits.window),
        failures_per_username: raw.limits.failures_per_username,
        failures_per_ip: raw.limits.failures_per_ip,
        client_requests_per_second: raw.limits.client_requests_per_second,
        client_burst: raw.limits.client_burst,
    };
    for (key, value) in [
        ("limits.failures_per_username", limits.failures_per_username),
        ("limits.failures_per_ip", limits.failures_per_ip),
        (
            "limits.client_requests_per_second",
            limits.client_requests_per_second,
        ),
        ("limits.client_burst", limits.client_burst),
    ] {
        if value == 0 {
            p.add(key, "must be at least 1");
        }
    }

    let format = match raw.log.format.as_str() {
        "text" => LogFormat::Text,
        "json" => LogFormat::Json,
        other => {
            p.add("log.format", format!("`{other}` is not one of: text, json"));
            LogFormat::Text
        }
    };
    let flush_interval = p
        .parsed_duration("log.flush_interval", &raw.log.flush_interval)
        .filter(|interval| !interval.is_zero());
    if let Some(interval) = flush_interval {
        p.at_most(
            "log.flush_interval",
            interval,
            MAX_LOG_FLUSH_INTERVAL,
            ": it is how long a crash may lose log lines for",
        );
    }
    if tracing_subscriber::EnvFilter::try_new(&raw.log.level).is_err() {
        p.add(
            "log.level",
            format!("`{}` is not a level or filter directive", raw.log.level),
        );
    }

    let mut log_only = Vec::with_capacity(raw.audit.log_only.len());
    for (i, name) in raw.audit.log_only.iter().enumerate() {
        // `GATEHOUSE__AUDIT__LOG_ONLY=` (empty) clears the list; `a, b` is `a` and `b`.
        let name = name.trim();
        if name.is_empty() {
            continue;
        }
        match Selector::parse(name) {
            Some(selector) => log_only.push(selector),
            None => p.add(
                format!("audit.log_only[{i}]"),
                format!(
                    "unknown audit event `{name}`; the events are: {}; and token_issued.GRANT \
                     for the tokens of one grant type, GRANT one of: {}",
                    Event::ALL.map(Event::name).join(", "),
                    GrantType::ALL.map(GrantType::as_str).join(", ")
                ),
            ),
        }
    }
    let audit = AuditSettings {
        retention: p.duration("audit.retention", &raw.audit.retention),
        log_only,
    };

    let mut clients = Vec::with_capacity(raw.clients.len());
    for (i, client) in raw.clients.iter().enumerate() {
        let key = format!("clients[{i}]");
        if raw.clients[..i].iter().any(|c| c.id == client.id) {
            p.add(
                format!("{key}.id"),
                format!("duplicate client id `{}`", client.id),
            );
        }
        clients.push(check_client(&mut p, &key, client, &tokens.audience, env));
    }

    if !p.0.is_empty() {
        return Err(p.0);
    }
    Ok(Settings {
        issuer: raw.issuer.trim_end_matches('/').to_owned(),
        server: ServerSettings {
            bind,
            workers: raw.server.workers,
            tls,
            max_body_bytes: raw.server.max_body_bytes,
            header_timeout,
            body_timeout,
            keep_alive,
            max_connections: raw.server.max_connections,
            trusted_proxies,
            metrics: raw.server.metrics,
        },
        database: DatabaseSettings {
            url: raw.database.url,
            pool_size: raw.database.pool_size,
            migrate_on_start: raw.database.migrate_on_start,
        },
        secrets: SecretSettings {
            system: raw.secrets.system,
        },
        tokens,
        keys: KeySettings {
            rsa_bits: raw.keys.rsa_bits,
            refresh_interval,
        },
        limits,
        log: LogSettings {
            format,
            level: raw.log.level,
            flush_interval,
        },
        audit,
        clients,
    })
}

/// An address is a network of one.
fn parse_network(text: &str) -> Option<ipnet::IpNet> {
    let text = text.trim();
    text.parse::<ipnet::IpNet>().ok().or_else(|| {
        text.parse::<std::net::IpAddr>()
            .ok()
            .map(ipnet::IpNet::from)
    })
}

fn check_issuer(p: &mut Problems, issuer: &str) {
    match url::Url::parse(issuer) {
        Err(_) => p.add("issuer", format!("`{issuer}` is not an absolute URL")),
        Ok(url) => {
            if url.query().is_some() || url.fragment().is_some() {
                p.add(
                    "issuer",
                    "must not have a query or fragment (RFC 8414 section 2)",
                );
            }
            match url.scheme() {
                "https" => {}
                "http" if is_loopback(&url) => {}
                "http" => p.add(
                    "issuer",
                    "must use https; plain http is only allowed for a loopback host (127.0.0.1, [::1], localhost)",
                ),
                other => p.add("issuer", format!("scheme `{other}` is not https")),
            }
        }
    }
}

pub(crate) fn is_loopback(url: &url::Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        None => false,
    }
}

/// RFC 6749 appendix A: client ids are VSCHAR, scope tokens NQCHAR without spaces.
fn is_vschar_text(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| (0x20..=0x7e).contains(&b))
}

fn is_scope_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b == 0x21 || (0x23..=0x5b).contains(&b) || (0x5d..=0x7e).contains(&b))
}

fn check_client(
    p: &mut Problems,
    key: &str,
    c: &RawClient,
    default_audience: &[String],
    env: &dyn Fn(&str) -> Option<String>,
) -> ClientSettings {
    if !is_vschar_text(&c.id) || c.id.contains(' ') || c.id.len() > 255 {
        p.add(
            format!("{key}.id"),
            "must be 1 to 255 printable ASCII characters without spaces",
        );
    }

    let secret = match (&c.secret_hash, &c.secret_env) {
        (Some(_), Some(_)) => {
            p.add(
                format!("{key}.secret_hash"),
                "set secret_hash or secret_env, not both",
            );
            ClientSecret::None
        }
        (Some(hash), None) => {
            if !crate::crypto::password::is_argon2id_phc(hash) {
                p.add(
                    format!("{key}.secret_hash"),
                    "must be an argon2id PHC string (make one with `gatehouse hash-secret`)",
                );
            }
            ClientSecret::Hash(hash.clone())
        }
        (None, Some(variable)) => match env(variable) {
            Some(value) if !value.is_empty() => ClientSecret::FromEnv {
                variable: variable.clone(),
                value,
            },
            _ => {
                p.add(
                    format!("{key}.secret_env"),
                    format!("environment variable {variable} is not set"),
                );
                ClientSecret::None
            }
        },
        (None, None) => ClientSecret::None,
    };
    let confidential = c.secret_hash.is_some() || c.secret_env.is_some();

    let mut grant_types = Vec::new();
    if c.grant_types.is_empty() {
        p.add(
            format!("{key}.grant_types"),
            "must list at least one grant type",
        );
    }
    for (j, g) in c.grant_types.iter().enumerate() {
        match GrantType::parse(g) {
            Some(grant) => {
                if !confidential
                    && matches!(grant, GrantType::ClientCredentials | GrantType::Password)
                {
                    p.add(
                        format!("{key}.grant_types[{j}]"),
                        format!("`{g}` needs a confidential client: set secret_hash or secret_env"),
                    );
                }
                grant_types.push(grant);
            }
            None => p.add(
                format!("{key}.grant_types[{j}]"),
                format!(
                    "unknown grant type `{g}` (known: authorization_code, refresh_token, password, client_credentials)"
                ),
            ),
        }
    }
    if grant_types.contains(&GrantType::AuthorizationCode) && c.redirect_uris.is_empty() {
        p.add(
            format!("{key}.redirect_uris"),
            "the authorization_code grant needs at least one redirect URI",
        );
    }

    for (j, uri) in c.redirect_uris.iter().enumerate() {
        if let Err(message) = check_redirect_uri(uri) {
            p.add(format!("{key}.redirect_uris[{j}]"), message);
        }
    }

    for (j, scope) in c.scopes.iter().enumerate() {
        if !is_scope_token(scope) {
            p.add(
                format!("{key}.scopes[{j}]"),
                format!("`{scope}` is not a valid scope token (RFC 6749 section 3.3)"),
            );
        }
    }
    for (j, scope) in c.default_scopes.iter().enumerate() {
        if !c.scopes.contains(scope) {
            p.add(
                format!("{key}.default_scopes[{j}]"),
                format!("`{scope}` is not in this client's scopes"),
            );
        }
    }

    if c.audience.is_empty() && default_audience.is_empty() {
        p.add(
            format!("{key}.audience"),
            "no audience for this client's tokens: set tokens.audience or this key",
        );
    }

    let allowed_origins = match &c.allowed_origins {
        Some(origins) => {
            for (j, origin) in origins.iter().enumerate() {
                if let Err(message) = check_origin(origin) {
                    p.add(format!("{key}.allowed_origins[{j}]"), message);
                }
            }
            // As a browser writes them in the Origin header: lowercase host, no default port.
            origins
                .iter()
                .filter_map(|o| url::Url::parse(o).ok())
                .map(|u| u.origin().ascii_serialization())
                .collect()
        }
        None => default_origins(&c.redirect_uris),
    };

    ClientSettings {
        id: c.id.clone(),
        name: c.name.clone().unwrap_or_else(|| c.id.clone()),
        secret,
        redirect_uris: c.redirect_uris.clone(),
        grant_types,
        scopes: c.scopes.clone(),
        default_scopes: c.default_scopes.clone(),
        audience: c.audience.clone(),
        skip_consent: c.skip_consent,
        allowed_origins,
    }
}

/// RFC 6749 3.1.2: absolute, no fragment. RFC 9700 2.1 and RFC 8252 8.3: plain http only
/// for loopback; private-use schemes for native apps are allowed, script-bearing ones not.
/// Authorization codes carry their redirect URI (sealed), and must stay well below
/// `sealed_code::MAX_CODE_LEN`.
const MAX_REDIRECT_URI_LEN: usize = 2000;

fn check_redirect_uri(uri: &str) -> Result<(), String> {
    const ABSOLUTE: &str = "must be an absolute URI without a fragment";
    if uri.len() > MAX_REDIRECT_URI_LEN {
        return Err(format!(
            "must be at most {MAX_REDIRECT_URI_LEN} characters long (authorization codes carry it)"
        ));
    }
    let url = url::Url::parse(uri).map_err(|_| ABSOLUTE.to_owned())?;
    if url.fragment().is_some() || uri.contains('#') {
        return Err(ABSOLUTE.to_owned());
    }
    match url.scheme() {
        "https" if url.host().is_some() => Ok(()),
        "https" => Err(ABSOLUTE.to_owned()),
        "http" if is_loopback(&url) => Ok(()),
        "http" => Err("must use https; plain http is only allowed for a loopback host".to_owned()),
        "javascript" | "data" | "file" | "vbscript" | "blob" => {
            Err(format!("scheme `{}` is not allowed", url.scheme()))
        }
        _ => Ok(()),
    }
}

fn check_origin(origin: &str) -> Result<(), String> {
    const SHAPE: &str = "must be an origin: scheme://host[:port] with no path";
    let url = url::Url::parse(origin).map_err(|_| SHAPE.to_owned())?;
    let bare = url.path() == "/" && !origin.ends_with('/');
    if !matches!(url.scheme(), "http" | "https")
        || url.host().is_none()
        || !bare
        || url.query().is_some()
        || url.fragment().is_some()
    {
        return Err(SHAPE.to_owned());
    }
    Ok(())
}

fn default_origins(redirect_uris: &[String]) -> Vec<String> {
    let mut origins: Vec<String> = redirect_uris
        .iter()
        .filter_map(|u| url::Url::parse(u).ok())
        .filter(|u| matches!(u.scheme(), "http" | "https"))
        .map(|u| u.origin().ascii_serialization())
        .collect();
    origins.dedup();
    origins
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirect_uri_rules() {
        assert!(check_redirect_uri("https://app.example.com/cb").is_ok());
        assert!(check_redirect_uri("http://127.0.0.1:9000/cb").is_ok());
        assert!(check_redirect_uri("http://[::1]/cb").is_ok());
        assert!(check_redirect_uri("com.example.app:/oauth").is_ok());
        assert!(check_redirect_uri("/relative").is_err());
        let long = format!("https://app.example.com/{}", "a".repeat(2000));
        assert!(check_redirect_uri(&long)
            .unwrap_err()
            .contains("at most 2000"));
        assert!(check_redirect_uri(&long[..2000]).is_ok());
        assert!(check_redirect_uri("https://app.example.com/cb#frag").is_err());
        assert!(check_redirect_uri("https://app.example.com/cb#").is_err());
        assert!(check_redirect_uri("http://app.example.com/cb").is_err());
        assert!(check_redirect_uri("javascript:alert(1)").is_err());
    }

    #[test]
    fn origin_rules() {
        assert!(check_origin("https://app.example.com").is_ok());
        assert!(check_origin("http://127.0.0.1:8081").is_ok());
        assert!(check_origin("https://app.example.com/").is_err());
        assert!(check_origin("https://app.example.com/path").is_err());
        assert!(check_origin("ftp://app.example.com").is_err());
    }

    #[test]
    fn default_origins_come_from_redirect_uris() {
        let origins = default_origins(&[
            "https://app.example.com/cb".into(),
            "https://app.example.com/other".into(),
            "com.example.app:/oauth".into(),
        ]);
        assert_eq!(origins, vec!["https://app.example.com".to_owned()]);
    }
}
