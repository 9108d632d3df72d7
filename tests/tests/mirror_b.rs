//! Kernel tier B, the whole loop: real clients in a namespace, a real primary, the daemon binary
//! attached to the server's interface, and a shadow that records what it receives. The shadow must
//! receive exactly the requests the primary received (those allowed), each tagged and otherwise
//! byte-identical; the daemon's counts must reconcile.

use std::{
    io::Write,
    net::{SocketAddr, TcpStream},
    path::PathBuf,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use shadow_tests::{
    Proc, Recorded, Scratch,
    client::{read_response, status_of},
    faults::{loaded_program_ids, shadow_tcx_programs},
    nginx::{self, Nginx},
    recorded_requests, require_kernel, require_tool,
    server::Options,
    topo::{NetNs, TwoHosts},
    wait_for, wait_settled, without_line, workspace_bin,
};

const PORT: u16 = 8080;
const SHADOW_PORT: u16 = 9090;
const METRICS: &str = "127.0.0.1:9477";
// The daemon's default edits of a request without trace headers: the tag, then the shadow
// marker in a new W3C baggage header, both before the blank line.
const TAG_LINE: &[u8] = b"X-Shadow-Request: true\r\nbaggage: shadow=true\r\n";
/// Requests in the nginx test's load burst.
const BURST: usize = 20_000;

struct Rig {
    t: TwoHosts,
    scratch: Scratch,
    daemon: Option<Proc>,
    shadow: Option<Proc>,
    _primary: Option<Proc>,
    log: PathBuf,
}

impl Rig {
    /// `primary`: a testserver recording to scratch/primary (None: the caller starts its own).
    fn new(tag: &str, record_primary: bool) -> Self {
        let t = TwoHosts::new(tag);
        let scratch = Scratch::new(tag);
        let primary = record_primary.then(|| {
            Options::new().response_bytes(200).record(scratch.path("primary")).spawn(&t.server, &format!("[::]:{PORT}"))
        });
        let log = scratch.path("daemon.log");
        let mut rig = Self { t, scratch, daemon: None, shadow: None, _primary: primary, log };
        rig.start_shadow(0);
        rig
    }

    fn start_shadow(&mut self, delay_ms: u64) {
        let p = Options::new()
            .response_bytes(50)
            .delay(Duration::from_millis(delay_ms))
            .record(self.scratch.path("shadow"))
            .spawn(&self.t.server, &format!("127.0.0.1:{SHADOW_PORT}"));
        self.shadow = Some(p);
    }

    fn start_daemon(&mut self, extra: &[&str]) {
        let bin = workspace_bin("shadow-daemon");
        let d = Proc::spawn(
            "shadow-daemon",
            self.t
                .server
                .command(bin.to_str().expect("utf-8"))
                .args(["--interface", &self.t.server_if, "--port", &PORT.to_string()])
                .args(["--shadow", &format!("127.0.0.1:{SHADOW_PORT}"), "--metrics-addr", METRICS])
                .args(["--summary-file", self.scratch.path("summary.json").to_str().expect("utf-8")])
                .args(["--control", self.scratch.path("control.sock").to_str().expect("utf-8")])
                .args(extra)
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&self.log).expect("log")),
        );
        let log = self.log.clone();
        wait_for("daemon to attach", Duration::from_secs(30), || {
            std::fs::read_to_string(&log).is_ok_and(|l| l.contains("capturing ports"))
        });
        self.daemon = Some(d);
    }

    /// Wait until the daemon has captured `captured` requests and settled each (replayed or
    /// dropped), then SIGTERM it (clean exit required) and return its summary.
    fn stop_daemon(&mut self, captured: u64) -> serde_json::Value {
        wait_settled(&self.t.server, self.metrics_addr(), captured, Duration::from_secs(60));
        let mut d = self.daemon.take().expect("daemon running");
        let code = d.terminate(Duration::from_secs(15));
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        assert_eq!(code, Some(0), "daemon exit code; log:\n{log}");
        let text = std::fs::read_to_string(self.scratch.path("summary.json")).expect("summary file");
        serde_json::from_str(&text).expect("summary json")
    }

    fn shadow_got(&self) -> Vec<Recorded> {
        recorded_requests(&self.scratch.path("shadow"))
    }

    fn primary_got(&self) -> Vec<Recorded> {
        recorded_requests(&self.scratch.path("primary"))
    }

    fn client<T: Send + 'static>(&self, f: impl FnOnce(SocketAddr, SocketAddr) -> T + Send + 'static) -> T {
        let v4 = SocketAddr::new(self.t.server_v4.parse().expect("v4"), PORT);
        let v6 = SocketAddr::new(self.t.server_v6.parse().expect("v6"), PORT);
        let name = self.t.client.name.clone();
        std::thread::spawn(move || {
            NetNs { name }.enter_and_forget();
            f(v4, v6)
        })
        .join()
        .expect("client thread")
    }

    fn curl(&self, args: &[&str]) {
        let st = self
            .t
            .client
            .command("curl")
            .args(["-sS", "--fail", "--max-time", "30"])
            .args(args)
            .stdout(Stdio::null())
            .status()
            .expect("curl");
        assert!(st.success(), "curl {args:?}");
    }

    fn metrics_addr(&self) -> SocketAddr {
        METRICS.parse().expect("metrics address")
    }

    fn scrape(&self) -> String {
        self.t.server.exec(&["curl", "-sS", "--max-time", "5", &format!("http://{METRICS}/metrics")])
    }
}

/// Read `n` responses framed by Content-Length; returns their statuses.
fn read_responses(s: &mut TcpStream, n: usize) -> Vec<u16> {
    let mut buf = Vec::new();
    (0..n).map(|_| status_of(&read_response(s, &mut buf, Duration::from_secs(20)).expect("response"))).collect()
}

fn sorted(v: impl IntoIterator<Item = Vec<u8>>) -> Vec<Vec<u8>> {
    let mut v: Vec<Vec<u8>> = v.into_iter().collect();
    v.sort();
    v
}

fn assert_same_requests(primary: &[Recorded], shadow: &[Recorded]) {
    assert!(shadow.iter().all(|r| r.tagged), "every mirrored request carries the tag header");
    let p = sorted(primary.iter().map(|r| r.raw.clone()));
    let s = sorted(shadow.iter().map(|r| without_line(&r.raw, TAG_LINE)));
    assert_eq!(p.len(), s.len(), "shadow received {} requests, primary {}", s.len(), p.len());
    for (a, b) in p.iter().zip(&s) {
        assert!(
            a == b,
            "a mirrored request differs from the original ({} vs {} bytes): {:?}",
            a.len(),
            b.len(),
            String::from_utf8_lossy(&a[..a.len().min(120)])
        );
    }
}

#[test]
fn every_kind_of_client_traffic_is_mirrored_byte_for_byte() {
    if !require_kernel("every_kind_of_client_traffic_is_mirrored") || !require_tool("mirror", "curl") {
        return;
    }
    let mut r = Rig::new("m1", true);
    r.start_daemon(&["--allow-method", "GET,HEAD,POST,PUT", "--max-body-bytes", "16MiB"]);

    // curl: keep-alive reuse over three URLs, IPv6, a chunked upload, a 10 MiB POST.
    let base4 = format!("http://{}:{PORT}", r.t.server_v4);
    let base6 = format!("http://[{}]:{PORT}", r.t.server_v6);
    r.curl(&[&format!("{base4}/ka/1"), &format!("{base4}/ka/2?q=x"), &format!("{base4}/ka/3")]);
    r.curl(&[&format!("{base6}/v6/items/42")]);
    let small = r.scratch.path("small.bin");
    std::fs::write(&small, (0..70_000u32).map(|i| (i % 256) as u8).collect::<Vec<u8>>()).expect("write");
    r.curl(&[
        "-H",
        "Transfer-Encoding: chunked",
        "--data-binary",
        &format!("@{}", small.display()),
        &format!("{base4}/chunked"),
    ]);
    let big = r.scratch.path("big.bin");
    std::fs::write(&big, (0..10 * 1024 * 1024u32).map(|i| (i % 253) as u8).collect::<Vec<u8>>()).expect("write");
    r.curl(&["--data-binary", &format!("@{}", big.display()), &format!("{base4}/big")]);
    r.curl(&["-I", &format!("{base4}/head")]);

    // A raw client: five pipelined requests in one write, a hand-made chunked body with an
    // extension and a trailer, then 200 concurrent connections.
    r.client(|v4, _| {
        let mut s = TcpStream::connect(v4).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
        let mut pipelined = Vec::new();
        for i in 0..5 {
            pipelined.extend_from_slice(format!("GET /pipe/{i} HTTP/1.1\r\nHost: svc\r\n\r\n").as_bytes());
        }
        s.write_all(&pipelined).expect("write");
        assert_eq!(read_responses(&mut s, 5), vec![200; 5]);
        let chunked = b"POST /handmade HTTP/1.1\r\nHost: svc\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n1\r\n \r\n5\r\nworld\r\n0\r\nX-Trailer: yes\r\n\r\n";
        s.write_all(chunked).expect("write");
        assert_eq!(read_responses(&mut s, 1), vec![200]);
    });
    r.client(|v4, v6| {
        let handles: Vec<_> = (0..200)
            .map(|i| {
                std::thread::spawn(move || {
                    let addr = if i % 2 == 0 { v4 } else { v6 };
                    let mut s = TcpStream::connect(addr).expect("connect");
                    s.set_read_timeout(Some(Duration::from_secs(20))).expect("timeout");
                    s.write_all(
                        format!("GET /concurrent/{i} HTTP/1.1\r\nHost: svc\r\nConnection: close\r\n\r\n").as_bytes(),
                    )
                    .expect("write");
                    read_responses(&mut s, 1)
                })
            })
            .collect();
        for h in handles {
            assert_eq!(h.join().expect("client"), vec![200]);
        }
    });

    let summary = r.stop_daemon(213);
    let primary = r.primary_got();
    let shadow = r.shadow_got();
    // 3 + 1 + 1 + 1 + 1 (curl) + 5 + 1 (raw) + 200 (concurrent)
    assert_eq!(primary.len(), 213, "the primary got every request");
    assert_same_requests(&primary, &shadow);
    let ex = &summary["extraction"];
    assert_eq!(ex["requests_extracted"], 213, "{ex}");
    assert_eq!(ex["responses_extracted"], 213, "{ex}");
    assert_eq!(ex["segments_reconcile"], true);
    let m = &summary["mirror"];
    assert_eq!(m["requests"]["replayed"], 213, "{m}");
    assert_eq!(m["reconciles"], true);
}

fn start_nginx(r: &Rig) -> Proc {
    Nginx::new(PORT).start(&r.t.server, &r.scratch.path("nginx"))
}

fn nginx_requests(r: &Rig) -> Vec<String> {
    nginx::access_log(&r.scratch.path("nginx")).iter().filter_map(|l| l.split('"').nth(1).map(str::to_string)).collect()
}

#[test]
fn nginx_primary_safe_defaults_metrics_reconcile_and_promtool_passes() {
    if !require_kernel("nginx_primary_safe_defaults")
        || !require_tool("nginx_primary", "nginx")
        || !require_tool("nginx_primary", "curl")
        || !require_tool("nginx_primary", "hey")
        || !require_tool("nginx_primary", "promtool")
    {
        return;
    }
    let mut r = Rig::new("m2", false);
    let _nginx = start_nginx(&r);
    r.start_daemon(&[]);
    let base = format!("http://{}:{PORT}", r.t.server_v4);
    for i in 0..20 {
        r.curl(&[&format!("{base}/orders/{i}")]);
    }
    for i in 0..10 {
        r.curl(&["-d", "amount=100", &format!("{base}/charge/{i}")]);
    }
    r.curl(&["-X", "DELETE", &format!("{base}/orders/1")]);
    // A burst bounded in count, as fast as 8 keep-alive connections go. Each request costs the
    // ring buffer at most two records of 592 bytes (8-byte ring header, 72-byte segment header,
    // 512-byte bucket: request and response are one small segment each), so the whole burst
    // (~24 MB) fits the default 32 MiB ring even if the daemon read nothing while it ran:
    // "captured == served" does not depend on this machine keeping up.
    let out =
        r.t.client
            .command("hey")
            .args(["-n", &BURST.to_string(), "-c", "8", &format!("{base}/burst")])
            .output()
            .expect("hey");
    assert!(out.status.success(), "hey: {}", String::from_utf8_lossy(&out.stderr));
    let expected = 20 + 10 + 1 + BURST;
    wait_for("nginx to log every request", Duration::from_secs(30), || nginx_requests(&r).len() >= expected);

    let metrics = r.scrape();
    let mfile = r.scratch.path("metrics.txt");
    std::fs::write(&mfile, &metrics).expect("write metrics");
    let check = Command::new("sh")
        .arg("-c")
        .arg(format!("promtool check metrics < {}", mfile.display()))
        .output()
        .expect("promtool");
    assert!(
        check.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    assert!(metrics.contains("shadow_requests_captured_total"), "{metrics}");

    let served = nginx_requests(&r);
    let summary = r.stop_daemon(served.len() as u64);
    let gets = served.iter().filter(|l| l.starts_with("GET ")).count();
    let others = served.len() - gets;
    assert_eq!(others, 11);
    assert_eq!(gets, 20 + BURST, "{:?}", String::from_utf8_lossy(&out.stdout));
    assert_eq!(summary["kernel"]["ringbuf_full"], 0, "the burst fits the ring buffer");
    let shadow = r.shadow_got();
    assert!(shadow.iter().all(|s| s.method == "GET"), "no write replayed by default");
    assert!(shadow.iter().all(|s| s.tagged), "every mirrored request tagged");
    let m = &summary["mirror"];
    let n = |k: &str| m["requests"]["dropped"][k].as_u64().unwrap_or(u64::MAX);
    assert_eq!(m["reconciles"], true, "{m}");
    assert_eq!(m["requests"]["captured"], served.len() as u64, "every request the primary served was captured: {m}");
    assert_eq!(n("method_not_allowed"), 11, "{m}");
    // The burst outruns the small test shadow: what does not fit the bounded queue is dropped and
    // counted, never waited for; everything else reaches the shadow.
    let replayed = m["requests"]["replayed"].as_u64().unwrap_or(0);
    assert_eq!(replayed + n("queue_full") + n("shadow_error"), gets as u64, "{m}");
    assert_eq!(shadow.len() as u64, replayed, "the shadow received exactly what was replayed");
    assert!(replayed >= 20, "{m}");
}

#[test]
fn killing_the_shadow_mid_run_never_touches_the_primary() {
    if !require_kernel("killing_the_shadow_mid_run") {
        return;
    }
    let mut r = Rig::new("m3", true);
    r.start_daemon(&[]);
    let mut shadow = r.shadow.take().expect("shadow");
    let server_ns = r.t.server.name.clone();
    let metrics_addr = r.metrics_addr();
    let (ok, total) = r.client(move |v4, _| {
        let start = Instant::now();
        let mut ok = 0;
        let mut total = 0;
        // Bounded: 2000 requests or 20 seconds, over 4 keep-alive connections in turn; the shadow
        // is killed after the first 500, once the daemon has replayed each of them (so exactly
        // those reached it, however fast this machine is).
        let mut conns: Vec<TcpStream> = (0..4).map(|_| TcpStream::connect(v4).expect("connect")).collect();
        for c in &conns {
            c.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
        }
        while total < 2000 && start.elapsed() < Duration::from_secs(20) {
            if total == 500 {
                // Borrowed: the rig owns (and deletes) the namespace.
                let server = std::mem::ManuallyDrop::new(NetNs { name: server_ns.clone() });
                wait_settled(&server, metrics_addr, 500, Duration::from_secs(30));
                let _ = shadow.child.kill();
                let _ = shadow.child.wait();
            }
            let c = &mut conns[total % 4];
            c.write_all(format!("GET /item/{total} HTTP/1.1\r\nHost: svc\r\n\r\n").as_bytes()).expect("write");
            if read_responses(c, 1) == vec![200] {
                ok += 1;
            }
            total += 1;
            // Keep the traffic going for a while after the kill (about 1 ms a request).
            std::thread::sleep(Duration::from_micros(500));
        }
        (ok, total)
    });
    assert_eq!(ok, total, "every primary request succeeded while the shadow died");
    assert!(total > 500, "traffic went on after the kill ({total} requests)");
    let summary = r.stop_daemon(total as u64);
    let m = &summary["mirror"];
    assert_eq!(m["reconciles"], true, "{m}");
    assert_eq!(m["requests"]["captured"], total as u64, "{m}");
    let errors: u64 = m["shadow_errors"].as_object().map_or(0, |o| o.values().filter_map(|v| v.as_u64()).sum());
    assert!(
        errors > 0 || m["requests"]["dropped"]["queue_full"].as_u64().unwrap_or(0) > 0,
        "the dead shadow shows up in the counts: {m}"
    );
    let replayed = m["requests"]["replayed"].as_u64().unwrap_or(0);
    assert_eq!(replayed, 500, "everything before the kill was replayed, nothing after it: {m}");
    assert_eq!(r.shadow_got().len() as u64, replayed, "the shadow saw exactly what was replayed before it died");
}

#[test]
fn sigkill_under_load_leaves_nothing_attached_and_the_primary_serves_every_request() {
    if !require_kernel("sigkill_under_load") || !require_tool("sigkill_under_load", "bpftool") {
        return;
    }
    let mut r = Rig::new("m4", true);
    r.start_daemon(&[]);
    let ours = shadow_tcx_programs(&r.t.server, &r.t.server_if);
    assert_eq!(ours.len(), 2, "tc ingress and egress attached: {ours:?}");
    let mut daemon = r.daemon.take().expect("daemon");
    let (ok, total) = r.client(move |v4, _| {
        let start = Instant::now();
        let (mut ok, mut total) = (0, 0);
        // Bounded: 2000 requests or 20 seconds over 4 keep-alive connections; SIGKILL after 500.
        let mut conns: Vec<TcpStream> = (0..4).map(|_| TcpStream::connect(v4).expect("connect")).collect();
        for c in &conns {
            c.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
        }
        while total < 2000 && start.elapsed() < Duration::from_secs(20) {
            if total == 500 {
                let _ = daemon.child.kill();
                let _ = daemon.child.wait();
            }
            let c = &mut conns[total % 4];
            c.write_all(format!("GET /k/{total} HTTP/1.1\r\nHost: svc\r\n\r\n").as_bytes()).expect("write");
            if read_responses(c, 1) == vec![200] {
                ok += 1;
            }
            total += 1;
        }
        (ok, total)
    });
    assert_eq!(ok, total, "every primary request succeeded, before and after the kill");
    assert!(total > 500, "traffic went on after the kill");
    assert_eq!(r.primary_got().len(), total, "the primary served every request");
    // TCX links belong to the daemon's file descriptors: gone with the process.
    wait_for("the killed daemon's programs to be gone", Duration::from_secs(20), || {
        let loaded = loaded_program_ids();
        ours.iter().all(|id| !loaded.contains(id))
    });
}
