//! Typed TCP segments decoded from ring-buffer records. Pure: no I/O, no aya.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use bytes::Bytes;
use shadow_common::{RECORD_VERSION, SEGMENT_HEADER_LEN, SegmentHeader, direction, family, record_flags, tcp_flags};

pub use crate::label::RecordDrop;
use crate::sys;

/// Which way a segment travels relative to the service port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Client to service: request bytes.
    Request,
    /// Service to client: response bytes.
    Response,
}

impl Direction {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Request => "request",
            Self::Response => "response",
        }
    }
}

/// A TCP connection, named the same way whichever direction a segment travels: client first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlowId {
    pub client: SocketAddr,
    pub server: SocketAddr,
}

/// One captured TCP segment. The daemon reads it in place in the ring buffer
/// ([`SegmentRef`], decoded by [`decode_ref`]): reassembly copies only the bytes it keeps
/// beyond the record. The owned form (the default, `Bytes`) is for tests, fuzzing and tools.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Segment<P = Bytes> {
    pub flow: FlowId,
    pub direction: Direction,
    /// TCP sequence number of the first payload byte.
    pub seq: u32,
    pub ack: u32,
    /// TCP flags byte (see `shadow_common::tcp_flags`).
    pub tcp_flags: u8,
    /// CLOCK_MONOTONIC nanoseconds when the kernel saw the segment.
    pub ts_ns: u64,
    /// Payload length on the wire; `payload.len()` is smaller only when `truncated`.
    pub wire_len: u32,
    /// The captured payload bytes.
    pub payload: P,
    /// The kernel could not copy the whole payload: the stream is damaged at this point.
    pub truncated: bool,
    /// The kernel saw a request line here and drew the sampling decision on it.
    pub request_start: bool,
    pub ifindex: u32,
}

/// A segment borrowing its payload from the ring-buffer record it was decoded from.
pub type SegmentRef<'a> = Segment<&'a [u8]>;

impl<P: AsRef<[u8]>> Segment<P> {
    /// This segment with its payload borrowed.
    pub fn borrowed(&self) -> SegmentRef<'_> {
        self.with_payload(self.payload.as_ref())
    }
}

impl SegmentRef<'_> {
    /// This segment with its payload copied out.
    pub fn owned(&self) -> Segment {
        self.with_payload(Bytes::copy_from_slice(self.payload))
    }
}

impl<P> Segment<P> {
    fn with_payload<Q>(&self, payload: Q) -> Segment<Q> {
        Segment {
            flow: self.flow,
            direction: self.direction,
            seq: self.seq,
            ack: self.ack,
            tcp_flags: self.tcp_flags,
            ts_ns: self.ts_ns,
            wire_len: self.wire_len,
            payload,
            truncated: self.truncated,
            request_start: self.request_start,
            ifindex: self.ifindex,
        }
    }

    pub const fn fin(&self) -> bool {
        self.tcp_flags & tcp_flags::FIN != 0
    }
    pub const fn rst(&self) -> bool {
        self.tcp_flags & tcp_flags::RST != 0
    }
    pub const fn syn(&self) -> bool {
        self.tcp_flags & tcp_flags::SYN != 0
    }
    /// Sequence number just past this segment's payload (FIN counts as one, as in TCP).
    pub const fn end_seq(&self) -> u32 {
        self.seq.wrapping_add(self.wire_len).wrapping_add(self.fin() as u32)
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("record of {0} bytes is shorter than the {SEGMENT_HEADER_LEN}-byte header")]
    Short(usize),
    #[error("record version {0}, this daemon reads version {RECORD_VERSION}")]
    Version(u8),
    #[error("record has unknown address family {0}")]
    Family(u8),
    #[error("record has unknown direction {0}")]
    Direction(u8),
    #[error("record claims {claimed} captured bytes but carries {present}")]
    Length { claimed: u32, present: usize },
}

impl DecodeError {
    pub const fn reason(&self) -> RecordDrop {
        match self {
            Self::Short(_) => RecordDrop::Short,
            Self::Version(_) => RecordDrop::Version,
            Self::Family(_) | Self::Direction(_) => RecordDrop::Bad,
            Self::Length { .. } => RecordDrop::Length,
        }
    }
}

/// Read the header of a record without copying the payload.
pub fn decode_header(record: &[u8]) -> Result<SegmentHeader, DecodeError> {
    let Some(head) = record.first_chunk::<SEGMENT_HEADER_LEN>() else {
        return Err(DecodeError::Short(record.len()));
    };
    let hdr = sys::plain::segment_header(head);
    if hdr.version != RECORD_VERSION {
        return Err(DecodeError::Version(hdr.version));
    }
    Ok(hdr)
}

/// Decode one ring-buffer record (header + payload) into a [`Segment`], copying the payload.
pub fn decode(record: &[u8]) -> Result<Segment, DecodeError> {
    decode_ref(record).map(|s| s.owned())
}

/// Decode one ring-buffer record (header + payload) in place: the payload stays in the record.
pub fn decode_ref(record: &[u8]) -> Result<SegmentRef<'_>, DecodeError> {
    let hdr = decode_header(record)?;
    let body = &record[SEGMENT_HEADER_LEN..];
    let captured = hdr.captured_len as usize;
    let Some(payload) = body.get(..captured) else {
        return Err(DecodeError::Length { claimed: hdr.captured_len, present: body.len() });
    };
    let (src, dst) = match hdr.family {
        family::IPV4 => {
            let s = Ipv4Addr::new(hdr.src_addr[0], hdr.src_addr[1], hdr.src_addr[2], hdr.src_addr[3]);
            let d = Ipv4Addr::new(hdr.dst_addr[0], hdr.dst_addr[1], hdr.dst_addr[2], hdr.dst_addr[3]);
            (IpAddr::V4(s), IpAddr::V4(d))
        }
        family::IPV6 => (IpAddr::V6(Ipv6Addr::from(hdr.src_addr)), IpAddr::V6(Ipv6Addr::from(hdr.dst_addr))),
        other => return Err(DecodeError::Family(other)),
    };
    let src = SocketAddr::new(src, hdr.src_port);
    let dst = SocketAddr::new(dst, hdr.dst_port);
    let (dir, flow) = match hdr.direction {
        direction::REQUEST => (Direction::Request, FlowId { client: src, server: dst }),
        direction::RESPONSE => (Direction::Response, FlowId { client: dst, server: src }),
        other => return Err(DecodeError::Direction(other)),
    };
    let truncated = hdr.flags & record_flags::TRUNCATED != 0 || captured < hdr.payload_len as usize;
    Ok(Segment {
        flow,
        direction: dir,
        seq: hdr.seq,
        ack: hdr.ack,
        tcp_flags: hdr.tcp_flags,
        ts_ns: hdr.ts_ns,
        wire_len: hdr.payload_len,
        payload,
        truncated,
        request_start: hdr.flags & record_flags::REQUEST_START != 0,
        ifindex: hdr.ifindex,
    })
}

/// Encode a segment as the kernel would (header + payload). Used by tests, fuzzing and benchmarks
/// to feed the user-space pipeline without a kernel.
#[cfg(any(test, feature = "test-util"))]
pub fn encode(seg: &Segment) -> Vec<u8> {
    let (src, dst) = match seg.direction {
        Direction::Request => (seg.flow.client, seg.flow.server),
        Direction::Response => (seg.flow.server, seg.flow.client),
    };
    let addr = |a: IpAddr| -> (u8, [u8; 16]) {
        match a {
            IpAddr::V4(v4) => {
                let mut b = [0u8; 16];
                b[..4].copy_from_slice(&v4.octets());
                (family::IPV4, b)
            }
            IpAddr::V6(v6) => (family::IPV6, v6.octets()),
        }
    };
    let (fam, src_addr) = addr(src.ip());
    let (_, dst_addr) = addr(dst.ip());
    let mut flags = 0u16;
    if seg.truncated {
        flags |= record_flags::TRUNCATED;
    }
    if seg.request_start {
        flags |= record_flags::REQUEST_START;
    }
    let hdr = SegmentHeader {
        version: RECORD_VERSION,
        family: fam,
        direction: match seg.direction {
            Direction::Request => direction::REQUEST,
            Direction::Response => direction::RESPONSE,
        },
        tcp_flags: seg.tcp_flags,
        flags,
        _pad0: 0,
        src_port: src.port(),
        dst_port: dst.port(),
        seq: seg.seq,
        ack: seg.ack,
        payload_len: seg.wire_len,
        ts_ns: seg.ts_ns,
        captured_len: seg.payload.len() as u32,
        ifindex: seg.ifindex,
        src_addr,
        dst_addr,
    };
    let mut out = Vec::with_capacity(SEGMENT_HEADER_LEN + seg.payload.len());
    // The explicit padding fields are zeroed.
    out.extend_from_slice(&sys::plain::segment_header_bytes(hdr));
    out.extend_from_slice(&seg.payload);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(dir: Direction, v6: bool) -> Segment {
        let (c, s): (IpAddr, IpAddr) = if v6 {
            ("fd00::1".parse().unwrap(), "fd00::2".parse().unwrap())
        } else {
            ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap())
        };
        Segment {
            flow: FlowId { client: SocketAddr::new(c, 40000), server: SocketAddr::new(s, 8080) },
            direction: dir,
            seq: 0xfffffff0,
            ack: 7,
            tcp_flags: tcp_flags::ACK | tcp_flags::PSH,
            ts_ns: 123_456_789,
            wire_len: 5,
            payload: Bytes::from_static(b"GET /"),
            truncated: false,
            request_start: true,
            ifindex: 3,
        }
    }

    #[test]
    fn encode_decode_round_trip_both_families_and_directions() {
        for v6 in [false, true] {
            for dir in [Direction::Request, Direction::Response] {
                let s = sample(dir, v6);
                let rec = encode(&s);
                assert_eq!(rec.len(), SEGMENT_HEADER_LEN + 5);
                assert_eq!(decode(&rec).unwrap(), s);
            }
        }
    }

    #[test]
    fn record_with_bucket_slack_decodes_to_captured_len() {
        let s = sample(Direction::Request, false);
        let mut rec = encode(&s);
        rec.resize(SEGMENT_HEADER_LEN + 512, 0xAA);
        assert_eq!(decode(&rec).unwrap().payload, Bytes::from_static(b"GET /"));
    }

    #[test]
    fn header_layout_matches_wire_offsets() {
        let s = sample(Direction::Request, false);
        let rec = encode(&s);
        assert_eq!(rec[0], RECORD_VERSION);
        assert_eq!(rec[1], family::IPV4);
        assert_eq!(rec[2], direction::REQUEST);
        assert_eq!(u16::from_ne_bytes([rec[8], rec[9]]), 40000);
        assert_eq!(u16::from_ne_bytes([rec[10], rec[11]]), 8080);
        assert_eq!(u32::from_ne_bytes(rec[12..16].try_into().unwrap()), 0xfffffff0);
        assert_eq!(u64::from_ne_bytes(rec[24..32].try_into().unwrap()), 123_456_789);
        assert_eq!(u32::from_ne_bytes(rec[32..36].try_into().unwrap()), 5);
        assert_eq!(&rec[40..44], &[10, 0, 0, 1]);
        assert_eq!(&rec[56..60], &[10, 0, 0, 2]);
    }

    #[test]
    fn bad_records_are_errors_not_panics() {
        let s = sample(Direction::Request, false);
        let rec = encode(&s);
        assert_eq!(decode(&rec[..10]), Err(DecodeError::Short(10)));
        let mut v = rec.clone();
        v[0] = 99;
        assert_eq!(decode(&v), Err(DecodeError::Version(99)));
        let mut v = rec.clone();
        v[1] = 5;
        assert_eq!(decode(&v), Err(DecodeError::Family(5)));
        let mut v = rec.clone();
        v[2] = 9;
        assert_eq!(decode(&v), Err(DecodeError::Direction(9)));
        assert!(matches!(decode(&rec[..rec.len() - 1]), Err(DecodeError::Length { .. })));
    }

    #[test]
    fn truncated_flag_and_short_capture_both_mark_truncated() {
        let mut s = sample(Direction::Request, false);
        s.truncated = true;
        s.wire_len = 70000;
        s.payload = Bytes::new();
        let d = decode(&encode(&s)).unwrap();
        assert!(d.truncated);
        assert_eq!(d.wire_len, 70000);
    }

    #[test]
    fn end_seq_wraps_and_counts_fin() {
        let mut s = sample(Direction::Request, false);
        assert_eq!(s.end_seq(), 0xfffffff5);
        s.seq = u32::MAX - 1;
        s.tcp_flags |= tcp_flags::FIN;
        assert_eq!(s.end_seq(), 4);
    }

    #[test]
    fn directions_are_named_as_the_metrics_label_them() {
        assert_eq!(Direction::Request.as_str(), "request");
        assert_eq!(Direction::Response.as_str(), "response");
    }

    #[test]
    fn truncation_comes_from_the_flag_or_a_short_capture_each_alone() {
        let s = sample(Direction::Request, false);
        assert!(!decode(&encode(&s)).unwrap().truncated);
        // The flag alone: every byte copied, yet the kernel marked the record.
        let flagged = Segment { truncated: true, ..s.clone() };
        let rec = encode(&flagged);
        assert_eq!(decode_header(&rec).unwrap().flags, record_flags::TRUNCATED | record_flags::REQUEST_START);
        assert!(decode(&rec).unwrap().truncated);
        // A short capture alone: 5 bytes of 9, no flag.
        let short = Segment { wire_len: 9, ..s.clone() };
        let rec = encode(&short);
        assert_eq!(decode_header(&rec).unwrap().flags, record_flags::REQUEST_START);
        assert!(decode(&rec).unwrap().truncated);
        // More copied than the wire length claims is no truncation.
        assert!(!decode(&encode(&Segment { wire_len: 3, ..s.clone() })).unwrap().truncated);
        // Neither flag set.
        let plain = Segment { request_start: false, ..s };
        let rec = encode(&plain);
        assert_eq!(decode_header(&rec).unwrap().flags, 0);
        assert!(!decode(&rec).unwrap().request_start);
    }

    #[test]
    fn tcp_flags_read_one_bit_each() {
        let mut s = sample(Direction::Request, false);
        assert_eq!((s.fin(), s.rst(), s.syn()), (false, false, false));
        for (bit, want) in [(tcp_flags::FIN, (true, false, false)), (tcp_flags::RST, (false, true, false))] {
            s.tcp_flags = tcp_flags::ACK | bit;
            assert_eq!((s.fin(), s.rst(), s.syn()), want);
        }
        s.tcp_flags = tcp_flags::SYN;
        assert_eq!((s.fin(), s.rst(), s.syn()), (false, false, true));
    }

    #[test]
    fn decode_errors_have_their_metric_labels() {
        let label = |e: DecodeError| e.reason().as_str();
        assert_eq!(label(DecodeError::Short(1)), "short_record");
        assert_eq!(label(DecodeError::Version(2)), "record_version");
        assert_eq!(label(DecodeError::Family(3)), "bad_record");
        assert_eq!(label(DecodeError::Direction(4)), "bad_record");
        assert_eq!(label(DecodeError::Length { claimed: 9, present: 1 }), "record_length");
        crate::label::check(RecordDrop::LABELS);
    }
}
