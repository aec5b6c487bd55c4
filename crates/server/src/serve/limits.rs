//! Rate limits: a token bucket per identity, refilled continuously at `per_minute / 60` tokens
//! a second, holding at most one minute's worth. Client routes are limited per bearer token
//! (`serve.rate_limit_per_minute`); the routes without a client token (health, metrics, the
//! OpenAPI document, enrolment, admin, unknown paths) per source address, at
//! [`PER_ADDRESS_FACTOR`] times that rate, since several clients and the operator may share one
//! address (NAT, a reverse proxy).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

/// The per-address limit of the routes without a client token, in multiples of
/// `serve.rate_limit_per_minute`.
pub const PER_ADDRESS_FACTOR: u32 = 10;

/// Buckets for every identity seen.
pub struct RateLimiter {
    per_minute: f64,
    buckets: Mutex<HashMap<String, Bucket>>,
}

struct Bucket {
    tokens: f64,
    updated: Instant,
}

impl RateLimiter {
    /// Requests per identity and minute.
    pub fn per_minute(&self) -> f64 {
        self.per_minute
    }

    /// A limiter allowing `per_minute` requests per identity and minute (bursts up to that).
    pub fn new(per_minute: u32) -> RateLimiter {
        RateLimiter {
            per_minute: f64::from(per_minute.max(1)),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one token of `identity`'s bucket at time `now`: `Ok(())`, or `Err(seconds)` to
    /// wait before the next token (for `Retry-After`).
    pub fn check(&self, identity: &str, now: Instant) -> Result<(), u64> {
        let mut buckets = self
            .buckets
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let capacity = self.per_minute;
        let bucket = buckets.entry(identity.to_string()).or_insert(Bucket {
            tokens: capacity,
            updated: now,
        });
        let elapsed = now.saturating_duration_since(bucket.updated).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * capacity / 60.0).min(capacity);
        bucket.updated = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            let wait = (1.0 - bucket.tokens) * 60.0 / capacity;
            Err(wait.ceil().max(1.0) as u64)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_bucket_allows_its_burst_then_refills() {
        let limiter = RateLimiter::new(3);
        let start = Instant::now();
        for _ in 0..3 {
            assert_eq!(limiter.check("a", start), Ok(()));
        }
        // One token every 20 s at 3 per minute.
        assert_eq!(limiter.check("a", start), Err(20));
        // Another identity has its own bucket.
        assert_eq!(limiter.check("b", start), Ok(()));
        assert_eq!(limiter.check("a", start + Duration::from_secs(20)), Ok(()));
        assert!(limiter.check("a", start + Duration::from_secs(20)).is_err());
    }
}
