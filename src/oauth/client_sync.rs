//! Clients in the configuration file are the source of truth: at start they are written to
//! the database, and clients no longer configured are disabled there (never deleted, so
//! their tokens and consents still resolve to a client that refuses new grants).

use crate::config::{ClientSecret, ClientSettings, Settings};
use crate::crypto::password;
use crate::storage::clients::{self as client_store, ClientRow, SyncReport};
use crate::storage::{now_unix, DbConnection, StorageResult};

pub fn sync_clients(conn: &mut DbConnection, settings: &Settings) -> StorageResult<SyncReport> {
    let now = now_unix();
    let mut rows = Vec::with_capacity(settings.clients.len());
    for client in &settings.clients {
        let stored = client_store::find(conn, &client.id)?;
        let secret_hash = secret_hash(
            client,
            stored.as_ref().and_then(|r| r.secret_hash.as_deref()),
        );
        rows.push(ClientRow {
            id: client.id.clone(),
            name: client.name.clone(),
            secret_hash,
            redirect_uris: ClientRow::encode_list(&client.redirect_uris),
            grant_types: ClientRow::encode_list(
                &client
                    .grant_types
                    .iter()
                    .map(|g| g.as_str().to_owned())
                    .collect::<Vec<_>>(),
            ),
            scopes: ClientRow::encode_list(&client.scopes),
            default_scopes: ClientRow::encode_list(&client.default_scopes),
            audience: ClientRow::encode_list(&settings.token_audience_for(client)),
            allowed_origins: ClientRow::encode_list(&client.allowed_origins),
            skip_consent: client.skip_consent,
            enabled: true,
            updated_at: now,
        });
    }
    let report = client_store::sync(conn, &rows)?;
    if report.added + report.updated + report.disabled > 0 {
        crate::audit::AuditEvent::new(crate::audit::Event::ClientsSynced, "success")
            .detail(format!(
                "added={} updated={} disabled={}",
                report.added, report.updated, report.disabled
            ))
            .record_now(conn)?;
    }
    tracing::info!(
        configured = rows.len(),
        added = report.added,
        updated = report.updated,
        disabled = report.disabled,
        "clients synced from configuration"
    );
    Ok(report)
}

/// A secret from the environment is hashed only when the stored hash does not already
/// verify it, so restarts do not rewrite the row and instances do not fight over it.
fn secret_hash(client: &ClientSettings, stored: Option<&str>) -> Option<String> {
    match &client.secret {
        ClientSecret::None => None,
        ClientSecret::Hash(hash) => Some(hash.clone()),
        ClientSecret::FromEnv { value, .. } => match stored {
            Some(stored) if password::verify(value, stored) => Some(stored.to_owned()),
            _ => Some(password::hash(value)),
        },
    }
}
