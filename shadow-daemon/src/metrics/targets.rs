//! Per shadow target: how its exchanges failed and whether it is backed off (shadow protection,
//! see `replay::backoff`). One label set per rule and [`Role`], so the series
//! are bounded by the rules. The handles are looked up once, when a lane starts; a request then
//! costs at most an atomic add.

use std::sync::atomic::AtomicU64;

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::{Registry, Unit},
};

use crate::label::{Role, TargetFailure};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TargetLabels {
    rule: String,
    role: Role,
    target: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FailureLabels {
    rule: String,
    role: Role,
    target: String,
    kind: TargetFailure,
}

/// The families, registered once.
pub(super) struct Targets {
    failures: Family<FailureLabels, Counter>,
    backoffs: Family<TargetLabels, Counter>,
    backed_off: Family<TargetLabels, Gauge>,
    delay: Family<TargetLabels, Gauge<f64, AtomicU64>>,
}

impl Targets {
    pub(super) fn register(registry: &mut Registry) -> Self {
        let t = Self {
            failures: Family::default(),
            backoffs: Family::default(),
            backed_off: Family::default(),
            delay: Family::default(),
        };
        registry.register(
            "shadow_target_failures",
            "Failed exchanges with a shadow target, by kind; consecutive ones back the target off",
            t.failures.clone(),
        );
        registry.register(
            "shadow_target_backoffs",
            "Backoff periods a shadow target entered (after consecutive failures, or a failed probe)",
            t.backoffs.clone(),
        );
        registry.register(
            "shadow_target_backed_off",
            "1 while a shadow target is backed off (its requests dropped as shadow_backoff), else 0",
            t.backed_off.clone(),
        );
        registry.register_with_unit(
            "shadow_target_backoff",
            "Length of a shadow target's current backoff period (0 when not backed off)",
            Unit::Seconds,
            t.delay.clone(),
        );
        t
    }

    pub(super) fn target(&self, rule: &str, role: Role, target: &str) -> TargetMetrics {
        let labels = TargetLabels { rule: rule.to_owned(), role, target: target.to_owned() };
        let failures = TargetFailure::ALL.map(|kind| {
            self.failures
                .get_or_create(&FailureLabels { rule: labels.rule.clone(), role, target: labels.target.clone(), kind })
                .clone()
        });
        let m = TargetMetrics {
            failures,
            backoffs: self.backoffs.get_or_create(&labels).clone(),
            backed_off: self.backed_off.get_or_create(&labels).clone(),
            delay: self.delay.get_or_create(&labels).clone(),
        };
        // A lane starts healthy (also after a reload that kept the rule).
        m.set_backed_off(None);
        m
    }
}

/// One target's series.
#[derive(Clone, Debug, Default)]
pub struct TargetMetrics {
    failures: [Counter; TargetFailure::ALL.len()],
    backoffs: Counter,
    backed_off: Gauge,
    delay: Gauge<f64, AtomicU64>,
}

impl TargetMetrics {
    pub fn failure(&self, kind: TargetFailure) {
        self.failures[kind.index()].inc();
    }

    /// A backoff period of `seconds` started.
    pub fn backoff_entered(&self, seconds: f64) {
        self.backoffs.inc();
        self.set_backed_off(Some(seconds));
    }

    /// `None`: healthy again.
    pub fn set_backed_off(&self, seconds: Option<f64>) {
        self.backed_off.set(i64::from(seconds.is_some()));
        self.delay.set(seconds.unwrap_or(0.0));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_kinds_index_their_counters() {
        for (i, k) in TargetFailure::ALL.iter().enumerate() {
            assert_eq!(*k as usize, i, "{k:?}");
        }
    }
}
