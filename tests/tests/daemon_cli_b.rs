//! The daemon binary's contract at its edges: one-line errors with the documented exit codes, and
//! a clean detach on SIGTERM that leaves nothing attached.

use std::{
    process::{Command, Stdio},
    time::Duration,
};

use shadow_tests::{
    Proc,
    faults::{loaded_program_ids, shadow_tcx_programs},
    require_kernel,
    topo::NetNs,
    wait_for,
};

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

/// Root is checked too: uid 0 whose capabilities a container or unit dropped (here, from the
/// bounding set, so the executed daemon has none of the three) fails at the start, in one line
/// naming what is missing and why, not with an EPERM from deep in the loader (it used to pass the
/// check and fail there).
#[test]
fn root_without_the_capabilities_exits_1_naming_them() {
    if !require_kernel("root_without_the_capabilities") {
        return;
    }
    // All three dropped, then one of them alone: each named.
    for (dropped, line) in [
        ("-bpf,-perfmon,-sys_admin,-net_admin", "running as root without CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON"),
        ("-perfmon,-sys_admin", "running as root without CAP_PERFMON:"),
    ] {
        let (code, err) = run(Command::new("setpriv")
            .arg(format!("--bounding-set={dropped}"))
            .arg(daemon_path())
            .args(["--interface", "lo", "--port", "80", "--metrics-addr", "127.0.0.1:0"]));
        assert_eq!(code, 1, "{err}");
        assert_one_line(&err, line);
    }
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
            .args(["--control", &format!("{}.1.sock", log.display())])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file")),
    );
    wait_for("the first daemon to attach", Duration::from_secs(20), || {
        std::fs::read_to_string(&log).is_ok_and(|l| l.contains("capturing ports"))
    });
    assert!(ns.exec(&["ip", "link", "show", "xa0"]).contains("xdp"), "XDP attached");

    let second_control = format!("{}.2.sock", log.display());
    let (code, err) = run(ns.command(daemon_path().to_str().expect("utf-8 path")).args([
        "--interface",
        "xa0",
        "--port",
        "80",
        "--hook",
        "xdp",
        "--metrics-addr",
        "127.0.0.1:0",
        "--control",
        &second_control,
    ]));
    assert_eq!(code, 2, "{err}");
    assert_one_line(&err, "already has an XDP program attached");

    assert_eq!(first.terminate(Duration::from_secs(10)), Some(0), "SIGTERM is a clean exit");
    assert!(!ns.exec(&["ip", "link", "show", "xa0"]).contains("xdp"), "XDP detached on exit");

    // TC: attached to xa0 while running (as the kernel lists this namespace's xa0, so another
    // shadow on the host does not count), gone after SIGTERM.
    let mut tc = Proc::spawn(
        "shadow-daemon",
        ns.command(daemon_path().to_str().expect("utf-8 path"))
            .args(["--interface", "xa0", "--port", "80", "--metrics-addr", "127.0.0.1:0"])
            .args(["--control", &format!("{}.3.sock", log.display())])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file")),
    );
    wait_for("the tc daemon to attach", Duration::from_secs(20), || {
        std::fs::read_to_string(&log).is_ok_and(|l| l.contains("capturing ports"))
    });
    let running = shadow_tcx_programs(&ns, "xa0");
    assert_eq!(running.len(), 2, "the daemon's tc ingress and egress programs are attached while it runs: {running:?}");
    assert_eq!(tc.terminate(Duration::from_secs(10)), Some(0));
    let loaded = loaded_program_ids();
    for id in &running {
        assert!(!loaded.contains(id), "program {id} still loaded after the daemon exited");
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

/// Text logs read by journald, `kubectl logs` or a shipper (stderr is not a terminal) are plain:
/// no ANSI colour codes around the level or the fields.
#[test]
fn text_logs_on_a_pipe_carry_no_colour_codes() {
    if !require_kernel("text_logs_on_a_pipe_carry_no_colour_codes") {
        return;
    }
    let sock = std::env::temp_dir().join(format!("shadow-cli-text-{}.sock", std::process::id()));
    let (code, err) = run(daemon()
        .args(["--interface", "lo", "--port", "39998", "--duration", "0.3", "--log-level", "debug"])
        .args(["--control", sock.to_str().expect("utf-8")]));
    assert_eq!(code, 0, "{err}");
    assert!(err.lines().any(|l| l.contains(" INFO ") && l.contains("capturing ports")), "{err}");
    assert!(!err.contains('\u{1b}'), "escape codes in piped logs: {err:?}");
}

/// `Type=notify`: under systemd (`$NOTIFY_SOCKET`, a path or an abstract `@name`) the daemon
/// says READY=1 once capture is attached, and STOPPING=1 when it stops; nothing else.
#[test]
fn it_tells_systemd_when_it_is_ready_and_when_it_stops() {
    if !require_kernel("it_tells_systemd_when_it_is_ready") {
        return;
    }
    use std::os::{
        linux::net::SocketAddrExt,
        unix::net::{SocketAddr, UnixDatagram},
    };
    let dir = std::env::temp_dir().join(format!("shadow-cli-notify-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("notify.sock");
    let abstract_name = format!("shadow-cli-notify-{}", std::process::id());
    let by_path = UnixDatagram::bind(&path).expect("bind");
    let by_name = UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(abstract_name.as_bytes()).expect("name"))
        .expect("bind abstract");
    for (sock, var) in [(&by_path, path.to_str().expect("utf-8").to_owned()), (&by_name, format!("@{abstract_name}"))] {
        let control = dir.join("control.sock");
        let (code, err) = run(daemon()
            .args(["--interface", "lo", "--port", "39997", "--duration", "0.3"])
            .args(["--control", control.to_str().expect("utf-8")])
            .env("NOTIFY_SOCKET", &var));
        assert_eq!(code, 0, "{err}");
        sock.set_nonblocking(true).expect("nonblocking");
        let mut got = Vec::new();
        let mut buf = [0u8; 256];
        while let Ok(n) = sock.recv(&mut buf) {
            got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        assert_eq!(got, ["READY=1\nSTATUS=capturing", "STOPPING=1"], "{var}: {err}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The systemd unit runs the daemon as a non-root user holding only CAP_BPF, CAP_NET_ADMIN and
/// CAP_PERFMON as ambient capabilities (DynamicUser, AmbientCapabilities): the same here with
/// setpriv, as nobody. It passes its own check, attaches and exits 0.
#[test]
fn a_non_root_user_with_the_three_ambient_capabilities_captures() {
    if !require_kernel("a_non_root_user_with_the_three_ambient_capabilities_captures") {
        return;
    }
    let dir = std::env::temp_dir().join(format!("shadow-cli-nonroot-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    std::os::unix::fs::chown(&dir, Some(65534), Some(65534)).expect("chown");
    let sock = dir.join("control.sock");
    let caps = "+bpf,+net_admin,+perfmon";
    let (code, err) = run(Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(format!("--inh-caps={caps}"))
        .arg(format!("--ambient-caps={caps}"))
        .arg(daemon_path())
        .args(["--interface", "lo", "--port", "39997", "--duration", "0.3", "--metrics-addr", "127.0.0.1:0"])
        .args(["--control", sock.to_str().expect("utf-8")]));
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(code, 0, "{err}");
    assert!(err.lines().any(|l| l.contains("capturing ports")), "{err}");
}

/// Which binary a bad invocation runs.
#[derive(Clone, Copy, Debug)]
enum Bin {
    Daemon,
    Ctl,
}

/// A bad invocation: arguments (`{file}` stands for a config file holding `file`), variables,
/// and what the one line on stderr must contain.
struct Bad {
    bin: Bin,
    args: &'static [&'static str],
    env: &'static [(&'static str, &'static str)],
    file: Option<&'static str>,
    names: &'static [&'static str],
    /// For a config file: the field the line names besides the file.
    field: &'static str,
}

const fn daemon_bad(args: &'static [&'static str], names: &'static [&'static str]) -> Bad {
    Bad { bin: Bin::Daemon, args, env: &[], file: None, names, field: "" }
}

const fn env_bad(
    args: &'static [&'static str],
    env: &'static [(&'static str, &'static str)],
    names: &'static [&'static str],
) -> Bad {
    Bad { bin: Bin::Daemon, args, env, file: None, names, field: "" }
}

/// A config file's text; the line must name the file and `field`.
const fn file_bad(text: &'static str, field: &'static str) -> Bad {
    Bad { bin: Bin::Daemon, args: &["--config", "{file}"], env: &[], file: Some(text), names: &["{file}"], field }
}

const fn ctl_bad(args: &'static [&'static str], names: &'static [&'static str]) -> Bad {
    Bad { bin: Bin::Ctl, args, env: &[], file: None, names, field: "" }
}

const BAD: &[Bad] = &[
    // Flags, as clap rejects them.
    daemon_bad(&["--prot", "80"], &["'--prot'", "'--port'"]),
    daemon_bad(&["-i", "lo", "--port", "0"], &["--port", "0 is not a TCP port"]),
    daemon_bad(&["-i", "lo", "--port", "65536"], &["--port"]),
    daemon_bad(&["-i", "lo", "--port", "http"], &["--port", "'http'"]),
    daemon_bad(&["-i", "lo", "--port"], &["--port", "a value is required"]),
    daemon_bad(&["-i", "lo", "-p", "80", "--sample-rate", "101"], &["--sample-rate"]),
    daemon_bad(&["-i", "lo", "-p", "80", "--sample-rate", "-1"], &["--sample-rate"]),
    daemon_bad(&["-i", "lo", "-p", "80", "--sample-rate", "half"], &["--sample-rate", "'half'"]),
    daemon_bad(&["-i", "lo", "-p", "80", "--hook", "kprobe"], &["--hook", "possible values: tc, xdp"]),
    daemon_bad(&["-i", "lo", "-p", "80", "--metrics-addr", "nowhere"], &["--metrics-addr"]),
    daemon_bad(&["-i", "lo", "-p", "80", "--log-format", "xml"], &["--log-format"]),
    daemon_bad(&["-i", "lo", "-p", "80", "--log-level", "info,=x=y"], &["--log-level"]),
    daemon_bad(&["-i", "lo", "-p", "80", "--ring-buffer-size", "5000"], &["--ring-buffer-size"]),
    daemon_bad(&["-i", "lo", "-p", "80", "--ring-buffer-size", "1KiB"], &["--ring-buffer-size"]),
    daemon_bad(&["-i", "lo", "-p", "80", "--duration", "0"], &["--duration"]),
    daemon_bad(&["-i", "lo", "-p", "80", "--duration=1e20"], &["--duration"]),
    daemon_bad(&["-i", "lo", "-p", "80", "--max-endpoints", "0"], &["--max-endpoints"]),
    daemon_bad(&["-i", "lo", "-p", "80", "--memory-cap", "1KiB"], &["--memory-cap", "1 MiB minimum"]),
    daemon_bad(&["-i", "lo", "-p", "80", "--memory-cap", "99999999999GiB"], &["--memory-cap"]),
    daemon_bad(&["-i", "lo", "-p", "80", "--memory-cap", "lots"], &["--memory-cap"]),
    daemon_bad(&["-i", "lo", "-p", "80", "--max-body-bytes", "2GiB"], &["--max-body-bytes"]),
    daemon_bad(&["-i", "lo", "-p", "80", "--max-body-bytes=-1"], &["--max-body-bytes"]),
    daemon_bad(&["-i", "lo", "-p", "80", "--queue-bytes", "x"], &["--queue-bytes"]),
    daemon_bad(&["-i", "lo", "-p", "80", "--concurrency", "0"], &["--concurrency"]),
    daemon_bad(&["-i", "lo", "-p", "80", "--queue-capacity", "0"], &["--queue-capacity"]),
    daemon_bad(&["-i", "lo", "-p", "80", "--pool-size", "many"], &["--pool-size"]),
    daemon_bad(&["-i", "lo", "-p", "80", "--request-timeout", "0"], &["--request-timeout"]),
    daemon_bad(&["-i", "lo", "-p", "80", "--connect-timeout", "forever"], &["--connect-timeout"]),
    daemon_bad(&["-i", "lo", "-p", "80", "--replay-rate", "0"], &["--replay-rate"]),
    daemon_bad(&["-i", "lo", "-p", "80", "--host-mode", "elsewhere"], &["--host-mode"]),
    daemon_bad(&["-i", "lo", "-p", "80", "--allow-shared-capture=maybe"], &["--allow-shared-capture"]),
    daemon_bad(&["-i", "lo", "-p", "80", "stray"], &["'stray'"]),
    daemon_bad(&["-i", "lo", "-p", "80", "-x"], &["'-x'"]),
    daemon_bad(&["-i", "lo", "-p", "8\n0"], &["--port", "'8\\n0'"]),
    daemon_bad(&["-i", "l\u{1b}[2J\no", "-p", "80"], &["--interface: 'l\\u{1b}[2J\\no'"]),
    // Flags, as the checks after clap reject them.
    daemon_bad(&["-i", "lo", "-p", "80", "--set-header", "no colon"], &["--set-header"]),
    daemon_bad(&["-i", "lo", "-p", "80", "--tag-header", "bad"], &["--tag-header"]),
    daemon_bad(&["-i", "lo", "-p", "80", "--remove-header", "a b"], &["--remove-header"]),
    daemon_bad(&["-i", "lo", "-p", "80", "--allow-path", "api"], &["--allow-path"]),
    daemon_bad(&["-i", "lo", "-p", "80", "--deny-path", "/a?b"], &["--deny-path"]),
    daemon_bad(&["-i", "lo", "-p", "80", "--allow-method", "G T"], &["--allow-method"]),
    daemon_bad(&["-i", "lo", "-p", "80", "--shadow", "nohostport"], &["--shadow"]),
    daemon_bad(&["-i", "lo", "-p", "80", "--shadow", "x:0"], &["--shadow"]),
    daemon_bad(&["-i", "lo", "-p", "80", "--secondary", "x"], &["--secondary"]),
    daemon_bad(&["-p", "80"], &["--interface is required"]),
    daemon_bad(&["-i", "", "-p", "80"], &["--interface is required"]),
    daemon_bad(&["-i", "lo"], &["--port is required"]),
    daemon_bad(&["--config", "/nonexistent/shadow.toml"], &["/nonexistent/shadow.toml"]),
    daemon_bad(&["--config", "/"], &["config /:"]),
    Bad {
        bin: Bin::Daemon,
        args: &["--config", "{file}", "--port", "80"],
        env: &[],
        file: Some("[[rule]]\nport = 80\n"),
        names: &["--port cannot be combined with --config"],
        field: "",
    },
    // SHADOW_* variables: the line names the variable.
    env_bad(&["-i", "lo"], &[("SHADOW_PORT", "0")], &["SHADOW_PORT", "--port"]),
    env_bad(&["-p", "80"], &[("SHADOW_INTERFACE", "lo"), ("SHADOW_SAMPLE_RATE", "101")], &["SHADOW_SAMPLE_RATE"]),
    env_bad(&["-i", "lo", "-p", "80"], &[("SHADOW_HOOK", "kprobe")], &["SHADOW_HOOK", "possible values"]),
    env_bad(&["-i", "lo", "-p", "80"], &[("SHADOW_METRICS_ADDR", "nowhere")], &["SHADOW_METRICS_ADDR"]),
    env_bad(&["-i", "lo", "-p", "80"], &[("SHADOW_MEMORY_CAP", "1KiB")], &["SHADOW_MEMORY_CAP"]),
    env_bad(&["-i", "lo", "-p", "80"], &[("SHADOW_REPLAY_RATE", "0")], &["SHADOW_REPLAY_RATE"]),
    env_bad(&["-i", "lo", "-p", "80"], &[("SHADOW_DURATION", "x")], &["SHADOW_DURATION"]),
    env_bad(&["-i", "lo", "-p", "80"], &[("SHADOW_RING_BUFFER_SIZE", "3")], &["SHADOW_RING_BUFFER_SIZE"]),
    env_bad(&["-i", "lo", "-p", "80"], &[("SHADOW_SHADOW", "x")], &["SHADOW_SHADOW", "HOST:PORT"]),
    env_bad(&["-i", "lo", "-p", "80"], &[("SHADOW_SET_HEADER", "no colon")], &["SHADOW_SET_HEADER"]),
    env_bad(&["-i", "lo", "-p", "80"], &[("SHADOW_ALLOW_METHOD", "G T")], &["SHADOW_ALLOW_METHOD"]),
    env_bad(&["-i", "lo", "-p", "80"], &[("SHADOW_LOG_LEVEL", "info,=x=y")], &["SHADOW_LOG_LEVEL"]),
    env_bad(&["-i", "lo", "-p", "80"], &[("SHADOW_LOG", "info,=x=y")], &["SHADOW_LOG"]),
    env_bad(&["-i", "lo", "-p", "80"], &[("SHADOW_LOG_FORMAT", "xml")], &["SHADOW_LOG_FORMAT"]),
    env_bad(&[], &[("SHADOW_CONFIG", "/nonexistent/env.toml")], &["/nonexistent/env.toml"]),
    Bad {
        bin: Bin::Daemon,
        args: &["--config", "{file}"],
        env: &[("SHADOW_PORT", "80")],
        file: Some("[[rule]]\nport = 80\n"),
        names: &["SHADOW_PORT cannot be combined with --config"],
        field: "",
    },
    // Config files: the line names the file and the field.
    file_bad("[[rule]]\nport = 80\nshadw = \"a:1\"\n", "rule[0].shadw: unknown key"),
    file_bad("[[rule]]\nport = 0\n", "rule[0].port"),
    file_bad("[[rule]]\nport = \"80\"\n", "rule[0].port"),
    file_bad("[[rule]]\nshadow = \"a:1\"\n", "rule[0].port: missing"),
    file_bad("interface = \"lo\"\n", "rule: no [[rule]]"),
    file_bad("[[rule]]\nport = 80\nshadow = \"a:1\n", "line 3, column"),
    file_bad("[defaults]\nport = 80\n[[rule]]\nport = 81\n", "defaults.port"),
    file_bad("hook = \"xdp\"\n[[rule]]\nport = 80\n", "hook: unknown key"),
    file_bad("[[rule]]\nname = \"x\"\nport = 80\n[[rule]]\nname = \"x\"\nport = 81\n", "rule[1].name"),
    file_bad("[[rule]]\nport = [80, 81]\n[[rule]]\nport = 81\n", "rule[1].port"),
    file_bad("[[rule]]\nport = 80\nsample_rate = 101\n", "rule[0].sample_rate"),
    file_bad("[[rule]]\nmatch = [\"10.0.0.0/33:80\"]\n", "rule[0].match"),
    file_bad("[[rule]]\nport = 80\nrequest_timeout = true\n", "rule[0].request_timeout"),
    file_bad(
        "[[rule]]\nport = 80\nshadow = \"a:1\"\n[rule.compare]\nmax_body_bytes = 0\n",
        "rule[0].compare.max_body_bytes",
    ),
    file_bad("[[rule]]\nport = 80\nshadow = \"a:1\"\n[rule.compare.gates]\nmax_p99_ratio = 0.5\n", "max_p99_ratio"),
    file_bad("[[rule]]\nport = 80\nset_header = \"X-Token: s3cret\\u0000\"\n", "rule[0].set_header"),
    file_bad("interface = 5\n[[rule]]\nport = 80\n", "interface"),
    file_bad("\u{feff}\u{0}", "{file}"),
    // shadowctl.
    ctl_bad(&[], &["a command is required"]),
    ctl_bad(&["stauts"], &["'stauts'", "'status'"]),
    ctl_bad(&["rate"], &["<PERCENT>"]),
    ctl_bad(&["rate", "101"], &["'101' is not a percentage"]),
    ctl_bad(&["rate", "-5"], &["'-5' is not a percentage"]),
    ctl_bad(&["rate", "10", "--rule"], &["--rule"]),
    ctl_bad(&["status", "--rule", "x"], &["'--rule'"]),
    ctl_bad(&["report", "--html"], &["--html"]),
    ctl_bad(&["--bogus", "status"], &["'--bogus'"]),
    ctl_bad(&["pause", "extra"], &["'extra'"]),
    ctl_bad(&["diffs", "--endpoint"], &["--endpoint"]),
];

/// Run `cmd` to its end (at most 20 s: a bad invocation must not start anything).
fn run_bounded(mut cmd: Command, what: &str) -> (i32, String) {
    let mut child = cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().expect("spawn");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        if child.try_wait().expect("wait").is_some() {
            break;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what}: still running after 20 s: a usage error must end the process at once");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = child.wait_with_output().expect("output");
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn every_usage_error_is_one_line_naming_it_with_exit_2() {
    assert!(BAD.len() >= 50, "{} bad invocations", BAD.len());
    let dir = std::env::temp_dir().join(format!("shadow-cli-usage-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let mut failures = Vec::new();
    for (i, bad) in BAD.iter().enumerate() {
        let file = dir.join(format!("case{i}.toml"));
        if let Some(text) = bad.file {
            std::fs::write(&file, text).expect("write config");
        }
        let file = file.to_str().expect("utf-8 path");
        let mut cmd = Command::new(match bad.bin {
            Bin::Daemon => daemon_path(),
            Bin::Ctl => shadow_tests::workspace_bin("shadowctl"),
        });
        // Only this case's variables.
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("SHADOW_") {
                cmd.env_remove(k);
            }
        }
        cmd.args(bad.args.iter().map(|a| a.replace("{file}", file))).envs(bad.env.iter().copied());
        let what = format!("case {i}: {:?} {:?} {:?}", bad.bin, bad.args, bad.env);
        let (code, err) = run_bounded(cmd, &what);
        let lines: Vec<&str> = err.lines().collect();
        let line = lines.first().copied().unwrap_or("");
        let missing: Vec<String> = bad
            .names
            .iter()
            .chain([&bad.field])
            .filter(|n| !n.is_empty())
            .map(|n| n.replace("{file}", file))
            .filter(|n| !line.contains(n.as_str()))
            .collect();
        if code != 2 || lines.len() != 1 || !missing.is_empty() {
            failures.push(format!("{what}\n    exit {code}, {} line(s), missing {missing:?}:\n    {err}", lines.len()));
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    assert!(failures.is_empty(), "{} of {} bad invocations:\n{}", failures.len(), BAD.len(), failures.join("\n"));
}

#[test]
fn help_and_version_print_to_stdout_and_exit_0() {
    for (bin, arg) in [("shadow-daemon", "--help"), ("shadow-daemon", "--version"), ("shadowctl", "--help")]
        .into_iter()
        .chain([("shadowctl", "--version")])
    {
        let out = Command::new(shadow_tests::workspace_bin(bin)).arg(arg).output().expect("run");
        assert_eq!(out.status.code(), Some(0), "{bin} {arg}");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains(bin), "{bin} {arg}: {text}");
        assert!(out.stderr.is_empty(), "{bin} {arg}: nothing on stderr");
        if arg == "--help" {
            assert!(text.lines().count() > 5 && text.contains("Usage:"), "{bin} --help is clap's help: {text}");
        }
        if arg == "--version" {
            // The source revision the binaries were built from: this checkout's commit.
            let head = Command::new("git")
                .args(["-C", env!("CARGO_MANIFEST_DIR"), "rev-parse", "--short=12", "HEAD"])
                .output()
                .expect("git");
            let head = String::from_utf8_lossy(&head.stdout).trim().to_owned();
            assert_eq!(head.len(), 12, "a git checkout");
            assert_eq!(text.trim(), format!("{bin} {} ({head})", env!("CARGO_PKG_VERSION")), "{bin} --version");
        }
    }
}
