//! The daemon's main loop: capture → decode → reassembly/http → replay, with metrics, until a
//! signal or --duration. One task owns the pure stages (no locks on the per-segment path); the
//! replay engine and the metrics server run beside it.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use serde::Serialize;
use shadow_common::counter;
use tokio::{signal::unix::SignalKind, time::Instant};

use crate::{
    capture::{Capture, CaptureError, CaptureOptions},
    config::{Args, UsageError},
    http::DropReason,
    metrics::{Metrics, MetricsError, MetricsServer, Summary as MirrorSummary},
    reassembly::{Extractor, ExtractorConfig, ExtractorStats, HttpEvent},
    replay::{ReplayEngine, ReplayError},
    segment::{Direction, Segment},
};

/// How often kernel counters and extraction stats are published, and idle flows expired.
const TICK: Duration = Duration::from_millis(100);
/// How long in-flight replays may finish at shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Usage(#[from] UsageError),
    #[error(transparent)]
    Capture(#[from] CaptureError),
    #[error(transparent)]
    Metrics(#[from] MetricsError),
    #[error(transparent)]
    Replay(#[from] ReplayError),
    #[error("{op}: {source}")]
    Io { op: String, source: std::io::Error },
}

impl RunError {
    pub const fn exit_code(&self) -> u8 {
        match self {
            Self::Usage(_) => 2,
            Self::Capture(e) => e.exit_code(),
            Self::Metrics(_) | Self::Replay(_) | Self::Io { .. } => 1,
        }
    }
}

pub fn init_logging() {
    use tracing_subscriber::{EnvFilter, fmt};
    let filter = EnvFilter::try_from_env("SHADOW_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = fmt().with_env_filter(filter).with_writer(std::io::stderr).with_target(false).try_init();
    // aya-log emits through the `log` facade.
    let _ = tracing_log::LogTracer::init();
}

/// CLOCK_MONOTONIC in ns: the clock of the kernel's `bpf_ktime_get_ns()` timestamps.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: valid pointer to a timespec; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64).saturating_mul(1_000_000_000).saturating_add(ts.tv_nsec as u64)
}

/// Per-direction counts of what reached user space.
#[derive(Clone, Debug, Default, Serialize)]
pub struct DirectionCounts {
    pub segments: u64,
    /// Payload bytes in captured segments, every copy of a retransmitted byte included.
    pub payload_bytes: u64,
    /// Stream bytes reassembled: each sequence number once (what the sender wrote, absent holes).
    pub stream_bytes: u64,
    /// Captured bytes that repeated stream bytes already taken (retransmissions, overlaps).
    pub overlap_bytes: u64,
    pub truncated: u64,
    pub fin: u64,
    pub rst: u64,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct ExtractionSummary {
    pub requests_extracted: u64,
    pub responses_extracted: u64,
    pub flows_active: u64,
    pub flows_created: u64,
    pub flows_evicted: u64,
    pub buffered_bytes: u64,
    pub memory_bytes: u64,
    /// (reason, direction) → messages dropped.
    pub message_drops: BTreeMap<String, u64>,
    /// (reason, direction) → segments not used.
    pub segment_drops: BTreeMap<String, u64>,
    /// Every segment accounted for: used + dropped + buffered == in.
    pub segments_reconcile: bool,
}

/// What the daemon prints and writes (`--summary-file`) when it stops.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Summary {
    pub interface: String,
    pub attached: Vec<String>,
    pub sample_percent: f64,
    pub request: DirectionCounts,
    pub response: DirectionCounts,
    pub bad_records: BTreeMap<&'static str, u64>,
    pub kernel: BTreeMap<&'static str, u64>,
    pub extraction: ExtractionSummary,
    pub mirror: Option<MirrorSummary>,
}

impl Summary {
    fn count(&mut self, s: &Segment) {
        let d = match s.direction {
            Direction::Request => &mut self.request,
            Direction::Response => &mut self.response,
        };
        d.segments += 1;
        d.payload_bytes += s.payload.len() as u64;
        d.truncated += u64::from(s.truncated);
        d.fin += u64::from(s.fin());
        d.rst += u64::from(s.rst());
    }
}

fn segment_dir_label(d: Direction) -> &'static str {
    match d {
        Direction::Request => "request_segments",
        Direction::Response => "response_segments",
    }
}

fn extraction_summary(st: &ExtractorStats) -> ExtractionSummary {
    ExtractionSummary {
        requests_extracted: st.requests_extracted(),
        responses_extracted: st.responses_extracted(),
        flows_active: st.flows_active,
        flows_created: st.flows_created,
        flows_evicted: st.flows_evicted,
        buffered_bytes: st.buffered_bytes,
        memory_bytes: st.memory_bytes,
        message_drops: st
            .drops()
            .filter(|(_, _, n)| *n > 0)
            .map(|(r, d, n)| (format!("{r}/{}", d.as_str()), n))
            .collect(),
        segment_drops: st
            .segment_drops()
            .filter(|(_, _, n)| *n > 0)
            .map(|(r, d, n)| (format!("{r}/{}", d.as_str()), n))
            .collect(),
        segments_reconcile: st.reconciles(),
    }
}

/// Carries extraction results into the metrics: request drops go into the replay ledger one by
/// one (so captured = replayed + dropped + in flight holds), the rest as absolute gauges/counters.
struct Publisher {
    /// Request-direction drops already recorded in the ledger, by reason.
    ledger_seen: BTreeMap<&'static str, u64>,
}

impl Publisher {
    /// `bad_records`: ring-buffer records that did not decode, by reason; they never reach
    /// reassembly and are published beside its drops (direction label `records`).
    fn publish(
        &mut self,
        metrics: &Metrics,
        st: &ExtractorStats,
        bad_records: &BTreeMap<&'static str, u64>,
        kernel: Option<&[u64; counter::COUNT]>,
    ) {
        for (reason, dir, n) in st.drops() {
            if dir != Direction::Request {
                continue;
            }
            let seen = self.ledger_seen.entry(reason).or_default();
            for _ in *seen..n {
                metrics.record_extraction_drop(reason);
            }
            *seen = n.max(*seen);
        }
        let mut stats: Vec<(&'static str, &'static str, u64)> =
            st.drops().map(|(r, d, n)| (r, d.as_str(), n)).collect();
        stats.extend(st.segment_drops().map(|(r, d, n)| (r, segment_dir_label(d), n)));
        stats.extend(bad_records.iter().map(|(r, n)| (*r, "records", *n)));
        metrics.set_extraction_stats(&stats);
        metrics.set_flows(st.flows_active);
        metrics.set_buffered_bytes(st.buffered_bytes);
        if let Some(k) = kernel {
            let named: Vec<(&'static str, u64)> = counter::NAMES.iter().copied().zip(k.iter().copied()).collect();
            metrics.set_kernel_counters(&named);
            metrics.set_ring_buffer_dropped(k[counter::RINGBUF_FULL]);
        }
    }
}

fn route(events: &mut Vec<HttpEvent>, engine: &ReplayEngine) {
    for ev in events.drain(..) {
        match ev {
            HttpEvent::Request(req) => {
                // Never blocks: a full queue is a counted drop inside the engine.
                let _ = engine.submit(req);
            }
            HttpEvent::Response(resp) => engine.record_primary(&resp),
        }
    }
}

pub async fn run(args: Args) -> Result<(), RunError> {
    let cfg = args.resolve()?;
    let metrics = Arc::new(Metrics::new(cfg.max_endpoints));
    let server = MetricsServer::bind(cfg.metrics_addr, metrics.clone()).await?;
    tracing::info!("metrics on http://{}/metrics", server.local_addr());

    let opts = CaptureOptions {
        interface: cfg.interface.clone(),
        hook: cfg.hook,
        rules: vec![crate::capture::KernelRule::any_address(&cfg.ports(), cfg.sample_ppm)],
        ring_buffer_size: cfg.ring_buffer_size,
        verifier_log: cfg.verifier_log.clone(),
        allow_shared: false,
    };
    let (capture, mut source, kernel_log) = Capture::start(&opts)?;
    if let Some(l) = kernel_log {
        tokio::spawn(l.run());
    }
    let engine = ReplayEngine::start(&cfg.rules, metrics.clone())?;
    for r in &cfg.rules {
        match &r.shadow {
            Some(t) => tracing::info!("ports {:?} mirrored to {t}", r.ports),
            None => tracing::warn!("ports {:?} have no --shadow: capture only, requests counted as no_target", r.ports),
        }
    }
    metrics.set_ready(true);
    tracing::info!(
        "capturing ports {:?} ({}), sampling {}% of requests",
        opts.ports(),
        capture.attached().join(", "),
        crate::config::ppm_to_percent(capture.sample_ppm())
    );

    let mut summary = Summary {
        interface: cfg.interface.clone(),
        attached: capture.attached(),
        sample_percent: crate::config::ppm_to_percent(capture.sample_ppm()),
        ..Default::default()
    };
    let max_body = cfg.rules.iter().map(|r| r.controls.max_body_bytes).max().unwrap_or(10 * 1024 * 1024);
    let mut extractor = Extractor::new(ExtractorConfig {
        memory_cap_bytes: usize::try_from(cfg.memory_cap).unwrap_or(usize::MAX),
        // A request larger than every rule's cap would be dropped by replay anyway: stop
        // buffering it early.
        max_body_bytes: max_body,
        ..ExtractorConfig::default()
    });
    let mut publisher = Publisher { ledger_seen: BTreeMap::new() };

    let mut sigterm = tokio::signal::unix::signal(SignalKind::terminate())
        .map_err(|e| RunError::Io { op: "install the SIGTERM handler".into(), source: e })?;
    let mut sigint = tokio::signal::unix::signal(SignalKind::interrupt())
        .map_err(|e| RunError::Io { op: "install the SIGINT handler".into(), source: e })?;
    let deadline = cfg.duration.map(|d| Instant::now() + d);
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut batch = Vec::with_capacity(512);
    let mut bad = Vec::new();
    let mut events = Vec::with_capacity(64);

    loop {
        let stop = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            r = source.next_batch(&mut batch, &mut bad, 512) => {
                r.map_err(|e| RunError::Io { op: "read the ring buffer".into(), source: e })?;
            }
            _ = tick.tick() => {
                extractor.tick(monotonic_ns(), &mut events);
                route(&mut events, &engine);
                let k = capture.counters().ok();
                publisher.publish(&metrics, extractor.stats(), &summary.bad_records, k.as_ref());
            }
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
            _ = stop => break,
        }
        if !batch.is_empty() {
            let now = monotonic_ns();
            for s in batch.drain(..) {
                summary.count(&s);
                extractor.push(s, now, &mut events);
            }
            route(&mut events, &engine);
        }
        for e in bad.drain(..) {
            *summary.bad_records.entry(e.reason()).or_default() += 1;
        }
    }

    // Whatever the kernel emitted before we stopped is still processed.
    source.drain_now(&mut batch, &mut bad);
    let now = monotonic_ns();
    for s in batch.drain(..) {
        summary.count(&s);
        extractor.push(s, now, &mut events);
    }
    for e in bad.drain(..) {
        *summary.bad_records.entry(e.reason()).or_default() += 1;
    }
    route(&mut events, &engine);
    metrics.set_ready(false);
    let kernel = capture.counters()?;
    drop(capture); // detach before the slower shutdown work
    // Requests still being reassembled can no longer complete.
    extractor.clear(DropReason::Incomplete, &mut events);
    route(&mut events, &engine);
    publisher.publish(&metrics, extractor.stats(), &summary.bad_records, Some(&kernel));
    engine.shutdown(SHUTDOWN_GRACE).await;
    summary.kernel = counter::NAMES.iter().copied().zip(kernel).collect();
    summary.extraction = extraction_summary(extractor.stats());
    for (d, sc) in [
        (&mut summary.request, &extractor.stats().request_segments),
        (&mut summary.response, &extractor.stats().response_segments),
    ] {
        d.stream_bytes = sc.stream_bytes;
        d.overlap_bytes = sc.overlap_bytes;
    }
    let mirror = metrics.summary();
    tracing::info!("stopped:\n{mirror}");
    summary.mirror = Some(mirror);
    server.shutdown().await;

    let json = serde_json::to_string_pretty(&summary).unwrap_or_default();
    if let Some(path) = &cfg.summary_file {
        std::fs::write(path, &json)
            .map_err(|e| RunError::Io { op: format!("write summary to {}", path.display()), source: e })?;
    }
    Ok(())
}
