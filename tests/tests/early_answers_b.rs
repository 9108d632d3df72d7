//! Kernel tier B, early answers: a real nginx primary answers one location with `return 200`
//! before it reads a 4 MiB body (and discards the body, keeping the connection), and refuses
//! another with 413 as soon as it sees the Content-Length. The first is a served request and
//! must reach the shadow exactly once, byte-identical but for the tag line; the second must not
//! reach it, and is counted as `refused`.

use std::{
    io::Write,
    net::{Shutdown, SocketAddr, TcpStream},
    path::PathBuf,
    process::Stdio,
    time::Duration,
};

use shadow_tests::{
    Proc, Scratch,
    client::{read_response, status_of},
    metric,
    nginx::{self, Nginx},
    recorded_requests, require_kernel, require_tool,
    server::{Mode, Options},
    topo::{NetNs, TwoHosts},
    wait_for, wait_settled, without_line, workspace_bin,
};

const PORT: u16 = 8080;
const SHADOW_PORT: u16 = 9090;
const METRICS: &str = "127.0.0.1:9477";
// The daemon's default edits of a request without trace headers: the tag, then the shadow
// marker in a new W3C baggage header, both before the blank line.
const TAG_LINE: &[u8] = b"X-Shadow-Request: true\r\nbaggage: shadow=true\r\n";
const BODY: usize = 4 * 1024 * 1024;

fn start_nginx(t: &TwoHosts, scratch: &Scratch) -> Proc {
    // `return` answers before the body is read (nginx then reads and discards it, and the
    // connection goes on); client_max_body_size refuses the 4 MiB one with 413 from its head.
    let server = "location /early { client_max_body_size 16m; return 200 \"early ok\\n\"; }\n\
                  location /small { client_max_body_size 1k; return 200 \"small ok\\n\"; }\n\
                  location / { return 200 \"primary ok\\n\"; }";
    Nginx { worker_connections: 64, server: server.into(), ..Nginx::new(PORT) }.start(&t.server, &scratch.path("nginx"))
}

/// The shadow: 50-byte answers, every request recorded to scratch/shadow.
fn shadow(scratch: &Scratch) -> Options {
    Options::new().response_bytes(50).record(scratch.path("shadow"))
}

/// The release daemon on the server's interface (TC), replaying `methods` with bodies up to
/// 16 MiB; returns once it captures, with its log's path.
fn start_daemon(t: &TwoHosts, scratch: &Scratch, methods: &str) -> (Proc, PathBuf) {
    let log = scratch.path("daemon.log");
    let daemon = Proc::spawn(
        "shadow-daemon",
        t.server
            .command(workspace_bin("shadow-daemon").to_str().expect("utf-8"))
            .args(["--interface", &t.server_if, "--port", &PORT.to_string(), "--hook", "tc"])
            .args(["--shadow", &format!("127.0.0.1:{SHADOW_PORT}"), "--metrics-addr", METRICS])
            .args(["--allow-method", methods, "--max-body-bytes", "16MiB"])
            .args(["--control", scratch.path("control.sock").to_str().expect("utf-8")])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log")),
    );
    wait_for("daemon to attach", Duration::from_secs(30), || {
        std::fs::read_to_string(&log).is_ok_and(|l| l.contains("capturing ports"))
    });
    (daemon, log)
}

fn nginx_log(scratch: &Scratch) -> Vec<String> {
    nginx::access_log(&scratch.path("nginx"))
}

fn upload(path: &str, fill: u8) -> Vec<u8> {
    let head = format!("PUT {path} HTTP/1.1\r\nHost: primary\r\nContent-Length: {BODY}\r\n\r\n");
    [head.as_bytes(), &vec![fill; BODY]].concat()
}

const GET: &[u8] = b"GET /after HTTP/1.1\r\nHost: primary\r\n\r\n";

/// Run `f` in the client namespace.
fn in_client<T: Send + 'static>(t: &TwoHosts, f: impl FnOnce() -> T + Send + 'static) -> T {
    let name = t.client.name.clone();
    std::thread::spawn(move || {
        NetNs { name }.enter_and_forget();
        f()
    })
    .join()
    .expect("client thread")
}

/// Write `req` whole (whatever the server answered meanwhile: a refused body may be cut off by
/// a reset, which is the server's right), then read one response; its status.
fn send(s: &mut TcpStream, req: &[u8], buf: &mut Vec<u8>) -> u16 {
    let _ = s.write_all(req);
    read_response(s, buf, Duration::from_secs(20)).map(|r| status_of(&r)).unwrap_or(0)
}

#[test]
fn an_early_200_is_replayed_once_and_an_early_413_is_refused() {
    if !require_kernel("early_answers") || !require_tool("early_answers", "nginx") {
        return;
    }
    let t = TwoHosts::new("ea");
    let scratch = Scratch::new("ea");
    let _nginx = start_nginx(&t, &scratch);
    let _shadow = shadow(&scratch).spawn(&t.server, &format!("127.0.0.1:{SHADOW_PORT}"));
    let (mut daemon, log) = start_daemon(&t, &scratch, "GET,POST,PUT");

    let addr = SocketAddr::new(t.server_v4.parse().expect("v4"), PORT);
    let (early_next, early_close, refused) =
        (upload("/early/next", b'a'), upload("/early/close", b'b'), upload("/small", b'c'));
    let sent = (early_next.clone(), early_close.clone());
    let statuses = in_client(&t, move || {
        let mut buf = Vec::new();
        // Answered early, then the connection goes on: the next answer pairs with the next request.
        let mut s = TcpStream::connect(addr).expect("connect");
        let a = send(&mut s, &early_next, &mut buf);
        let b = send(&mut s, GET, &mut buf);
        drop(s);
        // Answered early, then both sides close cleanly.
        let mut buf = Vec::new();
        let mut s = TcpStream::connect(addr).expect("connect");
        let c = send(&mut s, &early_close, &mut buf);
        let _ = s.shutdown(Shutdown::Write);
        let _ = read_response(&mut s, &mut buf, Duration::from_secs(5));
        drop(s);
        // Refused from its head.
        let mut buf = Vec::new();
        let mut s = TcpStream::connect(addr).expect("connect");
        let d = send(&mut s, &refused, &mut buf);
        drop(s);
        [a, b, c, d]
    });
    assert_eq!(statuses, [200, 200, 200, 413], "what nginx answered");
    wait_for("nginx to log every request", Duration::from_secs(30), || nginx_log(&scratch).len() >= 4);

    // Four requests captured, each settled: nothing still held once the connections are gone.
    let text = wait_settled(&t.server, METRICS.parse().expect("metrics"), 4, Duration::from_secs(60));
    let m = |s: &str| metric(&text, s).unwrap_or(-1.0);
    assert_eq!(m("shadow_requests_captured_total"), 4.0, "{text}");
    assert_eq!(m("shadow_requests_dropped_total{reason=\"refused\"}"), 1.0, "the 413");
    assert_eq!(m("shadow_requests_replayed_total"), 3.0, "two early-answered uploads and the GET after one");
    wait_for("the shadow to record three requests", Duration::from_secs(30), || {
        recorded_requests(&scratch.path("shadow")).len() >= 3
    });
    let code = daemon.terminate(Duration::from_secs(15));
    assert_eq!(code, Some(0), "daemon exit; log:\n{}", std::fs::read_to_string(&log).unwrap_or_default());

    let got = recorded_requests(&scratch.path("shadow"));
    assert!(got.iter().all(|r| r.tagged), "every mirrored request carries the tag header");
    let mut raws: Vec<Vec<u8>> = got.iter().map(|r| without_line(&r.raw, TAG_LINE)).collect();
    raws.sort();
    let mut want = vec![sent.0, sent.1, GET.to_vec()];
    want.sort();
    assert_eq!(raws.len(), 3, "exactly once each: {:?}", got.iter().map(|r| &r.target).collect::<Vec<_>>());
    for (a, b) in raws.iter().zip(&want) {
        assert!(
            a == b,
            "a replayed request differs ({} vs {} bytes): {:?}",
            a.len(),
            b.len(),
            String::from_utf8_lossy(&b[..60])
        );
    }
    assert!(got.iter().all(|r| r.target != "/small"), "the refused upload reached the shadow");
}

/// Issue 19's whole story on one rig: mixed real traffic (keep-alive GETs and HEADs, GETs the
/// client pipelines, a chunked POST and 1 MiB and 4 MiB PUTs answered early, and a 4 MiB PUT
/// refused early with 413) through nginx, mirrored to a shadow that answers HEAD with a body.
/// Every request nginx served reaches the shadow exactly once (HEADs too, counted as the shadow's
/// bad responses), the refused one never, and the ledger accounts for each under one outcome.
#[test]
fn mixed_traffic_reaches_a_head_misbehaving_shadow_exactly_once() {
    if !require_kernel("mixed_exactly_once") || !require_tool("mixed_exactly_once", "nginx") {
        return;
    }
    let t = TwoHosts::new("mx");
    let scratch = Scratch::new("mx");
    let _nginx = start_nginx(&t, &scratch);
    let _shadow = shadow(&scratch).mode(Mode::HeadBody).spawn(&t.server, &format!("127.0.0.1:{SHADOW_PORT}"));
    let (mut daemon, log) = start_daemon(&t, &scratch, "GET,HEAD,POST,PUT");

    let get = |p: &str| format!("GET /{p} HTTP/1.1\r\nHost: primary\r\n\r\n").into_bytes();
    let head = |p: &str| format!("HEAD /{p} HTTP/1.1\r\nHost: primary\r\n\r\n").into_bytes();
    let put = |p: &str, n: usize, fill: u8| {
        [format!("PUT /{p} HTTP/1.1\r\nHost: primary\r\nContent-Length: {n}\r\n\r\n").as_bytes(), &vec![fill; n]]
            .concat()
    };
    let chunked = b"POST /early/chunked HTTP/1.1\r\nHost: primary\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n".to_vec();
    // One connection's requests in order; a HEAD never follows a HEAD, so the shadow's failures
    // never come five in a row (its backoff would then drop requests it never saw).
    let script: Vec<Vec<u8>> = vec![
        get("a/1"),
        head("a/2"),
        get("a/3"),
        put("early/1m", 1 << 20, b'p'),
        get("a/4"),
        head("a/5"),
        chunked.clone(),
        get("a/6"),
        put("early/4m", BODY, b'q'),
        get("a/7"),
    ];
    let pipelined: Vec<Vec<u8>> = (0..4).map(|i| get(&format!("p/{i}"))).collect();
    let refused = put("small", BODY, b'r');
    let (script2, pipelined2, refused2) = (script.clone(), pipelined.clone(), refused.clone());
    let addr = SocketAddr::new(t.server_v4.parse().expect("v4"), PORT);
    let statuses = in_client(&t, move || {
        let mut out = Vec::new();
        let mut buf = Vec::new();
        let mut s = TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(20))).expect("timeout");
        for req in &script2 {
            if req.starts_with(b"HEAD") {
                let _ = s.write_all(req);
                // A HEAD's answer has no body: read its head alone.
                let mut chunk = [0u8; 4096];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    let n = std::io::Read::read(&mut s, &mut chunk).unwrap_or(0);
                    assert!(n > 0, "nginx closed on a HEAD");
                    buf.extend_from_slice(&chunk[..n]);
                }
                let end = buf.windows(4).position(|w| w == b"\r\n\r\n").map_or(0, |p| p + 4);
                out.push(status_of(&buf[..end]));
                buf.drain(..end);
            } else {
                out.push(send(&mut s, req, &mut buf));
            }
        }
        // The client pipelines four GETs in one write, then reads the four answers.
        let _ = s.write_all(&pipelined2.concat());
        for _ in 0..pipelined2.len() {
            out.push(read_response(&mut s, &mut buf, Duration::from_secs(20)).map(|r| status_of(&r)).unwrap_or(0));
        }
        drop(s);
        let mut buf = Vec::new();
        let mut s = TcpStream::connect(addr).expect("connect");
        out.push(send(&mut s, &refused2, &mut buf));
        out
    });
    let served = script.len() + pipelined.len();
    assert_eq!(statuses[..served], vec![200; served][..], "what nginx served");
    assert_eq!(statuses[served], 413, "the refused upload");
    let total = served + 1;
    wait_for("nginx to log every request", Duration::from_secs(30), || nginx_log(&scratch).len() >= total);

    let text = wait_settled(&t.server, METRICS.parse().expect("metrics"), total as u64, Duration::from_secs(60));
    let m = |s: &str| metric(&text, s).unwrap_or(-1.0);
    let heads = script.iter().filter(|r| r.starts_with(b"HEAD")).count() as f64;
    assert_eq!(m("shadow_requests_captured_total"), total as f64, "{text}");
    assert_eq!(m("shadow_requests_dropped_total{reason=\"refused\"}"), 1.0, "the 413 alone:\n{text}");
    assert_eq!(m("shadow_requests_dropped_total{reason=\"shadow_error\"}"), heads, "each HEAD's answer had a body");
    assert_eq!(m("shadow_errors_total{kind=\"bad_response\"}"), heads, "counted once each");
    assert_eq!(m("shadow_requests_replayed_total"), served as f64 - heads, "everything else answered:\n{text}");
    assert_eq!(m("shadow_replay_retries_total"), 0.0, "nothing written twice");
    wait_for("the shadow to record every served request", Duration::from_secs(30), || {
        recorded_requests(&scratch.path("shadow")).len() >= served
    });
    let code = daemon.terminate(Duration::from_secs(15));
    assert_eq!(code, Some(0), "daemon exit; log:\n{}", std::fs::read_to_string(&log).unwrap_or_default());

    // Exactly once each, byte for byte but for the tag line; never the refused one.
    let got = recorded_requests(&scratch.path("shadow"));
    assert!(got.iter().all(|r| r.tagged), "every mirrored request carries the tag header");
    let mut raws: Vec<Vec<u8>> = got.iter().map(|r| without_line(&r.raw, TAG_LINE)).collect();
    raws.sort();
    let mut want: Vec<Vec<u8>> = script.into_iter().chain(pipelined).collect();
    want.sort();
    assert_eq!(raws.len(), want.len(), "{:?}", got.iter().map(|r| (&r.method, &r.target)).collect::<Vec<_>>());
    for (a, b) in raws.iter().zip(&want) {
        assert!(a == b, "a replayed request differs: {:?}", String::from_utf8_lossy(&b[..b.len().min(60)]));
    }
    assert!(got.iter().all(|r| r.target != "/small"), "the refused upload reached the shadow");
}
