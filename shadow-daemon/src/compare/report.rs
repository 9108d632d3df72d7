//! The report `shadowctl report` prints: per endpoint and overall measurements, the gates and
//! verdicts, learned noise. Serialisable both ways, so a saved `--json` summary can be read back
//! and rendered again (as text or as the HTML page, see `html.rs`).

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use super::{
    aggregate::Percentiles,
    diff::cut,
    epoch::EpochInfo,
    interval::{QuantileBounds, QuantileInterval},
    settings::Gates,
    summary::EndpointSummary,
    verdict::{EndpointVerdict, Verdict},
};
use crate::{label::Outcome, trace_link::TraceIds};

/// Width of the endpoint column in the text table.
const ENDPOINT_COLUMN: usize = 36;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EndpointReport {
    #[serde(flatten)]
    pub summary: EndpointSummary,
    pub gates: Gates,
    pub verdict: EndpointVerdict,
    /// The kept mismatching pairs whose trace context was restarted: the production trace and
    /// the shadow's, to open side by side.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub traces: Vec<MismatchTrace>,
}

/// A kept mismatching pair's two traces.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MismatchTrace {
    /// The endpoint's pair number (as `shadowctl diffs` shows it).
    pub seq: u64,
    pub outcome: Outcome,
    #[serde(flatten)]
    pub ids: TraceIds,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// The worst endpoint verdict (FAIL > INSUFFICIENT > PASS; no endpoint: INSUFFICIENT).
    pub verdict: Verdict,
    pub endpoints: Vec<EndpointReport>,
    /// All endpoints together (not gated: the verdict is per endpoint).
    pub overall: EndpointSummary,
    /// Pairs counted under the `other` endpoint because the endpoint cap was reached.
    pub overflow_pairs: u64,
    /// Memory the comparator holds, approximately.
    pub approx_bytes: u64,
    /// The epoch these figures belong to (None: a report saved by a version without epochs).
    #[serde(default)]
    pub epoch: Option<EpochInfo>,
}

impl Report {
    pub fn exit_code(&self) -> i32 {
        self.verdict.exit_code()
    }

    /// The verdict table, one line per endpoint and one for all, then learned noise.
    pub fn render_text(&self) -> String {
        let mut o = String::new();
        let _ = writeln!(
            o,
            "{:<w$} {:>8} {:>7} {:>7} {:>6} {:>13} {:>17} {:>6} {:>17} {:>6}  VERDICT",
            "ENDPOINT",
            "SAMPLES",
            "STATUS",
            "BODY",
            "LEN",
            "5XX P/S %",
            "P50 P/S ms",
            "RATIO",
            "P99 P/S ms",
            "RATIO",
            w = ENDPOINT_COLUMN
        );
        for e in &self.endpoints {
            row(&mut o, &e.summary, Some(&e.verdict));
        }
        row(&mut o, &self.overall, None);
        let _ = writeln!(o, "\nverdict: {} (exit {})", self.verdict.as_str(), self.exit_code());
        if let Some(e) = &self.epoch {
            let _ = writeln!(o, "{}", e.describe());
        }
        if self.overflow_pairs > 0 {
            let _ = writeln!(o, "{} pairs beyond the endpoint cap are counted under 'other'", self.overflow_pairs);
        }
        let length_only = self.overall.length_only;
        if length_only > 0 {
            let _ = writeln!(o, "{length_only} of {} bodies compared by status and length only", self.overall.samples);
        }
        for e in &self.endpoints {
            latency_line(&mut o, &e.summary);
        }
        for e in &self.endpoints {
            let n = &e.summary.noise;
            if !n.learned.is_empty() {
                let paths: Vec<String> =
                    n.learned.iter().map(|l| format!("{} ({:.0}%)", l.path, l.differed_percent)).collect();
                let _ = writeln!(
                    o,
                    "noise learned for {} from {} secondary pairs: {}",
                    e.summary.endpoint,
                    n.samples,
                    paths.join(", ")
                );
            }
        }
        o
    }
}

/// A side's latency in the table: "-" without data, "untimed" when the shadow answered but
/// none of its answers had a time of its own (never 0.0).
pub(crate) fn side_ms(p: &Percentiles, untimed: u64, value: f64, decimals: usize) -> String {
    match (p.count, untimed) {
        (0, 0) => "-".to_owned(),
        (0, _) => "untimed".to_owned(),
        _ => format!("{value:.decimals$}"),
    }
}

/// A latency gate's interval as the report prints it: the ratio's, or how many timed samples
/// each side has of those its ranks need.
pub(crate) fn interval_text(i: &QuantileInterval, ratio: Option<[f64; 2]>, samples: u64) -> String {
    match ratio {
        Some([lo, hi]) => format!("[{lo:.2}, {hi:.2}]"),
        None => format!("({samples} of {} timed samples)", i.samples_needed),
    }
}

/// The intervals the latency gates decided on, the primary/secondary ones when a secondary is
/// learning, and the untimed shadow responses; None on a summary without intervals.
pub(crate) fn latency_note(s: &EndpointSummary) -> Option<String> {
    let l = &s.latency;
    let (Some(p50), Some(p99)) = (&l.p50_interval, &l.p99_interval) else { return None };
    let shadow = |i: &QuantileInterval| interval_text(i, i.ratio, i.primary.samples.min(i.shadow.samples));
    let confidence = format!("{:.1}", p50.confidence * 100.0);
    let mut o =
        format!("shadow/primary at {}% p50 {} p99 {}", confidence.trim_end_matches(".0"), shadow(p50), shadow(p99));
    if let (Some(a), Some(b)) = (p50.secondary, p99.secondary) {
        let noise = |i: &QuantileInterval, sec: QuantileBounds| interval_text(i, i.noise, sec.samples);
        let _ = write!(o, "; secondary/primary p50 {} p99 {}", noise(p50, a), noise(p99, b));
    }
    if l.shadow_untimed > 0 {
        let _ = write!(o, "; {} shadow responses untimed", l.shadow_untimed);
    }
    Some(o)
}

fn latency_line(o: &mut String, s: &EndpointSummary) {
    if let Some(note) = latency_note(s) {
        let _ = writeln!(o, "latency {}: {note}", s.endpoint);
    }
}

fn row(o: &mut String, s: &EndpointSummary, verdict: Option<&EndpointVerdict>) {
    let pct = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.2}"));
    let name = if verdict.is_some() { cut(&s.endpoint, ENDPOINT_COLUMN - 1) } else { "(all endpoints)".to_owned() };
    let l = &s.latency;
    let both =
        |p: f64, sh: f64| format!("{}/{}", side_ms(&l.primary, 0, p, 1), side_ms(&l.shadow, l.shadow_untimed, sh, 1));
    let ratio = |r: Option<f64>| r.map_or_else(|| "-".to_owned(), |r| format!("{r:.2}"));
    let verdict = verdict.map_or_else(String::new, |v| {
        let why = v.reason();
        if why.is_empty() { v.as_str().to_owned() } else { format!("{} {why}", v.as_str()) }
    });
    let _ = writeln!(
        o,
        "{:<w$} {:>8} {:>7} {:>7} {:>6} {:>13} {:>17} {:>6} {:>17} {:>6}  {verdict}",
        name,
        s.samples,
        pct(s.status_match_percent),
        pct(s.body_match_percent),
        s.length_only,
        format!("{:.2}/{:.2}", s.primary_5xx_percent, s.shadow_error_percent),
        both(l.primary.p50_ms, l.shadow.p50_ms),
        ratio(l.p50_ratio),
        both(l.primary.p99_ms, l.shadow.p99_ms),
        ratio(l.p99_ratio),
        w = ENDPOINT_COLUMN
    );
}
