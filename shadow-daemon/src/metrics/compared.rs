//! The comparison's series: the contract the fleet rules read (deploy/prometheus/README.md) and
//! the pair table's own gauges and counters. Outcome and reason labels are [`crate::label`]'s
//! enums: this sink knows no stage.

use std::{
    collections::HashMap,
    sync::{Mutex, atomic::AtomicU64},
    time::Duration,
};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, NativeHistogramConfig},
    },
    registry::{Registry, Unit},
};

use super::lock;
use crate::label::{EpochReason, NotCompared, Outcome, ResponseClass, SecondaryOutcome, Side, Uncompared};

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// The contract's latency bucket bounds in seconds: `1e-4 * 2^(k/8)` for k = 0..=146, rounded to
/// 4 significant digits (consecutive bounds within a factor 1.0914; 100 µs to 31 s).
pub fn compared_latency_buckets() -> Vec<f64> {
    (0..=146)
        .map(|k| {
            let v = 1e-4 * 2f64.powf(f64::from(k) / 8.0);
            format!("{v:.3e}").parse().unwrap_or(v)
        })
        .collect()
}

/// The native buckets' schema: growth factor 2^(2^-3) = 1.0905, the classic bounds' own.
pub(super) const NATIVE_SCHEMA: i8 = 3;
/// At most this many native buckets per series: 100 µs to 31 s at schema 3 is 147, so the cap
/// only bites on a wider spread, where the client halves the resolution instead of growing.
pub(super) const NATIVE_MAX_BUCKETS: usize = 160;

/// Classic buckets for the text formats (the contract's rules read them) and native buckets for
/// a Prometheus that scrapes protobuf with native histograms on: one series per endpoint and side
/// instead of 149.
pub fn compared_histogram() -> Histogram {
    Histogram::new_classic_and_native(
        compared_latency_buckets(),
        NativeHistogramConfig::with_schema(NATIVE_SCHEMA).max_buckets(NATIVE_MAX_BUCKETS),
    )
}

/// The same bounds without native buckets: what the bench sets against [`compared_histogram`].
#[cfg(any(test, feature = "test-util"))]
pub fn classic_only_compared_histogram() -> Histogram {
    Histogram::new(compared_latency_buckets())
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    rule: String,
    endpoint: String,
    outcome: Outcome,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClassLabels {
    rule: String,
    endpoint: String,
    side: Side,
    class: ResponseClass,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SideLabels {
    rule: String,
    endpoint: String,
    side: Side,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UnpairedLabels {
    reason: NotCompared,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UncomparedLabels {
    reason: Uncompared,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SecondaryLabels {
    reason: SecondaryOutcome,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RuleLabels {
    rule: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RuleReasonLabels {
    rule: String,
    reason: EpochReason,
}

/// One endpoint's series, looked up once (then each pair is a few atomic adds).
struct Series {
    /// By [`Outcome::index`].
    outcomes: [Counter; Outcome::COUNT],
    primary: [Counter; 5],
    shadow: [Counter; 5],
    shadow_error: Counter,
    primary_latency: Histogram,
    shadow_latency: Histogram,
}

/// One compared pair, as the series count it.
#[derive(Clone, Copy, Debug)]
pub struct ComparedPair<'a> {
    pub rule: &'a str,
    pub endpoint: &'a str,
    /// Every outcome is exported, at zero, from an endpoint's first pair on.
    pub outcome: Outcome,
    pub primary_status: u16,
    pub primary_latency: Duration,
    /// `None`: the shadow gave no response (class `error`, no shadow latency).
    pub shadow: Option<(u16, Option<Duration>)>,
}

pub(super) struct Compared {
    outcomes: Family<OutcomeLabels, Counter>,
    responses: Family<ClassLabels, Counter>,
    latency: HistogramFamily<SideLabels>,
    /// (rule, endpoint) → its series. Bounded by the comparators' endpoint caps.
    series: Mutex<HashMap<(String, String), Series>>,
    waiting: Gauge,
    waiting_bytes: Gauge,
    unpaired: Family<UnpairedLabels, Counter>,
    uncompared: Family<UncomparedLabels, Counter>,
    secondary: Family<SecondaryLabels, Counter>,
    epoch_start: Family<RuleLabels, Gauge<f64, AtomicU64>>,
    epochs: Family<RuleReasonLabels, Counter>,
}

impl Compared {
    pub(super) fn register(registry: &mut Registry) -> Self {
        let c = Self {
            outcomes: Family::default(),
            responses: Family::default(),
            latency: HistogramFamily::new_with_constructor(compared_histogram),
            series: Mutex::new(HashMap::new()),
            waiting: Gauge::default(),
            waiting_bytes: Gauge::default(),
            unpaired: Family::default(),
            uncompared: Family::default(),
            secondary: Family::default(),
            epoch_start: Family::default(),
            epochs: Family::default(),
        };
        registry.register("shadow_comparisons", "Compared primary/shadow pairs by outcome", c.outcomes.clone());
        registry.register(
            "shadow_compared_responses",
            "Responses of compared pairs by side and status class (error: the shadow gave none)",
            c.responses.clone(),
        );
        registry.register_with_unit(
            "shadow_compared_latency",
            "Latencies of compared pairs, request's last byte to response's last byte",
            Unit::Seconds,
            c.latency.clone(),
        );
        registry.register(
            "shadow_compare_pairs_waiting",
            "Halves of pairs waiting for the other (primary or shadow response)",
            c.waiting.clone(),
        );
        registry.register_with_unit(
            "shadow_compare_pairs_waiting",
            "Bytes held by halves of pairs waiting for the other",
            Unit::Bytes,
            c.waiting_bytes.clone(),
        );
        registry.register(
            "shadow_compare_unpaired",
            "Replayed requests never compared, by reason (primary_missing: the primary's response was not \
             captured in time; memory_bound: evicted by the pair table's bounds; epoch: sent in an earlier \
             comparison epoch of its rule, dropped)",
            c.unpaired.clone(),
        );
        registry.register(
            "shadow_compare_primary_uncompared",
            "Primary responses not compared, by reason (not_replayed: no shadow request was made for it; \
             shadow_missing: the shadow's result never came or was evicted)",
            c.uncompared.clone(),
        );
        registry.register(
            "shadow_compare_secondary",
            "Responses of the secondary (noise learning), by what became of them (learned: paired with the \
             primary's and learned from; failed: the secondary gave none; unpaired: its primary never came; \
             epoch: sent in an earlier comparison epoch of its rule, not learned from)",
            c.secondary.clone(),
        );
        registry.register_with_unit(
            "shadow_compare_epoch_start",
            "Unix time the rule's current comparison epoch started (its per-endpoint comparison series \
             count from then)",
            Unit::Seconds,
            c.epoch_start.clone(),
        );
        registry.register(
            "shadow_compare_epochs",
            "Comparison epochs started, by rule and reason (start, target, reset, version, reload)",
            c.epochs.clone(),
        );
        c
    }

    /// A new epoch of `rule`: its per-endpoint series leave the registry (they come back from
    /// zero with the epoch's first pair), its start time is set, the epoch counted.
    pub(super) fn start_epoch(&self, rule: &str, reason: EpochReason, started_unix_secs: f64) {
        self.forget_series(rule);
        self.epoch_start.get_or_create(&RuleLabels { rule: rule.to_owned() }).set(started_unix_secs);
        self.epochs.get_or_create(&RuleReasonLabels { rule: rule.to_owned(), reason }).inc();
    }

    /// A rule that no longer compares: every series of it leaves.
    pub(super) fn forget_rule(&self, rule: &str) {
        self.forget_series(rule);
        self.epoch_start.remove(&RuleLabels { rule: rule.to_owned() });
        for reason in EpochReason::ALL {
            self.epochs.remove(&RuleReasonLabels { rule: rule.to_owned(), reason });
        }
    }

    fn forget_series(&self, rule: &str) {
        let mut map = lock(&self.series);
        map.retain(|(r, endpoint), _| {
            if r != rule {
                return true;
            }
            let (rule, endpoint) = (r.clone(), endpoint.clone());
            for outcome in Outcome::ALL {
                self.outcomes.remove(&OutcomeLabels { rule: rule.clone(), endpoint: endpoint.clone(), outcome });
            }
            for side in Side::ALL {
                for class in ResponseClass::ALL {
                    self.responses.remove(&ClassLabels { rule: rule.clone(), endpoint: endpoint.clone(), side, class });
                }
                self.latency.remove(&SideLabels { rule: rule.clone(), endpoint: endpoint.clone(), side });
            }
            false
        });
    }

    fn series<'m>(map: &'m mut HashMap<(String, String), Series>, me: &Self, p: &ComparedPair<'_>) -> &'m Series {
        let key = (p.rule.to_owned(), p.endpoint.to_owned());
        map.entry(key).or_insert_with(|| {
            let (rule, endpoint) = (p.rule.to_owned(), p.endpoint.to_owned());
            let class = |side: Side, class: ResponseClass| {
                me.responses
                    .get_or_create(&ClassLabels { rule: rule.clone(), endpoint: endpoint.clone(), side, class })
                    .clone()
            };
            let outcome = |outcome: Outcome| {
                me.outcomes
                    .get_or_create(&OutcomeLabels { rule: rule.clone(), endpoint: endpoint.clone(), outcome })
                    .clone()
            };
            let latency = |side: Side| {
                me.latency.get_or_create(&SideLabels { rule: rule.clone(), endpoint: endpoint.clone(), side }).clone()
            };
            Series {
                outcomes: Outcome::ALL.map(outcome),
                primary: ResponseClass::STATUS.map(|c| class(Side::Primary, c)),
                shadow: ResponseClass::STATUS.map(|c| class(Side::Shadow, c)),
                shadow_error: class(Side::Shadow, ResponseClass::Error),
                primary_latency: latency(Side::Primary),
                shadow_latency: latency(Side::Shadow),
            }
        })
    }

    pub(super) fn record(&self, p: &ComparedPair<'_>) {
        let mut map = lock(&self.series);
        let s = Self::series(&mut map, self, p);
        s.outcomes[p.outcome.index()].inc();
        s.primary[ResponseClass::of(p.primary_status).index()].inc();
        s.primary_latency.observe(p.primary_latency.as_secs_f64());
        match p.shadow {
            Some((status, latency)) => {
                s.shadow[ResponseClass::of(status).index()].inc();
                // Untimed: read behind another response of a pipeline.
                if let Some(l) = latency {
                    s.shadow_latency.observe(l.as_secs_f64());
                }
            }
            None => {
                s.shadow_error.inc();
            }
        }
    }

    pub(super) fn set_waiting(&self, halves: usize, bytes: usize) {
        self.waiting.set(i64::try_from(halves).unwrap_or(i64::MAX));
        self.waiting_bytes.set(i64::try_from(bytes).unwrap_or(i64::MAX));
    }

    pub(super) fn unpaired(&self, reason: NotCompared, n: u64) {
        self.unpaired.get_or_create(&UnpairedLabels { reason }).inc_by(n);
    }

    pub(super) fn uncompared(&self, reason: Uncompared, n: u64) {
        self.uncompared.get_or_create(&UncomparedLabels { reason }).inc_by(n);
    }

    pub(super) fn secondary(&self, reason: SecondaryOutcome, n: u64) {
        self.secondary.get_or_create(&SecondaryLabels { reason }).inc_by(n);
    }
}
