//! What every live benchmark drives: nginx as the primary and healthy shadow, the release daemon,
//! and the load generators (wrk closed loop, oha open loop at a fixed rate, hey for the capacity
//! ladder), with their outputs parsed into one [`Load`] shape.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use shadow_tests::{
    Proc, Scratch, bin_dir,
    nginx::Nginx,
    topo::{NetNs, TwoHosts},
    wait_for,
};

pub(crate) const PORT: u16 = 8080;
/// Where the daemon serves /metrics inside the server namespace (each namespace has its own
/// loopback, so a fixed port cannot clash with another bench).
pub(crate) const METRICS_PORT: u16 = 9477;
/// Size of the POST bodies of the large-body arm.
pub(crate) const BIG_BODY: usize = 64 * 1024;

/// nginx on `port` serving a 1 KiB file at /item and answering POST /upload (body read and
/// discarded) with 200; with `mirror_to`, nginx's in-path mirror of every request to that port.
pub(crate) fn nginx(ns: &NetNs, dir: &Path, port: u16, mirror_to: Option<u16>) -> Proc {
    std::fs::create_dir_all(dir.join("www")).expect("nginx dir");
    std::fs::write(dir.join("www/item"), vec![b'i'; 1024]).expect("body");
    let d = dir.display();
    let (mirror, mirror_location) = match mirror_to {
        Some(p) => (
            "mirror /__mirror; mirror_request_body on;".to_string(),
            format!(
                "location = /__mirror {{ internal; proxy_pass http://127.0.0.1:{p}$request_uri; proxy_set_header X-Shadow-Request true; proxy_connect_timeout 5s; proxy_read_timeout 5s; }}"
            ),
        ),
        None => (String::new(), String::new()),
    };
    let server = format!(
        "root {d}/www;\n    client_max_body_size 1m;\n    client_body_buffer_size 128k;\n\
         location / {{ {mirror} }}\n    location = /upload {{ {mirror} return 200 \"ok\\n\"; }}\n    {mirror_location}"
    );
    Nginx { port, ipv6: false, worker_connections: 1024, quiet: true, server }.start(ns, dir)
}

/// What one load run measured at the client.
#[derive(Clone, Debug, Default)]
pub(crate) struct Load {
    pub requests: u64,
    pub errors: u64,
    pub rps: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub secs: f64,
}

pub(crate) fn parse_ms(v: &str) -> f64 {
    let v = v.trim();
    let (num, mul) = if let Some(n) = v.strip_suffix("us") {
        (n, 0.001)
    } else if let Some(n) = v.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = v.strip_suffix('s') {
        (n, 1000.0)
    } else {
        (v, 1.0)
    };
    num.parse::<f64>().unwrap_or(f64::NAN) * mul
}

/// wrk, closed loop: `conns` connections on two threads as fast as the server answers. With
/// `post_body`, every request is a POST of that many bytes (a Lua script in `scratch`).
pub(crate) fn wrk(
    ns: &NetNs,
    url: &str,
    secs: u32,
    conns: u32,
    pad: &str,
    post_body: Option<(usize, &Scratch)>,
) -> Load {
    let mut cmd = ns.command("wrk");
    cmd.args(["-t2", &format!("-c{conns}"), &format!("-d{secs}s"), "--latency", "--timeout", "5s"]);
    cmd.args(["-H", &format!("X-Pad: {pad}")]);
    if let Some((n, scratch)) = post_body {
        let script = scratch.path("post.lua");
        std::fs::write(
            &script,
            format!(
                "wrk.method = \"POST\"\nwrk.body = string.rep(\"b\", {n})\nwrk.headers[\"Content-Type\"] = \"application/octet-stream\"\n"
            ),
        )
        .expect("post.lua");
        cmd.args(["-s", script.to_str().expect("utf-8")]);
    }
    let out = cmd.arg(url).output().expect("run wrk");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "wrk failed: {text}{}", String::from_utf8_lossy(&out.stderr));
    let mut w = Load { p50_ms: f64::NAN, p99_ms: f64::NAN, secs: secs as f64, ..Default::default() };
    for line in text.lines() {
        let t = line.trim();
        if let Some(v) = t.strip_prefix("Requests/sec:") {
            w.rps = v.trim().parse().unwrap_or(0.0);
        } else if let Some(v) = t.strip_prefix("50%") {
            w.p50_ms = parse_ms(v);
        } else if let Some(v) = t.strip_prefix("99%") {
            w.p99_ms = parse_ms(v);
        } else if t.contains(" requests in ") {
            w.requests = t.split_whitespace().next().and_then(|n| n.parse().ok()).unwrap_or(0);
            // "N requests in 5.00s, X MB read"
            if let Some(d) = t.split(" requests in ").nth(1).and_then(|r| r.split(',').next()) {
                w.secs = parse_ms(d) / 1000.0;
            }
        } else if t.starts_with("Socket errors:") || t.starts_with("Non-2xx") {
            w.errors += t.split(|c: char| !c.is_ascii_digit()).filter_map(|n| n.parse::<u64>().ok()).sum::<u64>();
        }
    }
    w
}

/// The oha binary: on PATH, or where `cargo install` puts it.
pub(crate) fn oha_bin() -> Option<PathBuf> {
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_default();
    [PathBuf::from("oha"), home.join(".cargo/bin/oha")].into_iter().find(|p| {
        std::process::Command::new(p)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

/// oha, open loop: requests are sent on a fixed schedule of `rate` per second whatever the
/// server does, and with `--latency-correction` each latency is counted from the time the request
/// was due, so a stall is charged to every request it delayed (no coordinated omission).
pub(crate) fn oha(oha: &Path, ns: &NetNs, url: &str, secs: u32, rate: f64, pad: &str) -> Load {
    let out = ns
        .command(oha.to_str().expect("utf-8"))
        .args(["--no-tui", "--output-format", "json", "--latency-correction"])
        .args(["-z", &format!("{secs}s"), "-q", &format!("{rate:.0}"), "-c", "64", "-t", "5s"])
        .args(["-H", &format!("X-Pad: {pad}")])
        .arg(url)
        .output()
        .expect("run oha");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "oha failed: {text}{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("oha json: {e}: {text}"));
    let statuses = v["statusCodeDistribution"].as_object().cloned().unwrap_or_default();
    let ok: u64 = statuses.iter().filter(|(k, _)| k.as_str() == "200").filter_map(|(_, n)| n.as_u64()).sum();
    let other: u64 = statuses.iter().filter(|(k, _)| k.as_str() != "200").filter_map(|(_, n)| n.as_u64()).sum();
    // Requests cut off by the end of the run are not errors of the server.
    let errors: u64 = v["errorDistribution"]
        .as_object()
        .map(|o| o.iter().filter(|(k, _)| !k.contains("deadline")).filter_map(|(_, n)| n.as_u64()).sum())
        .unwrap_or(0);
    let secs_run = v["summary"]["total"].as_f64().unwrap_or(secs as f64);
    Load {
        requests: ok + other,
        errors: errors + other,
        rps: (ok + other) as f64 / secs_run,
        p50_ms: v["metrics"]["latency_ms"]["p50"].as_f64().unwrap_or(f64::NAN),
        p99_ms: v["metrics"]["latency_ms"]["p99"].as_f64().unwrap_or(f64::NAN),
        secs: secs_run,
    }
}

/// hey at a fixed rate: `conc` workers at `per_worker` requests/s each, for `secs` (closed loop
/// per worker: a slow answer delays that worker's next request, so latency is understated).
pub(crate) fn hey(ns: &NetNs, url: &str, secs: u32, conc: u32, per_worker: u32, pad: &str) -> Load {
    let out = ns
        .command("hey")
        .args(["-z", &format!("{secs}s"), "-c", &conc.to_string(), "-q", &per_worker.to_string(), "-t", "5"])
        .args(["-H", &format!("X-Pad: {pad}")])
        .arg(url)
        .output()
        .expect("run hey");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "hey failed: {text}{}", String::from_utf8_lossy(&out.stderr));
    let mut w = Load { p50_ms: f64::NAN, p99_ms: f64::NAN, secs: secs as f64, ..Default::default() };
    let mut in_errors = false;
    for line in text.lines() {
        let t = line.trim();
        if let Some(v) = t.strip_prefix("Requests/sec:") {
            w.rps = v.trim().parse().unwrap_or(0.0);
        } else if let Some(v) = t.strip_prefix("50% in ") {
            w.p50_ms = parse_ms(&format!("{}s", v.trim_end_matches(" secs")));
        } else if let Some(v) = t.strip_prefix("99% in ") {
            w.p99_ms = parse_ms(&format!("{}s", v.trim_end_matches(" secs")));
        } else if t.starts_with("Error distribution") {
            in_errors = true;
        } else if let Some(rest) = t.strip_prefix('[') {
            let (code, n) = rest.split_once(']').unwrap_or(("", ""));
            let n: u64 = n.split_whitespace().next().and_then(|v| v.parse().ok()).unwrap_or(0);
            if in_errors || code != "200" {
                w.errors += n;
            }
            if !in_errors {
                w.requests += n;
            }
        }
    }
    w
}

/// utime + stime of a process in seconds (threads that exited included), and its peak RSS in MiB.
pub(crate) fn cpu_and_rss(pid: u32) -> (f64, f64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are the 12th and 13th there.
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    // SAFETY: no pointers, no state.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let cpu = (f.get(11).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0))
        / ticks;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let hwm = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0;
    (cpu, hwm)
}

/// CPU time of all the process's threads in nanoseconds (the scheduler's own account,
/// /proc/PID/task/*/schedstat), for costs too small for utime+stime's clock ticks.
pub(crate) fn cpu_ns(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return 0 };
    tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("schedstat")).ok())
        .filter_map(|st| st.split_whitespace().next().and_then(|v| v.parse::<u64>().ok()))
        .sum()
}

/// Times the daemon's threads went to sleep and were woken (voluntary context switches, summed
/// over its threads): each is a trip through the scheduler.
pub(crate) fn wakeups(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return 0 };
    tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("status")).ok())
        .filter_map(|st| {
            st.lines()
                .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
                .and_then(|v| v.trim().parse::<u64>().ok())
        })
        .sum()
}

/// How the daemon is run in an arm.
#[derive(Clone, Copy, Debug)]
pub(crate) struct DaemonSpec {
    /// None: capture and extraction only, no replay (every request ends as `no_target`).
    pub shadow: Option<u16>,
    pub sample_rate: u32,
    pub allow_post: bool,
    /// More flags (an arm that runs the daemon another way).
    pub extra: &'static [&'static str],
    /// Another build of the daemon (`--alt-daemon`): None runs `SHADOW_BIN_DIR`'s.
    pub bin: Option<&'static str>,
}

pub(crate) struct Daemon {
    pub proc: Proc,
    pub summary: PathBuf,
}

impl Daemon {
    pub(crate) fn start(t: &TwoHosts, scratch: &Scratch, spec: DaemonSpec, tag: &str) -> Self {
        let bin = spec.bin.map_or_else(|| bin_dir().join("shadow-daemon"), PathBuf::from);
        let summary = scratch.path(&format!("summary-{tag}.json"));
        let log = scratch.path(&format!("daemon-{tag}.log"));
        let mut cmd = t.server.command(bin.to_str().expect("utf-8"));
        if let Some(p) = spec.shadow {
            cmd.args(["--shadow", &format!("127.0.0.1:{p}")]);
        }
        if spec.allow_post {
            cmd.args(["--allow-method", "GET,POST"]);
        }
        cmd.args(spec.extra);
        let proc = Proc::spawn(
            "shadow-daemon",
            cmd.args(["--interface", &t.server_if, "--port", &PORT.to_string()])
                .args(["--sample-rate", &spec.sample_rate.to_string()])
                .args(["--metrics-addr", &format!("127.0.0.1:{METRICS_PORT}")])
                .args(["--control", scratch.path(&format!("ctl-{tag}.sock")).to_str().expect("utf-8")])
                .args(["--summary-file", summary.to_str().expect("utf-8")])
                .env("SHADOW_LOG", "warn,shadow_daemon=info")
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log).expect("log")),
        );
        wait_for("daemon to attach", Duration::from_secs(30), || {
            std::fs::read_to_string(&log).is_ok_and(|l| l.contains("capturing ports"))
        });
        Self { proc, summary }
    }

    pub(crate) fn pid(&self) -> u32 {
        self.proc.child.id()
    }

    /// SIGTERM, a clean exit, and the summary the daemon writes on the way out.
    pub(crate) fn stop(mut self, what: &str) -> serde_json::Value {
        let code = self.proc.terminate(Duration::from_secs(20));
        assert_eq!(code, Some(0), "daemon exit in {what}");
        serde_json::from_str(&std::fs::read_to_string(&self.summary).expect("summary")).expect("summary json")
    }
}

/// The daemon's /metrics text, from inside the server namespace.
pub(crate) fn metrics_text(t: &TwoHosts) -> String {
    t.server.http_get(std::net::SocketAddr::from(([127, 0, 0, 1], METRICS_PORT)), "/metrics").unwrap_or_default()
}

/// What the bare replay client measured in one arm (shadow-floor's JSON line).
#[derive(serde::Serialize, Clone, Debug, Default)]
pub(crate) struct FloorRun {
    pub requests: u64,
    pub secs: f64,
    /// Its CPU, user and system (getrusage).
    pub cpu_s: f64,
    /// The syscalls it made, where it counts them (not where a library makes them).
    pub syscalls: Option<u64>,
    pub wakeups: u64,
    pub reopened: u64,
}

/// The bare replay client running against a shadow (see tests/src/bin/shadow-floor.rs).
pub(crate) struct Floor {
    child: std::process::Child,
    mode: &'static str,
}

impl Floor {
    /// `shadow-floor --mode MODE` in `ns` against 127.0.0.1:`port` for `secs`, writing `request`.
    pub(crate) fn start(ns: &NetNs, mode: &'static str, port: u16, secs: u32, request: &str) -> Self {
        let bin = bin_dir().join("shadow-floor");
        let child = ns
            .command(bin.to_str().expect("utf-8"))
            .args(["--mode", mode, "--target", &format!("127.0.0.1:{port}"), "--secs", &secs.to_string()])
            .args(["--conns", "16", "--request", request])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("run {}: {e}", bin.display()));
        Self { child, mode }
    }

    /// Its figures, once it has stopped by itself (it runs for the seconds it was given).
    pub(crate) fn finish(self) -> FloorRun {
        let out = self.child.wait_with_output().expect("wait for shadow-floor");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "shadow-floor --mode {} failed: {text}{}",
            self.mode,
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_str(text.trim()).expect("shadow-floor's JSON line");
        FloorRun {
            requests: v["requests"].as_u64().expect("requests"),
            secs: v["secs"].as_f64().expect("secs"),
            cpu_s: v["cpu_s"].as_f64().expect("cpu_s"),
            syscalls: v["syscalls"].as_u64(),
            wakeups: v["wakeups"].as_u64().expect("wakeups"),
            reopened: v["reopened"].as_u64().expect("reopened"),
        }
    }
}
