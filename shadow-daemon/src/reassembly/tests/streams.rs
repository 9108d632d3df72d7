//! Byte streams: sequence numbers, reordering, retransmission, holes and gaps, sampling skips, truncation, FIN/RST, flow identity, drop accounting.

use super::{super::*, support::*};
use crate::http::MAX_PENDING;

#[test]
fn single_request_parsed_view_and_timestamps() {
    both_families(|v6| {
        let mut ex = Extractor::new(small_cfg());
        let mut c = Conn::new(v6, 40000, 1000, 5000);
        let seg = c.client(GET);
        let ts = seg.ts_ns;
        let ev = feed(&mut ex, [seg]);
        let r = requests(&ev);
        assert_eq!(r.len(), 1);
        let r = r[0];
        assert_eq!(&r.raw[..], GET);
        assert_eq!(r.method(), b"GET");
        assert_eq!(r.target(), b"/index.html?x=1");
        assert_eq!(r.minor_version, 1);
        assert_eq!(r.head_len, GET.len());
        assert_eq!(r.header("host"), Some(&b"example.com"[..]));
        assert_eq!(r.headers.len(), 2);
        assert_eq!(r.framing, BodyFraming::None);
        assert_eq!((r.first_ts_ns, r.last_ts_ns), (ts, ts));
        assert_eq!(r.flow, c.flow);
        assert_eq!(ex.stats().requests_extracted(), 1);
        assert_eq!(ex.stats().flows_active, 1);
    });
}

#[test]
fn sequence_numbers_wrap() {
    both_families(|v6| {
        let mut ex = Extractor::new(small_cfg());
        let mut c = Conn::new(v6, 40005, u32::MAX - 20, u32::MAX - 3);
        let mut segs = c.client_split(&[POST, GET].concat(), 8);
        segs.push(c.server(OK));
        segs.push(c.server(OK));
        let ev = feed(&mut ex, segs);
        assert_eq!(raws(&ev), vec![POST.to_vec(), GET.to_vec()]);
        assert_eq!(responses(&ev).len(), 2);
    });
}

#[test]
fn out_of_order_within_window_is_reordered() {
    both_families(|v6| {
        let all = [POST, GET, CHUNKED].concat();
        let mut c = Conn::new(v6, 40006, 100, 100);
        let segs = c.client_split(&all, 10);
        // Reverse every group of five after the first segment.
        let mut order: Vec<Segment> = vec![segs[0].clone()];
        for group in segs[1..].chunks(5) {
            order.extend(group.iter().rev().cloned());
        }
        let mut ex = Extractor::new(small_cfg());
        let ev = feed(&mut ex, order);
        assert_eq!(raws(&ev), vec![POST.to_vec(), GET.to_vec(), CHUNKED.to_vec()]);
        assert_eq!(ex.stats().buffered_bytes, 0);
        assert_eq!(ex.stats().request_segments.buffered, 0);
    });
}

#[test]
fn retransmission_and_overlap_first_received_bytes_win() {
    let mut c = Conn::new(false, 40007, 1000, 1);
    // POST's body ("hello world") is at 54..65.
    let s1 = c.client(&POST[..50]);
    let s2 = c.client(&POST[50..58]);
    let s3 = c.client(&POST[58..]);
    // A conflicting copy of s3's first bytes arrives first (out of order), then the real s3
    // overlapping it, then s2, then a conflicting retransmission of everything before s3.
    let mut fake = s3.clone();
    fake.payload = Bytes::from_static(b"XXX");
    fake.wire_len = 3;
    let mut retx = s1.clone();
    retx.payload = Bytes::from(vec![b'Z'; 58]);
    retx.wire_len = 58;
    let mut ex = Extractor::new(small_cfg());
    let ev = feed(&mut ex, [s1, fake, s3, s2, retx]);
    let mut expect = POST.to_vec();
    expect[58..61].copy_from_slice(b"XXX");
    assert_eq!(raws(&ev), vec![expect]);
    assert_eq!(ex.stats().request_segments.dropped(DropReason::Duplicate), 1);
    assert_eq!(ex.stats().request_segments.used, 4, "s3 counts once although it was split");
    // Every stream byte once; the fake's 3 bytes won, so s3's first 3 and the 58-byte
    // retransmission are overlap.
    assert_eq!(ex.stats().request_segments.stream_bytes, POST.len() as u64);
    assert_eq!(ex.stats().request_segments.overlap_bytes, 3 + 58);
}

#[test]
fn hole_mid_request_is_dropped_as_gap_after_timeout_and_next_request_survives() {
    both_families(|v6| {
        let mut ex = Extractor::new(small_cfg());
        let mut c = Conn::new(v6, 40008, 500, 500);
        let a = c.client(&POST[..30]);
        let _lost = c.client(&POST[30..40]);
        let b = c.client(&POST[40..]);
        // The POST's answer (not captured) before the next request: that is what makes the
        // kernel flag it as a new request.
        c.skip_server(100);
        let d = c.client(GET);
        let now = d.ts_ns;
        let mut ev = feed(&mut ex, [a, b, d]);
        assert!(requests(&ev).is_empty(), "nothing emitted while the hole may still fill");
        ex.tick(now + 10_000_000, &mut ev);
        assert!(requests(&ev).is_empty());
        ex.tick(now + 60_000_000, &mut ev);
        assert_eq!(raws(&ev), vec![GET.to_vec()]);
        assert_eq!(req_drops(&ex, DropReason::Gap), 1);
        assert_eq!(ex.stats().request_segments.dropped(DropReason::Gap), 1, "the tail of the damaged request");
        assert!(ex.stats().reconciles());
    });
}

#[test]
fn peer_ack_proves_a_hole_final_without_waiting() {
    let mut ex = Extractor::new(small_cfg());
    let mut c = Conn::new(false, 40009, 500, 500);
    let a = c.client(&POST[..30]);
    let _lost = c.client(&POST[30..]);
    let resp_to_post = c.server(OK);
    let b = c.client(GET);
    let ev = feed(&mut ex, [a, resp_to_post, b]);
    assert_eq!(raws(&ev), vec![GET.to_vec()]);
    assert_eq!(req_drops(&ex, DropReason::Gap), 1);
}

#[test]
fn sampling_skips_are_not_errors_and_pair_correctly() {
    both_families(|v6| {
        let mut ex = Extractor::new(small_cfg());
        let mut c = Conn::new(v6, 40010, 7, 70_000);
        let mut segs = vec![c.client(GET), c.server(OK)];
        // An unsampled exchange: neither its request nor its response is captured.
        c.skip_client(POST.len());
        c.skip_server(b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n".len());
        segs.push(c.client(CHUNKED));
        segs.push(c.server(b"HTTP/1.1 202 Accepted\r\nContent-Length: 2\r\n\r\nok"));
        let ev = feed(&mut ex, segs);
        let reqs = requests(&ev);
        let resps = responses(&ev);
        assert_eq!(raws(&ev), vec![GET.to_vec(), CHUNKED.to_vec()]);
        assert_eq!(resps.len(), 2);
        assert_eq!((resps[0].request_id, resps[0].status), (reqs[0].id, 200));
        assert_eq!((resps[1].request_id, resps[1].status), (reqs[1].id, 202));
        let st = ex.stats();
        assert_eq!(st.requests.dropped_total(), 0);
        assert_eq!(st.responses.dropped_total(), 0);
        assert_eq!(st.request_segments.sampling_skips, 1);
        assert_eq!(st.response_segments.sampling_skips, 1);
        assert_eq!(st.unanswered_requests, 0);
    });
}

#[test]
fn sampling_skip_without_responses_resolves_on_timeout() {
    let mut ex = Extractor::new(small_cfg());
    let mut c = Conn::new(false, 40011, 7, 7);
    let a = c.client(GET);
    c.skip_server(50);
    c.skip_client(1234);
    c.skip_server(50);
    let b = c.client(POST);
    let now = b.ts_ns;
    let mut ev = feed(&mut ex, [a, b]);
    assert_eq!(raws(&ev), vec![GET.to_vec()]);
    ex.tick(now + 100_000_000, &mut ev);
    assert_eq!(raws(&ev), vec![GET.to_vec(), POST.to_vec()]);
    assert_eq!(ex.stats().requests.dropped_total(), 0);
    assert_eq!(ex.stats().request_segments.sampling_skips, 1);
}

#[test]
fn segment_beyond_the_window_gives_up_the_hole_at_once() {
    let cfg = ExtractorConfig { ooo_window_bytes: 1000, ..small_cfg() };
    let mut ex = Extractor::new(cfg);
    let mut c = Conn::new(true, 40012, 7, 7);
    let a = c.client(&POST[..10]);
    c.skip_client(POST.len() - 10 + 5000);
    c.skip_server(50);
    let b = c.client(GET);
    let ev = feed(&mut ex, [a, b]);
    assert_eq!(raws(&ev), vec![GET.to_vec()]);
    assert_eq!(req_drops(&ex, DropReason::Gap), 1);
}

#[test]
fn truncated_segments_drop_what_they_touch() {
    both_families(|v6| {
        let mut ex = Extractor::new(small_cfg());
        let mut c = Conn::new(v6, 40015, 3, 3);
        let head = c.client(&POST[..40]);
        let mut trunc = c.client(&POST[40..]);
        trunc.truncated = true;
        trunc.payload = Bytes::new();
        // A whole request the kernel could not copy, flagged as a request start.
        c.skip_server(50);
        let mut trunc_req = c.client(GET);
        trunc_req.truncated = true;
        trunc_req.payload = Bytes::new();
        c.skip_server(50);
        let ok = c.client(POST);
        let ev = feed(&mut ex, [head, trunc, trunc_req, ok]);
        assert_eq!(raws(&ev), vec![POST.to_vec()]);
        assert_eq!(req_drops(&ex, DropReason::TruncatedCapture), 2);
        assert_eq!(ex.stats().request_segments.dropped(DropReason::TruncatedCapture), 2);
    });
}

#[test]
fn fin_and_rst_tear_flows_down() {
    both_families(|v6| {
        let mut ex = Extractor::new(small_cfg());
        let mut c = Conn::new(v6, 40016, 3, 3);
        let segs = [c.client(GET), c.server(OK), c.client_fin(), c.server_fin()];
        let ev = feed(&mut ex, segs);
        assert_eq!(requests(&ev).len(), 1);
        assert_eq!(ex.stats().flows_active, 0);
        assert_eq!(ex.stats().flows_closed, 1);

        // FIN in the middle of a request: incomplete.
        let mut c = Conn::new(v6, 40017, 3, 3);
        let segs = [c.client(&POST[..30]), c.client_fin()];
        let _ = feed(&mut ex, segs);
        assert_eq!(req_drops(&ex, DropReason::Incomplete), 1);

        // RST: everything goes at once, including what waits out of order.
        let mut ex = Extractor::new(small_cfg());
        let mut c = Conn::new(v6, 40018, 3, 3);
        let a = c.client(&POST[..30]);
        c.skip_client(5);
        let b = c.client(&POST[35..]);
        let r = c.client_rst();
        let _ = feed(&mut ex, [a, b, r]);
        assert_eq!(req_drops(&ex, DropReason::Incomplete), 1);
        assert_eq!(ex.stats().request_segments.dropped(DropReason::Incomplete), 1);
        assert_eq!(ex.stats().flows_active, 0);
        assert_eq!(ex.stats().memory_bytes, 0);
        assert_eq!(ex.stats().buffered_bytes, 0);
    });
}

#[test]
fn reused_client_port_starts_a_new_flow() {
    both_families(|v6| {
        let mut ex = Extractor::new(small_cfg());
        let mut c = Conn::new(v6, 40036, 3, 3);
        // The old connection: the client's FIN is seen, the server's is not (unsampled).
        let mut segs = vec![c.client(GET), c.server(OK), c.client_fin()];
        let mut d = Conn::new(v6, 40036, 9_000_000, 7_000_000);
        segs.extend([d.client(POST), d.server(OK)]);
        let ev = feed(&mut ex, segs);
        assert_eq!(raws(&ev), vec![GET.to_vec(), POST.to_vec()]);
        assert_eq!(responses(&ev).len(), 2);
        assert_eq!(ex.stats().flows_created, 2);
        assert_eq!(ex.stats().flows_closed, 1);
    });
}

#[test]
fn drop_labels_cover_every_reason_and_direction() {
    let ex = Extractor::new(small_cfg());
    let d: Vec<_> = ex.stats().drops().collect();
    assert_eq!(d.len(), 2 * DropReason::COUNT);
    assert!(d.iter().any(|(r, dir, _)| r.as_str() == "gap" && *dir == Direction::Request));
    assert!(d.iter().any(|(r, dir, _)| r.as_str() == "unpaired_response" && *dir == Direction::Response));
    crate::label::check(DropReason::LABELS);
    assert_eq!(ex.stats().segment_drops().count(), 2 * DropReason::COUNT);
}

#[test]
fn bare_fin_of_an_unknown_flow_creates_nothing() {
    let mut ex = Extractor::new(small_cfg());
    let mut c = Conn::new(false, 40035, 1, 1);
    let _ = feed(&mut ex, [c.client_fin(), c.client_rst()]);
    assert_eq!(ex.stats().flows_created, 0);
    assert_eq!(ex.stats().request_segments.control, 2);
}

#[test]
fn bytes_after_a_closing_request_count_only_if_they_are_more_than_line_ends() {
    let close = b"GET /c HTTP/1.1\r\nConnection: close\r\n\r\n";
    for (after, desync) in [(&b"\r\n\r\n"[..], 0u64), (&b"xyz"[..], 1), (&b"\r\nGET / HTTP/1.1\r\n\r\n"[..], 1)] {
        let mut ex = Extractor::new(small_cfg());
        let mut c = Conn::new(false, 40033, 1, 1);
        let ev = feed(&mut ex, [c.client(&[&close[..], after].concat())]);
        assert_eq!(raws(&ev), vec![close.to_vec()]);
        let r = &ex.stats().requests;
        assert_eq!(
            (r.seen, r.dropped(DropReason::Desync)),
            (1 + desync, desync),
            "{:?}",
            String::from_utf8_lossy(after)
        );
    }
}

#[test]
fn requests_pushed_out_of_the_pending_queue_are_counted_unanswered() {
    let mut ex = Extractor::new(small_cfg());
    let mut c = Conn::new(false, 40034, 1, 1);
    let many: Vec<u8> = (0..MAX_PENDING + 3).flat_map(|_| GET.iter().copied()).collect();
    let ev = feed(&mut ex, [c.client(&many)]);
    assert_eq!(raws(&ev).len(), MAX_PENDING + 3);
    assert_eq!(ex.stats().unanswered_requests, 3);
}
