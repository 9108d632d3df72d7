//! Request framing and resynchronisation: bodies in every segmentation, pipelining, oversize heads and bodies, parse errors, unsupported protocols, joining a running stream.

use super::{super::*, support::*};

#[test]
fn bodies_content_length_chunked_and_none_in_every_segmentation() {
    let cases: &[(&[u8], BodyFraming, &[u8])] = &[
        (GET, BodyFraming::None, b""),
        (POST, BodyFraming::ContentLength(11), b"hello world"),
        (CHUNKED, BodyFraming::Chunked, b"5;name=val\r\nhello\r\n1\r\n \r\n5\r\nworld\r\n0\r\nX-Trailer: 1\r\n\r\n"),
        (b"POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n", BodyFraming::None, b""),
        (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", BodyFraming::Chunked, b"0\r\n\r\n"),
        (b"GET /old HTTP/1.0\r\n\r\n", BodyFraming::None, b""),
    ];
    for v6 in [false, true] {
        for (raw, framing, body) in cases {
            for size in [raw.len(), 1, 2, 3, 7, 16] {
                let mut ex = Extractor::new(small_cfg());
                let mut c = Conn::new(v6, 40001, 77, 5000);
                // A first request puts the stream in sync: the kernel flags only segments of
                // at least 8 bytes, so a flow never starts on a tiny one.
                let mut segs = vec![c.client(GET)];
                segs.extend(c.client_split(raw, size));
                let first_ts = segs[1].ts_ns;
                let last_ts = segs[segs.len() - 1].ts_ns;
                let ev = feed(&mut ex, segs);
                let r = requests(&ev);
                assert_eq!(r.len(), 2, "{} split {size}", String::from_utf8_lossy(raw));
                assert_eq!(&r[1].raw[..], *raw);
                assert_eq!(r[1].framing, *framing);
                assert_eq!(r[1].body(), *body);
                assert_eq!((r[1].first_ts_ns, r[1].last_ts_ns), (first_ts, last_ts));
            }
        }
    }
}

#[test]
fn many_small_chunks_split_across_segments() {
    let mut raw = b"PUT /many HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n".to_vec();
    for i in 0..500 {
        raw.extend_from_slice(format!("{:x}\r\n{}\r\n", i % 7 + 1, &"abcdefg"[..i % 7 + 1]).as_bytes());
    }
    raw.extend_from_slice(b"0\r\n\r\n");
    for size in [1, 5, 1460] {
        let mut ex = Extractor::new(small_cfg());
        let mut c = Conn::new(false, 40002, 1, 1);
        let mut segs = vec![c.client(GET)];
        segs.extend(c.client_split(&raw, size));
        let ev = feed(&mut ex, segs);
        assert_eq!(raws(&ev), vec![GET.to_vec(), raw.clone()]);
    }
}

#[test]
fn pipelined_requests_in_one_segment_are_copied_out_each_on_its_own() {
    both_families(|v6| {
        let mut ex = Extractor::new(small_cfg());
        let mut c = Conn::new(v6, 40003, 9, 9);
        let all = [GET, POST, CHUNKED, GET].concat();
        let seg = c.client(&all);
        let record = seg.payload.as_ptr_range();
        let mut out = Vec::new();
        let now = seg.ts_ns;
        ex.push(seg.borrowed(), now, &mut out);
        let r = requests(&out);
        assert_eq!(raws(&out), vec![GET.to_vec(), POST.to_vec(), CHUNKED.to_vec(), GET.to_vec()]);
        // The segment is only borrowed: each request is its own copy of exactly its bytes, so
        // the record (a ring-buffer slot) can be released and what is held is what is counted.
        for q in &r {
            assert!(!record.contains(&q.raw.as_ptr()), "request {} points into the segment", q.id);
        }
        drop(seg);
        let ids: Vec<u64> = r.iter().map(|r| r.id).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]));
    });
}

#[test]
fn pipelined_requests_straddling_segments() {
    let all = [POST, GET, CHUNKED, POST, b"\r\n".as_slice(), GET].concat();
    for size in [1, 10, 33, 100] {
        let mut ex = Extractor::new(small_cfg());
        let mut c = Conn::new(true, 40004, 0, 0);
        let mut segs = vec![c.client(GET)];
        segs.extend(c.client_split(&all, size));
        let ev = feed(&mut ex, segs);
        // The stray CRLF between requests is allowed and not part of either.
        let want = [GET, POST, GET, CHUNKED, POST, GET].map(<[u8]>::to_vec);
        assert_eq!(raws(&ev), want, "size {size}");
    }
}

#[test]
fn midstream_join_skips_to_the_next_request_line() {
    both_families(|v6| {
        let mut ex = Extractor::new(small_cfg());
        let mut c = Conn::new(v6, 40013, 3, 3);
        // The daemon starts while a request body and a response are already under way.
        let body_tail = c.client(b"{\"tail\": \"of an earlier body\"}");
        let old_resp = c.server(b"ody of an earlier response");
        let segs = [body_tail, old_resp, c.client(GET), c.server(OK)];
        let ev = feed(&mut ex, segs);
        assert_eq!(raws(&ev), vec![GET.to_vec()]);
        assert_eq!(responses(&ev).len(), 1);
        let st = ex.stats();
        assert_eq!(st.request_segments.dropped(DropReason::MidstreamSkip), 1);
        assert_eq!(st.response_segments.dropped(DropReason::MidstreamSkip), 1);
        assert_eq!(st.requests.seen, 1);
    });
}

#[test]
fn any_method_token_starts_a_request() {
    let mut ex = Extractor::new(small_cfg());
    let mut c = Conn::new(false, 40014, 3, 3);
    let propfind = b"PROPFIND /dav HTTP/1.1\r\nDepth: 1\r\n\r\n";
    let s = c.client(propfind);
    assert!(s.request_start, "the kernel's grammar, not a list");
    let ev = feed(&mut ex, [s]);
    assert_eq!(raws(&ev), vec![propfind.to_vec()]);
}

#[test]
fn a_body_that_looks_like_a_request_start_on_joining_ends_the_connection() {
    // The daemon joins mid-body, and the body's next segment reads like a request line's start:
    // the kernel flags it (its first decision on the connection); it does not parse, and where
    // the next request starts cannot be known, so the rest of the connection is counted, not
    // guessed at.
    let mut ex = Extractor::new(small_cfg());
    let mut c = Conn::new(false, 40015, 3, 3);
    let tail = c.client(b"tail of an earlier body");
    assert!(tail.request_start);
    let r = c.server(OK);
    let ev = feed(&mut ex, [tail, r, c.client(GET)]);
    assert!(raws(&ev).is_empty());
    assert_eq!(req_drops(&ex, DropReason::ParseError), 1);
    assert_eq!(req_drops(&ex, DropReason::Desync), 1);
    assert!(ex.stats().reconciles());
}

#[test]
fn lost_request_start_between_messages_is_a_gap_not_a_skip() {
    let mut ex = Extractor::new(small_cfg());
    let mut c = Conn::new(false, 40038, 1, 1);
    let a = c.client(GET);
    c.skip_server(50);
    let _lost_head = c.client(&POST[..30]);
    let tail = c.client(&POST[30..]);
    c.skip_server(50);
    let b = c.client(GET);
    let now = b.ts_ns;
    let mut ev = feed(&mut ex, [a, tail, b]);
    ex.tick(now + 100_000_000, &mut ev);
    assert_eq!(raws(&ev), vec![GET.to_vec(), GET.to_vec()]);
    let st = ex.stats();
    assert_eq!(st.request_segments.sampling_skips, 0);
    assert_eq!(st.request_segments.dropped(DropReason::Gap), 1);
}

#[test]
fn http2_prior_knowledge_and_tls_are_unsupported_not_misparsed() {
    let h2 = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x12\x04\x00\x00\x00\x00\x00";
    let hello = b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03GET / HTTP/1.1\r\n\r\n";
    for v6 in [false, true] {
        // (bytes, segment size, an HTTP/1.1 exchange first): a split preface is only seen
        // after a request boundary, where the stream is already in sync.
        // Split at 10, the head's blank line is in the piece that completes the preface line.
        for (payload, split, after_get) in
            [(&h2[..], 100, false), (&h2[..], 4, true), (&h2[..], 10, true), (&hello[..], 100, false)]
        {
            let mut ex = Extractor::new(small_cfg());
            let mut c = Conn::new(v6, 40025, 1, 1);
            let mut segs = if after_get { vec![c.client(GET), c.server(OK)] } else { vec![] };
            segs.extend(c.client_split(payload, split));
            segs.push(c.server(b"\x00\x00\x00\x04\x01\x00\x00\x00\x00"));
            segs.push(c.client(GET));
            let ev = feed(&mut ex, segs);
            assert_eq!(requests(&ev).len(), usize::from(after_get));
            let st = ex.stats();
            assert_eq!(st.requests.dropped(DropReason::UnsupportedProtocol), 1);
            assert_eq!(st.requests.seen, 1 + u64::from(after_get));
            assert!(st.response_segments.dropped(DropReason::UnsupportedProtocol) >= 1);
        }
    }
}

#[test]
fn oversize_headers_drop_the_rest_of_the_connection() {
    let cfg = ExtractorConfig { max_header_bytes: 256, max_headers: 4, ..small_cfg() };
    let long = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(300));
    let many = "GET / HTTP/1.1\r\na: 1\r\nb: 2\r\nc: 3\r\nd: 4\r\ne: 5\r\n\r\n";
    for (bad, split) in [(long.as_bytes(), 1000), (long.as_bytes(), 7), (many.as_bytes(), 1000), (many.as_bytes(), 3)] {
        let mut ex = Extractor::new(cfg.clone());
        let mut c = Conn::new(false, 40026, 1, 1);
        let mut segs = vec![c.client(GET)];
        c.skip_server(50);
        segs.extend(c.client_split(bad, split));
        c.skip_server(50);
        segs.push(c.client(GET));
        let ev = feed(&mut ex, segs);
        assert_eq!(raws(&ev), vec![GET.to_vec()]);
        assert_eq!(req_drops(&ex, DropReason::OversizeHeaders), 1);
        // The request after it starts a segment the kernel flagged: counted, never framed.
        assert_eq!(req_drops(&ex, DropReason::Desync), 1);
        assert_eq!(ex.stats().requests.seen, 3);
    }
}

#[test]
fn oversize_body_is_framed_through_and_never_buffered_whole() {
    let cfg = ExtractorConfig { max_body_bytes: 1000, ..small_cfg() };
    let big_cl = [b"POST /big HTTP/1.1\r\nContent-Length: 5000\r\n\r\n".as_slice(), &[b'b'; 5000]].concat();
    let mut big_chunked = b"POST /big HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..20 {
        big_chunked.extend_from_slice(b"64\r\n");
        big_chunked.extend_from_slice(&[b'c'; 100]);
        big_chunked.extend_from_slice(b"\r\n");
    }
    big_chunked.extend_from_slice(b"0\r\n\r\n");
    for big in [&big_cl, &big_chunked] {
        for split in [big.len(), 300] {
            let mut ex = Extractor::new(cfg.clone());
            let mut c = Conn::new(true, 40027, 1, 1);
            let mut segs = c.client_split(big, split);
            segs.push(c.client(GET));
            segs.push(c.server(b"HTTP/1.1 413 Too Large\r\nContent-Length: 0\r\n\r\n"));
            segs.push(c.server(OK));
            let ev = feed(&mut ex, segs);
            assert_eq!(raws(&ev), vec![GET.to_vec()]);
            assert_eq!(req_drops(&ex, DropReason::OversizeBody), 1);
            // The 413 belongs to the dropped request: counted, not paired with the GET.
            let r = responses(&ev);
            assert_eq!(r.len(), 1);
            assert_eq!((r[0].status, r[0].request_id), (200, requests(&ev)[0].id));
            assert_eq!(ex.stats().responses.dropped(DropReason::UnpairedResponse), 1);
        }
    }
}

#[test]
fn huge_content_length_allocates_nothing_up_front() {
    let mut ex = Extractor::new(ExtractorConfig { max_body_bytes: u64::MAX, ..small_cfg() });
    let mut c = Conn::new(false, 40028, 1, 1);
    let head = format!("POST / HTTP/1.1\r\nContent-Length: {}\r\n\r\n", u64::MAX);
    let _ = feed(&mut ex, [c.client(head.as_bytes()), c.client(b"abc")]);
    assert!(ex.stats().memory_bytes < 200 * 1024, "{}", ex.stats().memory_bytes);
    assert_eq!(ex.stats().requests.in_progress, 1);
}

#[test]
fn parse_errors_drop_the_rest_of_the_connection() {
    let bad: &[&[u8]] = &[
        b"GET / HTTP/1.1\r\nBad Header\r\n\r\n",
        b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nx",
        b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"GET / HTTP/9.9\r\n\r\n",
    ];
    for b in bad {
        let mut ex = Extractor::new(small_cfg());
        let mut c = Conn::new(true, 40029, 1, 1);
        let (bad, garbage) = (c.client(b), c.client(b"trailing garbage"));
        c.skip_server(50);
        let segs = [bad, garbage, c.client(GET)];
        let ev = feed(&mut ex, segs);
        assert_eq!(raws(&ev), Vec::<Vec<u8>>::new(), "{}", String::from_utf8_lossy(b));
        assert_eq!(req_drops(&ex, DropReason::ParseError), 1);
        assert_eq!(req_drops(&ex, DropReason::Desync), 1);
        assert_eq!(ex.stats().request_segments.dropped(DropReason::Desync), 2);
    }
}

#[test]
fn te_and_cl_together_is_dropped_with_the_rest_of_the_connection() {
    let mut ex = Extractor::new(small_cfg());
    let mut c = Conn::new(false, 40030, 1, 1);
    let smuggle = b"POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
    let first = c.client(&[smuggle.as_slice(), GET].concat());
    c.skip_server(50);
    let ev = feed(&mut ex, [first, c.client(GET)]);
    // Framed by chunked or by length, a server reads a different next request: neither is
    // replayed, and the request that follows in its own segment is counted as desync.
    assert_eq!(raws(&ev), Vec::<Vec<u8>>::new());
    assert_eq!(req_drops(&ex, DropReason::ParseError), 1);
    assert_eq!(req_drops(&ex, DropReason::Desync), 1);
}

#[test]
fn retransmitted_request_start_after_desync_is_not_replayed_twice() {
    let mut ex = Extractor::new(small_cfg());
    let mut c = Conn::new(false, 40034, 1, 1);
    let a = c.client(GET);
    let bad = c.client(b"GET / HTTP/1.1\r\nBad Header\r\n\r\n");
    let ev = feed(&mut ex, [a.clone(), bad, a]);
    assert_eq!(raws(&ev), vec![GET.to_vec()]);
    assert_eq!(ex.stats().request_segments.dropped(DropReason::Duplicate), 1);
}

#[test]
fn a_head_gathered_over_segments_is_too_large_one_byte_past_the_limit() {
    let cfg = ExtractorConfig { max_header_bytes: 64, ..small_cfg() };
    let head = format!("GET /{} HTTP/1.1\r\nHost: a\r\n\r\n", "a".repeat(60));
    for (first, second, dropped) in [(30, 64, 0), (30, 65, 1)] {
        let mut ex = Extractor::new(cfg.clone());
        let mut c = Conn::new(false, 40027, 1, 1);
        // `second` bytes of the head are in, none of them its end.
        let _ = feed(&mut ex, [c.client(&head.as_bytes()[..first]), c.client(&head.as_bytes()[first..second])]);
        let r = &ex.stats().requests;
        assert_eq!(
            (r.seen, r.in_progress, r.dropped(DropReason::OversizeHeaders)),
            (1, 1 - dropped, dropped),
            "{second}"
        );
        // The rest: over the limit either way.
        let _ = feed(&mut ex, [c.client(&head.as_bytes()[second..])]);
        let r = &ex.stats().requests;
        assert_eq!((r.in_progress, r.dropped(DropReason::OversizeHeaders)), (0, 1), "{second}");
    }
}

#[test]
fn a_chunked_body_of_exactly_max_body_bytes_on_the_wire_is_kept() {
    let head = b"POST /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n";
    let body = b"5\r\nhello\r\n0\r\n\r\n";
    for (max, extracted) in [(body.len() as u64, 1), (body.len() as u64 - 1, 0)] {
        let mut ex = Extractor::new(ExtractorConfig { max_body_bytes: max, ..small_cfg() });
        let mut c = Conn::new(false, 40028, 1, 1);
        let ev = feed(&mut ex, [c.client(head), c.client(body)]);
        let r = &ex.stats().requests;
        assert_eq!((r.extracted, r.dropped(DropReason::OversizeBody)), (extracted, 1 - extracted), "max {max}");
        assert_eq!(raws(&ev).len() as u64, extracted);
    }
}
