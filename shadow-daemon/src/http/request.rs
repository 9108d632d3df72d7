//! Requests out of the in-order client stream.
//!
//! One copy per request: a request that lies inside one piece is copied out of it (the piece
//! borrows the ring-buffer record) when it is complete; a request spanning pieces is copied,
//! once, into a buffer that grows with the bytes actually received (never with what a
//! Content-Length promises).

use bytes::{Bytes, BytesMut};

use super::{
    BodyDecoder, Cx, DropReason, Fed, HttpError, HttpEvent, MAX_PENDING, Pending, Piece, Preface, RequestHead,
    RequestKind, find_head_end, parse_request_head, response::Unpaired, unsupported_preface,
};
use crate::message::{BodyFraming, CapturedRequest};

/// Most a buffer is grown beyond the bytes received, on the word of a Content-Length.
const RESERVE_AHEAD: usize = 64 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Lost sync (new flow, sampling skip, damaged message): waiting for a piece that starts a
    /// request; others are skipped for this reason.
    Unsynced(DropReason),
    /// Between requests.
    Boundary,
    Head,
    /// Keeping the body of a request that will be emitted.
    Body,
    /// Framing the body of a request already counted as dropped, to find the next one.
    Discard,
    /// Nothing more is extracted from this stream (protocol switch, not HTTP/1.x, closed).
    Closed(DropReason),
}

/// What a request spanning pieces needs once its head is parsed (boxed: most requests lie in
/// one piece and never need it).
#[derive(Debug)]
struct Progress {
    head: Option<RequestHead>,
    body: BodyDecoder,
    /// Body bytes as sent, framing included: what the body cap is about.
    body_wire: u64,
    kind: RequestKind,
    /// Count the response of a discarded request as its own (see `Pending::id`).
    tombstone: bool,
    /// The connection may carry a request after this one.
    persistent: bool,
}

/// Turns the in-order bytes of a client stream into [`CapturedRequest`]s.
#[derive(Debug)]
pub struct RequestAssembler {
    state: State,
    /// Bytes of the request in progress that came in earlier pieces.
    buf: BytesMut,
    progress: Option<Box<Progress>>,
    start_seq: u32,
    first_ts_ns: u64,
    /// Where to resume looking for the end of a head split across pieces.
    scan_from: u32,
    /// Requests may be missing before the next one (sync lost since the last request).
    skip_before_next: bool,
    /// Response-stream position the request's first segment acknowledged: where its answer
    /// starts if no other response came in between.
    start_ack: u32,
    /// The server answered the request in progress before it was complete (counted unpaired):
    /// do not expect another response for it.
    early: Early,
}

/// Whether, and how, the primary answered the request in progress before it had all of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Early {
    No,
    /// With a 2xx/3xx that was provably the next answer on the connection: served, if the
    /// connection then goes on in step.
    Served,
    /// With anything else, or with more than one response, or without proof that the answer
    /// was this request's: refused.
    Refused,
}

impl Default for RequestAssembler {
    fn default() -> Self {
        Self {
            state: State::Unsynced(DropReason::MidstreamSkip),
            buf: BytesMut::new(),
            progress: None,
            start_seq: 0,
            first_ts_ns: 0,
            scan_from: 0,
            skip_before_next: true,
            start_ack: 0,
            early: Early::No,
        }
    }
}

/// What `step` did with the bytes of the current piece.
enum Step {
    /// Go on at this index.
    At(usize),
    /// The rest of the piece is not framed (lost sync or closed).
    Stop,
}

impl RequestAssembler {
    /// In-order delivery matters: the stream is inside or between requests.
    pub fn synced(&self) -> bool {
        !matches!(self.state, State::Unsynced(_) | State::Closed(_))
    }

    pub fn closed(&self) -> Option<DropReason> {
        match self.state {
            State::Closed(r) => Some(r),
            _ => None,
        }
    }

    /// A request is partly seen and not yet accounted for.
    pub fn in_message(&self) -> bool {
        matches!(self.state, State::Head | State::Body)
    }

    /// Bytes held for the request in progress.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    pub fn heap_bytes(&self) -> usize {
        self.buf.capacity()
            + self.progress.as_ref().map_or(0, |p| {
                size_of::<Progress>()
                    + p.head.as_ref().map_or(0, |h| h.headers.capacity() * size_of::<crate::message::HeaderSpan>())
            })
    }

    /// Can a stream that lost sync pick up again at this piece? Only where the kernel drew a new
    /// decision: a segment that starts like a request (token grammar) and was sent after the
    /// previous request was answered. A segment sent before that answer (the rest of a request,
    /// its body) never restarts framing, whatever it looks like.
    pub fn is_start(piece: &Piece) -> bool {
        piece.seg_start && (piece.request_start || matches!(unsupported_preface(piece.data), Preface::Unsupported(_)))
    }

    /// Consume one in-order piece.
    pub fn feed(&mut self, piece: &Piece, cx: &mut Cx<'_>) -> Fed {
        match self.state {
            State::Closed(r) => {
                if r == DropReason::Desync && piece.seg_start && piece.request_start {
                    // A request the kernel saw start on a connection we no longer frame: count
                    // it, so that the ledger shows what desync cost.
                    cx.requests.seen_and_dropped(DropReason::Desync);
                }
                return Fed::Skipped(r);
            }
            State::Unsynced(r) => {
                if !Self::is_start(piece) {
                    return Fed::Skipped(r);
                }
                self.state = State::Boundary;
            }
            _ => {}
        }
        let data = &piece.data;
        // Index of the first byte of `data` that belongs to the request in progress and is not
        // yet in `buf`.
        let mut copied = 0usize;
        let mut i = 0usize;
        while i < data.len() {
            let step = match self.state {
                State::Boundary => {
                    // RFC 9112 §2.2: empty lines before a request line are ignored.
                    let skip = data[i..].iter().position(|b| !matches!(b, b'\r' | b'\n'));
                    let Some(skip) = skip else { break };
                    i += skip;
                    self.begin(piece, i, cx);
                    copied = i;
                    Step::At(i)
                }
                State::Head => self.step_head(piece, i, &mut copied, cx),
                State::Body | State::Discard => self.step_body(piece, i, &mut copied, cx),
                State::Unsynced(_) | State::Closed(_) => Step::Stop,
            };
            match step {
                Step::At(next) => i = next,
                Step::Stop => break,
            }
        }
        if matches!(self.state, State::Head | State::Body) && copied < data.len() {
            let rest = &data[copied..];
            // A known remaining length lets the buffer grow once instead of doubling, but only
            // up to a bounded look-ahead: a Content-Length alone never allocates.
            let ahead = match self.progress.as_deref() {
                Some(Progress { body: BodyDecoder::Length { remaining }, head: Some(_), .. }) => {
                    usize::try_from(*remaining).unwrap_or(usize::MAX).min(RESERVE_AHEAD)
                }
                _ => 0,
            };
            self.buf.reserve(rest.len() + ahead);
            self.buf.extend_from_slice(rest);
        }
        Fed::Used
    }

    fn begin(&mut self, piece: &Piece, at: usize, cx: &mut Cx<'_>) {
        cx.requests.start();
        self.state = State::Head;
        self.start_seq = piece.seq.wrapping_add(at as u32);
        self.first_ts_ns = piece.ts_ns;
        self.start_ack = piece.ack;
        self.scan_from = 0;
        self.early = Early::No;
        self.progress = None;
    }

    fn step_head(&mut self, piece: &Piece, i: usize, copied: &mut usize, cx: &mut Cx<'_>) -> Step {
        let data = &piece.data;
        let limits = cx.limits;
        if self.buf.is_empty() {
            // The head starts in this piece: parse in place.
            let view = &data[i..];
            match unsupported_preface(view) {
                Preface::Unsupported(e) => return self.fail(e, cx),
                Preface::Other => {}
                Preface::NeedMore => return Step::At(data.len()),
            }
            return match parse_request_head(view, limits) {
                Err(e) => self.fail(e, cx),
                Ok(None) => {
                    self.scan_from = view.len().saturating_sub(3) as u32;
                    Step::At(data.len())
                }
                Ok(Some(head)) => {
                    let body_at = i + head.head_len;
                    self.after_head(head, piece, body_at, copied, cx)
                }
            };
        }
        // The head spans pieces: gather it (never more than the limit) and parse it once its
        // blank line is in, so a head trickling in over many segments is scanned only once.
        let old = self.buf.len();
        let room = (limits.max_header_bytes + 1).saturating_sub(old);
        let take = data[i..].len().min(room);
        self.buf.extend_from_slice(&data[i..i + take]);
        // A preface split over pieces. (Once 14 bytes are in, the first check on them decided
        // for good: this one then says Other again, for the cost of a 14-byte comparison.)
        match unsupported_preface(&self.buf) {
            Preface::Unsupported(e) => return self.fail(e, cx),
            Preface::Other => {}
            Preface::NeedMore => {
                *copied = i + take;
                return Step::At(i + take);
            }
        }
        let Some(end) = find_head_end(&self.buf, self.scan_from as usize) else {
            if self.buf.len() > limits.max_header_bytes {
                return self.fail(HttpError::HeadTooLarge { limit: limits.max_header_bytes }, cx);
            }
            self.scan_from = self.buf.len().saturating_sub(3) as u32;
            *copied = i + take;
            return Step::At(i + take);
        };
        self.buf.truncate(end);
        let at = i + end.saturating_sub(old);
        *copied = at;
        match parse_request_head(&self.buf, limits) {
            Err(e) => self.fail(e, cx),
            Ok(None) => {
                // A blank line httparse does not take as the end of the head: look further.
                self.scan_from = end as u32;
                Step::At(at)
            }
            Ok(Some(head)) => self.after_head(head, piece, at, copied, cx),
        }
    }

    /// The head is parsed; the body (if any) starts at `data[body_at]`.
    fn after_head(
        &mut self,
        head: RequestHead,
        piece: &Piece,
        body_at: usize,
        copied: &mut usize,
        cx: &mut Cx<'_>,
    ) -> Step {
        let limits = cx.limits;
        match head.kind {
            RequestKind::Upgrade | RequestKind::Connect => {
                // Replaying a protocol switch or a tunnel to the shadow makes no sense, and the
                // bytes that follow are not HTTP/1.x: stop extracting from this stream.
                let reason = if head.kind == RequestKind::Upgrade { DropReason::Upgrade } else { DropReason::Connect };
                cx.requests.drop_started(reason);
                self.push_pending(Pending::DROPPED, head.kind, piece, body_at, cx);
                self.reset(State::Closed(reason));
                return Step::Stop;
            }
            RequestKind::Normal | RequestKind::Head => {}
        }
        if head.ambiguous {
            // Transfer-Encoding with Content-Length: RFC 9112 §6.1 has the server frame by the
            // chunked coding and close the connection after; a server that framed by the length
            // instead would see other requests in the body. Neither reading is replayed.
            cx.requests.drop_started(DropReason::ParseError);
            self.push_pending(Pending::DROPPED, head.kind, piece, body_at, cx);
            self.reset(State::Closed(DropReason::Desync));
            return Step::Stop;
        }
        let too_big = matches!(head.framing, BodyFraming::ContentLength(n) if n > limits.max_body_bytes);
        if too_big {
            cx.requests.drop_started(DropReason::OversizeBody);
            self.buf = BytesMut::new();
            self.state = State::Discard;
            self.progress = Some(Box::new(Progress {
                body: BodyDecoder::strict(head.framing),
                body_wire: 0,
                kind: head.kind,
                tombstone: true,
                head: None,
                persistent: head.persistent,
            }));
            return self.step_body(piece, body_at, copied, cx);
        }
        let mut body = BodyDecoder::strict(head.framing);
        let (n, done) = match body.advance(&piece.data[body_at..], limits) {
            Ok(v) => v,
            Err(e) => return self.fail(e, cx),
        };
        let end = body_at + n;
        if done && n as u64 <= limits.max_body_bytes {
            // The usual case: the whole request is here, nothing to keep between pieces.
            let kind = head.kind;
            self.emit(head, kind, piece, *copied, end, cx);
            *copied = end;
            return self.next_at(piece, end, cx);
        }
        self.state = State::Body;
        self.progress = Some(Box::new(Progress {
            kind: head.kind,
            persistent: head.persistent,
            head: Some(head),
            body,
            body_wire: n as u64,
            tombstone: false,
        }));
        self.settle(piece, end, done, copied, cx)
    }

    fn step_body(&mut self, piece: &Piece, i: usize, copied: &mut usize, cx: &mut Cx<'_>) -> Step {
        let Some(progress) = self.progress.as_mut() else {
            return self.fail(HttpError::Malformed(httparse::Error::Token), cx);
        };
        let (n, done) = match progress.body.advance(&piece.data[i..], cx.limits) {
            Ok(v) => v,
            Err(e) => return self.fail(e, cx),
        };
        progress.body_wire += n as u64;
        self.settle(piece, i + n, done, copied, cx)
    }

    /// Body bytes up to `data[end]` are framed: apply the cap, and finish the request if `done`.
    fn settle(&mut self, piece: &Piece, end: usize, done: bool, copied: &mut usize, cx: &mut Cx<'_>) -> Step {
        let Some(progress) = self.progress.as_mut() else {
            return self.fail(HttpError::Malformed(httparse::Error::Token), cx);
        };
        if self.state == State::Body && progress.body_wire > cx.limits.max_body_bytes {
            // A chunked body grew past the cap: stop keeping it, but keep framing it.
            cx.requests.drop_started(DropReason::OversizeBody);
            progress.tombstone = true;
            progress.head = None;
            self.buf = BytesMut::new();
            self.state = State::Discard;
        }
        if !done {
            if self.state == State::Discard {
                *copied = end;
            }
            return Step::At(end);
        }
        let kind = progress.kind;
        let tombstone = progress.tombstone;
        let persistent = progress.persistent;
        let head = progress.head.take();
        self.progress = None;
        match head {
            // The head is kept only in Body: whatever turns a request into Discard drops it.
            Some(head) => self.emit(head, kind, piece, *copied, end, cx),
            None => {
                if tombstone {
                    self.push_pending(Pending::DROPPED, kind, piece, end, cx);
                }
                self.reset(Self::after(persistent));
            }
        }
        *copied = end;
        self.next_at(piece, end, cx)
    }

    /// The request ends at `data[end]`: hand it out.
    fn emit(
        &mut self,
        head: RequestHead,
        kind: RequestKind,
        piece: &Piece,
        copied: usize,
        end: usize,
        cx: &mut Cx<'_>,
    ) {
        let raw: Bytes = if self.buf.is_empty() {
            Bytes::copy_from_slice(&piece.data[copied..end])
        } else {
            self.buf.extend_from_slice(&piece.data[copied..end]);
            // The whole buffer goes with the request: an idle flow keeps no spare capacity.
            std::mem::take(&mut self.buf).freeze()
        };
        let id = *cx.next_id;
        *cx.next_id += 1;
        let persistent = head.persistent;
        let req = CapturedRequest {
            id,
            flow: cx.flow,
            raw,
            head_len: head.head_len,
            method: head.method,
            target: head.target,
            minor_version: head.minor_version,
            headers: head.headers,
            framing: head.framing,
            first_ts_ns: self.first_ts_ns,
            last_ts_ns: piece.ts_ns,
        };
        match self.early {
            Early::No => {
                cx.complete_request(req);
                self.push_pending(id, kind, piece, end, cx);
            }
            // The primary answered 2xx/3xx before it had the whole request (a server that does
            // not need the body): served if the connection goes on in step, which the next
            // response or a clean close will tell. Its answer was seen: nothing is pending.
            Early::Served => {
                // Its answer started where the client's first segment of it acknowledged: the
                // exact evidence a skip before it needs (see `pairing`), so the request after
                // it follows no skip.
                self.skip_before_next = false;
                cx.complete_answered_early(req);
            }
            // An early error, or an answer we cannot attribute: the primary did not serve this
            // request as sent.
            Early::Refused if cx.held.enabled() => cx.requests.drop_started(DropReason::Refused),
            Early::Refused => {
                cx.requests.emit();
                cx.out.push(HttpEvent::Request(req));
            }
        }
        self.reset(Self::after(persistent));
    }

    /// Go on after a request that ended at `data[end]`. If it ended the connection, bytes after
    /// it in the same segment are not a request the primary served: counted, not framed.
    fn next_at(&self, piece: &Piece, end: usize, cx: &mut Cx<'_>) -> Step {
        if self.state != State::Closed(DropReason::Desync) {
            return Step::At(end);
        }
        if piece.data.get(end..).is_some_and(|rest| rest.iter().any(|b| !matches!(b, b'\r' | b'\n'))) {
            cx.requests.seen_and_dropped(DropReason::Desync);
        }
        Step::Stop
    }

    /// The state after a request: between requests, or done with a connection the request
    /// ends.
    const fn after(persistent: bool) -> State {
        if persistent { State::Boundary } else { State::Closed(DropReason::Desync) }
    }

    fn push_pending(&mut self, id: u64, kind: RequestKind, piece: &Piece, end: usize, cx: &mut Cx<'_>) {
        if cx.pending.len() >= MAX_PENDING {
            // The oldest entry goes out unanswered: the next response may no longer pair with
            // the request right after an early-answered one.
            cx.early_out_of_step(DropReason::Refused);
        }
        let p = Pending {
            id,
            kind,
            req_end: piece.seq.wrapping_add(end as u32),
            client_ack: piece.ack,
            last_ts_ns: piece.ts_ns,
            after_skip: std::mem::take(&mut self.skip_before_next),
        };
        *cx.unanswered += cx.pending.push(p, cx.held);
        cx.settle_held(DropReason::Unanswered);
    }

    fn reset(&mut self, state: State) {
        self.state = state;
        self.progress = None;
        self.scan_from = 0;
        self.buf = BytesMut::new();
        if matches!(state, State::Unsynced(_)) {
            self.skip_before_next = true;
        }
    }

    /// The request in progress is damaged: drop it, and the rest of the connection with it.
    /// Where the primary thinks the next request starts after bytes we could not frame is not
    /// knowable; resynchronising at the next thing that looks like a request is how a request
    /// hidden in a body reaches the shadow.
    fn fail(&mut self, e: HttpError, cx: &mut Cx<'_>) -> Step {
        let reason = e.reason();
        if self.state != State::Discard {
            cx.requests.drop_started(self.early_reason(reason));
        }
        // Where the primary framed what follows is unknown: no evidence of step can come.
        cx.early_out_of_step(DropReason::Desync);
        // Neither HTTP/2 nor TLS will turn back into HTTP/1.x on this connection.
        let next = if reason == DropReason::UnsupportedProtocol { reason } else { DropReason::Desync };
        self.reset(State::Closed(next));
        Step::Stop
    }

    /// The bytes at the current position will never arrive; `next_starts` tells whether what
    /// comes after them begins a request. Returns true for a sampling skip: between requests,
    /// and followed by a request start (an unsampled request is absent whole).
    pub fn hole(&mut self, next_starts: bool, cx: &mut Cx<'_>) -> bool {
        if self.synced() {
            // A request the primary may have answered is missing: the next response proves no
            // step. A loss is a gap; an unsampled request (a skip), a refusal of proof.
            let skip = self.state == State::Boundary && next_starts;
            cx.early_out_of_step(if skip { DropReason::Refused } else { DropReason::Gap });
        }
        match self.state {
            State::Boundary if next_starts => {
                self.reset(State::Unsynced(DropReason::MidstreamSkip));
                true
            }
            State::Boundary => {
                // The start of a request was lost, and its rest is here: a loss, not a skip.
                self.reset(State::Unsynced(DropReason::Gap));
                false
            }
            State::Head | State::Body => {
                cx.requests.drop_started(self.early_reason(DropReason::Gap));
                self.reset(State::Unsynced(DropReason::Gap));
                false
            }
            State::Discard => {
                self.reset(State::Unsynced(DropReason::Gap));
                false
            }
            State::Unsynced(_) | State::Closed(_) => false,
        }
    }

    /// A segment here could not be copied by the kernel. Returns the segment's drop reason.
    pub fn truncated(&mut self, request_start: bool, cx: &mut Cx<'_>) -> DropReason {
        let r = DropReason::TruncatedCapture;
        if let State::Closed(reason) = self.state {
            return reason;
        }
        cx.early_out_of_step(r);
        match self.state {
            State::Closed(reason) => return reason,
            State::Head | State::Body => cx.requests.drop_started(self.early_reason(r)),
            State::Boundary | State::Unsynced(_) if request_start => cx.requests.seen_and_dropped(r),
            State::Boundary | State::Unsynced(_) | State::Discard => {}
        }
        self.reset(State::Unsynced(r));
        r
    }

    /// The stream ends (FIN, RST, eviction, idle timeout): a request in progress is lost.
    pub fn end(&mut self, reason: DropReason, cx: &mut Cx<'_>) {
        if self.in_message() {
            cx.requests.drop_started(self.early_reason(reason));
            // A request cut off after an early-answered one: not a clean end.
            cx.early_out_of_step(DropReason::Refused);
        }
        self.reset(State::Closed(DropReason::Duplicate));
    }

    /// The server declined the protocol switch this stream stopped at: HTTP/1.x goes on, from
    /// the next request start.
    pub fn reopen_after_declined_upgrade(&mut self) {
        if self.state == State::Closed(DropReason::Upgrade) {
            self.reset(State::Unsynced(DropReason::Upgrade));
        }
    }

    /// A final response no pending request could own started after the server had received
    /// request bytes up to `u.ack`: if the request in progress had started by then, that
    /// response was its (early) answer. It may say the request was served (see [`Early`]) only
    /// if it is a 2xx/3xx, nothing older awaits an answer (`pending_empty`), it is the first
    /// answer since the request began (only interim responses came between the request's first
    /// acknowledgment and its start), and no other answer came early for this request.
    pub fn answered_before(&mut self, u: Unpaired, pending_empty: bool) {
        if !(self.in_message() && super::seq_lt(self.start_seq, u.ack)) {
            return;
        }
        let first = self.early == Early::No && pending_empty && u.run_start == self.start_ack;
        self.early = if first && super::serves_early(u.status) { Early::Served } else { Early::Refused };
    }

    /// The reason a request in progress is dropped for `reason`: a request the primary refused
    /// early is counted as refused, whatever then cut it off (a client stops sending a body the
    /// server refused).
    fn early_reason(&self, reason: DropReason) -> DropReason {
        if self.early == Early::Refused { DropReason::Refused } else { reason }
    }
}
