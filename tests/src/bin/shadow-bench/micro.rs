//! In-process costs per request of the daemon's user-space stages, with a counting global
//! allocator (this binary's): reassembly + HTTP extraction, the replay engine (to a keep-alive
//! shadow on loopback that allocates nothing per request), and the metrics bookkeeping alone.
//! The same library code as the daemon's, on the same kind of input as the divan benches
//! (shadow-daemon/benches/{extract,replay}.rs), measured here so the ledger has allocation counts.

use std::{
    alloc::{GlobalAlloc, Layout, System},
    io::{Read, Write},
    net::{IpAddr, SocketAddr, TcpListener},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use serde::Serialize;
use shadow_common::tcp_flags;
use shadow_daemon::{
    compare::{
        CompareSettings, ResponseSample,
        pairs::{PairLimits, ShadowHalf},
    },
    config::Rule,
    correlate::Correlator,
    hub::{CompareHub, Expected},
    message::{BodyFraming, CapturedRequest, CapturedResponse, HeaderSpan},
    metrics::Metrics,
    reassembly::{Extractor, ExtractorConfig, HttpEvent},
    replay::{
        ReplayEngine, Submission,
        controls::{ReplayControls, ShadowTarget},
    },
    rule::RuleId,
    segment::{Direction, FlowId, Segment},
};

use crate::mirror::Spread;

/// Counts every allocation (and its bytes) of the process, all threads, but the bench's own
/// bookkeeping (see [`uncounted`]).
pub(crate) struct Counting;

pub(crate) static ALLOCS: AtomicU64 = AtomicU64::new(0);
pub(crate) static ALLOC_BYTES: AtomicU64 = AtomicU64::new(0);
/// Bytes the replay shadow read (the engine wrote) and wrote (the engine read).
static SHADOW_IN: AtomicU64 = AtomicU64::new(0);
static SHADOW_OUT: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// Set while the bench's own bookkeeping runs on this thread (see [`uncounted`]).
    static UNCOUNTED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether this allocation is the measured code's (not the bench's own, see [`uncounted`]).
fn counted() -> bool {
    !UNCOUNTED.try_with(std::cell::Cell::get).unwrap_or(false)
}

/// Run `f`, the bench's own bookkeeping (a poll of the metrics while it waits, say), without
/// counting what it allocates on this thread: the figures are the measured code's alone.
pub(crate) fn uncounted<R>(f: impl FnOnce() -> R) -> R {
    UNCOUNTED.with(|u| u.set(true));
    let r = f();
    UNCOUNTED.with(|u| u.set(false));
    r
}

// SAFETY: every call is passed to the system allocator unchanged (only counted), so its
// guarantees are the system allocator's.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        if counted() {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
            ALLOC_BYTES.fetch_add(l.size() as u64, Ordering::Relaxed);
        }
        // SAFETY: the caller's contract for `alloc` is the one `System.alloc` needs.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: `p` came from `System` through this allocator, with layout `l`.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        if counted() {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
            ALLOC_BYTES.fetch_add(n as u64, Ordering::Relaxed);
        }
        // SAFETY: `p` came from `System` through this allocator, with layout `l`.
        unsafe { System.realloc(p, l, n) }
    }
}

pub(crate) fn allocs() -> (u64, u64) {
    (ALLOCS.load(Ordering::Relaxed), ALLOC_BYTES.load(Ordering::Relaxed))
}

/// CPU time of the calling thread, ns.
pub(crate) fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a valid timespec pointer; CLOCK_THREAD_CPUTIME_ID exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

#[derive(Serialize, Clone, Debug)]
pub(crate) struct StageCost {
    pub stage: String,
    /// Per request: CPU time of the measuring thread (extraction, metrics) or of the engine's
    /// threads (replay), median and spread over repeats (CPU, not wall time: the machine is
    /// shared, and a preempted thread's wall time is someone else's work).
    pub ns_per_request: Option<Spread>,
    pub allocations_per_request: f64,
    pub allocated_bytes_per_request: f64,
    pub requests_per_repeat: usize,
    pub repeats: usize,
    /// Replay: bytes the engine wrote to and read from the shadow's sockets per request.
    pub socket_bytes_out_per_request: Option<f64>,
    pub socket_bytes_in_per_request: Option<f64>,
    pub how: String,
}

const FLOWS: u16 = 16;

/// A ~1 KiB GET as the mirror bench's clients send it (padding in a cookie).
fn request_bytes(i: usize) -> Vec<u8> {
    let base = format!(
        "GET /api/v1/items/{i}?sort=desc HTTP/1.1\r\nHost: shop.example.com\r\n\
         User-Agent: Mozilla/5.0 (X11; Linux x86_64) Gecko/20100101 Firefox/128.0\r\n\
         Accept: application/json\r\nAccept-Encoding: gzip, br\r\nConnection: keep-alive\r\n"
    );
    let pad = 1024 - base.len() - "Cookie: \r\n\r\n".len();
    format!("{base}Cookie: {}\r\n\r\n", "s".repeat(pad)).into_bytes()
}

fn flow(i: u16) -> FlowId {
    let c: IpAddr = [10, 1, 0, 1].into();
    let s: IpAddr = [10, 1, 0, 2].into();
    FlowId { client: SocketAddr::new(c, 30000 + i), server: SocketAddr::new(s, 8080) }
}

/// `n` 1 KiB requests in one segment each, round-robin over keep-alive flows.
fn segments(n: usize, seq_base: &mut [u32], ts: &mut u64) -> Vec<Segment> {
    (0..n)
        .map(|i| {
            let f = (i % FLOWS as usize) as u16;
            let req = request_bytes(i);
            *ts += 1_000;
            let seq = &mut seq_base[f as usize];
            let s = Segment {
                flow: flow(f),
                direction: Direction::Request,
                seq: *seq,
                ack: 77,
                tcp_flags: tcp_flags::ACK | tcp_flags::PSH,
                ts_ns: *ts,
                wire_len: req.len() as u32,
                payload: Bytes::from(req),
                truncated: false,
                request_start: true,
                ifindex: 1,
            };
            *seq = seq.wrapping_add(s.payload.len() as u32);
            s
        })
        .collect()
}

/// One in-process stage measured: a warm-up pass, then `repeats` passes over `n` requests, each
/// prepared untimed by `setup` and run by `work` on this thread. CPU ns per request per pass, and
/// the median pass's allocations (count, bytes) per request.
struct Measured {
    ns_per_request: Option<Spread>,
    allocations: f64,
    bytes: f64,
}

impl Measured {
    /// The stage's ledger row: an in-process stage has no socket bytes.
    fn stage(self, stage: String, requests_per_repeat: usize, repeats: usize, how: &str) -> StageCost {
        StageCost {
            stage,
            ns_per_request: self.ns_per_request,
            allocations_per_request: self.allocations,
            allocated_bytes_per_request: self.bytes,
            requests_per_repeat,
            repeats,
            socket_bytes_out_per_request: None,
            socket_bytes_in_per_request: None,
            how: how.into(),
        }
    }
}

fn measure<S>(n: usize, repeats: usize, mut setup: impl FnMut() -> S, mut work: impl FnMut(S)) -> Measured {
    let mut per = Vec::new();
    let mut alloc_runs = Vec::new();
    for rep in 0..=repeats {
        let input = setup();
        let (a0, b0) = allocs();
        let start = thread_cpu_ns();
        work(input);
        let ns = (thread_cpu_ns() - start) as f64;
        let (a1, b1) = allocs();
        if rep > 0 {
            per.push(ns / n as f64);
            alloc_runs.push(((a1 - a0) as f64 / n as f64, (b1 - b0) as f64 / n as f64));
        }
    }
    alloc_runs.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (allocations, bytes) = alloc_runs[alloc_runs.len() / 2];
    Measured { ns_per_request: Spread::of(per), allocations, bytes }
}

/// Reassembly + extraction of 1 KiB requests on one long-lived extractor (flows warm, as in the
/// daemon), each request handed on (dropped) as soon as it is out.
pub(crate) fn extraction(quick: bool) -> StageCost {
    let n = 8192;
    let repeats = if quick { 3 } else { 9 };
    let mut ex = Extractor::new(ExtractorConfig::default());
    let mut seqs = vec![1_000u32; FLOWS as usize];
    let mut ts = 1_000_000u64;
    let mut out: Vec<HttpEvent> = Vec::with_capacity(64);
    let m = measure(
        n,
        repeats,
        || segments(n, &mut seqs, &mut ts),
        |segs| {
            let mut emitted = 0;
            for s in segs {
                let now = s.ts_ns;
                ex.push(s, now, &mut out);
                emitted += out.len();
                out.clear();
            }
            assert!(emitted >= n, "extraction emitted {emitted} events for {n} requests");
        },
    );
    m.stage("reassembly + HTTP extraction".into(), n, repeats, "shadow_daemon::reassembly::Extractor::push, 1 KiB GETs in one segment each over 16 keep-alive flows, one thread, its CPU time (segments built untimed; the payload copy out of the ring is in the ring-buffer stage)")
}

/// An exchange as the kernel's records carry it: the request's record (a 1 KiB GET) and the
/// response's (a 200 with a 1 KiB body, head and body in one segment), round-robin over
/// keep-alive flows.
fn exchange_records(n: usize, seqs: &mut [(u32, u32)], ts: &mut u64) -> Vec<Vec<u8>> {
    let body = "b".repeat(1024);
    let response = format!("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1024\r\n\r\n{body}");
    let mut out = Vec::with_capacity(2 * n);
    for i in 0..n {
        let f = (i % FLOWS as usize) as u16;
        let (c, s) = &mut seqs[f as usize];
        let req = request_bytes(i);
        for (dir, payload) in [(Direction::Request, req.as_slice()), (Direction::Response, response.as_bytes())] {
            *ts += 1_000;
            let (seq, ack) = match dir {
                Direction::Request => (*c, *s),
                Direction::Response => (*s, c.wrapping_add(req.len() as u32)),
            };
            let seg = Segment {
                flow: flow(f),
                direction: dir,
                seq,
                ack,
                tcp_flags: tcp_flags::ACK | tcp_flags::PSH,
                ts_ns: *ts,
                wire_len: payload.len() as u32,
                payload: Bytes::copy_from_slice(payload),
                truncated: false,
                request_start: dir == Direction::Request,
                ifindex: 1,
            };
            out.push(shadow_daemon::segment::encode(&seg));
        }
        *c = c.wrapping_add(req.len() as u32);
        *s = s.wrapping_add(response.len() as u32);
    }
    out
}

/// The daemon's per-record path from the ring to extraction, on one long-lived extractor as the
/// daemon runs it under TC (each request held until its answer is seen): every record decoded
/// in place and pushed, both directions, each message handed on (dropped) as soon as it is out.
pub(crate) fn records_to_extraction(quick: bool) -> StageCost {
    let n = 8192;
    let repeats = if quick { 3 } else { 9 };
    let mut ex = Extractor::new(ExtractorConfig { await_response: true, ..ExtractorConfig::default() });
    let mut seqs = vec![(1_000u32, 5_000u32); FLOWS as usize];
    let mut ts = 1_000_000u64;
    let mut out: Vec<HttpEvent> = Vec::with_capacity(64);
    let m = measure(
        n,
        repeats,
        || exchange_records(n, &mut seqs, &mut ts),
        |records| {
            let mut emitted = 0;
            for r in &records {
                let seg = shadow_daemon::segment::decode_ref(r).expect("an encoded record decodes");
                let now = seg.ts_ns;
                ex.push(seg, now, &mut out);
                emitted += out.len();
                out.clear();
            }
            assert_eq!(emitted, 2 * n, "a request and a response out of each exchange");
        },
    );
    m.stage("ring records to extraction (request + response)".into(), n, repeats, "segment::decode_ref + Extractor::push (await_response, as under TC) of an exchange's two records (a 1 KiB GET; a 200 with a 1 KiB body) over 16 keep-alive flows, one thread, its CPU time per exchange (records encoded untimed, in memory rather than in the ring)")
}

/// The metrics bookkeeping of one mirrored request, as the replay bench's `metrics_per_request`.
pub(crate) fn metrics_bookkeeping(quick: bool) -> StageCost {
    let metrics = Metrics::default();
    let targets: Vec<Vec<u8>> = (0..64).map(|i| format!("/api/v1/items/{i}?sort=desc").into_bytes()).collect();
    let n = 100_000;
    let repeats = if quick { 3 } else { 9 };
    let m = measure(
        n,
        repeats,
        || (),
        |()| {
            for i in 0..n {
                let endpoint = metrics.endpoint(b"GET", &targets[i % targets.len()]);
                let ticket = metrics.admit();
                metrics.record_shadow_response(endpoint, 200, Duration::from_micros(300), Duration::from_micros(350));
                ticket.replayed();
                metrics.record_primary(Some(endpoint), Duration::from_micros(200), Duration::from_micros(250));
            }
        },
    );
    m.stage("metrics and histograms".into(), n, repeats, "Metrics::endpoint + admit + record_shadow_response + replayed + record_primary (64 distinct paths, one template), one thread, its CPU time")
}

/// One observation into `shadow_compared_latency_seconds` (two per compared pair, one per side),
/// classic buckets only against classic and native ones, side by side in the same passes (each
/// pass times both, the order alternating): what issue 26's native histograms add to the
/// comparison. Latencies spread log-uniformly over 100 µs to 1 s.
pub(crate) fn latency_histograms(quick: bool) -> [StageCost; 2] {
    let n = 200_000;
    let repeats = if quick { 5 } else { 15 };
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let latencies: Vec<f64> = (0..n)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            1e-4 * 1e4f64.powf((state >> 11) as f64 / (1u64 << 53) as f64)
        })
        .collect();
    let arms =
        [shadow_daemon::metrics::classic_only_compared_histogram(), shadow_daemon::metrics::compared_histogram()];
    let mut per: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    let mut alloc_runs: [Vec<(f64, f64)>; 2] = [Vec::new(), Vec::new()];
    for rep in 0..=repeats {
        let order = if rep % 2 == 0 { [0, 1] } else { [1, 0] };
        for arm in order {
            let (a0, b0) = allocs();
            let start = thread_cpu_ns();
            for &l in &latencies {
                arms[arm].observe(l);
            }
            let ns = (thread_cpu_ns() - start) as f64;
            let (a1, b1) = allocs();
            if rep > 0 {
                per[arm].push(ns / n as f64);
                alloc_runs[arm].push(((a1 - a0) as f64 / n as f64, (b1 - b0) as f64 / n as f64));
            }
        }
    }
    let stage = |arm: usize, name: &str, how: &str| {
        let mut runs = alloc_runs[arm].clone();
        runs.sort_by(|a, b| a.0.total_cmp(&b.0));
        let (allocations, bytes) = runs[runs.len() / 2];
        Measured { ns_per_request: Spread::of(per[arm].clone()), allocations, bytes }.stage(
            name.into(),
            n,
            repeats,
            how,
        )
    };
    [
        stage(
            0,
            "compared latency observe, classic buckets only",
            "prometheus_client Histogram with the contract's 147 bounds, observe(), one thread, its CPU time, passes interleaved with the next row's (per observation; two per compared pair)",
        ),
        stage(
            1,
            "compared latency observe, classic + native (schema 3)",
            "shadow_daemon::metrics::compared_histogram (the daemon's: the same bounds and native buckets, schema 3, at most 160), observe(), interleaved with the row before",
        ),
    ]
}

/// The per-rule replay rate's check (`--replay-rate`, governor's GCRA on tokio's clock), as
/// every admitted request of a rate-limited rule takes it, at a rate it never reaches.
pub(crate) fn rate_limit(quick: bool) -> StageCost {
    let n = 1_000_000;
    let repeats = if quick { 3 } else { 9 };
    let limit = shadow_daemon::replay::controls::RateLimit::new(10_000_000.0);
    let m = measure(
        n,
        repeats,
        || (),
        |()| {
            let passed = (0..n).filter(|_| limit.try_take()).count();
            assert!(passed > 0, "the limit let nothing through");
        },
    );
    m.stage("replay rate check".into(), n, repeats, "shadow_daemon::replay::controls::RateLimit::try_take at 10^7/s (never limiting), one thread, its CPU time; it reads tokio's clock (Instant::now) once per call")
}

/// The comparison of one pair as the daemon makes it for every mirrored request of a comparing
/// rule (the default): the hub told to expect the request, the primary's response (a 1 KiB JSON
/// body, its headers read from the head), then the shadow's (the same body, or with one value
/// changed when `differ`), paired, normalised, compared and counted in the comparison's metrics
/// and report aggregates.
pub(crate) fn comparison(quick: bool, differ: bool) -> StageCost {
    let settings = CompareSettings::default();
    let metrics = Arc::new(Metrics::default());
    let hub = CompareHub::new(&[("api".to_owned(), Some(&settings))], PairLimits::default(), metrics.clone())
        .expect("hub")
        .expect("a comparing rule");
    let mut body = String::from("{\"items\":[");
    while body.len() < 1000 {
        body.push_str(&format!("{{\"id\":{},\"name\":\"item\"}},", body.len()));
    }
    body.pop();
    body.push_str("]}");
    let shadow_body = Bytes::from(if differ { body.replacen("\"id\":", "\"id\":9", 1) } else { body.clone() });
    let body = Bytes::from(body);
    let head = Bytes::from(format!(
        "HTTP/1.1 200 OK\r\nServer: nginx\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    ));
    let endpoints: Vec<String> = (0..16).map(|i| format!("GET /api/v1/items{i}/:id")).collect();
    let n = 50_000;
    let repeats = if quick { 3 } else { 9 };
    let mut id = 0u64;
    let m = measure(
        n,
        repeats,
        || (),
        |()| {
            for i in 0..n {
                id += 1;
                hub.primary(
                    &CapturedResponse {
                        flow: flow(0),
                        request_id: id,
                        status: 200,
                        minor_version: 1,
                        head: head.clone(),
                        framing: BodyFraming::ContentLength(body.len() as u64),
                        body_len: body.len() as u64,
                        body: body.clone(),
                        body_complete: true,
                        first_ts_ns: 2_000_000,
                        last_ts_ns: 2_100_000,
                        request_last_ts_ns: 1_000_000,
                    },
                    Expected::SHADOW,
                );
                let sample = ResponseSample {
                    status: 200,
                    headers: vec![("content-type".into(), b"application/json".to_vec())],
                    body: shadow_body.clone(),
                    body_complete: true,
                    body_len: shadow_body.len() as u64,
                    latency: Some(Duration::from_micros(1200)),
                };
                hub.shadow(
                    id,
                    RuleId::new(0),
                    hub.epoch_of(RuleId::new(0)),
                    &endpoints[i % endpoints.len()],
                    ShadowHalf::Response(sample),
                    None,
                );
            }
        },
    );
    m.stage(if differ {
            "comparison of a pair whose JSON bodies differ (parsed, normalised, diffed, sampled)".into()
        } else {
            "comparison of a pair with equal bodies (the common case)".into()
        }, n, repeats, "shadow_daemon::hub::CompareHub expect + primary + shadow with default settings, 1 KiB JSON bodies (equal, or one value apart), 16 endpoints, one thread, its CPU time (the shadow's sample built in the loop, as the replay client builds it)")
}

/// The header-edit pass of one replayed request (the tag, the baggage marker, and, with
/// `traced`, a W3C, B3 and Datadog trace context restarted), into a buffer reused as the
/// replay's is (one per batch).
pub(crate) fn request_edit(quick: bool, traced: bool) -> StageCost {
    let n = 100_000;
    let repeats = if quick { 3 } else { 9 };
    let trace = "traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n\
                 tracestate: congo=t61rcWkgMzE\r\nbaggage: userId=alice\r\n\
                 b3: 4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1\r\n\
                 x-datadog-trace-id: 1234567890123456789\r\nx-datadog-parent-id: 987654321\r\n";
    let reqs: Vec<CapturedRequest> = (0..64)
        .map(|i| {
            let raw = format!(
                "GET /api/v1/items/{i}?sort=desc HTTP/1.1\r\nHost: api.example\r\nUser-Agent: bench/1.0\r\n\
                 Accept: application/json\r\nAccept-Encoding: gzip\r\n{}\r\n",
                if traced { trace } else { "" }
            );
            captured(i, raw.as_bytes())
        })
        .collect();
    let controls = ReplayControls::default();
    let target: ShadowTarget = "127.0.0.1:9".parse().expect("target");
    let mut wire = Vec::with_capacity(4096);
    let m = measure(
        n,
        repeats,
        || (),
        |()| {
            for i in 0..n {
                wire.clear();
                let t =
                    shadow_daemon::replay::edit_request_for_bench(&reqs[i % reqs.len()], &controls, &target, &mut wire)
                        .expect("edits");
                assert_eq!(t.link.is_some(), traced);
            }
        },
    );
    let stage = if traced {
        "request edit, trace context restarted (W3C, B3, Datadog)"
    } else {
        "request edit without trace headers (tag, baggage marker)"
    };
    m.stage(stage.into(), n, repeats, "shadow_daemon::replay edit pass (the one the replay runs per request before writing it) on ~200-byte heads of 6 or 12 header lines, default controls (trace isolate), one thread, its CPU time, into a reused buffer")
}

fn captured(id: u64, raw: &[u8]) -> CapturedRequest {
    let raw = Bytes::copy_from_slice(raw);
    let mut hs = [httparse::EMPTY_HEADER; 64];
    let mut r = httparse::Request::new(&mut hs);
    let head_len = match r.parse(&raw) {
        Ok(httparse::Status::Complete(n)) => n,
        other => panic!("bench request does not parse: {other:?}"),
    };
    let base = raw.as_ptr() as usize;
    let span = |s: &[u8]| {
        let o = s.as_ptr() as usize - base;
        o..o + s.len()
    };
    let headers =
        r.headers.iter().map(|h| HeaderSpan { name: span(h.name.as_bytes()), value: span(h.value) }).collect();
    CapturedRequest {
        id,
        // Sixteen captured connections, as wrk -c16 makes in the mirror part: at --pipeline 1
        // the flow gate lets one request of each go at a time (all on one connection, the
        // stage measured a strict ping-pong with both threads waking per request).
        flow: flow((id % 16) as u16),
        head_len,
        method: span(r.method.unwrap_or("GET").as_bytes()),
        target: span(r.path.unwrap_or("/").as_bytes()),
        minor_version: r.version.unwrap_or(1),
        headers,
        framing: BodyFraming::None,
        first_ts_ns: 1_000,
        last_ts_ns: 2_000,
        raw,
    }
}

/// A keep-alive shadow on std threads with fixed buffers: answers each bodiless request with
/// 1 KiB and allocates nothing per request, so the allocation counter sees the engine only.
fn start_shadow(stop: Arc<AtomicBool>) -> (SocketAddr, std::thread::JoinHandle<()>) {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind shadow");
    let addr = l.local_addr().expect("addr");
    l.set_nonblocking(true).expect("nonblocking");
    let h = std::thread::spawn(move || {
        let body = "x".repeat(1024);
        let response = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}", body.len()).into_bytes();
        let mut conns = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            match l.accept() {
                Ok((s, _)) => {
                    let response = response.clone();
                    let stop = stop.clone();
                    conns.push(std::thread::spawn(move || serve(s, &response, &stop)));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
        for c in conns {
            let _ = c.join();
        }
    });
    (addr, h)
}

fn serve(mut s: std::net::TcpStream, response: &[u8], stop: &AtomicBool) {
    let _ = s.set_nodelay(true);
    let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
    let mut buf = vec![0u8; 256 * 1024];
    let mut out = Vec::with_capacity(response.len() * 256);
    let mut pending = 0;
    while !stop.load(Ordering::Relaxed) {
        let n = match s.read(&mut buf[pending..]) {
            Ok(0) => return,
            Ok(n) => n,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                continue;
            }
            Err(_) => return,
        };
        SHADOW_IN.fetch_add(n as u64, Ordering::Relaxed);
        let filled = pending + n;
        let mut start = 0;
        while let Some(end) = buf[start..filled].windows(4).position(|w| w == b"\r\n\r\n") {
            start += end + 4;
            out.extend_from_slice(response);
        }
        buf.copy_within(start..filled, 0);
        pending = filled - start;
        if !out.is_empty() {
            if s.write_all(&out).is_err() {
                return;
            }
            SHADOW_OUT.fetch_add(out.len() as u64, Ordering::Relaxed);
            out.clear();
        }
        if pending == buf.len() {
            return;
        }
    }
}

const ENGINE_THREAD: &str = "bench-replay";

fn engine_cpu_ns() -> u64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    tasks
        .flatten()
        .filter(|t| std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim() == ENGINE_THREAD))
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next().and_then(|v| v.parse::<u64>().ok()))
        .sum()
}

/// The replay engine (the daemon's, on one runtime thread as the daemon runs by default)
/// mirroring batches of pre-built 1 KiB requests to the shadow above, with up to `pipeline`
/// requests per write: its thread's CPU and the process's allocations per replayed request
/// (submission included; the shadow allocates nothing per request).
pub(crate) fn replay(quick: bool, pipeline: usize) -> StageCost {
    let stop = Arc::new(AtomicBool::new(false));
    let (addr, shadow) = start_shadow(stop.clone());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name(ENGINE_THREAD)
        .enable_all()
        .build()
        .expect("runtime");
    let metrics = Arc::new(Metrics::default());
    let target: ShadowTarget = addr.to_string().parse().expect("target");
    let batch = 1024;
    let controls = ReplayControls { queue_capacity: batch * 2, pipeline, ..Default::default() };
    let rule = Rule::new(vec![8080], Some(target), controls);
    let engine =
        rt.block_on(async { ReplayEngine::start(&[rule], Correlator::new(metrics.clone(), None)) }).expect("engine");
    let requests: Vec<CapturedRequest> = (0..batch).map(|i| captured(i as u64, &request_bytes(i))).collect();
    let run = |batch: Vec<CapturedRequest>| {
        let before = uncounted(|| metrics.requests());
        let n = batch.len() as u64;
        for r in batch {
            assert_eq!(engine.submit(r), Submission::Queued);
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            // The poll builds a snapshot (maps of drops by reason): the bench's, not the engine's.
            let now = uncounted(|| metrics.requests());
            if now.captured - now.in_flight == before.captured - before.in_flight + n {
                assert_eq!(now.replayed - before.replayed, n, "every request replayed: {now:?}");
                return;
            }
            assert!(Instant::now() < deadline, "replay batch not settled: {now:?}");
            std::thread::sleep(Duration::from_micros(50));
        }
    };
    let repeats = if quick { 5 } else { 15 };
    let mut per = Vec::new();
    let mut alloc_runs = Vec::new();
    // Warm-up: connections opened, endpoint known.
    run(requests.clone());
    let (in0, out0) = (SHADOW_IN.load(Ordering::Relaxed), SHADOW_OUT.load(Ordering::Relaxed));
    for _ in 0..repeats {
        let input = requests.clone();
        let (a0, b0) = allocs();
        let c0 = engine_cpu_ns();
        run(input);
        let c1 = engine_cpu_ns();
        let (a1, b1) = allocs();
        per.push((c1 - c0) as f64 / batch as f64);
        alloc_runs.push(((a1 - a0) as f64 / batch as f64, (b1 - b0) as f64 / batch as f64));
    }
    let replayed = (batch * repeats) as f64;
    let bytes_out = (SHADOW_IN.load(Ordering::Relaxed) - in0) as f64 / replayed;
    let bytes_in = (SHADOW_OUT.load(Ordering::Relaxed) - out0) as f64 / replayed;
    rt.block_on(engine.shutdown(Duration::from_secs(1)));
    drop(rt);
    stop.store(true, Ordering::Relaxed);
    let _ = shadow.join();
    alloc_runs.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (allocs_pr, bytes_pr) = alloc_runs[alloc_runs.len() / 2];
    StageCost {
        stage: if pipeline == 1 {
            "replay (engine, to a keep-alive shadow; metrics included), one request per write (--pipeline 1)".into()
        } else {
            format!("replay (engine, to a keep-alive shadow; metrics included), pipelines of up to {pipeline} (opt-in)")
        },
        ns_per_request: Spread::of(per),
        allocations_per_request: allocs_pr,
        allocated_bytes_per_request: bytes_pr,
        requests_per_repeat: batch,
        repeats,
        socket_bytes_out_per_request: Some(bytes_out),
        socket_bytes_in_per_request: Some(bytes_in),
        how: "shadow_daemon::replay::ReplayEngine on one runtime thread, batches of 1024 pre-built 1 KiB GETs of 16 captured connections submitted from outside it (so a pipeline fills whenever the queue holds enough; without pipelines one request of each connection at a time); CPU of the engine thread (schedstat) per replayed request, which includes the kernel's loopback delivery to the shadow's threads and their wake-ups, charged to the sender".into(),
    }
}
