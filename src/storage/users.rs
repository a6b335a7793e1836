//! Resource owners. Passwords arrive here already hashed.

use diesel::prelude::*;
use diesel::result::{DatabaseErrorKind, Error as DieselError};

use super::schema::users;
use super::{DbConnection, StorageError, StorageResult};

#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable, Insertable)]
#[diesel(table_name = users)]
pub struct UserRow {
    pub id: String,
    pub username: String,
    pub password_hash: String,
    pub disabled: bool,
    pub created_at: i64,
    pub updated_at: i64,
}

/// Fails with `StorageError::Conflict` when the username is taken.
pub fn insert(conn: &mut DbConnection, user: &UserRow) -> StorageResult<()> {
    super::write(conn, |conn| {
        match diesel::insert_into(users::table).values(user).execute(conn) {
            Ok(_) => Ok(()),
            Err(DieselError::DatabaseError(DatabaseErrorKind::UniqueViolation, _)) => Err(
                StorageError::Conflict(format!("user {} already exists", user.username)),
            ),
            Err(e) => Err(e.into()),
        }
    })
}

pub fn find_by_username(conn: &mut DbConnection, username: &str) -> StorageResult<Option<UserRow>> {
    Ok(super::on_native_connection!(conn, |c| users::table
        .filter(users::username.eq(username))
        .select(UserRow::as_select())
        .get_result(c)
        .optional())?)
}

pub fn find(conn: &mut DbConnection, id: &str) -> StorageResult<Option<UserRow>> {
    Ok(super::on_native_connection!(conn, |c| users::table
        .find(id)
        .select(UserRow::as_select())
        .get_result(c)
        .optional())?)
}

pub fn list(conn: &mut DbConnection) -> StorageResult<Vec<UserRow>> {
    Ok(users::table
        .select(UserRow::as_select())
        .order(users::username.asc())
        .load(conn)?)
}

/// Returns false when no such user exists.
pub fn set_disabled(
    conn: &mut DbConnection,
    username: &str,
    disabled: bool,
    now: i64,
) -> StorageResult<bool> {
    super::write(conn, |conn| {
        let changed = diesel::update(users::table.filter(users::username.eq(username)))
            .set((users::disabled.eq(disabled), users::updated_at.eq(now)))
            .execute(conn)?;
        Ok(changed == 1)
    })
}

/// Returns false when no such user exists.
pub fn set_password_hash(
    conn: &mut DbConnection,
    username: &str,
    hash: &str,
    now: i64,
) -> StorageResult<bool> {
    super::write(conn, |conn| {
        let changed = diesel::update(users::table.filter(users::username.eq(username)))
            .set((users::password_hash.eq(hash), users::updated_at.eq(now)))
            .execute(conn)?;
        Ok(changed == 1)
    })
}
