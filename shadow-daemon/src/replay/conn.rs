//! Connections to one shadow target: a bounded keep-alive pool, connecting with a timeout, and
//! one request/response exchange on a connection.

use std::{
    io,
    sync::{Mutex, PoisonError},
    time::Duration,
};

use prometheus_client::metrics::gauge::Gauge;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    time::Instant,
};

use super::{
    ReplayError,
    controls::ShadowTarget,
    wire::{BodyDecoder, parse_head},
};
use crate::metrics::ConnectionMetrics;

/// An idle connection older than this is closed rather than reused: below the keep-alive timeout
/// of common servers (gunicorn 2 s aside, Node.js 5 s, nginx 75 s), so a reused connection is
/// rarely one the server is closing at that very moment.
pub(crate) const IDLE_TIMEOUT: Duration = Duration::from_secs(4);
const READ_CHUNK: usize = 16 * 1024;
/// 1xx responses tolerated before the final one.
const MAX_INTERIM: usize = 8;

/// One open connection to the shadow.
pub(crate) struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    idle_since: Instant,
    pub reused: bool,
    _open: OpenGuard,
}

/// Keeps `shadow_replay_connections` equal to the connections that exist, however they end.
struct OpenGuard(Gauge);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl Conn {
    /// The peer closed, sent something unasked, or the socket failed: a connection that cannot
    /// carry a request. Non-blocking.
    fn looks_dead(&self) -> bool {
        let mut probe = [0u8; 1];
        match self.stream.try_read(&mut probe) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => false,
            Ok(_) | Err(_) => true,
        }
    }
}

/// Idle keep-alive connections of one target, at most `max_idle`. The number of connections in
/// use is bounded by the lane's concurrency permits, and a new one is only opened when no idle
/// one is available, so the total stays within the concurrency cap.
pub(crate) struct Pool {
    idle: Mutex<Vec<Conn>>,
    max_idle: usize,
}

impl Pool {
    pub fn new(max_idle: usize) -> Self {
        Self { idle: Mutex::new(Vec::with_capacity(max_idle.min(1024))), max_idle }
    }

    /// The most recently used live connection, if any (LIFO keeps the warm ones warm and lets the
    /// rest age out).
    pub fn take(&self) -> Option<Conn> {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        while let Some(mut c) = idle.pop() {
            if now.saturating_duration_since(c.idle_since) < IDLE_TIMEOUT && !c.looks_dead() {
                c.reused = true;
                return Some(c);
            }
        }
        None
    }

    /// `idle_since`: when the connection's last response was complete.
    pub fn put(&self, mut conn: Conn, idle_since: Instant) {
        conn.idle_since = idle_since;
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        if idle.len() < self.max_idle {
            idle.push(conn);
        }
    }

    /// Close connections idle for too long, so they do not sit half-closed until the next request.
    pub fn prune(&self) {
        let now = Instant::now();
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        idle.retain(|c| now.saturating_duration_since(c.idle_since) < IDLE_TIMEOUT);
    }
}

/// Resolve the target (names are resolved at every connect, so DNS changes are followed) and
/// connect to the first address that accepts, all within `timeout`.
pub(crate) async fn connect(
    target: &ShadowTarget,
    timeout: Duration,
    metrics: &ConnectionMetrics,
) -> Result<Conn, ReplayError> {
    let attempt = async {
        let addrs: Vec<_> = tokio::net::lookup_host((target.host.as_str(), target.port))
            .await
            .map_err(|source| ReplayError::Resolve { target: target.to_string(), source })?
            .collect();
        let mut last = None;
        for addr in addrs {
            match TcpStream::connect(addr).await {
                Ok(s) => return Ok(s),
                Err(e) => last = Some(e),
            }
        }
        Err(match last {
            Some(source) => ReplayError::Connect { target: target.to_string(), source },
            None => ReplayError::NoAddress { target: target.to_string() },
        })
    };
    let stream = tokio::time::timeout(timeout, attempt)
        .await
        .map_err(|_| ReplayError::ConnectTimeout { target: target.to_string(), timeout })??;
    // Requests are written whole; Nagle would only add latency to the measurement.
    let _ = stream.set_nodelay(true);
    metrics.opened.inc();
    metrics.open.inc();
    Ok(Conn {
        stream,
        buf: Vec::with_capacity(READ_CHUNK),
        idle_since: Instant::now(),
        reused: false,
        _open: OpenGuard(metrics.open.clone()),
    })
}

/// A complete response.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Exchange {
    pub status: u16,
    /// Request written to the final response head parsed.
    pub first_byte: Duration,
    /// Request written to the last body byte read.
    pub complete: Duration,
    /// The connection may carry another request.
    pub reusable: bool,
    /// When the response was complete (`complete` after the request was written).
    pub done_at: Instant,
}

/// A failed exchange, and whether the shadow can have seen nothing of a response yet (the only
/// case where sending again on a fresh connection is safe for an idempotent request).
#[derive(Debug)]
pub(crate) struct Failed {
    pub error: ReplayError,
    pub nothing_received: bool,
}

/// Write the request, read the response to its end by its framing, discard it. Not bounded in
/// time here: the caller wraps it in the request timeout.
pub(crate) async fn exchange(
    conn: &mut Conn,
    wire: &[u8],
    method: &[u8],
    id: u64,
    target: &ShadowTarget,
) -> Result<Exchange, Failed> {
    let fail = |error: ReplayError, nothing_received: bool| Failed { error, nothing_received };
    conn.stream
        .write_all(wire)
        .await
        .map_err(|source| fail(ReplayError::Write { id, target: target.to_string(), source }, true))?;
    let sent = Instant::now();
    conn.buf.clear();

    let mut interim = 0;
    let head = loop {
        match parse_head(&conn.buf, method) {
            Ok(Some(h)) if h.is_interim() => {
                interim += 1;
                if interim > MAX_INTERIM {
                    return Err(fail(
                        ReplayError::BadResponse { id, target: target.to_string(), what: "too many 1xx responses" },
                        false,
                    ));
                }
                conn.buf.drain(..h.len);
                continue;
            }
            Ok(Some(h)) => break h,
            Ok(None) => {}
            Err(what) => return Err(fail(ReplayError::BadResponse { id, target: target.to_string(), what }, false)),
        }
        // parse_head refuses a partial head past MAX_RESPONSE_HEAD, so this stays bounded.
        let before = conn.buf.len();
        conn.buf.reserve(READ_CHUNK);
        match conn.stream.read_buf(&mut conn.buf).await {
            Ok(0) => {
                let nothing = before == 0 && interim == 0;
                return Err(fail(ReplayError::Closed { id, target: target.to_string() }, nothing));
            }
            Ok(_) => {}
            Err(source) => {
                let nothing = before == 0 && interim == 0;
                return Err(fail(ReplayError::Read { id, target: target.to_string(), source }, nothing));
            }
        }
    };
    let head_at = Instant::now();
    let first_byte = head_at.saturating_duration_since(sent);

    let mut body = BodyDecoder::new(head.body);
    let mut leftover = false;
    let after_head = conn.buf.len() - head.len;
    if after_head > 0 {
        let used = body
            .feed(&conn.buf[head.len..])
            .map_err(|what| fail(ReplayError::BadResponse { id, target: target.to_string(), what }, false))?;
        leftover = used < after_head;
    }
    let mut read_body = false;
    while !body.is_done() {
        read_body = true;
        conn.buf.clear();
        conn.buf.reserve(READ_CHUNK);
        match conn.stream.read_buf(&mut conn.buf).await {
            Ok(0) => {
                if body.finish_at_eof() {
                    break;
                }
                return Err(fail(ReplayError::Closed { id, target: target.to_string() }, false));
            }
            Ok(n) => {
                let used = body
                    .feed(&conn.buf[..n])
                    .map_err(|what| fail(ReplayError::BadResponse { id, target: target.to_string(), what }, false))?;
                leftover = used < n;
            }
            Err(source) => return Err(fail(ReplayError::Read { id, target: target.to_string(), source }, false)),
        }
    }
    // A body that came with the head was complete when the head was read: no second clock read.
    let done_at = if read_body { Instant::now() } else { head_at };
    // Bytes after the response were not asked for: the connection's state is unknown.
    let reusable = head.keep_alive && !leftover;
    if conn.buf.capacity() > 4 * READ_CHUNK {
        conn.buf = Vec::with_capacity(READ_CHUNK);
    }
    Ok(Exchange {
        status: head.status,
        first_byte,
        complete: done_at.saturating_duration_since(sent),
        reusable,
        done_at,
    })
}
