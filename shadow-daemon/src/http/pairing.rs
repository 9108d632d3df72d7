//! Pairing responses with the requests of their connection.
//!
//! HTTP/1.x answers requests in order, so FIFO is exact while both streams are seen whole. Sampling
//! breaks that: unsampled requests never arrive, and their responses mostly do not either, so
//! counting alone would shift every later pair by one. The TCP numbers settle it:
//!
//! * every request remembers `client_ack`, the response-stream position the client had received
//!   when it sent the request's last byte; its response cannot start before that position;
//! * a response starts at sequence `s` and its first segment acknowledges `a` on the request
//!   stream; the server had the whole request before answering, so its end is `<= a`.
//!
//! While the response stream has stayed continuous since the last paired response and no
//! request is missing in between, the front request is the answer (FIFO). After any skip, a
//! response pairs only with a request whose `client_ack == s` exactly: a client that waited for
//! the previous response (anything but pipelining) acknowledged all of it before sending the
//! next request, so the next response starts exactly there. Pipelined traffic after a skip has
//! no such evidence and the response is counted unpaired rather than guessed: a wrong pair would
//! poison latency figures and comparisons, a missing one only thins them.

use std::collections::{HashMap, VecDeque};

use super::{RequestKind, seq_le};
use crate::{message::CapturedRequest, segment::FlowId};

/// Requests awaiting a response on one connection. Bounded: a client that pipelines more than
/// this without a response being seen loses its oldest entries (counted as unanswered).
pub const MAX_PENDING: usize = 32;

/// A request seen on the connection whose response has not been seen yet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pending {
    /// The emitted request's id, or [`Pending::DROPPED`]: the request was seen but dropped
    /// (oversized, ambiguous, upgrade...), and its response must still be consumed so that it is
    /// not paired with the next request.
    pub id: u64,
    pub kind: RequestKind,
    /// Request-stream sequence number just past the request.
    pub req_end: u32,
    /// Response-stream position acknowledged by the request's last segment.
    pub client_ack: u32,
    pub last_ts_ns: u64,
    /// Requests may be missing right before this one (sampling skip, gap, resync).
    pub after_skip: bool,
}

impl Pending {
    /// Request ids start at 1.
    pub const DROPPED: u64 = 0;

    pub fn emitted(&self) -> bool {
        self.id != Self::DROPPED
    }
}

/// Requests extracted and waiting for the primary's answer before they are replayed, for all
/// flows (a flow's own state stays as small as it was; its entries in [`PendingQueue`] say
/// which of these are its own).
///
/// When `enabled`, only a request the primary answered, and not with a framing error, is
/// replayed: the response is the evidence that the primary read the request where we did. A
/// held request leaves when its response pairs with it (released or refused) or when its
/// pending entry leaves unanswered, so there are never more than the flows' pending entries.
#[derive(Debug, Default)]
pub struct HeldRequests {
    enabled: bool,
    by_id: HashMap<u64, CapturedRequest>,
    /// Payload bytes of the held requests.
    payload: usize,
    /// Their header spans.
    spans: usize,
    /// Held requests whose entry left a queue unanswered, not yet counted.
    dropped: u64,
    /// Most requests held at once since the map was last empty: the size of the burst its
    /// allocation was made for.
    peak: usize,
    /// Per connection, the held request the primary answered early (2xx/3xx before it had all
    /// of it), waiting for the evidence that the connection went on in step. At most one per
    /// connection; kept here rather than in the flow, so that flows without one (nearly all)
    /// cost nothing more.
    early: HashMap<FlowId, u64>,
}

/// Held requests past which a burst's map is given back once it is empty (below, it is kept for
/// the next requests, so that one request held at a time allocates nothing each time).
const HELD_MAP_KEPT: usize = 64;

/// Response statuses that say the primary did not read the request as one it could serve:
/// bad framing or syntax, body, target or header section too large.
pub const fn refuses_framing(status: u16) -> bool {
    matches!(status, 400 | 413 | 414 | 431)
}

/// Early answers (sent before the primary had the whole request) that may still say it served
/// the request: 2xx and 3xx (an interim 1xx is no answer at all). Anything else sent early is a
/// refusal: the primary stopped reading where it answered.
pub const fn serves_early(status: u16) -> bool {
    matches!(status, 200..=399)
}

impl HeldRequests {
    pub fn new(enabled: bool) -> Self {
        Self { enabled, ..Self::default() }
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// What the held requests cost: their bytes, header spans and map entries (the map's spare
    /// capacity is a bounded constant and left out, so that an empty map counts nothing).
    pub fn heap_bytes(&self) -> usize {
        self.payload
            + self.spans
            + self.by_id.len() * (size_of::<(u64, CapturedRequest)>() + 1)
            + self.early.len() * (size_of::<(FlowId, u64)>() + 1)
    }

    /// Hold `id` (held already) for the in-step evidence of its connection `flow`; a request
    /// already waiting there is returned, to be dropped (the connection cannot be in step for
    /// both).
    pub fn set_early(&mut self, flow: FlowId, id: u64) -> Option<u64> {
        self.early.insert(flow, id)
    }

    /// The early-answered request of `flow` waiting for the in-step evidence, if any; it leaves
    /// the slot (and stays held).
    pub fn take_early(&mut self, flow: &FlowId) -> Option<u64> {
        if self.early.is_empty() {
            return None;
        }
        let id = self.early.remove(flow);
        if self.early.is_empty() && self.early.capacity() > HELD_MAP_KEPT {
            self.early = HashMap::new();
        }
        id
    }

    /// Early-answered requests waiting for their evidence, all connections.
    pub fn early_len(&self) -> usize {
        self.early.len()
    }

    /// Payload bytes held.
    pub fn payload_bytes(&self) -> usize {
        self.payload
    }

    fn spans_of(req: &CapturedRequest) -> usize {
        req.headers.capacity() * size_of::<crate::message::HeaderSpan>()
    }

    pub fn hold(&mut self, req: CapturedRequest) {
        self.payload += req.raw.len();
        self.spans += Self::spans_of(&req);
        self.by_id.insert(req.id, req);
        self.peak = self.peak.max(self.by_id.len());
    }

    /// The held request `id`, now answered.
    pub fn take(&mut self, id: u64) -> Option<CapturedRequest> {
        let r = self.by_id.remove(&id)?;
        self.payload = self.payload.saturating_sub(r.raw.len());
        self.spans = self.spans.saturating_sub(Self::spans_of(&r));
        if self.by_id.is_empty() {
            // A burst is over: give its memory back. Decided by the burst's size, not by the
            // map's `capacity()`, which its removals' tombstones lower at random (a burst's map
            // was kept or not by chance).
            if self.peak > HELD_MAP_KEPT {
                self.by_id = HashMap::new();
            }
            self.peak = 0;
        }
        Some(r)
    }

    /// Held requests dropped unanswered since the last call.
    pub fn take_dropped(&mut self) -> u64 {
        std::mem::take(&mut self.dropped)
    }

    /// An entry leaves its queue without a response: 1 if it was a replayed request (now
    /// unanswered), 0 otherwise; a held request goes with it, counted in `dropped`.
    fn discard(&mut self, p: &Pending) -> u64 {
        if !p.emitted() {
            return 0;
        }
        if self.take(p.id).is_some() {
            self.dropped += 1;
            return 0;
        }
        1
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PairOutcome {
    Paired(Pending),
    Unpaired,
}

/// FIFO of pending requests. The oldest lives inline: a client that waits for each response
/// (nearly all of them) never makes the queue allocate, which keeps idle flows small.
#[derive(Debug, Default)]
pub struct PendingQueue {
    front: Option<Pending>,
    rest: VecDeque<Pending>,
}

impl PendingQueue {
    pub fn len(&self) -> usize {
        usize::from(self.front.is_some()) + self.rest.len()
    }

    pub fn is_empty(&self) -> bool {
        self.front.is_none()
    }

    pub fn heap_bytes(&self) -> usize {
        self.rest.capacity() * size_of::<Pending>()
    }

    fn iter(&self) -> impl Iterator<Item = &Pending> {
        self.front.iter().chain(self.rest.iter())
    }

    fn pop_front(&mut self) -> Option<Pending> {
        let p = self.front.take();
        self.front = self.rest.pop_front();
        if self.rest.is_empty() {
            // A pipelined burst is over: give its memory back (a new VecDeque allocates nothing).
            self.rest = VecDeque::new();
        }
        p
    }

    /// Add a request; returns how many replayed requests were pushed out unanswered (held ones
    /// go to `held`'s count).
    pub fn push(&mut self, p: Pending, held: &mut HeldRequests) -> u64 {
        let mut lost = 0;
        while self.len() >= MAX_PENDING {
            if let Some(o) = self.pop_front() {
                lost += held.discard(&o);
            }
        }
        if self.front.is_none() {
            self.front = Some(p);
        } else {
            self.rest.push_back(p);
        }
        lost
    }

    /// Empty the queue (connection gone); returns how many replayed requests went unanswered.
    pub fn clear(&mut self, held: &mut HeldRequests) -> u64 {
        let mut n = 0;
        while let Some(o) = self.pop_front() {
            n += held.discard(&o);
        }
        n
    }

    /// Pair a response whose head starts at response-stream sequence `s` and whose first segment
    /// acknowledges `a` on the request stream. `aligned`: the response stream has been
    /// continuous since the previous paired response. The second value counts emitted requests
    /// passed over (their responses were not captured).
    pub fn pair(&mut self, s: u32, a: u32, aligned: bool, held: &mut HeldRequests) -> (PairOutcome, u64) {
        let Some(front) = self.front else {
            return (PairOutcome::Unpaired, 0);
        };
        if aligned && !front.after_skip {
            if !seq_le(front.client_ack, s) {
                // The client had already received this response's bytes when it sent the front
                // request: the response answers something we never captured.
                return (PairOutcome::Unpaired, 0);
            }
            return (self.pop_front().map_or(PairOutcome::Unpaired, PairOutcome::Paired), 0);
        }
        let Some(i) = self.iter().position(|p| p.client_ack == s && seq_le(p.req_end, a)) else {
            return (PairOutcome::Unpaired, 0);
        };
        let mut passed = 0;
        for _ in 0..i {
            if let Some(o) = self.pop_front() {
                passed += held.discard(&o);
            }
        }
        (self.pop_front().map_or(PairOutcome::Unpaired, PairOutcome::Paired), passed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(id: u64, req_end: u32, client_ack: u32, after_skip: bool) -> Pending {
        Pending { id, kind: RequestKind::Normal, req_end, client_ack, last_ts_ns: id, after_skip }
    }

    impl PendingQueue {
        fn push_(&mut self, p: Pending) -> u64 {
            self.push(p, &mut HeldRequests::default())
        }
        fn pair_(&mut self, s: u32, a: u32, aligned: bool) -> (PairOutcome, u64) {
            self.pair(s, a, aligned, &mut HeldRequests::default())
        }
        fn clear_(&mut self) -> u64 {
            self.clear(&mut HeldRequests::default())
        }
    }

    fn paired_id(o: (PairOutcome, u64)) -> Option<u64> {
        match o.0 {
            PairOutcome::Paired(p) => Some(p.id),
            PairOutcome::Unpaired => None,
        }
    }

    #[test]
    fn fifo_while_aligned_even_when_pipelined() {
        let mut q = PendingQueue::default();
        // Three pipelined requests sent before any response byte arrived.
        q.push_(p(1, 100, 5000, false));
        q.push_(p(2, 200, 5000, false));
        q.push_(p(3, 300, 5000, false));
        assert_eq!(paired_id(q.pair_(5000, 300, false)), Some(1), "first response: oldest exact match");
        assert_eq!(paired_id(q.pair_(5100, 300, true)), Some(2));
        assert_eq!(paired_id(q.pair_(5200, 300, true)), Some(3));
        assert_eq!(q.pair_(5300, 300, true).0, PairOutcome::Unpaired);
    }

    #[test]
    fn after_sampling_skip_pairs_by_exact_ack() {
        let mut q = PendingQueue::default();
        // A answered at 1000..1100; B (unsampled) answered at 1100..1300; C sent after that.
        q.push_(p(1, 100, 1000, false));
        assert_eq!(paired_id(q.pair_(1000, 100, false)), Some(1));
        q.push_(p(3, 400, 1300, true));
        // The response stream jumped over B's response: not aligned; C's ack matches.
        assert_eq!(paired_id(q.pair_(1300, 400, false)), Some(3));
    }

    #[test]
    fn pipelined_after_skip_is_unpaired_not_guessed() {
        let mut q = PendingQueue::default();
        // A, B (unsampled) and C pipelined; RA seen; RB captured (continuous) but C has a skip
        // before it, and its ack predates RA's end: no evidence, so no pair.
        q.push_(p(1, 100, 1000, false));
        q.push_(p(3, 300, 1000, true));
        assert_eq!(paired_id(q.pair_(1000, 300, false)), Some(1));
        assert_eq!(q.pair_(1100, 300, true).0, PairOutcome::Unpaired);
        assert_eq!(q.pair_(1200, 300, false).0, PairOutcome::Unpaired);
        assert_eq!(q.len(), 1);
    }

    #[test]
    fn response_older_than_front_request_is_unpaired() {
        let mut q = PendingQueue::default();
        q.push_(p(1, 100, 2000, false));
        assert_eq!(q.pair_(1500, 100, true).0, PairOutcome::Unpaired);
        assert_eq!(q.len(), 1);
    }

    #[test]
    fn passed_over_requests_are_counted_and_server_must_have_the_request() {
        let mut q = PendingQueue::default();
        q.push_(p(1, 100, 1000, false));
        q.push_(p(2, 200, 1500, true));
        // Server had not received request 2 yet (a < 200): no pair.
        assert_eq!(q.pair_(1500, 150, false).0, PairOutcome::Unpaired);
        let (o, passed) = q.pair_(1500, 200, false);
        assert_eq!(paired_id((o, 0)), Some(2));
        assert_eq!(passed, 1);
    }

    #[test]
    fn bounded_and_wrapping() {
        let mut q = PendingQueue::default();
        let mut lost = 0;
        for i in 0..(MAX_PENDING as u64 + 3) {
            lost += q.push_(p(i + 1, (u32::MAX - 10).wrapping_add(i as u32), u32::MAX - 2, false));
        }
        assert_eq!(lost, 3);
        assert_eq!(q.len(), MAX_PENDING);
        assert_eq!(paired_id(q.pair_(5, 40, true)), Some(4), "ack and seq compare across the wrap");
        assert_eq!(q.clear_(), MAX_PENDING as u64 - 1);
    }

    #[test]
    fn held_requests_cost_their_bytes_spans_and_entries() {
        let mut h = HeldRequests::new(true);
        assert!(h.is_empty());
        assert_eq!((h.len(), h.heap_bytes(), h.payload_bytes()), (0, 0, 0));
        let a = CapturedRequest::builder(b"GET /a HTTP/1.1\r\nHost: h\r\n\r\n").id(1).build();
        let b = CapturedRequest::builder(b"POST /b HTTP/1.1\r\nHost: h\r\nX: y\r\nContent-Length: 2\r\n\r\nhi")
            .id(2)
            .build();
        let span = size_of::<crate::message::HeaderSpan>();
        let (ca, cb) = (a.headers.capacity(), b.headers.capacity());
        let (la, lb) = (a.raw.len(), b.raw.len());
        let entry = size_of::<(u64, CapturedRequest)>() + 1;
        h.hold(a);
        assert!(!h.is_empty());
        assert_eq!((h.len(), h.payload_bytes()), (1, la));
        assert_eq!(h.heap_bytes(), la + ca * span + entry);
        h.hold(b);
        assert_eq!((h.len(), h.payload_bytes()), (2, la + lb));
        assert_eq!(h.heap_bytes(), la + lb + (ca + cb) * span + 2 * entry);
        assert_eq!(h.take(1).map(|r| r.id), Some(1));
        assert_eq!(h.heap_bytes(), lb + cb * span + entry);
        assert_eq!(h.take(2).map(|r| r.id), Some(2));
        assert!(h.is_empty());
        assert_eq!(h.heap_bytes(), 0);
    }

    #[test]
    fn a_burst_of_held_requests_gives_its_map_back_once_all_are_answered() {
        let req = |id| CapturedRequest::builder(b"GET / HTTP/1.1\r\n\r\n").id(id).build();
        let mut h = HeldRequests::new(true);
        // A burst one past the threshold, in two waves: the map is given back only once the
        // burst is over, however low the map's capacity() has gone meanwhile.
        let n = HELD_MAP_KEPT as u64 + 1;
        for id in 1..=n {
            h.hold(req(id));
        }
        for id in 1..n {
            assert_eq!(h.take(id).map(|r| r.id), Some(id));
        }
        assert!(h.by_id.capacity() > 0, "one still held");
        h.hold(req(n + 1));
        assert_eq!(h.take(n).map(|r| r.id), Some(n));
        assert_eq!(h.take(n + 1).map(|r| r.id), Some(n + 1));
        assert_eq!((h.len(), h.by_id.capacity()), (0, 0), "the burst's map is given back");
        assert_eq!(h.take(n), None);
        // A burst of exactly the threshold keeps its map for the next requests, and so does
        // a single request; then a burst past it counts from the empty map again.
        for id in 1..=HELD_MAP_KEPT as u64 {
            h.hold(req(id));
        }
        for id in 1..=HELD_MAP_KEPT as u64 {
            assert_eq!(h.take(id).map(|r| r.id), Some(id));
        }
        assert!(h.by_id.capacity() > 0, "kept");
        h.hold(req(1));
        assert_eq!(h.take(1).map(|r| r.id), Some(1));
        assert!(h.by_id.capacity() > 0, "kept");
        for id in 1..=n {
            h.hold(req(id));
        }
        for id in 1..=n {
            assert_eq!(h.take(id).map(|r| r.id), Some(id));
        }
        assert_eq!(h.by_id.capacity(), 0, "given back");
    }

    #[test]
    fn queue_emptiness_follows_its_front() {
        let mut q = PendingQueue::default();
        assert!(q.is_empty());
        q.push_(p(1, 100, 1000, false));
        q.push_(p(2, 200, 1000, false));
        assert!(!q.is_empty());
        assert_eq!(q.clear_(), 2);
        assert!(q.is_empty());
        assert_eq!(q.len(), 0);
    }

    #[test]
    fn a_pipelined_burst_gives_its_queue_memory_back() {
        let mut q = PendingQueue::default();
        q.push_(p(1, 100, 1000, false));
        assert_eq!(q.heap_bytes(), 0, "the front lives inline");
        q.push_(p(2, 200, 1000, false));
        q.push_(p(3, 300, 1000, false));
        assert!(q.heap_bytes() >= 2 * size_of::<Pending>());
        assert_eq!(paired_id(q.pair_(1000, 300, false)), Some(1));
        assert!(q.heap_bytes() > 0, "one still behind the front");
        assert_eq!(paired_id(q.pair_(1100, 300, true)), Some(2));
        assert_eq!((q.len(), q.heap_bytes()), (1, 0));
    }
}
