//! Browser sessions, shared by every instance. Only the digest of the cookie value is kept.

use diesel::prelude::*;

use super::schema::{browser_sessions, consents, users};
use super::{DbConnection, StorageResult};

#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = browser_sessions)]
pub struct SessionRow {
    pub id_hash: String,
    pub user_id: String,
    pub authenticated_at: i64,
    pub expires_at: i64,
    pub last_seen_at: i64,
}

pub fn insert(conn: &mut DbConnection, session: &SessionRow) -> StorageResult<()> {
    super::write(conn, |conn| {
        diesel::insert_into(browser_sessions::table)
            .values(session)
            .execute(conn)?;
        Ok(())
    })
}

/// A live session as read for /authorize: only what the flow uses. The user's password
/// hash and the session's bookkeeping stay in the database, so that every /authorize does
/// not carry a password hash over the wire and decode columns nobody reads. The fields
/// are in the order `find_live` selects them.
#[derive(Debug, Queryable)]
pub struct LiveSession {
    pub user_id: String,
    pub username: String,
    pub authenticated_at: i64,
    /// The scope the user consented to for the client the request names, read in the same
    /// query: the consent check then costs no second round trip.
    pub consented_scope: Option<String>,
}

/// The live session and its user, if the session exists, has not expired, and its user is
/// still enabled; with the user's remembered consent for `client_id`, if any.
pub fn find_live(
    conn: &mut DbConnection,
    id_hash: &str,
    now: i64,
    client_id: &str,
) -> StorageResult<Option<LiveSession>> {
    let found = super::on_native_connection!(conn, |c| {
        browser_sessions::table
            .inner_join(users::table.on(users::id.eq(browser_sessions::user_id)))
            .left_join(
                consents::table.on(consents::user_id
                    .eq(browser_sessions::user_id)
                    .and(consents::client_id.eq(client_id))),
            )
            .filter(browser_sessions::id_hash.eq(id_hash))
            .filter(browser_sessions::expires_at.gt(now))
            .filter(users::disabled.eq(false))
            .select((
                browser_sessions::user_id,
                users::username,
                browser_sessions::authenticated_at,
                consents::scope.nullable(),
            ))
            .get_result::<LiveSession>(c)
            .optional()
    })?;
    Ok(found)
}

pub fn delete(conn: &mut DbConnection, id_hash: &str) -> StorageResult<()> {
    super::write(conn, |conn| {
        diesel::delete(browser_sessions::table.find(id_hash)).execute(conn)?;
        Ok(())
    })
}

pub fn delete_expired(conn: &mut DbConnection, now: i64) -> StorageResult<usize> {
    super::write(conn, |conn| {
        Ok(
            diesel::delete(browser_sessions::table.filter(browser_sessions::expires_at.le(now)))
                .execute(conn)?,
        )
    })
}
