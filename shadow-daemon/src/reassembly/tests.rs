//! Extractor tests: segments in, messages and counters out, for both IP families.

use std::net::{IpAddr, SocketAddr};

use bytes::Bytes;
use shadow_common::tcp_flags;

use super::*;
use crate::{
    message::{BodyFraming, CapturedRequest, CapturedResponse},
    segment::{Direction, FlowId},
};

mod proptests;

/// Test plumbing shared with the property tests.
pub(crate) mod support {
    use super::*;

    pub fn flow_id(v6: bool, client_port: u16) -> FlowId {
        let (c, s): (IpAddr, IpAddr) = if v6 {
            ("fd00::1".parse().unwrap(), "fd00::2".parse().unwrap())
        } else {
            ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap())
        };
        FlowId { client: SocketAddr::new(c, client_port), server: SocketAddr::new(s, 8080) }
    }

    /// What the kernel program flags as a request start (capture.rs `starts_request`).
    pub fn kernel_request_start(p: &[u8]) -> bool {
        const TOKENS: [&[u8]; 10] =
            [b"GET ", b"PUT ", b"POST ", b"HEAD ", b"DELETE ", b"OPTIONS ", b"PATCH ", b"TRACE ", b"CONNECT ", b"PRI "];
        p.len() >= 8 && (TOKENS.iter().any(|t| p.starts_with(t)) || p.starts_with(&[0x16, 0x03]))
    }

    /// One TCP connection whose two sides write bytes; every segment acknowledges everything
    /// the other side wrote before it, as a real stack would.
    #[derive(Clone, Debug)]
    pub struct Conn {
        pub flow: FlowId,
        pub c_seq: u32,
        pub s_seq: u32,
        pub ts: u64,
    }

    impl Conn {
        pub fn new(v6: bool, port: u16, c_isn: u32, s_isn: u32) -> Self {
            Self { flow: flow_id(v6, port), c_seq: c_isn, s_seq: s_isn, ts: 1_000_000 }
        }

        fn seg(&mut self, dir: Direction, seq: u32, ack: u32, flags: u8, bytes: &[u8]) -> Segment {
            self.ts += 1_000;
            Segment {
                flow: self.flow,
                direction: dir,
                seq,
                ack,
                tcp_flags: flags,
                ts_ns: self.ts,
                wire_len: bytes.len() as u32,
                payload: Bytes::copy_from_slice(bytes),
                truncated: false,
                request_start: dir == Direction::Request && kernel_request_start(bytes),
                ifindex: 1,
            }
        }

        pub fn client(&mut self, bytes: &[u8]) -> Segment {
            let s = self.seg(Direction::Request, self.c_seq, self.s_seq, tcp_flags::ACK | tcp_flags::PSH, bytes);
            self.c_seq = self.c_seq.wrapping_add(bytes.len() as u32);
            s
        }

        pub fn server(&mut self, bytes: &[u8]) -> Segment {
            let s = self.seg(Direction::Response, self.s_seq, self.c_seq, tcp_flags::ACK | tcp_flags::PSH, bytes);
            self.s_seq = self.s_seq.wrapping_add(bytes.len() as u32);
            s
        }

        /// Client bytes cut into segments of `size`.
        pub fn client_split(&mut self, bytes: &[u8], size: usize) -> Vec<Segment> {
            bytes.chunks(size).map(|c| self.client(c)).collect()
        }

        /// Bytes the kernel did not capture (unsampled request or response).
        pub fn skip_client(&mut self, n: usize) {
            self.c_seq = self.c_seq.wrapping_add(n as u32);
        }
        pub fn skip_server(&mut self, n: usize) {
            self.s_seq = self.s_seq.wrapping_add(n as u32);
        }

        pub fn client_fin(&mut self) -> Segment {
            let s = self.seg(Direction::Request, self.c_seq, self.s_seq, tcp_flags::ACK | tcp_flags::FIN, b"");
            self.c_seq = self.c_seq.wrapping_add(1);
            s
        }
        pub fn server_fin(&mut self) -> Segment {
            let s = self.seg(Direction::Response, self.s_seq, self.c_seq, tcp_flags::ACK | tcp_flags::FIN, b"");
            self.s_seq = self.s_seq.wrapping_add(1);
            s
        }
        pub fn client_rst(&mut self) -> Segment {
            self.seg(Direction::Request, self.c_seq, 0, tcp_flags::RST, b"")
        }
    }

    pub fn small_cfg() -> ExtractorConfig {
        ExtractorConfig { gap_timeout_ns: 50_000_000, ..ExtractorConfig::default() }
    }

    /// Push everything at the segments' own timestamps, checking the bounds after each push.
    pub fn feed(ex: &mut Extractor, segs: impl IntoIterator<Item = Segment>) -> Vec<HttpEvent> {
        let mut out = Vec::new();
        for s in segs {
            let now = s.ts_ns;
            ex.push(s, now, &mut out);
            let st = ex.stats();
            assert!(st.memory_bytes <= ex.config().memory_cap_bytes as u64, "memory {} over cap", st.memory_bytes);
            assert!(st.reconciles(), "counters do not reconcile: {st:#?}");
        }
        out
    }

    pub fn requests(ev: &[HttpEvent]) -> Vec<&CapturedRequest> {
        ev.iter()
            .filter_map(|e| match e {
                HttpEvent::Request(r) => Some(r),
                HttpEvent::Response(_) => None,
            })
            .collect()
    }

    pub fn responses(ev: &[HttpEvent]) -> Vec<&CapturedResponse> {
        ev.iter()
            .filter_map(|e| match e {
                HttpEvent::Response(r) => Some(r),
                HttpEvent::Request(_) => None,
            })
            .collect()
    }

    pub fn raws(ev: &[HttpEvent]) -> Vec<Vec<u8>> {
        requests(ev).iter().map(|r| r.raw.to_vec()).collect()
    }

    pub fn req_drops(ex: &Extractor, r: DropReason) -> u64 {
        ex.stats().requests.dropped(r)
    }
}

use support::*;

const GET: &[u8] = b"GET /index.html?x=1 HTTP/1.1\r\nHost: example.com\r\nAccept: */*\r\n\r\n";
const POST: &[u8] = b"POST /submit HTTP/1.1\r\nHost: a\r\nContent-Length: 11\r\n\r\nhello world";
const CHUNKED: &[u8] =
    b"POST /up HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5;name=val\r\nhello\r\n1\r\n \r\n5\r\nworld\r\n0\r\nX-Trailer: 1\r\n\r\n";
const OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello";

fn both_families(f: impl Fn(bool)) {
    f(false);
    f(true);
}

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
fn pipelined_requests_in_one_segment_are_zero_copy_slices() {
    both_families(|v6| {
        let mut ex = Extractor::new(small_cfg());
        let mut c = Conn::new(v6, 40003, 9, 9);
        let all = [GET, POST, CHUNKED, GET].concat();
        let seg = c.client(&all);
        let base = seg.payload.as_ptr();
        let ev = feed(&mut ex, [seg]);
        let r = requests(&ev);
        assert_eq!(raws(&ev), vec![GET.to_vec(), POST.to_vec(), CHUNKED.to_vec(), GET.to_vec()]);
        assert_eq!(r[1].raw.as_ptr(), base.wrapping_add(GET.len()), "a slice of the segment, not a copy");
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
    let b = c.client(GET);
    let resp_to_post = c.server(OK);
    let ev = feed(&mut ex, [a, b, resp_to_post]);
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
    c.skip_client(1234);
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
    let b = c.client(GET);
    let ev = feed(&mut ex, [a, b]);
    assert_eq!(raws(&ev), vec![GET.to_vec()]);
    assert_eq!(req_drops(&ex, DropReason::Gap), 1);
}

#[test]
fn midstream_join_skips_to_the_next_request_line() {
    both_families(|v6| {
        let mut ex = Extractor::new(small_cfg());
        let mut c = Conn::new(v6, 40013, 3, 3);
        // The daemon starts while a request body and a response are already under way.
        let body_tail = c.client(b"tail of an earlier body");
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
fn unflagged_method_token_resyncs_too() {
    let mut ex = Extractor::new(small_cfg());
    let mut c = Conn::new(false, 40014, 3, 3);
    let propfind = b"PROPFIND /dav HTTP/1.1\r\nDepth: 1\r\n\r\n";
    let s = c.client(propfind);
    assert!(!s.request_start, "not in the kernel's method list");
    let ev = feed(&mut ex, [s]);
    assert_eq!(raws(&ev), vec![propfind.to_vec()]);
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
        let mut trunc_req = c.client(GET);
        trunc_req.truncated = true;
        trunc_req.payload = Bytes::new();
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
fn idle_flows_expire_and_drop_what_is_in_progress() {
    let mut ex = Extractor::new(small_cfg());
    let mut c = Conn::new(true, 40020, 3, 3);
    let s = c.client(&POST[..30]);
    let now = s.ts_ns;
    let mut ev = feed(&mut ex, [s]);
    ex.tick(now + 1_000_000_000, &mut ev);
    assert_eq!(ex.stats().flows_active, 1);
    ex.tick(now + ex.config().idle_timeout_ns, &mut ev);
    assert_eq!(ex.stats().flows_active, 0);
    assert_eq!(ex.stats().flows_expired, 1);
    assert_eq!(req_drops(&ex, DropReason::Timeout), 1);
    assert_eq!(ex.stats().memory_bytes, 0);
}

#[test]
fn memory_cap_evicts_least_recently_used_flows() {
    let cap = 200 * 1024;
    let cfg = ExtractorConfig { memory_cap_bytes: cap, ..small_cfg() };
    let mut ex = Extractor::new(cfg);
    let big = format!("POST /big HTTP/1.1\r\nContent-Length: {}\r\n\r\n", 1 << 20);
    let mut out = Vec::new();
    for port in 0..40u16 {
        let mut c = Conn::new(port % 2 == 0, 20000 + port, 1, 1);
        ex.push(c.client(big.as_bytes()), c.ts, &mut out);
        for _ in 0..4 {
            ex.push(c.client(&[b'x'; 8192]), c.ts, &mut out);
            assert!(ex.stats().memory_bytes <= cap as u64);
        }
    }
    let st = ex.stats();
    assert!(st.flows_evicted > 0);
    assert_eq!(st.requests.dropped(DropReason::Evicted), st.flows_evicted);
    assert!(st.reconciles());
}

#[test]
fn flow_limit_evicts_oldest_flow() {
    let cfg = ExtractorConfig { max_flows: 3, ..small_cfg() };
    let mut ex = Extractor::new(cfg);
    let mut conns: Vec<Conn> = (0..4).map(|i| Conn::new(i % 2 == 1, 30000 + i, 1, 1)).collect();
    let mut out = Vec::new();
    for c in &mut conns[..3] {
        ex.push(c.client(&GET[..10]), c.ts, &mut out);
    }
    ex.push(conns[0].client(&GET[10..]), 10_000_000, &mut out);
    ex.push(conns[3].client(GET), 10_000_001, &mut out);
    let st = ex.stats();
    assert_eq!(st.flows_active, 3);
    assert_eq!(st.flows_evicted, 1);
    assert_eq!(st.requests.dropped(DropReason::Evicted), 1, "the least recently used, not flow 0");
    assert_eq!(raws(&out), vec![GET.to_vec(), GET.to_vec()]);
}

#[test]
fn idle_flow_costs_at_most_512_bytes() {
    assert!(Extractor::idle_flow_bytes() <= 512, "idle flow costs {} bytes", Extractor::idle_flow_bytes());
    both_families(|v6| {
        let mut ex = Extractor::new(small_cfg());
        let mut c = Conn::new(v6, 40021, 1, 1);
        let segs = [c.client(GET), c.server(OK), c.client(POST), c.server(OK)];
        let _ = feed(&mut ex, segs);
        assert_eq!(ex.stats().flows_active, 1);
        assert_eq!(ex.stats().buffered_bytes, 0);
        assert!(
            ex.stats().memory_bytes <= 512,
            "after an exchange an idle flow holds {} bytes",
            ex.stats().memory_bytes
        );
    });
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
fn lost_request_start_between_messages_is_a_gap_not_a_skip() {
    let mut ex = Extractor::new(small_cfg());
    let mut c = Conn::new(false, 40038, 1, 1);
    let a = c.client(GET);
    let _lost_head = c.client(&POST[..30]);
    let tail = c.client(&POST[30..]);
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
        for (payload, split, after_get) in [(&h2[..], 100, false), (&h2[..], 4, true), (&hello[..], 100, false)] {
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
fn oversize_headers_drop_and_resync() {
    let cfg = ExtractorConfig { max_header_bytes: 256, max_headers: 4, ..small_cfg() };
    let long = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(300));
    let many = "GET / HTTP/1.1\r\na: 1\r\nb: 2\r\nc: 3\r\nd: 4\r\ne: 5\r\n\r\n";
    for (bad, split) in [(long.as_bytes(), 1000), (long.as_bytes(), 7), (many.as_bytes(), 1000), (many.as_bytes(), 3)] {
        let mut ex = Extractor::new(cfg.clone());
        let mut c = Conn::new(false, 40026, 1, 1);
        let mut segs = vec![c.client(GET)];
        segs.extend(c.client_split(bad, split));
        segs.push(c.client(GET));
        let ev = feed(&mut ex, segs);
        assert_eq!(raws(&ev), vec![GET.to_vec(), GET.to_vec()]);
        assert_eq!(req_drops(&ex, DropReason::OversizeHeaders), 1);
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
fn parse_errors_drop_and_resync_at_the_next_request_start() {
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
        let segs = [c.client(b), c.client(b"trailing garbage"), c.client(GET)];
        let ev = feed(&mut ex, segs);
        assert_eq!(raws(&ev), vec![GET.to_vec()], "{}", String::from_utf8_lossy(b));
        assert_eq!(req_drops(&ex, DropReason::ParseError), 1);
    }
}

#[test]
fn te_and_cl_together_is_dropped_but_framed_by_chunked() {
    let mut ex = Extractor::new(small_cfg());
    let mut c = Conn::new(false, 40030, 1, 1);
    let smuggle = b"POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
    let ev = feed(&mut ex, [c.client(&[smuggle.as_slice(), GET].concat())]);
    assert_eq!(raws(&ev), vec![GET.to_vec()]);
    assert_eq!(req_drops(&ex, DropReason::ParseError), 1);
}

#[test]
fn responses_framing_and_fifo_pairing() {
    both_families(|v6| {
        let mut ex = Extractor::new(small_cfg());
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
fn drop_labels_cover_every_reason_and_direction() {
    let ex = Extractor::new(small_cfg());
    let d: Vec<_> = ex.stats().drops().collect();
    assert_eq!(d.len(), 2 * DropReason::COUNT);
    assert!(d.iter().any(|(l, dir, _)| *l == "gap" && *dir == Direction::Request));
    assert!(d.iter().any(|(l, dir, _)| *l == "unpaired_response" && *dir == Direction::Response));
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
