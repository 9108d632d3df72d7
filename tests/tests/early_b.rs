//! Kernel tier B, early answers: a real nginx primary answers one location with `return 200`
//! before it reads a 4 MiB body (and discards the body, keeping the connection), and refuses
//! another with 413 as soon as it sees the Content-Length. The first is a served request and
//! must reach the shadow exactly once, byte-identical but for the tag line; the second must not
//! reach it, and is counted as `refused`.

use std::{
    io::Write,
    net::{Shutdown, SocketAddr, TcpStream},
    process::Stdio,
    time::Duration,
};

use shadow_tests::{
    Proc, Scratch,
    client::{read_response, status_of},
    metric,
    nginx::{self, Nginx},
    recorded_requests, require_kernel, require_tool,
    topo::{NetNs, TwoHosts},
    wait_for, wait_settled, without_line, workspace_bin,
};

const PORT: u16 = 8080;
const SHADOW_PORT: u16 = 9090;
const METRICS: &str = "127.0.0.1:9477";
const TAG_LINE: &[u8] = b"X-Shadow-Request: true\r\n";
const BODY: usize = 4 * 1024 * 1024;

fn start_nginx(t: &TwoHosts, scratch: &Scratch) -> Proc {
    // `return` answers before the body is read (nginx then reads and discards it, and the
    // connection goes on); client_max_body_size refuses the 4 MiB one with 413 from its head.
    let server = "location /early { client_max_body_size 16m; return 200 \"early ok\\n\"; }\n\
                  location /small { client_max_body_size 1k; return 200 \"small ok\\n\"; }\n\
                  location / { return 200 \"primary ok\\n\"; }";
    Nginx { worker_connections: 64, server: server.into(), ..Nginx::new(PORT) }.start(&t.server, &scratch.path("nginx"))
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
    let _shadow = Proc::spawn(
        "shadow",
        t.server
            .command(workspace_bin("shadow-testserver").to_str().expect("utf-8"))
            .args(["--listen", &format!("127.0.0.1:{SHADOW_PORT}"), "--response-bytes", "50"])
            .args(["--record", scratch.path("shadow").to_str().expect("utf-8")])
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    wait_for("shadow", Duration::from_secs(10), || t.server.listening(SHADOW_PORT));
    let log = scratch.path("daemon.log");
    let mut daemon = Proc::spawn(
        "shadow-daemon",
        t.server
            .command(workspace_bin("shadow-daemon").to_str().expect("utf-8"))
            .args(["--interface", &t.server_if, "--port", &PORT.to_string(), "--hook", "tc"])
            .args(["--shadow", &format!("127.0.0.1:{SHADOW_PORT}"), "--metrics-addr", METRICS])
            .args(["--allow-method", "GET,POST,PUT", "--max-body-bytes", "16MiB"])
            .args(["--control", scratch.path("control.sock").to_str().expect("utf-8")])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log")),
    );
    wait_for("daemon to attach", Duration::from_secs(30), || {
        std::fs::read_to_string(&log).is_ok_and(|l| l.contains("capturing ports"))
    });

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
