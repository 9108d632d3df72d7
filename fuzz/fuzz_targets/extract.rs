//! Reassembly + extraction on arbitrary segment sequences.
//!
//! The input drives a small world: a few connections (IPv4 and IPv6), each direction with its
//! own sequence space, segments landing near the expected position (in order, overlapping,
//! ahead, far ahead, behind), payloads of raw fuzz bytes mixed with HTTP fragments so that the
//! parser's deeper states are reached, flags (FIN, RST, truncated, request start), acks and
//! ticks. Checked after every step: no panic, memory under the cap, every segment and message
//! accounted for, and every emitted request is whole: its head parses again to the same length
//! and its body matches its framing.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use shadow_common::tcp_flags;
use shadow_daemon::{
    http::{ChunkedDecoder, Limits, parse_request_head},
    message::BodyFraming,
    reassembly::{Extractor, ExtractorConfig, HttpEvent},
    segment::{Direction, FlowId, Segment},
};

const FRAGMENTS: [&[u8]; 24] = [
    b"GET / HTTP/1.1\r\n",
    b"POST /p HTTP/1.1\r\n",
    b"HEAD /h HTTP/1.1\r\n",
    b"PROPFIND /d HTTP/1.0\r\n",
    b"CONNECT a:1 HTTP/1.1\r\n",
    b"Host: x\r\n",
    b"Content-Length: 5\r\n",
    b"Content-Length: 0\r\n",
    b"Transfer-Encoding: chunked\r\n",
    b"Upgrade: websocket\r\nConnection: upgrade\r\n",
    b"Expect: 100-continue\r\n",
    b"\r\n",
    b"\r\n\r\n",
    b"hello",
    b"5\r\nhello\r\n",
    b"3;x=y\r\nabc\r\n",
    b"0\r\n\r\n",
    b"0\r\nT: 1\r\n\r\n",
    b"HTTP/1.1 200 OK\r\n",
    b"HTTP/1.1 100 Continue\r\n\r\n",
    b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
    b"HTTP/1.0 204 No Content\r\n",
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    b"\x16\x03\x01\x00\x10",
];

struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }
    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes([self.byte()?, self.byte()?]))
    }
    fn take(&mut self, n: usize) -> &[u8] {
        let n = n.min(self.0.len());
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        a
    }
}

/// Per direction: the next sequence number a well-behaved sender would use.
#[derive(Clone, Copy)]
struct Side {
    next: u32,
}

fn flow(i: u8) -> FlowId {
    let (c, s): (IpAddr, IpAddr) = if i % 2 == 0 {
        (IpAddr::V4(Ipv4Addr::new(10, 0, 0, i)), IpAddr::V4(Ipv4Addr::new(10, 0, 0, 200)))
    } else {
        (
            IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, u16::from(i))),
            IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0xff)),
        )
    };
    FlowId { client: SocketAddr::new(c, 40000 + u16::from(i)), server: SocketAddr::new(s, 80) }
}

fn check_request(raw: &[u8], head_len: usize, framing: BodyFraming, limits: &Limits) {
    let head = parse_request_head(raw, limits).expect("emitted head parses").expect("emitted head is complete");
    assert_eq!(head.head_len, head_len);
    assert_eq!(head.framing, framing);
    let body = &raw[head_len..];
    match framing {
        BodyFraming::None => assert!(body.is_empty()),
        BodyFraming::ContentLength(n) => assert_eq!(body.len() as u64, n),
        BodyFraming::Chunked => {
            let mut d = ChunkedDecoder::default();
            assert_eq!(d.advance(body, limits), Ok((body.len(), true)));
        }
        BodyFraming::UntilClose => panic!("a request is never framed until close"),
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    let (Some(a), Some(b), Some(c), Some(d)) = (input.byte(), input.byte(), input.byte(), input.byte()) else {
        return;
    };
    let cfg = ExtractorConfig {
        memory_cap_bytes: 4096 + usize::from(a) * 2048,
        max_flows: 1 + usize::from(b % 8),
        ooo_window_bytes: 64 << (c % 12),
        idle_timeout_ns: 50_000_000,
        gap_timeout_ns: 5_000_000,
        max_header_bytes: 32 + usize::from(d) * 32,
        max_headers: 1 + usize::from(d % 16),
        max_body_bytes: u64::from(a) * 64,
        keep_response_body: usize::from(b % 4) * 16,
        // Responses as evidence (TC) or not (XDP): held requests must be accounted and bounded.
        await_response: c & 0x80 != 0,
    };
    let limits = Limits {
        max_header_bytes: cfg.max_header_bytes,
        max_headers: cfg.max_headers,
        max_body_bytes: cfg.max_body_bytes,
        keep_response_body: cfg.keep_response_body,
    };
    let cap = cfg.memory_cap_bytes as u64;
    let mut ex = Extractor::new(cfg);
    let mut sides = [[Side { next: 0 }; 2]; 4];
    for (i, s) in sides.iter_mut().enumerate() {
        s[0].next = u32::MAX - 300 * i as u32;
        s[1].next = 7 + 1000 * i as u32;
    }
    let mut now: u64 = 1_000_000;
    let mut out = Vec::new();
    let mut last_id = 0;
    while let Some(op) = input.byte() {
        now += u64::from(op & 0x0f) * 1_000_000;
        if op == 0xff {
            ex.tick(now, &mut out);
            continue;
        }
        let Some(sel) = input.byte() else { break };
        let f = (sel & 3) as usize;
        let dir = if sel & 4 == 0 { Direction::Request } else { Direction::Response };
        let d = usize::from(dir == Direction::Response);
        // Payload: raw bytes or fragments.
        let mut payload = Vec::new();
        let Some(kind) = input.byte() else { break };
        for _ in 0..(kind & 7) + 1 {
            let Some(k) = input.byte() else { break };
            if k < 0x80 {
                payload.extend_from_slice(FRAGMENTS[usize::from(k) % FRAGMENTS.len()]);
            } else {
                let n = usize::from(k & 0x3f);
                payload.extend_from_slice(input.take(n));
            }
        }
        if kind & 0x80 != 0 {
            payload.clear();
        }
        // Where it lands: mostly in order, sometimes around it.
        let Some(pos) = input.u16() else { break };
        let side = sides[f][d];
        let seq = match pos >> 13 {
            0..=3 => side.next,
            4 => side.next.wrapping_add(u32::from(pos & 0x1fff)),
            5 => side.next.wrapping_sub(u32::from(pos & 0x1fff)),
            6 => side.next.wrapping_add(u32::from(pos) << 12),
            _ => u32::from(pos).wrapping_mul(0x9e37_79b9),
        };
        let flags_in = sel >> 3;
        let mut flags = tcp_flags::PSH;
        if flags_in & 1 == 0 {
            flags |= tcp_flags::ACK;
        }
        if flags_in & 0x1e == 0x02 {
            flags |= tcp_flags::FIN;
        }
        if flags_in & 0x1e == 0x04 {
            flags |= tcp_flags::RST;
        }
        let truncated = flags_in & 0x1e == 0x06;
        let other = sides[f][1 - d].next;
        let ack = if flags_in & 0x08 != 0 { other.wrapping_sub(u32::from(pos & 0xff)) } else { other };
        let wire_len = if truncated { payload.len() as u32 + u32::from(pos & 0x3ff) } else { payload.len() as u32 };
        let request_start = dir == Direction::Request && (flags_in & 0x10 != 0 || payload.first() == Some(&b'G'));
        let seg = Segment {
            flow: flow(f as u8),
            direction: dir,
            seq,
            ack,
            tcp_flags: flags,
            ts_ns: now,
            wire_len,
            payload: if truncated { Bytes::new() } else { Bytes::from(payload) },
            truncated,
            request_start,
            ifindex: 1,
        };
        let end = seg.end_seq();
        if seq == side.next {
            sides[f][d].next = end;
        }
        ex.push(seg, now, &mut out);

        let st = ex.stats();
        assert!(st.memory_bytes <= cap, "memory {} over cap {cap}", st.memory_bytes);
        assert!(st.buffered_bytes <= st.memory_bytes);
        assert!(st.reconciles(), "{st:#?}");
        for ev in out.drain(..) {
            if let HttpEvent::Request(r) = ev {
                assert!(r.id > last_id, "ids increase");
                last_id = r.id;
                check_request(&r.raw, r.head_len, r.framing, &limits);
                assert!(r.raw.get(r.method.clone()).is_some() && r.raw.get(r.target.clone()).is_some());
                assert!(r.first_ts_ns <= r.last_ts_ns);
            }
        }
    }
    ex.tick(now + 10_000_000_000, &mut out);
    let st = ex.stats();
    assert_eq!(st.flows_active, 0);
    assert_eq!(st.memory_bytes, 0);
    assert_eq!(st.requests.in_progress, 0);
    assert_eq!(st.responses.in_progress, 0);
    assert!(st.reconciles());
});
