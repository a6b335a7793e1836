//! Minting: RS256 access tokens per RFC 9068 and opaque refresh tokens kept as digests in a
//! family, so that revocation and reuse detection reach every token of one grant.

use serde::Serialize;

use super::client::Client;
use super::context::FlowContext;
use crate::config::{GrantType, Settings};
use crate::crypto::{mac::digest_secret, random};
use crate::keys::KeyState;
use crate::storage::codes::CodeRow;
use crate::storage::tokens::{self as token_store, FamilyRow, RefreshRow};
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

struct SignedAccess {
    token: String,
    expires_at: i64,
}

fn sign_access(
    ctx: &FlowContext<'_>,
    client: &Client,
    subject: &str,
    scope: &str,
    family_id: Option<&str>,
) -> Result<SignedAccess, MintError> {
    sign_access_with(
        ctx.settings,
        &ctx.keys,
        ctx.now,
        client,
        subject,
        scope,
        family_id,
    )
}

fn sign_access_with(
    settings: &Settings,
    keys: &KeyState,
    now: i64,
    client: &Client,
    subject: &str,
    scope: &str,
    family_id: Option<&str>,
) -> Result<SignedAccess, MintError> {
    let jti = token_store::access_jti(family_id, &random::token::<16>());
    let expires_at = now + settings.tokens.access_ttl.as_secs() as i64;
    let token = keys.signing.sign_access_token(&AccessTokenClaims {
        iss: &settings.issuer,
        sub: subject,
        aud: &client.audience,
        exp: expires_at,
        iat: now,
        jti: &jti,
        client_id: &client.id,
        scope,
    })?;
    Ok(SignedAccess { token, expires_at })
}

/// A new opaque refresh token of `family`, idle-limited but never beyond the family's end.
fn new_refresh(ctx: &FlowContext<'_>, family: &FamilyRow, scope: &str) -> (String, RefreshRow) {
    let token = random::token::<32>();
    let row = RefreshRow {
        token_hash: digest_secret(&token),
        family_id: family.id.clone(),
        client_id: family.client_id.clone(),
        scope: scope.to_owned(),
        created_at: ctx.now,
        idle_expires_at: (ctx.now + ctx.settings.tokens.refresh_idle_ttl.as_secs() as i64)
            .min(family.expires_at),
        rotated_at: None,
    };
    (token, row)
}

/// Issues an access token (and a refresh token when the client may refresh) for a user's
/// grant, recorded as a new family. With `from_code`, the code is redeemed in the same
/// transaction; the signature is made first, so that no write waits for it. `None`, with
/// nothing recorded, when another request redeemed the code first: that is a replay.
pub fn issue_for_user(
    ctx: &FlowContext<'_>,
    client: &Client,
    user_id: &str,
    scope: &str,
    grant_type: GrantType,
    from_code: Option<&CodeRow>,
) -> Result<Option<Minted>, MintError> {
    let now = ctx.now;
    let family = FamilyRow {
        id: uuid::Uuid::new_v4().to_string(),
        client_id: client.id.clone(),
        user_id: Some(user_id.to_owned()),
        grant_type: grant_type.as_str().to_owned(),
        scope: scope.to_owned(),
        created_at: now,
        expires_at: now + ctx.settings.tokens.refresh_absolute_ttl.as_secs() as i64,
        revoked_at: None,
    };
    let access = sign_access(ctx, client, user_id, scope, Some(&family.id))?;
    let refresh = client
        .allows(GrantType::RefreshToken)
        .then(|| new_refresh(ctx, &family, scope));
    let recorded = token_store::create_family(
        &mut ctx.conn(),
        &family,
        refresh.as_ref().map(|(_, row)| row),
        from_code,
    )?;
    Ok(recorded.then(|| Minted {
        access_token: access.token,
        expires_at: access.expires_at,
        refresh_token: refresh.map(|(token, _)| token),
    }))
}

/// Rotates `presented` (a live refresh token of `family`): it is marked used and a new one
/// takes its place, with the same scope (RFC 6749 6), beside an access token for `scope`
/// (which may be narrower). `None` when another request rotated it first: that is reuse.
pub fn rotate_refresh(
    ctx: &FlowContext<'_>,
    client: &Client,
    family: &FamilyRow,
    presented: &RefreshRow,
    scope: &str,
) -> Result<Option<Minted>, MintError> {
    let subject = family.user_id.as_deref().unwrap_or(&client.id);
    let access = sign_access(ctx, client, subject, scope, Some(&family.id))?;
    let (token, row) = new_refresh(ctx, family, &presented.scope);
    let rotated =
        token_store::rotate_refresh(&mut ctx.conn(), &presented.token_hash, ctx.now, &row)?;
    Ok(rotated.then_some(Minted {
        access_token: access.token,
        expires_at: access.expires_at,
        refresh_token: Some(token),
    }))
}

/// An access token for a client acting on its own behalf (client credentials): `sub` is the
/// client id, no refresh token, and nothing is written to the database, so this path costs
/// one RSA signature.
pub fn issue_for_client(
    settings: &Settings,
    keys: &KeyState,
    client: &Client,
    scope: &str,
) -> Result<Minted, MintError> {
    let now = crate::storage::now_unix();
    let access = sign_access_with(settings, keys, now, client, &client.id, scope, None)?;
    Ok(Minted {
        access_token: access.token,
        expires_at: access.expires_at,
        refresh_token: None,
    })
}
