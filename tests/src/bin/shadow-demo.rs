//! `cargo xtask demo`: the whole story on one machine, in network namespaces it creates and
//! deletes. A client host sends real traffic to a primary service on a server host; shadow-daemon,
//! attached to the server's interface, captures it; the summary is checked against what was sent.

use std::{
    net::SocketAddr,
    process::{ExitCode, Stdio},
    time::{Duration, Instant},
};

use shadow_tests::{
    Proc, Scratch, bin_dir,
    client::{Conn, request},
    server::{Options, binary},
    topo::{NetNs, TwoHosts},
    wait_for, wait_settled,
};

const PRIMARY_PORT: u16 = 8080;
const SHADOW_PORT: u16 = 9090;
/// The daemon's metrics address, inside the server namespace.
const METRICS: &str = "127.0.0.1:9477";

struct Traffic {
    requests: u64,
    /// Requests with a method replayed by default (GET): what the shadow must receive.
    safe_requests: u64,
    safe_request_bytes: u64,
    /// Every GET exactly as sent, to compare with what the shadow received.
    safe_request_list: Vec<Vec<u8>>,
    request_bytes: u64,
    response_bytes: u64,
    non_2xx: u64,
}

fn main() -> ExitCode {
    // SAFETY: geteuid has no arguments and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("shadow-demo: needs root (network namespaces and eBPF)");
        return ExitCode::from(2);
    }
    match demo() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("shadow-demo: {e}");
            ExitCode::FAILURE
        }
    }
}

fn demo() -> Result<bool, String> {
    let bins = bin_dir();
    let daemon_bin = bins.join("shadow-daemon");
    let server_bin = bins.join(binary::NAME);
    for b in [&daemon_bin, &server_bin, &bins.join("shadowctl")] {
        if !b.exists() {
            return Err(format!("{} is not built (cargo xtask demo builds it)", b.display()));
        }
    }
    println!("== shadow demo ==");
    let t = TwoHosts::new("demo");
    let scratch = Scratch::new("demo");
    println!(
        "topology: client ns {} ({} / {}) <-veth-> server ns {} ({} / {}), daemon on {}",
        t.client.name, t.client_v4, t.client_v6, t.server.name, t.server_v4, t.server_v6, t.server_if
    );

    let server = Options::new().response_bytes(512);
    let _primary = server.clone().spawn(&t.server, &format!("[::]:{PRIMARY_PORT}"));
    let _shadow = server.record(scratch.path("shadow")).spawn(&t.server, &format!("127.0.0.1:{SHADOW_PORT}"));

    let summary_path = scratch.path("summary.json");
    let log_path = scratch.path("daemon.log");
    let log = std::fs::File::create(&log_path).map_err(|e| format!("create {}: {e}", log_path.display()))?;
    let mut daemon = Proc::spawn(
        "shadow-daemon",
        t.server
            .command(daemon_bin.to_str().unwrap_or_default())
            .args(["--interface", &t.server_if, "--port", &PRIMARY_PORT.to_string()])
            .args(["--shadow", &format!("127.0.0.1:{SHADOW_PORT}")])
            .args(["--sample-rate", "100", "--metrics-addr", METRICS])
            .args(["--control", scratch.path("control.sock").to_str().unwrap_or_default()])
            .args(["--summary-file", summary_path.to_str().unwrap_or_default()])
            .env("SHADOW_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log),
    );
    let started = Instant::now();
    wait_for("the daemon to attach", Duration::from_secs(30), || {
        std::fs::read_to_string(&log_path).is_ok_and(|l| l.contains("capturing ports"))
            || daemon.child.try_wait().ok().flatten().is_some()
    });
    if let Ok(Some(st)) = daemon.child.try_wait() {
        return Err(format!("daemon exited early ({st}):\n{}", std::fs::read_to_string(&log_path).unwrap_or_default()));
    }
    println!("daemon attached in {:.2} s", started.elapsed().as_secs_f64());

    let traffic = send_traffic(&t)?;
    println!(
        "client sent {} requests ({} request bytes), received {} response bytes, {} non-2xx",
        traffic.requests, traffic.request_bytes, traffic.response_bytes, traffic.non_2xx
    );

    // Stop once every request is captured and replayed or dropped: a condition, not a pause.
    wait_settled(&t.server, METRICS.parse().map_err(|e| format!("{e}"))?, traffic.requests, Duration::from_secs(60));
    let code = daemon.terminate(Duration::from_secs(10));
    if code != Some(0) {
        return Err(format!(
            "daemon exited with {code:?}:\n{}",
            std::fs::read_to_string(&log_path).unwrap_or_default()
        ));
    }
    let summary: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(&summary_path).map_err(|e| format!("read {}: {e}", summary_path.display()))?,
    )
    .map_err(|e| format!("parse summary: {e}"))?;
    let shadow = read_shadow_index(&scratch.path("shadow"));
    let mirrored = report(&summary, &traffic, &shadow);
    drop(t);
    let compared = act_two()?;
    Ok(mirrored && compared)
}

/// Act two: v1 as the primary, v2 (with injected regressions) as the shadow; the live daemon's
/// report must catch exactly search (latency), orders (body) and pay (5xx).
fn act_two() -> Result<bool, String> {
    use shadow_daemon::hub::DaemonReport;
    use shadow_tests::comparing::{CompareRig, ENDPOINTS};
    println!();
    println!("== act two: compare v1 (primary) with v2 (shadow) ==");
    let rig = CompareRig::start("demo2")?;
    let sent = rig.send_traffic()?;
    println!("client sent {sent} GETs over {} endpoints", ENDPOINTS.len());
    rig.wait_compared(sent, Duration::from_secs(60));
    // Kept after the demo (its scratch directories are removed): where it says.
    let dir = std::env::temp_dir().join("shadow-demo");
    std::fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    let html = dir.join("report.html");
    let (code, out, err) = rig.shadowctl(&["report", "--html", html.to_str().unwrap_or_default()]);
    println!("$ shadowctl report --html {}\n{out}{err}", html.display());
    let (_, json, _) = rig.shadowctl(&["report", "--json"]);
    let report: DaemonReport = serde_json::from_str(&json).map_err(|e| format!("shadowctl report --json: {e}"))?;
    let mut ok = code == 1;
    println!("shadowctl report exit code: {code} (want 1: FAIL)");
    let endpoints = report.rules.first().map(|r| r.report.endpoints.as_slice()).unwrap_or_default();
    for (name, want) in ENDPOINTS {
        let got = endpoints.iter().find(|e| e.summary.endpoint == name).map(|e| e.verdict.verdict());
        let m = got == Some(want);
        ok &= m;
        println!(
            "{name:<24} want {:<5} got {:<12} {}",
            want.as_str(),
            got.map_or("(missing)", |v| v.as_str()),
            if m { "match" } else { "MISMATCH" }
        );
    }
    ok &= endpoints.len() == ENDPOINTS.len() && report.verdict == shadow_daemon::compare::Verdict::Fail;
    ok &= std::fs::read_to_string(&html).is_ok_and(|h| h.contains("<html"));
    println!("HTML report written to {}", html.display());
    println!(
        "{}",
        if ok {
            "DEMO OK: compare caught exactly search (latency), orders (body) and pay (5xx); users and time pass"
        } else {
            "DEMO FAILED: the report is not the expected one"
        }
    );
    Ok(ok)
}

/// What the sample shadow recorded: (requests, tagged, bytes, methods).
struct ShadowSeen {
    /// Each request the shadow read, raw, in no particular order.
    raw: Vec<Vec<u8>>,
    requests: u64,
    tagged: u64,
    bytes: u64,
    non_get: u64,
}

fn read_shadow_index(dir: &std::path::Path) -> ShadowSeen {
    let mut s = ShadowSeen { raw: Vec::new(), requests: 0, tagged: 0, bytes: 0, non_get: 0 };
    let text = std::fs::read_to_string(dir.join("index.jsonl")).unwrap_or_default();
    for line in text.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else { continue };
        s.requests += 1;
        s.tagged += u64::from(v["tagged"].as_bool().unwrap_or(false));
        s.bytes += v["len"].as_u64().unwrap_or(0);
        s.non_get += u64::from(v["method"].as_str() != Some("GET"));
        let (conn, off, len) = (v["conn"].as_u64(), v["offset"].as_u64(), v["len"].as_u64());
        if let (Some(c), Some(o), Some(l)) = (conn, off, len)
            && let Ok(data) = std::fs::read(dir.join(format!("raw-{c}.bin")))
            && let Some(r) = data.get(o as usize..(o + l) as usize)
        {
            s.raw.push(r.to_vec());
        }
    }
    s
}

/// The demo's traffic: keep-alive GETs over IPv4, small POSTs over IPv6, a few 1 MiB uploads.
fn send_traffic(t: &TwoHosts) -> Result<Traffic, String> {
    let v4: SocketAddr = SocketAddr::new(t.server_v4.parse().map_err(|e| format!("{e}"))?, PRIMARY_PORT);
    let v6: SocketAddr = SocketAddr::new(t.server_v6.parse().map_err(|e| format!("{e}"))?, PRIMARY_PORT);
    let ns = t.client.name.clone();
    std::thread::spawn(move || -> Result<Traffic, String> {
        NetNs { name: ns }.enter_and_forget();
        let mut tr = Traffic {
            requests: 0,
            safe_requests: 0,
            safe_request_bytes: 0,
            safe_request_list: Vec::new(),
            request_bytes: 0,
            response_bytes: 0,
            non_2xx: 0,
        };
        let mut run = |addr: SocketAddr, reqs: Vec<Vec<u8>>| -> Result<(), String> {
            let mut c = Conn::connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
            for r in reqs {
                if r.starts_with(b"GET ") {
                    tr.safe_requests += 1;
                    tr.safe_request_bytes += r.len() as u64;
                    tr.safe_request_list.push(r.clone());
                }
                let st = c.exchange(&r).map_err(|e| format!("request to {addr}: {e}"))?;
                tr.requests += 1;
                if !(200..300).contains(&st) {
                    tr.non_2xx += 1;
                }
            }
            tr.request_bytes += c.sent;
            tr.response_bytes += c.received;
            Ok(())
        };
        for conn in 0..20 {
            let reqs =
                (0..10).map(|i| request("GET", &format!("/api/users/{}/orders?page={i}", conn * 10 + i), 0)).collect();
            run(v4, reqs)?;
        }
        for i in 0..10 {
            run(v6, vec![request("POST", &format!("/api/events/{i}"), 1024)])?;
        }
        for i in 0..3 {
            run(v4, vec![request("PUT", &format!("/api/blobs/{i}"), 1024 * 1024)])?;
        }
        Ok(tr)
    })
    .join()
    .map_err(|_| "client thread panicked".to_string())?
}

fn remove_line(r: &[u8], line: &[u8]) -> Vec<u8> {
    match r.windows(line.len()).position(|w| w == line) {
        Some(p) => [&r[..p], &r[p + line.len()..]].concat(),
        None => r.to_vec(),
    }
}

/// The lines the daemon adds to every replayed request by default (the demo's requests carry no
/// trace context): the tag, and the shadow marker in a new W3C baggage header.
const TAG_LINE: &[u8] = b"X-Shadow-Request: true\r\nbaggage: shadow=true\r\n";

fn report(s: &serde_json::Value, tr: &Traffic, sh: &ShadowSeen) -> bool {
    let get = |p: &[&str]| -> u64 {
        let mut v = s;
        for k in p {
            v = &v[*k];
        }
        v.as_u64().unwrap_or(0)
    };
    let rows = [
        ("request stream bytes (client -> service)", tr.request_bytes, get(&["request", "stream_bytes"])),
        ("response stream bytes (service -> client)", tr.response_bytes, get(&["response", "stream_bytes"])),
        ("requests (sampled by the kernel)", tr.requests, get(&["kernel", "requests_sampled"])),
        ("requests extracted whole", tr.requests, get(&["extraction", "requests_extracted"])),
        ("GETs replayed (default allowlist)", tr.safe_requests, get(&["mirror", "requests", "replayed"])),
        (
            "others dropped: method_not_allowed",
            tr.requests - tr.safe_requests,
            get(&["mirror", "requests", "dropped", "method_not_allowed"]),
        ),
        ("requests the shadow received", tr.safe_requests, sh.requests),
        ("  ... carrying X-Shadow-Request", tr.safe_requests, sh.tagged),
        ("  ... that were not GET", 0, sh.non_get),
        (
            "  ... bytes (original + tag, baggage)",
            tr.safe_request_bytes + tr.safe_requests * TAG_LINE.len() as u64,
            sh.bytes,
        ),
    ];
    println!();
    println!("{:<38} {:>14} {:>14}", "", "on the wire", "captured");
    let mut ok = true;
    for (name, sent, got) in rows {
        let m = sent == got;
        ok &= m;
        println!("{name:<38} {sent:>14} {got:>14}  {}", if m { "match" } else { "MISMATCH" });
    }
    // Retransmitted or overlapping segments are real wire bytes, captured as they passed, but
    // not new stream bytes: shown, not compared.
    println!(
        "{:<38} {:>14} {:>14}",
        "  retransmitted/overlapping (req + resp)",
        "",
        format!("{} + {}", get(&["request", "overlap_bytes"]), get(&["response", "overlap_bytes"]))
    );
    println!(
        "segments captured: {} request, {} response ({} + {} payload bytes); bad records {}; kernel: ringbuf_full {}, copy_failed {}, truncated {}",
        get(&["request", "segments"]),
        get(&["response", "segments"]),
        get(&["request", "payload_bytes"]),
        get(&["response", "payload_bytes"]),
        s["bad_records"].as_object().map_or(0, |o| o.values().filter_map(|v| v.as_u64()).sum::<u64>()),
        get(&["kernel", "ringbuf_full"]),
        get(&["kernel", "copy_failed"]),
        get(&["kernel", "truncated"]),
    );
    // Byte for byte: each request the shadow got, minus the tag line, is one the client sent.
    let mut sent = tr.safe_request_list.clone();
    let mut got: Vec<Vec<u8>> = sh.raw.iter().map(|r| remove_line(r, TAG_LINE)).collect();
    sent.sort();
    got.sort();
    let identical = sent == got;
    ok &= identical;
    println!("shadow requests byte-identical to the originals but for the tag line: {identical}");
    let reconciles = s["mirror"]["reconciles"].as_bool().unwrap_or(false);
    ok &= reconciles;
    println!("metrics reconcile (captured = replayed + dropped + in flight): {reconciles}");
    if let Ok(m) = serde_json::from_value::<shadow_daemon::metrics::Summary>(s["mirror"].clone()) {
        println!();
        println!("{m}");
    }
    println!();
    println!(
        "{}",
        if ok {
            "DEMO OK: every byte was captured, every GET reached the shadow tagged and marked (baggage) and otherwise byte-identical, nothing else did"
        } else {
            "DEMO FAILED: counts differ"
        }
    );
    ok
}
