//! The daemon's main loop, in the manner of mini-redis's server: [`run`] takes a resolved
//! [`DaemonConfig`] and a shutdown future, attaches capture, and feeds every ring-buffer batch
//! through decode → reassembly/http → replay on one task (no locks on the per-segment path, no
//! queue between these stages: a batch is processed before the next is read). The replay engine
//! (a bounded queue per lane) and the metrics server run beside it. It stops when `shutdown`
//! completes or --duration passes, drains what the kernel already emitted, and returns the
//! [`Summary`].

mod publish;
mod summary;

use std::{collections::BTreeMap, future::Future, io, sync::Arc, time::Duration};

use shadow_common::counter;
use tokio::{signal::unix::SignalKind, time::Instant};

pub use self::summary::{DirectionCounts, ExtractionSummary, Summary};
use self::{publish::Publisher, summary::extraction_summary};
use crate::{
    capture::{Capture, CaptureError, CaptureOptions},
    compare::pairs::PairLimits,
    config::{DaemonConfig, ppm_to_percent},
    http::DropReason,
    hub::{CompareHub, control_report},
    metrics::{Metrics, MetricsError, MetricsServer},
    reassembly::{Extractor, ExtractorConfig, HttpEvent},
    replay::{ReplayEngine, ReplayError},
    segment::{DecodeError, Segment},
};

/// How often kernel counters and extraction stats are published, and idle flows expired.
const TICK: Duration = Duration::from_millis(100);
/// How long in-flight replays may finish at shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Capture(#[from] CaptureError),
    #[error(transparent)]
    Metrics(#[from] MetricsError),
    #[error(transparent)]
    Replay(#[from] ReplayError),
    #[error("comparison settings: {0}")]
    Compare(#[from] crate::compare::CompareError),
    #[error("{op}: {source}")]
    Io { op: String, source: std::io::Error },
}

impl RunError {
    pub const fn exit_code(&self) -> u8 {
        match self {
            Self::Capture(e) => e.exit_code(),
            Self::Metrics(_) | Self::Replay(_) | Self::Io { .. } => 1,
            Self::Compare(_) => 2,
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

/// Completes at the first SIGINT or SIGTERM: the daemon's shutdown. Call it inside the runtime.
pub fn shutdown_signal() -> io::Result<impl Future<Output = ()> + Send + 'static> {
    let mut sigterm = tokio::signal::unix::signal(SignalKind::terminate())?;
    let mut sigint = tokio::signal::unix::signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = sigint.recv() => {}
            _ = sigterm.recv() => {}
        }
    })
}

/// CLOCK_MONOTONIC in ns: the clock of the kernel's `bpf_ktime_get_ns()` timestamps.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: valid pointer to a timespec; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64).saturating_mul(1_000_000_000).saturating_add(ts.tv_nsec as u64)
}

fn route(events: &mut Vec<HttpEvent>, engine: &ReplayEngine) {
    for ev in events.drain(..) {
        match ev {
            HttpEvent::Request(req) => {
                // Never blocks: a full queue is a counted drop inside the engine.
                let _ = engine.submit(req);
            }
            HttpEvent::Response(resp) => {
                engine.record_primary(&resp);
                if let Some(hub) = engine.compare_hub() {
                    hub.primary(&resp);
                }
            }
        }
    }
}

/// Decoded segments through reassembly and extraction, and the messages that come out to replay;
/// records that did not decode are counted by reason. Used for every batch and for the final
/// drain.
fn ingest(
    batch: &mut Vec<Segment>,
    bad: &mut Vec<DecodeError>,
    summary: &mut Summary,
    extractor: &mut Extractor,
    events: &mut Vec<HttpEvent>,
    engine: &ReplayEngine,
) {
    if !batch.is_empty() {
        let now = monotonic_ns();
        for s in batch.drain(..) {
            summary.count(&s);
            extractor.push(s, now, events);
        }
        route(events, engine);
    }
    for e in bad.drain(..) {
        *summary.bad_records.entry(e.reason()).or_default() += 1;
    }
}

/// The comparison hub for the config's rules (named `rule[i]` until rules carry names), or `None`
/// when no rule compares.
fn compare_hub(cfg: &DaemonConfig, metrics: &Arc<Metrics>) -> Result<Option<Arc<CompareHub>>, RunError> {
    let rules: Vec<(String, Option<&crate::compare::CompareSettings>)> =
        cfg.rules.iter().enumerate().map(|(i, r)| (format!("rule[{i}]"), r.compare.as_ref())).collect();
    Ok(CompareHub::new(&rules, PairLimits::default(), metrics.clone())?)
}

/// Serve the control socket at `--control`, handing calls to the loop. A socket that cannot be
/// bound is a warning: mirroring goes on without it.
async fn serve_control(cfg: &DaemonConfig, calls: tokio::sync::mpsc::Sender<crate::control::server::Call>) {
    match crate::control::server::ControlServer::bind(&cfg.control).await {
        Ok(server) => {
            tracing::info!("control socket {}", cfg.control.display());
            tokio::spawn(server.serve(calls));
        }
        Err(e) => tracing::warn!("{e}; shadowctl cannot reach this daemon"),
    }
}

/// The loop's answer to a control command: `report` and `diffs` from the comparison.
fn control_answer(hub: Option<&CompareHub>, command: &crate::control::Command) -> crate::control::Response {
    control_report(hub, command).unwrap_or_else(|| {
        crate::control::Response::error(
            crate::control::ErrorKind::Rejected,
            format!("{} is not served by this daemon build", command.as_str()),
        )
    })
}

/// Run the daemon until `shutdown` completes (or `cfg.duration` passes); the summary is also
/// logged and, with `cfg.summary_file`, written as JSON.
pub async fn run(cfg: DaemonConfig, shutdown: impl Future<Output = ()>) -> Result<Summary, RunError> {
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
    // Comparison (issue 11): one hub for the daemon, when a rule compares.
    let hub = compare_hub(&cfg, &metrics)?;
    if let Some(h) = &hub {
        engine.set_compare(h);
    }
    let (control_calls, mut calls) = tokio::sync::mpsc::channel(16);
    serve_control(&cfg, control_calls).await;
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
        ppm_to_percent(capture.sample_ppm())
    );

    let mut summary = Summary {
        interface: cfg.interface.clone(),
        attached: capture.attached(),
        sample_percent: ppm_to_percent(capture.sample_ppm()),
        ..Default::default()
    };
    let max_body = cfg.rules.iter().map(|r| r.controls.max_body_bytes).max().unwrap_or(10 * 1024 * 1024);
    let mut extractor = Extractor::new(ExtractorConfig {
        memory_cap_bytes: usize::try_from(cfg.memory_cap).unwrap_or(usize::MAX),
        // A request larger than every rule's cap would be dropped by replay anyway: stop
        // buffering it early.
        max_body_bytes: max_body,
        keep_response_body: hub.as_ref().map_or(0, |h| h.keep_response_body()),
        ..ExtractorConfig::default()
    });
    let mut publisher = Publisher { ledger_seen: BTreeMap::new() };

    let deadline = cfg.duration.map(|d| Instant::now() + d);
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut batch = Vec::with_capacity(512);
    let mut bad = Vec::new();
    let mut events = Vec::with_capacity(64);

    let stop = async {
        match deadline {
            Some(d) => tokio::time::sleep_until(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(shutdown, stop);
    loop {
        tokio::select! {
            r = source.next_batch(&mut batch, &mut bad, 512) => {
                r.map_err(|e| RunError::Io { op: "read the ring buffer".into(), source: e })?;
            }
            _ = tick.tick() => {
                extractor.tick(monotonic_ns(), &mut events);
                route(&mut events, &engine);
                let k = capture.counters().ok();
                publisher.publish(&metrics, extractor.stats(), &summary.bad_records, k.as_ref());
                if let Some(h) = &hub {
                    h.tick();
                }
            }
            Some(call) = calls.recv() => {
                let _ = call.reply.send(control_answer(hub.as_deref(), &call.command));
            }
            () = &mut shutdown => break,
            () = &mut stop => break,
        }
        ingest(&mut batch, &mut bad, &mut summary, &mut extractor, &mut events, &engine);
    }

    // Whatever the kernel emitted before we stopped is still processed.
    source.drain_now(&mut batch, &mut bad);
    ingest(&mut batch, &mut bad, &mut summary, &mut extractor, &mut events, &engine);
    metrics.set_ready(false);
    let kernel = capture.counters()?;
    drop(capture); // detach before the slower shutdown work
    // Requests still being reassembled can no longer complete.
    extractor.clear(DropReason::Incomplete, &mut events);
    route(&mut events, &engine);
    publisher.publish(&metrics, extractor.stats(), &summary.bad_records, Some(&kernel));
    engine.shutdown(SHUTDOWN_GRACE).await;
    if let Some(h) = &hub {
        // Replay has stopped: no shadow half can come any more.
        h.drain();
        let report = h.report();
        tracing::info!("comparison:\n{}", report.render_text());
        summary.compare = Some(report);
    }
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
    Ok(summary)
}
