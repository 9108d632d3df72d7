//! The one HTTP/1.1 test server: plays the primary, a healthy or faulty shadow, a node's metrics
//! endpoint or the demo's sample service ([`demo`]), and can record every request it receives
//! byte for byte.
//!
//! [`Options`] say how it answers; the same options run it as the `shadow-testserver` binary
//! ([`Options::spawn`], in a namespace the test created, as users' services run; its command line
//! is [`binary`]) or on threads of the test itself ([`Options::start`]), where the test reads what
//! it counted and a [`Gate`] holds its answers. Every [`Mode`] is available both ways.
//!
//! With a record directory, raw bytes of connection N go to DIR/raw-N.bin and one JSON line per
//! request to DIR/index.jsonl: {"conn":N,"offset":O,"len":L,"method":"GET","target":"/x","tagged":true}
//! (read back by [`crate::recorded_requests`]).
//! Threads, std only: nothing here should be clever.

pub mod binary;
mod conn;
pub mod demo;

use std::{
    fs::{File, OpenOptions},
    net::{SocketAddr, TcpListener},
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
    /// As `Ok`, but every answer is `500 Internal Server Error` (a shadow that broke).
    ServerError,
}

impl Mode {
    /// Every mode but `Demo` by its `--mode` name.
    const NAMED: [(&'static str, Mode); 9] = [
        ("ok", Self::Ok),
        ("head-body", Self::HeadBody),
        ("garbage", Self::Garbage),
        ("reset", Self::Reset),
        ("endless", Self::Endless),
        ("never-reads", Self::NeverReads),
        ("resets-at-once", Self::ResetsAtOnce),
        ("closes-at-once", Self::ClosesAtOnce),
        ("server-error", Self::ServerError),
    ];

    /// The `--mode` names; `demo` takes its version from `--version`.
    pub fn parse(name: &str, version: Option<demo::Version>) -> Result<Self, String> {
        if name == "demo" {
            return Ok(Self::Demo(version.ok_or("--mode demo needs --version v1|v2")?));
        }
        Self::NAMED.iter().find(|(n, _)| *n == name).map(|(_, m)| *m).ok_or_else(|| {
            format!(
                "--mode {name}: expected {} or demo",
                Self::NAMED.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
            )
        })
    }

    /// The `--mode` name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Demo(_) => "demo",
            m => Self::NAMED.iter().find(|(_, n)| *n == m).map_or("ok", |(name, _)| *name),
        }
    }
}

/// Every answer's body, instead of `response_bytes` of `x`.
#[derive(Clone, Debug)]
enum Body {
    /// Read when the server starts (`--body-file`).
    File(PathBuf),
    /// Given by a test on threads.
    Bytes(Arc<[u8]>),
}

/// Everything a server is told, as a builder; [`Options::new`] is a healthy `Ok` server with
/// 64-byte answers.
#[derive(Clone, Debug)]
pub struct Options {
    mode: Mode,
    record: Option<PathBuf>,
    /// How long to wait before each answer.
    delay: Duration,
    response_bytes: usize,
    /// Close each connection after answering this many requests (0: never), without saying so,
    /// once it has read every request the client already sent (recorded as read, never answered).
    close_after: usize,
    /// Connections served at once by the binary; more are closed on accept.
    max_conns: usize,
    /// The demo's `--instance NAME` (see [`demo::respond`]).
    instance: Option<String>,
    body: Option<Body>,
    /// Off: every answer says `connection: close` and the connection closes after it.
    keep_alive: bool,
    /// Threads only: holds every answer until the test opens it.
    gate: Option<Gate>,
    /// Threads only: how long the server accepts, and each connection is served, before it stops
    /// by itself (the binary serves until it is killed).
    lifetime: Duration,
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
            body: None,
            keep_alive: true,
            gate: None,
            lifetime: Duration::from_secs(120),
        }
    }
}

impl Options {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn mode(self, mode: Mode) -> Self {
        Self { mode, ..self }
    }

    /// Record every request under `dir` (see the module's documentation).
    pub fn record(self, dir: impl Into<PathBuf>) -> Self {
        Self { record: Some(dir.into()), ..self }
    }

    /// Wait this long before each answer.
    pub fn delay(self, delay: Duration) -> Self {
        Self { delay, ..self }
    }

    /// Answer with this many bytes of body.
    pub fn response_bytes(self, response_bytes: usize) -> Self {
        Self { response_bytes, ..self }
    }

    /// Close each connection after answering `n` requests, without saying so, once it has read
    /// every request the client already sent (recorded as read, never answered).
    pub fn close_after(self, n: usize) -> Self {
        Self { close_after: n, ..self }
    }

    /// Serve at most `n` connections at once (the binary); more are closed on accept.
    pub fn max_conns(self, n: usize) -> Self {
        Self { max_conns: n, ..self }
    }

    /// The demo service's instance name (see [`demo::respond`]).
    pub fn instance(self, name: &str) -> Self {
        Self { instance: Some(name.to_string()), ..self }
    }

    /// Answer every request with the contents of `path`, read when the server starts.
    pub fn body_file(self, path: impl Into<PathBuf>) -> Self {
        Self { body: Some(Body::File(path.into())), ..self }
    }

    /// Answer every request with `body` (threads only).
    pub fn body(self, body: impl Into<Arc<[u8]>>) -> Self {
        Self { body: Some(Body::Bytes(body.into())), ..self }
    }

    /// `false`: every answer says `connection: close` and the connection closes after it.
    pub fn keep_alive(self, keep_alive: bool) -> Self {
        Self { keep_alive, ..self }
    }

    /// Hold every answer until `gate` opens (threads only).
    pub fn gate(self, gate: Gate) -> Self {
        Self { gate: Some(gate), ..self }
    }

    /// How long a server on threads serves before it stops by itself (default 120 s).
    pub fn lifetime(self, lifetime: Duration) -> Self {
        Self { lifetime, ..self }
    }

    /// Serve on threads of the test: listen on `addr` inside `ns`; the test reads what the server
    /// counted, and everything stops when the [`Server`] is dropped.
    pub fn start(self, ns: &NetNs, addr: SocketAddr) -> Server {
        Server::start(ns, addr, self)
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
    /// The body every answer carries, if the options give one.
    body: Option<Arc<[u8]>>,
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
        let body = match &opts.body {
            Some(Body::File(path)) => {
                Some(std::fs::read(path).map_err(|e| format!("--body-file {}: {e}", path.display()))?.into())
            }
            Some(Body::Bytes(b)) => Some(b.clone()),
            None => None,
        };
        Ok(Self { opts, body, index, counts: Arc::default(), served: AtomicU64::new(0), stop: Arc::default(), limit })
    }
}

/// Serve `listener` until the process ends, a thread per connection (the binary's loop).
fn serve_forever(listener: TcpListener, opts: Options) -> Result<(), String> {
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
            let _ = conn::serve(stream, conn, &shared);
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
    fn start(ns: &NetNs, addr: SocketAddr, opts: Options) -> Self {
        let lifetime = opts.lifetime;
        let shared = Arc::new(Shared::new(opts, Some(lifetime)).unwrap_or_else(|e| panic!("test server: {e}")));
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
            let deadline = Instant::now() + lifetime;
            let mut conn = 0;
            while !shared.stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                match listener.accept() {
                    Ok((stream, _)) => {
                        shared.counts.accepted.fetch_add(1, Ordering::SeqCst);
                        let shared = shared.clone();
                        let handle = thread::spawn(move || {
                            let _ = conn::serve(stream, conn, &shared);
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
