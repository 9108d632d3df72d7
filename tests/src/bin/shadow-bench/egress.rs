//! The egress fence's cost (issue: < 1 µs per connect): the fence as the daemon builds it on a
//! test cgroup, and a loop of calls run by this binary placed in that cgroup, then in an unfenced
//! sibling, in interleaved rounds. Two figures: the programs' own run time per call from the
//! kernel's accounting (run_time_ns / run_cnt, gross: it includes the accounting's clock reads),
//! and the wall time per call fenced over unfenced. The calls are UDP so that no connection state
//! piles up: connect() of a UDP socket runs connect4 exactly as a TCP connect does (allowed:
//! lookup, count), a refused TCP connect returns EPERM before any handshake, and sendto() runs
//! sendmsg4.

use std::{
    net::{SocketAddr, TcpStream, UdpSocket},
    path::Path,
    process::Command,
    time::Instant,
};

use serde::Serialize;
use shadow_daemon::{
    capture::enable_kernel_stats,
    egress::{EgressConfig, EgressMode, Fence},
};

use crate::mirror::Spread;

/// The hidden mode this binary runs in inside the cgroups: `--egress-loop KIND ADDR N`; prints
/// the nanoseconds per call.
pub(crate) fn call_loop(kind: &str, addr: &str, n: u64) -> std::process::ExitCode {
    let addr: SocketAddr = addr.parse().expect("address");
    let start = Instant::now();
    match kind {
        "udp-connect" => {
            for _ in 0..n {
                let s = UdpSocket::bind("127.0.0.1:0").expect("bind");
                let _ = s.connect(addr);
            }
        }
        "udp-send" => {
            let s = UdpSocket::bind("127.0.0.1:0").expect("bind");
            for _ in 0..n {
                let _ = s.send_to(b"x", addr);
            }
        }
        "tcp-refused" => {
            for _ in 0..n {
                let _ = TcpStream::connect(addr);
            }
        }
        _ => return std::process::ExitCode::from(2),
    }
    #[allow(clippy::cast_precision_loss)]
    let per = start.elapsed().as_nanos() as f64 / n as f64;
    println!("{per}");
    std::process::ExitCode::SUCCESS
}

#[derive(Serialize)]
pub(crate) struct EgressCase {
    /// What each call is.
    pub call: String,
    /// The program that ran, and its run time per call (gross of the accounting's own clock reads).
    pub program: String,
    pub program_ns_per_call: Option<Spread>,
    pub fenced_ns_per_call: Option<Spread>,
    pub unfenced_ns_per_call: Option<Spread>,
    /// Per round: fenced over unfenced wall time.
    pub ratio: Option<Spread>,
}

#[derive(Serialize)]
pub(crate) struct EgressBench {
    pub rounds: usize,
    pub calls_per_round: u64,
    pub allow_entries: usize,
    pub cases: Vec<EgressCase>,
    /// The worst median of the programs' run time per call.
    pub worst_program_ns: Option<f64>,
}

/// Run the loop in `cgroup`; ns per call.
fn run_in(cgroup: &Path, kind: &str, addr: &str, n: u64) -> f64 {
    let me = std::env::current_exe().expect("current_exe");
    let cmd = format!(
        "echo $$ > '{}/cgroup.procs' && exec '{}' --egress-loop {kind} {addr} {n}",
        cgroup.display(),
        me.display()
    );
    let out = Command::new("sh").args(["-c", &cmd]).output().expect("run the loop");
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or(f64::NAN)
}

pub(crate) fn egress_bench(quick: bool) -> EgressBench {
    let _stats = enable_kernel_stats().expect("enable BPF stats");
    let scratch = shadow_tests::Scratch::new("bench-egress");
    let bpffs = scratch.path("bpf");
    std::fs::create_dir_all(&bpffs).expect("bpffs dir");
    shadow_tests::sh(&["mount", "-t", "bpf", "bpf", bpffs.to_str().expect("utf-8")]);
    let base = shadow_tests::cgroup2_root().join(format!("shadow-bench-egress-{}", std::process::id()));
    let (fenced, unfenced) = (base.join("fenced"), base.join("unfenced"));
    std::fs::create_dir_all(&fenced).expect("cgroup");
    std::fs::create_dir_all(&unfenced).expect("cgroup");
    let sink = UdpSocket::bind("127.0.0.1:0").expect("sink");
    sink.set_nonblocking(true).expect("nonblocking");
    let sink_addr = sink.local_addr().expect("addr");
    // An allowlist the size of a real one: a few nets and hosts with ports, and the sink.
    let mut allow: Vec<String> = (0..30).map(|i| format!("10.{i}.0.0/16:{}", 5000 + i)).collect();
    allow.extend(["10.96.0.10/32:53".into(), "[fd00::/8]:443".into(), format!("127.0.0.1/32:{}", sink_addr.port())]);
    let cfg = EgressConfig {
        cgroups: vec![fenced.display().to_string().parse().expect("pattern")],
        allow: allow.iter().map(|a| a.parse().expect("allow")).collect(),
        mode: EgressMode::Enforce,
    };
    let fence = Fence::start(&bpffs.join("shadow"), &[("bench".into(), Some(cfg))]).expect("fence").expect("fenced");
    let sink_addr = sink_addr.to_string();
    // Refused: a loopback port not in the allowlist where nothing listens (unfenced, the kernel
    // answers with a reset at once: nothing leaves the host either way).
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("probe a free port");
    let refused = closed.local_addr().expect("addr").to_string();
    drop(closed);
    let (rounds, n) = if quick { (3, 5_000) } else { (7, 50_000) };
    let cases = [
        (
            "UDP connect(), allowed (socket + connect + close)",
            "udp-connect",
            sink_addr.as_str(),
            "shadow_egress_connect4",
        ),
        ("UDP sendto(), allowed", "udp-send", sink_addr.as_str(), "shadow_egress_sendmsg4"),
        (
            "TCP connect() to loopback, refused (EPERM before any packet)",
            "tcp-refused",
            refused.as_str(),
            "shadow_egress_connect4",
        ),
    ];
    let mut out = Vec::new();
    for (call, kind, addr, program) in cases {
        let (mut fenced_ns, mut unfenced_ns, mut ratios, mut prog) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for round in 0..rounds {
            // Alternate which arm goes first.
            let before = fence.program_stats();
            let (f, u) = if round % 2 == 0 {
                let f = run_in(&fenced, kind, addr, n);
                (f, run_in(&unfenced, kind, addr, n))
            } else {
                let u = run_in(&unfenced, kind, addr, n);
                (run_in(&fenced, kind, addr, n), u)
            };
            let after = fence.program_stats();
            let delta = |stats: &[shadow_daemon::capture::ProgramStats]| {
                stats.iter().find(|s| s.name == program).map(|s| (s.run_time.as_nanos(), s.run_count))
            };
            if let (Some((t0, c0)), Some((t1, c1))) = (delta(&before), delta(&after))
                && c1 > c0
            {
                #[allow(clippy::cast_precision_loss)]
                prog.push((t1 - t0) as f64 / (c1 - c0) as f64);
            }
            fenced_ns.push(f);
            unfenced_ns.push(u);
            ratios.push(f / u);
            // Drain the sink so the socket buffer never fills.
            let mut buf = [0u8; 64];
            while sink.recv(&mut buf).is_ok() {}
        }
        let case = EgressCase {
            call: call.into(),
            program: program.into(),
            program_ns_per_call: Spread::of(prog),
            fenced_ns_per_call: Spread::of(fenced_ns),
            unfenced_ns_per_call: Spread::of(unfenced_ns),
            ratio: Spread::of(ratios),
        };
        println!(
            "egress: {:<52} program {:>6.0} ns/call; wall {:>7.0} ns fenced vs {:>7.0} ns unfenced ({:.3}x)",
            case.call,
            case.program_ns_per_call.map_or(f64::NAN, |s| s.median),
            case.fenced_ns_per_call.map_or(f64::NAN, |s| s.median),
            case.unfenced_ns_per_call.map_or(f64::NAN, |s| s.median),
            case.ratio.map_or(f64::NAN, |s| s.median),
        );
        out.push(case);
    }
    drop(fence);
    let _ = Command::new("umount").arg("-l").arg(&bpffs).status();
    let _ = std::fs::remove_dir(&fenced);
    let _ = std::fs::remove_dir(&unfenced);
    let _ = std::fs::remove_dir(&base);
    let worst = out
        .iter()
        .filter_map(|c| c.program_ns_per_call.map(|s| s.median))
        .fold(None, |a: Option<f64>, b| Some(a.map_or(b, |a| a.max(b))));
    EgressBench { rounds, calls_per_round: n, allow_entries: allow.len(), cases: out, worst_program_ns: worst }
}
