//! One builder for captured requests, for unit tests, integration tests and benches (feature
//! `test-util`): whole request bytes in, the [`CapturedRequest`] extraction would emit out, its
//! head parsed by extraction's own parser so that spans and framing are extraction's.

use std::net::SocketAddr;

use bytes::Bytes;

use super::{Limits, head::parse_request_spans};
use crate::{
    message::{BodyFraming, CapturedRequest},
    segment::FlowId,
};

/// See [`CapturedRequest::builder`].
#[derive(Clone, Debug)]
pub struct CapturedRequestBuilder {
    raw: Bytes,
    id: u64,
    flow: FlowId,
    first_ts_ns: u64,
    last_ts_ns: u64,
}

impl CapturedRequest {
    /// A captured request from its wire bytes (request line, headers, blank line, body as sent):
    /// id 1, client 127.0.0.1:50000, service 127.0.0.1:8080, first and last byte at 1 µs and 2 µs.
    pub fn builder(raw: &[u8]) -> CapturedRequestBuilder {
        CapturedRequestBuilder {
            raw: Bytes::copy_from_slice(raw),
            id: 1,
            flow: FlowId {
                client: SocketAddr::from(([127, 0, 0, 1], 50_000)),
                server: SocketAddr::from(([127, 0, 0, 1], 8080)),
            },
            first_ts_ns: 1_000,
            last_ts_ns: 2_000,
        }
    }
}

impl CapturedRequestBuilder {
    pub fn id(mut self, id: u64) -> Self {
        self.id = id;
        self
    }

    /// The service port the request was captured on (what picks the rule).
    pub fn server_port(mut self, port: u16) -> Self {
        self.flow.server.set_port(port);
        self
    }

    pub fn flow(mut self, flow: FlowId) -> Self {
        self.flow = flow;
        self
    }

    /// Panics unless the bytes start with a whole request head: a test's input is wrong. A head
    /// whose framing extraction would refuse (a bad Content-Length...) is still built, with no
    /// body framing: the replay editor's tests feed such heads on purpose.
    pub fn build(self) -> CapturedRequest {
        let head = parse_request_spans(&self.raw, &Limits::default())
            .expect("test request head parses")
            .expect("test request head is complete");
        let framing = match head.framing {
            BodyFraming::UntilClose => BodyFraming::None,
            f => f,
        };
        CapturedRequest {
            id: self.id,
            flow: self.flow,
            head_len: head.head_len,
            method: head.method,
            target: head.target,
            minor_version: head.minor_version,
            headers: head.headers,
            framing,
            first_ts_ns: self.first_ts_ns,
            last_ts_ns: self.last_ts_ns,
            raw: self.raw,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_index_the_bytes_even_for_empty_values() {
        let r = CapturedRequest::builder(b"POST /a?b HTTP/1.0\r\nX-Empty:\r\nHost: h\r\nContent-Length: 2\r\n\r\nhi")
            .id(7)
            .server_port(9000)
            .build();
        assert_eq!((r.id, r.flow.server.port(), r.minor_version), (7, 9000, 0));
        assert_eq!((r.method(), r.target(), r.body()), (&b"POST"[..], &b"/a?b"[..], &b"hi"[..]));
        assert_eq!(r.framing, BodyFraming::ContentLength(2));
        let hs: Vec<_> = r.headers().collect();
        assert_eq!(hs, [(&b"X-Empty"[..], &b""[..]), (b"Host", b"h"), (b"Content-Length", b"2")]);
        for h in &r.headers {
            assert!(h.value.start >= h.name.end && h.value.end <= r.head_len, "{h:?}");
        }
    }
}
