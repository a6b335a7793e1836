//! Requests at /token, /revoke and /introspect: a token bucket (GCRA, from `governor`) per
//! caller, held in memory by each instance. Counting in the database would cost a write per
//! request on the hottest path; an operator running N instances allows N times the rate, as
//! with a reverse proxy's limit.
//!
//! A bucket is charged only for what the caller has shown: a confidential client's bucket
//! after its secret checked out (client ids are public, so naming one must not spend its
//! budget); a public client's per address; anything unauthenticated (a missing, unknown or
//! not yet verified secret) per address, before any argon2 runs for it.

use std::num::NonZeroU32;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::config::Settings;

/// Who a request is charged to.
#[derive(Debug, Clone, Copy)]
pub enum Caller<'a> {
    /// A confidential client whose secret was verified.
    Authenticated(&'a str),
    /// A registered public client, from one address.
    Public {
        client_id: &'a str,
        ip: Option<&'a str>,
    },
    /// No verified client: by address.
    Unauthenticated { ip: Option<&'a str> },
}

impl Caller<'_> {
    fn key(self) -> String {
        match self {
            Caller::Authenticated(client_id) => format!("client:{client_id}"),
            Caller::Public { client_id, ip } => {
                format!("public:{client_id}:{}", ip.unwrap_or("-"))
            }
            Caller::Unauthenticated { ip } => format!("address:{}", ip.unwrap_or("-")),
        }
    }
}

pub struct ClientRateLimiter {
    limiter: DefaultKeyedRateLimiter<String>,
    clock: DefaultClock,
}

impl ClientRateLimiter {
    pub fn new(settings: &Settings) -> ClientRateLimiter {
        let limits = &settings.limits;
        let rate = NonZeroU32::new(limits.client_requests_per_second).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(limits.client_burst).unwrap_or(NonZeroU32::MIN);
        ClientRateLimiter {
            limiter: RateLimiter::keyed(Quota::per_second(rate).allow_burst(burst)),
            clock: DefaultClock::default(),
        }
    }

    /// `Err(seconds)` to wait before this caller's next request is accepted.
    pub fn check(&self, caller: Caller<'_>) -> Result<(), u64> {
        self.limiter.check_key(&caller.key()).map_err(|not_until| {
            let wait = not_until.wait_time_from(self.clock.now());
            wait.as_secs() + u64::from(wait.subsec_nanos() > 0)
        })
    }

    /// Drops buckets that are full again, so that addresses seen once do not accumulate.
    pub fn forget_idle(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }

    pub fn len(&self) -> usize {
        self.limiter.len()
    }

    pub fn is_empty(&self) -> bool {
        self.limiter.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(rate: u32, burst: u32) -> ClientRateLimiter {
        let mut settings = crate::config::Settings::load(None).expect("default settings");
        settings.limits.client_requests_per_second = rate;
        settings.limits.client_burst = burst;
        ClientRateLimiter::new(&settings)
    }

    #[test]
    fn a_caller_gets_its_burst_then_waits() {
        let limiter = limiter(1, 3);
        for _ in 0..3 {
            assert_eq!(limiter.check(Caller::Authenticated("demo")), Ok(()));
        }
        let wait = limiter
            .check(Caller::Authenticated("demo"))
            .expect_err("over the burst");
        assert!((1..=2).contains(&wait), "wait {wait}s");
    }

    #[test]
    fn naming_a_client_does_not_spend_its_budget() {
        let limiter = limiter(1, 1);
        let attacker = Some("203.0.113.9");
        assert_eq!(
            limiter.check(Caller::Unauthenticated { ip: attacker }),
            Ok(())
        );
        assert!(limiter
            .check(Caller::Unauthenticated { ip: attacker })
            .is_err());
        assert_eq!(
            limiter.check(Caller::Authenticated("webapp")),
            Ok(()),
            "the client's own bucket is untouched"
        );
        let spa = |ip| Caller::Public {
            client_id: "spa",
            ip: Some(ip),
        };
        assert_eq!(limiter.check(spa("198.51.100.1")), Ok(()));
        assert!(limiter.check(spa("198.51.100.1")).is_err());
        assert_eq!(
            limiter.check(spa("198.51.100.2")),
            Ok(()),
            "a public client's users have a budget each"
        );
    }

    #[test]
    fn full_buckets_are_forgotten() {
        let limiter = limiter(1_000_000, 1);
        for i in 0..50 {
            let ip = format!("192.0.2.{i}");
            let _ = limiter.check(Caller::Unauthenticated { ip: Some(&ip) });
        }
        assert_eq!(limiter.len(), 50);
        std::thread::sleep(std::time::Duration::from_millis(5));
        limiter.forget_idle();
        assert!(limiter.is_empty(), "{} left", limiter.len());
    }
}
