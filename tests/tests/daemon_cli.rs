//! The daemon binary's contract at its edges: one-line errors with the documented exit codes, and
//! a clean detach on SIGTERM that leaves nothing attached.

use std::{
    process::{Command, Stdio},
    time::Duration,
};

use shadow_tests::{Proc, require_kernel, topo::NetNs, wait_for};

fn daemon_path() -> std::path::PathBuf {
    shadow_tests::workspace_bin("shadow-daemon")
}

fn daemon() -> Command {
    let mut c = Command::new(daemon_path());
    c.args(["--metrics-addr", "127.0.0.1:0"]);
    c
}

fn run(cmd: &mut Command) -> (i32, String) {
    let out = cmd.stdout(Stdio::null()).output().expect("run shadow-daemon");
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn assert_one_line(stderr: &str, needle: &str) {
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(lines.iter().any(|l| l.contains(needle)), "expected a line with {needle:?}, got: {stderr}");
}

#[test]
fn usage_errors_exit_2_with_one_line_naming_the_flag() {
    let (code, err) = run(daemon().args(["--port", "80"]));
    assert_eq!(code, 2);
    assert_one_line(&err, "--interface");
    let (code, err) = run(daemon().args(["--interface", "lo", "--port", "80", "--sample-rate", "101"]));
    assert_eq!(code, 2);
    assert_one_line(&err, "--sample-rate");
    let (code, err) = run(daemon().args(["--interface", "lo", "--port", "http"]));
    assert_eq!(code, 2);
    assert_one_line(&err, "--port");
}

#[test]
fn unknown_interface_exits_2() {
    if !require_kernel("unknown_interface_exits_2") {
        return;
    }
    let (code, err) = run(daemon().args(["--interface", "shadow-nope0", "--port", "80"]));
    assert_eq!(code, 2, "{err}");
    assert_one_line(&err, "unknown interface 'shadow-nope0'");
}

#[test]
fn without_privileges_exits_1_naming_the_capabilities() {
    if !require_kernel("without_privileges_exits_1") {
        return;
    }
    // Drop to nobody with no capabilities.
    let (code, err) = run(Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all"])
        .arg(daemon_path())
        .args(["--interface", "lo", "--port", "80", "--metrics-addr", "127.0.0.1:0"]));
    assert_eq!(code, 1, "{err}");
    assert_one_line(&err, "CAP_BPF");
}

#[test]
fn second_xdp_program_is_refused_and_sigterm_detaches_cleanly() {
    if !require_kernel("second_xdp_program_is_refused") {
        return;
    }
    let ns = NetNs::new("cli");
    ns.exec(&["ip", "link", "add", "xa0", "type", "veth", "peer", "name", "xa1"]);
    ns.exec(&["ip", "link", "set", "xa0", "up"]);
    ns.exec(&["ip", "link", "set", "xa1", "up"]);
    let log = std::env::temp_dir().join(format!("shadow-cli-{}.log", std::process::id()));
    let mut first = Proc::spawn(
        "shadow-daemon",
        ns.command(daemon_path().to_str().expect("utf-8 path"))
            .args(["--interface", "xa0", "--port", "80", "--hook", "xdp", "--metrics-addr", "127.0.0.1:0"])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file")),
    );
    wait_for("the first daemon to attach", Duration::from_secs(20), || {
        std::fs::read_to_string(&log).is_ok_and(|l| l.contains("capturing ports"))
    });
    assert!(ns.exec(&["ip", "link", "show", "xa0"]).contains("xdp"), "XDP attached");

    let (code, err) = run(ns.command(daemon_path().to_str().expect("utf-8 path")).args([
        "--interface",
        "xa0",
        "--port",
        "80",
        "--hook",
        "xdp",
        "--metrics-addr",
        "127.0.0.1:0",
    ]));
    assert_eq!(code, 2, "{err}");
    assert_one_line(&err, "already has an XDP program attached");

    assert_eq!(first.terminate(Duration::from_secs(10)), Some(0), "SIGTERM is a clean exit");
    assert!(!ns.exec(&["ip", "link", "show", "xa0"]).contains("xdp"), "XDP detached on exit");

    // TC: attached while running, gone after SIGTERM. Programs are told apart from any other
    // process's by being new since just before this daemon started.
    let ids = || -> Vec<String> {
        let out = Command::new("bpftool")
            .args(["prog", "show"])
            .output()
            .expect("bpftool prog show (cargo xtask setup installs bpftool)");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.contains("shadow_tc_ingre") || l.contains("shadow_tc_egres"))
            .filter_map(|l| l.split(':').next().map(str::to_string))
            .collect()
    };
    let before = ids();
    let mut tc = Proc::spawn(
        "shadow-daemon",
        ns.command(daemon_path().to_str().expect("utf-8 path"))
            .args(["--interface", "xa0", "--port", "80", "--metrics-addr", "127.0.0.1:0"])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file")),
    );
    wait_for("the tc daemon to attach", Duration::from_secs(20), || {
        std::fs::read_to_string(&log).is_ok_and(|l| l.contains("capturing ports"))
    });
    let running: Vec<String> = ids().into_iter().filter(|id| !before.contains(id)).collect();
    assert_eq!(running.len(), 2, "the daemon's tc ingress and egress programs are loaded while it runs: {running:?}");
    assert_eq!(tc.terminate(Duration::from_secs(10)), Some(0));
    let after = ids();
    for id in &running {
        assert!(!after.contains(id), "program {id} still loaded after the daemon exited");
    }
    let _ = std::fs::remove_file(&log);
}

#[test]
fn a_second_daemon_on_the_same_interface_and_port_is_refused() {
    if !require_kernel("a_second_daemon_on_the_same_interface_and_port") {
        return;
    }
    let ns = NetNs::new("cli2");
    ns.exec(&["ip", "link", "add", "sa0", "type", "veth", "peer", "name", "sa1"]);
    ns.exec(&["ip", "link", "set", "sa0", "up"]);
    let log = std::env::temp_dir().join(format!("shadow-cli2-{}.log", std::process::id()));
    let mut first = Proc::spawn(
        "shadow-daemon",
        ns.command(daemon_path().to_str().expect("utf-8 path"))
            .args(["--interface", "sa0", "--port", "80,8080", "--metrics-addr", "127.0.0.1:0"])
            .args(["--control", &format!("{}.sock", log.display())])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file")),
    );
    wait_for("the first daemon to attach", Duration::from_secs(20), || {
        std::fs::read_to_string(&log).is_ok_and(|l| l.contains("capturing ports"))
    });
    let second = |ports: &str| {
        run(ns
            .command(daemon_path().to_str().expect("utf-8 path"))
            .args(["--interface", "sa0", "--port", ports, "--metrics-addr", "127.0.0.1:0", "--duration", "0.2"])
            .args(["--control", &format!("{}.2.sock", log.display())]))
    };
    let (code, err) = second("8080");
    assert_eq!(code, 2, "{err}");
    assert_one_line(&err, "already has a shadow capture");
    assert_one_line(&err, "port(s) 8080");
    // Other ports on the same interface are another service: allowed.
    let (code, err) = second("9090");
    assert_eq!(code, 0, "{err}");
    assert_eq!(first.terminate(Duration::from_secs(10)), Some(0));
    let _ = std::fs::remove_file(&log);
}

#[test]
fn json_logs_are_one_object_per_line_and_a_bad_level_is_a_usage_error() {
    if !require_kernel("json_logs_are_one_object_per_line") {
        return;
    }
    let sock = std::env::temp_dir().join(format!("shadow-cli-json-{}.sock", std::process::id()));
    let (code, err) = run(daemon().args(["--interface", "lo", "--port", "39999", "--duration", "0.3"]).args([
        "--log-format",
        "json",
        "--control",
        sock.to_str().expect("utf-8"),
    ]));
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(lines.len() >= 2, "{err}");
    for l in &lines {
        let v: serde_json::Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
        assert!(v["level"].is_string() && v["message"].is_string(), "{l}");
    }
    assert!(lines.iter().any(|l| l.contains("capturing ports")), "{err}");
    let (code, err) = run(daemon().args(["--interface", "lo", "--port", "80", "--log-level", "info,=x=y"]));
    assert_eq!(code, 2, "{err}");
    assert_one_line(&err, "--log-level");
}
