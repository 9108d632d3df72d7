//! Kernel tier B, shadows that misbehave (issue 9 item 7, the shadow's half): down, slow, never
//! reading, resetting, answering garbage, streaming a body forever, closing every connection at
//! once. A real primary in the server namespace, real clients in the client namespace, the release
//! daemon attached to the server's interface, and the test server (tests/src/server/) misbehaving on
//! the test's own threads, on the server namespace's loopback.
//!
//! Each test asserts behaviour, never timings: the primary answered every request; every captured
//! request ended in exactly one outcome and the ledger reconciles exactly; the drop reasons and
//! failure kinds the fault must produce are there and no others; connection attempts to a failing
//! shadow are bounded by the backoff schedule (`replay::backoff`), not by the request count; the
//! daemon's own peak memory stays under its memory cap; SIGTERM ends it cleanly.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::PathBuf,
    process::Stdio,
    sync::Barrier,
    time::{Duration, Instant},
};

use shadow_daemon::replay::backoff::{FAILURES_TO_BACK_OFF, max_periods_within};
use shadow_tests::{
    Proc, Scratch, metric, process, require_kernel,
    server::{Gate, Mode, Options, Server},
    topo::{NetNs, TwoHosts},
    wait_for, wait_settled, workspace_bin,
};

const PORT: u16 = 8080;
const SHADOW: &str = "127.0.0.1:9090";
const METRICS: &str = "127.0.0.1:9477";
/// Requests per test, over [`CONNS`] keep-alive connections.
const REQUESTS: usize = 400;
const CONNS: usize = 4;
/// The daemon's replay concurrency in the tests.
const CONCURRENCY: u64 = 4;
/// The daemon's default pipeline depth: requests one replay slot writes together.
const PIPELINE: u64 = shadow_daemon::replay::pipeline::DEFAULT_PIPELINE as u64;
/// The daemon's memory cap (`--memory-cap`, the default), which its own peak memory must stay
/// under.
const MEMORY_CAP: u64 = 64 << 20;
/// Longest wait for the daemon to settle what it captured.
const SETTLE: Duration = Duration::from_secs(60);

struct Fault {
    t: TwoHosts,
    scratch: Scratch,
    _primary: Proc,
    daemon: Option<Proc>,
    log: PathBuf,
    /// When the daemon was started: the backoff schedule is bounded from here.
    started: Instant,
    /// The daemon's pipeline depth (requests one replay slot writes together).
    pipeline: u64,
}

impl Fault {
    fn new(tag: &str) -> Self {
        let t = TwoHosts::new(tag);
        let scratch = Scratch::new(tag);
        let primary = Options::new().response_bytes(100).spawn(&t.server, &format!("[::]:{PORT}"));
        let log = scratch.path("daemon.log");
        Self { t, scratch, _primary: primary, daemon: None, log, started: Instant::now(), pipeline: PIPELINE }
    }

    /// A shadow on the test's own threads, serving as `opts` says.
    fn shadow(&self, opts: Options) -> Server {
        opts.start(&self.t.server, SHADOW.parse().expect("shadow address"))
    }

    /// The daemon with `--pipeline 1`: one request per connection turn, so what the fake counts
    /// (connections, requests read) equals the attempts exactly. Pipelines against failing
    /// shadows are tested exactly in shadow-daemon/tests/pipeline.rs, and with the default depth
    /// here by `shadow_down_is_backed_off_and_costs_few_attempts`.
    fn start_daemon(&mut self, extra: &[&str]) {
        let mut args = vec!["--pipeline", "1"];
        args.extend_from_slice(extra);
        self.start_daemon_with(CONCURRENCY, &args);
        self.pipeline = 1;
    }

    fn start_daemon_with(&mut self, concurrency: u64, extra: &[&str]) {
        let bin = workspace_bin("shadow-daemon");
        let concurrency = concurrency.to_string();
        let cap = MEMORY_CAP.to_string();
        let d = Proc::spawn(
            "shadow-daemon",
            self.t
                .server
                .command(bin.to_str().expect("utf-8"))
                .args(["--interface", &self.t.server_if, "--port", &PORT.to_string()])
                .args(["--shadow", SHADOW, "--metrics-addr", METRICS, "--memory-cap", &cap])
                .args(["--concurrency", &concurrency])
                .args(["--control", self.scratch.path("control.sock").to_str().expect("utf-8")])
                .args(extra)
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&self.log).expect("log")),
        );
        self.started = Instant::now();
        let log = self.log.clone();
        wait_for("daemon to attach", Duration::from_secs(30), || {
            std::fs::read_to_string(&log).is_ok_and(|l| l.contains("capturing ports"))
        });
        self.daemon = Some(d);
    }

    fn pid(&self) -> u32 {
        self.daemon.as_ref().expect("daemon running").child.id()
    }

    fn daemon_log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `n` GETs over [`CONNS`] keep-alive connections at once, as fast as they go (bounded in
    /// count, and each exchange in time); every one must be answered 200 by the primary.
    fn load(&self, n: usize) {
        self.load_then(n, || {});
    }

    /// [`Fault::load`], with `after_first` run once every connection's first request has been
    /// served and before any connection sends its second.
    fn load_then(&self, n: usize, after_first: impl Fn() + Sync) {
        assert!(n >= 2 * CONNS, "at least two requests per connection");
        let addr = SocketAddr::new(self.t.server_v4.parse().expect("v4"), PORT);
        let name = &self.t.client.name;
        let (first_served, go_on) = (Barrier::new(CONNS), Barrier::new(CONNS));
        let served: usize = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..CONNS)
                .map(|c| {
                    let (first_served, go_on, after_first) = (&first_served, &go_on, &after_first);
                    scope.spawn(move || {
                        NetNs { name: name.clone() }.enter_and_forget();
                        let mut conn = shadow_tests::client::Conn::connect(addr).expect("connect to the primary");
                        let mut ok = 0;
                        for i in (c..n).step_by(CONNS) {
                            if i == c + CONNS {
                                if first_served.wait().is_leader() {
                                    after_first();
                                }
                                go_on.wait();
                            }
                            let req = shadow_tests::client::request("GET", &format!("/fault/{i}"), 0);
                            match conn.exchange(&req) {
                                Ok(200) => ok += 1,
                                Ok(st) => panic!("the primary answered {st} to request {i}"),
                                Err(e) => panic!("request {i} to the primary failed: {e}"),
                            }
                        }
                        ok
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().expect("client thread")).sum()
        });
        assert_eq!(served, n, "the primary served every request");
    }

    /// [`Scrape::backed_off`], and the log said so once (one episode: the shadow never answered).
    fn backed_off(&self, s: &Scrape, n: usize, failure_drop: &str) -> u64 {
        let attempts = s.backed_off(n, failure_drop, self.started, self.pipeline);
        let log = self.daemon_log();
        assert_eq!(log.matches("shadow backed off for").count(), 1, "one backoff warning:\n{log}");
        attempts
    }

    /// Wait until all `n` requests are captured and settled; the last scrape.
    fn settled(&self, n: usize) -> Scrape {
        let addr: SocketAddr = METRICS.parse().expect("metrics address");
        Scrape(wait_settled(&self.t.server, addr, n as u64, SETTLE))
    }

    fn scrape(&self) -> Scrape {
        Scrape(self.t.server.http_get(METRICS.parse().expect("metrics address"), "/metrics").expect("scrape"))
    }

    /// The daemon's own peak memory under its memory cap, then SIGTERM: exit 0. Its own memory
    /// is the peak RSS less the file-backed pages, which are the ring buffer's mapping (the
    /// kernel's memory, sized by --ring-buffer-size and mapped twice) and the binary's text.
    fn stop(&mut self) {
        let pid = self.pid();
        let (peak, file) = (process::status_bytes(pid, "VmHWM"), process::status_bytes(pid, "RssFile"));
        assert!(peak > 0 && file > 0, "read the daemon's memory from /proc/{pid}/status");
        let own = peak.saturating_sub(file);
        assert!(
            own < MEMORY_CAP,
            "peak RSS {} MiB less {} MiB file-backed: {} MiB, over the {} MiB memory cap",
            peak >> 20,
            file >> 20,
            own >> 20,
            MEMORY_CAP >> 20
        );
        let code = self.daemon.take().expect("daemon running").terminate(Duration::from_secs(15));
        assert_eq!(code, Some(0), "daemon exit code; log:\n{}", self.daemon_log());
    }
}

/// One /metrics text.
struct Scrape(String);

impl Scrape {
    fn get(&self, series: &str) -> f64 {
        metric(&self.0, series).unwrap_or_else(|| panic!("no {series} in /metrics:\n{}", self.0))
    }

    /// `shadow_requests_dropped_total` by reason.
    fn dropped(&self) -> BTreeMap<String, u64> {
        self.0
            .lines()
            .filter_map(|l| l.strip_prefix("shadow_requests_dropped_total{reason=\""))
            .filter_map(|l| {
                let (reason, rest) = l.split_once("\"}")?;
                Some((reason.to_owned(), rest.trim().parse::<f64>().ok()? as u64))
            })
            .collect()
    }

    /// A per-target series of the rule's shadow (`kind` for the failures).
    fn target(&self, name: &str, kind: Option<&str>) -> u64 {
        let labels = format!("rule=\"default\",role=\"shadow\",target=\"{SHADOW}\"");
        let series = match kind {
            Some(k) => format!("{name}{{{labels},kind=\"{k}\"}}"),
            None => format!("{name}{{{labels}}}"),
        };
        self.get(&series) as u64
    }

    /// The shadow's failure series, for messages.
    fn failure_lines(&self) -> Vec<&str> {
        self.0.lines().filter(|l| l.starts_with("shadow_target_failures_total{") && !l.ends_with(" 0")).collect()
    }

    fn failures(&self) -> u64 {
        self.0
            .lines()
            .filter(|l| l.starts_with("shadow_target_failures_total{") && l.contains("role=\"shadow\""))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64
    }

    /// The ledger, exactly: all `n` requests captured, none in flight, each replayed or dropped
    /// once; only the `allowed` reasons are non-zero. Returns (replayed, drops by reason).
    fn ledger(&self, n: usize, allowed: &[&str]) -> (u64, BTreeMap<String, u64>) {
        let captured = self.get("shadow_requests_captured_total") as u64;
        let replayed = self.get("shadow_requests_replayed_total") as u64;
        let in_flight = self.get("shadow_requests_in_flight") as u64;
        let dropped = self.dropped();
        assert_eq!(captured, n as u64, "every request the primary served was captured: {dropped:?}");
        assert_eq!(in_flight, 0);
        assert_eq!(replayed + dropped.values().sum::<u64>(), captured, "one outcome each: {replayed} + {dropped:?}");
        let unexpected: Vec<_> = dropped.iter().filter(|(r, v)| **v > 0 && !allowed.contains(&r.as_str())).collect();
        assert!(unexpected.is_empty(), "unexpected drop reasons {unexpected:?} (allowed {allowed:?})");
        (replayed, dropped)
    }

    /// A shadow that never answers usably: no request replayed, every one that reached it failed
    /// (one attempt each, counted as `failure_drop`), the rest dropped while it was backed off;
    /// the attempts are bounded by the backoff schedule since `since`. Returns the attempts.
    fn backed_off(&self, n: usize, failure_drop: &str, since: Instant, pipeline: u64) -> u64 {
        let (replayed, dropped) = self.ledger(n, &[failure_drop, "shadow_backoff"]);
        assert_eq!(replayed, 0);
        let attempts = self.failures();
        assert_eq!(dropped[failure_drop], attempts, "one failed attempt per request that went: {dropped:?}");
        assert_eq!(dropped["shadow_backoff"], n as u64 - attempts, "the rest were dropped as backed off");
        let backoffs = self.target("shadow_target_backoffs_total", None);
        assert!(backoffs >= 1, "the shadow was backed off");
        let periods = max_periods_within(since.elapsed());
        assert!(backoffs <= periods, "{backoffs} backoff periods, the schedule allows {periods}");
        // The streak that backed it off, the requests already out then (each slot a pipeline),
        // one probe per later period.
        let streak = u64::from(FAILURES_TO_BACK_OFF);
        let (least, most) = (streak + backoffs - 1, streak + (CONCURRENCY * pipeline - 1) + backoffs - 1);
        assert!((least..=most).contains(&attempts), "{attempts} attempts, {backoffs} periods: {least}..={most}");
        assert!(attempts <= n as u64 / 2, "far fewer attempts ({attempts}) than requests ({n})");
        assert_eq!(self.target("shadow_target_backed_off", None), 1, "still backed off");
        assert!(
            self.get(&format!("shadow_target_backoff_seconds{{rule=\"default\",role=\"shadow\",target=\"{SHADOW}\"}}"))
                > 0.0
        );
        attempts
    }
}

/// Every attempt reached the fake on a connection of its own: one per failed attempt, and one
/// more per request sent again because the shadow provably never received it (a close or reset
/// before its bytes were acknowledged), which then failed there. The fake's count is the exact
/// one: a reset that lands while the daemon is still completing its connect fails that connect
/// (counted as a `reset` failure), so the daemon's opened connections can be fewer, never more.
fn every_connection_accepted(s: &Scrape, attempts: u64, shadow: &Server) {
    let opened = s.get("shadow_replay_connections_opened_total") as u64;
    let retries = s.get("shadow_replay_retries_total") as u64;
    assert!(retries <= attempts, "at most once more each: {retries} of {attempts}");
    assert!(opened <= attempts + retries, "{opened} opened for {attempts} attempts, {retries} sent again");
    wait_for("the fake to accept one connection per attempt", SETTLE, || {
        shadow.accepted() as u64 == attempts + retries
    });
}

#[test]
fn shadow_down_is_backed_off_and_costs_few_attempts() {
    if !require_kernel("shadow_down_is_backed_off") {
        return;
    }
    let mut f = Fault::new("fd");
    // The default pipeline depth: a connection refused fails the whole pipeline at once.
    f.start_daemon_with(CONCURRENCY, &[]);
    let cpu0 = process::cpu_seconds(f.pid());
    f.load(REQUESTS);
    let s = f.settled(REQUESTS);
    let cpu = process::cpu_seconds(f.pid()) - cpu0;
    let attempts = f.backed_off(&s, REQUESTS, "shadow_error");
    assert_eq!(s.target("shadow_target_failures_total", Some("connect_refused")), attempts, "all refused");
    assert_eq!(s.get("shadow_errors_total{kind=\"connect_refused\"}") as u64, attempts);
    eprintln!("shadow down: {REQUESTS} requests, {attempts} connection attempts, daemon CPU {cpu:.3} s");
    f.stop();
}

#[test]
fn slow_shadow_fills_the_bounded_queue_and_is_not_backed_off() {
    if !require_kernel("slow_shadow_fills_the_bounded_queue") {
        return;
    }
    const QUEUE: u64 = 8;
    let mut f = Fault::new("fs");
    // Answers nothing until the load is over (so how fast this machine sends it does not
    // matter), then each request after a delay.
    let gate = Gate::default();
    let shadow = f.shadow(Options::new().delay(Duration::from_millis(20)).response_bytes(2).gate(gate.clone()));
    // One request per slot (`start_daemon`), so what is out while the shadow holds is exactly
    // `concurrency`; with pipelines it would depend on how many were queued when each slot took
    // its batch.
    f.start_daemon(&["--queue-capacity", &QUEUE.to_string(), "--request-timeout", "60s"]);
    // Each client connection's first request reaches the shadow (and takes a slot) before the
    // clients go on, so which requests take the slots and which wait does not depend on how the
    // client threads and the daemon's tasks happen to be scheduled.
    f.load_then(REQUESTS, || {
        wait_for("one request per client connection at the shadow", SETTLE, || shadow.requests() == CONNS);
    });
    // Every request captured (and so submitted) while the shadow held the first ones.
    wait_for("every request captured", SETTLE, || {
        f.scrape().get("shadow_requests_captured_total") as usize == REQUESTS
    });
    gate.open();
    let s = f.settled(REQUESTS);
    let (replayed, dropped) = s.ledger(REQUESTS, &["queue_full"]);
    // While held: `concurrency` replays out, `QUEUE` waiting; everything else overflowed.
    assert_eq!(replayed, CONCURRENCY + QUEUE, "{dropped:?}");
    assert_eq!(dropped["queue_full"], REQUESTS as u64 - CONCURRENCY - QUEUE);
    assert_eq!(shadow.requests() as u64, replayed, "the shadow answered exactly what was replayed");
    assert_eq!(s.failures(), 0, "slow is not failing");
    assert_eq!(s.target("shadow_target_backoffs_total", None), 0, "a slow shadow is not backed off");
    assert_eq!(s.target("shadow_target_backed_off", None), 0);
    f.stop();
}

#[test]
fn shadow_that_never_reads_times_out_and_is_backed_off() {
    if !require_kernel("shadow_that_never_reads") {
        return;
    }
    let mut f = Fault::new("fn");
    let shadow = f.shadow(Options::new().mode(Mode::NeverReads));
    f.start_daemon(&["--request-timeout", "300ms"]);
    f.load(REQUESTS);
    let s = f.settled(REQUESTS);
    let attempts = f.backed_off(&s, REQUESTS, "shadow_error");
    assert_eq!(s.target("shadow_target_failures_total", Some("timeout")), attempts, "all timed out");
    every_connection_accepted(&s, attempts, &shadow);
    f.stop();
}

#[test]
fn resetting_shadow_is_backed_off() {
    if !require_kernel("resetting_shadow_is_backed_off") {
        return;
    }
    let mut f = Fault::new("fr");
    let shadow = f.shadow(Options::new().mode(Mode::ResetsAtOnce));
    f.start_daemon(&[]);
    f.load(REQUESTS);
    let s = f.settled(REQUESTS);
    let attempts = f.backed_off(&s, REQUESTS, "shadow_error");
    // A reset before the request was read is seen as a reset, or as a close if the daemon read
    // the end of the stream first.
    let seen = s.target("shadow_target_failures_total", Some("reset"))
        + s.target("shadow_target_failures_total", Some("closed"));
    assert_eq!(seen, attempts, "{:?}", s.failure_lines());
    assert!(s.target("shadow_target_failures_total", Some("reset")) > 0);
    every_connection_accepted(&s, attempts, &shadow);
    f.stop();
}

#[test]
fn garbage_answering_shadow_is_backed_off() {
    if !require_kernel("garbage_answering_shadow") {
        return;
    }
    let mut f = Fault::new("fg");
    let shadow = f.shadow(Options::new().mode(Mode::Garbage));
    f.start_daemon(&[]);
    f.load(REQUESTS);
    let s = f.settled(REQUESTS);
    let attempts = f.backed_off(&s, REQUESTS, "shadow_error");
    assert_eq!(s.target("shadow_target_failures_total", Some("bad_response")), attempts);
    assert_eq!(s.get("shadow_errors_total{kind=\"bad_response\"}") as u64, attempts);
    assert_eq!(shadow.accepted() as u64, attempts, "a connection per attempt, none reused after garbage");
    assert_eq!(shadow.requests() as u64, attempts);
    f.stop();
}

#[test]
fn endless_response_is_cut_at_the_cap_and_backed_off() {
    if !require_kernel("endless_response_is_cut") {
        return;
    }
    let mut f = Fault::new("fe");
    let shadow = f.shadow(Options::new().mode(Mode::Endless));
    // The default cap (1 MiB: the comparison keeps 256 KiB by default).
    f.start_daemon(&[]);
    f.load(REQUESTS);
    let s = f.settled(REQUESTS);
    let attempts = f.backed_off(&s, REQUESTS, "shadow_response_too_large");
    assert_eq!(s.target("shadow_target_failures_total", Some("response_too_large")), attempts);
    assert_eq!(s.get("shadow_errors_total{kind=\"bad_response\"}"), 0.0, "counted under its own reason only");
    // The daemon closed every one of those connections while the body was still coming.
    wait_for("every endless response cut by the daemon", SETTLE, || shadow.cut() as u64 == attempts);
    assert_eq!(shadow.accepted() as u64, attempts);
    assert_eq!(shadow.not_cut(), 0, "no endless response ran out or stalled on its own");
    assert_eq!(s.get("shadow_replay_connections"), 0.0, "no connection kept");
    f.stop();
}

#[test]
fn shadow_closing_every_connection_is_backed_off() {
    if !require_kernel("shadow_closing_every_connection") {
        return;
    }
    let mut f = Fault::new("fc");
    let shadow = f.shadow(Options::new().mode(Mode::ClosesAtOnce));
    f.start_daemon(&[]);
    f.load(REQUESTS);
    let s = f.settled(REQUESTS);
    let attempts = f.backed_off(&s, REQUESTS, "shadow_error");
    // Closed unread: a close, or a reset if the request had arrived before the close.
    let seen = s.target("shadow_target_failures_total", Some("closed"))
        + s.target("shadow_target_failures_total", Some("reset"));
    assert_eq!(seen, attempts, "{:?}", s.failure_lines());
    every_connection_accepted(&s, attempts, &shadow);
    f.stop();
}

/// Not a test of behaviour: the daemon's CPU seconds for the same requests with the shadow up
/// and down, printed (`--ignored --nocapture`; `SHADOW_MEASURE_REQUESTS`, default 20 000).
/// Works against an older daemon too (`SHADOW_BIN_DIR`), for a before/after.
#[test]
#[ignore = "measurement: run with --ignored --nocapture"]
fn measure_cpu_with_the_shadow_up_and_down() {
    if !require_kernel("measure_cpu") {
        return;
    }
    let n: usize = std::env::var("SHADOW_MEASURE_REQUESTS").ok().and_then(|v| v.parse().ok()).unwrap_or(20_000);
    for up in [true, false, true, false] {
        let mut f = Fault::new(if up { "mu" } else { "md" });
        let _shadow = up.then(|| f.shadow(Options::new().response_bytes(2)));
        // The default concurrency, and a queue that holds the whole load: with the shadow up,
        // every request is replayed.
        f.start_daemon_with(64, &["--queue-capacity", &n.to_string()]);
        let cpu0 = process::cpu_seconds(f.pid());
        let t0 = Instant::now();
        f.load(n);
        let s = f.settled(n);
        let cpu = process::cpu_seconds(f.pid()) - cpu0;
        let (replayed, dropped) = s.ledger(n, &["queue_full", "shadow_error", "shadow_backoff"]);
        eprintln!(
            "shadow {}: {n} requests in {:.1} s, daemon CPU {cpu:.3} s ({:.1} µs/request), replayed {replayed}, dropped {:?}",
            if up { "up  " } else { "down" },
            t0.elapsed().as_secs_f64(),
            cpu * 1e6 / n as f64,
            dropped.iter().filter(|(_, v)| **v > 0).collect::<BTreeMap<_, _>>(),
        );
        f.stop();
    }
}
