//! The release daemon under load, seen from outside: `perf record` of its threads (a text summary
//! of the top symbols, and a flame graph when inferno is installed) and `strace -c` for syscalls
//! per mirrored request. nginx primary, nginx healthy shadow, 100 % sampling, fixed-rate load.

use std::{
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use serde::Serialize;
use shadow_tests::{Scratch, metric, topo::TwoHosts};

use crate::load::{self, Daemon, DaemonSpec, PORT};

const SHADOW: u16 = 9090;

#[derive(Serialize, Clone, Debug, Default)]
pub(crate) struct Profile {
    pub load: String,
    pub perf_summary: Option<String>,
    pub flame_graph: Option<String>,
    pub perf_secs: f64,
    /// Requests replayed while perf was recording.
    pub perf_replayed: u64,
    pub strace_summary: Option<String>,
    pub strace_secs: f64,
    /// Requests captured and replayed while strace was attached (strace slows the daemon, so
    /// fewer than the load offered).
    pub strace_captured: u64,
    pub strace_replayed: u64,
    pub syscalls: u64,
    pub syscalls_per_mirrored_request: Option<f64>,
    pub syscalls_per_captured_request: Option<f64>,
    /// The busiest syscalls: (name, calls per mirrored request).
    pub top_syscalls: Vec<(String, f64)>,
    pub note: String,
}

fn counters(t: &TwoHosts) -> (u64, u64) {
    let m = load::metrics_text(t);
    (
        metric(&m, "shadow_requests_captured_total").unwrap_or(0.0) as u64,
        metric(&m, "shadow_requests_replayed_total").unwrap_or(0.0) as u64,
    )
}

fn tool(name: &str) -> bool {
    // inferno's binaries have --help but no --version.
    let probe = if name.starts_with("inferno") { "--help" } else { "--version" };
    Command::new(name).arg(probe).stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
}

/// Parse `strace -c` output: total calls and the per-syscall calls.
fn parse_strace(text: &str) -> (u64, Vec<(String, u64)>) {
    let mut rows = Vec::new();
    let mut total = 0;
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        // % time, seconds, usecs/call, calls, [errors], syscall
        if f.len() < 5 || f[0].starts_with('%') || f[0].starts_with('-') {
            continue;
        }
        let name = f[f.len() - 1];
        let Ok(calls) = f[3].parse::<u64>() else {
            continue;
        };
        if name == "total" {
            total = calls;
        } else {
            rows.push((name.to_string(), calls));
        }
    }
    (total, rows)
}

pub(crate) fn profile(out: &Path, quick: bool, rate: f64) -> Profile {
    let t = TwoHosts::new("prof");
    let scratch = Scratch::new("prof");
    let pad = "p".repeat(1024 - 120);
    let url = format!("http://{}:{PORT}/item", t.server_v4);
    let _shadow = load::nginx(&t.server, &scratch.path("shadow"), SHADOW, None);
    let _primary = load::nginx(&t.server, &scratch.path("primary"), PORT, None);
    let daemon = Daemon::start(
        &t,
        &scratch,
        DaemonSpec { shadow: Some(SHADOW), sample_rate: 100, allow_post: false, extra: &[], bin: None },
        "prof",
    );
    let pid = daemon.pid().to_string();
    let perf_secs = if quick { 2 } else { 4 };
    let strace_secs = if quick { 2 } else { 3 };
    let total = perf_secs + strace_secs + 4;
    let oha = load::oha_bin();
    let load_desc = match &oha {
        Some(_) => format!("oha -q {rate:.0} (open loop), GET /item ~1 KiB, {total} s"),
        None => format!("hey -c 32 -q {:.0}, GET /item ~1 KiB, {total} s", rate / 32.0),
    };
    let mut p = Profile { load: load_desc, ..Default::default() };
    std::thread::scope(|s| {
        let client = &t.client;
        let (url, pad) = (&url, &pad);
        let generator = s.spawn(move || match &oha {
            Some(o) => load::oha(o, client, url, total, rate, pad),
            None => load::hey(client, url, total, 32, (rate / 32.0).max(1.0) as u32, pad),
        });
        std::thread::sleep(Duration::from_secs(2));

        // perf: the daemon's threads only, call graphs from frame pointers where there are any.
        let data = scratch.path("perf.data");
        if tool("perf") {
            let paranoid = std::fs::read_to_string("/proc/sys/kernel/perf_event_paranoid").unwrap_or_default();
            let _ = std::fs::write("/proc/sys/kernel/perf_event_paranoid", "-1");
            let (_, r0) = counters(&t);
            let start = Instant::now();
            // SHADOW_BENCH_CALL_GRAPH=dwarf: callers unwound from .eh_frame (the release build
            // keeps no frame pointers), for `perf report -G` on the data kept in
            // SHADOW_BENCH_PERF_DATA; heavier, so not the default.
            let graph = std::env::var("SHADOW_BENCH_CALL_GRAPH").unwrap_or_else(|_| "fp".into());
            let st = Command::new("perf")
                .args(["record", "-q", "-F", "2999", "--call-graph", &graph, "-p", &pid])
                .args(["-o", data.to_str().expect("utf-8"), "--"])
                .args(["sleep", &perf_secs.to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            p.perf_secs = start.elapsed().as_secs_f64();
            let (_, r1) = counters(&t);
            p.perf_replayed = r1.saturating_sub(r0);
            if !paranoid.trim().is_empty() {
                let _ = std::fs::write("/proc/sys/kernel/perf_event_paranoid", paranoid.trim());
            }
            if st.is_ok_and(|s| s.success()) {
                p.perf_summary = Some("perf-daemon.txt".into());
            }
        }

        // strace -c: every syscall of every thread, counted; ptrace slows the daemon down, so the
        // count is divided by the requests it replayed while attached.
        if tool("strace") {
            let file = scratch.path("strace.txt");
            let (c0, r0) = counters(&t);
            let start = Instant::now();
            let _ = Command::new("timeout")
                .args([
                    "-s",
                    "INT",
                    &strace_secs.to_string(),
                    "strace",
                    "-c",
                    "-f",
                    "-p",
                    &pid,
                    "-o",
                    file.to_str().expect("utf-8"),
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            p.strace_secs = start.elapsed().as_secs_f64();
            // Replays started under strace finish just after it.
            std::thread::sleep(Duration::from_millis(200));
            let (c1, r1) = counters(&t);
            p.strace_captured = c1.saturating_sub(c0);
            p.strace_replayed = r1.saturating_sub(r0);
            if let Ok(text) = std::fs::read_to_string(&file) {
                let (total, rows) = parse_strace(&text);
                p.syscalls = total;
                if p.strace_captured > 0 {
                    p.syscalls_per_captured_request = Some(total as f64 / p.strace_captured as f64);
                }
                if p.strace_replayed > 0 {
                    let per = |n: u64| n as f64 / p.strace_replayed as f64;
                    p.syscalls_per_mirrored_request = Some(per(total));
                    let mut rows = rows;
                    rows.sort_by_key(|r| std::cmp::Reverse(r.1));
                    p.top_syscalls = rows.iter().take(8).map(|(n, c)| (n.clone(), per(*c))).collect();
                }
                let _ = std::fs::write(
                    out.join("strace-daemon.txt"),
                    format!(
                        "# strace -c -f -p DAEMON for {:.1} s under {}\n# requests captured {} and replayed {} meanwhile\n{text}",
                        p.strace_secs, p.load, p.strace_captured, p.strace_replayed
                    ),
                );
                p.strace_summary = Some("strace-daemon.txt".into());
            }
        }
        let _ = generator.join();
    });
    let _ = daemon.stop("profile");

    if p.perf_summary.is_some() {
        let data = scratch.path("perf.data");
        if let Some(keep) = std::env::var_os("SHADOW_BENCH_PERF_DATA") {
            let _ = std::fs::copy(&data, keep);
        }
        let report = |sort: &str| {
            Command::new("perf")
                .args([
                    "report",
                    "--stdio",
                    "--no-children",
                    "--percent-limit",
                    "0.7",
                    "-g",
                    "none",
                    "--sort",
                    sort,
                    "-i",
                ])
                .arg(&data)
                .stderr(Stdio::null())
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default()
        };
        let text = format!(
            "# perf record -F 2999 -g -p DAEMON for {:.1} s under {} ({} requests mirrored meanwhile)\n\
             # perf report --stdio --no-children -g none: self time by thread, by shared object, then by symbol\n\n{}\n{}\n{}",
            p.perf_secs,
            p.load,
            p.perf_replayed,
            report("comm"),
            report("dso"),
            report("dso,symbol")
        );
        let _ = std::fs::write(out.join("perf-daemon.txt"), text);
        // A flame graph when inferno is installed (cargo install inferno).
        if tool("inferno-flamegraph") {
            let script = Command::new("perf").args(["script", "-i"]).arg(&data).stderr(Stdio::null()).output();
            if let Ok(script) = script {
                let collapsed = run_with_input("inferno-collapse-perf", &[], &script.stdout);
                let svg = collapsed
                    .and_then(|c| run_with_input("inferno-flamegraph", &["--title", "shadow-daemon under load"], &c));
                if let Some(svg) = svg.filter(|s| !s.is_empty()) {
                    let _ = std::fs::write(out.join("perf-daemon.svg"), svg);
                    p.flame_graph = Some("perf-daemon.svg".into());
                }
            }
        }
    }
    p.note = "syscall counts are under strace (ptrace slows the daemon: fewer requests per wakeup, so more syscalls per request than without it)".into();
    p
}

fn run_with_input(cmd: &str, args: &[&str], input: &[u8]) -> Option<Vec<u8>> {
    use std::io::Write;
    let mut child =
        Command::new(cmd).args(args).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::null()).spawn().ok()?;
    let mut stdin = child.stdin.take()?;
    let input = input.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let out = child.wait_with_output().ok()?;
    let _ = writer.join();
    out.status.success().then_some(out.stdout)
}
