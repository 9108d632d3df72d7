//! Test plumbing shared by the extractor tests: connections that write segments as a TCP stack
//! would, feeding with the bounds checked after every push, and the messages that come out.

pub(crate) use std::net::{IpAddr, SocketAddr};

pub(crate) use bytes::Bytes;
pub(crate) use shadow_common::tcp_flags;

pub(crate) use crate::{
    message::{BodyFraming, CapturedRequest, CapturedResponse},
    reassembly::{DropReason, Extractor, ExtractorConfig, HttpEvent},
    segment::{Direction, FlowId, Segment},
};

pub(crate) fn flow_id(v6: bool, client_port: u16) -> FlowId {
    let (c, s): (IpAddr, IpAddr) = if v6 {
        ("fd00::1".parse().unwrap(), "fd00::2".parse().unwrap())
    } else {
        ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap())
    };
    FlowId { client: SocketAddr::new(c, client_port), server: SocketAddr::new(s, 8080) }
}

/// Does the kernel program's grammar take this payload for a request start (or a piece too
/// short to tell)? The one definition the program uses, from shadow-common.
pub(crate) fn kernel_request_start(p: &[u8]) -> bool {
    shadow_common::classify_payload(p) != shadow_common::StartClass::No
}

/// One TCP connection whose two sides write bytes; every segment acknowledges everything
/// the other side wrote before it, as a real stack would.
#[derive(Clone, Debug)]
pub(crate) struct Conn {
    pub flow: FlowId,
    pub c_seq: u32,
    pub s_seq: u32,
    pub ts: u64,
    /// The acknowledgment of the kernel's last decision on this connection: a start-looking
    /// segment with the same one continues that request (not flagged), as in the program.
    pub start_ack: Option<u32>,
    /// The server began a final response since that decision (TC: needed for a new one).
    pub answered: bool,
}

impl Conn {
    pub(crate) fn new(v6: bool, port: u16, c_isn: u32, s_isn: u32) -> Self {
        Self { flow: flow_id(v6, port), c_seq: c_isn, s_seq: s_isn, ts: 1_000_000, start_ack: None, answered: true }
    }

    fn seg(&mut self, dir: Direction, seq: u32, ack: u32, flags: u8, bytes: &[u8]) -> Segment {
        self.ts += 1_000;
        let request_start = dir == Direction::Request
            && kernel_request_start(bytes)
            && self.start_ack != Some(ack)
            && (self.answered || self.start_ack.is_none());
        if request_start {
            self.start_ack = Some(ack);
            self.answered = false;
        }
        if dir == Direction::Response {
            let mut head = [0u8; 12];
            let n = bytes.len().min(12);
            head[..n].copy_from_slice(&bytes[..n]);
            self.answered |= shadow_common::starts_final_response(&head, n);
        }
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
            request_start,
            ifindex: 1,
        }
    }

    pub(crate) fn client(&mut self, bytes: &[u8]) -> Segment {
        let s = self.seg(Direction::Request, self.c_seq, self.s_seq, tcp_flags::ACK | tcp_flags::PSH, bytes);
        self.c_seq = self.c_seq.wrapping_add(bytes.len() as u32);
        s
    }

    pub(crate) fn server(&mut self, bytes: &[u8]) -> Segment {
        let s = self.seg(Direction::Response, self.s_seq, self.c_seq, tcp_flags::ACK | tcp_flags::PSH, bytes);
        self.s_seq = self.s_seq.wrapping_add(bytes.len() as u32);
        s
    }

    /// Client bytes cut into segments of `size`.
    pub(crate) fn client_split(&mut self, bytes: &[u8], size: usize) -> Vec<Segment> {
        bytes.chunks(size).map(|c| self.client(c)).collect()
    }

    /// Bytes the kernel did not capture (unsampled request or response).
    pub(crate) fn skip_client(&mut self, n: usize) {
        self.c_seq = self.c_seq.wrapping_add(n as u32);
    }
    /// Server bytes the kernel saw but did not capture (an unsampled answer): an answer all the
    /// same.
    pub(crate) fn skip_server(&mut self, n: usize) {
        self.s_seq = self.s_seq.wrapping_add(n as u32);
        self.answered = true;
    }

    pub(crate) fn client_fin(&mut self) -> Segment {
        let s = self.seg(Direction::Request, self.c_seq, self.s_seq, tcp_flags::ACK | tcp_flags::FIN, b"");
        self.c_seq = self.c_seq.wrapping_add(1);
        s
    }
    pub(crate) fn server_fin(&mut self) -> Segment {
        let s = self.seg(Direction::Response, self.s_seq, self.c_seq, tcp_flags::ACK | tcp_flags::FIN, b"");
        self.s_seq = self.s_seq.wrapping_add(1);
        s
    }
    pub(crate) fn client_rst(&mut self) -> Segment {
        self.seg(Direction::Request, self.c_seq, 0, tcp_flags::RST, b"")
    }
    pub(crate) fn server_rst(&mut self) -> Segment {
        self.seg(Direction::Response, self.s_seq, 0, tcp_flags::RST, b"")
    }
}

pub(crate) fn small_cfg() -> ExtractorConfig {
    ExtractorConfig { gap_timeout_ns: 50_000_000, ..ExtractorConfig::default() }
}

/// Push everything at the segments' own timestamps, checking the bounds after each push. Each
/// segment goes the daemon's way: encoded as the kernel's record into one buffer reused for every
/// record (as ring-buffer slots are), decoded in place, pushed, and the buffer overwritten
/// before the next: whatever the extractor kept must have been copied out.
pub(crate) fn feed(ex: &mut Extractor, segs: impl IntoIterator<Item = Segment>) -> Vec<HttpEvent> {
    let mut out = Vec::new();
    let mut record = Vec::new();
    for s in segs {
        let now = s.ts_ns;
        record.clear();
        record.extend_from_slice(&crate::segment::encode(&s));
        let in_place = crate::segment::decode_ref(&record).expect("an encoded segment decodes");
        assert_eq!(in_place.owned(), s);
        ex.push(in_place, now, &mut out);
        record.fill(0xEE);
        let st = ex.stats();
        assert!(st.memory_bytes <= ex.config().memory_cap_bytes as u64, "memory {} over cap", st.memory_bytes);
        assert!(st.reconciles(), "counters do not reconcile: {st:#?}");
    }
    out
}

pub(crate) fn requests(ev: &[HttpEvent]) -> Vec<&CapturedRequest> {
    ev.iter()
        .filter_map(|e| match e {
            HttpEvent::Request(r) => Some(r),
            HttpEvent::Response(_) => None,
        })
        .collect()
}

pub(crate) fn responses(ev: &[HttpEvent]) -> Vec<&CapturedResponse> {
    ev.iter()
        .filter_map(|e| match e {
            HttpEvent::Response(r) => Some(r),
            HttpEvent::Request(_) => None,
        })
        .collect()
}

pub(crate) fn raws(ev: &[HttpEvent]) -> Vec<Vec<u8>> {
    requests(ev).iter().map(|r| r.raw.to_vec()).collect()
}

pub(crate) fn req_drops(ex: &Extractor, r: DropReason) -> u64 {
    ex.stats().requests.dropped(r)
}

pub(crate) const GET: &[u8] = b"GET /index.html?x=1 HTTP/1.1\r\nHost: example.com\r\nAccept: */*\r\n\r\n";
pub(crate) const POST: &[u8] = b"POST /submit HTTP/1.1\r\nHost: a\r\nContent-Length: 11\r\n\r\nhello world";
pub(crate) const CHUNKED: &[u8] =
    b"POST /up HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5;name=val\r\nhello\r\n1\r\n \r\n5\r\nworld\r\n0\r\nX-Trailer: 1\r\n\r\n";
pub(crate) const OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello";

pub(crate) fn both_families(f: impl Fn(bool)) {
    f(false);
    f(true);
}
