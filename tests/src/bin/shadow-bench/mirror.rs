//! The mirror benchmark: nginx as the primary in a namespace, wrk as the load, and arms run back
//! to back in one go: no mirror, shadow-daemon mirroring to a healthy shadow and to one that
//! answers after 1 s, and nginx's own in-path `mirror` to the same two shadows. Reported as ratios
//! to the no-mirror arm, plus the daemon's CPU per 10k mirrored requests, its peak RSS and the
//! mirrored fraction.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use serde::Serialize;
use shadow_tests::{
    Proc, Scratch, bin_dir,
    topo::{NetNs, TwoHosts},
    wait_for,
};

const PORT: u16 = 8080;
const HEALTHY_SHADOW: u16 = 9090;
const SLOW_SHADOW: u16 = 9091;

#[derive(Serialize, Clone, Debug, Default)]
pub struct Arm {
    pub arm: String,
    pub requests: u64,
    pub errors: u64,
    pub rps: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub throughput_ratio: f64,
    pub p99_ratio: f64,
    /// Daemon arms only.
    pub captured: Option<u64>,
    pub replayed: Option<u64>,
    pub mirrored_fraction: Option<f64>,
    /// Requests the daemon extracted whole / requests wrk completed.
    pub captured_fraction: Option<f64>,
    pub daemon_cpu_s: Option<f64>,
    pub cpu_s_per_10k_mirrored: Option<f64>,
    pub peak_rss_mib: Option<f64>,
    pub drops: Option<serde_json::Value>,
}

#[derive(Serialize)]
pub struct MirrorResults {
    pub date: String,
    pub command: String,
    pub load: String,
    pub request_bytes: usize,
    pub arms: Vec<Arm>,
}

/// nginx on `port` serving a 1 KiB file; with `mirror_to`, nginx's in-path mirror to that port.
fn nginx(ns: &NetNs, dir: &Path, port: u16, mirror_to: Option<u16>) -> Proc {
    std::fs::create_dir_all(dir.join("www")).expect("nginx dir");
    std::fs::write(dir.join("www/item"), vec![b'i'; 1024]).expect("body");
    let d = dir.display();
    let mirror = match mirror_to {
        Some(p) => format!(
            "mirror /__mirror; mirror_request_body on;\n    }}\n    location = /__mirror {{ internal; proxy_pass http://127.0.0.1:{p}$request_uri; proxy_set_header X-Shadow-Request true; proxy_connect_timeout 5s; proxy_read_timeout 5s;"
        ),
        None => String::new(),
    };
    let conf = format!(
        "worker_processes 1;\ndaemon off;\npid {d}/nginx.pid;\nerror_log {d}/error.log crit;\nevents {{ worker_connections 1024; }}\n\
         http {{\n  access_log off;\n  keepalive_requests 100000;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n  fastcgi_temp_path {d}/fcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
           server {{\n    listen {port};\n    root {d}/www;\n    location / {{\n    {mirror}\n    }}\n  }}\n}}\n"
    );
    let path = dir.join("nginx.conf");
    std::fs::write(&path, conf).expect("nginx.conf");
    let p = Proc::spawn(
        "nginx",
        ns.command("nginx").args(["-c", path.to_str().expect("utf-8")]).stdout(Stdio::null()).stderr(Stdio::null()),
    );
    wait_for(&format!("nginx on {port}"), Duration::from_secs(10), || ns.listening(port));
    p
}

struct Wrk {
    requests: u64,
    errors: u64,
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
}

fn parse_ms(v: &str) -> f64 {
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

fn wrk(ns: &NetNs, url: &str, secs: u32, pad: &str) -> Wrk {
    let out = ns
        .command("wrk")
        .args(["-t2", "-c32", &format!("-d{secs}s"), "--latency", "--timeout", "5s"])
        .args(["-H", &format!("X-Pad: {pad}")])
        .arg(url)
        .output()
        .expect("run wrk");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "wrk failed: {text}{}", String::from_utf8_lossy(&out.stderr));
    let mut w = Wrk { requests: 0, errors: 0, rps: 0.0, p50_ms: f64::NAN, p99_ms: f64::NAN };
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
        } else if t.starts_with("Socket errors:") || t.starts_with("Non-2xx") {
            w.errors += t.split(|c: char| !c.is_ascii_digit()).filter_map(|n| n.parse::<u64>().ok()).sum::<u64>();
        }
    }
    w
}

/// A fixed-rate run with hey: `conc` workers at `per_worker` requests/s each, for `secs`.
fn hey(ns: &NetNs, url: &str, secs: u32, conc: u32, per_worker: u32, pad: &str) -> Wrk {
    let out = ns
        .command("hey")
        .args(["-z", &format!("{secs}s"), "-c", &conc.to_string(), "-q", &per_worker.to_string(), "-t", "5"])
        .args(["-H", &format!("X-Pad: {pad}")])
        .arg(url)
        .output()
        .expect("run hey");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "hey failed: {text}{}", String::from_utf8_lossy(&out.stderr));
    let mut w = Wrk { requests: 0, errors: 0, rps: 0.0, p50_ms: f64::NAN, p99_ms: f64::NAN };
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

/// utime + stime of a process in seconds, and its peak RSS in MiB.
fn cpu_and_rss(pid: u32) -> (f64, f64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are the 12th and 13th there.
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
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

struct Daemon {
    proc: Proc,
    summary: PathBuf,
}

/// `shadow_port` 0: capture and extraction only, no replay (isolates the daemon's capture cost).
fn start_daemon(t: &TwoHosts, scratch: &Scratch, shadow_port: u16, tag: &str) -> Daemon {
    let bin = bin_dir().join("shadow-daemon");
    let summary = scratch.path(&format!("summary-{tag}.json"));
    let log = scratch.path(&format!("daemon-{tag}.log"));
    let mut cmd = t.server.command(bin.to_str().expect("utf-8"));
    if shadow_port != 0 {
        cmd.args(["--shadow", &format!("127.0.0.1:{shadow_port}")]);
    }
    let proc = Proc::spawn(
        "shadow-daemon",
        cmd.args(["--interface", &t.server_if, "--port", &PORT.to_string()])
            .args(["--metrics-addr", "127.0.0.1:0"])
            .args(["--control", scratch.path("ctl.sock").to_str().expect("utf-8")])
            .args(["--summary-file", summary.to_str().expect("utf-8")])
            .env("SHADOW_LOG", "warn,shadow_daemon=info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log")),
    );
    wait_for("daemon to attach", Duration::from_secs(30), || {
        std::fs::read_to_string(&log).is_ok_and(|l| l.contains("capturing ports"))
    });
    Daemon { proc, summary }
}

pub fn mirror_bench(quick: bool, date: String) -> MirrorResults {
    let secs = if quick { 3 } else { 8 };
    let t = TwoHosts::new("mb");
    let scratch = Scratch::new("mb");
    // Requests of about 1 KiB on the wire: wrk's request line and headers plus this pad.
    let pad = "p".repeat(1024 - 120);
    let url = format!("http://{}:{PORT}/item", t.server_v4);
    let request_bytes = format!("GET /item HTTP/1.1\r\nHost: {}:{PORT}\r\nX-Pad: {pad}\r\n\r\n", t.server_v4).len();

    let _healthy = nginx(&t.server, &scratch.path("shadow-nginx"), HEALTHY_SHADOW, None);
    let _slow = Proc::spawn(
        "slow shadow",
        t.server
            .command(bin_dir().join("shadow-testserver").to_str().expect("utf-8"))
            .args(["--listen", &format!("127.0.0.1:{SLOW_SHADOW}"), "--delay-ms", "1000", "--response-bytes", "1024"])
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    wait_for("slow shadow", Duration::from_secs(10), || t.server.listening(SLOW_SHADOW));

    let mut arms: Vec<Arm> = Vec::new();
    let run_arm = |name: &str, mirror_to: Option<u16>, daemon_to: Option<u16>, fixed_rate: bool| -> Arm {
        let primary = nginx(&t.server, &scratch.path(&format!("primary-{}", arms_len_tag(name))), PORT, mirror_to);
        let daemon = daemon_to.map(|p| start_daemon(&t, &scratch, p, &arms_len_tag(name)));
        let cpu0 = daemon.as_ref().map(|d| cpu_and_rss(d.proc.child.id()).0);
        let started = Instant::now();
        // Fixed rate: 16 workers x 250/s = 4000 requests/s, well below saturation, so latency
        // shows the cost of mirroring rather than CPU starvation.
        let w = if fixed_rate { hey(&t.client, &url, secs, 16, 250, &pad) } else { wrk(&t.client, &url, secs, &pad) };
        let _ = started;
        let mut arm = Arm {
            arm: name.into(),
            requests: w.requests,
            errors: w.errors,
            rps: w.rps,
            p50_ms: w.p50_ms,
            p99_ms: w.p99_ms,
            ..Default::default()
        };
        if let Some(mut d) = daemon {
            let (cpu1, rss) = cpu_and_rss(d.proc.child.id());
            std::thread::sleep(Duration::from_millis(300));
            let code = d.proc.terminate(Duration::from_secs(20));
            assert_eq!(code, Some(0), "daemon exit in arm {name}");
            let s: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(&d.summary).expect("summary")).expect("summary json");
            let m = &s["mirror"]["requests"];
            let captured = m["captured"].as_u64().unwrap_or(0);
            let replayed = m["replayed"].as_u64().unwrap_or(0);
            let cpu = cpu1 - cpu0.unwrap_or(0.0);
            arm.captured = Some(captured);
            arm.replayed = Some(replayed);
            arm.mirrored_fraction = Some(if w.requests == 0 { 0.0 } else { replayed as f64 / w.requests as f64 });
            arm.captured_fraction = Some(if w.requests == 0 { 0.0 } else { captured as f64 / w.requests as f64 });
            arm.daemon_cpu_s = Some(cpu);
            arm.cpu_s_per_10k_mirrored = Some(if replayed == 0 { f64::NAN } else { cpu / replayed as f64 * 10_000.0 });
            arm.peak_rss_mib = Some(rss);
            let drops: serde_json::Map<String, serde_json::Value> = m["dropped"]
                .as_object()
                .map(|o| {
                    o.iter().filter(|(_, v)| v.as_u64().unwrap_or(0) > 0).map(|(k, v)| (k.clone(), v.clone())).collect()
                })
                .unwrap_or_default();
            arm.drops = Some(serde_json::Value::Object(drops));
        }
        let mut primary = primary;
        primary.terminate(Duration::from_secs(10));
        wait_for("primary to stop", Duration::from_secs(10), || !t.server.listening(PORT));
        println!(
            "{:<40} {:>9.0} req/s  p50 {:>7.3} ms  p99 {:>8.3} ms  errors {}{}",
            arm.arm,
            arm.rps,
            arm.p50_ms,
            arm.p99_ms,
            arm.errors,
            arm.replayed.map_or(String::new(), |r| format!(
                "  mirrored {r}/{} ({:.3})  cpu {:.2}s ({:.3} s/10k)  rss {:.1} MiB",
                arm.requests,
                arm.mirrored_fraction.unwrap_or(0.0),
                arm.daemon_cpu_s.unwrap_or(0.0),
                arm.cpu_s_per_10k_mirrored.unwrap_or(0.0),
                arm.peak_rss_mib.unwrap_or(0.0)
            ))
        );
        arm
    };
    // Saturating load (wrk, closed loop): throughput when the cores are the limit.
    let mut sat: Vec<Arm> = vec![
        run_arm("saturating: no mirror (baseline)", None, None, false),
        run_arm("saturating: shadow-daemon, capture only (no replay)", None, Some(0), false),
        run_arm("saturating: shadow-daemon, healthy shadow", None, Some(HEALTHY_SHADOW), false),
        run_arm("saturating: shadow-daemon, shadow answering after 1 s", None, Some(SLOW_SHADOW), false),
        run_arm("saturating: nginx mirror (in path), healthy shadow", Some(HEALTHY_SHADOW), None, false),
        run_arm("saturating: nginx mirror (in path), shadow after 1 s", Some(SLOW_SHADOW), None, false),
        // Baseline again at the end: the spread between the two is the machine's noise.
        run_arm("saturating: no mirror (baseline, again)", None, None, false),
    ];
    // Fixed rate (hey, 4000 requests/s): latency at a load the machine carries.
    let mut fixed: Vec<Arm> = vec![
        run_arm("4k/s: no mirror (baseline)", None, None, true),
        run_arm("4k/s: shadow-daemon, healthy shadow", None, Some(HEALTHY_SHADOW), true),
        run_arm("4k/s: shadow-daemon, shadow answering after 1 s", None, Some(SLOW_SHADOW), true),
        run_arm("4k/s: nginx mirror (in path), healthy shadow", Some(HEALTHY_SHADOW), None, true),
        run_arm("4k/s: nginx mirror (in path), shadow after 1 s", Some(SLOW_SHADOW), None, true),
        run_arm("4k/s: no mirror (baseline, again)", None, None, true),
    ];
    for group in [&mut sat, &mut fixed] {
        let n = group.len();
        let ref_rps = (group[0].rps + group[n - 1].rps) / 2.0;
        let ref_p99 = (group[0].p99_ms + group[n - 1].p99_ms) / 2.0;
        for a in group.iter_mut() {
            a.throughput_ratio = a.rps / ref_rps;
            a.p99_ratio = a.p99_ms / ref_p99;
        }
    }
    arms.extend(sat);
    arms.extend(fixed);
    MirrorResults {
        date,
        command: format!("cargo xtask bench{}", if quick { " --quick" } else { "" }),
        load: format!(
            "saturating: wrk -t2 -c32 -d{secs}s --latency; fixed rate: hey -z {secs}s -c 16 -q 250 (4000 requests/s); GET /item (1 KiB file) over IPv4 between two namespaces"
        ),
        request_bytes,
        arms,
    }
}

fn arms_len_tag(name: &str) -> String {
    name.chars().filter(|c| c.is_ascii_alphanumeric()).collect()
}

pub fn write_mirror(out: &Path, r: &MirrorResults) {
    let _ = std::fs::write(out.join("mirror.json"), serde_json::to_string_pretty(r).unwrap_or_default());
    let mut md = format!(
        "# Mirror cost to the primary\n\nMeasured {} by `{}`; raw figures in mirror.json.\n\nLoad: {}; requests of {} bytes. \
         Ratios are to the mean of the two no-mirror arms (first and last) of the same load, all arms run back to back in one go.\n\n",
        r.date, r.command, r.load, r.request_bytes
    );
    md.push_str("| arm | req/s | throughput ratio | p99 ms | p99 ratio | errors | captured fraction | mirrored fraction | daemon CPU s / 10k mirrored | daemon peak RSS MiB | drops |\n");
    md.push_str("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n");
    for a in &r.arms {
        md.push_str(&format!(
            "| {} | {:.0} | {:.3} | {:.3} | {:.2} | {} | {} | {} | {} | {} | {} |\n",
            a.arm,
            a.rps,
            a.throughput_ratio,
            a.p99_ms,
            a.p99_ratio,
            a.errors,
            a.captured_fraction.map_or("-".into(), |f| format!("{f:.3}")),
            a.mirrored_fraction.map_or("-".into(), |f| format!("{f:.3}")),
            a.cpu_s_per_10k_mirrored.map_or("-".into(), |c| format!("{c:.3}")),
            a.peak_rss_mib.map_or("-".into(), |m| format!("{m:.1}")),
            a.drops.as_ref().map_or("-".into(), |d| d.to_string()),
        ));
    }
    md.push_str("\nThe machine has 2 vCPUs shared by nginx, wrk, the shadow and the daemon: the daemon's CPU is taken from the same cores the primary uses.\n");
    let _ = std::fs::write(out.join("mirror.md"), md);
    println!("wrote {}/mirror.md and mirror.json", out.display());
}

#[derive(Serialize, Clone, Debug)]
pub struct CapacityStep {
    /// What was asked for: a fixed rate (hey) or saturation (wrk).
    pub load: String,
    /// Requests/s the primary served in this step.
    pub rps: f64,
    pub requests: u64,
    /// Requests the daemon extracted whole (capture only: every one is counted as `no_target`).
    pub captured: u64,
    pub ringbuf_full: u64,
    pub daemon_cpu_s: f64,
}

#[derive(Serialize, Clone, Debug)]
pub struct Capacity {
    pub request_bytes: usize,
    /// nginx alone, saturated by wrk: the most this machine serves.
    pub nginx_alone_rps: f64,
    pub steps: Vec<CapacityStep>,
    /// Highest served rate of a step with `ringbuf_full` = 0 and every request captured.
    pub max_rps_without_ringbuf_full: f64,
}

/// How fast can traffic go before the ring buffer overflows? nginx alone under wrk gives the
/// machine's ceiling; then the release daemon (capture and extraction, no replay, default 32 MiB
/// ring) is attached and the load stepped up at fixed rates (hey) to saturation (wrk), each step
/// with a fresh daemon whose summary gives `ringbuf_full` and the requests it captured.
pub fn capacity_ladder(quick: bool) -> Capacity {
    let secs = if quick { 3 } else { 6 };
    let t = TwoHosts::new("cap");
    let scratch = Scratch::new("cap");
    let pad = "p".repeat(1024 - 120);
    let url = format!("http://{}:{PORT}/item", t.server_v4);
    let request_bytes = format!("GET /item HTTP/1.1\r\nHost: {}:{PORT}\r\nX-Pad: {pad}\r\n\r\n", t.server_v4).len();
    let _primary = nginx(&t.server, &scratch.path("primary"), PORT, None);
    let alone = wrk(&t.client, &url, secs, &pad);
    println!("capacity: nginx alone (wrk -t2 -c32)          {:>9.0} req/s", alone.rps);
    let mut steps = Vec::new();
    let fractions: &[f64] = if quick { &[0.5] } else { &[0.25, 0.5, 0.75] };
    let mut loads: Vec<(String, Option<u32>)> = fractions
        .iter()
        .map(|f| {
            let per_worker = ((alone.rps * f) / 16.0).max(1.0) as u32;
            (format!("hey -c16 -q{per_worker} ({:.0}% of nginx alone)", f * 100.0), Some(per_worker))
        })
        .collect();
    loads.push(("wrk -t2 -c32 (saturating)".into(), None));
    for (i, (name, per_worker)) in loads.into_iter().enumerate() {
        let mut d = start_daemon(&t, &scratch, 0, &format!("cap{i}"));
        let (cpu0, _) = cpu_and_rss(d.proc.child.id());
        let w = match per_worker {
            Some(q) => hey(&t.client, &url, secs, 16, q, &pad),
            None => wrk(&t.client, &url, secs, &pad),
        };
        let (cpu1, _) = cpu_and_rss(d.proc.child.id());
        assert_eq!(d.proc.terminate(Duration::from_secs(20)), Some(0), "daemon exit in capacity step {name}");
        let s: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&d.summary).expect("summary")).expect("summary json");
        let step = CapacityStep {
            load: name,
            rps: w.rps,
            requests: w.requests,
            captured: s["mirror"]["requests"]["captured"].as_u64().unwrap_or(0),
            ringbuf_full: s["kernel"]["ringbuf_full"].as_u64().unwrap_or(u64::MAX),
            daemon_cpu_s: cpu1 - cpu0,
        };
        println!(
            "capacity: {:<42} {:>9.0} req/s  captured {}/{}  ringbuf_full {}  daemon cpu {:.2}s",
            step.load, step.rps, step.captured, step.requests, step.ringbuf_full, step.daemon_cpu_s
        );
        steps.push(step);
    }
    let max_rps_without_ringbuf_full =
        steps.iter().filter(|s| s.ringbuf_full == 0 && s.captured >= s.requests).map(|s| s.rps).fold(0.0, f64::max);
    Capacity { request_bytes, nginx_alone_rps: alone.rps, steps, max_rps_without_ringbuf_full }
}
