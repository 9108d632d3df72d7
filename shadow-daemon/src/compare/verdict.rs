//! Gates and the go/no-go verdict.
//!
//! Each endpoint is judged on its own: too few pairs is INSUFFICIENT whatever the rates say (the
//! gates that would fail so far are listed, as information); otherwise every failing gate is
//! named. The overall verdict is the worst endpoint's, with FAIL worse than INSUFFICIENT worse
//! than PASS: a pipeline must not promote while any endpoint fails, and must not promote on too
//! little data either, but "fails" is the more useful thing to say when both hold, because more
//! traffic will not fix it. No endpoint at all is INSUFFICIENT, never PASS.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::{report::EndpointSummary, settings::Gates};

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
        }
    }
}

/// A gate that did not hold: what was measured (None: nothing to measure) against its limit.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GateFailure {
    pub gate: Gate,
    pub observed: Option<f64>,
    pub limit: f64,
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
            Gate::P99Ratio => write!(f, "{g} {o:.2} > {:.2}", self.limit),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "verdict", rename_all = "SCREAMING_SNAKE_CASE")]
pub enum EndpointVerdict {
    Pass,
    Fail { failed: Vec<GateFailure> },
    Insufficient { samples: u64, needed: u64, failing_so_far: Vec<GateFailure> },
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

    /// One line on why: the failed gates, or how many samples are missing.
    pub fn reason(&self) -> String {
        let list = |v: &[GateFailure]| v.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ");
        match self {
            Self::Pass => String::new(),
            Self::Fail { failed } => list(failed),
            Self::Insufficient { samples, needed, .. } => format!("{samples} of {needed} samples"),
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

/// Judge one endpoint's measurements against its gates.
pub fn evaluate(m: &EndpointSummary, g: &Gates) -> EndpointVerdict {
    let mut failed = Vec::new();
    let mut at_least = |gate: Gate, observed: Option<f64>, limit: f64| match observed {
        Some(o) if o + EPSILON >= limit => {}
        observed => failed.push(GateFailure { gate, observed, limit }),
    };
    at_least(Gate::StatusMatch, m.status_match_percent, g.min_status_match_percent);
    at_least(Gate::BodyMatch, m.body_match_percent, g.min_body_match_percent);
    at_least(Gate::HeaderMatch, m.header_match_percent, g.min_header_match_percent);
    if m.samples > 0 {
        let limit = m.primary_5xx_percent + g.max_5xx_increase_points;
        if m.shadow_error_percent > limit + EPSILON {
            failed.push(GateFailure { gate: Gate::Shadow5xx, observed: Some(m.shadow_error_percent), limit });
        }
    }
    let (p, s) = (m.latency.primary.p99_ms, m.latency.shadow.p99_ms);
    if m.latency.primary.count > 0 && m.latency.shadow.count > 0 {
        let ratio = s / p.max(f64::MIN_POSITIVE);
        let within_tolerance = g.p99_tolerance_ms > 0.0 && s - p <= g.p99_tolerance_ms;
        if ratio > g.max_p99_ratio + EPSILON && !within_tolerance {
            failed.push(GateFailure { gate: Gate::P99Ratio, observed: Some(ratio), limit: g.max_p99_ratio });
        }
    }
    if m.samples < g.min_samples {
        return EndpointVerdict::Insufficient { samples: m.samples, needed: g.min_samples, failing_so_far: failed };
    }
    if failed.is_empty() { EndpointVerdict::Pass } else { EndpointVerdict::Fail { failed } }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compare::{aggregate::Percentiles, report::LatencySummary};

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
            latency: LatencySummary::new(lat, lat, Vec::new(), Vec::new()),
            ..EndpointSummary::default()
        }
    }

    fn gates_failed(m: &EndpointSummary) -> Vec<Gate> {
        match evaluate(m, &Gates::default()) {
            EndpointVerdict::Fail { failed } => failed.iter().map(|f| f.gate).collect(),
            other => panic!("expected FAIL, got {other:?}"),
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
        m.latency.shadow.p99_ms = 12.0;
        assert_eq!(evaluate(&m, &Gates::default()), EndpointVerdict::Pass, "ratio 1.2 passes");
        m.latency.shadow.p99_ms = 12.5;
        assert_eq!(gates_failed(&m), [Gate::P99Ratio]);
        let tolerant = Gates { p99_tolerance_ms: 3.0, ..Gates::default() };
        assert_eq!(evaluate(&m, &tolerant), EndpointVerdict::Pass, "2.5 ms slower is within 3 ms");

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

    /// The p99 tolerance: a shadow p99 exactly `p99_tolerance_ms` above the primary's passes
    /// whatever the ratio, a hair more fails, and the failure names the ratio against its limit.
    #[test]
    fn p99_tolerance_at_exactly_its_value() {
        let tolerant = Gates { p99_tolerance_ms: 3.0, ..Gates::default() };
        let mut m = healthy();
        m.latency.shadow.p99_ms = 13.0;
        assert_eq!(evaluate(&m, &tolerant), EndpointVerdict::Pass, "13 ms is 3 ms above 10 ms");
        m.latency.shadow.p99_ms = 13.01;
        match evaluate(&m, &tolerant) {
            EndpointVerdict::Fail { failed } => {
                assert_eq!(failed.len(), 1);
                assert_eq!((failed[0].gate, failed[0].limit), (Gate::P99Ratio, 1.2));
                assert!((failed[0].observed.unwrap_or_default() - 1.301).abs() < 1e-9, "{failed:?}");
            }
            other => panic!("{other:?}"),
        }
        // No shadow latency at all: nothing to compare, no p99 gate.
        m.latency.shadow.count = 0;
        assert_eq!(evaluate(&m, &tolerant), EndpointVerdict::Pass);
        let mut m = healthy();
        m.latency.primary.count = 0;
        m.latency.shadow.p99_ms = 100.0;
        assert_eq!(evaluate(&m, &Gates::default()), EndpointVerdict::Pass);
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
        // Ratio only (no tolerance), primary p99 1 ms: the shadow's p99 is the ratio.
        let ratio_only = Gates { p99_tolerance_ms: 0.0, ..g };
        let mut m = healthy();
        m.latency.primary.p99_ms = 1.0;
        m.latency.shadow.p99_ms = ratio_only.max_p99_ratio + EPSILON;
        assert_eq!(evaluate(&m, &ratio_only), EndpointVerdict::Pass);
        m.latency.shadow.p99_ms = ratio_only.max_p99_ratio + 2.0 * EPSILON;
        assert!(
            matches!(&evaluate(&m, &ratio_only), EndpointVerdict::Fail { failed } if failed[0].gate == Gate::P99Ratio)
        );
    }

    /// Failing gates are listed with what was measured against the limit.
    #[test]
    fn failures_carry_observed_and_limit() {
        let mut m = healthy();
        m.status_match_percent = Some(90.0);
        m.primary_5xx_percent = 1.0;
        m.shadow_error_percent = 5.0;
        let EndpointVerdict::Fail { failed } = evaluate(&m, &Gates::default()) else { panic!("FAIL") };
        assert_eq!(
            failed,
            [
                GateFailure { gate: Gate::StatusMatch, observed: Some(90.0), limit: 99.0 },
                GateFailure { gate: Gate::Shadow5xx, observed: Some(5.0), limit: 1.1 },
            ]
        );
    }

    #[test]
    fn too_few_samples_is_insufficient_even_when_failing() {
        let mut m = healthy();
        m.samples = 99;
        assert_eq!(
            evaluate(&m, &Gates::default()),
            EndpointVerdict::Insufficient { samples: 99, needed: 100, failing_so_far: Vec::new() }
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
        let insufficient = E::Insufficient { samples: 1, needed: 100, failing_so_far: Vec::new() };
        assert_eq!(Verdict::overall(&[E::Pass, E::Pass]), Verdict::Pass);
        assert_eq!(Verdict::overall(&[E::Pass, insufficient.clone()]), Verdict::Insufficient);
        assert_eq!(Verdict::overall(&[insufficient.clone(), fail.clone(), E::Pass]), Verdict::Fail);
        assert_eq!(Verdict::overall(&[fail, insufficient]), Verdict::Fail);
        assert_eq!(Verdict::overall(&[]), Verdict::Insufficient, "no data never passes");
        assert_eq!([Verdict::Pass, Verdict::Fail, Verdict::Insufficient].map(Verdict::exit_code), [0, 1, 3]);
    }

    #[test]
    fn failures_read_well() {
        let f = GateFailure { gate: Gate::BodyMatch, observed: Some(97.25), limit: 99.0 };
        assert_eq!(f.to_string(), "body_match 97.25% < 99.00%");
        let f = GateFailure { gate: Gate::P99Ratio, observed: Some(1.5), limit: 1.2 };
        assert_eq!(f.to_string(), "p99_ratio 1.50 > 1.20");
        let json = serde_json::to_string(&EndpointVerdict::Fail { failed: vec![f] }).expect("json");
        assert!(json.starts_with(r#"{"verdict":"FAIL","failed":[{"gate":"p99_ratio""#), "{json}");
    }

    /// Every gate's name and failure line, and each verdict's word and reason line, as the
    /// report prints them.
    #[test]
    fn every_gate_and_verdict_reads_as_documented() {
        let gates =
            [Gate::MinSamples, Gate::BodyMatch, Gate::StatusMatch, Gate::HeaderMatch, Gate::Shadow5xx, Gate::P99Ratio];
        assert_eq!(
            gates.map(Gate::as_str),
            ["min_samples", "body_match", "status_match", "header_match", "shadow_5xx", "p99_ratio"]
        );
        let line = |gate: Gate, observed: Option<f64>, limit: f64| GateFailure { gate, observed, limit }.to_string();
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
            GateFailure { gate: Gate::BodyMatch, observed: Some(97.25), limit: 99.0 },
            GateFailure { gate: Gate::P99Ratio, observed: Some(1.5), limit: 1.2 },
        ];
        let fail = EndpointVerdict::Fail { failed: two.clone() };
        assert_eq!(
            (fail.as_str(), fail.reason().as_str()),
            ("FAIL", "body_match 97.25% < 99.00%; p99_ratio 1.50 > 1.20")
        );
        let short = EndpointVerdict::Insufficient { samples: 7, needed: 100, failing_so_far: two };
        assert_eq!((short.as_str(), short.reason().as_str()), ("INSUFFICIENT", "7 of 100 samples"));
        assert_eq!((EndpointVerdict::Pass.as_str(), EndpointVerdict::Pass.reason().as_str()), ("PASS", ""));
    }
}
