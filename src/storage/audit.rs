//! The audit trail's table: append, read the latest, forget past the retention.

use diesel::prelude::*;

use super::schema::audit_events;
use super::{DbConnection, StorageResult};

#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = audit_events)]
// NULL for a missing field rather than DEFAULT, which SQLite's VALUES list lacks: so that
// many rows can go in one multi-row INSERT on both backends.
#[diesel(treat_none_as_default_value = false)]
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

/// Rows per INSERT statement: 8 bound values each, well under either backend's limit on
/// parameters per statement (32766 for SQLite, 65535 for PostgreSQL).
const ROWS_PER_INSERT: usize = 256;

/// Appends rows in one transaction, many rows per statement. The server writes one row per
/// token issued; one statement each cost PostgreSQL more CPU than the grant itself.
pub fn insert_all(conn: &mut DbConnection, rows: &[AuditRow]) -> StorageResult<()> {
    super::write_transaction(conn, |conn| {
        for chunk in rows.chunks(ROWS_PER_INSERT) {
            let statement = diesel::insert_into(audit_events::table).values(chunk);
            // MultiConnection does not forward multi-row inserts; each backend's own
            // connection does.
            super::on_native_connection!(conn, |c| statement.execute(c))?;
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
