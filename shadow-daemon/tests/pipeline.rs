//! Pipelines to the shadow (`replay::pipeline`) against a scripted server on 127.0.0.1: requests
//! that wait together go in one write and are settled one by one; writes are never pipelined;
//! a shadow closing, failing or stalling part way through a pipeline.
//!
//! Batches are made deterministic by holding the first request's answer until the rest are
//! queued behind it (one replay slot), then releasing it: the dispatcher then finds them all
//! waiting. Every wait here is for a condition, bounded in time.

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use shadow_daemon::{
    config::Rule,
    correlate::Correlator,
    message::CapturedRequest,
    metrics::{Metrics, RequestCounts, RequestDrop, TextFormat},
    replay::{
        ReplayEngine, Submission,
        controls::{MethodAllowlist, ReplayControls, ShadowTarget},
    },
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::Notify,
};

const SERVICE_PORT: u16 = 8080;
const SETTLE: Duration = Duration::from_secs(10);

/// What the scripted shadow does with the `n`-th request (from 0) of its `c`-th connection.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Reply {
    Ok,
    /// Answer once the test releases the gate.
    Hold,
    /// Never answer (the connection stays open until the test ends).
    Stall,
    /// Close without answering (after reading this request).
    Close,
    /// Answer after this long.
    After(Duration),
    /// Not HTTP, then go on reading.
    Garbage,
}

type Script = fn(usize, usize) -> Reply;
/// Every request the shadow read, with the index of its connection.
type Log = Arc<Mutex<Vec<(usize, Vec<u8>)>>>;

/// A shadow that logs every request it reads as (connection, bytes) and answers by a script.
struct Scripted {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    log: Log,
    gate: Arc<Notify>,
    task: tokio::task::JoinHandle<()>,
}

impl Scripted {
    async fn start(script: Script) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let accepted = Arc::new(AtomicUsize::new(0));
        let log = Arc::new(Mutex::new(Vec::new()));
        let gate = Arc::new(Notify::new());
        let (a, l, g) = (accepted.clone(), log.clone(), gate.clone());
        let task = tokio::spawn(async move {
            for c in 0..100 {
                let Ok((stream, _)) = listener.accept().await else { return };
                a.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(serve(stream, c, script, l.clone(), g.clone()));
            }
        });
        Self { addr, accepted, log, gate, task }
    }

    fn target(&self) -> ShadowTarget {
        ShadowTarget { host: "127.0.0.1".into(), port: self.addr.port() }
    }

    fn log(&self) -> Vec<(usize, Vec<u8>)> {
        self.log.lock().unwrap().clone()
    }

    async fn wait_for_requests(&self, n: usize) {
        let deadline = Instant::now() + SETTLE;
        while self.log.lock().unwrap().len() < n {
            assert!(Instant::now() < deadline, "the shadow did not get {n} requests: {:?}", self.log());
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

impl Drop for Scripted {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(mut s: TcpStream, c: usize, script: Script, log: Log, gate: Arc<Notify>) {
    let mut buf = Vec::new();
    for n in 0..1000 {
        let req = loop {
            if let Some(len) = request_len(&buf) {
                break buf.drain(..len).collect::<Vec<u8>>();
            }
            let mut chunk = [0u8; 4096];
            match tokio::time::timeout(SETTLE, s.read(&mut chunk)).await {
                Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return,
                Ok(Ok(k)) => buf.extend_from_slice(&chunk[..k]),
            }
        };
        log.lock().unwrap().push((c, req));
        let ok: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
        match script(c, n) {
            Reply::Ok => {}
            Reply::Hold => gate.notified().await,
            Reply::Stall => {
                tokio::time::sleep(SETTLE).await;
                return;
            }
            Reply::Close => return,
            Reply::After(d) => tokio::time::sleep(d).await,
            // Whether or not the garbage reaches the client (it closes the connection on the
            // first), every request the shadow already has is still read and logged: the log is
            // what the shadow received, not what it managed to answer.
            Reply::Garbage => {
                let _ = s.write_all(b"SSH-2.0-OpenSSH_9.2\r\n\r\n").await;
                continue;
            }
        }
        // A failed write (the client closed) ends nothing: what is buffered or queued is still
        // read and logged, until the read says the connection is over.
        let _ = s.write_all(ok).await;
    }
}

/// Length of the first whole request in `buf` (head and Content-Length body).
fn request_len(buf: &[u8]) -> Option<usize> {
    let mut hs = [httparse::EMPTY_HEADER; 32];
    let mut r = httparse::Request::new(&mut hs);
    let httparse::Status::Complete(head) = r.parse(buf).ok()? else { return None };
    let len = r
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
        .and_then(|h| std::str::from_utf8(h.value).ok()?.trim().parse::<usize>().ok())
        .unwrap_or(0);
    (buf.len() >= head + len).then_some(head + len)
}

fn request(id: u64, method: &str, path: &str) -> CapturedRequest {
    let raw = if method == "POST" {
        format!("POST {path} HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc")
    } else {
        format!("{method} {path} HTTP/1.1\r\nHost: a\r\n\r\n")
    };
    CapturedRequest::builder(raw.as_bytes()).id(id).server_port(SERVICE_PORT).build()
}

/// The bytes the shadow gets for `req`: its own, with the tag line.
fn tagged(req: &CapturedRequest) -> Vec<u8> {
    let raw = &req.raw[..];
    let blank = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("head end") + 2;
    let mut v = raw[..blank].to_vec();
    // The tag, and the shadow marker in the W3C baggage (these requests carry none).
    v.extend_from_slice(b"X-Shadow-Request: true\r\nbaggage: shadow=true\r\n");
    v.extend_from_slice(&raw[blank..]);
    v
}

async fn settle(metrics: &Metrics, captured: u64) -> RequestCounts {
    let deadline = Instant::now() + SETTLE;
    loop {
        let r = metrics.requests();
        assert!(r.reconciles(), "{r:?}");
        if r.captured == captured && r.in_flight == 0 {
            return r;
        }
        assert!(Instant::now() < deadline, "not settled: {r:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn counter(metrics: &Metrics, name: &str) -> u64 {
    let text = metrics.encode(TextFormat::Prometheus).expect("encode");
    text.lines()
        .find(|l| l.split(' ').next() == Some(name))
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("{name} not in the scrape")) as u64
}

/// One replay slot; request 0 is held at the shadow while `rest` are queued behind it, then
/// released. Returns the engine, its metrics and every request submitted (0 first).
async fn held_then(
    shadow: &Scripted,
    controls: ReplayControls,
    rest: &[(&str, &str)],
) -> (ReplayEngine, Arc<Metrics>, Vec<CapturedRequest>) {
    let metrics = Arc::new(Metrics::new(10));
    let controls = ReplayControls { concurrency: 1, pool_size: 4, ..controls };
    let rule = Rule::new(vec![SERVICE_PORT], Some(shadow.target()), controls);
    let engine = ReplayEngine::start(&[rule], Correlator::new(metrics.clone(), None)).expect("engine");
    let mut all = vec![request(0, "GET", "/held")];
    assert_eq!(engine.submit(all[0].clone()), Submission::Queued);
    shadow.wait_for_requests(1).await;
    for (i, (method, path)) in rest.iter().enumerate() {
        let r = request(i as u64 + 1, method, path);
        assert_eq!(engine.submit(r.clone()), Submission::Queued);
        all.push(r);
    }
    shadow.gate.notify_one();
    (engine, metrics, all)
}

/// Pipelining turned on (it is off by default), at the depth the bench uses.
fn piped() -> ReplayControls {
    ReplayControls { pipeline: shadow_daemon::replay::pipeline::OPT_IN_PIPELINE, ..Default::default() }
}

fn gets(n: usize) -> Vec<(&'static str, &'static str)> {
    const PATHS: [&str; 8] = ["/b", "/c", "/d", "/e", "/f", "/g", "/h", "/i"];
    PATHS[..n].iter().map(|p| ("GET", *p)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_waiting_together_go_in_one_write_and_each_is_timed() {
    let shadow = Scripted::start(|c, n| if (c, n) == (0, 0) { Reply::Hold } else { Reply::Ok }).await;
    let (engine, metrics, all) = held_then(&shadow, piped(), &gets(8)).await;
    let r = settle(&metrics, 9).await;
    assert_eq!((r.replayed, r.dropped_total()), (9, 0), "{r:?}");
    let want: Vec<(usize, Vec<u8>)> = all.iter().map(|q| (0, tagged(q))).collect();
    assert_eq!(shadow.log(), want, "in order, exact bytes, one connection");
    assert_eq!(shadow.accepted.load(Ordering::SeqCst), 1);
    assert_eq!(counter(&metrics, "shadow_replay_pipelined_total"), 7, "eight in one write: seven behind the first");
    assert_eq!(counter(&metrics, "shadow_replay_connection_reuses_total"), 8);
    assert_eq!(counter(&metrics, "shadow_replay_retries_total"), 0);
    assert_eq!(counter(&metrics, "shadow_replay_writes_total"), 2, "the held request, then the eight");
    let s = metrics.summary();
    assert_eq!((s.replay_writes, s.replay_pipelined), (2, 7));
    assert!(
        s.to_string().contains("writes to the shadow: 2 (7 requests behind another in a pipeline; 4.50 per write)")
    );
    assert_eq!(s.shadow_responses["2xx"], 9);
    assert_eq!(s.shadow.complete.count, 9, "every response is timed, each for its own request");
    engine.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipeline_of_one_is_the_depth_when_set_to_one() {
    let shadow = Scripted::start(|c, n| if (c, n) == (0, 0) { Reply::Hold } else { Reply::Ok }).await;
    let controls = ReplayControls { pipeline: 1, ..Default::default() };
    let (engine, metrics, all) = held_then(&shadow, controls, &gets(4)).await;
    let r = settle(&metrics, 5).await;
    assert_eq!((r.replayed, r.dropped_total()), (5, 0), "{r:?}");
    assert_eq!(shadow.log(), all.iter().map(|q| (0, tagged(q))).collect::<Vec<_>>());
    assert_eq!(counter(&metrics, "shadow_replay_pipelined_total"), 0);
    assert_eq!(metrics.summary().shadow.complete.count, 5, "every request timed");
    engine.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_are_never_pipelined() {
    let shadow = Scripted::start(|c, n| if (c, n) == (0, 0) { Reply::Hold } else { Reply::Ok }).await;
    let controls = ReplayControls { methods: MethodAllowlist::with_extra(&["POST".to_owned()]), ..piped() };
    let rest = [("GET", "/b"), ("GET", "/c"), ("POST", "/d"), ("GET", "/e"), ("GET", "/f")];
    let (engine, metrics, all) = held_then(&shadow, controls, &rest).await;
    let r = settle(&metrics, 6).await;
    assert_eq!((r.replayed, r.dropped_total()), (6, 0), "{r:?}");
    assert_eq!(shadow.log(), all.iter().map(|q| (0, tagged(q))).collect::<Vec<_>>(), "in order on one connection");
    // Writes: [held], [b, c], [POST d] alone, [e, f].
    assert_eq!(counter(&metrics, "shadow_replay_pipelined_total"), 2);
    assert_eq!(metrics.summary().shadow.complete.count, 6);
    engine.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shadow_closing_part_way_fails_what_it_had_and_gets_nothing_twice() {
    // Connection 0 answers the held request, /b and /c, then closes on reading /d (as a server
    // at its keep-alive limit that does not say so), having read /d to /i: its TCP acknowledged
    // all of them, so none may go again.
    let shadow = Scripted::start(|c, n| match (c, n) {
        (0, 0) => Reply::Hold,
        (0, 3) => Reply::Close,
        _ => Reply::Ok,
    })
    .await;
    let (engine, metrics, all) = held_then(&shadow, piped(), &gets(8)).await;
    let r = settle(&metrics, 9).await;
    assert_eq!(r.replayed, 3, "{r:?}");
    assert_eq!((r.dropped[RequestDrop::ShadowError], r.dropped_total()), (6, 6), "/d to /i, once each: {r:?}");
    assert_eq!(shadow.log(), all[..4].iter().map(|q| (0, tagged(q))).collect::<Vec<_>>(), "read once, never again");
    assert_eq!(shadow.accepted.load(Ordering::SeqCst), 1, "no second connection");
    assert_eq!(counter(&metrics, "shadow_replay_retries_total"), 0);
    assert_eq!(counter(&metrics, "shadow_replay_writes_total"), 2, "held, the eight");
    assert_eq!(metrics.summary().shadow_errors["reset"], 6, "closed before their responses");
    engine.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_response_in_a_pipeline_fails_it_and_the_ones_behind_it_once() {
    let shadow = Scripted::start(|c, n| match (c, n) {
        (0, 0) => Reply::Hold,
        (0, 2) => Reply::Garbage,
        _ => Reply::Ok,
    })
    .await;
    let (engine, metrics, all) = held_then(&shadow, piped(), &gets(8)).await;
    let r = settle(&metrics, 9).await;
    // /c's answer is garbage: nothing after it on that connection can be read as a response,
    // and the shadow had /d to /i (it read them all): they fail with /c, and go nowhere again.
    assert_eq!(r.replayed, 2, "{r:?}");
    assert_eq!((r.dropped[RequestDrop::ShadowError], r.dropped_total()), (7, 7), "{r:?}");
    shadow.wait_for_requests(all.len()).await;
    assert_eq!(shadow.log(), all.iter().map(|q| (0, tagged(q))).collect::<Vec<_>>(), "each once, on one connection");
    assert_eq!(shadow.accepted.load(Ordering::SeqCst), 1);
    assert_eq!(counter(&metrics, "shadow_replay_retries_total"), 0);
    assert_eq!(metrics.summary().shadow_errors["bad_response"], 7);
    engine.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_on_a_head_response_fails_it_and_shifts_nothing() {
    // The scripted shadow answers every request with a two-byte body, HEAD too: a shadow bug.
    // Pipelined, the body after a HEAD's response must not be read as the next response, and
    // nothing the shadow had is written to it again.
    let shadow = Scripted::start(|c, n| if (c, n) == (0, 0) { Reply::Hold } else { Reply::Ok }).await;
    let rest = [("GET", "/b"), ("HEAD", "/c"), ("GET", "/d"), ("HEAD", "/e"), ("GET", "/f")];
    let (engine, metrics, all) = held_then(&shadow, piped(), &rest).await;
    let r = settle(&metrics, 6).await;
    // /b answered; /c's response has a body: a bad response, and the connection is done; /d, /e
    // and /f were read by the shadow (acknowledged): bad responses too, never written again.
    assert_eq!(r.replayed, 2, "{r:?}");
    assert_eq!((r.dropped[RequestDrop::ShadowError], r.dropped_total()), (4, 4), "{r:?}");
    shadow.wait_for_requests(all.len()).await;
    assert_eq!(shadow.log(), all.iter().map(|q| (0, tagged(q))).collect::<Vec<_>>(), "each once, on one connection");
    assert_eq!(shadow.accepted.load(Ordering::SeqCst), 1);
    assert_eq!(counter(&metrics, "shadow_replay_retries_total"), 0);
    assert_eq!(metrics.summary().shadow_errors["bad_response"], 4);
    assert_eq!(metrics.summary().shadow_responses["2xx"], 2);
    engine.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_response_times_out_with_the_requests_behind_it() {
    let shadow = Scripted::start(|c, n| match (c, n) {
        (0, 0) => Reply::Hold,
        (0, 2) => Reply::Stall,
        _ => Reply::Ok,
    })
    .await;
    let controls = ReplayControls { request_timeout: Duration::from_millis(300), ..piped() };
    let (engine, metrics, _) = held_then(&shadow, controls, &gets(8)).await;
    let r = settle(&metrics, 9).await;
    // The held request and /b answered; /c stalls: /c to /i were written at once and none is
    // answered within the timeout.
    assert_eq!(r.replayed, 2, "{r:?}");
    assert_eq!(r.dropped[RequestDrop::ShadowError], 7, "{r:?}");
    assert_eq!(metrics.summary().shadow_errors["timeout"], 7);
    assert_eq!(counter(&metrics, "shadow_replay_retries_total"), 0, "a timeout is not written again");
    engine.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shadow_failing_everything_gets_each_request_once() {
    let shadow = Scripted::start(|c, n| if (c, n) == (0, 0) { Reply::Hold } else { Reply::Garbage }).await;
    let (engine, metrics, all) = held_then(&shadow, piped(), &gets(8)).await;
    let r = settle(&metrics, 9).await;
    assert_eq!(r.replayed, 1, "only the held request had an answer: {r:?}");
    assert_eq!(r.dropped[RequestDrop::ShadowError], 8, "{r:?}");
    assert_eq!(metrics.summary().shadow_errors["bad_response"], 8);
    // Garbage for /b: the shadow had /c to /i as well (it read them): they fail with it.
    shadow.wait_for_requests(all.len()).await;
    assert_eq!(shadow.log(), all.iter().map(|q| (0, tagged(q))).collect::<Vec<_>>(), "each once");
    assert_eq!(shadow.accepted.load(Ordering::SeqCst), 1, "no second connection");
    assert_eq!(counter(&metrics, "shadow_replay_retries_total"), 0);
    engine.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_response_of_a_pipeline_is_timed_from_when_the_shadow_could_start_on_it() {
    // The shadow takes 40 ms for each request and answers them in order: the eighth response of a
    // pipeline comes 320 ms after the write, but the shadow spent 40 ms on its request. Each is
    // timed from the write or from the end of the response before it, whichever is later.
    const EACH: Duration = Duration::from_millis(40);
    let shadow = Scripted::start(|c, n| if (c, n) == (0, 0) { Reply::Hold } else { Reply::After(EACH) }).await;
    let (engine, metrics, _) = held_then(&shadow, piped(), &gets(8)).await;
    let r = settle(&metrics, 9).await;
    assert_eq!((r.replayed, r.dropped_total()), (9, 0), "{r:?}");
    let s = metrics.summary();
    assert_eq!(s.shadow.complete.count, 9);
    assert_eq!(counter(&metrics, "shadow_replay_pipelined_total"), 7, "one pipeline of eight");
    // Never the time behind the others (from the write, the last would be 8 x 40 ms): at least
    // 40 ms each (the shadow's own time), and well below two of them.
    let (p50, max) = (s.shadow.complete.p50_ms, s.shadow.complete.max_ms);
    assert!(p50 >= 40.0 && max < 2.0 * 40.0 + 40.0, "p50 {p50} ms, max {max} ms");
    let later: Vec<f64> = s.endpoints.iter().map(|e| e.shadow.max_ms).collect();
    assert!(later.iter().all(|m| *m < 120.0), "{later:?}");
    engine.shutdown(Duration::from_secs(1)).await;
}
