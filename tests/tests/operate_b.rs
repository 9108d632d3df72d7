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

    // Every command answers JSON that parses.
    for cmd in [&["stats", "--json"][..], &["report", "--json"], &["status", "--json"]] {
        r.ctl(cmd).json();
    }
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
    unsafe { libc::kill(pid as i32, libc::SIGHUP) };
    wait_for("the reload to apply", Duration::from_secs(20), || {
        rule(&r.ctl(&["status", "--json"]).json(), "web")["kernel_percent"] == 100.0
    });
    get_many(&r.t, web, "/web", 5);
    get_many(&r.t, api, "/api", 5);
    assert_eq!(counts(&r, 15), (5, 5));

    // An invalid file: refused with the reason, the old config keeps running.
    r.write_config("[[rule]]\nname = \"api\"\nsample_rate = 250\n");
    let o = r.ctl(&["reload"]);
    assert_eq!(o.code, 1, "{o:?}");
    assert!(o.stderr.contains("sample_rate"), "the reason names the field: {o:?}");
    get_many(&r.t, web, "/web", 5);
    assert_eq!(counts(&r, 20), (5, 10), "the old rules still run");
    assert_eq!(r.stop_daemon(), Some(0));
}
