//! A daemon rig for tier B tests of operations: two hosts on a veth, primaries and recording
//! shadows in the server namespace, the release `shadow-daemon` run from a TOML config, and the
//! release `shadowctl` to talk to it.

use std::{
    net::SocketAddr,
    path::PathBuf,
    process::{Command, Stdio},
    time::Duration,
};

use crate::{
    Proc, Recorded, Scratch, metric, recorded_requests, server::Options, topo::TwoHosts, wait_for, workspace_bin,
};

pub const METRICS: &str = "127.0.0.1:9477";

pub struct OpsRig {
    pub t: TwoHosts,
    pub scratch: Scratch,
    pub daemon: Option<Proc>,
    pub servers: Vec<Proc>,
    pub log: PathBuf,
    pub config: PathBuf,
    pub control: PathBuf,
    /// A command the daemon runs under (`python3 seccomp_exec.py PROFILE --`), or none.
    pub wrapper: Vec<String>,
}

/// What a shadowctl run printed and how it exited.
#[derive(Debug)]
pub struct CtlOut {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl CtlOut {
    pub fn json(&self) -> serde_json::Value {
        assert_eq!(self.code, 0, "shadowctl failed: {self:?}");
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("shadowctl --json output does not parse ({e}): {}", self.stdout))
    }
}

impl OpsRig {
    pub fn new(tag: &str) -> Self {
        let t = TwoHosts::new(tag);
        let scratch = Scratch::new(tag);
        let log = scratch.path("daemon.log");
        let config = scratch.path("shadow.toml");
        let control = scratch.path("run/control.sock");
        Self { t, scratch, daemon: None, servers: Vec::new(), log, config, control, wrapper: Vec::new() }
    }

    /// A shadow-testserver in the server namespace on `listen`, recording to scratch/`record`.
    pub fn server(&mut self, listen: &str, record: &str) {
        self.serve(listen, self.recording(record));
    }

    /// The rig's server options: 100-byte answers, every request recorded to scratch/`record`.
    pub fn recording(&self, record: &str) -> Options {
        Options::new().response_bytes(100).record(self.scratch.path(record))
    }

    /// A shadow-testserver in the server namespace on `listen`, serving as `opts` say.
    pub fn serve(&mut self, listen: &str, opts: Options) {
        let p = opts.spawn(&self.t.server, listen);
        self.servers.push(p);
    }

    pub fn write_config(&self, toml: &str) {
        std::fs::write(&self.config, toml).expect("write config");
    }

    /// Start the daemon with `--config` (and `extra` flags) and wait until it captures.
    pub fn start_daemon(&mut self, interface: &str, extra: &[&str]) {
        let bin = workspace_bin("shadow-daemon");
        let bin = bin.to_str().expect("utf-8");
        let mut cmd = match self.wrapper.split_first() {
            Some((first, rest)) => {
                let mut c = self.t.server.command(first);
                c.args(rest).arg(bin);
                c
            }
            None => self.t.server.command(bin),
        };
        let d = Proc::spawn(
            "shadow-daemon",
            cmd.args(["--interface", interface, "--config", self.config.to_str().expect("utf-8")])
                .args(["--metrics-addr", METRICS, "--control", self.control.to_str().expect("utf-8")])
                .args(["--summary-file", self.scratch.path("summary.json").to_str().expect("utf-8")])
                .args(extra)
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&self.log).expect("log")),
        );
        let log = self.log.clone();
        let mut d = d;
        wait_for("daemon to attach", Duration::from_secs(30), || {
            std::fs::read_to_string(&log).is_ok_and(|l| l.contains("capturing"))
                || d.child.try_wait().ok().flatten().is_some()
        });
        if let Ok(Some(st)) = d.child.try_wait() {
            panic!("daemon exited early ({st}):\n{}", self.daemon_log());
        }
        wait_for("control socket", Duration::from_secs(10), || self.control.exists());
        self.daemon = Some(d);
    }

    pub fn daemon_log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Run the release shadowctl against this daemon's socket.
    pub fn ctl(&self, args: &[&str]) -> CtlOut {
        self.ctl_cmd(Command::new(workspace_bin("shadowctl")), args)
    }

    pub fn ctl_cmd(&self, mut cmd: Command, args: &[&str]) -> CtlOut {
        let out = cmd
            .args(["--control", self.control.to_str().expect("utf-8")])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run shadowctl");
        CtlOut {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    pub fn metrics_addr(&self) -> SocketAddr {
        METRICS.parse().expect("metrics address")
    }

    pub fn scrape(&self) -> String {
        self.t.server.http_get(self.metrics_addr(), "/metrics").expect("scrape /metrics")
    }

    pub fn metric(&self, series: &str) -> f64 {
        metric(&self.scrape(), series).unwrap_or_else(|| panic!("no {series} in /metrics"))
    }

    /// Wait until the kernel has decided on `requests` request starts (sampled or skipped) and
    /// every sampled one has been extracted and settled (nothing in flight). The three numbers
    /// are published together, so no stale mix of them passes.
    pub fn wait_quiet(&self, requests: u64) {
        let addr = self.metrics_addr();
        let mut last = String::new();
        let ok = (0..3000).any(|_| {
            let quiet = self.t.server.http_get(addr, "/metrics").is_some_and(|text| {
                let m = |s: &str| metric(&text, s).unwrap_or(-1.0);
                let (sampled, skipped) =
                    (m("shadow_kernel_requests_sampled_total"), m("shadow_kernel_requests_skipped_total"));
                let (captured, in_flight) = (m("shadow_requests_captured_total"), m("shadow_requests_in_flight"));
                last = format!("sampled {sampled} skipped {skipped} captured {captured} in flight {in_flight}");
                sampled + skipped == requests as f64 && captured == sampled && in_flight == 0.0
            });
            if !quiet {
                std::thread::sleep(Duration::from_millis(20));
            }
            quiet
        });
        assert!(ok, "the daemon did not settle {requests} requests within 60 s: {last}\n{}", self.daemon_log());
    }

    pub fn recorded(&self, dir: &str) -> Vec<Recorded> {
        recorded_requests(&self.scratch.path(dir))
    }

    /// SIGTERM the daemon; returns its exit code.
    pub fn stop_daemon(&mut self) -> Option<i32> {
        self.daemon.take().and_then(|mut d| d.terminate(Duration::from_secs(15)))
    }
}

/// Send `n` GETs to `addr` from the client namespace over one keep-alive connection; each must
/// be answered 200.
pub fn get_many(t: &TwoHosts, addr: SocketAddr, path: &str, n: usize) {
    let ns = t.client.name.clone();
    let path = path.to_string();
    std::thread::spawn(move || {
        crate::topo::NetNs { name: ns }.enter_and_forget();
        let mut c = crate::client::Conn::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        for i in 0..n {
            let st = c.exchange(&crate::client::request("GET", &format!("{path}/{i}"), 0)).expect("exchange");
            assert_eq!(st, 200, "primary answered {st}");
        }
    })
    .join()
    .expect("client thread");
}
