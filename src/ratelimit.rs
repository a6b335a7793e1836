//! Budgets of failed password attempts (logins and password grants) per username and per
//! client IP, kept in the database so that every instance counts the same failures.
//! Successes reset nothing: an attacker's budget for one username is not refilled by a
//! legitimate login elsewhere, and a locked username stays locked until the window passes.

use crate::config::LimitSettings;
use crate::storage::auth_failures;
use crate::storage::{DbConnection, StorageResult};

pub struct Attempt<'a> {
    pub username: &'a str,
    pub ip: Option<&'a str>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allowed,
    /// Refused without checking the password; retry after this many seconds.
    Limited {
        retry_after: u64,
    },
}

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

pub fn check(
    conn: &mut DbConnection,
    limits: &LimitSettings,
    attempt: &Attempt<'_>,
    now: i64,
) -> StorageResult<Verdict> {
    let window = limits.window.as_secs() as i64;
    let mut retry_after = 0;
    for (bucket, budget) in buckets(attempt, limits) {
        let (failures, oldest) = auth_failures::count_since(conn, &bucket, now - window)?;
        if failures >= i64::from(budget) {
            let frees_at = oldest.unwrap_or(now) + window;
            retry_after = retry_after.max((frees_at - now).max(1) as u64);
        }
    }
    Ok(match retry_after {
        0 => Verdict::Allowed,
        retry_after => Verdict::Limited { retry_after },
    })
}

pub fn record_failure(
    conn: &mut DbConnection,
    limits: &LimitSettings,
    attempt: &Attempt<'_>,
    now: i64,
) -> StorageResult<()> {
    let buckets: Vec<String> = buckets(attempt, limits)
        .into_iter()
        .map(|(b, _)| b)
        .collect();
    auth_failures::record(conn, &buckets, now)
}
