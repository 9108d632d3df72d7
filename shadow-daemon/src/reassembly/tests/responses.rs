//! Responses: framing, FIFO pairing with requests, interim responses, upgrades and tunnels.

use super::{super::*, support::*};

#[test]
fn until_close_response_ends_with_the_servers_fin() {
    let mut ex = Extractor::new(small_cfg());
    let mut c = Conn::new(false, 40019, 3, 3);
    let segs = [
        c.client(b"GET /stream HTTP/1.0\r\n\r\n"),
        c.server(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nabc"),
        c.server(b"defgh"),
        c.server_fin(),
    ];
    let ev = feed(&mut ex, segs);
    let r = responses(&ev);
    assert_eq!(r.len(), 1);
    assert_eq!((r[0].framing, r[0].body_len), (BodyFraming::UntilClose, 8));
}

#[test]
fn expect_100_continue_skips_the_interim_response() {
    both_families(|v6| {
        let mut ex = Extractor::new(small_cfg());
        let mut c = Conn::new(v6, 40022, 1, 1);
        let head = b"PUT /f HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n";
        let segs = [
            c.client(head),
            c.server(b"HTTP/1.1 100 Continue\r\n\r\n"),
            c.client(b"data"),
            c.server(b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n"),
        ];
        let ev = feed(&mut ex, segs);
        assert_eq!(raws(&ev), vec![[head.as_slice(), b"data"].concat()]);
        let r = responses(&ev);
        assert_eq!(r.len(), 1);
        assert_eq!((r[0].status, r[0].request_id), (201, requests(&ev)[0].id));
        assert_eq!(ex.stats().responses.seen, 1);
    });
}

#[test]
fn upgrade_and_connect_end_extraction() {
    both_families(|v6| {
        let mut ex = Extractor::new(small_cfg());
        let mut c = Conn::new(v6, 40023, 1, 1);
        let segs = [
            c.client(GET),
            c.server(OK),
            c.client(b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"),
            c.server(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"),
            c.client(b"\x81\x85frame-bytes"),
            c.server(b"\x81\x05hello"),
            c.client(GET),
        ];
        let ev = feed(&mut ex, segs);
        assert_eq!(raws(&ev), vec![GET.to_vec()]);
        let st = ex.stats();
        assert_eq!(st.requests.dropped(DropReason::Upgrade), 1);
        assert_eq!(st.responses.dropped(DropReason::Upgrade), 1);
        assert_eq!(st.request_segments.dropped(DropReason::Upgrade), 2);
        assert_eq!(st.response_segments.dropped(DropReason::Upgrade), 1);

        let mut c = Conn::new(v6, 40024, 1, 1);
        let segs = [
            c.client(b"CONNECT db:5432 HTTP/1.1\r\nHost: db:5432\r\n\r\n"),
            c.server(b"HTTP/1.1 200 Connection established\r\n\r\n"),
            c.client(b"GET / HTTP/1.1\r\n\r\n"),
        ];
        let ev = feed(&mut ex, segs);
        assert!(ev.is_empty());
        assert_eq!(ex.stats().requests.dropped(DropReason::Connect), 1);
        assert_eq!(ex.stats().responses.dropped(DropReason::Connect), 1);
    });
}

#[test]
fn declined_upgrade_lets_http1_go_on() {
    both_families(|v6| {
        let mut ex = Extractor::new(small_cfg());
        let mut c = Conn::new(v6, 40037, 1, 1);
        let segs = [
            c.client(b"GET / HTTP/1.1\r\nUpgrade: h2c\r\nConnection: Upgrade, HTTP2-Settings\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n"),
            c.server(OK),
            c.client(POST),
            c.server(b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n"),
        ];
        let ev = feed(&mut ex, segs);
        assert_eq!(raws(&ev), vec![POST.to_vec()]);
        let r = responses(&ev);
        assert_eq!((r.len(), r[0].status, r[0].request_id), (1, 201, requests(&ev)[0].id));
        let st = ex.stats();
        assert_eq!(st.requests.dropped(DropReason::Upgrade), 1, "the upgrade request itself is not replayed");
        assert_eq!(st.responses.dropped(DropReason::UnpairedResponse), 1);
    });
}

#[test]
fn responses_framing_and_fifo_pairing() {
    both_families(|v6| {
        // Compared (some body kept): the heads are kept too.
        let mut ex = Extractor::new(ExtractorConfig { keep_response_body: 16, ..small_cfg() });
        let mut c = Conn::new(v6, 40031, 1, 1);
        // Pipelined: four requests, then their responses, one of them split byte by byte.
        let reqs = [GET, b"HEAD /h HTTP/1.1\r\n\r\n".as_slice(), POST, GET].concat();
        let mut segs = vec![c.client(&reqs)];
        segs.push(c.server(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"));
        segs.push(c.server(b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n"));
        let mut tail = Vec::new();
        for b in b"HTTP/1.1 204 No Content\r\n\r\nHTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n" {
            tail.push(c.server(&[*b]));
        }
        segs.extend(tail);
        let ev = feed(&mut ex, segs);
        let q = requests(&ev);
        let r = responses(&ev);
        assert_eq!(q.len(), 4);
        let got: Vec<_> = r.iter().map(|r| (r.request_id, r.status, r.framing, r.body_len)).collect();
        assert_eq!(
            got,
            vec![
                (q[0].id, 200, BodyFraming::Chunked, 3),
                (q[1].id, 200, BodyFraming::None, 0),
                (q[2].id, 204, BodyFraming::None, 0),
                (q[3].id, 304, BodyFraming::None, 0),
            ]
        );
        for (resp, req) in r.iter().zip(&q) {
            assert_eq!(resp.request_last_ts_ns, req.last_ts_ns);
            assert!(resp.first_ts_ns >= req.last_ts_ns);
            assert!(resp.time_to_last_byte_ns() >= resp.time_to_first_byte_ns());
        }
        assert!(r[0].head.starts_with(b"HTTP/1.1 200 OK\r\n") && r[0].head.ends_with(b"\r\n\r\n"));
    });
}

#[test]
fn response_without_a_captured_request_is_unpaired_not_mispaired() {
    let mut ex = Extractor::new(small_cfg());
    let mut c = Conn::new(false, 40032, 1, 1);
    // The flow is first seen at a response (its request was not sampled)...
    c.skip_client(GET.len());
    let orphan = c.server(OK);
    // ...then a sampled request and its response.
    let segs = [orphan, c.client(POST), c.server(b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n")];
    let ev = feed(&mut ex, segs);
    let r = responses(&ev);
    assert_eq!(r.len(), 1);
    assert_eq!((r[0].status, r[0].request_id), (201, requests(&ev)[0].id));
    assert_eq!(ex.stats().responses.dropped(DropReason::UnpairedResponse), 1);
}

#[test]
fn early_response_before_the_request_ends_is_not_paired_with_the_next() {
    let mut ex = Extractor::new(small_cfg());
    let mut c = Conn::new(false, 40033, 1, 1);
    let head = b"POST /up HTTP/1.1\r\nContent-Length: 10\r\n\r\n";
    let segs = [
        c.client(head),
        c.server(b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n"),
        c.client(b"0123456789"),
        c.client(GET),
        c.server(OK),
    ];
    let ev = feed(&mut ex, segs);
    let q = requests(&ev);
    let r = responses(&ev);
    assert_eq!(q.len(), 2);
    assert_eq!(r.len(), 1);
    assert_eq!((r[0].status, r[0].request_id), (200, q[1].id));
}

#[test]
fn response_bodies_are_kept_de_chunked_up_to_the_cap_only_when_asked() {
    let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n{\"a\"\r\n";
    let run = |keep: usize| {
        let mut ex = Extractor::new(ExtractorConfig { keep_response_body: keep, ..small_cfg() });
        let mut c = Conn::new(false, 40090, 1, 1);
        let segs = [
            c.client(b"GET /a HTTP/1.1\r\n\r\n"),
            c.server(chunked),
            c.server(b"5\r\n:12}\n\r\n0\r\n\r\n"),
            c.client(b"GET /b HTTP/1.1\r\n\r\n"),
            c.server(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nxyz"),
        ];
        let ev = feed(&mut ex, segs);
        let rs = responses(&ev);
        let heads: Vec<Vec<u8>> = rs.iter().map(|r| r.head.to_vec()).collect();
        (heads, rs.iter().map(|r| (r.body.to_vec(), r.body_complete, r.body_len)).collect::<Vec<_>>())
    };
    let heads = vec![
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec(),
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n".to_vec(),
    ];
    assert_eq!(
        run(1024),
        (heads.clone(), vec![(b"{\"a\":12}\n".to_vec(), true, 9), (b"xyz".to_vec(), true, 3)]),
        "whole bodies, chunk framing removed"
    );
    assert_eq!(run(4), (heads, vec![(b"{\"a\"".to_vec(), false, 9), (b"xyz".to_vec(), true, 3)]), "cut at the cap");
    assert_eq!(
        run(0),
        (vec![Vec::new(), Vec::new()], vec![(Vec::new(), false, 9), (Vec::new(), false, 3)]),
        "comparison off: no head or body kept"
    );
}

#[test]
fn a_response_cut_off_in_its_head_or_body_is_dropped_once() {
    // (what the server sent, whether it was a response counted in progress when the flow went)
    let cases: [(&[u8], u64); 4] = [
        (b"HTTP/1.1 200 OK\r\nContent-", 1),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", 1),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", 0),
        (b"", 0),
    ];
    for (sent, cut) in cases {
        let mut ex = Extractor::new(small_cfg());
        let mut c = Conn::new(false, 40030, 1, 1);
        let mut segs = vec![c.client(GET)];
        if !sent.is_empty() {
            segs.push(c.server(sent));
        }
        let _ = feed(&mut ex, segs);
        ex.clear(DropReason::Timeout, &mut Vec::new());
        let r = &ex.stats().responses;
        assert_eq!((r.dropped(DropReason::Timeout), r.in_progress), (cut, 0), "{:?}", String::from_utf8_lossy(sent));
        assert_eq!(r.seen, r.extracted + r.dropped_total());
    }
    // An unpaired response was dropped when its head came: not again when cut off.
    let mut ex = Extractor::new(small_cfg());
    let mut c = Conn::new(false, 40031, 1, 1);
    let _ = feed(&mut ex, [c.client(GET), c.server(OK), c.server(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nab")]);
    ex.clear(DropReason::Timeout, &mut Vec::new());
    let r = &ex.stats().responses;
    assert_eq!(
        (r.seen, r.extracted, r.dropped(DropReason::UnpairedResponse), r.dropped(DropReason::Timeout)),
        (2, 1, 1, 0)
    );
}

#[test]
fn tls_from_the_client_after_a_switch_leaves_the_closed_response_side_as_it_was() {
    let mut ex = Extractor::new(small_cfg());
    let mut c = Conn::new(false, 40032, 1, 1);
    let hello = b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03";
    let segs =
        [c.client(GET), c.server(b"HTTP/1.1 101 Switching Protocols\r\n\r\n"), c.client(hello), c.server(b"\x00\x01")];
    let _ = feed(&mut ex, segs);
    let st = ex.stats();
    assert_eq!(st.requests.dropped(DropReason::UnsupportedProtocol), 1);
    // A 101 to a request that asked for nothing still switches: dropped as the switch.
    assert_eq!((st.responses.seen, st.responses.dropped(DropReason::Upgrade)), (1, 1));
    // The server's bytes after the switch are skipped for the switch, not for the client's TLS.
    assert_eq!(
        (
            st.response_segments.dropped(DropReason::Upgrade),
            st.response_segments.dropped(DropReason::UnsupportedProtocol)
        ),
        (1, 0)
    );
}

#[test]
fn after_an_accepted_switch_even_a_flagged_request_start_is_not_http() {
    let mut ex = Extractor::new(small_cfg());
    let mut c = Conn::new(false, 40035, 1, 1);
    let mut after = c.clone();
    let segs = [
        c.client(b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"),
        c.server(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"),
    ];
    let _ = feed(&mut ex, segs);
    after.c_seq = c.c_seq;
    after.s_seq = c.s_seq;
    let mut get = after.client(GET);
    get.request_start = true;
    let ev = feed(&mut ex, [get]);
    assert!(raws(&ev).is_empty());
    let st = ex.stats();
    assert_eq!((st.requests.seen, st.requests.dropped(DropReason::Upgrade)), (1, 1));
    assert_eq!(st.request_segments.dropped(DropReason::Upgrade), 1);
}

#[test]
fn a_response_in_progress_costs_its_head_and_its_kept_body() {
    // The assembler's heap with a response in its body: `keep` body bytes kept at most.
    let heap_of = |extra_field: &str, keep: usize| {
        let mut ex = Extractor::new(ExtractorConfig { keep_response_body: keep, ..small_cfg() });
        let mut c = Conn::new(false, 40036, 1, 1);
        let head = format!("HTTP/1.1 200 OK\r\n{extra_field}Content-Length: 10\r\n\r\nabc");
        let _ = feed(&mut ex, [c.client(GET), c.server(head.as_bytes())]);
        ex.flows().next().expect("one flow").parts().0[3]
    };
    // Compared (a body kept): its head is kept too, copied out of the segment.
    assert_eq!(heap_of("X-Six: 1\r\n", 64) - heap_of("", 64), "X-Six: 1\r\n".len(), "its head");
    let head = "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n".len();
    let kept = heap_of("", 64) - heap_of("", 0) - head;
    assert!((3..=64).contains(&kept), "its kept body: {kept}");
    // Not compared: neither head nor body is kept.
    assert_eq!(heap_of("X-Six: 1\r\n", 0), heap_of("", 0), "no head kept");
}

#[test]
fn line_ends_between_pipelined_responses_are_skipped() {
    let mut ex = Extractor::new(ExtractorConfig { keep_response_body: 16, ..small_cfg() });
    let mut c = Conn::new(false, 40038, 1, 1);
    let two = [GET, GET].concat();
    let ev = feed(&mut ex, [c.client(&two), c.server(&[OK, b"\r\n\r\n", OK].concat())]);
    let r = responses(&ev);
    let ids: Vec<u64> = requests(&ev).iter().map(|q| q.id).collect();
    assert_eq!(r.iter().map(|x| x.request_id).collect::<Vec<_>>(), ids);
    assert_eq!(r.len(), 2);
    assert_eq!(r[1].head, r[0].head);
    assert_eq!(&r[1].head[..], &OK[..OK.len() - 5]);
}

#[test]
fn a_response_head_over_segments_waits_at_the_limit_and_fails_past_it() {
    let head = format!("HTTP/1.1 200 OK\r\nX: {}\r\nContent-Length: 0\r\n\r\n", "v".repeat(60));
    for (second, oversize) in [(64, 0u64), (65, 1)] {
        let mut ex = Extractor::new(ExtractorConfig { max_header_bytes: 64, ..small_cfg() });
        let mut c = Conn::new(false, 40039, 1, 1);
        let h = head.as_bytes();
        let _ = feed(&mut ex, [c.client(GET), c.server(&h[..20]), c.server(&h[20..second])]);
        let r = &ex.stats().responses;
        assert_eq!((r.in_progress, r.dropped(DropReason::OversizeHeaders)), (1 - oversize, oversize), "{second}");
        let _ = feed(&mut ex, [c.server(&h[second..])]);
        let r = &ex.stats().responses;
        assert_eq!((r.in_progress, r.dropped(DropReason::OversizeHeaders)), (0, 1), "{second}");
    }
}

#[test]
fn a_response_head_over_two_segments_frames_the_body_after_it() {
    let mut ex = Extractor::new(ExtractorConfig { keep_response_body: 64, ..small_cfg() });
    let mut c = Conn::new(false, 40040, 1, 1);
    let two = [GET, GET].concat();
    let ev = feed(
        &mut ex,
        [
            c.client(&two),
            c.server(b"HTTP/1.1 200 OK\r\nConte"),
            c.server(b"nt-Length: 5\r\n\r\nhelloHTTP/1.1 204 No Content\r\n\r\n"),
        ],
    );
    let r = responses(&ev);
    assert_eq!(r.len(), 2);
    assert_eq!((r[0].status, &r[0].body[..], r[0].body_complete), (200, &b"hello"[..], true));
    assert_eq!(&r[0].head[..], b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n");
    assert_eq!(r[1].status, 204);
}

#[test]
fn requests_whose_answers_were_not_captured_are_counted_unanswered() {
    // Two requests, each sent after the answer to the one before; the first answer is not
    // captured, and the second pairs by its exact acknowledgment, passing the first over.
    let mut ex = Extractor::new(small_cfg());
    let mut c = Conn::new(false, 40041, 1, 1);
    let _ = feed(&mut ex, [c.client(GET)]);
    c.skip_server(OK.len());
    let ev = feed(&mut ex, [c.client(POST), c.server(OK)]);
    let r = responses(&ev);
    assert_eq!((r.len(), r[0].request_id), (1, requests(&ev)[0].id));
    assert_eq!(ex.stats().unanswered_requests, 1);
}

#[test]
fn an_unpaired_response_keeps_no_body() {
    let heap_of = |keep: usize| {
        let mut ex = Extractor::new(ExtractorConfig { keep_response_body: keep, ..small_cfg() });
        let mut c = Conn::new(false, 40042, 1, 1);
        let segs = [c.client(GET), c.server(OK), c.server(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")];
        let _ = feed(&mut ex, segs);
        assert_eq!(ex.stats().responses.dropped(DropReason::UnpairedResponse), 1);
        ex.flows().next().expect("one flow").parts().0[3]
    };
    assert_eq!(heap_of(64), heap_of(0));
}
