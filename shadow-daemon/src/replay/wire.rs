//! Reading the shadow's response by its framing, only to know where it ends (so the connection
//! can carry the next request) and when. Pure: bytes in, decisions out; the body is discarded.

use std::mem::MaybeUninit;

/// Response heads larger than this are refused: no legitimate shadow needs more, and the read
/// buffer must stay bounded whatever the shadow sends.
pub(crate) const MAX_RESPONSE_HEAD: usize = 64 * 1024;
const MAX_RESPONSE_HEADERS: usize = 128;
/// Chunk-size line including extensions.
const MAX_CHUNK_LINE: usize = 4096;
const MAX_TRAILERS: usize = 64 * 1024;

/// Why a response is not HTTP/1.x we can follow; becomes the `bad_response` error's detail.
pub(crate) type BadResponse = &'static str;

/// How the body of a response is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BodyKind {
    None,
    Length(u64),
    Chunked,
    UntilClose,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ResponseHead {
    pub status: u16,
    /// Bytes of the head including the blank line.
    pub len: usize,
    pub body: BodyKind,
    /// The shadow allows another request on this connection after this response.
    pub keep_alive: bool,
}

impl ResponseHead {
    /// A 1xx other than 101: the final response follows on the same connection.
    pub fn is_interim(&self) -> bool {
        (100..200).contains(&self.status) && self.status != 101
    }
}

/// Parse a response head at the start of `buf`. `Ok(None)`: not complete yet.
pub(crate) fn parse_head(buf: &[u8], request_method: &[u8]) -> Result<Option<ResponseHead>, BadResponse> {
    // Uninitialized: zeroing 128 headers (4 KiB) cost more than parsing a typical head.
    let mut headers = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_RESPONSE_HEADERS];
    let mut resp = httparse::Response::new(&mut []);
    let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(&mut resp, buf, &mut headers) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() > MAX_RESPONSE_HEAD => {
            return Err("response head larger than 64 KiB");
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err("more than 128 response headers"),
        Err(_) => return Err("not an HTTP/1.x response head"),
    };
    if len > MAX_RESPONSE_HEAD {
        return Err("response head larger than 64 KiB");
    }
    let status = resp.code.ok_or("no status code")?;
    if !(100..=599).contains(&status) {
        return Err("status code outside 100-599");
    }
    let minor = resp.version.unwrap_or(1);

    let mut content_length: Option<u64> = None;
    let mut transfer_encoding: Option<&[u8]> = None;
    let mut te_count = 0;
    let mut close = false;
    let mut keep_alive_token = false;
    for h in resp.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            // A list of identical values is tolerated as RFC 9110 allows; differing ones are how
            // responses get smuggled, so they end the exchange.
            for part in h.value.split(|&b| b == b',') {
                let v = parse_decimal(trim(part)).ok_or("invalid Content-Length")?;
                if content_length.is_some_and(|c| c != v) {
                    return Err("conflicting Content-Length values");
                }
                content_length = Some(v);
            }
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            te_count += 1;
            transfer_encoding = Some(h.value);
        } else if h.name.eq_ignore_ascii_case("connection") {
            for token in h.value.split(|&b| b == b',').map(trim) {
                close |= token.eq_ignore_ascii_case(b"close");
                keep_alive_token |= token.eq_ignore_ascii_case(b"keep-alive");
            }
        }
    }
    let mut keep_alive = if minor == 0 { keep_alive_token && !close } else { !close };

    let no_body = request_method == b"HEAD"
        || (100..200).contains(&status)
        || status == 204
        || status == 304
        || (request_method == b"CONNECT" && (200..300).contains(&status));
    let body = if no_body {
        BodyKind::None
    } else if let Some(te) = transfer_encoding {
        // Only a final `chunked` coding delimits the body; anything else runs to the close.
        let last = te.rsplit(|&b| b == b',').next().map(trim).unwrap_or_default();
        if te_count == 1 && last.eq_ignore_ascii_case(b"chunked") {
            if content_length.is_some() {
                // Both framings present: follow chunked but do not trust the connection after.
                keep_alive = false;
            }
            BodyKind::Chunked
        } else {
            BodyKind::UntilClose
        }
    } else if let Some(n) = content_length {
        BodyKind::Length(n)
    } else {
        BodyKind::UntilClose
    };
    if body == BodyKind::UntilClose || status == 101 || request_method == b"CONNECT" {
        keep_alive = false;
    }
    Ok(Some(ResponseHead { status, len, body, keep_alive }))
}

fn trim(b: &[u8]) -> &[u8] {
    let start = b.iter().position(|c| !matches!(c, b' ' | b'\t')).unwrap_or(b.len());
    let end = b.iter().rposition(|c| !matches!(c, b' ' | b'\t')).map_or(start, |e| e + 1);
    &b[start..end.max(start)]
}

fn parse_decimal(b: &[u8]) -> Option<u64> {
    if b.is_empty() || b.len() > 19 || !b.iter().all(u8::is_ascii_digit) {
        return None;
    }
    b.iter().try_fold(0u64, |acc, d| acc.checked_mul(10)?.checked_add(u64::from(d - b'0')))
}

/// Follows a body to its end without keeping it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum BodyDecoder {
    Length(u64),
    Chunked(Chunked),
    UntilClose,
    Done,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Chunked {
    state: ChunkState,
    /// Bytes of the current size line or of all trailers, to bound them.
    line_bytes: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ChunkState {
    Size { value: u64, digits: u8 },
    Extension { value: u64 },
    SizeLf { value: u64 },
    Data(u64),
    DataCr,
    DataLf,
    TrailerStart,
    TrailerLine,
    EndLf,
}

impl BodyDecoder {
    pub fn new(kind: BodyKind) -> Self {
        match kind {
            BodyKind::None | BodyKind::Length(0) => Self::Done,
            BodyKind::Length(n) => Self::Length(n),
            BodyKind::Chunked => {
                Self::Chunked(Chunked { state: ChunkState::Size { value: 0, digits: 0 }, line_bytes: 0 })
            }
            BodyKind::UntilClose => Self::UntilClose,
        }
    }

    pub fn is_done(&self) -> bool {
        *self == Self::Done
    }

    /// Consume body bytes from `data`; returns how many belonged to the body. Fewer than
    /// `data.len()` only once the body is done: the rest came after the response.
    pub fn feed(&mut self, data: &[u8]) -> Result<usize, BadResponse> {
        match self {
            Self::Done => Ok(0),
            Self::UntilClose => Ok(data.len()),
            Self::Length(left) => {
                let take = data.len().min(usize::try_from(*left).unwrap_or(usize::MAX));
                *left -= take as u64;
                if *left == 0 {
                    *self = Self::Done;
                }
                Ok(take)
            }
            Self::Chunked(c) => {
                let (used, done) = c.feed(data)?;
                if done {
                    *self = Self::Done;
                }
                Ok(used)
            }
        }
    }

    /// The connection closed: fine only for a body that runs until the close.
    pub fn finish_at_eof(&mut self) -> bool {
        match self {
            Self::UntilClose | Self::Done => {
                *self = Self::Done;
                true
            }
            _ => false,
        }
    }
}

impl Chunked {
    /// Returns (bytes consumed, body done).
    fn feed(&mut self, data: &[u8]) -> Result<(usize, bool), BadResponse> {
        let mut i = 0;
        while i < data.len() {
            if let ChunkState::Data(left) = self.state {
                let take = (data.len() - i).min(usize::try_from(left).unwrap_or(usize::MAX));
                i += take;
                let left = left - take as u64;
                self.state = if left == 0 { ChunkState::DataCr } else { ChunkState::Data(left) };
                continue;
            }
            let b = data[i];
            i += 1;
            self.state = match self.state {
                ChunkState::Size { value, digits } => {
                    self.bump(MAX_CHUNK_LINE, "chunk size line longer than 4 KiB")?;
                    match (b as char).to_digit(16) {
                        Some(d) if digits < 15 => {
                            ChunkState::Size { value: value * 16 + u64::from(d), digits: digits + 1 }
                        }
                        Some(_) => return Err("chunk size too large"),
                        None if digits == 0 => return Err("invalid chunk size"),
                        None => match b {
                            b';' | b' ' | b'\t' => ChunkState::Extension { value },
                            b'\r' => ChunkState::SizeLf { value },
                            b'\n' => self.after_size(value),
                            _ => return Err("invalid chunk size"),
                        },
                    }
                }
                ChunkState::Extension { value } => {
                    self.bump(MAX_CHUNK_LINE, "chunk size line longer than 4 KiB")?;
                    match b {
                        b'\r' => ChunkState::SizeLf { value },
                        b'\n' => self.after_size(value),
                        _ => ChunkState::Extension { value },
                    }
                }
                ChunkState::SizeLf { value } if b == b'\n' => self.after_size(value),
                ChunkState::SizeLf { .. } => return Err("chunk size line not ended by CRLF"),
                ChunkState::Data(_) => unreachable!("handled above"),
                ChunkState::DataCr => match b {
                    b'\r' => ChunkState::DataLf,
                    b'\n' => self.next_size(),
                    _ => return Err("chunk data longer than its size"),
                },
                ChunkState::DataLf if b == b'\n' => self.next_size(),
                ChunkState::DataLf => return Err("chunk data not ended by CRLF"),
                ChunkState::TrailerStart => match b {
                    b'\r' => ChunkState::EndLf,
                    b'\n' => return Ok((i, true)),
                    _ => {
                        self.bump(MAX_TRAILERS, "trailers larger than 64 KiB")?;
                        ChunkState::TrailerLine
                    }
                },
                ChunkState::TrailerLine => {
                    self.bump(MAX_TRAILERS, "trailers larger than 64 KiB")?;
                    if b == b'\n' { ChunkState::TrailerStart } else { ChunkState::TrailerLine }
                }
                ChunkState::EndLf if b == b'\n' => return Ok((i, true)),
                ChunkState::EndLf => return Err("chunked body not ended by CRLF"),
            };
        }
        Ok((i, false))
    }

    fn bump(&mut self, limit: usize, what: BadResponse) -> Result<(), BadResponse> {
        self.line_bytes += 1;
        if self.line_bytes > limit { Err(what) } else { Ok(()) }
    }

    fn after_size(&mut self, value: u64) -> ChunkState {
        self.line_bytes = 0;
        if value == 0 { ChunkState::TrailerStart } else { ChunkState::Data(value) }
    }

    fn next_size(&mut self) -> ChunkState {
        self.line_bytes = 0;
        ChunkState::Size { value: 0, digits: 0 }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn head(s: &str, method: &str) -> ResponseHead {
        parse_head(s.as_bytes(), method.as_bytes()).unwrap().unwrap()
    }

    #[test]
    fn framing_follows_rfc_9112() {
        let h = head("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", "GET");
        assert_eq!((h.status, h.body, h.keep_alive, h.len), (200, BodyKind::Length(5), true, 38));
        assert_eq!(head("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", "HEAD").body, BodyKind::None);
        for s in ["204 No Content", "304 Not Modified", "100 Continue"] {
            assert_eq!(head(&format!("HTTP/1.1 {s}\r\nContent-Length: 5\r\n\r\n"), "GET").body, BodyKind::None, "{s}");
        }
        assert!(head("HTTP/1.1 100 Continue\r\n\r\n", "GET").is_interim());
        let up = head("HTTP/1.1 101 Switching Protocols\r\n\r\n", "GET");
        assert!(!up.is_interim() && !up.keep_alive);
        assert_eq!(head("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", "GET").body, BodyKind::Chunked);
        let te_cl = head("HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", "GET");
        assert_eq!((te_cl.body, te_cl.keep_alive), (BodyKind::Chunked, false));
        let gz = head("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", "GET");
        assert_eq!((gz.body, gz.keep_alive), (BodyKind::UntilClose, false));
        let bare = head("HTTP/1.1 200 OK\r\n\r\n", "GET");
        assert_eq!((bare.body, bare.keep_alive), (BodyKind::UntilClose, false));
        assert_eq!(head("HTTP/1.1 200 OK\r\nContent-Length: 7, 7\r\n\r\n", "GET").body, BodyKind::Length(7));
    }

    #[test]
    fn keep_alive_by_version_and_connection_header() {
        assert!(!head("HTTP/1.1 200 OK\r\nConnection: Close\r\nContent-Length: 0\r\n\r\n", "GET").keep_alive);
        assert!(!head("HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", "GET").keep_alive);
        assert!(head("HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n", "GET").keep_alive);
        assert!(head("HTTP/1.1 200 OK\r\nConnection: upgrade, x\r\nContent-Length: 0\r\n\r\n", "GET").keep_alive);
    }

    #[test]
    fn bad_heads_are_named() {
        let bad = |s: &[u8]| parse_head(s, b"GET").unwrap_err();
        assert_eq!(bad(b"garbage garbage\r\n\r\n"), "not an HTTP/1.x response head");
        assert_eq!(
            bad(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"),
            "conflicting Content-Length values"
        );
        assert_eq!(bad(b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n"), "invalid Content-Length");
        assert_eq!(bad(b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999\r\n\r\n"), "invalid Content-Length");
        assert_eq!(bad(b"HTTP/1.1 700 Odd\r\n\r\n"), "status code outside 100-599");
        let many: String = (0..200).map(|i| format!("X-{i}: v\r\n")).collect();
        assert_eq!(bad(format!("HTTP/1.1 200 OK\r\n{many}\r\n").as_bytes()), "more than 128 response headers");
        let huge = format!("HTTP/1.1 200 OK\r\nX: {}", "a".repeat(MAX_RESPONSE_HEAD + 1));
        assert_eq!(bad(huge.as_bytes()), "response head larger than 64 KiB");
        assert_eq!(parse_head(b"HTTP/1.1 200 OK\r\nContent-Le", b"GET"), Ok(None));
    }

    fn run(kind: BodyKind, data: &[u8], step: usize) -> Result<(usize, bool), BadResponse> {
        let mut d = BodyDecoder::new(kind);
        let mut used = 0;
        for chunk in data.chunks(step.max(1)) {
            let n = d.feed(chunk)?;
            used += n;
            if n < chunk.len() || d.is_done() {
                break;
            }
        }
        Ok((used, d.is_done()))
    }

    #[test]
    fn chunked_decoder_finds_the_end() {
        let body = b"5;ext=1\r\nhello\r\nA\r\n0123456789\r\n0\r\nTrailer: x\r\n\r\nNEXT";
        for step in [1, 2, 3, 7, 100] {
            assert_eq!(run(BodyKind::Chunked, body, step), Ok((body.len() - 4, true)), "step {step}");
        }
        assert_eq!(run(BodyKind::Chunked, b"0\r\n\r\n", 1), Ok((5, true)));
        assert_eq!(run(BodyKind::Chunked, b"0\n\n", 1), Ok((3, true)), "bare LF tolerated");
        assert_eq!(run(BodyKind::Chunked, b"5\r\nhel", 2), Ok((6, false)));
        assert_eq!(run(BodyKind::Chunked, b"x\r\n", 1), Err("invalid chunk size"));
        assert_eq!(run(BodyKind::Chunked, b"3\r\nhello\r\n", 1), Err("chunk data longer than its size"));
        assert_eq!(run(BodyKind::Chunked, b"1234567890abcdef0\r\n", 1), Err("chunk size too large"));
        let long_ext = format!("1;{}\r\n", "e".repeat(5000));
        assert_eq!(run(BodyKind::Chunked, long_ext.as_bytes(), 64), Err("chunk size line longer than 4 KiB"));
        let long_trailer = format!("0\r\nX: {}", "t".repeat(70_000));
        assert_eq!(run(BodyKind::Chunked, long_trailer.as_bytes(), 4096), Err("trailers larger than 64 KiB"));
    }

    #[test]
    fn length_and_close_delimited() {
        assert_eq!(run(BodyKind::Length(3), b"abcdef", 2), Ok((3, true)));
        assert_eq!(run(BodyKind::Length(0), b"abc", 2), Ok((0, true)));
        assert_eq!(run(BodyKind::UntilClose, b"abc", 2), Ok((3, false)));
        let mut d = BodyDecoder::new(BodyKind::UntilClose);
        assert!(d.finish_at_eof() && d.is_done());
        let mut d = BodyDecoder::new(BodyKind::Length(4));
        assert!(!d.finish_at_eof());
    }

    proptest! {
        /// Any chunking of any body, split at any points, is followed exactly to its end.
        #[test]
        fn chunked_end_found_for_any_split(
            chunks in prop::collection::vec(prop::collection::vec(any::<u8>(), 1..40), 0..6),
            step in 1usize..50,
            tail in prop::collection::vec(any::<u8>(), 0..8),
        ) {
            let mut wire = Vec::new();
            for c in &chunks {
                wire.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
                wire.extend_from_slice(c);
                wire.extend_from_slice(b"\r\n");
            }
            wire.extend_from_slice(b"0\r\n\r\n");
            let end = wire.len();
            wire.extend_from_slice(&tail);
            prop_assert_eq!(run(BodyKind::Chunked, &wire, step), Ok((end, true)));
        }
    }
}
