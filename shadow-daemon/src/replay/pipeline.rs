//! Pipelines: several requests to one target written in one write on one connection, their
//! responses read in order (HTTP/1.1 pipelining, RFC 9112 section 9.3.2).
//!
//! Why: on a busy node the replay's cost is per write and per read, not per byte (a syscall, a
//! pass through the TCP stack, a wake-up of the shadow, another when its answer comes). Requests
//! that are waiting in a lane's queue when a replay slot frees are taken together, up to the
//! rule's `pipeline` depth, so under load one write and a few reads carry many requests; at a low
//! rate the queue holds one request at a time and nothing changes.
//!
//! What is kept:
//! - Only idempotent requests that keep the connection open are pipelined (RFC 9112: a client
//!   does not pipeline after a non-idempotent method); any other request goes alone, as before.
//! - Latency: a server answers a pipeline in order, so a response behind another would include
//!   the time the shadow spent on the ones before it. Each response is timed from when the shadow
//!   could start on it: the kernel's transmit time of the write, or the kernel's receive time of
//!   the end of the response before it, whichever is later (`conn::Since::after`). Every response
//!   of a pipeline is timed, each for its own request.
//! - Every request settles once, and reaches the shadow at most once. When a connection ends
//!   with requests of its pipeline unanswered (the shadow closed it, reset it, or answered one of
//!   them with something that is not a response), a request is written again on another
//!   connection only if the shadow provably never received it: nothing of its response was read
//!   and none of its bytes were acknowledged by the shadow's TCP (TCP_INFO's bytes acknowledged,
//!   which a reset or close leaves in place). That is the case well-kept clients retry: a
//!   kept-alive connection the server closed while it was idle. Every request the shadow may have
//!   read fails once, with what ended the connection (`closed`, `reset`, `bad_response`), and is
//!   never written again, whatever the shadow does. A response to HEAD (or a 204, 304) followed by
//!   bytes that are not a response carries a body it must not have: it is the bad response, not
//!   the next one, and the connection is closed. A turn that settles nothing (the connection
//!   failed before the shadow took any of it) gets one more connection per pipeline, so a shadow
//!   refusing everything is not retried in a loop. A request that times out takes the ones
//!   behind it (written at the same moment, unanswered as long).
//! - The request timeout runs for each response from the end of the one before it (from the
//!   write for the first).

use std::pin::Pin;

use tokio::time::{Instant, Sleep};

// The `pipeline` control's depths live with the other controls' defaults; named here too, where
// the kernel tests and the bench find them.
pub use super::controls::{DEFAULT_PIPELINE, OPT_IN_PIPELINE};
use super::{
    ReplayError,
    conn::{Answering, Conn, Exchange, Failed, Pool, connect, read_response},
    controls::ShadowTarget,
};
use crate::{message::KeepSpec, metrics::Metrics};

/// One request of a pipeline: what its response answers, where its bytes end in the pipeline's
/// buffer, and whether it may be written again (idempotent).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Part<'a> {
    pub id: u64,
    pub method: &'a [u8],
    pub end: usize,
    pub idempotent: bool,
    /// The request keeps the connection open (else the shadow closes it after answering).
    pub keep_alive: bool,
}

/// Methods whose requests may be sent again (RFC 9110 section 9.2.2).
pub(crate) fn idempotent(method: &[u8]) -> bool {
    matches!(method, b"GET" | b"HEAD" | b"OPTIONS" | b"TRACE" | b"PUT" | b"DELETE")
}

/// A pipeline's parts, one (the default, no pipelining) held without an allocation.
pub(crate) type Parts<'a> = smallvec::SmallVec<[Part<'a>; 1]>;
/// One outcome per part, in order.
pub(crate) type Outcomes = smallvec::SmallVec<[Result<Exchange, ReplayError>; 1]>;

/// How one pipeline is sent: where, within what time, and what to keep of the responses.
pub(crate) struct Route<'a> {
    pub target: &'a ShadowTarget,
    pub pool: &'a Pool,
    pub connect_timeout: std::time::Duration,
    pub request_timeout: std::time::Duration,
    pub keep: Option<&'a KeepSpec>,
    pub max_body: u64,
}

/// Send `parts` (their bytes concatenated in `wire`, in order) and read their responses: one
/// outcome per part, in order. The caller pipelines only idempotent requests that keep the
/// connection open; if any part is not idempotent, nothing is ever written twice.
///
/// Exactly once: when a connection ends with parts unanswered, a part is written again (on
/// another connection) only if the shadow provably never received it: nothing of its response
/// was read and none of its bytes were acknowledged by the shadow's TCP ([`Conn::acked`]). A
/// part the shadow may have received fails once, with what ended the connection, whatever the
/// shadow does next. A turn that settles nothing (a kept-alive connection the shadow had closed)
/// is tried once more per pipeline, so a shadow refusing everything costs two connections, not
/// a loop.
pub(crate) async fn send(route: &Route<'_>, wire: &[u8], parts: &[Part<'_>], metrics: &Metrics) -> Outcomes {
    let target = route.target;
    let timeout = route.request_timeout;
    let resendable = parts.iter().all(|p| p.idempotent);
    let begins = |k: usize| if k == 0 { 0 } else { parts[k - 1].end };
    let mut out = Outcomes::with_capacity(parts.len());
    // A turn that settled nothing has been tried again already.
    let mut retried = false;
    while out.len() < parts.len() {
        let from = out.len();
        let start = begins(from);
        let mut conn = match route.pool.take() {
            Some(c) => c,
            None => match connect(target, route.connect_timeout, &metrics.connections).await {
                Ok(c) => c,
                Err(e) => {
                    fail_rest(&mut out, parts, e);
                    break;
                }
            },
        };
        let reused = conn.reused;
        // Where this turn's bytes begin in the connection's request stream.
        let base = conn.sent();
        let sleep = tokio::time::sleep_until(Instant::now() + timeout);
        tokio::pin!(sleep);
        let tail = &wire[start..];
        let written = tokio::select! {
            biased;
            r = conn.write_all(tail) => r.map_err(|source| {
                ReplayError::Write { id: parts[from].id, target: target.to_string(), source }
            }),
            () = &mut sleep => Err(ReplayError::Timeout { id: parts[from].id, target: target.to_string(), timeout }),
        };
        if written.is_ok() {
            count_write(metrics, parts.len() - from, from > 0 || retried, reused, tail.len());
        }
        let ended = match written {
            Err(e @ ReplayError::Timeout { .. }) => {
                fail_rest(&mut out, parts, e);
                Turn::Settled { idle_since: None }
            }
            Err(e) => Turn::Broken { at: from, error: e, begun: false },
            Ok(()) => read_turn(&mut conn, route, parts, &mut out, sleep.as_mut()).await,
        };
        let (at, error, begun) = match ended {
            Turn::Settled { idle_since } => {
                if let Some(at) = idle_since {
                    route.pool.put(conn, at);
                }
                break;
            }
            Turn::Broken { at, error, begun } => (at, error, begun),
        };
        let acked = conn.acked();
        drop(conn);
        let resume = first_never_received(parts, Received { at, begun, acked, base, start });
        for p in &parts[at..resume] {
            out.push(Err(error.again(p.id)));
        }
        if resume == parts.len() {
            break;
        }
        if !resendable || (resume == from && retried) {
            fail_rest(&mut out, parts, error.again(parts[resume].id));
            break;
        }
        retried |= resume == from;
    }
    debug_assert_eq!(out.len(), parts.len(), "every part settled once");
    out
}

/// How one turn (a connection's write and its reads) ended.
enum Turn {
    /// Every part is settled; `idle_since`: the connection may carry another request, idle
    /// since then.
    Settled { idle_since: Option<Instant> },
    /// Part `at` is the first unsettled one; `error`: what the parts the shadow had fail with;
    /// `begun`: that part's response had begun.
    Broken { at: usize, error: ReplayError, begun: bool },
}

/// A turn's write of the parts from `out.len()` on, counted: `parts_written` requests, of
/// which every one is a retry when `again` (a turn before had written them), pipelined behind
/// the first, on a `reused` connection or not.
fn count_write(metrics: &Metrics, parts_written: usize, again: bool, reused: bool, bytes: usize) {
    let c = &metrics.connections;
    if again {
        c.retries.inc_by(parts_written as u64);
    }
    c.sent_bytes.inc_by(bytes as u64);
    c.writes.inc();
    let behind = (parts_written - 1) as u64;
    c.pipelined.inc_by(behind);
    c.reused.inc_by(behind + u64::from(reused));
}

/// Read the responses to the parts written in this turn (from `out.len()` on), each within the
/// request timeout of the one before (`sleep`, reset after each), settling them into `out`.
async fn read_turn(
    conn: &mut Conn,
    route: &Route<'_>,
    parts: &[Part<'_>],
    out: &mut Outcomes,
    mut sleep: Pin<&mut Sleep>,
) -> Turn {
    let (target, timeout) = (route.target, route.request_timeout);
    let from = out.len();
    let timed_out = |id| ReplayError::Timeout { id, target: target.to_string(), timeout };
    let written_at = conn.since_write();
    let mut since = written_at;
    for (j, part) in parts.iter().enumerate().skip(from) {
        let answering = Answering { method: part.method, id: part.id };
        let read = tokio::select! {
            biased;
            r = read_response(conn, answering, target, route.keep, route.max_body, since) => r,
            () = &mut sleep => Err(Failed { error: timed_out(part.id), nothing_received: false }),
        };
        match read {
            Ok(x) => {
                since = written_at.after(&x);
                let open = x.reusable && part.keep_alive;
                let (done_at, no_body) = (x.done_at, x.no_body);
                out.push(Ok(x));
                if no_body && conn.pending() > 0 && !conn.pending_starts_response() {
                    // Bytes after a response that has no body (HEAD, 204, 304) that are not a
                    // response: a body the shadow sent there, never the next response. The
                    // connection is done.
                    return Turn::Broken { at: j + 1, error: blame_body(out, part.id, target), begun: false };
                }
                if j + 1 == parts.len() {
                    // Bytes past the last response were not asked for: the connection's state
                    // is unknown.
                    let idle = open && conn.pending() == 0;
                    return Turn::Settled { idle_since: idle.then_some(done_at) };
                }
                if !open {
                    // The shadow closes after this response.
                    let error = ReplayError::Closed { id: parts[j + 1].id, target: target.to_string() };
                    return Turn::Broken { at: j + 1, error, begun: false };
                }
                sleep.as_mut().reset(done_at + timeout);
            }
            Err(f) if matches!(f.error, ReplayError::Timeout { .. }) => {
                // The ones behind it were written at the same time and are unanswered as long.
                fail_rest(out, parts, f.error);
                return Turn::Settled { idle_since: None };
            }
            Err(f) => {
                let after_no_body = j > from && matches!(out.last(), Some(Ok(x)) if x.no_body);
                let error = if matches!(f.error, ReplayError::BadResponse { .. }) && after_no_body {
                    // What follows a response without a body does not parse: the body the
                    // shadow sent there (arrived a read later), not this response.
                    blame_body(out, parts[j - 1].id, target).again(part.id)
                } else {
                    f.error
                };
                return Turn::Broken { at: j, error, begun: !f.nothing_received };
            }
        }
    }
    Turn::Settled { idle_since: None }
}

/// What a connection that ended part way through a pipeline had of it.
#[derive(Clone, Copy, Debug)]
struct Received {
    /// The first part not settled.
    at: usize,
    /// Some of that part's response was read.
    begun: bool,
    /// Request bytes of the connection the shadow's TCP acknowledged (None: not known).
    acked: Option<u64>,
    /// Where this turn's write began in the connection's request stream...
    base: u64,
    /// ...and in the pipeline's buffer.
    start: usize,
}

/// The first part from `r.at` on that the shadow provably never received (`parts.len()` if
/// none): none of its response was read and its first byte lies past what the shadow's TCP
/// acknowledged. Acknowledgment is a prefix of the stream, so every part after it was never
/// received either, and every part before it may have been.
fn first_never_received(parts: &[Part<'_>], r: Received) -> usize {
    let Some(acked) = r.acked else { return parts.len() };
    let begins = |k: usize| if k == 0 { 0 } else { parts[k - 1].end };
    (r.at..parts.len())
        .find(|&k| !(k == r.at && r.begun) && acked <= r.base + (begins(k) - r.start) as u64)
        .unwrap_or(parts.len())
}

/// The response just read (the last in `out`, to request `id`) had no body, and bytes that are
/// not a response followed it: the shadow sent a body there. It fails as a bad response;
/// returns that error, for the parts behind it.
fn blame_body(out: &mut [Result<Exchange, ReplayError>], id: u64, target: &ShadowTarget) -> ReplayError {
    let status = match out.last() {
        Some(Ok(x)) => x.status,
        _ => 0,
    };
    let e = ReplayError::BodyWithoutBody { id, target: target.to_string(), status };
    if let Some(last) = out.last_mut() {
        *last = Err(e.again(id));
    }
    e
}

/// Settle every part not settled yet: the first with `e`, the others with the same failure.
fn fail_rest(out: &mut Outcomes, parts: &[Part<'_>], e: ReplayError) {
    let Some((_, others)) = parts[out.len()..].split_first() else { return };
    let copies: Vec<ReplayError> = others.iter().map(|p| e.again(p.id)).collect();
    out.push(Err(e));
    out.extend(copies.into_iter().map(Err));
}

impl ReplayError {
    /// The same failure, for another request of the pipeline it ended.
    pub(crate) fn again(&self, id: u64) -> Self {
        let io = |e: &std::io::Error| std::io::Error::new(e.kind(), e.to_string());
        match self {
            Self::NoRuntime => Self::NoRuntime,
            Self::DuplicateService { service, first, second } => {
                Self::DuplicateService { service: service.clone(), first: *first, second: *second }
            }
            Self::Resolve { target, source } => Self::Resolve { target: target.clone(), source: io(source) },
            Self::NoAddress { target } => Self::NoAddress { target: target.clone() },
            Self::Connect { target, source } => Self::Connect { target: target.clone(), source: io(source) },
            Self::ConnectTimeout { target, timeout } => {
                Self::ConnectTimeout { target: target.clone(), timeout: *timeout }
            }
            Self::Write { target, source, .. } => Self::Write { id, target: target.clone(), source: io(source) },
            Self::Read { target, source, .. } => Self::Read { id, target: target.clone(), source: io(source) },
            Self::Closed { target, .. } => Self::Closed { id, target: target.clone() },
            Self::BadResponse { target, what, .. } => Self::BadResponse { id, target: target.clone(), what: *what },
            Self::TooManyInterim { target, .. } => Self::TooManyInterim { id, target: target.clone() },
            Self::BodyWithoutBody { target, status, .. } => {
                Self::BodyWithoutBody { id, target: target.clone(), status: *status }
            }
            Self::Timeout { target, timeout, .. } => Self::Timeout { id, target: target.clone(), timeout: *timeout },
            Self::ResponseTooLarge { target, cap, .. } => {
                Self::ResponseTooLarge { id, target: target.clone(), cap: *cap }
            }
            Self::InvalidCapture { what, .. } => Self::InvalidCapture { id, what },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Three parts of 10, 20 and 30 bytes: they begin at 0, 10 and 30 of the buffer.
    fn parts() -> Vec<Part<'static>> {
        [10, 30, 60]
            .into_iter()
            .enumerate()
            .map(|(i, end)| Part { id: i as u64 + 1, method: b"GET", end, idempotent: true, keep_alive: true })
            .collect()
    }

    fn at(at: usize, begun: bool, acked: Option<u64>) -> usize {
        first_never_received(&parts(), Received { at, begun, acked, base: 0, start: 0 })
    }

    #[test]
    fn a_part_goes_again_only_past_what_the_shadow_acknowledged() {
        // Nothing acknowledged: every part from the first unsettled one was never received.
        assert_eq!(at(0, false, Some(0)), 0);
        // One byte of the first part acknowledged: the shadow may have it; the second not.
        assert_eq!(at(0, false, Some(1)), 1);
        // Exactly the first part acknowledged: the second begins where the ack ends.
        assert_eq!(at(0, false, Some(10)), 1);
        assert_eq!(at(0, false, Some(11)), 2);
        assert_eq!(at(0, false, Some(30)), 2);
        assert_eq!(at(0, false, Some(31)), 3);
        assert_eq!(at(0, false, Some(60)), 3, "all of it acknowledged: nothing goes again");
        // From a later part on.
        assert_eq!(at(1, false, Some(10)), 1);
        assert_eq!(at(2, false, Some(10)), 2);
    }

    #[test]
    fn a_part_whose_response_had_begun_never_goes_again() {
        // Its response began: the shadow had it, whatever the count says.
        assert_eq!(at(0, true, Some(0)), 1);
        assert_eq!(at(1, true, Some(10)), 2);
        // Only the part at the failure had its response begun.
        assert_eq!(at(1, true, Some(0)), 2);
    }

    #[test]
    fn unknown_acknowledgment_means_everything_was_received() {
        assert_eq!(at(0, false, None), 3);
        assert_eq!(at(2, false, None), 3);
    }

    #[test]
    fn offsets_count_from_the_turns_write_on_the_connection() {
        let p = parts();
        // The connection carried 100 bytes before this turn, which wrote from the second part (10)
        // on: the second part is bytes 100..120 of the connection, the third 120..150.
        let r = |acked| {
            first_never_received(&p, Received { at: 1, begun: false, acked: Some(acked), base: 100, start: 10 })
        };
        assert_eq!(r(100), 1);
        assert_eq!(r(101), 2);
        assert_eq!(r(120), 2);
        assert_eq!(r(121), 3);
    }
}
