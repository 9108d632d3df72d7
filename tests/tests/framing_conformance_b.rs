//! Kernel tier B: the request-framing conformance corpus (tests/corpus/framing.toml) against a
//! real primary, nginx in front of an application, with the release daemon attached. For every
//! case the shadow receives exactly the requests the corpus lists, byte for byte but for the tag,
//! and never one the primary did not serve; the daemon's ledger reconciles. The same corpus runs
//! through extraction in the unit tests, with nginx's answers modelled.
//!
//! The client writes each piece of a case as its own TCP segment (it waits until the previous
//! piece is acknowledged), then closes its side and reads until the primary closes.

use std::{
    collections::BTreeSet,
    io::{Read, Write},
    net::{Shutdown, SocketAddr, TcpStream},
    os::fd::AsRawFd,
    path::PathBuf,
    process::Stdio,
    time::{Duration, Instant},
};

use shadow_tests::{
    Proc, Scratch,
    client::read_response,
    corpus::{self, Step},
    metric,
    nginx::Nginx,
    recorded_requests, require_kernel, require_tool,
    server::Options,
    topo::{NetNs, TwoHosts},
    wait_for, without_line, workspace_bin,
};

const PORT: u16 = 8080;
const SHADOW: &str = "127.0.0.1:9090";
const APP: &str = "127.0.0.1:9100";
const METRICS: &str = "127.0.0.1:9477";
// The daemon's default edits of a request without trace headers: the tag, then the shadow
// marker in a new W3C baggage header, both before the blank line.
const TAG_LINE: &[u8] = b"X-Shadow-Request: true\r\nbaggage: shadow=true\r\n";
const METHODS: &str = "GET,HEAD,OPTIONS,POST,REPORT,PURGE,M-SEARCH,LINK,SOURCE";

struct Setup {
    t: TwoHosts,
    scratch: Scratch,
    _procs: Vec<Proc>,
    daemon: Option<Proc>,
    log: PathBuf,
}

/// A test server on `listen` answering 20 bytes, recording to scratch/`record`.
fn testserver(t: &TwoHosts, scratch: &Scratch, listen: &str, record: &str) -> Proc {
    Options::new().response_bytes(20).record(scratch.path(record)).spawn(&t.server, listen)
}

/// nginx as the primary's front: it reads each request whole before the application answers,
/// and answers framing errors itself, as deployed nginx does.
fn nginx(t: &TwoHosts, scratch: &Scratch) -> Proc {
    let server = format!("location / {{ proxy_pass http://{APP}; }}");
    Nginx { ipv6: false, server, ..Nginx::new(PORT) }.start(&t.server, &scratch.path("nginx"))
}

impl Setup {
    fn new(tag: &str, sample_rate: &str) -> Self {
        let t = TwoHosts::new(tag);
        let scratch = Scratch::new(tag);
        let procs =
            vec![testserver(&t, &scratch, SHADOW, "shadow"), testserver(&t, &scratch, APP, "app"), nginx(&t, &scratch)];
        let log = scratch.path("daemon.log");
        let daemon = Proc::spawn(
            "shadow-daemon",
            t.server
                .command(workspace_bin("shadow-daemon").to_str().expect("utf-8"))
                .args(["--interface", &t.server_if, "--port", &PORT.to_string(), "--shadow", SHADOW])
                .args(["--metrics-addr", METRICS, "--allow-method", METHODS, "--sample-rate", sample_rate])
                .args(["--control", scratch.path("control.sock").to_str().expect("utf-8")])
                .args(["--summary-file", scratch.path("summary.json").to_str().expect("utf-8")])
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log).expect("log")),
        );
        let l = log.clone();
        wait_for("daemon to attach", Duration::from_secs(30), || {
            std::fs::read_to_string(&l).is_ok_and(|l| l.contains("capturing ports"))
        });
        Self { t, scratch, _procs: procs, daemon: Some(daemon), log }
    }

    fn primary(&self) -> SocketAddr {
        format!("{}:{PORT}", self.t.server_v4).parse().expect("addr")
    }

    fn scrape(&self) -> String {
        self.t.server.http_get(METRICS.parse().expect("metrics addr"), "/metrics").unwrap_or_default()
    }

    /// Wait until `shadow` requests are recorded by the shadow and nothing is in flight. Every
    /// release happened while the cases played (a request goes out when the primary's answer
    /// starts, and each case reads its answers before the next begins), so this is final.
    /// Connections are not waited for: one whose server FIN passed before the kernel tracked it
    /// (the garbage case) stays in the daemon, its request held (in flight, as
    /// `shadow_requests_extracting`), until the idle timeout.
    fn wait_settled(&self, shadow: usize) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut last = String::new();
        while Instant::now() < deadline {
            let text = self.scrape();
            let m = |s: &str| metric(&text, s).unwrap_or(-1.0);
            let got = recorded_requests(&self.scratch.path("shadow")).len();
            // What is still in flight is only what extraction holds (the garbage case's
            // request, until the idle timeout), never anything queued or being replayed.
            if m("shadow_requests_in_flight") == m("shadow_requests_extracting")
                && m("shadow_requests_extracting") <= 1.0
                && got == shadow
                && m("shadow_requests_replayed_total") == shadow as f64
            {
                return text;
            }
            last = format!(
                "flows {} in flight {} shadow got {got} of {shadow}",
                m("shadow_flows"),
                m("shadow_requests_in_flight")
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "not settled in 60 s: {last}\nserver sockets:\n{}\nclient sockets:\n{}\n{}",
            self.t.server.exec(&["ss", "-tan"]),
            self.t.client.exec(&["ss", "-tan"]),
            std::fs::read_to_string(&self.log).unwrap_or_default()
        );
    }
}

impl Setup {
    /// SIGTERM the daemon (a clean exit is required) and read its summary.
    fn stop(&mut self) -> serde_json::Value {
        let code = self.daemon.take().and_then(|mut d| d.terminate(Duration::from_secs(15)));
        assert_eq!(code, Some(0), "daemon exit; log:\n{}", std::fs::read_to_string(&self.log).unwrap_or_default());
        let text = std::fs::read_to_string(self.scratch.path("summary.json")).expect("summary file");
        serde_json::from_str(&text).expect("summary json")
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        if let Some(mut d) = self.daemon.take() {
            d.terminate(Duration::from_secs(15));
        }
    }
}

/// Bytes sent but not yet acknowledged (SIOCOUTQ counts both unsent and unacked).
fn unacked(s: &TcpStream) -> i32 {
    let mut n: libc::c_int = 0;
    // SAFETY: TIOCOUTQ writes one int through the pointer; the fd is an open socket.
    let r = unsafe { libc::ioctl(s.as_raw_fd(), libc::TIOCOUTQ, &mut n) };
    if r == 0 { n } else { 0 }
}

/// Play the client side of a case, step by step: each piece its own segment (the next one waits
/// until it is acknowledged), and where the case has the primary answer, wait for that answer
/// (or the primary closing) before going on, as a client that waits for responses does. Writes
/// after the primary closed may fail; that is part of the case.
fn play(ns: &NetNs, addr: SocketAddr, steps: Vec<Step>) {
    let ns = ns.name.clone();
    std::thread::spawn(move || {
        shadow_tests::topo::enter_netns(&ns);
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect to the primary");
        s.set_nodelay(true).expect("nodelay");
        s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
        let mut buf = Vec::new();
        let mut closed = false;
        for step in steps {
            match step {
                Step::Client(p) => {
                    if s.write_all(&p).is_err() {
                        continue;
                    }
                    let deadline = Instant::now() + Duration::from_secs(5);
                    while unacked(&s) > 0 && Instant::now() < deadline {
                        std::thread::yield_now();
                    }
                }
                Step::Server(_) if !closed => {
                    if read_response(&mut s, &mut buf, Duration::from_secs(10)).is_err() {
                        closed = true;
                    }
                }
                Step::ServerFin if !closed => {
                    let mut rest = Vec::new();
                    let _ = s.read_to_end(&mut rest);
                    closed = true;
                }
                Step::ClientFin => {
                    let _ = s.shutdown(Shutdown::Write);
                }
                Step::Server(_) | Step::ServerFin | Step::ServerRst => {}
            }
        }
    })
    .join()
    .expect("client thread");
}

#[test]
fn corpus_against_nginx_replays_exactly_what_the_primary_served() {
    if !require_kernel("corpus_against_nginx") || !require_tool("corpus_against_nginx", "nginx") {
        return;
    }
    let mut cases = corpus::load();
    // One case alone, to look into it: SHADOW_CORPUS_CASE=NAME.
    if let Ok(only) = std::env::var("SHADOW_CORPUS_CASE") {
        cases.retain(|c| only.split(',').any(|o| o == c.name));
    }
    let s = Setup::new("conf", "100");
    let mut want: Vec<Vec<u8>> = Vec::new();
    for case in &cases {
        play(&s.t.client, s.primary(), case.steps());
        want.extend(case.replay());
    }
    let text = s.wait_settled(want.len());
    let got: Vec<Vec<u8>> =
        recorded_requests(&s.scratch.path("shadow")).iter().map(|r| without_line(&r.raw, TAG_LINE)).collect();
    let mut sorted_got = got.clone();
    sorted_got.sort();
    want.sort();
    let show = |v: &[Vec<u8>]| v.iter().map(|r| String::from_utf8_lossy(r).into_owned()).collect::<Vec<_>>();
    assert_eq!(show(&sorted_got), show(&want), "the shadow got exactly the corpus' replays");

    // Never a request the primary did not serve: each one reached the application behind nginx.
    let served: BTreeSet<(String, String)> =
        recorded_requests(&s.scratch.path("app")).into_iter().map(|r| (r.method, r.target)).collect();
    for r in recorded_requests(&s.scratch.path("shadow")) {
        assert!(r.tagged, "{} {} not tagged", r.method, r.target);
        assert!(
            served.contains(&(r.method.clone(), r.target.clone())),
            "{} {} reached the shadow only",
            r.method,
            r.target
        );
    }

    let m = |series: &str| metric(&text, series).unwrap_or(0.0);
    let captured = m("shadow_requests_captured_total");
    let replayed = m("shadow_requests_replayed_total");
    let dropped: f64 = text
        .lines()
        .filter(|l| l.starts_with("shadow_requests_dropped_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    // In flight: only what extraction still holds (see `wait_settled`).
    let in_flight = m("shadow_requests_in_flight");
    assert_eq!(in_flight, m("shadow_requests_extracting"), "{text}");
    assert_eq!(captured, replayed + dropped + in_flight, "ledger reconciles:\n{text}");
    assert_eq!(replayed, want.len() as f64);
    // Each smuggling case's first request fails framing in the daemon as in nginx.
    let parse_errors: u64 = cases.iter().map(|c| c.dropped.get("parse_error").copied().unwrap_or(0)).sum();
    assert!(m("shadow_requests_dropped_total{reason=\"parse_error\"}") >= parse_errors as f64, "{text}");
    assert!(m("shadow_requests_dropped_total{reason=\"refused\"}") >= 1.0, "nginx's 400 as evidence:\n{text}");
    assert_eq!(m("shadow_requests_dropped_total{reason=\"shadow_error\"}"), 0.0);
}

/// What crossed the wire adds up in the kernel's counts, whatever the requests look like: sent
/// one after the other (each after the previous answer), `requests_sampled + requests_skipped`
/// is exactly the number sent, and every sampled one is captured by the daemon.
#[test]
fn kernel_counts_add_up_to_the_requests_sent() {
    if !require_kernel("kernel_counts_add_up") || !require_tool("kernel_counts_add_up", "nginx") {
        return;
    }
    let s = Setup::new("kcnt", "50");
    let pieces: Vec<Vec<Vec<u8>>> = vec![
        vec![b"GET /a HTTP/1.1\r\nHost: t\r\n\r\n".to_vec()],
        vec![b"\r\nGET /crlf HTTP/1.1\r\nHost: t\r\n\r\n".to_vec()],
        vec![b"REPORT /r HTTP/1.1\r\nHost: t\r\n\r\n".to_vec()],
        vec![b"M-SEARCH /m HTTP/1.1\r\nHost: t\r\n\r\n".to_vec()],
        b"GET /tiny HTTP/1.1\r\nHost: t\r\n\r\n".chunks(3).map(<[u8]>::to_vec).collect(),
        vec![b"POST /p HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\n\r\n".to_vec(), b"body".to_vec()],
    ];
    // Each request, then its answer, then a close.
    let kinds: Vec<Vec<Step>> = pieces
        .into_iter()
        .map(|p| {
            let mut steps: Vec<Step> = p.into_iter().map(Step::Client).collect();
            steps.extend([Step::Server(Vec::new()), Step::ClientFin, Step::ServerFin]);
            steps
        })
        .collect();
    let per_kind = 20u32;
    let mut sent = 0u64;
    for _ in 0..per_kind {
        for k in &kinds {
            play(&s.t.client, s.primary(), k.clone());
            sent += 1;
        }
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut text = s.scrape();
    while Instant::now() < deadline {
        text = s.scrape();
        let m = |x: &str| metric(&text, x).unwrap_or(-1.0);
        // The kernel counts a request when it samples it; the daemon, once it has read its
        // segments out of the ring, which a busy host may do later: wait for both (on timeout
        // the assertions below say which count fell short).
        let sampled = m("shadow_kernel_requests_sampled_total");
        if sampled + m("shadow_kernel_requests_skipped_total") == sent as f64
            && m("shadow_requests_captured_total") == sampled
            && m("shadow_requests_replayed_total") == sampled
            && m("shadow_flows") == 0.0
            && m("shadow_requests_in_flight") == 0.0
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let m = |x: &str| metric(&text, x).unwrap_or(-1.0);
    let (sampled, skipped) = (m("shadow_kernel_requests_sampled_total"), m("shadow_kernel_requests_skipped_total"));
    assert_eq!(sampled + skipped, sent as f64, "every request counted once by the kernel:\n{text}");
    assert!(sampled > 0.0 && skipped > 0.0, "50 % sampling draws both ways: {sampled} {skipped}");
    assert_eq!(m("shadow_requests_captured_total"), sampled, "every sampled request reached the daemon:\n{text}");
    assert_eq!(m("shadow_requests_replayed_total"), sampled, "and was replayed:\n{text}");
    // The tiny requests' first pieces ("GET") are too short to classify: taken as starts, once
    // each. Their later pieces and the POST bodies ("body") look like starts but acknowledge
    // nothing new: they continue their request.
    assert_eq!(m("shadow_kernel_request_starts_short_total"), f64::from(per_kind), "{text}");
    assert!(m("shadow_kernel_request_start_continued_total") >= 2.0 * f64::from(per_kind), "{text}");
    // The same ledger in the daemon's summary: every sampled start reached it (none lost).
    let mut s = s;
    let summary = s.stop();
    let req = &summary["requests"];
    assert_eq!(req["on_wire"], sent, "{req}");
    assert_eq!(req["reached_daemon"], req["sampled"], "{req}");
    assert_eq!(req["lost_in_ring_buffer"], 0, "{req}");
    assert_eq!(req["reconciles"], true, "{req}");
}
