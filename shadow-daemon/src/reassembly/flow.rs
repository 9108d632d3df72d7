//! One TCP connection: two streams, their assemblers, and the requests awaiting a response.

use std::collections::HashMap;

use shadow_common::tcp_flags;

use super::{
    stats::ExtractorStats,
    stream::{SegIn, Stream, StreamCfg},
};
use crate::{
    http::{Cx, DropReason, HttpEvent, Limits, PendingQueue, RequestAssembler, ResponseAssembler},
    segment::{Direction, FlowId, SegmentRef},
};

/// Index of a flow in the extractor's slab; `NIL` ends the LRU list.
pub(crate) type FlowIdx = u32;
pub(crate) const NIL: FlowIdx = u32::MAX;

#[derive(Debug)]
pub(crate) struct Flow {
    pub id: FlowId,
    req_stream: Stream,
    resp_stream: Stream,
    req: RequestAssembler,
    resp: ResponseAssembler,
    pending: PendingQueue,
    pub last_seen_ns: u64,
    /// LRU neighbours: `prev` is more recently used.
    pub prev: FlowIdx,
    pub next: FlowIdx,
    /// Footprint as last added to the extractor's gauges.
    pub mem: usize,
    pub buffered: usize,
    pub in_hole_list: bool,
    reset: bool,
}

/// What the state of one tracked flow costs, idle: the slab slot, its index entry in the hash
/// map (hashbrown keeps one control byte per bucket and at most 7/8 of the buckets full), and
/// its places in the free and hole lists. Buffers and queues come on top, accounted as they
/// grow ([`Flow::footprint`]).
pub(crate) const FLOW_STATE_BYTES: usize =
    size_of::<Option<Flow>>() + (size_of::<(FlowId, FlowIdx)>() + 1) * 8 / 7 + 1 + 2 * size_of::<FlowIdx>();

// The budget promised for an idle flow (see `Extractor::idle_flow_bytes`).
const _: () = assert!(FLOW_STATE_BYTES <= 512);

/// Borrowed from the extractor for one flow operation.
pub(crate) struct Shared<'a> {
    pub limits: &'a Limits,
    pub next_id: &'a mut u64,
    pub out: &'a mut Vec<HttpEvent>,
    pub stats: &'a mut ExtractorStats,
    pub held: &'a mut crate::http::HeldRequests,
    pub window: u32,
}

/// Split the borrows a flow operation needs: the assemblers' context and the two directions'
/// segment counters.
macro_rules! split {
    ($flow:expr, $sh:expr, |$cx:ident, $req_sc:ident, $resp_sc:ident| $body:block) => {{
        let ExtractorStats { requests, responses, request_segments, response_segments, unanswered_requests, .. } =
            &mut *$sh.stats;
        let $req_sc = request_segments;
        let $resp_sc = response_segments;
        let mut unpaired = None;
        let mut $cx = Cx {
            limits: $sh.limits,
            flow: $flow.id,
            next_id: &mut *$sh.next_id,
            out: &mut *$sh.out,
            requests,
            responses,
            pending: &mut $flow.pending,
            unanswered: unanswered_requests,
            held: &mut *$sh.held,
            unpaired: &mut unpaired,
        };
        $body
    }};
}

impl Flow {
    pub(super) fn new(id: FlowId, now_ns: u64) -> Self {
        Self {
            id,
            req_stream: Stream::default(),
            resp_stream: Stream::default(),
            req: RequestAssembler::default(),
            resp: ResponseAssembler::default(),
            pending: PendingQueue::default(),
            last_seen_ns: now_ns,
            prev: NIL,
            next: NIL,
            mem: 0,
            buffered: 0,
            in_hole_list: false,
            reset: false,
        }
    }

    pub(super) fn handle(&mut self, seg: SegmentRef<'_>, now_ns: u64, sh: &mut Shared<'_>) {
        let cfg = StreamCfg { window: sh.window, now_ns };
        let ack = (seg.tcp_flags & tcp_flags::ACK != 0).then_some(seg.ack);
        let rst = seg.rst();
        let fin = seg.fin();
        let dir = seg.direction;
        let len = if seg.truncated { seg.wire_len } else { u32::try_from(seg.payload.len()).unwrap_or(u32::MAX) };
        let s = SegIn {
            seq: seg.seq,
            ack: seg.ack,
            ts_ns: seg.ts_ns,
            data: seg.payload,
            len,
            fin,
            truncated: seg.truncated,
            request_start: seg.request_start,
        };
        let Self { req_stream, resp_stream, req, resp, .. } = self;
        split!(self, sh, |cx, req_sc, resp_sc| {
            match dir {
                Direction::Request => {
                    // The client's acknowledgment settles holes in the response stream first, so
                    // that what it proves is applied before the new bytes.
                    if let Some(a) = ack {
                        resp_stream.peer_acked(a, resp, &mut cx, resp_sc, now_ns);
                    }
                    req_stream.push(s, req, &mut cx, req_sc, cfg);
                }
                Direction::Response => {
                    if let Some(a) = ack {
                        req_stream.peer_acked(a, req, &mut cx, req_sc, now_ns);
                    }
                    resp_stream.push(s, resp, &mut cx, resp_sc, cfg);
                }
            }
            if let Some(u) = cx.unpaired.take() {
                req.answered_before(u, cx.pending.is_empty());
            }
            if resp.take_declined_upgrade() {
                req.reopen_after_declined_upgrade();
            }
            if req.closed() == Some(DropReason::UnsupportedProtocol) && resp.closed().is_none() {
                // TLS or HTTP/2 one way means the other way is not HTTP/1.x either.
                resp.close(DropReason::UnsupportedProtocol, &mut cx);
                resp_stream.discard(DropReason::UnsupportedProtocol, resp_sc);
            }
        });
        if rst {
            self.reset = true;
        }
    }

    /// Give up holes that waited too long.
    pub(super) fn expire_holes(&mut self, now_ns: u64, gap_timeout_ns: u64, sh: &mut Shared<'_>) {
        let Self { req_stream, resp_stream, req, resp, .. } = self;
        split!(self, sh, |cx, req_sc, resp_sc| {
            if req_stream.hole_overdue(now_ns, gap_timeout_ns) {
                req_stream.expire_hole(req, &mut cx, req_sc, now_ns);
            }
            if resp_stream.hole_overdue(now_ns, gap_timeout_ns) {
                resp_stream.expire_hole(resp, &mut cx, resp_sc, now_ns);
            }
            if let Some(u) = cx.unpaired.take() {
                req.answered_before(u, cx.pending.is_empty());
            }
        });
    }

    /// The flow goes away: whatever is in progress or waiting is dropped for `reason`.
    pub(super) fn teardown(&mut self, reason: DropReason, sh: &mut Shared<'_>) {
        // Both sides closed with a FIN in order, nothing reset: a connection that ended in step.
        let clean = !self.reset && self.req_stream.ended() && self.resp_stream.ended();
        let reset = self.reset;
        let Self { req_stream, resp_stream, req, resp, .. } = self;
        split!(self, sh, |cx, req_sc, resp_sc| {
            req.end(reason, &mut cx);
            resp.end(reason, &mut cx);
            // An early-answered request still waiting for its evidence: a clean close after it
            // (every out-of-step sign on the way has dropped it already) is that evidence.
            if clean {
                cx.early_in_step();
            } else {
                cx.early_out_of_step(if reset { DropReason::Refused } else { reason });
            }
            req_stream.end(reason, req_sc);
            resp_stream.end(reason, resp_sc);
            *cx.unanswered += cx.pending.clear(cx.held);
            // Requests held for an answer that will not come now.
            cx.settle_held(if reason == DropReason::Evicted { reason } else { DropReason::Unanswered });
        });
    }

    /// A new connection on the same addresses and ports: the kernel passes no SYN, so a request
    /// start on a client stream that already ended is the sign. Without it, a quickly reused
    /// client port would be ignored until the old flow timed out.
    pub(super) fn reused_by(&self, seg: &SegmentRef<'_>) -> bool {
        seg.direction == Direction::Request
            && self.req_stream.ended()
            && (seg.request_start
                || RequestAssembler::is_start(&crate::http::Piece {
                    data: seg.payload,
                    seq: seg.seq,
                    ack: seg.ack,
                    ts_ns: seg.ts_ns,
                    seg_start: true,
                    request_start: false,
                }))
    }

    /// Both sides closed, or reset: nothing more to extract.
    pub(super) fn finished(&self) -> bool {
        self.reset || (self.req_stream.ended() && self.resp_stream.ended())
    }

    pub(super) fn has_hole(&self) -> bool {
        self.req_stream.has_hole() || self.resp_stream.has_hole()
    }

    /// (memory accounted against the cap, payload bytes held).
    pub(super) fn footprint(&self) -> (usize, usize) {
        let buffered =
            self.req_stream.buffered() + self.resp_stream.buffered() + self.req.buffered() + self.resp.buffered();
        let mem = FLOW_STATE_BYTES
            + self.req_stream.heap_bytes()
            + self.resp_stream.heap_bytes()
            + self.req.heap_bytes()
            + self.resp.heap_bytes()
            + self.pending.heap_bytes();
        (mem, buffered)
    }

    /// The parts [`Self::footprint`] adds up, for the accounting tests: heap bytes of the request
    /// and response streams, assemblers and the pending queue; payload bytes of the first four.
    #[cfg(test)]
    pub(super) fn parts(&self) -> ([usize; 5], [usize; 4]) {
        let heap = [
            self.req_stream.heap_bytes(),
            self.resp_stream.heap_bytes(),
            self.req.heap_bytes(),
            self.resp.heap_bytes(),
            self.pending.heap_bytes(),
        ];
        let buffered =
            [self.req_stream.buffered(), self.resp_stream.buffered(), self.req.buffered(), self.resp.buffered()];
        (heap, buffered)
    }
}

/// The index type, named so the extractor's map is spelled once.
pub(crate) type FlowIndex = HashMap<FlowId, FlowIdx>;
