//! Budgets of failed password attempts (logins and password grants) per username and per
//! client IP, kept in the database so that every instance counts the same failures.
//! Successes reset nothing: an attacker's budget for one username is not refilled by a
//! legitimate login elsewhere, and a locked username stays locked until the window passes.
//!
//! An attempt is recorded *before* its password is checked and counted with every attempt
//! committed before it, so concurrent guesses cannot all slip past one stale count; a
//! refused attempt and a successful one take their provisional rows back.

use crate::config::LimitSettings;
use crate::storage::auth_failures;
use crate::storage::users::UserRow;
use crate::storage::{DbConnection, StorageResult};

pub struct Attempt<'a> {
    pub username: &'a str,
    pub ip: Option<&'a str>,
}

/// The rows an attempt in progress holds; settle it with `succeeded` or keep it as a failure.
#[derive(Debug)]
pub struct Pending {
    row_ids: Vec<String>,
}

/// No `Debug`: an allowed attempt carries the account's password hash.
pub enum Verdict {
    /// Check the password against `user`, the account the username names (`None`: there is
    /// none, and the check costs a verification all the same).
    Allowed {
        pending: Pending,
        user: Option<UserRow>,
    },
    /// Refused without checking the password; retry after this many seconds.
    Limited { retry_after: u64 },
}

/// The username's bucket, then the address's when the attempt has one.
fn buckets(attempt: &Attempt<'_>, limits: &LimitSettings) -> Vec<(String, u32)> {
    let mut buckets = vec![(
        format!("user:{}", attempt.username),
        limits.failures_per_username,
    )];
    if let Some(ip) = attempt.ip {
        buckets.push((format!("ip:{ip}"), limits.failures_per_ip));
    }
    buckets
}

/// Records the attempt, then allows it only if, counting it, no budget is exceeded.
pub fn begin(
    conn: &mut DbConnection,
    limits: &LimitSettings,
    attempt: &Attempt<'_>,
    now: i64,
) -> StorageResult<Verdict> {
    let window = limits.window.as_secs() as i64;
    let buckets = buckets(attempt, limits);
    let names: Vec<String> = buckets.iter().map(|(b, _)| b.clone()).collect();
    let row_ids = auth_failures::record(conn, &names, now)?;
    let (counts, user) = auth_failures::counts_and_user(
        conn,
        attempt.username,
        &names[0],
        names.get(1).map(String::as_str),
        now - window,
    )?;
    let mut retry_after = 0u64;
    for ((bucket, budget), count) in buckets.iter().zip(counts) {
        if count > i64::from(*budget) {
            // The attempt may go through once enough of the oldest failures leave the window.
            let excess = count - i64::from(*budget);
            let frees_at = auth_failures::nth_oldest_since(conn, bucket, now - window, excess)?
                .unwrap_or(now)
                + window;
            retry_after = retry_after.max((frees_at - now).max(1) as u64);
        }
    }
    if retry_after > 0 {
        auth_failures::delete(conn, &row_ids)?;
        return Ok(Verdict::Limited { retry_after });
    }
    Ok(Verdict::Allowed {
        pending: Pending { row_ids },
        user,
    })
}

/// The password was right: the provisional failure rows go. Outside any transaction: the
/// statement skips the WAL flush for its own transaction (`prepared::DeleteFailures`), and
/// inside the caller's it would skip the flush of the tokens or session written with it.
pub fn succeeded(conn: &mut DbConnection, pending: Pending) -> StorageResult<()> {
    debug_assert!(!crate::storage::in_open_transaction(conn));
    auth_failures::delete(conn, &pending.row_ids)
}
