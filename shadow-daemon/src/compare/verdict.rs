//! Gates and the go/no-go verdict.
//!
//! Each endpoint is judged on its own: too few pairs is INSUFFICIENT whatever the rates say (the
//! gates that would fail so far are listed, as information); otherwise every failing gate is
//! named. The overall verdict is the worst endpoint's, with FAIL worse than INSUFFICIENT worse
//! than PASS: a pipeline must not promote while any endpoint fails, and must not promote on too
//! little data either, but "fails" is the more useful thing to say when both hold, because more
//! traffic will not fix it. No endpoint at all is INSUFFICIENT, never PASS.
//!
//! The latency gates (p50, p99) decide on an interval, not on two point estimates: a p99 of a few
//! hundred samples moves by tens of percent from run to run, so comparing two of them against
//! 1.2 fails an identical shadow about one run in two. With the shadow/primary ratio's
//! confidence interval `[lo, hi]` (see `interval.rs`), the limit `r` (widened by the learned
//! primary/secondary spread, see [`latency_gate`]) and the absolute floor `t`:
//! FAIL when the shadow's lower bound is past both `primary upper * r` and `primary upper + t`,
//! PASS when the shadow's upper bound is within `primary lower * r` or `primary lower + t`, and
//! otherwise undecided: INSUFFICIENT, naming the gate and why (too few timed samples for the
//! quantile's ranks to exist, or an interval that spans the limit).
//!
//! Measured as a classifier (`classifier.rs`: seeded simulation through the comparator, 200 runs
//! a scenario, lognormal latencies around 1 ms with a 2 % heavy tail, 300 pairs a side, default
//! gates): no false FAIL in any A/A scenario (identical, +0.05 ms on a 0.1 ms service, both with a
//! noisy heavy tail, a +1 ms asymmetry learned from a secondary), where the point-estimate gate
//! this replaces failed the plain A/A 62 times; every 10x and +5 ms regression FAILs (200 of
//! 200), 1.5x in 137 of 200 (all of 200 at 1000 pairs).

use std::fmt;

use serde::{Deserialize, Serialize};

use super::{interval::QuantileInterval, settings::Gates, summary::EndpointSummary};

/// Rates are compared with this slack, so that 99 of 100 passes a 99 % gate despite rounding.
const EPSILON: f64 = 1e-9;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Gate {
    MinSamples,
    BodyMatch,
    StatusMatch,
    HeaderMatch,
    Shadow5xx,
    P99Ratio,
    P50Ratio,
}

impl Gate {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::MinSamples => "min_samples",
            Self::BodyMatch => "body_match",
            Self::StatusMatch => "status_match",
            Self::HeaderMatch => "header_match",
            Self::Shadow5xx => "shadow_5xx",
            Self::P99Ratio => "p99_ratio",
            Self::P50Ratio => "p50_ratio",
        }
    }
}

/// A gate that did not hold: what was measured (None: nothing to measure) against its limit.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GateFailure {
    pub gate: Gate,
    pub observed: Option<f64>,
    /// For a latency gate, the ratio limit as widened by the learned noise.
    pub limit: f64,
    /// A latency gate's ratio interval, all of it past the limit.
    #[serde(default)]
    pub interval: Option<[f64; 2]>,
    /// A latency gate's absolute floor, also exceeded.
    #[serde(default)]
    pub tolerance_ms: Option<f64>,
}

impl GateFailure {
    fn new(gate: Gate, observed: Option<f64>, limit: f64) -> Self {
        Self { gate, observed, limit, interval: None, tolerance_ms: None }
    }
}

/// `[lo, hi]` as the report prints an interval.
fn interval_text(i: [f64; 2]) -> String {
    format!("[{:.2}, {:.2}]", i[0], i[1])
}

fn tolerance_text(t: f64) -> String {
    if t > 0.0 { format!(" (+{t:.2} ms)") } else { String::new() }
}

impl fmt::Display for GateFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let g = self.gate.as_str();
        let Some(o) = self.observed else {
            return write!(f, "{g}: no shadow responses");
        };
        match self.gate {
            Gate::MinSamples => write!(f, "{g} {o} < {}", self.limit),
            Gate::BodyMatch | Gate::StatusMatch | Gate::HeaderMatch => {
                write!(f, "{g} {o:.2}% < {:.2}%", self.limit)
            }
            Gate::Shadow5xx => write!(f, "{g} {o:.2}% > {:.2}%", self.limit),
            Gate::P99Ratio | Gate::P50Ratio => {
                write!(f, "{g} {o:.2}")?;
                if let Some(i) = self.interval {
                    write!(f, " {}", interval_text(i))?;
                }
                write!(f, " > {:.2}{}", self.limit, tolerance_text(self.tolerance_ms.unwrap_or(0.0)))
            }
        }
    }
}

/// Why a latency gate could not decide.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UndecidedReason {
    /// A side has fewer timed samples than the quantile's ranks need at the confidence.
    TooFewSamples,
    /// The ratio's interval reaches both sides of the limit: more samples will narrow it.
    IntervalTooWide,
}

/// A latency gate that neither passed nor failed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Undecided {
    pub gate: Gate,
    pub reason: UndecidedReason,
    /// Timed samples of the side with fewer, and how many each side needs.
    pub samples: u64,
    pub needed: u64,
    /// The ratio's interval, when both sides have one.
    pub interval: Option<[f64; 2]>,
    /// The configured ratio limit and floor, and the widening learned from a secondary
    /// (`[for PASS, for FAIL]`, each at least 1) when there is one.
    pub limit: f64,
    pub tolerance_ms: f64,
    pub widened_by: Option<[f64; 2]>,
}

impl fmt::Display for Undecided {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let g = self.gate.as_str();
        match (self.reason, self.interval) {
            (UndecidedReason::IntervalTooWide, Some(i)) => {
                write!(f, "{g} {} spans {:.2}{}", interval_text(i), self.limit, tolerance_text(self.tolerance_ms))?;
                if let Some([lo, hi]) = self.widened_by {
                    write!(f, " x noise {lo:.2}-{hi:.2}")?;
                }
                Ok(())
            }
            _ => write!(f, "{g}: {} of {} timed samples a side", self.samples, self.needed),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "verdict", rename_all = "SCREAMING_SNAKE_CASE")]
pub enum EndpointVerdict {
    Pass,
    Fail {
        failed: Vec<GateFailure>,
    },
    Insufficient {
        samples: u64,
        needed: u64,
        failing_so_far: Vec<GateFailure>,
        /// Latency gates that could not decide (with enough pairs, the reason for INSUFFICIENT).
        #[serde(default)]
        undecided: Vec<Undecided>,
    },
}

impl EndpointVerdict {
    pub fn as_str(&self) -> &'static str {
        self.verdict().as_str()
    }

    pub fn verdict(&self) -> Verdict {
        match self {
            Self::Pass => Verdict::Pass,
            Self::Fail { .. } => Verdict::Fail,
            Self::Insufficient { .. } => Verdict::Insufficient,
        }
    }

    /// One line on why: the failed gates, how many samples are missing, or which latency gates
    /// could not decide.
    pub fn reason(&self) -> String {
        let list = |v: &[GateFailure]| v.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ");
        match self {
            Self::Pass => String::new(),
            Self::Fail { failed } => list(failed),
            Self::Insufficient { samples, needed, .. } if samples < needed => format!("{samples} of {needed} samples"),
            Self::Insufficient { undecided, .. } => {
                undecided.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
            }
        }
    }
}

/// The overall verdict, and `shadowctl report`'s exit code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Verdict {
    // Declared from best to worst: `max` is the overall verdict.
    Pass,
    Insufficient,
    Fail,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pass => "PASS",
            Self::Insufficient => "INSUFFICIENT",
            Self::Fail => "FAIL",
        }
    }

    /// 0 PASS, 1 FAIL, 3 not enough data (2 is the CLI's bad usage).
    pub fn exit_code(self) -> i32 {
        match self {
            Self::Pass => 0,
            Self::Fail => 1,
            Self::Insufficient => 3,
        }
    }

    /// The worst of the endpoints' verdicts; INSUFFICIENT when there are none.
    pub fn overall<'a>(endpoints: impl IntoIterator<Item = &'a EndpointVerdict>) -> Self {
        endpoints.into_iter().map(EndpointVerdict::verdict).max().unwrap_or(Self::Insufficient)
    }
}

/// What one latency gate decided.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum LatencyDecision {
    Pass,
    Fail(GateFailure),
    Undecided(Undecided),
}

/// One latency gate on its interval: limit `ratio`, floor `tolerance_ms`; `confirm`: PASS only on
/// an interval wholly within (else a gate that has not failed holds). With a learned
/// primary/secondary interval `[n_lo, n_hi]`, the limit is widened to `ratio * max(1, n_hi)` for
/// a FAIL and `ratio * max(1, n_lo)` for a PASS: the shadow is held to what the same version shows
/// on the same path, each decision taking the end of the noise interval that makes it harder.
/// Never narrowed (a secondary faster than the primary does not tighten the gate).
pub(crate) fn latency_gate(
    gate: Gate,
    i: &QuantileInterval,
    point: Option<f64>,
    ratio: f64,
    tolerance_ms: f64,
    confirm: bool,
) -> LatencyDecision {
    let widened_by = i.noise.map(|[lo, hi]| [lo.max(1.0), hi.max(1.0)]);
    let [pass_by, fail_by] = widened_by.unwrap_or([1.0, 1.0]);
    let samples = i.primary.samples.min(i.shadow.samples);
    let undecided = |reason, interval| Undecided {
        gate,
        reason,
        samples,
        needed: i.samples_needed,
        interval,
        limit: ratio,
        tolerance_ms,
        widened_by,
    };
    let (Some((p_lo, p_hi)), Some((s_lo, s_hi)), Some(interval)) = (i.primary.both(), i.shadow.both(), i.ratio) else {
        return LatencyDecision::Undecided(undecided(UndecidedReason::TooFewSamples, None));
    };
    if samples < i.samples_needed {
        return LatencyDecision::Undecided(undecided(UndecidedReason::TooFewSamples, Some(interval)));
    }
    let fail_limit = ratio * fail_by;
    if s_lo > (p_hi * fail_limit).max(p_hi + tolerance_ms) + EPSILON {
        return LatencyDecision::Fail(GateFailure {
            gate,
            observed: point,
            limit: fail_limit,
            interval: Some(interval),
            tolerance_ms: Some(tolerance_ms),
        });
    }
    if !confirm || s_hi <= (p_lo * ratio * pass_by).max(p_lo + tolerance_ms) + EPSILON {
        return LatencyDecision::Pass;
    }
    LatencyDecision::Undecided(undecided(UndecidedReason::IntervalTooWide, Some(interval)))
}

/// Judge one endpoint's measurements against its gates.
pub fn evaluate(m: &EndpointSummary, g: &Gates) -> EndpointVerdict {
    let mut failed = Vec::new();
    let mut at_least = |gate: Gate, observed: Option<f64>, limit: f64| match observed {
        Some(o) if o + EPSILON >= limit => {}
        observed => failed.push(GateFailure::new(gate, observed, limit)),
    };
    at_least(Gate::StatusMatch, m.status_match_percent, g.min_status_match_percent);
    at_least(Gate::BodyMatch, m.body_match_percent, g.min_body_match_percent);
    at_least(Gate::HeaderMatch, m.header_match_percent, g.min_header_match_percent);
    if m.samples > 0 {
        let limit = m.primary_5xx_percent + g.max_5xx_increase_points;
        if m.shadow_error_percent > limit + EPSILON {
            failed.push(GateFailure::new(Gate::Shadow5xx, Some(m.shadow_error_percent), limit));
        }
    }
    let l = &m.latency;
    let mut undecided = Vec::new();
    let latency = [
        (Gate::P50Ratio, &l.p50_interval, l.p50_ratio, g.max_p50_ratio, g.p50_tolerance_ms, true),
        (Gate::P99Ratio, &l.p99_interval, l.p99_ratio, g.max_p99_ratio, g.p99_tolerance_ms, g.p99_confirm),
    ];
    for (gate, interval, point, ratio, tolerance, confirm) in latency {
        // A summary without intervals (an overall row, or one read back from an older report)
        // has nothing for these gates to decide on.
        let Some(i) = interval else { continue };
        match latency_gate(gate, i, point, ratio, tolerance, confirm) {
            LatencyDecision::Pass => {}
            LatencyDecision::Fail(f) => failed.push(f),
            LatencyDecision::Undecided(u) => undecided.push(u),
        }
    }
    if m.samples < g.min_samples || (failed.is_empty() && !undecided.is_empty()) {
        return EndpointVerdict::Insufficient {
            samples: m.samples,
            needed: g.min_samples,
            failing_so_far: failed,
            undecided,
        };
    }
    if failed.is_empty() { EndpointVerdict::Pass } else { EndpointVerdict::Fail { failed } }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compare::{aggregate::Percentiles, interval::QuantileBounds, summary::LatencySummary};

    /// A quantile of both sides given by its bounds (ms), `n` timed samples a side, needing 437.
    fn iv(n: u64, p: (f64, f64), s: (f64, f64)) -> QuantileInterval {
        QuantileInterval {
            percentile: 99.0,
            confidence: 0.95,
            samples_needed: 437,
            primary: QuantileBounds { samples: n, lower_ms: Some(p.0), upper_ms: Some(p.1) },
            shadow: QuantileBounds { samples: n, lower_ms: Some(s.0), upper_ms: Some(s.1) },
            ratio: Some([s.0 / p.1, s.1 / p.0]),
            secondary: None,
            noise: None,
        }
    }

    /// An endpoint that passes the default gates: 1000 pairs, all matching, same latency.
    fn healthy() -> EndpointSummary {
        let lat = Percentiles { count: 1000, p50_ms: 5.0, p95_ms: 9.0, p99_ms: 10.0, max_ms: 20.0 };
        EndpointSummary {
            endpoint: "GET /a".into(),
            samples: 1000,
            shadow_failures: 0,
            status_matches: 1000,
            body_matches: 1000,
            header_matches: 1000,
            length_only: 0,
            primary_5xx: 0,
            shadow_5xx: 0,
            status_match_percent: Some(100.0),
            body_match_percent: Some(100.0),
            header_match_percent: Some(100.0),
            primary_5xx_percent: 0.0,
            shadow_error_percent: 0.0,
            latency: LatencySummary {
                p50_interval: Some(QuantileInterval { percentile: 50.0, ..iv(1000, (4.9, 5.1), (4.9, 5.1)) }),
                p99_interval: Some(iv(1000, (9.8, 10.2), (9.8, 10.2))),
                ..LatencySummary::new(lat, lat, Vec::new(), Vec::new())
            },
            ..EndpointSummary::default()
        }
    }

    fn gates_failed(m: &EndpointSummary) -> Vec<Gate> {
        match evaluate(m, &Gates::default()) {
            EndpointVerdict::Fail { failed } => failed.iter().map(|f| f.gate).collect(),
            other => panic!("expected FAIL, got {other:?}"),
        }
    }

    /// The three-way decision (`p99_confirm`, and always the p50's).
    fn decide(i: &QuantileInterval, ratio: f64, tolerance_ms: f64) -> LatencyDecision {
        latency_gate(Gate::P99Ratio, i, Some(1.0), ratio, tolerance_ms, true)
    }

    /// Without confirming (the p99's default), a gate that has not failed holds once its
    /// samples are enough: the same FAILs, no INSUFFICIENT for a wide interval, and still
    /// undecided with too few samples.
    #[test]
    fn unconfirmed_gate_fails_the_same_and_otherwise_holds() {
        let unconfirmed = |i: &QuantileInterval| latency_gate(Gate::P99Ratio, i, Some(1.0), 1.2, 1.0, false);
        let wide = iv(500, (1.0, 1.1), (1.5, 9.0));
        assert_eq!(undecided(decide(&wide, 1.2, 1.0)).reason, UndecidedReason::IntervalTooWide);
        assert_eq!(unconfirmed(&wide), LatencyDecision::Pass);
        for (s, fails) in [((2.1, 3.0), false), ((2.101, 3.0), true)] {
            let i = iv(500, (1.0, 1.1), s);
            assert_eq!(is_fail(&unconfirmed(&i)), fails, "{s:?}");
            assert_eq!(unconfirmed(&i) == decide(&i, 1.2, 1.0), fails, "{s:?}: a FAIL is the same FAIL");
        }
        let few = iv(436, (1.0, 1.0), (1.0, 1.0));
        assert_eq!(undecided(unconfirmed(&few)).reason, UndecidedReason::TooFewSamples, "never PASS on too few");
    }

    fn is_fail(d: &LatencyDecision) -> bool {
        matches!(d, LatencyDecision::Fail(_))
    }

    fn undecided(d: LatencyDecision) -> Undecided {
        match d {
            LatencyDecision::Undecided(u) => u,
            other => panic!("expected undecided, got {other:?}"),
        }
    }

    #[test]
    fn healthy_passes_and_each_gate_fails_alone() {
        assert_eq!(evaluate(&healthy(), &Gates::default()), EndpointVerdict::Pass);

        let mut m = healthy();
        m.body_match_percent = Some(98.9);
        assert_eq!(gates_failed(&m), [Gate::BodyMatch]);
        m.body_match_percent = Some(99.0);
        assert_eq!(evaluate(&m, &Gates::default()), EndpointVerdict::Pass, "the limit itself passes");

        let mut m = healthy();
        m.status_match_percent = Some(90.0);
        assert_eq!(gates_failed(&m), [Gate::StatusMatch]);

        let mut m = healthy();
        m.header_match_percent = Some(50.0);
        assert_eq!(gates_failed(&m), [Gate::HeaderMatch]);

        let mut m = healthy();
        m.primary_5xx_percent = 1.0;
        m.shadow_error_percent = 1.1;
        assert_eq!(evaluate(&m, &Gates::default()), EndpointVerdict::Pass, "1.1 % <= 1.0 % + 0.1 points");
        m.shadow_error_percent = 1.2;
        assert_eq!(gates_failed(&m), [Gate::Shadow5xx]);

        let mut m = healthy();
        m.latency.p99_interval = Some(iv(1000, (9.8, 10.2), (15.3, 16.0)));
        assert_eq!(gates_failed(&m), [Gate::P99Ratio], "15.3 ms > 10.2 * 1.2 and > 10.2 + 5");
        let mut m = healthy();
        m.latency.p50_interval = Some(iv(1000, (4.9, 5.1), (6.2, 7.0)));
        assert_eq!(gates_failed(&m), [Gate::P50Ratio], "6.2 ms > 5.1 * 1.2 and > 5.1 + 0.25");

        let mut m = healthy();
        m.body_match_percent = None;
        m.status_match_percent = None;
        m.header_match_percent = None;
        assert_eq!(
            gates_failed(&m),
            [Gate::StatusMatch, Gate::BodyMatch, Gate::HeaderMatch],
            "nothing to compare fails"
        );
    }

    /// The decision at its boundaries, primary bounds [10, 10.5] ms, ratio 1.2, no floor: FAIL
    /// from a shadow lower bound past 10.5 * 1.2 = 12.6 (by more than the slack), PASS up to a
    /// shadow upper bound of 10 * 1.2 = 12, and undecided in between.
    #[test]
    fn latency_gate_at_its_boundaries() {
        let fail = 10.5 * 1.2;
        assert!(!is_fail(&decide(&iv(500, (10.0, 10.5), (fail + EPSILON, 20.0)), 1.2, 0.0)), "the slack itself");
        let d = decide(&iv(500, (10.0, 10.5), (fail + 2.0 * EPSILON, 20.0)), 1.2, 0.0);
        let i = [(fail + 2.0 * EPSILON) / 10.5, 2.0];
        assert_eq!(
            d,
            LatencyDecision::Fail(GateFailure {
                gate: Gate::P99Ratio,
                observed: Some(1.0),
                limit: 1.2,
                interval: Some(i),
                tolerance_ms: Some(0.0),
            })
        );
        let pass = 10.0 * 1.2;
        assert_eq!(decide(&iv(500, (10.0, 10.5), (5.0, pass + EPSILON)), 1.2, 0.0), LatencyDecision::Pass);
        let u = undecided(decide(&iv(500, (10.0, 10.5), (5.0, pass + 2.0 * EPSILON)), 1.2, 0.0));
        assert_eq!(
            u,
            Undecided {
                gate: Gate::P99Ratio,
                reason: UndecidedReason::IntervalTooWide,
                samples: 500,
                needed: 437,
                interval: Some([5.0 / 10.5, (pass + 2.0 * EPSILON) / 10.0]),
                limit: 1.2,
                tolerance_ms: 0.0,
                widened_by: None,
            }
        );
        // Between the two: a narrow interval straddling the limit decides nothing.
        assert_eq!(
            undecided(decide(&iv(500, (10.0, 10.5), (12.1, 12.5)), 1.2, 0.0)).reason,
            UndecidedReason::IntervalTooWide
        );
    }

    /// The absolute floor: primary bounds [1, 1.1] ms, ratio 1.2, floor 1 ms. The limits are
    /// max(1.1 * 1.2, 1.1 + 1) = 2.1 for a FAIL and max(1 * 1.2, 1 + 1) = 2 for a PASS.
    #[test]
    fn the_floor_at_exactly_its_value() {
        assert_eq!(decide(&iv(500, (1.0, 1.1), (1.5, 2.0)), 1.2, 1.0), LatencyDecision::Pass);
        assert_eq!(
            undecided(decide(&iv(500, (1.0, 1.1), (1.5, 2.001)), 1.2, 1.0)).reason,
            UndecidedReason::IntervalTooWide
        );
        assert!(!is_fail(&decide(&iv(500, (1.0, 1.1), (2.1, 3.0)), 1.2, 1.0)), "2.1 is not past 2.1");
        let d = decide(&iv(500, (1.0, 1.1), (2.101, 3.0)), 1.2, 1.0);
        assert!(is_fail(&d), "{d:?}");
        // A ratio alone would fail it; the floor keeps it from failing.
        assert!(is_fail(&decide(&iv(500, (1.0, 1.1), (2.0, 3.0)), 1.2, 0.0)));
        // Large latencies: the ratio is the looser limit, the floor does nothing.
        assert!(is_fail(&decide(&iv(500, (100.0, 100.0), (120.1, 130.0)), 1.2, 1.0)));
        assert_eq!(decide(&iv(500, (100.0, 100.0), (100.0, 120.0)), 1.2, 1.0), LatencyDecision::Pass);
    }

    /// Too few timed samples for the quantile's ranks: undecided whatever the bounds say, never
    /// PASS and never FAIL.
    #[test]
    fn too_few_samples_never_decide() {
        let mut i = iv(436, (1.0, 1.0), (100.0, 100.0));
        let u = undecided(decide(&i, 1.2, 0.0));
        assert_eq!(
            (u.reason, u.samples, u.needed, u.interval),
            (UndecidedReason::TooFewSamples, 436, 437, Some([100.0, 100.0]))
        );
        i = iv(436, (1.0, 1.0), (1.0, 1.0));
        assert_eq!(undecided(decide(&i, 1.2, 0.0)).reason, UndecidedReason::TooFewSamples, "nor PASS");
        i.shadow.samples = 437;
        assert_eq!(undecided(decide(&i, 1.2, 0.0)).samples, 436, "the side with fewer counts");
        i.primary.samples = 437;
        assert_eq!(decide(&i, 1.2, 0.0), LatencyDecision::Pass);
        // A missing bound (the rank does not exist) is too few as well, with no interval.
        i.shadow.upper_ms = None;
        let u = undecided(decide(&i, 1.2, 0.0));
        assert_eq!((u.reason, u.interval), (UndecidedReason::TooFewSamples, None));
        let mut i = iv(500, (1.0, 1.0), (1.0, 1.0));
        i.primary.lower_ms = None;
        assert_eq!(undecided(decide(&i, 1.2, 0.0)).reason, UndecidedReason::TooFewSamples);
        let mut i = iv(500, (1.0, 1.0), (1.0, 1.0));
        i.ratio = None;
        assert_eq!(undecided(decide(&i, 1.2, 0.0)).reason, UndecidedReason::TooFewSamples);
    }

    /// With a learned primary/secondary interval, the limit is widened by its upper end for a
    /// FAIL and by its lower end for a PASS, never narrowed.
    #[test]
    fn noise_widens_the_limit() {
        let mut i = iv(500, (10.0, 10.0), (29.0, 29.0));
        i.noise = Some([2.0, 2.5]);
        // FAIL past 10 * 1.2 * 2.5 = 30; PASS within 10 * 1.2 * 2 = 24.
        let u = undecided(decide(&i, 1.2, 0.0));
        assert_eq!((u.reason, u.widened_by), (UndecidedReason::IntervalTooWide, Some([2.0, 2.5])));
        assert_eq!(u.to_string(), "p99_ratio [2.90, 2.90] spans 1.20 x noise 2.00-2.50");
        i.shadow = QuantileBounds { samples: 500, lower_ms: Some(30.001), upper_ms: Some(31.0) };
        i.ratio = Some([3.0001, 3.1]);
        match decide(&i, 1.2, 0.0) {
            LatencyDecision::Fail(f) => assert_eq!(f.limit, 1.2 * 2.5),
            other => panic!("{other:?}"),
        }
        i.shadow = QuantileBounds { samples: 500, lower_ms: Some(20.0), upper_ms: Some(24.0) };
        assert_eq!(decide(&i, 1.2, 0.0), LatencyDecision::Pass);
        i.shadow.upper_ms = Some(24.001);
        assert_eq!(undecided(decide(&i, 1.2, 0.0)).reason, UndecidedReason::IntervalTooWide);
        // A secondary faster than the primary does not tighten the gate.
        let mut i = iv(500, (10.0, 10.0), (11.0, 12.0));
        i.noise = Some([0.5, 0.8]);
        assert_eq!(decide(&i, 1.2, 0.0), LatencyDecision::Pass);
        assert_eq!(undecided(decide(&iv(500, (10.0, 10.0), (11.0, 12.1)), 1.2, 0.0)).widened_by, None);
        i.shadow = QuantileBounds { samples: 500, lower_ms: Some(12.001), upper_ms: Some(13.0) };
        match decide(&i, 1.2, 0.0) {
            LatencyDecision::Fail(f) => assert_eq!(f.limit, 1.2),
            other => panic!("{other:?}"),
        }
        i.shadow.upper_ms = Some(12.1);
        i.noise = Some([0.9, 1.5]);
        let u = undecided(decide(&i, 1.2, 0.0));
        assert_eq!(u.widened_by, Some([1.0, 1.5]));
    }

    /// An undecided latency gate makes an endpoint with enough pairs INSUFFICIENT, naming the
    /// gate; a failing gate beside it makes it FAIL; without intervals there is no latency gate.
    #[test]
    fn undecided_latency_is_insufficient() {
        let mut m = healthy();
        // The p99 spanning its limit: PASS unless the p99 must be confirmed.
        m.latency.p99_interval = Some(iv(1000, (9.8, 10.2), (9.0, 20.0)));
        assert_eq!(evaluate(&m, &Gates::default()), EndpointVerdict::Pass);
        let confirm = Gates { p99_confirm: true, ..Gates::default() };
        assert_eq!(evaluate(&m, &confirm).reason(), "p99_ratio [0.88, 2.04] spans 1.20 (+5.00 ms)");
        m.latency.p99_interval = Some(iv(300, (9.8, 10.2), (9.8, 10.2)));
        let v = evaluate(&m, &Gates::default());
        let EndpointVerdict::Insufficient { samples, needed, failing_so_far, undecided } = &v else { panic!("{v:?}") };
        assert_eq!((*samples, *needed, failing_so_far.len(), undecided.len()), (1000, 100, 0, 1));
        assert_eq!(v.reason(), "p99_ratio: 300 of 437 timed samples a side");
        m.latency.p50_interval = Some(iv(1000, (4.9, 5.1), (5.0, 7.0)));
        assert_eq!(
            evaluate(&m, &Gates::default()).reason(),
            "p50_ratio [0.98, 1.43] spans 1.20 (+0.25 ms); p99_ratio: 300 of 437 timed samples a side"
        );
        m.body_match_percent = Some(50.0);
        assert_eq!(gates_failed(&m), [Gate::BodyMatch], "a failing gate decides");
        m.samples = 10;
        let v = evaluate(&m, &Gates::default());
        assert_eq!(v.reason(), "10 of 100 samples", "too few pairs is said first");
        let EndpointVerdict::Insufficient { undecided, .. } = v else { panic!() };
        assert_eq!(undecided.len(), 2);
        let mut m = healthy();
        m.latency.p50_interval = None;
        m.latency.p99_interval = None;
        assert_eq!(evaluate(&m, &Gates::default()), EndpointVerdict::Pass, "nothing to decide on");
    }

    /// Each gate's slack is inclusive: a measure exactly `EPSILON` past its limit passes.
    #[test]
    fn the_slack_itself_passes() {
        let g = Gates::default();
        let mut m = healthy();
        m.primary_5xx_percent = 1.0;
        m.shadow_error_percent = 1.0 + g.max_5xx_increase_points + EPSILON;
        assert_eq!(evaluate(&m, &g), EndpointVerdict::Pass);
        m.shadow_error_percent = 1.0 + g.max_5xx_increase_points + 2.0 * EPSILON;
        assert_eq!(gates_failed(&m), [Gate::Shadow5xx]);
        let mut m = healthy();
        m.body_match_percent = Some(g.min_body_match_percent - EPSILON);
        assert_eq!(evaluate(&m, &g), EndpointVerdict::Pass);
        m.body_match_percent = Some(g.min_body_match_percent - 2.0 * EPSILON);
        assert_eq!(gates_failed(&m), [Gate::BodyMatch]);
    }

    /// Failing gates are listed with what was measured against the limit.
    #[test]
    fn failures_carry_observed_and_limit() {
        let mut m = healthy();
        m.status_match_percent = Some(90.0);
        m.primary_5xx_percent = 1.0;
        m.shadow_error_percent = 5.0;
        m.latency.p99_interval = Some(iv(1000, (9.8, 10.2), (20.0, 22.0)));
        m.latency.p99_ratio = Some(2.1);
        let EndpointVerdict::Fail { failed } = evaluate(&m, &Gates::default()) else { panic!("FAIL") };
        assert_eq!(
            failed,
            [
                GateFailure::new(Gate::StatusMatch, Some(90.0), 99.0),
                GateFailure::new(Gate::Shadow5xx, Some(5.0), 1.1),
                GateFailure {
                    gate: Gate::P99Ratio,
                    observed: Some(2.1),
                    limit: 1.2,
                    interval: Some([20.0 / 10.2, 22.0 / 9.8]),
                    tolerance_ms: Some(5.0),
                },
            ]
        );
    }

    #[test]
    fn too_few_samples_is_insufficient_even_when_failing() {
        let mut m = healthy();
        m.samples = 99;
        assert_eq!(
            evaluate(&m, &Gates::default()),
            EndpointVerdict::Insufficient {
                samples: 99,
                needed: 100,
                failing_so_far: Vec::new(),
                undecided: Vec::new()
            }
        );
        m.body_match_percent = Some(10.0);
        let EndpointVerdict::Insufficient { failing_so_far, .. } = evaluate(&m, &Gates::default()) else {
            panic!("INSUFFICIENT")
        };
        assert_eq!(failing_so_far[0].gate, Gate::BodyMatch);
        m.samples = 100;
        assert_eq!(gates_failed(&m), [Gate::BodyMatch]);
    }

    #[test]
    fn overall_is_the_worst_endpoint_and_exit_codes() {
        use EndpointVerdict as E;
        let fail = E::Fail { failed: Vec::new() };
        let insufficient =
            E::Insufficient { samples: 1, needed: 100, failing_so_far: Vec::new(), undecided: Vec::new() };
        assert_eq!(Verdict::overall(&[E::Pass, E::Pass]), Verdict::Pass);
        assert_eq!(Verdict::overall(&[E::Pass, insufficient.clone()]), Verdict::Insufficient);
        assert_eq!(Verdict::overall(&[insufficient.clone(), fail.clone(), E::Pass]), Verdict::Fail);
        assert_eq!(Verdict::overall(&[fail, insufficient]), Verdict::Fail);
        assert_eq!(Verdict::overall(&[]), Verdict::Insufficient, "no data never passes");
        assert_eq!([Verdict::Pass, Verdict::Fail, Verdict::Insufficient].map(Verdict::exit_code), [0, 1, 3]);
    }

    #[test]
    fn failures_read_well() {
        let f = GateFailure::new(Gate::BodyMatch, Some(97.25), 99.0);
        assert_eq!(f.to_string(), "body_match 97.25% < 99.00%");
        let f = GateFailure::new(Gate::P99Ratio, Some(1.5), 1.2);
        assert_eq!(f.to_string(), "p99_ratio 1.50 > 1.20", "a failure read back from an older report");
        let json = serde_json::to_string(&EndpointVerdict::Fail { failed: vec![f] }).expect("json");
        assert!(json.starts_with(r#"{"verdict":"FAIL","failed":[{"gate":"p99_ratio""#), "{json}");
        let f = GateFailure {
            interval: Some([1.31, 1.724]),
            tolerance_ms: Some(1.0),
            ..GateFailure::new(Gate::P50Ratio, Some(1.5), 1.2)
        };
        assert_eq!(f.to_string(), "p50_ratio 1.50 [1.31, 1.72] > 1.20 (+1.00 ms)");
        let f = GateFailure { tolerance_ms: Some(0.0), ..f };
        assert_eq!(f.to_string(), "p50_ratio 1.50 [1.31, 1.72] > 1.20");
        let json = serde_json::to_value(&f).expect("json");
        assert_eq!(json["interval"], serde_json::json!([1.31, 1.724]));
        let old: GateFailure = serde_json::from_str(r#"{"gate":"p99_ratio","observed":1.5,"limit":1.2}"#).expect("old");
        assert_eq!(old, GateFailure::new(Gate::P99Ratio, Some(1.5), 1.2), "older reports still read");
        let old: EndpointVerdict =
            serde_json::from_str(r#"{"verdict":"INSUFFICIENT","samples":1,"needed":2,"failing_so_far":[]}"#)
                .expect("old");
        assert_eq!(
            old,
            EndpointVerdict::Insufficient { samples: 1, needed: 2, failing_so_far: Vec::new(), undecided: Vec::new() }
        );
    }

    /// Every gate's name and failure line, and each verdict's word and reason line, as the
    /// report prints them.
    #[test]
    fn every_gate_and_verdict_reads_as_documented() {
        let gates = [
            Gate::MinSamples,
            Gate::BodyMatch,
            Gate::StatusMatch,
            Gate::HeaderMatch,
            Gate::Shadow5xx,
            Gate::P99Ratio,
            Gate::P50Ratio,
        ];
        assert_eq!(
            gates.map(Gate::as_str),
            ["min_samples", "body_match", "status_match", "header_match", "shadow_5xx", "p99_ratio", "p50_ratio"]
        );
        let line = |gate: Gate, observed: Option<f64>, limit: f64| GateFailure::new(gate, observed, limit).to_string();
        assert_eq!(line(Gate::MinSamples, Some(5.0), 100.0), "min_samples 5 < 100");
        assert_eq!(line(Gate::StatusMatch, Some(90.0), 99.5), "status_match 90.00% < 99.50%");
        assert_eq!(line(Gate::HeaderMatch, Some(0.0), 99.0), "header_match 0.00% < 99.00%");
        assert_eq!(line(Gate::Shadow5xx, Some(2.5), 1.1), "shadow_5xx 2.50% > 1.10%");
        assert_eq!(line(Gate::BodyMatch, None, 99.0), "body_match: no shadow responses");
        assert_eq!(
            [Verdict::Pass, Verdict::Insufficient, Verdict::Fail].map(Verdict::as_str),
            ["PASS", "INSUFFICIENT", "FAIL"]
        );
        let two = vec![
            GateFailure::new(Gate::BodyMatch, Some(97.25), 99.0),
            GateFailure::new(Gate::P99Ratio, Some(1.5), 1.2),
        ];
        let fail = EndpointVerdict::Fail { failed: two.clone() };
        assert_eq!(
            (fail.as_str(), fail.reason().as_str()),
            ("FAIL", "body_match 97.25% < 99.00%; p99_ratio 1.50 > 1.20")
        );
        let short =
            EndpointVerdict::Insufficient { samples: 7, needed: 100, failing_so_far: two, undecided: Vec::new() };
        assert_eq!((short.as_str(), short.reason().as_str()), ("INSUFFICIENT", "7 of 100 samples"));
        assert_eq!((EndpointVerdict::Pass.as_str(), EndpointVerdict::Pass.reason().as_str()), ("PASS", ""));
        let u = Undecided {
            gate: Gate::P50Ratio,
            reason: UndecidedReason::IntervalTooWide,
            samples: 300,
            needed: 7,
            interval: Some([0.9, 1.456]),
            limit: 1.2,
            tolerance_ms: 0.0,
            widened_by: None,
        };
        assert_eq!(u.to_string(), "p50_ratio [0.90, 1.46] spans 1.20");
        let few = Undecided { reason: UndecidedReason::TooFewSamples, samples: 3, ..u.clone() };
        assert_eq!(few.to_string(), "p50_ratio: 3 of 7 timed samples a side");
        let json = serde_json::to_value(&few).expect("json");
        assert_eq!((&json["gate"], &json["reason"]), (&"p50_ratio".into(), &"too_few_samples".into()));
        assert_eq!(serde_json::to_value(UndecidedReason::IntervalTooWide).expect("json"), "interval_too_wide");
    }
}
