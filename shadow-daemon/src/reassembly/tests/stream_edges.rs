//! Stream edges the mutation run found unpinned: a segment ending exactly at the reordering
//! window, which copy wins where an in-order segment meets a waiting piece, copies after the FIN,
//! the kernel's request-start flag on an in-order truncated segment, what a response hole between
//! responses is, and what a waiting piece costs.

use super::{
    super::{
        stream::{MAX_OOO_PIECES, OOO_PIECE_BYTES},
        *,
    },
    support::*,
};

fn no_ack(mut s: Segment) -> Segment {
    s.tcp_flags &= !tcp_flags::ACK;
    s
}

#[test]
fn a_waiting_piece_costs_its_bookkeeping_and_its_bytes() {
    let mut ex = Extractor::new(small_cfg());
    let mut c = Conn::new(false, 43000, 1, 1);
    let mut segs = vec![no_ack(c.client(b"GET /a HTTP/1.1\r\nHost: x\r\n"))];
    c.skip_client(5);
    segs.push(no_ack(c.client(b"1234567")));
    let _ = feed(&mut ex, segs);
    let (heap, held) = ex.flows().next().expect("one flow").parts();
    assert_eq!(held[0], 7);
    let bookkeeping = heap[0] - 7;
    assert!(bookkeeping >= OOO_PIECE_BYTES && bookkeeping % OOO_PIECE_BYTES == 0, "{heap:?}");
}

#[test]
fn a_segment_ending_at_the_window_edge_waits_one_past_it_gives_the_hole_up() {
    let cfg = ExtractorConfig { ooo_window_bytes: 100, ..small_cfg() };
    let head = b"POST /w HTTP/1.1\r\nContent-Length: 1000\r\n\r\n";
    for (len, gap) in [(60usize, 0u64), (61, 1)] {
        let mut ex = Extractor::new(cfg.clone());
        let mut c = Conn::new(false, 43010, 1, 1);
        let mut segs = vec![no_ack(c.client(head))];
        c.skip_client(40);
        // Ends 40 + len bytes past the next expected byte: 100 is the window itself.
        segs.push(no_ack(c.client(&vec![b'x'; len])));
        let _ = feed(&mut ex, segs);
        assert_eq!(req_drops(&ex, DropReason::Gap), gap, "{len} bytes");
        assert_eq!(ex.stats().request_segments.buffered, 1 - gap, "{len} bytes");
    }
}

#[test]
fn where_an_in_order_copy_meets_a_waiting_piece_the_waiting_bytes_win() {
    let mut ex = Extractor::new(small_cfg());
    let mut c = Conn::new(false, 43020, 1, 1);
    let head = b"POST /f HTTP/1.1\r\nContent-Length: 10\r\n\r\n";
    let start = c.c_seq;
    let mut segs = vec![no_ack(c.client(head))];
    let body_seq = c.c_seq;
    // Body bytes 5..8 arrive first, then the whole body with other bytes there.
    c.c_seq = body_seq.wrapping_add(5);
    segs.push(no_ack(c.client(b"XYZ")));
    c.c_seq = body_seq;
    segs.push(no_ack(c.client(b"0123456789")));
    let ev = feed(&mut ex, segs);
    let raws = raws(&ev);
    assert_eq!(raws.len(), 1);
    assert!(raws[0].ends_with(b"01234XYZ89"), "{:?}", String::from_utf8_lossy(&raws[0]));
    assert_eq!(c.c_seq.wrapping_sub(start) as usize, head.len() + 10);
    assert_eq!(ex.stats().request_segments.overlap_bytes, 3);
}

#[test]
fn copies_after_the_fin_are_overlaps_only_below_it() {
    let mut ex = Extractor::new(small_cfg());
    let mut c = Conn::new(false, 43030, 1, 1);
    let body_at = c.c_seq.wrapping_add((POST.len() - 11) as u32);
    let _ = feed(&mut ex, [c.client(&POST[..POST.len() - 11]), c.client(&POST[POST.len() - 11..])]);
    // A retransmitted copy of the body (11 bytes before the FIN), sent before the answer.
    let mut again = c.clone();
    again.c_seq = body_at;
    let _ = feed(&mut ex, [c.server(OK), c.client_fin()]);
    let dup_before = ex.stats().request_segments.dropped(DropReason::Duplicate);
    let _ = feed(&mut ex, [again.client(b"hello world")]);
    // Bytes past the FIN are no copy of anything.
    let _ = feed(&mut ex, [c.client(b"}}")]);
    let sc = &ex.stats().request_segments;
    assert_eq!(sc.overlap_bytes, 11);
    assert_eq!(sc.dropped(DropReason::Duplicate), dup_before + 2);
}

#[test]
fn an_in_order_truncated_segment_flagged_as_a_request_start_is_a_request_lost() {
    let mut ex = Extractor::new(small_cfg());
    let mut c = Conn::new(false, 43040, 1, 1);
    let _ = feed(&mut ex, [c.client(GET), c.server(OK)]);
    let mut t = c.client(GET);
    t.payload = Bytes::new();
    t.truncated = true;
    t.request_start = true;
    let _ = feed(&mut ex, [t]);
    let r = &ex.stats().requests;
    assert_eq!((r.seen, r.extracted, r.dropped(DropReason::TruncatedCapture)), (2, 1, 1));
}

#[test]
fn a_response_hole_before_a_status_line_is_sampling_before_anything_else_a_loss() {
    for (next, skips) in [(OK, 1u64), (&b"garbage bytes"[..], 0)] {
        let mut ex = Extractor::new(small_cfg());
        let mut c = Conn::new(false, 43050, 1, 1);
        let _ = feed(&mut ex, [c.client(GET), c.server(OK)]);
        c.skip_server(50);
        let _ = feed(&mut ex, [no_ack(c.server(next))]);
        // The client acknowledges past the hole: it is final.
        let _ = feed(&mut ex, [c.client(b"")]);
        assert_eq!(ex.stats().response_segments.sampling_skips, skips, "{:?}", String::from_utf8_lossy(next));
    }
}

#[test]
fn a_copy_of_bytes_already_seen_out_of_sync_is_an_overlap() {
    let mut ex = Extractor::new(small_cfg());
    let mut c = Conn::new(false, 43060, 1, 1);
    let first = c.c_seq;
    let _ = feed(&mut ex, [c.client(b"not a request")]);
    c.c_seq = first;
    let _ = feed(&mut ex, [c.client(b"not a request")]);
    let sc = &ex.stats().request_segments;
    assert_eq!(sc.overlap_bytes, 13);
    assert_eq!(sc.dropped(DropReason::Duplicate), 1);
}

#[test]
fn a_truncated_copy_starting_inside_delivered_bytes_starts_no_request() {
    let mut ex = Extractor::new(small_cfg());
    let mut c = Conn::new(false, 43070, 1, 1);
    let _ = feed(&mut ex, [c.client(GET), c.server(OK)]);
    // Flagged as a request start, but its first 2 bytes were delivered already: the start the
    // kernel saw is not where the next request begins.
    c.c_seq = c.c_seq.wrapping_sub(2);
    let mut t = c.client(GET);
    t.payload = Bytes::new();
    t.truncated = true;
    t.request_start = true;
    let _ = feed(&mut ex, [t]);
    let r = &ex.stats().requests;
    assert_eq!((r.seen, r.dropped(DropReason::TruncatedCapture)), (1, 0));
    assert_eq!(ex.stats().request_segments.overlap_bytes, 2);
}

#[test]
fn a_truncated_segment_that_waited_out_of_order_still_drops_its_request() {
    let mut ex = Extractor::new(small_cfg());
    let mut c = Conn::new(false, 43080, 1, 1);
    let head = b"POST /t HTTP/1.1\r\nContent-Length: 20\r\n\r\n";
    let body_at = {
        let _ = feed(&mut ex, [no_ack(c.client(head))]);
        c.c_seq
    };
    // Body bytes 10..20 arrive first, not copied by the kernel; then bytes 0..10.
    c.c_seq = body_at.wrapping_add(10);
    let mut t = no_ack(c.client(b"0123456789"));
    t.payload = Bytes::new();
    t.truncated = true;
    t.request_start = false;
    c.c_seq = body_at;
    let ev = feed(&mut ex, [t, no_ack(c.client(b"abcdefghij"))]);
    assert!(requests(&ev).is_empty(), "a request with bytes the kernel did not copy is never emitted");
    let r = &ex.stats().requests;
    assert_eq!((r.extracted, r.dropped(DropReason::TruncatedCapture)), (0, 1));
}

/// A POST whose body has a hole at its start, with a piece waiting behind it; returns the
/// connection (its client sequence at the end of the piece) and where the hole starts.
fn post_with_a_hole(ex: &mut Extractor, port: u16) -> (Conn, u32) {
    let mut c = Conn::new(false, port, 1, 1);
    let _ = feed(ex, [no_ack(c.client(b"POST /h HTTP/1.1\r\nContent-Length: 20\r\n\r\n"))]);
    let hole = c.c_seq;
    c.skip_client(5);
    let _ = feed(ex, [no_ack(c.client(b"56789"))]);
    (c, hole)
}

#[test]
fn an_acknowledgment_up_to_a_quarter_of_the_sequence_space_ahead_is_believed() {
    for (jump, gap) in [(1u32 << 30, 1u64), ((1 << 30) + 1, 0)] {
        let mut ex = Extractor::new(small_cfg());
        let (mut c, hole) = post_with_a_hole(&mut ex, 43090);
        let mut ack = c.server(b"");
        ack.ack = hole.wrapping_add(jump);
        let _ = feed(&mut ex, [ack]);
        assert_eq!(req_drops(&ex, DropReason::Gap), gap, "ack {jump} ahead");
    }
}

#[test]
fn an_acknowledgment_past_a_hole_gives_it_up_even_with_the_fin_waiting_behind_it() {
    let mut ex = Extractor::new(small_cfg());
    let (mut c, hole) = post_with_a_hole(&mut ex, 43100);
    let _ = feed(&mut ex, [no_ack(c.client_fin())]);
    assert_eq!(req_drops(&ex, DropReason::Gap), 0, "the hole still waits");
    let mut ack = c.server(b"");
    ack.ack = hole.wrapping_add(5);
    let _ = feed(&mut ex, [ack]);
    assert_eq!(req_drops(&ex, DropReason::Gap), 1);
}

#[test]
fn a_segment_split_around_a_waiting_piece_is_dropped_once_at_teardown() {
    let mut ex = Extractor::new(small_cfg());
    let mut c = Conn::new(false, 43110, 1, 1);
    let _ = feed(&mut ex, [no_ack(c.client(b"POST /s HTTP/1.1\r\nContent-Length: 40\r\n\r\n"))]);
    let hole = c.c_seq;
    c.c_seq = hole.wrapping_add(10);
    let waiting = no_ack(c.client(b"AB"));
    // One segment over 5..15: stored as 5..10 and 12..15 around the piece received first.
    c.c_seq = hole.wrapping_add(5);
    let split = no_ack(c.client(b"0123456789"));
    let _ = feed(&mut ex, [waiting, split]);
    let sc = &ex.stats().request_segments;
    assert_eq!((sc.buffered, sc.overlap_bytes), (2, 2));
    assert_eq!(ex.stats().buffered_bytes, 2 + 5 + 3 + 40, "the pieces and the 40-byte head");
    ex.clear(DropReason::Incomplete, &mut Vec::new());
    let sc = &ex.stats().request_segments;
    assert_eq!((sc.buffered, sc.dropped(DropReason::Incomplete)), (0, 2), "two segments, two drops");
    assert!(sc.reconciles(), "{sc:?}");
}

/// A POST head at `t0`, then body bytes waiting out of order at 10..15 and 20..25 behind a hole
/// at 0, received at `t0`: returns the connection and where the hole starts.
fn body_waiting_behind_a_hole(ex: &mut Extractor, port: u16, t0: u64) -> (Conn, u32) {
    let mut c = Conn::new(false, port, 1, 1);
    let at = |mut s: Segment| {
        s.ts_ns = t0;
        no_ack(s)
    };
    let head = at(c.client(b"POST /t HTTP/1.1\r\nContent-Length: 40\r\n\r\n"));
    let hole = c.c_seq;
    c.c_seq = hole.wrapping_add(10);
    let a = at(c.client(b"AAAAA"));
    c.c_seq = hole.wrapping_add(20);
    let b = at(c.client(b"BBBBB"));
    let _ = feed(ex, [head, a, b]);
    assert_eq!(ex.stats().request_segments.buffered, 2);
    (c, hole)
}

#[test]
fn a_hole_filled_only_in_part_keeps_waiting_since_it_opened() {
    const T0: u64 = 1_000_000_000;
    let mut ex = Extractor::new(small_cfg());
    let timeout = ex.config().gap_timeout_ns;
    let (mut c, hole) = body_waiting_behind_a_hole(&mut ex, 43120, T0);
    // Bytes 0..5 arrive later: the hole is now 5..10, still the one that opened at T0.
    c.c_seq = hole;
    let mut part = no_ack(c.client(b"01234"));
    part.ts_ns = T0 + timeout / 2;
    let _ = feed(&mut ex, [part]);
    let mut ev = Vec::new();
    ex.tick(T0 + timeout - 1, &mut ev);
    assert_eq!(req_drops(&ex, DropReason::Gap), 0);
    ex.tick(T0 + timeout, &mut ev);
    assert_eq!(req_drops(&ex, DropReason::Gap), 1, "overdue counted from T0");
}

#[test]
fn a_hole_that_moves_past_a_waiting_piece_waits_afresh() {
    const T0: u64 = 1_000_000_000;
    let mut ex = Extractor::new(small_cfg());
    let timeout = ex.config().gap_timeout_ns;
    let (mut c, hole) = body_waiting_behind_a_hole(&mut ex, 43130, T0);
    // Bytes 0..10 arrive: 10..15 follow them in, and the hole is now 15..20, a new one.
    c.c_seq = hole;
    let mut fill = no_ack(c.client(b"0123456789"));
    let t1 = T0 + timeout / 2;
    fill.ts_ns = t1;
    let _ = feed(&mut ex, [fill]);
    assert_eq!(ex.stats().request_segments.buffered, 1);
    let mut ev = Vec::new();
    ex.tick(T0 + timeout, &mut ev);
    assert_eq!(req_drops(&ex, DropReason::Gap), 0, "not overdue from T0: the hole moved at t1");
    ex.tick(t1 + timeout - 1, &mut ev);
    assert_eq!(req_drops(&ex, DropReason::Gap), 0);
    ex.tick(t1 + timeout, &mut ev);
    assert_eq!(req_drops(&ex, DropReason::Gap), 1);
}

#[test]
fn a_truncated_piece_behind_a_final_hole_is_a_request_start_only_if_the_kernel_said_so() {
    for flagged in [true, false] {
        let mut ex = Extractor::new(small_cfg());
        let mut c = Conn::new(false, 43140, 1, 1);
        let _ = feed(&mut ex, [c.client(GET), c.server(OK)]);
        // Between requests: a hole (an unsampled request), then a segment the kernel did not
        // copy.
        c.skip_client(50);
        let mut t = no_ack(c.client(GET));
        t.payload = Bytes::new();
        t.truncated = true;
        t.request_start = flagged;
        let _ = feed(&mut ex, [t]);
        assert_eq!(ex.stats().request_segments.buffered, 1);
        // The server acknowledges past both: the hole is final.
        let _ = feed(&mut ex, [c.server(b"")]);
        let st = ex.stats();
        assert_eq!(st.request_segments.sampling_skips, u64::from(flagged), "flagged {flagged}");
        assert_eq!(st.requests.dropped(DropReason::TruncatedCapture), u64::from(flagged), "flagged {flagged}");
        assert_eq!(st.request_segments.buffered, 0);
    }
}

#[test]
fn the_part_of_a_segment_after_a_waiting_piece_is_no_segment_start() {
    let mut ex = Extractor::new(small_cfg());
    let mut c = Conn::new(false, 43150, 1, 1);
    let _ = feed(&mut ex, [c.client(GET), c.server(OK), c.client(GET)]);
    let hole = c.s_seq;
    c.s_seq = hole.wrapping_add(10);
    let waiting = no_ack(c.server(b"AB"));
    // One segment over 5..: stored as 5..10 and from 12 on, around the piece received first;
    // the bytes from 12 on look like a status line, but they do not begin a segment.
    c.s_seq = hole.wrapping_add(5);
    let split = no_ack(c.server(b"xxxxxABHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"));
    let _ = feed(&mut ex, [waiting, split]);
    assert_eq!(ex.stats().response_segments.buffered, 2);
    // The client acknowledges past it all: the hole is final, and what follows it is walked
    // out of sync.
    let _ = feed(&mut ex, [c.client(b"")]);
    let st = ex.stats();
    assert_eq!((st.responses.seen, st.response_segments.sampling_skips), (1, 0));
    assert_eq!(st.response_segments.buffered, 0);
}

/// Between requests, as many pieces as may wait, each the start of a request cut short by a
/// one-byte hole before the next: `MAX_OOO_PIECES` holes to give up one by one. Returns the
/// connection, its client sequence just past the last piece.
fn every_piece_behind_its_own_hole(ex: &mut Extractor, port: u16) -> Conn {
    let mut c = Conn::new(false, port, 1, 1);
    let _ = feed(ex, [c.client(GET), c.server(OK)]);
    let mut segs = Vec::new();
    for _ in 0..MAX_OOO_PIECES {
        c.skip_client(1);
        let mut s = no_ack(c.client(b"GET /p HTTP/1.1\r\n"));
        s.request_start = true;
        segs.push(s);
    }
    let _ = feed(ex, segs);
    assert_eq!(ex.stats().request_segments.buffered, MAX_OOO_PIECES as u64);
    c
}

#[test]
fn a_segment_beyond_the_window_gives_up_every_hole_and_is_still_delivered() {
    let mut ex = Extractor::new(ExtractorConfig { ooo_window_bytes: 64 * 1024, ..small_cfg() });
    let mut c = every_piece_behind_its_own_hole(&mut ex, 43160);
    // Far beyond the window: each hole is given up, each piece resyncs and starts a request the
    // next hole cuts; then the last one's hole, and the segment starts a request of its own.
    c.skip_client(100 * 1024);
    let mut far = no_ack(c.client(GET));
    far.request_start = true;
    let ev = feed(&mut ex, [far]);
    assert_eq!(raws(&ev), [GET.to_vec()]);
    let n = MAX_OOO_PIECES as u64;
    let st = ex.stats();
    assert_eq!((st.requests.seen, st.requests.extracted, st.requests.dropped(DropReason::Gap)), (n + 2, 2, n));
    assert_eq!((st.request_segments.sampling_skips, st.request_segments.buffered), (1, 0));
}

#[test]
fn an_acknowledgment_past_every_hole_gives_up_each_of_them() {
    let mut ex = Extractor::new(small_cfg());
    let mut c = every_piece_behind_its_own_hole(&mut ex, 43170);
    // The server acknowledges 5 bytes past the last piece: every hole up to there is final,
    // the one after the last piece too.
    c.skip_client(5);
    let _ = feed(&mut ex, [c.server(b"")]);
    let n = MAX_OOO_PIECES as u64;
    let st = ex.stats();
    assert_eq!((st.requests.seen, st.requests.extracted, st.requests.dropped(DropReason::Gap)), (n + 1, 1, n));
    assert_eq!((st.request_segments.sampling_skips, st.request_segments.buffered), (1, 0));
}
