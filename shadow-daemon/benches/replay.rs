//! The replay path without root: the engine mirroring pre-built 1 KiB captured requests to a
//! keep-alive shadow on 127.0.0.1 (its own runtime on its own threads, answering 1 KiB), and the
//! per-request metrics bookkeeping on its own. A sample submits a batch from outside the engine's
//! runtime, as the daemon's capture loop does, and ends when every request of the batch has been
//! replayed; divan reports requests per second.
//!
//! After divan's table, the CPU the engine's runtime threads spent per replayed request is
//! printed for each batch size (from /proc/self/task/*/schedstat, in ns): the figure the daemon's
//! CPU per mirrored request is made of, less capture and extraction.
//!
//! `cargo bench -p shadow-daemon --bench replay`

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use divan::{Bencher, counter::ItemsCount};
use shadow_daemon::{
    config::Rule,
    correlate::Correlator,
    message::CapturedRequest,
    metrics::Metrics,
    replay::{
        ReplayEngine, Submission,
        controls::{ReplayControls, ShadowTarget},
    },
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    runtime::Runtime,
};

fn main() {
    divan::main();
    let cpu = ENGINE_CPU.lock().unwrap();
    for (batch, ns, n) in cpu.iter() {
        if *n > 0 {
            println!(
                "engine CPU per replayed request, batch {batch}: {:.2} µs ({n} requests)",
                *ns as f64 / *n as f64 / 1000.0
            );
        }
    }
}

/// Engine threads' name, to tell their CPU time from the shadow's and the bench's.
const ENGINE_THREAD: &str = "shadow-replay";
/// (batch size, engine CPU ns, requests) over the measured samples.
static ENGINE_CPU: Mutex<Vec<(usize, u64, u64)>> = Mutex::new(Vec::new());

/// CPU time (ns) of this process's threads named [`ENGINE_THREAD`], from the scheduler's
/// accounting; 0 where /proc does not have it.
fn engine_cpu_ns() -> u64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else { return 0 };
    tasks
        .flatten()
        .filter(|t| std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim() == ENGINE_THREAD))
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next().and_then(|v| v.parse::<u64>().ok()))
        .sum()
}

const SERVICE_PORT: u16 = 8080;
/// Longest a batch may take before the bench gives up (a broken engine must not hang it).
const BATCH_LIMIT: Duration = Duration::from_secs(30);

/// A 1 KiB GET as the mirror benchmark's clients send it (cookie padding).
fn request_bytes(i: usize) -> Vec<u8> {
    let base = format!(
        "GET /api/v1/items/{i}?sort=desc HTTP/1.1\r\nHost: shop.example.com\r\n\
         User-Agent: Mozilla/5.0 (X11; Linux x86_64) Gecko/20100101 Firefox/128.0\r\n\
         Accept: application/json\r\nAccept-Encoding: gzip, br\r\nConnection: keep-alive\r\n"
    );
    let pad = 1024 - base.len() - "Cookie: \r\n\r\n".len();
    format!("{base}Cookie: {}\r\n\r\n", "s".repeat(pad)).into_bytes()
}

/// The shared builder: spans and framing as the extraction stage computes them.
fn captured(id: u64, raw: &[u8]) -> CapturedRequest {
    CapturedRequest::builder(raw).id(id).server_port(SERVICE_PORT).build()
}

/// A keep-alive shadow answering every request with 1 KiB, on a runtime of its own.
struct Shadow {
    addr: SocketAddr,
    _rt: Runtime,
}

impl Shadow {
    fn start() -> Self {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let listener = rt.block_on(TcpListener::bind("127.0.0.1:0")).unwrap();
        let addr = listener.local_addr().unwrap();
        rt.spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                tokio::spawn(serve(s));
            }
        });
        Self { addr, _rt: rt }
    }
}

async fn serve(mut s: TcpStream) {
    let _ = s.set_nodelay(true);
    let body = "x".repeat(1024);
    let response =
        format!("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}", body.len());
    let mut buf = vec![0u8; 64 * 1024];
    let mut pending = 0;
    let mut out = Vec::new();
    loop {
        let n = match s.read(&mut buf[pending..]).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let filled = pending + n;
        // Bodiless requests: each head ends with the first blank line.
        let mut start = 0;
        while let Some(end) = buf[start..filled].windows(4).position(|w| w == b"\r\n\r\n") {
            start += end + 4;
            out.extend_from_slice(response.as_bytes());
        }
        buf.copy_within(start..filled, 0);
        pending = filled - start;
        if !out.is_empty() {
            if s.write_all(&out).await.is_err() {
                return;
            }
            out.clear();
        }
    }
}

/// The engine on a 2-worker runtime (the daemon's), mirroring to a fresh shadow.
struct Bed {
    rt: Runtime,
    engine: ReplayEngine,
    metrics: Arc<Metrics>,
    requests: Vec<CapturedRequest>,
    _shadow: Shadow,
}

impl Bed {
    fn new(batch: usize) -> Self {
        let shadow = Shadow::start();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name(ENGINE_THREAD)
            .enable_all()
            .build()
            .unwrap();
        let metrics = Arc::new(Metrics::default());
        let target: ShadowTarget = shadow.addr.to_string().parse().unwrap();
        let controls = ReplayControls { queue_capacity: batch.max(1024), ..Default::default() };
        let rule = Rule::new(vec![SERVICE_PORT], Some(target), controls);
        let engine =
            rt.block_on(async { ReplayEngine::start(&[rule], Correlator::new(metrics.clone(), None)) }).unwrap();
        // Distinct paths under one endpoint template (`/api/v1/items/:id`), as real traffic.
        let requests = (0..batch).map(|i| captured(i as u64, &request_bytes(i))).collect();
        let bed = Self { rt, engine, metrics, requests, _shadow: shadow };
        // Warm up: connections opened, endpoint known.
        bed.run(bed.requests.clone());
        bed
    }

    /// Submit every request, then wait until all are settled; every one must be replayed.
    fn run(&self, batch: Vec<CapturedRequest>) {
        let before = self.metrics.requests();
        let n = batch.len() as u64;
        for r in batch {
            assert_eq!(self.engine.submit(r), Submission::Queued);
        }
        let deadline = Instant::now() + BATCH_LIMIT;
        loop {
            let now = self.metrics.requests();
            if now.captured - now.in_flight == before.captured - before.in_flight + n {
                assert_eq!(now.replayed - before.replayed, n, "every request replayed: {now:?}");
                return;
            }
            assert!(Instant::now() < deadline, "batch not settled within {BATCH_LIMIT:?}: {now:?}");
            std::thread::sleep(Duration::from_micros(20));
        }
    }
}

impl Drop for Bed {
    fn drop(&mut self) {
        self.rt.block_on(self.engine.shutdown(Duration::from_secs(1)));
    }
}

/// Requests per sample; 1 is the latency of one replay, the larger the throughput of the engine.
#[divan::bench(args = [1, 64, 1024], sample_count = 50, sample_size = 1)]
fn engine(bencher: Bencher, batch: usize) {
    let bed = Bed::new(batch);
    let cpu0 = engine_cpu_ns();
    let mut replayed = 0u64;
    bencher.counter(ItemsCount::new(batch)).with_inputs(|| bed.requests.clone()).bench_local_values(|requests| {
        replayed += requests.len() as u64;
        bed.run(requests)
    });
    ENGINE_CPU.lock().unwrap().push((batch, engine_cpu_ns().saturating_sub(cpu0), replayed));
}

/// The metrics bookkeeping of one mirrored request: endpoint, ledger admit and settle, shadow
/// response and primary latency.
#[divan::bench]
fn metrics_per_request(bencher: Bencher) {
    let metrics = Metrics::default();
    let targets: Vec<Vec<u8>> = (0..64).map(|i| format!("/api/v1/items/{i}?sort=desc").into_bytes()).collect();
    let mut i = 0;
    bencher.counter(ItemsCount::new(1usize)).bench_local(|| {
        i = (i + 1) % targets.len();
        let endpoint = metrics.endpoint(b"GET", &targets[i]);
        let ticket = metrics.admit();
        metrics.record_shadow_response(endpoint, 200, Duration::from_micros(300), Duration::from_micros(350));
        ticket.replayed();
        metrics.record_primary(Some(endpoint), Duration::from_micros(200), Duration::from_micros(250));
    });
}
