//! A registered client as the protocol sees it, read from the database row.

use std::sync::{Arc, RwLock};

use crate::config::GrantType;
use crate::storage::clients::ClientRow;
use crate::storage::StorageError;

#[derive(Debug, Clone)]
pub struct Client {
    pub id: String,
    pub name: String,
    pub secret_hash: Option<String>,
    pub redirect_uris: Vec<String>,
    pub grant_types: Vec<String>,
    pub scopes: Vec<String>,
    pub default_scopes: Vec<String>,
    pub audience: Vec<String>,
    pub skip_consent: bool,
    pub enabled: bool,
}

/// Whether `id` could name a client: the config allows only 1 to 255 printable ASCII
/// characters without spaces (RFC 6749 appendix A). Anything else is unknown without asking
/// the database, which is how a NUL byte (refused by PostgreSQL as text) never reaches it.
pub fn is_client_id(id: &str) -> bool {
    (1..=255).contains(&id.len()) && id.bytes().all(|b| (0x21..=0x7e).contains(&b))
}

/// Clients are shared, not copied: a grant looks its client up several times, and a copy
/// (redirect URIs, scopes, origins) cost the authorization-code flow 40k instructions.
type ClientMap = std::collections::HashMap<String, Arc<Client>>;

/// Every enabled client, read from the database at start (after this instance synced its
/// configuration) and again every `keys.refresh_interval`, so that a client another
/// instance's configuration disabled stops working here too, without a query per request.
#[derive(Debug, Default)]
pub struct ClientRegistry {
    clients: RwLock<Arc<ClientMap>>,
}

impl ClientRegistry {
    pub fn load(conn: &mut crate::storage::DbConnection) -> Result<ClientRegistry, StorageError> {
        Ok(ClientRegistry {
            clients: RwLock::new(Arc::new(read_enabled(conn)?)),
        })
    }

    /// Reads the table again and swaps the new set in.
    pub fn reload(&self, conn: &mut crate::storage::DbConnection) -> Result<(), StorageError> {
        let fresh = Arc::new(read_enabled(conn)?);
        *self.clients.write().unwrap_or_else(|p| p.into_inner()) = fresh;
        Ok(())
    }

    /// An enabled client; `None` for unknown, disabled and impossible ids.
    pub fn get(&self, client_id: &str) -> Option<Arc<Client>> {
        let clients = self
            .clients
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        clients.get(client_id).cloned()
    }
}

fn read_enabled(conn: &mut crate::storage::DbConnection) -> Result<ClientMap, StorageError> {
    let mut clients = ClientMap::new();
    for row in crate::storage::clients::list(conn)? {
        if row.enabled {
            clients.insert(row.id.clone(), Arc::new(Client::from_row(row)?));
        }
    }
    Ok(clients)
}

impl Client {
    pub fn from_row(row: ClientRow) -> Result<Client, StorageError> {
        Ok(Client {
            redirect_uris: ClientRow::list(&row.redirect_uris)?,
            grant_types: ClientRow::list(&row.grant_types)?,
            scopes: ClientRow::list(&row.scopes)?,
            default_scopes: ClientRow::list(&row.default_scopes)?,
            audience: ClientRow::list(&row.audience)?,
            id: row.id,
            name: row.name,
            secret_hash: row.secret_hash,
            skip_consent: row.skip_consent,
            enabled: row.enabled,
        })
    }

    pub fn is_public(&self) -> bool {
        self.secret_hash.is_none()
    }

    pub fn allows(&self, grant: GrantType) -> bool {
        self.grant_types.iter().any(|g| g == grant.as_str())
    }

    /// The registered redirect URI a request names, by exact string comparison; for a public
    /// client whose registered URI is a loopback IP literal, any port matches (RFC 8252 7.3).
    /// Without a requested URI, the one registered URI, if there is exactly one.
    pub fn redirect_uri_for(&self, requested: Option<&str>) -> Option<String> {
        let Some(requested) = requested else {
            return match self.redirect_uris.as_slice() {
                [only] => Some(only.clone()),
                _ => None,
            };
        };
        if self.redirect_uris.iter().any(|r| r == requested) {
            return Some(requested.to_owned());
        }
        if self.is_public()
            && self
                .redirect_uris
                .iter()
                .any(|r| same_loopback_ignoring_port(r, requested))
        {
            return Some(requested.to_owned());
        }
        None
    }

    /// The scope to grant: the request's, if every token is allowed; the defaults without one.
    pub fn negotiate_scope(&self, requested: Option<&str>) -> Option<String> {
        match requested.map(str::trim).filter(|s| !s.is_empty()) {
            None => Some(super::scope::normalize(
                self.default_scopes.iter().map(String::as_str),
            )),
            Some(requested) => {
                let allowed = requested
                    .split(' ')
                    .filter(|t| !t.is_empty())
                    .all(|t| self.scopes.iter().any(|s| s == t));
                allowed.then(|| super::scope::normalize(requested.split(' ')))
            }
        }
    }
}

fn same_loopback_ignoring_port(registered: &str, requested: &str) -> bool {
    let (Ok(registered), Ok(mut parsed)) =
        (url::Url::parse(registered), url::Url::parse(requested))
    else {
        return false;
    };
    // Only the port may differ, so the request must already be in canonical form
    // (no `0x7f.1`, no `/./`).
    if parsed.as_str() != requested {
        return false;
    }
    let loopback_ip = matches!(
        registered.host(),
        Some(url::Host::Ipv4(ip)) if ip.is_loopback()
    ) || matches!(registered.host(), Some(url::Host::Ipv6(ip)) if ip.is_loopback());
    if !loopback_ip || registered.scheme() != "http" {
        return false;
    }
    if parsed.set_port(registered.port()).is_err() {
        return false;
    }
    parsed.as_str() == registered.as_str()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(public: bool, uris: &[&str]) -> Client {
        Client {
            id: "c".into(),
            name: "C".into(),
            secret_hash: (!public).then(|| "$argon2id$...".to_owned()),
            redirect_uris: uris.iter().map(|s| s.to_string()).collect(),
            grant_types: vec!["authorization_code".into()],
            scopes: vec!["read".into(), "write".into()],
            default_scopes: vec!["read".into()],
            audience: vec![],
            skip_consent: false,
            enabled: true,
        }
    }

    #[test]
    fn redirect_uris_match_exactly_except_loopback_ports_of_public_clients() {
        let c = client(true, &["https://app.example.com/cb", "http://127.0.0.1/cb"]);
        assert!(c
            .redirect_uri_for(Some("https://app.example.com/cb"))
            .is_some());
        assert!(c
            .redirect_uri_for(Some("https://app.example.com/cb/"))
            .is_none());
        assert!(c
            .redirect_uri_for(Some("https://app.example.com/cb?x=1"))
            .is_none());
        assert!(c
            .redirect_uri_for(Some("https://APP.example.com/cb"))
            .is_none());
        assert!(c
            .redirect_uri_for(Some("http://127.0.0.1:51234/cb"))
            .is_some());
        assert!(c
            .redirect_uri_for(Some("http://127.0.0.1:51234/other"))
            .is_none());
        assert!(c
            .redirect_uri_for(Some("http://localhost:51234/cb"))
            .is_none());
        assert!(c.redirect_uri_for(Some("http://0x7f.1:51234/cb")).is_none());
        assert!(c
            .redirect_uri_for(Some("http://127.0.0.1:51234/./cb"))
            .is_none());
        assert!(
            c.redirect_uri_for(None).is_none(),
            "two registered: must name one"
        );
        let confidential = client(false, &["http://127.0.0.1/cb"]);
        assert!(confidential
            .redirect_uri_for(Some("http://127.0.0.1:9999/cb"))
            .is_none());
        assert_eq!(
            confidential.redirect_uri_for(None).as_deref(),
            Some("http://127.0.0.1/cb")
        );
    }

    #[test]
    fn only_printable_ascii_can_name_a_client() {
        assert!(is_client_id("webapp"));
        assert!(is_client_id("a.b-c_d~1:2"));
        assert!(!is_client_id(""));
        assert!(!is_client_id("web app"));
        assert!(!is_client_id("webapp\0"));
        assert!(!is_client_id("w\u{e9}bapp"));
        assert!(!is_client_id(&"x".repeat(256)));
    }

    #[test]
    fn scope_negotiation() {
        let c = client(true, &[]);
        assert_eq!(c.negotiate_scope(None).as_deref(), Some("read"));
        assert_eq!(
            c.negotiate_scope(Some("write read")).as_deref(),
            Some("read write")
        );
        assert_eq!(c.negotiate_scope(Some("admin")), None);
    }
}
