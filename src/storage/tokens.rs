//! Token families, refresh tokens (digests only), and the access tokens revoked one by one.
//!
//! An access token of a family names the family in its `jti` (`access_jti`), so revoking
//! the family reaches every access token descended from one grant without a row per token:
//! introspection checks the token's own revocation and its family's. Issuing writes no
//! access-token row at all (a row and its two index entries were a third of the pages each
//! refresh wrote).

use std::collections::HashSet;

use diesel::prelude::*;
use diesel::result::DatabaseErrorKind;

use super::codes::CodeRow;
use super::revocation_log::{self, Revoked};
use super::schema::{access_tokens, refresh_tokens, token_families, users};
use super::{DbConnection, StorageError, StorageResult};

#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable, Insertable)]
#[diesel(table_name = token_families)]
pub struct FamilyRow {
    pub id: String,
    pub client_id: String,
    pub user_id: Option<String>,
    pub grant_type: String,
    pub scope: String,
    pub created_at: i64,
    /// The absolute limit: no refresh token of the family outlives it.
    pub expires_at: i64,
    pub revoked_at: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable, Insertable)]
#[diesel(table_name = refresh_tokens)]
pub struct RefreshRow {
    pub token_hash: String,
    pub family_id: String,
    pub client_id: String,
    pub scope: String,
    pub created_at: i64,
    pub idle_expires_at: i64,
    pub rotated_at: Option<i64>,
}

/// An access token revoked on its own (RFC 7009), kept until it expires. Rows with a
/// `family_id` and no `revoked_at` were written for every family token by versions before
/// family-scoped `jti`s; they go when their family does.
#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable, Insertable)]
#[diesel(table_name = access_tokens)]
pub struct AccessRow {
    pub jti: String,
    pub family_id: Option<String>,
    pub client_id: String,
    pub expires_at: i64,
    pub revoked_at: Option<i64>,
}

/// The `jti` of a new access token: `unique` alone, or after the id of the family it belongs
/// to and a dot. Family ids are UUIDs and `unique` is base64url, so neither holds a dot.
pub fn access_jti(family_id: Option<&str>, unique: &str) -> String {
    match family_id {
        Some(family) => format!("{family}.{unique}"),
        None => unique.to_owned(),
    }
}

/// The family an access token's `jti` names (see `access_jti`). Only meaningful for a `jti`
/// read from a token whose signature was verified.
pub fn family_of_jti(jti: &str) -> Option<&str> {
    jti.split_once('.').map(|(family, _)| family)
}

/// Records a new family with its first tokens, atomically. With `from_code` (the code as
/// opened from its seal), the same transaction records that code redeemed for the family:
/// one commit per redemption. Returns false, writing nothing, when the code had been
/// presented already (a concurrent redemption, or a failed one, came first) or its user
/// was disabled (or erased) since it was issued: the caller must refuse the code
/// (`codes::spend` tells which).
pub fn create_family(
    conn: &mut DbConnection,
    family: &FamilyRow,
    refresh: Option<&RefreshRow>,
    from_code: Option<&CodeRow>,
) -> StorageResult<bool> {
    let redeemed = from_code.map(|code| CodeRow {
        redeemed_at: Some(family.created_at),
        replayed_at: None,
        family_id: Some(family.id.clone()),
        ..code.clone()
    });
    let recorded = if let DbConnection::Postgresql(pg) = conn {
        let statement = super::prepared::CreateFamily {
            family,
            refresh,
            code: redeemed.as_ref(),
        };
        statement
            .get_result::<i64>(pg)
            .map(|recorded| redeemed.is_none() || recorded == 1)
            .map_err(StorageError::from)
    } else {
        let inserted = super::write_transaction(conn, |conn| {
            insert_new_rows(conn, Some(family), refresh)?;
            match &redeemed {
                Some(code) if !super::codes::record_redeemed(conn, code, true)? => {
                    // Another presentation came first, or the user was disabled: none of
                    // this may stay.
                    Err(diesel::result::Error::RollbackTransaction.into())
                }
                _ => Ok(()),
            }
        });
        match inserted {
            Ok(()) => Ok(true),
            Err(StorageError::Query(diesel::result::Error::RollbackTransaction)) => Ok(false),
            Err(e) => Err(e),
        }
    };
    match recorded {
        // The code's user was erased by hand since it was issued: refused as a disabled
        // user's code is, nothing written. PostgreSQL's statement checks for the user in its
        // WHERE and fails here only if the user goes between its snapshot and its
        // foreign-key check; SQLite's family insert fails first. Clients are never deleted
        // (only disabled), so the user is the parent that can go.
        Err(StorageError::Query(diesel::result::Error::DatabaseError(
            DatabaseErrorKind::ForeignKeyViolation,
            _,
        ))) if redeemed.is_some() => Ok(false),
        other => other,
    }
}

/// Marks `old_hash` rotated and records its successor, atomically.
/// Returns false, writing nothing, when the token had been rotated already (by a concurrent
/// request, or long ago) or its family was revoked meanwhile: the caller must refuse.
pub fn rotate_refresh(
    conn: &mut DbConnection,
    old_hash: &str,
    now: i64,
    successor: &RefreshRow,
) -> StorageResult<bool> {
    if let DbConnection::Postgresql(pg) = conn {
        let statement = super::prepared::RotateRefresh {
            old_hash,
            now,
            successor,
        };
        let rotated: i64 = statement.get_result(pg)?;
        return Ok(rotated == 1);
    }
    super::write_transaction(conn, |conn| {
        // Never rotates into a revoked family, and orders itself against a revocation (see
        // the statement).
        let mark_rotated = super::prepared::MarkRotatedInLiveFamily {
            token_hash: old_hash,
            now,
        };
        if super::prepared::execute(conn, mark_rotated)? == 0 {
            return Ok(false);
        }
        insert_new_rows(conn, None, Some(successor))?;
        Ok(true)
    })
}

/// SQLite's inserts of new rows, inside the caller's transaction (on PostgreSQL they are
/// parts of `RotateRefresh` and `CreateFamily`). The statements leave `revoked_at` and
/// `rotated_at` NULL, as a new row has them.
fn insert_new_rows(
    conn: &mut DbConnection,
    family: Option<&FamilyRow>,
    refresh: Option<&RefreshRow>,
) -> StorageResult<()> {
    use super::prepared::{execute, InsertFamily, InsertRefresh};
    if let Some(family) = family {
        debug_assert!(family.revoked_at.is_none());
        execute(conn, InsertFamily { family })?;
    }
    if let Some(refresh) = refresh {
        debug_assert!(refresh.rotated_at.is_none());
        execute(conn, InsertRefresh { refresh })?;
    }
    Ok(())
}

/// Records what a call revoked in the process's revocation log (see `revocation_log`) once
/// it has returned: when it changed anything, or failed (it may have committed first). So
/// none of these functions may run inside a transaction the caller holds open, or the record
/// would come before the commit (none does; debug builds, which the tests run, assert it).
/// A call that changed nothing (a token revoked again) records nothing, so that repeating it
/// costs the introspection cache nothing.
fn recorded<'a, T>(
    result: StorageResult<T>,
    reached: impl FnOnce(&T) -> Option<Revoked<'a>>,
) -> StorageResult<T> {
    let revoked = match &result {
        Ok(changed) => reached(changed),
        Err(_) => Some(Revoked::Everything),
    };
    if let Some(revoked) = revoked {
        revocation_log::process().record(revoked);
    }
    result
}

/// Revokes the family, and with it every access token whose `jti` names it. Returns whether
/// the family was live before this call.
pub fn revoke_family(conn: &mut DbConnection, family_id: &str, now: i64) -> StorageResult<bool> {
    debug_assert!(!super::in_open_transaction(conn), "see `recorded`");
    let rows = super::write_transaction(conn, |conn| revoke_family_rows(conn, family_id, now));
    recorded(rows, |rows| rows.reached(family_id)).map(|rows| rows.family)
}

/// What `revoke_family_rows` changed.
struct RevokedRows {
    family: bool,
    access_tokens: usize,
}

impl RevokedRows {
    /// What to record: rows of tokens issued before family-scoped jtis have jtis that name
    /// no family, so revoking them reaches everything the log cannot tell apart.
    fn reached<'a>(&self, family_id: &'a str) -> Option<Revoked<'a>> {
        if self.access_tokens > 0 {
            Some(Revoked::Everything)
        } else {
            self.family.then_some(Revoked::Family(family_id))
        }
    }
}

/// `revoke_family`'s statements, for a caller already in a transaction.
fn revoke_family_rows(
    conn: &mut DbConnection,
    family_id: &str,
    now: i64,
) -> StorageResult<RevokedRows> {
    let revoked = diesel::update(
        token_families::table
            .find(family_id)
            .filter(token_families::revoked_at.is_null()),
    )
    .set(token_families::revoked_at.eq(now))
    .execute(conn)?;
    // Tokens issued before family-scoped jtis are reached through their rows.
    let access_tokens = diesel::update(
        access_tokens::table
            .filter(access_tokens::family_id.eq(family_id))
            .filter(access_tokens::revoked_at.is_null()),
    )
    .set(access_tokens::revoked_at.eq(now))
    .execute(conn)?;
    Ok(RevokedRows {
        family: revoked == 1,
        access_tokens,
    })
}

pub fn find_access(conn: &mut DbConnection, jti: &str) -> StorageResult<Option<AccessRow>> {
    Ok(super::on_native_connection!(conn, |c| {
        access_tokens::table
            .find(jti)
            .select(AccessRow::as_select())
            .get_result(c)
            .optional()
    })?)
}

/// Which of `jtis` are revoked, on their own or with their family (see `family_of_jti`),
/// or whose family is gone (see `AccessRevoked`).
/// A lookup alone, the common batch, is one prepared statement; a batch of many is two
/// queries (diesel never keeps an IN list prepared on SQLite).
pub fn revoked_among(conn: &mut DbConnection, jtis: &[&str]) -> StorageResult<HashSet<String>> {
    if let [jti] = jtis {
        let statement = super::prepared::AccessRevoked {
            jti,
            // No family has an empty id.
            family_id: family_of_jti(jti).unwrap_or(""),
        };
        let revoked: bool = super::on_native_connection!(conn, |c| statement.get_result(c))?;
        return Ok(HashSet::from_iter(revoked.then(|| jti.to_string())));
    }
    let mut revoked: HashSet<String> = access_tokens::table
        .filter(access_tokens::jti.eq_any(jtis))
        .filter(access_tokens::revoked_at.is_not_null())
        .select(access_tokens::jti)
        .load::<String>(conn)?
        .into_iter()
        .collect();
    let families: Vec<&str> = jtis.iter().filter_map(|jti| family_of_jti(jti)).collect();
    if !families.is_empty() {
        let live_families: HashSet<String> = token_families::table
            .filter(token_families::id.eq_any(&families))
            .filter(token_families::revoked_at.is_null())
            .select(token_families::id)
            .load::<String>(conn)?
            .into_iter()
            .collect();
        revoked.extend(
            jtis.iter()
                .filter(|jti| family_of_jti(jti).is_some_and(|f| !live_families.contains(f)))
                .map(|jti| jti.to_string()),
        );
    }
    Ok(revoked)
}

/// A refresh token as presented: its row, its family, and whether the family's user may
/// still sign in, read in one query (a refresh grant used to make three round trips).
#[derive(Debug, Clone)]
pub struct PresentedRefresh {
    pub token: RefreshRow,
    pub family: FamilyRow,
    /// `false` when the family belongs to a user who was disabled or deleted; `true` for a
    /// live user and for a family with no user.
    pub user_enabled: bool,
}

pub fn find_refresh(
    conn: &mut DbConnection,
    token_hash: &str,
) -> StorageResult<Option<PresentedRefresh>> {
    let found: Option<(RefreshRow, FamilyRow, Option<bool>)> =
        super::on_native_connection!(conn, |c| refresh_tokens::table
            .inner_join(token_families::table.on(token_families::id.eq(refresh_tokens::family_id)))
            .left_join(users::table.on(token_families::user_id.eq(users::id.nullable())))
            .filter(refresh_tokens::token_hash.eq(token_hash))
            .select((
                RefreshRow::as_select(),
                FamilyRow::as_select(),
                users::disabled.nullable(),
            ))
            .get_result(c)
            .optional())?;
    Ok(found.map(|(token, family, disabled)| PresentedRefresh {
        user_enabled: match (&family.user_id, disabled) {
            (None, _) => true,
            (Some(_), Some(disabled)) => !disabled,
            (Some(_), None) => false,
        },
        token,
        family,
    }))
}

/// Records an access token as revoked until it expires: it gets a row of its own (or, for a
/// token issued before family-scoped jtis, its existing row is updated).
pub fn revoke_access(
    conn: &mut DbConnection,
    jti: &str,
    client_id: &str,
    expires_at: i64,
    now: i64,
) -> StorageResult<()> {
    debug_assert!(!super::in_open_transaction(conn), "see `recorded`");
    let changed = super::write(conn, |conn| {
        let updated = diesel::update(
            access_tokens::table
                .find(jti)
                .filter(access_tokens::revoked_at.is_null()),
        )
        .set(access_tokens::revoked_at.eq(now))
        .execute(conn)?;
        if updated == 1 {
            return Ok(true);
        }
        if find_access(conn, jti)?.is_some() {
            return Ok(false);
        }
        let row = AccessRow {
            jti: jti.to_owned(),
            family_id: None,
            client_id: client_id.to_owned(),
            expires_at,
            revoked_at: Some(now),
        };
        match diesel::insert_into(access_tokens::table)
            .values(&row)
            .execute(conn)
        {
            Ok(_) => Ok(true),
            // A concurrent revocation of the same token got there first (and records it).
            Err(diesel::result::Error::DatabaseError(
                diesel::result::DatabaseErrorKind::UniqueViolation,
                _,
            )) => Ok(false),
            Err(e) => Err(e.into()),
        }
    });
    recorded(changed, |changed| {
        changed.then_some(Revoked::AccessToken(jti))
    })
    .map(drop)
}

/// Revokes every family of a user (a disabled user keeps no working token).
pub fn revoke_user_families(
    conn: &mut DbConnection,
    user_id: &str,
    now: i64,
) -> StorageResult<usize> {
    let families: Vec<String> = token_families::table
        .filter(token_families::user_id.eq(user_id))
        .filter(token_families::revoked_at.is_null())
        .select(token_families::id)
        .load(conn)?;
    for family in &families {
        revoke_family(conn, family, now)?;
    }
    Ok(families.len())
}

/// Deletes families (and, by cascade, their refresh and access rows) that ended before
/// `cutoff`, and revoked-token rows of access tokens that expired before it.
pub fn delete_expired_before(conn: &mut DbConnection, cutoff: i64) -> StorageResult<usize> {
    debug_assert!(!super::in_open_transaction(conn), "see `recorded`");
    let deleted = super::write_transaction(conn, |conn| {
        let families: Vec<String> = token_families::table
            .filter(token_families::expires_at.lt(cutoff))
            .select(token_families::id)
            .load(conn)?;
        diesel::delete(refresh_tokens::table.filter(refresh_tokens::family_id.eq_any(&families)))
            .execute(conn)?;
        diesel::delete(access_tokens::table.filter(access_tokens::family_id.eq_any(&families)))
            .execute(conn)?;
        diesel::delete(access_tokens::table.filter(access_tokens::expires_at.lt(cutoff)))
            .execute(conn)?;
        Ok(
            diesel::delete(token_families::table.filter(token_families::id.eq_any(&families)))
                .execute(conn)?,
        )
    });
    // The cutoff leaves these families no unexpired access token unless access_ttl was
    // shortened since they were issued; the database path would then call one inactive.
    recorded(deleted, |families| {
        (*families > 0).then_some(Revoked::Everything)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_family_revocation_names_its_family_unless_it_reached_older_rows() {
        let reached = |family, access_tokens| {
            RevokedRows {
                family,
                access_tokens,
            }
            .reached("family-a")
        };
        assert_eq!(reached(true, 0), Some(Revoked::Family("family-a")));
        assert_eq!(reached(false, 0), None, "already revoked");
        // Tokens issued before family-scoped jtis have rows, and jtis that name no family.
        assert_eq!(reached(true, 2), Some(Revoked::Everything));
        assert_eq!(reached(false, 1), Some(Revoked::Everything));
    }
}
