//! Rate limiting per rule: a token bucket in requests per second.

use tokio::time::Instant;

/// Requests-per-second cap. The burst is one second's worth (at least one request), so a steady
/// rate below the cap is never limited and a spike is cut to the configured rate within a second.
#[derive(Debug)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    pub fn new(rate: f64, now: Instant) -> Self {
        let burst = rate.max(1.0);
        Self { rate, burst, tokens: burst, last: now }
    }

    pub fn try_take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now.max(self.last);
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn token_bucket_caps_the_rate_and_refills() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10.0, t0);
        let first: usize = (0..100).filter(|_| b.try_take(t0)).count();
        assert_eq!(first, 10, "burst is one second's worth");
        assert!(!b.try_take(t0 + Duration::from_millis(50)));
        assert!(b.try_take(t0 + Duration::from_millis(100)));
        // Over 10 simulated seconds at 1000 attempts/s, about rate*10 pass (plus nothing left over).
        let mut b = TokenBucket::new(10.0, t0);
        let passed = (0..10_000).filter(|i| b.try_take(t0 + Duration::from_millis(*i))).count();
        assert!((100..=110).contains(&passed), "{passed}");
        // Below one request per second still lets one through, then waits.
        let mut b = TokenBucket::new(0.5, t0);
        assert!(b.try_take(t0));
        assert!(!b.try_take(t0 + Duration::from_secs(1)));
        assert!(b.try_take(t0 + Duration::from_secs(2)));
        // A clock that goes backwards never mints tokens.
        let mut b = TokenBucket::new(1.0, t0 + Duration::from_secs(5));
        assert!(b.try_take(t0 + Duration::from_secs(5)));
        assert!(!b.try_take(t0));
    }
}
