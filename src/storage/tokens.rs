//! Token families, refresh tokens (digests only), and the access tokens revoked one by one.
//!
//! A family's row holds its one live refresh token (`oauth::refresh_token`), so that a
//! rotation is one UPDATE of that row; `refresh_tokens` keeps only tokens of the earlier
//! format, a row each, until they have rotated once (and, marked rotated, for reuse
//! detection until their family ends).
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
    /// The digest of the family's live refresh token (`oauth::refresh_token`), or `None`
    /// when the client may not refresh or the live token is of the earlier format (a row of
    /// `refresh_tokens`).
    pub refresh_hash: Option<String>,
    /// The generation of the live refresh token; the first is 1, none 0.
    pub refresh_generation: i64,
    pub refresh_created_at: Option<i64>,
    pub refresh_idle_expires_at: Option<i64>,
}

impl FamilyRow {
    /// The family with `refresh` as its live refresh token.
    pub fn with_refresh(self, refresh: &LiveRefresh) -> FamilyRow {
        FamilyRow {
            refresh_hash: Some(refresh.token_hash.clone()),
            refresh_generation: refresh.generation,
            refresh_created_at: Some(refresh.created_at),
            refresh_idle_expires_at: Some(refresh.idle_expires_at),
            ..self
        }
    }
}

/// A family's live refresh token, as the family's row holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveRefresh {
    pub token_hash: String,
    pub generation: i64,
    pub created_at: i64,
    pub idle_expires_at: i64,
}

/// A refresh token as presented. A row of `refresh_tokens` for a token of the earlier
/// format; for a token of a family's row (`find_refresh`), what that row says of it.
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

/// Records a new family (with its live refresh token, if any), atomically. With
/// `from_code` (the code as opened from its seal), the same transaction records that code
/// redeemed for the family: one commit per redemption. Returns false, writing nothing, when
/// the code had been presented already (a concurrent redemption, or a failed one, came
/// first) or its user was disabled (or erased) since it was issued: the caller must refuse
/// the code (`codes::spend` tells which).
pub fn create_family(
    conn: &mut DbConnection,
    family: &FamilyRow,
    from_code: Option<&CodeRow>,
) -> StorageResult<bool> {
    debug_assert!(family.revoked_at.is_none());
    let redeemed = from_code.map(|code| CodeRow {
        redeemed_at: Some(family.created_at),
        replayed_at: None,
        family_id: Some(family.id.clone()),
        ..code.clone()
    });
    let recorded = if let DbConnection::Postgresql(pg) = conn {
        let statement = super::prepared::CreateFamily {
            family,
            code: redeemed.as_ref(),
        };
        statement
            .get_result::<i64>(pg)
            .map(|recorded| redeemed.is_none() || recorded == 1)
            .map_err(StorageError::from)
    } else {
        let inserted = super::write_transaction(conn, |conn| {
            super::prepared::execute(conn, super::prepared::InsertFamily { family })?;
            match &redeemed {
                Some(code) if !super::codes::record_redeemed(conn, code, true)? => {
                    // Another presentation came first, or the user was disabled: none of
                    // this may stay.
                    Err(diesel::result::Error::RollbackTransaction.into())
                }
                _ => Ok(()),
            }
        });
        committed(inserted)
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

/// Replaces the presented refresh token, the family's live one, with `successor`. Returns
/// false, writing nothing, when it is no longer the live one (a concurrent request rotated
/// it) or the family was revoked meanwhile: the caller must refuse.
///
/// One UPDATE of the family's row: a revocation updates the same row, so the two are
/// ordered, and of two rotations of the same token the second finds another digest there
/// when it re-checks. A token of the earlier format is marked rotated in its own row, in
/// the transaction that moves its successor into the family's row.
pub fn rotate_refresh(
    conn: &mut DbConnection,
    presented: &PresentedRefresh,
    now: i64,
    successor: &LiveRefresh,
) -> StorageResult<bool> {
    let family_id = presented.family.id.as_str();
    let old_hash = presented.token.token_hash.as_str();
    if let Some(generation) = presented.generation {
        let statement = super::prepared::RotateInFamily {
            family_id,
            generation,
            old_hash,
            successor,
        };
        let rotated = super::write(conn, |conn| Ok(super::prepared::execute(conn, statement)?))?;
        return Ok(rotated == 1);
    }
    let rotated = super::write_transaction(conn, |conn| {
        let moved = diesel::update(
            token_families::table
                .find(family_id)
                .filter(token_families::revoked_at.is_null())
                .filter(token_families::refresh_hash.is_null()),
        )
        .set((
            token_families::refresh_hash.eq(&successor.token_hash),
            token_families::refresh_generation.eq(successor.generation),
            token_families::refresh_created_at.eq(successor.created_at),
            token_families::refresh_idle_expires_at.eq(successor.idle_expires_at),
        ))
        .execute(conn)?;
        // After the family's row: that UPDATE is the lock a revocation takes.
        let marked = moved == 1
            && diesel::update(
                refresh_tokens::table
                    .find(old_hash)
                    .filter(refresh_tokens::rotated_at.is_null()),
            )
            .set(refresh_tokens::rotated_at.eq(now))
            .execute(conn)?
                == 1;
        if marked {
            Ok(())
        } else {
            Err(diesel::result::Error::RollbackTransaction.into())
        }
    });
    committed(rotated)
}

/// A write transaction's outcome as whether it committed: `RollbackTransaction` is the
/// transaction's own way of writing nothing (a check inside it failed), not an error.
fn committed(outcome: StorageResult<()>) -> StorageResult<bool> {
    match outcome {
        Ok(()) => Ok(true),
        Err(StorageError::Query(diesel::result::Error::RollbackTransaction)) => Ok(false),
        Err(e) => Err(e),
    }
}

/// A token of a family's row as presented by `client_id`, for `rotate_redeemable`.
#[derive(Debug, Clone, Copy)]
pub struct RedeemableToken<'a> {
    pub family_id: &'a str,
    pub generation: i64,
    pub token_hash: &'a str,
    pub client_id: &'a str,
}

/// Rotates a token of the family's row as it reads it, if everything a refresh grant checks
/// of the token holds (see `prepared::RotateRedeemable`): one statement where reading and
/// rotating took two. Returns the family's row as the rotation left it; `None`, writing
/// nothing, when any check failed, for the caller to read the token and tell why.
pub fn rotate_redeemable(
    conn: &mut DbConnection,
    presented: RedeemableToken<'_>,
    successor: &LiveRefresh,
    now: i64,
    until: i64,
) -> StorageResult<Option<FamilyRow>> {
    let statement = super::prepared::RotateRedeemable {
        rotation: super::prepared::RotateInFamily {
            family_id: presented.family_id,
            generation: presented.generation,
            old_hash: presented.token_hash,
            successor,
        },
        client_id: presented.client_id,
        now,
        until,
    };
    super::write(conn, |conn| {
        Ok(super::on_native_connection!(conn, |c| statement
            .get_result::<FamilyRow>(c)
            .optional())?)
    })
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

/// A refresh token as presented: what is known of it, its family, and whether the family's
/// user may still sign in, read in one query.
#[derive(Debug, Clone)]
pub struct PresentedRefresh {
    pub token: RefreshRow,
    pub family: FamilyRow,
    /// `false` when the family belongs to a user who was disabled or deleted; `true` for a
    /// live user and for a family with no user.
    pub user_enabled: bool,
    /// The token's generation, for a token of the family's row; `None` for a token of the
    /// earlier format (a row of `refresh_tokens`).
    pub generation: Option<i64>,
}

/// How to find a presented refresh token (see `oauth::refresh_token`).
#[derive(Debug, Clone, Copy)]
pub enum RefreshLookup<'a> {
    /// A token that names its family and generation.
    InFamily {
        family_id: &'a str,
        generation: i64,
        token_hash: &'a str,
    },
    /// A token of the earlier format, found by its digest.
    Legacy { token_hash: &'a str },
}

pub fn find_refresh(
    conn: &mut DbConnection,
    lookup: RefreshLookup<'_>,
) -> StorageResult<Option<PresentedRefresh>> {
    match lookup {
        RefreshLookup::InFamily {
            family_id,
            generation,
            token_hash,
        } => find_in_family(conn, family_id, generation, token_hash),
        RefreshLookup::Legacy { token_hash } => find_legacy(conn, token_hash),
    }
}

fn user_enabled(family: &FamilyRow, disabled: Option<bool>) -> bool {
    match (&family.user_id, disabled) {
        (None, _) => true,
        (Some(_), Some(disabled)) => !disabled,
        (Some(_), None) => false,
    }
}

/// The family's row tells whether the token is its live one (digest and generation match)
/// or one it has rotated (an older generation: the tag showed it was issued). Anything else
/// is not a token of the family.
fn find_in_family(
    conn: &mut DbConnection,
    family_id: &str,
    generation: i64,
    token_hash: &str,
) -> StorageResult<Option<PresentedRefresh>> {
    let found: Option<(FamilyRow, Option<bool>)> =
        super::on_native_connection!(conn, |c| token_families::table
            .left_join(users::table.on(token_families::user_id.eq(users::id.nullable())))
            .filter(token_families::id.eq(family_id))
            .select((FamilyRow::as_select(), users::disabled.nullable()))
            .get_result(c)
            .optional())?;
    let Some((family, disabled)) = found else {
        return Ok(None);
    };
    let live = generation == family.refresh_generation
        && family.refresh_hash.as_deref() == Some(token_hash);
    if !live && generation >= family.refresh_generation {
        return Ok(None);
    }
    let token = RefreshRow {
        token_hash: token_hash.to_owned(),
        family_id: family.id.clone(),
        client_id: family.client_id.clone(),
        scope: family.scope.clone(),
        created_at: family.refresh_created_at.unwrap_or(family.created_at),
        idle_expires_at: family.refresh_idle_expires_at.unwrap_or(family.expires_at),
        // A rotated token's successor was issued when it was rotated (an older one's, later).
        rotated_at: (!live).then(|| family.refresh_created_at.unwrap_or(family.created_at)),
    };
    Ok(Some(PresentedRefresh {
        user_enabled: user_enabled(&family, disabled),
        token,
        family,
        generation: Some(generation),
    }))
}

fn find_legacy(
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
        user_enabled: user_enabled(&family, disabled),
        token,
        family,
        generation: None,
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
