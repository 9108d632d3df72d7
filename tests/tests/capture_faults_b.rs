//! Kernel tier B, the fault suite's capture half (issue 9 item 7): the release daemon attached to
//! a veth of namespaces created here, and faults on the capture side: the daemon SIGKILLed under
//! load, a 2,000-connection slowloris, a ring buffer too small for a burst, and reordered,
//! overlapping, retransmitted and lost segments (crafted frames: this kernel has no netem).
//!
//! Behaviour only: every wait polls /metrics (or a process) with a generous deadline, every load
//! is bounded in count and time, and traffic stays inside the namespaces.

use std::{
    collections::{BTreeMap, BTreeSet},
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    process::Stdio,
    time::{Duration, Instant},
};

use serde_json::Value;
use shadow_tests::{
    Proc,
    client::{Conn, read_response, request, status_of},
    faults::{
        Scrape, bpf_objects_of, loaded_link_ids, loaded_program_ids, raise_nofile, rss_bytes, tcx_attached,
        wait_metrics,
    },
    inject::{Conv, Injector},
    require_kernel, require_tool,
    rig::OpsRig,
    topo::NetNs,
    wait_for, without_line,
};

const PORT: u16 = 8080;
const SHADOW: &str = "127.0.0.1:9090";
// The daemon's default edits of a request without trace headers: the tag, then the shadow
// marker in a new W3C baggage header, both before the blank line.
const TAG_LINE: &[u8] = b"X-Shadow-Request: true\r\nbaggage: shadow=true\r\n";
/// What every crafted primary answers.
const OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
const WAIT: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------------------------
// Shared pieces

fn rule(extra: &str) -> String {
    format!("[[rule]]\nname = \"svc\"\nport = {PORT}\nshadow = \"{SHADOW}\"\n{extra}")
}

fn scrape_wait(r: &OpsRig, what: &str, ok: impl FnMut(&Scrape) -> bool) -> Scrape {
    wait_metrics(&r.t.server, r.metrics_addr(), what, WAIT, ok)
}

/// SIGTERM the daemon (a clean exit is required) and read its summary file.
fn stop(r: &mut OpsRig) -> Value {
    let code = r.stop_daemon();
    assert_eq!(code, Some(0), "daemon exit code; log:\n{}", r.daemon_log());
    let text = std::fs::read_to_string(r.scratch.path("summary.json")).expect("summary file");
    serde_json::from_str(&text).expect("summary json")
}

/// What the shadow recorded in `dir`, tag line removed, sorted; panics if one is untagged.
fn shadow_got(r: &OpsRig, dir: &str) -> Vec<Vec<u8>> {
    let got = r.recorded(dir);
    assert!(got.iter().all(|q| q.tagged), "every replayed request carries the tag header");
    let mut v: Vec<Vec<u8>> = got.iter().map(|q| without_line(&q.raw, TAG_LINE)).collect();
    v.sort();
    v
}

fn sorted(v: &[&[u8]]) -> Vec<Vec<u8>> {
    let mut v: Vec<Vec<u8>> = v.iter().map(|b| b.to_vec()).collect();
    v.sort();
    v
}

fn show(v: &[Vec<u8>]) -> Vec<String> {
    v.iter().map(|b| String::from_utf8_lossy(b).into_owned()).collect()
}

/// Non-zero entries of a JSON object of counts.
fn counts(v: &Value) -> BTreeMap<String, u64> {
    v.as_object()
        .map(|o| o.iter().filter_map(|(k, n)| Some((k.clone(), n.as_u64()?))).filter(|(_, n)| *n > 0).collect())
        .unwrap_or_default()
}

fn map(pairs: &[(&str, u64)]) -> BTreeMap<String, u64> {
    pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a count: {v}"))
}

// ---------------------------------------------------------------------------------------------
// 1. SIGKILL under load

/// Programs attached to the server's interface that are ours (by name), as (hook, id).
fn ours_attached(r: &OpsRig) -> Vec<(&'static str, u32)> {
    tcx_attached(&r.t.server, &r.t.server_if)
        .into_iter()
        .filter(|(_, _, name)| name.starts_with("shadow_"))
        .map(|(hook, id, _)| (hook, id))
        .collect()
}

#[test]
fn sigkill_under_load_leaves_no_program_or_link_and_a_new_daemon_works() {
    if !require_kernel("sigkill_under_load_leaves_no_program_or_link") || !require_tool("sigkill_under_load", "hey") {
        return;
    }
    let mut r = OpsRig::new("fk");
    r.server(&format!("[::]:{PORT}"), "primary");
    r.server(SHADOW, "shadow");
    r.write_config(&rule(""));
    let iface = r.t.server_if.clone();
    r.start_daemon(&iface, &[]);
    let pid = r.daemon.as_ref().expect("daemon").child.id();

    // What the daemon holds in the kernel, from its own file descriptors: the control for the
    // checks after the kill (they must see these while it lives, or they prove nothing).
    let (progs, links) = bpf_objects_of(pid);
    let attached = ours_attached(&r);
    let hooks: BTreeSet<&str> = attached.iter().map(|(h, _)| *h).collect();
    assert_eq!(hooks, BTreeSet::from(["egress", "ingress"]), "TCX lists our programs on both hooks: {attached:?}");
    assert!(attached.iter().all(|(_, id)| progs.contains(id)), "the attached programs are the daemon's: {progs:?}");
    assert!(links.len() >= 2, "the daemon holds its TCX links: {links:?}");
    assert!(loaded_link_ids().is_superset(&links) && loaded_program_ids().is_superset(&progs));

    // A bounded load: N requests over 4 keep-alive connections at 4 x 400 requests/s at most
    // (about 5 s), so that it is still running when the daemon is killed.
    const N: u64 = 8000;
    let url = format!("http://{}:{PORT}/load", r.t.server_v4);
    let mut hey = Proc::spawn(
        "hey",
        r.t.client
            .command("hey")
            .args(["-n", &N.to_string(), "-c", "4", "-q", "400", "-t", "10", &url])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    );
    // Kill once the daemon is demonstrably mirroring the load.
    scrape_wait(&r, "the daemon to mirror part of the load", |s| s.replayed() >= 300.0);
    assert!(
        hey.child.try_wait().expect("hey status").is_none(),
        "the load ended before the kill; the test proves nothing (make N larger)"
    );
    let mut daemon = r.daemon.take().expect("daemon");
    daemon.child.kill().expect("SIGKILL the daemon");
    let st = daemon.child.wait().expect("reap the daemon");
    assert_eq!(st.code(), None, "killed by a signal");
    assert!(hey.child.try_wait().expect("hey status").is_none(), "the load was still running at the kill");

    // The load finishes by itself (bounded by N and hey's own timeouts).
    let deadline = Instant::now() + Duration::from_secs(120);
    while hey.child.try_wait().expect("hey status").is_none() {
        assert!(Instant::now() < deadline, "hey did not finish within 120 s");
        std::thread::sleep(Duration::from_millis(50));
    }
    let status = hey.child.try_wait().expect("hey status").expect("hey exited");
    let mut text = String::new();
    let mut err = String::new();
    hey.child.stdout.take().expect("stdout").read_to_string(&mut text).expect("hey stdout");
    hey.child.stderr.take().expect("stderr").read_to_string(&mut err).expect("hey stderr");
    assert!(status.success(), "hey: {text}{err}");
    assert!(text.contains(&format!("[200]\t{N} responses")), "every request answered 200:\n{text}");
    assert!(!text.contains("Error distribution"), "no client errors:\n{text}");
    assert_eq!(r.recorded("primary").len() as u64, N, "the primary served every request");

    // Nothing of ours is left: not on the interface (TCX query), not as a link (the link API),
    // not as a loaded program. The kernel releases them with the last file descriptor.
    wait_for("the killed daemon's links and programs to be released", Duration::from_secs(30), || {
        ours_attached(&r).is_empty()
            && loaded_link_ids().is_disjoint(&links)
            && loaded_program_ids().is_disjoint(&progs)
    });
    assert!(tcx_attached(&r.t.server, &r.t.server_if).is_empty(), "nothing at all attached to the interface");

    // A new daemon attaches to the same interface (nothing shared is left to refuse it) and
    // mirrors, byte for byte, to a fresh shadow.
    r.server("127.0.0.1:9091", "shadow2");
    r.write_config(&format!("[[rule]]\nname = \"svc\"\nport = {PORT}\nshadow = \"127.0.0.1:9091\"\n"));
    r.start_daemon(&iface, &[]);
    assert_eq!(ours_attached(&r).len(), 2, "the new daemon attached both hooks");
    let st = r.ctl(&["status", "--json"]).json();
    assert!(st.to_string().contains(&iface), "the new daemon's control socket answers: {st}");
    let addr = SocketAddr::new(r.t.server_v4.parse().expect("v4"), PORT);
    let sent = get_distinct(&r, addr, 50);
    scrape_wait(&r, "50 requests replayed by the new daemon", |s| {
        s.captured() == 50.0 && s.replayed() == 50.0 && s.in_flight() == 0.0
    });
    let summary = stop(&mut r);
    assert_eq!(summary["mirror"]["reconciles"], true);
    let want: Vec<&[u8]> = sent.iter().map(Vec::as_slice).collect();
    assert_eq!(shadow_got(&r, "shadow2"), sorted(&want), "the new daemon mirrors exactly what was sent");
}

/// `n` distinct GETs over one keep-alive connection from the client namespace, each answered
/// 200; returns their bytes.
fn get_distinct(r: &OpsRig, addr: SocketAddr, n: usize) -> Vec<Vec<u8>> {
    let name = r.t.client.name.clone();
    std::thread::spawn(move || {
        NetNs { name }.enter_and_forget();
        let mut c = Conn::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        (0..n)
            .map(|i| {
                let q = request("GET", &format!("/after-kill/{i}"), 0);
                assert_eq!(c.exchange(&q).expect("exchange"), 200);
                q
            })
            .collect()
    })
    .join()
    .expect("client thread")
}

// ---------------------------------------------------------------------------------------------
// 2. Slowloris

const SLOW_CONNS: usize = 2000;
/// Header lines each slow connection trickles, one per round, and their size: 48 x 500 bytes
/// = 24,000 bytes of unfinished head per connection (below the 64 KiB head limit and the 100
/// header fields), 48 MB in all: twelve times the memory cap.
const SLOW_ROUNDS: usize = 48;
const SLOW_LINE: usize = 500;
const MEMORY_CAP: u64 = 4 << 20;
const SLOW_RING: u64 = 8 << 20;
/// What the daemon may hold besides reassembly: the ring buffer's pages (mapped into it), plus
/// this for everything else that grows after the first scrape (replay connections, the
/// allocator's slack, metrics series).
const FIXED_OVERHEAD: u64 = 16 << 20;

#[test]
fn slowloris_of_2000_connections_stays_within_the_memory_cap_and_normal_requests_are_mirrored() {
    if !require_kernel("slowloris_of_2000_connections") {
        return;
    }
    // 2,000 client sockets here, 2,000 accepted ones in the primary (which inherits the limit).
    raise_nofile(8192);
    let mut r = OpsRig::new("fs");
    r.serve(&format!("[::]:{PORT}"), r.recording("primary").max_conns(4096));
    r.server(SHADOW, "shadow");
    r.write_config(&rule(""));
    let iface = r.t.server_if.clone();
    r.start_daemon(&iface, &["--memory-cap", &MEMORY_CAP.to_string(), "--ring-buffer-size", &SLOW_RING.to_string()]);
    let pid = r.daemon.as_ref().expect("daemon").child.id();
    let addr = SocketAddr::new(r.t.server_v4.parse().expect("v4"), PORT);
    // The baseline: the daemon attached and serving /metrics, before any traffic.
    scrape_wait(&r, "the daemon to serve /metrics", |s| s.get("shadow_ready") == 1.0);
    let (idle_rss, _) = rss_bytes(pid);

    let during = request("GET", "/normal/during", 0);
    let after = request("GET", "/normal/after", 0);
    let (server_ns, metrics) = (r.t.server.name.clone(), r.metrics_addr());
    let client_ns = r.t.client.name.clone();
    let (during2, after2) = (during.clone(), after.clone());
    let max_buffered = std::thread::spawn(move || {
        NetNs { name: client_ns }.enter_and_forget();
        // Borrowed: the rig owns (and deletes) the namespace.
        let server = std::mem::ManuallyDrop::new(NetNs { name: server_ns });
        let start = Instant::now();
        let mut conns: Vec<TcpStream> = (0..SLOW_CONNS)
            .map(|i| {
                let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(10))
                    .unwrap_or_else(|e| panic!("slow connection {i}: {e}"));
                s.set_nodelay(true).expect("nodelay");
                s.write_all(format!("GET /slow/{i} HTTP/1.1\r\nHost: svc\r\n").as_bytes()).expect("write");
                s
            })
            .collect();
        let mut max_buffered = 0f64;
        for round in 0..SLOW_ROUNDS {
            assert!(start.elapsed() < Duration::from_secs(300), "slowloris bounded in time");
            let line = format!("X-Slow-{round:02}: {}\r\n", "s".repeat(SLOW_LINE - 13));
            assert_eq!(line.len(), SLOW_LINE);
            for s in &mut conns {
                s.write_all(line.as_bytes()).expect("trickle");
            }
            if let Some(text) = server.http_get(metrics, "/metrics") {
                max_buffered = max_buffered.max(Scrape(text).get("shadow_buffered_bytes"));
            }
            if round == SLOW_ROUNDS / 2 {
                // A normal request while 2,000 unfinished heads are held.
                let mut c = Conn::connect(addr).expect("connect");
                assert_eq!(c.exchange(&during2).expect("exchange"), 200);
            }
        }
        (conns, max_buffered)
    })
    .join()
    .expect("slowloris thread");
    let (conns, max_buffered) = max_buffered;
    let (_, peak_rss) = rss_bytes(pid);
    // Stalled: the heads never finish. Closing them ends the slowloris.
    drop(conns);
    let name = r.t.client.name.clone();
    let after2c = after2.clone();
    std::thread::spawn(move || {
        NetNs { name }.enter_and_forget();
        let mut c = Conn::connect(addr).expect("connect");
        assert_eq!(c.exchange(&after2c).expect("exchange"), 200);
    })
    .join()
    .expect("client thread");

    let total = SLOW_CONNS as f64 + 2.0;
    let s = scrape_wait(&r, "every slow request dropped and the normal ones replayed", |s| {
        s.captured() == total && s.replayed() == 2.0 && s.in_flight() == 0.0 && s.get("shadow_flows") == 0.0
    });
    let summary = stop(&mut r);
    eprintln!(
        "idle rss {} KiB, peak rss {} KiB, max buffered {max_buffered} B, evicted flows {}",
        idle_rss / 1024,
        peak_rss / 1024,
        summary["extraction"]["flows_evicted"]
    );
    assert_eq!(u(&summary["kernel"]["ringbuf_full"]), 0, "the ring held the slowloris (exact counts need it)");
    assert!(
        peak_rss <= idle_rss + MEMORY_CAP + SLOW_RING + FIXED_OVERHEAD,
        "peak RSS {} KiB above idle {} KiB + memory cap {} KiB + ring {} KiB + {} KiB",
        peak_rss / 1024,
        idle_rss / 1024,
        MEMORY_CAP / 1024,
        SLOW_RING / 1024,
        FIXED_OVERHEAD / 1024
    );
    assert!(max_buffered <= MEMORY_CAP as f64, "buffered bytes {max_buffered} above the cap");
    // Every slow request ends as a named drop: evicted to stay under the cap, or incomplete when
    // its connection closed; none is replayed.
    let m = &summary["mirror"];
    let drops = counts(&m["requests"]["dropped"]);
    let (evicted, incomplete) = (drops.get("evicted").copied(), drops.get("incomplete").copied());
    assert!(evicted.unwrap_or(0) > 0, "flows were evicted under the cap: {drops:?}");
    assert_eq!(evicted.unwrap_or(0) + incomplete.unwrap_or(0), SLOW_CONNS as u64, "{drops:?}");
    assert_eq!(drops.keys().filter(|k| *k != "evicted" && *k != "incomplete").count(), 0, "{drops:?}");
    assert!(u(&summary["extraction"]["flows_evicted"]) > 0);
    assert_eq!(s.dropped("evicted") + s.dropped("incomplete"), SLOW_CONNS as f64, "/metrics agrees");
    assert_eq!(m["reconciles"], true, "{m}");
    assert_eq!(shadow_got(&r, "shadow"), sorted(&[&during, &after]), "the normal requests mirrored exactly");
}

// ---------------------------------------------------------------------------------------------
// 3. Ring buffer overflow

/// A POST with a body of `len` bytes derived from `id`, as (head, body).
fn post(id: &str, len: usize) -> (Vec<u8>, Vec<u8>) {
    let head = format!(
        "POST /ring/{id} HTTP/1.1\r\nHost: svc\r\nContent-Type: application/octet-stream\r\nContent-Length: {len}\r\n\r\n"
    )
    .into_bytes();
    let seed = id.bytes().fold(7u32, |a, b| a.wrapping_mul(31).wrapping_add(u32::from(b)));
    let body = (0..len).map(|i| (seed.wrapping_add(i as u32 * 17) % 251) as u8).collect();
    (head, body)
}

/// `conns` keep-alive connections in parallel, `per_conn` POSTs each, every one written in
/// three pieces (head, two halves of the body) so that losing a record can leave a hole inside
/// a request. Returns every request sent; each must be answered 200.
fn burst(t: &OpsRig, round: usize, conns: usize, per_conn: usize) -> Vec<Vec<u8>> {
    let addr = SocketAddr::new(t.t.server_v4.parse().expect("v4"), PORT);
    let name = t.t.client.name.clone();
    std::thread::spawn(move || {
        NetNs { name }.enter_and_forget();
        let workers: Vec<_> = (0..conns)
            .map(|c| {
                std::thread::spawn(move || {
                    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(10)).expect("connect");
                    s.set_nodelay(true).expect("nodelay");
                    s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
                    let mut buf = Vec::new();
                    let mut sent = Vec::new();
                    for i in 0..per_conn {
                        let (head, body) = post(&format!("{round}/{c}/{i}"), 1200 + (i * 37) % 800);
                        let half = body.len() / 2;
                        for piece in [&head[..], &body[..half], &body[half..]] {
                            s.write_all(piece).expect("write");
                        }
                        let resp = read_response(&mut s, &mut buf, Duration::from_secs(10)).expect("response");
                        assert_eq!(status_of(&resp), 200, "the primary answered every request");
                        sent.push([head, body].concat());
                    }
                    sent
                })
            })
            .collect();
        workers.into_iter().flat_map(|w| w.join().expect("client")).collect()
    })
    .join()
    .expect("burst thread")
}

#[test]
fn ring_buffer_overflow_is_counted_and_never_replays_a_damaged_request() {
    if !require_kernel("ring_buffer_overflow_is_counted") {
        return;
    }
    let mut r = OpsRig::new("fr");
    r.server(&format!("[::]:{PORT}"), "primary");
    r.server(SHADOW, "shadow");
    r.write_config(&rule("allow_method = [\"POST\"]\n"));
    let iface = r.t.server_if.clone();
    // 64 KiB: about a hundred small records, far less than a burst.
    r.start_daemon(&iface, &["--ring-buffer-size", "65536"]);

    let mut sent: Vec<Vec<u8>> = Vec::new();
    let (mut full, mut gaps) = (0.0, 0.0);
    // Bounded: at most five bursts of 16 x 50 requests, until the ring has overflowed and lost
    // a record inside a request at least once (a damaged request that must not be replayed).
    for round in 0..5 {
        sent.extend(burst(&r, round, 16, 50));
        let n = sent.len() as f64;
        let s = scrape_wait(&r, "the kernel to count every request start", |s| s.kernel("requests_sampled") == n);
        (full, gaps) = (s.kernel("ringbuf_full"), s.dropped("gap"));
        assert_eq!(s.get("shadow_ring_buffer_dropped_records_total"), full, "both names of the count agree");
        if full > 0.0 && gaps > 0.0 {
            break;
        }
    }
    assert!(full > 0.0, "{} requests did not overflow a 64 KiB ring", sent.len());
    assert!(gaps > 0.0, "{} requests and {full} lost records left no hole inside a request", sent.len());
    // Requests whose answer was lost with the ring's records stay held by extraction (in flight)
    // until the idle timeout or the stop; nothing else is in flight.
    scrape_wait(&r, "nothing in flight but what extraction holds", |s| s.in_flight() == s.extracting());
    let summary = stop(&mut r);
    eprintln!("sent {} requests, ringbuf_full {full}: {}", sent.len(), summary["mirror"]["requests"]);

    // Drops are counted: by the kernel (records), and every record that was not lost reached
    // user space and was accounted there.
    let k = &summary["kernel"];
    assert!(u(&k["ringbuf_full"]) > 0);
    assert_eq!(u(&k["requests_sampled"]), sent.len() as u64, "the kernel decided on every request");
    let bad: u64 = counts(&summary["bad_records"]).values().sum();
    assert_eq!(
        u(&summary["request"]["segments"]) + u(&summary["response"]["segments"]) + bad,
        u(&k["segments_emitted"]),
        "every record the kernel emitted was read"
    );
    assert_eq!(summary["extraction"]["segments_reconcile"], true);
    // The ledger reconciles exactly: every request user space saw is replayed or dropped with a
    // named reason.
    let m = &summary["mirror"];
    assert_eq!(m["reconciles"], true, "{m}");
    let req = &m["requests"];
    let dropped: u64 = counts(&req["dropped"]).values().sum();
    assert_eq!(u(&req["in_flight"]), 0, "{m}");
    assert_eq!(u(&req["captured"]), u(&req["replayed"]) + dropped, "{m}");
    // A sampled request whose start record was lost never reached user space: the kernel counts
    // those starts, so the request ledger still adds up exactly.
    let unseen = sent.len() as u64 - u(&req["captured"]);
    assert!(unseen <= u(&k["ringbuf_full"]), "{unseen} requests vanished, more than the records lost: {m}");
    let rl = &summary["requests"];
    assert_eq!(rl["reconciles"], true, "{rl}");
    assert_eq!(u(&rl["on_wire"]), sent.len() as u64, "{rl}");
    assert_eq!(u(&rl["reached_daemon"]) + u(&rl["lost_in_ring_buffer"]), sent.len() as u64, "{rl}");

    // No damaged request replayed: everything the shadow received is, byte for byte, one the
    // client sent, and none arrived twice.
    let got = shadow_got(&r, "shadow");
    assert_eq!(got.len() as u64, u(&req["replayed"]), "the shadow received exactly what was replayed");
    let sent_set: BTreeSet<&Vec<u8>> = sent.iter().collect();
    for g in &got {
        assert!(
            sent_set.contains(g),
            "the shadow received a request the client never sent ({} bytes): {:?}",
            g.len(),
            String::from_utf8_lossy(&g[..g.len().min(200)])
        );
    }
    let distinct: BTreeSet<&Vec<u8>> = got.iter().collect();
    assert_eq!(distinct.len(), got.len(), "no request replayed twice");
}

// ---------------------------------------------------------------------------------------------
// 4. Crafted segments: reordered, overlapping, retransmitted, lost; SYN, FIN and RST

/// Addresses of the crafted connections: not the server namespace's, so that its stack drops
/// the frames after the TC hook and never answers.
const C4: &str = "10.77.0.1";
const S4: &str = "10.77.0.2";
const C6: &str = "fd00:77::1";
const S6: &str = "fd00:77::2";

/// The daemon attached to the server's veth, a recording shadow, and an AF_PACKET socket on the
/// client's end of the veth: what it sends arrives at the server's TC ingress. Every request
/// that is expected to be replayed is followed by the primary's answer with the right seq/ack:
/// under TC the primary's response is the evidence that a request was served (issue 9 item 1).
struct Wire {
    r: OpsRig,
    inj: Injector,
}

impl Wire {
    fn new(tag: &str) -> Self {
        let mut r = OpsRig::new(tag);
        r.server(SHADOW, "shadow");
        r.write_config(&rule(""));
        let iface = r.t.server_if.clone();
        r.start_daemon(&iface, &[]);
        let inj = Injector::open(&r.t.client, &r.t.client_if);
        Self { r, inj }
    }

    fn send(&self, frames: &[Vec<u8>]) {
        self.inj.send_all(frames);
    }

    fn wait(&self, what: &str, ok: impl FnMut(&Scrape) -> bool) -> Scrape {
        scrape_wait(&self.r, what, ok)
    }

    /// Wait until `captured` requests are in the ledger, `replayed` of them replayed, nothing in
    /// flight and no flow tracked (every crafted connection closed); then stop the daemon and
    /// return its summary and what the shadow received.
    fn finish(mut self, captured: u64, replayed: u64) -> (Value, Vec<Vec<u8>>) {
        self.wait(&format!("{captured} captured, {replayed} replayed, all settled and closed"), |s| {
            s.captured() == captured as f64
                && s.replayed() == replayed as f64
                && s.in_flight() == 0.0
                && s.get("shadow_flows") == 0.0
        });
        let summary = stop(&mut self.r);
        assert_eq!(summary["mirror"]["reconciles"], true, "{}", summary["mirror"]);
        assert_eq!(summary["extraction"]["segments_reconcile"], true, "{}", summary["extraction"]);
        assert_eq!(u(&summary["kernel"]["ringbuf_full"]), 0);
        let got = shadow_got(&self.r, "shadow");
        (summary, got)
    }
}

fn get(target: &str, pad: usize) -> Vec<u8> {
    let pad = if pad == 0 { String::new() } else { format!("X-Pad: {}\r\n", "p".repeat(pad)) };
    format!("GET {target} HTTP/1.1\r\nHost: svc\r\nUser-Agent: shadow-fault\r\n{pad}Accept: */*\r\n\r\n").into_bytes()
}

/// A request cut at `cuts`, then the primary's answer.
fn exchange(c: &mut Conv, req: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
    let mut f = c.request(req, cuts);
    f.push(c.response(OK));
    f
}

/// Both sides close: client FIN, server FIN, the client's last ACK.
fn close(c: &mut Conv) -> Vec<Vec<u8>> {
    vec![c.client_fin(), c.server_fin(), c.client_ack()]
}

/// The summary's exact outcome of one case: (request drops, message drops, segment drops).
fn drops(s: &Value) -> (BTreeMap<String, u64>, BTreeMap<String, u64>, BTreeMap<String, u64>) {
    (
        counts(&s["mirror"]["requests"]["dropped"]),
        counts(&s["extraction"]["message_drops"]),
        counts(&s["extraction"]["segment_drops"]),
    )
}

fn assert_got(got: &[Vec<u8>], want: &[&[u8]]) {
    let want = sorted(want);
    assert!(got == want, "the shadow received\n{:#?}\nexpected\n{:#?}", show(got), show(&want));
}

#[test]
fn crafted_in_order_baseline_v4_and_v6() {
    if !require_kernel("crafted_in_order_baseline") {
        return;
    }
    let w = Wire::new("fa");
    let mut want = Vec::new();
    for (i, (c, s)) in [(C4, S4), (C6, S6)].into_iter().enumerate() {
        let mut conv = Conv::new(c, 40000 + i as u16, s, PORT, 1000, 5000);
        let (r1, r2) = (get(&format!("/base/{i}/1"), 100), get(&format!("/base/{i}/2"), 0));
        let mut f = conv.handshake();
        f.extend(exchange(&mut conv, &r1, &[40]));
        f.extend(exchange(&mut conv, &r2, &[]));
        f.extend(close(&mut conv));
        w.send(&f);
        want.extend([r1, r2]);
    }
    let (s, got) = w.finish(4, 4);
    assert_got(&got, &want.iter().map(Vec::as_slice).collect::<Vec<_>>());
    assert_eq!(drops(&s), (map(&[]), map(&[]), map(&[])));
    let bytes: usize = want.iter().map(Vec::len).sum();
    // Per connection: 2 + 1 request segments and the FIN; 2 responses and the FIN. The
    // handshake and the last ACK carry nothing and are not captured.
    assert_eq!((u(&s["request"]["segments"]), u(&s["response"]["segments"])), (8, 6));
    assert_eq!(u(&s["request"]["stream_bytes"]), bytes as u64);
    assert_eq!((u(&s["request"]["overlap_bytes"]), u(&s["response"]["overlap_bytes"])), (0, 0));
    assert_eq!(u(&s["extraction"]["responses_extracted"]), 4);
    assert_eq!(u(&s["kernel"]["requests_sampled"]), 4);
}

#[test]
fn crafted_reordered_segments_are_put_back_in_order() {
    if !require_kernel("crafted_reordered_segments") {
        return;
    }
    let w = Wire::new("fo");
    let mut conv = Conv::new(C4, 40100, S4, PORT, 77_000, 9_000);
    let r1 = get("/reorder/1", 300);
    let r2 = get("/reorder/2", 80);
    let mut f = conv.handshake();
    // Four segments sent a, c, d, b.
    let seg = conv.request(&r1, &[60, 150, 230]);
    f.extend([seg[0].clone(), seg[2].clone(), seg[3].clone(), seg[1].clone()]);
    f.push(conv.response(OK));
    // The second request's tail before its start.
    let seg = conv.request(&r2, &[50]);
    f.extend([seg[1].clone(), seg[0].clone()]);
    f.push(conv.response(OK));
    f.extend(close(&mut conv));
    w.send(&f);
    let (s, got) = w.finish(2, 2);
    assert_got(&got, &[&r1, &r2]);
    assert_eq!(drops(&s), (map(&[]), map(&[]), map(&[])));
    assert_eq!(u(&s["request"]["segments"]), 4 + 2 + 1);
    assert_eq!(u(&s["request"]["stream_bytes"]), (r1.len() + r2.len()) as u64);
    assert_eq!(u(&s["request"]["overlap_bytes"]), 0);
    assert_eq!(u(&s["kernel"]["requests_sampled"]), 2);
}

#[test]
fn crafted_overlapping_and_retransmitted_identical_bytes_are_replayed_once() {
    if !require_kernel("crafted_overlapping_and_retransmitted") {
        return;
    }
    let w = Wire::new("fi");
    let mut conv = Conv::new(C4, 40200, S4, PORT, 3_000_000, 60_000);
    let r = get("/overlap/same", 60);
    let l = r.len() as u32;
    let mut f = conv.handshake();
    // [0,30) delivered; [50,L) waits out of order; [20,70) overlaps both (10 delivered bytes,
    // 20 waiting ones); [0,30) again is a full duplicate.
    f.push(conv.client_at(0, &r[..30]));
    f.push(conv.client_at(50, &r[50..]));
    f.push(conv.client_at(20, &r[20..70]));
    f.push(conv.client_at(0, &r[..30]));
    conv.c_len = l;
    f.push(conv.response(OK));
    // A spurious retransmission of the whole request after it was answered.
    f.push(conv.client_at(0, &r));
    f.extend(close(&mut conv));
    w.send(&f);
    let (s, got) = w.finish(1, 1);
    assert_got(&got, &[&r]);
    assert_eq!(drops(&s), (map(&[]), map(&[]), map(&[("duplicate/request", 2)])));
    assert_eq!(u(&s["request"]["overlap_bytes"]), 10 + 20 + 30 + u64::from(l));
    assert_eq!(u(&s["request"]["stream_bytes"]), u64::from(l));
    assert_eq!(u(&s["request"]["segments"]), 4 + 1 + 1);
    // The kernel kept its decision for the two copies of the request's first segment.
    assert_eq!(u(&s["kernel"]["requests_sampled"]), 1);
    assert_eq!(u(&s["kernel"]["request_start_retransmits"]), 2);
}

/// A retransmission whose bytes differ from the first copy in the overlap. The daemon's rule
/// (reassembly/stream.rs): the first bytes received for a sequence number win, per byte; the
/// later copy only fills what nothing covered yet, and its overlap is counted in
/// `overlap_bytes`, not as a drop. So the replayed request is the first-seen bytes, never the
/// second version, and never a mix that contains the second version's differing bytes.
#[test]
fn crafted_retransmission_with_different_bytes_replays_the_first_seen_bytes() {
    if !require_kernel("crafted_retransmission_with_different_bytes") {
        return;
    }
    let w = Wire::new("fd");
    let version = |target: &str, pick: &str| {
        format!("GET {target} HTTP/1.1\r\nHost: svc\r\nX-Pick: {pick}\r\nAccept: */*\r\n\r\n").into_bytes()
    };
    let mut f = Vec::new();
    let mut overlap = 0u64;

    // In order: the first copy reaches past the differing field, the second copy overlaps all
    // of it with other bytes and carries the rest of the request.
    let (ra, ra2) = (version("/differ/a", "first-1111"), version("/differ/a", "other-2222"));
    let p = ra.windows(10).position(|x| x == b"first-1111").expect("field") as u32;
    let l = ra.len() as u32;
    let mut a = Conv::new(C4, 40300, S4, PORT, 500, 800);
    f.extend(a.handshake());
    f.push(a.client_at(0, &ra[..(p + 15) as usize]));
    f.push(a.client_at(p - 3, &ra2[(p - 3) as usize..]));
    overlap += 18;
    a.c_len = l;
    f.push(a.response(OK));
    // And the whole second version again, after the answer: a duplicate.
    f.push(a.client_at(0, &ra2));
    overlap += u64::from(l);
    f.extend(close(&mut a));

    // Out of order: the first copy of the differing field waits behind a hole; the second copy
    // fills the hole and overlaps the waiting bytes with other ones.
    let (rb, rb2) = (version("/differ/b", "first-1111"), version("/differ/b", "other-2222"));
    let p = rb.windows(10).position(|x| x == b"first-1111").expect("field") as u32;
    let l = rb.len() as u32;
    let mut b = Conv::new(C4, 40301, S4, PORT, 9_999_000, 4_242);
    f.extend(b.handshake());
    f.push(b.client_at(0, &rb[..(p - 3) as usize]));
    f.push(b.client_at(p, &rb[p as usize..]));
    f.push(b.client_at(p - 3, &rb2[(p - 3) as usize..]));
    overlap += u64::from(l - p);
    b.c_len = l;
    f.push(b.response(OK));
    f.extend(close(&mut b));

    w.send(&f);
    let (s, got) = w.finish(2, 2);
    assert_got(&got, &[&ra, &rb]);
    assert!(got.iter().all(|g| !g.windows(10).any(|x| x == b"other-2222")), "no second-version bytes replayed");
    assert_eq!(drops(&s), (map(&[]), map(&[]), map(&[("duplicate/request", 1)])));
    assert_eq!(u(&s["request"]["overlap_bytes"]), overlap);
}

#[test]
fn crafted_lost_segment_inside_a_request_is_a_gap_and_never_replayed() {
    if !require_kernel("crafted_lost_segment_inside_a_request") {
        return;
    }
    let w = Wire::new("fg");
    // The primary's answer acknowledges the whole request (it got the segment the capture
    // lost): the hole is final at once.
    let mut a = Conv::new(C4, 40400, S4, PORT, 1_000, 2_000);
    let ra = get("/gap/answered", 200);
    let mut f = a.handshake();
    let seg = a.request(&ra, &[60, 150]);
    f.extend([seg[0].clone(), seg[2].clone()]);
    f.push(a.response(OK));
    f.extend(close(&mut a));
    w.send(&f);
    w.wait("the answered request dropped as gap", |s| s.dropped("gap") == 1.0);

    // Nothing acknowledges past the hole (as under XDP, or a silent server): it is given up
    // after the gap timeout, then the client resets.
    let mut b = Conv::new(C4, 40401, S4, PORT, 1_000, 2_000);
    let rb = get("/gap/silent", 200);
    let mut f = b.handshake();
    let seg = b.request(&rb, &[60, 150]);
    f.extend([seg[0].clone(), seg[2].clone()]);
    w.send(&f);
    w.wait("the silent request dropped as gap", |s| s.dropped("gap") == 2.0);
    w.send(&[b.client_rst()]);

    let (s, got) = w.finish(2, 0);
    assert!(got.is_empty(), "nothing replayed: {:?}", show(&got));
    let (req, msg, seg) = drops(&s);
    assert_eq!(req, map(&[("gap", 2)]));
    assert_eq!(msg, map(&[("gap/request", 2), ("unpaired_response/response", 1)]));
    // The segment after each hole belongs to the message given up: it goes with it, as gap.
    assert_eq!(seg, map(&[("gap/request", 2)]));
}

#[test]
fn crafted_lost_request_between_requests_loses_only_that_request() {
    if !require_kernel("crafted_lost_request_between_requests") {
        return;
    }
    let w = Wire::new("fb");
    let mut c = Conv::new(C4, 40500, S4, PORT, 123_456, 654_321);
    let (r1, r2, r3) = (get("/between/1", 20), get("/between/2", 20), get("/between/3", 20));
    let mut f = c.handshake();
    f.extend(exchange(&mut c, &r1, &[]));
    // The second request's only segment is lost to the capture; its answer is not.
    let _lost = c.request(&r2, &[]);
    f.push(c.response(OK));
    f.extend(exchange(&mut c, &r3, &[]));
    f.extend(close(&mut c));
    w.send(&f);
    let (s, got) = w.finish(2, 2);
    assert_got(&got, &[&r1, &r3]);
    let (req, msg, seg) = drops(&s);
    assert_eq!(req, map(&[]), "a request never seen is not a request drop");
    assert_eq!(msg, map(&[("unpaired_response/response", 1)]), "the lost request's answer pairs with nothing");
    assert_eq!(seg, map(&[]));
    assert_eq!(u(&s["request"]["stream_bytes"]), (r1.len() + r3.len()) as u64);
}

#[test]
fn crafted_syn_fin_rst_and_port_reuse() {
    if !require_kernel("crafted_syn_fin_rst_and_port_reuse") {
        return;
    }
    let w = Wire::new("ff");
    let mut f = Vec::new();
    // a: answered, the client closes and the server's FIN is lost; then a new connection on
    // the same addresses and ports (new sequence numbers) is told apart from the old one.
    let mut a1 = Conv::new(C4, 40600, S4, PORT, 1_000, 5_000);
    let r1 = get("/flags/reuse/1", 0);
    f.extend(a1.handshake());
    f.extend(exchange(&mut a1, &r1, &[]));
    f.push(a1.client_fin());
    let mut a2 = Conv::new(C4, 40600, S4, PORT, 2_000_000_000, 3_000_000_000);
    let r2 = get("/flags/reuse/2", 0);
    f.extend(a2.handshake());
    f.extend(exchange(&mut a2, &r2, &[]));
    f.extend(close(&mut a2));
    // b: the client closes in the middle of a head.
    let mut b = Conv::new(C4, 40601, S4, PORT, 1_000, 5_000);
    let partial = b"GET /flags/fin-mid-head HTTP/1.1\r\nHost: svc\r\n";
    f.extend(b.handshake());
    f.extend(b.request(partial, &[]));
    f.extend(close(&mut b));
    // c: the client resets in the middle of a head.
    let mut c = Conv::new(C4, 40602, S4, PORT, 1_000, 5_000);
    let partial = b"GET /flags/rst-mid-head HTTP/1.1\r\nHost: svc\r\n";
    f.extend(c.handshake());
    f.extend(c.request(partial, &[]));
    f.push(c.client_rst());
    // e: answered, then reset.
    let mut e = Conv::new(C4, 40603, S4, PORT, 1_000, 5_000);
    let r5 = get("/flags/rst-after-answer", 0);
    f.extend(e.handshake());
    f.extend(exchange(&mut e, &r5, &[]));
    f.push(e.client_rst());
    w.send(&f);

    let (s, got) = w.finish(5, 3);
    assert_got(&got, &[&r1, &r2, &r5]);
    let (req, msg, seg) = drops(&s);
    assert_eq!(req, map(&[("incomplete", 2)]));
    assert_eq!(msg, map(&[("incomplete/request", 2)]));
    assert_eq!(seg, map(&[]));
    // SYNs and bare ACKs carry nothing and are never captured; FINs and RSTs of sampled flows are.
    assert_eq!(u(&s["request"]["fin"]), 3);
    assert_eq!(u(&s["request"]["rst"]), 2);
    assert_eq!(u(&s["response"]["fin"]), 2);
    assert_eq!(u(&s["extraction"]["flows_created"]), 5);
}
