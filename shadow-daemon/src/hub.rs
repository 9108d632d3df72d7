//! Where comparison meets the running daemon: the primary's responses (from capture) and the
//! shadow's (from replay) meet in one [`PairTable`], keyed by request id; each pair that meets is
//! judged by its rule's [`Comparator`] and counted in the metrics contract. One hub per daemon.
//!
//! Only requests queued to a comparing lane produce a shadow half, so only their primary halves
//! enter the table (the [`crate::correlate::Correlator`] remembers which, and says so with each
//! primary: [`Expected`]); every other primary response leaves at once, counted as
//! `not_replayed`. Everything that leaves without being compared is counted by reason
//! (`shadow_compare_unpaired_total`, `shadow_compare_primary_uncompared_total`).
//!
//! Each rule's comparison has an epoch (`compare::EpochInfo`): a new one starts when the rule's
//! shadow target changes, on `shadowctl reset`, or when the shadow answers with another build
//! (its `version_header`). A shadow request is stamped with its rule's epoch when it goes out; a
//! pair whose stamp is not the current epoch is dropped and counted
//! (`shadow_compare_unpaired_total{reason="epoch"}`), never compared into the new epoch.
//!
//! Locks: the table under one mutex (held for a lookup), each rule's comparator under its own
//! (held while a pair is compared and counted, so an epoch start sits between two pairs' series
//! updates), so capture never waits for a comparison of another rule and never for JSON parsing
//! while it hands over a primary response.

use std::{
    sync::{
        Arc, Mutex, MutexGuard, OnceLock, PoisonError,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::{
    compare::{
        Comparator, CompareError, CompareSettings, EpochInfo, EpochReason, MismatchSample, Report, ResponseSample,
        ShadowFailure, Verdict, VersionSeen,
        pairs::{PairEvent, PairLimits, PairTable, Sent, ShadowHalf},
    },
    control::{ErrorBody, ErrorKind},
    http::response_fields,
    label::{NotCompared, SecondaryOutcome, Uncompared},
    message::{CapturedResponse, KeepSpec},
    metrics::{ComparedPair, Metrics, ShadowErrorKind},
    ramp::{PairSeen, RampFeed},
    rule::RuleId,
    trace_link::TraceLink,
};

/// Unix time in milliseconds (an epoch's start).
fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Which halves a primary response waits for: the shadow's (its request was replayed to a
/// comparing rule) and the secondary's (the rule learns noise). Kept by [`crate::correlate`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Expected {
    pub shadow: bool,
    pub secondary: bool,
}

impl Expected {
    /// Only the shadow's half.
    pub const SHADOW: Self = Self { shadow: true, secondary: false };
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
    /// The comparator's epoch number, read without its lock to stamp a shadow request.
    epoch: AtomicU64,
}

/// The pair table and what it has counted so far (for the metrics' deltas).
struct Table {
    pairs: PairTable,
    /// Primary and secondary halves (noise learning), kept apart from the shadow's pairs.
    secondary_pairs: PairTable,
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
    /// Destinations outside a fenced shadow's allowlist that it tried to reach: a finding to
    /// see before promoting, whatever the verdict.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub egress: Vec<crate::egress::EgressFinding>,
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
        if !self.egress.is_empty() {
            o.push_str(
                "egress: the shadow tried to reach destinations outside its allowlist (review before promoting):\n",
            );
            for f in &self.egress {
                o.push_str(&format!("  {}\n", f.line()));
            }
        }
        o.push_str(&format!("overall verdict: {} (exit {})\n", self.verdict.as_str(), self.exit_code()));
        o
    }
}

/// `shadowctl reset`'s answer: the epoch each reset rule starts now.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RuleEpoch {
    pub rule: String,
    pub epoch: EpochInfo,
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
    table: Mutex<Table>,
    clock: Instant,
    /// A reload replaced this hub: what still comes to it is counted as `epoch` and dropped.
    retired: AtomicBool,
    /// Where each compared pair also goes: the rules' ramps judge them.
    ramp: OnceLock<Arc<RampFeed>>,
}

impl std::fmt::Debug for CompareHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompareHub").field("keep_body", &self.keep_body).finish_non_exhaustive()
    }
}

impl CompareHub {
    /// One comparator per rule with settings (`(name, settings)`, indexed like the config's
    /// rules); `None` when no rule compares: then nothing is kept or paired anywhere. Every
    /// rule is in its first epoch; [`open`](Self::open) dates it and exports it.
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
            let comparator = Mutex::new(Comparator::new(s)?);
            slots.push(Some(RuleCompare { name: name.clone(), keep, comparator, epoch: AtomicU64::new(1) }));
        }
        let keep_body = slots.iter().flatten().map(|r| r.keep.max_body).max();
        let Some(keep_body) = keep_body else {
            return Ok(None);
        };
        for r in NotCompared::ALL {
            metrics.record_unpaired(r, 0);
        }
        for r in Uncompared::ALL {
            metrics.record_uncompared(r, 0);
        }
        metrics.set_pairs_waiting(0, 0);
        Ok(Some(Arc::new(Self {
            metrics,
            rules: slots,
            primary_headers,
            keep_body,
            table: Mutex::new(Table {
                pairs: PairTable::new(limits),
                secondary_pairs: PairTable::new(limits),
                alone_published: 0,
                not_replayed: 0,
                events: Vec::new(),
            }),
            clock: Instant::now(),
            retired: AtomicBool::new(false),
            ramp: OnceLock::new(),
        })))
    }

    /// The hub goes into service: every rule's epoch starts now and is exported. `before`: the
    /// hub it replaces (a reload that changed the rules' names or comparison settings) and the
    /// names of the rules whose shadow target changed; a rule the old hub had goes on counting
    /// epochs (reason `target`, or else `reload`), one it no longer has leaves the metrics, and
    /// the old hub is retired. Without it, every rule's first epoch starts (`start`).
    pub fn open(&self, before: Option<(&CompareHub, &[String])>) {
        if let Some((old, _)) = before {
            old.retire();
            for r in old.rules.iter().flatten().filter(|r| !self.rules.iter().flatten().any(|n| n.name == r.name)) {
                self.metrics.forget_compare_rule(&r.name);
            }
        }
        let now = unix_ms();
        for r in self.rules.iter().flatten() {
            let previous = before.and_then(|(old, changed)| {
                let n = old.rules.iter().flatten().find(|o| o.name == r.name)?.epoch.load(Ordering::Relaxed);
                Some((n, if changed.contains(&r.name) { EpochReason::Target } else { EpochReason::Reload }))
            });
            let (number, reason) = previous.map_or((1, EpochReason::Start), |(n, why)| (n + 1, why));
            let mut c = lock(&r.comparator);
            c.start_epoch(number, reason, now);
            announce(&self.metrics, r, &c);
        }
    }

    /// Compared pairs also go to `feed` (the rules' ramps); set once, by the correlator.
    pub fn feed_ramp(&self, feed: Arc<RampFeed>) {
        let _ = self.ramp.set(feed);
    }

    /// The current epoch of rule `rule`'s comparison (0: it does not compare): the stamp of a
    /// shadow request going out now.
    pub fn epoch_of(&self, rule: RuleId) -> u64 {
        self.rule(rule).map_or(0, |r| r.epoch.load(Ordering::Relaxed))
    }

    /// Start a new epoch of rule `rule` (`target`: its shadow target changed; `reset`).
    pub fn start_epoch(&self, rule: RuleId, reason: EpochReason) -> Option<RuleEpoch> {
        let r = self.rule(rule)?;
        let mut c = lock(&r.comparator);
        let number = c.epoch().number + 1;
        c.start_epoch(number, reason, unix_ms());
        announce(&self.metrics, r, &c);
        tracing::info!("rule {}: comparison {}", r.name, c.epoch().describe());
        Some(RuleEpoch { rule: r.name.clone(), epoch: c.epoch().clone() })
    }

    /// `shadowctl reset [--rule NAME]`: a new epoch (reason `reset`) of the named comparing rule,
    /// or of every one. Nothing is reset when the name is not a comparing rule's.
    pub fn reset(&self, rule: Option<&str>) -> Result<Vec<RuleEpoch>, String> {
        let chosen: Vec<RuleId> = RuleId::all(self.rules.len())
            .filter(|&id| self.rule(id).is_some_and(|r| rule.is_none_or(|n| n == r.name)))
            .collect();
        if let (Some(name), true) = (rule, chosen.is_empty()) {
            return Err(format!("rule '{name}' does not compare"));
        }
        Ok(chosen.into_iter().filter_map(|i| self.start_epoch(i, EpochReason::Reset)).collect())
    }

    /// A reload left no rule comparing: the hub is retired and its rules leave the metrics.
    pub fn close(&self) {
        self.retire();
        for r in self.rules.iter().flatten() {
            self.metrics.forget_compare_rule(&r.name);
        }
    }

    /// A reload replaced this hub: from now on nothing comes to its comparisons, what waits
    /// leaves counted as `epoch`, and so does whatever the old replay lanes still hand in.
    fn retire(&self) {
        self.retired.store(true, Ordering::Relaxed);
        self.drain();
    }

    fn is_retired(&self) -> bool {
        self.retired.load(Ordering::Relaxed)
    }

    /// Body bytes extraction must keep of each primary response: the largest rule cap.
    pub fn keep_response_body(&self) -> usize {
        self.keep_body
    }

    /// What replay keeps of rule `rule`'s shadow responses; `None`: the rule does not compare.
    pub fn keep(&self, rule: RuleId) -> Option<&KeepSpec> {
        self.rule(rule).map(|r| &r.keep)
    }

    fn rule(&self, rule: RuleId) -> Option<&RuleCompare> {
        self.rules.get(rule.index()).and_then(Option::as_ref)
    }

    fn now_ns(&self) -> u64 {
        u64::try_from(self.clock.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// The secondary's answer to request `id`, sent in epoch `epoch` of its rule: with the
    /// primary's, what differs between two instances of the current version is learned as noise
    /// for the endpoint.
    pub fn secondary(&self, id: u64, rule: RuleId, epoch: u64, endpoint: &str, half: ShadowHalf) {
        if self.keep(rule).is_none() {
            return;
        }
        if self.is_retired() {
            self.metrics.record_secondary(SecondaryOutcome::Epoch, 1);
            return;
        }
        let now = self.now_ns();
        let mut events = Vec::new();
        lock(&self.table).secondary_pairs.shadow(
            id,
            Sent { rule, epoch, endpoint, trace: None },
            half,
            now,
            &mut events,
        );
        self.learn(events);
    }

    /// Pairs of primary and secondary: noise learning. Halves that leave alone are expected
    /// (a secondary that failed or was slow): the comparison itself does not depend on them.
    fn learn(&self, events: Vec<PairEvent>) {
        for ev in events {
            let outcome = match ev {
                PairEvent::Pair { rule, epoch, endpoint, primary, shadow: ShadowHalf::Response(secondary), .. } => {
                    let Some(r) = self.rule(rule) else { continue };
                    let mut c = lock(&r.comparator);
                    // Noise learned in an epoch belongs to it, as the pairs do.
                    if self.is_retired() || c.epoch().number != epoch {
                        SecondaryOutcome::Epoch
                    } else {
                        c.observe_secondary(&endpoint, &primary, &secondary);
                        SecondaryOutcome::Learned
                    }
                }
                PairEvent::Pair { shadow: ShadowHalf::Failed(_), .. } => SecondaryOutcome::Failed,
                PairEvent::Unpaired { .. } => SecondaryOutcome::Unpaired,
            };
            self.metrics.record_secondary(outcome, 1);
        }
    }

    /// The primary's response, and which halves come for it. Its body is what extraction kept
    /// (`keep_response_body`).
    pub fn primary(&self, resp: &CapturedResponse, expected: Expected) {
        let now = self.now_ns();
        let mut t = lock(&self.table);
        let for_secondary = expected.secondary;
        if !expected.shadow {
            t.not_replayed += 1;
            drop(t);
            self.metrics.record_uncompared(Uncompared::NotReplayed, 1);
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
            t.secondary_pairs.primary(resp.request_id, sample.clone(), now, &mut learned);
        }
        t.pairs.primary(resp.request_id, sample, now, &mut events);
        self.settle(t, events);
        self.learn(learned);
    }

    /// The shadow's answer to request `id` of rule `rule` (its endpoint named as the metrics
    /// name it), or why there is none; `epoch`: [`epoch_of`](Self::epoch_of) the rule when the
    /// request went out.
    pub fn shadow(
        &self,
        id: u64,
        rule: RuleId,
        epoch: u64,
        endpoint: &str,
        half: ShadowHalf,
        trace: Option<TraceLink>,
    ) {
        if self.keep(rule).is_none() {
            return;
        }
        if self.is_retired() {
            self.metrics.record_unpaired(NotCompared::Epoch, 1);
            return;
        }
        let now = self.now_ns();
        let mut t = lock(&self.table);
        let mut events = std::mem::take(&mut t.events);
        t.pairs.shadow(id, Sent { rule, epoch, endpoint, trace: trace.map(Box::new) }, half, now, &mut events);
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
        let mut learned = Vec::new();
        t.secondary_pairs.drain(&mut learned);
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
            self.metrics.record_uncompared(Uncompared::ShadowMissing, alone);
        }
        for ev in pending {
            self.judge(ev);
        }
    }

    /// Whether a pair of `epoch` is stale (sent in an earlier epoch, or to a retired hub): then
    /// it is counted as such and dropped.
    fn stale(&self, c: &mut Comparator, epoch: u64) -> bool {
        if self.is_retired() {
            return true;
        }
        if c.epoch().number != epoch {
            c.drop_in_flight();
            return true;
        }
        false
    }

    fn judge(&self, ev: PairEvent) {
        match ev {
            PairEvent::Pair { rule, epoch, endpoint, mut primary, shadow, trace } => {
                let Some(r) = self.rule(rule) else { return };
                let mut c = lock(&r.comparator);
                if self.stale(&mut c, epoch) {
                    drop(c);
                    self.metrics.record_unpaired(NotCompared::Epoch, 1);
                    return;
                }
                // Another build answered: a new epoch starts, and this pair is its first.
                if let ShadowHalf::Response(s) = &shadow
                    && c.check_version(s, unix_ms) == VersionSeen::Changed
                {
                    announce(&self.metrics, r, &c);
                    tracing::info!("rule {}: comparison {}", r.name, c.epoch().describe());
                }
                // Extraction keeps the largest rule's cap; this rule may want less.
                if primary.body.len() > r.keep.max_body {
                    primary.body = Bytes::copy_from_slice(&primary.body[..r.keep.max_body]);
                    primary.body_complete = false;
                }
                let key = c.endpoint_key(&endpoint);
                let outcome = c.observe_half(&endpoint, &primary, &shadow, trace.as_deref());
                let shadow_side = match &shadow {
                    ShadowHalf::Response(s) => Some((s.status, s.latency)),
                    ShadowHalf::Failed(_) => None,
                };
                if let Some(feed) = self.ramp.get() {
                    feed.pair(
                        rule,
                        PairSeen {
                            primary_failed: primary.status >= 500,
                            shadow_failed: shadow_side.is_none_or(|(status, _)| status >= 500),
                            latencies: primary.latency.zip(shadow_side.and_then(|(_, l)| l)),
                        },
                    );
                }
                // Counted under the lock: an epoch start (which drops the rule's series) comes
                // before or after the whole pair.
                self.metrics.record_compared(&ComparedPair {
                    rule: &r.name,
                    endpoint: &key,
                    outcome,
                    primary_status: primary.status,
                    primary_latency: primary.latency.unwrap_or_default(),
                    shadow: shadow_side,
                });
                drop(c);
            }
            PairEvent::Unpaired { rule, epoch, endpoint, reason } => {
                let mut label = NotCompared::Unpaired(reason);
                if let Some(r) = self.rule(rule) {
                    let mut c = lock(&r.comparator);
                    if self.stale(&mut c, epoch) {
                        label = NotCompared::Epoch;
                    } else {
                        c.record_unpaired(&endpoint, reason);
                    }
                }
                self.metrics.record_unpaired(label, 1);
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
        DaemonReport { verdict, rules, pairs, egress: Vec::new() }
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

/// A new epoch started for `r` (its comparator `c` is in it): publish it for stamping and in
/// the metrics (the rule's comparison series restart from zero).
fn announce(metrics: &Metrics, r: &RuleCompare, c: &Comparator) {
    let e = c.epoch();
    r.epoch.store(e.number, Ordering::Relaxed);
    metrics.start_compare_epoch(&r.name, e.reason, e.started_unix_ms as f64 / 1000.0);
}

/// `reset [--rule NAME]`: the epochs started. `rules`: every rule's name, so that a rule that
/// exists but does not compare is told apart from an unknown one; either is an error and resets
/// nothing.
pub fn reset_epochs(hub: Option<&CompareHub>, rule: Option<&str>, rules: &[&str]) -> Result<Vec<RuleEpoch>, ErrorBody> {
    if let Some(name) = rule
        && !rules.contains(&name)
    {
        return Err(ErrorBody::new(
            ErrorKind::NoSuchRule,
            format!("no rule named '{name}' (rules: {})", rules.join(", ")),
        ));
    }
    let reset = match hub {
        Some(h) => h.reset(rule),
        None => match rule {
            Some(name) => Err(format!("rule '{name}' does not compare")),
            None => Ok(Vec::new()),
        },
    };
    reset.map_err(|msg| {
        ErrorBody::new(
            ErrorKind::InvalidArgument,
            format!("{msg} (no shadow, or comparison off): there is no comparison to reset"),
        )
    })
}

/// `report`: every comparing rule's report (none and INSUFFICIENT when nothing compares).
pub fn report_of(hub: Option<&CompareHub>) -> DaemonReport {
    hub.map_or_else(
        || DaemonReport {
            verdict: Verdict::Insufficient,
            rules: Vec::new(),
            pairs: PairStats::default(),
            egress: Vec::new(),
        },
        CompareHub::report,
    )
}

/// `diffs [--endpoint E]`: the mismatch samples kept (none when nothing compares).
pub fn diffs_of(hub: Option<&CompareHub>, endpoint: Option<&str>) -> Vec<RuleDiff> {
    hub.map(|h| h.diffs(endpoint)).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::{message::BodyFraming, metrics::TextFormat, segment::FlowId};

    fn hub(max_body: u64) -> Arc<CompareHub> {
        let s = CompareSettings { max_body_bytes: max_body, ..CompareSettings::default() };
        let rules = [("api".to_owned(), Some(&s)), ("off".to_owned(), None)];
        let h = CompareHub::new(&rules, PairLimits::default(), Arc::new(Metrics::new(10)))
            .unwrap()
            .expect("a rule compares");
        h.open(None);
        h
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

    /// The link between the production trace and the shadow's travels with the shadow's half,
    /// whichever half comes first, to the diffs, the report and its HTML page; a pair without
    /// one shows none.
    #[test]
    fn mismatching_pairs_show_both_trace_ids() {
        let h = hub(1024);
        let link =
            TraceLink::new(crate::label::TraceFormat::TraceParent, "4bf92f3577b34da6a3ce929d0e0e4736", [0xab; 16]);
        let shadow_id = "ab".repeat(16);
        h.primary(&primary(1, 200, br#"{"a":1}"#), Expected::SHADOW);
        h.shadow(1, RuleId::new(0), 1, "GET /a", shadow(200, br#"{"a":2}"#), Some(link));
        h.shadow(2, RuleId::new(0), 1, "GET /a", ShadowHalf::Failed(ShadowFailure::Timeout), Some(link));
        h.primary(&primary(2, 200, br#"{"a":1}"#), Expected::SHADOW);
        h.primary(&primary(3, 200, br#"{"a":1}"#), Expected::SHADOW);
        h.shadow(3, RuleId::new(0), 1, "GET /a", shadow(500, br#"{"a":1}"#), None);
        h.drain();
        let diffs = h.diffs(Some("GET /a"));
        let traces: Vec<Option<(&str, &str)>> =
            diffs.iter().map(|d| d.sample.trace.as_ref().map(|t| (t.production.as_str(), t.shadow.as_str()))).collect();
        let both = Some(("4bf92f3577b34da6a3ce929d0e0e4736", shadow_id.as_str()));
        assert_eq!(traces, [both, both, None], "the body mismatch, the failure, the untraced 500");
        assert!(
            diffs[0]
                .sample
                .render()
                .contains(&format!("production 4bf92f3577b34da6a3ce929d0e0e4736 shadow {shadow_id}"))
        );
        let r = h.report();
        let e = &r.rules[0].report.endpoints[0];
        assert_eq!(e.traces.iter().map(|t| t.seq).collect::<Vec<_>>(), [1, 2]);
        let html = r.rules[0].report.render_html();
        assert!(
            html.contains(&format!(
                "<td><code>4bf92f3577b34da6a3ce929d0e0e4736</code></td><td><code>{shadow_id}</code></td>"
            )),
            "{html}"
        );
    }

    #[test]
    fn halves_pair_in_either_order_and_every_leftover_is_counted() {
        let h = hub(1024);
        assert_eq!(h.keep_response_body(), 1024);
        assert!(h.keep(RuleId::new(0)).is_some() && h.keep(RuleId::new(1)).is_none());
        // 1: primary first; 2: shadow first; 3: differing body; 4: shadow failed.
        h.primary(&primary(1, 200, br#"{"a":1}"#), Expected::SHADOW);
        h.shadow(1, RuleId::new(0), 1, "GET /a", shadow(200, br#"{"a":1}"#), None);
        h.shadow(2, RuleId::new(0), 1, "GET /a", shadow(200, br#"{"a":1,"timestamp":2}"#), None);
        h.primary(&primary(2, 200, br#"{"a":1,"timestamp":1}"#), Expected::SHADOW);
        h.primary(&primary(3, 200, br#"{"a":1}"#), Expected::SHADOW);
        h.shadow(3, RuleId::new(0), 1, "GET /a", shadow(200, br#"{"a":2}"#), None);
        h.shadow(4, RuleId::new(0), 1, "GET /a", ShadowHalf::Failed(ShadowFailure::Timeout), None);
        h.primary(&primary(4, 200, br#"{"a":1}"#), Expected::SHADOW);
        // Not expected: a request that was never replayed.
        h.primary(&primary(99, 200, b"{}"), Expected::default());
        // A shadow half whose primary never comes, and a rule that does not compare.
        h.shadow(5, RuleId::new(0), 1, "GET /b", shadow(200, b"{}"), None);
        h.shadow(6, RuleId::new(1), 1, "GET /c", shadow(200, b"{}"), None);
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
            h.primary(&primary(id, 200, br#"{"a":1}"#), Expected::SHADOW);
        }
        let untimed = |status, body| match shadow(status, body) {
            ShadowHalf::Response(s) => ShadowHalf::Response(ResponseSample { latency: None, ..s }),
            other => other,
        };
        h.shadow(1, RuleId::new(0), 1, "GET /a", shadow(200, br#"{"a":1}"#), None);
        h.shadow(2, RuleId::new(0), 1, "GET /a", untimed(200, br#"{"a":1}"#), None);
        h.shadow(3, RuleId::new(0), 1, "GET /a", untimed(200, br#"{"a":2}"#), None);
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
            h.primary(&primary(id, 200, body), Expected::SHADOW);
            h.shadow(id, RuleId::new(0), 1, &format!("GET {path}"), half, None);
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
        h.primary(&primary(1, 200, br#"{"a":1}"#), Expected::SHADOW);
        h.shadow(1, RuleId::new(0), 1, "GET /a", shadow(200, br#"{"a":1}"#), None);
        let r = h.report();
        assert_eq!(r.rules[0].report.endpoints[0].summary.length_only, 1);
    }

    #[test]
    fn a_primary_waits_and_leaves_counted_when_no_shadow_result_comes() {
        let s = CompareSettings::default();
        let limits = PairLimits { timeout: Duration::ZERO, ..PairLimits::default() };
        let h = CompareHub::new(&[("api".into(), Some(&s))], limits, Arc::new(Metrics::new(10))).unwrap().unwrap();
        h.primary(&primary(1, 200, b"{}"), Expected::SHADOW);
        h.tick();
        assert_eq!(h.report().pairs.primary_shadow_missing, 1);
        assert_eq!(metric(&h, r#"shadow_compare_primary_uncompared_total{reason="shadow_missing"}"#), 1.0);
    }

    #[test]
    fn nothing_compares_without_settings() {
        let rules = [("a".to_owned(), None)];
        assert!(CompareHub::new(&rules, PairLimits::default(), Arc::new(Metrics::new(10))).unwrap().is_none());
    }

    fn exported(h: &CompareHub, prefix: &str) -> bool {
        h.metrics.encode(TextFormat::Prometheus).unwrap().lines().any(|l| l.starts_with(prefix))
    }

    fn two_rules(api: &CompareSettings) -> Arc<CompareHub> {
        let web = CompareSettings::default();
        let rules = [("api".to_owned(), Some(api)), ("off".to_owned(), None), ("web".to_owned(), Some(&web))];
        let h = CompareHub::new(&rules, PairLimits::default(), Arc::new(Metrics::new(10))).unwrap().unwrap();
        h.open(None);
        h
    }

    /// One pair of request `id`, the shadow's half stamped as replay stamps it (now, unless
    /// `epoch` says when it went out).
    fn pair(h: &CompareHub, id: u64, rule: usize, epoch: Option<u64>, half: ShadowHalf) {
        h.primary(&primary(id, 200, br#"{"a":1}"#), Expected::SHADOW);
        let rule = RuleId::new(rule);
        h.shadow(id, rule, epoch.unwrap_or_else(|| h.epoch_of(rule)), "GET /a", half, None);
    }

    fn samples(h: &CompareHub, rule: &str) -> u64 {
        let r = h.report();
        let r = r.rules.iter().find(|r| r.rule == rule).expect("rule reports");
        r.report.overall.samples
    }

    fn epoch(h: &CompareHub, rule: &str) -> EpochInfo {
        let r = h.report();
        r.rules.iter().find(|r| r.rule == rule).and_then(|r| r.report.epoch.clone()).expect("an epoch")
    }

    /// A target change (what a reload does when a rule keeps its comparison settings): the
    /// rule's aggregates and series start from zero, and a pair sent before and answered after is
    /// dropped and counted, never compared into the new epoch.
    #[test]
    fn a_new_target_starts_an_epoch_and_drops_the_pairs_in_flight() {
        let h = hub(1024);
        let first = epoch(&h, "api");
        assert_eq!((first.number, first.reason), (1, EpochReason::Start));
        assert!(first.started_unix_ms > 0, "dated when the hub opened");
        for id in 1..=3 {
            pair(&h, id, 0, None, shadow(200, br#"{"a":1}"#));
        }
        // Request 4 goes out in epoch 1; its primary is in, its shadow answer comes later.
        let sent_in = h.epoch_of(RuleId::new(0));
        h.primary(&primary(4, 200, br#"{"a":1}"#), Expected::SHADOW);
        // Request 5 too, and its answer comes before its primary.
        h.shadow(5, RuleId::new(0), sent_in, "GET /a", shadow(200, br#"{"a":1}"#), None);
        let lbl = r#"{rule="api",endpoint="GET /a""#;
        assert_eq!(metric(&h, &format!("shadow_comparisons_total{lbl},outcome=\"match\"}}")), 3.0);

        let started = h.start_epoch(RuleId::new(0), EpochReason::Target).expect("api compares");
        assert_eq!(
            (started.rule.as_str(), started.epoch.number, started.epoch.reason),
            ("api", 2, EpochReason::Target)
        );
        assert_eq!(h.epoch_of(RuleId::new(0)), 2);
        assert_eq!(samples(&h, "api"), 0, "epoch 1's pairs are gone");
        assert!(h.diffs(None).is_empty());
        assert!(!exported(&h, "shadow_comparisons_total{rule=\"api\""), "the old series left the registry");
        assert!(!exported(&h, "shadow_compared_latency_seconds_count{rule=\"api\""));

        h.shadow(4, RuleId::new(0), sent_in, "GET /a", shadow(500, b"{}"), None);
        h.primary(&primary(5, 200, br#"{"a":1}"#), Expected::SHADOW);
        assert_eq!(samples(&h, "api"), 0, "answers of the old target are not compared");
        assert_eq!(epoch(&h, "api").dropped_in_flight, 2);
        assert_eq!(metric(&h, r#"shadow_compare_unpaired_total{reason="epoch"}"#), 2.0);

        pair(&h, 6, 0, None, shadow(200, br#"{"a":1}"#));
        assert_eq!(samples(&h, "api"), 1);
        assert_eq!(metric(&h, &format!("shadow_comparisons_total{lbl},outcome=\"match\"}}")), 1.0, "from zero");
        assert_eq!(metric(&h, r#"shadow_compare_epochs_total{rule="api",reason="start"}"#), 1.0);
        assert_eq!(metric(&h, r#"shadow_compare_epochs_total{rule="api",reason="target"}"#), 1.0);
        let at = metric(&h, r#"shadow_compare_epoch_start_seconds{rule="api"}"#);
        assert!((at - started.epoch.started_unix_ms as f64 / 1000.0).abs() < 1e-3, "{at}");
        assert!(h.report().render_text().contains("epoch 2 since "), "{}", h.report().render_text());
        let page = h.report().rules[0].report.render_html();
        assert!(
            page.contains(r#"<p id="epoch" data-epoch="2" data-reason="target">Figures of epoch 2 since "#),
            "{page}"
        );
    }

    #[test]
    fn a_reset_of_one_rule_leaves_the_others_alone() {
        let h = two_rules(&CompareSettings::default());
        for id in 1..=2 {
            pair(&h, id, 0, None, shadow(200, br#"{"a":1}"#));
            pair(&h, 10 + id, 2, None, shadow(200, br#"{"a":1}"#));
        }
        let names = ["api", "off", "web"];
        let reset = reset_epochs(Some(&h), Some("api"), &names).expect("ok");
        assert_eq!(reset.len(), 1);
        assert_eq!(
            (reset[0].rule.as_str(), reset[0].epoch.number, reset[0].epoch.reason),
            ("api", 2, EpochReason::Reset)
        );
        assert_eq!((samples(&h, "api"), samples(&h, "web")), (0, 2));
        assert_eq!(epoch(&h, "web").number, 1);
        assert!(exported(&h, "shadow_comparisons_total{rule=\"web\""), "web's series stay");

        // Unknown, or not comparing: an error naming the rule, and nothing is reset.
        for (name, kind, says) in [
            ("nope", ErrorKind::NoSuchRule, "no rule named 'nope' (rules: api, off, web)"),
            ("off", ErrorKind::InvalidArgument, "rule 'off' does not compare"),
        ] {
            let e = reset_epochs(Some(&h), Some(name), &names).expect_err("an error");
            assert_eq!(e.kind, kind);
            assert!(e.message.starts_with(says), "{}", e.message);
        }
        assert_eq!((epoch(&h, "api").number, epoch(&h, "web").number), (2, 1));

        let all = reset_epochs(Some(&h), None, &names).expect("ok");
        let got: Vec<(&str, u64)> = all.iter().map(|e| (e.rule.as_str(), e.epoch.number)).collect();
        assert_eq!(got, [("api", 3), ("web", 2)]);
        assert_eq!(samples(&h, "web"), 0);
        assert_eq!(metric(&h, r#"shadow_compare_epochs_total{rule="api",reason="reset"}"#), 2.0);

        assert_eq!(reset_epochs(None, None, &names), Ok(Vec::new()), "nothing compares: nothing to reset");
        assert_eq!(reset_epochs(None, Some("api"), &names).expect_err("error").kind, ErrorKind::InvalidArgument);
    }

    fn versioned(version: Option<&str>, body: &'static [u8]) -> ShadowHalf {
        let mut headers = vec![("content-type".to_owned(), b"application/json".to_vec())];
        if let Some(v) = version {
            headers.push(("x-version".to_owned(), v.as_bytes().to_vec()));
        }
        ShadowHalf::Response(ResponseSample {
            status: 200,
            headers,
            body: Bytes::from_static(body),
            body_complete: true,
            body_len: body.len() as u64,
            latency: Some(Duration::from_millis(3)),
        })
    }

    /// The shadow's build as its version header says: the first value is recorded, a missing
    /// header is counted, another value starts an epoch whose first pair is the one carrying it;
    /// an answer of the old build sent before comes back dropped, and starts nothing.
    #[test]
    fn another_version_starts_an_epoch_with_the_response_that_carries_it() {
        let api = CompareSettings { version_header: Some("X-Version".into()), ..CompareSettings::default() };
        assert!(api.headers_needed().contains(&"x-version".to_owned()), "replay keeps the header");
        let h = two_rules(&api);
        pair(&h, 1, 0, None, versioned(Some("v1"), br#"{"a":1}"#));
        pair(&h, 2, 0, None, versioned(None, br#"{"a":1}"#));
        pair(&h, 3, 0, None, versioned(Some("v1"), br#"{"a":2}"#));
        pair(&h, 4, 2, None, versioned(Some("other"), br#"{"a":1}"#));
        let e = epoch(&h, "api");
        assert_eq!((e.number, e.version.as_deref(), e.version_missing), (1, Some("v1"), 1));
        assert_eq!(samples(&h, "api"), 3, "the response without the header is compared");
        assert_eq!(h.diffs(None).len(), 1);

        // Request 5 goes out now and its answer (the old build's) comes after the change.
        let old = h.epoch_of(RuleId::new(0));
        pair(&h, 6, 0, None, versioned(Some("v2"), br#"{"a":1}"#));
        let e = epoch(&h, "api");
        assert_eq!((e.number, e.reason), (2, EpochReason::Version));
        assert_eq!((e.version.as_deref(), e.previous_version.as_deref()), (Some("v2"), Some("v1")));
        assert_eq!(samples(&h, "api"), 1, "the response that carries the new value is the epoch's first");
        assert!(h.diffs(None).is_empty(), "the old epoch's mismatch sample is gone");
        pair(&h, 5, 0, Some(old), versioned(Some("v1"), br#"{"a":1}"#));
        let e = epoch(&h, "api");
        assert_eq!((e.number, e.dropped_in_flight, samples(&h, "api")), (2, 1, 1), "no flip back to v1");
        assert_eq!(metric(&h, r#"shadow_compare_epochs_total{rule="api",reason="version"}"#), 1.0);
        assert_eq!(
            metric(&h, r#"shadow_comparisons_total{rule="api",endpoint="GET /a",outcome="body_mismatch"}"#),
            0.0,
            "the old epoch's mismatch is not in the series"
        );
        // The other rule has no version header: its differing values start nothing.
        pair(&h, 7, 2, None, versioned(Some("another"), br#"{"a":1}"#));
        assert_eq!((epoch(&h, "web").number, samples(&h, "web")), (1, 2));
        assert!(h.report().render_text().contains("(version: v1 -> v2)"));
    }

    #[test]
    fn a_missing_version_header_is_counted_and_starts_nothing() {
        let api = CompareSettings { version_header: Some("x-version".into()), ..CompareSettings::default() };
        let h = two_rules(&api);
        for id in 1..=3 {
            pair(&h, id, 0, None, versioned(None, br#"{"a":1}"#));
        }
        pair(&h, 4, 0, None, ShadowHalf::Failed(ShadowFailure::Timeout));
        pair(&h, 5, 0, None, versioned(Some("v1"), br#"{"a":1}"#));
        pair(&h, 6, 0, None, versioned(None, br#"{"a":1}"#));
        let e = epoch(&h, "api");
        assert_eq!((e.number, e.version.as_deref(), e.version_missing), (1, Some("v1"), 4));
        assert_eq!(samples(&h, "api"), 6);
    }

    /// A reload that changes the rules' names or settings builds a new hub: a rule it keeps goes
    /// on counting epochs, a removed rule leaves the metrics, and the old hub takes nothing more.
    #[test]
    fn a_new_hub_continues_the_epochs_of_the_one_it_replaces() {
        let s = CompareSettings::default();
        let metrics = Arc::new(Metrics::new(10));
        let rules = [("api".to_owned(), Some(&s)), ("gone".to_owned(), Some(&s)), ("web".to_owned(), Some(&s))];
        let old = CompareHub::new(&rules, PairLimits::default(), metrics.clone()).unwrap().unwrap();
        old.open(None);
        for (id, rule) in [(1, 0), (2, 1), (3, 2)] {
            pair(&old, id, rule, None, shadow(200, br#"{"a":1}"#));
        }
        let sent_in = old.epoch_of(RuleId::new(0));
        old.primary(&primary(9, 200, b"{}"), Expected::SHADOW);
        let rules = [("api".to_owned(), Some(&s)), ("web".to_owned(), Some(&s)), ("new".to_owned(), Some(&s))];
        let new = CompareHub::new(&rules, PairLimits::default(), metrics.clone()).unwrap().unwrap();
        new.open(Some((&old, &["web".to_owned()])));
        let got: Vec<(String, u64, EpochReason)> = new
            .report()
            .rules
            .iter()
            .map(|r| r.report.epoch.clone().map(|e| (r.rule.clone(), e.number, e.reason)).unwrap())
            .collect();
        assert_eq!(
            got,
            [
                ("api".into(), 2, EpochReason::Reload),
                ("web".into(), 2, EpochReason::Target),
                ("new".into(), 1, EpochReason::Start)
            ]
        );
        assert!(!exported(&new, "shadow_compare_epoch_start_seconds{rule=\"gone\""));
        assert!(!exported(&new, "shadow_comparisons_total{rule=\"gone\""));
        assert!(!exported(&new, "shadow_comparisons_total{rule=\"api\""), "api restarts from zero");
        // The old replay lanes still answer to the old hub: counted, not compared anywhere.
        old.shadow(9, RuleId::new(0), sent_in, "GET /a", shadow(200, b"{}"), None);
        assert_eq!(metric(&new, r#"shadow_compare_unpaired_total{reason="epoch"}"#), 1.0);
        assert_eq!(samples(&old, "api"), 1, "the old hub compared nothing more");
    }

    /// A report saved before epochs existed still reads, and renders without an epoch line.
    #[test]
    fn a_saved_report_without_epochs_reads() {
        let h = hub(1024);
        pair(&h, 1, 0, None, shadow(200, br#"{"a":1}"#));
        let mut v = serde_json::to_value(h.report()).expect("encode");
        let back: DaemonReport = serde_json::from_value(v.clone()).expect("round trip");
        assert_eq!(back, h.report());
        for r in v["rules"].as_array_mut().expect("rules") {
            r["report"].as_object_mut().expect("report").remove("epoch").expect("an epoch was saved");
        }
        let old: DaemonReport = serde_json::from_value(v).expect("an older report reads");
        assert_eq!(old.rules[0].report.epoch, None);
        assert!(!old.render_text().contains("epoch"), "{}", old.render_text());
        assert_eq!(old.rules[0].report.overall.samples, 1);
    }

    #[test]
    fn replay_errors_map_to_shadow_failures() {
        assert_eq!(shadow_failure(ShadowErrorKind::Timeout), ShadowFailure::Timeout);
        assert_eq!(shadow_failure(ShadowErrorKind::ConnectRefused), ShadowFailure::Connect);
        assert_eq!(shadow_failure(ShadowErrorKind::BadResponse), ShadowFailure::InvalidResponse);
    }
}
