//! Signing keys, and the keys that seal what the server hands out (authorization codes).
//! Private keys arrive here already sealed; this module never sees plaintext.

use diesel::prelude::*;

use super::schema::{sealing_keys, signing_keys};
use super::{DbConnection, StorageResult};

#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = signing_keys)]
pub struct SigningKeyRow {
    pub kid: String,
    pub algorithm: String,
    pub key_bits: i32,
    pub public_n: String,
    pub public_e: String,
    pub encrypted_private_key: Vec<u8>,
    pub created_at: i64,
    pub retired_at: Option<i64>,
    pub publish_until: Option<i64>,
}

/// Everything about a key except its sealed private part: enough to publish it.
#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable)]
#[diesel(table_name = signing_keys)]
pub struct PublicKeyRow {
    pub kid: String,
    pub algorithm: String,
    pub key_bits: i32,
    pub public_n: String,
    pub public_e: String,
    pub created_at: i64,
    pub retired_at: Option<i64>,
    pub publish_until: Option<i64>,
}

impl PublicKeyRow {
    /// A key is published while it is active and, once retired, until every token it could
    /// have signed has expired.
    pub fn is_published(&self, now: i64) -> bool {
        match (self.retired_at, self.publish_until) {
            (None, _) => true,
            (Some(_), Some(until)) => until > now,
            (Some(_), None) => false,
        }
    }
}

/// Every key, newest first. The active key is the newest one not retired.
pub fn list_public(conn: &mut DbConnection) -> StorageResult<Vec<PublicKeyRow>> {
    Ok(signing_keys::table
        .select(PublicKeyRow::as_select())
        .order((signing_keys::created_at.desc(), signing_keys::kid.desc()))
        .load(conn)?)
}

pub fn active(conn: &mut DbConnection) -> StorageResult<Option<SigningKeyRow>> {
    Ok(signing_keys::table
        .filter(signing_keys::retired_at.is_null())
        .order((signing_keys::created_at.desc(), signing_keys::kid.desc()))
        .select(SigningKeyRow::as_select())
        .first(conn)
        .optional()?)
}

pub fn find(conn: &mut DbConnection, kid: &str) -> StorageResult<Option<SigningKeyRow>> {
    Ok(signing_keys::table
        .find(kid)
        .select(SigningKeyRow::as_select())
        .first(conn)
        .optional()?)
}

/// Inserts `new` only when no key is active, in one transaction, so that instances starting
/// together on an empty database end up agreeing on one key. Returns the active key.
pub fn insert_if_none_active(
    conn: &mut DbConnection,
    new: &SigningKeyRow,
) -> StorageResult<SigningKeyRow> {
    super::write_transaction(conn, |conn| {
        if let Some(existing) = active(conn)? {
            return Ok(existing);
        }
        diesel::insert_into(signing_keys::table)
            .values(new)
            .execute(conn)?;
        Ok(new.clone())
    })
}

/// Makes `new` the active key and retires every other active key, keeping each published
/// until `publish_until`.
pub fn rotate(
    conn: &mut DbConnection,
    new: &SigningKeyRow,
    publish_until: i64,
) -> StorageResult<()> {
    super::write_transaction(conn, |conn| {
        diesel::update(signing_keys::table.filter(signing_keys::retired_at.is_null()))
            .set((
                signing_keys::retired_at.eq(new.created_at),
                signing_keys::publish_until.eq(publish_until),
            ))
            .execute(conn)?;
        diesel::insert_into(signing_keys::table)
            .values(new)
            .execute(conn)?;
        Ok(())
    })
}

/// The sealed key stored for `purpose`, storing `generated` first when there is none:
/// instances starting together on an empty database agree, since the first insert wins and
/// every other reads what it stored.
pub fn sealing_key_or_insert(
    conn: &mut DbConnection,
    purpose: &str,
    generated: &[u8],
    now: i64,
) -> StorageResult<Vec<u8>> {
    let row = (
        sealing_keys::purpose.eq(purpose),
        sealing_keys::sealed_key.eq(generated),
        sealing_keys::created_at.eq(now),
    );
    super::write(conn, |conn| {
        super::on_native_connection!(conn, |c| diesel::insert_into(sealing_keys::table)
            .values(row)
            .on_conflict_do_nothing()
            .execute(c))?;
        Ok(())
    })?;
    Ok(sealing_keys::table
        .find(purpose)
        .select(sealing_keys::sealed_key)
        .first(conn)?)
}
