//! Kernel tier B, the egress fence: the release daemon fences a test cgroup (a glob over cgroup
//! v2 directories the test creates) with a private bpffs for its pins. Processes placed in the
//! cgroup try allowed and refused destinations over TCP and UDP, IPv4 and IPv6 (and IPv4-mapped
//! IPv6), inside a namespace of the test's: refused ones get EPERM and nothing arrives, allowed
//! ones arrive; a process outside the cgroup is untouched; `shadowctl egress`, the metric and the
//! report count every attempt exactly; a cgroup that appears is fenced, one that goes is
//! forgotten; SIGKILL of the daemon leaves the fence on and a new daemon adopts it (and its
//! counts); observe mode refuses nothing and counts the same; `egress detach` and a reload without
//! the fence take it down.

use std::{
    collections::BTreeMap,
    io::Read,
    net::{SocketAddr, TcpListener, UdpSocket},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use shadow_tests::{Proc, Scratch, metric, require_kernel, require_tool, sh, topo::NetNs, unique, wait_for};

const METRICS: &str = "127.0.0.1:9477";
const RULE: &str = "orders";
/// Allowed: TCP 7001 and UDP 7003 on both loopbacks. Refused: 7002 (TCP), 7004 (UDP).
const ALLOW: &[&str] = &["127.0.0.1/32:7001", "127.0.0.1/32:7003", "[::1]:7001", "[::1]:7003"];
/// What every probe tries, refused ones first (so when the allowed ones have arrived, a refused
/// one that got through would have too).
const TRIES: &[&str] = &[
    "tcp,127.0.0.1,7002",
    "udp,127.0.0.1,7004",
    "tcp,::1,7002",
    "udp,::1,7004",
    "tcp,::ffff:127.0.0.1,7002",
    "tcp,127.0.0.1,7001",
    "udp,127.0.0.1,7003",
    "tcp,::1,7001",
    "udp,::1,7003",
];
const TIMEOUT: Duration = Duration::from_secs(20);

/// The test's cgroups and bpffs, removed on drop (whatever the test did).
struct Host {
    cgroups: PathBuf,
    bpffs: PathBuf,
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.bpffs).status();
        if let Ok(entries) = std::fs::read_dir(&self.cgroups) {
            for e in entries.flatten() {
                if e.path().is_dir() {
                    let _ = std::fs::remove_dir(e.path());
                }
            }
        }
        let _ = std::fs::remove_dir(&self.cgroups);
    }
}

/// Listeners on both loopbacks of the namespace, counting what arrives per (protocol, port).
struct Sinks {
    arrived: Arc<BTreeMap<(&'static str, u16, bool), AtomicU64>>,
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Sinks {
    fn start(ns: &NetNs) -> Self {
        let mut keys = BTreeMap::new();
        for proto in ["tcp", "udp"] {
            for port in [7001u16, 7002, 7003, 7004] {
                for v6 in [false, true] {
                    keys.insert((proto, port, v6), AtomicU64::new(0));
                }
            }
        }
        let arrived = Arc::new(keys);
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let mut threads = Vec::new();
        for v6 in [false, true] {
            let (arrived, stop, name, ready) = (arrived.clone(), stop.clone(), ns.name.clone(), ready_tx.clone());
            threads.push(std::thread::spawn(move || {
                shadow_tests::topo::enter_netns(&name);
                let ip = if v6 { "[::1]" } else { "127.0.0.1" };
                let tcp: Vec<(u16, TcpListener)> = [7001u16, 7002]
                    .into_iter()
                    .map(|p| (p, TcpListener::bind(format!("{ip}:{p}")).expect("bind tcp")))
                    .collect();
                let udp: Vec<(u16, UdpSocket)> = [7003u16, 7004]
                    .into_iter()
                    .map(|p| (p, UdpSocket::bind(format!("{ip}:{p}")).expect("bind udp")))
                    .collect();
                for (_, l) in &tcp {
                    l.set_nonblocking(true).expect("nonblocking");
                }
                for (_, u) in &udp {
                    u.set_nonblocking(true).expect("nonblocking");
                }
                ready.send(()).expect("ready");
                let mut buf = [0u8; 256];
                while !stop.load(Ordering::Relaxed) {
                    for (p, l) in &tcp {
                        while let Ok((mut c, _)) = l.accept() {
                            arrived[&("tcp", *p, v6)].fetch_add(1, Ordering::SeqCst);
                            let _ = c.set_nonblocking(false);
                            let _ = c.set_read_timeout(Some(Duration::from_millis(1)));
                            let _ = c.read(&mut buf);
                        }
                    }
                    for (p, u) in &udp {
                        while u.recv(&mut buf).is_ok() {
                            arrived[&("udp", *p, v6)].fetch_add(1, Ordering::SeqCst);
                        }
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
            }));
        }
        for _ in 0..2 {
            ready_rx.recv_timeout(TIMEOUT).expect("sinks bound");
        }
        Self { arrived, stop, threads }
    }

    fn get(&self, proto: &'static str, port: u16, v6: bool) -> u64 {
        self.arrived[&(proto, port, v6)].load(Ordering::SeqCst)
    }

    fn all(&self) -> BTreeMap<(&'static str, u16, bool), u64> {
        self.arrived.iter().map(|(k, v)| (*k, v.load(Ordering::SeqCst))).collect()
    }
}

impl Drop for Sinks {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Dropped in this order: the daemon, the listeners, the cgroups and bpffs, the scratch
/// directory (the bpffs was mounted in it), the namespace.
struct Fixture {
    daemon: Option<Proc>,
    sinks: Sinks,
    host: Host,
    scratch: Scratch,
    ns: NetNs,
}

impl Fixture {
    fn config(&self) -> PathBuf {
        self.scratch.path("shadow.toml")
    }
    fn control(&self) -> PathBuf {
        self.scratch.path("control.sock")
    }
    fn pins(&self) -> PathBuf {
        self.host.bpffs.join("shadow")
    }
    fn cgroup(&self, name: &str) -> PathBuf {
        self.host.cgroups.join(name)
    }

    fn write_config(&self, egress: Option<&str>) {
        let mut text = format!("interface = \"lo\"\n\n[[rule]]\nname = \"{RULE}\"\nport = 8080\n");
        if let Some(mode) = egress {
            let allow: Vec<String> = ALLOW.iter().map(|a| format!("\"{a}\"")).collect();
            text.push_str(&format!(
                "\n[rule.egress]\ncgroups = [\"{}/pod-*\"]\nallow = [{}]\nmode = \"{mode}\"\n",
                self.host.cgroups.display(),
                allow.join(", ")
            ));
        }
        std::fs::write(self.config(), text).expect("write config");
    }

    fn start_daemon(&mut self) {
        let _ = std::fs::remove_file(self.control());
        let log = std::fs::File::create(self.scratch.path(&format!("daemon-{}.log", unique()))).expect("log");
        // nsenter, not `ip netns exec`: that one remounts /sys, and the daemon must see cgroupfs.
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{}", self.ns.name))
            .arg(shadow_tests::workspace_bin("shadow-daemon"))
            .arg("--config")
            .arg(self.config())
            .arg("--control")
            .arg(self.control())
            .arg("--pin-dir")
            .arg(self.pins())
            .args(["--metrics-addr", METRICS])
            .stdout(Stdio::null())
            .stderr(log);
        self.daemon = Some(Proc::spawn("shadow-daemon", &mut cmd));
        let control = self.control();
        wait_for("the daemon's control socket", TIMEOUT, || control.exists());
    }

    fn ctl(&self, args: &[&str]) -> (i32, String) {
        let out = Command::new(shadow_tests::workspace_bin("shadowctl"))
            .arg("--control")
            .arg(self.control())
            .args(args)
            .output()
            .expect("run shadowctl");
        let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
        (out.status.code().unwrap_or(-1), text)
    }

    fn egress(&self) -> serde_json::Value {
        let (code, out) = self.ctl(&["egress", "--json"]);
        assert_eq!(code, 0, "shadowctl egress: {out}");
        let v: serde_json::Value = serde_json::from_str(&out).expect("egress --json");
        v["rules"][0].clone()
    }

    fn attached(&self) -> Vec<String> {
        self.egress()["attached"]
            .as_array()
            .expect("attached")
            .iter()
            .map(|p| p.as_str().unwrap_or("").to_owned())
            .collect()
    }

    /// (destination/protocol, verdict) -> attempts, as `shadowctl egress --json` lists them.
    fn counts(&self) -> BTreeMap<(String, String), u64> {
        let mut out = BTreeMap::new();
        for d in self.egress()["destinations"].as_array().expect("destinations") {
            let key = (
                format!("{}/{}", d["destination"].as_str().unwrap_or(""), d["protocol"].as_str().unwrap_or("")),
                d["verdict"].as_str().unwrap_or("").to_owned(),
            );
            *out.entry(key).or_default() += d["attempts"].as_u64().expect("attempts");
        }
        out
    }

    /// Run the probe, in cgroup `cgroup` (or outside any of the test's); each try's outcome.
    fn probe(&self, cgroup: Option<&str>) -> BTreeMap<String, String> {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("py/egress_probe.py");
        let place =
            cgroup.map_or_else(String::new, |c| format!("echo $$ > '{}/cgroup.procs' && ", self.cgroup(c).display()));
        let cmd =
            format!("{place}exec ip netns exec {} python3 {} {}", self.ns.name, script.display(), TRIES.join(" "));
        let out = sh(&["sh", "-c", &cmd]);
        let got: BTreeMap<String, String> =
            out.lines().filter_map(|l| l.split_once(' ').map(|(a, b)| (a.to_owned(), b.to_owned()))).collect();
        assert_eq!(got.len(), TRIES.len(), "one line per try: {out}");
        got
    }
}

fn expect_fenced(got: &BTreeMap<String, String>) {
    for t in TRIES {
        let want = if t.ends_with(",7002") || t.ends_with(",7004") { "errno 1" } else { "ok" };
        assert_eq!(got[*t], want, "{t}: {got:?}");
    }
}

fn expect_open(got: &BTreeMap<String, String>) {
    for t in TRIES {
        assert_eq!(got[*t], "ok", "{t}: {got:?}");
    }
}

/// The attempts of one probe run by (destination/protocol) under `refused_as` (refused or
/// observed) for the destinations outside the allowlist.
fn one_run(refused_as: &str) -> BTreeMap<(String, String), u64> {
    let mut m = BTreeMap::new();
    for (d, v, n) in [
        ("127.0.0.1:7001/tcp", "allowed", 1),
        ("127.0.0.1:7003/udp", "allowed", 1),
        ("[::1]:7001/tcp", "allowed", 1),
        ("[::1]:7003/udp", "allowed", 1),
        // Once over IPv4, once from an IPv6 socket to ::ffff:127.0.0.1, judged as IPv4.
        ("127.0.0.1:7002/tcp", refused_as, 2),
        ("127.0.0.1:7004/udp", refused_as, 1),
        ("[::1]:7002/tcp", refused_as, 1),
        ("[::1]:7004/udp", refused_as, 1),
    ] {
        m.insert((d.to_owned(), v.to_owned()), n);
    }
    m
}

fn add(total: &mut BTreeMap<(String, String), u64>, run: &BTreeMap<(String, String), u64>) {
    for (k, v) in run {
        *total.entry(k.clone()).or_default() += v;
    }
}

#[test]
fn the_fence_refuses_counts_survives_the_daemon_and_comes_down_when_told() {
    if !require_kernel("egress_fence") || !require_tool("egress_fence", "python3") {
        return;
    }
    let ns = NetNs::new("egress");
    let scratch = Scratch::new("egress");
    let host = Host {
        cgroups: shadow_tests::cgroup2_root().join(format!("shadow-egress-test-{}-{}", std::process::id(), unique())),
        bpffs: scratch.path("bpf"),
    };
    std::fs::create_dir_all(&host.bpffs).expect("bpffs dir");
    sh(&["mount", "-t", "bpf", "bpf", host.bpffs.to_str().expect("utf-8")]);
    std::fs::create_dir_all(host.cgroups.join("pod-a")).expect("test cgroup");
    std::fs::create_dir_all(host.cgroups.join("other")).expect("test cgroup");
    let sinks = Sinks::start(&ns);
    let mut f = Fixture { daemon: None, sinks, host, scratch, ns };
    f.write_config(Some("enforce"));
    f.start_daemon();
    let pod_a = f.cgroup("pod-a").display().to_string();
    wait_for("pod-a fenced", TIMEOUT, || f.attached() == [pod_a.clone()]);
    assert!(!f.attached().iter().any(|c| c.ends_with("/other")), "only what the glob matches");

    // Fenced: refused ones fail with EPERM and nothing arrives; allowed ones arrive.
    expect_fenced(&f.probe(Some("pod-a")));
    wait_for("the allowed tries to arrive", TIMEOUT, || {
        [("tcp", 7001), ("udp", 7003)]
            .iter()
            .all(|(p, port)| f.sinks.get(p, *port, false) == 1 && f.sinks.get(p, *port, true) == 1)
    });
    for ((proto, port, _), n) in f.sinks.all() {
        let allowed = matches!((proto, port), ("tcp", 7001) | ("udp", 7003));
        assert_eq!(n, u64::from(allowed), "{proto} {port} arrived {n}");
    }
    let mut want = one_run("refused");
    assert_eq!(f.counts(), want);

    // What the fenced shadow serves is untouched: it accepts (the daemon's replays come in so),
    // it does not connect.
    {
        let cmd = format!(
            "echo $$ > '{}/cgroup.procs' && exec ip netns exec {} python3 -m http.server 7100 --bind 127.0.0.1",
            f.cgroup("pod-a").display(),
            f.ns.name
        );
        let mut server = Proc::spawn(
            "fenced http.server",
            Command::new("sh").args(["-c", &cmd]).stdout(Stdio::null()).stderr(Stdio::null()),
        );
        let addr: SocketAddr = "127.0.0.1:7100".parse().expect("addr");
        // python's http.server answers in HTTP/1.0.
        let answers = || {
            let name = f.ns.name.clone();
            std::thread::spawn(move || {
                shadow_tests::topo::enter_netns(&name);
                let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
                s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
                std::io::Write::write_all(&mut s, b"GET / HTTP/1.0\r\n\r\n").ok()?;
                let mut buf = Vec::new();
                s.read_to_end(&mut buf).ok()?;
                Some(buf.starts_with(b"HTTP/1.0 200"))
            })
            .join()
            .ok()
            .flatten()
            .unwrap_or(false)
        };
        wait_for("the fenced server to answer", TIMEOUT, answers);
        server.terminate(TIMEOUT);
        assert_eq!(f.counts(), want, "serving is not egress");
    }

    // A cgroup the glob does not match, and one outside the test's: untouched, not counted.
    expect_open(&f.probe(Some("other")));
    expect_open(&f.probe(None));
    wait_for("the unfenced tries to arrive", TIMEOUT, || f.sinks.get("udp", 7004, true) == 2);
    assert_eq!(f.counts(), want, "nothing outside the fenced cgroups is counted");

    // The metric and the report say the same.
    let scrape = f.ns.http_get(METRICS.parse::<SocketAddr>().expect("addr"), "/metrics").expect("scrape");
    for ((dest, verdict), n) in &want {
        let series =
            format!("shadow_egress_attempts_total{{rule=\"{RULE}\",destination=\"{dest}\",verdict=\"{verdict}\"}}");
        assert_eq!(metric(&scrape, &series), Some(*n as f64), "{series}");
    }
    let (_, report) = f.ctl(&["report", "--json"]);
    let report: serde_json::Value = serde_json::from_str(&report).expect("report --json");
    let findings: Vec<String> = report["egress"]
        .as_array()
        .expect("egress findings")
        .iter()
        .map(|x| {
            format!(
                "{}/{} {}",
                x["destination"].as_str().unwrap_or(""),
                x["protocol"].as_str().unwrap_or(""),
                x["verdict"]
            )
        })
        .collect();
    assert_eq!(findings.len(), 4, "{findings:?}");
    assert!(findings.contains(&"127.0.0.1:7002/tcp \"refused\"".to_owned()), "{findings:?}");
    let (_, text) = f.ctl(&["report"]);
    assert!(
        text.contains("the shadow tried to reach 127.0.0.1:7002 (tcp) 2 time(s): refused, first by python3"),
        "{text}"
    );

    // A cgroup that appears is fenced; one that goes is forgotten.
    std::fs::create_dir(f.cgroup("pod-b")).expect("pod-b");
    let pod_b = f.cgroup("pod-b").display().to_string();
    wait_for("pod-b fenced", TIMEOUT, || f.attached().contains(&pod_b));
    expect_fenced(&f.probe(Some("pod-b")));
    add(&mut want, &one_run("refused"));
    assert_eq!(f.counts(), want);
    std::fs::remove_dir(f.cgroup("pod-b")).expect("rmdir pod-b");
    wait_for("pod-b forgotten", TIMEOUT, || f.attached() == [pod_a.clone()]);
    let links = f.pins().join("egress").join(RULE).join("links");
    assert_eq!(std::fs::read_dir(&links).expect("links").count(), 4, "pod-a's four links only");

    // SIGKILL: the fence stays, and so do its counts.
    let mut d = f.daemon.take().expect("daemon");
    d.child.kill().expect("SIGKILL");
    let _ = d.child.wait();
    expect_fenced(&f.probe(Some("pod-a")));
    add(&mut want, &one_run("refused"));

    // A new daemon adopts it; in observe mode nothing is refused and everything is counted.
    f.write_config(Some("observe"));
    f.start_daemon();
    wait_for("pod-a adopted", TIMEOUT, || f.attached() == [pod_a.clone()]);
    assert_eq!(f.counts(), want, "the counts of the killed daemon's fence go on");
    let before = f.sinks.get("tcp", 7002, false);
    expect_open(&f.probe(Some("pod-a")));
    add(&mut want, &one_run("observed"));
    assert_eq!(f.counts(), want);
    wait_for("observed tries arrive", TIMEOUT, || f.sinks.get("tcp", 7002, false) == before + 2);

    // Detached by the operator: nothing is refused or counted until the next reload.
    let (code, out) = f.ctl(&["egress", "detach", "--rule", RULE]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(std::fs::read_dir(&links).expect("links").count(), 0, "links unpinned");
    f.write_config(Some("enforce"));
    expect_open(&f.probe(Some("pod-a")));
    assert_eq!(f.counts(), want, "a detached fence counts nothing");
    let (code, out) = f.ctl(&["reload"]);
    assert_eq!(code, 0, "{out}");
    wait_for("pod-a fenced again", TIMEOUT, || f.attached() == [pod_a.clone()]);
    expect_fenced(&f.probe(Some("pod-a")));
    add(&mut want, &one_run("refused"));
    assert_eq!(f.counts(), want);

    // A reload without the fence takes it down, pins and all.
    f.write_config(None);
    let (code, out) = f.ctl(&["reload"]);
    assert_eq!(code, 0, "{out}");
    assert!(!f.pins().join("egress").join(RULE).exists(), "the rule's pins are gone");
    expect_open(&f.probe(Some("pod-a")));
    let (code, out) = f.ctl(&["egress"]);
    assert_eq!(code, 2, "no fence left: {out}");
    assert!(out.contains("no rule has an egress fence"), "{out}");
    let mut d = f.daemon.take().expect("daemon");
    assert_eq!(d.terminate(TIMEOUT), Some(0));
}

#[test]
fn a_fence_on_a_path_that_is_not_cgroup_v2_or_without_bpffs_exits_2_in_one_line() {
    if !require_kernel("egress_fence_settings") {
        return;
    }
    let scratch = Scratch::new("egress-settings");
    let run = |args: &[&str]| {
        let out = Command::new(shadow_tests::workspace_bin("shadow-daemon"))
            .args(["--interface", "lo", "--port", "8080", "--metrics-addr", "127.0.0.1:0", "--control"])
            .arg(scratch.path("control.sock"))
            .args(args)
            .output()
            .expect("run shadow-daemon");
        (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let cg = shadow_tests::cgroup2_root().display().to_string();
    // The pin directory on a filesystem that is not bpffs.
    let pins = scratch.path("pins");
    let (code, err) = run(&["--egress-cgroup", &format!("{cg}/x"), "--pin-dir", pins.to_str().expect("utf-8")]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--pin-dir") && err.contains("is not a BPF filesystem"), "{err}");
    // A cgroup path on a filesystem that is not cgroup v2 (the scratch directory).
    let bpffs = scratch.path("bpf");
    std::fs::create_dir_all(&bpffs).expect("dir");
    sh(&["mount", "-t", "bpf", "bpf", bpffs.to_str().expect("utf-8")]);
    let not_cg = scratch.path("not-a-cgroup").display().to_string();
    let (code, err) = run(&["--egress-cgroup", &not_cg, "--pin-dir", bpffs.join("shadow").to_str().expect("utf-8")]);
    let _ = Command::new("umount").arg("-l").arg(&bpffs).status();
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("is not on a cgroup v2 filesystem") && err.contains(&format!("mounted at {cg}")), "{err}");
    // Allow entries and modes that do not parse name the flag.
    let (code, err) = run(&["--egress-cgroup", &format!("{cg}/x"), "--egress-allow", "10.1.2.3/8"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--egress-allow") && err.contains("did you mean 10.0.0.0/8?"), "{err}");
    let (code, err) = run(&["--egress-allow", "10.0.0.0/8"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--egress-cgroup: missing"), "{err}");
}
