//! A small HTTP/1.1 server for shadow's tests, demo and benchmarks: plays the primary service or
//! the shadow, and can record every request it receives byte for byte.
//!
//! shadow-testserver --listen ADDR [--record DIR] [--delay-ms N] [--response-bytes N]
//!                   [--max-conns N] [--mode ok|garbage|reset|head-body] [--close-after N]
//!                   [--body-file PATH]
//!
//! Modes that misbehave, for the fault suites: `garbage` answers with bytes that are not HTTP,
//! `reset` resets part way through a response, `head-body` answers HEAD with a body as if it were
//! a GET (a shadow bug), and `--close-after N` closes each connection after answering N requests
//! without saying so, once it has read every request the client already sent (recorded as read,
//! never answered).
//!
//! With --record, raw bytes of connection N go to DIR/raw-N.bin and one JSON line per request to
//! DIR/index.jsonl: {"conn":N,"offset":O,"len":L,"method":"GET","target":"/x","tagged":true}.
//! Threads, std only: nothing here should be clever.

use std::{
    fs::{File, OpenOptions},
    io::{BufWriter, Read, Write},
    net::{TcpListener, TcpStream},
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    thread,
    time::Duration,
};

#[derive(Clone)]
struct Opts {
    record: Option<PathBuf>,
    delay: Duration,
    response_bytes: usize,
    mode: String,
    /// Close each connection after answering this many requests (0: never).
    close_after: usize,
    /// Every response's body (`--body-file`), instead of `--response-bytes` of `x`.
    body: Option<Arc<Vec<u8>>>,
}

fn main() {
    let mut listen = String::from("127.0.0.1:0");
    let mut opts =
        Opts { record: None, delay: Duration::ZERO, response_bytes: 64, mode: "ok".into(), close_after: 0, body: None };
    let mut max_conns = 1024usize;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || args.next().unwrap_or_else(|| die(&format!("{a} needs a value")));
        match a.as_str() {
            "--listen" => listen = val(),
            "--record" => opts.record = Some(PathBuf::from(val())),
            "--delay-ms" => {
                opts.delay = Duration::from_millis(val().parse().unwrap_or_else(|_| die("--delay-ms: not a number")))
            }
            "--response-bytes" => {
                opts.response_bytes = val().parse().unwrap_or_else(|_| die("--response-bytes: not a number"))
            }
            "--max-conns" => max_conns = val().parse().unwrap_or_else(|_| die("--max-conns: not a number")),
            "--mode" => opts.mode = val(),
            "--body-file" => {
                let path = val();
                let bytes = std::fs::read(&path).unwrap_or_else(|e| die(&format!("--body-file {path}: {e}")));
                opts.body = Some(Arc::new(bytes));
            }
            "--close-after" => opts.close_after = val().parse().unwrap_or_else(|_| die("--close-after: not a number")),
            other => die(&format!("unknown argument {other}")),
        }
    }
    if let Some(dir) = &opts.record {
        std::fs::create_dir_all(dir).unwrap_or_else(|e| die(&format!("--record {}: {e}", dir.display())));
    }
    let listener = TcpListener::bind(&listen).unwrap_or_else(|e| die(&format!("--listen {listen}: {e}")));
    eprintln!("shadow-testserver listening on {}", listener.local_addr().map(|a| a.to_string()).unwrap_or_default());
    let index = opts.record.as_ref().map(|d| {
        let f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(d.join("index.jsonl"))
            .unwrap_or_else(|e| die(&format!("open index.jsonl: {e}")));
        Arc::new(Mutex::new(f))
    });
    let next_conn = AtomicU64::new(0);
    let live = Arc::new(AtomicUsize::new(0));
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        if live.load(Ordering::Relaxed) >= max_conns {
            drop(stream);
            continue;
        }
        let conn = next_conn.fetch_add(1, Ordering::Relaxed);
        let (opts, index, live) = (opts.clone(), index.clone(), live.clone());
        live.fetch_add(1, Ordering::Relaxed);
        thread::spawn(move || {
            let _ = serve(stream, conn, &opts, index.as_deref());
            live.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

fn die(msg: &str) -> ! {
    eprintln!("shadow-testserver: {msg}");
    std::process::exit(2);
}

const MAX_HEAD: usize = 64 * 1024;

fn serve(mut s: TcpStream, conn: u64, o: &Opts, index: Option<&Mutex<File>>) -> std::io::Result<()> {
    let _ = s.set_nodelay(true);
    let mut raw = match &o.record {
        Some(d) => Some(BufWriter::new(File::create(d.join(format!("raw-{conn}.bin")))?)),
        None => None,
    };
    let mut offset = 0u64;
    let mut buf: Vec<u8> = Vec::with_capacity(16 * 1024);
    let mut chunk = vec![0u8; 64 * 1024];
    let mut answered = 0usize;
    // Past `--close-after`: record what was read already, answer nothing, then close.
    let mut draining = false;
    loop {
        // Read until a whole head is buffered.
        let head_len = loop {
            if let Some(p) = find(&buf, b"\r\n\r\n") {
                break p + 4;
            }
            if buf.len() > MAX_HEAD || draining {
                return Ok(());
            }
            let n = s.read(&mut chunk)?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let mut headers = [httparse::EMPTY_HEADER; 100];
        let mut req = httparse::Request::new(&mut headers);
        let Ok(httparse::Status::Complete(_)) = req.parse(&buf[..head_len]) else {
            s.write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")?;
            return Ok(());
        };
        let method = req.method.unwrap_or("").to_string();
        let target = req.path.unwrap_or("").to_string();
        let mut content_length = 0usize;
        let mut chunked = false;
        let mut tagged = false;
        let mut expect = false;
        let mut close = req.version == Some(0);
        for h in req.headers.iter() {
            let v = String::from_utf8_lossy(h.value).trim().to_ascii_lowercase();
            match h.name.to_ascii_lowercase().as_str() {
                "content-length" => content_length = v.parse().unwrap_or(0),
                "transfer-encoding" => chunked = v.contains("chunked"),
                "x-shadow-request" => tagged = true,
                "expect" => expect = v == "100-continue",
                "connection" => close = v == "close",
                _ => {}
            }
        }
        if expect && buf.len() == head_len {
            s.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
        }
        // Read the body as framed, keeping the raw bytes.
        let total = if chunked {
            loop {
                if let Some(end) = chunked_end(&buf[head_len..]) {
                    break head_len + end;
                }
                if draining {
                    return Ok(());
                }
                let n = s.read(&mut chunk)?;
                if n == 0 {
                    return Ok(());
                }
                buf.extend_from_slice(&chunk[..n]);
            }
        } else {
            while buf.len() < head_len + content_length {
                if draining {
                    return Ok(());
                }
                let n = s.read(&mut chunk)?;
                if n == 0 {
                    return Ok(());
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            head_len + content_length
        };
        if let Some(w) = raw.as_mut() {
            w.write_all(&buf[..total])?;
            w.flush()?;
        }
        if let Some(ix) = index
            && let Ok(mut f) = ix.lock()
        {
            let line = format!(
                "{{\"conn\":{conn},\"offset\":{offset},\"len\":{total},\"method\":{},\"target\":{},\"tagged\":{tagged}}}\n",
                json_str(&method),
                json_str(&target)
            );
            let _ = f.write_all(line.as_bytes());
        }
        offset += total as u64;
        buf.drain(..total);
        if draining {
            continue;
        }
        if !o.delay.is_zero() {
            thread::sleep(o.delay);
        }
        match o.mode.as_str() {
            "garbage" => {
                s.write_all(b"this is not http\r\n\r\n")?;
                return Ok(());
            }
            "reset" => {
                s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100000\r\n\r\npartial")?;
                let _ = socket2_linger_zero(&s);
                return Ok(());
            }
            _ => {}
        }
        let body = o.body.as_ref().map_or_else(|| vec![b'x'; o.response_bytes], |b| b.to_vec());
        let head = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nx-served-by: shadow-testserver\r\n{}\r\n",
            body.len(),
            if close { "connection: close\r\n" } else { "" }
        );
        // One write per response, body included: a pipelining client reads it as it was sent.
        let mut response = head.into_bytes();
        if method != "HEAD" || o.mode == "head-body" {
            response.extend_from_slice(&body);
        }
        s.write_all(&response)?;
        if close {
            return Ok(());
        }
        answered += 1;
        if o.close_after > 0 && answered >= o.close_after {
            // Take in what the client sent before the answer went out (a pipeline arrives at
            // once), so the close is a FIN after reading, not a reset over unread data.
            s.set_nonblocking(true)?;
            loop {
                match s.read(&mut chunk) {
                    Ok(0) => break,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    Err(_) => break,
                }
            }
            draining = true;
        }
    }
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

/// Close with RST: SO_LINGER {on, 0} then drop.
fn socket2_linger_zero(s: &TcpStream) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let l = libc::linger { l_onoff: 1, l_linger: 0 };
    // SAFETY: valid fd and a correctly sized linger struct.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&l as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as u32,
        )
    };
    if rc == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
}
