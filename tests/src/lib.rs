//! Helpers for shadow's kernel tests, demo and benchmarks: privilege gate, network namespaces that
//! clean up after themselves, a two-host veth topology, crafted frames, and a thread that runs
//! inside a namespace.
//!
//! Network rule: traffic only goes to loopback or to addresses inside namespaces created here.

pub mod capture_thread;
pub mod comparing;
pub mod corpus;
pub mod faults;
pub mod frames;
pub mod inject;
pub mod nginx;
pub mod process;
pub mod prom;
pub mod rig;
pub mod server;
pub mod topo;

use std::{
    fs,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// Gate for tests that need root and a BPF-capable kernel. With `SHADOW_REQUIRE_KERNEL=1` a
/// missing prerequisite is a failure; otherwise the test prints one line and skips.
pub fn require_kernel(test: &str) -> bool {
    let required = std::env::var("SHADOW_REQUIRE_KERNEL").is_ok_and(|v| v == "1");
    // SAFETY: geteuid has no arguments and cannot fail.
    let problem = if unsafe { libc::geteuid() } != 0 {
        Some("not running as root")
    } else if !std::path::Path::new("/sys/kernel/btf/vmlinux").exists() {
        Some("kernel has no BTF (/sys/kernel/btf/vmlinux)")
    } else if shadow_daemon::capture::EBPF_OBJECT.is_empty() {
        Some("built with SHADOW_SKIP_EBPF=1 (no eBPF object)")
    } else {
        None
    };
    match problem {
        None => true,
        Some(p) if required => panic!("{test}: SHADOW_REQUIRE_KERNEL=1 but {p}"),
        Some(p) => {
            eprintln!("skipping {test}: {p} (set SHADOW_REQUIRE_KERNEL=1 to make this a failure)");
            false
        }
    }
}

/// Like [`require_kernel`], for an external tool the test drives (curl, nginx, oha, promtool).
pub fn require_tool(test: &str, tool: &str) -> bool {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if found {
        return true;
    }
    if std::env::var("SHADOW_REQUIRE_KERNEL").is_ok_and(|v| v == "1") {
        panic!("{test}: SHADOW_REQUIRE_KERNEL=1 but `{tool}` is not installed (cargo xtask setup installs it)");
    }
    eprintln!("skipping {test}: `{tool}` is not installed");
    false
}

/// Run a command to completion and panic with its output if it fails.
pub fn sh(cmd: &[&str]) -> String {
    let out = Command::new(cmd[0]).args(&cmd[1..]).output().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    if !out.status.success() {
        panic!(
            "{cmd:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A child process killed (and reaped) on drop, so a failing test leaves nothing running.
pub struct Proc {
    pub name: String,
    pub child: Child,
}

impl Proc {
    pub fn spawn(name: &str, cmd: &mut Command) -> Self {
        let child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        Self { name: name.into(), child }
    }

    /// Send SIGTERM and wait up to `timeout` for a clean exit; returns the exit code.
    pub fn terminate(&mut self, timeout: Duration) -> Option<i32> {
        // SAFETY: no pointers; a pid that has exited makes kill fail, which is fine here.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(st)) = self.child.try_wait() {
                return st.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        self.child.wait().ok().and_then(|s| s.code())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // SIGTERM first: servers such as nginx take their worker processes down with them only
        // on a signal they handle; SIGKILL on the master would orphan the workers.
        if let Ok(None) = self.child.try_wait() {
            self.terminate(Duration::from_secs(3));
        }
    }
}

/// Wait until `f` returns true, polling every 20 ms, or panic after `timeout` naming `what`.
pub fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("timed out after {timeout:?} waiting for {what}");
}

/// A fresh scratch directory under the target dir (or /tmp), removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(tag: &str) -> Self {
        let base = std::env::temp_dir().join(format!("shadow-{tag}-{}-{}", std::process::id(), unique()));
        fs::create_dir_all(&base).unwrap_or_else(|e| panic!("create {}: {e}", base.display()));
        Self(base)
    }
    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if std::env::var_os("SHADOW_KEEP_SCRATCH").is_none() {
            let _ = fs::remove_dir_all(&self.0);
        }
    }
}

/// A process-wide counter for unique names.
pub fn unique() -> u32 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// Path of a release binary of this workspace: the daemon and the servers that tests, the demo
/// and the benches drive are the ones users run, never a debug build.
pub fn workspace_bin(name: &str) -> PathBuf {
    let p = bin_dir().join(name);
    assert!(
        p.exists(),
        "{} not built: run `cargo build --release -p shadow-daemon -p shadow-tests --bins` (cargo xtask test does)",
        p.display()
    );
    p
}

/// Directory of the release binaries: `SHADOW_BIN_DIR` when xtask sets it, else `release/` of the
/// target directory the running executable was built in (`target/{debug,release}[/deps]/exe`).
pub fn bin_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("SHADOW_BIN_DIR") {
        return PathBuf::from(d);
    }
    let exe = std::env::current_exe().expect("current_exe");
    let mut dir = exe.parent().expect("exe dir").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    // target/debug or target/release → target/release
    dir.pop();
    dir.join("release")
}

/// Prometheus text: the value of the sample whose name and labels are exactly `series`
/// (`shadow_requests_in_flight`, `shadow_requests_dropped_total{reason="queue_full"}`).
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Wait until the daemon whose metrics listen on `addr` inside `ns` has captured at least
/// `captured` requests and settled every one of them (replayed or dropped, none in flight).
/// Returns the last scrape. This is what a test waits for before stopping the daemon, instead
/// of sleeping and hoping the machine kept up.
pub fn wait_settled(ns: &topo::NetNs, addr: std::net::SocketAddr, captured: u64, timeout: Duration) -> String {
    let mut last = String::new();
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Some(text) = ns.http_get(addr, "/metrics") {
            let c = metric(&text, "shadow_requests_captured_total").unwrap_or(0.0);
            let f = metric(&text, "shadow_requests_in_flight").unwrap_or(f64::MAX);
            if c >= captured as f64 && f == 0.0 {
                return text;
            }
            last = text;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!(
        "timed out after {timeout:?} waiting for {captured} captured requests, all settled; last scrape:\n{}",
        last.lines()
            .filter(|l| l.starts_with("shadow_requests") || l.starts_with("shadow_kernel"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// One HTTP/1.1 client connection with exact byte accounting, used by the demo and the benches.
pub mod client {
    use std::{
        io::{Read, Write},
        net::{SocketAddr, TcpStream},
        time::{Duration, Instant},
    };

    pub struct Conn {
        s: TcpStream,
        buf: Vec<u8>,
        pub sent: u64,
        pub received: u64,
    }

    impl Conn {
        pub fn connect(addr: SocketAddr) -> std::io::Result<Self> {
            let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
            s.set_read_timeout(Some(Duration::from_secs(10)))?;
            s.set_nodelay(true)?;
            Ok(Self { s, buf: Vec::new(), sent: 0, received: 0 })
        }

        pub fn local_addr(&self) -> SocketAddr {
            self.s.local_addr().expect("local addr")
        }

        /// Send one request and read one response framed by Content-Length; returns the status.
        pub fn exchange(&mut self, request: &[u8]) -> std::io::Result<u16> {
            self.exchange_raw(request).map(|r| status_of(&r))
        }

        /// Send one request and return the raw bytes of its response.
        pub fn exchange_raw(&mut self, request: &[u8]) -> std::io::Result<Vec<u8>> {
            self.s.write_all(request)?;
            self.sent += request.len() as u64;
            let r = read_response(&mut self.s, &mut self.buf, Duration::from_secs(10))?;
            self.received += r.len() as u64;
            Ok(r)
        }
    }

    /// Read one response framed by Content-Length from `s`, keeping bytes beyond it in `buf` for
    /// the next call (pipelining); returns the response's raw bytes.
    pub fn read_response(s: &mut TcpStream, buf: &mut Vec<u8>, timeout: Duration) -> std::io::Result<Vec<u8>> {
        let deadline = Instant::now() + timeout;
        let mut chunk = [0u8; 65536];
        loop {
            if let Some(h) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..h]).to_ascii_lowercase();
                let cl: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                let total = h + 4 + cl;
                if buf.len() >= total {
                    return Ok(buf.drain(..total).collect());
                }
            }
            if Instant::now() > deadline {
                return Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "response timed out"));
            }
            let n = s.read(&mut chunk)?;
            if n == 0 {
                return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "server closed"));
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// The status code of a raw response (0 if the status line does not parse).
    pub fn status_of(resp: &[u8]) -> u16 {
        let line = resp.split(|&b| b == b'\n').next().unwrap_or_default();
        String::from_utf8_lossy(line).split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0)
    }

    /// A request with a deterministic body of `body_len` bytes (GET when 0).
    pub fn request(method: &str, target: &str, body_len: usize) -> Vec<u8> {
        let mut r = if body_len == 0 {
            format!("{method} {target} HTTP/1.1\r\nHost: demo.svc\r\nUser-Agent: shadow-demo\r\nAccept: */*\r\n\r\n")
                .into_bytes()
        } else {
            format!(
                "{method} {target} HTTP/1.1\r\nHost: demo.svc\r\nUser-Agent: shadow-demo\r\nContent-Type: application/octet-stream\r\nContent-Length: {body_len}\r\n\r\n"
            )
            .into_bytes()
        };
        r.extend((0..body_len).map(|i| (i * 31 % 251) as u8));
        r
    }
}

/// One request as shadow-testserver recorded it (`--record DIR`).
#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: String,
    pub target: String,
    pub tagged: bool,
    pub raw: Vec<u8>,
}

/// Every request recorded in `dir`, in index order (per connection order, connections interleaved).
pub fn recorded_requests(dir: &std::path::Path) -> Vec<Recorded> {
    let text = fs::read_to_string(dir.join("index.jsonl")).unwrap_or_default();
    let mut files: std::collections::HashMap<u64, Vec<u8>> = std::collections::HashMap::new();
    let mut out = Vec::new();
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("index line {line:?}: {e}"));
        let conn = v["conn"].as_u64().expect("conn");
        let off = v["offset"].as_u64().expect("offset") as usize;
        let len = v["len"].as_u64().expect("len") as usize;
        let data =
            files.entry(conn).or_insert_with(|| fs::read(dir.join(format!("raw-{conn}.bin"))).unwrap_or_default());
        let raw = data.get(off..off + len).unwrap_or_else(|| panic!("raw-{conn}.bin shorter than its index")).to_vec();
        out.push(Recorded {
            method: v["method"].as_str().unwrap_or_default().to_string(),
            target: v["target"].as_str().unwrap_or_default().to_string(),
            tagged: v["tagged"].as_bool().unwrap_or(false),
            raw,
        });
    }
    out
}

/// `raw` without the first occurrence of `line` (e.g. the tag header line the daemon adds).
pub fn without_line(raw: &[u8], line: &[u8]) -> Vec<u8> {
    match raw.windows(line.len()).position(|w| w == line) {
        Some(p) => [&raw[..p], &raw[p + line.len()..]].concat(),
        None => raw.to_vec(),
    }
}

/// Where cgroup v2 is mounted on this host, from /proc/mounts (a hybrid host mounts it at
/// /sys/fs/cgroup/unified): read, never assumed.
pub fn cgroup2_root() -> PathBuf {
    let mounts = fs::read_to_string("/proc/mounts").expect("read /proc/mounts");
    mounts
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            (f.len() > 2 && f[2] == "cgroup2").then(|| PathBuf::from(f[1]))
        })
        .expect("cgroup v2 is mounted")
}
