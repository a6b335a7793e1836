//! Shared by the test support and the benchmark (each includes this file with `#[path]`):
//! their PostgreSQL databases are named `<prefix><pid>` or `<prefix><pid>_<more>` after the
//! process that made them, so that a run killed before it could drop its own is cleaned up
//! by the next.

use diesel::{PgConnection, RunQueryDsl};

/// Drops the databases named `<prefix><pid>...` whose process is gone and that nobody is
/// connected to. Only where `/proc` says which processes live; a database in use is left
/// alone even so (without FORCE, DROP fails on it). Returns the names it dropped.
pub fn drop_orphaned_databases(conn: &mut PgConnection, prefix: &str) -> Vec<String> {
    #[derive(diesel::QueryableByName)]
    struct Database {
        #[diesel(sql_type = diesel::sql_types::Text)]
        datname: String,
    }
    if !std::path::Path::new("/proc/self").exists() {
        return Vec::new();
    }
    let unused: Vec<Database> = diesel::sql_query(
        "SELECT datname FROM pg_database d WHERE starts_with(datname, $1) \
         AND NOT EXISTS (SELECT 1 FROM pg_stat_activity a WHERE a.datid = d.oid)",
    )
    .bind::<diesel::sql_types::Text, _>(prefix)
    .load(conn)
    .unwrap_or_default();
    let mut dropped = Vec::new();
    for Database { datname } in unused {
        let Some(pid) = datname
            .strip_prefix(prefix)
            .and_then(|rest| rest.split('_').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        let alive = std::path::Path::new(&format!("/proc/{pid}")).exists();
        if !alive
            && diesel::sql_query(format!(
                "DROP DATABASE IF EXISTS \"{}\"",
                datname.replace('"', "\"\"")
            ))
            .execute(conn)
            .is_ok()
        {
            dropped.push(datname);
        }
    }
    dropped
}
