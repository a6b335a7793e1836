//! Access tokens that introspection found active a moment ago, so that a resource server
//! asking about the same token again within `tokens.introspection_cache` is answered from
//! memory: no signature check, no trip to the blocking pool, no query.
//!
//! An entry is the token's verified claims under the SHA-256 of the token (the cache holds no
//! token). It answers only while all of these still hold, and is otherwise a miss that
//! takes the full path:
//! - it is younger than the configured time, counted from before the database was asked;
//! - no revocation was committed by this process since then (`revocations_counted`), so a
//!   revocation at this instance applies to the very next introspection;
//! - the key set is the one that verified it (a key retired here drops its tokens at once);
//! - the token has not expired (`exp`, the verifier's rule).
//!
//! What it gives up: a revocation made by another instance, by the CLI or in SQL reaches
//! this instance's answers for a token it has just seen only after the configured time
//! (RFC 7009 2.1 expects such a propagation delay and asks to keep it small). `0s` turns the
//! cache off, and every introspection reads the database.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use aws_lc_rs::digest;

use crate::keys::{KeyState, VerifiedClaims};
use crate::storage::{now_unix, tokens::revocations_counted};

/// Bounds the memory: about 0.5 KiB an entry. Past it, entries older than the configured
/// time are swept (at most once per that time); what is still full is not cached.
const MAX_ENTRIES: usize = 10_000;

type TokenDigest = [u8; 32];

/// `Keys` is the key set a token was verified with; entries compare it by identity.
pub struct IntrospectionCache<Keys = KeyState> {
    ttl: Duration,
    /// `revocations_counted`, or a test's own count.
    revocations: fn() -> u64,
    inner: RwLock<Inner<Keys>>,
}

struct Inner<Keys> {
    entries: HashMap<TokenDigest, Entry<Keys>>,
    last_sweep: Option<Instant>,
}

struct Entry<Keys> {
    claims: Arc<VerifiedClaims>,
    keys: Arc<Keys>,
    checked: Checked,
}

/// When the database was asked about a token, and the revocations this process had
/// committed by then. Taken before the question, so that the answer is at least as recent.
#[derive(Clone, Copy)]
pub struct Checked {
    at: Instant,
    revocations: u64,
}

impl<Keys> IntrospectionCache<Keys> {
    pub fn new(ttl: Duration) -> IntrospectionCache<Keys> {
        IntrospectionCache::counting(ttl, revocations_counted)
    }

    fn counting(ttl: Duration, revocations: fn() -> u64) -> IntrospectionCache<Keys> {
        IntrospectionCache {
            ttl,
            revocations,
            inner: RwLock::new(Inner {
                entries: HashMap::new(),
                last_sweep: None,
            }),
        }
    }

    /// To be taken before the database is asked about a token.
    pub fn check_starts(&self) -> Checked {
        Checked {
            at: Instant::now(),
            revocations: (self.revocations)(),
        }
    }

    fn enabled(&self) -> bool {
        !self.ttl.is_zero()
    }

    fn digest(token: &str) -> TokenDigest {
        let mut digest_bytes = [0; 32];
        digest_bytes.copy_from_slice(digest::digest(&digest::SHA256, token.as_bytes()).as_ref());
        digest_bytes
    }

    /// The claims of `token` if it was found active recently enough, under `keys`.
    pub fn active(&self, token: &str, keys: &Arc<Keys>) -> Option<Arc<VerifiedClaims>> {
        self.active_at(token, keys, Instant::now(), now_unix())
    }

    fn active_at(
        &self,
        token: &str,
        keys: &Arc<Keys>,
        now: Instant,
        now_unix: i64,
    ) -> Option<Arc<VerifiedClaims>> {
        if !self.enabled() {
            return None;
        }
        let inner = self.inner.read().unwrap_or_else(PoisonError::into_inner);
        let entry = inner.entries.get(&Self::digest(token))?;
        let fresh = now.saturating_duration_since(entry.checked.at) < self.ttl
            && entry.checked.revocations == (self.revocations)()
            && Arc::ptr_eq(&entry.keys, keys)
            && entry.claims.exp >= now_unix;
        fresh.then(|| Arc::clone(&entry.claims))
    }

    /// Remembers that the database, asked at `checked`, knew no revocation of `token`,
    /// which `keys` verified into `claims`.
    pub fn remember(
        &self,
        token: &str,
        claims: Arc<VerifiedClaims>,
        keys: Arc<Keys>,
        checked: Checked,
    ) {
        if !self.enabled() || checked.revocations != (self.revocations)() {
            return;
        }
        let digest = Self::digest(token);
        let mut inner = self.inner.write().unwrap_or_else(PoisonError::into_inner);
        if inner.entries.len() >= MAX_ENTRIES && !inner.entries.contains_key(&digest) {
            self.sweep(&mut inner, checked.at);
            if inner.entries.len() >= MAX_ENTRIES {
                return;
            }
        }
        inner.entries.insert(
            digest,
            Entry {
                claims,
                keys,
                checked,
            },
        );
    }

    /// Drops the entries too old to answer, at most once per `ttl`.
    fn sweep(&self, inner: &mut Inner<Keys>, now: Instant) {
        if inner
            .last_sweep
            .is_some_and(|last| now.saturating_duration_since(last) < self.ttl)
        {
            return;
        }
        inner.last_sweep = Some(now);
        let ttl = self.ttl;
        inner
            .entries
            .retain(|_, entry| now.saturating_duration_since(entry.checked.at) < ttl);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.inner
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .entries
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::sync::atomic::{AtomicU64, Ordering};

    const TTL: Duration = Duration::from_secs(1);

    /// A cache that sees no revocation: the process's count moves with other tests.
    fn cache(ttl: Duration) -> IntrospectionCache<u8> {
        IntrospectionCache::counting(ttl, || 0)
    }
    const TOKEN: &str = "header.payload.signature";

    fn claims(exp: i64) -> Arc<VerifiedClaims> {
        Arc::new(VerifiedClaims {
            iss: "https://issuer.test".into(),
            sub: "user".into(),
            aud: serde_json::json!("api"),
            exp,
            iat: exp - 900,
            jti: "family.random".into(),
            client_id: "webapp".into(),
            scope: "read".into(),
        })
    }

    /// A cache holding `TOKEN`, checked at `checked`, verified by `keys`, expiring at `exp`.
    fn holding(keys: &Arc<u8>, checked: Checked, exp: i64) -> IntrospectionCache<u8> {
        let cache = cache(TTL);
        cache.remember(TOKEN, claims(exp), Arc::clone(keys), checked);
        cache
    }

    #[test]
    fn an_entry_answers_until_its_time_is_up() {
        let keys = Arc::new(0);
        let checked = cache(TTL).check_starts();
        let cache = holding(&keys, checked, 2_000);
        let at = |after| cache.active_at(TOKEN, &keys, checked.at + after, 1_000);
        assert_eq!(
            at(Duration::ZERO).map(|c| c.jti.clone()).as_deref(),
            Some("family.random")
        );
        assert!(at(TTL - Duration::from_millis(1)).is_some());
        assert!(
            at(TTL).is_none(),
            "an entry as old as the configured time is stale"
        );
        assert!(cache
            .active_at("another.token.here", &keys, checked.at, 1_000)
            .is_none());
    }

    #[test]
    fn an_expired_token_or_other_keys_are_a_miss() {
        let keys = Arc::new(0);
        let checked = cache(TTL).check_starts();
        let cache = holding(&keys, checked, 2_000);
        assert!(
            cache.active_at(TOKEN, &keys, checked.at, 2_000).is_some(),
            "exp >= now"
        );
        assert!(cache.active_at(TOKEN, &keys, checked.at, 2_001).is_none());
        let rotated = Arc::new(0);
        assert!(cache
            .active_at(TOKEN, &rotated, checked.at, 1_000)
            .is_none());
    }

    #[test]
    fn a_revocation_committed_since_the_check_empties_every_answer() {
        static REVOCATIONS: AtomicU64 = AtomicU64::new(0);
        let keys = Arc::new(0);
        let cache = IntrospectionCache::counting(TTL, || REVOCATIONS.load(Ordering::Acquire));
        let before = cache.check_starts();
        cache.remember(TOKEN, claims(2_000), Arc::clone(&keys), before);
        assert!(cache.active_at(TOKEN, &keys, before.at, 1_000).is_some());
        // What a revocation's commit does (revoke_family, revoke_access, the expiry sweep).
        REVOCATIONS.fetch_add(1, Ordering::AcqRel);
        assert!(cache.active_at(TOKEN, &keys, before.at, 1_000).is_none());
        // An answer read before that revocation is not remembered either.
        cache.remember(TOKEN, claims(2_000), Arc::clone(&keys), before);
        assert!(cache.active_at(TOKEN, &keys, before.at, 1_000).is_none());
        let after = cache.check_starts();
        cache.remember(TOKEN, claims(2_000), Arc::clone(&keys), after);
        assert!(cache.active_at(TOKEN, &keys, after.at, 1_000).is_some());
    }

    #[test]
    fn zero_turns_it_off() {
        let keys = Arc::new(0);
        let cache = cache(Duration::ZERO);
        let checked = cache.check_starts();
        cache.remember(TOKEN, claims(2_000), Arc::clone(&keys), checked);
        assert_eq!(cache.len(), 0);
        assert!(cache.active_at(TOKEN, &keys, checked.at, 1_000).is_none());
    }

    #[test]
    fn a_full_cache_sweeps_what_is_stale_and_otherwise_stays_full() {
        let keys = Arc::new(0);
        let cache = cache(TTL);
        let old = cache.check_starts();
        for i in 0..MAX_ENTRIES {
            cache.remember(&format!("token-{i}"), claims(2_000), Arc::clone(&keys), old);
        }
        assert_eq!(cache.len(), MAX_ENTRIES);
        let fresh = Checked {
            at: old.at + Duration::from_millis(10),
            ..old
        };
        cache.remember("one-more", claims(2_000), Arc::clone(&keys), fresh);
        assert_eq!(cache.len(), MAX_ENTRIES, "nothing was stale: not cached");
        assert!(cache
            .active_at("one-more", &keys, fresh.at, 1_000)
            .is_none());
        let later = Checked {
            at: old.at + TTL + Duration::from_millis(10),
            ..old
        };
        cache.remember("one-more", claims(2_000), Arc::clone(&keys), later);
        assert_eq!(cache.len(), 1, "the stale entries were swept");
        assert!(cache
            .active_at("one-more", &keys, later.at, 1_000)
            .is_some());
    }
}
