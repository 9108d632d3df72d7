//! Memory and segment accounting, exactly: what a flow costs idle, what each buffer adds, what the
//! cap evicts at its boundary, and the counters of every push. The bounds the other tests check
//! (`memory <= cap`, `reconciles()`) hold for wrong numbers too; these pin the numbers.

use super::{
    super::{flow::Flow, *},
    support::*,
};
use crate::http::MessageCounters;

/// A segment that says nothing about the other direction (no ACK flag): its holes stay open.
fn no_ack(mut s: Segment) -> Segment {
    s.tcp_flags &= !tcp_flags::ACK;
    s
}

/// The client ports of the flows tracked, most recently used first.
fn lru(ex: &Extractor) -> Vec<u16> {
    ex.flows().map(|f| f.id.client.port()).collect()
}

/// A flow that holds something in each of its four buffers: a request head and a response head
/// in progress, and a piece waiting beyond a hole in each direction.
fn everything_buffered(ex: &mut Extractor, port: u16) {
    let mut c = Conn::new(false, port, 1, 1);
    let mut segs = vec![no_ack(c.client(b"GET /a HTTP/1.1\r\nHost: x\r\n"))];
    c.skip_client(5);
    segs.push(no_ack(c.client(b"1234567")));
    segs.push(no_ack(c.server(b"HTTP/1.1 200 OK\r\nContent-Le")));
    c.skip_server(3);
    segs.push(no_ack(c.server(b"123456789")));
    let _ = feed(ex, segs);
}

/// What the extractor's gauges must say: every tracked flow's state plus each buffer's heap, and
/// the payload bytes each holds.
fn sum_of_parts(ex: &Extractor) -> (u64, u64) {
    ex.flows().fold((0, 0), |(mem, buffered), f| {
        let (heap, held) = f.parts();
        (
            mem + (Extractor::idle_flow_bytes() + heap.iter().sum::<usize>()) as u64,
            buffered + held.iter().sum::<usize>() as u64,
        )
    })
}

#[test]
fn an_idle_flow_costs_its_slot_its_index_entry_and_two_list_places() {
    // The slab slot, then the hash map's entry (a 64-byte FlowId and a 4-byte index, plus one
    // control byte, at 7/8 load: 69 * 8 / 7 = 78), one byte of slack and the free-list and
    // hole-list places (4 bytes each).
    assert_eq!(size_of::<(FlowId, u32)>(), 68);
    assert_eq!(Extractor::idle_flow_bytes(), size_of::<Option<Flow>>() + 78 + 1 + 8);
    assert!(Extractor::idle_flow_bytes() <= 512);
}

#[test]
fn flows_cost_exactly_their_state_from_creation_to_removal() {
    let idle = Extractor::idle_flow_bytes() as u64;
    let mut ex = Extractor::new(small_cfg());
    let mut out = Vec::new();

    // A bare FIN of a flow that is not tracked: counted as control, nothing created.
    let mut a = Conn::new(false, 42001, 1, 1);
    ex.push(a.client_fin(), a.ts, &mut out);
    let st = ex.stats();
    assert_eq!((st.segments_in, st.bytes_in, st.request_segments.control), (1, 0, 1));
    assert_eq!((st.flows_created, st.flows_active, st.memory_bytes), (0, 0, 0));

    // Bytes that start no request create a flow that holds nothing: it costs its state alone.
    let mut a = Conn::new(false, 42002, 1, 1);
    ex.push(a.client(b"{xx}"), a.ts, &mut out);
    let st = ex.stats();
    assert_eq!((st.flows_created, st.flows_active), (1, 1));
    assert_eq!((st.memory_bytes, st.buffered_bytes), (idle, 0));
    let mut b = Conn::new(true, 42003, 1, 1);
    ex.push(b.client(b"{yyyy}"), b.ts, &mut out);
    let st = ex.stats();
    assert_eq!((st.flows_created, st.flows_active), (2, 2));
    assert_eq!((st.memory_bytes, st.buffered_bytes), (2 * idle, 0));
    assert_eq!((st.segments_in, st.bytes_in), (3, 10));
    assert_eq!((st.request_segments.segments_in, st.request_segments.bytes_in), (3, 10));
    assert_eq!((st.response_segments.segments_in, st.response_segments.bytes_in), (0, 0));

    // A flow that buffers costs its state plus every buffer's heap; removing it gives it all back.
    everything_buffered(&mut ex, 42004);
    let st = ex.stats();
    assert_eq!((st.flows_created, st.flows_active), (3, 3));
    assert_eq!(sum_of_parts(&ex), (st.memory_bytes, st.buffered_bytes));
    assert_eq!(st.buffered_bytes, 26 + 7 + 27 + 9);
    assert!(st.memory_bytes >= 3 * idle + st.buffered_bytes, "{st:?}");

    ex.clear(DropReason::Incomplete, &mut out);
    let st = ex.stats();
    assert_eq!((st.flows_active, st.memory_bytes, st.buffered_bytes), (0, 0, 0));
    assert_eq!((st.flows_closed, st.flows_evicted, st.flows_expired), (3, 0, 0));
}

#[test]
fn every_buffer_of_a_flow_is_accounted_with_its_own_bytes() {
    let mut ex = Extractor::new(small_cfg());
    everything_buffered(&mut ex, 42010);
    let f = ex.flows().next().expect("one flow");
    let (heap, held) = f.parts();
    // Out of order: 7 request bytes and 9 response bytes behind their holes; in progress: the
    // 26-byte request head and the 27-byte response head.
    assert_eq!(held, [7, 9, 26, 27]);
    for (h, b) in heap.iter().zip(held) {
        assert!(*h >= b && *h > 0, "heap {heap:?} holds {held:?}");
    }
    assert_eq!(heap[4], 0, "no request waits for its response yet");
    let st = ex.stats();
    assert_eq!(st.buffered_bytes, 69);
    assert_eq!(st.memory_bytes, (Extractor::idle_flow_bytes() + heap.iter().sum::<usize>()) as u64);
    assert_eq!(st.request_segments.buffered, 1);
    assert_eq!(st.response_segments.buffered, 1);

    // Requests waiting for their responses cost their queue's heap too.
    let mut c = Conn::new(false, 42011, 1, 1);
    let mut pipelined = Vec::new();
    for _ in 0..3 {
        pipelined.extend_from_slice(GET);
    }
    let _ = feed(&mut ex, [c.client(&pipelined)]);
    let f = ex.flows().next().expect("the pipelining flow, most recent");
    assert_eq!(f.id.client.port(), 42011);
    let (heap, held) = f.parts();
    assert!(heap[4] > 0, "two requests queue behind the first: {heap:?}");
    assert_eq!(held, [0, 0, 0, 0]);
    assert_eq!(sum_of_parts(&ex), (ex.stats().memory_bytes, ex.stats().buffered_bytes));
}

#[test]
fn memory_moves_with_each_change_of_a_flow() {
    let mut ex = Extractor::new(small_cfg());
    let mut c = Conn::new(false, 42020, 1, 1);
    let mut d = Conn::new(true, 42021, 1, 1);
    let mut out = Vec::new();
    let mut check = |ex: &mut Extractor, s: Segment| {
        let now = s.ts_ns;
        ex.push(s, now, &mut out);
        assert_eq!(sum_of_parts(ex), (ex.stats().memory_bytes, ex.stats().buffered_bytes));
    };
    // Grow and shrink two flows in turn: every push adds the difference, never the total.
    check(&mut ex, c.client(&POST[..20]));
    check(&mut ex, d.client(&POST[..30]));
    check(&mut ex, c.client(&POST[20..40]));
    c.skip_client(4);
    check(&mut ex, no_ack(c.client(b"abcd")));
    check(&mut ex, d.client(&POST[30..]));
    check(&mut ex, d.server(OK));
    let st = ex.stats();
    assert_eq!(st.buffered_bytes, 40 + 4, "c holds its 40 head bytes and 4 behind the hole");
    assert_eq!(st.requests.extracted, 1);
}

#[test]
fn the_cap_evicts_only_above_it_and_least_recently_used_first() {
    let idle = Extractor::idle_flow_bytes();
    let cfg = ExtractorConfig { memory_cap_bytes: 2 * idle, ..small_cfg() };
    let mut ex = Extractor::new(cfg);
    let mut out = Vec::new();
    let mut conns: Vec<Conn> = (0..3).map(|i| Conn::new(false, 42030 + i, 1, 1)).collect();
    ex.push(conns[0].client(b"{xx}"), 1, &mut out);
    ex.push(conns[1].client(b"{xx}"), 2, &mut out);
    // Exactly at the cap: nothing is evicted.
    assert_eq!((ex.stats().memory_bytes, ex.stats().flows_evicted), (2 * idle as u64, 0));
    assert_eq!(lru(&ex), [42031, 42030]);
    // Touching the older flow makes it the most recent.
    ex.push(conns[0].client(b"{xx}"), 3, &mut out);
    assert_eq!(lru(&ex), [42030, 42031]);
    ex.push(conns[2].client(b"{xx}"), 4, &mut out);
    let st = ex.stats();
    assert_eq!((st.flows_evicted, st.flows_closed, st.flows_expired), (1, 0, 0));
    assert_eq!((st.flows_active, st.flows_created, st.memory_bytes), (2, 3, 2 * idle as u64));
    assert_eq!(lru(&ex), [42032, 42030], "the least recently used flow went");
}

#[test]
fn the_flow_limit_evicts_when_reached_not_before() {
    let cfg = ExtractorConfig { max_flows: 2, ..small_cfg() };
    let mut ex = Extractor::new(cfg);
    let mut out = Vec::new();
    let mut conns: Vec<Conn> = (0..3).map(|i| Conn::new(false, 42040 + i, 1, 1)).collect();
    ex.push(conns[0].client(b"{xx}"), 1, &mut out);
    ex.push(conns[1].client(b"{xx}"), 2, &mut out);
    assert_eq!((ex.stats().flows_active, ex.stats().flows_evicted), (2, 0));
    ex.push(conns[2].client(b"{xx}"), 3, &mut out);
    assert_eq!((ex.stats().flows_active, ex.stats().flows_evicted), (2, 1));
    assert_eq!(lru(&ex), [42042, 42041]);
    // The freed slot is reused: the slab does not grow past the limit.
    assert_eq!(ex.slab.len(), 2);
}

#[test]
fn closing_both_ways_removes_the_flow_as_closed() {
    let mut ex = Extractor::new(small_cfg());
    let mut c = Conn::new(false, 42050, 1, 1);
    let ev = feed(&mut ex, [c.client(GET), c.server(OK), c.client_fin(), c.server_fin()]);
    assert_eq!(requests(&ev).len(), 1);
    let st = ex.stats();
    assert_eq!((st.flows_closed, st.flows_evicted, st.flows_expired, st.flows_active), (1, 0, 0, 0));
    assert_eq!((st.memory_bytes, st.buffered_bytes), (0, 0));
    assert_eq!((st.request_segments.control, st.response_segments.control), (1, 1));
    assert_eq!((st.request_segments.used, st.response_segments.used), (1, 1));
    assert_eq!((st.segments_in, st.bytes_in), (4, (GET.len() + OK.len()) as u64));
    assert_eq!(st.request_segments.stream_bytes, GET.len() as u64);
    assert_eq!(st.response_segments.bytes_in, OK.len() as u64);
}

#[test]
fn a_truncated_segment_of_an_untracked_flow_creates_it() {
    let mut ex = Extractor::new(small_cfg());
    let mut c = Conn::new(false, 42060, 1, 1);
    let mut s = c.client(GET);
    s.payload = Bytes::new();
    s.truncated = true;
    s.request_start = true;
    let _ = feed(&mut ex, [s]);
    let st = ex.stats();
    assert_eq!((st.flows_created, st.request_segments.control), (1, 0));
    assert_eq!(st.requests.dropped(DropReason::TruncatedCapture), 1);
}

#[test]
fn a_reused_port_pair_replaces_the_ended_flow() {
    let mut ex = Extractor::new(small_cfg());
    let mut c = Conn::new(false, 42070, 1, 1);
    let _ = feed(&mut ex, [c.client(GET), c.server(OK), c.client_fin()]);
    assert_eq!(ex.stats().flows_created, 1);
    // A new connection on the same ports: a request start on the ended client stream.
    let mut n = Conn::new(false, 42070, 5000, 7000);
    let ev = feed(&mut ex, [n.client(GET), n.server(OK)]);
    let st = ex.stats();
    assert_eq!((st.flows_created, st.flows_closed, st.flows_active), (2, 1, 1));
    assert_eq!(requests(&ev).len(), 1);
    // Bytes that look like a request but that the kernel did not flag as a new one (it drew no
    // decision there: the same request, or a late copy) start nothing on the ended stream.
    let mut m = Conn::new(false, 42070, 9000, 9500);
    let mut s = m.client(GET);
    s.request_start = false;
    let _ = feed(&mut ex, [n.client_fin()]);
    let ev = feed(&mut ex, [s, m.server(OK)]);
    assert_eq!((ex.stats().flows_created, ex.stats().flows_closed), (2, 1));
    assert!(requests(&ev).is_empty());
    // Bytes that start nothing on the ended stream are a late copy, not a new connection.
    let mut ex = Extractor::new(small_cfg());
    let mut c = Conn::new(false, 42071, 1, 1);
    let _ = feed(&mut ex, [c.client(GET), c.server(OK), c.client_fin()]);
    let _ = feed(&mut ex, [c.client(b"{trailing}")]);
    assert_eq!((ex.stats().flows_created, ex.stats().flows_closed), (1, 0));
}

#[test]
fn segment_reconciliation_fails_for_a_segment_without_an_outcome() {
    let mut sc = SegmentCounters { segments_in: 14, used: 2, control: 3, buffered: 5, ..Default::default() };
    sc.drop(DropReason::Gap);
    sc.drop(DropReason::Duplicate);
    sc.drop(DropReason::Duplicate);
    sc.drop(DropReason::Duplicate);
    assert_eq!((sc.dropped_total(), sc.dropped(DropReason::Duplicate), sc.dropped(DropReason::Gap)), (4, 3, 1));
    // 14 = 2 used + 3 control + 4 dropped + 5 buffered.
    assert!(sc.reconciles());
    for broken in [
        SegmentCounters { segments_in: 15, ..sc.clone() },
        SegmentCounters { used: 0, ..sc.clone() },
        SegmentCounters { control: 0, ..sc.clone() },
        SegmentCounters { buffered: 0, ..sc.clone() },
        SegmentCounters { dropped: [0; DropReason::COUNT], ..sc.clone() },
    ] {
        assert!(!broken.reconciles(), "{broken:?}");
    }
}

#[test]
fn extractor_reconciliation_fails_for_any_message_or_segment_without_an_outcome() {
    let mut requests = MessageCounters { seen: 9, extracted: 2, in_progress: 4, ..Default::default() };
    requests.dropped[DropReason::Gap.index()] = 3;
    let sc = SegmentCounters { segments_in: 6, used: 6, ..Default::default() };
    let ok = ExtractorStats {
        segments_in: 10,
        requests: requests.clone(),
        responses: requests.clone(),
        request_segments: sc.clone(),
        response_segments: SegmentCounters { segments_in: 4, used: 4, ..Default::default() },
        ..Default::default()
    };
    assert!(ok.reconciles());
    let lost = MessageCounters { seen: 10, ..requests.clone() };
    let no_progress = MessageCounters { in_progress: 0, ..requests.clone() };
    let no_drops = MessageCounters { dropped: [0; DropReason::COUNT], ..requests.clone() };
    for broken in [
        ExtractorStats { requests: lost.clone(), ..ok.clone() },
        ExtractorStats { requests: no_progress.clone(), ..ok.clone() },
        ExtractorStats { requests: no_drops, ..ok.clone() },
        ExtractorStats { responses: lost, ..ok.clone() },
        ExtractorStats { responses: no_progress, ..ok.clone() },
        ExtractorStats { request_segments: SegmentCounters { used: 5, ..sc.clone() }, ..ok.clone() },
        ExtractorStats { response_segments: sc.clone(), ..ok.clone() },
        ExtractorStats { segments_in: 11, ..ok.clone() },
    ] {
        assert!(!broken.reconciles(), "{broken:?}");
    }
}

#[test]
fn counters_are_read_by_direction_and_listed_with_every_label() {
    let mut ex = Extractor::new(small_cfg());
    let mut c = Conn::new(false, 42080, 1, 1);
    let _ = feed(&mut ex, [c.client(GET), c.server(OK), c.client(GET), c.server(OK), c.client(&POST[..30])]);
    ex.clear(DropReason::Incomplete, &mut Vec::new());
    let st = ex.stats();
    assert_eq!((st.requests_extracted(), st.responses_extracted()), (2, 2));
    assert_eq!(st.segments(Direction::Request).segments_in, 3);
    assert_eq!(st.segments(Direction::Response).segments_in, 2);
    assert_eq!(st.messages(Direction::Request).dropped(DropReason::Incomplete), 1);
    assert_eq!(st.messages(Direction::Response).seen, 2);
    let drops: Vec<_> = st.drops().filter(|d| d.2 > 0).collect();
    assert_eq!(drops, [(DropReason::Incomplete, Direction::Request, 1)]);
    assert_eq!(st.drops().count(), 2 * DropReason::COUNT);
    let segs: Vec<_> = st.segment_drops().collect();
    assert_eq!(segs.len(), 2 * DropReason::COUNT);
    assert!(segs.iter().all(|d| d.2 == 0), "{segs:?}");
    assert_eq!(segs[0], (DropReason::ALL[0], Direction::Request, 0));
    assert_eq!(segs[DropReason::COUNT].1, Direction::Response);
}

#[test]
fn only_flows_with_a_hole_wait_for_the_gap_timer() {
    let mut ex = Extractor::new(small_cfg());
    let mut a = Conn::new(false, 42090, 1, 1);
    let _ = feed(&mut ex, [a.client(GET), a.server(OK)]);
    assert!(ex.hole_flows.is_empty(), "a flow without a hole is not listed");
    let mut b = Conn::new(false, 42091, 1, 1);
    let mut segs = vec![no_ack(b.client(&POST[..20]))];
    b.skip_client(10);
    segs.push(no_ack(b.client(&POST[30..])));
    let _ = feed(&mut ex, segs);
    let _ = feed(&mut ex, [a.client(GET)]);
    assert_eq!(ex.hole_flows.len(), 1, "the flow with a hole, once");
    let idx = ex.index[&b.flow];
    assert_eq!(ex.hole_flows, [idx]);
    // The timer gives the hole up; the list empties.
    let mut out = Vec::new();
    ex.tick(b.ts + ex.config().gap_timeout_ns, &mut out);
    assert!(ex.hole_flows.is_empty());
    assert_eq!(req_drops(&ex, DropReason::Gap), 1);
}

#[test]
fn removing_the_most_recent_flow_hands_the_head_to_the_next() {
    let mut ex = Extractor::new(small_cfg());
    let mut a = Conn::new(false, 42100, 1, 1);
    let mut b = Conn::new(false, 42101, 1, 1);
    let _ = feed(&mut ex, [a.client(b"{xx}"), b.client(b"{xx}")]);
    assert_eq!(lru(&ex), [42101, 42100]);
    // The most recent flow resets: it goes, and the older one is the whole list.
    let _ = feed(&mut ex, [b.client_rst()]);
    assert_eq!(lru(&ex), [42100]);
    assert_eq!((ex.stats().flows_active, ex.stats().flows_closed), (1, 1));
    let mut c = Conn::new(false, 42102, 1, 1);
    let _ = feed(&mut ex, [c.client(b"{xx}")]);
    assert_eq!(lru(&ex), [42102, 42100]);
    // And the least recent one, from the other end.
    let _ = feed(&mut ex, [a.client_rst()]);
    assert_eq!(lru(&ex), [42102]);
    let _ = feed(&mut ex, [c.client_rst()]);
    assert_eq!(lru(&ex), Vec::<u16>::new());
    assert_eq!((ex.stats().flows_active, ex.stats().memory_bytes), (0, 0));
}

#[test]
fn a_content_length_reserves_at_most_64_kib_ahead() {
    // Two requests alike but for what their Content-Length promises past the 10 body bytes
    // of their first segment: 1 byte, or far more than the look-ahead.
    let heap_of =
        |length: &str| heap_of_request(&format!("POST /r HTTP/1.1\r\nContent-Length: {length}\r\n\r\n0123456789"));
    assert_eq!(heap_of("1000000") - heap_of("0000011"), 64 * 1024 - 1);
}

#[test]
fn a_request_in_progress_costs_its_header_spans() {
    // Heads of the same length, one with a field line more.
    let one = heap_of_request("POST /r HTTP/1.1\r\nContent-Length: 5\r\nXx: aaaaaa\r\n\r\n01");
    let two = heap_of_request("POST /r HTTP/1.1\r\nContent-Length: 5\r\nX: a\r\nY: b\r\n\r\n01");
    assert_eq!(two - one, size_of::<crate::message::HeaderSpan>());
}

/// The request assembler's heap bytes after the first segment of a request, `head`.
fn heap_of_request(head: &str) -> usize {
    let mut ex = Extractor::new(small_cfg());
    let mut c = Conn::new(false, 45000, 1, 1);
    let _ = feed(&mut ex, [c.client(head.as_bytes())]);
    let (heap, buffered) = ex.flows().next().expect("one flow").parts();
    assert_eq!(buffered[2], head.len(), "the segment is copied");
    heap[2]
}

#[test]
fn a_content_length_alone_allocates_nothing() {
    // The head spans two segments and ends exactly with the second: no body byte is in yet,
    // and what the length promises reserves nothing.
    let heap_of = |length: &str| {
        let head = format!("POST /r HTTP/1.1\r\nContent-Length: {length}\r\n\r\n");
        let mut ex = Extractor::new(small_cfg());
        let mut c = Conn::new(false, 45010, 1, 1);
        let _ = feed(&mut ex, [c.client(&head.as_bytes()[..10]), c.client(&head.as_bytes()[10..])]);
        let (heap, buffered) = ex.flows().next().expect("one flow").parts();
        assert_eq!(buffered[2], head.len());
        heap[2]
    };
    assert_eq!(heap_of("60000"), heap_of("00010"));
}
