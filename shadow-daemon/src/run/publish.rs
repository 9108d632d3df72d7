//! Extraction results and kernel counters into the metrics, at every tick and once at the end.

use std::collections::BTreeMap;

use shadow_common::counter;

use crate::{metrics::Metrics, reassembly::ExtractorStats, segment::Direction};

/// Carries extraction results into the metrics: request drops go into the replay ledger one by
/// one (so captured = replayed + dropped + in flight holds), the rest as absolute gauges/counters.
pub(super) struct Publisher {
    /// Request-direction drops already recorded in the ledger, by reason.
    pub(super) ledger_seen: BTreeMap<&'static str, u64>,
}

impl Publisher {
    /// `bad_records`: ring-buffer records that did not decode, by reason; they never reach
    /// reassembly and are published beside its drops (direction label `records`).
    pub(super) fn publish(
        &mut self,
        metrics: &Metrics,
        st: &ExtractorStats,
        bad_records: &BTreeMap<&'static str, u64>,
        kernel: Option<&[u64; counter::COUNT]>,
    ) {
        for (reason, dir, n) in st.drops() {
            if dir != Direction::Request {
                continue;
            }
            let seen = self.ledger_seen.entry(reason).or_default();
            for _ in *seen..n {
                metrics.record_extraction_drop(reason);
            }
            *seen = n.max(*seen);
        }
        let mut stats: Vec<(&'static str, &'static str, u64)> =
            st.drops().map(|(r, d, n)| (r, d.as_str(), n)).collect();
        stats.extend(st.segment_drops().map(|(r, d, n)| (r, segment_dir_label(d), n)));
        stats.extend(bad_records.iter().map(|(r, n)| (*r, "records", *n)));
        metrics.set_extraction_stats(&stats);
        metrics.set_flows(st.flows_active);
        metrics.set_buffered_bytes(st.buffered_bytes);
        if let Some(k) = kernel {
            let named: Vec<(&'static str, u64)> = counter::NAMES.iter().copied().zip(k.iter().copied()).collect();
            metrics.set_kernel_counters(&named);
            metrics.set_ring_buffer_dropped(k[counter::RINGBUF_FULL]);
        }
    }
}

fn segment_dir_label(d: Direction) -> &'static str {
    match d {
        Direction::Request => "request_segments",
        Direction::Response => "response_segments",
    }
}
