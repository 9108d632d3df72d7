//! Kernel tier B, the latency verdict as a classifier: how often it fails a healthy shadow, and
//! whether it catches a real regression, against real servers on one host.
//!
//! A/A: nginx as the primary and, as the shadow, a second nginx serving the very same files; four
//! client connections send GETs to three endpoints (500 each). Every endpoint must PASS in every
//! one of 20 runs, with and without a CPU hog on the machine. A/B: the primary and the shadow are the
//! same small server with the same bytes, the shadow 10x slower (+1 ms on a ~0.1 ms answer) or a
//! constant +5 ms; the endpoint must FAIL on latency in every run, with and without the hog.
//! Every run starts its own daemon (a verdict belongs to one shadow build) with the default gates.
//! The observed p99 ratios and the counts of each verdict are printed for the README.

use std::{
    fmt::Write as _,
    io::Write,
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Stdio},
    time::Duration,
};

use shadow_tests::{
    Proc, Scratch,
    client::{read_response, status_of},
    comparing::{compared_pairs, shadowctl},
    metric,
    nginx::Nginx,
    require_kernel, require_tool,
    server::Options,
    topo::{NetNs, TwoHosts},
    wait_for, workspace_bin,
};

const PORT: u16 = 8080;
const SHADOW_PORT: u16 = 9090;
const METRICS: &str = "127.0.0.1:9477";
const ENDPOINTS: [&str; 3] = ["/a.json", "/b.html", "/c.txt"];
/// Client connections, and requests each sends (round robin over the endpoints).
const CONNS: usize = 4;
const PER_CONN: usize = 375;
const RUNS: usize = 20;
const AB_RUNS: usize = 5;
/// Each run's rig gets its own name.
static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// The three files both sides serve, written once per rig.
fn write_files(dir: &Path) {
    std::fs::create_dir_all(dir).expect("www");
    let body = |n: usize| (0..n).map(|i| b"abcdefghij"[i % 10]).collect::<Vec<u8>>();
    std::fs::write(dir.join("a.json"), format!("{{\"items\":\"{}\"}}", "x".repeat(1000))).expect("a");
    std::fs::write(dir.join("b.html"), body(4096)).expect("b");
    std::fs::write(dir.join("c.txt"), body(256)).expect("c");
}

/// nginx on `port` serving the files under `root`, as the bench runs it (no access log, kept-alive
/// connections never closed by count).
fn nginx(t: &TwoHosts, dir: &Path, port: u16, root: &Path) -> Proc {
    let server = format!("root {};\n    etag off;", root.display());
    Nginx { ipv6: false, quiet: true, server, ..Nginx::new(port) }.start(&t.server, dir)
}

/// A test server on `listen` answering every request with the file `body`, `delay_ms` late.
fn testserver(t: &TwoHosts, listen: &str, body: &Path, delay_ms: u64) -> Proc {
    Options::new().body_file(body).delay(Duration::from_millis(delay_ms)).spawn(&t.server, listen)
}

/// What serves the two sides.
#[derive(Clone, Copy, Debug)]
enum Sides {
    /// nginx and nginx, the same files.
    NginxAa,
    /// The same test server with the same body, the shadow `delay_ms` slower.
    Slower { delay_ms: u64 },
}

/// A busy loop on each core for the length of a run, bounded in time, killed on drop.
struct Hog(Vec<Child>);

impl Hog {
    fn start(ns: &NetNs) -> Self {
        let procs = (0..2)
            .map(|_| {
                ns.command("timeout")
                    .args(["120", "sh", "-c", "while :; do :; done"])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("hog")
            })
            .collect();
        Self(procs)
    }
}

impl Drop for Hog {
    fn drop(&mut self) {
        for c in &mut self.0 {
            // SIGTERM, which `timeout` passes on to its loop; SIGKILL would kill `timeout` alone
            // and leave the loop spinning.
            let _ = std::process::Command::new("kill").arg(c.id().to_string()).status();
            let _ = c.wait();
        }
    }
}

/// Both sides of one scenario, in namespaces of their own, kept for all its runs (creating and
/// deleting namespaces run after run only makes the kernel's network cleanup the thing measured).
struct Rig {
    t: TwoHosts,
    scratch: Scratch,
    sides: Sides,
    _servers: Vec<Proc>,
}

impl Rig {
    fn new(tag: &str, sides: Sides) -> Self {
        let t = TwoHosts::new(tag);
        let scratch = Scratch::new(tag);
        let www = scratch.path("www");
        write_files(&www);
        let servers = match sides {
            Sides::NginxAa => vec![
                nginx(&t, &scratch.path("primary"), PORT, &www),
                nginx(&t, &scratch.path("shadow"), SHADOW_PORT, &www),
            ],
            // One endpoint served by both, byte for byte; the shadow slower.
            Sides::Slower { delay_ms } => vec![
                testserver(&t, &format!("0.0.0.0:{PORT}"), &www.join("b.html"), 0),
                testserver(&t, &format!("127.0.0.1:{SHADOW_PORT}"), &www.join("b.html"), delay_ms),
            ],
        };
        let config = scratch.path("shadow.toml");
        std::fs::write(
            &config,
            // Room for every request of a run: one at a time per client connection, the replays
            // may fall behind the client on a slow machine, and a request dropped as queue_full
            // would make its endpoint INSUFFICIENT. What is judged is each side's own latency
            // (a replay is timed from its own write), which the wait in the queue does not touch.
            format!(
                "[[rule]]\nname = \"lv\"\nport = {PORT}\nshadow = \"127.0.0.1:{SHADOW_PORT}\"\nqueue_capacity = {}\n",
                2 * CONNS * PER_CONN
            ),
        )
        .expect("config");
        Self { t, scratch, sides, _servers: servers }
    }

    /// One run: a fresh daemon (a verdict belongs to one daemon's pairs), the load, and the
    /// report's JSON.
    fn run(&self, i: usize, hog: bool) -> serde_json::Value {
        let (t, scratch) = (&self.t, &self.scratch);
        let control = scratch.path(&format!("control-{i}.sock"));
        let log = scratch.path(&format!("daemon-{i}.log"));
        let mut daemon = Proc::spawn(
            "shadow-daemon",
            t.server
                .command(workspace_bin("shadow-daemon").to_str().expect("utf-8"))
                .args(["--interface", &t.server_if, "--config", scratch.path("shadow.toml").to_str().expect("utf-8")])
                .args(["--metrics-addr", METRICS, "--control", control.to_str().expect("utf-8")])
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log).expect("log")),
        );
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while !std::fs::read_to_string(&log).is_ok_and(|l| l.contains("capturing ports")) {
            let exited = daemon.child.try_wait().ok().flatten();
            assert!(
                exited.is_none() && std::time::Instant::now() < deadline,
                "run {i}: the daemon did not attach ({exited:?}); log:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let hog = hog.then(|| Hog::start(&t.server));
        let sent = load(t, matches!(self.sides, Sides::NginxAa));
        let metrics: SocketAddr = METRICS.parse().expect("metrics");
        // Everything captured has ended (a request extraction still holds waits for an answer
        // the ring may have lost, and is not a pair) and every pair has been compared. On a
        // starved host the capture may lose some (counted by the ledger): the verdict is on
        // what was compared, and the test counts what was not.
        let (mut compared, mut last) = (0.0, String::new());
        wait_for("every captured request ended and compared", Duration::from_secs(120), || {
            let Some(text) = t.server.http_get(metrics, "/metrics") else { return false };
            let m = |s: &str| metric(&text, s).unwrap_or(f64::NAN);
            compared = compared_pairs(&text);
            let done = m("shadow_requests_in_flight") == m("shadow_requests_extracting")
                && m("shadow_compare_pairs_waiting") == 0.0
                && compared > 0.0;
            last = text;
            done
        });
        if compared < sent as f64 {
            // Where the others went: every one is counted somewhere.
            let counted: Vec<&str> = last
                .lines()
                .filter(|l| {
                    !l.ends_with(" 0")
                        && [
                            "shadow_requests_",
                            "shadow_ring_buffer_dropped",
                            "shadow_kernel_",
                            "shadow_compare_unpaired",
                        ]
                        .iter()
                        .any(|p| l.starts_with(p))
                })
                .collect();
            eprintln!("run {i}: {compared} of {sent} requests compared; {}", counted.join("; "));
        }
        drop(hog);
        let (_, json, err) = shadowctl(&control, &["report", "--json"]);
        let report: serde_json::Value =
            serde_json::from_str(&json).unwrap_or_else(|e| panic!("report --json: {e}\n{json}{err}"));
        assert_eq!(daemon.terminate(Duration::from_secs(15)), Some(0), "daemon exit");
        report
    }
}

/// The load: [`CONNS`] keep-alive connections at once, each sending [`PER_CONN`] GETs one at a
/// time (round robin over the endpoints, or the one endpoint of a single-endpoint server).
fn load(t: &TwoHosts, all: bool) -> usize {
    let addr = SocketAddr::new(t.server_v4.parse().expect("v4"), PORT);
    let handles: Vec<_> = (0..CONNS)
        .map(|c| {
            let name = t.client.name.clone();
            std::thread::spawn(move || {
                NetNs { name }.enter_and_forget();
                let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
                s.set_nodelay(true).expect("nodelay");
                let mut buf = Vec::new();
                for i in 0..PER_CONN {
                    let path = if all { ENDPOINTS[(c + i) % ENDPOINTS.len()] } else { "/b.html" };
                    let req = format!("GET {path} HTTP/1.1\r\nHost: svc\r\nAccept: */*\r\n\r\n");
                    s.write_all(req.as_bytes()).expect("write");
                    let r = read_response(&mut s, &mut buf, Duration::from_secs(20)).expect("response");
                    assert_eq!(status_of(&r), 200, "GET {path}");
                }
            })
        })
        .collect();
    for h in handles {
        h.join().expect("client");
    }
    CONNS * PER_CONN
}

/// One endpoint of a report: its name, verdict, p99 ratio, the ratio's interval, and each
/// side's bounds and the verdict's reasons as the report gives them.
type EndpointRow = (String, String, Option<f64>, Option<[f64; 2]>, String);

/// `p50 P[l, u] S[l, u] p99 P[l, u] S[l, u]` in ms, from the report's intervals.
fn bounds(l: &serde_json::Value) -> String {
    let side = |s: &serde_json::Value| {
        let b = |k: &str| s[k].as_f64().map_or_else(|| "-".to_owned(), |v| format!("{v:.3}"));
        format!("[{}, {}]", b("lower_ms"), b("upper_ms"))
    };
    ["p50_interval", "p99_interval"]
        .iter()
        .map(|k| format!("{} P{} S{}", &k[..3], side(&l[k]["primary"]), side(&l[k]["shadow"])))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Each endpoint's verdict, its p99 ratio and the ratio's interval.
fn endpoints(report: &serde_json::Value) -> Vec<EndpointRow> {
    let eps = report["rules"][0]["report"]["endpoints"].as_array().cloned().unwrap_or_default();
    eps.iter()
        .map(|e| {
            let l = &e["latency"];
            let interval =
                l["p99_interval"]["ratio"].as_array().and_then(|r| Some([r.first()?.as_f64()?, r.get(1)?.as_f64()?]));
            (
                e["endpoint"].as_str().unwrap_or_default().to_owned(),
                e["verdict"]["verdict"].as_str().unwrap_or_default().to_owned(),
                l["p99_ratio"].as_f64(),
                interval,
                format!("{} why {}", bounds(l), e["verdict"]),
            )
        })
        .collect()
}

/// Run `runs` times and tabulate: (verdict counts FAIL/INSUFFICIENT/PASS over endpoints, the
/// lines to print, the failed gates seen).
fn tally(name: &str, sides: Sides, hog: bool, runs: usize) -> ([usize; 3], String, Vec<String>) {
    let mut counts = [0usize; 3];
    let mut lines = String::new();
    let mut fails = Vec::new();
    let rig = Rig::new(&format!("lv{}", NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)), sides);
    for i in 0..runs {
        let report = rig.run(i, hog);
        for (endpoint, verdict, ratio, interval, detail) in endpoints(&report) {
            let k = match verdict.as_str() {
                "FAIL" => 0,
                "INSUFFICIENT" => 1,
                _ => 2,
            };
            counts[k] += 1;
            eprintln!("{name} run {i}: {endpoint} {verdict} p99 ratio {ratio:?}");
            let _ = writeln!(
                lines,
                "{name} run {i:2} {endpoint:<14} {verdict:<12} p99 ratio {ratio:?} interval {interval:?} {detail}"
            );
            if k == 0 {
                fails.push(format!("run {i} {endpoint}: {}", report["rules"][0]["report"]["endpoints"]));
            }
        }
    }
    (counts, lines, fails)
}

fn results_path() -> PathBuf {
    std::env::temp_dir().join("shadow-latency-verdict.txt")
}

// About six minutes. Prints the table (and writes it to `results_path()`) for the README;
// `SHADOW_LV_ONLY=aa,ab+5ms` and `SHADOW_LV_RUNS=N` narrow a run by hand.
#[test]
fn an_identical_shadow_passes_and_real_regressions_always_fail() {
    let test = "latency_verdict";
    if !require_kernel(test) || !require_tool(test, "nginx") {
        return;
    }
    let mut out = String::new();
    let mut problems = Vec::new();
    for (name, sides, hog, runs) in [
        ("aa", Sides::NginxAa, false, RUNS),
        ("aa+hog", Sides::NginxAa, true, RUNS),
        ("ab-10x", Sides::Slower { delay_ms: 1 }, false, AB_RUNS),
        ("ab-10x+hog", Sides::Slower { delay_ms: 1 }, true, AB_RUNS),
        ("ab+5ms", Sides::Slower { delay_ms: 5 }, false, AB_RUNS),
        ("ab+5ms+hog", Sides::Slower { delay_ms: 5 }, true, AB_RUNS),
    ] {
        // `SHADOW_LV_ONLY=aa,ab+5ms` runs only those scenarios (by hand).
        if std::env::var("SHADOW_LV_ONLY").is_ok_and(|only| !only.split(',').any(|o| o == name)) {
            continue;
        }
        let runs = std::env::var("SHADOW_LV_RUNS").ok().and_then(|r| r.parse().ok()).unwrap_or(runs);
        let (counts, lines, fails) = tally(name, sides, hog, runs);
        let _ = writeln!(
            out,
            "{name}: {runs} runs, endpoint verdicts FAIL {} INSUFFICIENT {} PASS {}",
            counts[0], counts[1], counts[2]
        );
        out.push_str(&lines);
        let healthy = name.starts_with("aa");
        if healthy && counts[0] > 0 {
            problems.push(format!("{name}: an identical shadow failed: {fails:?}"));
        }
        if healthy && counts[2] != runs * ENDPOINTS.len() {
            problems.push(format!("{name}: an identical shadow did not pass every endpoint of every run"));
        }
        if !healthy && counts[0] != runs {
            problems.push(format!("{name}: the regression failed in {} of {runs} runs", counts[0]));
        }
    }
    let _ = std::fs::write(results_path(), &out);
    eprintln!("{out}");
    assert!(problems.is_empty(), "{problems:#?}\n{out}");
}
