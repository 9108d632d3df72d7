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
use tokio::{signal::unix::SignalKind, sync::mpsc, time::Instant};

pub use self::summary::{DirectionCounts, ExtractionSummary, Summary};
use self::{publish::Publisher, summary::extraction_summary};
use crate::{
    capture::{
        Capture, CaptureError, CaptureOptions, check_interface,
        links::{InterfacePattern, LinkEvent, LinkWatcher, any_matches, list_interfaces},
    },
    compare::pairs::PairLimits,
    config::{DaemonConfig, HookKind, ppm_to_percent},
    control::{
        Command, ErrorKind, Response,
        server::{Call, ControlError, ControlServer, ControlStats},
    },
    http::DropReason,
    hub::{CompareHub, control_report, control_reset},
    metrics::{Metrics, MetricsError, MetricsServer, ops::Operations as OpsSnapshot},
    operate::{Facts, Operations, RuleRuntime},
    reassembly::{Extractor, ExtractorConfig, HttpEvent},
    replay::{ReplayEngine, ReplayError},
    segment::{DecodeError, Segment},
};

/// How often kernel counters and extraction stats are published, and idle flows expired.
const TICK: Duration = Duration::from_millis(100);
/// How long in-flight replays may finish at shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);
/// How long the replays queued under the old rules may finish after a reload.
const RELOAD_GRACE: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Capture(#[from] CaptureError),
    #[error(transparent)]
    Metrics(#[from] MetricsError),
    #[error(transparent)]
    Replay(#[from] ReplayError),
    #[error(transparent)]
    Control(#[from] ControlError),
    #[error("comparison settings: {0}")]
    Compare(#[from] crate::compare::CompareError),
    #[error("{op}: {source}")]
    Io { op: String, source: std::io::Error },
}

impl RunError {
    pub const fn exit_code(&self) -> u8 {
        match self {
            Self::Capture(e) => e.exit_code(),
            Self::Control(e) => e.exit_code(),
            Self::Metrics(_) | Self::Replay(_) | Self::Io { .. } => 1,
            Self::Compare(_) => 2,
        }
    }
}

/// Logs go to stderr, as text or as JSON lines, filtered by `level` (`--log-level` /
/// `SHADOW_LOG`). Nothing logged carries a header value or a body: errors name requests by id.
pub fn init_logging(json: bool, level: &str) -> Result<(), String> {
    use tracing_subscriber::{EnvFilter, fmt};
    let filter = EnvFilter::try_new(level).map_err(|e| format!("--log-level: '{level}' is not a log filter: {e}"))?;
    let b = fmt().with_env_filter(filter).with_writer(std::io::stderr).with_target(false);
    let _ = if json { b.json().flatten_event(true).try_init() } else { b.try_init() };
    // aya-log emits through the `log` facade.
    let _ = tracing_log::LogTracer::init();
    Ok(())
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
    crate::sys::time::monotonic_ns()
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

/// The comparison hub for the config's rules, or `None` when no rule compares.
fn compare_hub(cfg: &DaemonConfig, metrics: &Arc<Metrics>) -> Result<Option<Arc<CompareHub>>, RunError> {
    let rules: Vec<(String, Option<&crate::compare::CompareSettings>)> =
        cfg.rules.iter().map(|r| (r.name.clone(), r.compare.as_ref())).collect();
    Ok(CompareHub::new(&rules, PairLimits::default(), metrics.clone())?)
}

/// Run the daemon until `shutdown` completes (or `cfg.duration` passes); the summary is also
/// logged and, with `cfg.summary_file`, written as JSON.
pub async fn run(mut cfg: DaemonConfig, shutdown: impl Future<Output = ()>) -> Result<Summary, RunError> {
    let metrics = Arc::new(Metrics::new(cfg.max_endpoints));
    let server = MetricsServer::bind(cfg.metrics_addr, metrics.clone()).await?;
    tracing::info!("metrics on http://{}/metrics", server.local_addr());

    let mut ops = Operations::new(
        Facts {
            hook: match cfg.hook {
                HookKind::Tc => "tc".into(),
                HookKind::Xdp => "xdp".into(),
            },
            interfaces: cfg.interfaces.iter().map(ToString::to_string).collect(),
            ring_buffer_bytes: u64::from(cfg.ring_buffer_size),
        },
        rule_runtimes(&cfg),
    );
    // The rules as the file last said them: what a reload compares against.
    let mut file_rules = ops.rules().to_vec();
    // A typo in --interface should not wait for the verifier.
    for p in cfg.interfaces.iter().filter(|p| !p.is_glob()) {
        check_interface(p.as_str())?;
    }
    let opts = CaptureOptions {
        interface: cfg.interface.clone(),
        hook: cfg.hook,
        rules: Operations::kernel_rules(ops.rules()),
        ring_buffer_size: cfg.ring_buffer_size,
        verifier_log: cfg.verifier_log.clone(),
        allow_shared: cfg.allow_shared,
    };
    let mut capture = Capture::load(&opts)?;
    let mut interfaces = Interfaces { patterns: cfg.interfaces.clone(), hook: cfg.hook, events: [0; 3] };
    interfaces.attach_present(&mut capture, true)?;
    let mut source = capture.take_source()?;
    if let Some(l) = capture.take_kernel_log() {
        tokio::spawn(l.run());
    }
    // Globs follow interfaces as they come and go (pods on a node).
    let mut links = if cfg.interfaces.iter().any(InterfacePattern::is_glob) {
        Some(
            LinkWatcher::new()
                .map_err(|e| RunError::Io { op: "watch network interfaces (netlink)".into(), source: e })?,
        )
    } else {
        None
    };
    let control = ControlServer::bind(&cfg.control).await?;
    tracing::info!("control socket {}", control.path().display());
    let control_stats = control.stats();
    let (calls_tx, mut calls_rx) = mpsc::channel::<Call>(16);
    let control_task = tokio::spawn(control.serve(calls_tx));
    let mut sighup = tokio::signal::unix::signal(SignalKind::hangup())
        .map_err(|e| RunError::Io { op: "install the SIGHUP handler".into(), source: e })?;
    let mut reloads = [0u64; 2];

    let mut engine = ReplayEngine::start(&cfg.rules, metrics.clone())?;
    // Comparison: one hub for the daemon, when a rule compares.
    let mut hub = compare_hub(&cfg, &metrics)?;
    if let Some(h) = &hub {
        h.open(None);
        engine.set_compare(h);
    }
    log_rules(ops.rules());
    metrics.set_ready(true);
    tracing::info!(
        "capturing ports {:?} ({}), {} rule(s)",
        opts.ports(),
        if capture.attached().is_empty() {
            "no interface matches yet".to_string()
        } else {
            capture.attached().join(", ")
        },
        ops.rules().len()
    );

    let mut summary = Summary {
        interface: cfg.interface.clone(),
        attached: capture.attached(),
        sample_percent: ppm_to_percent(cfg.sample_ppm),
        ..Default::default()
    };
    let max_body = cfg.rules.iter().map(|r| r.controls.max_body_bytes).max().unwrap_or(10 * 1024 * 1024);
    let mut extractor = Extractor::new(ExtractorConfig {
        memory_cap_bytes: usize::try_from(cfg.memory_cap).unwrap_or(usize::MAX),
        // A request larger than every rule's cap would be dropped by replay anyway: stop
        // buffering it early.
        max_body_bytes: max_body,
        keep_response_body: hub.as_ref().map_or(0, |h| h.keep_response_body()),
        // TC sees the primary's responses: a request is replayed once the primary answered it.
        await_response: cfg.hook == crate::config::HookKind::Tc,
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
        let link_events = async {
            match links.as_mut() {
                Some(w) => w.next().await,
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
                metrics.set_operations(ops_snapshot(&ops, &capture, &interfaces, &control_stats, reloads));
                if let Some(h) = &hub {
                    h.tick();
                }
            }
            Some(call) = calls_rx.recv() => {
                let response = match &call.command {
                    Command::Reload => {
                        let mut ctx = Reload { cfg: &mut cfg, ops: &mut ops, file_rules: &mut file_rules, capture: &mut capture, engine: &mut engine, hub: &mut hub, interfaces: &mut interfaces, metrics: &metrics };
                        let r = ctx.apply();
                        reloads[usize::from(r.is_err())] += 1;
                        match r {
                            Ok(()) => Response::ok(serde_json::to_value(ops.status(&capture, &metrics)).unwrap_or_default()),
                            Err(msg) => Response::error(ErrorKind::Rejected, msg),
                        }
                    }
                    Command::Report | Command::Diffs { .. } => control_report(hub.as_deref(), &call.command)
                        .unwrap_or_else(|| Response::error(ErrorKind::Internal, "report")),
                    Command::Reset { rule } => {
                        let names: Vec<&str> = ops.rules().iter().map(|r| r.name.as_str()).collect();
                        control_reset(hub.as_deref(), rule.as_deref(), &names)
                    }
                    other => ops.handle(other, &mut capture, &metrics),
                };
                let _ = call.reply.send(response);
            }
            _ = sighup.recv() => {
                let mut ctx = Reload { cfg: &mut cfg, ops: &mut ops, file_rules: &mut file_rules, capture: &mut capture, engine: &mut engine, hub: &mut hub, interfaces: &mut interfaces, metrics: &metrics };
                let r = ctx.apply();
                reloads[usize::from(r.is_err())] += 1;
                if let Err(msg) = r {
                    tracing::error!("reload (SIGHUP) refused, the running config stays: {msg}");
                }
            }
            ev = link_events => match ev {
                Ok(evs) => interfaces.follow(&mut capture, &evs),
                Err(e) => {
                    tracing::error!("netlink link watch failed ({e}); interfaces are no longer followed");
                    links = None;
                }
            },
            () = &mut shutdown => break,
            () = &mut stop => break,
        }
        ingest(&mut batch, &mut bad, &mut summary, &mut extractor, &mut events, &engine);
        // Requests begun and not yet handed over are captured and in flight: keep the ledger's
        // figure fresh, so that the next batch's admissions take over what they should.
        publisher.sync_ledger(&metrics, extractor.stats());
    }
    // The control socket closes first: nothing changes the daemon while it stops.
    drop(calls_rx);
    let _ = control_task.await;

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
    summary.requests = summary::RequestLedger::new(&kernel, summary.request.request_starts);
    tracing::info!("{}", summary.requests);
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

/// The rules as operators see them, from the config.
fn rule_runtimes(cfg: &DaemonConfig) -> Vec<RuleRuntime> {
    cfg.rules
        .iter()
        .map(|r| RuleRuntime {
            name: r.name.clone(),
            services: r.services(),
            shadow: r.shadow.as_ref().map(ToString::to_string),
            rate_ppm: r.sample_ppm,
            paused: false,
        })
        .collect()
}

fn log_rules(rules: &[RuleRuntime]) {
    for r in rules {
        let services: Vec<String> = r.services.iter().map(ToString::to_string).collect();
        match &r.shadow {
            Some(t) => tracing::info!(
                "rule {}: {} mirrored to {t} at {}%",
                r.name,
                services.join(","),
                ppm_to_percent(r.rate_ppm)
            ),
            None => tracing::warn!(
                "rule {}: {} has no shadow: capture only, requests counted as no_target",
                r.name,
                services.join(",")
            ),
        }
    }
}

fn ops_snapshot(
    ops: &Operations,
    capture: &Capture,
    interfaces: &Interfaces,
    control: &ControlStats,
    reloads: [u64; 2],
) -> OpsSnapshot {
    OpsSnapshot {
        interfaces_attached: capture.interfaces().len() as u64,
        interface_events: interfaces.events,
        control_requests: control.requests.load(std::sync::atomic::Ordering::Relaxed),
        control_errors: control.errors(),
        reloads,
        rule_sample_ratio: ops
            .rules()
            .iter()
            .enumerate()
            .map(|(i, r)| (r.name.clone(), capture.rule_ppm(i).map_or(f64::NAN, |p| f64::from(p) / 1e6)))
            .collect(),
    }
}

/// Which interfaces to capture on, followed as they come and go.
struct Interfaces {
    patterns: Vec<InterfacePattern>,
    hook: HookKind,
    /// attached, detached, attach_failed.
    events: [u64; 3],
}

impl Interfaces {
    /// Attach to every present interface that matches and is not attached, and detach from
    /// attached ones that no longer match or exist. `strict`: an attach failure is an error
    /// (at start), rather than logged and counted (later).
    fn attach_present(&mut self, capture: &mut Capture, strict: bool) -> Result<(), CaptureError> {
        let present: Vec<String> = match list_interfaces() {
            Ok(l) => l.into_iter().map(|(_, n)| n).collect(),
            Err(e) => {
                tracing::warn!("list network interfaces: {e}");
                return Ok(());
            }
        };
        for name in capture.interfaces() {
            if !present.contains(&name) || !any_matches(&self.patterns, &name) {
                self.detach(capture, &name);
            }
        }
        for name in present.iter().filter(|n| any_matches(&self.patterns, n)) {
            if capture.interfaces().contains(name) {
                continue;
            }
            match capture.attach_interface(name, self.hook) {
                Ok(()) => {
                    self.events[0] += 1;
                    tracing::info!("attached to {name}");
                }
                Err(e) if strict => return Err(e),
                Err(e) => {
                    self.events[2] += 1;
                    tracing::warn!("attach to {name}: {e}");
                }
            }
        }
        Ok(())
    }

    fn detach(&mut self, capture: &mut Capture, name: &str) {
        if capture.detach_interface(name) {
            self.events[1] += 1;
            tracing::info!("detached from {name}");
        }
    }

    /// Netlink told us about links: attach new matches, forget deleted ones.
    fn follow(&mut self, capture: &mut Capture, evs: &[LinkEvent]) {
        for ev in evs {
            match ev {
                LinkEvent::New { name, .. } => {
                    if any_matches(&self.patterns, name) && !capture.interfaces().contains(name) {
                        match capture.attach_interface(name, self.hook) {
                            Ok(()) => {
                                self.events[0] += 1;
                                tracing::info!("attached to {name} (new interface)");
                            }
                            Err(e) => {
                                self.events[2] += 1;
                                tracing::warn!("attach to new interface {name}: {e}");
                            }
                        }
                    }
                }
                LinkEvent::Deleted { name, .. } => self.detach(capture, name),
                LinkEvent::Resync => {
                    let _ = self.attach_present(capture, false);
                }
            }
        }
    }
}

/// Names of the rules of `new` that `old` has under the same name with another shadow target
/// (or none, or one where it had none): their comparison starts a new epoch.
fn retargeted(old: &[crate::config::Rule], new: &[crate::config::Rule]) -> Vec<String> {
    let target = |r: &crate::config::Rule| r.shadow.as_ref().map(ToString::to_string);
    new.iter()
        .filter(|r| old.iter().any(|o| o.name == r.name && target(o) != target(r)))
        .map(|r| r.name.clone())
        .collect()
}

/// A reload (SIGHUP or `shadowctl reload`): read the config file again, validate everything,
/// then apply the rules to the kernel, the replay lanes and the interfaces. Flow state is kept;
/// replays queued under the old rules finish (up to [`RELOAD_GRACE`]). Refused as a whole, with
/// the reason, when anything is invalid: the running config stays.
struct Reload<'a> {
    cfg: &'a mut DaemonConfig,
    ops: &'a mut Operations,
    file_rules: &'a mut Vec<RuleRuntime>,
    capture: &'a mut Capture,
    engine: &'a mut ReplayEngine,
    hub: &'a mut Option<Arc<CompareHub>>,
    interfaces: &'a mut Interfaces,
    metrics: &'a Arc<Metrics>,
}

impl Reload<'_> {
    fn apply(&mut self) -> Result<(), String> {
        let Some(args) = &self.cfg.source else {
            return Err("started without --config: there is no file to reload".into());
        };
        let new = args.as_ref().clone().resolve().map_err(|e| e.to_string())?;
        let new_engine = ReplayEngine::start(&new.rules, self.metrics.clone()).map_err(|e| e.to_string())?;
        // The comparison goes on across a reload that keeps every rule's name and compare
        // settings; otherwise it starts anew for the new rules (the report says so by its counts).
        let spec = |c: &DaemonConfig| -> Vec<(String, Option<crate::compare::CompareSettings>)> {
            c.rules.iter().map(|r| (r.name.clone(), r.compare.clone())).collect()
        };
        let kept = spec(&new) == spec(self.cfg);
        let new_hub =
            if kept { self.hub.clone() } else { compare_hub(&new, self.metrics).map_err(|e| e.to_string())? };
        let retargeted = retargeted(&self.cfg.rules, &new.rules);
        if let Some(h) = &new_hub {
            new_engine.set_compare(h);
        }
        let new_file = rule_runtimes(&new);
        let before = self.ops.rules().to_vec();
        let merged = self.ops.replace_rules(self.file_rules, new_file.clone());
        if let Err(e) = self.capture.set_rules(&Operations::kernel_rules(&merged)) {
            self.ops.replace_rules(&[], before);
            return Err(e.to_string());
        }
        *self.file_rules = new_file;
        let old = std::mem::replace(self.engine, new_engine);
        match (&*self.hub, &new_hub) {
            (Some(h), Some(_)) if kept => {
                for (i, _) in new.rules.iter().enumerate().filter(|(_, r)| retargeted.contains(&r.name)) {
                    // What the old target still answers is no pair of the new epoch.
                    old.retire_compare(i);
                    h.start_epoch(i, crate::compare::EpochReason::Target);
                }
            }
            (before, Some(h)) => h.open(before.as_deref().map(|b| (b, retargeted.as_slice()))),
            (Some(before), None) => before.close(),
            (None, None) => {}
        }
        tokio::spawn(async move { old.shutdown(RELOAD_GRACE).await });
        if !matches!((&*self.hub, &new_hub), (Some(a), Some(b)) if Arc::ptr_eq(a, b)) {
            tracing::info!("reload changed the rules' names or comparison settings: the comparison starts anew");
        }
        *self.hub = new_hub;
        if new.interfaces != self.interfaces.patterns {
            self.interfaces.patterns = new.interfaces.clone();
            let _ = self.interfaces.attach_present(self.capture, false);
        }
        log_rules(self.ops.rules());
        tracing::info!("reloaded: {} rule(s)", self.ops.rules().len());
        let source = self.cfg.source.take();
        *self.cfg = new;
        self.cfg.source = source;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{config::Rule, replay::controls::ShadowTarget};

    fn rule(name: &str, port: u16) -> Rule {
        let mut r = Rule::new(vec![80], Some(ShadowTarget { host: "10.0.0.9".into(), port }), Default::default());
        r.name = name.into();
        r
    }

    #[test]
    fn a_rule_keeping_its_name_with_another_shadow_is_retargeted() {
        let old = [rule("api", 8080), rule("web", 8081), rule("gone", 8082)];
        let mut capture_only = rule("web", 0);
        capture_only.shadow = None;
        let new = [rule("web", 8081), rule("api", 9090), rule("added", 1)];
        assert_eq!(retargeted(&old, &new), ["api"], "moved rules are matched by name, new ones are not retargeted");
        assert_eq!(retargeted(&old, &[capture_only]), ["web"]);
        assert!(retargeted(&old, &old).is_empty());
    }
}
