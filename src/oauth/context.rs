//! What one OAuth operation needs, shared by the oxide-auth primitives that serve it: one
//! pooled connection, the settings, the signing key, and notes the primitives leave for the
//! HTTP layer (oxide-auth's traits return `Result<_, ()>`, so the reasons travel here).

use std::cell::{RefCell, RefMut};
use std::sync::Arc;

use crate::config::{GrantType, Settings};
use crate::keys::KeyState;
use crate::storage::codes::CodeRow;
use crate::storage::tokens::{FamilyRow, PresentedRefresh};
use crate::storage::{DbConnection, StorageError};

use super::client::{Client, ClientRegistry};

/// The signed-in user, resolved from the session cookie before the flow runs.
#[derive(Debug, Clone)]
pub struct Owner {
    pub user_id: String,
    pub username: String,
    pub authenticated_at: i64,
    /// The user's remembered consent, read with the session for the client the request
    /// named; `None` when the request named no registered client.
    pub consent: Option<ConsentRead>,
}

/// A remembered consent as read for one client: `scope` is `None` when there was none.
#[derive(Debug, Clone)]
pub struct ConsentRead {
    pub client_id: String,
    pub scope: Option<String>,
}

/// What the user answered on the consent page, once its CSRF token has been checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allow,
    Deny,
}

/// Why an authorization request stopped before a redirect to the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Interaction {
    Login,
    Consent { scope: String },
}

#[derive(Debug, Default)]
pub struct Notes {
    pub client: Option<Arc<Client>>,
    /// The client the registrar authenticated for this request.
    pub authenticated_client: Option<String>,
    /// The registered redirect URI the request resolved to, and whether it named it.
    pub bound_redirect: Option<(String, bool)>,
    pub interaction: Option<Interaction>,
    /// Set when a request must fail with `invalid_grant` (RFC 6749 5.2), with its description.
    pub invalid_grant: Option<&'static str>,
    /// A more precise description for an error that oxide-auth reports without one.
    pub error_description: Option<&'static str>,
    /// A code already opened before the flow ran, and the code as presented.
    pub opened_code: Option<(String, CodeRow)>,
    /// The code `extract` found exchangeable. It is marked redeemed with the tokens it is
    /// exchanged for, or spent by `token::finish` when the exchange fails.
    pub redeemed_code: Option<CodeRow>,
    /// A confidential client's token was presented without that client's credentials.
    pub unauthenticated: bool,
    /// The refresh token being exchanged, with its family, found by `recover_refresh`.
    pub presented_refresh: Option<PresentedRefresh>,
    /// The successor `recover_refresh` already stored, when it rotated the token itself,
    /// with the family's row as that rotation left it.
    pub rotated_refresh: Option<(String, FamilyRow)>,
    /// A storage failure behind a primitive's `Err(())`, kept for the log.
    pub failure: Option<StorageError>,
    /// The user the issuer minted tokens for, for the audit trail.
    pub issued_to: Option<String>,
}

pub struct FlowContext<'c> {
    conn: RefCell<&'c mut DbConnection>,
    pub settings: &'c Settings,
    pub clients: &'c ClientRegistry,
    pub keys: Arc<KeyState>,
    pub now: i64,
    pub owner: Option<Owner>,
    pub decision: Option<Decision>,
    /// A client id and secret the caller already verified against the stored hash, without
    /// holding a database connection while argon2 ran.
    pub verified_secret: Option<(String, String)>,
    /// The client_id a public client named in the body; oxide-auth's refresh flow does not
    /// read it, so the issuer checks it against the token's client.
    pub claimed_client: Option<String>,
    /// The grant the Issuer records a new family under.
    pub grant_type: GrantType,
    /// A refresh request that asks for no narrower scope: nothing oxide-auth checks after
    /// `recover_refresh` can refuse it once the token's client is known, so the token may
    /// be rotated as it is read (see `DbIssuer::recover_rotating`).
    pub rotate_on_recovery: bool,
    /// The caller's address, for the audit trail.
    pub client_ip: Option<String>,
    pub notes: RefCell<Notes>,
}

impl<'c> FlowContext<'c> {
    pub fn new(
        conn: &'c mut DbConnection,
        settings: &'c Settings,
        clients: &'c ClientRegistry,
        keys: Arc<KeyState>,
    ) -> FlowContext<'c> {
        FlowContext {
            conn: RefCell::new(conn),
            settings,
            clients,
            keys,
            now: crate::storage::now_unix(),
            owner: None,
            decision: None,
            verified_secret: None,
            claimed_client: None,
            grant_type: GrantType::AuthorizationCode,
            rotate_on_recovery: false,
            client_ip: None,
            notes: RefCell::new(Notes::default()),
        }
    }

    /// The connection; primitives are called one at a time, so borrows never overlap.
    pub fn conn(&self) -> RefMut<'_, &'c mut DbConnection> {
        self.conn.borrow_mut()
    }

    /// Records a storage failure for the log and turns it into oxide-auth's `()`.
    pub fn fail(&self, error: StorageError) {
        tracing::error!(error = %error, "storage failure during an OAuth operation");
        self.notes.borrow_mut().failure = Some(error);
    }

    /// The client, from the registry; `None` for unknown or disabled clients.
    pub(crate) fn client(&self, client_id: &str) -> Result<Option<Arc<Client>>, ()> {
        if let Some(client) = self
            .notes
            .borrow()
            .client
            .as_ref()
            .filter(|c| c.id == client_id)
        {
            return Ok(Some(client.clone()));
        }
        let client = self.clients.get(client_id);
        if let Some(client) = &client {
            self.notes.borrow_mut().client = Some(client.clone());
        }
        Ok(client)
    }

    /// Whether `secret` is the client's: free when the caller verified it already.
    pub(crate) fn verify_secret(&self, client_id: &str, secret: &str, hash: &str) -> bool {
        match &self.verified_secret {
            Some((id, verified)) if id == client_id => {
                aws_lc_rs::constant_time::verify_slices_are_equal(
                    verified.as_bytes(),
                    secret.as_bytes(),
                )
                .is_ok()
            }
            _ => crate::crypto::password::verify(secret, hash),
        }
    }

    pub fn take_notes(&self) -> Notes {
        std::mem::take(&mut self.notes.borrow_mut())
    }
}
