//! Kernel tier B, operating the daemon: the release `shadow-daemon` in a namespace, run from a
//! TOML config with named rules, and the release `shadowctl` changing it live. What the shadows
//! receive is the ground truth for every rate, pause and reload.

use std::{
    io::{Read, Write},
    net::SocketAddr,
    os::unix::{fs::PermissionsExt, net::UnixStream},
    process::Command,
    time::Duration,
};

use shadow_tests::{
    require_kernel, require_tool,
    rig::{OpsRig, get_many},
    server::Options,
    wait_for,
};

const PORT: u16 = 8080;

/// Two services on one port, told apart by address: `api` on the server's first address, `web`
/// on a second one, each with its own recording shadow.
fn two_services(tag: &str, api_rate: &str, web_rate: &str) -> (OpsRig, SocketAddr, SocketAddr) {
    let mut r = OpsRig::new(tag);
    let web_v4 = r.t.server_v4.rsplit_once('.').map(|(net, _)| format!("{net}.3")).expect("v4");
    r.t.server.exec(&["ip", "addr", "add", &format!("{web_v4}/24"), "dev", &r.t.server_if]);
    r.server(&format!("[::]:{PORT}"), "primary");
    r.server("127.0.0.1:9090", "shadow-api");
    r.server("127.0.0.1:9091", "shadow-web");
    r.write_config(&format!(
        "[[rule]]\nname = \"api\"\nmatch = [\"{api}/32:{PORT}\"]\nshadow = \"127.0.0.1:9090\"\nsample_rate = {api_rate}\n\n\
         [[rule]]\nname = \"web\"\nmatch = [\"{web_v4}/32:{PORT}\"]\nshadow = \"127.0.0.1:9091\"\nsample_rate = {web_rate}\n",
        api = r.t.server_v4
    ));
    let iface = r.t.server_if.clone();
    r.start_daemon(&iface, &[]);
    let api = SocketAddr::new(r.t.server_v4.parse().expect("v4"), PORT);
    let web = SocketAddr::new(web_v4.parse().expect("v4"), PORT);
    (r, api, web)
}

/// What each shadow has received, once the daemon settled `sent` requests in all.
fn counts(r: &OpsRig, sent: u64) -> (usize, usize) {
    r.wait_quiet(sent);
    (r.recorded("shadow-api").len(), r.recorded("shadow-web").len())
}

fn rule<'a>(status: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    status["rules"]
        .as_array()
        .and_then(|v| v.iter().find(|r| r["name"] == name))
        .unwrap_or_else(|| panic!("no rule {name}: {status}"))
}

#[test]
fn shadowctl_changes_rates_per_rule_pauses_and_resumes_live() {
    if !require_kernel("shadowctl_changes_rates_per_rule") {
        return;
    }
    let (r, api, web) = two_services("o1", "100", "100");

    let st = r.ctl(&["status", "--json"]).json();
    assert_eq!(rule(&st, "api")["kernel_percent"], 100.0, "{st}");
    assert_eq!(rule(&st, "web")["matches"][0], format!("{}/32:{PORT}", web.ip()), "{st}");
    assert!(r.ctl(&["status"]).stdout.contains("api"), "text status lists the rules");

    // Two services on one port reach their own shadows.
    get_many(&r.t, api, "/api", 20);
    get_many(&r.t, web, "/web", 20);
    assert_eq!(counts(&r, 40), (20, 20));
    assert!(r.recorded("shadow-api").iter().all(|q| q.target.starts_with("/api/")));
    assert!(r.recorded("shadow-web").iter().all(|q| q.target.starts_with("/web/")));

    // One rule to 0 %, the other keeps its rate.
    let st = r.ctl(&["rate", "0", "--rule", "api", "--json"]).json();
    assert_eq!(rule(&st, "api")["kernel_percent"], 0.0, "read back from the kernel: {st}");
    assert_eq!(rule(&st, "web")["kernel_percent"], 100.0, "{st}");
    get_many(&r.t, api, "/api", 20);
    get_many(&r.t, web, "/web", 20);
    assert_eq!(counts(&r, 80), (20, 40));

    // Pause everything: nothing sampled, programs attached, counters counting.
    let skipped_before = r.metric("shadow_kernel_requests_skipped_total");
    let st = r.ctl(&["pause", "--json"]).json();
    assert!(
        st["rules"].as_array().expect("rules").iter().all(|x| x["paused"] == true && x["kernel_percent"] == 0.0),
        "{st}"
    );
    get_many(&r.t, api, "/api", 10);
    get_many(&r.t, web, "/web", 10);
    assert_eq!(counts(&r, 100), (20, 40));
    assert_eq!(r.metric("shadow_kernel_requests_skipped_total") - skipped_before, 20.0, "paused requests are counted");

    // Resume: each rule back at its own rate (api 0 %, web 100 %).
    let st = r.ctl(&["resume", "--json"]).json();
    assert_eq!(rule(&st, "api")["kernel_percent"], 0.0, "{st}");
    assert_eq!(rule(&st, "web")["kernel_percent"], 100.0, "{st}");
    get_many(&r.t, api, "/api", 10);
    get_many(&r.t, web, "/web", 10);
    assert_eq!(counts(&r, 120), (20, 50));

    // About half at 50 %: Binomial(400, 0.5) has sd 10; 6 sd either side fails only when broken.
    r.ctl(&["rate", "50", "--rule", "api", "--json"]).json();
    get_many(&r.t, api, "/api", 400);
    let (a, _) = counts(&r, 520);
    let half = a - 20;
    assert!((140..=260).contains(&half), "{half} of 400 sampled at 50 %");

    // Every command answers JSON that parses. (`report` exits with its verdict: 0 PASS, 1 FAIL,
    // 3 not enough data; which one depends on how the two sides' latencies compared here.)
    for cmd in [&["stats", "--json"][..], &["status", "--json"]] {
        r.ctl(cmd).json();
    }
    let report = r.ctl(&["report", "--json"]);
    assert!(matches!(report.code, 0 | 1 | 3), "{report:?}");
    let v: serde_json::Value = serde_json::from_str(&report.stdout).unwrap_or_else(|e| panic!("{e}: {report:?}"));
    assert_eq!(v["rules"].as_array().map(Vec::len), Some(2), "a report per rule: {v}");
    let stats = r.ctl(&["stats"]);
    assert_eq!(stats.code, 0, "{stats:?}");
    assert!(stats.stdout.contains("requests: captured"), "{}", stats.stdout);

    // Bad arguments: one line, exit 2, naming what was wrong.
    for (args, needle) in
        [(&["rate", "101"][..], "101"), (&["rate", "5", "--rule", "nope"], "nope"), (&["frobnicate"], "frobnicate")]
    {
        let o = r.ctl(args);
        assert_eq!(o.code, 2, "{args:?}: {o:?}");
        assert_eq!(o.stderr.trim().lines().count(), 1, "{args:?}: {o:?}");
        assert!(o.stderr.contains(needle), "{args:?}: {o:?}");
    }
}

#[test]
fn the_socket_refuses_other_users_and_answers_garbage() {
    if !require_kernel("the_socket_refuses_other_users") || !require_tool("the_socket_refuses_other_users", "setpriv") {
        return;
    }
    let (r, _, _) = two_services("o2", "100", "100");
    let mode = std::fs::metadata(&r.control).expect("socket").permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "control socket mode");

    // The file mode keeps other users out...
    let as_nobody = || {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all"])
            .arg(shadow_tests::workspace_bin("shadowctl"));
        c
    };
    let o = r.ctl_cmd(as_nobody(), &["status"]);
    assert_eq!(o.code, 5, "{o:?}");
    // ... and, with the mode opened up, the daemon's peer check still does, and counts it.
    std::fs::set_permissions(&r.control, std::fs::Permissions::from_mode(0o666)).expect("chmod");
    std::fs::set_permissions(r.control.parent().expect("dir"), std::fs::Permissions::from_mode(0o755))
        .expect("chmod dir");
    let mut p = r.control.parent().expect("dir").to_path_buf();
    while p.pop() {
        if p.as_os_str().len() > 1 {
            let _ = std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755));
        }
    }
    let o = r.ctl_cmd(as_nobody(), &["rate", "0"]);
    assert_eq!(o.code, 5, "{o:?}");
    assert!(o.stderr.contains("not permitted"), "{o:?}");
    let st = r.ctl(&["status", "--json"]).json();
    assert!(
        st["rules"].as_array().expect("rules").iter().all(|x| x["kernel_percent"] == 100.0),
        "the refused rate changed nothing: {st}"
    );

    // Garbage gets an error answer, not a crash, and is counted.
    let mut s = UnixStream::connect(&r.control).expect("connect");
    s.write_all(b"\x00\x01 not json\n").expect("write");
    let mut line = String::new();
    s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    let _ = s.read_to_string(&mut line);
    let first = line.lines().next().unwrap_or_default();
    let v: serde_json::Value = serde_json::from_str(first).unwrap_or_else(|e| panic!("{e}: {line}"));
    assert_eq!(v["ok"], false);
    assert_eq!(v["error"]["kind"], "bad_request");
    wait_for("the refusal and the garbage in /metrics", Duration::from_secs(10), || {
        let m = r.scrape();
        shadow_tests::metric(&m, "shadow_control_errors_total{kind=\"refused\"}") == Some(1.0)
            && shadow_tests::metric(&m, "shadow_control_errors_total{kind=\"bad_request\"}") == Some(1.0)
    });
    assert_eq!(r.ctl(&["status", "--json"]).code, 0, "the daemon still answers");
}

#[test]
fn reload_applies_a_new_rule_and_refuses_an_invalid_file() {
    if !require_kernel("reload_applies_a_new_rule") {
        return;
    }
    let (mut r, api, web) = two_services("o3", "100", "0");
    get_many(&r.t, web, "/web", 5);
    assert_eq!(counts(&r, 5), (0, 0));
    // A live change survives a reload that leaves that rule's rate alone in the file.
    r.ctl(&["rate", "100", "--rule", "api", "--json"]).json();
    let good = std::fs::read_to_string(&r.config).expect("config").replace("sample_rate = 0", "sample_rate = 100");
    r.write_config(&good);
    // SIGHUP, as systemd's reload or `kill -HUP` sends it.
    let pid = r.daemon.as_ref().expect("daemon").child.id();
    // SAFETY: no pointers; the daemon is our child and still running.
    unsafe { libc::kill(pid as i32, libc::SIGHUP) };
    wait_for("the reload to apply", Duration::from_secs(20), || {
        rule(&r.ctl(&["status", "--json"]).json(), "web")["kernel_percent"] == 100.0
    });
    get_many(&r.t, web, "/web", 5);
    get_many(&r.t, api, "/api", 5);
    assert_eq!(counts(&r, 15), (5, 5));

    // A new rule, for a third service on the same port, through `shadowctl reload`.
    let new_v4 = r.t.server_v4.rsplit_once('.').map(|(net, _)| format!("{net}.4")).expect("v4");
    r.t.server.exec(&["ip", "addr", "add", &format!("{new_v4}/24"), "dev", &r.t.server_if]);
    r.server("127.0.0.1:9092", "shadow-new");
    r.write_config(&format!(
        "{good}\n[[rule]]\nname = \"new\"\nmatch = \"{new_v4}/32:{PORT}\"\nshadow = \"127.0.0.1:9092\"\n"
    ));
    let st = r.ctl(&["reload", "--json"]).json();
    assert_eq!(st["rules"].as_array().map(Vec::len), Some(3), "{st}");
    assert_eq!(rule(&st, "new")["kernel_percent"], 100.0, "{st}");
    get_many(&r.t, SocketAddr::new(new_v4.parse().expect("v4"), PORT), "/new", 5);
    assert_eq!(counts(&r, 20), (5, 5));
    assert_eq!(r.recorded("shadow-new").len(), 5, "the new rule's service reaches its own shadow");

    // An invalid file: refused with the reason, the old config keeps running.
    r.write_config("[[rule]]\nname = \"api\"\nsample_rate = 250\n");
    let o = r.ctl(&["reload"]);
    assert_eq!(o.code, 1, "{o:?}");
    assert!(o.stderr.contains("sample_rate"), "the reason names the field: {o:?}");
    get_many(&r.t, web, "/web", 5);
    assert_eq!(counts(&r, 25), (5, 10), "the old rules still run");
    assert_eq!(r.stop_daemon(), Some(0));
}

/// A veth pair between the client and server namespaces, created by the test after the daemon
/// started, with its own subnet; removed on drop.
struct LateLink<'a> {
    r: &'a OpsRig,
    server_if: String,
    server_ip: String,
}

impl<'a> LateLink<'a> {
    fn new(r: &'a OpsRig, server_if: &str, client_if: &str, subnet: u8) -> Self {
        shadow_tests::sh(&[
            "ip",
            "link",
            "add",
            client_if,
            "netns",
            &r.t.client.name,
            "type",
            "veth",
            "peer",
            "name",
            server_if,
            "netns",
            &r.t.server.name,
        ]);
        r.t.client.exec(&["ip", "addr", "add", &format!("10.214.{subnet}.1/24"), "dev", client_if]);
        r.t.server.exec(&["ip", "addr", "add", &format!("10.214.{subnet}.2/24"), "dev", server_if]);
        r.t.client.exec(&["ip", "link", "set", client_if, "up"]);
        r.t.server.exec(&["ip", "link", "set", server_if, "up"]);
        Self { r, server_if: server_if.into(), server_ip: format!("10.214.{subnet}.2") }
    }

    fn delete(self) {
        self.r.t.server.exec(&["ip", "link", "del", &self.server_if]);
    }
}

fn attached(r: &OpsRig) -> Vec<String> {
    r.ctl(&["status", "--json"]).json()["attached"]
        .as_array()
        .map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_string)).collect())
        .unwrap_or_default()
}

#[test]
fn interfaces_that_appear_later_are_attached_mirrored_and_forgotten_when_deleted() {
    if !require_kernel("interfaces_that_appear_later") {
        return;
    }
    let mut r = OpsRig::new("o4");
    r.server(&format!("[::]:{PORT}"), "primary");
    r.server("127.0.0.1:9090", "shadow-api");
    r.server("127.0.0.1:9091", "shadow-web");
    r.write_config(&format!("[[rule]]\nname = \"api\"\nport = {PORT}\nshadow = \"127.0.0.1:9090\"\n"));
    let id = std::process::id() % 10_000;
    let (srv_if, cli_if) = (format!("shq{id}"), format!("shc{id}q"));
    // Nothing matches the glob yet: the daemon starts and waits for interfaces.
    r.start_daemon("shq*", &[]);
    assert!(attached(&r).is_empty(), "{:?}", attached(&r));

    let link = LateLink::new(&r, &srv_if, &cli_if, (id % 200) as u8 + 20);
    wait_for("the new veth to be attached", Duration::from_secs(20), || {
        attached(&r).iter().any(|a| a.ends_with(&srv_if))
    });
    assert_eq!(attached(&r).len(), 2, "tc ingress and egress: {:?}", attached(&r));
    get_many(&r.t, SocketAddr::new(link.server_ip.parse().expect("ip"), PORT), "/late", 10);
    r.wait_quiet(10);
    assert_eq!(r.recorded("shadow-api").len(), 10, "its traffic is mirrored");
    // The original veth does not match the glob: its traffic is not ours.
    get_many(&r.t, SocketAddr::new(r.t.server_v4.parse().expect("ip"), PORT), "/other", 5);
    r.wait_quiet(10);
    assert_eq!(r.recorded("shadow-api").len(), 10);

    link.delete();
    wait_for("the deleted veth to be forgotten", Duration::from_secs(20), || attached(&r).is_empty());
    // Published on the daemon's next tick.
    wait_for("the detach in /metrics", Duration::from_secs(10), || {
        shadow_tests::metric(&r.scrape(), "shadow_interfaces_attached") == Some(0.0)
    });
    let m = r.scrape();
    assert_eq!(shadow_tests::metric(&m, "shadow_interface_events_total{event=\"attached\"}"), Some(1.0), "{m}");
    assert_eq!(shadow_tests::metric(&m, "shadow_interface_events_total{event=\"detached\"}"), Some(1.0));
    assert_eq!(r.stop_daemon(), Some(0));
}

#[test]
fn a_flow_seen_on_two_attached_interfaces_is_replayed_once() {
    if !require_kernel("a_flow_seen_on_two_attached_interfaces") {
        return;
    }
    // client ns --(veth A)-- router ns --(veth B)-- server ns; the daemon in the router, on both
    // of its veths: every segment passes it twice (A ingress, B egress; B ingress, A egress).
    let mut r = OpsRig::new("o5");
    let router = shadow_tests::topo::NetNs::new("o5r");
    let id = std::process::id() % 10_000;
    let (ra, rb, srv) = (format!("shra{id}"), format!("shrb{id}"), format!("shsv{id}"));
    let cli = format!("shcl{id}");
    let net = (id % 200) as u8 + 20;
    shadow_tests::sh(&[
        "ip",
        "link",
        "add",
        &cli,
        "netns",
        &r.t.client.name,
        "type",
        "veth",
        "peer",
        "name",
        &ra,
        "netns",
        &router.name,
    ]);
    shadow_tests::sh(&[
        "ip",
        "link",
        "add",
        &rb,
        "netns",
        &router.name,
        "type",
        "veth",
        "peer",
        "name",
        &srv,
        "netns",
        &r.t.server.name,
    ]);
    r.t.client.exec(&["ip", "addr", "add", &format!("10.215.{net}.1/24"), "dev", &cli]);
    router.exec(&["ip", "addr", "add", &format!("10.215.{net}.254/24"), "dev", &ra]);
    router.exec(&["ip", "addr", "add", &format!("10.216.{net}.254/24"), "dev", &rb]);
    r.t.server.exec(&["ip", "addr", "add", &format!("10.216.{net}.2/24"), "dev", &srv]);
    for (ns, dev) in [(&r.t.client, &cli), (&router, &ra), (&router, &rb), (&r.t.server, &srv)] {
        ns.exec(&["ip", "link", "set", dev, "up"]);
    }
    router.exec(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
    r.t.client.exec(&["ip", "route", "add", &format!("10.216.{net}.0/24"), "via", &format!("10.215.{net}.254")]);
    r.t.server.exec(&["ip", "route", "add", &format!("10.215.{net}.0/24"), "via", &format!("10.216.{net}.254")]);
    r.server(&format!("[::]:{PORT}"), "primary");

    // The daemon and its shadow live in the router namespace.
    let _shadow =
        Options::new().response_bytes(10).record(r.scratch.path("shadow-router")).spawn(&router, "127.0.0.1:9090");
    r.write_config(&format!("[[rule]]\nname = \"svc\"\nport = {PORT}\nshadow = \"127.0.0.1:9090\"\n"));
    let log = r.scratch.path("router-daemon.log");
    let summary = r.scratch.path("router-summary.json");
    let mut d = shadow_tests::Proc::spawn(
        "shadow-daemon",
        router
            .command(shadow_tests::workspace_bin("shadow-daemon").to_str().expect("utf-8"))
            .args(["--interface", &format!("shra{id},shrb{id}"), "--config", r.config.to_str().expect("utf-8")])
            .args(["--metrics-addr", "127.0.0.1:9477", "--control", r.control.to_str().expect("utf-8")])
            .args(["--summary-file", summary.to_str().expect("utf-8")])
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log")),
    );
    wait_for("daemon to attach", Duration::from_secs(30), || {
        std::fs::read_to_string(&log).is_ok_and(|l| l.contains("capturing"))
    });

    let server = SocketAddr::new(format!("10.216.{net}.2").parse().expect("ip"), PORT);
    get_many(&r.t, server, "/twice", 30);
    let metrics: SocketAddr = "127.0.0.1:9477".parse().expect("addr");
    wait_for("30 requests settled", Duration::from_secs(30), || {
        router.http_get(metrics, "/metrics").is_some_and(|m| {
            shadow_tests::metric(&m, "shadow_requests_captured_total") == Some(30.0)
                && shadow_tests::metric(&m, "shadow_requests_in_flight") == Some(0.0)
                // Kernel counters are published on the daemon's tick.
                && shadow_tests::metric(&m, "shadow_kernel_requests_sampled_total").is_some_and(|v| v >= 30.0)
        })
    });
    let m = router.http_get(metrics, "/metrics").expect("scrape");
    assert_eq!(
        shadow_tests::metric(&m, "shadow_kernel_requests_sampled_total"),
        Some(30.0),
        "one decision per request"
    );
    assert_eq!(
        shadow_tests::metric(&m, "shadow_kernel_request_start_retransmits_total"),
        Some(30.0),
        "the second sighting of each request start kept the first one's decision"
    );
    assert_eq!(d.terminate(Duration::from_secs(15)), Some(0));
    let got = shadow_tests::recorded_requests(&r.scratch.path("shadow-router"));
    assert_eq!(got.len(), 30, "each request replayed once, though captured on two interfaces");
    let s: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&summary).expect("summary")).expect("json");
    assert!(
        s["request"]["overlap_bytes"].as_u64().unwrap_or(0) > 0,
        "the second copies were overlap: {}",
        s["request"]
    );
    assert_eq!(s["request"]["stream_bytes"], s["request"]["overlap_bytes"], "every request byte seen exactly twice");
}

#[test]
fn secrets_never_reach_a_log_line_or_shadowctl() {
    if !require_kernel("secrets_never_reach_a_log_line") || !require_tool("secrets_never_reach_a_log_line", "curl") {
        return;
    }
    const SECRETS: [&str; 3] = ["t0ps3cret-bearer", "s3ss10n-cookie", "c0nf1gured-key"];
    let mut r = OpsRig::new("o6");
    r.server(&format!("[::]:{PORT}"), "primary");
    r.server("127.0.0.1:9090", "shadow-api");
    r.write_config(&format!(
        "[[rule]]\nname = \"api\"\nport = {PORT}\nshadow = \"127.0.0.1:9090\"\nallow_method = [\"POST\"]\n\
         set_header = [\"X-Api-Key: {}\"]\n",
        SECRETS[2]
    ));
    let iface = r.t.server_if.clone();
    r.start_daemon(&iface, &["--log-level", "debug"]);
    let url = format!("http://{}:{PORT}/login", r.t.server_v4);
    for body in ["", "password=hunter2"] {
        let mut c = r.t.client.command("curl");
        c.args(["-sS", "--fail", "--max-time", "10", "-o", "/dev/null"]).args([
            "-H",
            &format!("Authorization: Bearer {}", SECRETS[0]),
            "-H",
            &format!("Cookie: sid={}", SECRETS[1]),
        ]);
        if !body.is_empty() {
            c.args(["--data", body]);
        }
        assert!(c.arg(&url).status().expect("curl").success());
    }
    r.wait_quiet(2);
    assert_eq!(r.recorded("shadow-api").len(), 2, "both requests were replayed");
    let mut seen = vec![("daemon log".to_string(), r.daemon_log()), ("/metrics".to_string(), r.scrape())];
    for cmd in [&["status"][..], &["stats"], &["report"], &["diffs"]] {
        for json in [false, true] {
            let mut args = cmd.to_vec();
            if json {
                args.push("--json");
            }
            let o = r.ctl(&args);
            seen.push((format!("shadowctl {args:?}"), format!("{}{}", o.stdout, o.stderr)));
        }
    }
    assert_eq!(r.stop_daemon(), Some(0));
    seen.push(("daemon log after exit".into(), r.daemon_log()));
    seen.push(("summary".into(), std::fs::read_to_string(r.scratch.path("summary.json")).unwrap_or_default()));
    for (what, text) in &seen {
        assert!(!text.is_empty() || what.contains("diffs"), "{what} is empty");
        for s in SECRETS.iter().chain(&["hunter2"]) {
            assert!(!text.contains(s), "{s} appears in {what}");
        }
    }
}
