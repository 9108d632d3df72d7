//! What the daemon prints at exit (and `--summary-file` holds): the ledger, shadow outcomes and
//! exact latency percentiles, overall and per endpoint.

use std::{collections::BTreeMap, fmt};

use serde::{Deserialize, Serialize};

use super::ledger::RequestCounts;

/// Percentiles of one latency distribution, in milliseconds (0 when empty).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LatencySummary {
    pub count: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl LatencySummary {
    pub(super) fn of<T: hdrhistogram::Counter>(h: &hdrhistogram::Histogram<T>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Self {
            count: h.len(),
            p50_ms: ms(h.value_at_quantile(0.50)),
            p90_ms: ms(h.value_at_quantile(0.90)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            max_ms: ms(h.max()),
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SideLatency {
    pub first_byte: LatencySummary,
    pub complete: LatencySummary,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct EndpointSummary {
    pub endpoint: String,
    /// Request to complete response.
    pub primary: LatencySummary,
    pub shadow: LatencySummary,
}

/// What the daemon prints at exit and the demo shows.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub requests: RequestCounts,
    /// `captured = replayed + dropped + in_flight` held for these numbers.
    pub reconciles: bool,
    pub shadow_responses: BTreeMap<String, u64>,
    pub shadow_errors: BTreeMap<String, u64>,
    pub primary: SideLatency,
    pub shadow: SideLatency,
    /// Busiest first.
    pub endpoints: Vec<EndpointSummary>,
    pub endpoint_overflow: u64,
    pub primary_unmatched: u64,
    /// Writes to the shadow (one per request sent alone, one per pipeline), and the requests
    /// that rode behind another in one: requests per write = (writes + pipelined) / writes.
    #[serde(default)]
    pub replay_writes: u64,
    #[serde(default)]
    pub replay_pipelined: u64,
    pub kernel: BTreeMap<String, u64>,
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r = &self.requests;
        writeln!(
            f,
            "requests: captured {}  replayed {}  dropped {}  in flight {}{}",
            r.captured,
            r.replayed,
            r.dropped_total(),
            r.in_flight,
            if self.reconciles { "" } else { "  (DOES NOT RECONCILE)" }
        )?;
        let nonzero = |m: &BTreeMap<String, u64>| {
            m.iter().filter(|(_, v)| **v > 0).map(|(k, v)| format!("{k} {v}")).collect::<Vec<_>>().join(", ")
        };
        for (label, m) in [
            ("dropped", &r.dropped.0),
            ("shadow responses", &self.shadow_responses),
            ("shadow errors", &self.shadow_errors),
        ] {
            let s = nonzero(m);
            if !s.is_empty() {
                writeln!(f, "{label}: {s}")?;
            }
        }
        if self.replay_writes > 0 {
            let per = (self.replay_writes + self.replay_pipelined) as f64 / self.replay_writes as f64;
            writeln!(
                f,
                "writes to the shadow: {} ({} requests behind another in a pipeline; {per:.2} per write)",
                self.replay_writes, self.replay_pipelined
            )?;
        }
        writeln!(f, "{:<40} {:>8} {:>9} {:>9} {:>9} {:>9}", "latency (ms)", "count", "p50", "p90", "p99", "max")?;
        let row = |f: &mut fmt::Formatter<'_>, name: &str, l: &LatencySummary| {
            writeln!(
                f,
                "{:<40} {:>8} {:>9.3} {:>9.3} {:>9.3} {:>9.3}",
                name, l.count, l.p50_ms, l.p90_ms, l.p99_ms, l.max_ms
            )
        };
        row(f, "primary (complete)", &self.primary.complete)?;
        row(f, "shadow (complete)", &self.shadow.complete)?;
        row(f, "primary (first byte)", &self.primary.first_byte)?;
        row(f, "shadow (first byte)", &self.shadow.first_byte)?;
        for e in &self.endpoints {
            let mut name = e.endpoint.clone();
            name.truncate(30);
            row(f, &format!("  {name} primary"), &e.primary)?;
            row(f, &format!("  {name} shadow"), &e.shadow)?;
        }
        if self.endpoint_overflow > 0 {
            writeln!(f, "{} requests past the endpoint cap are under `other`", self.endpoint_overflow)?;
        }
        Ok(())
    }
}
