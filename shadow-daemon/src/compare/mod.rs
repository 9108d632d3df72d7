//! Primary against shadow, per endpoint: normalise each pair's responses, compare status, body and
//! the configured headers, learn noise from a secondary, aggregate, and judge with gates.
//!
//! Pure: no I/O, no clock, no metrics. The replay engine hands each finished pair to
//! [`Comparator::observe`] (or [`Comparator::observe_shadow_failure`] /
//! [`Comparator::record_unpaired`]); the control socket asks for [`Comparator::report`] and
//! [`Comparator::diffs`]; the metrics layer reads [`Comparator::outcome_counts`]. Every collection
//! is bounded (endpoints, paths, signatures, samples, body bytes, diff paths) and what a bound
//! turns away is counted.

mod aggregate;
mod diff;
mod epoch;
mod html;
mod interval;
mod noise;
mod normalize;
pub mod pairs;
mod path;
mod report;
pub mod settings;
mod summary;
mod verdict;

use std::{collections::HashMap, time::Duration};

use serde::{Deserialize, Serialize};

#[cfg(any(test, feature = "test-util"))]
pub use self::interval::quantile_ranks;
pub use self::{
    aggregate::{CURVE_PERCENTILES, Percentiles},
    diff::{HeaderDiff, MismatchSample, PathDiff, Timing},
    epoch::{EpochInfo, MAX_VERSION_BYTES, VersionSeen, rfc3339_utc},
    html::{PRIMARY_COLOUR, SHADOW_COLOUR},
    interval::{QuantileBounds, QuantileInterval},
    noise::{LearnedPath, NoiseReport},
    normalize::LengthOnlyReason,
    path::JsonPath,
    report::{EndpointReport, MismatchTrace, Report},
    settings::{CompareSettings, EndpointOverride, Gates, GatesOverride, Limits, NoiseSettings},
    summary::{EndpointSummary, LatencySummary, Unpaired},
    verdict::{EndpointVerdict, Gate, GateFailure, Undecided, UndecidedReason, Verdict, evaluate},
};
use self::{
    aggregate::{EndpointStats, curve, latency_histogram},
    diff::{BodyComparison, HEADER_PREFIX, body_text, compare_bodies, compare_headers},
    epoch::Epoch,
    noise::SecondaryDiff,
    normalize::{RawBody, normalize},
    settings::{Compiled, Profile},
};
pub use crate::{
    label::{EpochReason, Outcome, UnpairedReason},
    message::ResponseSample,
    trace_link::{TraceIds, TraceLink},
};

/// The endpoint that collects pairs past the endpoint cap.
pub const OTHER_ENDPOINT: &str = "other";
/// Longest endpoint name kept (the http layer's templates are shorter; this bounds any caller).
const MAX_ENDPOINT_NAME: usize = 200;

#[derive(Debug, thiserror::Error)]
pub enum CompareError {
    #[error("{field}: {reason}")]
    InvalidSetting { field: String, reason: String },
}

impl Outcome {
    pub fn is_match(self) -> bool {
        matches!(self, Self::Match | Self::MatchLengthOnly)
    }
}

/// Why the shadow gave no response to compare.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ShadowFailure {
    Timeout,
    Connect,
    InvalidResponse,
}

impl ShadowFailure {
    pub const ALL: [Self; 3] = [Self::Timeout, Self::Connect, Self::InvalidResponse];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Timeout => "timeout",
            Self::Connect => "connect",
            Self::InvalidResponse => "invalid_response",
        }
    }
}

/// Compares pairs for one rule and keeps the aggregates of its current epoch.
#[derive(Debug)]
pub struct Comparator {
    settings: Compiled,
    endpoints: HashMap<String, EndpointStats>,
    overflow_pairs: u64,
    epoch: Epoch,
}

impl Comparator {
    /// Epoch 1, reason `start`, at time 0: the caller sets the real start with
    /// [`start_epoch`](Self::start_epoch).
    pub fn new(settings: &CompareSettings) -> Result<Self, CompareError> {
        Ok(Self { settings: settings.compile()?, endpoints: HashMap::new(), overflow_pairs: 0, epoch: Epoch::first() })
    }

    pub fn epoch(&self) -> &EpochInfo {
        &self.epoch.info
    }

    /// Start epoch `number`: everything compared so far (aggregates, histograms, learned noise,
    /// mismatch samples) is dropped.
    pub fn start_epoch(&mut self, number: u64, reason: EpochReason, started_unix_ms: u64) {
        let next = self.epoch.next(number, reason, started_unix_ms);
        self.begin(next);
    }

    fn begin(&mut self, epoch: Epoch) {
        self.endpoints.clear();
        self.overflow_pairs = 0;
        self.epoch = epoch;
    }

    /// Check a shadow response's version header against the epoch's build (nothing to do
    /// without a `version_header`). `Changed`: a new epoch has started, and the response
    /// belongs to it.
    pub fn check_version(&mut self, shadow: &ResponseSample, now_unix_ms: impl FnOnce() -> u64) -> VersionSeen {
        let Some(name) = &self.settings.version_header else {
            return VersionSeen::Same;
        };
        let value = shadow.header(name);
        let seen = self.epoch.check(value);
        if let (VersionSeen::Changed, Some(v)) = (seen, value) {
            let next = self.epoch.next_version(v, now_unix_ms());
            self.begin(next);
        }
        seen
    }

    /// A pair whose shadow request went out in an earlier epoch: dropped, and counted here.
    pub fn drop_in_flight(&mut self) {
        self.epoch.info.dropped_in_flight += 1;
    }

    /// The stats of `endpoint`, created while under the cap; past it, the `other` endpoint's.
    fn endpoint(&mut self, endpoint: &str) -> (&mut EndpointStats, &Profile, String) {
        let name = diff::cut(endpoint, MAX_ENDPOINT_NAME);
        let name = if self.endpoints.contains_key(&name) || self.endpoints.len() < self.settings.limits.max_endpoints {
            name
        } else {
            self.overflow_pairs += 1;
            OTHER_ENDPOINT.to_owned()
        };
        let profile_of = |n: &str| self.settings.overrides.iter().position(|(o, _)| o == n).map_or(0, |i| i + 1);
        let profile = profile_of(&name);
        let stats = self.endpoints.entry(name.clone()).or_insert_with(|| EndpointStats::new(profile));
        let profile = match stats.profile {
            0 => &self.settings.default,
            i => self.settings.overrides.get(i - 1).map_or(&self.settings.default, |(_, p)| p),
        };
        (stats, profile, name)
    }

    /// The name `endpoint`'s pairs are counted under now: its own, or [`OTHER_ENDPOINT`] once the
    /// endpoint cap is reached (what the next `observe` of it would use).
    pub fn endpoint_key(&self, endpoint: &str) -> String {
        let name = diff::cut(endpoint, MAX_ENDPOINT_NAME);
        if self.endpoints.contains_key(&name) || self.endpoints.len() < self.settings.limits.max_endpoints {
            name
        } else {
            OTHER_ENDPOINT.to_owned()
        }
    }

    /// Compare one pair, whatever the shadow's half (a response, or how it failed), and count
    /// it; a kept mismatch shows `trace` (the production trace and the shadow's new one).
    pub fn observe_half(
        &mut self,
        endpoint: &str,
        primary: &ResponseSample,
        shadow: &pairs::ShadowHalf,
        trace: Option<&TraceLink>,
    ) -> Outcome {
        match shadow {
            pairs::ShadowHalf::Response(s) => self.observe_traced(endpoint, primary, s, trace),
            pairs::ShadowHalf::Failed(f) => self.shadow_failure_traced(endpoint, primary, *f, trace),
        }
    }

    /// Compare one primary/shadow pair and count it.
    pub fn observe(&mut self, endpoint: &str, primary: &ResponseSample, shadow: &ResponseSample) -> Outcome {
        self.observe_traced(endpoint, primary, shadow, None)
    }

    fn observe_traced(
        &mut self,
        endpoint: &str,
        primary: &ResponseSample,
        shadow: &ResponseSample,
        trace: Option<&TraceLink>,
    ) -> Outcome {
        let redact = self.settings.redact_headers.clone();
        let noise = self.settings.noise;
        let limits = self.settings.limits;
        let (stats, profile, name) = self.endpoint(endpoint);
        let rules = &profile.rules;
        stats.samples += 1;
        stats.record_latencies(primary.latency, shadow.latency);
        stats.primary_5xx += u64::from(primary.status >= 500);
        stats.shadow_5xx += u64::from(shadow.status >= 500);
        let status_equal = primary.status == shadow.status;
        stats.status_matches += u64::from(status_equal);

        // Byte-equal bodies normalise alike: equal, without parsing either (the common case of a
        // shadow that agrees; parsing a JSON body is most of a comparison's cost).
        let normalized = (!same_body(primary, shadow, rules))
            .then(|| (normalize(&raw(primary), rules), normalize(&raw(shadow), rules)));
        let body = match &normalized {
            None => BodyComparison::Equal,
            Some((pb, sb)) => compare_bodies(pb, sb, primary.body_len, shadow.body_len, limits.diff_paths),
        };
        let headers = compare_headers(&primary.headers, &shadow.headers, &rules.compare_headers, &redact);
        let header_templates: Vec<String> = headers.iter().map(|h| format!("{HEADER_PREFIX}{}", h.name)).collect();

        let (body_templates, complete) = match &body {
            BodyComparison::Differ(d) => (d.templates.as_slice(), d.complete),
            _ => (&[][..], true),
        };
        if !body_templates.is_empty() || !header_templates.is_empty() {
            stats.record_difference(body_templates, complete, &header_templates);
        }
        let mut note = None;
        if let BodyComparison::LengthOnly { reason, equal } = &body {
            stats.length_only += 1;
            stats.length_mismatches += u64::from(!equal);
            note = Some(format!(
                "bodies compared by length only ({}): primary {} bytes, shadow {} bytes",
                reason.as_str(),
                primary.body_len,
                shadow.body_len
            ));
        }
        let body_bad = match &body {
            BodyComparison::Differ(d) => !d.complete || !stats.all_noise(d.templates.iter(), &noise),
            _ => false,
        };
        let header_bad = !header_templates.is_empty() && !stats.all_noise(header_templates.iter(), &noise);
        let outcome = match &body {
            _ if !status_equal => Outcome::StatusMismatch,
            BodyComparison::LengthOnly { equal: false, .. } => Outcome::LengthMismatch,
            _ if body_bad => Outcome::BodyMismatch,
            _ if header_bad => Outcome::HeaderMismatch,
            BodyComparison::LengthOnly { .. } => Outcome::MatchLengthOnly,
            _ => Outcome::Match,
        };
        stats.outcomes[outcome.index()] += 1;
        if !outcome.is_match() {
            let (pb, sb) =
                normalized.unwrap_or_else(|| (normalize(&raw(primary), rules), normalize(&raw(shadow), rules)));
            let (shown, total) = match &body {
                BodyComparison::Differ(d) => (d.shown.clone(), d.total),
                _ => (Vec::new(), 0),
            };
            let sample = MismatchSample {
                endpoint: name,
                seq: stats.samples,
                outcome,
                primary_status: primary.status,
                shadow_status: shadow.status,
                primary_latency_ms: primary.latency.map(ms),
                shadow_latency_ms: shadow.latency.map(ms),
                shadow_timing: if shadow.latency.is_some() { Timing::Timed } else { Timing::Untimed },
                headers,
                body: shown,
                body_differences: total,
                paths: body_templates.iter().chain(&header_templates).cloned().collect(),
                paths_complete: complete,
                note,
                primary_body: body_text(&pb, limits.sample_body_bytes),
                shadow_body: body_text(&sb, limits.sample_body_bytes),
                trace: trace.map(TraceLink::ids),
            };
            stats.push_sample(sample, limits.mismatch_samples);
        }
        outcome
    }

    /// Count a pair whose shadow request failed: an error on the shadow's side.
    pub fn observe_shadow_failure(
        &mut self,
        endpoint: &str,
        primary: &ResponseSample,
        failure: ShadowFailure,
    ) -> Outcome {
        self.shadow_failure_traced(endpoint, primary, failure, None)
    }

    fn shadow_failure_traced(
        &mut self,
        endpoint: &str,
        primary: &ResponseSample,
        failure: ShadowFailure,
        trace: Option<&TraceLink>,
    ) -> Outcome {
        let limits = self.settings.limits;
        let (stats, _, name) = self.endpoint(endpoint);
        stats.samples += 1;
        stats.record_latencies(primary.latency, None);
        stats.primary_5xx += u64::from(primary.status >= 500);
        stats.shadow_failures[failure as usize] += 1;
        stats.outcomes[Outcome::ShadowFailed.index()] += 1;
        let sample = MismatchSample {
            endpoint: name,
            seq: stats.samples,
            outcome: Outcome::ShadowFailed,
            primary_status: primary.status,
            shadow_status: 0,
            primary_latency_ms: primary.latency.map(ms),
            shadow_latency_ms: None,
            shadow_timing: Timing::NoResponse,
            headers: Vec::new(),
            body: Vec::new(),
            body_differences: 0,
            paths: Vec::new(),
            paths_complete: true,
            note: Some(format!("shadow request failed: {}", failure.as_str())),
            primary_body: String::new(),
            shadow_body: String::new(),
            trace: trace.map(TraceLink::ids),
        };
        stats.push_sample(sample, limits.mismatch_samples);
        Outcome::ShadowFailed
    }

    /// Count a request that never became a pair.
    pub fn record_unpaired(&mut self, endpoint: &str, reason: UnpairedReason) {
        let (stats, _, _) = self.endpoint(endpoint);
        stats.unpaired[reason.index()] += 1;
    }

    /// Learn noise from the primary and a secondary (same version) answering the same request.
    /// Status differences between them are not noise (a status is never ignored).
    pub fn observe_secondary(&mut self, endpoint: &str, primary: &ResponseSample, secondary: &ResponseSample) {
        let redact = self.settings.redact_headers.clone();
        let (stats, profile, _) = self.endpoint(endpoint);
        let rules = &profile.rules;
        stats.record_secondary_latencies(primary.latency, secondary.latency);
        let (pb, sb) = (normalize(&raw(primary), rules), normalize(&raw(secondary), rules));
        let headers = compare_headers(&primary.headers, &secondary.headers, &rules.compare_headers, &redact);
        let mut templates: Vec<String> = headers.iter().map(|h| format!("{HEADER_PREFIX}{}", h.name)).collect();
        let usable = match compare_bodies(&pb, &sb, primary.body_len, secondary.body_len, 0) {
            BodyComparison::Equal => true,
            BodyComparison::Differ(d) => {
                templates.extend(d.templates);
                true
            }
            BodyComparison::LengthOnly { .. } => false,
        };
        let diff = match (usable, templates.is_empty()) {
            (false, _) => SecondaryDiff::Unusable,
            (true, true) => SecondaryDiff::Same,
            (true, false) => SecondaryDiff::Differ { templates: &templates },
        };
        stats.noise.observe(&mut stats.paths, diff);
    }

    /// Measurements, gates and verdicts of every endpoint, endpoints sorted by name.
    pub fn report(&self) -> Report {
        let noise = &self.settings.noise;
        let mut names: Vec<&String> = self.endpoints.keys().collect();
        names.sort();
        let mut endpoints = Vec::with_capacity(names.len());
        let mut overall = EndpointSummary { endpoint: "(all endpoints)".into(), ..EndpointSummary::default() };
        let (mut all_p, mut all_s) = (latency_histogram(), latency_histogram());
        for name in names {
            let Some(e) = self.endpoints.get(name) else {
                continue;
            };
            let (body_bad, header_bad) = e.mismatches(noise);
            let responded = e.samples.saturating_sub(e.failures());
            let (hp, hs) = e.latency();
            // Same bounds on every histogram: adding cannot fail.
            let _ = all_p.add(hp);
            let _ = all_s.add(hs);
            let gates = self.profile(e.profile).gates;
            let interval =
                |percentile| QuantileInterval::of(hp, hs, e.secondary_latency(), percentile, gates.latency_confidence);
            let latency = LatencySummary {
                shadow_untimed: responded.saturating_sub(hs.len()),
                p50_interval: Some(interval(50.0)),
                p99_interval: Some(interval(99.0)),
                ..LatencySummary::new(Percentiles::of(hp), Percentiles::of(hs), curve(hp), curve(hs))
            };
            let summary = EndpointSummary {
                endpoint: name.clone(),
                samples: e.samples,
                shadow_failures: e.failures(),
                status_matches: e.status_matches,
                body_matches: responded.saturating_sub(body_bad),
                header_matches: responded.saturating_sub(header_bad),
                length_only: e.length_only,
                primary_5xx: e.primary_5xx,
                shadow_5xx: e.shadow_5xx,
                unpaired: Unpaired {
                    primary_missing: e.unpaired[UnpairedReason::PrimaryMissing.index()],
                    memory_bound: e.unpaired[UnpairedReason::MemoryBound.index()],
                },
                latency,
                noise: e.noise.report(&e.paths, noise),
                mismatch_samples_evicted: e.mismatches_evicted,
                ..EndpointSummary::default()
            }
            .with_rates();
            add_counts(&mut overall, &summary);
            let verdict = evaluate(&summary, &gates);
            let traces = e
                .mismatches
                .iter()
                .filter_map(|m| {
                    let ids = m.trace.clone()?;
                    Some(MismatchTrace { seq: m.seq, outcome: m.outcome, ids })
                })
                .collect();
            endpoints.push(EndpointReport { summary, gates, verdict, traces });
        }
        overall.latency = LatencySummary {
            shadow_untimed: endpoints.iter().map(|e| e.summary.latency.shadow_untimed).sum(),
            ..LatencySummary::new(Percentiles::of(&all_p), Percentiles::of(&all_s), curve(&all_p), curve(&all_s))
        };
        Report {
            verdict: Verdict::overall(endpoints.iter().map(|e| &e.verdict)),
            endpoints,
            overall: overall.with_rates(),
            overflow_pairs: self.overflow_pairs,
            approx_bytes: self.approx_bytes() as u64,
            epoch: Some(self.epoch.info.clone()),
        }
    }

    /// The kept mismatch samples that are still mismatches given the noise learned since, of
    /// one endpoint or all, by endpoint then age.
    pub fn diffs(&self, endpoint: Option<&str>) -> Vec<MismatchSample> {
        let noise = &self.settings.noise;
        let mut out: Vec<MismatchSample> = self
            .endpoints
            .iter()
            .filter(|(n, _)| endpoint.is_none_or(|e| e == n.as_str()))
            .flat_map(|(_, e)| {
                e.mismatches.iter().filter(|m| {
                    let excusable = matches!(m.outcome, Outcome::BodyMismatch | Outcome::HeaderMismatch);
                    !excusable || !m.paths_complete || !e.all_noise(m.paths.iter(), noise)
                })
            })
            .cloned()
            .collect();
        out.sort_by(|a, b| a.endpoint.cmp(&b.endpoint).then(a.seq.cmp(&b.seq)));
        out
    }

    /// `(endpoint, outcome, count)` for every outcome an endpoint has seen, as decided when each
    /// pair was observed (the report re-judges with the noise learned since).
    pub fn outcome_counts(&self) -> impl Iterator<Item = (&str, Outcome, u64)> + '_ {
        self.endpoints.iter().flat_map(|(n, e)| {
            Outcome::ALL.iter().filter_map(move |&o| {
                let c = e.outcomes[o.index()];
                (c > 0).then_some((n.as_str(), o, c))
            })
        })
    }

    /// Memory held, approximately: what a memory bound on the comparator should watch.
    pub fn approx_bytes(&self) -> usize {
        std::mem::size_of::<Self>() + self.endpoints.iter().map(|(n, e)| n.len() + 48 + e.approx_bytes()).sum::<usize>()
    }

    fn profile(&self, i: usize) -> &Profile {
        match i {
            0 => &self.settings.default,
            i => self.settings.overrides.get(i - 1).map_or(&self.settings.default, |(_, p)| p),
        }
    }
}

/// Both bodies whole, byte for byte the same, under the same content type, not encoded and
/// within the decode cap: [`normalize`] would make the same body of both (never a length-only
/// one), so they compare equal.
fn same_body(p: &ResponseSample, s: &ResponseSample, rules: &settings::NormRules) -> bool {
    let identity =
        |r: &ResponseSample| r.header("content-encoding").is_none_or(|e| e.eq_ignore_ascii_case(b"identity"));
    p.body_complete
        && s.body_complete
        && p.body.len() <= rules.max_body_bytes
        && p.body == s.body
        && p.header("content-type") == s.header("content-type")
        && identity(p)
        && identity(s)
}

fn raw(r: &ResponseSample) -> RawBody<'_> {
    RawBody {
        bytes: &r.body,
        complete: r.body_complete,
        content_type: r.header("content-type"),
        content_encoding: r.header("content-encoding"),
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn add_counts(all: &mut EndpointSummary, e: &EndpointSummary) {
    all.samples += e.samples;
    all.shadow_failures += e.shadow_failures;
    all.status_matches += e.status_matches;
    all.body_matches += e.body_matches;
    all.header_matches += e.header_matches;
    all.length_only += e.length_only;
    all.primary_5xx += e.primary_5xx;
    all.shadow_5xx += e.shadow_5xx;
    all.unpaired.primary_missing += e.unpaired.primary_missing;
    all.unpaired.memory_bound += e.unpaired.memory_bound;
    all.mismatch_samples_evicted += e.mismatch_samples_evicted;
}

#[cfg(test)]
mod classifier;
#[cfg(test)]
mod tests;
