//! Remembered consent: per user and client, the set of scopes the user has approved.

use diesel::prelude::*;
use diesel::result::{DatabaseErrorKind, Error as DieselError};

use super::schema::consents;
use super::{DbConnection, StorageResult};

#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = consents)]
pub struct ConsentRow {
    pub user_id: String,
    pub client_id: String,
    /// Space-separated, sorted, deduplicated.
    pub scope: String,
    pub granted_at: i64,
}

pub fn find(
    conn: &mut DbConnection,
    user_id: &str,
    client_id: &str,
) -> StorageResult<Option<ConsentRow>> {
    Ok(super::on_native_connection!(conn, |c| consents::table
        .find((user_id, client_id))
        .select(ConsentRow::as_select())
        .get_result(c)
        .optional())?)
}

/// Replaces the remembered consent for this user and client. Two concurrent calls (a
/// double-clicked Allow) both succeed: an insert that loses the race becomes an update.
pub fn remember(conn: &mut DbConnection, consent: &ConsentRow) -> StorageResult<()> {
    super::write(conn, |conn| {
        let update = |conn: &mut DbConnection| {
            diesel::update(consents::table.find((&consent.user_id, &consent.client_id)))
                .set((
                    consents::scope.eq(&consent.scope),
                    consents::granted_at.eq(consent.granted_at),
                ))
                .execute(conn)
        };
        if update(conn)? == 1 {
            return Ok(());
        }
        match diesel::insert_into(consents::table)
            .values(consent)
            .execute(conn)
        {
            Ok(_) => Ok(()),
            Err(DieselError::DatabaseError(DatabaseErrorKind::UniqueViolation, _)) => {
                update(conn)?;
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    })
}
