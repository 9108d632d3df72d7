//! Where a mirrored request's answers meet: the one place that remembers the requests waiting
//! for the primary's response. The primary's answer gives the primary's latency per endpoint
//! and, when the request went to a comparing rule's shadow, its half of the comparison; the
//! shadow's and the secondary's answers come from replay and go on to the comparison hub.
//!
//! Replay only speaks [`ResponseSample`]s and error kinds to it; which comparison type a half
//! becomes, and whether anything compares at all, is decided here and in [`crate::hub`].

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::Duration,
};

use crate::{
    compare::pairs::ShadowHalf,
    hub::{CompareHub, Expected, shadow_failure},
    message::{CapturedResponse, KeepSpec, ResponseSample},
    metrics::{EndpointId, Metrics, ShadowErrorKind},
    ramp::RampFeed,
    rule::RuleId,
    trace_link::TraceLink,
};

/// Requests remembered while their primary answer is awaited; past this, the oldest is
/// forgotten (its answer is then timed without an endpoint, and not compared).
pub const PENDING_CAP: usize = 65_536;

/// A shadow's (or secondary's) answer to one request, as replay got it.
pub type Answer = Result<ResponseSample, ShadowErrorKind>;

/// One request waiting for the primary's response.
#[derive(Clone, Copy, Debug)]
struct Waiting {
    endpoint: EndpointId,
    /// The rule that routed it (none: no rule with a shadow covers it).
    rule: Option<RuleId>,
    /// Which comparison halves will come for it.
    expected: Expected,
}

/// Shared by the daemon's loop (requests and primary responses) and the replay engine (the
/// shadow's and secondary's answers). One per comparison hub: a reload that keeps the hub keeps
/// the correlator, so a request sent before it still meets its primary answer after it.
#[derive(Debug)]
pub struct Correlator {
    metrics: Arc<Metrics>,
    hub: Option<Arc<CompareHub>>,
    /// What the rules' ramps see (shared by every correlator of the daemon).
    ramp: Arc<RampFeed>,
    pending: Mutex<BTreeMap<u64, Waiting>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Correlator {
    /// `hub`: the comparison, when a rule compares. No rule ramps.
    pub fn new(metrics: Arc<Metrics>, hub: Option<Arc<CompareHub>>) -> Arc<Self> {
        Self::with_ramp(metrics, hub, Arc::default())
    }

    /// As [`new`](Self::new), with what the rules' ramps see: their primary responses and
    /// requests from here and replay, their pairs from the hub.
    pub fn with_ramp(metrics: Arc<Metrics>, hub: Option<Arc<CompareHub>>, ramp: Arc<RampFeed>) -> Arc<Self> {
        if let Some(h) = &hub {
            h.feed_ramp(ramp.clone());
        }
        Arc::new(Self { metrics, hub, ramp, pending: Mutex::new(BTreeMap::new()) })
    }

    /// What the rules' ramps see.
    pub fn ramp(&self) -> &RampFeed {
        &self.ramp
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    pub fn hub(&self) -> Option<&Arc<CompareHub>> {
        self.hub.as_ref()
    }

    /// What replay keeps of rule `rule`'s shadow responses; `None`: the rule does not compare.
    pub fn keep(&self, rule: RuleId) -> Option<&KeepSpec> {
        self.hub.as_ref().and_then(|h| h.keep(rule))
    }

    /// The comparison epoch of rule `rule` now (0: it does not compare): the stamp of a shadow
    /// request going out.
    pub fn epoch_of(&self, rule: RuleId) -> u64 {
        self.hub.as_ref().map_or(0, |h| h.epoch_of(rule))
    }

    /// Request `id` of `endpoint` was captured (routed to `rule`): its primary answer is timed
    /// for the endpoint, and for the rule's ramp.
    pub fn request(&self, id: u64, endpoint: EndpointId, rule: Option<RuleId>) {
        let mut p = lock(&self.pending);
        p.insert(id, Waiting { endpoint, rule, expected: Expected::default() });
        if p.len() > PENDING_CAP {
            p.pop_first();
        }
    }

    /// Request `id` is queued to rule `rule`'s shadow (and its secondary, `secondary`): when the
    /// rule compares, the primary's half waits for theirs. Call it before the request can be
    /// sent, so that a [`withdraw`](Self::withdraw) always comes after it.
    pub fn replaying(&self, id: u64, rule: RuleId, secondary: bool) {
        if self.keep(rule).is_none() {
            return;
        }
        if let Some(w) = lock(&self.pending).get_mut(&id) {
            w.expected = Expected { shadow: true, secondary };
        }
    }

    /// Request `id` will not be sent after all (its queue was full, it could not be edited, its
    /// target is backed off): no shadow half comes.
    pub fn withdraw(&self, id: u64) {
        if let Some(w) = lock(&self.pending).get_mut(&id) {
            w.expected = Expected::default();
        }
    }

    /// The primary's response: its latency, per endpoint when its request is remembered, and
    /// its half of the comparison.
    pub fn primary(&self, resp: &CapturedResponse) {
        let waiting = lock(&self.pending).remove(&resp.request_id);
        let last_byte = Duration::from_nanos(resp.time_to_last_byte_ns());
        self.metrics.record_primary(
            waiting.map(|w| w.endpoint),
            Duration::from_nanos(resp.time_to_first_byte_ns()),
            last_byte,
        );
        if let Some(rule) = waiting.and_then(|w| w.rule) {
            self.ramp.primary(rule, last_byte);
        }
        if let Some(h) = &self.hub {
            h.primary(resp, waiting.map(|w| w.expected).unwrap_or_default());
        }
    }

    /// The shadow's answer to request `id` of rule `rule` and `endpoint`, sent in `epoch`, with
    /// the link between its production trace and the shadow's (when its context was restarted).
    pub fn shadow(
        &self,
        id: u64,
        rule: RuleId,
        epoch: u64,
        endpoint: EndpointId,
        answer: Answer,
        trace: Option<TraceLink>,
    ) {
        if let Some(h) = self.comparing(rule) {
            h.shadow(id, rule, epoch, &self.metrics.endpoint_name(endpoint), half(answer), trace);
        }
    }

    /// The secondary's answer (noise learning), as [`shadow`](Self::shadow).
    pub fn secondary(&self, id: u64, rule: RuleId, epoch: u64, endpoint: EndpointId, answer: Answer) {
        if let Some(h) = self.comparing(rule) {
            h.secondary(id, rule, epoch, &self.metrics.endpoint_name(endpoint), half(answer));
        }
    }

    fn comparing(&self, rule: RuleId) -> Option<&CompareHub> {
        self.hub.as_deref().filter(|h| h.keep(rule).is_some())
    }
}

/// An answer as the comparison's half: a response, or how the exchange failed.
fn half(answer: Answer) -> ShadowHalf {
    match answer {
        Ok(sample) => ShadowHalf::Response(sample),
        Err(kind) => ShadowHalf::Failed(shadow_failure(kind)),
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::{
        compare::{CompareSettings, pairs::PairLimits},
        message::BodyFraming,
        metrics::TextFormat,
        segment::FlowId,
    };

    fn correlator(compare: bool) -> Arc<Correlator> {
        let metrics = Arc::new(Metrics::new(10));
        let s = CompareSettings::default();
        let rules = [("api".to_owned(), compare.then_some(&s))];
        let hub = CompareHub::new(&rules, PairLimits::default(), metrics.clone()).expect("settings");
        if let Some(h) = &hub {
            h.open(None);
        }
        Correlator::new(metrics, hub)
    }

    fn primary(id: u64) -> CapturedResponse {
        CapturedResponse {
            flow: FlowId { client: "10.0.0.1:40000".parse().unwrap(), server: "10.0.0.2:80".parse().unwrap() },
            request_id: id,
            status: 200,
            minor_version: 1,
            head: Bytes::from_static(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n"),
            framing: BodyFraming::ContentLength(2),
            body: Bytes::from_static(b"{}"),
            body_complete: true,
            body_len: 2,
            first_ts_ns: 2_000_000,
            last_ts_ns: 3_000_000,
            request_last_ts_ns: 1_000_000,
        }
    }

    fn sample() -> ResponseSample {
        ResponseSample {
            status: 200,
            body: Bytes::from_static(b"{}"),
            body_complete: true,
            body_len: 2,
            latency: Some(Duration::from_micros(4)),
            ..ResponseSample::default()
        }
    }

    fn metric(c: &Correlator, series: &str) -> f64 {
        let text = c.metrics.encode(TextFormat::Prometheus).expect("encode");
        text.lines()
            .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
            .unwrap_or_else(|| panic!("{series} not in\n{text}"))
    }

    #[test]
    fn a_replayed_request_is_compared_and_its_primary_timed_for_its_endpoint() {
        let c = correlator(true);
        let endpoint = c.metrics.endpoint(b"GET", b"/users/7");
        c.request(1, endpoint, None);
        c.replaying(1, RuleId::new(0), false);
        c.primary(&primary(1));
        c.shadow(1, RuleId::new(0), c.epoch_of(RuleId::new(0)), endpoint, Ok(sample()), None);
        assert_eq!(
            metric(&c, r#"shadow_comparisons_total{rule="api",endpoint="GET /users/:id",outcome="match"}"#),
            1.0
        );
        assert_eq!(c.metrics.summary().primary.complete.count, 1, "the primary is timed");
        assert!(lock(&c.pending).is_empty(), "nothing is remembered once the primary answered");
    }

    #[test]
    fn a_withdrawn_or_uncaptured_request_is_not_compared() {
        let c = correlator(true);
        let endpoint = c.metrics.endpoint(b"GET", b"/a");
        c.request(1, endpoint, None);
        c.replaying(1, RuleId::new(0), false);
        c.withdraw(1);
        c.primary(&primary(1));
        // Never seen at all.
        c.primary(&primary(2));
        assert_eq!(metric(&c, r#"shadow_compare_primary_uncompared_total{reason="not_replayed"}"#), 2.0);
        assert_eq!(c.metrics.summary().primary.complete.count, 2, "both primaries are timed");
    }

    #[test]
    fn without_comparison_only_the_primary_is_timed() {
        let c = correlator(false);
        assert!(c.hub().is_none() && c.keep(RuleId::new(0)).is_none());
        assert_eq!(c.epoch_of(RuleId::new(0)), 0);
        let endpoint = c.metrics.endpoint(b"GET", b"/a");
        c.request(1, endpoint, None);
        c.replaying(1, RuleId::new(0), true);
        c.shadow(1, RuleId::new(0), 0, endpoint, Err(ShadowErrorKind::Timeout), None);
        c.primary(&primary(1));
        assert_eq!(c.metrics.summary().primary.complete.count, 1);
    }

    #[test]
    fn the_oldest_request_is_forgotten_past_the_cap() {
        let c = correlator(false);
        for id in 0..=PENDING_CAP as u64 {
            c.request(id, EndpointId::OTHER, None);
        }
        let p = lock(&c.pending);
        assert_eq!(p.len(), PENDING_CAP);
        assert_eq!(p.first_key_value().map(|(k, _)| *k), Some(1), "the oldest left");
    }
}
