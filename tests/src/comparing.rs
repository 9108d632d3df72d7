//! The comparison rig the demo's second act and the tier B tests share: the demo service as v1
//! (primary) and v2 (shadow) in a server namespace, the release daemon comparing them, traffic over
//! every demo endpoint from a client namespace, and `shadowctl` against the live daemon.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use shadow_daemon::compare::Verdict;

use crate::{
    Proc, Scratch, bin_dir,
    client::{Conn, request},
    server::{Mode, Options, binary, demo::Version},
    topo::{NetNs, TwoHosts},
    wait_for,
};

pub const PRIMARY_PORT: u16 = 8081;
pub const SHADOW_PORT: u16 = 9091;
pub const METRICS: &str = "127.0.0.1:9478";
/// Requests per endpoint: above the default gate's 100 samples and the 368 timed samples a side
/// the p99's interval needs at the default confidence, so that every latency gate can decide.
pub const PER_ENDPOINT: u64 = 400;
/// The demo rule's name (the `rule` label in /metrics and the report).
pub const RULE: &str = "demo";

/// The demo endpoints, a request target for the i-th request, and the verdict compare must give.
pub const ENDPOINTS: [(&str, Verdict); 5] = [
    ("GET /api/users/:id", Verdict::Pass),
    ("GET /api/search", Verdict::Fail),
    ("GET /api/orders/:id", Verdict::Fail),
    ("GET /api/pay/:id", Verdict::Fail),
    ("GET /api/time", Verdict::Pass),
];

fn target(endpoint: usize, i: u64) -> String {
    match endpoint {
        0 => format!("/api/users/{i}"),
        1 => format!("/api/search?q=term{}", i % 7),
        2 => format!("/api/orders/{}", 1000 + i),
        3 => format!("/api/pay/{i}"),
        _ => "/api/time".to_owned(),
    }
}

pub struct CompareRig {
    pub t: TwoHosts,
    pub scratch: Scratch,
    pub control: PathBuf,
    pub summary: PathBuf,
    pub log: PathBuf,
    pub metrics: SocketAddr,
    pub daemon: Proc,
    _primary: Proc,
    _shadow: Proc,
}

impl CompareRig {
    /// Start v1, v2 and the daemon (comparison on by default), and wait until it is attached.
    pub fn start(tag: &str) -> Result<Self, String> {
        let bins = bin_dir();
        let (daemon_bin, service_bin) = (bins.join("shadow-daemon"), bins.join(binary::NAME));
        for b in [&daemon_bin, &service_bin] {
            if !b.exists() {
                return Err(format!("{} is not built", b.display()));
            }
        }
        let t = TwoHosts::new(tag);
        let scratch = Scratch::new(tag);
        let service = |listen: String, version| Options::new().mode(Mode::Demo(version)).spawn(&t.server, &listen);
        let primary = service(format!("[::]:{PRIMARY_PORT}"), Version::V1);
        let shadow = service(format!("127.0.0.1:{SHADOW_PORT}"), Version::V2);
        let (control, summary, log) =
            (scratch.path("control.sock"), scratch.path("summary.json"), scratch.path("daemon.log"));
        // The client sends one request at a time: one replay at a time (concurrency 1) gives the
        // shadow the primary's load shape; a burst of parallel replays would time the shadow
        // under a concurrency the primary never saw. v2's search is ten times slower than v1's,
        // so the shadow falls behind the client by most of the traffic: the queue holds all of
        // it (`queue_capacity`), rather than dropping the rest as queue_full.
        let config = scratch.path("shadow.toml");
        let toml = format!(
            "[[rule]]\nname = \"{RULE}\"\nport = {PRIMARY_PORT}\nshadow = \"127.0.0.1:{SHADOW_PORT}\"\nconcurrency = 1\nqueue_capacity = {}\n",
            2 * PER_ENDPOINT * ENDPOINTS.len() as u64
        );
        std::fs::write(&config, toml).map_err(|e| format!("write {}: {e}", config.display()))?;
        let log_file = std::fs::File::create(&log).map_err(|e| format!("create {}: {e}", log.display()))?;
        let daemon = Proc::spawn(
            "shadow-daemon",
            t.server
                .command(daemon_bin.to_str().unwrap_or_default())
                .args(["--interface", &t.server_if, "--config", config.to_str().unwrap_or_default()])
                .args(["--sample-rate", "100", "--metrics-addr", METRICS])
                .args(["--control", control.to_str().unwrap_or_default()])
                .args(["--summary-file", summary.to_str().unwrap_or_default()])
                .env("SHADOW_LOG", "info")
                .stdout(Stdio::null())
                .stderr(log_file),
        );
        let mut rig = Self {
            t,
            scratch,
            control,
            summary,
            log,
            metrics: METRICS.parse().map_err(|e| format!("{e}"))?,
            daemon,
            _primary: primary,
            _shadow: shadow,
        };
        let log = rig.log.clone();
        let exited = |rig: &mut Self| rig.daemon.child.try_wait().ok().flatten().is_some();
        wait_for("the daemon to attach", Duration::from_secs(30), || {
            std::fs::read_to_string(&log).is_ok_and(|l| l.contains("capturing ports")) || exited(&mut rig)
        });
        if exited(&mut rig) {
            return Err(format!("daemon exited early:\n{}", rig.daemon_log()));
        }
        Ok(rig)
    }

    pub fn daemon_log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `PER_ENDPOINT` GETs to every endpoint, over keep-alive connections of 40 requests, from
    /// the client namespace. Returns the number of requests.
    pub fn send_traffic(&self) -> Result<u64, String> {
        let addr = SocketAddr::new(self.t.server_v4.parse().map_err(|e| format!("{e}"))?, PRIMARY_PORT);
        let ns = self.t.client.name.clone();
        std::thread::spawn(move || -> Result<u64, String> {
            NetNs { name: ns }.enter_and_forget();
            let mut n = 0;
            for (e, _) in ENDPOINTS.iter().enumerate() {
                for batch in 0..PER_ENDPOINT.div_ceil(40) {
                    let mut c = Conn::connect(addr).map_err(|err| format!("connect {addr}: {err}"))?;
                    for i in batch * 40..((batch + 1) * 40).min(PER_ENDPOINT) {
                        c.exchange(&request("GET", &target(e, i), 0)).map_err(|err| format!("request: {err}"))?;
                        n += 1;
                    }
                }
            }
            Ok(n)
        })
        .join()
        .map_err(|_| "client thread panicked".to_string())?
    }

    /// Wait until `pairs` pairs were compared (the sum of `shadow_comparisons_total`); returns
    /// the last scrape.
    pub fn wait_compared(&self, pairs: u64, timeout: Duration) -> String {
        let mut last = String::new();
        let mut done = false;
        let deadline = std::time::Instant::now() + timeout;
        while !done && std::time::Instant::now() < deadline {
            if let Some(text) = self.t.server.http_get(self.metrics, "/metrics") {
                done = compared_pairs(&text) >= pairs as f64;
                last = text;
            }
            if !done {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        if !done {
            let ledger: Vec<&str> = last
                .lines()
                .filter(|l| {
                    (l.starts_with("shadow_requests_") || l.starts_with("shadow_comparisons_total"))
                        && !l.ends_with(" 0")
                })
                .collect();
            panic!(
                "timed out after {timeout:?} waiting for {pairs} compared pairs; last scrape:\n{}",
                ledger.join("\n")
            );
        }
        last
    }

    /// Run shadowctl against the daemon: (exit code, stdout, stderr).
    pub fn shadowctl(&self, args: &[&str]) -> (i32, String, String) {
        shadowctl(&self.control, args)
    }
}

/// The sum of `shadow_comparisons_total` in a scrape.
pub fn compared_pairs(text: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with("shadow_comparisons_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Run the release shadowctl with `--control control`: (exit code, stdout, stderr).
pub fn shadowctl(control: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(bin_dir().join("shadowctl"))
        .arg("--control")
        .arg(control)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run shadowctl: {e}"));
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
