//! Shadow protection, in the manner of Envoy's outlier detection: a shadow target whose exchanges
//! fail [`FAILURES_TO_BACK_OFF`] times in a row is backed off, and while it is, its requests are
//! dropped (`shadow_backoff`) instead of each opening a connection that fails; they are neither
//! sent nor queued. When the period is over, exactly one request goes as a probe (the others are
//! still dropped while it is out): a success closes the episode, a failure starts the next period,
//! twice as long.
//!
//! Periods are `d/2 + U(0, d/2)` with `d = min(50 ms * 2^n, 5 s)` ("equal jitter"): the jitter
//! keeps daemons that saw one shadow fail at the same moment from probing it in step, and the
//! lower bound `d/2` bounds the attempts on a target that stays down by its schedule (see
//! [`max_periods_within`]), whatever the request rate. Any success resets the schedule.
//!
//! Admission is one atomic load while the target is healthy; the lock is only taken when a failure
//! is counted or a success ends a failure streak.

use std::{
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU32, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use crate::metrics::{TargetFailure, TargetMetrics};

/// Consecutive failed exchanges that back a target off (Envoy's `consecutive_5xx` and
/// `consecutive_local_origin_failure` default): one reset among successes is a glitch, not an
/// outlier.
pub const FAILURES_TO_BACK_OFF: u32 = 5;
/// The first period's `d`.
pub const BASE_DELAY: Duration = Duration::from_millis(50);
/// The largest `d`: a target that comes back is probed again within this.
pub const MAX_DELAY: Duration = Duration::from_secs(5);

/// `state` values besides a deadline.
const OPEN: u64 = 0;
const PROBING: u64 = u64::MAX;

/// The `d` of the `n`th period of an episode (0-based).
pub fn period_base(n: u32) -> Duration {
    BASE_DELAY.saturating_mul(1u32.checked_shl(n).unwrap_or(u32::MAX)).min(MAX_DELAY)
}

/// The most backoff periods one episode can start within `elapsed` (each lasts at least half its
/// `d`, and a period only starts when the previous one is over): a bound on the probes, and so on
/// the connection attempts, to a target that stays down.
pub fn max_periods_within(elapsed: Duration) -> u64 {
    let mut spent = Duration::ZERO;
    let mut n = 0u32;
    // The first period starts at once; each later one after the previous one's minimum.
    loop {
        spent += period_base(n) / 2;
        if spent > elapsed {
            return u64::from(n) + 1;
        }
        n += 1;
    }
}

/// A backoff period that started.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Period {
    /// 0 for the first period of an episode (the target was healthy until now).
    pub index: u32,
    pub length: Duration,
}

/// What a request may do now.
#[derive(Debug)]
pub(crate) enum Admission {
    /// The target is healthy.
    Go,
    /// The period is over and this request is the one probe.
    Probe(Probe),
    /// Backed off (or another request is probing): drop it.
    Drop,
}

/// The one request sent at the end of a period. Settle it with [`Backoff::success`] or
/// [`Backoff::failure`]; dropped unsettled (the request was dropped before it was sent), the next
/// request may probe at once.
#[derive(Debug)]
#[must_use]
pub(crate) struct Probe {
    backoff: Arc<Backoff>,
    settled: bool,
}

impl Drop for Probe {
    fn drop(&mut self) {
        if !self.settled {
            self.backoff.release();
        }
    }
}

/// Backoff state of one shadow target of one lane.
#[derive(Debug)]
pub(crate) struct Backoff {
    /// `OPEN`, `PROBING`, or the time (ns since `epoch`, never 0) until which requests drop.
    state: AtomicU64,
    /// Failures in a row while open; zero while healthy, so a success costs two loads.
    failures: AtomicU32,
    epoch: Instant,
    schedule: Mutex<Schedule>,
    metrics: TargetMetrics,
}

#[derive(Debug)]
struct Schedule {
    /// Periods of the current episode so far (the next one's `d` is `period_base(periods)`).
    periods: u32,
    rng: u64,
}

impl Backoff {
    pub(crate) fn new(metrics: TargetMetrics) -> Arc<Self> {
        let epoch = Instant::now();
        // Any varying seed will do: the jitter only needs to differ between daemons and targets.
        static TARGETS: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let seed = (nanos as u64) ^ TARGETS.fetch_add(1, Ordering::Relaxed).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        Self::with_seed(metrics, epoch, seed)
    }

    fn with_seed(metrics: TargetMetrics, epoch: Instant, seed: u64) -> Arc<Self> {
        Arc::new(Self {
            state: AtomicU64::new(OPEN),
            failures: AtomicU32::new(0),
            epoch,
            schedule: Mutex::new(Schedule { periods: 0, rng: seed | 1 }),
            metrics,
        })
    }

    fn now(&self) -> u64 {
        // +1: a deadline is never OPEN.
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(PROBING - 1).saturating_add(1).min(PROBING - 1)
    }

    /// May a request go to the target now? One atomic load while the target is healthy.
    pub(crate) fn admit(self: &Arc<Self>) -> Admission {
        let mut s = self.state.load(Ordering::Acquire);
        if s == OPEN {
            return Admission::Go;
        }
        let now = self.now();
        loop {
            if s == OPEN {
                return Admission::Go;
            }
            if s == PROBING || now < s {
                return Admission::Drop;
            }
            match self.state.compare_exchange(s, PROBING, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return Admission::Probe(Probe { backoff: self.clone(), settled: false }),
                Err(actual) => s = actual,
            }
        }
    }

    /// A complete response: the target is healthy (the schedule starts over). Returns whether it
    /// was backed off until now.
    pub(crate) fn success(&self, probe: Option<Probe>) -> bool {
        if let Some(mut p) = probe {
            p.settled = true;
        }
        if self.state.load(Ordering::Acquire) == OPEN && self.failures.load(Ordering::Relaxed) == 0 {
            return false;
        }
        let mut sched = self.schedule.lock().unwrap_or_else(PoisonError::into_inner);
        let was_backed_off = self.state.swap(OPEN, Ordering::AcqRel) != OPEN;
        self.failures.store(0, Ordering::Relaxed);
        sched.periods = 0;
        if was_backed_off {
            self.metrics.set_backed_off(None);
        }
        was_backed_off
    }

    /// A failed exchange of `kind`. Returns the period this failure started, if it started one.
    /// Failures of requests that were already out when the target was backed off do not lengthen
    /// it.
    pub(crate) fn failure(&self, probe: Option<Probe>, kind: TargetFailure) -> Option<Period> {
        self.metrics.failure(kind);
        let is_probe = probe.is_some();
        if let Some(mut p) = probe {
            p.settled = true;
        }
        let mut sched = self.schedule.lock().unwrap_or_else(PoisonError::into_inner);
        let state = self.state.load(Ordering::Acquire);
        if is_probe && state == PROBING {
            return Some(self.enter(&mut sched));
        }
        if state != OPEN {
            return None;
        }
        if self.failures.fetch_add(1, Ordering::Relaxed) + 1 < FAILURES_TO_BACK_OFF {
            return None;
        }
        self.failures.store(0, Ordering::Relaxed);
        sched.periods = 0;
        Some(self.enter(&mut sched))
    }

    /// Start the next period of the episode (under the schedule lock).
    fn enter(&self, sched: &mut Schedule) -> Period {
        let index = sched.periods;
        let d = period_base(index);
        sched.periods = sched.periods.saturating_add(1);
        // xorshift64*: a fraction in [0, 1) for the jitter.
        sched.rng ^= sched.rng >> 12;
        sched.rng ^= sched.rng << 25;
        sched.rng ^= sched.rng >> 27;
        let r = sched.rng.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11;
        let frac = r as f64 / (1u64 << 53) as f64;
        let period = d / 2 + (d / 2).mul_f64(frac);
        let until = self.now().saturating_add(u64::try_from(period.as_nanos()).unwrap_or(u64::MAX)).min(PROBING - 1);
        self.state.store(until, Ordering::Release);
        self.metrics.backoff_entered(period.as_secs_f64());
        Period { index, length: period }
    }

    /// A probe that was never sent: the next request may probe at once.
    fn release(&self) {
        let _sched = self.schedule.lock().unwrap_or_else(PoisonError::into_inner);
        let _ = self.state.compare_exchange(PROBING, self.now(), Ordering::AcqRel, Ordering::Acquire);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl Backoff {
        /// Backed off now (a period running or a probe out).
        fn backed_off(&self) -> bool {
            self.state.load(Ordering::Acquire) != OPEN
        }
    }

    fn backoff() -> Arc<Backoff> {
        Backoff::with_seed(TargetMetrics::default(), Instant::now(), 42)
    }

    fn go(b: &Arc<Backoff>) -> bool {
        matches!(b.admit(), Admission::Go)
    }

    /// Move the current period's end to now, as if it had passed.
    fn expire(b: &Backoff) {
        let s = b.state.load(Ordering::Acquire);
        assert!(s != OPEN && s != PROBING, "a period is running");
        b.state.store(b.now(), Ordering::Release);
    }

    fn probe(b: &Arc<Backoff>) -> Probe {
        match b.admit() {
            Admission::Probe(p) => p,
            other => panic!("expected the probe, got {other:?}"),
        }
    }

    #[test]
    fn consecutive_failures_back_off_and_a_success_in_between_resets_the_count() {
        let b = backoff();
        for _ in 0..FAILURES_TO_BACK_OFF - 1 {
            assert_eq!(b.failure(None, TargetFailure::Reset), None);
        }
        b.success(None);
        for _ in 0..FAILURES_TO_BACK_OFF - 1 {
            assert_eq!(b.failure(None, TargetFailure::ConnectRefused), None);
            assert!(go(&b));
        }
        let first = b.failure(None, TargetFailure::ConnectRefused).expect("backed off");
        assert_eq!(first.index, 0);
        assert!(first.length >= BASE_DELAY / 2 && first.length < BASE_DELAY, "{first:?}");
        assert!(b.backed_off());
        assert!(matches!(b.admit(), Admission::Drop));
        // Requests that were already out fail too: the period is not lengthened.
        assert_eq!(b.failure(None, TargetFailure::ConnectRefused), None);
    }

    #[test]
    fn one_probe_per_period_doubling_to_the_cap_and_reset_on_success() {
        let b = backoff();
        for _ in 0..FAILURES_TO_BACK_OFF {
            b.failure(None, TargetFailure::Closed);
        }
        for n in 1..12 {
            expire(&b);
            let p = probe(&b);
            assert!(matches!(b.admit(), Admission::Drop), "one probe at a time");
            let period = b.failure(Some(p), TargetFailure::Closed).expect("the failed probe starts a period");
            let d = period_base(n);
            assert_eq!(period.index, n);
            assert!(period.length >= d / 2 && period.length < d, "period {n}: {period:?} for d = {d:?}");
        }
        assert_eq!(period_base(11), MAX_DELAY);
        expire(&b);
        let p = probe(&b);
        assert!(b.success(Some(p)), "it was backed off");
        assert!(!b.backed_off() && go(&b));
        assert!(!b.success(None));
        // The next episode starts from the base again.
        for _ in 0..FAILURES_TO_BACK_OFF - 1 {
            b.failure(None, TargetFailure::Timeout);
        }
        let period = b.failure(None, TargetFailure::Timeout).expect("backed off");
        assert!(period.index == 0 && period.length < BASE_DELAY, "{period:?}");
    }

    #[test]
    fn a_probe_never_sent_lets_the_next_request_probe() {
        let b = backoff();
        for _ in 0..FAILURES_TO_BACK_OFF {
            b.failure(None, TargetFailure::Reset);
        }
        expire(&b);
        drop(probe(&b));
        let p = probe(&b);
        // A request that was out before the backoff came back fine: healthy, and the probe's own
        // result no longer matters to the schedule.
        b.success(None);
        assert!(go(&b));
        assert_eq!(b.failure(Some(p), TargetFailure::Reset), None);
        assert!(go(&b));
    }

    #[test]
    fn the_schedule_bounds_the_periods_in_a_time() {
        assert_eq!(max_periods_within(Duration::ZERO), 1);
        assert_eq!(max_periods_within(Duration::from_millis(24)), 1);
        // 25 ms (first minimum) + 50 ms (second minimum) ...
        assert_eq!(max_periods_within(Duration::from_millis(25)), 2);
        assert_eq!(max_periods_within(Duration::from_millis(74)), 2);
        assert_eq!(max_periods_within(Duration::from_millis(75)), 3);
        // Past the cap, one per 2.5 s at most.
        let ten = max_periods_within(Duration::from_secs(10));
        let twenty = max_periods_within(Duration::from_secs(20));
        assert_eq!(twenty - ten, 4);
    }
}
