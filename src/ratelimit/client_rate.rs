//! Requests per client id at /token, /revoke and /introspect: a token bucket (GCRA, from
//! `governor`) per configured client, held in memory by each instance. Counting in the
//! database would cost a write per request on the hottest path; an operator running N
//! instances allows N times the rate, as with a reverse proxy's limit.

use std::collections::HashSet;
use std::num::NonZeroU32;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::config::Settings;

/// Every id that is not a configured client shares one bucket, so that a flood of made-up
/// ids can neither grow the table nor outrun the limit.
const UNKNOWN_CLIENT: &str = "";

pub struct ClientRateLimiter {
    limiter: DefaultKeyedRateLimiter<String>,
    known: HashSet<String>,
    clock: DefaultClock,
}

impl ClientRateLimiter {
    pub fn new(settings: &Settings) -> ClientRateLimiter {
        let limits = &settings.limits;
        let rate = NonZeroU32::new(limits.client_requests_per_second).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(limits.client_burst).unwrap_or(NonZeroU32::MIN);
        ClientRateLimiter {
            limiter: RateLimiter::keyed(Quota::per_second(rate).allow_burst(burst)),
            known: settings.clients.iter().map(|c| c.id.clone()).collect(),
            clock: DefaultClock::default(),
        }
    }

    /// `Err(seconds)` to wait before this client's next request is accepted.
    pub fn check(&self, client_id: &str) -> Result<(), u64> {
        let key = if self.known.contains(client_id) {
            client_id
        } else {
            UNKNOWN_CLIENT
        };
        // Allocates only for the lookup key; the map holds one entry per configured client.
        self.limiter
            .check_key(&key.to_owned())
            .map_err(|not_until| {
                let wait = not_until.wait_time_from(self.clock.now());
                wait.as_secs() + u64::from(wait.subsec_nanos() > 0)
            })
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
    fn a_client_gets_its_burst_then_waits() {
        let limiter = limiter(1, 3);
        for _ in 0..3 {
            assert_eq!(limiter.check("demo"), Ok(()));
        }
        let wait = limiter.check("demo").expect_err("over the burst");
        assert!((1..=2).contains(&wait), "wait {wait}s");
    }

    #[test]
    fn clients_have_separate_buckets_and_unknown_ids_share_one() {
        let limiter = limiter(1, 1);
        assert_eq!(limiter.check("demo"), Ok(()));
        assert!(limiter.check("demo").is_err());
        assert_eq!(limiter.check("made-up-1"), Ok(()));
        assert!(
            limiter.check("made-up-2").is_err(),
            "every unknown id draws from the same bucket"
        );
    }
}
