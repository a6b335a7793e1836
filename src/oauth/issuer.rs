//! oxide-auth's Issuer: access tokens are signed JWTs, refresh tokens opaque digests that
//! rotate on every use, with reuse detection over the whole family.

use chrono::{TimeZone, Utc};
use oxide_auth::endpoint::Issuer;
use oxide_auth::primitives::grant::Grant;
use oxide_auth::primitives::issuer::{IssuedToken, RefreshedToken, TokenType};

use super::authorizer::refuse_code;
use super::context::FlowContext;
use super::refresh_token::ReadToken;
use super::tokens::{
    access_for_rotated, issue_for_user, rotate_redeemable, rotate_refresh, MintError,
};
use crate::config::GrantType;
use crate::storage::tokens::{self as token_store, FamilyRow};

pub struct DbIssuer<'a> {
    pub ctx: &'a FlowContext<'a>,
}

impl Issuer for DbIssuer<'_> {
    fn issue(&mut self, grant: Grant) -> Result<IssuedToken, ()> {
        let ctx = self.ctx;
        let client = ctx.client(&grant.client_id)?.ok_or(())?;
        // Taken: after this call the code is spent (by this request, or by the one that beat
        // it), unless minting failed, which puts it back for `spend_unused_code`.
        let code = ctx.notes.borrow_mut().redeemed_code.take();
        let scope = super::scope::to_string(&grant.scope);
        let minted = match issue_for_user(
            ctx,
            &client,
            &grant.owner_id,
            &scope,
            ctx.grant_type,
            code.as_ref(),
        ) {
            Ok(Some(minted)) => minted,
            Ok(None) => {
                // Another presentation of the code came first (this one is a replay), or its
                // user was disabled (or deleted) since it was issued.
                let code = code.as_ref().ok_or(())?;
                refuse_code(ctx, code)?;
                return Err(());
            }
            Err(e) => {
                self.mint_failed(e);
                ctx.notes.borrow_mut().redeemed_code = code;
                return Err(());
            }
        };
        ctx.notes.borrow_mut().issued_to = Some(grant.owner_id.clone());
        Ok(IssuedToken {
            token: minted.access_token,
            refresh: minted.refresh_token,
            until: Utc.timestamp_opt(minted.expires_at, 0).single().ok_or(())?,
            token_type: TokenType::Bearer,
        })
    }

    /// Called by oxide-auth's refresh flow after `recover_refresh` and client authentication,
    /// with the grant's scope already narrowed to what the request asked for.
    fn refresh(&mut self, _refresh: &str, grant: Grant) -> Result<RefreshedToken, ()> {
        let ctx = self.ctx;
        let client = ctx.client(&grant.client_id)?.ok_or(())?;
        let scope = super::scope::to_string(&grant.scope);
        let rotated = ctx.notes.borrow_mut().rotated_refresh.take();
        if let Some((refresh_token, family)) = rotated {
            // `recover_refresh` rotated the token already.
            let minted = access_for_rotated(ctx, &client, &family, &scope, refresh_token)
                .map_err(|e| self.mint_failed(e))?;
            ctx.notes.borrow_mut().issued_to = family.user_id.clone();
            return refreshed(minted);
        }
        let presented = ctx.notes.borrow().presented_refresh.clone().ok_or(())?;
        let family = &presented.family;
        let minted = match rotate_refresh(ctx, &client, &presented, &scope) {
            Ok(Some(minted)) => minted,
            Ok(None) => {
                // Another request rotated it a moment ago: the token was used twice.
                self.reuse_detected(family);
                return Err(());
            }
            Err(e) => {
                self.mint_failed(e);
                return Err(());
            }
        };
        ctx.notes.borrow_mut().issued_to = family.user_id.clone();
        refreshed(minted)
    }

    fn recover_token<'t>(&'t self, _token: &'t str) -> Result<Option<Grant>, ()> {
        Ok(None)
    }

    /// Finds a live refresh token. A rotated one means reuse (RFC 9700 4.14.2): the whole
    /// family is revoked, the newest tokens too.
    fn recover_refresh<'t>(&'t self, token: &'t str) -> Result<Option<Grant>, ()> {
        let ctx = self.ctx;
        let Some(read) = ctx.keys.refresh_tokens.read(token) else {
            return Ok(self.refuse("the refresh token is invalid"));
        };
        if let Some(grant) = self.recover_rotating(&read)? {
            return Ok(Some(grant));
        }
        let found = read.find(&mut ctx.conn()).map_err(|e| ctx.fail(e))?;
        let Some(presented) = found else {
            return Ok(self.refuse("the refresh token is invalid"));
        };
        let (row, family) = (&presented.token, &presented.family);
        if ctx
            .claimed_client
            .as_deref()
            .is_some_and(|claimed| claimed != row.client_id)
        {
            return Ok(self.refuse("the refresh token was issued to another client"));
        }
        // oxide-auth recovers the token before it authenticates a client that sent no
        // credentials; nothing below (reuse detection revokes) may happen for a confidential
        // client's token until that client has proven who it is.
        let client = ctx.client(&row.client_id)?;
        let confidential = client.as_ref().is_some_and(|c| !c.is_public());
        if confidential {
            match &ctx.verified_secret {
                Some((id, _)) if *id == row.client_id => {}
                Some(_) => return Ok(self.refuse("the refresh token was issued to another client")),
                None => {
                    ctx.notes.borrow_mut().unauthenticated = true;
                    return Ok(None);
                }
            }
        }
        if row.rotated_at.is_some() {
            self.reuse_detected(family);
            return Ok(None);
        }
        if family.revoked_at.is_some() {
            return Ok(self.refuse("the refresh token was revoked"));
        }
        if row.idle_expires_at <= ctx.now || family.expires_at <= ctx.now {
            return Ok(self.refuse("the refresh token has expired"));
        }
        if !client.is_some_and(|c| c.allows(GrantType::RefreshToken)) {
            return Ok(self.refuse("this client may no longer use refresh tokens"));
        }
        if !presented.user_enabled {
            token_store::revoke_family(&mut ctx.conn(), &family.id, ctx.now)
                .map_err(|e| ctx.fail(e))?;
            return Ok(self.refuse("the user is disabled"));
        }
        let until = row.idle_expires_at.min(family.expires_at);
        let grant = grant_of(ctx, family, &row.client_id, &row.scope, until)?;
        ctx.notes.borrow_mut().presented_refresh = Some(presented);
        Ok(Some(grant))
    }
}

fn refreshed(minted: super::tokens::Minted) -> Result<RefreshedToken, ()> {
    Ok(RefreshedToken {
        token: minted.access_token,
        refresh: minted.refresh_token,
        until: Utc.timestamp_opt(minted.expires_at, 0).single().ok_or(())?,
        token_type: TokenType::Bearer,
    })
}

/// oxide-auth's grant for a token of `family`.
fn grant_of(
    ctx: &FlowContext<'_>,
    family: &FamilyRow,
    client_id: &str,
    scope: &str,
    until: i64,
) -> Result<Grant, ()> {
    Ok(Grant {
        owner_id: family
            .user_id
            .clone()
            .unwrap_or_else(|| family.client_id.clone()),
        client_id: client_id.to_owned(),
        scope: super::scope::parse(scope).ok_or(())?,
        redirect_uri: url::Url::parse(&ctx.settings.issuer).map_err(|_| ())?,
        until: Utc.timestamp_opt(until, 0).single().ok_or(())?,
        extensions: Default::default(),
    })
}

impl DbIssuer<'_> {
    /// The common refresh in one statement: when the request asks for no narrower scope
    /// and its client is known (authenticated, or a public client by its `client_id`), a
    /// token of a family's row is rotated as it is read, with every check the grant makes
    /// of it in the statement. After that nothing in oxide-auth's flow refuses: the client
    /// is the token's, the scope the grant's, the grant valid for a minute more. When a
    /// check fails nothing is written and the token is read as usual, which tells why
    /// (reuse, revoked, expired, another client's, a disabled user).
    fn recover_rotating(&self, token: &ReadToken) -> Result<Option<Grant>, ()> {
        let ctx = self.ctx;
        if !ctx.rotate_on_recovery {
            return Ok(None);
        }
        let Some((family_id, generation)) = token.in_family() else {
            return Ok(None);
        };
        let client = match (&ctx.verified_secret, &ctx.claimed_client) {
            (Some((id, _)), _) => ctx.client(id)?,
            (None, Some(id)) => ctx.client(id)?.filter(|c| c.is_public()),
            (None, None) => None,
        };
        let Some(client) = client.filter(|c| c.allows(GrantType::RefreshToken)) else {
            return Ok(None);
        };
        let rotated =
            match rotate_redeemable(ctx, &client, family_id, generation, token.token_hash()) {
                Ok(Some(rotated)) => rotated,
                Ok(None) => return Ok(None),
                Err(e) => {
                    self.mint_failed(e);
                    return Err(());
                }
            };
        let (_, family) = &rotated;
        let until = family
            .refresh_idle_expires_at
            .unwrap_or(family.expires_at)
            .min(family.expires_at);
        let grant = grant_of(ctx, family, &family.client_id, &family.scope, until)?;
        ctx.notes.borrow_mut().rotated_refresh = Some(rotated);
        Ok(Some(grant))
    }

    fn refuse(&self, description: &'static str) -> Option<Grant> {
        self.ctx.notes.borrow_mut().invalid_grant = Some(description);
        None
    }

    fn reuse_detected(&self, family: &FamilyRow) {
        let ctx = self.ctx;
        crate::metrics::global().refresh_reuse_detected();
        crate::audit::AuditEvent::new(crate::audit::Event::RefreshReuseDetected, "detected")
            .user(family.user_id.as_deref())
            .client(Some(&family.client_id))
            .ip(ctx.client_ip.as_deref())
            .detail(format!(
                "family={}; a rotated refresh token was presented again; its family is revoked",
                family.id
            ))
            .record();
        if let Err(e) = token_store::revoke_family(&mut ctx.conn(), &family.id, ctx.now) {
            ctx.fail(e);
        }
        ctx.notes.borrow_mut().invalid_grant =
            Some("the refresh token was already used; every token of its grant is revoked");
    }

    fn mint_failed(&self, error: MintError) {
        match error {
            MintError::Storage(e) => self.ctx.fail(e),
            MintError::Key(e) => tracing::error!(error = %e, "cannot sign an access token"),
            e @ MintError::RefreshToken(_) => tracing::error!(error = %e, "cannot mint"),
        }
    }
}
