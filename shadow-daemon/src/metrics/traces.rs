//! What replay did to the trace context of the requests it sent, per rule
//! (`shadow_trace_contexts_total{rule,format,action}`, see `replay::trace`). The series a rule
//! can have are created when its lane starts (at zero, so a rate over them is defined from the
//! start); a request then costs an atomic add per (format, action) it had.

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family},
    registry::Registry,
};

use crate::label::{TraceAction, TraceFormat};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TraceLabels {
    rule: String,
    format: TraceFormat,
    action: TraceAction,
}

/// The (format, action) pairs that can happen: every id-carrying format is restarted, kept or
/// removed; `baggage` is marked or full.
fn possible(format: TraceFormat, action: TraceAction) -> bool {
    match format {
        TraceFormat::Baggage => matches!(action, TraceAction::Marked | TraceAction::BaggageFull),
        _ => matches!(action, TraceAction::Restarted | TraceAction::Kept | TraceAction::Removed),
    }
}

pub(super) struct Traces {
    family: Family<TraceLabels, Counter>,
}

impl Traces {
    pub(super) fn register(registry: &mut Registry) -> Self {
        let family = Family::default();
        registry.register(
            "shadow_trace_contexts",
            "Replayed requests by trace-context format and what was done to it (restarted: fresh ids; kept: \
             --trace keep; removed: not understood; marked / baggage_full: the shadow baggage member added or not)",
            family.clone(),
        );
        Self { family }
    }

    pub(super) fn rule(&self, rule: &str) -> TraceMetrics {
        let counters = TraceFormat::ALL.map(|format| {
            TraceAction::ALL.map(|action| {
                possible(format, action)
                    .then(|| self.family.get_or_create(&TraceLabels { rule: rule.to_owned(), format, action }).clone())
            })
        });
        TraceMetrics { counters }
    }
}

/// One rule's series.
#[derive(Clone, Debug, Default)]
pub struct TraceMetrics {
    counters: [[Option<Counter>; TraceAction::COUNT]; TraceFormat::COUNT],
}

impl TraceMetrics {
    /// One request's (format, action) pairs, each once.
    pub fn record(&self, happened: impl Iterator<Item = (TraceFormat, TraceAction)>) {
        for (format, action) in happened {
            if let Some(c) = &self.counters[format.index()][action.index()] {
                c.inc();
            }
        }
    }
}
