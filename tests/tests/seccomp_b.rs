//! The seccomp profile of the DaemonSet (deploy/seccomp/shadow.json, a Localhost profile) is the
//! systemd unit's one system-call list (`SystemCallFilter=`) expanded to names, and the release
//! daemon mirrors under it: applied with libseccomp as a container runtime applies it
//! (tests/py/seccomp_exec.py, Debian's python3-seccomp), not in a container runtime, which this
//! machine does not have. Without `bpf` in it the daemon cannot load its programs and says so.

use std::{
    collections::BTreeSet,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Command,
};

use shadow_tests::{
    require_kernel, require_tool,
    rig::{OpsRig, get_many},
};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn profile_path() -> PathBuf {
    repo().join("deploy/seccomp/shadow.json")
}

/// The names `systemd-analyze syscall-filter` gives for a group, its groups expanded.
fn expand(item: &str, out: &mut BTreeSet<String>, seen: &mut BTreeSet<String>) {
    if !item.starts_with('@') {
        out.insert(item.to_owned());
        return;
    }
    if !seen.insert(item.to_owned()) {
        return;
    }
    let o = Command::new("systemd-analyze").args(["syscall-filter", item]).output().expect("systemd-analyze");
    assert!(o.status.success(), "systemd-analyze syscall-filter {item}: {}", String::from_utf8_lossy(&o.stderr));
    for line in String::from_utf8_lossy(&o.stdout).lines() {
        let t = line.trim();
        // The group's own heading and comments; its members are indented.
        if !line.starts_with(' ') || t.is_empty() || t.starts_with('#') {
            continue;
        }
        expand(t, out, seen);
    }
}

/// The unit's `SystemCallFilter=` expanded.
fn units_calls() -> BTreeSet<String> {
    let unit = std::fs::read_to_string(repo().join("deploy/systemd/shadow.service")).expect("unit");
    let line = unit.lines().find_map(|l| l.strip_prefix("SystemCallFilter=")).expect("SystemCallFilter=");
    let mut out = BTreeSet::new();
    let mut seen = BTreeSet::new();
    for item in line.split_whitespace() {
        expand(item, &mut out, &mut seen);
    }
    out
}

fn profile_json(calls: &BTreeSet<String>) -> String {
    let v = serde_json::json!({
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": 1,
        "syscalls": [{"names": calls, "action": "SCMP_ACT_ALLOW"}],
    });
    format!("{}\n", serde_json::to_string_pretty(&v).expect("json"))
}

/// `SHADOW_WRITE_SECCOMP=1` rewrites the profile after the unit's list changed.
#[test]
fn the_profile_is_the_units_system_call_list() {
    if !require_tool("the_profile_is_the_units_system_call_list", "systemd-analyze") {
        return;
    }
    let calls = units_calls();
    assert!(calls.contains("bpf") && calls.contains("connect") && calls.len() > 300, "{}", calls.len());
    let want = profile_json(&calls);
    if std::env::var_os("SHADOW_WRITE_SECCOMP").is_some() {
        std::fs::write(profile_path(), &want).expect("write profile");
        return;
    }
    let have = std::fs::read_to_string(profile_path()).expect("deploy/seccomp/shadow.json");
    assert_eq!(
        have, want,
        "deploy/seccomp/shadow.json is stale: SHADOW_WRITE_SECCOMP=1 cargo test -p shadow-tests --test seccomp_b"
    );
}

fn under(profile: &Path, drop: &[&str]) -> Vec<String> {
    let mut w = vec!["/usr/bin/python3".to_owned(), repo().join("tests/py/seccomp_exec.py").display().to_string()];
    w.push(profile.display().to_string());
    for d in drop {
        w.extend(["--drop".to_owned(), (*d).to_owned()]);
    }
    w.push("--".to_owned());
    w
}

#[test]
fn the_daemon_mirrors_under_the_profile_and_not_without_bpf() {
    if !require_kernel("the_daemon_mirrors_under_the_profile")
        || !require_tool("the_daemon_mirrors_under_the_profile", "/usr/bin/python3")
    {
        return;
    }
    let seccomp_ok =
        Command::new("/usr/bin/python3").args(["-c", "import seccomp"]).status().is_ok_and(|s| s.success());
    assert!(seccomp_ok, "python3-seccomp (Debian) is not installed: run cargo xtask setup");
    let mut r = OpsRig::new("sc1");
    r.server("[::]:8080", "primary");
    r.server("127.0.0.1:9090", "shadow");
    r.write_config("[[rule]]\nname = \"api\"\nport = 8080\nshadow = \"127.0.0.1:9090\"\n");
    r.wrapper = under(&profile_path(), &[]);
    let iface = r.t.server_if.clone();
    r.start_daemon(&iface, &[]);
    let api = SocketAddr::new(r.t.server_v4.parse().expect("v4"), 8080);
    // `ip netns exec` and the launcher exec: the process started is the daemon, filtered.
    let pid = r.daemon.as_ref().expect("running").child.id();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    assert!(status.contains("Seccomp:\t2\n"), "the daemon runs in seccomp filter mode:\n{status}");
    assert!(std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "shadow-daemon"));
    get_many(&r.t, api, "/api", 20);
    r.wait_quiet(20);
    assert_eq!(r.recorded("shadow").len(), 20, "mirrored under the profile:\n{}", r.daemon_log());
    assert_eq!(r.metric("shadow_requests_replayed_total"), 20.0);
    assert_eq!(r.stop_daemon(), Some(0), "a clean stop under the profile:\n{}", r.daemon_log());
    assert!(
        !r.daemon_log().contains("EPERM") && !r.daemon_log().contains("Operation not permitted"),
        "{}",
        r.daemon_log()
    );

    // The filter is in force: without bpf(2) nothing loads, and the daemon says so and exits.
    let out =
        r.t.server
            .command("/usr/bin/python3")
            .args(&under(&profile_path(), &["bpf"])[1..])
            .arg(shadow_tests::workspace_bin("shadow-daemon"))
            .args(["--interface", &r.t.server_if, "--port", "8080", "--metrics-addr", "127.0.0.1:0"])
            .args(["--control", r.scratch.path("run/second.sock").to_str().expect("utf-8")])
            .output()
            .expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the daemon ran without bpf(2): {err}");
    assert!(err.contains("Operation not permitted") || err.contains("EPERM"), "{err}");
    assert!(err.contains("runs under a seccomp filter, which must allow bpf(2)"), "the filter is named: {err}");
    eprintln!("without bpf(2): {}", err.trim());
}
