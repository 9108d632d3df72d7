//! What was measured for one endpoint (or all of them): the counts, rates and latency that the
//! verdict judges and the report prints.

use serde::{Deserialize, Serialize};

use super::{aggregate::Percentiles, interval::QuantileInterval, noise::NoiseReport};

/// Latency of both sides for one endpoint.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LatencySummary {
    pub primary: Percentiles,
    pub shadow: Percentiles,
    /// shadow / primary, when both sides have data.
    pub p50_ratio: Option<f64>,
    pub p95_ratio: Option<f64>,
    pub p99_ratio: Option<f64>,
    /// `[percentile, ms]` points of each side's distribution (for the chart).
    pub primary_curve: Vec<[f64; 2]>,
    pub shadow_curve: Vec<[f64; 2]>,
    /// Shadow responses without a latency of their own (read behind another of a pipeline):
    /// compared, not timed, and in none of the shadow's figures.
    #[serde(default)]
    pub shadow_untimed: u64,
    /// What the latency gates decide on: each side's p50 and p99 with their order-statistic
    /// bounds, the shadow/primary ratio's interval and, with a secondary, the primary/secondary
    /// one. None on the overall row (not gated).
    #[serde(default)]
    pub p50_interval: Option<QuantileInterval>,
    #[serde(default)]
    pub p99_interval: Option<QuantileInterval>,
}

impl LatencySummary {
    pub fn new(
        primary: Percentiles,
        shadow: Percentiles,
        primary_curve: Vec<[f64; 2]>,
        shadow_curve: Vec<[f64; 2]>,
    ) -> Self {
        let ratio = |p: f64, s: f64| (primary.count > 0 && shadow.count > 0).then(|| s / p.max(f64::MIN_POSITIVE));
        Self {
            p50_ratio: ratio(primary.p50_ms, shadow.p50_ms),
            p95_ratio: ratio(primary.p95_ms, shadow.p95_ms),
            p99_ratio: ratio(primary.p99_ms, shadow.p99_ms),
            primary,
            shadow,
            primary_curve,
            shadow_curve,
            shadow_untimed: 0,
            p50_interval: None,
            p99_interval: None,
        }
    }
}

/// Pairs that never reached comparison, by reason.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unpaired {
    pub primary_missing: u64,
    pub memory_bound: u64,
}

/// What was measured for one endpoint (or all of them).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct EndpointSummary {
    pub endpoint: String,
    /// Pairs compared, including those where the shadow failed to answer.
    pub samples: u64,
    /// Requests the shadow did not answer (timeout, connection, invalid response).
    pub shadow_failures: u64,
    pub status_matches: u64,
    /// Bodies equal after normalisation, learned noise excused (length-only pairs with equal
    /// lengths included; see `length_only`).
    pub body_matches: u64,
    pub header_matches: u64,
    /// Pairs whose bodies were compared by status and length only (truncated, over the cap, or
    /// an unsupported Content-Encoding).
    pub length_only: u64,
    pub primary_5xx: u64,
    pub shadow_5xx: u64,
    pub unpaired: Unpaired,
    /// Of the pairs the shadow answered; None when it answered none.
    pub status_match_percent: Option<f64>,
    pub body_match_percent: Option<f64>,
    pub header_match_percent: Option<f64>,
    /// Of all pairs.
    pub primary_5xx_percent: f64,
    /// Shadow 5xx and failures, of all pairs.
    pub shadow_error_percent: f64,
    pub latency: LatencySummary,
    pub noise: NoiseReport,
    /// Mismatch samples dropped from the kept ring (oldest first).
    pub mismatch_samples_evicted: u64,
}

impl EndpointSummary {
    /// Fill the percentages from the counts.
    pub(crate) fn with_rates(mut self) -> Self {
        let responded = self.samples.saturating_sub(self.shadow_failures);
        let pct = |n: u64, of: u64| (of > 0).then(|| n as f64 * 100.0 / of as f64);
        self.status_match_percent = pct(self.status_matches, responded);
        self.body_match_percent = pct(self.body_matches, responded);
        self.header_match_percent = pct(self.header_matches, responded);
        self.primary_5xx_percent = pct(self.primary_5xx, self.samples).unwrap_or(0.0);
        self.shadow_error_percent = pct(self.shadow_5xx + self.shadow_failures, self.samples).unwrap_or(0.0);
        self
    }
}
