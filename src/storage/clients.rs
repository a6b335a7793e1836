//! Registered clients, as synced from the configuration file (the source of truth).

use diesel::prelude::*;

use super::schema::clients;
use super::{DbConnection, StorageError, StorageResult};

/// List-valued columns are JSON arrays in TEXT, the one portable way across both backends.
#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable, Insertable, AsChangeset)]
#[diesel(table_name = clients)]
#[diesel(treat_none_as_null = true)]
pub struct ClientRow {
    pub id: String,
    pub name: String,
    pub secret_hash: Option<String>,
    pub redirect_uris: String,
    pub grant_types: String,
    pub scopes: String,
    pub default_scopes: String,
    pub audience: String,
    pub allowed_origins: String,
    pub skip_consent: bool,
    pub enabled: bool,
    pub updated_at: i64,
}

impl ClientRow {
    pub fn list(column: &str) -> StorageResult<Vec<String>> {
        serde_json::from_str(column)
            .map_err(|e| StorageError::Corrupt(format!("client list column: {e}")))
    }

    pub fn encode_list(values: &[String]) -> String {
        serde_json::to_string(values).unwrap_or_else(|_| "[]".to_owned())
    }
}

/// Upserts every configured client and disables those no longer configured, atomically.
pub fn sync(conn: &mut DbConnection, configured: &[ClientRow]) -> StorageResult<SyncReport> {
    super::write_transaction(conn, |conn| {
        let mut report = SyncReport::default();
        for wanted in configured {
            let existing: Option<ClientRow> = clients::table
                .find(&wanted.id)
                .select(ClientRow::as_select())
                .get_result(conn)
                .optional()?;
            match existing {
                None => {
                    diesel::insert_into(clients::table)
                        .values(wanted)
                        .execute(conn)?;
                    report.added += 1;
                }
                Some(current) => {
                    let unchanged = ClientRow {
                        updated_at: current.updated_at,
                        ..wanted.clone()
                    } == current;
                    if !unchanged {
                        diesel::update(clients::table.find(&wanted.id))
                            .set(wanted)
                            .execute(conn)?;
                        report.updated += 1;
                    }
                }
            }
        }
        let ids: Vec<&str> = configured.iter().map(|c| c.id.as_str()).collect();
        report.disabled = diesel::update(
            clients::table
                .filter(clients::id.ne_all(ids))
                .filter(clients::enabled.eq(true)),
        )
        .set(clients::enabled.eq(false))
        .execute(conn)?;
        Ok(report)
    })
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SyncReport {
    pub added: usize,
    pub updated: usize,
    pub disabled: usize,
}

pub fn list(conn: &mut DbConnection) -> StorageResult<Vec<ClientRow>> {
    Ok(clients::table
        .select(ClientRow::as_select())
        .order(clients::id.asc())
        .load(conn)?)
}

pub fn find(conn: &mut DbConnection, id: &str) -> StorageResult<Option<ClientRow>> {
    Ok(clients::table
        .find(id)
        .select(ClientRow::as_select())
        .get_result(conn)
        .optional()?)
}
