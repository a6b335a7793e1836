//! oxide-auth's Authorizer over the authorization_codes table. Codes are 256 random bits,
//! stored as digests, single use by a conditional update; a replay revokes what the first
//! redemption issued.

use chrono::{TimeZone, Utc};
use oxide_auth::endpoint::Authorizer;
use oxide_auth::primitives::grant::{Extensions, Grant, Value};

use super::context::FlowContext;
use super::pkce;
use crate::crypto::{mac::digest_secret, random};
use crate::storage::codes::{self as code_store, CodeRow, Redemption};
use crate::storage::tokens as token_store;
use crate::storage::StorageError;

pub struct DbAuthorizer<'a> {
    pub ctx: &'a FlowContext<'a>,
}

impl Authorizer for DbAuthorizer<'_> {
    fn authorize(&mut self, grant: Grant) -> Result<String, ()> {
        let ctx = self.ctx;
        let owner = ctx.owner.as_ref().ok_or(())?;
        let (redirect_uri, redirect_uri_sent) = ctx
            .notes
            .borrow()
            .bound_redirect
            .clone()
            .unwrap_or_else(|| (grant.redirect_uri.to_string(), true));
        let code = random::token::<32>();
        let row = CodeRow {
            code_hash: digest_secret(&code),
            client_id: grant.client_id.clone(),
            user_id: grant.owner_id.clone(),
            redirect_uri,
            redirect_uri_sent,
            scope: super::scope::to_string(&grant.scope),
            code_challenge: pkce::challenge_of(&grant.extensions),
            nonce: None,
            auth_time: owner.authenticated_at,
            created_at: ctx.now,
            expires_at: ctx.now + ctx.settings.tokens.code_ttl.as_secs() as i64,
            redeemed_at: None,
            replayed_at: None,
            family_id: None,
        };
        code_store::insert(&mut ctx.conn(), &row).map_err(|e| ctx.fail(e))?;
        Ok(code)
    }

    /// Only reads: the code is marked redeemed in the transaction that records what it is
    /// exchanged for (`DbIssuer::issue`), so a redemption costs one commit. A request that
    /// fails after this (a wrong code_verifier, say) still spends the code: see
    /// `spend_unused_code`.
    fn extract(&mut self, code: &str) -> Result<Option<Grant>, ()> {
        let ctx = self.ctx;
        // oxide-auth authenticates the client before it extracts the code.
        let client_id = ctx.notes.borrow().authenticated_client.clone().ok_or(())?;
        let code_hash = digest_secret(code);
        let found = code_store::find(&mut ctx.conn(), &code_hash).map_err(|e| ctx.fail(e))?;
        let row = match found {
            Some(row) if row.client_id == client_id && row.redeemed_at.is_none() => row,
            // A replay, another client's code, or garbage.
            _ => return refuse_code(ctx, &code_hash, &client_id),
        };
        let mut extensions = Extensions::new();
        if let Some(challenge) = &row.code_challenge {
            extensions.set_raw(
                pkce::EXTENSION.to_owned(),
                Value::private(Some(challenge.clone())),
            );
        }
        let grant = Grant {
            owner_id: row.user_id.clone(),
            client_id: row.client_id.clone(),
            scope: super::scope::parse(&row.scope).ok_or(())?,
            redirect_uri: url::Url::parse(&row.redirect_uri).map_err(|_| ())?,
            until: Utc.timestamp_opt(row.expires_at, 0).single().ok_or(())?,
            extensions,
        };
        ctx.notes.borrow_mut().redeemed_code = Some(row);
        Ok(Some(grant))
    }
}

/// Refuses a code that will not be exchanged, saying why (see `spend`).
pub(super) fn refuse_code(
    ctx: &FlowContext<'_>,
    code_hash: &str,
    client_id: &str,
) -> Result<Option<Grant>, ()> {
    let description = spend(ctx, code_hash, client_id).map_err(|e| ctx.fail(e))?;
    ctx.notes.borrow_mut().invalid_grant = Some(description);
    Ok(None)
}

/// Spends a code whose exchange failed after `extract` (PKCE, redirect_uri, expiry, or a
/// server error), so that a code is good for one attempt.
pub fn spend_unused_code(ctx: &FlowContext<'_>, code: &CodeRow) -> Result<(), StorageError> {
    spend(ctx, &code.code_hash, &code.client_id).map(|_| ())
}

/// Marks the code redeemed if it is still unredeemed and `client_id`'s. One this client
/// spent before is a replay, and what its redemption issued is revoked. Returns why the
/// code cannot be exchanged now.
fn spend(
    ctx: &FlowContext<'_>,
    code_hash: &str,
    client_id: &str,
) -> Result<&'static str, StorageError> {
    // Bound first: the connection's borrow must end before a revocation borrows it again.
    let redemption = code_store::redeem(&mut ctx.conn(), code_hash, client_id, ctx.now)?;
    Ok(match redemption {
        Redemption::Replay(row) => {
            revoke_replayed(ctx, &row)?;
            "the authorization code was already used"
        }
        Redemption::OtherClient => "the authorization code was issued to another client",
        // Spent by this call: the code is good for nothing more, and this request carries
        // no grant (extract found it missing, or the exchange failed).
        Redemption::Unknown | Redemption::First(_) => "the authorization code is invalid",
    })
}

/// A code was presented again: the tokens its first redemption issued are revoked.
fn revoke_replayed(ctx: &FlowContext<'_>, row: &CodeRow) -> Result<(), StorageError> {
    crate::metrics::global().code_replay_detected();
    crate::audit::AuditEvent::new("code_replay_detected", "detected")
        .user(Some(&row.user_id))
        .client(Some(&row.client_id))
        .ip(ctx.client_ip.as_deref())
        .detail(match row.family_id {
            Some(_) => {
                "an authorization code was presented again; the tokens issued from it are revoked"
            }
            None => "an authorization code was presented again; it had issued no tokens",
        })
        .record();
    if let Some(family_id) = &row.family_id {
        token_store::revoke_family(&mut ctx.conn(), family_id, ctx.now)?;
    }
    Ok(())
}
