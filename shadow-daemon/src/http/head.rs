//! Request and response heads: httparse for the syntax, RFC 9112 §6 for the framing.

use std::ops::Range;

use super::{HttpError, Limits, MAX_HEADERS_CAP, header_slots};
use crate::message::{BodyFraming, HeaderSpan};

/// What the response side must know about a request to frame its answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestKind {
    Normal,
    /// HEAD: the response has no body whatever its Content-Length says.
    Head,
    /// CONNECT: a 2xx answer turns the connection into a tunnel.
    Connect,
    /// Carries `Upgrade` + `Connection: upgrade`: a 101 answer switches protocols.
    Upgrade,
}

/// A parsed request head; ranges index the buffer that was parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestHead {
    pub head_len: usize,
    pub method: Range<usize>,
    pub target: Range<usize>,
    pub minor_version: u8,
    pub headers: Vec<HeaderSpan>,
    pub framing: BodyFraming,
    pub kind: RequestKind,
    /// Both Transfer-Encoding and Content-Length: framed by the chunked coding (as the RFC says
    /// a server must) so that the stream stays in sync, but never replayed.
    pub ambiguous: bool,
    /// The connection may carry another request after this one (RFC 9112 §9.3): not after
    /// `Connection: close`, nor after HTTP/1.0 without keep-alive.
    pub persistent: bool,
}

/// A parsed response head. `framing` ignores the request method: [`ResponseHead::framing_for`]
/// applies it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResponseHead {
    pub head_len: usize,
    pub status: u16,
    pub minor_version: u8,
    pub framing: BodyFraming,
    /// The server means to keep the connection open: its version and `Connection` header say so
    /// and the framing is not ambiguous (Transfer-Encoding with Content-Length is followed as
    /// chunked, but the connection is not trusted after it).
    pub keep_alive: bool,
}

impl ResponseHead {
    /// A 1xx other than 101: the final response follows on the same connection.
    pub const fn is_interim(&self) -> bool {
        self.status >= 100 && self.status < 200 && self.status != 101
    }

    /// The body framing of this response to a request of `kind` (RFC 9112 §6.3: the answer to
    /// HEAD, and a 2xx to CONNECT, have no body whatever their fields say).
    pub fn framing_for(&self, kind: RequestKind) -> BodyFraming {
        match kind {
            RequestKind::Head => BodyFraming::None,
            RequestKind::Connect if (200..300).contains(&self.status) => BodyFraming::None,
            _ => self.framing,
        }
    }

    /// May the connection carry another request after this response to a request of `kind`? Not
    /// after a body that runs to the close, a protocol switch or a tunnel.
    pub fn reusable_after(&self, kind: RequestKind) -> bool {
        self.keep_alive
            && self.framing_for(kind) != BodyFraming::UntilClose
            && self.status != 101
            && kind != RequestKind::Connect
    }
}

impl RequestKind {
    /// What the method alone says (an upgrade also needs the request's fields).
    pub fn of_method(method: &[u8]) -> Self {
        match method {
            b"HEAD" => Self::Head,
            b"CONNECT" => Self::Connect,
            _ => Self::Normal,
        }
    }
}

/// RFC 9112 §9.3: an HTTP/1.1 connection persists unless `Connection: close`; an HTTP/1.0 one
/// only with `Connection: keep-alive` (and no `close`).
pub const fn persistent(minor_version: u8, close: bool, keep_alive: bool) -> bool {
    if minor_version == 0 { keep_alive && !close } else { !close }
}

/// [`persistent`] for a message given as (name, value) header pairs.
pub fn keeps_alive<'a>(minor_version: u8, headers: impl IntoIterator<Item = (&'a [u8], &'a [u8])>) -> bool {
    let mut tokens = ConnectionTokens::default();
    for (name, value) in headers {
        if name.eq_ignore_ascii_case(b"connection") {
            tokens.observe(value);
        }
    }
    persistent(minor_version, tokens.close, tokens.keep_alive)
}

/// The `Connection` options that matter to framing, across all its field lines.
#[derive(Clone, Copy, Debug, Default)]
struct ConnectionTokens {
    close: bool,
    keep_alive: bool,
    upgrade: bool,
}

impl ConnectionTokens {
    fn observe(&mut self, value: &[u8]) {
        for t in value.split(|&b| b == b',').map(trim_ows) {
            self.close |= t.eq_ignore_ascii_case(b"close");
            self.keep_alive |= t.eq_ignore_ascii_case(b"keep-alive");
            self.upgrade |= t.eq_ignore_ascii_case(b"upgrade");
        }
    }
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What the first bytes at a message boundary say about the protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Preface {
    /// Not HTTP/2 prior knowledge nor TLS.
    Other,
    /// A prefix of the HTTP/2 preface: too short to tell it from a request with a `PRI` method.
    NeedMore,
    /// A protocol we do not extract.
    Unsupported(HttpError),
}

/// Recognise, at a message boundary, a protocol we do not extract: HTTP/2 prior knowledge or a
/// TLS handshake.
pub fn unsupported_preface(buf: &[u8]) -> Preface {
    if let [0x16, 0x03, ..] = buf {
        return Preface::Unsupported(HttpError::Tls);
    }
    // The request line alone decides: "PRI * HTTP/2.0" is never an HTTP/1.x request.
    let line = &H2_PREFACE[..14];
    let n = buf.len().min(line.len());
    if n > 0 && buf.get(..n) == line.get(..n) {
        return if n == line.len() { Preface::Unsupported(HttpError::Http2Preface) } else { Preface::NeedMore };
    }
    Preface::Other
}

/// Find the end of a head (just past the blank line) at or after `from`. Bare LF line endings
/// count, as httparse accepts them.
pub fn find_head_end(buf: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    while let Some(rest) = buf.get(i..) {
        let nl = i + rest.iter().position(|&b| b == b'\n')?;
        match buf.get(nl + 1..nl + 3) {
            Some([b'\n', _]) => return Some(nl + 2),
            Some([b'\r', b'\n']) => return Some(nl + 3),
            None if buf.get(nl + 1) == Some(&b'\n') => return Some(nl + 2),
            _ => i = nl + 1,
        }
    }
    None
}

/// Does `buf` begin like a status line?
pub fn looks_like_response_line(buf: &[u8]) -> bool {
    buf.len() >= 12 && buf.starts_with(b"HTTP/1.") && matches!(buf[7], b'0' | b'1') && buf[8] == b' '
}

fn span(base: &[u8], part: &[u8]) -> Range<usize> {
    // Both slices come from the same buffer (httparse only slices its input).
    let start = (part.as_ptr() as usize).wrapping_sub(base.as_ptr() as usize);
    start..start + part.len()
}

fn max_slots(limits: &Limits) -> usize {
    limits.max_headers.clamp(1, MAX_HEADERS_CAP)
}

fn map_httparse(e: httparse::Error, limits: &Limits) -> HttpError {
    match e {
        httparse::Error::TooManyHeaders => HttpError::TooManyHeaders { limit: max_slots(limits) },
        other => HttpError::Malformed(other),
    }
}

/// Parse a request head at the start of `buf`. `Ok(None)`: incomplete, more bytes needed.
/// The caller strips empty lines before a request, so ranges start at the method.
pub fn parse_request_head(buf: &[u8], limits: &Limits) -> Result<Option<RequestHead>, HttpError> {
    parse_request::<true>(buf, limits)
}

/// [`parse_request_head`] without the framing verdict: a head whose framing extraction refuses
/// (a bad Content-Length, a Transfer-Encoding it must not guess) comes back with `framing`
/// `None` instead of an error. For the test builder of captured requests, whose spans must be
/// extraction's own even for the heads the replay editor's property test makes up.
#[cfg(any(test, feature = "test-util"))]
pub(crate) fn parse_request_spans(buf: &[u8], limits: &Limits) -> Result<Option<RequestHead>, HttpError> {
    parse_request::<false>(buf, limits)
}

/// `FRAMING`: a head with bad framing is an error (extraction); without it, a bodiless head.
fn parse_request<const FRAMING: bool>(buf: &[u8], limits: &Limits) -> Result<Option<RequestHead>, HttpError> {
    let mut slots = header_slots();
    let n = max_slots(limits);
    let mut req = httparse::Request::new(&mut []);
    let status = httparse::ParserConfig::default()
        .parse_request_with_uninit_headers(&mut req, buf, &mut slots[..n])
        .map_err(|e| map_httparse(e, limits))?;
    let head_len = match status {
        httparse::Status::Complete(len) => len,
        httparse::Status::Partial => {
            if FRAMING && has_bare_lf(buf) {
                return Err(HttpError::BareLf);
            }
            if buf.len() > limits.max_header_bytes {
                return Err(HttpError::HeadTooLarge { limit: limits.max_header_bytes });
            }
            return Ok(None);
        }
    };
    if head_len > limits.max_header_bytes {
        return Err(HttpError::HeadTooLarge { limit: limits.max_header_bytes });
    }
    // httparse takes a bare LF for a line end; RFC 9112 §2.2 lets a server do so, and servers
    // differ. A line end the primary may read differently from us is a place where one request
    // can hide another, so extraction refuses it.
    if FRAMING && has_bare_lf(&buf[..head_len]) {
        return Err(HttpError::BareLf);
    }
    let (Some(method), Some(target), Some(minor_version)) = (req.method, req.path, req.version) else {
        return Err(HttpError::Malformed(httparse::Error::Token));
    };
    let mut fields = FramingFields::default();
    let mut headers = Vec::with_capacity(req.headers.len());
    let mut unframed = false;
    for h in req.headers.iter() {
        headers.push(HeaderSpan { name: span(buf, h.name.as_bytes()), value: span(buf, h.value) });
        if let Err(e) = fields.observe(h.name.as_bytes(), h.value) {
            if FRAMING {
                return Err(e);
            }
            unframed = true;
        }
    }
    let kind = match method {
        "HEAD" => RequestKind::Head,
        "CONNECT" => RequestKind::Connect,
        _ if fields.upgrade && fields.connection.upgrade => RequestKind::Upgrade,
        _ => RequestKind::Normal,
    };
    let mut ambiguous = false;
    // RFC 9112 §6.3: a request body is framed by Transfer-Encoding (which must end in chunked),
    // else by Content-Length, else there is none.
    let framing = if unframed {
        BodyFraming::None
    } else if fields.te_present {
        let refused = if minor_version == 0 {
            Some(HttpError::TransferEncodingHttp10)
        } else if !fields.te_last_chunked || fields.te_chunked_count != 1 {
            Some(HttpError::BadTransferEncoding)
        } else {
            None
        };
        match refused {
            Some(e) if FRAMING => return Err(e),
            Some(_) => BodyFraming::None,
            None => {
                ambiguous = fields.content_length.is_some();
                BodyFraming::Chunked
            }
        }
    } else {
        match fields.content_length {
            Some(0) | None => BodyFraming::None,
            Some(n) => BodyFraming::ContentLength(n),
        }
    };
    Ok(Some(RequestHead {
        head_len,
        method: span(buf, method.as_bytes()),
        target: span(buf, target.as_bytes()),
        minor_version,
        headers,
        framing,
        kind,
        ambiguous,
        persistent: persistent(minor_version, fields.connection.close, fields.connection.keep_alive),
    }))
}

/// A LF not preceded by CR. Heads are scanned whole on every request, so by memchr.
fn has_bare_lf(buf: &[u8]) -> bool {
    memchr::memchr_iter(b'\n', buf).any(|i| i == 0 || buf.get(i - 1) != Some(&b'\r'))
}

/// Parse a response head at the start of `buf`. `Ok(None)`: incomplete. The one response
/// framing of the daemon: extraction (the primary's responses) and the replay client (the
/// shadow's) both read responses through it.
pub fn parse_response_head(buf: &[u8], limits: &Limits) -> Result<Option<ResponseHead>, HttpError> {
    let mut slots = header_slots();
    let n = max_slots(limits);
    let mut resp = httparse::Response::new(&mut []);
    // httparse's strict defaults: a byte stream the replay client would refuse is not one that
    // extraction should guess about either.
    let status = httparse::ParserConfig::default()
        .parse_response_with_uninit_headers(&mut resp, buf, &mut slots[..n])
        .map_err(|e| map_httparse(e, limits))?;
    let head_len = match status {
        httparse::Status::Complete(len) => len,
        httparse::Status::Partial => {
            if buf.len() > limits.max_header_bytes {
                return Err(HttpError::HeadTooLarge { limit: limits.max_header_bytes });
            }
            return Ok(None);
        }
    };
    if head_len > limits.max_header_bytes {
        return Err(HttpError::HeadTooLarge { limit: limits.max_header_bytes });
    }
    let (Some(status), Some(minor_version)) = (resp.code, resp.version) else {
        return Err(HttpError::Malformed(httparse::Error::Status));
    };
    if !(100..=599).contains(&status) {
        return Err(HttpError::BadStatus);
    }
    let mut fields = FramingFields::default();
    for h in resp.headers.iter() {
        fields.observe(h.name.as_bytes(), h.value)?;
    }
    // RFC 9112 §6.3 for responses: status codes without a body first, then Transfer-Encoding
    // (chunked last, else until close), then Content-Length, else until close. A chunked coding
    // anywhere but once at the end is refused: there is no reading of it both ends agree on.
    let chunked_ok = fields.te_last_chunked && fields.te_chunked_count == 1;
    if fields.te_present && fields.te_chunked_count > 0 && !chunked_ok {
        return Err(HttpError::BadTransferEncoding);
    }
    let framing = if (100..200).contains(&status) || status == 204 || status == 304 {
        BodyFraming::None
    } else if fields.te_present {
        if chunked_ok { BodyFraming::Chunked } else { BodyFraming::UntilClose }
    } else {
        match fields.content_length {
            Some(0) => BodyFraming::None,
            Some(n) => BodyFraming::ContentLength(n),
            None => BodyFraming::UntilClose,
        }
    };
    let ambiguous = fields.te_present && fields.content_length.is_some();
    let keep_alive = persistent(minor_version, fields.connection.close, fields.connection.keep_alive) && !ambiguous;
    Ok(Some(ResponseHead { head_len, status, minor_version, framing, keep_alive }))
}

/// The header fields that decide framing, gathered in one pass.
#[derive(Default)]
struct FramingFields {
    content_length: Option<u64>,
    te_present: bool,
    te_last_chunked: bool,
    te_chunked_count: u32,
    upgrade: bool,
    connection: ConnectionTokens,
}

fn trim_ows(v: &[u8]) -> &[u8] {
    let start = v.iter().position(|b| !matches!(b, b' ' | b'\t')).unwrap_or(v.len());
    let end = v.iter().rposition(|b| !matches!(b, b' ' | b'\t')).map_or(start, |e| e + 1);
    v.get(start..end).unwrap_or_default()
}

impl FramingFields {
    fn observe(&mut self, name: &[u8], value: &[u8]) -> Result<(), HttpError> {
        if name.eq_ignore_ascii_case(b"content-length") {
            // RFC 9110 §8.6: a list of identical values may be treated as one; anything else is
            // unrecoverable framing.
            for item in value.split(|&b| b == b',') {
                let n = parse_decimal(trim_ows(item)).ok_or(HttpError::BadContentLength)?;
                match self.content_length {
                    Some(prev) if prev != n => return Err(HttpError::ConflictingContentLength),
                    _ => self.content_length = Some(n),
                }
            }
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            for coding in value.split(|&b| b == b',') {
                let coding = trim_ows(coding);
                if coding.is_empty() {
                    continue;
                }
                self.te_present = true;
                // Parameters (";q=...") never apply to chunked, so compare the whole item.
                let chunked = coding.eq_ignore_ascii_case(b"chunked");
                self.te_last_chunked = chunked;
                self.te_chunked_count += u32::from(chunked);
            }
        } else if name.eq_ignore_ascii_case(b"upgrade") {
            self.upgrade = !trim_ows(value).is_empty();
        } else if name.eq_ignore_ascii_case(b"connection") {
            self.connection.observe(value);
        }
        Ok(())
    }
}

/// Most digits of a Content-Length: those of u64::MAX. Longer runs (leading zeros) are refused,
/// as the replay client's reader always did; what overflows is refused by the arithmetic.
const MAX_LENGTH_DIGITS: usize = 20;

/// `1*DIGIT` as a u64, refusing signs, spaces, overflow and more than 20 digits.
fn parse_decimal(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > MAX_LENGTH_DIGITS {
        return None;
    }
    v.iter().try_fold(0u64, |acc, &b| {
        if b.is_ascii_digit() { acc.checked_mul(10)?.checked_add(u64::from(b - b'0')) } else { None }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lim() -> Limits {
        Limits::default()
    }

    fn req(s: &str) -> Result<Option<RequestHead>, HttpError> {
        parse_request_head(s.as_bytes(), &lim())
    }

    #[test]
    fn request_framing_table() {
        use BodyFraming::*;
        let cases: &[(&str, Result<BodyFraming, HttpError>)] = &[
            ("GET / HTTP/1.1\r\nHost: a\r\n\r\n", Ok(None)),
            ("POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\n", Ok(ContentLength(5))),
            ("POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n", Ok(None)),
            ("POST / HTTP/1.1\r\nContent-Length: 5, 5\r\n\r\n", Ok(ContentLength(5))),
            ("POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n", Ok(ContentLength(5))),
            (
                "POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
                Err(HttpError::ConflictingContentLength),
            ),
            ("POST / HTTP/1.1\r\nContent-Length: +5\r\n\r\n", Err(HttpError::BadContentLength)),
            ("POST / HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n", Err(HttpError::BadContentLength)),
            ("POST / HTTP/1.1\r\nContent-Length: \r\n\r\n", Err(HttpError::BadContentLength)),
            ("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", Ok(Chunked)),
            ("POST / HTTP/1.1\r\nTransfer-Encoding: gzip, Chunked\r\n\r\n", Ok(Chunked)),
            ("POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n", Ok(Chunked)),
            ("POST / HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", Err(HttpError::BadTransferEncoding)),
            ("POST / HTTP/1.1\r\nTransfer-Encoding: chunked, chunked\r\n\r\n", Err(HttpError::BadTransferEncoding)),
            ("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", Err(HttpError::TransferEncodingHttp10)),
            ("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n", Ok(Chunked)),
        ];
        for (input, want) in cases {
            let got = req(input).map(|h| h.expect("complete").framing);
            assert_eq!(&got, want, "{input:?}");
        }
        assert!(
            req("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n")
                .unwrap()
                .unwrap()
                .ambiguous
        );
    }

    #[test]
    fn request_view_ranges_index_the_buffer() {
        let s = "PATCH /a?b=c HTTP/1.0\r\nX-One:  v1 \r\nx-two:v2\r\n\r\nbody";
        let h = req(s).unwrap().unwrap();
        assert_eq!(&s[h.method.clone()], "PATCH");
        assert_eq!(&s[h.target.clone()], "/a?b=c");
        assert_eq!(h.minor_version, 0);
        assert_eq!(h.head_len, s.len() - 4);
        let hs: Vec<_> = h.headers.iter().map(|x| (&s[x.name.clone()], &s[x.value.clone()])).collect();
        assert_eq!(hs, [("X-One", "v1"), ("x-two", "v2")]);
    }

    #[test]
    fn request_kinds() {
        let k = |s: &str| req(s).unwrap().unwrap().kind;
        assert_eq!(k("HEAD / HTTP/1.1\r\n\r\n"), RequestKind::Head);
        assert_eq!(k("CONNECT a:443 HTTP/1.1\r\n\r\n"), RequestKind::Connect);
        assert_eq!(
            k("GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\n\r\n"),
            RequestKind::Upgrade
        );
        // Upgrade without the Connection token is ignored by servers, so it is a plain request.
        assert_eq!(k("GET /ws HTTP/1.1\r\nUpgrade: websocket\r\n\r\n"), RequestKind::Normal);
    }

    #[test]
    fn limits_on_head_size_and_header_count() {
        let l = Limits { max_header_bytes: 64, max_headers: 2, max_body_bytes: 10, keep_response_body: 0 };
        let long = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(100));
        assert_eq!(parse_request_head(long.as_bytes(), &l), Err(HttpError::HeadTooLarge { limit: 64 }));
        let partial = format!("GET /{}", "a".repeat(100));
        assert_eq!(parse_request_head(partial.as_bytes(), &l), Err(HttpError::HeadTooLarge { limit: 64 }));
        let many = "GET / HTTP/1.1\r\na: 1\r\nb: 2\r\nc: 3\r\n\r\n";
        assert_eq!(parse_request_head(many.as_bytes(), &l), Err(HttpError::TooManyHeaders { limit: 2 }));
        assert_eq!(parse_request_head(b"GET / HTTP/1.1\r\na: 1\r\n", &l), Ok(None));
    }

    #[test]
    fn malformed_requests_are_errors() {
        for s in [
            "GET  / HTTP/1.1\r\n\r\n",
            "GET / HTTP/1.2\r\n\r\n",
            "G(T / HTTP/1.1\r\n\r\n",
            "GET / HTTP/1.1\r\nBad Name: x\r\n\r\n",
        ] {
            assert!(matches!(req(s), Err(HttpError::Malformed(_))), "{s:?}");
        }
    }

    #[test]
    fn response_framing_table() {
        use BodyFraming::*;
        let cases: &[(&str, u16, BodyFraming)] = &[
            ("HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\n", 200, ContentLength(12)),
            ("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 12\r\n\r\n", 200, Chunked),
            ("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", 200, UntilClose),
            ("HTTP/1.0 200 OK\r\n\r\n", 200, UntilClose),
            ("HTTP/1.1 204 No Content\r\nContent-Length: 12\r\n\r\n", 204, None),
            ("HTTP/1.1 304 Not Modified\r\nContent-Length: 12\r\n\r\n", 304, None),
            ("HTTP/1.1 100 Continue\r\n\r\n", 100, None),
            ("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 200, None),
            ("HTTP/1.1 404\r\nContent-Length: 3\r\n\r\n", 404, ContentLength(3)),
        ];
        for (s, status, framing) in cases {
            let h = parse_response_head(s.as_bytes(), &lim()).unwrap().unwrap();
            assert_eq!((h.status, h.framing, h.head_len), (*status, *framing, s.len()), "{s:?}");
        }
    }

    fn resp(s: &str) -> Result<Option<ResponseHead>, HttpError> {
        parse_response_head(s.as_bytes(), &lim())
    }

    #[test]
    fn response_keep_alive_and_reuse() {
        let h = |s: &str| resp(s).unwrap().unwrap();
        assert!(!h("HTTP/1.1 200 OK\r\nConnection: Close\r\nContent-Length: 0\r\n\r\n").keep_alive);
        assert!(!h("HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n").keep_alive);
        assert!(h("HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n").keep_alive);
        assert!(h("HTTP/1.1 200 OK\r\nConnection: upgrade, x\r\nContent-Length: 0\r\n\r\n").keep_alive);
        let te_cl = h("HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert_eq!((te_cl.framing, te_cl.keep_alive), (BodyFraming::Chunked, false));
        let bare = h("HTTP/1.1 200 OK\r\n\r\n");
        assert!(bare.keep_alive && !bare.reusable_after(RequestKind::Normal), "until close");
        assert!(bare.reusable_after(RequestKind::Head), "no body after HEAD");
        assert_eq!(bare.framing_for(RequestKind::Head), BodyFraming::None);
        let up = h("HTTP/1.1 101 Switching Protocols\r\n\r\n");
        assert!(!up.is_interim() && !up.reusable_after(RequestKind::Upgrade));
        assert!(h("HTTP/1.1 103 Early Hints\r\n\r\n").is_interim());
        let tunnel = h("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n");
        assert_eq!(tunnel.framing_for(RequestKind::Connect), BodyFraming::None);
        assert!(!tunnel.reusable_after(RequestKind::Connect));
        assert!(keeps_alive(1, [(&b"Host"[..], &b"a"[..])]));
        assert!(!keeps_alive(1, [(&b"connection"[..], &b"x, CLOSE"[..])]));
        assert!(!keeps_alive(0, []));
        assert!(keeps_alive(0, [(&b"Connection"[..], &b"Keep-Alive"[..])]));
    }

    #[test]
    fn bad_response_heads() {
        assert_eq!(resp("HTTP/1.1 700 Odd\r\n\r\n"), Err(HttpError::BadStatus));
        assert_eq!(resp("HTTP/1.1 099 Low\r\n\r\n"), Err(HttpError::BadStatus));
        for te in ["chunked, chunked", "chunked, gzip", "chunked\r\nTransfer-Encoding: chunked"] {
            let s = format!("HTTP/1.1 200 OK\r\nTransfer-Encoding: {te}\r\n\r\n");
            assert_eq!(resp(&s), Err(HttpError::BadTransferEncoding), "{te}");
        }
        assert_eq!(
            resp("HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"),
            Err(HttpError::ConflictingContentLength)
        );
        assert_eq!(
            resp("HTTP/1.1 200 OK\r\nContent-Length: 000000000000000000001\r\n\r\n"),
            Err(HttpError::BadContentLength)
        );
        assert_eq!(
            resp("HTTP/1.1 200 OK\r\nContent-Length: 00000000000000000001\r\n\r\n").map(|h| h.unwrap().framing),
            Ok(BodyFraming::ContentLength(1))
        );
        assert!(matches!(resp("HTTP/1.1  200 OK\r\n\r\n"), Err(HttpError::Malformed(_))), "strict status line");
        let many: String = (0..200).map(|i| format!("X-{i}: v\r\n")).collect();
        assert_eq!(resp(&format!("HTTP/1.1 200 OK\r\n{many}\r\n")), Err(HttpError::TooManyHeaders { limit: 100 }));
        let huge = format!("HTTP/1.1 200 OK\r\nX: {}", "a".repeat(64 * 1024 + 1));
        assert_eq!(resp(&huge), Err(HttpError::HeadTooLarge { limit: 64 * 1024 }));
        assert_eq!(resp("HTTP/1.1 200 OK\r\nContent-Le"), Ok(None));
    }

    #[test]
    fn preface_detection() {
        assert_eq!(unsupported_preface(b"\x16\x03\x01\x02\x00"), Preface::Unsupported(HttpError::Tls));
        assert_eq!(
            unsupported_preface(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
            Preface::Unsupported(HttpError::Http2Preface)
        );
        assert_eq!(unsupported_preface(b"PRI * HT"), Preface::NeedMore);
        assert_eq!(unsupported_preface(b"PRI /x HTTP/1.1\r\n"), Preface::Other);
        assert_eq!(unsupported_preface(b"GET / HTTP/1.1\r\n"), Preface::Other);
        assert_eq!(unsupported_preface(b""), Preface::Other);
    }

    #[test]
    fn bare_lf_anywhere_in_a_request_head_is_refused() {
        assert!(!has_bare_lf(b"GET / HTTP/1.1\r\nA: b\r\n\r\n"));
        assert!(has_bare_lf(b"\n"));
        assert!(has_bare_lf(b"GET / HTTP/1.1\nA: b\r\n\r\n"));
        assert!(has_bare_lf(b"GET / HTTP/1.1\r\nA: b\n\r\n"));
        assert!(has_bare_lf(b"GET / HTTP/1.1\r\nA: b\r\n\n"));
        assert_eq!(req("GET / HTTP/1.1\r\nDummy: x\nContent-Length: 3\r\n\r\n"), Err(HttpError::BareLf));
        assert_eq!(req("GET / HTTP/1.1\r\nDummy: x\n"), Err(HttpError::BareLf), "refused before the head ends");
        assert!(matches!(req("GET / HTTP/1.1\r\nDummy: x\r\n"), Ok(None)));
    }

    #[test]
    fn head_end_finder() {
        assert_eq!(find_head_end(b"GET / HTTP/1.1\r\n\r\nxx", 0), Some(18));
        assert_eq!(find_head_end(b"GET / HTTP/1.1\n\nxx", 0), Some(16));
        assert_eq!(find_head_end(b"GET / HTTP/1.1\r\nA: b\r\n", 0), None);
        assert_eq!(find_head_end(b"GET / HTTP/1.1\r\nA: b\r\n\r", 0), None);
        assert_eq!(find_head_end(b"a\n\n", 0), Some(3));
        assert_eq!(find_head_end(b"a\n", 0), None);
    }

    #[test]
    fn message_start_heuristics() {
        assert!(looks_like_response_line(b"HTTP/1.1 200 OK\r\n"));
        assert!(looks_like_response_line(b"HTTP/1.0 200 OK\r\n"));
        assert!(!looks_like_response_line(b"HTTP/2 200\r\n\r\n"));
        // Each condition alone refuses: a minor version other than 0 or 1, no space after it,
        // too short.
        assert!(!looks_like_response_line(b"HTTP/1.2 200 OK\r\n"));
        assert!(!looks_like_response_line(b"HTTP/1.1/200 OK\r\n"));
        assert!(!looks_like_response_line(b"HTTP/1.1 20"));
        assert!(looks_like_response_line(b"HTTP/1.1 200"));
    }

    #[test]
    fn head_size_limit_is_inclusive() {
        // A head of exactly `max_header_bytes` is accepted, one byte more is refused: whole or
        // still partial, request or response.
        let l = |max| Limits { max_header_bytes: max, max_headers: 8, max_body_bytes: 10, keep_response_body: 0 };
        let request = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
        let n = request.len();
        assert_eq!(parse_request_head(request, &l(n)).map(|h| h.map(|h| h.head_len)), Ok(Some(n)));
        assert_eq!(parse_request_head(request, &l(n - 1)), Err(HttpError::HeadTooLarge { limit: n - 1 }));
        let partial = &request[..n - 2];
        assert_eq!(parse_request_head(partial, &l(n - 2)), Ok(None));
        assert_eq!(parse_request_head(partial, &l(n - 3)), Err(HttpError::HeadTooLarge { limit: n - 3 }));
        let response = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nab";
        let n = response.len() - 2;
        assert_eq!(parse_response_head(response, &l(n)).map(|h| h.map(|h| h.head_len)), Ok(Some(n)));
        assert_eq!(parse_response_head(response, &l(n - 1)), Err(HttpError::HeadTooLarge { limit: n - 1 }));
        assert_eq!(parse_response_head(response, &l(n - 5)), Err(HttpError::HeadTooLarge { limit: n - 5 }));
        let partial = &response[..n - 2];
        assert_eq!(parse_response_head(partial, &l(n - 2)), Ok(None));
        assert_eq!(parse_response_head(partial, &l(n - 3)), Err(HttpError::HeadTooLarge { limit: n - 3 }));
    }

    #[test]
    fn spans_without_the_framing_verdict() {
        // The test builder's parse: a refused Transfer-Encoding or Content-Length leaves the head
        // bodiless instead of failing it; extraction's parse refuses the same heads.
        for (s, refused) in [
            ("POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n", HttpError::BadTransferEncoding),
            ("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", HttpError::TransferEncodingHttp10),
            ("POST / HTTP/1.1\r\nContent-Length: x\r\n\r\n", HttpError::BadContentLength),
        ] {
            let h = parse_request_spans(s.as_bytes(), &lim()).unwrap().unwrap();
            assert_eq!((h.framing, h.ambiguous, h.head_len), (BodyFraming::None, false, s.len()), "{s:?}");
            assert_eq!(req(s), Err(refused), "{s:?}");
        }
    }

    #[test]
    fn connect_framing_depends_on_the_status() {
        // Only a 2xx to CONNECT opens a tunnel; a refusal is framed by its fields.
        let h = |s: &str| resp(s).unwrap().unwrap();
        let refused = h("HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 5\r\n\r\n");
        assert_eq!(refused.framing_for(RequestKind::Connect), BodyFraming::ContentLength(5));
        assert_eq!(refused.framing_for(RequestKind::Normal), BodyFraming::ContentLength(5));
        let redirect = h("HTTP/1.1 300 Multiple Choices\r\nContent-Length: 7\r\n\r\n");
        assert_eq!(redirect.framing_for(RequestKind::Connect), BodyFraming::ContentLength(7));
        let ok = h("HTTP/1.1 299 Odd\r\nContent-Length: 7\r\n\r\n");
        assert_eq!(ok.framing_for(RequestKind::Connect), BodyFraming::None);
    }

    #[test]
    fn request_kind_of_the_method_alone() {
        assert_eq!(RequestKind::of_method(b"HEAD"), RequestKind::Head);
        assert_eq!(RequestKind::of_method(b"CONNECT"), RequestKind::Connect);
        assert_eq!(RequestKind::of_method(b"GET"), RequestKind::Normal);
        assert_eq!(RequestKind::of_method(b"connect"), RequestKind::Normal, "methods are case-sensitive");
    }
}
