//! Per-endpoint counts, latency histograms and kept mismatch samples.
//!
//! Body and header mismatches are not kept as bare counts: each mismatching pair is counted under
//! its signature (the set of path templates that differed), so that when noise learning later
//! decides `$.ts` is noise, the pairs that differed only in `$.ts` turn into matches in the report
//! even though they were compared before the noise was learned. Signatures, paths and samples are
//! all capped; a pair whose signature cannot be kept is counted as a mismatch noise cannot excuse.

use std::collections::{HashMap, VecDeque};

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use super::{
    MismatchSample, Outcome, ShadowFailure, UnpairedReason,
    noise::{NoiseLearner, PathTable},
    settings::NoiseSettings,
};

/// Distinct mismatch signatures kept per endpoint.
pub(crate) const MAX_SIGNATURES: usize = 64;
/// Latency range recorded, in microseconds (1 µs to 1 h; larger values are clamped).
const LATENCY_MAX_US: u64 = 3_600_000_000;
/// Two significant figures: a 1 % error is well inside any latency gate, and a histogram costs
/// about 20 KiB instead of 150 KiB with three.
const LATENCY_SIGFIG: u8 = 2;
/// Percentiles the report's latency curves are drawn through.
pub const CURVE_PERCENTILES: [f64; 17] =
    [0.0, 10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0, 90.0, 95.0, 97.0, 99.0, 99.5, 99.9, 99.99, 100.0];

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Signature {
    body: Box<[u16]>,
    headers: Box<[u16]>,
    /// False when the diff found more distinct paths than it could list.
    complete: bool,
}

#[derive(Debug)]
pub(crate) struct EndpointStats {
    /// Index of the settings profile (rule default or an override) this endpoint uses.
    pub profile: usize,
    pub samples: u64,
    pub shadow_failures: [u64; ShadowFailure::ALL.len()],
    pub status_matches: u64,
    pub length_only: u64,
    pub length_mismatches: u64,
    pub primary_5xx: u64,
    pub shadow_5xx: u64,
    pub unpaired: [u64; UnpairedReason::ALL.len()],
    pub outcomes: [u64; Outcome::ALL.len()],
    signatures: HashMap<Signature, u64>,
    untracked_body: u64,
    untracked_header: u64,
    latency_primary: Histogram<u64>,
    latency_shadow: Histogram<u64>,
    /// Primary and secondary latency of the primary/secondary pairs both timed, from the first
    /// such pair on (an endpoint without a secondary pays nothing for it).
    latency_secondary: Option<Box<[Histogram<u64>; 2]>>,
    pub mismatches: VecDeque<MismatchSample>,
    pub mismatches_evicted: u64,
    pub paths: PathTable,
    pub noise: NoiseLearner,
}

pub(crate) fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_MAX_US, LATENCY_SIGFIG).expect("constant histogram bounds are valid")
}

pub(crate) fn record_latency(h: &mut Histogram<u64>, latency: std::time::Duration) {
    let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX).clamp(1, LATENCY_MAX_US);
    h.saturating_record(us);
}

impl EndpointStats {
    pub(super) fn new(profile: usize) -> Self {
        Self {
            profile,
            samples: 0,
            shadow_failures: [0; ShadowFailure::ALL.len()],
            status_matches: 0,
            length_only: 0,
            length_mismatches: 0,
            primary_5xx: 0,
            shadow_5xx: 0,
            unpaired: [0; UnpairedReason::ALL.len()],
            outcomes: [0; Outcome::ALL.len()],
            signatures: HashMap::new(),
            untracked_body: 0,
            untracked_header: 0,
            latency_primary: latency_histogram(),
            latency_shadow: latency_histogram(),
            latency_secondary: None,
            mismatches: VecDeque::new(),
            mismatches_evicted: 0,
            paths: PathTable::default(),
            noise: NoiseLearner::default(),
        }
    }

    /// Each side's latency when it was timed (an untimed one is left out, never taken as 0).
    pub(super) fn record_latencies(
        &mut self,
        primary: Option<std::time::Duration>,
        shadow: Option<std::time::Duration>,
    ) {
        if let Some(p) = primary {
            record_latency(&mut self.latency_primary, p);
        }
        if let Some(s) = shadow {
            record_latency(&mut self.latency_shadow, s);
        }
    }

    /// A primary/secondary pair's latencies, when both were timed: the secondary is timed as the
    /// shadow is, so the two give the spread the same version shows (the latency noise floor).
    pub(super) fn record_secondary_latencies(
        &mut self,
        primary: Option<std::time::Duration>,
        secondary: Option<std::time::Duration>,
    ) {
        if let (Some(p), Some(s)) = (primary, secondary) {
            let h = self.latency_secondary.get_or_insert_with(|| Box::new([latency_histogram(), latency_histogram()]));
            record_latency(&mut h[0], p);
            record_latency(&mut h[1], s);
        }
    }

    /// Count a pair whose body and/or compared headers differed in these templates.
    pub(super) fn record_difference(&mut self, body: &[String], body_complete: bool, headers: &[String]) {
        let intern_all = |paths: &mut PathTable, ts: &[String]| -> Option<Box<[u16]>> {
            let mut ids = ts.iter().map(|t| paths.intern(t)).collect::<Option<Vec<u16>>>()?;
            ids.sort_unstable();
            ids.dedup();
            Some(ids.into_boxed_slice())
        };
        let b = intern_all(&mut self.paths, body);
        let h = intern_all(&mut self.paths, headers);
        let sig = match (b, h) {
            (Some(body), Some(headers)) => Some(Signature { body, headers, complete: body_complete }),
            _ => None,
        };
        let kept = match sig {
            Some(sig) if self.signatures.contains_key(&sig) || self.signatures.len() < MAX_SIGNATURES => {
                *self.signatures.entry(sig).or_insert(0) += 1;
                true
            }
            _ => false,
        };
        if !kept {
            self.untracked_body += u64::from(!body.is_empty());
            self.untracked_header += u64::from(!headers.is_empty());
        }
    }

    /// Whether every template is known noise (so a difference in only these is no mismatch).
    pub(super) fn all_noise<'t>(&self, mut templates: impl Iterator<Item = &'t String>, s: &NoiseSettings) -> bool {
        templates.all(|t| self.paths.get(t).is_some_and(|id| self.noise.is_noise(id, s)))
    }

    /// (body mismatches, header mismatches) with the noise learned so far excused.
    pub(super) fn mismatches(&self, s: &NoiseSettings) -> (u64, u64) {
        let noisy = |ids: &[u16]| ids.iter().all(|&id| self.noise.is_noise(id, s));
        let mut body = self.length_mismatches + self.untracked_body;
        let mut header = self.untracked_header;
        for (sig, n) in &self.signatures {
            if !sig.body.is_empty() && (!sig.complete || !noisy(&sig.body)) {
                body += n;
            }
            if !noisy(&sig.headers) {
                header += n;
            }
        }
        (body, header)
    }

    pub(super) fn failures(&self) -> u64 {
        self.shadow_failures.iter().sum()
    }

    pub(super) fn push_sample(&mut self, sample: MismatchSample, cap: usize) {
        if cap == 0 {
            self.mismatches_evicted += 1;
            return;
        }
        while self.mismatches.len() >= cap {
            self.mismatches.pop_front();
            self.mismatches_evicted += 1;
        }
        self.mismatches.push_back(sample);
    }

    pub(super) fn latency(&self) -> (&Histogram<u64>, &Histogram<u64>) {
        (&self.latency_primary, &self.latency_shadow)
    }

    /// (primary, secondary) of the timed primary/secondary pairs; None before the first.
    pub(super) fn secondary_latency(&self) -> Option<(&Histogram<u64>, &Histogram<u64>)> {
        self.latency_secondary.as_deref().map(|[p, s]| (p, s))
    }

    pub(super) fn approx_bytes(&self) -> usize {
        let secondary = self.latency_secondary.as_deref().map_or(0, |[p, s]| p.distinct_values() + s.distinct_values());
        let hist = (self.latency_primary.distinct_values() + self.latency_shadow.distinct_values() + secondary) * 8;
        let sigs: usize = self.signatures.keys().map(|s| 2 * (s.body.len() + s.headers.len()) + 64).sum();
        let samples: usize = self.mismatches.iter().map(sample_bytes).sum();
        std::mem::size_of::<Self>() + hist + sigs + samples + self.paths.approx_bytes() + self.noise.approx_bytes()
    }
}

fn sample_bytes(m: &MismatchSample) -> usize {
    let diffs: usize = m.body.iter().map(|d| d.path.len() + d.primary.len() + d.shadow.len() + 72).sum();
    let headers: usize = m
        .headers
        .iter()
        .map(|h| {
            h.name.len() + 96 + h.primary.as_ref().map_or(0, String::len) + h.shadow.as_ref().map_or(0, String::len)
        })
        .sum();
    let paths: usize = m.paths.iter().map(|p| p.len() + 24).sum();
    std::mem::size_of::<MismatchSample>()
        + m.endpoint.len()
        + m.primary_body.len()
        + m.shadow_body.len()
        + m.note.as_ref().map_or(0, String::len)
        + diffs
        + headers
        + paths
}

/// Latency percentiles of one side, in milliseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Percentiles {
    pub count: u64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Percentiles {
    pub(crate) fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        Self {
            count: h.len(),
            p50_ms: quantile_ms(h, 50.0),
            p95_ms: quantile_ms(h, 95.0),
            p99_ms: quantile_ms(h, 99.0),
            max_ms: h.max() as f64 / 1000.0,
        }
    }
}

fn quantile_ms(h: &Histogram<u64>, percentile: f64) -> f64 {
    // hdrhistogram reports the highest value equivalent to the bucket; that is the conservative
    // reading for a gate on the shadow's tail.
    h.value_at_percentile(percentile) as f64 / 1000.0
}

/// The points of a latency curve: `[percentile, ms]` at [`CURVE_PERCENTILES`], empty without data.
pub(crate) fn curve(h: &Histogram<u64>) -> Vec<[f64; 2]> {
    if h.is_empty() {
        return Vec::new();
    }
    CURVE_PERCENTILES.iter().map(|&p| [p, if p == 0.0 { h.min() as f64 / 1000.0 } else { quantile_ms(h, p) }]).collect()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// A status mismatch sample with nothing in it but its fixed fields.
    fn sample() -> MismatchSample {
        MismatchSample {
            endpoint: "GET /".into(),
            seq: 1,
            outcome: Outcome::StatusMismatch,
            primary_status: 200,
            shadow_status: 500,
            primary_latency_ms: Some(1.0),
            shadow_latency_ms: Some(1.0),
            shadow_timing: crate::compare::Timing::Timed,
            headers: Vec::new(),
            body: Vec::new(),
            body_differences: 0,
            paths: Vec::new(),
            paths_complete: true,
            note: None,
            primary_body: String::new(),
            shadow_body: String::new(),
            trace: None,
        }
    }

    fn t(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| (*x).to_owned()).collect()
    }

    #[test]
    fn signatures_are_excused_retroactively_by_noise() {
        let s = NoiseSettings { min_samples: 2, min_differ_percent: 50.0 };
        let mut e = EndpointStats::new(0);
        e.record_difference(&t(&["$.ts"]), true, &[]);
        e.record_difference(&t(&["$.ts", "$.user"]), true, &[]);
        e.record_difference(&[], true, &t(&["header:etag"]));
        assert_eq!(e.mismatches(&s), (2, 1));
        let ts = t(&["$.ts"]);
        for _ in 0..2 {
            e.noise.observe(&mut e.paths, crate::compare::noise::SecondaryDiff::Differ { templates: &ts });
        }
        assert_eq!(e.mismatches(&s), (1, 1), "the $.ts-only pair now matches; the one with $.user does not");
        e.record_difference(&t(&["$.ts"]), false, &[]);
        assert_eq!(e.mismatches(&s), (2, 1), "an incomplete difference is never excused");
        assert!(e.all_noise(ts.iter(), &s));
        assert!(!e.all_noise(t(&["$.user"]).iter(), &s));
    }

    #[test]
    fn signatures_and_samples_are_bounded() {
        let s = NoiseSettings::default();
        let mut e = EndpointStats::new(0);
        for i in 0..MAX_SIGNATURES + 5 {
            e.record_difference(&[format!("$.k{i}")], true, &[]);
        }
        assert_eq!(e.signatures.len(), MAX_SIGNATURES);
        assert_eq!(e.mismatches(&s).0, (MAX_SIGNATURES + 5) as u64, "the overflow still counts as mismatches");
        let before = e.approx_bytes();
        let sample = MismatchSample { primary_body: "x".repeat(1000), ..sample() };
        for _ in 0..10 {
            e.push_sample(sample.clone(), 3);
        }
        assert_eq!((e.mismatches.len(), e.mismatches_evicted), (3, 7));
        assert!(e.approx_bytes() >= before + 3000);
    }

    /// Past the signature cap, header-only and body-only differences still count as mismatches
    /// of their kind; a template past the path table's cap too.
    #[test]
    fn differences_past_the_caps_still_count() {
        let s = NoiseSettings::default();
        let mut e = EndpointStats::new(0);
        for i in 0..MAX_SIGNATURES {
            e.record_difference(&[format!("$.k{i}")], true, &[]);
        }
        e.record_difference(&[], true, &t(&["header:etag"]));
        e.record_difference(&[], true, &t(&["header:etag"]));
        e.record_difference(&t(&["$.new"]), true, &[]);
        assert_eq!(e.signatures.len(), MAX_SIGNATURES);
        assert_eq!(e.mismatches(&s), (MAX_SIGNATURES as u64 + 1, 2));
        e.record_difference(&t(&["$.k0"]), true, &[]);
        assert_eq!(e.mismatches(&s), (MAX_SIGNATURES as u64 + 2, 2), "a kept signature counts again");

        let mut e = EndpointStats::new(0);
        for i in 0..crate::compare::noise::MAX_PATHS {
            e.paths.intern(&format!("$.p{i}"));
        }
        e.record_difference(&t(&["$.over"]), true, &t(&["header:over"]));
        assert!(e.signatures.is_empty());
        assert_eq!(e.mismatches(&s), (1, 1), "templates without an id: untracked, still counted");
    }

    /// A ring of 0 keeps nothing and counts every sample as evicted.
    #[test]
    fn no_sample_ring_keeps_nothing() {
        let mut e = EndpointStats::new(0);
        let sample = sample();
        for _ in 0..3 {
            e.push_sample(sample.clone(), 0);
        }
        assert_eq!((e.mismatches.len(), e.mismatches_evicted), (0, 3));
    }

    /// The memory estimate, exactly: the struct, 8 bytes a histogram bucket on both sides, per
    /// signature 2 bytes an id and 64, per kept sample its strings and fixed costs, the path
    /// table and the learner.
    #[test]
    fn approx_bytes_exactly() {
        let mut e = EndpointStats::new(0);
        let buckets = latency_histogram().distinct_values();
        let empty = std::mem::size_of::<EndpointStats>() + 2 * 8 * buckets;
        assert_eq!(e.approx_bytes(), empty);
        e.record_latencies(Some(Duration::from_millis(3)), Some(Duration::from_secs(7)));
        assert_eq!(e.approx_bytes(), empty, "fixed bounds: recording costs nothing");
        e.record_secondary_latencies(Some(Duration::from_millis(3)), None);
        assert_eq!(e.approx_bytes(), empty, "an untimed secondary: nothing recorded, nothing allocated");
        e.record_secondary_latencies(Some(Duration::from_millis(3)), Some(Duration::from_millis(4)));
        let empty = empty + 2 * 8 * buckets;
        assert_eq!(e.approx_bytes(), empty, "the secondary's two histograms once it has a timed pair");
        e.record_difference(&t(&["$.a", "$.bb"]), true, &t(&["header:etag"]));
        // One signature of 3 ids; 3 templates of 3, 4 and 11 bytes in the path table.
        let sig = 2 * 3 + 64;
        let paths = (2 * 3 + 64) + (2 * 4 + 64) + (2 * 11 + 64);
        assert_eq!(e.paths.approx_bytes(), paths);
        assert_eq!(e.approx_bytes(), empty + sig + paths);
        let ab = t(&["$.a", "$.bb"]);
        e.noise.observe(&mut e.paths, crate::compare::noise::SecondaryDiff::Differ { templates: &ab });
        assert_eq!(e.noise.approx_bytes(), 2 * 32);
        assert_eq!(e.approx_bytes(), empty + sig + paths + 64);
        let sample = MismatchSample {
            headers: vec![super::super::HeaderDiff { name: "etag".into(), primary: Some("abc".into()), shadow: None }],
            body: vec![super::super::PathDiff { path: "$.a".into(), primary: "1".into(), shadow: "22".into() }],
            body_differences: 1,
            paths: t(&["$.a", "header:etag"]),
            paths_complete: true,
            note: Some("seven!!".into()),
            primary_body: "x".repeat(1000),
            shadow_body: "y".repeat(10),
            ..sample()
        };
        let strings = 5 + 1000 + 10 + 7;
        let diffs = 3 + 1 + 2 + 72;
        let headers = 4 + 96 + 3;
        let listed = (3 + 24) + (11 + 24);
        let one = std::mem::size_of::<MismatchSample>() + strings + diffs + headers + listed;
        assert_eq!(sample_bytes(&sample), one);
        let mut other = sample.clone();
        other.headers[0] =
            super::super::HeaderDiff { name: "etag".into(), primary: None, shadow: Some("abcde".into()) };
        other.note = None;
        assert_eq!(sample_bytes(&other), one + 2 - 7);
        e.push_sample(sample, 4);
        e.push_sample(other, 4);
        assert_eq!(e.approx_bytes(), empty + sig + paths + 64 + 2 * one + 2 - 7);
    }

    /// An untimed side is left out of its histogram (never recorded as 0, which the 1 µs floor
    /// would make 1 µs); a secondary pair counts only when both were timed.
    #[test]
    fn untimed_latencies_are_not_recorded() {
        let mut e = EndpointStats::new(0);
        e.record_latencies(None, Some(Duration::from_millis(2)));
        e.record_latencies(Some(Duration::from_millis(1)), None);
        let (p, s) = e.latency();
        assert_eq!((p.len(), s.len(), p.max(), s.max()), (1, 1, 1003, 2007), "each bucket's highest value");
        assert!(e.secondary_latency().is_none());
        e.record_secondary_latencies(None, Some(Duration::from_millis(2)));
        assert!(e.secondary_latency().is_none());
        e.record_secondary_latencies(Some(Duration::from_millis(1)), Some(Duration::from_millis(3)));
        e.record_secondary_latencies(Some(Duration::from_millis(1)), Some(Duration::from_millis(3)));
        let (sp, ss) = e.secondary_latency().expect("recorded");
        assert_eq!((sp.len(), ss.len(), sp.max(), ss.max()), (2, 2, 1003, 3007));
        assert_eq!(e.latency().0.len(), 1, "the secondary's primary half is kept apart");
    }

    #[test]
    fn percentiles_in_ms() {
        let mut h = latency_histogram();
        for ms in 1..=100u64 {
            record_latency(&mut h, Duration::from_millis(ms));
        }
        record_latency(&mut h, Duration::from_secs(100_000));
        let p = Percentiles::of(&h);
        assert_eq!(p.count, 101);
        assert!((p.p50_ms - 51.0).abs() <= 1.0, "{p:?}");
        assert!((p.p99_ms - 100.0).abs() <= 1.0, "{p:?}");
        assert!((p.p95_ms - 96.0).abs() <= 1.0, "the 96th of 101 values: {p:?}");
        assert!((3_600_000.0..3_700_000.0).contains(&p.max_ms), "clamped at one hour, not dropped: {p:?}");
        let c = curve(&h);
        assert_eq!(c.len(), CURVE_PERCENTILES.len());
        assert!(c[0][0] == 0.0 && (c[0][1] - 1.0).abs() <= 0.01, "p0 is the minimum, 1 ms: {c:?}");
        assert_eq!(
            (c[5], c[11], c[12], c[16]),
            ([50.0, p.p50_ms], [97.0, quantile_ms(&h, 97.0)], [99.0, p.p99_ms], [100.0, p.max_ms])
        );
        assert!((c[11][1] - 98.0).abs() <= 1.5, "the 98th of 101 values: {c:?}");
        assert_eq!(Percentiles::of(&latency_histogram()), Percentiles::default());
    }
}
