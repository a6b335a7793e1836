//! Failed password attempts, shared by every instance, for rate limiting. A bucket is a
//! key such as `user:alice` or `ip:192.0.2.1`.

use diesel::dsl::{count_star, min};
use diesel::prelude::*;

use super::schema::auth_failures;
use super::{DbConnection, StorageResult};

/// How many failures a bucket holds since `since`, and when the oldest of them happened.
pub fn count_since(
    conn: &mut DbConnection,
    bucket: &str,
    since: i64,
) -> StorageResult<(i64, Option<i64>)> {
    let recent = auth_failures::table
        .filter(auth_failures::bucket.eq(bucket))
        .filter(auth_failures::occurred_at.gt(since));
    let count: i64 = recent.select(count_star()).first(conn)?;
    let oldest: Option<i64> = recent.select(min(auth_failures::occurred_at)).first(conn)?;
    Ok((count, oldest))
}

pub fn record(conn: &mut DbConnection, buckets: &[String], at: i64) -> StorageResult<()> {
    // One row at a time: diesel's MultiConnection has no batch insert.
    conn.transaction(|conn| {
        for bucket in buckets {
            diesel::insert_into(auth_failures::table)
                .values((
                    auth_failures::id.eq(uuid::Uuid::new_v4().to_string()),
                    auth_failures::bucket.eq(bucket),
                    auth_failures::occurred_at.eq(at),
                ))
                .execute(conn)?;
        }
        Ok(())
    })
}

pub fn delete_before(conn: &mut DbConnection, cutoff: i64) -> StorageResult<usize> {
    Ok(
        diesel::delete(auth_failures::table.filter(auth_failures::occurred_at.le(cutoff)))
            .execute(conn)?,
    )
}
