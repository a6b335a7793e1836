//! The revocations this process has committed, for whoever remembers tokens as live (the
//! introspection cache): it notes the log's count before asking the database about a token,
//! and trusts its memory of the token only while no revocation recorded since then reaches
//! it. A revocation is recorded once its call has returned, after its transaction
//! committed (or failed), so a question that began before the commit still sees it.
//!
//! Revocations name what they reached (a family, an access token), so that revoking one
//! grant leaves what is remembered of the others alone; anything the log cannot name (the
//! expiry sweep, rows of tokens issued before family-scoped jtis) reaches every token. A
//! record is forgotten after `KEPT_FOR`, and forgetting it counts as a revocation of
//! everything as of its count: no answer checked before it can outlive it by mistake.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{LazyLock, PoisonError, RwLock};
use std::time::{Duration, Instant};

use super::tokens::family_of_jti;

/// How long a record is kept by name: the longest `tokens.introspection_cache_ttl` allowed,
/// so that forgetting one (which then reaches everything checked before it) costs no answer
/// still young enough to be used.
pub const KEPT_FOR: Duration = Duration::from_secs(60);

/// Past this many names, the log records "everything" instead and starts over: a flood of
/// revocations costs remembered answers, never memory (about 2 MiB at most).
const MAX_NAMES: usize = 20_000;

/// What a revocation reached.
#[derive(Debug, PartialEq, Eq)]
pub enum Revoked<'a> {
    /// A family, by its id (what a grant's access-token jti carries before its `.`).
    Family(&'a str),
    /// One access token, by its jti.
    AccessToken(&'a str),
    Everything,
}

#[derive(Default)]
pub struct RevocationLog {
    /// Revocations recorded so far; moves only after the record is in `recorded`.
    count: AtomicU64,
    recorded: RwLock<Recorded>,
}

#[derive(Default)]
struct Recorded {
    /// For each family id or access-token jti, the count its latest revocation made, and
    /// when.
    by_name: HashMap<String, (u64, Instant)>,
    /// The count the latest revocation of everything made.
    everything: u64,
    last_pruned: Option<Instant>,
}

static PROCESS: LazyLock<RevocationLog> = LazyLock::new(RevocationLog::default);

/// The log of the revocations this process commits.
pub fn process() -> &'static RevocationLog {
    &PROCESS
}

impl RevocationLog {
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Acquire)
    }

    pub fn record(&self, revoked: Revoked<'_>) {
        self.record_at(revoked, Instant::now());
    }

    fn record_at(&self, revoked: Revoked<'_>, now: Instant) {
        let mut recorded = self
            .recorded
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let count = self.count.load(Ordering::Acquire) + 1;
        if recorded
            .last_pruned
            .is_none_or(|last| now.saturating_duration_since(last) >= Duration::from_secs(1))
        {
            recorded.last_pruned = Some(now);
            let mut forgotten = 0;
            recorded.by_name.retain(|_, (at_count, at)| {
                let keep = now.saturating_duration_since(*at) < KEPT_FOR;
                if !keep {
                    forgotten = forgotten.max(*at_count);
                }
                keep
            });
            recorded.everything = recorded.everything.max(forgotten);
        }
        match revoked {
            Revoked::Family(name) | Revoked::AccessToken(name)
                if recorded.by_name.len() < MAX_NAMES =>
            {
                recorded.by_name.insert(name.to_owned(), (count, now));
            }
            _ => {
                recorded.by_name = HashMap::new();
                recorded.everything = count;
            }
        }
        self.count.store(count, Ordering::Release);
    }

    /// Whether a revocation recorded after the log stood at `count` reaches the access token
    /// `jti` (itself, its family, or everything).
    pub fn reaches_since(&self, count: u64, jti: &str) -> bool {
        if self.count() == count {
            return false;
        }
        let recorded = self.recorded.read().unwrap_or_else(PoisonError::into_inner);
        let after = |name: &str| {
            recorded
                .by_name
                .get(name)
                .is_some_and(|(at, _)| *at > count)
        };
        recorded.everything > count || after(jti) || family_of_jti(jti).is_some_and(after)
    }

    #[cfg(test)]
    fn names(&self) -> usize {
        self.recorded
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .by_name
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_revocation_reaches_its_token_its_family_or_everything_and_nothing_else() {
        let log = RevocationLog::default();
        let before = log.count();
        assert!(!log.reaches_since(before, "family-a.random"));

        log.record(Revoked::Family("family-a"));
        assert!(log.reaches_since(before, "family-a.random"));
        assert!(!log.reaches_since(before, "family-b.random"));
        assert!(
            !log.reaches_since(log.count(), "family-a.random"),
            "not since"
        );

        let before = log.count();
        log.record(Revoked::AccessToken("client-credentials-jti"));
        assert!(log.reaches_since(before, "client-credentials-jti"));
        assert!(!log.reaches_since(before, "family-b.random"));
        assert!(
            !log.reaches_since(before, "family-a.random"),
            "revoked before `before`"
        );

        let before = log.count();
        log.record(Revoked::Everything);
        assert!(log.reaches_since(before, "family-b.random"));
        assert!(log.reaches_since(before, "anything"));
    }

    #[test]
    fn a_forgotten_record_reaches_everything_checked_before_it() {
        let log = RevocationLog::default();
        let start = Instant::now();
        let before = log.count();
        log.record_at(Revoked::Family("family-a"), start);
        let between = log.count();
        log.record_at(Revoked::Family("family-b"), start + KEPT_FOR / 2);
        assert!(!log.reaches_since(before, "family-c.random"));
        // A minute on, family-a's record is forgotten; family-b's is not yet.
        let after = log.count();
        log.record_at(Revoked::AccessToken("jti"), start + KEPT_FOR);
        assert_eq!(log.names(), 2);
        assert!(
            log.reaches_since(before, "family-c.random"),
            "checked before it"
        );
        assert!(!log.reaches_since(between, "family-c.random"));
        assert!(log.reaches_since(between, "family-b.random"));
        assert!(!log.reaches_since(after, "family-b.random"));
    }

    #[test]
    fn a_flood_of_names_becomes_everything() {
        let log = RevocationLog::default();
        let before = log.count();
        for i in 0..MAX_NAMES {
            log.record(Revoked::AccessToken(&format!("jti-{i}")));
        }
        assert_eq!(log.names(), MAX_NAMES);
        assert!(!log.reaches_since(before, "never-revoked"));
        log.record(Revoked::AccessToken("one-more"));
        assert_eq!(log.names(), 0);
        assert!(
            log.reaches_since(before, "never-revoked"),
            "everything, to be safe"
        );
        assert!(log.reaches_since(before, "jti-7"));
    }
}
