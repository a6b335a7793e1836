//! The audit trail's table: append, read the latest, forget past the retention.

use diesel::prelude::*;

use super::schema::audit_events;
use super::{DbConnection, StorageResult};

#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable)]
#[diesel(table_name = audit_events)]
pub struct AuditRow {
    /// A UUIDv7: ids sort in the order events were recorded.
    pub id: String,
    pub occurred_at: i64,
    pub event: String,
    pub outcome: String,
    pub user_id: Option<String>,
    pub client_id: Option<String>,
    pub ip: Option<String>,
    pub detail: Option<String>,
}

/// Appends rows in one transaction: on PostgreSQL one statement for them all, on SQLite a
/// statement per row (see `InsertAuditRow` and `InsertAuditRows` for why). The server
/// writes one row per token issued; one transaction each cost PostgreSQL more CPU than the
/// grant itself.
pub fn insert_all(conn: &mut DbConnection, rows: &[AuditRow]) -> StorageResult<()> {
    use super::prepared::{execute, InsertAuditRow, InsertAuditRows};
    if let DbConnection::Postgresql(pg) = conn {
        InsertAuditRows::of(rows).execute(pg)?;
        return Ok(());
    }
    super::write_transaction(conn, |conn| {
        for row in rows {
            execute(conn, InsertAuditRow { row })?;
        }
        Ok(())
    })
}

/// The newest `limit` rows, oldest first.
pub fn latest(conn: &mut DbConnection, limit: i64) -> StorageResult<Vec<AuditRow>> {
    let mut rows: Vec<AuditRow> = audit_events::table
        .order((audit_events::occurred_at.desc(), audit_events::id.desc()))
        .limit(limit)
        .select(AuditRow::as_select())
        .load(conn)?;
    rows.reverse();
    Ok(rows)
}

pub fn delete_before(conn: &mut DbConnection, before: i64) -> StorageResult<usize> {
    super::write(conn, |conn| {
        Ok(
            diesel::delete(audit_events::table.filter(audit_events::occurred_at.lt(before)))
                .execute(conn)?,
        )
    })
}
