//! Failed password attempts, shared by every instance, for rate limiting. A bucket is a
//! key such as `user:alice` or `ip:192.0.2.1`.

use diesel::prelude::*;

use super::schema::auth_failures;
use super::users::UserRow;
use super::{DbConnection, StorageResult};

/// How many failures the username's bucket and the address's bucket (when the attempt has
/// an address) hold since `since`, in that order, and the account `username` names: one
/// statement, kept prepared (see `prepared::FailureCountsAndUser`).
pub fn counts_and_user(
    conn: &mut DbConnection,
    username: &str,
    user_bucket: &str,
    ip_bucket: Option<&str>,
    since: i64,
) -> StorageResult<(Vec<i64>, Option<UserRow>)> {
    let statement = super::prepared::FailureCountsAndUser {
        username,
        user_bucket,
        ip_bucket: ip_bucket.unwrap_or(""),
        since,
    };
    let (user, user_failures, ip_failures): (Option<UserRow>, i64, i64) =
        super::on_native_connection!(conn, |c| statement.get_result(c))?;
    let mut counts = vec![user_failures];
    counts.extend(ip_bucket.map(|_| ip_failures));
    Ok((counts, user))
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

/// Deletes the rows `record` returned: one statement for an attempt's one or two buckets.
pub fn delete(conn: &mut DbConnection, ids: &[String]) -> StorageResult<()> {
    super::write(conn, |conn| {
        for pair in ids.chunks(2) {
            let statement = super::prepared::DeleteFailures {
                first: &pair[0],
                second: pair.get(1).map_or("", String::as_str),
            };
            super::prepared::execute(conn, statement)?;
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
