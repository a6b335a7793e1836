//! RFC 7009 revocation and RFC 7662 introspection. Both recognise our two kinds of token:
//! a JWT access token (verified with our published keys, RS256 only) and an opaque refresh
//! token (looked up by digest).

use serde_json::{json, Value};

use super::refresh_token;
use crate::audit::{AuditEvent, Event};
use crate::config::Settings;
use crate::keys::{KeyState, VerifiedClaims};
use crate::storage::tokens::{self as token_store, FamilyRow, RefreshRow};
use crate::storage::{now_unix, DbConnection, StorageResult};

/// What a presented token turned out to be.
enum Presented {
    Access(VerifiedClaims),
    Refresh(RefreshRow, FamilyRow),
    Unknown,
}

/// A JWT has two dots; an opaque refresh token (base64url) has none.
pub fn looks_like_jwt(token: &str) -> bool {
    token.contains('.')
}

/// The claims of one of our access tokens, checked against our published keys; no database.
pub fn verify_access(settings: &Settings, keys: &KeyState, token: &str) -> Option<VerifiedClaims> {
    keys.verifier.verify(token, &settings.issuer)
}

fn identify(
    conn: &mut DbConnection,
    settings: &Settings,
    keys: &KeyState,
    token: &str,
) -> StorageResult<Presented> {
    if looks_like_jwt(token) {
        return Ok(match verify_access(settings, keys, token) {
            Some(claims) => Presented::Access(claims),
            None => Presented::Unknown,
        });
    }
    Ok(
        match refresh_token::find(conn, &keys.refresh_tokens, token)? {
            Some(found) => Presented::Refresh(found.token, found.family),
            None => Presented::Unknown,
        },
    )
}

/// Revokes `token` if it is `client_id`'s: a refresh token takes its whole family with it
/// (and so every access token issued from it); an access token is recorded as revoked until
/// it expires. Unknown tokens and other clients' tokens change nothing (RFC 7009 2.2: the
/// answer is 200 either way, so a client cannot probe for tokens). Returns the audit event
/// of a revocation, for the caller to complete with what it knows (the address).
pub fn revoke(
    conn: &mut DbConnection,
    settings: &Settings,
    keys: &KeyState,
    client_id: &str,
    token: &str,
) -> StorageResult<Option<AuditEvent>> {
    let now = now_unix();
    let revoked = AuditEvent::new(Event::TokenRevoked, "success").client(Some(client_id));
    match identify(conn, settings, keys, token)? {
        Presented::Refresh(row, family) if row.client_id == client_id => {
            token_store::revoke_family(conn, &family.id, now)?;
            Ok(Some(revoked.user(family.user_id.as_deref()).detail(
                format!("refresh_token; family={} and its access tokens", family.id),
            )))
        }
        Presented::Access(claims) if claims.client_id == client_id => {
            token_store::revoke_access(conn, &claims.jti, client_id, claims.exp, now)?;
            let user = (claims.sub != claims.client_id).then_some(claims.sub.as_str());
            Ok(Some(
                revoked
                    .user(user)
                    .detail(format!("access_token; jti={}", claims.jti)),
            ))
        }
        _ => Ok(None),
    }
}

/// What RFC 7662 2.2 says of an active access token: any confidential client (a resource
/// server) may introspect it. `claims` have been verified and found not revoked.
pub fn introspect_access(claims: &VerifiedClaims) -> Value {
    json!({
        "active": true,
        "scope": claims.scope,
        "client_id": claims.client_id,
        "sub": claims.sub,
        "exp": claims.exp,
        "iat": claims.iat,
        "iss": claims.iss,
        "aud": claims.aud,
        "jti": claims.jti,
        "token_type": "Bearer",
    })
}

/// RFC 7662 2.2 for an opaque token: a refresh token is active only for the client it was
/// issued to, and only while it may still be redeemed.
pub fn introspect_refresh(
    conn: &mut DbConnection,
    settings: &Settings,
    keys: &KeyState,
    client_id: &str,
    token: &str,
) -> StorageResult<Value> {
    let now = now_unix();
    let Some(found) = refresh_token::find(conn, &keys.refresh_tokens, token)? else {
        return Ok(inactive());
    };
    let (row, family) = (found.token, found.family);
    let live = row.client_id == client_id
        && row.rotated_at.is_none()
        && family.revoked_at.is_none()
        && row.idle_expires_at.min(family.expires_at) > now;
    if !live {
        return Ok(inactive());
    }
    Ok(json!({
        "active": true,
        "scope": row.scope,
        "client_id": row.client_id,
        "sub": family.user_id.unwrap_or(family.client_id),
        "exp": row.idle_expires_at.min(family.expires_at),
        "iat": row.created_at,
        "iss": settings.issuer,
        "token_type": "refresh_token",
    }))
}

/// The whole answer for any token that is not active (RFC 7662 2.2).
pub fn inactive() -> Value {
    json!({"active": false})
}
