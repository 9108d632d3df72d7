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
//! - Latency: a server answers a pipeline in order, so a response behind another includes the
//!   time the shadow spent on the ones before it. Only the first response read after a write is
//!   timed (its request was first in line); the ones behind it are compared and counted but not
//!   timed (`Exchange::timed`), so the latency histograms stay those of requests the shadow
//!   took up at once, a sample unbiased by load.
//! - Every request settles once. A connection the shadow closes after answering part of a
//!   pipeline (a keep-alive limit, `Connection: close`), or fails on one response, has the
//!   requests after it written again on another connection: they are idempotent and nothing of
//!   their responses was read. A connection that answered none of them (closed before any
//!   answer while kept alive, or failing the first response) gets the rest written again once per
//!   pipeline, as a single request gets one more try: a shadow failing everything receives each
//!   request at most twice. A request that times out takes the ones behind it (written at the
//!   same moment, unanswered as long).
//! - The request timeout runs for each response from the end of the one before it (from the
//!   write for the first).

use tokio::{io::AsyncWriteExt, time::Instant};

use super::{
    ReplayError,
    conn::{Answering, Exchange, Failed, Pool, Since, connect, read_response},
    controls::ShadowTarget,
};
use crate::{hub::KeepSpec, metrics::Metrics};

/// Default requests written together on one connection (the `pipeline` control).
pub const DEFAULT_PIPELINE: usize = 16;
/// Most requests written together on one connection.
pub const MAX_PIPELINE: usize = 64;

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
/// connection open; if any part is not idempotent, nothing is ever written twice (requests left
/// unanswered by a connection that ends fail as `Closed`).
pub(crate) async fn send(
    route: &Route<'_>,
    wire: &[u8],
    parts: &[Part<'_>],
    metrics: &Metrics,
) -> Vec<Result<Exchange, ReplayError>> {
    let target = route.target;
    let timeout = route.request_timeout;
    let resendable = parts.iter().all(|p| p.idempotent);
    let mut out: Vec<Result<Exchange, ReplayError>> = Vec::with_capacity(parts.len());
    // One more try for a request nothing was received for, on a kept-alive connection.
    let mut retried = false;
    while out.len() < parts.len() {
        let from = out.len();
        let start = if from == 0 { 0 } else { parts[from - 1].end };
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
        let sleep = tokio::time::sleep_until(Instant::now() + timeout);
        tokio::pin!(sleep);
        let timed_out = |id| Failed {
            error: ReplayError::Timeout { id, target: target.to_string(), timeout },
            nothing_received: false,
        };
        let tail = &wire[start..];
        let written = tokio::select! {
            biased;
            r = conn.stream.write_all(tail) => r.map_err(|source| Failed {
                error: ReplayError::Write { id: parts[from].id, target: target.to_string(), source },
                nothing_received: true,
            }),
            () = &mut sleep => Err(timed_out(parts[from].id)),
        };
        if written.is_ok() {
            let c = &metrics.connections;
            if from > 0 || retried {
                // Every turn after the first writes again what the one before had written.
                c.retries.inc_by((parts.len() - from) as u64);
            }
            c.sent_bytes.inc_by(tail.len() as u64);
            c.writes.inc();
            let behind = (parts.len() - from - 1) as u64;
            c.pipelined.inc_by(behind);
            c.reused.inc_by(behind + u64::from(reused));
        }
        let mut written = written.err();
        let since = Since::now();
        // Where the next turn (on another connection) starts; None: every part is settled.
        let mut next = None;
        for (j, part) in parts.iter().enumerate().skip(from) {
            let read = match written.take() {
                Some(f) => Err(f),
                None => {
                    let answering = Answering { method: part.method, id: part.id };
                    tokio::select! {
                        biased;
                        r = read_response(&mut conn, answering, target, route.keep, route.max_body, since) => r,
                        () = &mut sleep => Err(timed_out(part.id)),
                    }
                }
            };
            let last = j + 1 == parts.len();
            match read {
                Ok(mut x) => {
                    x.timed = j == from;
                    let open = x.reusable && part.keep_alive;
                    let done_at = x.done_at;
                    out.push(Ok(x));
                    if last {
                        // Bytes past the last response were not asked for: the connection's
                        // state is unknown.
                        if open && conn.pending() == 0 {
                            route.pool.put(conn, done_at);
                        }
                        break;
                    }
                    if !open {
                        next = resend_from(&mut out, parts, resendable, target);
                        break;
                    }
                    sleep.as_mut().reset(done_at + timeout);
                }
                Err(f) if matches!(f.error, ReplayError::Timeout { .. }) => {
                    // The ones behind it were written at the same time and are unanswered as long.
                    fail_rest(&mut out, parts, f.error);
                    break;
                }
                Err(f) if f.nothing_received && resendable && (j > from || (reused && !retried)) => {
                    // Closed after answering the ones before it (or, kept alive, before any
                    // answer): nothing of this response was read; written again on another
                    // connection.
                    retried |= j == from;
                    next = Some(j);
                    break;
                }
                Err(f) if f.nothing_received => {
                    fail_rest(&mut out, parts, f.error);
                    break;
                }
                Err(f) => {
                    // This response failed part way: the connection is done. The requests after
                    // it (nothing of theirs was read) are written again on another connection if
                    // this one answered some (the failure was this response's), else once: a
                    // shadow failing every response gets each request at most twice.
                    let answered = j > from;
                    if last || !resendable || (retried && !answered) {
                        fail_rest(&mut out, parts, f.error);
                    } else {
                        retried |= !answered;
                        out.push(Err(f.error));
                        next = Some(j + 1);
                    }
                    break;
                }
            }
        }
        match next {
            Some(j) => debug_assert_eq!(j, out.len(), "a turn resumes at the first unsettled part"),
            None => break,
        }
    }
    debug_assert_eq!(out.len(), parts.len(), "every part settled once");
    out
}

/// The connection ended before the parts after those settled were answered: the next turn's
/// first part if they may be written again, else they fail (`Closed`).
fn resend_from(
    out: &mut Vec<Result<Exchange, ReplayError>>,
    parts: &[Part<'_>],
    resendable: bool,
    target: &ShadowTarget,
) -> Option<usize> {
    let next = out.len();
    if resendable {
        return Some(next);
    }
    let e = ReplayError::Closed { id: parts[next].id, target: target.to_string() };
    fail_rest(out, parts, e);
    None
}

/// Settle every part not settled yet: the first with `e`, the others with the same failure.
fn fail_rest(out: &mut Vec<Result<Exchange, ReplayError>>, parts: &[Part<'_>], e: ReplayError) {
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
            Self::Timeout { target, timeout, .. } => Self::Timeout { id, target: target.clone(), timeout: *timeout },
            Self::ResponseTooLarge { target, cap, .. } => {
                Self::ResponseTooLarge { id, target: target.clone(), cap: *cap }
            }
            Self::InvalidCapture { what, .. } => Self::InvalidCapture { id, what },
        }
    }
}
