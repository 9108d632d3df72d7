//! Streaming body framing: finds where a body ends without needing it contiguous, so bodies can
//! be buffered (requests) or only measured (responses, oversized requests) at the same cost.

use super::{HttpError, Limits};
use crate::message::BodyFraming;

/// Longest chunk-size line (size, extensions, CRLF): real clients send a few bytes; the bound is
/// what keeps a hostile extension from being scanned forever.
const MAX_CHUNK_LINE: u32 = 4096;

/// Where a body ends, decided a slice at a time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BodyDecoder {
    Length {
        remaining: u64,
    },
    Chunked(ChunkedDecoder),
    /// Ends with the connection (responses only): `advance` consumes everything.
    UntilClose,
}

impl BodyDecoder {
    pub fn new(framing: BodyFraming) -> Self {
        match framing {
            BodyFraming::None => Self::Length { remaining: 0 },
            BodyFraming::ContentLength(n) => Self::Length { remaining: n },
            BodyFraming::Chunked => Self::Chunked(ChunkedDecoder::default()),
            BodyFraming::UntilClose => Self::UntilClose,
        }
    }

    /// For request bodies: chunk framing exactly as RFC 9112 §7.1 writes it (see
    /// [`ChunkedDecoder::strict`]).
    pub fn strict(framing: BodyFraming) -> Self {
        match framing {
            BodyFraming::Chunked => Self::Chunked(ChunkedDecoder::strict()),
            other => Self::new(other),
        }
    }

    /// Consume body bytes from `data`. Returns how many bytes belong to the body and whether the
    /// body ended there; bytes past the end belong to the next message.
    pub fn advance(&mut self, data: &[u8], limits: &Limits) -> Result<(usize, bool), HttpError> {
        self.advance_with(data, limits, |_| {})
    }

    /// [`advance`](Self::advance), handing each run of body content (de-chunked: no chunk
    /// framing, no trailers) to `content` in order (a run may be empty). Used where bodies are
    /// kept for comparison; `advance` passes a no-op, so measuring alone costs nothing more.
    pub fn advance_with(
        &mut self,
        data: &[u8],
        limits: &Limits,
        mut content: impl FnMut(&[u8]),
    ) -> Result<(usize, bool), HttpError> {
        match self {
            Self::Length { remaining } => {
                let n = usize::try_from(*remaining).unwrap_or(usize::MAX).min(data.len());
                *remaining -= n as u64;
                content(&data[..n]);
                Ok((n, *remaining == 0))
            }
            Self::Chunked(c) => c.advance_with(data, limits, content),
            Self::UntilClose => {
                if !data.is_empty() {
                    content(data);
                }
                Ok((data.len(), false))
            }
        }
    }

    /// The connection closed: the end of an until-close body, and fine for a body already done;
    /// any other body is cut short (false).
    pub fn finish_at_eof(&mut self) -> bool {
        match self {
            Self::UntilClose => {
                *self = Self::Length { remaining: 0 };
                true
            }
            _ => self.is_done(),
        }
    }

    /// The body has ended (an until-close body ends only with the connection).
    pub fn is_done(&self) -> bool {
        match self {
            Self::Length { remaining } => *remaining == 0,
            Self::Chunked(c) => c.state == ChunkState::Done,
            Self::UntilClose => false,
        }
    }
}

/// The first `cap` bytes of a body's content, kept for comparison, and the whole content's
/// length. Past the cap nothing more is stored: the bytes are only counted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeptBody {
    cap: usize,
    bytes: Vec<u8>,
    /// Content bytes seen, kept or not.
    pub len: u64,
}

impl KeptBody {
    pub fn new(cap: usize) -> Self {
        Self { cap, bytes: Vec::new(), len: 0 }
    }

    pub fn push(&mut self, content: &[u8]) {
        self.len += content.len() as u64;
        let room = self.cap.saturating_sub(self.bytes.len());
        self.bytes.extend_from_slice(&content[..content.len().min(room)]);
    }

    /// Whether everything seen was kept.
    pub fn complete(&self) -> bool {
        self.len == self.bytes.len() as u64
    }

    pub fn heap_bytes(&self) -> usize {
        self.bytes.capacity()
    }

    /// The kept bytes and whether they are the whole content.
    pub fn finish(self) -> (bytes::Bytes, bool) {
        let complete = self.complete();
        (bytes::Bytes::from(self.bytes), complete)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
enum ChunkState {
    /// Expecting the hex digits of a chunk size.
    #[default]
    Size,
    /// After at least one hex digit.
    SizeDigits,
    /// Whitespace after the size, before `;` or the line end.
    SizeBws,
    /// Inside chunk extensions: skipped up to the line end.
    Ext,
    /// Saw CR on a size line: LF must follow.
    SizeLf,
    Data,
    /// After chunk data: CR LF (or a bare LF) must follow.
    DataCr,
    DataLf,
    /// At the start of a trailer line (or the final empty line).
    TrailerStart,
    TrailerLine,
    /// Strict: saw CR inside a trailer line, LF must follow.
    TrailerLf,
    /// Saw CR at the start of a trailer line: the body ends with the LF.
    EndLf,
    Done,
}

/// RFC 9112 §7.1 chunked transfer coding, byte-driven for the framing and in bulk for the data.
/// By default (responses) bare LF is accepted where CRLF is due, as most clients do: a stricter
/// reading than the peer's would lose sync on traffic it accepted. Requests are decoded
/// [`strict`](Self::strict)ly: there a lenient reading is how one request hides another.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ChunkedDecoder {
    state: ChunkState,
    /// CRLF only, no control bytes in chunk extensions or trailer lines.
    strict: bool,
    /// Size of the chunk being read, then what is left of its data.
    size: u64,
    line_len: u32,
    trailer_len: usize,
    /// Body bytes without the chunk framing, so far.
    pub decoded: u64,
}

impl ChunkedDecoder {
    /// Line ends must be CRLF; a bare LF or a control byte in an extension or a trailer line is
    /// an error.
    pub fn strict() -> Self {
        Self { strict: true, ..Self::default() }
    }

    pub fn advance(&mut self, data: &[u8], limits: &Limits) -> Result<(usize, bool), HttpError> {
        self.advance_with(data, limits, |_| {})
    }

    /// [`advance`](Self::advance), handing each run of chunk data to `content`.
    pub fn advance_with(
        &mut self,
        data: &[u8],
        limits: &Limits,
        mut content: impl FnMut(&[u8]),
    ) -> Result<(usize, bool), HttpError> {
        use ChunkState::*;
        if self.state == Done {
            return Ok((0, true));
        }
        let mut i = 0;
        while i < data.len() {
            if self.state == Data {
                let n = usize::try_from(self.size).unwrap_or(usize::MAX).min(data.len() - i);
                self.size -= n as u64;
                self.decoded += n as u64;
                content(&data[i..i + n]);
                i += n;
                if self.size == 0 {
                    self.state = DataCr;
                }
                continue;
            }
            let b = data[i];
            i += 1;
            self.framing_byte(b, limits)?;
            if self.state == Done {
                return Ok((i, true));
            }
        }
        Ok((i, self.state == Done))
    }

    /// One byte of the chunked framing (size lines, delimiters, trailers), moving the state.
    fn framing_byte(&mut self, b: u8, limits: &Limits) -> Result<(), HttpError> {
        use ChunkState::*;
        match self.state {
            Size | SizeDigits => {
                if let Some(d) = (b as char).to_digit(16) {
                    self.size = self
                        .size
                        .checked_mul(16)
                        .and_then(|s| s.checked_add(u64::from(d)))
                        .ok_or(HttpError::BadChunkSize)?;
                    self.state = SizeDigits;
                    return self.count_line();
                }
                if self.state == Size {
                    return Err(HttpError::BadChunkSize);
                }
                self.size_line_byte(b)?;
            }
            SizeBws => self.size_line_byte(b)?,
            Ext => {
                self.count_line()?;
                match b {
                    b'\r' => self.state = SizeLf,
                    b'\n' if !self.strict => self.end_size_line(),
                    b'\t' => {}
                    _ if self.strict && (b < b' ' || b == 0x7f) => return Err(HttpError::BadChunkSize),
                    _ => {}
                }
            }
            SizeLf => {
                if b != b'\n' {
                    return Err(HttpError::BadChunkSize);
                }
                self.end_size_line();
            }
            DataCr => match b {
                b'\r' => self.state = DataLf,
                b'\n' if !self.strict => self.next_chunk(),
                _ => return Err(HttpError::BadChunkDelimiter),
            },
            DataLf => {
                if b != b'\n' {
                    return Err(HttpError::BadChunkDelimiter);
                }
                self.next_chunk();
            }
            TrailerStart => match b {
                b'\r' => self.state = EndLf,
                b'\n' if !self.strict => self.state = Done,
                // A trailer line starting with whitespace is an obs-fold.
                b'\n' | b' ' | b'\t' if self.strict => return Err(HttpError::BadTrailer),
                _ => {
                    self.count_trailer(limits)?;
                    self.state = TrailerLine;
                }
            },
            TrailerLine => {
                self.count_trailer(limits)?;
                if self.strict {
                    match b {
                        b'\r' => self.state = TrailerLf,
                        b'\t' => {}
                        _ if b < b' ' || b == 0x7f => return Err(HttpError::BadTrailer),
                        _ => {}
                    }
                } else if b == b'\n' {
                    self.state = TrailerStart;
                }
            }
            TrailerLf => {
                if b != b'\n' {
                    return Err(HttpError::BadTrailer);
                }
                self.state = TrailerStart;
            }
            EndLf => {
                if b != b'\n' {
                    return Err(HttpError::BadTrailer);
                }
                self.state = Done;
            }
            // Data is consumed in bulk above and Done returns below, so neither is reached.
            Data | Done => {}
        }
        Ok(())
    }

    fn count_line(&mut self) -> Result<(), HttpError> {
        self.line_len += 1;
        if self.line_len > MAX_CHUNK_LINE {
            return Err(HttpError::BadChunkSize);
        }
        Ok(())
    }

    fn count_trailer(&mut self, limits: &Limits) -> Result<(), HttpError> {
        self.trailer_len += 1;
        if self.trailer_len > limits.max_header_bytes {
            return Err(HttpError::TrailersTooLarge { limit: limits.max_header_bytes });
        }
        Ok(())
    }

    /// A byte on a size line after the digits: optional whitespace, then extensions or the end.
    fn size_line_byte(&mut self, b: u8) -> Result<(), HttpError> {
        self.count_line()?;
        match b {
            b' ' | b'\t' => self.state = ChunkState::SizeBws,
            b';' => self.state = ChunkState::Ext,
            b'\r' => self.state = ChunkState::SizeLf,
            b'\n' if !self.strict => self.end_size_line(),
            _ => return Err(HttpError::BadChunkSize),
        }
        Ok(())
    }

    fn end_size_line(&mut self) {
        self.line_len = 0;
        self.state = if self.size == 0 { ChunkState::TrailerStart } else { ChunkState::Data };
    }

    fn next_chunk(&mut self) {
        self.size = 0;
        self.line_len = 0;
        self.state = ChunkState::Size;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (bytes consumed, body ended, decoded length)
    type Outcome = Result<(usize, bool, u64), HttpError>;

    fn run(input: &[u8], split: usize) -> Outcome {
        let lim = Limits { max_header_bytes: 64, ..Limits::default() };
        let mut d = ChunkedDecoder::default();
        let mut used = 0;
        for part in input.chunks(split.max(1)) {
            let (n, done) = d.advance(part, &lim)?;
            used += n;
            if done {
                return Ok((used, true, d.decoded));
            }
            assert_eq!(n, part.len());
        }
        Ok((used, false, d.decoded))
    }

    #[test]
    fn chunked_table_whole_and_byte_by_byte() {
        let cases: &[(&[u8], Outcome)] = &[
            (b"0\r\n\r\n", Ok((5, true, 0))),
            (b"5\r\nhello\r\n0\r\n\r\nGET", Ok((15, true, 5))),
            (b"5;ext=1;x=\"q\"\r\nhello\r\n0\r\n\r\n", Ok((27, true, 5))),
            (b"5 ;ext\r\nhello\r\n0\r\n\r\n", Ok((20, true, 5))),
            (b"A\r\n0123456789\r\n0\r\n\r\n", Ok((20, true, 10))),
            (b"1\r\na\r\n1\r\nb\r\n1\r\nc\r\n0\r\n\r\n", Ok((23, true, 3))),
            (b"3\r\nabc\r\n0\r\nX-T: 1\r\nY: 2\r\n\r\n", Ok((27, true, 3))),
            (b"3\nabc\n0\n\n", Ok((9, true, 3))),
            (b"0000000000000000000003\r\nabc\r\n0\r\n\r\n", Ok((34, true, 3))),
            (b"5\r\nhel", Ok((6, false, 3))),
            (b"x\r\n", Err(HttpError::BadChunkSize)),
            (b"\r\n", Err(HttpError::BadChunkSize)),
            (b"5x\r\n", Err(HttpError::BadChunkSize)),
            (b"5\rx", Err(HttpError::BadChunkSize)),
            (b"3\r\nabcX", Err(HttpError::BadChunkDelimiter)),
            (b"3\r\nabc\rX", Err(HttpError::BadChunkDelimiter)),
            (b"0\r\n\rX", Err(HttpError::BadTrailer)),
            (b"fffffffffffffffff\r\n", Err(HttpError::BadChunkSize)),
        ];
        for (input, want) in cases {
            for split in [input.len(), 1, 2, 3] {
                assert_eq!(&run(input, split), want, "{:?} split {split}", String::from_utf8_lossy(input));
            }
        }
    }

    #[test]
    fn huge_chunk_size_is_only_a_number() {
        let lim = Limits::default();
        let mut d = ChunkedDecoder::default();
        assert_eq!(d.advance(b"ffffffffffffffff\r\nabc", &lim), Ok((21, false)));
        assert_eq!(d.decoded, 3);
    }

    #[test]
    fn trailer_and_extension_bounds() {
        let long_trailer = [b"0\r\n".as_slice(), &[b'a'; 100], b"\r\n\r\n"].concat();
        assert_eq!(run(&long_trailer, 7), Err(HttpError::TrailersTooLarge { limit: 64 }));
        let long_ext = [b"1;".as_slice(), &[b'e'; 5000], b"\r\n"].concat();
        assert_eq!(run(&long_ext, 100), Err(HttpError::BadChunkSize));
    }

    #[test]
    fn eof_ends_only_an_until_close_body() {
        let mut d = BodyDecoder::new(BodyFraming::UntilClose);
        assert!(d.finish_at_eof() && d.is_done());
        assert!(!BodyDecoder::new(BodyFraming::ContentLength(4)).finish_at_eof());
        assert!(BodyDecoder::new(BodyFraming::None).finish_at_eof());
        assert!(!BodyDecoder::new(BodyFraming::Chunked).finish_at_eof());
    }

    proptest::proptest! {
        /// Any chunking of any body, split at any points, is followed exactly to its end.
        #[test]
        fn chunked_end_found_for_any_split(
            chunks in proptest::collection::vec(proptest::collection::vec(proptest::prelude::any::<u8>(), 1..40), 0..6),
            step in 1usize..50,
            tail in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..8),
        ) {
            let mut wire = Vec::new();
            for c in &chunks {
                wire.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
                wire.extend_from_slice(c);
                wire.extend_from_slice(b"\r\n");
            }
            wire.extend_from_slice(b"0\r\n\r\n");
            let end = wire.len();
            let decoded: usize = chunks.iter().map(Vec::len).sum();
            wire.extend_from_slice(&tail);
            proptest::prop_assert_eq!(run(&wire, step), Ok((end, true, decoded as u64)));
        }
    }

    /// Content handed out by `advance_with` for a body fed in `split`-byte pieces, kept up to `cap`.
    fn kept(framing: BodyFraming, wire: &[u8], split: usize, cap: usize) -> (Vec<u8>, bool, u64) {
        let lim = Limits::default();
        let mut d = BodyDecoder::new(framing);
        let mut k = KeptBody::new(cap);
        for part in wire.chunks(split.max(1)) {
            let (_, done) = d.advance_with(part, &lim, |c| k.push(c)).expect("valid body");
            if done {
                break;
            }
        }
        let len = k.len;
        let (b, complete) = k.finish();
        (b.to_vec(), complete, len)
    }

    #[test]
    fn content_is_de_chunked_and_kept_up_to_the_cap() {
        let chunked = b"5;x=1\r\nhello\r\n6\r\n world\r\n0\r\nT: 1\r\n\r\nNEXT";
        for split in [1, 2, 7, chunked.len()] {
            assert_eq!(kept(BodyFraming::Chunked, chunked, split, 100), (b"hello world".to_vec(), true, 11));
            assert_eq!(kept(BodyFraming::Chunked, chunked, split, 11), (b"hello world".to_vec(), true, 11));
            assert_eq!(kept(BodyFraming::Chunked, chunked, split, 7), (b"hello w".to_vec(), false, 11));
            assert_eq!(kept(BodyFraming::Chunked, chunked, split, 0), (Vec::new(), false, 11));
        }
        let cl = b"abcdefNEXT";
        assert_eq!(kept(BodyFraming::ContentLength(6), cl, 4, 6), (b"abcdef".to_vec(), true, 6));
        assert_eq!(kept(BodyFraming::ContentLength(6), cl, 4, 3), (b"abc".to_vec(), false, 6));
        assert_eq!(kept(BodyFraming::UntilClose, cl, 3, 4), (b"abcd".to_vec(), false, 10));
        assert_eq!(kept(BodyFraming::None, cl, 3, 4), (Vec::new(), true, 0));
    }

    #[test]
    fn length_and_until_close() {
        let lim = Limits::default();
        let mut d = BodyDecoder::new(BodyFraming::ContentLength(5));
        assert_eq!(d.advance(b"abc", &lim), Ok((3, false)));
        assert_eq!(d.advance(b"defgh", &lim), Ok((2, true)));
        assert!(d.is_done());
        let mut d = BodyDecoder::new(BodyFraming::ContentLength(u64::MAX));
        assert_eq!(d.advance(b"abc", &lim), Ok((3, false)));
        let mut d = BodyDecoder::new(BodyFraming::UntilClose);
        assert_eq!(d.advance(b"abc", &lim), Ok((3, false)));
        assert!(BodyDecoder::new(BodyFraming::None).is_done());
    }

    /// The whole body through a decoder in pieces of `split`: (consumed, done) or the error.
    fn decode(mut d: ChunkedDecoder, input: &[u8], split: usize) -> Result<(usize, bool), HttpError> {
        let lim = Limits { max_header_bytes: 64, ..Limits::default() };
        let mut used = 0;
        for part in input.chunks(split.max(1)) {
            let (n, done) = d.advance(part, &lim)?;
            used += n;
            if done {
                return Ok((used, true));
            }
        }
        Ok((used, false))
    }

    #[test]
    fn strict_decoding_refuses_what_lenient_decoding_reads() {
        // Each is read by a lenient peer (as responses are) and refused in a request, where a
        // lenient reading is how one request hides another.
        let cases: &[(&[u8], HttpError)] = &[
            (b"3\nabc\r\n0\r\n\r\n", HttpError::BadChunkSize),
            (b"3;ext=1\nabc\r\n0\r\n\r\n", HttpError::BadChunkSize),
            (b"3\r\nabc\n0\r\n\r\n", HttpError::BadChunkDelimiter),
            (b"3\r\nabc\r\n0\r\n\n", HttpError::BadTrailer),
            (b"3\r\nabc\r\n0\r\nX-T: 1\n\r\n", HttpError::BadTrailer),
            (b"3\r\nabc\r\n0\r\n X-T: 1\r\n\r\n", HttpError::BadTrailer),
            (b"3\r\nabc\r\n0\r\n\tX-T: 1\r\n\r\n", HttpError::BadTrailer),
            (b"3\r\nabc\r\n0\r\nX-T: \x01\r\n\r\n", HttpError::BadTrailer),
            (b"3;e=\x00\r\nabc\r\n0\r\n\r\n", HttpError::BadChunkSize),
            (b"3;e=\x7f\r\nabc\r\n0\r\n\r\n", HttpError::BadChunkSize),
        ];
        for (input, err) in cases {
            for split in [1, 3, input.len()] {
                assert_eq!(
                    decode(ChunkedDecoder::strict(), input, split),
                    Err(*err),
                    "{:?} / {split}",
                    String::from_utf8_lossy(input)
                );
                assert_eq!(
                    decode(ChunkedDecoder::default(), input, split).map(|(_, done)| done),
                    Ok(true),
                    "lenient: {:?} / {split}",
                    String::from_utf8_lossy(input)
                );
            }
        }
        // What RFC 9112 writes passes strictly, extensions (with a tab) and trailers included.
        let ok = b"3;ext=1;\tq=\"v w\"\r\nabc\r\n0\r\nX-T: 1\r\nY: a\tb\r\n\r\nNEXT";
        for split in [1, 2, 5, ok.len()] {
            assert_eq!(decode(ChunkedDecoder::strict(), ok, split), Ok((ok.len() - 4, true)), "split {split}");
        }
        assert_eq!(BodyDecoder::strict(BodyFraming::Chunked), BodyDecoder::Chunked(ChunkedDecoder::strict()));
        assert_ne!(ChunkedDecoder::strict(), ChunkedDecoder::default());
        assert_eq!(BodyDecoder::strict(BodyFraming::ContentLength(4)), BodyDecoder::new(BodyFraming::ContentLength(4)));
    }

    #[test]
    fn kept_body_heap_is_its_capacity() {
        let mut k = KeptBody::new(100);
        assert_eq!(k.heap_bytes(), 0);
        k.push(b"hello");
        assert!(k.heap_bytes() >= 5);
        assert_eq!(k.heap_bytes(), k.bytes.capacity());
    }

    #[test]
    fn a_chunk_size_line_is_bounded_at_exactly_its_limit() {
        // Counted: the size digit, ';', the extension and the CR: 3 + N bytes.
        let line = |n: usize| [b"3;".as_slice(), &vec![b'a'; n], b"\r\nabc\r\n0\r\n\r\n"].concat();
        let at = MAX_CHUNK_LINE as usize - 3;
        for d in [ChunkedDecoder::strict(), ChunkedDecoder::default()] {
            assert_eq!(decode(d.clone(), &line(at), 7).map(|(_, done)| done), Ok(true));
            assert_eq!(decode(d, &line(at + 1), 7), Err(HttpError::BadChunkSize));
        }
    }

    #[test]
    fn a_trailer_section_is_bounded_at_exactly_its_limit() {
        // decode() allows 64 bytes. Counted strictly: every trailer byte up to its CR (N + 4 for
        // "X: " + N + CR); leniently the LF too (N + 5).
        let trailer = |n: usize| [b"0\r\nX: ".as_slice(), &vec![b'a'; n], b"\r\n\r\n"].concat();
        assert_eq!(decode(ChunkedDecoder::strict(), &trailer(60), 5).map(|(_, done)| done), Ok(true));
        assert_eq!(decode(ChunkedDecoder::strict(), &trailer(61), 5), Err(HttpError::TrailersTooLarge { limit: 64 }));
        assert_eq!(decode(ChunkedDecoder::default(), &trailer(59), 5).map(|(_, done)| done), Ok(true));
        assert_eq!(decode(ChunkedDecoder::default(), &trailer(60), 5), Err(HttpError::TrailersTooLarge { limit: 64 }));
    }
}
