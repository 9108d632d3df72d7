//! Rate limiting per rule, in requests per second: `governor`'s GCRA (one atomic word, no lock)
//! on tokio's clock, so paused-time tests and the runtime see the same time.

use std::{num::NonZeroU32, ops::Add, time::Duration};

use governor::{
    Quota, RateLimiter,
    clock::{Clock, Reference},
    middleware::NoOpMiddleware,
    nanos::Nanos,
    state::{InMemoryState, NotKeyed},
};
use tokio::time::Instant;

/// A point on tokio's clock, as governor reckons time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct TokioInstant(Instant);

impl Add<Nanos> for TokioInstant {
    type Output = Self;

    fn add(self, d: Nanos) -> Self {
        Self(self.0 + Duration::from(d))
    }
}

impl Reference for TokioInstant {
    fn duration_since(&self, earlier: Self) -> Nanos {
        self.0.saturating_duration_since(earlier.0).into()
    }

    fn saturating_sub(&self, d: Nanos) -> Self {
        Self(self.0.checked_sub(Duration::from(d)).unwrap_or(self.0))
    }
}

/// tokio's clock (paused and advanced in tests like every other timer of the daemon).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct TokioClock;

impl Clock for TokioClock {
    type Instant = TokioInstant;

    fn now(&self) -> TokioInstant {
        TokioInstant(Instant::now())
    }
}

/// Requests-per-second cap. The burst is one second's worth (at least one request), so a steady
/// rate below the cap is never limited and a spike is cut to the configured rate within a second;
/// after the burst, one request per `1/rate` seconds.
#[derive(Debug)]
pub struct RateLimit {
    limiter: RateLimiter<NotKeyed, InMemoryState, TokioClock, NoOpMiddleware<TokioInstant>>,
}

impl RateLimit {
    /// `rate` as `parse_rate` accepts it: finite, above 0, at most 10^7 (out-of-range values are
    /// clamped into what a quota can express: one request per 2^32 s at the slowest, one per
    /// nanosecond at the fastest).
    pub fn new(rate: f64) -> Self {
        let rate = if rate.is_finite() && rate > 0.0 { rate } else { f64::MIN_POSITIVE };
        let period = Duration::try_from_secs_f64(1.0 / rate)
            .unwrap_or(Duration::from_secs(u64::from(u32::MAX)))
            .clamp(Duration::from_nanos(1), Duration::from_secs(u64::from(u32::MAX)));
        // Whole requests of one second's worth: 2.5/s bursts 2, 0.5/s bursts 1.
        let burst = NonZeroU32::new(rate.min(f64::from(u32::MAX)) as u32).unwrap_or(NonZeroU32::MIN);
        let quota = Quota::with_period(period).unwrap_or(Quota::per_second(NonZeroU32::MIN)).allow_burst(burst);
        Self { limiter: RateLimiter::direct_with_clock(quota, TokioClock) }
    }

    /// Take one request's allowance now, if there is one.
    pub fn try_take(&self) -> bool {
        self.limiter.check().is_ok()
    }
}

#[cfg(test)]
mod tests {
    use tokio::time::advance;

    use super::*;

    async fn taken(b: &RateLimit, tries: usize) -> usize {
        (0..tries).filter(|_| b.try_take()).count()
    }

    #[test]
    fn tokio_instants_reckon_as_governor_expects() {
        let t = TokioInstant(Instant::now());
        let later = t + Nanos::from(5_000u64);
        assert_eq!(later.0 - t.0, Duration::from_micros(5));
        assert_eq!(later.duration_since(t), Nanos::from(5_000u64));
        assert_eq!(t.duration_since(later), Nanos::from(0u64), "saturates");
        assert_eq!(later.saturating_sub(Nanos::from(5_000u64)), t);
        assert!(later > t);
    }

    #[tokio::test(start_paused = true)]
    async fn caps_the_rate_and_refills() {
        let b = RateLimit::new(10.0);
        assert_eq!(taken(&b, 100).await, 10, "burst is one second's worth");
        advance(Duration::from_millis(50)).await;
        assert!(!b.try_take(), "half a period is not a request");
        advance(Duration::from_millis(50)).await;
        assert!(b.try_take(), "one period is one request");
        assert!(!b.try_take());
        // Over 10 simulated seconds at 1000 attempts/s, the rate's worth passes and no more.
        let b = RateLimit::new(10.0);
        let mut passed = 0;
        for _ in 0..10_000 {
            passed += usize::from(b.try_take());
            advance(Duration::from_millis(1)).await;
        }
        assert_eq!(passed, 10 + 100 - 1, "the burst, then one per 100 ms");
    }

    #[tokio::test(start_paused = true)]
    async fn rates_below_one_a_second_and_fractions() {
        // Below one request per second still lets one through, then waits the period.
        let b = RateLimit::new(0.5);
        assert!(b.try_take());
        advance(Duration::from_secs(1)).await;
        assert!(!b.try_take());
        advance(Duration::from_secs(1)).await;
        assert!(b.try_take());
        // 2.5/s: a burst of two, then one per 400 ms.
        let b = RateLimit::new(2.5);
        assert_eq!(taken(&b, 10).await, 2);
        advance(Duration::from_millis(399)).await;
        assert!(!b.try_take());
        advance(Duration::from_millis(1)).await;
        assert!(b.try_take());
        // A long pause refills to the burst, not beyond.
        advance(Duration::from_secs(3600)).await;
        assert_eq!(taken(&b, 10).await, 2);
    }

    #[tokio::test(start_paused = true)]
    async fn the_extremes_stay_expressible() {
        // The fastest rate: a burst of 10^7 (only a part of it taken here), one per 100 ns after.
        let b = RateLimit::new(10_000_000.0);
        assert_eq!(taken(&b, 10_000).await, 10_000);
        // Out-of-range input (refused by the parser) still makes a limiter that limits.
        for r in [0.0, -1.0, f64::NAN, 1e-12] {
            let b = RateLimit::new(r);
            assert_eq!(taken(&b, 10).await, 1, "{r}");
        }
    }
}
