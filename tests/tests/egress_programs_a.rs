//! Kernel tier A, the egress fence's programs: the fence (as the daemon builds it) on a test
//! cgroup, and a probe placed in it inside a namespace with nothing but loopback, trying crafted
//! destinations. Nothing can leave the namespace, so an allowed destination fails with
//! ENETUNREACH (the kernel went on to route it) and a refused one with EPERM (the program said
//! no): the allowlist's prefix bits, ports and families are checked exactly where the kernel
//! decides, with no traffic. (BPF_PROG_TEST_RUN does not run cgroup socket-address programs.)

use std::{collections::BTreeMap, path::PathBuf};

use shadow_daemon::egress::{Clocks, EgressConfig, EgressMode, Fence};
use shadow_tests::{Scratch, require_kernel, require_tool, sh, topo::NetNs, unique};

const EPERM: &str = "errno 1";
const ENETUNREACH: &str = "errno 101";

struct Cleanup {
    bpffs: PathBuf,
    cgroup: PathBuf,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.bpffs).status();
        let _ = std::fs::remove_dir(&self.cgroup);
    }
}

fn clocks() -> Clocks {
    Clocks { monotonic_ns: 0, unix_s: 0.0 }
}

#[test]
fn prefixes_ports_and_families_are_decided_bit_exactly() {
    if !require_kernel("egress_programs") || !require_tool("egress_programs", "python3") {
        return;
    }
    let ns = NetNs::new("egress-a");
    let scratch = Scratch::new("egress-a");
    let cleanup = Cleanup {
        bpffs: scratch.path("bpf"),
        cgroup: shadow_tests::cgroup2_root().join(format!("shadow-egress-a-{}-{}", std::process::id(), unique())),
    };
    std::fs::create_dir_all(&cleanup.bpffs).expect("bpffs dir");
    sh(&["mount", "-t", "bpf", "bpf", cleanup.bpffs.to_str().expect("utf-8")]);
    std::fs::create_dir(&cleanup.cgroup).expect("cgroup");
    let cfg = EgressConfig {
        cgroups: vec![cleanup.cgroup.display().to_string().parse().expect("pattern")],
        allow: ["10.0.0.0/9:80", "192.168.1.0/24", "[fd00::/15]:53", "[2001:db8::1]:443", "0.0.0.0/1:7"]
            .iter()
            .map(|a| a.parse().expect("allow entry"))
            .collect(),
        mode: EgressMode::Enforce,
    };
    let fence = Fence::start(&cleanup.bpffs.join("shadow"), &[("a".into(), Some(cfg))])
        .expect("fence")
        .expect("one rule fenced");
    assert_eq!(fence.status(None, clocks()).expect("status").rules[0].attached.len(), 1);

    // (try, expected): allowed ones reach routing (no route: ENETUNREACH), refused ones EPERM.
    let cases: &[(&str, &str)] = &[
        // /9: the ninth bit decides.
        ("tcp,10.127.255.255,80", ENETUNREACH),
        ("tcp,10.128.0.0,80", EPERM),
        ("tcp,10.0.0.1,81", EPERM),
        ("udp,10.64.0.1,80", ENETUNREACH),
        ("udp,10.200.0.1,80", EPERM),
        // Any port of a /24.
        ("tcp,192.168.1.77,1", ENETUNREACH),
        ("tcp,192.168.1.77,65535", ENETUNREACH),
        ("udp,192.168.1.255,9", ENETUNREACH),
        ("tcp,192.168.2.1,1", EPERM),
        // A /1 on one port: the first bit only.
        ("tcp,127.255.255.254,7", "ok-or-refused-by-loopback"),
        ("tcp,128.0.0.1,7", EPERM),
        // IPv6 /15 on port 53, and one host.
        ("udp,fd01:ffff::1,53", ENETUNREACH),
        ("udp,fd02::1,53", EPERM),
        ("udp,fd01::1,54", EPERM),
        ("tcp,2001:db8::1,443", ENETUNREACH),
        ("tcp,2001:db8::2,443", EPERM),
        // IPv4-mapped IPv6 from a dual-stack socket: judged as IPv4.
        ("tcp,::ffff:10.1.2.3,80", ENETUNREACH),
        ("tcp,::ffff:10.128.0.1,80", EPERM),
        ("udp,::ffff:192.168.1.5,1000", ENETUNREACH),
    ];
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("py/egress_probe.py");
    let tries: Vec<&str> = cases.iter().map(|(t, _)| *t).collect();
    let cmd = format!(
        "echo $$ > '{}/cgroup.procs' && exec ip netns exec {} python3 {} {}",
        cleanup.cgroup.display(),
        ns.name,
        script.display(),
        tries.join(" ")
    );
    let out = sh(&["sh", "-c", &cmd]);
    let got: BTreeMap<&str, &str> = out.lines().filter_map(|l| l.split_once(' ')).collect();
    for (t, want) in cases {
        let g = got.get(t).copied().unwrap_or("missing");
        if *want == "ok-or-refused-by-loopback" {
            // Loopback is up and nothing listens: allowed means the kernel answered (refused).
            assert_eq!(g, "errno 111", "{t}: {out}");
        } else {
            assert_eq!(g, *want, "{t}: {out}");
        }
    }

    // Every try was counted once, with the verdict the call saw.
    let status = fence.status(None, clocks()).expect("status");
    let rows: BTreeMap<String, (String, u64)> = status.rules[0]
        .destinations
        .iter()
        .map(|d| (format!("{}/{}", d.destination, d.protocol), (d.verdict.clone(), d.attempts)))
        .collect();
    for (t, want) in cases {
        let mut f = t.split(',');
        let (proto, host, port) = (f.next().unwrap_or(""), f.next().unwrap_or(""), f.next().unwrap_or(""));
        let host = host.strip_prefix("::ffff:").unwrap_or(host);
        let dest =
            if host.contains(':') { format!("[{host}]:{port}/{proto}") } else { format!("{host}:{port}/{proto}") };
        let verdict = if *want == EPERM { "refused" } else { "allowed" };
        assert_eq!(rows.get(&dest), Some(&(verdict.to_owned(), 1)), "{dest}: {rows:?}");
    }
    assert_eq!(rows.len(), cases.len());
    assert_eq!(status.rules[0].attempts.refused, cases.iter().filter(|(_, w)| *w == EPERM).count() as u64);

    // The daemon goes (the fence stays, pinned) and one with another config starts: a fence of a
    // rule it does not name is left on (another daemon's, maybe); one of a rule it names
    // without a fence comes down, pins and all.
    drop(fence);
    let pins = cleanup.bpffs.join("shadow");
    let other = Fence::start(&pins, &[("b".into(), None)]).expect("start").expect("pins seen");
    assert!(pins.join("egress/a/links").exists(), "a fence of a rule not in this config stays");
    let out = sh(&["sh", "-c", &cmd]);
    assert!(out.contains(&format!("tcp,10.128.0.0,80 {EPERM}")), "still fenced: {out}");
    drop(other);
    let _same = Fence::start(&pins, &[("a".into(), None)]).expect("start");
    assert!(!pins.join("egress/a").exists(), "the rule's fence is gone from its config: removed");
    let out = sh(&["sh", "-c", &cmd]);
    assert!(out.lines().all(|l| !l.ends_with(EPERM)), "nothing refused once the fence is down: {out}");
}
