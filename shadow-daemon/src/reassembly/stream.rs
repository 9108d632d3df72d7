//! One direction of a connection as a byte stream: sequence numbers, out-of-order segments,
//! holes, and when to give up on a hole.
//!
//! Overlaps and retransmissions: **the first bytes received for a sequence number win.** Bytes
//! already delivered cannot change (what the server's socket read is gone from us too), and an
//! out-of-order segment is trimmed to the parts no earlier segment covered. Retransmitted bytes
//! are normally identical, so the choice matters only for a sender that rewrites them, where
//! the receiver's choice is unknowable from a copy taken before its stack; first-wins is what
//! Linux and BSD do for data they already queued, is deterministic whatever the arrival order
//! of the later copies, and keeps buffered pieces disjoint so that memory is bounded by the
//! window.
//!
//! A hole is given up on (the message in progress is dropped as `gap`, or, between messages,
//! the jump is a sampling skip) when it is known final or has waited long enough:
//! * the peer acknowledged bytes in it: the kernel copies a segment before the peer can see it
//!   and the ring buffer keeps reservation order, so captured bytes below the peer's
//!   acknowledgment have all been delivered already, and the missing ones never will be;
//! * a segment arrived beyond the reordering window, or too many pieces are waiting;
//! * `gap_timeout_ns` passed (checked by `tick`): needed when the other direction is not
//!   captured (XDP ingress) or silent.

use bytes::Bytes;

use super::stats::SegmentCounters;
use crate::http::{Cx, DropReason, Fed, Piece, RequestAssembler, ResponseAssembler, seq_diff, seq_le, seq_lt};

/// Most pieces waiting out of order per direction: bounds the bookkeeping for a window filled
/// with tiny segments.
pub const MAX_OOO_PIECES: usize = 256;

/// Farthest the peer's acknowledgment may run ahead of us and still be believed: beyond, it is
/// more likely garbage (or from an older incarnation of the port pair) than a skip.
const MAX_ACK_JUMP: i32 = 1 << 30;

/// A segment as the stream sees it, its bytes borrowed (from the ring-buffer record, or from a
/// piece that waited out of order).
#[derive(Clone, Copy, Debug)]
pub(super) struct SegIn<'a> {
    pub seq: u32,
    pub ack: u32,
    pub ts_ns: u64,
    pub data: &'a [u8],
    /// Sequence space taken by the payload (the wire length, whether captured or not).
    pub len: u32,
    pub fin: bool,
    pub truncated: bool,
    pub request_start: bool,
}

const SEG_START: u8 = 1;
const REQUEST_START: u8 = 2;
const TRUNCATED: u8 = 4;
/// This piece carries its segment's outcome (a segment split by overlaps counts once).
const COUNTED: u8 = 8;

/// A piece of a segment waiting for the bytes before it: its bytes copied out of the record.
#[derive(Clone, Debug)]
struct Ooo {
    seq: u32,
    len: u32,
    ack: u32,
    ts_ns: u64,
    data: Bytes,
    flags: u8,
}

impl Ooo {
    fn end(&self) -> u32 {
        self.seq.wrapping_add(self.len)
    }
}

/// The assembler side of a stream: what the stream needs from request/response framing.
pub(super) trait Assemble {
    /// In-order delivery matters (the assembler is inside or between messages).
    fn synced(&self) -> bool;
    fn feed(&mut self, piece: &Piece, cx: &mut Cx<'_>) -> Fed;
    /// Could a stream that lost sync pick up again at this piece?
    fn is_start(piece: &Piece) -> bool;
    /// A final hole at the current position, followed by a message start or not; true if it
    /// was a sampling skip.
    fn hole(&mut self, next_starts: bool, cx: &mut Cx<'_>) -> bool;
    fn truncated(&mut self, request_start: bool, cx: &mut Cx<'_>) -> DropReason;
    /// The sender's FIN, in order.
    fn fin(&mut self, ts_ns: u64, cx: &mut Cx<'_>);
}

impl Assemble for RequestAssembler {
    fn synced(&self) -> bool {
        RequestAssembler::synced(self)
    }
    fn feed(&mut self, piece: &Piece, cx: &mut Cx<'_>) -> Fed {
        RequestAssembler::feed(self, piece, cx)
    }
    fn is_start(piece: &Piece) -> bool {
        RequestAssembler::is_start(piece)
    }
    fn hole(&mut self, next_starts: bool, cx: &mut Cx<'_>) -> bool {
        RequestAssembler::hole(self, next_starts, cx)
    }
    fn truncated(&mut self, request_start: bool, cx: &mut Cx<'_>) -> DropReason {
        RequestAssembler::truncated(self, request_start, cx)
    }
    fn fin(&mut self, _ts_ns: u64, cx: &mut Cx<'_>) {
        self.end(DropReason::Incomplete, cx);
    }
}

impl Assemble for ResponseAssembler {
    fn synced(&self) -> bool {
        ResponseAssembler::synced(self)
    }
    fn feed(&mut self, piece: &Piece, cx: &mut Cx<'_>) -> Fed {
        ResponseAssembler::feed(self, piece, cx)
    }
    fn is_start(piece: &Piece) -> bool {
        ResponseAssembler::is_start(piece)
    }
    fn hole(&mut self, next_starts: bool, cx: &mut Cx<'_>) -> bool {
        ResponseAssembler::hole(self, next_starts, cx)
    }
    fn truncated(&mut self, _request_start: bool, cx: &mut Cx<'_>) -> DropReason {
        ResponseAssembler::truncated(self, cx)
    }
    fn fin(&mut self, ts_ns: u64, cx: &mut Cx<'_>) {
        ResponseAssembler::fin(self, ts_ns, cx);
    }
}

/// Per-call settings of a stream operation.
#[derive(Clone, Copy, Debug)]
pub(super) struct StreamCfg {
    pub window: u32,
    pub now_ns: u64,
}

/// Field order and widths keep this at 56 bytes: there are two per tracked flow.
#[derive(Debug, Default)]
pub(super) struct Stream {
    /// Sequence number of the next byte expected; meaningful once `has_next`.
    next_seq: u32,
    /// Where the sender's FIN sits; meaningful once `has_fin`.
    fin_seq: u32,
    /// Payload bytes in `ooo` (bounded by the window, so 32 bits are plenty).
    ooo_bytes: u32,
    has_next: bool,
    has_fin: bool,
    /// FIN delivered, RST or teardown: nothing more comes.
    ended: bool,
    /// Pieces ahead of `next_seq`, disjoint, in sequence order.
    ooo: Vec<Ooo>,
    fin_ts_ns: u64,
    /// When the current hole started waiting (0: no hole).
    hole_since_ns: u64,
}

const _: () = assert!(size_of::<Stream>() <= 56);

impl Stream {
    pub(super) fn ended(&self) -> bool {
        self.ended
    }

    pub(super) fn buffered(&self) -> usize {
        self.ooo_bytes as usize
    }

    pub(super) fn heap_bytes(&self) -> usize {
        self.ooo.capacity() * size_of::<Ooo>() + self.ooo_bytes as usize
    }

    pub(super) fn has_hole(&self) -> bool {
        self.hole_since_ns != 0
    }

    pub(super) fn hole_overdue(&self, now_ns: u64, gap_timeout_ns: u64) -> bool {
        self.hole_since_ns != 0 && now_ns.saturating_sub(self.hole_since_ns) >= gap_timeout_ns
    }

    pub(super) fn push<A: Assemble>(
        &mut self,
        seg: SegIn,
        asm: &mut A,
        cx: &mut Cx<'_>,
        sc: &mut SegmentCounters,
        cfg: StreamCfg,
    ) {
        if self.ended {
            if self.has_fin && seq_le(seg.seq.wrapping_add(seg.len), self.fin_seq) {
                // A copy of bytes before the FIN, which was delivered after all of them.
                sc.overlap_bytes += u64::from(seg.len);
            }
            sc.drop(DropReason::Duplicate);
            return;
        }
        if seg.fin && !self.has_fin {
            self.has_fin = true;
            self.fin_seq = seg.seq.wrapping_add(seg.len);
            self.fin_ts_ns = seg.ts_ns;
        }
        if seg.len == 0 {
            sc.control += 1;
            self.check_fin(asm, cx, sc);
            return;
        }
        let mut seg = seg;
        let mut seg_start = true;
        // Each pass either returns or gives up a hole, which consumes buffered pieces or leaves
        // the assembler unsynced, so the loop ends; the bound is a guard.
        for _ in 0..=MAX_OOO_PIECES + 1 {
            if !asm.synced() {
                self.push_unsynced(seg, seg_start, asm, cx, sc);
                self.check_fin(asm, cx, sc);
                return;
            }
            let off = i64::from(seq_diff(seg.seq, self.next_seq));
            let end_off = off + i64::from(seg.len);
            if end_off <= 0 {
                sc.overlap_bytes += u64::from(seg.len);
                sc.drop(DropReason::Duplicate);
                return;
            }
            if off <= 0 {
                if off < 0 {
                    // Overlap with delivered bytes: the first copy won.
                    let cut = (-off) as u32;
                    sc.overlap_bytes += u64::from(cut);
                    if !seg.truncated {
                        seg.data = seg.data.get(cut as usize..).unwrap_or_default();
                    }
                    seg.seq = self.next_seq;
                    seg.len -= cut;
                    seg_start = false;
                }
                // Bytes already waiting out of order were received first and win: deliver up
                // to them, and let the rest of this copy fill only what they leave open.
                let rest = match self.ooo.first() {
                    Some(first) if seq_lt(first.seq, seg.seq.wrapping_add(seg.len)) => {
                        let keep = first.seq.wrapping_sub(seg.seq);
                        let mut rest = seg;
                        rest.seq = first.seq;
                        rest.len = seg.len - keep;
                        rest.request_start = false;
                        if !seg.truncated {
                            let (head, tail) = seg.data.split_at((keep as usize).min(seg.data.len()));
                            rest.data = tail;
                            seg.data = head;
                        }
                        seg.len = keep;
                        Some(rest)
                    }
                    _ => None,
                };
                let fate = self.deliver(&seg, seg_start, asm, cx, sc);
                account(sc, fate);
                if let Some(rest) = rest {
                    self.insert(rest, false, false, sc);
                }
                self.drain(asm, cx, sc, cfg.now_ns);
                self.check_fin(asm, cx, sc);
                return;
            }
            if end_off > i64::from(cfg.window) || self.ooo.len() >= MAX_OOO_PIECES {
                // Cannot be reordering within the window: the hole before it is final.
                self.give_up_hole(asm, cx, sc, cfg.now_ns);
                continue;
            }
            self.insert(seg, seg_start, true, sc);
            if self.hole_since_ns == 0 {
                self.hole_since_ns = cfg.now_ns.max(1);
            }
            return;
        }
        sc.drop(DropReason::Gap);
    }

    fn push_unsynced<A: Assemble>(
        &mut self,
        seg: SegIn,
        seg_start: bool,
        asm: &mut A,
        cx: &mut Cx<'_>,
        sc: &mut SegmentCounters,
    ) {
        let end = seg.seq.wrapping_add(seg.len);
        if self.has_next && seq_le(end, self.next_seq) {
            // Already seen: resyncing on a retransmitted request would replay it twice.
            sc.overlap_bytes += u64::from(seg.len);
            sc.drop(DropReason::Duplicate);
            return;
        }
        let fate = self.deliver(&seg, seg_start, asm, cx, sc);
        account(sc, fate);
    }

    /// Hand in-order (or, unsynced, any) bytes to the assembler and move past them.
    fn deliver<A: Assemble>(
        &mut self,
        seg: &SegIn,
        seg_start: bool,
        asm: &mut A,
        cx: &mut Cx<'_>,
        sc: &mut SegmentCounters,
    ) -> Fed {
        sc.stream_bytes += u64::from(seg.len);
        let fate = if seg.truncated {
            Fed::Skipped(asm.truncated(seg.request_start && seg_start, cx))
        } else {
            asm.feed(
                &Piece {
                    data: seg.data,
                    seq: seg.seq,
                    ack: seg.ack,
                    ts_ns: seg.ts_ns,
                    seg_start,
                    request_start: seg.request_start && seg_start,
                },
                cx,
            )
        };
        self.advance_to(seg.seq.wrapping_add(seg.len));
        fate
    }

    fn advance_to(&mut self, end: u32) {
        if !self.has_next || seq_lt(self.next_seq, end) {
            self.next_seq = end;
            self.has_next = true;
        }
    }

    /// Buffer the parts of `seg` that no waiting piece covers (first received wins).
    /// `count`: the segment's outcome is still to be counted (false for the tail of a segment
    /// whose head was delivered).
    fn insert(&mut self, seg: SegIn, seg_start: bool, count: bool, sc: &mut SegmentCounters) {
        let base = self.next_seq;
        let rel = |seq: u32| seq.wrapping_sub(base);
        let s = rel(seg.seq);
        let e = s + seg.len;
        let mut cur = s;
        let mut k = 0;
        let mut counted = !count;
        let mut stored = false;
        while cur < e {
            while k < self.ooo.len() && rel(self.ooo[k].end()) <= cur {
                k += 1;
            }
            let next_start = self.ooo.get(k).map_or(u32::MAX, |o| rel(o.seq));
            if next_start <= cur {
                // Covered by a piece received first: this copy of it is an overlap.
                let covered_end = rel(self.ooo[k].end());
                sc.overlap_bytes += u64::from(covered_end.min(e) - cur);
                // The loop above moves past that piece: it ends at `cur` now.
                cur = covered_end;
                continue;
            }
            let piece_end = e.min(next_start);
            let mut flags = 0;
            if cur == s && seg_start {
                flags |= SEG_START;
                if seg.request_start {
                    flags |= REQUEST_START;
                }
            }
            if seg.truncated {
                flags |= TRUNCATED;
            }
            if !counted {
                flags |= COUNTED;
            }
            let data = if seg.truncated {
                Bytes::new()
            } else {
                let a = ((cur - s) as usize).min(seg.data.len());
                let b = ((piece_end - s) as usize).min(seg.data.len());
                Bytes::copy_from_slice(&seg.data[a..b])
            };
            self.ooo_bytes += data.len() as u32;
            self.ooo.insert(
                k,
                Ooo { seq: base.wrapping_add(cur), len: piece_end - cur, ack: seg.ack, ts_ns: seg.ts_ns, data, flags },
            );
            if !counted {
                sc.buffered += 1;
            }
            counted = true;
            stored = true;
            k += 1;
            cur = piece_end;
        }
        if count && !stored {
            sc.drop(DropReason::Duplicate);
        }
    }

    fn pop_front(&mut self, sc: &mut SegmentCounters) -> Option<Ooo> {
        if self.ooo.is_empty() {
            return None;
        }
        let o = self.ooo.remove(0);
        self.ooo_bytes -= o.data.len() as u32;
        if o.flags & COUNTED != 0 {
            sc.buffered -= 1;
        }
        Some(o)
    }

    /// Deliver the waiting pieces that have become next in line; while the assembler is out of
    /// sync, walk them all through its gate (holes no longer matter until a message start).
    fn drain<A: Assemble>(&mut self, asm: &mut A, cx: &mut Cx<'_>, sc: &mut SegmentCounters, now_ns: u64) {
        let before = self.next_seq;
        while let Some(first) = self.ooo.first() {
            if asm.synced() && seq_diff(first.seq, self.next_seq) > 0 {
                break;
            }
            let Some(o) = self.pop_front(sc) else {
                break;
            };
            // Nothing waiting is ever behind `next_seq`, so nothing here was delivered already:
            // pieces are stored ahead of it, disjoint and in order, and only delivery moves it,
            // never past a waiting piece (in sync, a segment is cut where the first one starts;
            // this walk stops at the end of each piece; out of sync nothing waits, since every
            // operation that loses sync ends in this walk, which empties the queue unless it
            // regains sync).
            debug_assert!(self.has_next && seq_le(self.next_seq, o.seq), "a waiting piece behind next_seq");
            let seg = SegIn {
                seq: o.seq,
                ack: o.ack,
                ts_ns: o.ts_ns,
                data: &o.data,
                len: o.len,
                fin: false,
                truncated: o.flags & TRUNCATED != 0,
                request_start: o.flags & REQUEST_START != 0,
            };
            let fate = self.deliver(&seg, o.flags & SEG_START != 0, asm, cx, sc);
            if o.flags & COUNTED != 0 {
                account(sc, fate);
            }
        }
        self.hole_since_ns = match (self.ooo.is_empty(), self.hole_since_ns) {
            (true, _) => 0,
            (false, 0) => now_ns.max(1),
            (false, t) if self.next_seq != before => now_ns.max(t),
            (false, t) => t,
        };
    }

    /// The hole at `next_seq` is final: let the assembler drop or skip, then go on with what
    /// waits behind it.
    fn give_up_hole<A: Assemble>(&mut self, asm: &mut A, cx: &mut Cx<'_>, sc: &mut SegmentCounters, now_ns: u64) {
        // With nothing behind the hole yet, the next segment decides; most likely it starts a
        // message (sampling), and if not it is skipped and counted then.
        let next_starts = self.ooo.first().is_none_or(|o| {
            if o.flags & TRUNCATED != 0 {
                // Not copied, but the kernel saw what it began with.
                return o.flags & REQUEST_START != 0;
            }
            A::is_start(&Piece {
                data: &o.data,
                seq: o.seq,
                ack: o.ack,
                ts_ns: o.ts_ns,
                seg_start: o.flags & SEG_START != 0,
                request_start: o.flags & REQUEST_START != 0,
            })
        });
        if asm.hole(next_starts, cx) {
            sc.sampling_skips += 1;
        }
        self.drain(asm, cx, sc, now_ns);
    }

    /// The peer acknowledged `ack`: every captured byte below it has been delivered to us.
    pub(super) fn peer_acked<A: Assemble>(
        &mut self,
        ack: u32,
        asm: &mut A,
        cx: &mut Cx<'_>,
        sc: &mut SegmentCounters,
        now_ns: u64,
    ) {
        for _ in 0..=MAX_OOO_PIECES + 1 {
            if !asm.synced() {
                return;
            }
            // An ended stream's assembler is closed, and one in sync has been fed, which set
            // `next_seq`.
            debug_assert!(self.has_next && !self.ended);
            let d = seq_diff(ack, self.next_seq);
            if d <= 0 || d > MAX_ACK_JUMP {
                return;
            }
            if self.has_fin && self.fin_seq == self.next_seq {
                // Only the FIN itself is acknowledged past us.
                return;
            }
            self.give_up_hole(asm, cx, sc, now_ns);
            self.check_fin(asm, cx, sc);
        }
    }

    /// `tick`: give up a hole that waited `gap_timeout_ns`.
    pub(super) fn expire_hole<A: Assemble>(
        &mut self,
        asm: &mut A,
        cx: &mut Cx<'_>,
        sc: &mut SegmentCounters,
        now_ns: u64,
    ) {
        if self.hole_since_ns == 0 {
            return;
        }
        if asm.synced() {
            self.give_up_hole(asm, cx, sc, now_ns);
        } else {
            self.drain(asm, cx, sc, now_ns);
        }
        self.check_fin(asm, cx, sc);
    }

    fn check_fin<A: Assemble>(&mut self, asm: &mut A, cx: &mut Cx<'_>, sc: &mut SegmentCounters) {
        if !self.has_fin || self.ended {
            return;
        }
        let fin = self.fin_seq;
        // In sync, the FIN counts once every byte before it is in; out of sync, order no
        // longer matters.
        if asm.synced() && self.has_hole_before(fin) {
            return;
        }
        asm.fin(self.fin_ts_ns, cx);
        self.ended = true;
        self.discard(DropReason::Duplicate, sc);
    }

    fn has_hole_before(&self, fin: u32) -> bool {
        !self.has_next || seq_diff(fin, self.next_seq) > 0
    }

    /// Drop every waiting piece (teardown); counted under `reason`.
    pub(super) fn discard(&mut self, reason: DropReason, sc: &mut SegmentCounters) {
        while let Some(o) = self.pop_front(sc) {
            if o.flags & COUNTED != 0 {
                sc.drop(reason);
            }
        }
        self.ooo = Vec::new();
        self.hole_since_ns = 0;
    }

    pub(super) fn end(&mut self, reason: DropReason, sc: &mut SegmentCounters) {
        self.discard(reason, sc);
        self.ended = true;
    }
}

fn account(sc: &mut SegmentCounters, fate: Fed) {
    match fate {
        Fed::Used => sc.used += 1,
        Fed::Skipped(r) => sc.drop(r),
    }
}

/// What one waiting piece's bookkeeping costs (accounting tests).
#[cfg(test)]
pub(crate) const OOO_PIECE_BYTES: usize = size_of::<Ooo>();
