//! What the extractor counts. Plain integers, read by the metrics module through
//! [`ExtractorStats::drops`] and friends, by [`DropReason`] (stable metric label values).

use crate::{
    http::{DropReason, MessageCounters},
    segment::Direction,
};

/// Per-direction segment accounting. Every segment ends in exactly one of: `used` (its bytes went
/// to HTTP framing, whatever then became of the message), `control` (no payload: FIN, RST),
/// `dropped[reason]`, or still `buffered` out of order. Invariant:
/// `segments_in == used + control + sum(dropped) + buffered`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SegmentCounters {
    pub segments_in: u64,
    pub bytes_in: u64,
    /// Sequence space handed to HTTP framing: each stream byte once, however often it was
    /// captured. On a stream without holes this is what the sender wrote.
    pub stream_bytes: u64,
    /// Sequence space captured again after a first copy had been taken (retransmissions and
    /// overlapping segments): real wire bytes, but not new stream bytes.
    pub overlap_bytes: u64,
    pub used: u64,
    pub control: u64,
    /// Gauge: segments waiting out of order.
    pub buffered: u64,
    pub dropped: [u64; DropReason::COUNT],
    /// Jumps over bytes the kernel did not capture between messages (sampling): expected, not
    /// a loss.
    pub sampling_skips: u64,
}

impl SegmentCounters {
    pub fn dropped_total(&self) -> u64 {
        self.dropped.iter().sum()
    }
    pub fn dropped(&self, reason: DropReason) -> u64 {
        self.dropped[reason.index()]
    }
    pub(crate) fn drop(&mut self, reason: DropReason) {
        self.dropped[reason.index()] += 1;
    }
    /// Does every segment have exactly one outcome?
    pub fn reconciles(&self) -> bool {
        self.segments_in == self.used + self.control + self.dropped_total() + self.buffered
    }
}

/// Everything the extractor counts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExtractorStats {
    /// All segments pushed, both directions.
    pub segments_in: u64,
    /// Captured payload bytes pushed, both directions.
    pub bytes_in: u64,
    pub request_segments: SegmentCounters,
    pub response_segments: SegmentCounters,
    /// Requests: `seen == extracted + sum(dropped) + in_progress`.
    pub requests: MessageCounters,
    /// Responses, likewise (interim 1xx responses are not counted).
    pub responses: MessageCounters,
    /// Gauge: flows tracked now.
    pub flows_active: u64,
    pub flows_created: u64,
    /// Flows removed to stay under the memory cap or the flow limit.
    pub flows_evicted: u64,
    /// Flows removed after `idle_timeout_ns` without a segment.
    pub flows_expired: u64,
    /// Flows removed after FIN in both directions, a RST, reuse of their ports by a new
    /// connection, or [`super::Extractor::clear`].
    pub flows_closed: u64,
    /// Gauge: payload bytes held (out-of-order segments and messages in progress).
    pub buffered_bytes: u64,
    /// Gauge: what the memory cap is enforced on: buffered bytes, their buffers' spare
    /// capacity, and per-flow state.
    pub memory_bytes: u64,
    /// Emitted requests whose response was never paired (not captured, or ambiguous).
    pub unanswered_requests: u64,
}

impl ExtractorStats {
    pub fn requests_extracted(&self) -> u64 {
        self.requests.extracted
    }

    pub fn responses_extracted(&self) -> u64 {
        self.responses.extracted
    }

    pub fn segments(&self, dir: Direction) -> &SegmentCounters {
        match dir {
            Direction::Request => &self.request_segments,
            Direction::Response => &self.response_segments,
        }
    }

    pub(crate) fn segments_mut(&mut self, dir: Direction) -> &mut SegmentCounters {
        match dir {
            Direction::Request => &mut self.request_segments,
            Direction::Response => &mut self.response_segments,
        }
    }

    pub fn messages(&self, dir: Direction) -> &MessageCounters {
        match dir {
            Direction::Request => &self.requests,
            Direction::Response => &self.responses,
        }
    }

    /// Dropped messages as (reason, direction, count), every reason and direction listed, zeros
    /// included, so that a metrics exporter can create its series up front.
    pub fn drops(&self) -> impl Iterator<Item = (DropReason, Direction, u64)> + '_ {
        [Direction::Request, Direction::Response].into_iter().flat_map(move |dir| {
            let m = self.messages(dir);
            DropReason::ALL.into_iter().map(move |r| (r, dir, m.dropped(r)))
        })
    }

    /// Dropped segments as (reason, direction, count), likewise.
    pub fn segment_drops(&self) -> impl Iterator<Item = (DropReason, Direction, u64)> + '_ {
        [Direction::Request, Direction::Response].into_iter().flat_map(move |dir| {
            let s = self.segments(dir);
            DropReason::ALL.into_iter().map(move |r| (r, dir, s.dropped(r)))
        })
    }

    /// Does every message and every segment have exactly one outcome?
    pub fn reconciles(&self) -> bool {
        let msg = |m: &MessageCounters| m.seen == m.extracted + m.dropped_total() + m.in_progress;
        msg(&self.requests)
            && msg(&self.responses)
            && self.request_segments.reconciles()
            && self.response_segments.reconciles()
            && self.segments_in == self.request_segments.segments_in + self.response_segments.segments_in
    }
}
