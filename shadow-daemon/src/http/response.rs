//! Responses out of the in-order server stream: heads are kept, bodies are only framed and
//! measured, so a large download costs nothing but a counter.

use bytes::{Bytes, BytesMut};

use super::{
    BodyDecoder, Cx, DropReason, Fed, HttpError, HttpEvent, KeptBody, PairOutcome, Piece, RequestKind, ResponseHead,
    find_head_end, looks_like_response_line, parse_response_head,
};
use crate::message::{BodyFraming, CapturedResponse};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Unsynced(DropReason),
    Boundary,
    Head,
    Body,
    Closed(DropReason),
}

#[derive(Debug)]
struct Progress {
    head: Bytes,
    status: u16,
    minor_version: u8,
    framing: BodyFraming,
    body: BodyDecoder,
    /// Bytes of an until-close body so far.
    until_close_len: u64,
    /// `Some((request id, request last ts))`: emit at the end; `None`: already counted dropped,
    /// framed only to find the next response.
    emit: Option<(u64, u64)>,
    /// The body's first bytes, for comparison: only for a response that will be emitted, and
    /// only when the limits ask for any.
    kept: Option<KeptBody>,
}

/// Turns the in-order bytes of a server stream into [`CapturedResponse`]s paired with requests.
#[derive(Debug)]
pub struct ResponseAssembler {
    state: State,
    /// Head bytes of the response in progress that came in earlier pieces.
    buf: BytesMut,
    progress: Option<Box<Progress>>,
    start_seq: u32,
    start_ack: u32,
    first_ts_ns: u64,
    scan_from: u32,
    /// The stream has been continuous since the last paired response (see `pairing`).
    aligned: bool,
    /// Where the current run of interim (1xx) responses began, since the last final response
    /// (meaningful while `in_interim`): a final response after them is the answer that began
    /// there.
    interim_from: u32,
    in_interim: bool,
    /// The server answered an Upgrade request without switching.
    declined_upgrade: bool,
}

impl Default for ResponseAssembler {
    fn default() -> Self {
        Self {
            state: State::Unsynced(DropReason::MidstreamSkip),
            buf: BytesMut::new(),
            progress: None,
            start_seq: 0,
            start_ack: 0,
            first_ts_ns: 0,
            scan_from: 0,
            aligned: false,
            interim_from: 0,
            in_interim: false,
            declined_upgrade: false,
        }
    }
}

enum Step {
    At(usize),
    Stop,
}

/// A final response that no pending request owned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Unpaired {
    /// Response-stream position where this answer began: its head's, or the first interim
    /// response's right before it.
    pub run_start: u32,
    /// Request-stream position its first segment acknowledged.
    pub ack: u32,
    pub status: u16,
}

impl ResponseAssembler {
    pub fn synced(&self) -> bool {
        !matches!(self.state, State::Unsynced(_) | State::Closed(_))
    }

    pub fn closed(&self) -> Option<DropReason> {
        match self.state {
            State::Closed(r) => Some(r),
            _ => None,
        }
    }

    /// A response is partly seen and not yet accounted for.
    fn counted_in_progress(&self) -> bool {
        match self.state {
            State::Head => true,
            State::Body => self.progress.as_ref().is_some_and(|p| p.emit.is_some()),
            _ => false,
        }
    }

    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    pub fn heap_bytes(&self) -> usize {
        self.buf.capacity()
            + self
                .progress
                .as_ref()
                .map_or(0, |p| size_of::<Progress>() + p.head.len() + p.kept.as_ref().map_or(0, KeptBody::heap_bytes))
    }

    pub fn take_declined_upgrade(&mut self) -> bool {
        std::mem::take(&mut self.declined_upgrade)
    }

    pub fn is_start(piece: &Piece) -> bool {
        piece.seg_start && looks_like_response_line(piece.data)
    }

    pub fn feed(&mut self, piece: &Piece, cx: &mut Cx<'_>) -> Fed {
        match self.state {
            State::Closed(r) => return Fed::Skipped(r),
            State::Unsynced(r) => {
                if !Self::is_start(piece) {
                    return Fed::Skipped(r);
                }
                self.state = State::Boundary;
            }
            _ => {}
        }
        let data = &piece.data;
        let mut i = 0;
        while i < data.len() {
            let step = match self.state {
                State::Boundary => {
                    let Some(skip) = data[i..].iter().position(|b| !matches!(b, b'\r' | b'\n')) else {
                        break;
                    };
                    i += skip;
                    cx.responses.start();
                    self.state = State::Head;
                    self.start_seq = piece.seq.wrapping_add(i as u32);
                    self.start_ack = piece.ack;
                    self.first_ts_ns = piece.ts_ns;
                    self.scan_from = 0;
                    Step::At(i)
                }
                State::Head => self.step_head(piece, i, cx),
                State::Body => self.step_body(piece, i, cx),
                State::Unsynced(_) | State::Closed(_) => Step::Stop,
            };
            match step {
                Step::At(next) => i = next,
                Step::Stop => break,
            }
        }
        Fed::Used
    }

    fn step_head(&mut self, piece: &Piece, i: usize, cx: &mut Cx<'_>) -> Step {
        let data = &piece.data;
        let limits = cx.limits;
        if self.buf.is_empty() {
            let view = &data[i..];
            return match parse_response_head(view, limits) {
                Err(e) => self.fail(e, cx),
                Ok(None) => {
                    self.buf.extend_from_slice(view);
                    self.scan_from = view.len().saturating_sub(3) as u32;
                    Step::At(data.len())
                }
                Ok(Some(head)) => {
                    let end = i + head.head_len;
                    self.after_head(head, &data[i..end], piece, end, cx)
                }
            };
        }
        let old = self.buf.len();
        let take = data[i..].len().min((limits.max_header_bytes + 1).saturating_sub(old));
        self.buf.extend_from_slice(&data[i..i + take]);
        let Some(end) = find_head_end(&self.buf, self.scan_from as usize) else {
            if self.buf.len() > limits.max_header_bytes {
                return self.fail(HttpError::HeadTooLarge { limit: limits.max_header_bytes }, cx);
            }
            self.scan_from = self.buf.len().saturating_sub(3) as u32;
            return Step::At(i + take);
        };
        self.buf.truncate(end);
        let at = i + end.saturating_sub(old);
        match parse_response_head(&self.buf, limits) {
            Err(e) => self.fail(e, cx),
            Ok(None) => {
                self.scan_from = end as u32;
                Step::At(at)
            }
            Ok(Some(head)) => {
                let bytes = self.buf.split();
                self.after_head(head, &bytes, piece, at, cx)
            }
        }
    }

    fn after_head(
        &mut self,
        head: ResponseHead,
        head_bytes: &[u8],
        piece: &Piece,
        body_at: usize,
        cx: &mut Cx<'_>,
    ) -> Step {
        self.buf = BytesMut::new();
        if head.is_interim() {
            // Interim (100 Continue, 103 Early Hints): not a response to pair or count; the
            // final response follows.
            cx.responses.seen = cx.responses.seen.saturating_sub(1);
            cx.responses.in_progress = cx.responses.in_progress.saturating_sub(1);
            if !self.in_interim {
                self.in_interim = true;
                self.interim_from = self.start_seq;
            }
            self.state = State::Boundary;
            return Step::At(body_at);
        }
        let run_start = if std::mem::take(&mut self.in_interim) { self.interim_from } else { self.start_seq };
        let (outcome, passed) = cx.pending.pair(self.start_seq, self.start_ack, self.aligned, cx.held);
        *cx.unanswered += passed;
        cx.settle_held(DropReason::Unanswered);
        let mut refused = false;
        let (kind, emit) = match outcome {
            PairOutcome::Paired(p) => {
                // An early-answered request before this one: the answer after it paired with the
                // request after it, nothing passed over, no skip between (the connection went on
                // in step), so it goes out first; anything else means the step was lost.
                if passed == 0 && !p.after_skip {
                    cx.early_in_step();
                } else {
                    cx.early_out_of_step(DropReason::Refused);
                }
                self.aligned = true;
                refused = p.emitted() && !cx.answered(p.id, head.status);
                (p.kind, (p.emitted() && !refused).then_some((p.id, p.last_ts_ns)))
            }
            PairOutcome::Unpaired => {
                // One answer more than the requests framed: after an early answer, the sign
                // of a request the primary read where we read a body.
                cx.early_out_of_step(DropReason::Refused);
                self.aligned = false;
                *cx.unpaired = Some(Unpaired { run_start, ack: self.start_ack, status: head.status });
                (RequestKind::Normal, None)
            }
        };
        let tunnel = match (head.status, kind) {
            (101, _) => Some(DropReason::Upgrade),
            (200..=299, RequestKind::Connect) => Some(DropReason::Connect),
            _ => None,
        };
        if kind == RequestKind::Upgrade && tunnel.is_none() {
            self.declined_upgrade = true;
        }
        if let Some(reason) = tunnel {
            let reason =
                if emit.is_some() || kind != RequestKind::Normal { reason } else { DropReason::UnpairedResponse };
            cx.responses.drop_started(reason);
            self.close_quiet(reason);
            return Step::Stop;
        }
        if emit.is_none() {
            cx.responses.drop_started(if refused { DropReason::Refused } else { DropReason::UnpairedResponse });
        }
        let framing = head.framing_for(kind);
        // Head and body are kept (copied) only for the comparison, which reads both.
        let compared = emit.is_some() && cx.limits.keep_response_body > 0;
        self.progress = Some(Box::new(Progress {
            head: if compared { Bytes::copy_from_slice(head_bytes) } else { Bytes::new() },
            status: head.status,
            minor_version: head.minor_version,
            framing,
            body: BodyDecoder::new(framing),
            until_close_len: 0,
            kept: compared.then(|| KeptBody::new(cx.limits.keep_response_body)),
            emit,
        }));
        self.state = State::Body;
        self.step_body(piece, body_at, cx)
    }

    fn step_body(&mut self, piece: &Piece, i: usize, cx: &mut Cx<'_>) -> Step {
        let Some(progress) = self.progress.as_mut() else {
            self.state = State::Boundary;
            return Step::At(i);
        };
        let data = &piece.data[i..];
        let advanced = match progress.kept.as_mut() {
            Some(k) => progress.body.advance_with(data, cx.limits, |c| k.push(c)),
            None => progress.body.advance(data, cx.limits),
        };
        let (n, done) = match advanced {
            Ok(v) => v,
            Err(e) => return self.fail(e, cx),
        };
        if progress.framing == BodyFraming::UntilClose {
            progress.until_close_len += n as u64;
        }
        if done {
            self.finish(piece.ts_ns, cx);
        }
        Step::At(i + n)
    }

    fn finish(&mut self, last_ts_ns: u64, cx: &mut Cx<'_>) {
        self.state = State::Boundary;
        let Some(p) = self.progress.take() else {
            return;
        };
        let Some((request_id, request_last_ts_ns)) = p.emit else {
            return;
        };
        let body_len = match (&p.body, p.framing) {
            (BodyDecoder::Chunked(c), _) => c.decoded,
            (_, BodyFraming::ContentLength(n)) => n,
            (_, BodyFraming::UntilClose) => p.until_close_len,
            _ => 0,
        };
        let (body, body_complete) = match p.kept {
            Some(k) => k.finish(),
            // Nothing asked for: complete only when there was nothing to keep.
            None => (Bytes::new(), body_len == 0),
        };
        cx.responses.emit();
        cx.out.push(HttpEvent::Response(CapturedResponse {
            flow: cx.flow,
            request_id,
            status: p.status,
            minor_version: p.minor_version,
            head: p.head,
            framing: p.framing,
            body_len,
            body,
            body_complete,
            first_ts_ns: self.first_ts_ns,
            last_ts_ns,
            request_last_ts_ns,
        }));
    }

    fn fail(&mut self, e: HttpError, cx: &mut Cx<'_>) -> Step {
        if self.counted_in_progress() {
            cx.responses.drop_started(e.reason());
        }
        cx.early_out_of_step(e.reason());
        self.reset(State::Unsynced(e.reason()));
        Step::Stop
    }

    fn reset(&mut self, state: State) {
        self.state = state;
        self.progress = None;
        self.buf = BytesMut::new();
        self.in_interim = false;
        if matches!(state, State::Unsynced(_) | State::Closed(_)) {
            self.aligned = false;
        }
    }

    fn close_quiet(&mut self, reason: DropReason) {
        self.reset(State::Closed(reason));
    }

    /// See [`super::RequestAssembler::hole`].
    pub fn hole(&mut self, next_starts: bool, cx: &mut Cx<'_>) -> bool {
        if self.synced() {
            // An answer not seen: no proof of step.
            let skip = self.state == State::Boundary && next_starts;
            cx.early_out_of_step(if skip { DropReason::Refused } else { DropReason::Gap });
        }
        match self.state {
            State::Boundary if next_starts => {
                self.reset(State::Unsynced(DropReason::MidstreamSkip));
                true
            }
            State::Boundary => {
                self.reset(State::Unsynced(DropReason::Gap));
                false
            }
            State::Head | State::Body => {
                if self.counted_in_progress() {
                    cx.responses.drop_started(DropReason::Gap);
                }
                self.reset(State::Unsynced(DropReason::Gap));
                false
            }
            State::Unsynced(_) | State::Closed(_) => false,
        }
    }

    pub fn truncated(&mut self, cx: &mut Cx<'_>) -> DropReason {
        let r = DropReason::TruncatedCapture;
        if let State::Closed(reason) = self.state {
            return reason;
        }
        cx.early_out_of_step(r);
        if self.counted_in_progress() {
            cx.responses.drop_started(r);
        }
        self.reset(State::Unsynced(r));
        r
    }

    /// The server closed its side (FIN in order): an until-close body ends here.
    pub fn fin(&mut self, last_ts_ns: u64, cx: &mut Cx<'_>) {
        if self.state == State::Body && self.progress.as_ref().is_some_and(|p| p.framing == BodyFraming::UntilClose) {
            self.finish(last_ts_ns, cx);
        }
        self.end(DropReason::Incomplete, cx);
    }

    /// The stream ends without a clean close (RST, eviction, timeout, FIN mid-message).
    pub fn end(&mut self, reason: DropReason, cx: &mut Cx<'_>) {
        if self.counted_in_progress() {
            cx.responses.drop_started(reason);
        }
        if self.state == State::Head {
            // An answer began that nothing can pair any more: not a clean end.
            cx.early_out_of_step(DropReason::Refused);
        }
        self.reset(State::Closed(DropReason::Duplicate));
    }

    pub fn close(&mut self, reason: DropReason, cx: &mut Cx<'_>) {
        if self.counted_in_progress() {
            cx.responses.drop_started(reason);
        }
        self.reset(State::Closed(reason));
    }
}
