//! Kernel tier B, trace isolation: real requests carrying every trace-context format go through
//! a primary the release daemon captures on a veth; the shadow must receive each with a fresh
//! trace context (no production id anywhere but the `tracestate` link), the original flags and
//! baggage members, and the `shadow=true` baggage marker; `--trace keep` must leave the trace
//! headers as captured; `shadowctl diffs` must show both trace ids. Then a shadow instrumented
//! with the OpenTelemetry Python SDK (default propagators) calls a downstream service: the
//! downstream must see the marker in its baggage and a trace id that is not production's.

use std::{
    io::Write,
    net::{SocketAddr, TcpStream},
    path::Path,
    process::Stdio,
    time::Duration,
};

use shadow_tests::{
    Proc, Recorded,
    client::{read_response, status_of},
    require_kernel, require_tool,
    rig::OpsRig,
    server::Options,
    topo::NetNs,
    wait_for,
};

const PORT: u16 = 8080;
const SHADOW: &str = "127.0.0.1:9090";

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT: &str = "00f067aa0ba902b7";

/// One request per format, and one with all of them, by path. Every id in them is production's.
const CASES: &[(&str, &[(&str, &str)])] = &[
    (
        "/f/w3c",
        &[
            ("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            ("tracestate", "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"),
            ("baggage", "userId=alice,isProduction=false"),
        ],
    ),
    ("/f/b3", &[("b3", "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90")]),
    (
        "/f/b3multi",
        &[
            ("X-B3-TraceId", "463ac35c9f6413ad48485a3953bb6124"),
            ("X-B3-SpanId", "a2fb4a1d1a96d312"),
            ("X-B3-ParentSpanId", "0020000000000001"),
            ("X-B3-Sampled", "1"),
        ],
    ),
    ("/f/jaeger", &[("uber-trace-id", "5e2c1f0a9b8d7c6e5f4a3b2c1d0e9f8a:e457b5a2e4d86bd1:a2fb4a1d1a96d312:1")]),
    (
        "/f/datadog",
        &[
            ("x-datadog-trace-id", "1234567890123456789"),
            ("x-datadog-parent-id", "987654321987"),
            ("x-datadog-sampling-priority", "1"),
            ("x-datadog-tags", "_dd.p.dm=-1,_dd.p.tid=640cfd8d00000000"),
        ],
    ),
    ("/f/xray", &[("X-Amzn-Trace-Id", "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1")]),
    ("/f/cloud", &[("X-Cloud-Trace-Context", "105445aa7843bc8bf206b12000100000/4242;o=1")]),
    (
        "/f/sw8",
        &[(
            "sw8",
            "1-YTFiMmMzZDRlNWY2LjM3LjE2NzkwNDMyNTEyMTUwMDAx-NWU4ZjFhLjEuMTY3OTA=-3-b3JkZXJz-aW5zdGFuY2U=-L2FwaS9vcmRlcnM=-MTAuMC4wLjE6ODA4MA==",
        )],
    ),
    (
        "/f/all",
        &[
            ("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"),
            ("b3", "4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0"),
            ("uber-trace-id", "4bf92f3577b34da6a3ce929d0e0e4736:00f067aa0ba902b7:0:0"),
            ("X-Amzn-Trace-Id", "Root=1-4bf92f35-77b34da6a3ce929d0e0e4736;Parent=00f067aa0ba902b7;Sampled=0"),
            ("X-Cloud-Trace-Context", "4bf92f3577b34da6a3ce929d0e0e4736/64150977580647095;o=0"),
        ],
    ),
    // Upper-case hex is not W3C: removed, with the tracestate it would have linked.
    ("/f/bad", &[("traceparent", "00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01"), ("tracestate", "a=b")]),
    ("/f/none", &[]),
];

fn request(path: &str, headers: &[(&str, &str)]) -> Vec<u8> {
    let mut r = format!("GET {path} HTTP/1.1\r\nHost: primary\r\n");
    for (n, v) in headers {
        r.push_str(&format!("{n}: {v}\r\n"));
    }
    r.push_str("\r\n");
    r.into_bytes()
}

/// Send `requests` from the client namespace over one keep-alive connection; each must be
/// answered 200.
fn send_all(ns: &NetNs, addr: SocketAddr, requests: Vec<Vec<u8>>) {
    let name = ns.name.clone();
    std::thread::spawn(move || {
        NetNs { name }.enter_and_forget();
        let mut s = TcpStream::connect(addr).expect("connect");
        let mut buf = Vec::new();
        for r in requests {
            s.write_all(&r).expect("send");
            let resp = read_response(&mut s, &mut buf, Duration::from_secs(10)).expect("response");
            assert_eq!(status_of(&resp), 200);
        }
    })
    .join()
    .expect("client");
}

/// The header lines of a recorded request, (name, value).
fn headers(r: &Recorded) -> Vec<(String, String)> {
    let text = String::from_utf8_lossy(&r.raw);
    let head = text.split("\r\n\r\n").next().unwrap_or_default();
    head.split("\r\n")
        .skip(1)
        .filter_map(|l| l.split_once(':').map(|(n, v)| (n.to_ascii_lowercase(), v.trim().to_owned())))
        .collect()
}

fn value<'a>(h: &'a [(String, String)], name: &str) -> Option<&'a str> {
    h.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
}

/// Every production id of a case: the runs of eight or more letters and digits (with a digit)
/// in its trace values; of `sw8`, its trace and segment ids (the rest is kept on purpose).
fn production_ids(case: &[(&str, &str)]) -> Vec<String> {
    let mut ids = Vec::new();
    for (name, v) in case {
        let fields: Vec<&str> = match *name {
            "baggage" | "x-datadog-sampling-priority" => continue,
            "sw8" => v.split('-').skip(1).take(2).collect(),
            _ => vec![v],
        };
        for f in fields {
            let runs = f.split(|c: char| !c.is_ascii_alphanumeric());
            ids.extend(runs.filter(|t| t.len() >= 8 && t.bytes().any(|b| b.is_ascii_digit())).map(str::to_owned));
        }
    }
    ids
}

fn by_path<'a>(got: &'a [Recorded], path: &str) -> &'a Recorded {
    got.iter().find(|r| r.target == path).unwrap_or_else(|| panic!("{path} not received"))
}

/// The daemon with one rule to the shadow (`keys`: more of the rule's settings).
fn start(r: &mut OpsRig, keys: &str) {
    r.write_config(&format!("[[rule]]\nname = \"api\"\nport = {PORT}\nshadow = \"{SHADOW}\"\n{keys}"));
    let iface = r.t.server_if.clone();
    r.start_daemon(&iface, &[]);
}

#[test]
fn every_trace_format_reaches_the_shadow_restarted_and_marked() {
    if !require_kernel("trace_isolation") {
        return;
    }
    let mut r = OpsRig::new("ti");
    r.server(&format!("[::]:{PORT}"), "primary");
    // Shorter answers than the primary's: every pair mismatches, so each is kept for the diffs.
    let shadow = Options::new().response_bytes(40).record(r.scratch.path("shadow"));
    r.serve(SHADOW, shadow);
    start(&mut r, "");
    let addr = SocketAddr::new(r.t.server_v4.parse().expect("v4"), PORT);
    send_all(&r.t.client, addr, CASES.iter().map(|(p, h)| request(p, h)).collect());
    r.wait_quiet(CASES.len() as u64);
    wait_for("the shadow to record every request", Duration::from_secs(30), || {
        r.recorded("shadow").len() >= CASES.len()
    });
    let got = r.recorded("shadow");
    assert_eq!(got.len(), CASES.len());

    for (path, case) in CASES {
        let rec = by_path(&got, path);
        let h = headers(rec);
        let raw = String::from_utf8_lossy(&rec.raw);
        let link = format!("tracestate: shadow={TRACE}-{PARENT}\r\n");
        for id in production_ids(case) {
            let outside_link = raw.replace(&link, "");
            assert!(!outside_link.contains(&id), "{path}: production id {id} reached the shadow:\n{raw}");
        }
        // The marker, after the original members, which are byte-identical.
        let own = case.iter().find(|(n, _)| *n == "baggage").map(|(_, v)| format!("{v},"));
        assert_eq!(value(&h, "baggage"), Some(format!("{}shadow=true", own.unwrap_or_default()).as_str()), "{path}");
        assert_eq!(value(&h, "x-shadow-request"), Some("true"));
    }
    // W3C: a fresh context with the production's flags; the link is the only tracestate member.
    let w3c = headers(by_path(&got, "/f/w3c"));
    let tp: Vec<&str> = value(&w3c, "traceparent").expect("traceparent").split('-').collect();
    assert_eq!((tp.len(), tp[0], tp[1].len(), tp[2].len(), tp[3]), (4, "00", 32, 16, "01"), "{tp:?}");
    assert_eq!(value(&w3c, "tracestate"), Some(format!("shadow={TRACE}-{PARENT}").as_str()));
    // Several formats in one request: one new trace id for all, the decision (not sampled) kept.
    let all = headers(by_path(&got, "/f/all"));
    let tp: Vec<&str> = value(&all, "traceparent").expect("traceparent").split('-').collect();
    let new = tp[1];
    assert_eq!(tp[3], "00");
    assert!(value(&all, "b3").expect("b3").starts_with(&format!("{new}-{}-0", tp[2])));
    assert!(value(&all, "uber-trace-id").expect("jaeger").starts_with(&format!("{new}:{}:0:0", tp[2])));
    assert!(value(&all, "x-amzn-trace-id").expect("xray").starts_with(&format!("Root=1-{}-{}", &new[..8], &new[8..])));
    assert!(value(&all, "x-cloud-trace-context").expect("cloud").starts_with(&format!("{new}/")));
    // Not understood: gone, with its tracestate.
    let bad = headers(by_path(&got, "/f/bad"));
    assert_eq!((value(&bad, "traceparent"), value(&bad, "tracestate")), (None, None));

    let m = |format: &str, action: &str| {
        r.metric(&format!("shadow_trace_contexts_total{{rule=\"api\",format=\"{format}\",action=\"{action}\"}}"))
    };
    assert_eq!((m("traceparent", "restarted"), m("traceparent", "removed")), (2.0, 1.0));
    assert_eq!((m("tracestate", "restarted"), m("tracestate", "removed")), (2.0, 1.0));
    for (format, n) in [
        ("b3", 2.0),
        ("b3multi", 1.0),
        ("jaeger", 2.0),
        ("datadog", 1.0),
        ("xray", 2.0),
        ("cloud_trace", 2.0),
        ("sw8", 1.0),
    ] {
        assert_eq!(m(format, "restarted"), n, "{format}");
    }
    assert_eq!((m("baggage", "marked"), m("baggage", "baggage_full")), (CASES.len() as f64, 0.0));

    // The diffs link the two traces: production's, and the one the shadow received.
    let d = r.ctl(&["diffs", "--endpoint", "GET /f/w3c"]);
    assert_eq!(d.code, 0, "{}", d.stderr);
    let want = format!(
        "trace (traceparent): production {TRACE} shadow {}",
        value(&w3c, "traceparent").unwrap().split('-').nth(1).unwrap()
    );
    assert!(d.stdout.contains(&want), "{want} not in:\n{}", d.stdout);
    let d = r.ctl(&["diffs", "--endpoint", "GET /f/none"]);
    assert!(d.stdout.contains("pair #1") && !d.stdout.contains("trace ("), "no trace, no link:\n{}", d.stdout);
    assert_eq!(r.stop_daemon(), Some(0));

    // --trace keep: every trace header as captured; the marker still travels.
    let mut k = OpsRig::new("tk");
    k.server(&format!("[::]:{PORT}"), "primary");
    k.server(SHADOW, "shadow");
    start(&mut k, "trace = \"keep\"\n");
    let addr = SocketAddr::new(k.t.server_v4.parse().expect("v4"), PORT);
    let (path, case) = CASES[0];
    let (all_path, all_case) = CASES[8];
    send_all(&k.t.client, addr, vec![request(path, case), request(all_path, all_case)]);
    k.wait_quiet(2);
    wait_for("the shadow to record both", Duration::from_secs(30), || k.recorded("shadow").len() >= 2);
    let got = k.recorded("shadow");
    for (p, c) in [(path, case), (all_path, all_case)] {
        let h = headers(by_path(&got, p));
        for (n, v) in c.iter().filter(|(n, _)| *n != "baggage") {
            assert_eq!(value(&h, &n.to_ascii_lowercase()), Some(*v), "{p}: {n} as captured");
        }
    }
    assert_eq!(value(&headers(by_path(&got, path)), "baggage"), Some("userId=alice,isProduction=false,shadow=true"));
    let m = |format: &str, action: &str| {
        k.metric(&format!("shadow_trace_contexts_total{{rule=\"api\",format=\"{format}\",action=\"{action}\"}}"))
    };
    assert_eq!((m("traceparent", "kept"), m("traceparent", "restarted")), (2.0, 0.0));
    assert_eq!(k.stop_daemon(), Some(0));
}

/// The venv `cargo xtask setup` fills (OpenTelemetry SDK and instrumentation).
fn venv_python() -> String {
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    format!("{home}/.cache/shadow/venv/bin/python3")
}

fn otel_script() -> &'static str {
    concat!(env!("CARGO_MANIFEST_DIR"), "/py/otel_shadow.py")
}

/// Whether something accepts connections on `addr` in `ns`.
fn listening(ns: &NetNs, addr: SocketAddr) -> bool {
    let name = ns.name.clone();
    std::thread::spawn(move || {
        NetNs { name }.enter_and_forget();
        TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok()
    })
    .join()
    .unwrap_or(false)
}

fn jsonl(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect()
}

#[test]
fn an_instrumented_shadow_sends_the_marker_and_a_new_trace_downstream() {
    if !require_kernel("trace_isolation") || !require_tool("trace_isolation", &venv_python()) {
        return;
    }
    let mut r = OpsRig::new("to");
    r.server(&format!("[::]:{PORT}"), "primary");
    let (spans, seen) = (r.scratch.path("spans.jsonl"), r.scratch.path("downstream.jsonl"));
    let py = venv_python();
    let spawn = |name: &str, args: &[&str]| {
        Proc::spawn(
            name,
            r.t.server.command(&py).arg(otel_script()).args(args).stdout(Stdio::null()).stderr(Stdio::inherit()),
        )
    };
    let _down = spawn("downstream", &["downstream", "9191", seen.to_str().expect("utf-8")]);
    let _shadow = spawn("otel shadow", &["shadow", "9090", "9191", spans.to_str().expect("utf-8")]);
    for port in [9191, 9090] {
        wait_for("the python servers to listen", Duration::from_secs(30), || {
            listening(&r.t.server, SocketAddr::from(([127, 0, 0, 1], port)))
        });
    }
    start(&mut r, "");
    let addr = SocketAddr::new(r.t.server_v4.parse().expect("v4"), PORT);
    let tp = format!("00-{TRACE}-{PARENT}-01");
    send_all(&r.t.client, addr, vec![request("/orders", &[("traceparent", &tp), ("baggage", "userId=alice")])]);
    r.wait_quiet(1);
    wait_for("the downstream call", Duration::from_secs(30), || !jsonl(&seen).is_empty());
    wait_for("the shadow's spans", Duration::from_secs(30), || jsonl(&spans).len() >= 2);

    let down = &jsonl(&seen)[0];
    let header = |name: &str| {
        let h = down["headers"].as_object().expect("headers");
        h.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).and_then(|(_, v)| v.as_str()).map(str::to_owned)
    };
    let down_tp = header("traceparent").expect("the SDK propagates a traceparent downstream");
    let down_trace = down_tp.split('-').nth(1).expect("trace id").to_owned();
    assert_ne!(down_trace, TRACE, "the downstream call is not in the production trace");
    // The link travels with the context (tracestate is propagated with it), and is the only
    // place the production id is.
    let link = format!("shadow={TRACE}-{PARENT}");
    assert_eq!(header("tracestate").as_deref(), Some(link.as_str()));
    assert!(!down.to_string().replace(&link, "").contains(TRACE), "no production id downstream: {down}");
    assert_eq!(header("baggage").as_deref(), Some("userId=alice,shadow=true"), "the marker travels downstream");
    // The shadow's own spans: in the new trace, sampled as production was, marked by the
    // baggage span processor (what a collector filters on).
    let spans = jsonl(&spans);
    let server = spans.iter().find(|s| s["kind"] == "SERVER").expect("a server span");
    assert_eq!(server["trace_id"], down_trace.as_str());
    assert_eq!(server["sampled"], true);
    assert_eq!(server["attributes"]["shadow"], "true");
    assert_eq!(server["attributes"]["userId"], "alice");
    assert_eq!(r.stop_daemon(), Some(0));
}
