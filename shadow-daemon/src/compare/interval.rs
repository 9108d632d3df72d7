//! Distribution-free confidence intervals for a latency quantile, and for the ratio of two.
//!
//! Of `n` samples of a continuous latency, the number at or below the true q-quantile `ξ` is
//! Binomial(n, q), whatever the distribution; so the order statistics bound `ξ`: the `l`-th
//! smallest lies above it with probability P(B ≤ l-1), the `u`-th below it with P(B ≥ u). The
//! ranks are chosen so that each of those is at most `tail`. The histogram gives the value at a
//! rank to its bucket (2 significant figures), and each bound takes its bucket's far edge (the
//! lowest value of the bucket for a lower bound, the highest for an upper), so bucketing only
//! widens an interval.
//!
//! The ratio interval `[shadow lower / primary upper, shadow upper / primary lower]` holds when all
//! four one-sided bounds hold. Primary and shadow answer the same requests, so their samples are
//! not independent; the union bound does not need them to be: with `tail = (1 - confidence) / 4`
//! the ratio interval covers the true ratio with at least `confidence`. A FAIL needs the shadow's
//! lower and the primary's upper bound to be wrong in one direction, so at a true ratio exactly at
//! the limit it is wrong at most `(1 - confidence) / 2` of the time, and far less below it.

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Sample counts above this get the ranks of this many samples, scaled (see [`ranks`]).
const EXACT_RANKS_MAX: u64 = 10_000;

/// The one-sided error each bound may have for a ratio interval at `confidence`.
pub(crate) fn tail_of(confidence: f64) -> f64 {
    (1.0 - confidence) / 4.0
}

/// 1-based ranks `(l, u)` of the order statistics bounding the `q`-quantile of `n` samples, each
/// wrong with probability at most `tail`: P(B ≤ l-1) ≤ tail and P(B ≥ u) ≤ tail for B ~
/// Binomial(n, q). `None` for a bound no rank achieves (too few samples).
///
/// Exact for `n` up to [`EXACT_RANKS_MAX`]; above, the ranks of that many samples are scaled to
/// `n` (rounded outwards). Their share of `n` is then further from `q` than the exact ranks', so
/// the interval is wider than it need be, never narrower; at 10 000 samples the exact p99 ranks are
/// within 0.3 % of the quantile already, under the histogram's 1 % buckets.
pub(crate) fn ranks(n: u64, q: f64, tail: f64) -> (Option<u64>, Option<u64>) {
    if n > EXACT_RANKS_MAX {
        let (l, u) = ranks(EXACT_RANKS_MAX, q, tail);
        let scale = n as f64 / EXACT_RANKS_MAX as f64;
        let l = l.map(|l| ((l as f64 * scale).floor() as u64).max(1));
        let u = u.map(|u| ((u as f64 * scale).ceil() as u64).min(n));
        return (l, u);
    }
    if n == 0 || !(q > 0.0 && q < 1.0) {
        return (None, None);
    }
    // ln P(B = k) from k = 0 up by the ratio of successive terms; normalised by their sum at the
    // end, so that rounding over the walk cannot shift the tails.
    let (ln_q, ln_not_q) = (q.ln(), (1.0 - q).ln());
    let mut ln_pmf = Vec::with_capacity(n as usize + 1);
    let mut lp = n as f64 * ln_not_q;
    for k in 0..=n {
        ln_pmf.push(lp);
        lp += ((n - k) as f64).ln() - ((k + 1) as f64).ln() + ln_q - ln_not_q;
    }
    let top = ln_pmf.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let pmf: Vec<f64> = ln_pmf.iter().map(|lp| (lp - top).exp()).collect();
    let total: f64 = pmf.iter().sum();

    // l - 1 is the largest k with P(B <= k) <= tail.
    let mut below = 0.0;
    let mut lower = None;
    for (k, p) in pmf.iter().enumerate() {
        below += p;
        if below / total > tail {
            break;
        }
        lower = Some(k as u64 + 1);
    }
    // u is the smallest k with P(B >= k) <= tail.
    let mut above = 0.0;
    let mut upper = None;
    for (k, p) in pmf.iter().enumerate().rev().take(n as usize) {
        above += p;
        if above / total > tail {
            break;
        }
        upper = Some(k as u64);
    }
    (lower, upper)
}

/// [`ranks`] at `confidence`: for tests that check an approximation of them (the fleet rules').
#[cfg(any(test, feature = "test-util"))]
pub fn quantile_ranks(n: u64, q: f64, confidence: f64) -> (Option<u64>, Option<u64>) {
    ranks(n, q, tail_of(confidence))
}

/// Fewest samples for which both ranks of the `q`-quantile exist at `tail` (for q >= 0.5 the upper
/// one is the last to exist: q^n <= tail); `u64::MAX` for a quantile no sample count bounds.
pub(crate) fn samples_needed(q: f64, tail: f64) -> u64 {
    let q = q.max(1.0 - q);
    if !(q < 1.0 && tail > 0.0) {
        return u64::MAX;
    }
    // q^n <= tail, counted rather than taken from logarithms so that it agrees with `ranks`.
    let mut n: u64 = 1;
    let mut p = q;
    while p > tail {
        n += 1;
        p *= q;
    }
    n
}

/// One side's quantile bounds, in milliseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct QuantileBounds {
    /// Timed samples the bounds come from.
    pub samples: u64,
    /// None when the samples are too few for that rank to exist.
    pub lower_ms: Option<f64>,
    pub upper_ms: Option<f64>,
}

impl QuantileBounds {
    pub(crate) fn of(h: &Histogram<u64>, q: f64, tail: f64) -> Self {
        let n = h.len();
        let (l, u) = ranks(n, q, tail);
        let at = |rank: u64| {
            let mut seen = 0;
            for v in h.iter_recorded() {
                seen += v.count_since_last_iteration();
                if seen >= rank {
                    return Some(v.value_iterated_to());
                }
            }
            None
        };
        Self {
            samples: n,
            lower_ms: l.and_then(at).map(|v| h.lowest_equivalent(v) as f64 / 1000.0),
            upper_ms: u.and_then(at).map(|v| h.highest_equivalent(v) as f64 / 1000.0),
        }
    }

    /// Both bounds, once the samples are enough for both.
    pub fn both(&self) -> Option<(f64, f64)> {
        self.lower_ms.zip(self.upper_ms)
    }
}

/// One quantile of both sides (and of the secondary, when there is one) with the intervals the
/// latency gate decides on.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct QuantileInterval {
    /// 50 or 99.
    pub percentile: f64,
    /// Of the ratio interval (and of the noise interval).
    pub confidence: f64,
    /// Timed samples each side needs for the bounds to exist.
    pub samples_needed: u64,
    pub primary: QuantileBounds,
    pub shadow: QuantileBounds,
    /// `[shadow lower / primary upper, shadow upper / primary lower]`; None until both sides have
    /// their bounds.
    pub ratio: Option<[f64; 2]>,
    /// The secondary's bounds, from the primary/secondary pairs (timed like the shadow's).
    pub secondary: Option<QuantileBounds>,
    /// secondary / primary over those pairs, as `ratio` is: the spread the same version shows.
    pub noise: Option<[f64; 2]>,
}

/// `[a lower / b upper, a upper / b lower]` when both have both bounds (b's bounds are at least
/// the histogram's 1 µs floor; a hand-made 0 is divided as the smallest positive number).
fn ratio(a: &QuantileBounds, b: &QuantileBounds) -> Option<[f64; 2]> {
    let ((al, au), (bl, bu)) = (a.both()?, b.both()?);
    Some([al / bu.max(f64::MIN_POSITIVE), au / bl.max(f64::MIN_POSITIVE)])
}

impl QuantileInterval {
    /// `percentile` of primary against shadow, and of the secondary's own primary/secondary pairs
    /// when given.
    pub(crate) fn of(
        primary: &Histogram<u64>,
        shadow: &Histogram<u64>,
        secondary: Option<(&Histogram<u64>, &Histogram<u64>)>,
        percentile: f64,
        confidence: f64,
    ) -> Self {
        let q = percentile / 100.0;
        let tail = tail_of(confidence);
        let (p, s) = (QuantileBounds::of(primary, q, tail), QuantileBounds::of(shadow, q, tail));
        let learned = secondary.map(|(sp, ss)| (QuantileBounds::of(sp, q, tail), QuantileBounds::of(ss, q, tail)));
        Self {
            percentile,
            confidence,
            samples_needed: samples_needed(q, tail),
            ratio: ratio(&s, &p),
            secondary: learned.map(|(_, sec)| sec),
            noise: learned.and_then(|(sp, sec)| ratio(&sec, &sp)),
            primary: p,
            shadow: s,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compare::aggregate::{latency_histogram, record_latency};

    /// P(B <= k) for B ~ Binomial(n, q), summed term by term from the definition (small n).
    fn cdf(n: u64, q: f64, k: u64) -> f64 {
        let choose = |n: u64, k: u64| (0..k).fold(1.0, |c, i| c * (n - i) as f64 / (i + 1) as f64);
        (0..=k).map(|i| choose(n, i) * q.powi(i as i32) * (1.0 - q).powi((n - i) as i32)).sum()
    }

    /// The ranks against the binomial's definition: each bound within its tail, and the next rank
    /// inwards past it (so the interval is the narrowest the tail allows).
    #[test]
    fn ranks_are_the_tightest_within_the_tail() {
        for (n, q, tail) in
            [(20, 0.5, 0.025), (100, 0.5, 0.0125), (300, 0.99, 0.05), (500, 0.99, 0.0125), (60, 0.9, 0.01)]
        {
            let (l, u) = ranks(n, q, tail);
            let l = l.unwrap_or_else(|| panic!("{n} {q}: lower"));
            let u = u.unwrap_or_else(|| panic!("{n} {q}: upper"));
            assert!(cdf(n, q, l - 1) <= tail, "{n} {q}: P(B <= l-1)");
            assert!(cdf(n, q, l) > tail, "{n} {q}: l+1 would be past the tail");
            assert!(1.0 - cdf(n, q, u - 1) <= tail + 1e-12, "{n} {q}: P(B >= u)");
            assert!(1.0 - cdf(n, q, u - 2) > tail, "{n} {q}: u-1 would be past the tail");
        }
    }

    /// Pinned ranks at the defaults' tail (confidence 0.95: 0.0125 a bound).
    #[test]
    fn ranks_pinned() {
        let t = tail_of(0.95);
        assert!((t - 0.0125).abs() < 1e-15, "{t}");
        assert_eq!(tail_of(0.9), (1.0 - 0.9) / 4.0);
        assert_eq!(ranks(100, 0.5, t), (Some(39), Some(62)));
        assert_eq!(ranks(300, 0.5, t), (Some(131), Some(170)));
        assert_eq!(ranks(1000, 0.5, t), (Some(465), Some(536)));
        assert_eq!(ranks(1000, 0.99, t), (Some(982), Some(997)));
        assert_eq!(ranks(437, 0.99, t), (Some(427), Some(437)));
        assert_eq!(ranks(436, 0.99, t), (Some(426), None), "0.99^436 > 0.0125: no upper rank");
        assert_eq!(ranks(6, 0.5, t), (None, None), "0.5^6 = 0.0156 > 0.0125");
        assert_eq!(ranks(7, 0.5, t), (Some(1), Some(7)));
        assert_eq!(ranks(0, 0.5, t), (None, None));
        assert_eq!(ranks(10, 1.0, t), (None, None));
        assert_eq!(ranks(10, 0.0, t), (None, None));
        // Past the exact range: the ranks of 10 000 scaled, outwards.
        assert_eq!(ranks(10_000, 0.99, t), (Some(9877), Some(9923)));
        assert_eq!(ranks(20_000, 0.99, t), (Some(19754), Some(19846)));
        assert_eq!(ranks(10_001, 0.99, t), (Some(9877), Some(9924)), "9877.99 down, 9923.99 up");
        assert_eq!(ranks(1_000_000, 0.5, t), (Some(488_800), Some(511_300)), "scaled, clamped to 1..=n");
    }

    #[test]
    fn samples_needed_is_where_both_ranks_start() {
        let t = tail_of(0.95);
        assert_eq!((samples_needed(0.99, t), samples_needed(0.5, t)), (437, 7));
        assert_eq!((samples_needed(0.99, tail_of(0.9)), samples_needed(0.99, tail_of(0.99))), (368, 597));
        assert_eq!(samples_needed(0.01, t), 437, "the low quantile mirrors the high one");
        assert_eq!(
            (samples_needed(1.0, t), samples_needed(0.0, t), samples_needed(0.5, 0.0)),
            (u64::MAX, u64::MAX, u64::MAX)
        );
        assert_eq!((samples_needed(0.5, 0.5), samples_needed(0.5, 0.49)), (1, 2));
        for q in [0.5, 0.9, 0.99] {
            let n = samples_needed(q, t);
            assert!(ranks(n, q, t).1.is_some() && ranks(n - 1, q, t).1.is_none(), "{q}");
        }
    }

    /// Bounds at known inputs: 1..=1000 µs once each. The p50's ranks at n = 1000 and the
    /// p99's, read from the histogram to the bucket's far edge.
    #[test]
    fn bounds_from_the_histogram() {
        let mut h = latency_histogram();
        for us in 1..=1000u64 {
            record_latency(&mut h, std::time::Duration::from_micros(us));
        }
        let t = tail_of(0.95);
        assert_eq!(ranks(1000, 0.5, t), (Some(465), Some(536)));
        let b = QuantileBounds::of(&h, 0.5, t);
        // 465 and 536 µs: from 256 µs the buckets are 2 µs wide, from 512 µs 4; each bound takes
        // its bucket's far edge (464 and 539).
        assert_eq!(b, QuantileBounds { samples: 1000, lower_ms: Some(0.464), upper_ms: Some(0.539) });
        // Ranks 982 and 997: buckets 980-983 and 996-999.
        let b = QuantileBounds::of(&h, 0.99, t);
        assert_eq!(b, QuantileBounds { samples: 1000, lower_ms: Some(0.980), upper_ms: Some(0.999) });
        assert_eq!(b.both(), Some((0.980, 0.999)));
        // Exact below 256 µs: 100 values at 7 µs and one at 9: the p50's bounds are both 7 µs.
        let mut h = latency_histogram();
        for _ in 0..100 {
            record_latency(&mut h, std::time::Duration::from_micros(7));
        }
        record_latency(&mut h, std::time::Duration::from_micros(9));
        assert_eq!(
            QuantileBounds::of(&h, 0.5, t),
            QuantileBounds { samples: 101, lower_ms: Some(0.007), upper_ms: Some(0.007) }
        );
        let b = QuantileBounds::of(&h, 0.99, t);
        assert_eq!((b.lower_ms, b.upper_ms), (Some(0.007), None), "101 samples have no upper p99 rank");
        let empty = QuantileBounds::of(&latency_histogram(), 0.5, t);
        assert_eq!(empty, QuantileBounds::default());
        assert_eq!(empty.both(), None);
    }

    /// The ratio interval: shadow lower over primary upper, shadow upper over primary lower; the
    /// noise interval the same of the secondary's pairs; none without enough samples.
    #[test]
    fn ratio_and_noise_intervals() {
        let hist = |us: &[(u64, u64)]| {
            let mut h = latency_histogram();
            for &(v, n) in us {
                for _ in 0..n {
                    record_latency(&mut h, std::time::Duration::from_micros(v));
                }
            }
            h
        };
        let p = hist(&[(100, 250), (200, 250)]);
        let s = hist(&[(300, 500)]);
        let i = QuantileInterval::of(&p, &s, Some((&p, &p)), 50.0, 0.95);
        assert_eq!((i.percentile, i.confidence, i.samples_needed), (50.0, 0.95, 7));
        assert_eq!(i.primary, QuantileBounds { samples: 500, lower_ms: Some(0.1), upper_ms: Some(0.2) });
        assert_eq!(i.shadow, QuantileBounds { samples: 500, lower_ms: Some(0.3), upper_ms: Some(0.301) });
        assert_eq!(i.ratio, Some([0.3 / 0.2, 0.301 / 0.1]));
        assert_eq!(i.noise, Some([0.1 / 0.2, 0.2 / 0.1]));
        assert_eq!(i.secondary, Some(i.primary));
        let i = QuantileInterval::of(&p, &s, None, 99.0, 0.95);
        assert_eq!(
            (i.samples_needed, i.ratio, i.noise, i.secondary),
            (437, Some([0.3 / 0.2, 0.301 / 0.2]), None, None)
        );
        let few = hist(&[(300, 436)]);
        let i = QuantileInterval::of(&p, &few, Some((&few, &few)), 99.0, 0.95);
        assert_eq!((i.shadow.upper_ms, i.ratio, i.noise), (None, None, None));
        let one = |lo, hi| QuantileBounds { samples: 1, lower_ms: Some(lo), upper_ms: Some(hi) };
        assert_eq!(ratio(&one(1.0, 2.0), &one(0.0, 4.0)), Some([0.25, 2.0 / f64::MIN_POSITIVE]), "no division by 0");
        assert_eq!(ratio(&one(1.0, 2.0), &QuantileBounds { upper_ms: None, ..one(1.0, 4.0) }), None);
    }
}
