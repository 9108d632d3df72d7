//! What the daemon prints and writes (`--summary-file`) when it stops: what reached user space per
//! direction, what extraction made of it, the kernel's counters and the mirror's own summary.

use std::collections::BTreeMap;

use serde::Serialize;
use shadow_common::counter;

use crate::{
    metrics::Summary as MirrorSummary,
    reassembly::ExtractorStats,
    segment::{Direction, RecordDrop, SegmentRef},
};

/// Per-direction counts of what reached user space.
#[derive(Clone, Debug, Default, Serialize)]
pub struct DirectionCounts {
    pub segments: u64,
    /// Payload bytes in captured segments, every copy of a retransmitted byte included.
    pub payload_bytes: u64,
    /// Stream bytes reassembled: each sequence number once (what the sender wrote, absent holes).
    pub stream_bytes: u64,
    /// Captured bytes that repeated stream bytes already taken (retransmissions, overlaps).
    pub overlap_bytes: u64,
    pub truncated: u64,
    pub fin: u64,
    pub rst: u64,
    /// Segments the kernel flagged as a new request's start.
    pub request_starts: u64,
}

/// The requests that crossed the wire, as the kernel and the daemon counted them:
/// `on_wire = sampled + not_sampled + no_rule` (requests sent one after another; pipelined ones
/// are decided together) and `sampled = reached_daemon + lost_in_ring_buffer`.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RequestLedger {
    pub on_wire: u64,
    pub sampled: u64,
    pub not_sampled: u64,
    pub no_rule: u64,
    /// Sampled starts whose record reached the daemon.
    pub reached_daemon: u64,
    pub lost_in_ring_buffer: u64,
    /// Of the sampled: starts too short to classify, taken as starts.
    pub short_starts: u64,
    /// `sampled == reached_daemon + lost_in_ring_buffer`.
    pub reconciles: bool,
}

impl RequestLedger {
    pub fn new(kernel: &[u64; counter::COUNT], reached_daemon: u64) -> Self {
        let sampled = kernel[counter::REQUESTS_SAMPLED];
        let lost = kernel[counter::REQUEST_STARTS_LOST];
        Self {
            on_wire: sampled + kernel[counter::REQUESTS_SKIPPED] + kernel[counter::REQUESTS_NO_RULE],
            sampled,
            not_sampled: kernel[counter::REQUESTS_SKIPPED],
            no_rule: kernel[counter::REQUESTS_NO_RULE],
            reached_daemon,
            lost_in_ring_buffer: lost,
            short_starts: kernel[counter::REQUEST_STARTS_SHORT],
            reconciles: sampled == reached_daemon + lost,
        }
    }
}

impl std::fmt::Display for RequestLedger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "requests on the wire {} = sampled {} + not sampled {} + no rule {}; sampled = reached the daemon {} + lost in the ring buffer {}{}",
            self.on_wire,
            self.sampled,
            self.not_sampled,
            self.no_rule,
            self.reached_daemon,
            self.lost_in_ring_buffer,
            if self.reconciles { "" } else { "  (DOES NOT RECONCILE)" }
        )
    }
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct ExtractionSummary {
    pub requests_extracted: u64,
    pub responses_extracted: u64,
    pub flows_active: u64,
    pub flows_created: u64,
    pub flows_evicted: u64,
    pub buffered_bytes: u64,
    pub memory_bytes: u64,
    /// (reason, direction) → messages dropped.
    pub message_drops: BTreeMap<String, u64>,
    /// (reason, direction) → segments not used.
    pub segment_drops: BTreeMap<String, u64>,
    /// Every segment accounted for: used + dropped + buffered == in.
    pub segments_reconcile: bool,
}

/// What the daemon prints and writes (`--summary-file`) when it stops.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Summary {
    pub interface: String,
    pub attached: Vec<String>,
    pub sample_percent: f64,
    pub request: DirectionCounts,
    pub response: DirectionCounts,
    pub bad_records: BTreeMap<RecordDrop, u64>,
    pub kernel: BTreeMap<&'static str, u64>,
    /// The kernel's request counts against what reached the daemon.
    pub requests: RequestLedger,
    pub extraction: ExtractionSummary,
    pub mirror: Option<MirrorSummary>,
    /// The comparison's final report (`shadowctl report --from FILE` reads it).
    pub compare: Option<crate::hub::DaemonReport>,
    /// The egress fences at exit: what the shadows tried to reach (the fences stay on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress: Option<crate::egress::EgressStatus>,
    /// The ramps at exit (their state is also in --state-dir, where the next daemon takes it up).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ramps: Vec<crate::ramp::RampStatus>,
}

impl Summary {
    /// One segment that reached user space.
    pub(super) fn count(&mut self, s: &SegmentRef<'_>) {
        let d = match s.direction {
            Direction::Request => &mut self.request,
            Direction::Response => &mut self.response,
        };
        d.segments += 1;
        d.payload_bytes += s.payload.len() as u64;
        d.truncated += u64::from(s.truncated);
        d.fin += u64::from(s.fin());
        d.rst += u64::from(s.rst());
        d.request_starts += u64::from(s.request_start);
    }
}

pub(super) fn extraction_summary(st: &ExtractorStats) -> ExtractionSummary {
    ExtractionSummary {
        requests_extracted: st.requests_extracted(),
        responses_extracted: st.responses_extracted(),
        flows_active: st.flows_active,
        flows_created: st.flows_created,
        flows_evicted: st.flows_evicted,
        buffered_bytes: st.buffered_bytes,
        memory_bytes: st.memory_bytes,
        message_drops: st
            .drops()
            .filter(|(_, _, n)| *n > 0)
            .map(|(r, d, n)| (format!("{r}/{}", d.as_str()), n))
            .collect(),
        segment_drops: st
            .segment_drops()
            .filter(|(_, _, n)| *n > 0)
            .map(|(r, d, n)| (format!("{r}/{}", d.as_str()), n))
            .collect(),
        segments_reconcile: st.reconciles(),
    }
}
