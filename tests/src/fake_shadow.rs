//! Faulty shadows for the fault suite, and what the suite reads of the daemon's process.
//!
//! A [`FakeShadow`] listens inside a namespace the test created (threads, std only) and misbehaves
//! in one [`Behaviour`]; it counts the connections it accepted, the requests it answered and the
//! connections the daemon cut while it was still writing. Every loop here is bounded in count and
//! time, and everything stops when the fake is dropped.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc, Condvar, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use crate::topo::NetNs;

/// How a fake shadow misbehaves.
#[derive(Clone, Debug)]
pub enum Behaviour {
    /// Answers every request (keep-alive) after `delay`, and not before `gate` opens.
    Slow { delay: Duration, gate: Option<Gate> },
    /// Accepts, never reads, never answers; keeps the connection open.
    NeverReads,
    /// Accepts and closes with a reset (zero linger) before reading anything.
    Resets,
    /// Reads a request, answers with bytes that are not HTTP, keeps the connection open.
    Garbage,
    /// Reads a request, answers 200 with a chunked body that never ends (bounded here at
    /// [`ENDLESS_BOUND`] bytes per connection, far past any cap under test).
    Endless,
    /// Accepts and closes at once, without reading.
    ClosesAtOnce,
}

/// A gate that holds a fake's answers until the test opens it.
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
            // Woken by `open`; the timeout only lets a stopping fake notice.
            g = cv.wait_timeout(g, Duration::from_millis(100)).unwrap_or_else(|e| e.into_inner()).0;
        }
        *g
    }
}

/// What an endless response writes at most on one connection before giving up by itself.
pub const ENDLESS_BOUND: usize = 256 << 20;
/// Longest any connection handler runs.
const HANDLER_LIMIT: Duration = Duration::from_secs(120);

#[derive(Debug, Default)]
pub struct FakeCounts {
    /// Connections accepted.
    pub accepted: AtomicUsize,
    /// Requests read (and answered, where the behaviour answers).
    pub requests: AtomicUsize,
    /// Endless responses whose connection the peer closed while they were being written.
    pub cut: AtomicUsize,
    /// Endless responses that reached [`ENDLESS_BOUND`] without the peer closing.
    pub ran_out: AtomicUsize,
    /// Endless responses the peer stopped reading without closing the connection.
    pub stalled: AtomicUsize,
}

pub struct FakeShadow {
    pub addr: SocketAddr,
    pub counts: Arc<FakeCounts>,
    stop: Arc<AtomicBool>,
    acceptor: Option<JoinHandle<()>>,
    handlers: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl FakeShadow {
    /// Listen on `addr` inside `ns` and behave as `behaviour` on every connection.
    pub fn start(ns: &NetNs, addr: SocketAddr, behaviour: Behaviour) -> Self {
        let counts = Arc::new(FakeCounts::default());
        let stop = Arc::new(AtomicBool::new(false));
        let handlers = Arc::new(Mutex::new(Vec::new()));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let name = ns.name.clone();
        let (c, s, h) = (counts.clone(), stop.clone(), handlers.clone());
        let acceptor = std::thread::spawn(move || {
            NetNs { name }.enter_and_forget();
            let listener = TcpListener::bind(addr).unwrap_or_else(|e| panic!("fake shadow: bind {addr}: {e}"));
            listener.set_nonblocking(true).expect("nonblocking listener");
            ready_tx.send(()).expect("ready");
            let deadline = Instant::now() + HANDLER_LIMIT;
            while !s.load(Ordering::Relaxed) && Instant::now() < deadline {
                match listener.accept() {
                    Ok((stream, _)) => {
                        c.accepted.fetch_add(1, Ordering::SeqCst);
                        let (c, s, b) = (c.clone(), s.clone(), behaviour.clone());
                        let handle = std::thread::spawn(move || serve(stream, b, &c, &s));
                        h.lock().expect("handlers").push(handle);
                    }
                    // Nothing to accept: look again shortly (this is the accept loop's own pace,
                    // not a wait for a condition).
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(2))
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        ready_rx.recv_timeout(Duration::from_secs(10)).expect("fake shadow listening");
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

impl Drop for FakeShadow {
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

/// Read one request head (the suite's requests have no body) into `buf`; false if the peer
/// closed, the read failed or the fake is stopping.
fn read_head(s: &mut TcpStream, buf: &mut Vec<u8>, stop: &AtomicBool) -> bool {
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            buf.drain(..p + 4);
            return true;
        }
        if stop.load(Ordering::Relaxed) {
            return false;
        }
        match s.read(&mut chunk) {
            Ok(0) => return false,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(_) => return false,
        }
    }
}

fn serve(mut s: TcpStream, behaviour: Behaviour, counts: &FakeCounts, stop: &AtomicBool) {
    let started = Instant::now();
    // Reads wake up now and then to see whether the fake is stopping.
    let _ = s.set_read_timeout(Some(Duration::from_millis(100)));
    let mut buf = Vec::new();
    let alive = || !stop.load(Ordering::Relaxed) && started.elapsed() < HANDLER_LIMIT;
    match behaviour {
        Behaviour::Slow { delay, gate } => {
            while alive() && read_head(&mut s, &mut buf, stop) {
                counts.requests.fetch_add(1, Ordering::SeqCst);
                if let Some(g) = &gate
                    && !g.pass(stop, started + HANDLER_LIMIT)
                {
                    return;
                }
                std::thread::sleep(delay);
                if s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").is_err() {
                    return;
                }
            }
        }
        Behaviour::NeverReads => {
            // Hold the connection, unread, until the peer gives up on it or the fake stops.
            let mut probe = [0u8; 1];
            while alive() {
                match s.peek(&mut probe) {
                    Ok(0) => return,
                    // Data waits unread; the read timeout paces this loop.
                    Ok(_) => std::thread::sleep(Duration::from_millis(100)),
                    Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
                    Err(_) => return,
                }
            }
        }
        Behaviour::Resets => {
            let _ = socket_linger_zero(&s);
        }
        Behaviour::Garbage => {
            while alive() && read_head(&mut s, &mut buf, stop) {
                counts.requests.fetch_add(1, Ordering::SeqCst);
                if s.write_all(b"SSH-2.0-OpenSSH_9.2 not http at all\r\n\r\n").is_err() {
                    return;
                }
            }
        }
        Behaviour::Endless => {
            if !read_head(&mut s, &mut buf, stop) {
                return;
            }
            counts.requests.fetch_add(1, Ordering::SeqCst);
            let chunk = [b'x'; 16 * 1024];
            let mut frame = format!("{:X}\r\n", chunk.len()).into_bytes();
            frame.extend_from_slice(&chunk);
            frame.extend_from_slice(b"\r\n");
            if s.write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n").is_err() {
                counts.cut.fetch_add(1, Ordering::SeqCst);
                return;
            }
            // Whole frames only (a partial one would turn the body into garbage); a peer that
            // stops reading without closing stalls the write, which ends this after a while.
            let _ = s.set_write_timeout(Some(Duration::from_secs(5)));
            let mut written = 0;
            while written < ENDLESS_BOUND {
                if !alive() {
                    return;
                }
                match s.write_all(&frame) {
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
        Behaviour::ClosesAtOnce => {}
    }
}

/// SO_LINGER 0: close sends a reset.
fn socket_linger_zero(s: &TcpStream) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let l = libc::linger { l_onoff: 1, l_linger: 0 };
    // SAFETY: setsockopt on our own socket with a linger struct.
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

/// What the suite reads of a process in /proc.
pub mod process {
    /// utime + stime in seconds, from /proc/PID/stat.
    pub fn cpu_seconds(pid: u32) -> f64 {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // Fields after the parenthesised command name; utime and stime are the 12th and 13th.
        let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
        let f: Vec<&str> = after.split_whitespace().collect();
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        let field = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
        (field(11) + field(12)) / ticks
    }

    /// A `/proc/PID/status` size field (`VmRSS`, `VmHWM`) in bytes.
    pub fn status_bytes(pid: u32, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    }
}
