//! One connection of the test server: read each request as framed, record it, answer as the
//! mode says.

use std::{
    fs::File,
    io::{BufWriter, Read, Write},
    net::TcpStream,
    sync::atomic::Ordering,
    thread,
    time::{Duration, Instant},
};

use super::{DEMO_MAX_BODY, ENDLESS_BOUND, MAX_HEAD, Mode, Shared, demo};

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

pub(super) fn serve(s: TcpStream, conn: u64, shared: &Shared) -> std::io::Result<()> {
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
            && !g.pass(&shared.stop, c.started + o.lifetime)
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
        let close = req.close || !o.keep_alive;
        c.s.write_all(&response(shared, &req, close))?;
        if close {
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
fn response(shared: &Shared, req: &Request, close: bool) -> Vec<u8> {
    let o = &shared.opts;
    let close = if close { "connection: close\r\n" } else { "" };
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
    let len = shared.body.as_ref().map_or(o.response_bytes, |b| b.len());
    let status = if o.mode == Mode::ServerError { "500 Internal Server Error" } else { "200 OK" };
    let mut out = format!(
        "HTTP/1.1 {status}\r\ncontent-type: text/plain\r\ncontent-length: {len}\r\nx-served-by: shadow-testserver\r\n{close}\r\n"
    )
    .into_bytes();
    if req.method != "HEAD" || o.mode == Mode::HeadBody {
        match &shared.body {
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
