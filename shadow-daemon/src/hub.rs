//! Where comparison meets the running daemon: the primary's responses (from capture) and the
//! shadow's (from replay) meet in one [`PairTable`], keyed by request id; each pair that meets is
//! judged by its rule's [`Comparator`] and counted in the metrics contract. One hub per daemon.
//!
//! Only requests queued to a comparing lane produce a shadow half, so only their primary halves
//! enter the table ([`CompareHub::expect`]); every other primary response leaves at once, counted
//! as `not_replayed`. Everything that leaves without being compared is counted by reason
//! (`shadow_compare_unpaired_total`, `shadow_compare_primary_uncompared_total`).
//!
//! Locks: the table under one mutex (held for a lookup), each rule's comparator under its own
//! (held while a pair is compared), so capture never waits for a comparison of another rule
//! and never for JSON parsing while it hands over a primary response.

use std::{
    collections::BTreeSet,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::{Duration, Instant},
};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::{
    compare::{
        Comparator, CompareError, CompareSettings, MismatchSample, Outcome, Report, ResponseSample, ShadowFailure,
        UnpairedReason, Verdict,
        pairs::{PairEvent, PairLimits, PairTable, ShadowHalf},
    },
    control::{Command, ErrorKind, Response},
    http::response_fields,
    message::CapturedResponse,
    metrics::{ComparedPair, Metrics, ShadowErrorKind},
};

/// Request ids remembered as "a shadow half will come" (ids increase: the oldest are forgotten
/// first, and their primaries then count as `not_replayed`).
const EXPECTED_CAP: usize = 65_536;

/// `shadow_compare_primary_uncompared_total` reasons.
pub const NOT_REPLAYED: &str = "not_replayed";
pub const SHADOW_MISSING: &str = "shadow_missing";

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What the replay client keeps of a shadow response for one rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeepSpec {
    /// Body content bytes kept (the rule's `max_body_bytes`).
    pub max_body: usize,
    /// Lower-case names of the header fields kept (`CompareSettings::headers_needed`).
    pub headers: Vec<String>,
}

/// How a replay error maps to the comparison's shadow failure.
pub fn shadow_failure(kind: ShadowErrorKind) -> ShadowFailure {
    match kind {
        ShadowErrorKind::Timeout => ShadowFailure::Timeout,
        ShadowErrorKind::ConnectRefused | ShadowErrorKind::Other => ShadowFailure::Connect,
        ShadowErrorKind::Reset | ShadowErrorKind::BadResponse => ShadowFailure::InvalidResponse,
    }
}

/// One rule's comparison.
struct RuleCompare {
    name: String,
    keep: KeepSpec,
    comparator: Mutex<Comparator>,
}

/// The pair table and what it has counted so far (for the metrics' deltas).
struct Table {
    pairs: PairTable,
    expected: BTreeSet<u64>,
    /// Primary and secondary halves (noise learning), kept apart from the shadow's pairs.
    secondary_pairs: PairTable,
    expected_secondary: BTreeSet<u64>,
    /// `pairs.primary_alone` already published.
    alone_published: u64,
    not_replayed: u64,
    events: Vec<PairEvent>,
}

/// One rule's report, named.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RuleReport {
    pub rule: String,
    pub report: Report,
}

/// The pair table's state, beside the reports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PairStats {
    /// Halves waiting for the other now, and their bytes.
    pub waiting: u64,
    pub waiting_bytes: u64,
    /// Primary responses not compared: no shadow request was made for them.
    pub primary_not_replayed: u64,
    /// Primary responses not compared: the shadow's result never came (or was evicted).
    pub primary_shadow_missing: u64,
}

/// `shadowctl report`'s answer: every comparing rule's report and the worst verdict.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DaemonReport {
    /// The worst rule verdict (INSUFFICIENT when no rule compares).
    pub verdict: Verdict,
    pub rules: Vec<RuleReport>,
    pub pairs: PairStats,
}

impl DaemonReport {
    pub fn exit_code(&self) -> i32 {
        self.verdict.exit_code()
    }

    /// Each rule's table (with its verdict line), then the overall verdict.
    pub fn render_text(&self) -> String {
        let mut o = String::new();
        if self.rules.is_empty() {
            o.push_str("no rule compares primary and shadow (no rule with a shadow and comparison on)\n");
        }
        for r in &self.rules {
            o.push_str(&format!("rule {}:\n{}\n", r.rule, r.report.render_text()));
        }
        o.push_str(&format!(
            "pairs: {} halves waiting ({} bytes); primary responses not compared: {} not replayed, {} without a shadow result\n",
            self.pairs.waiting,
            self.pairs.waiting_bytes,
            self.pairs.primary_not_replayed,
            self.pairs.primary_shadow_missing
        ));
        o.push_str(&format!("overall verdict: {} (exit {})\n", self.verdict.as_str(), self.exit_code()));
        o
    }
}

/// A mismatch sample with its rule.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RuleDiff {
    pub rule: String,
    pub sample: MismatchSample,
}

pub struct CompareHub {
    metrics: Arc<Metrics>,
    /// Indexed like the config's rules; `None`: the rule does not compare.
    rules: Vec<Option<RuleCompare>>,
    /// Union of every rule's needed headers (a primary's rule is not known when it arrives).
    primary_headers: Vec<String>,
    keep_body: usize,
    /// `Outcome::as_str` of every outcome: exported at zero from an endpoint's first pair.
    outcome_labels: [&'static str; Outcome::ALL.len()],
    table: Mutex<Table>,
    epoch: Instant,
}

impl std::fmt::Debug for CompareHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompareHub").field("keep_body", &self.keep_body).finish_non_exhaustive()
    }
}

impl CompareHub {
    /// One comparator per rule with settings (`(name, settings)`, indexed like the config's
    /// rules); `None` when no rule compares: then nothing is kept or paired anywhere.
    pub fn new(
        rules: &[(String, Option<&CompareSettings>)],
        limits: PairLimits,
        metrics: Arc<Metrics>,
    ) -> Result<Option<Arc<Self>>, CompareError> {
        let mut slots = Vec::with_capacity(rules.len());
        let mut primary_headers: Vec<String> = Vec::new();
        for (name, settings) in rules {
            let Some(s) = settings else {
                slots.push(None);
                continue;
            };
            let headers = s.headers_needed();
            for h in &headers {
                if !primary_headers.contains(h) {
                    primary_headers.push(h.clone());
                }
            }
            let keep = KeepSpec { max_body: usize::try_from(s.max_body_bytes).unwrap_or(usize::MAX), headers };
            slots.push(Some(RuleCompare { name: name.clone(), keep, comparator: Mutex::new(Comparator::new(s)?) }));
        }
        let keep_body = slots.iter().flatten().map(|r| r.keep.max_body).max();
        let Some(keep_body) = keep_body else {
            return Ok(None);
        };
        for r in UnpairedReason::ALL {
            metrics.record_unpaired(r.as_str(), 0);
        }
        for r in [NOT_REPLAYED, SHADOW_MISSING] {
            metrics.record_uncompared(r, 0);
        }
        metrics.set_pairs_waiting(0, 0);
        Ok(Some(Arc::new(Self {
            metrics,
            rules: slots,
            primary_headers,
            keep_body,
            outcome_labels: Outcome::ALL.map(Outcome::as_str),
            table: Mutex::new(Table {
                pairs: PairTable::new(limits),
                expected: BTreeSet::new(),
                secondary_pairs: PairTable::new(limits),
                expected_secondary: BTreeSet::new(),
                alone_published: 0,
                not_replayed: 0,
                events: Vec::new(),
            }),
            epoch: Instant::now(),
        })))
    }

    /// Body bytes extraction must keep of each primary response: the largest rule cap.
    pub fn keep_response_body(&self) -> usize {
        self.keep_body
    }

    /// What replay keeps of rule `rule`'s shadow responses; `None`: the rule does not compare.
    pub fn keep(&self, rule: usize) -> Option<&KeepSpec> {
        self.rules.get(rule).and_then(Option::as_ref).map(|r| &r.keep)
    }

    fn now_ns(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Request `id` was queued to a comparing lane: its shadow half will come, so its primary
    /// half waits for it.
    pub fn expect(&self, id: u64) {
        let mut t = lock(&self.table);
        t.expected.insert(id);
        if t.expected.len() > EXPECTED_CAP {
            t.expected.pop_first();
        }
    }

    /// Request `id` also goes to the rule's secondary: its primary half waits for that one too.
    pub fn expect_secondary(&self, id: u64) {
        let mut t = lock(&self.table);
        t.expected_secondary.insert(id);
        if t.expected_secondary.len() > EXPECTED_CAP {
            t.expected_secondary.pop_first();
        }
    }

    /// The secondary's answer to request `id`: with the primary's, what differs between two
    /// instances of the current version is learned as noise for the endpoint.
    pub fn secondary(&self, id: u64, rule: usize, endpoint: &str, half: ShadowHalf) {
        if self.keep(rule).is_none() {
            return;
        }
        let now = self.now_ns();
        let mut events = Vec::new();
        lock(&self.table).secondary_pairs.shadow(id, rule, endpoint, half, now, &mut events);
        self.learn(events);
    }

    /// Pairs of primary and secondary: noise learning. Halves that leave alone are expected
    /// (a secondary that failed or was slow): the comparison itself does not depend on them.
    fn learn(&self, events: Vec<PairEvent>) {
        for ev in events {
            let outcome = match ev {
                PairEvent::Pair { rule, endpoint, primary, shadow: ShadowHalf::Response(secondary) } => {
                    if let Some(r) = self.rules.get(rule).and_then(Option::as_ref) {
                        lock(&r.comparator).observe_secondary(&endpoint, &primary, &secondary);
                    }
                    "learned"
                }
                PairEvent::Pair { shadow: ShadowHalf::Failed(_), .. } => "failed",
                PairEvent::Unpaired { .. } => "unpaired",
            };
            self.metrics.record_secondary(outcome, 1);
        }
    }

    /// Request `id` will not be replayed after all (it could not be edited): no shadow half.
    pub fn withdraw(&self, id: u64) {
        lock(&self.table).expected.remove(&id);
    }

    /// The primary's response. Its body is what extraction kept (`keep_response_body`).
    pub fn primary(&self, resp: &CapturedResponse) {
        let now = self.now_ns();
        let mut t = lock(&self.table);
        let for_secondary = t.expected_secondary.remove(&resp.request_id);
        if !t.expected.remove(&resp.request_id) {
            t.not_replayed += 1;
            drop(t);
            self.metrics.record_uncompared(NOT_REPLAYED, 1);
            return;
        }
        let sample = ResponseSample {
            status: resp.status,
            headers: response_fields(&resp.head, &self.primary_headers),
            body: resp.body.clone(),
            body_complete: resp.body_complete,
            body_len: resp.body_len,
            latency: Some(Duration::from_nanos(resp.time_to_last_byte_ns())),
        };
        let mut events = std::mem::take(&mut t.events);
        let mut learned = Vec::new();
        if for_secondary {
            t.secondary_pairs.primary(resp.request_id, usize::MAX, "", sample.clone(), now, &mut learned);
        }
        // The rule and endpoint are the shadow half's; these only hold while the primary waits.
        t.pairs.primary(resp.request_id, usize::MAX, "", sample, now, &mut events);
        self.settle(t, events);
        self.learn(learned);
    }

    /// The shadow's answer to request `id` of rule `rule` (its endpoint named as the metrics
    /// name it), or why there is none.
    pub fn shadow(&self, id: u64, rule: usize, endpoint: &str, half: ShadowHalf) {
        if self.keep(rule).is_none() {
            return;
        }
        let now = self.now_ns();
        let mut t = lock(&self.table);
        let mut events = std::mem::take(&mut t.events);
        t.pairs.shadow(id, rule, endpoint, half, now, &mut events);
        self.settle(t, events);
    }

    /// Halves that waited too long leave (counted). Call it periodically.
    pub fn tick(&self) {
        let now = self.now_ns();
        let mut t = lock(&self.table);
        let mut events = std::mem::take(&mut t.events);
        t.pairs.expire(now, &mut events);
        let mut learned = Vec::new();
        t.secondary_pairs.expire(now, &mut learned);
        self.settle(t, events);
        self.learn(learned);
    }

    /// Everything still waiting leaves (shutdown, after replay has stopped).
    pub fn drain(&self) {
        let mut t = lock(&self.table);
        let mut events = std::mem::take(&mut t.events);
        t.pairs.drain(&mut events);
        t.expected.clear();
        let mut learned = Vec::new();
        t.secondary_pairs.drain(&mut learned);
        t.expected_secondary.clear();
        self.settle(t, events);
        self.learn(learned);
    }

    /// Publish the table's state, release its lock, then compare what left it.
    fn settle(&self, mut t: MutexGuard<'_, Table>, events: Vec<PairEvent>) {
        self.metrics.set_pairs_waiting(t.pairs.len(), t.pairs.bytes());
        let alone = t.pairs.primary_alone - t.alone_published;
        t.alone_published = t.pairs.primary_alone;
        // Handled after the lock is released, so capture never waits for a comparison.
        let pending = events;
        drop(t);
        if alone > 0 {
            self.metrics.record_uncompared(SHADOW_MISSING, alone);
        }
        for ev in pending {
            self.judge(ev);
        }
    }

    fn judge(&self, ev: PairEvent) {
        match ev {
            PairEvent::Pair { rule, endpoint, mut primary, shadow } => {
                let Some(r) = self.rules.get(rule).and_then(Option::as_ref) else { return };
                // Extraction keeps the largest rule's cap; this rule may want less.
                if primary.body.len() > r.keep.max_body {
                    primary.body = Bytes::copy_from_slice(&primary.body[..r.keep.max_body]);
                    primary.body_complete = false;
                }
                let mut c = lock(&r.comparator);
                let key = c.endpoint_key(&endpoint);
                let (outcome, shadow_side) = match &shadow {
                    ShadowHalf::Response(s) => (c.observe(&endpoint, &primary, s), Some((s.status, s.latency))),
                    ShadowHalf::Failed(f) => (c.observe_shadow_failure(&endpoint, &primary, *f), None),
                };
                drop(c);
                self.metrics.record_compared(&ComparedPair {
                    rule: &r.name,
                    endpoint: &key,
                    outcome: outcome.as_str(),
                    all_outcomes: &self.outcome_labels,
                    primary_status: primary.status,
                    primary_latency: primary.latency.unwrap_or_default(),
                    shadow: shadow_side,
                });
            }
            PairEvent::Unpaired { rule, endpoint, reason } => {
                self.metrics.record_unpaired(reason.as_str(), 1);
                if let Some(r) = self.rules.get(rule).and_then(Option::as_ref) {
                    lock(&r.comparator).record_unpaired(&endpoint, reason);
                }
            }
        }
    }

    /// Every comparing rule's report, and the worst verdict.
    pub fn report(&self) -> DaemonReport {
        let pairs = {
            let t = lock(&self.table);
            PairStats {
                waiting: t.pairs.len() as u64,
                waiting_bytes: t.pairs.bytes() as u64,
                primary_not_replayed: t.not_replayed,
                primary_shadow_missing: t.pairs.primary_alone,
            }
        };
        let rules: Vec<RuleReport> = self
            .rules
            .iter()
            .flatten()
            .map(|r| RuleReport { rule: r.name.clone(), report: lock(&r.comparator).report() })
            .collect();
        let verdict = rules.iter().map(|r| r.report.verdict).max().unwrap_or(Verdict::Insufficient);
        DaemonReport { verdict, rules, pairs }
    }

    /// Kept mismatch samples of every rule, of one endpoint or all.
    pub fn diffs(&self, endpoint: Option<&str>) -> Vec<RuleDiff> {
        self.rules
            .iter()
            .flatten()
            .flat_map(|r| {
                let samples = lock(&r.comparator).diffs(endpoint);
                samples.into_iter().map(|sample| RuleDiff { rule: r.name.clone(), sample })
            })
            .collect()
    }
}

/// The control socket's answer to `report` and `diffs` (`None` for other commands): the
/// [`DaemonReport`] and a list of [`RuleDiff`]s as JSON.
pub fn control_report(hub: Option<&CompareHub>, command: &Command) -> Option<Response> {
    let json = |v: Result<serde_json::Value, serde_json::Error>| match v {
        Ok(v) => Response::ok(v),
        Err(e) => Response::error(ErrorKind::Internal, format!("encode the answer: {e}")),
    };
    match command {
        Command::Report => Some(match hub {
            Some(h) => json(serde_json::to_value(h.report())),
            None => json(serde_json::to_value(DaemonReport {
                verdict: Verdict::Insufficient,
                rules: Vec::new(),
                pairs: PairStats::default(),
            })),
        }),
        Command::Diffs { endpoint } => {
            let diffs = hub.map(|h| h.diffs(endpoint.as_deref())).unwrap_or_default();
            Some(json(serde_json::to_value(diffs)))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::{message::BodyFraming, metrics::TextFormat, segment::FlowId};

    fn hub(max_body: u64) -> Arc<CompareHub> {
        let s = CompareSettings { max_body_bytes: max_body, ..CompareSettings::default() };
        let rules = [("api".to_owned(), Some(&s)), ("off".to_owned(), None)];
        CompareHub::new(&rules, PairLimits::default(), Arc::new(Metrics::new(10))).unwrap().expect("a rule compares")
    }

    fn primary(id: u64, status: u16, body: &'static [u8]) -> CapturedResponse {
        CapturedResponse {
            flow: FlowId { client: "10.0.0.1:40000".parse().unwrap(), server: "10.0.0.2:80".parse().unwrap() },
            request_id: id,
            status,
            minor_version: 1,
            head: Bytes::from_static(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n"),
            framing: BodyFraming::ContentLength(body.len() as u64),
            body_len: body.len() as u64,
            body: Bytes::from_static(body),
            body_complete: true,
            first_ts_ns: 2_000_000,
            last_ts_ns: 3_000_000,
            request_last_ts_ns: 1_000_000,
        }
    }

    fn shadow(status: u16, body: &'static [u8]) -> ShadowHalf {
        ShadowHalf::Response(ResponseSample {
            status,
            headers: vec![("content-type".into(), b"application/json".to_vec())],
            body: Bytes::from_static(body),
            body_complete: true,
            body_len: body.len() as u64,
            latency: Some(Duration::from_millis(3)),
        })
    }

    fn metric(h: &CompareHub, series: &str) -> f64 {
        let text = h.metrics.encode(TextFormat::Prometheus).unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
            .unwrap_or_else(|| panic!("{series} not in\n{text}"))
    }

    #[test]
    fn halves_pair_in_either_order_and_every_leftover_is_counted() {
        let h = hub(1024);
        assert_eq!(h.keep_response_body(), 1024);
        assert!(h.keep(0).is_some() && h.keep(1).is_none());
        // 1: primary first; 2: shadow first; 3: differing body; 4: shadow failed.
        for id in 1..=4 {
            h.expect(id);
        }
        h.primary(&primary(1, 200, br#"{"a":1}"#));
        h.shadow(1, 0, "GET /a", shadow(200, br#"{"a":1}"#));
        h.shadow(2, 0, "GET /a", shadow(200, br#"{"a":1,"timestamp":2}"#));
        h.primary(&primary(2, 200, br#"{"a":1,"timestamp":1}"#));
        h.primary(&primary(3, 200, br#"{"a":1}"#));
        h.shadow(3, 0, "GET /a", shadow(200, br#"{"a":2}"#));
        h.shadow(4, 0, "GET /a", ShadowHalf::Failed(ShadowFailure::Timeout));
        h.primary(&primary(4, 200, br#"{"a":1}"#));
        // Not expected: a request that was never replayed.
        h.primary(&primary(99, 200, b"{}"));
        // A shadow half whose primary never comes, and a rule that does not compare.
        h.shadow(5, 0, "GET /b", shadow(200, b"{}"));
        h.shadow(6, 1, "GET /c", shadow(200, b"{}"));
        h.drain();

        let r = h.report();
        assert_eq!(r.rules.len(), 1, "only the comparing rule reports");
        assert_eq!(r.rules[0].rule, "api");
        let e = &r.rules[0].report.endpoints;
        let a = e.iter().find(|e| e.summary.endpoint == "GET /a").expect("GET /a");
        assert_eq!((a.summary.samples, a.summary.shadow_failures), (4, 1));
        let b = e.iter().find(|e| e.summary.endpoint == "GET /b").expect("GET /b");
        assert_eq!((b.summary.samples, b.summary.unpaired.primary_missing), (0, 1));
        assert_eq!(
            r.pairs,
            PairStats { waiting: 0, waiting_bytes: 0, primary_not_replayed: 1, primary_shadow_missing: 0 }
        );
        assert_eq!(r.verdict, Verdict::Insufficient, "4 samples are not enough");

        let diffs = h.diffs(Some("GET /a"));
        assert_eq!(diffs.len(), 2, "the body mismatch and the failure: {diffs:?}");
        assert!(diffs.iter().all(|d| d.rule == "api"));

        let lbl = r#"{rule="api",endpoint="GET /a""#;
        assert_eq!(metric(&h, &format!("shadow_comparisons_total{lbl},outcome=\"match\"}}")), 2.0);
        assert_eq!(metric(&h, &format!("shadow_comparisons_total{lbl},outcome=\"body_mismatch\"}}")), 1.0);
        assert_eq!(metric(&h, &format!("shadow_comparisons_total{lbl},outcome=\"shadow_failed\"}}")), 1.0);
        assert_eq!(metric(&h, &format!("shadow_comparisons_total{lbl},outcome=\"header_mismatch\"}}")), 0.0);
        assert_eq!(metric(&h, &format!("shadow_compared_responses_total{lbl},side=\"shadow\",class=\"error\"}}")), 1.0);
        assert_eq!(metric(&h, &format!("shadow_compared_responses_total{lbl},side=\"primary\",class=\"2xx\"}}")), 4.0);
        assert_eq!(metric(&h, &format!("shadow_compared_latency_seconds_count{lbl},side=\"primary\"}}")), 4.0);
        assert_eq!(metric(&h, &format!("shadow_compared_latency_seconds_count{lbl},side=\"shadow\"}}")), 3.0);
        assert_eq!(metric(&h, r#"shadow_compare_unpaired_total{reason="primary_missing"}"#), 1.0);
        assert_eq!(metric(&h, r#"shadow_compare_unpaired_total{reason="memory_bound"}"#), 0.0);
        assert_eq!(metric(&h, r#"shadow_compare_primary_uncompared_total{reason="not_replayed"}"#), 1.0);
        assert_eq!(metric(&h, "shadow_compare_pairs_waiting"), 0.0);
    }

    /// A shadow response read behind another of its pipeline has no latency of its own: it is
    /// compared and counted like any other, and only the timed ones make the shadow's latency.
    #[test]
    fn an_untimed_shadow_response_is_compared_without_a_latency() {
        let h = hub(1024);
        for id in 1..=3 {
            h.expect(id);
            h.primary(&primary(id, 200, br#"{"a":1}"#));
        }
        let untimed = |status, body| match shadow(status, body) {
            ShadowHalf::Response(s) => ShadowHalf::Response(ResponseSample { latency: None, ..s }),
            other => other,
        };
        h.shadow(1, 0, "GET /a", shadow(200, br#"{"a":1}"#));
        h.shadow(2, 0, "GET /a", untimed(200, br#"{"a":1}"#));
        h.shadow(3, 0, "GET /a", untimed(200, br#"{"a":2}"#));
        let r = h.report();
        let a = &r.rules[0].report.endpoints[0].summary;
        assert_eq!(a.samples, 3, "every pair compared");
        assert_eq!((a.latency.primary.count, a.latency.shadow.count), (3, 1), "only the timed shadow response");
        let lbl = r#"{rule="api",endpoint="GET /a""#;
        assert_eq!(metric(&h, &format!("shadow_comparisons_total{lbl},outcome=\"match\"}}")), 2.0);
        assert_eq!(metric(&h, &format!("shadow_comparisons_total{lbl},outcome=\"body_mismatch\"}}")), 1.0);
        assert_eq!(metric(&h, &format!("shadow_compared_responses_total{lbl},side=\"shadow\",class=\"2xx\"}}")), 3.0);
        assert_eq!(metric(&h, &format!("shadow_compared_latency_seconds_count{lbl},side=\"shadow\"}}")), 1.0);
        assert_eq!(metric(&h, &format!("shadow_compared_latency_seconds_count{lbl},side=\"primary\"}}")), 3.0);
        let d = h.diffs(Some("GET /a"));
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].sample.shadow_latency_ms, None, "not measured");
        assert_eq!(d[0].sample.shadow_timing, crate::compare::Timing::Untimed);
        assert!(d[0].sample.render().contains("shadow untimed"), "never 0.000 ms");
    }

    /// Byte-equal bodies are equal without being parsed, but only where parsing would have said
    /// so: the same content type, no content coding, whole, within the cap.
    #[test]
    fn byte_equal_bodies_compare_as_parsing_them_would() {
        let h = hub(1024);
        let with = |ct: &str, ce: Option<&str>, status: u16, body: &'static [u8]| {
            let mut headers = vec![("content-type".to_owned(), ct.as_bytes().to_vec())];
            if let Some(e) = ce {
                headers.push(("content-encoding".to_owned(), e.as_bytes().to_vec()));
            }
            ShadowHalf::Response(ResponseSample {
                status,
                headers,
                body: Bytes::from_static(body),
                body_complete: true,
                body_len: body.len() as u64,
                latency: Some(Duration::from_millis(3)),
            })
        };
        let body: &'static [u8] = br#"{"a":1,"timestamp":5}"#;
        let cases: [(&str, ShadowHalf); 5] = [
            ("/same", with("application/json", None, 200, body)),
            // The primary's is JSON, the shadow's text: compared as different kinds of body.
            ("/other-type", with("text/plain", None, 200, body)),
            // Not decodable as gzip: compared byte-wise against the primary's JSON, which differs.
            ("/encoded", with("application/json", Some("gzip"), 200, body)),
            ("/identity", with("application/json", Some("identity"), 200, body)),
            // Equal bodies, another status: the mismatch keeps both bodies for `diffs`.
            ("/status", with("application/json", None, 500, body)),
        ];
        for (i, (path, half)) in cases.into_iter().enumerate() {
            let id = i as u64 + 1;
            h.expect(id);
            h.primary(&primary(id, 200, body));
            h.shadow(id, 0, &format!("GET {path}"), half);
        }
        let r = h.report();
        let outcome = |path: &str| {
            let e =
                r.rules[0].report.endpoints.iter().find(|e| e.summary.endpoint == format!("GET {path}")).expect(path);
            (e.summary.samples, e.summary.body_matches, e.summary.status_matches)
        };
        assert_eq!(outcome("/same"), (1, 1, 1));
        assert_eq!(outcome("/other-type"), (1, 0, 1));
        assert_eq!(outcome("/encoded"), (1, 0, 1));
        assert_eq!(outcome("/identity"), (1, 1, 1));
        assert_eq!(outcome("/status"), (1, 1, 0));
        let d = h.diffs(Some("GET /status"));
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].sample.primary_body, d[0].sample.shadow_body);
        assert!(d[0].sample.primary_body.contains("\"a\":1"), "{:?}", d[0].sample.primary_body);
    }

    #[test]
    fn a_primary_body_over_its_rules_cap_is_compared_by_length() {
        let h = hub(4);
        h.expect(1);
        h.primary(&primary(1, 200, br#"{"a":1}"#));
        h.shadow(1, 0, "GET /a", shadow(200, br#"{"a":1}"#));
        let r = h.report();
        assert_eq!(r.rules[0].report.endpoints[0].summary.length_only, 1);
    }

    #[test]
    fn a_primary_waits_and_leaves_counted_when_no_shadow_result_comes() {
        let s = CompareSettings::default();
        let limits = PairLimits { timeout: Duration::ZERO, ..PairLimits::default() };
        let h = CompareHub::new(&[("api".into(), Some(&s))], limits, Arc::new(Metrics::new(10))).unwrap().unwrap();
        h.expect(1);
        h.primary(&primary(1, 200, b"{}"));
        h.tick();
        assert_eq!(h.report().pairs.primary_shadow_missing, 1);
        assert_eq!(metric(&h, r#"shadow_compare_primary_uncompared_total{reason="shadow_missing"}"#), 1.0);
    }

    #[test]
    fn nothing_compares_without_settings() {
        let rules = [("a".to_owned(), None)];
        assert!(CompareHub::new(&rules, PairLimits::default(), Arc::new(Metrics::new(10))).unwrap().is_none());
    }

    #[test]
    fn replay_errors_map_to_shadow_failures() {
        assert_eq!(shadow_failure(ShadowErrorKind::Timeout), ShadowFailure::Timeout);
        assert_eq!(shadow_failure(ShadowErrorKind::ConnectRefused), ShadowFailure::Connect);
        assert_eq!(shadow_failure(ShadowErrorKind::BadResponse), ShadowFailure::InvalidResponse);
    }
}
