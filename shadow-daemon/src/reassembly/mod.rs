//! From captured TCP segments to HTTP messages: a flow table keyed by connection, one byte
//! stream per direction, holes and memory bounds. Pure: no I/O, no clock of its own (the caller
//! passes CLOCK_MONOTONIC, the clock of `Segment::ts_ns`).
//!
//! Segments arrive about in capture order, both directions interleaved. Most requests are not
//! sampled: their bytes never arrive, so a stream jumps between the requests it does see. Such a
//! jump is expected; a stream resynchronises at the next segment that begins a request (the
//! kernel's `request_start`, or a method token) and at the next `HTTP/1.x` status line for
//! responses. Only bytes missing *inside* a message are a loss (`gap`). A message with a hole
//! is never emitted.
//!
//! Memory: every flow's state, buffered segments and messages in progress are accounted, and
//! the least recently used flows are evicted (counted) while the total is above
//! `memory_cap_bytes`. A single flow's buffering is bounded on its own by the limits (head,
//! body, reordering window), so eviction always brings the total back under the cap.

mod flow;
mod stats;
mod stream;
#[cfg(test)]
pub(crate) mod tests;

use self::flow::{FLOW_STATE_BYTES, Flow, FlowIdx, FlowIndex, NIL, Shared};
pub use self::{
    stats::{ExtractorStats, SegmentCounters},
    stream::MAX_OOO_PIECES,
};
pub use crate::http::{DropReason, HttpEvent};
use crate::{
    http::{HeldRequests, Limits},
    segment::{Segment, SegmentRef},
};

/// Limits and timeouts of the extractor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExtractorConfig {
    /// Cap on everything the extractor holds: flow state, buffered segments, messages in
    /// progress.
    pub memory_cap_bytes: usize,
    /// Most flows tracked at once.
    pub max_flows: usize,
    /// How far ahead of the next expected byte a segment may arrive and be kept, per direction.
    pub ooo_window_bytes: u32,
    /// A flow without segments for this long is forgotten.
    pub idle_timeout_ns: u64,
    /// A hole waits this long for its bytes (when nothing proves it final sooner).
    pub gap_timeout_ns: u64,
    /// Largest request or response head, and largest chunked trailer section
    /// (`oversize_headers`).
    pub max_header_bytes: usize,
    /// Most header fields in one head (`oversize_headers`); at most 256 are honoured.
    pub max_headers: usize,
    /// Largest request body kept, as sent (chunk framing included): a larger request is framed
    /// through without being buffered and dropped as `oversize_body`.
    pub max_body_bytes: u64,
    /// Content bytes of each paired response kept for comparison; 0 (comparison off) keeps none.
    pub keep_response_body: usize,
    /// Hold each request until the primary's response to it is seen, and replay it only if that
    /// response is not a framing refusal (400, 413, 414, 431): the answer is the evidence that
    /// the primary read the request where we did. Needs the responses captured (TC); under XDP,
    /// which sees only ingress, requests go out as soon as they are complete.
    pub await_response: bool,
}

impl Default for ExtractorConfig {
    fn default() -> Self {
        let limits = Limits::default();
        Self {
            memory_cap_bytes: 64 * 1024 * 1024,
            max_flows: 65536,
            // Four full GRO segments: network reordering is shorter than that, and the kernel's
            // own records arrive in order.
            ooo_window_bytes: 256 * 1024,
            // Longer than common keep-alive timeouts (nginx 75 s), so idle keep-alive
            // connections stay in sync; an idle flow costs a few hundred bytes.
            idle_timeout_ns: 120 * 1_000_000_000,
            // Above Linux's minimum retransmission timeout (200 ms) with room for a retry, so a
            // segment lost before the capture point and retransmitted still fills its hole.
            gap_timeout_ns: 1_000_000_000,
            max_header_bytes: limits.max_header_bytes,
            max_headers: limits.max_headers,
            max_body_bytes: limits.max_body_bytes,
            keep_response_body: limits.keep_response_body,
            await_response: false,
        }
    }
}

impl ExtractorConfig {
    fn limits(&self) -> Limits {
        Limits {
            max_header_bytes: self.max_header_bytes,
            max_headers: self.max_headers,
            max_body_bytes: self.max_body_bytes,
            keep_response_body: self.keep_response_body,
        }
    }
}

/// Reassembles captured segments and extracts the HTTP/1.x messages in them.
#[derive(Debug)]
pub struct Extractor {
    cfg: ExtractorConfig,
    limits: Limits,
    /// `ooo_window_bytes`, at most 2^30: sequence comparisons are only meaningful within half
    /// the sequence space, and a larger window would stop telling ahead from behind.
    window: u32,
    index: FlowIndex,
    slab: Vec<Option<Flow>>,
    free: Vec<FlowIdx>,
    /// Most recently used end of the LRU list.
    lru_head: FlowIdx,
    /// Least recently used end: evicted and expired first.
    lru_tail: FlowIdx,
    /// Flows that had a hole when last seen (may hold stale or duplicate entries).
    hole_flows: Vec<FlowIdx>,
    next_id: u64,
    stats: ExtractorStats,
    /// Requests waiting for the primary's answer (`await_response`).
    held: HeldRequests,
    /// `held`'s (memory, payload) as last added to the gauges.
    held_accounted: (usize, usize),
}

impl Extractor {
    pub fn new(cfg: ExtractorConfig) -> Self {
        let limits = cfg.limits();
        let cfg_await = cfg.await_response;
        Self {
            window: cfg.ooo_window_bytes.min(1 << 30),
            cfg,
            limits,
            index: FlowIndex::default(),
            slab: Vec::new(),
            free: Vec::new(),
            lru_head: NIL,
            lru_tail: NIL,
            hole_flows: Vec::new(),
            next_id: 1,
            stats: ExtractorStats::default(),
            held: HeldRequests::new(cfg_await),
            held_accounted: (0, 0),
        }
    }

    pub fn config(&self) -> &ExtractorConfig {
        &self.cfg
    }

    pub fn stats(&self) -> &ExtractorStats {
        &self.stats
    }

    /// Memory an idle tracked flow costs (its state, without buffers): what `memory_cap_bytes`
    /// counts per flow.
    pub const fn idle_flow_bytes() -> usize {
        FLOW_STATE_BYTES
    }

    /// Feed one segment; completed messages are appended to `out`. `now_ns` is CLOCK_MONOTONIC
    /// (same clock as `Segment::ts_ns`). The payload is only borrowed: what the extractor keeps
    /// beyond this call (bytes waiting out of order, a message in progress or complete) it
    /// copies, so a segment read in place in the ring buffer can be released right after.
    pub fn push<P: AsRef<[u8]>>(&mut self, seg: Segment<P>, now_ns: u64, out: &mut Vec<HttpEvent>) {
        self.push_ref(seg.borrowed(), now_ns, out);
    }

    fn push_ref(&mut self, seg: SegmentRef<'_>, now_ns: u64, out: &mut Vec<HttpEvent>) {
        let dir = seg.direction;
        let payload_len = seg.payload.len() as u64;
        self.stats.segments_in += 1;
        self.stats.bytes_in += payload_len;
        let sc = self.stats.segments_mut(dir);
        sc.segments_in += 1;
        sc.bytes_in += payload_len;

        let idx = match self.index.get(&seg.flow) {
            Some(&idx) if self.flow(idx).is_some_and(|f| f.reused_by(&seg)) => {
                self.remove(idx, DropReason::Incomplete, out);
                self.create(seg.flow, now_ns, out)
            }
            Some(&idx) => idx,
            None if seg.payload.is_empty() && !seg.truncated => {
                // A bare FIN/RST of a flow we do not track: nothing to close.
                self.stats.segments_mut(dir).control += 1;
                return;
            }
            None => self.create(seg.flow, now_ns, out),
        };
        self.touch(idx, now_ns);
        let Some(flow) = self.slab.get_mut(idx as usize).and_then(Option::as_mut) else {
            return;
        };
        let mut sh = Shared {
            limits: &self.limits,
            next_id: &mut self.next_id,
            out,
            stats: &mut self.stats,
            held: &mut self.held,
            window: self.window,
        };
        flow.handle(seg, now_ns, &mut sh);
        let finished = flow.finished();
        let hole = flow.has_hole() && !flow.in_hole_list;
        if hole {
            flow.in_hole_list = true;
        }
        Self::account(&mut self.stats, flow);
        if hole {
            self.hole_flows.push(idx);
        }
        if finished {
            self.remove(idx, DropReason::Incomplete, out);
        }
        self.account_held();
        self.enforce_cap(out);
    }

    /// Requests held for the primary's answer, all flows.
    pub fn held_requests(&self) -> usize {
        self.held.len()
    }

    /// Bring the gauges up to date with the held requests: they count against the cap like
    /// everything else the extractor keeps.
    fn account_held(&mut self) {
        let now = (self.held.heap_bytes(), self.held.payload_bytes());
        let (mem, buf) = std::mem::replace(&mut self.held_accounted, now);
        self.stats.memory_bytes = (self.stats.memory_bytes + now.0 as u64).saturating_sub(mem as u64);
        self.stats.buffered_bytes = (self.stats.buffered_bytes + now.1 as u64).saturating_sub(buf as u64);
    }

    /// Expire idle flows and overdue holes; call about every 100 ms.
    pub fn tick(&mut self, now_ns: u64, out: &mut Vec<HttpEvent>) {
        while self.lru_tail != NIL {
            let idx = self.lru_tail;
            let idle =
                self.flow(idx).is_some_and(|f| now_ns.saturating_sub(f.last_seen_ns) >= self.cfg.idle_timeout_ns);
            if !idle {
                break;
            }
            self.remove(idx, DropReason::Timeout, out);
        }

        let list = std::mem::take(&mut self.hole_flows);
        for &idx in &list {
            if let Some(f) = self.slab.get_mut(idx as usize).and_then(Option::as_mut) {
                f.in_hole_list = false;
            }
        }
        for idx in list {
            let Some(flow) = self.slab.get_mut(idx as usize).and_then(Option::as_mut) else {
                continue;
            };
            if flow.in_hole_list {
                continue;
            }
            let mut sh = Shared {
                limits: &self.limits,
                next_id: &mut self.next_id,
                out,
                stats: &mut self.stats,
                held: &mut self.held,
                window: self.window,
            };
            flow.expire_holes(now_ns, self.cfg.gap_timeout_ns, &mut sh);
            let finished = flow.finished();
            let keep = flow.has_hole();
            flow.in_hole_list = keep;
            Self::account(&mut self.stats, flow);
            if finished {
                self.remove(idx, DropReason::Incomplete, out);
            } else if keep {
                self.hole_flows.push(idx);
            }
        }
        self.account_held();
    }

    /// Drop every flow (daemon shutdown): what is in progress is counted under `reason`.
    pub fn clear(&mut self, reason: DropReason, out: &mut Vec<HttpEvent>) {
        while self.lru_tail != NIL {
            self.remove(self.lru_tail, reason, out);
        }
    }

    fn flow(&self, idx: FlowIdx) -> Option<&Flow> {
        self.slab.get(idx as usize).and_then(Option::as_ref)
    }

    fn flow_mut(&mut self, idx: FlowIdx) -> Option<&mut Flow> {
        self.slab.get_mut(idx as usize).and_then(Option::as_mut)
    }

    fn account(stats: &mut ExtractorStats, flow: &mut Flow) {
        let (mem, buffered) = flow.footprint();
        stats.memory_bytes = (stats.memory_bytes + mem as u64).saturating_sub(flow.mem as u64);
        stats.buffered_bytes = (stats.buffered_bytes + buffered as u64).saturating_sub(flow.buffered as u64);
        flow.mem = mem;
        flow.buffered = buffered;
    }

    fn create(&mut self, id: crate::segment::FlowId, now_ns: u64, out: &mut Vec<HttpEvent>) -> FlowIdx {
        while self.index.len() >= self.cfg.max_flows.max(1) && self.lru_tail != NIL {
            self.remove(self.lru_tail, DropReason::Evicted, out);
        }
        let mut flow = Flow::new(id, now_ns);
        let idx = match self.free.pop() {
            Some(idx) => idx,
            None => {
                self.slab.push(None);
                (self.slab.len() - 1) as FlowIdx
            }
        };
        Self::account(&mut self.stats, &mut flow);
        if let Some(slot) = self.slab.get_mut(idx as usize) {
            *slot = Some(flow);
        }
        self.index.insert(id, idx);
        self.link_front(idx);
        self.stats.flows_active += 1;
        self.stats.flows_created += 1;
        idx
    }

    fn remove(&mut self, idx: FlowIdx, reason: DropReason, out: &mut Vec<HttpEvent>) {
        self.unlink(idx);
        let Some(mut flow) = self.slab.get_mut(idx as usize).and_then(Option::take) else {
            return;
        };
        let mut sh = Shared {
            limits: &self.limits,
            next_id: &mut self.next_id,
            out,
            stats: &mut self.stats,
            held: &mut self.held,
            window: self.window,
        };
        flow.teardown(reason, &mut sh);
        self.stats.memory_bytes = self.stats.memory_bytes.saturating_sub(flow.mem as u64);
        self.stats.buffered_bytes = self.stats.buffered_bytes.saturating_sub(flow.buffered as u64);
        self.account_held();
        self.index.remove(&flow.id);
        self.free.push(idx);
        self.stats.flows_active = self.stats.flows_active.saturating_sub(1);
        match reason {
            DropReason::Evicted => self.stats.flows_evicted += 1,
            DropReason::Timeout => self.stats.flows_expired += 1,
            _ => self.stats.flows_closed += 1,
        }
    }

    fn enforce_cap(&mut self, out: &mut Vec<HttpEvent>) {
        while self.stats.memory_bytes > self.cfg.memory_cap_bytes as u64 && self.lru_tail != NIL {
            self.remove(self.lru_tail, DropReason::Evicted, out);
        }
    }

    fn touch(&mut self, idx: FlowIdx, now_ns: u64) {
        if let Some(f) = self.flow_mut(idx) {
            f.last_seen_ns = now_ns;
        }
        if self.lru_head != idx {
            self.unlink(idx);
            self.link_front(idx);
        }
    }

    fn link_front(&mut self, idx: FlowIdx) {
        let old_head = self.lru_head;
        if let Some(f) = self.flow_mut(idx) {
            f.prev = NIL;
            f.next = old_head;
        }
        if let Some(h) = self.flow_mut(old_head) {
            h.prev = idx;
        }
        self.lru_head = idx;
        if self.lru_tail == NIL {
            self.lru_tail = idx;
        }
    }

    fn unlink(&mut self, idx: FlowIdx) {
        let Some((prev, next)) = self.flow(idx).map(|f| (f.prev, f.next)) else {
            return;
        };
        match self.flow_mut(prev) {
            Some(p) => p.next = next,
            None => {
                if self.lru_head == idx {
                    self.lru_head = next;
                }
            }
        }
        match self.flow_mut(next) {
            Some(n) => n.prev = prev,
            None => {
                if self.lru_tail == idx {
                    self.lru_tail = prev;
                }
            }
        }
        if let Some(f) = self.flow_mut(idx) {
            f.prev = NIL;
            f.next = NIL;
        }
    }
}

#[cfg(test)]
impl Extractor {
    /// The flows tracked, most recently used first (accounting tests).
    fn flows(&self) -> impl Iterator<Item = &Flow> {
        std::iter::successors(self.flow(self.lru_head), |f| self.flow(f.next))
    }
}
