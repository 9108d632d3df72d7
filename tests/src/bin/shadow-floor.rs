//! shadow-floor: the least a replay can cost on this machine, to set the daemon's CPU per
//! mirrored request against. A bare client that does only what the daemon's replay does per
//! request, over `--conns` keep-alive connections to the shadow: write the request, read the
//! response whole, one request at a time per connection (the daemon's default, `--pipeline 1`),
//! closed loop for `--secs`. No capture, no reassembly, no edit, no runtime: what is left is the
//! kernel's cost of the writes and reads (on loopback, the shadow's side of TCP too) and the
//! syscalls' entries and exits. The bench runs it in the mirror rounds next to the daemon
//! (`floor-*` arms, mirror.rs), against the same shadow, while wrk loads the primary.
//!
//! `--mode`:
//! - `epoll`: one thread, level-triggered epoll; per response one `recv`, then one `send`.
//! - `epoll-ts`: the same, timed as the daemon times the shadow (the daemon's own calls): the
//!   kernel's receive time on every read (`recvmsg`), and each request's transmit time read from
//!   the error queue right after its write.
//! - `uring`: io_uring; each request's send and its read are linked, and every connection's are
//!   submitted and reaped together, one `io_uring_enter` per turn.
//! - `tokio`: tokio's current-thread runtime, a task per connection (`write_all`, `read`).
//!
//! Prints one JSON line: requests, seconds, CPU (getrusage, user + system), the syscalls it made
//! (counted by the code: exact for `epoll` and `uring`, null where a library makes them), wake-ups
//! (voluntary context switches), connections reopened. Any response but a whole 200 with a
//! Content-Length ends the run with an error: a floor measured against a failing shadow is not one.

use std::{
    io::{self, Write},
    net::{SocketAddr, TcpStream},
    os::fd::{AsFd, AsRawFd},
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};
use clap::{Parser, ValueEnum};

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Mode {
    Epoll,
    EpollTs,
    Uring,
    Tokio,
}

/// A bare replay client: the floor under the daemon's CPU per mirrored request.
#[derive(Parser, Debug)]
struct Args {
    #[arg(long, value_enum)]
    mode: Mode,
    /// The shadow (loopback or an address in a namespace the caller made).
    #[arg(long)]
    target: SocketAddr,
    /// Keep-alive connections, one request in flight on each.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..=256))]
    conns: u16,
    /// How long to run, in seconds (1 to 600).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=600))]
    secs: u32,
    /// The request written for every exchange, as is (CRLF line ends, head only).
    #[arg(long)]
    request: String,
}

/// A response's bytes at most (head and body): the shadow serves a 1 KiB file.
const MAX_RESPONSE: usize = 64 * 1024;

#[derive(Default)]
struct Tally {
    requests: u64,
    syscalls: Option<u64>,
    reopened: u64,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("shadow-floor: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(a: &Args) -> Result<()> {
    ensure!(a.request.ends_with("\r\n\r\n"), "--request: a request head ending in an empty line (CRLF CRLF)");
    let deadline = Duration::from_secs(a.secs.into());
    let before = Usage::now();
    let t0 = Instant::now();
    let tally = match a.mode {
        Mode::Epoll => epoll(a, false, deadline),
        Mode::EpollTs => epoll(a, true, deadline),
        Mode::Uring => uring(a, deadline),
        Mode::Tokio => tokio_tasks(a, deadline),
    }?;
    let secs = t0.elapsed().as_secs_f64();
    let after = Usage::now();
    let out = serde_json::json!({
        "mode": clap::ValueEnum::to_possible_value(&a.mode).map(|v| v.get_name().to_string()),
        "conns": a.conns,
        "requests": tally.requests,
        "secs": secs,
        "cpu_s": after.cpu_s - before.cpu_s,
        "syscalls": tally.syscalls,
        "wakeups": after.voluntary - before.voluntary,
        "reopened": tally.reopened,
    });
    println!("{out}");
    Ok(())
}

struct Usage {
    cpu_s: f64,
    voluntary: i64,
}

impl Usage {
    fn now() -> Self {
        // SAFETY: getrusage writes the struct it is given; zeroed is a valid rusage.
        let mut r: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: r is ours, of the right type.
        unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut r) };
        let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        Self { cpu_s: tv(r.ru_utime) + tv(r.ru_stime), voluntary: r.ru_nvcsw }
    }
}

/// The length of the response at the front of `buf` once it is whole.
fn whole(buf: &[u8]) -> Result<Option<usize>> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut r = httparse::Response::new(&mut headers);
    match r.parse(buf).context("the shadow's response")? {
        httparse::Status::Partial => {
            ensure!(buf.len() < MAX_RESPONSE, "the shadow's response head is over {MAX_RESPONSE} bytes");
            Ok(None)
        }
        httparse::Status::Complete(head) => {
            ensure!(r.code == Some(200), "the shadow answered {:?}, not 200", r.code);
            let body = r
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                .and_then(|h| std::str::from_utf8(h.value).ok()?.trim().parse::<usize>().ok())
                .context("the shadow's response has no Content-Length")?;
            let n = head.checked_add(body).filter(|n| *n <= MAX_RESPONSE).context("response over 64 KiB")?;
            ensure!(buf.len() <= n, "the shadow sent bytes past its response, unasked");
            Ok((buf.len() == n).then_some(n))
        }
    }
}

fn connect(target: SocketAddr) -> Result<TcpStream> {
    let s = TcpStream::connect_timeout(&target, Duration::from_secs(5)).with_context(|| format!("connect {target}"))?;
    s.set_nodelay(true)?;
    s.set_nonblocking(true)?;
    Ok(s)
}

/// One connection of the epoll client.
struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    /// Request bytes written on this connection (the transmit timestamps' key).
    sent: u64,
}

fn epoll(a: &Args, timed: bool, deadline: Duration) -> Result<Tally> {
    // SAFETY: plain syscall; the fd is owned below.
    let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    ensure!(ep >= 0, "epoll_create1: {}", io::Error::last_os_error());
    // SAFETY: ep is a new fd that nothing else owns.
    let ep = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(ep) };
    let req = a.request.as_bytes();
    let open = |i: usize| -> Result<Conn> {
        let stream = connect(a.target)?;
        if timed {
            ensure!(
                shadow_daemon::timestamp::enable_receive_timestamps(stream.as_fd())
                    && shadow_daemon::timestamp::enable_transmit_timestamps(stream.as_fd()),
                "this kernel refused the socket timestamps the daemon uses"
            );
        }
        let mut ev = libc::epoll_event { events: libc::EPOLLIN as u32, u64: i as u64 };
        // SAFETY: both fds are open; ev is ours.
        let rc = unsafe { libc::epoll_ctl(ep.as_raw_fd(), libc::EPOLL_CTL_ADD, stream.as_raw_fd(), &mut ev) };
        ensure!(rc == 0, "epoll_ctl: {}", io::Error::last_os_error());
        Ok(Conn { stream, buf: Vec::with_capacity(MAX_RESPONSE), sent: 0 })
    };
    // One request on a connection: the daemon's write, then (timed) its transmit time.
    let send = |c: &mut Conn, t: &mut Tally| -> Result<()> {
        let n = (&c.stream).write(req).context("send")?;
        ensure!(n == req.len(), "a {}-byte request went out in part ({n}): the socket's buffer was full", req.len());
        c.sent += n as u64;
        t.syscalls = t.syscalls.map(|s| s + 1);
        if timed {
            let _ = shadow_daemon::timestamp::transmit_time(c.stream.as_fd(), (c.sent - 1) as u32);
        }
        Ok(())
    };
    let mut t = Tally { syscalls: (!timed).then_some(0), ..Default::default() };
    let mut conns: Vec<Conn> = (0..usize::from(a.conns)).map(open).collect::<Result<_>>()?;
    for c in &mut conns {
        send(c, &mut t)?;
    }
    let start = Instant::now();
    let mut events = [libc::epoll_event { events: 0, u64: 0 }; 64];
    while start.elapsed() < deadline {
        // SAFETY: events is ours, of the length passed.
        let n = unsafe { libc::epoll_wait(ep.as_raw_fd(), events.as_mut_ptr(), events.len() as i32, 100) };
        t.syscalls = t.syscalls.map(|s| s + 1);
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            bail!("epoll_wait: {e}");
        }
        for ev in &events[..n as usize] {
            let i = ev.u64 as usize;
            let c = &mut conns[i];
            let read = if timed {
                shadow_daemon::timestamp::recv_timed(c.stream.as_fd(), &mut c.buf).map(|(n, _)| n)
            } else {
                recv(&c.stream, &mut c.buf)
            };
            t.syscalls = t.syscalls.map(|s| s + 1);
            let gone = match &read {
                Ok(n) => *n == 0,
                Err(e) => closed(e),
            };
            if gone {
                // The shadow closed a keep-alive connection (or reset it): open another, as the
                // daemon would. The request in flight on it is not counted.
                conns[i] = open(i)?;
                t.reopened += 1;
                send(&mut conns[i], &mut t)?;
                continue;
            }
            match read {
                Ok(_) => {
                    if whole(&c.buf)?.is_some() {
                        c.buf.clear();
                        t.requests += 1;
                        send(c, &mut t)?;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e).context("recv"),
            }
        }
    }
    Ok(t)
}

/// The peer closed the connection under a request (a reset, or a write after its close).
fn closed(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe)
}

/// One `recv` into `buf`'s spare capacity (at most what a response may take).
fn recv(s: &TcpStream, buf: &mut Vec<u8>) -> io::Result<usize> {
    let spare = buf.spare_capacity_mut();
    // SAFETY: the pointer and length are buf's spare capacity, which recv writes at most.
    let n = unsafe { libc::recv(s.as_raw_fd(), spare.as_mut_ptr().cast(), spare.len(), libc::MSG_DONTWAIT) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: recv initialised the first n bytes of the spare capacity.
    unsafe { buf.set_len(buf.len() + n as usize) };
    Ok(n as usize)
}

const SEND: u64 = 0;
const RECV: u64 = 1;

fn uring(a: &Args, deadline: Duration) -> Result<Tally> {
    use io_uring::{IoUring, opcode, squeue, types};
    let req = a.request.as_bytes();
    let n = usize::from(a.conns);
    // Every buffer is allocated before the ring and never moved or resized while the kernel may
    // write into it; the ring is dropped first (declared last), after every operation ended.
    let mut conns: Vec<Conn> = Vec::with_capacity(n);
    for _ in 0..n {
        conns.push(Conn { stream: connect(a.target)?, buf: Vec::with_capacity(MAX_RESPONSE), sent: 0 });
    }
    let mut ring: IoUring = IoUring::new(4 * n as u32).context("io_uring_setup")?;
    let mut t = Tally { syscalls: Some(0), ..Default::default() };
    let mut in_flight = 0usize;
    // The send of a request linked to the first read of its response, or a read alone.
    let push = |ring: &mut IoUring, c: &mut Conn, i: usize, send: bool, in_flight: &mut usize| -> Result<()> {
        let fd = types::Fd(c.stream.as_raw_fd());
        let spare = c.buf.spare_capacity_mut();
        let read = opcode::Recv::new(fd, spare.as_mut_ptr().cast(), spare.len() as u32)
            .build()
            .user_data((i as u64) << 1 | RECV);
        let mut sq = ring.submission();
        if send {
            let write = opcode::Send::new(fd, req.as_ptr(), req.len() as u32)
                .build()
                .flags(squeue::Flags::IO_LINK)
                .user_data((i as u64) << 1 | SEND);
            // SAFETY: req outlives the ring; the read's buffer is the connection's spare
            // capacity, untouched until its completion is reaped.
            unsafe { sq.push_multiple(&[write, read]) }.ok().context("the submission queue is full")?;
            *in_flight += 2;
        } else {
            // SAFETY: as above.
            unsafe { sq.push(&read) }.ok().context("the submission queue is full")?;
            *in_flight += 1;
        }
        Ok(())
    };
    for (i, c) in conns.iter_mut().enumerate() {
        push(&mut ring, c, i, true, &mut in_flight)?;
    }
    let start = Instant::now();
    let wait = types::Timespec::from(Duration::from_millis(100));
    // The first error ends the run as the deadline does: every operation is let end first.
    let mut failed: Option<anyhow::Error> = None;
    let mut ending = false;
    let end_by = deadline + Duration::from_secs(5);
    loop {
        if !ending && (failed.is_some() || start.elapsed() >= deadline) {
            // Stop: every socket's reads end (at once, with 0) so that no operation is left in
            // the kernel holding a buffer when the ring and the buffers are dropped.
            ending = true;
            for c in &conns {
                let _ = c.stream.shutdown(std::net::Shutdown::Both);
            }
        }
        if ending && in_flight == 0 {
            break;
        }
        if start.elapsed() >= end_by {
            // The kernel may still write into the buffers: they are never freed.
            std::mem::forget(conns);
            bail!("{in_flight} io_uring operations did not end 5 s after the sockets were shut");
        }
        let args = types::SubmitArgs::new().timespec(&wait);
        match ring.submitter().submit_with_args(1, &args) {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::ETIME) || e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                failed.get_or_insert(anyhow::Error::new(e).context("io_uring_enter"));
            }
        }
        t.syscalls = t.syscalls.map(|s| s + 1);
        let done: Vec<(u64, i32)> = ring.completion().map(|c| (c.user_data(), c.result())).collect();
        for (data, res) in done {
            in_flight -= 1;
            if ending {
                continue;
            }
            let i = (data >> 1) as usize;
            let mut step = || -> Result<()> {
                let c = &mut conns[i];
                if data & 1 == SEND {
                    ensure!(
                        res == req.len() as i32,
                        "a request's send ended with {res} of {} bytes (its linked read is cancelled)",
                        req.len()
                    );
                    return Ok(());
                }
                match res {
                    r if r == 0 || closed(&io::Error::from_raw_os_error(-r)) => {
                        c.stream = connect(a.target)?;
                        c.buf.clear();
                        t.reopened += 1;
                        push(&mut ring, c, i, true, &mut in_flight)
                    }
                    r if r > 0 => {
                        // SAFETY: the kernel wrote r bytes into the spare capacity it was given.
                        unsafe { c.buf.set_len(c.buf.len() + r as usize) };
                        let send = whole(&c.buf)?.is_some();
                        if send {
                            c.buf.clear();
                            t.requests += 1;
                        }
                        push(&mut ring, c, i, send, &mut in_flight)
                    }
                    r => bail!("a read of the shadow's response failed: {}", io::Error::from_raw_os_error(-r)),
                }
            };
            if let Err(e) = step() {
                failed.get_or_insert(e);
            }
        }
    }
    drop(ring);
    failed.map_or(Ok(t), Err)
}

fn tokio_tasks(a: &Args, deadline: Duration) -> Result<Tally> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        let req: std::sync::Arc<[u8]> = a.request.as_bytes().into();
        let start = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..a.conns {
            let (req, target) = (req.clone(), a.target);
            let mut stream = tokio::net::TcpStream::from_std(connect(target)?)?;
            tasks.push(tokio::spawn(async move {
                let (mut requests, mut reopened) = (0u64, 0u64);
                let mut buf = Vec::with_capacity(MAX_RESPONSE);
                while start.elapsed() < deadline {
                    buf.clear();
                    // Whether the shadow closed the connection under this request.
                    let mut gone = match stream.write_all(&req).await {
                        Ok(()) => false,
                        Err(e) if closed(&e) => true,
                        Err(e) => return Err(anyhow::anyhow!("send: {e}")),
                    };
                    while !gone {
                        match stream.read_buf(&mut buf).await {
                            Ok(0) => gone = true,
                            Ok(_) if whole(&buf)?.is_some() => {
                                requests += 1;
                                break;
                            }
                            Ok(_) => {}
                            Err(e) if closed(&e) => gone = true,
                            Err(e) => return Err(anyhow::anyhow!("recv: {e}")),
                        }
                    }
                    if gone {
                        stream = tokio::net::TcpStream::from_std(connect(target)?)?;
                        reopened += 1;
                    }
                }
                anyhow::Ok((requests, reopened))
            }));
        }
        let mut t = Tally::default();
        for task in tasks {
            let (r, o) = task.await??;
            t.requests += r;
            t.reopened += o;
        }
        Ok(t)
    })
}
