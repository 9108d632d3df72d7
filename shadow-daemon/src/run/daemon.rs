//! The daemon as a value: everything the loop joins, and one method per event.

use std::sync::Arc;

use shadow_common::counter;
use tokio::{signal::unix::SignalKind, sync::mpsc};

use super::{
    Inputs, RunError, SHUTDOWN_GRACE, SLOW_DUTIES, TICK,
    interfaces::Interfaces,
    monotonic_ns,
    publish::Publisher,
    ramp::Ramps,
    summary::{self, Summary, extraction_summary},
};
use crate::{
    capture::{
        Capture, CaptureOptions, HookKind, Record, SegmentSource, check_interface,
        links::{InterfacePattern, LinkEvent, LinkWatcher},
    },
    compare::pairs::PairLimits,
    config::{DaemonConfig, ppm_to_percent},
    control::{
        Command, ErrorBody, ErrorKind, Response, Status,
        server::{Call, ControlServer, ControlStats},
    },
    correlate::Correlator,
    egress::{Clocks, EgressConfig, Fence},
    http::DropReason,
    hub::{self, CompareHub},
    metrics::{
        Metrics, MetricsServer,
        ops::{Operations as OpsSnapshot, Reloads},
    },
    operate::{Facts, Operations, RuleRuntime},
    ramp::{RampAction, RampFeed},
    reassembly::{Extractor, ExtractorConfig, HttpEvent},
    replay::ReplayEngine,
    reply::{RampReply, Reply},
    rule::RuleId,
};

/// Capture, extraction, replay, comparison and operations of one daemon, joined.
pub(super) struct Daemon {
    pub(super) cfg: DaemonConfig,
    pub(super) metrics: Arc<Metrics>,
    metrics_server: MetricsServer,
    pub(super) ops: Operations,
    /// The rules as the file last said them: what a reload compares against.
    pub(super) file_rules: Vec<RuleRuntime>,
    pub(super) capture: Capture,
    pub(super) interfaces: Interfaces,
    pub(super) engine: ReplayEngine,
    /// Where requests wait for the primary's answer and the shadow's, and the comparison (its
    /// hub, when a rule compares).
    pub(super) correlator: Arc<Correlator>,
    extractor: Extractor,
    /// Extracted messages on their way to replay and comparison (kept to reuse its memory).
    events: Vec<HttpEvent>,
    summary: Summary,
    publisher: Publisher,
    control_stats: Arc<ControlStats>,
    pub(super) reloads: Reloads,
    /// The egress fences of the rules that have one (`None`: no rule fences).
    pub(super) fence: Option<Fence>,
    /// Time since the fence last looked and idle shadow connections were closed.
    since_slow_duties: std::time::Duration,
    /// What the rules' ramps see, and the ramps (`None`: no rule ramps).
    ramp_feed: Arc<RampFeed>,
    pub(super) ramps: Option<Ramps>,
}

impl Daemon {
    /// Bind the metrics endpoint, load and attach capture, open the control socket, start
    /// replay and comparison: ready for the first event.
    pub(super) async fn start(cfg: DaemonConfig) -> Result<(Self, Inputs), RunError> {
        let metrics = Arc::new(Metrics::new(cfg.max_endpoints));
        // `/verdict` asks the loop for the report, as `shadowctl report` does.
        let (verdict_tx, verdicts) = mpsc::channel(4);
        let metrics_server =
            MetricsServer::bind_with_verdict(cfg.metrics_addr, metrics.clone(), Some(verdict_tx)).await?;

        let facts = Facts {
            hook: cfg.hook,
            interfaces: cfg.interfaces.iter().map(ToString::to_string).collect(),
            ring_buffer_bytes: u64::from(cfg.ring_buffer_size),
        };
        // The ramps before the kernel's rules: a ramping rule samples at its ramp's rate from the
        // first packet, never at the config's.
        let ramp_feed = Arc::new(RampFeed::default());
        let ramps = Ramps::start(&cfg, ramp_feed.clone())?;
        let mut runtimes = rule_runtimes(&cfg);
        for (id, ppm) in ramps.as_ref().map(Ramps::rates).unwrap_or_default() {
            if let Some(r) = runtimes.get_mut(id.index()) {
                r.rate_ppm = ppm;
            }
        }
        let ops = Operations::new(facts, runtimes);
        // The fence first: a wrong pin directory or cgroup path fails before anything attaches.
        let fence = Fence::start(&cfg.pin_dir, &fences(&cfg))?;
        let Attached { capture, interfaces, source, links, ports } = attach(&cfg, &ops)?;
        let control = ControlServer::bind(&cfg.control).await?;
        tracing::info!("control socket {}", control.path().display());
        let control_stats = control.stats();
        let (calls_tx, calls) = mpsc::channel::<Call>(16);
        let control_task = tokio::spawn(control.serve(calls_tx));
        let sighup = tokio::signal::unix::signal(SignalKind::hangup())
            .map_err(|e| RunError::Io { op: "install the SIGHUP handler".into(), source: e })?;

        // Comparison: one hub for the daemon, when a rule compares; replay hands it the shadow's
        // answers from the first request on.
        let hub = compare_hub(&cfg, &metrics)?;
        if let Some(h) = &hub {
            h.open(None);
        }
        let keep_response_body = hub.as_ref().map_or(0, |h| h.keep_response_body());
        let correlator = Correlator::with_ramp(metrics.clone(), hub, ramp_feed.clone());
        let engine = ReplayEngine::start(&cfg.rules, correlator.clone())?;
        log_rules(ops.rules());
        metrics.set_ready(true);
        // systemd (Type=notify): started now that capture is attached, not when the process was.
        tell_systemd("READY=1\nSTATUS=capturing");
        tracing::info!(
            "capturing ports {:?} ({}), {} rule(s)",
            ports,
            if capture.attached().is_empty() {
                "no interface matches yet".to_string()
            } else {
                capture.attached().join(", ")
            },
            ops.rules().len()
        );

        let summary = Summary {
            interface: cfg.interface.clone(),
            attached: capture.attached(),
            sample_percent: ppm_to_percent(cfg.sample_ppm),
            ..Default::default()
        };
        let max_body = cfg.rules.iter().map(|r| r.controls.max_body_bytes).max().unwrap_or(10 * 1024 * 1024);
        let extractor = Extractor::new(ExtractorConfig {
            memory_cap_bytes: usize::try_from(cfg.memory_cap).unwrap_or(usize::MAX),
            // A request larger than every rule's cap would be dropped by replay anyway: stop
            // buffering it early.
            max_body_bytes: max_body,
            keep_response_body,
            // TC sees the primary's responses: a request is replayed once the primary answered it.
            await_response: cfg.hook == HookKind::Tc,
            ..ExtractorConfig::default()
        });
        let tick = crate::sys::timer::Ticker::every(TICK)
            .map_err(|e| RunError::Io { op: "start the tick timer (timerfd)".into(), source: e })?;
        let inputs = Inputs { verdicts, source, calls, control_task, sighup, links, tick };
        let daemon = Self {
            file_rules: ops.rules().to_vec(),
            cfg,
            metrics,
            metrics_server,
            ops,
            capture,
            interfaces,
            engine,
            correlator,
            extractor,
            events: Vec::with_capacity(64),
            summary,
            publisher: Publisher { ledger_seen: [0; DropReason::COUNT] },
            control_stats,
            reloads: Reloads::default(),
            fence,
            since_slow_duties: std::time::Duration::ZERO,
            ramp_feed,
            ramps,
        };
        Ok((daemon, inputs))
    }

    /// One ring-buffer record, read in place: counted, then through reassembly and extraction
    /// (which copies only what it keeps; the record is released after this call). A record that
    /// did not decode is counted by reason. `now_ns` is read once per batch.
    pub(super) fn on_record(&mut self, record: Record<'_>, now_ns: u64) {
        match record {
            Ok(s) => {
                self.summary.count(&s);
                self.extractor.push(s, now_ns, &mut self.events);
            }
            Err(e) => *self.summary.bad_records.entry(e.reason()).or_default() += 1,
        }
    }

    /// After every event (a batch of records, a tick, a command) and the final drain: the
    /// messages that came out go to replay and comparison, and the ledger is kept fresh.
    pub(super) fn after_event(&mut self) {
        if !self.events.is_empty() {
            self.route();
        }
        // Requests begun and not yet handed over are captured and in flight: keep the ledger's
        // figure fresh, so that the next batch's admissions take over what they should.
        self.publisher.sync_ledger(&self.metrics, self.extractor.stats());
    }

    fn route(&mut self) {
        route(&mut self.events, &self.engine, &self.correlator);
    }

    /// The comparison, when a rule compares.
    pub(super) fn hub(&self) -> Option<&CompareHub> {
        self.correlator.hub().map(AsRef::as_ref)
    }

    /// The loop's beat, `elapsed` after the one before: expire idle flows, publish kernel
    /// counters, extraction and operations figures, let the comparison settle what waited too
    /// long, judge the ramps; about once a second, the fence and the shadows' idle connections.
    pub(super) fn on_tick(&mut self, elapsed: std::time::Duration) {
        self.extractor.tick(monotonic_ns(), &mut self.events);
        self.route();
        let kernel = self.capture.counters().ok();
        self.publisher.publish(&self.metrics, self.extractor.stats(), &self.summary.bad_records, kernel.as_ref());
        if let Some(h) = self.hub() {
            h.tick();
        }
        // Judged after the comparison settled, published with the same tick's figures.
        self.judge_ramps();
        self.metrics.set_operations(self.ops_snapshot());
        self.since_slow_duties += elapsed;
        if self.since_slow_duties >= SLOW_DUTIES {
            self.since_slow_duties = std::time::Duration::ZERO;
            self.look_at_fence();
            // Idle connections to the shadows close once too old, on the same beat.
            self.engine.prune();
        }
    }

    /// The ramps judge their windows; the rates that changed go to the kernel.
    fn judge_ramps(&mut self) {
        let changes = match &mut self.ramps {
            Some(r) => r.tick(),
            None => return,
        };
        self.apply_ramp_rates(&changes);
    }

    pub(super) fn apply_ramp_rates(&mut self, changes: &[(RuleId, u32)]) {
        for &(id, ppm) in changes {
            if let Err(e) = self.ops.set_rule_ppm(&mut self.capture, id, ppm) {
                tracing::error!("ramp: cannot set {id}'s rate in the kernel: {}", e.message);
            }
        }
    }

    /// The feed the ramps read (shared with every correlator).
    pub(super) fn ramp_feed(&self) -> &Arc<RampFeed> {
        &self.ramp_feed
    }

    fn ramp_call(&mut self, rule: Option<&str>, action: Option<RampAction>) -> Result<Reply, ErrorBody> {
        let id = rule.map(|n| self.ops.id_of(n)).transpose()?;
        let Some(ramps) = self.ramps.as_mut() else {
            return Err(ErrorBody::new(ErrorKind::NoSuchRule, "no rule ramps ([rule.ramp], --ramp)"));
        };
        if let (Some(name), Some(i)) = (rule, id)
            && ramps.status_of(i).is_none()
        {
            return Err(ErrorBody::new(
                ErrorKind::NoSuchRule,
                format!("rule '{name}' has no ramp ([rule.ramp], --ramp)"),
            ));
        }
        let changes = match action {
            Some(a) => ramps.act(rule, id, a)?,
            None => Vec::new(),
        };
        self.apply_ramp_rates(&changes);
        self.metrics.set_operations(self.ops_snapshot());
        let rules = self.ramps.as_ref().map(|r| r.status(id)).unwrap_or_default();
        Ok(Reply::Ramp(RampReply { rules }))
    }

    /// `rate` is refused for a rule whose ramp sets its rate.
    fn check_rate_owner(&self, rule: Option<&str>) -> Result<(), ErrorBody> {
        let Some(ramps) = &self.ramps else { return Ok(()) };
        let ids: Vec<RuleId> = match rule {
            Some(n) => vec![self.ops.id_of(n)?],
            None => RuleId::all(self.ops.rules().len()).collect(),
        };
        for id in ids {
            if let Some(state) = ramps.owner(id) {
                let name = &self.ops.rules()[id.index()].name;
                return Err(ErrorBody::new(
                    ErrorKind::Rejected,
                    format!(
                        "rule {name}: its ramp sets the rate ({state}); abort it first (shadowctl ramp abort --rule {name}), or pause it to hold its step"
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The fence follows its cgroups, and what the shadows tried goes to the logs and metrics.
    pub(super) fn look_at_fence(&mut self) {
        if let Some(f) = &mut self.fence {
            f.follow_cgroups();
            self.metrics.set_egress_attempts(f.poll(clocks()));
        }
    }

    /// Interfaces came or went (netlink).
    pub(super) fn on_links(&mut self, evs: &[LinkEvent]) {
        self.interfaces.follow(&mut self.capture, evs);
    }

    /// Every control command, answered here.
    pub(super) fn on_command(&mut self, command: &Command) -> Response {
        let answer = match command {
            Command::Status => Ok(self.status()),
            Command::Stats => Ok(Reply::Stats(Box::new(self.metrics.summary()))),
            Command::Rate { percent, rule } => self
                .check_rate_owner(rule.as_deref())
                .and_then(|()| self.ops.set_rate(&mut self.capture, rule.as_deref(), *percent))
                .map(|()| self.status()),
            Command::Pause { rule } => {
                self.ops.set_paused(&mut self.capture, rule.as_deref(), true).map(|()| self.status())
            }
            Command::Resume { rule } => {
                self.ops.set_paused(&mut self.capture, rule.as_deref(), false).map(|()| self.status())
            }
            Command::Reload => self.reload().map(|()| self.status()),
            Command::Report => Ok(Reply::Report(Box::new(self.report()))),
            Command::Diffs { endpoint } => Ok(Reply::Diffs(hub::diffs_of(self.hub(), endpoint.as_deref()))),
            Command::Reset { rule } => {
                let names: Vec<&str> = self.ops.rules().iter().map(|r| r.name.as_str()).collect();
                hub::reset_epochs(self.hub(), rule.as_deref(), &names).map(Reply::Reset)
            }
            Command::Egress { rule } => self.fence_call(|f| f.status(rule.as_deref(), clocks())),
            Command::EgressDetach { rule } => self.fence_call(|f| f.detach(Some(rule), clocks())),
            Command::Ramp { rule, action } => self.ramp_call(rule.as_deref(), *action),
        };
        Reply::into_response(answer)
    }

    /// The comparison report, with the fences' findings: `report` and `/verdict`.
    pub(super) fn report(&self) -> hub::DaemonReport {
        let mut report = hub::report_of(self.hub());
        report.egress = self.fence.as_ref().map(|f| f.findings(clocks())).unwrap_or_default();
        report
    }

    fn fence_call(
        &mut self,
        call: impl FnOnce(&mut Fence) -> Result<crate::egress::EgressStatus, String>,
    ) -> Result<Reply, ErrorBody> {
        let Some(f) = self.fence.as_mut().filter(|f| !f.is_empty()) else {
            return Err(ErrorBody::new(
                ErrorKind::NoSuchRule,
                "no rule has an egress fence ([rule.egress], --egress-cgroup)",
            ));
        };
        let answer = call(f).map(|s| Reply::Egress(Box::new(s))).map_err(|m| ErrorBody::new(ErrorKind::NoSuchRule, m));
        if let Some(f) = &mut self.fence {
            self.metrics.set_egress_attempts(f.poll(clocks()));
        }
        answer
    }

    fn status(&self) -> Reply {
        let mut status: Status = self.ops.status(&self.capture, &self.metrics);
        if let Some(r) = &self.ramps {
            for (i, rs) in status.rules.iter_mut().enumerate() {
                rs.ramp = r.status_of(RuleId::new(i));
            }
        }
        Reply::Status(Box::new(status))
    }

    fn ops_snapshot(&self) -> OpsSnapshot {
        OpsSnapshot {
            interfaces_attached: self.capture.interfaces().len() as u64,
            interface_events: self.interfaces.events,
            control_requests: self.control_stats.requests.load(std::sync::atomic::Ordering::Relaxed),
            control_errors: self.control_stats.errors(),
            reloads: self.reloads,
            rule_sample_ratio: self
                .ops
                .rules()
                .iter()
                .zip(RuleId::all(self.ops.rules().len()))
                .map(|(r, id)| (r.name.clone(), self.capture.rule_ppm(id).map_or(f64::NAN, |p| f64::from(p) / 1e6)))
                .collect(),
            ramps: self.ramps.as_ref().map(Ramps::figures).unwrap_or_default(),
        }
    }

    /// Stop: close the control socket, process what the kernel already emitted, detach, give
    /// replay its grace, settle the comparison, and write the summary.
    pub(super) async fn finish(mut self, inputs: Inputs) -> Result<Summary, RunError> {
        let Inputs { mut source, calls, control_task, .. } = inputs;
        // The control socket closes first: nothing changes the daemon while it stops.
        drop(calls);
        let _ = control_task.await;

        // Whatever the kernel emitted before we stopped is still processed.
        let now_ns = monotonic_ns();
        source.drain_now(|r| self.on_record(r, now_ns));
        self.after_event();
        self.metrics.set_ready(false);
        tell_systemd("STOPPING=1");
        let kernel = self.capture.counters()?;
        let ramps = self.ramps.as_ref().map(|r| r.status(None)).unwrap_or_default();
        drop(self.capture); // detach before the slower shutdown work
        let Self {
            cfg,
            metrics,
            metrics_server,
            engine,
            correlator,
            mut extractor,
            mut events,
            mut summary,
            mut publisher,
            fence: self_fence,
            ..
        } = self;
        // Requests still being reassembled can no longer complete.
        extractor.clear(DropReason::Incomplete, &mut events);
        route(&mut events, &engine, &correlator);
        publisher.publish(&metrics, extractor.stats(), &summary.bad_records, Some(&kernel));
        engine.shutdown(SHUTDOWN_GRACE).await;
        if let Some(h) = correlator.hub() {
            // Replay has stopped: no shadow half can come any more.
            h.drain();
            let report = h.report();
            tracing::info!("comparison:\n{}", report.render_text());
            summary.compare = Some(report);
        }
        summary.ramps = ramps;
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
        if let Some(f) = &self_fence {
            summary.egress = f.status(None, clocks()).ok();
            summary.compare.get_or_insert_with(|| hub::report_of(None)).egress = f.findings(clocks());
        }
        let mirror = metrics.summary();
        tracing::info!("stopped:\n{mirror}");
        summary.mirror = Some(mirror);
        metrics_server.shutdown().await;

        let json = serde_json::to_string_pretty(&summary).unwrap_or_default();
        if let Some(path) = &cfg.summary_file {
            std::fs::write(path, &json)
                .map_err(|e| RunError::Io { op: format!("write summary to {}", path.display()), source: e })?;
        }
        Ok(summary)
    }
}

/// The capture, attached.
struct Attached {
    capture: Capture,
    interfaces: Interfaces,
    source: SegmentSource,
    links: Option<LinkWatcher>,
    /// The service ports captured.
    ports: Vec<u16>,
}

/// Load the capture for the rules, attach it to the interfaces present, and take its ring
/// buffer; with a glob among the interfaces, watch links come and go.
fn attach(cfg: &DaemonConfig, ops: &Operations) -> Result<Attached, RunError> {
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
    let mut interfaces = Interfaces::new(cfg.interfaces.clone(), cfg.hook);
    interfaces.attach_present(&mut capture, true)?;
    let source = capture.take_source()?;
    if let Some(l) = capture.take_kernel_log() {
        tokio::spawn(l.run());
    }
    let links = if cfg.interfaces.iter().any(InterfacePattern::is_glob) {
        let w = LinkWatcher::new()
            .map_err(|e| RunError::Io { op: "watch network interfaces (netlink)".into(), source: e })?;
        Some(w)
    } else {
        None
    };
    Ok(Attached { capture, interfaces, source, links, ports: opts.ports() })
}

/// Extracted messages to replay (requests) and to the primary's side of latency and
/// comparison (responses).
fn route(events: &mut Vec<HttpEvent>, engine: &ReplayEngine, correlator: &Correlator) {
    for ev in events.drain(..) {
        match ev {
            // Never blocks: a full queue is a counted drop inside the engine.
            HttpEvent::Request(req) => drop(engine.submit(req)),
            HttpEvent::Response(resp) => correlator.primary(&resp),
        }
    }
}

/// The comparison hub for the config's rules, or `None` when no rule compares.
pub(super) fn compare_hub(cfg: &DaemonConfig, metrics: &Arc<Metrics>) -> Result<Option<Arc<CompareHub>>, RunError> {
    let rules: Vec<(String, Option<&crate::compare::CompareSettings>)> =
        cfg.rules.iter().map(|r| (r.name.clone(), r.compare.as_ref())).collect();
    Ok(CompareHub::new(&rules, PairLimits::default(), metrics.clone())?)
}

/// Each rule's name and fence, from the config.
pub(super) fn fences(cfg: &DaemonConfig) -> Vec<(String, Option<EgressConfig>)> {
    cfg.rules.iter().map(|r| (r.name.clone(), r.egress.clone())).collect()
}

/// A state for systemd's `Type=notify` (nothing when not run by it); a failure is logged once
/// per call, never fatal.
pub(super) fn tell_systemd(state: &str) {
    if let Err(e) = crate::sys::notify::notify(state) {
        tracing::warn!("cannot notify systemd ({state:?}): {e}");
    }
}

/// Both clocks now, to date the kernel's monotonic timestamps.
fn clocks() -> Clocks {
    let unix_s = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
    Clocks { monotonic_ns: monotonic_ns(), unix_s }
}

/// The rules as operators see them, from the config.
pub(super) fn rule_runtimes(cfg: &DaemonConfig) -> Vec<RuleRuntime> {
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

pub(super) fn log_rules(rules: &[RuleRuntime]) {
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
