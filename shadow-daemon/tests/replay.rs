//! The replay engine and the metrics endpoint against real sockets on 127.0.0.1: healthy, slow,
//! refusing, resetting and garbage-answering shadows; queue overflow; pool bounds and reuse;
//! byte-exact bodies; promtool on /metrics; the request ledger reconciling.
//!
//! Every server and wait here is bounded in count and time.

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use shadow_daemon::{
    config::Rule,
    correlate::Correlator,
    http::DropReason,
    message::{BodyFraming, CapturedRequest},
    metrics::{Counted, EventReason, Metrics, MetricsServer, RequestCounts, RequestDrop},
    replay::{
        ReplayEngine, Submission, backoff,
        controls::{MethodAllowlist, PathPattern, ReplayControls, ShadowTarget},
    },
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpSocket, TcpStream},
    task::JoinHandle,
};

const SERVICE_PORT: u16 = 8080;
/// Longest any test waits for the engine to settle everything.
const SETTLE: Duration = Duration::from_secs(10);

/// A CapturedRequest from wire bytes (the shared builder: spans as the extraction stage computes them).
fn captured(id: u64, raw: &[u8]) -> CapturedRequest {
    captured_on(id, raw, SERVICE_PORT)
}

fn captured_on(id: u64, raw: &[u8], port: u16) -> CapturedRequest {
    CapturedRequest::builder(raw).id(id).server_port(port).build()
}

/// A request captured on the connection from client port `client_port` to the service.
fn captured_from(id: u64, raw: &[u8], client_port: u16) -> CapturedRequest {
    let flow = shadow_daemon::segment::FlowId {
        client: std::net::SocketAddr::from(([127, 0, 0, 1], client_port)),
        server: std::net::SocketAddr::from(([127, 0, 0, 1], SERVICE_PORT)),
    };
    CapturedRequest::builder(raw).id(id).flow(flow).build()
}

/// The bytes the shadow must receive for `raw` with default controls: the tag line before the
/// blank line, nothing else changed.
fn tagged(raw: &[u8]) -> Vec<u8> {
    let blank = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("head end") + 2;
    let mut v = raw[..blank].to_vec();
    // The tag, and the shadow marker in the W3C baggage (these requests carry none).
    v.extend_from_slice(b"X-Shadow-Request: true\r\nbaggage: shadow=true\r\n");
    v.extend_from_slice(&raw[blank..]);
    v
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Mode {
    /// 200 with a small body; HEAD gets the head only; keep-alive.
    Healthy,
    /// Healthy, after this delay.
    Slow(Duration),
    /// A status line and part of the body, then RST.
    ResetMidResponse,
    /// Not HTTP.
    Garbage,
    /// Answers the first request on each connection; reads the second and closes without an
    /// answer, as a server closing an idle keep-alive connection at that very moment does.
    DropSecondRequest,
    /// Response framing chosen by path: /chunked, /close (no length, then close), /continue
    /// (100 Continue first), /nocontent (204), /huge (declares 1 GiB), /exact (a 64 KiB body),
    /// anything else as Healthy.
    Framing,
    /// A chunked body that never ends (bounded here at 256 MiB, far past any cap under test).
    Endless,
}

/// A shadow on 127.0.0.1 that records every request it reads, byte for byte.
struct Shadow {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    requests: Arc<Mutex<Vec<Vec<u8>>>>,
    task: JoinHandle<()>,
}

impl Shadow {
    async fn start(mode: Mode) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind test shadow");
        Self::serve(listener, mode)
    }

    fn serve(listener: TcpListener, mode: Mode) -> Self {
        let addr = listener.local_addr().expect("local addr");
        let accepted = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let (a, r) = (accepted.clone(), requests.clone());
        let task = tokio::spawn(async move {
            for _ in 0..1000 {
                let Ok((stream, _)) = listener.accept().await else { return };
                a.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(serve_conn(stream, mode, r.clone()));
            }
        });
        Self { addr, accepted, requests, task }
    }

    fn target(&self) -> ShadowTarget {
        ShadowTarget { host: "127.0.0.1".into(), port: self.addr.port() }
    }

    fn requests(&self) -> Vec<Vec<u8>> {
        self.requests.lock().unwrap().clone()
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for Shadow {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Read one whole request (head, then body by Content-Length or chunked) from `buf` + `stream`.
async fn read_request(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Vec<u8>> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(n) = complete_request_len(buf) {
            return Some(buf.drain(..n).collect());
        }
        let mut chunk = [0u8; 8192];
        let left = deadline.checked_duration_since(Instant::now())?;
        match tokio::time::timeout(left, stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return None,
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Length of the first complete request in `buf`, if it is all there.
fn complete_request_len(buf: &[u8]) -> Option<usize> {
    let mut hs = [httparse::EMPTY_HEADER; 64];
    let mut r = httparse::Request::new(&mut hs);
    let head = match r.parse(buf).ok()? {
        httparse::Status::Complete(n) => n,
        httparse::Status::Partial => return None,
    };
    let header = |name: &str| {
        r.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| String::from_utf8_lossy(h.value).to_string())
    };
    if header("transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked")) {
        let mut i = head;
        loop {
            let line_end = buf.get(i..)?.windows(2).position(|w| w == b"\r\n")? + i;
            let size_text = String::from_utf8_lossy(&buf[i..line_end]);
            let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
            i = line_end + 2;
            if size == 0 {
                // Trailer lines until an empty one.
                loop {
                    let e = buf.get(i..)?.windows(2).position(|w| w == b"\r\n")? + i;
                    let empty = e == i;
                    i = e + 2;
                    if empty {
                        return Some(i);
                    }
                }
            }
            i += size + 2;
            if buf.len() < i {
                return None;
            }
        }
    }
    let len: usize = header("content-length").and_then(|v| v.trim().parse().ok()).unwrap_or(0);
    (buf.len() >= head + len).then_some(head + len)
}

async fn serve_conn(mut stream: TcpStream, mode: Mode, requests: Arc<Mutex<Vec<Vec<u8>>>>) {
    let mut buf = Vec::new();
    for n in 0..10_000 {
        let Some(req) = read_request(&mut stream, &mut buf).await else { return };
        let is_head = req.starts_with(b"HEAD ");
        let path = req.split(|&b| b == b' ').nth(1).map(|p| String::from_utf8_lossy(p).to_string()).unwrap_or_default();
        requests.lock().unwrap().push(req);
        let ok: &[u8] = if is_head {
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n"
        } else {
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
        };
        match mode {
            Mode::Healthy => {}
            Mode::DropSecondRequest if n == 1 => return,
            Mode::DropSecondRequest => {}
            Mode::Slow(d) => tokio::time::sleep(d).await,
            Mode::ResetMidResponse => {
                let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial").await;
                tokio::time::sleep(Duration::from_millis(20)).await;
                #[allow(deprecated)] // zero linger: close with RST, which is the point
                let _ = stream.set_linger(Some(Duration::ZERO));
                return;
            }
            Mode::Garbage => {
                let _ = stream.write_all(b"SSH-2.0-OpenSSH_9.2\r\n\r\n").await;
                continue;
            }
            Mode::Endless => {
                let chunk = [b'x'; 16 * 1024];
                let mut frame = format!("{:X}\r\n", chunk.len()).into_bytes();
                frame.extend_from_slice(&chunk);
                frame.extend_from_slice(b"\r\n");
                if stream.write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n").await.is_err() {
                    return;
                }
                for _ in 0..16 * 1024 {
                    if stream.write_all(&frame).await.is_err() {
                        return;
                    }
                }
                return;
            }
            Mode::Framing => {
                let reply: &[u8] = match path.as_str() {
                    "/chunked" => b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3;x=y\r\nabc\r\n10\r\n0123456789abcdef\r\n0\r\nT: 1\r\n\r\n",
                    "/close" => {
                        let _ = stream.write_all(b"HTTP/1.1 200 OK\r\n\r\nbody until close").await;
                        return;
                    }
                    "/continue" => b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n",
                    "/nocontent" => b"HTTP/1.1 204 No Content\r\n\r\n",
                    "/huge" => b"HTTP/1.1 200 OK\r\nContent-Length: 1073741824\r\n\r\n",
                    "/exact" => {
                        let mut r = b"HTTP/1.1 200 OK\r\nContent-Length: 65536\r\n\r\n".to_vec();
                        r.resize(r.len() + 65536, b'e');
                        if stream.write_all(&r).await.is_err() {
                            return;
                        }
                        continue;
                    }
                    _ => ok,
                };
                if stream.write_all(reply).await.is_err() {
                    return;
                }
                continue;
            }
        }
        if stream.write_all(ok).await.is_err() {
            return;
        }
    }
}

fn rule(target: ShadowTarget, controls: ReplayControls) -> Rule {
    Rule::new(vec![SERVICE_PORT], Some(target), controls)
}

/// Wait until `captured` requests are all settled.
async fn settle(metrics: &Metrics, captured: u64) -> RequestCounts {
    let deadline = Instant::now() + SETTLE;
    loop {
        let r = metrics.requests();
        assert!(r.reconciles(), "ledger must reconcile at every moment: {r:?}");
        if r.captured == captured && r.in_flight == 0 {
            return r;
        }
        assert!(Instant::now() < deadline, "not settled within {SETTLE:?}: {r:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn get(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: api.example\r\nAccept: */*\r\nuser-agent:   curl/8.0  \r\n\r\n").into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthy_shadow_gets_exact_tagged_bytes_over_reused_connections() {
    let shadow = Shadow::start(Mode::Healthy).await;
    let metrics = Arc::new(Metrics::new(10));
    let controls = ReplayControls { concurrency: 4, pool_size: 4, ..Default::default() };
    let engine =
        ReplayEngine::start(&[rule(shadow.target(), controls)], Correlator::new(metrics.clone(), None)).unwrap();
    let mut sent = Vec::new();
    for i in 0..40u64 {
        let raw = if i % 10 == 9 {
            format!("HEAD /users/{i} HTTP/1.1\r\nHost: a\r\n\r\n").into_bytes()
        } else {
            get(&format!("/users/{i}?q=1"))
        };
        assert_eq!(engine.submit(captured(i, &raw)), Submission::Queued);
        sent.push(tagged(&raw));
        // Paced so the pool, not luck, decides how many connections there are.
        if i % 4 == 3 {
            settle(&metrics, i + 1).await;
        }
    }
    let r = settle(&metrics, 40).await;
    assert_eq!((r.replayed, r.dropped_total()), (40, 0), "{r:?}");

    let mut got = shadow.requests();
    got.sort();
    sent.sort();
    assert_eq!(got.len(), 40);
    assert_eq!(got, sent, "the shadow received the original bytes plus the tag line, nothing else");
    assert!(shadow.accepted() <= 4, "at most `concurrency` connections, got {}", shadow.accepted());
    let s = metrics.summary();
    assert_eq!(s.shadow_responses["2xx"], 40);
    let text = metrics.encode(shadow_daemon::metrics::TextFormat::Prometheus).unwrap();
    // Requests that waited together went in one write; only the first response of each write
    // is timed.
    let pipelined = sample(&text, "shadow_replay_pipelined_total") as u64;
    assert_eq!(s.shadow.complete.count + pipelined, 40, "every response timed unless read behind another");
    assert_eq!(s.endpoints.iter().map(|e| e.shadow.count).sum::<u64>(), s.shadow.complete.count, "{:?}", s.endpoints);
    let reuses = sample(&text, "shadow_replay_connection_reuses_total");
    assert!(reuses >= 36.0, "requests after the first on each connection reuse it: {reuses}");
    engine.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_stays_bounded_under_concurrent_load() {
    let shadow = Shadow::start(Mode::Slow(Duration::from_millis(30))).await;
    let metrics = Arc::new(Metrics::new(10));
    // One request per replay: the pool, not pipeline depth, decides the connections.
    let controls = ReplayControls { concurrency: 3, pool_size: 2, pipeline: 1, ..Default::default() };
    let engine =
        ReplayEngine::start(&[rule(shadow.target(), controls)], Correlator::new(metrics.clone(), None)).unwrap();
    // Thirty captured connections (one request each), so that they may go three at a time.
    for i in 0..30 {
        assert_eq!(engine.submit(captured_from(i, &get("/x"), 50_000 + i as u16)), Submission::Queued);
    }
    let r = settle(&metrics, 30).await;
    assert_eq!(r.replayed, 30, "{r:?}");
    // Three in flight at a time; with two idle slots, one connection is closed after each burst
    // and reopened, so accepts exceed three but stay far below one per request.
    let accepted = shadow.accepted();
    assert!((3..=15).contains(&accepted), "accepted {accepted}");
    let text = metrics.encode(shadow_daemon::metrics::TextFormat::Prometheus).unwrap();
    assert!(sample(&text, "shadow_replay_connections") <= 2.0, "idle connections kept <= pool_size");
    engine.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_request_bodies_arrive_byte_for_byte() {
    let shadow = Shadow::start(Mode::Healthy).await;
    let metrics = Arc::new(Metrics::new(10));
    let controls = ReplayControls { methods: MethodAllowlist::with_extra(&["POST".into()]), ..Default::default() };
    let engine =
        ReplayEngine::start(&[rule(shadow.target(), controls)], Correlator::new(metrics.clone(), None)).unwrap();
    let mut raw =
        b"POST /upload HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nX-Shadow-Request: spoofed\r\n\r\n".to_vec();
    let payload: Vec<u8> = (0..=255u8).cycle().take(5000).collect();
    for (i, piece) in payload.chunks(1234).enumerate() {
        raw.extend_from_slice(format!("{:X};n={i}\r\n", piece.len()).as_bytes());
        raw.extend_from_slice(piece);
        raw.extend_from_slice(b"\r\n");
    }
    raw.extend_from_slice(b"0\r\nX-Trailer: t\r\n\r\n");
    assert_eq!(engine.submit(captured(1, &raw)), Submission::Queued);
    settle(&metrics, 1).await;
    let got = shadow.requests();
    assert_eq!(got.len(), 1);
    let head_end = |b: &[u8]| b.windows(4).position(|w| w == b"\r\n\r\n").expect("head end") + 4;
    let (sent_head, got_head) = (head_end(&raw), head_end(&got[0]));
    assert_eq!(
        String::from_utf8_lossy(&got[0][..got_head]),
        String::from_utf8_lossy(&raw[..sent_head])
            .replace("X-Shadow-Request: spoofed", "X-Shadow-Request: true")
            .replace("\r\n\r\n", "\r\nbaggage: shadow=true\r\n\r\n"),
        "tag replaced in place, header order kept, the marker added before the blank line"
    );
    assert!(got[0][got_head..] == raw[sent_head..], "chunked body, extensions and trailers unchanged, byte for byte");
    engine.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_down_is_backed_off_then_probed_and_used_when_it_comes_up() {
    // A bound socket that does not listen yet: connections are refused until listen().
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = socket.local_addr().unwrap();
    let target = ShadowTarget { host: "127.0.0.1".into(), port: addr.port() };
    let metrics = Arc::new(Metrics::new(10));
    let controls = ReplayControls { concurrency: 1, ..Default::default() };
    let started = Instant::now();
    let engine = ReplayEngine::start(&[rule(target, controls)], Correlator::new(metrics.clone(), None)).unwrap();
    let failures = backoff::FAILURES_TO_BACK_OFF as u64;
    for i in 0..failures {
        assert_eq!(engine.submit(captured(i, &get("/a"))), Submission::Queued);
        settle(&metrics, i + 1).await;
    }
    let r = metrics.requests();
    assert_eq!(r.dropped[RequestDrop::ShadowError], failures, "{r:?}");
    assert_eq!(metrics.summary().shadow_errors["connect_refused"], failures);

    // Backed off: requests are dropped at submission, but for one probe per period.
    let more = 200;
    let outcomes: Vec<Submission> = (0..more).map(|i| engine.submit(captured(100 + i, &get("/a")))).collect();
    let backed_off = outcomes.iter().filter(|o| **o == Submission::Dropped(RequestDrop::ShadowBackoff)).count() as u64;
    let r = settle(&metrics, failures + more).await;
    let text = metrics.encode(shadow_daemon::metrics::TextFormat::Prometheus).unwrap();
    let labels = format!("rule=\"default\",role=\"shadow\",target=\"{addr}\"");
    let backoffs = sample(&text, &format!("shadow_target_backoffs_total{{{labels}}}")) as u64;
    let refused = sample(&text, &format!("shadow_target_failures_total{{{labels},kind=\"connect_refused\"}}")) as u64;
    // Every attempt was refused: the streak, then one probe per period after the first.
    assert_eq!(refused, failures + backoffs - 1, "{text}");
    assert!(backoffs <= backoff::max_periods_within(started.elapsed()), "{backoffs} periods");
    assert_eq!(r.dropped[RequestDrop::ShadowBackoff], more - (backoffs - 1), "{r:?}");
    assert!(backed_off >= more - (backoffs - 1), "{backed_off}");
    assert_eq!(sample(&text, &format!("shadow_target_backed_off{{{labels}}}")), 1.0);
    assert!(sample(&text, &format!("shadow_target_backoff_seconds{{{labels}}}")) > 0.0);

    // Up again: within a period or so a probe is answered, and the requests flow again.
    let shadow = Shadow::serve(socket.listen(64).unwrap(), Mode::Healthy);
    let mut id = 1000;
    let deadline = Instant::now() + backoff::MAX_DELAY * 2 + SETTLE;
    while metrics.requests().replayed == 0 {
        assert!(Instant::now() < deadline, "no probe got through: {:?}", metrics.requests());
        let _ = engine.submit(captured(id, &get("/a")));
        id += 1;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let before = metrics.requests().replayed;
    let r = settle(&metrics, failures + more + (id - 1000)).await;
    for i in 0..3 {
        assert_eq!(engine.submit(captured(id + i, &get("/a"))), Submission::Queued);
    }
    let r2 = settle(&metrics, r.captured + 3).await;
    assert_eq!(r2.replayed, r.replayed + 3, "{r2:?}");
    assert!(before >= 1 && shadow.requests().len() as u64 == r2.replayed);
    let text = metrics.encode(shadow_daemon::metrics::TextFormat::Prometheus).unwrap();
    assert_eq!(sample(&text, &format!("shadow_target_backed_off{{{labels}}}")), 0.0);
    assert_eq!(sample(&text, &format!("shadow_target_backoff_seconds{{{labels}}}")), 0.0);
    engine.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_past_the_cap_close_the_connection_and_are_counted() {
    let endless = Shadow::start(Mode::Endless).await;
    let framing = Shadow::start(Mode::Framing).await;
    let metrics = Arc::new(Metrics::new(10));
    let controls = ReplayControls { max_response_bytes: Some(65536), ..Default::default() };
    let rules = [
        Rule::new(vec![1001], Some(endless.target()), controls.clone()),
        Rule::new(vec![1002], Some(framing.target()), controls),
    ];
    let engine = ReplayEngine::start(&rules, Correlator::new(metrics.clone(), None)).unwrap();
    // Fewer than the failures that back a target off: each one is tried.
    for i in 0..3 {
        assert_eq!(engine.submit(captured_on(i, &get("/endless"), 1001)), Submission::Queued);
        settle(&metrics, i + 1).await;
    }
    assert_eq!(engine.submit(captured_on(10, &get("/huge"), 1002)), Submission::Queued);
    assert_eq!(engine.submit(captured_on(11, &get("/exact"), 1002)), Submission::Queued);
    let r = settle(&metrics, 5).await;
    assert_eq!(r.dropped[RequestDrop::ShadowResponseTooLarge], 4, "{r:?}");
    assert_eq!(r.replayed, 1, "a body of exactly the cap is read whole: {r:?}");
    assert_eq!(r.dropped[RequestDrop::ShadowError], 0, "{r:?}");
    let text = metrics.encode(shadow_daemon::metrics::TextFormat::Prometheus).unwrap();
    let too_large = |port: u16| {
        sample(
            &text,
            &format!(
                "shadow_target_failures_total{{rule=\"default\",role=\"shadow\",target=\"127.0.0.1:{port}\",kind=\"response_too_large\"}}"
            ),
        )
    };
    assert_eq!(too_large(endless.addr.port()), 3.0);
    assert_eq!(too_large(framing.addr.port()), 1.0);
    // The endless responses' connections were closed, not kept: only the framing shadow's
    // kept-alive one is open.
    assert_eq!(sample(&text, "shadow_replay_connections"), 1.0, "{text}");
    assert_eq!(endless.accepted(), 3);
    engine.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_host_name_is_resolved_at_connect() {
    let shadow = Shadow::start(Mode::Healthy).await;
    let metrics = Arc::new(Metrics::new(10));
    // `localhost` may resolve to ::1 first, where nothing listens: the next address is tried.
    let target: ShadowTarget = format!("localhost:{}", shadow.addr.port()).parse().unwrap();
    let engine =
        ReplayEngine::start(&[rule(target, ReplayControls::default())], Correlator::new(metrics.clone(), None))
            .unwrap();
    assert_eq!(engine.submit(captured(1, &get("/n"))), Submission::Queued);
    let r = settle(&metrics, 1).await;
    assert_eq!(r.replayed, 1, "{r:?}");
    assert_eq!(shadow.requests(), vec![tagged(&get("/n"))]);
    engine.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_shadow_fills_the_queue_without_blocking_and_times_out() {
    let shadow = Shadow::start(Mode::Slow(Duration::from_secs(2))).await;
    let metrics = Arc::new(Metrics::new(10));
    let controls = ReplayControls {
        concurrency: 1,
        queue_capacity: 2,
        request_timeout: Duration::from_millis(300),
        ..Default::default()
    };
    let engine =
        ReplayEngine::start(&[rule(shadow.target(), controls)], Correlator::new(metrics.clone(), None)).unwrap();
    let start = Instant::now();
    let outcomes: Vec<Submission> = (0..20).map(|i| engine.submit(captured(i, &get("/slow")))).collect();
    let took = start.elapsed();
    // Waiting for room would take a 300 ms timeout per slot, 5 s for the 17 that do not fit.
    assert!(took < Duration::from_secs(1), "submit never waits: {took:?}");
    let queued = outcomes.iter().filter(|o| **o == Submission::Queued).count() as u64;
    let full = outcomes.iter().filter(|o| **o == Submission::Dropped(RequestDrop::QueueFull)).count() as u64;
    assert_eq!(queued + full, 20);
    // The queue of 2, plus 1 the dispatcher took, plus one per timeout that freed the slot
    // meanwhile (only on a machine so loaded the loop took that long).
    let most = 3 + (took.as_millis() / 300) as u64;
    assert!((2..=most).contains(&queued), "queued {queued} in {took:?}");

    let r = settle(&metrics, 20).await;
    assert_eq!(r.dropped[RequestDrop::QueueFull], full);
    assert_eq!(r.dropped[RequestDrop::ShadowError], queued, "{r:?}");
    assert_eq!(metrics.summary().shadow_errors["timeout"], queued);
    assert!(r.reconciles());
    engine.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_bytes_are_bounded_too() {
    let shadow = Shadow::start(Mode::Slow(Duration::from_millis(300))).await;
    let metrics = Arc::new(Metrics::new(10));
    let controls = ReplayControls {
        methods: MethodAllowlist::with_extra(&["POST".into()]),
        concurrency: 1,
        queue_capacity: 100,
        queue_bytes: 10_000,
        ..Default::default()
    };
    let engine =
        ReplayEngine::start(&[rule(shadow.target(), controls)], Correlator::new(metrics.clone(), None)).unwrap();
    let body = "x".repeat(3000);
    let post = format!("POST /big HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\n\r\n{body}", body.len());
    let outcomes: Vec<Submission> = (0..10).map(|i| engine.submit(captured(i, post.as_bytes()))).collect();
    // 3 KiB each against a 10 000-byte budget: three are held, in the queue or in flight.
    let queued = outcomes.iter().filter(|o| **o == Submission::Queued).count();
    assert_eq!(queued, 3, "{outcomes:?}");
    assert!(outcomes[3..].iter().all(|o| *o == Submission::Dropped(RequestDrop::QueueFull)));
    let r = settle(&metrics, 10).await;
    assert_eq!((r.replayed, r.dropped[RequestDrop::QueueFull]), (3, 7), "{r:?}");
    // Once replayed, the bytes are released for new requests.
    assert_eq!(engine.submit(captured(10, post.as_bytes())), Submission::Queued);
    settle(&metrics, 11).await;
    engine.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_shadow_within_the_timeout_is_measured() {
    let shadow = Shadow::start(Mode::Slow(Duration::from_secs(2))).await;
    let metrics = Arc::new(Metrics::new(10));
    let engine = ReplayEngine::start(
        &[rule(shadow.target(), ReplayControls::default())],
        Correlator::new(metrics.clone(), None),
    )
    .unwrap();
    assert_eq!(engine.submit(captured(1, &get("/slow"))), Submission::Queued);
    let r = settle(&metrics, 1).await;
    assert_eq!(r.replayed, 1, "{r:?}");
    let s = metrics.summary();
    assert!(s.shadow.first_byte.p50_ms >= 1900.0, "{:?}", s.shadow);
    assert!(s.shadow.complete.max_ms < 4000.0, "{:?}", s.shadow);
    engine.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_and_garbage_are_counted_by_kind() {
    let reset = Shadow::start(Mode::ResetMidResponse).await;
    let garbage = Shadow::start(Mode::Garbage).await;
    let metrics = Arc::new(Metrics::new(10));
    // One request per write: each reaches the shadow exactly once (in a pipeline, the ones
    // behind a failed response fail with it once written twice; tests/pipeline.rs).
    let one = || ReplayControls { pipeline: 1, ..Default::default() };
    let rules =
        [Rule::new(vec![1001], Some(reset.target()), one()), Rule::new(vec![1002], Some(garbage.target()), one())];
    let engine = ReplayEngine::start(&rules, Correlator::new(metrics.clone(), None)).unwrap();
    for i in 0..3 {
        assert_eq!(engine.submit(captured_on(i, &get("/r"), 1001)), Submission::Queued);
        assert_eq!(engine.submit(captured_on(100 + i, &get("/g"), 1002)), Submission::Queued);
    }
    let r = settle(&metrics, 6).await;
    assert_eq!(r.dropped[RequestDrop::ShadowError], 6, "{r:?}");
    let s = metrics.summary();
    assert_eq!(s.shadow_errors["reset"], 3, "{:?}", s.shadow_errors);
    assert_eq!(s.shadow_errors["bad_response"], 3, "{:?}", s.shadow_errors);
    assert_eq!(reset.requests().len(), 3);
    engine.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_framings_are_followed_and_connections_reused_where_possible() {
    let shadow = Shadow::start(Mode::Framing).await;
    let metrics = Arc::new(Metrics::new(10));
    let controls = ReplayControls { concurrency: 1, ..Default::default() };
    let engine =
        ReplayEngine::start(&[rule(shadow.target(), controls)], Correlator::new(metrics.clone(), None)).unwrap();
    let paths = ["/chunked", "/continue", "/nocontent", "/plain", "/chunked", "/close", "/plain"];
    for (i, p) in paths.iter().enumerate() {
        let raw = if *p == "/plain" { format!("HEAD {p} HTTP/1.1\r\nHost: a\r\n\r\n").into_bytes() } else { get(p) };
        assert_eq!(engine.submit(captured(i as u64, &raw)), Submission::Queued);
        settle(&metrics, i as u64 + 1).await;
    }
    let r = metrics.requests();
    assert_eq!(r.replayed, paths.len() as u64, "{r:?}");
    let s = metrics.summary();
    assert_eq!((s.shadow_responses["2xx"], s.shadow_errors.values().sum::<u64>()), (7, 0), "{s:?}");
    // One connection for everything up to /close, which the shadow ends; one more after it.
    assert_eq!(shadow.accepted(), 2);
    engine.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_the_shadow_read_before_closing_is_never_sent_again() {
    // The shadow answers the first request of each connection and closes on reading the second.
    // It had that request (its TCP acknowledged it, its process read it): whatever the method,
    // it fails once and is not written to the shadow again. (A connection the shadow closed
    // before the request reached it is the case that goes again: `replay::pipeline` tests the
    // rule, `replay::conn` the kernel's count it rests on.)
    let shadow = Shadow::start(Mode::DropSecondRequest).await;
    let metrics = Arc::new(Metrics::new(10));
    let controls =
        ReplayControls { concurrency: 1, methods: MethodAllowlist::with_extra(&["POST".into()]), ..Default::default() };
    let engine =
        ReplayEngine::start(&[rule(shadow.target(), controls)], Correlator::new(metrics.clone(), None)).unwrap();
    let post = b"POST /once HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\n\r\nx";
    let requests = [get("/idem"), get("/idem2"), post.to_vec(), post.to_vec()];
    for (i, req) in requests.iter().enumerate() {
        assert_eq!(engine.submit(captured(i as u64, req)), Submission::Queued);
        settle(&metrics, i as u64 + 1).await;
    }
    let r = metrics.requests();
    // Connection 1: /idem answered, /idem2 read and not answered; connection 2: the first POST
    // answered, the second read and not answered.
    assert_eq!((r.replayed, r.dropped[RequestDrop::ShadowError]), (2, 2), "{r:?}");
    assert_eq!(metrics.summary().shadow_errors["reset"], 2);
    let text = metrics.encode(shadow_daemon::metrics::TextFormat::Prometheus).unwrap();
    assert_eq!(sample(&text, "shadow_replay_retries_total"), 0.0);
    assert_eq!(shadow.accepted(), 2);
    assert_eq!(shadow.requests().len(), 4, "each request reached the shadow once");
    engine.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controls_drop_before_the_queue_and_count_reasons() {
    let shadow = Shadow::start(Mode::Healthy).await;
    let metrics = Arc::new(Metrics::new(10));
    let controls = ReplayControls {
        deny_paths: vec![PathPattern::parse("/admin").unwrap()],
        max_body_bytes: 4,
        replay_rate: Some(5.0),
        ..Default::default()
    };
    let started = Instant::now();
    let engine = ReplayEngine::start(
        &[rule(shadow.target(), controls), Rule::new(vec![9999], None, ReplayControls::default())],
        Correlator::new(metrics.clone(), None),
    )
    .unwrap();
    let post = b"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhi";
    assert_eq!(engine.submit(captured(1, post)), Submission::Dropped(RequestDrop::MethodNotAllowed));
    assert_eq!(engine.submit(captured(2, &get("/x/../admin/users"))), Submission::Dropped(RequestDrop::PathDenied));
    let big = b"OPTIONS /a HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello";
    assert_eq!(engine.submit(captured(3, big)), Submission::Dropped(RequestDrop::BodyTooLarge));
    assert_eq!(engine.submit(captured_on(4, &get("/a"), 9999)), Submission::Dropped(RequestDrop::NoTarget));
    assert_eq!(engine.submit(captured_on(5, &get("/a"), 1)), Submission::Dropped(RequestDrop::NoTarget));
    let outcomes: Vec<Submission> = (10..40).map(|i| engine.submit(captured(i, &get("/ok")))).collect();
    let queued = outcomes.iter().filter(|o| **o == Submission::Queued).count();
    // A burst of one second's worth at 5/s, plus what refilled since the engine started.
    let most = 5 + (started.elapsed().as_secs_f64() * 5.0).ceil() as usize;
    assert!((5..=most).contains(&queued), "queued {queued}, at most {most}");
    let r = settle(&metrics, 35).await;
    assert_eq!(r.replayed, queued as u64);
    assert_eq!(r.dropped[RequestDrop::RateLimited], 30 - queued as u64);
    for (reason, n) in [
        (RequestDrop::MethodNotAllowed, 1),
        (RequestDrop::PathDenied, 1),
        (RequestDrop::BodyTooLarge, 1),
        (RequestDrop::NoTarget, 2),
    ] {
        assert_eq!(r.dropped[reason], n, "{reason}");
    }
    assert_eq!(shadow.requests().len(), queued, "refused requests never reach the shadow");
    engine.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_settles_everything_and_refuses_new_requests() {
    let shadow = Shadow::start(Mode::Slow(Duration::from_secs(2))).await;
    let metrics = Arc::new(Metrics::new(10));
    let controls = ReplayControls { concurrency: 1, queue_capacity: 10, ..Default::default() };
    let engine =
        ReplayEngine::start(&[rule(shadow.target(), controls)], Correlator::new(metrics.clone(), None)).unwrap();
    for i in 0..4 {
        assert_eq!(engine.submit(captured(i, &get("/a"))), Submission::Queued);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let start = Instant::now();
    engine.shutdown(Duration::from_millis(200)).await;
    assert!(start.elapsed() < Duration::from_secs(1), "shutdown is bounded by its grace: {:?}", start.elapsed());
    let r = metrics.requests();
    assert_eq!((r.captured, r.in_flight, r.dropped[RequestDrop::Shutdown]), (4, 0, 4), "{r:?}");
    assert_eq!(engine.submit(captured(9, &get("/a"))), Submission::Dropped(RequestDrop::Shutdown));
    assert!(metrics.requests().reconciles());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn primary_latency_is_recorded_per_endpoint() {
    let metrics = Arc::new(Metrics::new(10));
    let correlator = Correlator::new(metrics.clone(), None);
    let engine =
        ReplayEngine::start(&[Rule::new(vec![SERVICE_PORT], None, ReplayControls::default())], correlator.clone())
            .unwrap();
    let req = captured(7, &get("/orders/123"));
    let flow = req.flow;
    engine.submit(req);
    let resp = |request_id| shadow_daemon::message::CapturedResponse {
        flow,
        request_id,
        status: 200,
        minor_version: 1,
        head: Bytes::from_static(b"HTTP/1.1 200 OK\r\n\r\n"),
        framing: BodyFraming::ContentLength(0),
        body_len: 0,
        body: Bytes::new(),
        body_complete: true,
        first_ts_ns: 5_000_000,
        last_ts_ns: 9_000_000,
        request_last_ts_ns: 1_000_000,
    };
    correlator.primary(&resp(7));
    correlator.primary(&resp(8));
    let s = metrics.summary();
    assert_eq!(s.primary.complete.count, 2);
    assert_eq!(s.primary_unmatched, 1);
    let e = s.endpoints.iter().find(|e| e.endpoint == "GET /orders/:id").expect("endpoint");
    assert_eq!(e.primary.count, 1);
    assert!((7.9..=8.1).contains(&e.primary.p50_ms), "{:?}", e.primary);
    assert!((3.9..=4.1).contains(&s.primary.first_byte.p50_ms), "{:?}", s.primary);
}

fn sample(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(' ')).and_then(|v| v.trim().parse().ok()))
        .unwrap_or_else(|| panic!("no sample {name} in:\n{text}"))
}

/// One HTTP/1.1 exchange with the metrics endpoint: (status line, headers, body).
async fn http_get(addr: SocketAddr, request: &str) -> (String, String, String) {
    let mut s = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr)).await.unwrap().unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await.expect("reply within 5 s").unwrap();
    let text = String::from_utf8(out).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("a head");
    let (status, headers) = head.split_once("\r\n").unwrap_or((head, ""));
    (status.to_owned(), headers.to_owned(), body.to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_endpoint_passes_promtool_and_reconciles() {
    let shadow = Shadow::start(Mode::Healthy).await;
    let metrics = Arc::new(Metrics::new(10));
    let engine = ReplayEngine::start(
        &[rule(shadow.target(), ReplayControls::default())],
        Correlator::new(metrics.clone(), None),
    )
    .unwrap();
    for i in 0..10 {
        let _ = engine.submit(captured(i, &get(&format!("/items/{i}"))));
    }
    let _ = engine.submit(captured(10, b"DELETE /items/1 HTTP/1.1\r\nHost: a\r\n\r\n"));
    metrics.record_extraction_drop(DropReason::Gap);
    metrics.record_extraction_drop(DropReason::ParseError);
    metrics.set_kernel_counters(&[("packets_seen", 100), ("ringbuf_full", 1)]);
    metrics.set_extraction_stats(&[
        (EventReason::Dropped(DropReason::Gap), Counted::Requests, 1),
        (EventReason::Dropped(DropReason::ParseError), Counted::Responses, 1),
    ]);
    metrics.set_flows(3);
    metrics.set_buffered_bytes(1234);
    settle(&metrics, 13).await;
    let server = MetricsServer::bind("127.0.0.1:0".parse().unwrap(), metrics.clone()).await.unwrap();
    let addr = server.local_addr();

    let (status, headers, body) = http_get(addr, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(headers.to_ascii_lowercase().contains("content-type: text/plain; version=0.0.4"), "{headers}");
    let captured_total = sample(&body, "shadow_requests_captured_total");
    let replayed = sample(&body, "shadow_requests_replayed_total");
    let in_flight = sample(&body, "shadow_requests_in_flight");
    let dropped: f64 = body
        .lines()
        .filter(|l| l.starts_with("shadow_requests_dropped_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!((captured_total, replayed, dropped, in_flight), (13.0, 10.0, 3.0, 0.0));
    assert_eq!(captured_total, replayed + dropped + in_flight);
    assert_eq!(sample(&body, "shadow_kernel_packets_seen_total"), 100.0);
    assert_eq!(sample(&body, "shadow_requests_dropped_total{reason=\"method_not_allowed\"}"), 1.0);
    promtool_check(&body);

    let (status, headers, body) = http_get(
        addr,
        "GET /metrics HTTP/1.1\r\nAccept: application/openmetrics-text;version=1.0.0,text/plain;q=0.5\r\n\r\n",
    )
    .await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(headers.contains("application/openmetrics-text"), "{headers}");
    assert!(body.ends_with("# EOF\n"));

    let (status, _, body) = http_get(addr, "HEAD /metrics HTTP/1.1\r\n\r\n").await;
    assert_eq!((status.as_str(), body.as_str()), ("HTTP/1.1 200 OK", ""));
    assert_eq!(http_get(addr, "GET /healthz HTTP/1.1\r\n\r\n").await.0, "HTTP/1.1 200 OK");
    assert_eq!(http_get(addr, "GET /readyz HTTP/1.1\r\n\r\n").await.0, "HTTP/1.1 503 Service Unavailable");
    metrics.set_ready(true);
    assert_eq!(http_get(addr, "GET /readyz HTTP/1.1\r\n\r\n").await.0, "HTTP/1.1 200 OK");
    assert_eq!(http_get(addr, "GET /nope HTTP/1.1\r\n\r\n").await.0, "HTTP/1.1 404 Not Found");
    let (status, headers, _) = http_get(addr, "POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n").await;
    assert_eq!(status, "HTTP/1.1 405 Method Not Allowed");
    assert!(headers.to_ascii_lowercase().contains("allow: get, head"), "{headers}");
    assert_eq!(http_get(addr, "\x01\x02 garbage\r\n\r\n").await.0, "HTTP/1.1 400 Bad Request");
    let huge = format!("GET /metrics HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(10_000));
    assert_eq!(http_get(addr, &huge).await.0, "HTTP/1.1 431 Request Header Fields Too Large");

    server.shutdown().await;
    assert!(TcpStream::connect(addr).await.is_err(), "the listener is closed after shutdown");
    engine.shutdown(Duration::from_secs(1)).await;
}

/// `promtool check metrics` on the exposition, when promtool is installed; required when
/// SHADOW_REQUIRE_TOOLS=1.
fn promtool_check(body: &str) {
    use std::{io::Write, process::Command};
    let promtool = std::path::Path::new("/usr/bin/promtool");
    if !promtool.exists() {
        assert!(
            std::env::var("SHADOW_REQUIRE_TOOLS").as_deref() != Ok("1"),
            "SHADOW_REQUIRE_TOOLS=1 but /usr/bin/promtool is missing: apt-get install -y prometheus"
        );
        eprintln!("skipping promtool check: /usr/bin/promtool not installed");
        return;
    }
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run promtool");
    child.stdin.take().expect("stdin").write_all(body.as_bytes()).expect("feed promtool");
    let out = child.wait_with_output().expect("promtool finishes");
    assert!(
        out.status.success(),
        "promtool check metrics failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The traffic's shape: requests captured on one client connection reach the shadow one at a
/// time, each after the one before it is answered, whatever the lane's concurrency; requests of
/// other connections go beside them. A client that sent six requests one after another is not a
/// burst of three at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_of_one_captured_connection_reach_the_shadow_one_at_a_time() {
    let shadow = Shadow::start(Mode::Slow(Duration::from_millis(30))).await;
    let metrics = Arc::new(Metrics::new(10));
    let controls = ReplayControls { concurrency: 3, pool_size: 4, ..Default::default() };
    let engine =
        ReplayEngine::start(&[rule(shadow.target(), controls)], Correlator::new(metrics.clone(), None)).unwrap();
    for i in 0..6 {
        assert_eq!(engine.submit(captured_from(i, &get(&format!("/one/{i}")), 40_000)), Submission::Queued);
    }
    let r = settle(&metrics, 6).await;
    assert_eq!(r.replayed, 6, "{r:?}");
    assert_eq!(shadow.accepted(), 1, "one at a time: one connection, kept alive");
    let paths: Vec<String> = shadow
        .requests()
        .iter()
        .map(|r| String::from_utf8_lossy(r).split(' ').nth(1).unwrap_or_default().to_owned())
        .collect();
    assert_eq!(paths, (0..6).map(|i| format!("/one/{i}")).collect::<Vec<_>>(), "in the order captured");
    // Two connections: two at a time.
    for i in 0..6 {
        let port = 40_001 + (i % 2) as u16;
        assert_eq!(engine.submit(captured_from(10 + i, &get("/two"), port)), Submission::Queued);
    }
    let r = settle(&metrics, 12).await;
    assert_eq!(r.replayed, 12, "{r:?}");
    assert_eq!(shadow.accepted(), 2, "a second connection for the second client, never a third");
    engine.shutdown(Duration::from_secs(1)).await;
}

/// A reload that gives a rule another shadow target retires the old engine's lane from the
/// comparison (`ReplayEngine::retire_compare`) and starts the rule's next epoch: what that lane
/// still sends is replayed as before, but its answers join no epoch: dropped and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retired_lanes_answers_join_no_epoch() {
    use shadow_daemon::{
        compare::{CompareSettings, EpochReason, pairs::PairLimits},
        hub::CompareHub,
        message::CapturedResponse,
        rule::RuleId,
        segment::FlowId,
    };
    let shadow = Shadow::start(Mode::Healthy).await;
    let metrics = Arc::new(Metrics::new(10));
    let settings = CompareSettings::default();
    let hub = CompareHub::new(&[("api".to_owned(), Some(&settings))], PairLimits::default(), metrics.clone())
        .unwrap()
        .expect("the rule compares");
    hub.open(None);
    let correlator = Correlator::new(metrics.clone(), Some(hub.clone()));
    let engine = ReplayEngine::start(&[rule(shadow.target(), ReplayControls::default())], correlator.clone()).unwrap();
    let primary = |id: u64| CapturedResponse {
        flow: FlowId { client: "10.0.0.1:40000".parse().unwrap(), server: "10.0.0.2:8080".parse().unwrap() },
        request_id: id,
        status: 200,
        minor_version: 1,
        head: Bytes::from_static(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n"),
        framing: BodyFraming::ContentLength(2),
        body_len: 2,
        body: Bytes::from_static(b"ok"),
        body_complete: true,
        first_ts_ns: 2_000_000,
        last_ts_ns: 3_000_000,
        request_last_ts_ns: 1_000_000,
    };
    let samples = |hub: &CompareHub| hub.report().rules[0].report.overall.samples;
    // The shadow half comes from the lane's task, just after the request is settled: wait for
    // it, then hand over the primary's, which pairs and judges at once.
    async fn pair_up(correlator: &Correlator, primary: CapturedResponse) -> bool {
        let hub = correlator.hub().expect("compares");
        let deadline = Instant::now() + SETTLE;
        while hub.report().pairs.waiting == 0 {
            assert!(Instant::now() < deadline, "no shadow half within {SETTLE:?}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        correlator.primary(&primary);
        hub.report().pairs.waiting == 0
    }

    assert_eq!(engine.submit(captured(1, &get("/a"))), Submission::Queued);
    settle(&metrics, 1).await;
    assert!(pair_up(&correlator, primary(1)).await, "paired");
    assert_eq!(samples(&hub), 1);

    engine.retire_compare(RuleId::new(0));
    let e = hub.start_epoch(RuleId::new(0), EpochReason::Target).expect("epoch");
    assert_eq!(e.epoch.number, 2);
    assert_eq!(engine.submit(captured(2, &get("/b"))), Submission::Queued);
    let r = settle(&metrics, 2).await;
    assert_eq!(r.replayed, 2, "the retired lane still replays: {r:?}");
    assert!(pair_up(&correlator, primary(2)).await, "paired");
    let report = hub.report();
    let epoch = report.rules[0].report.epoch.as_ref().expect("epoch");
    assert_eq!((samples(&hub), epoch.number, epoch.dropped_in_flight), (0, 2, 1));
    let text = metrics.encode(shadow_daemon::metrics::TextFormat::Prometheus).unwrap();
    assert_eq!(sample(&text, r#"shadow_compare_unpaired_total{reason="epoch"}"#), 1.0);
    engine.shutdown(Duration::from_secs(1)).await;
}
