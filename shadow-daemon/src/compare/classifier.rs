//! The latency judge measured as a classifier: many seeded runs of simulated traffic through the
//! comparator, each judged by `report()`, counted by verdict. Deterministic (a seeded generator,
//! no clock), so every count is pinned: a change to the judge that moves one shows up here.
//!
//! A service's latency: a lognormal body (median `median_ms`, log-sd 0.5) and a heavy tail (with
//! probability `tail_share`, a Pareto excess of scale 5 medians and index `tail_index`, as pauses
//! and slow dependencies give). Each run draws `pairs` primary and shadow latencies independently
//! (the pairing does not help an order-statistic interval, so this is the harder case).
//!
//! Results with the default gates (confidence 0.9, ratio 1.2, floors 0.25 ms at p50 and 5 ms at
//! p99, the p99 not confirmed), 200 runs a scenario (fewer where said), as FAIL / INSUFFICIENT /
//! PASS, and how many runs the point-estimate p99 gate this judge replaced (ratio 1.2, 1 ms
//! floor) failed:
//!
//! | scenario (1 ms median, 2 % tail, 500 pairs unless said) | interval judge  | point p99 gate |
//! |---------------------------------------------------------|-----------------|----------------|
//! | A/A identical                                           | 0 / 0 / 200     | 50 FAIL        |
//! | A/A identical, 300 pairs (under the p99's 368)          | 0 / 200 / 0     | 62 FAIL        |
//! | A/A shadow +0.05 ms on a 0.1 ms service                 | 0 / 0 / 200     | 1 FAIL         |
//! | A/A both with a noisy heavy tail (10 %, index 1.1)      | 0 / 4 / 196     | 71 FAIL        |
//! | A/A +1 ms on shadow and secondary, learned              | 0 / 105 / 95    | 80 FAIL        |
//! | the same +1 ms without a secondary                      | 200 / 0 / 0     |                |
//! | A/B 10x slower                                          | 200 / 0 / 0     | 200 FAIL       |
//! | A/B +5 ms                                               | 200 / 0 / 0     | 181 FAIL       |
//! | A/B 1.5x slower (500; 300 pairs)                        | 195 / 5 / 0; 162 / 38 / 0 | 148; 140 FAIL |
//! | A/B 10x slower on top of a learned +1 ms                | 200 / 0 / 0     |                |
//! | A/B tail only: 10 % slow requests, not 2 % (p99 x2)     | 2 / 15 / 183    | 194 FAIL       |
//! | the same, 2000 pairs (50 runs); 5000 pairs (20 runs)    | 5 / 0 / 45; 16 / 0 / 4 | 50; 20 FAIL |
//! | `p99_confirm`, A/A identical: 500; 1000; 3000 (50 runs) | 0 / 191 / 9; 0 / 153 / 47; 0 / 3 / 47 | |
//! | `p99_confirm`, A/A without a tail, 1000 pairs           | 0 / 0 / 200     |                |
//!
//! So: no false FAIL in 1 650 A/A runs (the point gate failed 264 of the 1 000 judged with the
//! default gates), every 10x and +5 ms regression caught, 1.5x in 97.5 % of runs. Two prices,
//! both said in the report and the docs: below 368 timed samples a side the p99 cannot be judged
//! (INSUFFICIENT); and a regression in the tail alone (the p99 doubled on a 1 ms service, from
//! about 8 to 16 ms) is seen only once the primary's p99 is bounded by more than its few slowest
//! requests and the gap clears the 5 ms floor (1 % of runs at 500 pairs, 10 % at 2000, 80 % at
//! 5000), where the point gate, which also fails a quarter of identical shadows, saw it.
//! Confirming the p99 (`p99_confirm`) makes PASS mean "the p99 is shown within the limit", which
//! a 2 % heavy tail allows in 5 % of runs at 500 pairs and nearly all at 3000. The table is
//! pinned by the tests below: a changed count fails them.

use std::time::Duration;

use bytes::Bytes;

use super::*;

/// SplitMix64: small, seedable, good enough for simulation.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in (0, 1).
    fn uniform(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }

    fn normal(&mut self) -> f64 {
        let (u, v) = (self.uniform(), self.uniform());
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }
}

/// A service's latency distribution.
#[derive(Clone, Copy)]
struct Service {
    median_ms: f64,
    tail_share: f64,
    tail_index: f64,
}

const SERVICE: Service = Service { median_ms: 1.0, tail_share: 0.02, tail_index: 2.0 };

impl Service {
    fn draw(&self, rng: &mut Rng) -> f64 {
        let body = self.median_ms * (0.5 * rng.normal()).exp();
        if rng.uniform() < self.tail_share {
            body + 5.0 * self.median_ms * rng.uniform().powf(-1.0 / self.tail_index)
        } else {
            body
        }
    }
}

/// One scenario: the primary's service, and what the shadow (and a secondary, if any) make of a
/// draw of the same distribution.
struct Scenario {
    pairs: u64,
    primary: Service,
    shadow: Shadow,
    secondary: Option<fn(f64) -> f64>,
    gates: Gates,
}

/// What the shadow makes of a draw: a function of a primary-like draw, or a service of its own.
#[derive(Clone, Copy)]
enum Shadow {
    Of(fn(f64) -> f64),
    Service(Service),
}

fn sample(ms: f64) -> ResponseSample {
    ResponseSample {
        status: 200,
        headers: Vec::new(),
        body: Bytes::from_static(b"{}"),
        body_complete: true,
        body_len: 2,
        latency: Some(Duration::from_secs_f64(ms / 1000.0)),
    }
}

/// Verdict counts over `runs` seeded runs: `[fail, insufficient, pass]`, and how many runs the
/// point-estimate p99 gate this judge replaced (ratio 1.2, 1 ms floor) would have failed.
fn run(s: &Scenario, runs: u64, seed: u64) -> ([u32; 3], u32) {
    let mut counts = [0u32; 3];
    let mut old_fails = 0;
    let settings = CompareSettings { gates: s.gates, ..CompareSettings::default() };
    for r in 0..runs {
        let mut rng = Rng(seed.wrapping_mul(1_000_003).wrapping_add(r));
        let mut c = Comparator::new(&settings).expect("defaults");
        for _ in 0..s.pairs {
            let p = s.primary.draw(&mut rng);
            let sh = match s.shadow {
                Shadow::Of(f) => f(s.primary.draw(&mut rng)),
                Shadow::Service(svc) => svc.draw(&mut rng),
            };
            c.observe("GET /x", &sample(p), &sample(sh));
            if let Some(sec) = s.secondary {
                let p2 = s.primary.draw(&mut rng);
                c.observe_secondary("GET /x", &sample(p2), &sample(sec(s.primary.draw(&mut rng))));
            }
        }
        let report = c.report();
        let e = &report.endpoints[0];
        counts[match e.verdict.verdict() {
            Verdict::Fail => 0,
            Verdict::Insufficient => 1,
            Verdict::Pass => 2,
        }] += 1;
        let l = &e.summary.latency;
        let ratio = l.p99_ratio.unwrap_or_default();
        old_fails += u32::from(ratio > 1.2 && l.shadow.p99_ms - l.primary.p99_ms > 1.0);
    }
    eprintln!("SCENARIO pairs={} seed={seed} runs={runs}: {counts:?} old={old_fails}", s.pairs);
    (counts, old_fails)
}

const RUNS: u64 = 200;
/// Pairs a side in most scenarios: what the tier B A/A test sends per endpoint, above the 368 the
/// p99's ranks need at the default confidence.
const PAIRS: u64 = 500;

fn same(ms: f64) -> f64 {
    ms
}

fn with(pairs: u64, shadow: fn(f64) -> f64) -> Scenario {
    Scenario { pairs, primary: SERVICE, shadow: Shadow::Of(shadow), secondary: None, gates: Gates::default() }
}

fn aa(pairs: u64) -> Scenario {
    with(pairs, same)
}

/// A/A: an identical shadow is never failed and passes, where the point-estimate p99 gate
/// failed it in 50 of 200 runs (so this test can tell the two apart).
#[test]
fn judge_aa_identical_passes() {
    assert_eq!(run(&aa(PAIRS), RUNS, 1), ([0, 0, 200], 50));
}

/// Fewer timed samples than the p99's ranks need (368 at 0.9): INSUFFICIENT, never a guess.
#[test]
fn judge_aa_below_the_p99_floor_is_insufficient() {
    assert_eq!(run(&aa(300), RUNS, 1), ([0, 200, 0], 62));
}

/// A/A on a sub-millisecond service whose shadow side carries 0.05 ms the primary's does not
/// (one more loopback traversal): the p50 floor absorbs it.
#[test]
fn judge_aa_small_constant_offset_passes() {
    let fast = Service { median_ms: 0.1, ..SERVICE };
    let s = Scenario { primary: fast, ..with(PAIRS, |ms| ms + 0.05) };
    assert_eq!(run(&s, RUNS, 2), ([0, 0, 200], 1));
}

/// A/A where both sides have a noisy heavy tail (10 % of requests, Pareto index 1.1): never
/// failed; a few runs' p50 intervals straddle the limit (INSUFFICIENT).
#[test]
fn judge_aa_noisy_heavy_tail_never_fails() {
    let noisy = Service { tail_share: 0.10, tail_index: 1.1, ..SERVICE };
    let s = Scenario { primary: noisy, ..aa(PAIRS) };
    assert_eq!(run(&s, RUNS, 3), ([0, 4, 196], 71));
}

/// `p99_confirm`: a PASS also needs the p99's interval within the limit. With a 2 % heavy tail
/// even thousands of samples rarely narrow it that far (the p99 of such a service is genuinely
/// that uncertain), without a tail about half the runs at 1000: why it is not the default.
#[test]
fn judge_confirming_the_p99_needs_far_more_samples() {
    let confirm = Gates { p99_confirm: true, ..Gates::default() };
    assert_eq!(run(&Scenario { gates: confirm, ..aa(PAIRS) }, RUNS, 4).0, [0, 191, 9]);
    assert_eq!(run(&Scenario { gates: confirm, ..aa(1000) }, RUNS, 4).0, [0, 153, 47]);
    let light = Service { tail_share: 0.0, ..SERVICE };
    assert_eq!(run(&Scenario { primary: light, gates: confirm, ..aa(1000) }, RUNS, 11).0, [0, 0, 200]);
    assert_eq!(run(&Scenario { gates: confirm, ..aa(3000) }, 50, 5).0, [0, 3, 47]);
}

/// A timing asymmetry the same version shows (shadow and secondary both +1 ms, doubling a 1 ms
/// service): learned from the secondary it is never failed (the p50's limit widened by the
/// learned interval's end passes half the runs, the rest stay undecided); without a secondary
/// it is a regression as far as the judge can tell.
#[test]
fn judge_learns_the_latency_noise_floor_from_a_secondary() {
    let learned = Scenario { secondary: Some(|ms| ms + 1.0), ..with(PAIRS, |ms| ms + 1.0) };
    assert_eq!(run(&learned, RUNS, 6).0, [0, 105, 95]);
    let alone = Scenario { secondary: None, ..learned };
    assert_eq!(run(&alone, RUNS, 6).0, [200, 0, 0]);
    // A real regression on top of the same asymmetry still fails.
    let slow = Scenario { secondary: Some(|ms| ms + 1.0), ..with(PAIRS, |ms| 10.0 * ms + 1.0) };
    assert_eq!(run(&slow, RUNS, 7).0, [200, 0, 0]);
}

/// A/B: regressions are caught in every run.
#[test]
fn judge_detects_regressions() {
    assert_eq!(run(&with(PAIRS, |ms| 10.0 * ms), RUNS, 8).0, [200, 0, 0], "10x slower");
    assert_eq!(run(&with(PAIRS, |ms| ms + 5.0), RUNS, 9).0, [200, 0, 0], "+5 ms on a 1 ms service");
    assert_eq!(run(&with(PAIRS, |ms| 1.5 * ms), RUNS, 10).0, [195, 5, 0], "1.5x slower");
    assert_eq!(run(&with(300, |ms| 1.5 * ms), RUNS, 10).0, [162, 38, 0], "1.5x slower at 300 pairs");
}

/// A/B in the tail alone: the shadow's median is the primary's but five times as many requests
/// (10 %) take the slow path, doubling the p99. The p50 cannot see it, and the p99's interval
/// can only once the primary's upper bound is no longer its few slowest requests: a limit of
/// distribution-free intervals on a heavy tail, pinned here so that it stays said.
#[test]
fn judge_tail_regression_needs_samples() {
    let tail = |pairs| Scenario { shadow: Shadow::Service(Service { tail_share: 0.10, ..SERVICE }), ..aa(pairs) };
    assert_eq!(run(&tail(PAIRS), RUNS, 13).0, [2, 15, 183], "at 500 pairs");
    assert_eq!(run(&tail(2000), 50, 14).0, [5, 0, 45], "at 2000 pairs");
    assert_eq!(run(&tail(5000), 20, 15).0, [16, 0, 4], "at 5000 pairs");
}

/// The generator itself, pinned: the same seed gives the same draws.
#[test]
fn rng_is_deterministic() {
    let mut a = Rng(42);
    let first: Vec<u64> = (0..3).map(|_| a.next_u64()).collect();
    let mut b = Rng(42);
    assert_eq!(first, (0..3).map(|_| b.next_u64()).collect::<Vec<_>>());
    let mut r = Rng(7);
    let mean = (0..10_000).map(|_| r.uniform()).sum::<f64>() / 10_000.0;
    assert!((mean - 0.5).abs() < 0.01, "{mean}");
}
