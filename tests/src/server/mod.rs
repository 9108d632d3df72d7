//! The one HTTP/1.1 test server: plays the primary, a healthy or faulty shadow, or the demo's
//! sample service ([`demo`]), and can record every request it receives byte for byte.
//!
//! It runs as the `shadow-testserver` binary ([`serve_forever`], in a namespace the test created,
//! as users' services run) or on threads of the test itself ([`Server::start`]), where the test
//! reads what it counted and a [`Gate`] holds its answers. Every [`Mode`] is available both ways.
//!
//! With a record directory, raw bytes of connection N go to DIR/raw-N.bin and one JSON line per
//! request to DIR/index.jsonl: {"conn":N,"offset":O,"len":L,"method":"GET","target":"/x","tagged":true}
//! (read back by [`crate::recorded_requests`]).
//! Threads, std only: nothing here should be clever.

pub mod demo;

use std::{
    fs::{File, OpenOptions},
    io::{BufWriter, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    path::PathBuf,
    sync::{
        Arc, Condvar, Mutex,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use crate::topo::NetNs;

/// How the server answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// `200` with `response_bytes` of body (none to HEAD), keep-alive.
    Ok,
    /// As `Ok`, but HEAD is answered with a body as if it were a GET (a shadow bug).
    HeadBody,
    /// The demo's sample service in one version.
    Demo(demo::Version),
    /// Answers every request with bytes that are not HTTP, keeping the connection open.
    Garbage,
    /// Starts a response, then resets the connection part way through it.
    Reset,
    /// Answers the first request `200` with a chunked body that never ends (bounded here at
    /// [`ENDLESS_BOUND`] bytes per connection, far past any cap under test).
    Endless,
    /// Accepts, never reads, never answers; keeps the connection open.
    NeverReads,
    /// Accepts and closes with a reset (zero linger) before reading anything.
    ResetsAtOnce,
    /// Accepts and closes at once, without reading.
    ClosesAtOnce,
}

impl Mode {
    /// The `--mode` names; `demo` takes its version from `--version`.
    pub fn parse(name: &str, version: Option<demo::Version>) -> Result<Self, String> {
        Ok(match name {
            "ok" => Self::Ok,
            "head-body" => Self::HeadBody,
            "demo" => Self::Demo(version.ok_or("--mode demo needs --version v1|v2")?),
            "garbage" => Self::Garbage,
            "reset" => Self::Reset,
            "endless" => Self::Endless,
            "never-reads" => Self::NeverReads,
            "resets-at-once" => Self::ResetsAtOnce,
            "closes-at-once" => Self::ClosesAtOnce,
            other => {
                return Err(format!(
                    "--mode {other}: expected ok, head-body, demo, garbage, reset, endless, never-reads, resets-at-once or closes-at-once"
                ));
            }
        })
    }
}

/// Everything a server is told; [`Options::default`] is a healthy `Ok` server.
#[derive(Clone, Debug)]
pub struct Options {
    pub mode: Mode,
    pub record: Option<PathBuf>,
    /// How long to wait before each answer.
    pub delay: Duration,
    pub response_bytes: usize,
    /// Close each connection after answering this many requests (0: never), without saying so,
    /// once it has read every request the client already sent (recorded as read, never answered).
    pub close_after: usize,
    /// Connections served at once by [`serve_forever`]; more are closed on accept.
    pub max_conns: usize,
    /// The demo's `--instance NAME` (see [`demo::respond`]).
    pub instance: Option<String>,
    /// Holds every answer until the test opens it (threads only).
    pub gate: Option<Gate>,
    /// Every answer's body (`--body-file`), instead of `response_bytes` of `x`.
    pub body: Option<Arc<Vec<u8>>>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            mode: Mode::Ok,
            record: None,
            delay: Duration::ZERO,
            response_bytes: 64,
            close_after: 0,
            max_conns: 1024,
            instance: None,
            gate: None,
            body: None,
        }
    }
}

/// A gate that holds a server's answers until the test opens it.
#[derive(Clone, Debug, Default)]
pub struct Gate(Arc<(Mutex<bool>, Condvar)>);

impl Gate {
    pub fn open(&self) {
        *self.0.0.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.0.1.notify_all();
    }

    /// Wait until the gate is open, `stop` is set or `limit` has passed; whether it opened.
    fn pass(&self, stop: &AtomicBool, limit: Instant) -> bool {
        let (open, cv) = &*self.0;
        let mut g = open.lock().unwrap_or_else(|e| e.into_inner());
        while !*g && !stop.load(Ordering::Relaxed) && Instant::now() < limit {
            // Woken by `open`; the timeout only lets a stopping server notice.
            g = cv.wait_timeout(g, Duration::from_millis(100)).unwrap_or_else(|e| e.into_inner()).0;
        }
        *g
    }
}

/// What an endless response writes at most on one connection before giving up by itself.
pub const ENDLESS_BOUND: usize = 256 << 20;
/// Longest any connection handler of a [`Server`] on threads runs.
const HANDLER_LIMIT: Duration = Duration::from_secs(120);
const MAX_HEAD: usize = 64 * 1024;
/// Largest request body the demo service takes.
const DEMO_MAX_BODY: usize = 1024 * 1024;

/// What a server counted.
#[derive(Debug, Default)]
pub struct Counts {
    /// Connections accepted.
    pub accepted: AtomicUsize,
    /// Requests read (and answered, where the mode answers).
    pub requests: AtomicUsize,
    /// Endless responses whose connection the peer closed while they were being written.
    pub cut: AtomicUsize,
    /// Endless responses that reached [`ENDLESS_BOUND`] without the peer closing.
    pub ran_out: AtomicUsize,
    /// Endless responses the peer stopped reading without closing the connection.
    pub stalled: AtomicUsize,
}

/// What every connection of one server shares.
struct Shared {
    opts: Options,
    index: Option<Mutex<File>>,
    counts: Arc<Counts>,
    /// Responses served, for the demo's volatile values.
    served: AtomicU64,
    stop: Arc<AtomicBool>,
    /// On threads: how long a handler may run (and reads wake up to notice `stop`).
    limit: Option<Duration>,
}

impl Shared {
    fn new(opts: Options, limit: Option<Duration>) -> Result<Self, String> {
        let index = match &opts.record {
            Some(dir) => {
                std::fs::create_dir_all(dir).map_err(|e| format!("--record {}: {e}", dir.display()))?;
                let f = OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(dir.join("index.jsonl"))
                    .map_err(|e| format!("open index.jsonl: {e}"))?;
                Some(Mutex::new(f))
            }
            None => None,
        };
        Ok(Self { opts, index, counts: Arc::default(), served: AtomicU64::new(0), stop: Arc::default(), limit })
    }
}

/// Serve `listener` until the process ends, a thread per connection (the binary's loop).
pub fn serve_forever(listener: TcpListener, opts: Options) -> Result<(), String> {
    let shared = Arc::new(Shared::new(opts, None)?);
    let next_conn = AtomicU64::new(0);
    let live = Arc::new(AtomicUsize::new(0));
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        if live.load(Ordering::Relaxed) >= shared.opts.max_conns {
            drop(stream);
            continue;
        }
        let conn = next_conn.fetch_add(1, Ordering::Relaxed);
        let (shared, live) = (shared.clone(), live.clone());
        live.fetch_add(1, Ordering::Relaxed);
        thread::spawn(move || {
            let _ = serve(stream, conn, &shared);
            live.fetch_sub(1, Ordering::Relaxed);
        });
    }
    Ok(())
}

/// A server on threads of the test, inside a namespace the test created: the test reads what it
/// counted. Every loop here is bounded in count and time, and everything stops when it is dropped.
pub struct Server {
    pub addr: SocketAddr,
    pub counts: Arc<Counts>,
    stop: Arc<AtomicBool>,
    acceptor: Option<JoinHandle<()>>,
    handlers: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl Server {
    /// Listen on `addr` inside `ns` and serve every connection as `opts` says.
    pub fn start(ns: &NetNs, addr: SocketAddr, opts: Options) -> Self {
        let shared = Arc::new(Shared::new(opts, Some(HANDLER_LIMIT)).unwrap_or_else(|e| panic!("test server: {e}")));
        let (counts, stop) = (shared.counts.clone(), shared.stop.clone());
        let handlers = Arc::new(Mutex::new(Vec::new()));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let name = ns.name.clone();
        let h = handlers.clone();
        let acceptor = thread::spawn(move || {
            NetNs { name }.enter_and_forget();
            let listener = TcpListener::bind(addr).unwrap_or_else(|e| panic!("test server: bind {addr}: {e}"));
            listener.set_nonblocking(true).expect("nonblocking listener");
            ready_tx.send(()).expect("ready");
            let deadline = Instant::now() + HANDLER_LIMIT;
            let mut conn = 0;
            while !shared.stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                match listener.accept() {
                    Ok((stream, _)) => {
                        shared.counts.accepted.fetch_add(1, Ordering::SeqCst);
                        let shared = shared.clone();
                        let handle = thread::spawn(move || {
                            let _ = serve(stream, conn, &shared);
                        });
                        conn += 1;
                        h.lock().expect("handlers").push(handle);
                    }
                    // Nothing to accept: look again shortly (this is the accept loop's own pace,
                    // not a wait for a condition).
                    Err(_) => thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        ready_rx.recv_timeout(Duration::from_secs(10)).expect("test server listening");
        Self { addr, counts, stop, acceptor: Some(acceptor), handlers }
    }

    pub fn accepted(&self) -> usize {
        self.counts.accepted.load(Ordering::SeqCst)
    }

    pub fn requests(&self) -> usize {
        self.counts.requests.load(Ordering::SeqCst)
    }

    pub fn cut(&self) -> usize {
        self.counts.cut.load(Ordering::SeqCst)
    }

    /// Endless responses that ended otherwise than by the peer closing (ran out or stalled).
    pub fn not_cut(&self) -> usize {
        self.counts.ran_out.load(Ordering::SeqCst) + self.counts.stalled.load(Ordering::SeqCst)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(a) = self.acceptor.take() {
            let _ = a.join();
        }
        let handlers = std::mem::take(&mut *self.handlers.lock().unwrap_or_else(|e| e.into_inner()));
        for h in handlers {
            let _ = h.join();
        }
    }
}

/// One connection's reads: on threads, reads wake up now and then to see whether the server is
/// stopping or the handler has run too long.
struct Conn<'a> {
    s: TcpStream,
    shared: &'a Shared,
    started: Instant,
    chunk: Vec<u8>,
}

impl Conn<'_> {
    fn alive(&self) -> bool {
        !self.shared.stop.load(Ordering::Relaxed) && self.shared.limit.is_none_or(|l| self.started.elapsed() < l)
    }

    /// Read more into `buf`; false when the peer closed or the server is stopping.
    fn fill(&mut self, buf: &mut Vec<u8>) -> std::io::Result<bool> {
        loop {
            match self.s.read(&mut self.chunk) {
                Ok(0) => return Ok(false),
                Ok(n) => {
                    buf.extend_from_slice(&self.chunk[..n]);
                    return Ok(true);
                }
                Err(e)
                    if self.shared.limit.is_some()
                        && matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) =>
                {
                    if !self.alive() {
                        return Ok(false);
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// One request as read: its method, target and the headers that steer the answer.
struct Request {
    method: String,
    target: String,
    content_length: usize,
    bad_length: bool,
    chunked: bool,
    tagged: bool,
    expect: bool,
    close: bool,
}

fn parse_head(head: &[u8]) -> Option<Request> {
    let mut headers = [httparse::EMPTY_HEADER; 100];
    let mut req = httparse::Request::new(&mut headers);
    let Ok(httparse::Status::Complete(_)) = req.parse(head) else { return None };
    let mut r = Request {
        method: req.method.unwrap_or("").to_string(),
        target: req.path.unwrap_or("").to_string(),
        content_length: 0,
        bad_length: false,
        chunked: false,
        tagged: false,
        expect: false,
        close: req.version == Some(0),
    };
    for h in req.headers.iter() {
        let v = String::from_utf8_lossy(h.value).trim().to_ascii_lowercase();
        match h.name.to_ascii_lowercase().as_str() {
            "content-length" => match v.parse() {
                Ok(n) => r.content_length = n,
                Err(_) => r.bad_length = true,
            },
            "transfer-encoding" => r.chunked = v.contains("chunked"),
            "x-shadow-request" => r.tagged = true,
            "expect" => r.expect = v == "100-continue",
            "connection" => r.close = v == "close",
            _ => {}
        }
    }
    Some(r)
}

fn serve(s: TcpStream, conn: u64, shared: &Shared) -> std::io::Result<()> {
    let o = &shared.opts;
    match o.mode {
        Mode::NeverReads => return hold_unread(&s, shared),
        Mode::ResetsAtOnce => return linger_zero(&s),
        Mode::ClosesAtOnce => return Ok(()),
        _ => {}
    }
    let _ = s.set_nodelay(true);
    if shared.limit.is_some() {
        s.set_read_timeout(Some(Duration::from_millis(100)))?;
    }
    let mut c = Conn { s, shared, started: Instant::now(), chunk: vec![0u8; 64 * 1024] };
    let mut raw = match &o.record {
        Some(d) => Some(BufWriter::new(File::create(d.join(format!("raw-{conn}.bin")))?)),
        None => None,
    };
    let mut offset = 0u64;
    let mut buf: Vec<u8> = Vec::with_capacity(16 * 1024);
    let mut answered = 0usize;
    // Past `close_after`: record what was read already, answer nothing, then close.
    let mut draining = false;
    loop {
        // Read until a whole head is buffered.
        let head_len = loop {
            if let Some(p) = find(&buf, b"\r\n\r\n") {
                break p + 4;
            }
            if buf.len() > MAX_HEAD || draining || !c.fill(&mut buf)? {
                return Ok(());
            }
        };
        let Some(req) = parse_head(&buf[..head_len]) else {
            c.s.write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")?;
            return Ok(());
        };
        if let Mode::Demo(_) = o.mode {
            // Chunked request bodies are not part of the demo's traffic.
            if req.chunked {
                c.s.write_all(b"HTTP/1.1 501 Not Implemented\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")?;
                return Ok(());
            }
            if req.bad_length || req.content_length > DEMO_MAX_BODY {
                c.s.write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")?;
                return Ok(());
            }
        }
        if req.expect && buf.len() == head_len {
            c.s.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
        }
        // Read the body as framed, keeping the raw bytes.
        let total = loop {
            let end = if req.chunked {
                chunked_end(&buf[head_len..]).map(|e| head_len + e)
            } else {
                Some(head_len + req.content_length).filter(|&t| buf.len() >= t)
            };
            if let Some(end) = end {
                break end;
            }
            if draining || !c.fill(&mut buf)? {
                return Ok(());
            }
        };
        if let Some(w) = raw.as_mut() {
            w.write_all(&buf[..total])?;
            w.flush()?;
        }
        if let Some(ix) = &shared.index
            && let Ok(mut f) = ix.lock()
        {
            let line = format!(
                "{{\"conn\":{conn},\"offset\":{offset},\"len\":{total},\"method\":{},\"target\":{},\"tagged\":{}}}\n",
                json_str(&req.method),
                json_str(&req.target),
                req.tagged
            );
            let _ = f.write_all(line.as_bytes());
        }
        offset += total as u64;
        buf.drain(..total);
        if draining {
            continue;
        }
        shared.counts.requests.fetch_add(1, Ordering::SeqCst);
        if let Some(g) = &o.gate
            && !g.pass(&shared.stop, c.started + HANDLER_LIMIT)
        {
            return Ok(());
        }
        if !o.delay.is_zero() {
            thread::sleep(o.delay);
        }
        match o.mode {
            Mode::Garbage => {
                c.s.write_all(b"SSH-2.0-OpenSSH_9.2 not http at all\r\n\r\n")?;
                continue;
            }
            Mode::Reset => {
                c.s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100000\r\n\r\npartial")?;
                return linger_zero(&c.s);
            }
            Mode::Endless => {
                endless(&mut c);
                return Ok(());
            }
            _ => {}
        }
        // One write per response, body included: a pipelining client reads it as it was sent.
        c.s.write_all(&response(shared, &req))?;
        if req.close {
            return Ok(());
        }
        answered += 1;
        if o.close_after > 0 && answered >= o.close_after {
            // Take in what the client sent before the answer went out (a pipeline arrives at
            // once), so the close is a FIN after reading, not a reset over unread data.
            c.s.set_nonblocking(true)?;
            while let Ok(n @ 1..) = c.s.read(&mut c.chunk) {
                buf.extend_from_slice(&c.chunk[..n]);
            }
            draining = true;
        }
    }
}

/// The whole response to `req` in the modes that answer HTTP.
fn response(shared: &Shared, req: &Request) -> Vec<u8> {
    let o = &shared.opts;
    let close = if req.close { "connection: close\r\n" } else { "" };
    if let Mode::Demo(version) = o.mode {
        let n = shared.served.fetch_add(1, Ordering::Relaxed);
        let r = demo::respond(version, o.instance.as_deref(), &req.method, &req.target, &demo::volatile(n));
        if !r.delay.is_zero() {
            thread::sleep(r.delay);
        }
        let mut out = format!(
            "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nx-demo-version: {}\r\n{close}\r\n",
            r.status,
            demo::reason(r.status),
            r.body.len(),
            version.as_str(),
        )
        .into_bytes();
        if req.method != "HEAD" {
            out.extend_from_slice(r.body.as_bytes());
        }
        return out;
    }
    let len = o.body.as_ref().map_or(o.response_bytes, |b| b.len());
    let mut out = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {len}\r\nx-served-by: shadow-testserver\r\n{close}\r\n"
    )
    .into_bytes();
    if req.method != "HEAD" || o.mode == Mode::HeadBody {
        match &o.body {
            Some(b) => out.extend_from_slice(b),
            None => out.resize(out.len() + len, b'x'),
        }
    }
    out
}

/// Hold the connection, unread, until the peer gives up on it or the server stops.
fn hold_unread(s: &TcpStream, shared: &Shared) -> std::io::Result<()> {
    let started = Instant::now();
    s.set_read_timeout(Some(Duration::from_millis(100)))?;
    let mut probe = [0u8; 1];
    while !shared.stop.load(Ordering::Relaxed) && shared.limit.is_none_or(|l| started.elapsed() < l) {
        match s.peek(&mut probe) {
            Ok(0) => return Ok(()),
            // Data waits unread; the read timeout paces this loop.
            Ok(_) => thread::sleep(Duration::from_millis(100)),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(_) => return Ok(()),
        }
    }
    Ok(())
}

/// `200` with a chunked body that never ends, counted by how it ended.
fn endless(c: &mut Conn<'_>) {
    let counts = &c.shared.counts;
    let chunk = [b'x'; 16 * 1024];
    let mut frame = format!("{:X}\r\n", chunk.len()).into_bytes();
    frame.extend_from_slice(&chunk);
    frame.extend_from_slice(b"\r\n");
    if c.s.write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n").is_err() {
        counts.cut.fetch_add(1, Ordering::SeqCst);
        return;
    }
    // Whole frames only (a partial one would turn the body into garbage); a peer that stops
    // reading without closing stalls the write, which ends this after a while.
    let _ = c.s.set_write_timeout(Some(Duration::from_secs(5)));
    let mut written = 0;
    while written < ENDLESS_BOUND {
        if !c.alive() {
            return;
        }
        match c.s.write_all(&frame) {
            Ok(()) => written += frame.len(),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                counts.stalled.fetch_add(1, Ordering::SeqCst);
                return;
            }
            Err(_) => {
                counts.cut.fetch_add(1, Ordering::SeqCst);
                return;
            }
        }
    }
    counts.ran_out.fetch_add(1, Ordering::SeqCst);
}

fn find(h: &[u8], n: &[u8]) -> Option<usize> {
    h.windows(n.len()).position(|w| w == n)
}

/// Length of a complete chunked body at the start of `b` (through the final CRLF after trailers).
fn chunked_end(b: &[u8]) -> Option<usize> {
    let mut i = 0;
    loop {
        let line_end = find(&b[i..], b"\r\n")? + i;
        let size_str = std::str::from_utf8(&b[i..line_end]).ok()?;
        let size_str = size_str.split(';').next()?.trim();
        let size = usize::from_str_radix(size_str, 16).ok()?;
        i = line_end + 2;
        if size == 0 {
            // Trailers until an empty line.
            loop {
                let e = find(&b[i..], b"\r\n")? + i;
                if e == i {
                    return Some(i + 2);
                }
                i = e + 2;
            }
        }
        let next = i.checked_add(size)?.checked_add(2)?;
        if b.len() < next {
            return None;
        }
        i = next;
    }
}

fn json_str(s: &str) -> String {
    let mut o = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            c if (c as u32) < 0x20 => o.push_str(&format!("\\u{:04x}", c as u32)),
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

/// Close with RST: SO_LINGER {on, 0}, then the caller drops the stream.
fn linger_zero(s: &TcpStream) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let l = libc::linger { l_onoff: 1, l_linger: 0 };
    // SAFETY: setsockopt on our own open socket with a correctly sized linger struct.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&l as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    if rc == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
}
