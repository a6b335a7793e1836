//! Failed password attempts, shared by every instance, for rate limiting. A bucket is a
//! key such as `user:alice` or `ip:192.0.2.1`.

use diesel::dsl::count_star;
use diesel::prelude::*;

use super::schema::auth_failures;
use super::{DbConnection, StorageResult};

/// How many failures each of `buckets` holds since `since`, in the order given: one query
/// for all of them, a round trip less per bucket on PostgreSQL.
pub fn counts_since(
    conn: &mut DbConnection,
    buckets: &[String],
    since: i64,
) -> StorageResult<Vec<i64>> {
    let held: Vec<(String, i64)> = super::on_native_connection!(conn, |c| {
        auth_failures::table
            .filter(auth_failures::bucket.eq_any(buckets))
            .filter(auth_failures::occurred_at.gt(since))
            .group_by(auth_failures::bucket)
            .select((auth_failures::bucket, count_star()))
            .load(c)
    })?;
    Ok(buckets
        .iter()
        .map(|bucket| {
            held.iter()
                .find(|(held_bucket, _)| held_bucket == bucket)
                .map_or(0, |(_, count)| *count)
        })
        .collect())
}

/// When the `n`-th oldest (1-based) failure of a bucket since `since` happened.
pub fn nth_oldest_since(
    conn: &mut DbConnection,
    bucket: &str,
    since: i64,
    n: i64,
) -> StorageResult<Option<i64>> {
    Ok(auth_failures::table
        .filter(auth_failures::bucket.eq(bucket))
        .filter(auth_failures::occurred_at.gt(since))
        .order((auth_failures::occurred_at.asc(), auth_failures::id.asc()))
        .select(auth_failures::occurred_at)
        .offset(n.max(1) - 1)
        .first(conn)
        .optional()?)
}

pub fn delete(conn: &mut DbConnection, ids: &[String]) -> StorageResult<()> {
    super::write(conn, |conn| {
        match conn {
            DbConnection::Postgresql(pg) => {
                super::prepared::DeleteFailures { ids }.execute(pg)?;
            }
            DbConnection::Sqlite(_) => {
                diesel::delete(auth_failures::table.filter(auth_failures::id.eq_any(ids)))
                    .execute(conn)?;
            }
        }
        Ok(())
    })
}

/// Records one failure per bucket in one statement, so that they commit together; returns
/// the new rows' ids.
pub fn record(conn: &mut DbConnection, buckets: &[String], at: i64) -> StorageResult<Vec<String>> {
    let ids: Vec<String> = buckets
        .iter()
        .map(|_| uuid::Uuid::new_v4().to_string())
        .collect();
    super::write(conn, |conn| {
        match conn {
            DbConnection::Postgresql(pg) => {
                let statement = super::prepared::InsertFailures {
                    ids: &ids,
                    buckets,
                    at,
                };
                statement.execute(pg)?;
            }
            // MultiConnection does not forward multi-row inserts; SQLite's own connection does.
            DbConnection::Sqlite(sqlite) => {
                let rows: Vec<_> = ids
                    .iter()
                    .zip(buckets)
                    .map(|(id, bucket)| {
                        (
                            auth_failures::id.eq(id),
                            auth_failures::bucket.eq(bucket),
                            auth_failures::occurred_at.eq(at),
                        )
                    })
                    .collect();
                diesel::insert_into(auth_failures::table)
                    .values(&rows)
                    .execute(sqlite)?;
            }
        }
        Ok(())
    })?;
    Ok(ids)
}

pub fn delete_before(conn: &mut DbConnection, cutoff: i64) -> StorageResult<usize> {
    super::write(conn, |conn| {
        Ok(
            diesel::delete(auth_failures::table.filter(auth_failures::occurred_at.le(cutoff)))
                .execute(conn)?,
        )
    })
}
