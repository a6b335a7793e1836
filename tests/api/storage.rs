use diesel::prelude::*;
use gatehouse::storage::schema::*;

use crate::on_both_backends;
use crate::support::*;

on_both_backends!(the_diesel_schema_matches_both_migrations);

/// Every table and column diesel knows must exist in the migrated database of each backend.
fn the_diesel_schema_matches_both_migrations(db: TestDb) {
    let mut conn = db.connect();
    let applied = gatehouse::storage::run_migrations(&mut conn).unwrap();
    assert!(applied >= 1);
    macro_rules! probe {
        ($($table:ident),*) => {$(
            $table::table
                .select($table::all_columns)
                .limit(0)
                .execute(&mut conn)
                .unwrap_or_else(|e| panic!("{}: {e}", stringify!($table)));
        )*};
    }
    probe!(
        clients,
        users,
        browser_sessions,
        consents,
        token_families,
        authorization_codes,
        refresh_tokens,
        access_tokens,
        signing_keys,
        auth_failures,
        audit_events
    );
    gatehouse::storage::ensure_migrated(&mut conn).expect("nothing pending after migrating");
}
