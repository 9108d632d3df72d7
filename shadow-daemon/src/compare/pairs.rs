//! Where the two halves of a pair meet: the primary's response arrives from capture, the
//! shadow's from replay, in either order. The first one waits here, keyed by request id, until
//! the other comes, the wait times out, or the memory bound evicts it (oldest first); every
//! half that leaves without its partner is reported with a reason, never dropped silently.

use std::{
    collections::{BTreeMap, VecDeque},
    time::Duration,
};

use super::{ResponseSample, ShadowFailure, UnpairedReason};
use crate::{rule::RuleId, trace_link::TraceLink};

/// The shadow's half: a response, or why there is none.
#[derive(Clone, Debug)]
pub enum ShadowHalf {
    Response(ResponseSample),
    Failed(ShadowFailure),
}

/// A waiting half, with what it needs to be compared or counted later. Only the shadow's side
/// knows the rule and endpoint for sure (replay routed the request): a pair takes them from it.
#[derive(Clone, Debug)]
enum Half {
    Primary(ResponseSample),
    Shadow {
        rule: RuleId,
        /// The rule's comparison epoch when the shadow request went out.
        epoch: u64,
        endpoint: String,
        half: ShadowHalf,
        trace: Option<Box<TraceLink>>,
    },
}

/// How a shadow request went out: what its half carries to the pair.
#[derive(Clone, Debug)]
pub struct Sent<'a> {
    pub rule: RuleId,
    /// The rule's comparison epoch when the request went out.
    pub epoch: u64,
    pub endpoint: &'a str,
    /// Its production trace and the shadow's new one.
    pub trace: Option<Box<TraceLink>>,
}

#[derive(Clone, Debug)]
struct Waiting {
    half: Half,
    since_ns: u64,
    bytes: usize,
}

/// What leaves the table.
#[derive(Clone, Debug)]
pub enum PairEvent {
    /// Both halves: compare them (`epoch`: the shadow half's, see [`PairTable::shadow`]).
    Pair {
        rule: RuleId,
        epoch: u64,
        endpoint: String,
        primary: ResponseSample,
        shadow: ShadowHalf,
        trace: Option<Box<TraceLink>>,
    },
    /// A shadow half whose primary never came (or was evicted): count, do not compare.
    Unpaired { rule: RuleId, epoch: u64, endpoint: String, reason: UnpairedReason },
}

/// Limits of the table.
#[derive(Clone, Copy, Debug)]
pub struct PairLimits {
    pub max_entries: usize,
    pub max_bytes: usize,
    /// How long a half waits for the other.
    pub timeout: Duration,
}

impl Default for PairLimits {
    fn default() -> Self {
        Self { max_entries: 4096, max_bytes: 32 << 20, timeout: Duration::from_secs(10) }
    }
}

#[derive(Debug)]
pub struct PairTable {
    limits: PairLimits,
    waiting: BTreeMap<u64, Waiting>,
    /// Arrival order, for the oldest-first eviction and expiry (may hold ids already gone).
    order: VecDeque<u64>,
    bytes: usize,
    /// Primary halves that left alone: no shadow result ever came for them (not replayed:
    /// method not allowed, queue full, ...). Expected, counted for the record.
    pub primary_alone: u64,
}

fn sample_bytes(s: &ResponseSample) -> usize {
    s.body.len() + s.headers.iter().map(|(n, v)| n.len() + v.len() + 16).sum::<usize>() + 96
}

impl PairTable {
    pub fn new(limits: PairLimits) -> Self {
        Self { limits, waiting: BTreeMap::new(), order: VecDeque::new(), bytes: 0, primary_alone: 0 }
    }

    pub fn len(&self) -> usize {
        self.waiting.len()
    }

    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }

    /// Bytes held by waiting halves (bodies and headers).
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The primary's half of request `id`.
    pub fn primary(&mut self, id: u64, s: ResponseSample, now_ns: u64, out: &mut Vec<PairEvent>) {
        match self.take(id) {
            Some(Waiting { half: Half::Shadow { rule, epoch, endpoint, half, trace }, .. }) => {
                out.push(PairEvent::Pair { rule, epoch, endpoint, primary: s, shadow: half, trace });
            }
            // A second primary for the same id cannot happen (ids are unique); keep the first.
            Some(w) => self.put(id, w, out),
            None => {
                let bytes = sample_bytes(&s);
                self.put(id, Waiting { half: Half::Primary(s), since_ns: now_ns, bytes }, out);
            }
        }
    }

    /// The shadow's half of request `id`, sent as `sent` says (its epoch is carried to the pair,
    /// so a pair of an earlier epoch is told apart).
    pub fn shadow(&mut self, id: u64, sent: Sent<'_>, s: ShadowHalf, now_ns: u64, out: &mut Vec<PairEvent>) {
        let Sent { rule, epoch, endpoint, trace } = sent;
        match self.take(id) {
            Some(Waiting { half: Half::Primary(p), .. }) => {
                out.push(PairEvent::Pair { rule, epoch, endpoint: endpoint.to_string(), primary: p, shadow: s, trace });
            }
            Some(w) => self.put(id, w, out),
            None => {
                let bytes = match &s {
                    ShadowHalf::Response(r) => sample_bytes(r),
                    ShadowHalf::Failed(_) => 96,
                };
                let half = Half::Shadow { rule, epoch, endpoint: endpoint.to_string(), half: s, trace };
                self.put(id, Waiting { half, since_ns: now_ns, bytes }, out);
            }
        }
    }

    /// Halves that waited longer than the timeout leave.
    pub fn expire(&mut self, now_ns: u64, out: &mut Vec<PairEvent>) {
        let timeout = u64::try_from(self.limits.timeout.as_nanos()).unwrap_or(u64::MAX);
        while let Some(&id) = self.order.front() {
            match self.waiting.get(&id) {
                None => {
                    self.order.pop_front();
                }
                Some(w) if now_ns.saturating_sub(w.since_ns) >= timeout => {
                    self.order.pop_front();
                    if let Some(w) = self.take(id) {
                        self.leave(w, UnpairedReason::PrimaryMissing, out);
                    }
                }
                Some(_) => break,
            }
        }
    }

    /// Everything waiting leaves (shutdown).
    pub fn drain(&mut self, out: &mut Vec<PairEvent>) {
        let all: Vec<u64> = self.waiting.keys().copied().collect();
        for id in all {
            if let Some(w) = self.take(id) {
                self.leave(w, UnpairedReason::PrimaryMissing, out);
            }
        }
        self.order.clear();
    }

    fn take(&mut self, id: u64) -> Option<Waiting> {
        let w = self.waiting.remove(&id)?;
        self.bytes -= w.bytes;
        Some(w)
    }

    fn put(&mut self, id: u64, w: Waiting, out: &mut Vec<PairEvent>) {
        // Make room first: the oldest leave, counted as evicted by the memory bound.
        while !self.waiting.is_empty()
            && (self.waiting.len() >= self.limits.max_entries || self.bytes + w.bytes > self.limits.max_bytes)
        {
            let Some(old) = self.order.pop_front() else { break };
            if let Some(ow) = self.take(old) {
                self.leave(ow, UnpairedReason::MemoryBound, out);
            }
        }
        if w.bytes > self.limits.max_bytes {
            self.leave(w, UnpairedReason::MemoryBound, out);
            return;
        }
        self.bytes += w.bytes;
        self.waiting.insert(id, w);
        self.order.push_back(id);
    }

    fn leave(&mut self, w: Waiting, reason: UnpairedReason, out: &mut Vec<PairEvent>) {
        match w.half {
            Half::Shadow { rule, epoch, endpoint, .. } => {
                out.push(PairEvent::Unpaired { rule, epoch, endpoint, reason })
            }
            Half::Primary(_) => self.primary_alone += 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    fn sent(rule: RuleId, epoch: u64, endpoint: &str) -> Sent<'_> {
        Sent { rule, epoch, endpoint, trace: None }
    }

    fn sample(status: u16, body: &'static [u8]) -> ResponseSample {
        ResponseSample {
            status,
            headers: vec![],
            body: Bytes::from_static(body),
            body_complete: true,
            body_len: body.len() as u64,
            latency: Some(Duration::from_millis(1)),
        }
    }

    fn limits(entries: usize, bytes: usize) -> PairLimits {
        PairLimits { max_entries: entries, max_bytes: bytes, timeout: Duration::from_secs(1) }
    }

    fn pairs(ev: &[PairEvent]) -> usize {
        ev.iter().filter(|e| matches!(e, PairEvent::Pair { .. })).count()
    }

    #[test]
    fn halves_meet_in_either_order() {
        let mut t = PairTable::new(PairLimits::default());
        let mut ev = Vec::new();
        t.primary(1, sample(200, b"x"), 0, &mut ev);
        t.shadow(2, sent(RuleId::new(1), 7, "GET /b"), ShadowHalf::Response(sample(200, b"y")), 0, &mut ev);
        assert!(ev.is_empty());
        assert_eq!((t.len(), t.bytes() > 0), (2, true));
        t.shadow(1, sent(RuleId::new(0), 7, "GET /a"), ShadowHalf::Response(sample(500, b"z")), 1, &mut ev);
        t.primary(2, sample(200, b"y"), 1, &mut ev);
        assert_eq!(pairs(&ev), 2);
        match &ev[0] {
            PairEvent::Pair { rule, epoch, endpoint, primary, shadow: ShadowHalf::Response(s), .. } => {
                assert_eq!((*rule, endpoint.as_str(), primary.status, s.status), (RuleId::new(0), "GET /a", 200, 500));
                assert_eq!(*epoch, 7, "the shadow half's epoch");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!((t.len(), t.bytes()), (0, 0), "nothing held once paired");
    }

    #[test]
    fn a_shadow_half_without_primary_times_out_as_primary_missing() {
        let mut t = PairTable::new(limits(10, 1 << 20));
        let mut ev = Vec::new();
        t.shadow(1, sent(RuleId::new(0), 7, "GET /a"), ShadowHalf::Failed(ShadowFailure::Timeout), 0, &mut ev);
        t.primary(2, sample(200, b""), 500_000_000, &mut ev);
        t.expire(999_999_999, &mut ev);
        assert!(ev.is_empty(), "not yet");
        t.expire(1_000_000_000, &mut ev);
        assert!(matches!(&ev[..], [PairEvent::Unpaired { reason: UnpairedReason::PrimaryMissing, .. }]), "{ev:?}");
        t.expire(1_500_000_000, &mut ev);
        assert_eq!(ev.len(), 1, "a primary alone leaves without an event");
        assert_eq!(t.primary_alone, 1);
        assert!(t.is_empty());
        assert_eq!(t.bytes(), 0);
    }

    #[test]
    fn the_bounds_evict_the_oldest_and_say_so() {
        let mut t = PairTable::new(limits(2, 1 << 20));
        let mut ev = Vec::new();
        for id in 0..3 {
            t.shadow(id, sent(RuleId::new(0), 7, "GET /a"), ShadowHalf::Response(sample(200, b"body")), id, &mut ev);
        }
        assert!(matches!(&ev[..], [PairEvent::Unpaired { reason: UnpairedReason::MemoryBound, .. }]), "{ev:?}");
        assert_eq!(t.len(), 2);
        // Id 0 was evicted: its primary now waits alone instead of pairing.
        t.primary(0, sample(200, b"body"), 4, &mut ev);
        assert_eq!(pairs(&ev), 0);

        // Byte bound: each half ~100 bytes; a bound of 250 holds two.
        let mut t = PairTable::new(limits(100, 250));
        let mut ev = Vec::new();
        for id in 0..5 {
            t.primary(id, sample(200, b"0123"), id, &mut ev);
            assert!(t.bytes() <= 250, "{}", t.bytes());
        }
        assert_eq!(t.len(), 2);
        assert_eq!(t.primary_alone, 3);
        // A half larger than the whole bound never enters.
        let big = ResponseSample { body: Bytes::from(vec![0u8; 1000]), ..sample(200, b"") };
        t.shadow(9, sent(RuleId::new(0), 7, "GET /a"), ShadowHalf::Response(big), 9, &mut ev);
        assert!(matches!(ev.last(), Some(PairEvent::Unpaired { reason: UnpairedReason::MemoryBound, .. })));
        assert!(t.bytes() <= 250);
    }

    /// What a waiting half costs, exactly (body, each header's name and value and 16, and 96;
    /// a failed shadow 96), and both bounds hold at exactly their value.
    #[test]
    fn bytes_held_exactly_and_the_bounds_at_their_value() {
        let d = PairLimits::default();
        assert_eq!((d.max_entries, d.max_bytes, d.timeout), (4096, 32 * 1024 * 1024, Duration::from_secs(10)));
        let with_header = ResponseSample { headers: vec![("ab".into(), b"xyz".to_vec())], ..sample(200, b"0123") };
        assert_eq!(sample_bytes(&with_header), 4 + (2 + 3 + 16) + 96);
        let mut t = PairTable::new(limits(2, 300));
        let mut ev = Vec::new();
        t.primary(1, with_header.clone(), 0, &mut ev);
        assert_eq!((t.len(), t.is_empty(), t.bytes()), (1, false, 121));
        t.shadow(2, sent(RuleId::new(0), 7, "GET /a"), ShadowHalf::Failed(ShadowFailure::Timeout), 0, &mut ev);
        assert_eq!((t.len(), t.bytes()), (2, 121 + 96));
        t.shadow(1, sent(RuleId::new(0), 7, "GET /a"), ShadowHalf::Failed(ShadowFailure::Connect), 1, &mut ev);
        assert_eq!((pairs(&ev), t.len(), t.bytes()), (1, 1, 96));

        // 100 bytes a half: a bound of 200 holds exactly two; the third evicts the oldest.
        let mut t = PairTable::new(limits(100, 200));
        let mut ev = Vec::new();
        t.shadow(1, sent(RuleId::new(0), 7, "GET /a"), ShadowHalf::Response(sample(200, b"0123")), 0, &mut ev);
        t.shadow(2, sent(RuleId::new(0), 7, "GET /a"), ShadowHalf::Response(sample(200, b"0123")), 0, &mut ev);
        assert_eq!((ev.len(), t.len(), t.bytes()), (0, 2, 200), "at the byte bound, nothing leaves");
        t.shadow(3, sent(RuleId::new(0), 7, "GET /a"), ShadowHalf::Response(sample(200, b"0123")), 0, &mut ev);
        assert_eq!((ev.len(), t.len(), t.bytes()), (1, 2, 200));
        t.primary(1, sample(200, b""), 0, &mut ev);
        assert_eq!(pairs(&ev), 0, "id 1, the oldest, was the one evicted");
        // A half of exactly the whole bound enters an empty table.
        let mut t = PairTable::new(limits(100, 100));
        let mut ev = Vec::new();
        t.shadow(1, sent(RuleId::new(0), 7, "GET /a"), ShadowHalf::Response(sample(200, b"0123")), 0, &mut ev);
        assert_eq!((ev.len(), t.len(), t.bytes()), (0, 1, 100));
    }

    /// A second half of the same side for an id waiting (ids are unique, so a bug upstream):
    /// the first is kept, and the pair is made with it.
    #[test]
    fn a_second_half_of_the_same_side_keeps_the_first() {
        let mut t = PairTable::new(PairLimits::default());
        let mut ev = Vec::new();
        t.primary(1, sample(201, b"first"), 0, &mut ev);
        t.primary(1, sample(202, b"second"), 0, &mut ev);
        assert_eq!((ev.len(), t.len(), t.bytes()), (0, 1, 5 + 96));
        t.shadow(1, sent(RuleId::new(0), 7, "GET /a"), ShadowHalf::Failed(ShadowFailure::Timeout), 0, &mut ev);
        assert!(matches!(&ev[..], [PairEvent::Pair { primary, .. }] if primary.status == 201), "{ev:?}");
        let mut ev = Vec::new();
        t.shadow(2, sent(RuleId::new(3), 7, "GET /b"), ShadowHalf::Failed(ShadowFailure::Timeout), 0, &mut ev);
        t.shadow(2, sent(RuleId::new(3), 7, "GET /b"), ShadowHalf::Failed(ShadowFailure::Connect), 0, &mut ev);
        assert_eq!((ev.len(), t.len(), t.bytes()), (0, 1, 96));
        t.primary(2, sample(200, b""), 0, &mut ev);
        match &ev[..] {
            [PairEvent::Pair { rule, endpoint, shadow: ShadowHalf::Failed(f), .. }] => {
                assert_eq!((*rule, endpoint.as_str(), *f), (RuleId::new(3), "GET /b", ShadowFailure::Timeout));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn drain_reports_every_waiting_shadow_half() {
        let mut t = PairTable::new(PairLimits::default());
        let mut ev = Vec::new();
        t.shadow(1, sent(RuleId::new(0), 7, "a"), ShadowHalf::Failed(ShadowFailure::Connect), 0, &mut ev);
        t.shadow(2, sent(RuleId::new(0), 7, "a"), ShadowHalf::Failed(ShadowFailure::Connect), 0, &mut ev);
        t.primary(3, sample(200, b""), 0, &mut ev);
        t.drain(&mut ev);
        assert_eq!(ev.len(), 2);
        assert_eq!(t.primary_alone, 1);
        assert!(t.is_empty());
        assert_eq!(t.bytes(), 0);
    }
}
