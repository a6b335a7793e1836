//! Remembered consent: per user and client, the set of scopes the user has approved.

use diesel::prelude::*;

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
    Ok(consents::table
        .find((user_id, client_id))
        .select(ConsentRow::as_select())
        .first(conn)
        .optional()?)
}

/// Replaces the remembered consent for this user and client.
pub fn remember(conn: &mut DbConnection, consent: &ConsentRow) -> StorageResult<()> {
    conn.transaction(|conn| {
        diesel::delete(consents::table.find((&consent.user_id, &consent.client_id)))
            .execute(conn)?;
        diesel::insert_into(consents::table)
            .values(consent)
            .execute(conn)?;
        Ok(())
    })
}
