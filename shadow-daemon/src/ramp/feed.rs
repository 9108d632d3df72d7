//! What the ramp's guards see, counted where it happens: pairs judged by the comparison hub,
//! primary responses timed by the correlator, requests queued or shed by replay. One window of
//! lock-free counters per rule id (a fixed array: no lock and no lookup on the request path);
//! the daemon's loop reads them once a tick, judges them ([`super::Ramp`]) and empties a window
//! when its rule moves to another step, so a step is judged on its own pairs only.
//!
//! A rule without a running ramp costs one relaxed load per event.

use std::{
    sync::{
        Mutex, PoisonError,
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
    },
    time::Duration,
};

use hdrhistogram::Histogram;
use shadow_common::MAX_RULES;

use super::evidence::Tally;
use crate::rule::RuleId;

/// Whether one side of a pair failed: for the primary a 5xx, for the shadow a 5xx or no
/// response at all (timeout, reset, refused connection, an answer that is not HTTP).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PairSeen {
    pub primary_failed: bool,
    pub shadow_failed: bool,
    /// Both latencies, timed alike from the kernel's timestamps (none when the shadow failed or
    /// was not timed).
    pub latencies: Option<(Duration, Duration)>,
}

/// A three-way tally kept in atomics.
#[derive(Debug, Default)]
struct Counts {
    up: AtomicU64,
    down: AtomicU64,
    n: AtomicU64,
}

impl Counts {
    fn add(&self, x: i8) {
        // `n` last: a reader that sees an outcome in `up` may miss it in `n` for one tick, which
        // only delays evidence (a tally never claims more outcomes than it has).
        match x {
            1 => self.up.fetch_add(1, Relaxed),
            -1 => self.down.fetch_add(1, Relaxed),
            _ => 0,
        };
        self.n.fetch_add(1, Relaxed);
    }

    fn read(&self) -> Tally {
        let n = self.n.load(Relaxed);
        Tally { up: self.up.load(Relaxed).min(n), down: self.down.load(Relaxed).min(n), n }
    }

    fn clear(&self) {
        for a in [&self.up, &self.down, &self.n] {
            a.store(0, Relaxed);
        }
    }
}

/// What a window has seen, read at once.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WindowCounts {
    /// Pairs compared (the errors guard's outcomes): what `min_pairs` counts.
    pub errors: Tally,
    pub latency: Tally,
    pub harm: Tally,
    pub shedding: Tally,
}

/// One rule's window.
#[derive(Debug)]
struct Window {
    /// A ramp runs for the rule: count.
    active: AtomicBool,
    /// The baseline is being measured: requests are captured, timed and not replayed.
    held_back: AtomicBool,
    /// Latency guard: a pair counts against the shadow when its latency is over
    /// `ratio_milli / 1000` times the primary's plus `floor_ns` (and for it, the reverse).
    ratio_milli: AtomicU64,
    floor_ns: AtomicU64,
    /// Harm guard: a primary response slower than this counts (0: no baseline yet).
    harm_ns: AtomicU64,
    errors: Counts,
    latency: Counts,
    harm: Counts,
    shedding: Counts,
    /// The primary's latencies while the baseline is measured.
    baseline: Mutex<Option<Histogram<u64>>>,
}

impl Default for Window {
    fn default() -> Self {
        Self {
            active: AtomicBool::new(false),
            held_back: AtomicBool::new(false),
            ratio_milli: AtomicU64::new(1200),
            floor_ns: AtomicU64::new(0),
            harm_ns: AtomicU64::new(0),
            errors: Counts::default(),
            latency: Counts::default(),
            harm: Counts::default(),
            shedding: Counts::default(),
            baseline: Mutex::new(None),
        }
    }
}

/// How a rule's window counts, set by the daemon when its ramp changes phase.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct WindowMode {
    /// Measuring the baseline: hold replay back, record the primary's latencies.
    pub baseline: bool,
    pub latency_ratio: f64,
    pub latency_floor: Duration,
    /// The primary's latency past which a response counts against the shadow (do no harm).
    pub harm_threshold: Option<Duration>,
}

/// The primary's latencies during a baseline: how many, and an upper confidence bound of
/// their p99.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BaselineSeen {
    pub responses: u64,
    pub p99_upper: Duration,
}

fn ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Every rule's window (indexed by rule id).
#[derive(Debug)]
pub struct RampFeed {
    windows: Vec<Window>,
}

impl Default for RampFeed {
    fn default() -> Self {
        Self { windows: (0..MAX_RULES).map(|_| Window::default()).collect() }
    }
}

impl RampFeed {
    fn window(&self, rule: RuleId) -> Option<&Window> {
        self.windows.get(rule.index()).filter(|w| w.active.load(Relaxed))
    }

    /// Whether rule `rule`'s requests are held back from replay (its baseline is measured).
    pub fn held_back(&self, rule: RuleId) -> bool {
        self.window(rule).is_some_and(|w| w.held_back.load(Relaxed))
    }

    /// A pair of rule `rule` was compared.
    pub fn pair(&self, rule: RuleId, seen: PairSeen) {
        let Some(w) = self.window(rule) else { return };
        w.errors.add(
            i8::from(seen.shadow_failed && !seen.primary_failed) - i8::from(seen.primary_failed && !seen.shadow_failed),
        );
        if let Some((primary, shadow)) = seen.latencies {
            let ratio = w.ratio_milli.load(Relaxed) as f64 / 1000.0;
            let floor = w.floor_ns.load(Relaxed) as f64;
            let (p, s) = (ns(primary) as f64, ns(shadow) as f64);
            w.latency.add(i8::from(s > ratio * p + floor) - i8::from(p > ratio * s + floor));
        }
    }

    /// The primary answered a request of rule `rule` after `latency` (its last byte).
    pub fn primary(&self, rule: RuleId, latency: Duration) {
        let Some(w) = self.window(rule) else { return };
        if w.held_back.load(Relaxed) {
            let mut b = w.baseline.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(h) = b.as_mut() {
                h.saturating_record(ns(latency).max(1));
            }
            return;
        }
        let harm = w.harm_ns.load(Relaxed);
        if harm > 0 {
            w.harm.add(i8::from(ns(latency) > harm));
        }
    }

    /// A request of rule `rule` was queued to its shadow (`shed`: false) or shed by the daemon
    /// (`true`: its queue was full, or the target is backed off).
    pub fn offered(&self, rule: RuleId, shed: bool) {
        if let Some(w) = self.window(rule) {
            w.shedding.add(i8::from(shed));
        }
    }

    /// A request already counted as queued was shed after all (its target backed off while it
    /// waited): one more outcome against the shadow, no more requests.
    pub fn shed_late(&self, rule: RuleId) {
        if let Some(w) = self.window(rule) {
            w.shedding.up.fetch_add(1, Relaxed);
        }
    }

    /// The window of rule `rule` now.
    pub fn read(&self, rule: RuleId) -> WindowCounts {
        let Some(w) = self.windows.get(rule.index()) else { return WindowCounts::default() };
        WindowCounts {
            errors: w.errors.read(),
            latency: w.latency.read(),
            harm: w.harm.read(),
            shedding: w.shedding.read(),
        }
    }

    /// The baseline measured so far for rule `rule` (none when it is not measuring).
    pub fn baseline(&self, rule: RuleId) -> Option<BaselineSeen> {
        let w = self.windows.get(rule.index())?;
        let b = w.baseline.lock().unwrap_or_else(PoisonError::into_inner);
        let h = b.as_ref()?;
        Some(BaselineSeen { responses: h.len(), p99_upper: Duration::from_nanos(p99_upper(h)) })
    }

    /// Rule `rule` counts (or not, `None`) as `mode` says, from an empty window.
    pub fn set(&self, rule: RuleId, mode: Option<WindowMode>) {
        let Some(w) = self.windows.get(rule.index()) else { return };
        w.active.store(false, Relaxed);
        for c in [&w.errors, &w.latency, &w.harm, &w.shedding] {
            c.clear();
        }
        let mut b = w.baseline.lock().unwrap_or_else(PoisonError::into_inner);
        *b = None;
        let Some(m) = mode else {
            w.held_back.store(false, Relaxed);
            return;
        };
        if m.baseline {
            // 1 µs to 1 h at 3 significant digits: ~30 KiB, once per ramp.
            *b = Histogram::new_with_bounds(1_000, 3_600_000_000_000, 3).ok();
        }
        drop(b);
        w.held_back.store(m.baseline, Relaxed);
        w.ratio_milli.store((m.latency_ratio * 1000.0).round() as u64, Relaxed);
        w.floor_ns.store(ns(m.latency_floor), Relaxed);
        w.harm_ns.store(m.harm_threshold.map_or(0, ns), Relaxed);
        w.active.store(true, Relaxed);
    }
}

/// An upper 95 % confidence bound of the p99 of the recorded values: the `k`-th smallest of `n`
/// with `k` the smallest such that at least `k` of `n` draws fall at or below the true p99 with
/// probability under 5 % (normal approximation of the binomial, rounded up; the maximum when `n`
/// is small). Taking the bound, not the estimate, keeps the harm guard from mistaking a
/// baseline's luck for a slowdown.
pub fn p99_upper(h: &Histogram<u64>) -> u64 {
    let n = h.len();
    if n == 0 {
        return 0;
    }
    let nf = n as f64;
    let k = (0.99 * nf + 1.645 * (nf * 0.99 * 0.01).sqrt() + 1.0).ceil().min(nf);
    h.value_at_quantile(k / nf)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MODE: WindowMode = WindowMode {
        baseline: false,
        latency_ratio: 1.2,
        latency_floor: Duration::from_millis(1),
        harm_threshold: Some(Duration::from_millis(10)),
    };

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    #[test]
    fn an_inactive_rule_counts_nothing() {
        let f = RampFeed::default();
        let r = RuleId::new(3);
        f.pair(r, PairSeen { primary_failed: false, shadow_failed: true, latencies: None });
        f.primary(r, ms(50));
        f.offered(r, true);
        assert_eq!(f.read(r), WindowCounts::default());
        assert!(!f.held_back(r));
        assert_eq!(f.read(RuleId::new(10_000)), WindowCounts::default(), "an id past the table reads empty");
    }

    #[test]
    fn pairs_count_discordance_both_ways() {
        let f = RampFeed::default();
        let r = RuleId::new(0);
        f.set(r, Some(MODE));
        let pair = |p, s, lat: Option<(u64, u64)>| {
            f.pair(r, PairSeen { primary_failed: p, shadow_failed: s, latencies: lat.map(|(a, b)| (ms(a), ms(b))) });
        };
        pair(false, true, None); // shadow only: +1
        pair(true, false, Some((10, 10))); // primary only: -1
        pair(true, true, Some((10, 10))); // both: 0
        pair(false, false, Some((10, 14))); // 14 > 1.2*10+1: slower
        pair(false, false, Some((10, 13))); // 13 is the limit: within
        pair(false, false, Some((14, 10))); // reverse
        pair(false, false, Some((1, 1))); // floor absorbs it
        let c = f.read(r);
        assert_eq!(c.errors, Tally { up: 1, down: 1, n: 7 });
        assert_eq!(c.latency, Tally { up: 1, down: 1, n: 6 });
    }

    #[test]
    fn the_latency_limit_is_strict_and_includes_the_floor() {
        let f = RampFeed::default();
        let r = RuleId::new(1);
        f.set(r, Some(MODE));
        // Exactly ratio * primary + floor: not slower.
        f.pair(r, PairSeen { primary_failed: false, shadow_failed: false, latencies: Some((ms(10), ms(13))) });
        f.pair(
            r,
            PairSeen {
                primary_failed: false,
                shadow_failed: false,
                latencies: Some((ms(10), ms(13) + Duration::from_nanos(1))),
            },
        );
        assert_eq!(f.read(r).latency, Tally { up: 1, down: 0, n: 2 });
        // The same limit the other way: exactly at it is not the primary being slower.
        f.pair(r, PairSeen { primary_failed: false, shadow_failed: false, latencies: Some((ms(13), ms(10))) });
        assert_eq!(f.read(r).latency, Tally { up: 1, down: 0, n: 3 });
        f.pair(
            r,
            PairSeen {
                primary_failed: false,
                shadow_failed: false,
                latencies: Some((ms(13) + Duration::from_nanos(1), ms(10))),
            },
        );
        assert_eq!(f.read(r).latency, Tally { up: 1, down: 1, n: 4 });
    }

    #[test]
    fn primary_responses_count_against_the_harm_threshold_or_build_the_baseline() {
        let f = RampFeed::default();
        let r = RuleId::new(2);
        f.set(r, Some(MODE));
        f.primary(r, ms(10));
        f.primary(r, ms(11));
        assert_eq!(f.read(r).harm, Tally { up: 1, down: 0, n: 2 }, "exactly the threshold is not past it");
        // Without a baseline there is no threshold: responses are not judged at all.
        f.set(r, Some(WindowMode { harm_threshold: None, ..MODE }));
        f.primary(r, ms(500));
        assert_eq!(f.read(r).harm, Tally::default());
        assert!(f.baseline(r).is_none(), "no baseline outside one");
        f.set(r, Some(WindowMode { baseline: true, harm_threshold: None, ..MODE }));
        assert!(f.held_back(r));
        assert_eq!(f.read(r), WindowCounts::default(), "a new phase starts empty");
        for v in 1..=1000 {
            f.primary(r, Duration::from_micros(v * 10));
        }
        let b = f.baseline(r).expect("measuring");
        assert_eq!(b.responses, 1000);
        // The p99 of 10 µs..10 ms is ~9.9 ms; its upper bound sits a few values above.
        assert!(b.p99_upper >= ms(9) + Duration::from_micros(900) && b.p99_upper <= ms(10), "{:?}", b.p99_upper);
        assert_eq!(f.read(r).harm.n, 0, "baseline responses are not judged");
        f.set(r, None);
        assert!(!f.held_back(r) && f.baseline(r).is_none());
    }

    #[test]
    fn shedding_counts_requests_and_late_sheds() {
        let f = RampFeed::default();
        let r = RuleId::new(4);
        f.set(r, Some(MODE));
        f.offered(r, false);
        f.offered(r, false);
        f.offered(r, true);
        f.shed_late(r);
        assert_eq!(f.read(r).shedding, Tally { up: 2, down: 0, n: 3 });
    }

    #[test]
    fn the_p99_bound_is_the_maximum_for_small_samples_and_near_the_p99_for_large() {
        let mut h = Histogram::<u64>::new_with_bounds(1, 1_000_000, 3).expect("histogram");
        assert_eq!(p99_upper(&h), 0);
        for v in 1..=100 {
            h.record(v).expect("in range");
        }
        assert_eq!(p99_upper(&h), 100, "100 values: the bound is the largest");
        // 1..=1000, exact at this precision: the ceil(990 + 1.645 * sqrt(9.9) + 1) = 997th.
        let mut k = Histogram::<u64>::new_with_bounds(1, 1_000_000, 3).expect("histogram");
        for v in 1..=1000 {
            k.record(v).expect("in range");
        }
        assert_eq!(p99_upper(&k), 997);
        let mut big = Histogram::<u64>::new_with_bounds(1, 1_000_000, 3).expect("histogram");
        for v in 1..=100_000 {
            big.record(v).expect("in range");
        }
        let b = p99_upper(&big);
        assert!((99_000..=99_300).contains(&b), "{b}");
    }
}
