//! Failed password attempts, shared by every instance, for rate limiting. A bucket is a
//! key such as `user:alice` or `ip:192.0.2.1`.

use diesel::dsl::count_star;
use diesel::prelude::*;

use super::schema::auth_failures;
use super::{DbConnection, StorageResult};

/// How many failures a bucket holds since `since`.
pub fn count_since(conn: &mut DbConnection, bucket: &str, since: i64) -> StorageResult<i64> {
    Ok(super::on_native_connection!(conn, |c| {
        auth_failures::table
            .filter(auth_failures::bucket.eq(bucket))
            .filter(auth_failures::occurred_at.gt(since))
            .select(count_star())
            .get_result(c)
    })?)
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
        diesel::delete(auth_failures::table.filter(auth_failures::id.eq_any(ids))).execute(conn)?;
        Ok(())
    })
}

/// Records one failure per bucket, committed at once; returns the new rows' ids.
pub fn record(conn: &mut DbConnection, buckets: &[String], at: i64) -> StorageResult<Vec<String>> {
    // One row at a time: diesel's MultiConnection has no batch insert.
    super::write_transaction(conn, |conn| {
        let mut ids = Vec::with_capacity(buckets.len());
        for bucket in buckets {
            let id = uuid::Uuid::new_v4().to_string();
            diesel::insert_into(auth_failures::table)
                .values((
                    auth_failures::id.eq(&id),
                    auth_failures::bucket.eq(bucket),
                    auth_failures::occurred_at.eq(at),
                ))
                .execute(conn)?;
            ids.push(id);
        }
        Ok(ids)
    })
}

pub fn delete_before(conn: &mut DbConnection, cutoff: i64) -> StorageResult<usize> {
    super::write(conn, |conn| {
        Ok(
            diesel::delete(auth_failures::table.filter(auth_failures::occurred_at.le(cutoff)))
                .execute(conn)?,
        )
    })
}
