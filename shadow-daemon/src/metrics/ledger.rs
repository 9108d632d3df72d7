//! The request ledger: every request the extraction stage saw ends in exactly one outcome, so that
//! at every scrape
//!
//! ```text
//! shadow_requests_captured_total = shadow_requests_replayed_total
//!     + sum(shadow_requests_dropped_total) + shadow_requests_in_flight
//! ```
//!
//! The four values are kept under one lock and published from one snapshot; a request that is
//! admitted carries a [`RequestTicket`] that settles it exactly once, and a ticket that is dropped
//! unsettled (shutdown, an aborted task) settles as `shutdown`, so nothing leaves the ledger
//! silently.
//!
//! A request the extraction stage has begun and not yet handed over (still arriving, or held for
//! the primary's answer or for the evidence that an early answer was in step) is captured and in
//! flight too: the stage reports how many it holds ([`Ledger::extraction`]), and each admission
//! takes one of them over, so captured never goes down and the identity holds at every scrape.

use std::{
    collections::BTreeMap,
    fmt,
    ops::{Deref, Index},
    sync::{Arc, Mutex},
};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
};
use serde::{Deserialize, Serialize};

use super::lock;
use crate::label::{DropReason, Dropped, RequestDrop};

#[derive(Clone, Debug, Default)]
pub(super) struct Ledger {
    captured: u64,
    replayed: u64,
    in_flight: u64,
    /// Requests the extraction stage holds, as it last reported, less those admitted since:
    /// captured and in flight, on top of the two above.
    extracting: u64,
    /// By reason: the extraction stage's and the replay stage's.
    dropped: BTreeMap<Dropped, u64>,
}

impl Ledger {
    /// Every replay reason present at zero, so a scrape shows what can happen before it does.
    pub(super) fn shared() -> Arc<Mutex<Self>> {
        Arc::new(Mutex::new(Self {
            dropped: RequestDrop::ALL.into_iter().map(|r| (Dropped::Replay(r), 0)).collect(),
            ..Self::default()
        }))
    }

    fn drop_one(&mut self, reason: Dropped) {
        *self.dropped.entry(reason).or_default() += 1;
    }

    /// Admit one captured request (captured and in flight); the ticket settles it.
    pub(super) fn admit(ledger: &Arc<Mutex<Self>>) -> RequestTicket {
        {
            let mut l = lock(ledger);
            l.captured += 1;
            l.in_flight += 1;
            // Most admitted requests were held by extraction when it last reported: this one
            // moves from there, and the published totals do not count it twice. (One that
            // began and ended between two reports takes another's place until the next report,
            // which only ever raises the totals back.)
            l.extracting = l.extracting.saturating_sub(1);
        }
        RequestTicket { ledger: ledger.clone(), settled: false }
    }

    /// A request seen and dropped in one step (by the extraction stage).
    pub(super) fn captured_and_dropped(&mut self, reason: DropReason) {
        self.captured += 1;
        self.drop_one(Dropped::Extraction(reason));
    }

    /// The extraction stage's report, in one step: requests it dropped since its last report,
    /// by reason, and how many it holds now (begun, not yet handed over or dropped). Call it
    /// when everything it handed over has been admitted.
    pub(super) fn extraction(&mut self, dropped: &[(DropReason, u64)], holding: u64) {
        for &(reason, n) in dropped {
            self.captured += n;
            *self.dropped.entry(Dropped::Extraction(reason)).or_default() += n;
        }
        self.extracting = holding;
    }

    /// (captured, replayed, in flight): what extraction holds is captured and in flight.
    fn totals(&self) -> (u64, u64, u64) {
        (self.captured + self.extracting, self.replayed, self.in_flight + self.extracting)
    }

    pub(super) fn counts(&self) -> RequestCounts {
        let (captured, replayed, in_flight) = self.totals();
        RequestCounts {
            captured,
            replayed,
            in_flight,
            dropped: DropCounts(self.dropped.iter().map(|(k, v)| (k.as_str().to_owned(), *v)).collect()),
        }
    }
}

/// One admitted request's place in the ledger; settle it with [`replayed`](Self::replayed) or
/// [`dropped`](Self::dropped). Dropping it unsettled counts it as dropped for `shutdown`.
#[derive(Debug)]
#[must_use = "an unsettled ticket counts as dropped (shutdown)"]
pub struct RequestTicket {
    ledger: Arc<Mutex<Ledger>>,
    settled: bool,
}

impl RequestTicket {
    pub fn replayed(mut self) {
        self.settled = true;
        let mut l = lock(&self.ledger);
        l.in_flight = l.in_flight.saturating_sub(1);
        l.replayed += 1;
    }

    pub fn dropped(mut self, reason: RequestDrop) {
        self.settled = true;
        self.settle_dropped(reason);
    }

    fn settle_dropped(&self, reason: RequestDrop) {
        let mut l = lock(&self.ledger);
        l.in_flight = l.in_flight.saturating_sub(1);
        l.drop_one(Dropped::Replay(reason));
    }
}

impl Drop for RequestTicket {
    fn drop(&mut self) {
        if !self.settled {
            self.settle_dropped(RequestDrop::Shutdown);
        }
    }
}

/// Dropped requests by label (as the summary and `shadowctl` carry them); indexed by a label, a
/// [`DropReason`] or a [`RequestDrop`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct DropCounts(pub BTreeMap<String, u64>);

impl Deref for DropCounts {
    type Target = BTreeMap<String, u64>;

    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl Index<&str> for DropCounts {
    type Output = u64;

    fn index(&self, label: &str) -> &u64 {
        &self.0[label]
    }
}

impl Index<RequestDrop> for DropCounts {
    type Output = u64;

    fn index(&self, reason: RequestDrop) -> &u64 {
        &self.0[reason.as_str()]
    }
}

impl Index<DropReason> for DropCounts {
    type Output = u64;

    fn index(&self, reason: DropReason) -> &u64 {
        &self.0[reason.as_str()]
    }
}

impl<'a> IntoIterator for &'a DropCounts {
    type IntoIter = std::collections::btree_map::Iter<'a, String, u64>;
    type Item = (&'a String, &'a u64);

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

/// The ledger as numbers.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestCounts {
    pub captured: u64,
    pub replayed: u64,
    pub in_flight: u64,
    /// By reason; every known replay reason is present, zero or not.
    pub dropped: DropCounts,
}

impl RequestCounts {
    pub fn dropped_total(&self) -> u64 {
        self.dropped.values().sum()
    }

    /// `captured = replayed + dropped + in_flight`.
    pub fn reconciles(&self) -> bool {
        self.captured == self.replayed + self.dropped_total() + self.in_flight
    }
}

/// Publishes the ledger from one snapshot, so the identity holds within every scrape.
#[derive(Debug)]
pub(super) struct LedgerCollector(pub(super) Arc<Mutex<Ledger>>);

impl Collector for LedgerCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        // One snapshot: the identity holds within the scrape.
        let l = lock(&self.0).clone();
        let (captured, replayed, in_flight) = l.totals();
        let counter = |encoder: &mut DescriptorEncoder, name: &str, help: &str, v: u64| -> Result<(), fmt::Error> {
            let c = ConstCounter::new(v);
            c.encode(encoder.encode_descriptor(name, help, None, c.metric_type())?)
        };
        counter(
            &mut encoder,
            "shadow_requests_captured",
            "HTTP requests seen by the extraction stage, whatever became of them.",
            captured,
        )?;
        counter(
            &mut encoder,
            "shadow_requests_replayed",
            "Requests replayed to the shadow and answered with a complete response.",
            replayed,
        )?;
        let mut family = encoder.encode_descriptor(
            "shadow_requests_dropped",
            "Requests not replayed (or replayed without a usable response), by reason.",
            None,
            MetricType::Counter,
        )?;
        for (&reason, v) in &l.dropped {
            ConstCounter::new(*v).encode(family.encode_family(&[("reason", reason)])?)?;
        }
        let g = ConstGauge::new(i64::try_from(in_flight).unwrap_or(i64::MAX));
        g.encode(encoder.encode_descriptor(
            "shadow_requests_in_flight",
            "Requests captured and not settled yet: being extracted (still arriving, or held for the primary's answer), queued or being replayed.",
            None,
            g.metric_type(),
        )?)?;
        let g = ConstGauge::new(i64::try_from(l.extracting).unwrap_or(i64::MAX));
        g.encode(encoder.encode_descriptor(
            "shadow_requests_extracting",
            "Of the requests in flight, those the extraction stage holds: still arriving, or held for the primary's answer (or for the evidence that an early answer served them); each ends by the flow idle timeout at the latest.",
            None,
            g.metric_type(),
        )?)
    }
}

#[cfg(test)]
mod tests;
