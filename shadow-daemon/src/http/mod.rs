//! HTTP/1.x over reassembled byte streams: message heads (httparse), body framing (Content-Length,
//! chunked, until close), message assembly from in-order stream pieces, and FIFO pairing of
//! responses with requests. Pure: no I/O, no clock (timestamps come with the bytes).
//!
//! `reassembly` owns sequence numbers, holes and memory; it hands this module [`Piece`]s of
//! contiguous bytes in stream order and tells it when the stream is damaged (a final hole, a
//! truncated capture). Everything here decides only what the bytes mean.

mod body;
mod head;
mod pairing;
mod path;
mod request;
mod response;
#[cfg(any(test, feature = "test-util"))]
mod test_util;

use std::mem::MaybeUninit;

#[cfg(any(test, feature = "test-util"))]
pub use self::test_util::CapturedRequestBuilder;
pub use self::{
    body::{BodyDecoder, ChunkedDecoder, KeptBody},
    head::{
        Preface, RequestHead, RequestKind, ResponseHead, find_head_end, keeps_alive, looks_like_response_line,
        parse_request_head, parse_response_head, persistent, unsupported_preface,
    },
    pairing::{HeldRequests, MAX_PENDING, PairOutcome, Pending, PendingQueue, refuses_framing, serves_early},
    path::{PathPattern, normalize_path, request_path},
    request::RequestAssembler,
    response::{ResponseAssembler, Unpaired},
};
pub use crate::label::DropReason;
use crate::{
    message::{CapturedRequest, CapturedResponse},
    segment::FlowId,
};

/// A message extracted from a flow, in the order its last byte was seen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HttpEvent {
    Request(CapturedRequest),
    Response(CapturedResponse),
}

/// Parsing limits, all about keeping memory bounded whatever the wire says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest request/response head (start line + fields + blank line), and largest chunked
    /// trailer section.
    pub max_header_bytes: usize,
    /// Most header fields in one head (clamped to [`MAX_HEADERS_CAP`]).
    pub max_headers: usize,
    /// Largest request body kept, counted as sent on the wire (chunk framing included), because
    /// that is what is buffered.
    pub max_body_bytes: u64,
    /// Content bytes of each paired response kept for comparison (de-chunked, still
    /// content-encoded); 0 keeps nothing, so measuring costs no copy when comparison is off.
    pub keep_response_body: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self { max_header_bytes: 64 * 1024, max_headers: 100, max_body_bytes: 10 * 1024 * 1024, keep_response_body: 0 }
    }
}

/// httparse needs its header slots up front; they live on the stack, so their number is bounded.
pub const MAX_HEADERS_CAP: usize = 256;

/// Uninitialised header slots for httparse: no per-parse initialisation cost, no allocation.
pub(crate) fn header_slots<'b>() -> [MaybeUninit<httparse::Header<'b>>; MAX_HEADERS_CAP] {
    [const { MaybeUninit::uninit() }; MAX_HEADERS_CAP]
}

/// What is wrong with the bytes of a message. Every variant maps to one [`DropReason`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HttpError {
    #[error("parse message head: {0}")]
    Malformed(httparse::Error),
    #[error("parse request: bare LF line ending (RFC 9112 requires CRLF)")]
    BareLf,
    #[error("parse message head: larger than {limit} bytes")]
    HeadTooLarge { limit: usize },
    #[error("parse message head: more than {limit} header fields")]
    TooManyHeaders { limit: usize },
    #[error("parse Content-Length: not a decimal length")]
    BadContentLength,
    #[error("parse Content-Length: conflicting values")]
    ConflictingContentLength,
    #[error("parse Transfer-Encoding: chunked is not the single, final coding")]
    BadTransferEncoding,
    #[error("parse status line: status code outside 100-599")]
    BadStatus,
    #[error("parse Transfer-Encoding: not allowed in HTTP/1.0")]
    TransferEncodingHttp10,
    #[error("frame request body: both Transfer-Encoding and Content-Length (smuggling risk)")]
    AmbiguousFraming,
    #[error("decode chunked body: invalid chunk size line")]
    BadChunkSize,
    #[error("decode chunked body: chunk data not followed by CRLF")]
    BadChunkDelimiter,
    #[error("decode chunked body: trailer section larger than {limit} bytes")]
    TrailersTooLarge { limit: usize },
    #[error("decode chunked body: malformed trailer section end")]
    BadTrailer,
    #[error("frame body: larger than {limit} bytes")]
    BodyTooLarge { limit: u64 },
    #[error("detect protocol: HTTP/2 connection preface")]
    Http2Preface,
    #[error("detect protocol: TLS handshake record")]
    Tls,
}

impl HttpError {
    pub const fn reason(&self) -> DropReason {
        match self {
            Self::HeadTooLarge { .. } | Self::TooManyHeaders { .. } | Self::TrailersTooLarge { .. } => {
                DropReason::OversizeHeaders
            }
            Self::BodyTooLarge { .. } => DropReason::OversizeBody,
            Self::Http2Preface | Self::Tls => DropReason::UnsupportedProtocol,
            Self::Malformed(httparse::Error::TooManyHeaders) => DropReason::OversizeHeaders,
            Self::Malformed(_)
            | Self::BareLf
            | Self::BadContentLength
            | Self::ConflictingContentLength
            | Self::BadTransferEncoding
            | Self::BadStatus
            | Self::TransferEncodingHttp10
            | Self::AmbiguousFraming
            | Self::BadChunkSize
            | Self::BadChunkDelimiter
            | Self::BadTrailer => DropReason::ParseError,
        }
    }
}

/// A run of contiguous stream bytes, in order, as reassembly hands them over. The bytes are
/// borrowed (from the ring-buffer record, or from what reassembly buffered): an assembler copies
/// what it keeps.
#[derive(Clone, Copy, Debug)]
pub struct Piece<'a> {
    pub data: &'a [u8],
    /// TCP sequence number of `data[0]`.
    pub seq: u32,
    /// Acknowledgment number of the segment the bytes came in (the peer stream's position).
    pub ack: u32,
    pub ts_ns: u64,
    /// `data[0]` is the first payload byte of a captured segment: only there can a stream that
    /// lost sync pick it up again.
    pub seg_start: bool,
    /// The kernel saw a request line at the start of this segment.
    pub request_start: bool,
}

/// Per-direction message accounting. Invariant: `seen == extracted + sum(dropped) + in_progress`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MessageCounters {
    pub seen: u64,
    pub extracted: u64,
    pub in_progress: u64,
    pub dropped: [u64; DropReason::COUNT],
}

impl MessageCounters {
    pub fn dropped_total(&self) -> u64 {
        self.dropped.iter().sum()
    }
    pub fn dropped(&self, reason: DropReason) -> u64 {
        self.dropped[reason.index()]
    }
    fn start(&mut self) {
        self.seen += 1;
        self.in_progress += 1;
    }
    fn emit(&mut self) {
        self.extracted += 1;
        self.in_progress = self.in_progress.saturating_sub(1);
    }
    fn drop_started(&mut self, reason: DropReason) {
        self.dropped[reason.index()] += 1;
        self.in_progress = self.in_progress.saturating_sub(1);
    }
    /// A message we learn about only as it is dropped (e.g. a truncated request line).
    fn seen_and_dropped(&mut self, reason: DropReason) {
        self.seen += 1;
        self.dropped[reason.index()] += 1;
    }
}

/// Everything an assembler may touch besides its own state, borrowed for one call.
pub struct Cx<'a> {
    pub limits: &'a Limits,
    pub flow: FlowId,
    /// Source of `CapturedRequest::id`: unique and increasing in extraction order.
    pub next_id: &'a mut u64,
    pub out: &'a mut Vec<HttpEvent>,
    pub requests: &'a mut MessageCounters,
    pub responses: &'a mut MessageCounters,
    /// The connection's requests awaiting their response.
    pub pending: &'a mut PendingQueue,
    /// Requests emitted whose response was never seen (popped unpaired from `pending`).
    pub unanswered: &'a mut u64,
    /// Requests waiting for the primary's answer, all flows'.
    pub held: &'a mut HeldRequests,
    /// A final response no pending request owned, for the request side to judge (see
    /// [`RequestAssembler::answered_before`]); taken after every operation.
    pub unpaired: &'a mut Option<Unpaired>,
}

impl Cx<'_> {
    /// Count the held requests that left the pending queue unanswered (see
    /// [`HeldRequests`]).
    pub fn settle_held(&mut self, reason: DropReason) {
        for _ in 0..self.held.take_dropped() {
            self.requests.drop_started(reason);
        }
    }

    /// A request is complete: replay it now, or hold it for its answer.
    fn complete_request(&mut self, req: CapturedRequest) {
        if self.held.enabled() {
            self.held.hold(req);
        } else {
            self.requests.emit();
            self.out.push(HttpEvent::Request(req));
        }
    }

    /// A request the primary answered early (2xx/3xx before it had all of it) is complete: hold
    /// it until the connection proves to go on in step ([`Self::early_in_step`]), or drop it
    /// ([`Self::early_out_of_step`]). Without holding (XDP: no answers are seen) it goes out.
    fn complete_answered_early(&mut self, req: CapturedRequest) {
        if !self.held.enabled() {
            self.requests.emit();
            self.out.push(HttpEvent::Request(req));
            return;
        }
        let id = req.id;
        self.held.hold(req);
        if let Some(old) = self.held.set_early(self.flow, id) {
            // Unreachable as the assemblers call this (the answer that made this request early
            // was unpaired, which ended the older one's wait), but never two at once.
            self.drop_held(old, DropReason::Refused);
        }
    }

    /// The connection went on in step after an early-answered request (the next response
    /// paired with the next request as framed, or both sides closed cleanly): the primary
    /// served it, so it goes out, before anything of the connection released after it.
    pub fn early_in_step(&mut self) {
        let Some(id) = self.held.take_early(&self.flow) else {
            return;
        };
        if let Some(req) = self.held.take(id) {
            self.requests.emit();
            self.out.push(HttpEvent::Request(req));
        }
    }

    /// The evidence for an early-answered request will not come (an unpaired response, a gap,
    /// a parse error, a reset, ...): it is dropped for `reason`, never replayed.
    pub fn early_out_of_step(&mut self, reason: DropReason) {
        if let Some(id) = self.held.take_early(&self.flow) {
            self.drop_held(id, reason);
        }
    }

    fn drop_held(&mut self, id: u64, reason: DropReason) {
        if self.held.take(id).is_some() {
            self.requests.drop_started(reason);
        }
    }

    /// The primary answered request `id` with `status`: release it if it was held. Returns
    /// whether the response is to be paired with it (false: the request was refused).
    fn answered(&mut self, id: u64, status: u16) -> bool {
        let Some(req) = self.held.take(id) else {
            return true;
        };
        if pairing::refuses_framing(status) {
            self.requests.drop_started(DropReason::Refused);
            return false;
        }
        self.requests.emit();
        self.out.push(HttpEvent::Request(req));
        true
    }
}

/// How an assembler fared with a piece, for per-segment accounting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fed {
    /// The bytes went into message framing (whatever then became of the message).
    Used,
    /// The stream is out of sync and the piece does not start a message: skipped for this reason.
    Skipped(DropReason),
}

/// The fields of a response head (status line and fields) whose names are in `names`
/// (lower-case), in wire order, names lower-cased. A head that does not parse gives none: heads
/// reaching here were parsed once already.
pub fn response_fields(head: &[u8], names: &[String]) -> Vec<(String, Vec<u8>)> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS_CAP];
    let mut r = httparse::Response::new(&mut slots);
    if !matches!(r.parse(head), Ok(httparse::Status::Complete(_))) {
        return Vec::new();
    }
    r.headers
        .iter()
        .filter(|h| names.iter().any(|n| h.name.eq_ignore_ascii_case(n)))
        .map(|h| (h.name.to_ascii_lowercase(), h.value.to_vec()))
        .collect()
}

/// The sequence-space distance from `a` to `b` as a signed number: RFC 793 comparison.
#[inline]
pub const fn seq_diff(b: u32, a: u32) -> i32 {
    b.wrapping_sub(a) as i32
}

#[inline]
pub const fn seq_le(a: u32, b: u32) -> bool {
    seq_diff(b, a) >= 0
}

#[inline]
pub const fn seq_lt(a: u32, b: u32) -> bool {
    seq_diff(b, a) > 0
}

#[cfg(test)]
mod tests_seq;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drop_labels_are_unique_snake_case_and_indexed() {
        for (i, r) in DropReason::ALL.iter().enumerate() {
            assert_eq!(r.index(), i);
            let s = r.as_str();
            assert!(s.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'), "{s}");
            for o in &DropReason::ALL[i + 1..] {
                assert_ne!(s, o.as_str());
            }
        }
    }

    #[test]
    fn response_fields_picks_the_named_ones() {
        let head = b"HTTP/1.1 200 OK\r\nContent-Type: a/b\r\nX-Other: 1\r\ncache-control: no\r\n\r\n";
        let names = vec!["content-type".to_owned(), "cache-control".to_owned(), "etag".to_owned()];
        assert_eq!(
            response_fields(head, &names),
            vec![("content-type".to_owned(), b"a/b".to_vec()), ("cache-control".to_owned(), b"no".to_vec())]
        );
        assert!(response_fields(b"HTTP/1.1 200", &names).is_empty());
    }

    #[test]
    fn sequence_comparison_wraps() {
        assert!(seq_lt(u32::MAX - 5, 3));
        assert!(seq_le(7, 7));
        assert!(!seq_lt(3, u32::MAX - 5));
        assert_eq!(seq_diff(2, u32::MAX), 3);
    }

    #[test]
    fn every_error_has_a_reason() {
        assert_eq!(HttpError::HeadTooLarge { limit: 1 }.reason(), DropReason::OversizeHeaders);
        assert_eq!(HttpError::Malformed(httparse::Error::TooManyHeaders).reason(), DropReason::OversizeHeaders);
        assert_eq!(HttpError::Tls.reason(), DropReason::UnsupportedProtocol);
        assert_eq!(HttpError::BodyTooLarge { limit: 1 }.reason(), DropReason::OversizeBody);
        assert_eq!(HttpError::AmbiguousFraming.reason(), DropReason::ParseError);
    }
}
