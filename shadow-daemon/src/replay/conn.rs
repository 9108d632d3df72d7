//! Connections to one shadow target: a bounded keep-alive pool, connecting with a timeout, and
//! reading responses on a connection. Requests are written in one write per pipeline (see
//! [`super::pipeline`]); each response is read by its framing, and what follows it stays buffered
//! as the start of the next one.

use std::{
    io,
    os::fd::AsFd,
    sync::{Mutex, PoisonError},
    time::{Duration, SystemTime},
};

use prometheus_client::metrics::gauge::Gauge;
use tokio::{io::Interest, net::TcpStream, time::Instant};

use super::{ReplayError, controls::ShadowTarget};
use crate::{
    http::{BodyDecoder, KeptBody, Limits, RequestKind, ResponseHead, parse_response_head, response_fields},
    message::{BodyFraming, KeepSpec, ResponseSample},
    metrics::ConnectionMetrics,
    sys::{socket, timestamp},
};

/// An idle connection older than this is closed rather than reused: below the keep-alive timeout
/// of common servers (gunicorn 2 s aside, Node.js 5 s, nginx 75 s), so a reused connection is
/// rarely one the server is closing at that very moment.
pub(crate) const IDLE_TIMEOUT: Duration = Duration::from_secs(4);
const READ_CHUNK: usize = 16 * 1024;
/// Bounds on the shadow's responses: the same as on the primary's (64 KiB heads and trailers,
/// 100 fields), so the read buffer stays bounded whatever the shadow sends.
const RESPONSE_LIMITS: Limits =
    Limits { max_header_bytes: 64 * 1024, max_headers: 100, max_body_bytes: u64::MAX, keep_response_body: 0 };
/// 1xx responses tolerated before the final one.
const MAX_INTERIM: usize = 8;

/// One open connection to the shadow.
pub(crate) struct Conn {
    pub(super) stream: TcpStream,
    /// Received and not yet consumed: `buf[start..]`.
    buf: Vec<u8>,
    start: usize,
    idle_since: Instant,
    pub reused: bool,
    /// Request bytes written on this connection (see [`Conn::acked`]).
    sent: u64,
    /// The kernel reports when each write's last byte left (see [`Conn::since_write`]).
    tx_stamps: bool,
    /// When the last write's last byte left, by the kernel's clock (its transmit timestamp).
    sent_at: Option<SystemTime>,
    /// The last read took all the socket held (see [`Conn::forget_drained_readiness`]).
    drained: bool,
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
    /// Read what the socket holds into `buf`'s spare capacity (at least [`READ_CHUNK`]), with
    /// the time the kernel received that data (SO_TIMESTAMPNS) when the socket reports one. The
    /// shadow is then timed as the primary is, by the kernel, not by when this task was next
    /// scheduled: on a busy node that wake-up alone can add milliseconds.
    async fn read_timed(&mut self) -> io::Result<(usize, Option<SystemTime>)> {
        // What was consumed goes first (a partial head moves to the front: at most the head
        // limit), so the buffer holds one response's head at most plus one read.
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.reserve(READ_CHUNK);
        let spare = self.buf.capacity() - self.buf.len();
        let Self { stream, buf, .. } = self;
        let fd = stream.as_fd();
        let r = stream.async_io(Interest::READABLE, || timestamp::recv_timed(fd, buf)).await;
        // A read that did not fill the room it had took everything the socket held.
        self.drained = matches!(r, Ok((n, _)) if n < spare);
        r
    }

    /// Before the connection waits in the pool: if the last read emptied the socket, forget
    /// the readiness it left behind (tokio keeps a socket "readable" until a read fails with
    /// `WouldBlock`), so that [`Conn::looks_dead`] asks the socket only when something arrived
    /// since: no `recv` that fails per request. Not when the reactor has seen the peer close or
    /// an error: a read that returned data leaves the end of the stream unread, and that event
    /// does not come twice. Only on a current-thread runtime, where the reactor cannot have
    /// marked anything between that read and now (the same poll of the same task); elsewhere the
    /// failing `recv` stays.
    fn forget_drained_readiness(&mut self, single_thread: bool) {
        use futures_util::FutureExt;
        if self.drained && single_thread && self.pending() == 0 {
            let only_data = match self.stream.ready(Interest::READABLE).now_or_never() {
                Some(Ok(r)) => !r.is_read_closed() && !r.is_error(),
                Some(Err(_)) => false,
                None => true,
            };
            if only_data {
                let _ = self.stream.try_io(Interest::READABLE, || Err::<(), _>(io::ErrorKind::WouldBlock.into()));
            }
        }
        self.drained = false;
    }

    /// Bytes received past the responses read so far.
    pub(crate) fn pending(&self) -> usize {
        self.buf.len() - self.start
    }

    /// What is buffered past the last response could begin one (a prefix of `HTTP/`): bytes
    /// that cannot are not a response at all.
    pub(crate) fn pending_starts_response(&self) -> bool {
        let rest = &self.buf[self.start..];
        let n = rest.len().min(5);
        rest[..n] == b"HTTP/"[..n]
    }

    /// Write all of `wire`; [`Conn::sent`] counts it once it is written, and the kernel's
    /// transmit time of its last byte is taken (see [`Conn::since_write`]).
    pub(crate) async fn write_all(&mut self, wire: &[u8]) -> io::Result<()> {
        use tokio::io::AsyncWriteExt;
        self.stream.write_all(wire).await?;
        self.sent += wire.len() as u64;
        self.sent_at = None;
        if self.tx_stamps && !wire.is_empty() {
            // The key of a TCP transmit timestamp is the offset of the send's last byte.
            let key = (self.sent - 1) as u32;
            self.sent_at = timestamp::transmit_time(self.stream.as_fd(), key);
        }
        Ok(())
    }

    /// When the response to what was just written starts its clock: the kernel's transmit time
    /// of the request's last byte (SO_TIMESTAMPING, taken at the device as the capture programs
    /// see the primary's packets), so that the shadow is timed as the primary is, wire to wire,
    /// with nothing of the daemon's own scheduling in it. Without a transmit timestamp (an old
    /// kernel, or one not taken by the time the write returned), the time now.
    pub(crate) fn since_write(&self) -> Since {
        Since { at: Instant::now(), wall: self.sent_at.unwrap_or_else(SystemTime::now) }
    }

    /// Request bytes written whole on this connection so far.
    pub(crate) fn sent(&self) -> u64 {
        self.sent
    }

    /// Request bytes of this connection the shadow's TCP acknowledged (TCP_INFO
    /// `tcpi_bytes_acked`, less the SYN's one): the shadow's kernel had them, so its process may
    /// have read them. What lies beyond was provably never received, and only that may be sent
    /// again. It holds after a reset or close (the count stays with the socket); `None` if the
    /// kernel does not say, which the caller takes as "all received".
    pub(crate) fn acked(&self) -> Option<u64> {
        socket::bytes_acked(self.stream.as_fd())
    }

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
    /// The runtime is a current-thread one (see [`Conn::forget_drained_readiness`]), asked once.
    single_thread: bool,
}

impl Pool {
    /// Made on the runtime its connections are used on (the engine's, or a test's).
    pub(crate) fn new(max_idle: usize) -> Self {
        let single_thread = tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::CurrentThread);
        Self { idle: Mutex::new(Vec::with_capacity(max_idle.min(1024))), max_idle, single_thread }
    }

    /// The most recently used live connection, if any (LIFO keeps the warm ones warm and lets the
    /// rest age out).
    pub(crate) fn take(&self) -> Option<Conn> {
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
    pub(crate) fn put(&self, mut conn: Conn, idle_since: Instant) {
        conn.idle_since = idle_since;
        conn.forget_drained_readiness(self.single_thread);
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        if idle.len() < self.max_idle {
            idle.push(conn);
        }
    }

    /// Close connections idle for too long, so they do not sit half-closed until the next request.
    pub(crate) fn prune(&self) {
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
    // The kernel's receive time of the response (see `Conn::read_timed`); without it, the
    // response is timed when read.
    timestamp::enable_receive_timestamps(stream.as_fd());
    let tx_stamps = timestamp::enable_transmit_timestamps(stream.as_fd());
    metrics.opened.inc();
    metrics.open.inc();
    Ok(Conn {
        stream,
        buf: Vec::with_capacity(READ_CHUNK),
        start: 0,
        idle_since: Instant::now(),
        reused: false,
        sent: 0,
        tx_stamps,
        sent_at: None,
        drained: false,
        _open: OpenGuard(metrics.open.clone()),
    })
}

/// A complete response.
#[derive(Clone, Debug)]
pub(crate) struct Exchange {
    pub status: u16,
    /// With a [`KeepSpec`]: status, the named fields and the body's first bytes (latency unset).
    pub sample: Option<ResponseSample>,
    /// Request written to the final response head parsed.
    pub first_byte: Duration,
    /// Request written to the last body byte read.
    pub complete: Duration,
    /// The response lets the connection carry another request (its version, `Connection` and
    /// framing); whether bytes past it are expected is the caller's to know.
    pub reusable: bool,
    /// When the response was complete (`complete` after the request was written)...
    pub done_at: Instant,
    /// ...and by the kernel's clock, its last byte's receive time when known.
    pub done_wall: SystemTime,
    /// A response that never has a body (to HEAD, or a 204 or 304): bytes right after it can
    /// only be the next response.
    pub no_body: bool,
}

/// A failed exchange, and whether the shadow can have seen nothing of a response yet (the only
/// case where sending again on a fresh connection is safe for an idempotent request).
#[derive(Debug)]
pub(crate) struct Failed {
    pub error: ReplayError,
    pub nothing_received: bool,
}

/// When a response's clock starts: its request's write, or for a request written behind others
/// on the connection, the end of the response before it (see [`Since::after`]).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Since {
    pub at: Instant,
    pub wall: SystemTime,
}

impl Since {
    /// The clock of the next response of a pipeline: the shadow could start on its request
    /// once the request had arrived (the write, `self`) and the response before it, `prev`, was
    /// complete (a server answers a connection's requests in order), whichever came later.
    pub(crate) fn after(self, prev: &Exchange) -> Self {
        if prev.done_wall > self.wall { Self { at: prev.done_at, wall: prev.done_wall } } else { self }
    }
}

/// What one response answers: the request's method (for its framing) and id (for errors).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Answering<'a> {
    pub method: &'a [u8],
    pub id: u64,
}

/// Write `wire` (one request, or several of a pipeline) and read the response to the first;
/// bytes past that response make the connection not reusable. Tests' shorthand for
/// [`read_response`] after a write.
#[cfg(test)]
pub(crate) async fn exchange(
    conn: &mut Conn,
    wire: &[u8],
    method: &[u8],
    id: u64,
    target: &ShadowTarget,
    keep: Option<&KeepSpec>,
    max_body: u64,
) -> Result<Exchange, Failed> {
    use tokio::io::AsyncWriteExt;
    conn.stream.write_all(wire).await.map_err(|source| Failed {
        error: ReplayError::Write { id, target: target.to_string(), source },
        nothing_received: true,
    })?;
    let since = conn.since_write();
    let mut x = read_response(conn, Answering { method, id }, target, keep, max_body, since).await?;
    x.reusable &= conn.pending() == 0;
    Ok(x)
}

/// Read until the connection holds a final response head (interim 1xx heads are skipped, at most
/// [`MAX_INTERIM`]), and the kernel receive times of the first and last data read for it (see
/// `Conn::read_timed`; none for bytes that came with an earlier response: the read time is used).
async fn read_head(
    conn: &mut Conn,
    id: u64,
    target: &ShadowTarget,
) -> Result<(ResponseHead, Option<SystemTime>, Option<SystemTime>), Failed> {
    let fail = |error: ReplayError, nothing_received: bool| Failed { error, nothing_received };
    let (mut first_rx, mut last_rx) = (None, None);
    if conn.start == conn.buf.len() {
        conn.buf.clear();
        conn.start = 0;
    }
    let mut interim = 0;
    loop {
        match parse_response_head(&conn.buf[conn.start..], &RESPONSE_LIMITS) {
            Ok(Some(h)) if h.is_interim() => {
                interim += 1;
                if interim > MAX_INTERIM {
                    return Err(fail(ReplayError::TooManyInterim { id, target: target.to_string() }, false));
                }
                conn.start += h.head_len;
                continue;
            }
            Ok(Some(h)) => return Ok((h, first_rx, last_rx)),
            Ok(None) => {}
            Err(what) => return Err(fail(ReplayError::BadResponse { id, target: target.to_string(), what }, false)),
        }
        // parse_response_head refuses a partial head past the limit, so this stays bounded.
        let before = conn.pending();
        match conn.read_timed().await {
            Ok((0, _)) => {
                let nothing = before == 0 && interim == 0;
                return Err(fail(ReplayError::Closed { id, target: target.to_string() }, nothing));
            }
            Ok((_, ts)) => {
                first_rx = first_rx.or(ts);
                last_rx = ts;
            }
            Err(source) => {
                let nothing = before == 0 && interim == 0;
                return Err(fail(ReplayError::Read { id, target: target.to_string(), source }, nothing));
            }
        }
    }
}

/// Read the response to `req` by its framing, from what the connection holds and then the
/// socket; keep what `keep` asks for (never more than its body cap in memory), discard the rest.
/// Bytes past the response stay buffered (the next response of a pipeline). A body of more than
/// `max_body` bytes on the wire (a declared length, or what arrived) fails the exchange, and the
/// caller drops the connection: a shadow streaming forever costs at most that much per request.
/// Not bounded in time here: the caller bounds it by the request timeout.
pub(crate) async fn read_response(
    conn: &mut Conn,
    req: Answering<'_>,
    target: &ShadowTarget,
    keep: Option<&KeepSpec>,
    max_body: u64,
    since: Since,
) -> Result<Exchange, Failed> {
    let id = req.id;
    let fail = |error: ReplayError, nothing_received: bool| Failed { error, nothing_received };
    let kind = RequestKind::of_method(req.method);
    let bad = |what| fail(ReplayError::BadResponse { id, target: target.to_string(), what }, false);
    let (head, first_rx, mut last_rx) = read_head(conn, id, target).await?;
    let head_at = Instant::now();
    let first_byte = elapsed(since, first_rx, head_at);

    let too_large = || fail(ReplayError::ResponseTooLarge { id, target: target.to_string(), cap: max_body }, false);
    let framing = head.framing_for(kind);
    if matches!(framing, BodyFraming::ContentLength(n) if n > max_body) {
        return Err(too_large());
    }
    let mut body = BodyDecoder::new(framing);
    // Body bytes on the wire so far.
    let mut body_wire = 0u64;
    let head_end = conn.start + head.head_len;
    let headers = keep.map(|k| response_fields(&conn.buf[conn.start..head_end], &k.headers));
    conn.start = head_end;
    let mut kept = keep.map(|k| KeptBody::new(k.max_body));
    let mut advance = |body: &mut BodyDecoder, data: &[u8]| match kept.as_mut() {
        Some(k) => body.advance_with(data, &RESPONSE_LIMITS, |c| k.push(c)),
        None => body.advance(data, &RESPONSE_LIMITS),
    };
    if conn.pending() > 0 {
        let (used, _) = advance(&mut body, &conn.buf[conn.start..]).map_err(bad)?;
        conn.start += used;
        body_wire = used as u64;
    }
    let mut read_body = false;
    while !body.is_done() {
        if body_wire > max_body {
            return Err(too_large());
        }
        read_body = true;
        // The decoder took everything before it (it stops short only when done).
        conn.buf.clear();
        conn.start = 0;
        match conn.read_timed().await {
            Ok((0, _)) => {
                if body.finish_at_eof() {
                    break;
                }
                return Err(fail(ReplayError::Closed { id, target: target.to_string() }, false));
            }
            Ok((n, ts)) => {
                last_rx = ts.or(last_rx);
                let (used, _) = advance(&mut body, &conn.buf[..n]).map_err(bad)?;
                conn.start = used;
                body_wire += used as u64;
            }
            Err(source) => return Err(fail(ReplayError::Read { id, target: target.to_string(), source }, false)),
        }
    }
    if body_wire > max_body {
        return Err(too_large());
    }
    // A body that came with the head was complete when the head was read: no second clock read.
    let done_at = if read_body { Instant::now() } else { head_at };
    let reusable = head.reusable_after(kind);
    if conn.pending() == 0 && conn.buf.capacity() > 4 * READ_CHUNK {
        conn.buf = Vec::with_capacity(READ_CHUNK);
        conn.start = 0;
    }
    let sample = kept.map(|k| {
        let body_len = k.len;
        let (body, body_complete) = k.finish();
        ResponseSample {
            status: head.status,
            headers: headers.unwrap_or_default(),
            body,
            body_complete,
            body_len,
            latency: None,
        }
    });
    let complete = elapsed(since, last_rx, done_at);
    let done_wall = last_rx.unwrap_or_else(|| since.wall + complete);
    Ok(Exchange {
        status: head.status,
        sample,
        first_byte,
        complete: complete.max(first_byte),
        reusable,
        done_at,
        done_wall,
        no_body: kind == RequestKind::Head || matches!(head.status, 204 | 304),
    })
}

/// Ask for receive timestamps once, at start, on a socket kept for the process's life: the
/// kernel turns packet timestamping on for everyone a moment after the first socket asks (a
/// deferred static key), so the first shadow responses are then timed like the rest.
pub(crate) fn enable_receive_timestamps() {
    static KEEP: std::sync::OnceLock<Option<std::net::UdpSocket>> = std::sync::OnceLock::new();
    KEEP.get_or_init(|| {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").ok()?;
        timestamp::enable_receive_timestamps(s.as_fd()).then_some(s)
    });
}

/// From `since` to the kernel's receive time `rx` when known and in order (a stepped wall clock
/// falls back), else to `read_at`, when it was read.
fn elapsed(since: Since, rx: Option<SystemTime>, read_at: Instant) -> Duration {
    match rx.and_then(|at| at.duration_since(since.wall).ok()) {
        Some(d) => d,
        None => read_at.saturating_duration_since(since.at),
    }
}

#[cfg(test)]
mod tests {
    //! One framing, two uses: the same response bytes go to extraction (as the primary's answer
    //! on a captured connection) and to the replay client (as the shadow's answer on a socket),
    //! and the two must agree on whether the response is whole, and where it ends.

    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::TcpListener,
    };

    use super::*;
    use crate::{
        metrics::Metrics,
        reassembly::{
            Extractor,
            tests::support::{Conn as Tcp, feed, responses, small_cfg},
        },
    };

    /// What extraction made of `resp` answering `method`, the server closing after it: the
    /// status and de-chunked body length of the response emitted, or None if it was dropped.
    fn extracted(method: &str, resp: &[u8]) -> Option<(u16, u64)> {
        let mut ex = Extractor::new(small_cfg());
        let mut c = Tcp::new(false, 40100, 1, 1);
        let req = format!("{method} / HTTP/1.1\r\nHost: a\r\n\r\n");
        let segs = [c.client(req.as_bytes()), c.server(resp), c.server_fin()];
        let ev = feed(&mut ex, segs);
        responses(&ev).first().map(|r| (r.status, r.body_len))
    }

    /// What the replay client made of `resp` from a shadow that closes after writing it: the
    /// status and whether the connection would be reused, or the error.
    async fn replayed(method: &str, resp: &'static [u8]) -> Result<(u16, bool), ReplayError> {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut got = Vec::new();
            let mut buf = [0u8; 1024];
            while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                }
            }
            let _ = s.write_all(resp).await;
            let _ = s.shutdown().await;
        });
        let metrics = Metrics::default();
        let target = ShadowTarget { host: "127.0.0.1".into(), port };
        let mut conn = connect(&target, Duration::from_secs(2), &metrics.connections).await.unwrap();
        let req = format!("{method} / HTTP/1.1\r\nHost: a\r\n\r\n");
        let out = tokio::time::timeout(
            Duration::from_secs(5),
            exchange(&mut conn, req.as_bytes(), method.as_bytes(), 1, &target, None, u64::MAX),
        )
        .await
        .expect("the exchange ends by the framing or the close");
        server.await.unwrap();
        out.map(|x| (x.status, x.reusable)).map_err(|f| f.error)
    }

    type Case = (&'static str, &'static [u8], (u16, u64), bool);

    /// The sample the replay client keeps of one response (served twice on one connection, so
    /// the end of the first is found exactly even past the body cap).
    async fn kept_sample(resp: &'static [u8], keep: KeepSpec) -> (ResponseSample, ResponseSample) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            for _ in 0..2 {
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = s.write_all(resp).await;
            }
        });
        let metrics = Metrics::default();
        let target = ShadowTarget { host: "127.0.0.1".into(), port };
        let mut conn = connect(&target, Duration::from_secs(2), &metrics.connections).await.unwrap();
        let req = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
        let mut out = Vec::new();
        for _ in 0..2 {
            let x = tokio::time::timeout(
                Duration::from_secs(5),
                exchange(&mut conn, req, b"GET", 1, &target, Some(&keep), 1 << 20),
            )
            .await
            .expect("in time")
            .unwrap_or_else(|f| panic!("{}", f.error));
            assert!(x.reusable);
            out.push(x.sample.expect("a sample when asked"));
        }
        server.await.unwrap();
        let second = out.pop().expect("two");
        (out.pop().expect("two"), second)
    }

    #[tokio::test]
    async fn the_shadow_response_is_kept_up_to_the_cap_and_read_to_its_end() {
        let resp: &[u8] = b"HTTP/1.1 500 Oops\r\nContent-Type: application/json\r\nX-A: 1\r\nTransfer-Encoding: chunked\r\n\r\n6\r\n{\"a\":1\r\n3\r\n2}\n\r\n0\r\n\r\n";
        let spec = |max_body| KeepSpec { max_body, headers: vec!["content-type".into(), "etag".into()] };
        let (a, b) = kept_sample(resp, spec(64)).await;
        assert_eq!(a, b, "the first response ended exactly where the framing said");
        assert_eq!(
            (a.status, a.body.as_ref(), a.body_complete, a.body_len),
            (500, b"{\"a\":12}\n".as_slice(), true, 9)
        );
        assert_eq!(a.headers, vec![("content-type".to_owned(), b"application/json".to_vec())]);
        let (a, b) = kept_sample(resp, spec(4)).await;
        assert_eq!(a, b);
        assert_eq!((a.body.as_ref(), a.body_complete, a.body_len), (b"{\"a\"".as_slice(), false, 9));
    }

    #[tokio::test]
    async fn extraction_and_replay_agree_on_the_same_bytes() {
        // (method, response bytes, extracted (status, body length), reused by the replay client)
        let whole: &[Case] = &[
            ("GET", b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", (200, 5), true),
            ("GET", b"HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\nhello", (200, 5), true),
            (
                "GET",
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\nA\r\n0123456789\r\n0\r\nTrailer: x\r\n\r\n",
                (200, 15),
                true,
            ),
            ("GET", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\nabc\n0\n\n", (200, 3), true),
            ("GET", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", (200, 0), true),
            ("GET", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", (200, 0), true),
            // Both framings: followed as chunked, the connection not trusted after.
            ("GET", b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n0\r\n\r\n", (200, 1), false),
            // Until the close: a coding other than chunked, or no length at all.
            ("GET", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nabc", (200, 3), false),
            ("GET", b"HTTP/1.1 200 OK\r\n\r\nabcd", (200, 4), false),
            ("GET", b"HTTP/1.0 200 OK\r\n\r\nab", (200, 2), false),
            // No body whatever the fields say.
            ("HEAD", b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", (200, 0), true),
            ("HEAD", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", (200, 0), true),
            ("GET", b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n", (204, 0), true),
            ("GET", b"HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n", (304, 0), true),
            // Keep-alive by version and Connection.
            ("GET", b"HTTP/1.1 200 OK\r\nConnection: x, Close\r\nContent-Length: 0\r\n\r\n", (200, 0), false),
            ("GET", b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", (200, 0), false),
            ("GET", b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n", (200, 0), true),
        ];
        for &(method, resp, want, reused) in whole {
            let text = String::from_utf8_lossy(resp);
            assert_eq!(extracted(method, resp), Some(want), "extraction: {method} {text:?}");
            match replayed(method, resp).await {
                Ok(got) => assert_eq!(got, (want.0, reused), "replay: {method} {text:?}"),
                Err(e) => panic!("replay: {method} {text:?}: {e}"),
            }
        }

        // Interim responses are skipped (extraction's side: `expect_100_continue_skips_the_interim_response`;
        // there the final response pairs by the request's last ack, which this harness does not send).
        let interim = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
        assert_eq!(replayed("GET", interim).await.unwrap(), (200, true));

        // Refused by both (bad framing), or cut short by the close.
        let refused: &[&'static [u8]] = &[
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
            b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 000000000000000000001\r\n\r\na",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\nabc",
            b"HTTP/1.1 700 Odd\r\nContent-Length: 0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nx\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nhello\r\n0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1234567890abcdef01\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel",
            b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc",
            b"HTTP/1.1  200 OK\r\nContent-Length: 0\r\n\r\n",
            b"garbage garbage\r\n\r\n",
        ];
        for &resp in refused {
            let text = String::from_utf8_lossy(resp);
            assert_eq!(extracted("GET", resp), None, "extraction: {text:?}");
            assert!(replayed("GET", resp).await.is_err(), "replay: {text:?}");
        }
    }

    /// The shadow is timed by the kernel's receive time of its response, read from the socket's
    /// control data; the time lies between the request's sending and the read that got it. The
    /// kernel turns packet timestamping on a moment after the first socket asks (a deferred static
    /// key), so the first responses may come without one (then the read time is used): exchanges
    /// go on until one carries it, for at most 10 s. As the engine does, the process keeps one
    /// socket asking for timestamps, so the other tests' sockets closing meanwhile cannot turn
    /// the key off again (with 200 exchanges and no such socket, this failed under load).
    #[tokio::test]
    async fn responses_carry_the_kernels_receive_time() {
        enable_receive_timestamps();
        const RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 256];
            while matches!(s.read(&mut buf).await, Ok(n) if n > 0) {
                if s.write_all(RESPONSE).await.is_err() {
                    break;
                }
            }
        });
        let metrics = Metrics::default();
        let target = ShadowTarget { host: "127.0.0.1".into(), port };
        let mut conn = connect(&target, Duration::from_secs(2), &metrics.connections).await.unwrap();
        let mut stamped = None;
        let deadline = Instant::now() + Duration::from_secs(10);
        for _ in 0..1_000_000 {
            if Instant::now() > deadline {
                break;
            }
            conn.buf.clear();
            let before = SystemTime::now();
            conn.stream.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").await.unwrap();
            let mut stamp = None;
            while conn.buf.len() < RESPONSE.len() {
                let (n, ts) = conn.read_timed().await.unwrap();
                assert!(n > 0, "server closed early");
                stamp = stamp.or(ts);
            }
            assert_eq!(conn.buf, RESPONSE, "one response per request");
            if let Some(ts) = stamp {
                stamped = Some((before, ts, SystemTime::now()));
                break;
            }
        }
        let (before, ts, after) = stamped.expect("SO_TIMESTAMPNS gives receive times on this kernel");
        assert!(before <= ts && ts <= after, "{before:?} <= {ts:?} <= {after:?}");
        drop(conn);
        server.await.unwrap();
    }

    /// What the shadow's TCP acknowledged is what it received: all of it from a peer that reads;
    /// from a peer that never reads, no more than its receive window, and the count stays the
    /// same after that peer resets the connection (when the replay decides what may go again).
    #[tokio::test]
    async fn acknowledged_bytes_are_what_the_peer_received() {
        let metrics = Metrics::default();
        // A peer that reads everything.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target = ShadowTarget { host: "127.0.0.1".into(), port: listener.local_addr().unwrap().port() };
        let mut conn = connect(&target, Duration::from_secs(2), &metrics.connections).await.unwrap();
        let (mut peer, _) = listener.accept().await.unwrap();
        assert_eq!((conn.sent(), conn.acked()), (0, Some(0)), "the SYN is not a request byte");
        conn.write_all(&[b'a'; 100]).await.unwrap();
        let mut got = [0u8; 100];
        peer.read_exact(&mut got).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while conn.acked() != Some(100) {
            assert!(Instant::now() < deadline, "never acknowledged: {:?}", conn.acked());
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert_eq!(conn.sent(), 100);

        // A peer with a small receive buffer that never reads, then resets.
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        // Accepted sockets inherit the buffer size.
        assert!(socket::set_receive_buffer(std_listener.as_fd(), 2048));
        let target = ShadowTarget { host: "127.0.0.1".into(), port: std_listener.local_addr().unwrap().port() };
        let mut conn = connect(&target, Duration::from_secs(2), &metrics.connections).await.unwrap();
        let (peer, _) = std_listener.accept().unwrap();
        // 64 KiB fits the sender's buffer but not the peer's window: the write completes, most of
        // it stays unacknowledged.
        tokio::time::timeout(Duration::from_secs(10), conn.write_all(&vec![b'b'; 64 << 10]))
            .await
            .expect("fits the send buffer")
            .unwrap();
        let acked = conn.acked().expect("TCP_INFO");
        assert!(acked < 16 << 10, "at most the peer's window: {acked}");
        // A close now resets.
        assert!(socket::set_linger_reset(peer.as_fd()));
        drop(peer);
        let mut b = [0u8; 1];
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            assert!(Instant::now() < deadline, "the reset never came");
            match conn.stream.try_read(&mut b) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => tokio::time::sleep(Duration::from_millis(1)).await,
                _ => break,
            }
        }
        let after = conn.acked().expect("TCP_INFO after the reset");
        assert!(after < 16 << 10 && after >= acked, "{acked} then {after}");
        assert_eq!(conn.sent(), 64 << 10);
    }

    /// The shadow's clock starts at the kernel's transmit time of the request's last byte, for
    /// every write on a connection (each found by its byte offset), and ends at the kernel's
    /// receive time: the same layer as the capture programs time the primary.
    #[tokio::test]
    async fn the_shadow_is_timed_from_the_kernels_transmit_time() {
        const RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 256];
            for _ in 0..3 {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {
                        if s.write_all(RESPONSE).await.is_err() {
                            return;
                        }
                    }
                }
            }
        });
        let metrics = Metrics::default();
        let target = ShadowTarget { host: "127.0.0.1".into(), port };
        let mut conn = connect(&target, Duration::from_secs(2), &metrics.connections).await.unwrap();
        assert!(conn.tx_stamps, "this kernel takes software transmit timestamps");
        let mut last = None;
        for i in 0..3u64 {
            let req = format!("GET /{i} HTTP/1.1\r\nHost: a\r\n\r\n");
            let before = SystemTime::now();
            let t0 = Instant::now();
            conn.write_all(req.as_bytes()).await.unwrap();
            let after = SystemTime::now();
            let sent_at = conn.sent_at.expect("the transmit time of the write's last byte");
            assert!(before <= sent_at && sent_at <= after, "{before:?} <= {sent_at:?} <= {after:?}");
            assert!(last.is_none_or(|l| l <= sent_at), "each write's own time, in order");
            last = Some(sent_at);
            let since = conn.since_write();
            assert_eq!(since.wall, sent_at);
            let x = read_response(&mut conn, Answering { method: b"GET", id: i }, &target, None, 1 << 20, since)
                .await
                .unwrap_or_else(|f| panic!("{}", f.error));
            let outside = t0.elapsed();
            assert!(x.first_byte <= outside, "{:?} inside {outside:?}", x.first_byte);
            assert!(x.complete >= x.first_byte);
        }
        drop(conn);
        server.await.unwrap();
    }

    /// A kept-alive connection goes into the pool without the readiness its last read left
    /// (so taking it costs no failing `recv`), and a close that comes while it waits is still
    /// seen: the pool never hands out the closed connection.
    #[tokio::test(flavor = "current_thread")]
    async fn a_pooled_connection_forgets_the_drained_read_and_still_sees_a_close() {
        const RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target = ShadowTarget { host: "127.0.0.1".into(), port: listener.local_addr().unwrap().port() };
        let (close_tx, close_rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 256];
            for _ in 0..2 {
                if !matches!(s.read(&mut buf).await, Ok(n) if n > 0) || s.write_all(RESPONSE).await.is_err() {
                    return;
                }
            }
            let _ = close_rx.await;
        });
        let metrics = Metrics::default();
        let pool = Pool::new(4);
        let mut conn = connect(&target, Duration::from_secs(2), &metrics.connections).await.unwrap();
        let readable = |c: &Conn| {
            let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
            c.stream.poll_read_ready(&mut cx).is_ready()
        };
        for i in 0..2 {
            let x = exchange(&mut conn, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", b"GET", i, &target, None, 1 << 20)
                .await
                .unwrap_or_else(|f| panic!("{}", f.error));
            assert!(x.reusable);
            assert!(readable(&conn), "the read that completed the response leaves the socket marked readable");
            pool.put(conn, Instant::now());
            conn = pool.take().expect("the live connection comes back");
            assert!(!readable(&conn), "nothing arrived since: no readiness, so no recv to find that out");
        }
        pool.put(conn, Instant::now());
        close_tx.send(()).unwrap();
        server.await.unwrap();
        // The close reaches the reactor while the connection waits; the pool drops it then.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match pool.take() {
                None => break,
                Some(c) => {
                    assert!(Instant::now() < deadline, "the closed connection kept coming back");
                    pool.put(c, Instant::now());
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
        }
    }

    /// A response and the peer's close in one go (the close seen by the reactor before the
    /// response is read): the connection is not reused, though its last read emptied the socket
    /// of data (the end of the stream is not data, and its event does not come again).
    #[tokio::test(flavor = "current_thread")]
    async fn a_response_followed_by_a_close_is_not_pooled_as_live() {
        const RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target = ShadowTarget { host: "127.0.0.1".into(), port: listener.local_addr().unwrap().port() };
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 256];
            if matches!(s.read(&mut buf).await, Ok(n) if n > 0) {
                let _ = s.write_all(RESPONSE).await;
            }
            // Closed right after answering: the FIN follows the response.
        });
        let metrics = Metrics::default();
        let pool = Pool::new(4);
        let mut conn = connect(&target, Duration::from_secs(2), &metrics.connections).await.unwrap();
        conn.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").await.unwrap();
        server.await.unwrap();
        // Let the reactor see the response and the close before the read.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let ready = conn.stream.ready(Interest::READABLE).await.unwrap();
            if ready.is_read_closed() {
                break;
            }
            assert!(Instant::now() < deadline, "the close never reached the reactor");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let since = conn.since_write();
        let x = read_response(&mut conn, Answering { method: b"GET", id: 1 }, &target, None, 1 << 20, since)
            .await
            .unwrap_or_else(|f| panic!("{}", f.error));
        assert!(x.reusable, "the response itself says keep-alive");
        pool.put(conn, Instant::now());
        assert!(pool.take().is_none(), "a closed connection came back from the pool");
    }
}
