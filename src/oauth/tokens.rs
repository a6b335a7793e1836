//! Minting: RS256 access tokens per RFC 9068 and opaque refresh tokens kept as digests in a
//! family, so that revocation and reuse detection reach every token of one grant.

use serde::Serialize;

use super::client::Client;
use super::context::FlowContext;
use crate::config::GrantType;
use crate::crypto::{mac::digest_secret, random};
use crate::storage::codes as code_store;
use crate::storage::tokens::{self as token_store, AccessRow, FamilyRow, RefreshRow};
use crate::storage::StorageError;

/// RFC 9068 section 2.2.
#[derive(Debug, Serialize)]
pub struct AccessTokenClaims<'a> {
    pub iss: &'a str,
    pub sub: &'a str,
    pub aud: &'a [String],
    pub exp: i64,
    pub iat: i64,
    pub jti: &'a str,
    pub client_id: &'a str,
    pub scope: &'a str,
}

pub struct Minted {
    pub access_token: String,
    pub expires_at: i64,
    pub refresh_token: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum MintError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Key(#[from] crate::keys::KeyError),
}

/// Issues an access token (and a refresh token when the client may refresh) for a user's
/// grant, recorded as a new family. `code_hash` links the family to the redeemed code.
pub fn issue_for_user(
    ctx: &FlowContext<'_>,
    client: &Client,
    user_id: &str,
    scope: &str,
    grant_type: GrantType,
    code_hash: Option<&str>,
) -> Result<Minted, MintError> {
    let tokens = &ctx.settings.tokens;
    let now = ctx.now;
    let family = FamilyRow {
        id: uuid::Uuid::new_v4().to_string(),
        client_id: client.id.clone(),
        user_id: Some(user_id.to_owned()),
        grant_type: grant_type.as_str().to_owned(),
        scope: scope.to_owned(),
        created_at: now,
        expires_at: now + tokens.refresh_absolute_ttl.as_secs() as i64,
        revoked_at: None,
    };
    let jti = random::token::<16>();
    let expires_at = now + tokens.access_ttl.as_secs() as i64;
    let access_token = ctx.keys.signing.sign_access_token(&AccessTokenClaims {
        iss: &ctx.settings.issuer,
        sub: user_id,
        aud: &client.audience,
        exp: expires_at,
        iat: now,
        jti: &jti,
        client_id: &client.id,
        scope,
    })?;
    let refresh_token = client
        .allows(GrantType::RefreshToken)
        .then(random::token::<32>);
    let refresh_row = refresh_token.as_ref().map(|token| RefreshRow {
        token_hash: digest_secret(token),
        family_id: family.id.clone(),
        client_id: client.id.clone(),
        scope: scope.to_owned(),
        created_at: now,
        idle_expires_at: (now + tokens.refresh_idle_ttl.as_secs() as i64).min(family.expires_at),
        rotated_at: None,
    });
    let access_row = AccessRow {
        jti: jti.clone(),
        family_id: Some(family.id.clone()),
        client_id: client.id.clone(),
        expires_at,
        revoked_at: None,
    };
    let mut conn = ctx.conn();
    token_store::create_family(&mut conn, &family, refresh_row.as_ref(), &access_row)?;
    if let Some(code_hash) = code_hash {
        if !code_store::link_family(&mut conn, code_hash, &family.id)? {
            // The code was replayed while we were issuing: the replay could not see this
            // family, so revoke it here. This redemption still won the race and gets its
            // answer, exactly as if the replay had come a moment later; its tokens are dead
            // (refresh at once, the access token at introspection and expiry).
            token_store::revoke_family(&mut conn, &family.id, now)?;
        }
    }
    Ok(Minted {
        access_token,
        expires_at,
        refresh_token,
    })
}
