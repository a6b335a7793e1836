//! Access tokens that introspection found active a moment ago, so that a resource server
//! asking about the same token again within `tokens.introspection_cache_ttl` is answered from
//! memory: no signature check, no trip to the blocking pool, no query.
//!
//! An entry is the token's verified claims and the answer rendered from them, under the
//! SHA-256 of the token (the cache holds no token). It answers only while all of these still
//! hold, and is otherwise a miss that takes the full path:
//! - it is younger than the configured time, counted from before the database was asked;
//! - no revocation this process committed since then reaches it (its own, its family's, or
//!   one the log cannot name: see `storage::revocation_log`), so a revocation at this
//!   instance applies to the very next introspection, and leaves other grants' answers be;
//! - the key set is the one that verified it (a key retired here drops its tokens at once);
//! - the token has not expired (`exp`, the verifier's rule).
//!
//! The handler still refuses a remembered token whose client is no longer registered.
//!
//! What it gives up: a revocation made by another instance, by the CLI or in SQL reaches
//! this instance's answers for a token it has just seen only after the configured time
//! (RFC 7009 2.1 expects such a propagation delay and asks to keep it small). `0s` turns the
//! cache off, and every introspection reads the database.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock, Weak};
use std::time::{Duration, Instant};

use actix_web::web::Bytes;
use aws_lc_rs::digest;

use crate::keys::{KeyState, VerifiedClaims};
use crate::storage::now_unix;
use crate::storage::revocation_log::{self, RevocationLog};

/// Bounds the memory: about 0.5 KiB an entry. Entries too old to answer are swept at most
/// once per configured time; when the cache is still full, new answers are not remembered
/// (those introspections read the database, as they would with the cache off).
const MAX_ENTRIES: usize = 10_000;

/// The SHA-256 of a presented token: what the cache is keyed by, computed once a request.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TokenDigest([u8; 32]);

impl TokenDigest {
    fn of(token: &str) -> TokenDigest {
        let mut bytes = [0; 32];
        bytes.copy_from_slice(digest::digest(&digest::SHA256, token.as_bytes()).as_ref());
        TokenDigest(bytes)
    }
}

/// What is remembered of a token found active: its claims, and the JSON answer rendered from
/// them once, served as it is to every question within the TTL.
pub struct Remembered {
    pub claims: VerifiedClaims,
    pub answer: Bytes,
}

/// `Keys` is the key set a token was verified with; entries compare it by identity.
pub struct IntrospectionCache<Keys = KeyState> {
    ttl: Duration,
    /// The process's revocation log, or a test's own.
    revocations: &'static RevocationLog,
    inner: RwLock<Inner<Keys>>,
}

struct Inner<Keys> {
    entries: HashMap<TokenDigest, Entry<Keys>>,
    last_sweep: Instant,
}

struct Entry<Keys> {
    remembered: Arc<Remembered>,
    /// Identifies the key set without keeping its keys alive once it is replaced.
    keys: Weak<Keys>,
    check: CheckStarted,
}

/// When the database was asked about a token, and the revocations this process had
/// committed by then. Taken before the question, so that the answer is at least as recent.
#[derive(Clone, Copy)]
pub struct CheckStarted {
    at: Instant,
    revocations: u64,
}

impl<Keys> IntrospectionCache<Keys> {
    pub fn new(ttl: Duration) -> IntrospectionCache<Keys> {
        IntrospectionCache::reading(ttl, revocation_log::process())
    }

    fn reading(ttl: Duration, revocations: &'static RevocationLog) -> IntrospectionCache<Keys> {
        IntrospectionCache {
            ttl,
            revocations,
            inner: RwLock::new(Inner {
                entries: HashMap::new(),
                last_sweep: Instant::now(),
            }),
        }
    }

    /// To be taken before the database is asked about a token.
    pub fn begin_check(&self) -> CheckStarted {
        CheckStarted {
            at: Instant::now(),
            revocations: self.revocations.count(),
        }
    }

    fn enabled(&self) -> bool {
        !self.ttl.is_zero()
    }

    /// The key `active` and `remember` take for `token`; `None` with a TTL of zero, when
    /// nothing is remembered and so nothing need be hashed.
    pub fn digest(&self, token: &str) -> Option<TokenDigest> {
        self.enabled().then(|| TokenDigest::of(token))
    }

    /// What was remembered of the token with this digest if it was found active recently
    /// enough, under `keys`.
    pub fn active(&self, token: TokenDigest, keys: &Arc<Keys>) -> Option<Arc<Remembered>> {
        self.active_at(token, keys, Instant::now(), now_unix())
    }

    fn active_at(
        &self,
        token: TokenDigest,
        keys: &Arc<Keys>,
        now: Instant,
        now_unix: i64,
    ) -> Option<Arc<Remembered>> {
        if !self.enabled() {
            return None;
        }
        let inner = self.inner.read().unwrap_or_else(PoisonError::into_inner);
        let entry = inner.entries.get(&token)?;
        let claims = &entry.remembered.claims;
        let fresh = now.saturating_duration_since(entry.check.at) < self.ttl
            && !self.revoked_since(entry.check, claims)
            && std::ptr::eq(entry.keys.as_ptr(), Arc::as_ptr(keys))
            && claims.exp >= now_unix;
        fresh.then(|| Arc::clone(&entry.remembered))
    }

    /// Remembers that the database, asked at `check`, knew no revocation of the token with
    /// this digest, which `keys` verified into `remembered.claims`.
    pub fn remember(
        &self,
        token: TokenDigest,
        remembered: Arc<Remembered>,
        keys: &Arc<Keys>,
        check: CheckStarted,
    ) {
        self.remember_at(token, remembered, keys, check, Instant::now());
    }

    fn remember_at(
        &self,
        token: TokenDigest,
        remembered: Arc<Remembered>,
        keys: &Arc<Keys>,
        check: CheckStarted,
        now: Instant,
    ) {
        // A revocation committed while the database was asked may not be in its answer.
        if !self.enabled() || self.revoked_since(check, &remembered.claims) {
            return;
        }
        let sweep_due =
            |inner: &Inner<Keys>| now.saturating_duration_since(inner.last_sweep) >= self.ttl;
        {
            // Full with nothing to sweep: the common case of a flood, under the shared lock.
            let inner = self.inner.read().unwrap_or_else(PoisonError::into_inner);
            if inner.entries.len() >= MAX_ENTRIES && !sweep_due(&inner) {
                return;
            }
        }
        let mut inner = self.inner.write().unwrap_or_else(PoisonError::into_inner);
        if sweep_due(&inner) {
            inner.last_sweep = now;
            // Entries checked before the latest revocation go too (whether it reached them or
            // not): asking the log about each would hold its lock 10,000 times here.
            let revocations = self.revocations.count();
            inner.entries.retain(|_, entry| {
                now.saturating_duration_since(entry.check.at) < self.ttl
                    && entry.check.revocations == revocations
                    && entry.keys.strong_count() > 0
            });
        }
        if inner.entries.len() >= MAX_ENTRIES {
            return;
        }
        let entry = Entry {
            remembered,
            keys: Arc::downgrade(keys),
            check,
        };
        inner.entries.insert(token, entry);
    }

    fn revoked_since(&self, check: CheckStarted, claims: &VerifiedClaims) -> bool {
        self.revocations
            .reaches_since(check.revocations, &claims.jti)
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
    use crate::storage::revocation_log::Revoked;

    const TTL: Duration = Duration::from_secs(1);

    fn token() -> TokenDigest {
        TokenDigest::of("header.payload.signature")
    }

    /// A token of `jti` that expires at `exp`, as remembered.
    fn remembered_as(jti: &str, exp: i64) -> Arc<Remembered> {
        Arc::new(Remembered {
            claims: VerifiedClaims {
                iss: "https://issuer.test".into(),
                sub: "user".into(),
                aud: serde_json::json!("api"),
                exp,
                iat: exp - 900,
                jti: jti.into(),
                client_id: "webapp".into(),
                scope: "read".into(),
            },
            answer: Bytes::from_static(b"{\"active\":true}"),
        })
    }

    fn claims(exp: i64) -> Arc<Remembered> {
        remembered_as("family.random", exp)
    }

    fn claims_of(jti: &str) -> Arc<Remembered> {
        remembered_as(jti, 2_000)
    }

    /// A log of the test's own: the process's moves with other tests.
    fn log() -> &'static RevocationLog {
        Box::leak(Box::default())
    }

    fn cache(ttl: Duration) -> IntrospectionCache<u8> {
        IntrospectionCache::reading(ttl, log())
    }

    #[test]
    fn an_entry_answers_until_its_time_is_up() {
        let (keys, cache) = (Arc::new(0), cache(TTL));
        let check = cache.begin_check();
        cache.remember(token(), claims(2_000), &keys, check);
        let at = |after| cache.active_at(token(), &keys, check.at + after, 1_000);
        let answered = at(Duration::ZERO).map(|r| r.claims.jti.clone());
        assert_eq!(answered.as_deref(), Some("family.random"));
        assert!(at(TTL - Duration::from_millis(1)).is_some());
        assert!(
            at(TTL).is_none(),
            "an entry as old as the configured time is stale"
        );
        let another = TokenDigest::of("another.token.here");
        assert!(cache.active_at(another, &keys, check.at, 1_000).is_none());
    }

    #[test]
    fn an_expired_token_or_other_keys_are_a_miss() {
        let (keys, cache) = (Arc::new(0), cache(TTL));
        let check = cache.begin_check();
        cache.remember(token(), claims(2_000), &keys, check);
        assert!(
            cache.active_at(token(), &keys, check.at, 2_000).is_some(),
            "exp >= now"
        );
        assert!(cache.active_at(token(), &keys, check.at, 2_001).is_none());
        let rotated = Arc::new(0);
        assert!(cache
            .active_at(token(), &rotated, check.at, 1_000)
            .is_none());
    }

    #[test]
    fn entries_keep_no_replaced_key_set_alive() {
        let (keys, cache) = (Arc::new(0), cache(TTL));
        cache.remember(token(), claims(2_000), &keys, cache.begin_check());
        assert_eq!(cache.len(), 1);
        let watched = Arc::downgrade(&keys);
        drop(keys);
        assert!(watched.upgrade().is_none());
    }

    #[test]
    fn a_revocation_since_the_check_ends_the_answers_it_reaches() {
        let (keys, log) = (Arc::new(0), log());
        let cache = IntrospectionCache::reading(TTL, log);
        let other = TokenDigest::of("another.token.here");
        let before = cache.begin_check();
        cache.remember(token(), claims(2_000), &keys, before);
        cache.remember(other, claims_of("other-family.random"), &keys, before);
        assert!(cache.active_at(token(), &keys, before.at, 1_000).is_some());
        // What revoke_family does once it has committed.
        log.record(Revoked::Family("family"));
        assert!(cache.active_at(token(), &keys, before.at, 1_000).is_none());
        assert!(
            cache.active_at(other, &keys, before.at, 1_000).is_some(),
            "another grant's answer stays"
        );
        // An answer read before that revocation is not remembered either.
        cache.remember(token(), claims(2_000), &keys, before);
        assert!(cache.active_at(token(), &keys, before.at, 1_000).is_none());
        let after = cache.begin_check();
        cache.remember(token(), claims(2_000), &keys, after);
        assert!(cache.active_at(token(), &keys, after.at, 1_000).is_some());
        // What the log cannot name reaches every answer.
        log.record(Revoked::Everything);
        assert!(cache.active_at(token(), &keys, after.at, 1_000).is_none());
        assert!(cache.active_at(other, &keys, before.at, 1_000).is_none());
    }

    #[test]
    fn zero_turns_it_off() {
        let (keys, cache) = (Arc::new(0), cache(Duration::ZERO));
        let check = cache.begin_check();
        cache.remember(token(), claims(2_000), &keys, check);
        assert_eq!(cache.len(), 0);
        assert!(cache.active_at(token(), &keys, check.at, 1_000).is_none());
        assert!(cache.digest("header.payload.signature").is_none());
        let turned_on = self::cache(TTL);
        assert!(turned_on.digest("header.payload.signature") == Some(token()));
    }

    #[test]
    fn a_full_cache_sweeps_what_is_stale_and_otherwise_stays_full() {
        let (keys, cache) = (Arc::new(0), cache(TTL));
        let old = cache.begin_check();
        for i in 0..MAX_ENTRIES {
            let digest = TokenDigest::of(&format!("token-{i}"));
            cache.remember_at(digest, claims(2_000), &keys, old, old.at);
        }
        assert_eq!(cache.len(), MAX_ENTRIES);
        let one_more = TokenDigest::of("one-more");
        let soon = old.at + Duration::from_millis(10);
        let fresh = CheckStarted { at: soon, ..old };
        cache.remember_at(one_more, claims(2_000), &keys, fresh, soon);
        assert_eq!(
            cache.len(),
            MAX_ENTRIES,
            "nothing was stale: not remembered"
        );
        assert!(cache.active_at(one_more, &keys, soon, 1_000).is_none());
        let later = CheckStarted {
            at: old.at + TTL + Duration::from_millis(10),
            ..old
        };
        cache.remember_at(one_more, claims(2_000), &keys, later, later.at);
        assert_eq!(cache.len(), 1, "the stale entries were swept");
        assert!(cache.active_at(one_more, &keys, later.at, 1_000).is_some());
    }
}
