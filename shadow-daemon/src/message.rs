//! What flows between the stages after reassembly: extracted HTTP messages. Pure data.
//!
//! Produced by `http` (from reassembled streams), consumed by `replay` (requests) and by the
//! primary-latency / compare side (paired responses). A [`ResponseSample`] is what is kept of
//! either side's response for comparison, as replay reads the shadow's by a [`KeepSpec`].

use std::{ops::Range, time::Duration};

use bytes::Bytes;

use crate::segment::FlowId;

/// One header field of a captured message; name and value are byte ranges into `raw`, so a
/// captured message is one allocation whatever its header count.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeaderSpan {
    pub name: Range<usize>,
    pub value: Range<usize>,
}

/// How the body of a message was delimited on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyFraming {
    None,
    ContentLength(u64),
    Chunked,
    /// Responses only: the body ran until the server closed the connection.
    UntilClose,
}

/// A whole HTTP/1.x request exactly as the client sent it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CapturedRequest {
    /// Unique within one daemon run, increasing in extraction order.
    pub id: u64,
    pub flow: FlowId,
    /// The exact original bytes: request line, headers, blank line and body (chunked stays chunked).
    pub raw: Bytes,
    /// `raw[..head_len]` is the request line and headers including the final CRLF CRLF.
    pub head_len: usize,
    pub method: Range<usize>,
    pub target: Range<usize>,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor_version: u8,
    pub headers: Vec<HeaderSpan>,
    pub framing: BodyFraming,
    /// CLOCK_MONOTONIC ns of the segment holding the first and the last byte.
    pub first_ts_ns: u64,
    pub last_ts_ns: u64,
}

impl CapturedRequest {
    pub fn method(&self) -> &[u8] {
        self.raw.get(self.method.clone()).unwrap_or_default()
    }
    pub fn target(&self) -> &[u8] {
        self.raw.get(self.target.clone()).unwrap_or_default()
    }
    pub fn body(&self) -> &[u8] {
        self.raw.get(self.head_len..).unwrap_or_default()
    }
    /// Iterate over (name, value) pairs in wire order.
    pub fn headers(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.headers.iter().map(|h| {
            (self.raw.get(h.name.clone()).unwrap_or_default(), self.raw.get(h.value.clone()).unwrap_or_default())
        })
    }
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers().find(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes())).map(|(_, v)| v)
    }
}

/// The head of a captured response and where its body ended (the body bytes themselves are not
/// kept beyond what the compare stage asks for).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CapturedResponse {
    pub flow: FlowId,
    /// The id of the request this response answers (FIFO pairing on the connection).
    pub request_id: u64,
    pub status: u16,
    pub minor_version: u8,
    /// Response head bytes (status line and headers including the final CRLF CRLF), kept as the
    /// body is: empty when nothing is kept (comparison off).
    pub head: Bytes,
    pub framing: BodyFraming,
    /// Body length after de-chunking.
    pub body_len: u64,
    /// The body's first bytes after de-chunking (still content-encoded), up to the extraction's
    /// `keep_response_body`; empty when nothing is kept (comparison off).
    pub body: Bytes,
    /// `body` is the whole body.
    pub body_complete: bool,
    /// CLOCK_MONOTONIC ns of the segments with the first and the last response byte.
    pub first_ts_ns: u64,
    pub last_ts_ns: u64,
    /// The request's timestamps, copied so latency needs no lookup.
    pub request_last_ts_ns: u64,
}

impl CapturedResponse {
    /// Primary latency: request's last byte to response's first byte.
    pub fn time_to_first_byte_ns(&self) -> u64 {
        self.first_ts_ns.saturating_sub(self.request_last_ts_ns)
    }
    /// Primary latency: request's last byte to response's last byte.
    pub fn time_to_last_byte_ns(&self) -> u64 {
        self.last_ts_ns.saturating_sub(self.request_last_ts_ns)
    }
}

/// One side's response as the comparison needs it: the primary's from capture, the shadow's as
/// replay read it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ResponseSample {
    pub status: u16,
    /// The header fields the comparison needs (others are not kept), any case.
    pub headers: Vec<(String, Vec<u8>)>,
    /// The body after transfer decoding (de-chunked), still content-encoded.
    pub body: Bytes,
    /// False when `body` is not the whole body (capture cut it, or it was over a read cap).
    pub body_complete: bool,
    /// Length of the whole body on the wire, as framed; equals `body.len()` when complete.
    pub body_len: u64,
    /// None: not measured (a shadow response read behind another of the same pipeline, whose
    /// times include the shadow's work on the ones before it).
    pub latency: Option<Duration>,
}

impl ResponseSample {
    /// The value of header field `name` (any case), if kept.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_slice())
    }
}

/// What the replay client keeps of a rule's shadow responses, for comparison.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeepSpec {
    /// Body content bytes kept (the rule's `max_body_bytes`).
    pub max_body: usize,
    /// Lower-case names of the header fields kept (`CompareSettings::headers_needed`).
    pub headers: Vec<String>,
}
