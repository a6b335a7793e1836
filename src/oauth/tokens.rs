//! Minting: RS256 access tokens per RFC 9068 and opaque refresh tokens kept as digests in
//! their family's row (`refresh_token`), so that revocation and reuse detection reach every
//! token of one grant.

use serde::Serialize;

use super::client::Client;
use super::context::FlowContext;
use crate::config::{GrantType, Settings};
use crate::crypto::{mac::digest_secret, random};
use crate::keys::KeyState;
use crate::storage::codes::CodeRow;
use crate::storage::tokens::{self as token_store, FamilyRow};
use crate::storage::tokens::{LiveRefresh, PresentedRefresh, RedeemableToken};
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
    /// Never for a family this server made: its id is a UUID.
    #[error("cannot make a refresh token for family {0}")]
    RefreshToken(String),
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

/// A new refresh token for `generation` of the family `family_id`, idle-limited but never
/// beyond `family_ends`.
fn new_refresh(
    ctx: &FlowContext<'_>,
    family_id: &str,
    generation: i64,
    family_ends: i64,
) -> Result<(String, LiveRefresh), MintError> {
    let token = ctx
        .keys
        .refresh_tokens
        .issue(family_id, generation)
        .ok_or_else(|| MintError::RefreshToken(family_id.to_owned()))?;
    let live = LiveRefresh {
        token_hash: digest_secret(&token),
        generation,
        created_at: ctx.now,
        idle_expires_at: (ctx.now + ctx.settings.tokens.refresh_idle_ttl.as_secs() as i64)
            .min(family_ends),
    };
    Ok((token, live))
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
        refresh_hash: None,
        refresh_generation: 0,
        refresh_created_at: None,
        refresh_idle_expires_at: None,
    };
    let access = sign_access(ctx, client, user_id, scope, Some(&family.id))?;
    let (family, refresh_token) = if client.allows(GrantType::RefreshToken) {
        let (token, live) = new_refresh(ctx, &family.id, 1, family.expires_at)?;
        (family.with_refresh(&live), Some(token))
    } else {
        (family, None)
    };
    let recorded = token_store::create_family(&mut ctx.conn(), &family, from_code)?;
    Ok(recorded.then_some(Minted {
        access_token: access.token,
        expires_at: access.expires_at,
        refresh_token,
    }))
}

/// Rotates `presented` (its family's live refresh token): the next generation takes its
/// place, with the family's scope (RFC 6749 6), beside an access token for `scope` (which
/// may be narrower). `None` when another request rotated it first: that is reuse.
pub fn rotate_refresh(
    ctx: &FlowContext<'_>,
    client: &Client,
    presented: &PresentedRefresh,
    scope: &str,
) -> Result<Option<Minted>, MintError> {
    let family = &presented.family;
    let access = sign_for_family(ctx, client, family, scope)?;
    let (token, successor) = new_refresh(
        ctx,
        &family.id,
        family.refresh_generation + 1,
        family.expires_at,
    )?;
    let rotated = token_store::rotate_refresh(&mut ctx.conn(), presented, ctx.now, &successor)?;
    Ok(rotated.then_some(Minted {
        access_token: access.token,
        expires_at: access.expires_at,
        refresh_token: Some(token),
    }))
}

/// How long a family must still live for its token to be rotated as it is read: more than
/// the moment between the rotation and oxide-auth's check that the grant has not ended.
const ROTATE_ON_READ_MARGIN_SECS: i64 = 60;

/// Rotates a token of a family's row as it is read (`token_store::rotate_redeemable`), when
/// everything a refresh grant checks of it holds for `client`. The family must outlive the
/// grant oxide-auth checks next by `ROTATE_ON_READ_MARGIN_SECS`, so that nothing refuses
/// the request after the token is spent. Returns the successor and the family's row; `None` when a check failed.
pub fn rotate_redeemable(
    ctx: &FlowContext<'_>,
    client: &Client,
    family_id: &str,
    generation: i64,
    token_hash: &str,
) -> Result<Option<(String, FamilyRow)>, MintError> {
    // The statement caps the successor's idle limit at the family's end.
    let (token, successor) = new_refresh(ctx, family_id, generation + 1, i64::MAX)?;
    let presented = RedeemableToken {
        family_id,
        generation,
        token_hash,
        client_id: &client.id,
    };
    let rotated = token_store::rotate_redeemable(
        &mut ctx.conn(),
        presented,
        &successor,
        ctx.now,
        ctx.now + ROTATE_ON_READ_MARGIN_SECS,
    )?;
    Ok(rotated.map(|family| (token, family)))
}

/// The access token that goes with a refresh token `rotate_redeemable` stored.
pub fn access_for_rotated(
    ctx: &FlowContext<'_>,
    client: &Client,
    family: &FamilyRow,
    scope: &str,
    refresh_token: String,
) -> Result<Minted, MintError> {
    let access = sign_for_family(ctx, client, family, scope)?;
    Ok(Minted {
        access_token: access.token,
        expires_at: access.expires_at,
        refresh_token: Some(refresh_token),
    })
}

/// The access token of a refresh of `family`: for its user, or for the client when the
/// family has none.
fn sign_for_family(
    ctx: &FlowContext<'_>,
    client: &Client,
    family: &FamilyRow,
    scope: &str,
) -> Result<SignedAccess, MintError> {
    let subject = family.user_id.as_deref().unwrap_or(&client.id);
    sign_access(ctx, client, subject, scope, Some(&family.id))
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
