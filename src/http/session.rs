//! The browser session: a random id in an HttpOnly, SameSite=Lax cookie (Secure when the
//! issuer is https); the database keeps its digest, so any instance can resolve it.

use std::time::Duration;

use actix_web::cookie::{time, Cookie, SameSite};
use actix_web::HttpRequest;

use crate::crypto::{mac::digest_secret, random};
use crate::oauth::client::Client;
use crate::oauth::context::{ConsentRead, Owner};
use crate::storage::sessions::{self as session_store, SessionRow};
use crate::storage::users::UserRow;
use crate::storage::{now_unix, DbConnection, StorageResult};

pub const COOKIE: &str = "gatehouse_session";
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);

pub fn cookie_value(req: &HttpRequest) -> Option<String> {
    req.cookie(COOKIE).map(|c| c.value().to_owned())
}

/// The signed-in user behind a session cookie value, if the session is live, with what
/// they consented to for `client`, the registered client the request names. Only a
/// registry entry's id reaches the query, never the raw parameter (PostgreSQL refuses text
/// with a NUL byte in it: that was a 500).
pub fn resolve(
    conn: &mut DbConnection,
    cookie: Option<&str>,
    client: Option<&Client>,
) -> StorageResult<Option<Owner>> {
    let Some(cookie) = cookie else {
        return Ok(None);
    };
    // No client has an empty id: without a client the query reads no consent.
    let client_id = client.map_or("", |client| client.id.as_str());
    let live = session_store::find_live(conn, &digest_secret(cookie), now_unix(), client_id)?;
    Ok(live.map(|live| Owner {
        user_id: live.user_id,
        username: live.username,
        authenticated_at: live.authenticated_at,
        consent: client.map(|client| ConsentRead {
            client_id: client.id.clone(),
            scope: live.consented_scope,
        }),
    }))
}

/// Starts a session for `user`; returns the cookie value to send.
pub fn start(conn: &mut DbConnection, user: &UserRow) -> StorageResult<String> {
    let value = random::token::<32>();
    let now = now_unix();
    session_store::insert(
        conn,
        &SessionRow {
            id_hash: digest_secret(&value),
            user_id: user.id.clone(),
            authenticated_at: now,
            expires_at: now + SESSION_TTL.as_secs() as i64,
            last_seen_at: now,
        },
    )?;
    Ok(value)
}

pub fn end(conn: &mut DbConnection, cookie: &str) -> StorageResult<()> {
    session_store::delete(conn, &digest_secret(cookie))
}

pub fn set_cookie(value: String, secure: bool) -> Cookie<'static> {
    Cookie::build(COOKIE, value)
        .path("/")
        .http_only(true)
        .secure(secure)
        .same_site(SameSite::Lax)
        .max_age(time::Duration::seconds(SESSION_TTL.as_secs() as i64))
        .finish()
}

pub fn clear_cookie(secure: bool) -> Cookie<'static> {
    let mut cookie = set_cookie(String::new(), secure);
    cookie.make_removal();
    cookie
}
