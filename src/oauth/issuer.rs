//! oxide-auth's Issuer: access tokens are signed JWTs, refresh tokens opaque digests.

use chrono::{TimeZone, Utc};
use oxide_auth::endpoint::Issuer;
use oxide_auth::primitives::grant::Grant;
use oxide_auth::primitives::issuer::{IssuedToken, RefreshedToken, TokenType};

use super::context::FlowContext;
use super::tokens::{issue_for_user, MintError};
use crate::config::GrantType;

pub struct DbIssuer<'a> {
    pub ctx: &'a FlowContext<'a>,
}

impl Issuer for DbIssuer<'_> {
    fn issue(&mut self, grant: Grant) -> Result<IssuedToken, ()> {
        let ctx = self.ctx;
        let client = ctx.client(&grant.client_id)?.ok_or(())?;
        let code_hash = ctx
            .notes
            .borrow()
            .redeemed_code
            .as_ref()
            .map(|c| c.code_hash.clone());
        let scope = super::scope::to_string(&grant.scope);
        let minted = issue_for_user(
            ctx,
            &client,
            &grant.owner_id,
            &scope,
            GrantType::AuthorizationCode,
            code_hash.as_deref(),
        )
        .map_err(|e| match e {
            MintError::Storage(e) => ctx.fail(e),
            MintError::Key(e) => tracing::error!(error = %e, "cannot sign an access token"),
        })?;
        Ok(IssuedToken {
            token: minted.access_token,
            refresh: minted.refresh_token,
            until: Utc.timestamp_opt(minted.expires_at, 0).single().ok_or(())?,
            token_type: TokenType::Bearer,
        })
    }

    fn refresh(&mut self, _refresh: &str, _grant: Grant) -> Result<RefreshedToken, ()> {
        // Only the authorization-code flow is given this issuer; the token endpoint answers
        // other grant types before any flow runs.
        Err(())
    }

    fn recover_token<'t>(&'t self, _token: &'t str) -> Result<Option<Grant>, ()> {
        Ok(None)
    }

    fn recover_refresh<'t>(&'t self, _token: &'t str) -> Result<Option<Grant>, ()> {
        Ok(None)
    }
}
