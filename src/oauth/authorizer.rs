//! oxide-auth's Authorizer. A code carries its grant sealed (`sealed_code`), so issuing one
//! writes nothing and opening one reads nothing; the code is recorded, by its digest, when
//! it is first presented, which makes it single use, and a replay revokes what the first
//! redemption issued.

use chrono::{TimeZone, Utc};
use oxide_auth::endpoint::Authorizer;
use oxide_auth::primitives::grant::{Extensions, Grant, Value};

use super::context::FlowContext;
use super::{pkce, sealed_code};
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
        let grant = CodeRow {
            code_hash: String::new(),
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
        Ok(sealed_code::seal(&ctx.keys.codes, &grant))
    }

    /// Opens the code, without the database: it is recorded redeemed in the transaction
    /// that records what it is exchanged for (`DbIssuer::issue`), so a redemption costs one
    /// commit, and a replay is found there. A request that fails after this (a wrong
    /// code_verifier, say) still spends the code: see `spend_unused_code`.
    fn extract(&mut self, code: &str) -> Result<Option<Grant>, ()> {
        let ctx = self.ctx;
        // oxide-auth authenticates the client before it extracts the code.
        let client_id = ctx.notes.borrow().authenticated_client.clone().ok_or(())?;
        let opened = ctx.notes.borrow_mut().opened_code.take();
        let opened = match opened {
            Some((presented, row)) if presented == code => Some(row),
            _ => sealed_code::open(&ctx.keys.codes, code),
        };
        let Some(row) = opened else {
            // Garbage, altered, or sealed under another system secret: nothing to spend.
            return Ok(refuse(ctx, "the authorization code is invalid"));
        };
        if row.client_id != client_id {
            // Neither spent nor revoked: a client cannot spend another client's grant.
            return Ok(refuse(
                ctx,
                "the authorization code was issued to another client",
            ));
        }
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

fn refuse(ctx: &FlowContext<'_>, description: &'static str) -> Option<Grant> {
    ctx.notes.borrow_mut().invalid_grant = Some(description);
    None
}

/// Refuses a code that will not be exchanged, saying why (see `spend`).
pub(super) fn refuse_code(ctx: &FlowContext<'_>, code: &CodeRow) -> Result<Option<Grant>, ()> {
    let description = spend(ctx, code).map_err(|e| ctx.fail(e))?;
    Ok(refuse(ctx, description))
}

/// Spends a code whose exchange failed after `extract` (PKCE, redirect_uri, expiry, or a
/// server error that invites no retry), so that a code is good for one attempt.
pub fn spend_unused_code(ctx: &FlowContext<'_>, code: &CodeRow) -> Result<(), StorageError> {
    spend(ctx, code).map(|_| ())
}

/// Records the code spent if no presentation of it was recorded before. One this client
/// presented before is a replay, and what its redemption issued is revoked. Returns why
/// the code cannot be exchanged now.
fn spend(ctx: &FlowContext<'_>, code: &CodeRow) -> Result<&'static str, StorageError> {
    // Bound first: the connection's borrow must end before a revocation borrows it again.
    let redemption = code_store::spend(&mut ctx.conn(), code, ctx.now)?;
    Ok(match redemption {
        Redemption::Replay(row) => {
            revoke_replayed(ctx, &row)?;
            "the authorization code was already used"
        }
        // Spent by this call (the code is good for nothing more, and this request carries
        // no grant: the exchange failed), or nothing to record.
        Redemption::First | Redemption::Unrecorded => "the authorization code is invalid",
    })
}

/// A code was presented again: the tokens its first redemption issued are revoked.
fn revoke_replayed(ctx: &FlowContext<'_>, row: &CodeRow) -> Result<(), StorageError> {
    crate::metrics::global().code_replay_detected();
    crate::audit::AuditEvent::new(crate::audit::Event::CodeReplayDetected, "detected")
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
