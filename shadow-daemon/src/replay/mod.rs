//! Replay: captured requests to the shadow, over the daemon's own connections.
//!
//! ```text
//! submit (sync, never blocks) ─ rule by service port ─ controls (method, path, body, rate)
//!    └─ try_send ─► bounded queue per rule ─► dispatcher ─ `concurrency` slots ─► one batch per slot
//!                                      (a request, or a pipeline of those waiting together)
//!                                                            └─ keep-alive pool ─ edit ─ one write ─ read by framing
//! ```
//!
//! Idempotent requests that wait together go in one write on one connection ([`pipeline`]): one
//! wake-up, one write and a read or two per batch instead of per request.
//!
//! Every request submitted is admitted into the metrics ledger and settled exactly once: replayed
//! (a complete response came back) or dropped with a reason. A full queue drops (`queue_full`)
//! instead of waiting, so capture never slows down and memory does not grow with a slow or dead
//! shadow. A shadow that is down is not fatal: a failed exchange is counted (`shadow_error`, with
//! the kind in `shadow_errors_total`), and after a few in a row the target is backed off
//! ([`backoff`]): its requests are dropped (`shadow_backoff`) at submission, costing no connection,
//! until a probe gets an answer. Response bodies are read up to a cap, past which the connection
//! is closed (`shadow_response_too_large`).
//!
//! Logs name the target, the request id and what failed, never header values.

pub mod backoff;
mod conn;
pub mod controls;
mod edit;
pub mod pipeline;
mod shape;
mod slots;
pub mod trace;

use std::{
    collections::HashMap,
    future::Future,
    io,
    pin::Pin,
    sync::{
        Arc, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    task::Poll,
    time::Duration,
};

use tokio::{
    sync::{mpsc, watch},
    task::JoinHandle,
    time::Instant,
};

/// The header-edit pass the replay runs on every request, for the bench's micro stages.
#[cfg(feature = "test-util")]
pub fn edit_request_for_bench(
    req: &CapturedRequest,
    controls: &ReplayControls,
    target: &ShadowTarget,
    out: &mut Vec<u8>,
) -> Result<trace::TraceOutcome, ReplayError> {
    edit_request_into(req, controls, target, out)
}
use self::{
    backoff::{Admission, Backoff, Probe},
    conn::Pool,
    controls::{RateLimit, ReplayControls, ShadowTarget},
    edit::edit_request_into,
    pipeline::{Part, Route},
    shape::{Admit, Done, FlowGate},
    slots::{Slots, Work},
};
use crate::{
    compare::CompareSettings,
    correlate::Correlator,
    http::{HttpError, keeps_alive},
    message::CapturedRequest,
    metrics::{EndpointId, Metrics, RequestDrop, RequestTicket, Role, ShadowErrorKind, TargetFailure, TraceMetrics},
    rule::RuleId,
    service::{ServiceMatch, most_specific},
    trace_link::TraceLink,
};

/// At most one warning per rule in this period; the rest are counted in the next one.
const WARN_EVERY: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("start the replay engine: not inside a tokio runtime")]
    NoRuntime,
    #[error("start the replay engine: service {service} is in rule[{first}] and rule[{second}]")]
    DuplicateService { service: String, first: usize, second: usize },
    #[error("resolve shadow {target}: {source}")]
    Resolve { target: String, source: io::Error },
    #[error("resolve shadow {target}: no address")]
    NoAddress { target: String },
    #[error("connect to shadow {target}: {source}")]
    Connect { target: String, source: io::Error },
    #[error("connect to shadow {target}: no connection within {timeout:?}")]
    ConnectTimeout { target: String, timeout: Duration },
    #[error("send request {id} to shadow {target}: {source}")]
    Write { id: u64, target: String, source: io::Error },
    #[error("read the response to request {id} from shadow {target}: {source}")]
    Read { id: u64, target: String, source: io::Error },
    #[error(
        "read the response to request {id} from shadow {target}: connection closed before the response was complete"
    )]
    Closed { id: u64, target: String },
    #[error("read the response to request {id} from shadow {target}: {what}")]
    BadResponse { id: u64, target: String, what: HttpError },
    #[error("read the response to request {id} from shadow {target}: more than 8 interim (1xx) responses")]
    TooManyInterim { id: u64, target: String },
    #[error(
        "read the response to request {id} from shadow {target}: a body after its {status} response, which has none \
         (HEAD, 204, 304); connection closed"
    )]
    BodyWithoutBody { id: u64, target: String, status: u16 },
    #[error("replay request {id} to shadow {target}: no complete response within {timeout:?}")]
    Timeout { id: u64, target: String, timeout: Duration },
    #[error("read the response to request {id} from shadow {target}: body larger than {cap} bytes; connection closed")]
    ResponseTooLarge { id: u64, target: String, cap: u64 },
    #[error("edit request {id} for the shadow: the captured head is inconsistent: {what}")]
    InvalidCapture { id: u64, what: &'static str },
}

impl ReplayError {
    /// The `shadow_errors_total` kind; `None` for errors that are not the shadow's doing. A
    /// response past the cap has its own drop reason and is not in `shadow_errors_total`; to the
    /// comparison it is a bad response.
    pub fn kind(&self) -> Option<ShadowErrorKind> {
        let io_kind = |e: &io::Error| match e.kind() {
            io::ErrorKind::ConnectionRefused => ShadowErrorKind::ConnectRefused,
            io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::UnexpectedEof => ShadowErrorKind::Reset,
            io::ErrorKind::TimedOut => ShadowErrorKind::Timeout,
            _ => ShadowErrorKind::Other,
        };
        Some(match self {
            Self::NoRuntime | Self::DuplicateService { .. } | Self::InvalidCapture { .. } => return None,
            Self::Resolve { .. } | Self::NoAddress { .. } => ShadowErrorKind::Other,
            Self::Connect { source, .. } | Self::Write { source, .. } | Self::Read { source, .. } => io_kind(source),
            Self::ConnectTimeout { .. } | Self::Timeout { .. } => ShadowErrorKind::Timeout,
            Self::Closed { .. } => ShadowErrorKind::Reset,
            Self::BadResponse { .. }
            | Self::TooManyInterim { .. }
            | Self::BodyWithoutBody { .. }
            | Self::ResponseTooLarge { .. } => ShadowErrorKind::BadResponse,
        })
    }

    /// How the exchange with the target failed (`shadow_target_failures_total{kind}`, and what
    /// counts toward its backoff); `None` for errors that are not the target's doing.
    pub fn target_failure(&self) -> Option<TargetFailure> {
        let exchange = |e: &io::Error| match e.kind() {
            io::ErrorKind::UnexpectedEof => TargetFailure::Closed,
            io::ErrorKind::TimedOut => TargetFailure::Timeout,
            _ => TargetFailure::Reset,
        };
        Some(match self {
            Self::NoRuntime | Self::DuplicateService { .. } | Self::InvalidCapture { .. } => return None,
            Self::Resolve { .. } | Self::NoAddress { .. } => TargetFailure::ConnectError,
            Self::Connect { source, .. } => match source.kind() {
                io::ErrorKind::ConnectionRefused => TargetFailure::ConnectRefused,
                io::ErrorKind::TimedOut => TargetFailure::ConnectTimeout,
                // Accepted and reset before the connect was seen complete (a shadow that resets
                // at once, on loopback).
                io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted | io::ErrorKind::BrokenPipe => {
                    TargetFailure::Reset
                }
                _ => TargetFailure::ConnectError,
            },
            Self::ConnectTimeout { .. } => TargetFailure::ConnectTimeout,
            Self::Write { source, .. } | Self::Read { source, .. } => exchange(source),
            Self::Closed { .. } => TargetFailure::Closed,
            Self::Timeout { .. } => TargetFailure::Timeout,
            Self::BadResponse { .. } | Self::TooManyInterim { .. } | Self::BodyWithoutBody { .. } => {
                TargetFailure::BadResponse
            }
            Self::ResponseTooLarge { .. } => TargetFailure::ResponseTooLarge,
        })
    }
}

/// One rule as the config file (or the command line) says it (`config::Rule`): what it matches,
/// how much the kernel samples, where its requests go and under which controls, and how the
/// shadow's answers are compared. Built once by `config`; each stage keeps its own view of it
/// under the rule's [`RuleId`] (the kernel's rule entry, replay's lane, the comparison's
/// settings). Defined here, with replay's controls it is made of.
#[derive(Clone, Debug, PartialEq)]
pub struct Rule {
    /// How operators and metrics call the rule (unique).
    pub name: String,
    /// Ports on every server address.
    pub ports: Vec<u16>,
    /// Services by address prefix and port, besides `ports`.
    pub matches: Vec<ServiceMatch>,
    /// `None`: capture only (requests are counted as dropped, `no_target`).
    pub shadow: Option<ShadowTarget>,
    pub controls: ReplayControls,
    /// Requests sampled by the kernel, parts per million.
    pub sample_ppm: u32,
    /// Compare the shadow's responses with the primary's (`[rule.compare]`); `None`: off.
    pub compare: Option<CompareSettings>,
    /// A second instance of the current version: each replayed request also goes there, and
    /// what differs between it and the primary is learned as noise (not compared).
    pub secondary: Option<ShadowTarget>,
    /// The fence on the shadow's cgroups (`[rule.egress]`); `None`: not fenced.
    pub egress: Option<crate::egress::EgressConfig>,
    /// The guarded ramp of the rule's rate (`[rule.ramp]`, `--ramp`); `None`: the rate is fixed.
    pub ramp: Option<crate::ramp::RampConfig>,
}

impl Rule {
    /// A rule named `default` on `ports`, sampling everything.
    pub fn new(ports: Vec<u16>, shadow: Option<ShadowTarget>, controls: ReplayControls) -> Self {
        Self {
            name: "default".into(),
            ports,
            matches: Vec::new(),
            shadow,
            controls,
            sample_ppm: shadow_common::PPM_ALL,
            compare: None,
            secondary: None,
            egress: None,
            ramp: None,
        }
    }

    /// Everything the rule covers: `ports` on any address, then `matches`.
    pub fn services(&self) -> Vec<ServiceMatch> {
        self.ports.iter().map(|&p| ServiceMatch::any_address(p)).chain(self.matches.iter().copied()).collect()
    }
}

/// What [`ReplayEngine::submit`] did with a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Submission {
    Queued,
    /// Not replayed; the reason is the `shadow_requests_dropped_total` label it was counted under.
    Dropped(RequestDrop),
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

struct Job {
    req: CapturedRequest,
    endpoint: EndpointId,
    /// Taken when the request is settled (dropped before that: settled as `shutdown`).
    ticket: Option<RequestTicket>,
    _held: HeldBytes,
    /// This request is the backoff's probe (admitted at submission, or when its batch formed).
    probe: Option<Probe>,
    /// Where its edited bytes end in its batch's buffer (set when the batch is written).
    end: usize,
    /// The production trace and the shadow's new one (set when the batch is written).
    trace: Option<TraceLink>,
}

impl Job {
    fn settle(&mut self, how: Result<(), RequestDrop>) {
        match (self.ticket.take(), how) {
            (Some(t), Ok(())) => t.replayed(),
            (Some(t), Err(r)) => t.dropped(r),
            (None, _) => {}
        }
    }
}

/// The request's bytes in its lane's budget, released however the job ends.
struct HeldBytes {
    lane: Arc<LaneState>,
    bytes: u64,
}

impl Drop for HeldBytes {
    fn drop(&mut self) {
        self.lane.held_bytes.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

/// One lane at run time: its controls, queue, rate limit and connections.
struct LaneState {
    name: String,
    target: ShadowTarget,
    controls: ReplayControls,
    tx: mpsc::Sender<Job>,
    bucket: Option<RateLimit>,
    pool: Pool,
    held_bytes: AtomicU64,
    /// Requests waiting in the dispatcher's [`FlowGate`], out of the queue but counted against
    /// its capacity with the ones still in it.
    gated: AtomicUsize,
    warnings: Mutex<WarnThrottle>,
    /// The rule this lane replays.
    rule: RuleId,
    /// Where the shadow's and the secondary's answers go (and, when the rule compares, what
    /// to keep of them).
    correlator: Arc<Correlator>,
    /// A reload gave the rule another shadow target: what this lane (the old target's) still
    /// sends belongs to no epoch of the comparison.
    compare_retired: AtomicBool,
    /// The shadow target's protection (see [`backoff`]).
    backoff: Arc<Backoff>,
    /// The rule's secondary target, its connections and its own protection (noise learning).
    secondary: Option<(ShadowTarget, Pool, Arc<Backoff>)>,
    /// What the edits did to the trace contexts (`shadow_trace_contexts_total`).
    traces: TraceMetrics,
}

#[derive(Default)]
struct WarnThrottle {
    last: Option<Instant>,
    suppressed: u64,
}

impl LaneState {
    /// Method, path and body checks, then the target's backoff, then the rate limit (so refused
    /// requests spend no tokens). The probe, if this request is the backoff's.
    fn admit(&self, req: &CapturedRequest) -> Result<Option<Probe>, RequestDrop> {
        if let Some(r) = self.controls.refuse(req.method(), req.target(), req.body().len()) {
            return Err(r);
        }
        let probe = match self.backoff.admit() {
            Admission::Go => None,
            Admission::Probe(p) => Some(p),
            Admission::Drop => return Err(RequestDrop::ShadowBackoff),
        };
        if let Some(b) = &self.bucket
            && !b.try_take()
        {
            return Err(RequestDrop::RateLimited);
        }
        Ok(probe)
    }

    /// Count a failed exchange with one of the lane's targets toward its backoff, and say when
    /// the target is backed off.
    fn failed(&self, backoff: &Backoff, probe: Option<Probe>, e: &ReplayError, role: Role) {
        // Not the target's doing: an unsettled probe lets the next request probe.
        let Some(kind) = e.target_failure() else { return };
        if let Some(p) = backoff.failure(probe, kind)
            && p.index == 0
        {
            let meanwhile = match role {
                Role::Shadow => "its requests are dropped (shadow_backoff)",
                Role::Secondary => "requests skip it",
            };
            tracing::warn!(
                "{}: {role} backed off for {:?} after {} failures in a row (last: {e}); {meanwhile} until a probe \
                 is answered",
                self.name,
                p.length,
                backoff::FAILURES_TO_BACK_OFF
            );
        }
    }

    fn warn(&self, e: &ReplayError) {
        let mut t = lock(&self.warnings);
        let now = Instant::now();
        match t.last {
            None => tracing::warn!(
                "{}: {e} (failures are counted in shadow_errors_total; after {} in a row the shadow is backed off)",
                self.name,
                backoff::FAILURES_TO_BACK_OFF
            ),
            Some(last) if now.saturating_duration_since(last) >= WARN_EVERY => {
                tracing::warn!("{}: {e} ({} more failures since the last warning)", self.name, t.suppressed)
            }
            Some(_) => {
                t.suppressed += 1;
                return;
            }
        }
        t.last = Some(now);
        t.suppressed = 0;
    }

    /// The comparison epoch a request sent now belongs to (0: none, the lane is retired or the
    /// rule does not compare).
    fn compare_epoch(&self) -> u64 {
        if self.compare_retired.load(Ordering::Relaxed) { 0 } else { self.correlator.epoch_of(self.rule) }
    }

    /// How a pipeline goes to `target` over `pool`: a pooled connection if a live one is idle,
    /// else a new one (see [`pipeline::send`]).
    fn route<'a>(&'a self, target: &'a ShadowTarget, pool: &'a Pool) -> Route<'a> {
        let keep = self.correlator.keep(self.rule);
        Route {
            target,
            pool,
            connect_timeout: self.controls.connect_timeout,
            request_timeout: self.controls.request_timeout,
            keep,
            max_body: self.controls.response_cap(keep.map(|k| k.max_body)),
        }
    }
}

/// Whether the client asked to keep the connection open (so the shadow will too).
fn request_keep_alive(req: &CapturedRequest) -> bool {
    keeps_alive(req.minor_version, req.headers())
}

/// The replay stage. Create it inside the tokio runtime; [`submit`](Self::submit) from anywhere.
pub struct ReplayEngine {
    metrics: Arc<Metrics>,
    lanes: Vec<Arc<LaneState>>,
    /// Every rule's services and its lane (None: capture only); a request goes to the most
    /// specific service of its server address and port, as in the kernel.
    routes: Vec<(ServiceMatch, Option<usize>)>,
    correlator: Arc<Correlator>,
    stop: watch::Sender<Option<Instant>>,
    dispatchers: Mutex<Vec<JoinHandle<()>>>,
}

impl std::fmt::Debug for ReplayEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplayEngine")
            .field("lanes", &self.lanes.iter().map(|l| &l.name).collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl ReplayEngine {
    /// One lane per rule with a shadow target. Rules without one capture only: their requests are
    /// counted as dropped (`no_target`). Spawns one dispatcher task per lane on the current
    /// runtime. Every request submitted is announced to `correlator`, and every shadow answer
    /// handed to it.
    pub fn start(rules: &[Rule], correlator: Arc<Correlator>) -> Result<Self, ReplayError> {
        let metrics = correlator.metrics().clone();
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| ReplayError::NoRuntime)?;
        conn::enable_receive_timestamps();
        let (stop, _) = watch::channel(None);
        let mut lanes = Vec::new();
        let mut routes: Vec<(ServiceMatch, Option<usize>)> = Vec::new();
        let mut service_rule: HashMap<ServiceMatch, usize> = HashMap::new();
        let mut dispatchers = Vec::new();
        for (i, rule) in rules.iter().enumerate() {
            for s in rule.services() {
                if let Some(first) = service_rule.insert(s, i)
                    && first != i
                {
                    return Err(ReplayError::DuplicateService { service: s.to_string(), first, second: i });
                }
            }
            let Some(target) = &rule.shadow else {
                routes.extend(rule.services().into_iter().map(|s| (s, None)));
                continue;
            };
            // Zero would make a channel that panics or a semaphore that never opens; the config
            // refuses it, this keeps the engine safe when built by hand.
            let (tx, rx) = mpsc::channel(rule.controls.queue_capacity.max(1));
            let backoff = Backoff::new(metrics.target(&rule.name, Role::Shadow, &target.to_string()));
            let secondary = rule.secondary.clone().map(|t| {
                let b = Backoff::new(metrics.target(&rule.name, Role::Secondary, &t.to_string()));
                (t, Pool::new(rule.controls.pool_size), b)
            });
            let lane = Arc::new(LaneState {
                name: format!("rule {} -> shadow {target}", rule.name),
                target: target.clone(),
                bucket: rule.controls.replay_rate.map(RateLimit::new),
                pool: Pool::new(rule.controls.pool_size),
                controls: rule.controls.clone(),
                tx,
                held_bytes: AtomicU64::new(0),
                gated: AtomicUsize::new(0),
                warnings: Mutex::new(WarnThrottle::default()),
                rule: RuleId::new(i),
                correlator: correlator.clone(),
                compare_retired: AtomicBool::new(false),
                backoff,
                secondary,
                traces: metrics.traces(&rule.name),
            });
            routes.extend(rule.services().into_iter().map(|s| (s, Some(lanes.len()))));
            tracing::info!("{}: replaying methods {:?}", lane.name, lane.controls.methods.methods());
            runtime.spawn(check_resolves(lane.target.clone(), lane.name.clone()));
            dispatchers.push(runtime.spawn(dispatch(lane.clone(), rx, metrics.clone(), stop.subscribe())));
            lanes.push(lane);
        }
        Ok(Self { metrics, lanes, routes, correlator, stop, dispatchers: Mutex::new(dispatchers) })
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Close the shadows' idle connections that are too old to reuse (the daemon's tick calls
    /// this about once a second), so they do not sit half-closed until the next request.
    pub fn prune(&self) {
        for lane in &self.lanes {
            lane.pool.prune();
            if let Some((_, pool, _)) = &lane.secondary {
                pool.prune();
            }
        }
    }

    /// Rule `rule`'s shadow target changed (a reload): the comparison no longer takes what this
    /// engine's lane of it sends from now on (counted as `epoch` when it comes back).
    pub fn retire_compare(&self, rule: RuleId) {
        for lane in self.lanes.iter().filter(|l| l.rule == rule) {
            lane.compare_retired.store(true, Ordering::Relaxed);
        }
    }

    /// Hand over one extracted request. Synchronous and never waits: the request is queued for
    /// replay or dropped and counted, and the outcome says which.
    pub fn submit(&self, req: CapturedRequest) -> Submission {
        let endpoint = self.metrics.endpoint(req.method(), req.target());
        let route =
            most_specific(self.routes.iter().map(|(s, l)| (s, *l)), req.flow.server.ip(), req.flow.server.port());
        let lane = route.flatten().and_then(|i| self.lanes.get(i));
        self.correlator.request(req.id, endpoint, lane.map(|l| l.rule));
        let ticket = self.metrics.admit();
        let Some(lane) = lane else {
            ticket.dropped(RequestDrop::NoTarget);
            return Submission::Dropped(RequestDrop::NoTarget);
        };
        let ramp = self.correlator.ramp();
        // A ramp measuring its baseline: the primary is timed, the shadow receives nothing.
        if ramp.held_back(lane.rule) {
            ticket.dropped(RequestDrop::RampBaseline);
            return Submission::Dropped(RequestDrop::RampBaseline);
        }
        let outcome = Self::queue(lane, req, endpoint, ticket, &self.correlator);
        match outcome {
            Submission::Queued => ramp.offered(lane.rule, false),
            Submission::Dropped(RequestDrop::QueueFull | RequestDrop::ShadowBackoff) => ramp.offered(lane.rule, true),
            Submission::Dropped(_) => {}
        }
        outcome
    }

    fn queue(
        lane: &Arc<LaneState>,
        req: CapturedRequest,
        endpoint: EndpointId,
        ticket: RequestTicket,
        correlator: &Correlator,
    ) -> Submission {
        let probe = match lane.admit(&req) {
            Ok(p) => p,
            Err(r) => {
                ticket.dropped(r);
                return Submission::Dropped(r);
            }
        };
        let bytes = req.raw.len() as u64;
        if lane.held_bytes.fetch_add(bytes, Ordering::Relaxed) + bytes > lane.controls.queue_bytes {
            lane.held_bytes.fetch_sub(bytes, Ordering::Relaxed);
            ticket.dropped(RequestDrop::QueueFull);
            return Submission::Dropped(RequestDrop::QueueFull);
        }
        if lane.gated.load(Ordering::Relaxed) >= lane.tx.capacity() {
            // The queue's room is taken by requests waiting behind their connection's previous one.
            lane.held_bytes.fetch_sub(bytes, Ordering::Relaxed);
            ticket.dropped(RequestDrop::QueueFull);
            return Submission::Dropped(RequestDrop::QueueFull);
        }
        let held = HeldBytes { lane: lane.clone(), bytes };
        let id = req.id;
        // Its primary response waits for the shadow's: announced before the job can be sent,
        // so that a withdrawal by the lane's task always comes after it.
        correlator.replaying(id, lane.rule, lane.secondary.is_some());
        // A job that does not fit drops its probe, if it held it: the next request probes.
        match lane.tx.try_send(Job { req, endpoint, ticket: Some(ticket), _held: held, probe, end: 0, trace: None }) {
            Ok(()) => Submission::Queued,
            Err(mpsc::error::TrySendError::Full(mut job)) => {
                correlator.withdraw(id);
                job.settle(Err(RequestDrop::QueueFull));
                Submission::Dropped(RequestDrop::QueueFull)
            }
            Err(mpsc::error::TrySendError::Closed(mut job)) => {
                correlator.withdraw(id);
                job.settle(Err(RequestDrop::Shutdown));
                Submission::Dropped(RequestDrop::Shutdown)
            }
        }
    }

    /// Stop accepting, give queued and in-flight requests until `grace` to finish, then abandon
    /// the rest (counted as `shutdown`). Returns when every lane has stopped, so the metrics are
    /// final.
    pub async fn shutdown(&self, grace: Duration) {
        let _ = self.stop.send(Some(Instant::now() + grace));
        let handles = std::mem::take(&mut *lock(&self.dispatchers));
        for h in handles {
            if let Err(e) = h.await
                && e.is_panic()
            {
                tracing::error!("replay dispatcher panicked: {e}");
            }
        }
    }
}

impl Drop for ReplayEngine {
    fn drop(&mut self) {
        // Dispatchers see the stop with no grace and abandon what is left (counted).
        let _ = self.stop.send(Some(Instant::now()));
    }
}

/// A misspelt shadow host is the likeliest mistake: say so at start rather than at the first
/// request. Only the name is checked (no connection), and failing is not fatal: the name may
/// appear later, and every request resolves it again.
async fn check_resolves(target: ShadowTarget, lane: String) {
    match tokio::net::lookup_host((target.host.as_str(), target.port)).await.map(|mut a| a.next().is_some()) {
        Ok(true) => {}
        Ok(false) => tracing::warn!("{lane}: shadow {target} has no address now; requests will keep trying"),
        Err(e) => tracing::warn!("{lane}: resolve shadow {target}: {e}; requests will keep trying"),
    }
}

/// Feeds one lane's queue to at most `concurrency` replays at once, until stopped. The replays run
/// inside this task (see [`slots`]).
async fn dispatch(
    lane: Arc<LaneState>,
    mut rx: mpsc::Receiver<Job>,
    metrics: Arc<Metrics>,
    mut stop: watch::Receiver<Option<Instant>>,
) {
    let mut replays = Slots::new(lane.controls.concurrency);
    let mut batcher = Batcher::new(lane.controls.pipeline);
    // One request at a time per captured connection (see [`shape`]); pipelining, an opt-in for
    // throughput, merges connections by design and goes without.
    let mut gate = (lane.controls.pipeline == 1).then(|| FlowGate::new(lane.controls.queue_capacity));
    let mut deadline: Option<Instant> = None;
    let mut drained = false;
    loop {
        if drained && replays.is_empty() {
            break;
        }
        let until = deadline;
        let grace_over = async move {
            match until {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        // A job is taken from the bounded queue only when a slot is free: while all are busy,
        // requests wait in the queue (and overflow it, counted), not here.
        let work = std::future::poll_fn(|cx| {
            replays.poll_work(
                cx,
                drained,
                |cx| {
                    let next = next_batch(cx, &mut batcher, &mut rx, gate.as_mut());
                    if let Some(g) = &gate {
                        lane.gated.store(g.held(), Ordering::Relaxed);
                    }
                    next
                },
                // The batch's future, boxed as it is: wrapping it in another future (to drop
                // `done` after it) stored it twice, 5.5 KiB copied and allocated per request.
                |(batch, done)| Box::pin(replay_batch(lane.clone(), metrics.clone(), batch, done)),
                || tracing::error!("{}: replay task panicked", lane.name),
            )
        });
        tokio::select! {
            biased;
            () = grace_over => break,
            changed = stop.changed(), if deadline.is_none() => {
                let at = match changed {
                    Ok(()) => stop.borrow().unwrap_or_else(Instant::now),
                    Err(_) => Instant::now(),
                };
                deadline = Some(at);
                // No new requests; the queued ones are still dispatched until the deadline.
                rx.close();
            }
            w = work => match w {
                Work::Drained => drained = true,
                Work::Idle => break,
            },
        }
    }
    // Past the grace period: replays in flight are abandoned and queued jobs dropped with the
    // receiver; their tickets settle as `shutdown`.
    drop(replays);
    if let Some(g) = gate.as_mut() {
        g.clear();
    }
    drop(rx);
}

/// The next batch to start: with a [`FlowGate`], a request whose captured connection is free
/// (the one freed first, else the next from the queue; one whose connection is busy waits in
/// the gate, or is dropped as `queue_full` when too many wait); without, the batcher's next.
/// `Ready(None)` once the queue is closed and empty and nothing waits in the gate.
fn next_batch(
    cx: &mut std::task::Context<'_>,
    batcher: &mut Batcher,
    rx: &mut mpsc::Receiver<Job>,
    gate: Option<&mut FlowGate<Job>>,
) -> Poll<Option<(Batch, Option<Done>)>> {
    let Some(gate) = gate else {
        return batcher.poll_next(cx, rx).map(|b| b.map(|b| (b, None)));
    };
    if let Some((job, done)) = gate.next_ready(cx.waker()) {
        return Poll::Ready(Some((smallvec::smallvec![job], Some(done))));
    }
    loop {
        match batcher.poll_next(cx, rx) {
            // Batches of one: the gate is only there without pipelining.
            Poll::Ready(Some(batch)) => {
                for job in batch {
                    match gate.admit(job.req.flow, job) {
                        Admit::Start(job, done) => return Poll::Ready(Some((smallvec::smallvec![job], Some(done)))),
                        Admit::Waiting => {}
                        Admit::Full(mut job) => job.settle(Err(RequestDrop::QueueFull)),
                    }
                }
            }
            // Requests still waiting go when their connection frees (its `Done` wakes us).
            Poll::Ready(None) if gate.held() > 0 => return Poll::Pending,
            other => return other.map(|b| b.map(|b| (b, None))),
        }
    }
}

/// Whether `req` may ride in a pipeline behind or ahead of others (see [`pipeline`]).
fn pipelinable(req: &CapturedRequest) -> bool {
    pipeline::idempotent(req.method()) && request_keep_alive(req)
}

/// A replay slot's work: one request, or several pipelinable ones that were waiting together
/// (one, the default without pipelining, is held without an allocation).
type Batch = smallvec::SmallVec<[Job; 1]>;

/// How long a pipelinable request waits for others to join its pipeline. Replay is off the
/// users' path and the shadow is timed from the write, so the wait costs nothing anyone sees; it
/// turns a wake-up, a write and a read per request into one of each per pipeline at any rate
/// above one request per millisecond (the timer's granularity).
const GATHER: Duration = Duration::from_millis(1);

/// Forms a lane's batches from its queue (see [`pipeline`]).
struct Batcher {
    /// A job taken from the queue that has not gone yet: the first of a pipeline being gathered,
    /// or one that could not join the batch before it (it starts the next).
    carry: Option<Job>,
    depth: usize,
    state: Gather,
    timer: Pin<Box<tokio::time::Sleep>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Gather {
    /// Waiting for a job.
    Idle,
    /// A pipelinable job (in `carry`) waits for company until the timer fires.
    Waiting,
    /// Past the wait: what is queued goes, in batches, until the queue is empty.
    Flushing,
}

impl Batcher {
    fn new(depth: usize) -> Self {
        Self { carry: None, depth, state: Gather::Idle, timer: Box::pin(tokio::time::sleep(Duration::ZERO)) }
    }

    fn joins(&self, job: &Job) -> bool {
        self.depth > 1 && pipelinable(&job.req)
    }

    /// The next batch: a pipelinable job waits [`GATHER`] for company, then goes with as many
    /// pipelinable jobs as are queued behind it, up to the depth; any other job goes alone at
    /// once. A job that may not join a batch is carried over to start the next. `Ready(None)`:
    /// the queue is closed and empty.
    fn poll_next(&mut self, cx: &mut std::task::Context<'_>, rx: &mut mpsc::Receiver<Job>) -> Poll<Option<Batch>> {
        loop {
            match self.state {
                Gather::Idle => {
                    let job = match self.carry.take() {
                        Some(j) => j,
                        None => match rx.poll_recv(cx) {
                            Poll::Ready(Some(j)) => j,
                            Poll::Ready(None) => return Poll::Ready(None),
                            Poll::Pending => return Poll::Pending,
                        },
                    };
                    if !self.joins(&job) {
                        return Poll::Ready(Some(smallvec::smallvec![job]));
                    }
                    self.carry = Some(job);
                    self.timer.as_mut().reset(Instant::now() + GATHER);
                    self.state = Gather::Waiting;
                }
                Gather::Waiting => {
                    if self.timer.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                    self.state = Gather::Flushing;
                }
                Gather::Flushing => {
                    let Some(first) = self.carry.take().or_else(|| rx.try_recv().ok()) else {
                        self.state = Gather::Idle;
                        continue;
                    };
                    if !self.joins(&first) {
                        return Poll::Ready(Some(smallvec::smallvec![first]));
                    }
                    let mut batch = Batch::with_capacity(self.depth.min(16));
                    batch.push(first);
                    while batch.len() < self.depth {
                        match rx.try_recv() {
                            Ok(j) if self.joins(&j) => batch.push(j),
                            Ok(j) => {
                                self.carry = Some(j);
                                break;
                            }
                            Err(_) => {
                                self.state = Gather::Idle;
                                break;
                            }
                        }
                    }
                    return Poll::Ready(Some(batch));
                }
            }
        }
    }
}

/// A batch's requests to the shadow in one pipeline, each settled by its own outcome; then, if
/// the rule has a secondary, the same requests to it. `_done` is the captured connection's turn
/// (see [`FlowGate`]): it ends when this does, however it ends, and its next request may go.
async fn replay_batch(lane: Arc<LaneState>, metrics: Arc<Metrics>, mut jobs: Batch, _done: Option<Done>) {
    let mut wire = Vec::with_capacity(jobs.iter().map(|j| j.req.raw.len() + 64).sum());
    // The requests' bytes stay in the budget until the batch is over (the jobs hold them).
    jobs.retain_mut(|job| {
        // Queued before the target was backed off: dropped now, rather than each trying it in turn.
        if job.probe.is_none() {
            match lane.backoff.admit() {
                Admission::Go => {}
                Admission::Probe(p) => job.probe = Some(p),
                Admission::Drop => {
                    job.settle(Err(RequestDrop::ShadowBackoff));
                    lane.correlator.withdraw(job.req.id);
                    lane.correlator.ramp().shed_late(lane.rule);
                    return false;
                }
            }
        }
        match edit_request_into(&job.req, &lane.controls, &lane.target, &mut wire) {
            Ok(trace) => {
                lane.traces.record(trace.report.iter());
                if let Some(link) = &trace.link {
                    tracing::debug!(
                        "{}: request {} trace restarted: production {} {}, shadow {}",
                        lane.name,
                        job.req.id,
                        link.format,
                        link.production(),
                        link.shadow()
                    );
                }
                job.trace = trace.link;
            }
            Err(e) => {
                lane.warn(&e);
                job.settle(Err(RequestDrop::InvalidCapture));
                lane.correlator.withdraw(job.req.id);
                return false;
            }
        }
        job.end = wire.len();
        true
    });
    if jobs.is_empty() {
        return;
    }
    // Stamped as they go out: an answer that comes back in a later epoch is not counted in it.
    let epoch = lane.compare_epoch();
    let outcomes = {
        let parts: pipeline::Parts<'_> = jobs.iter().map(|j| part(&j.req, j.end)).collect();
        pipeline::send(&lane.route(&lane.target, &lane.pool), &wire, &parts, &metrics).await
    };
    for (job, outcome) in jobs.iter_mut().zip(outcomes) {
        let (endpoint, probe) = (job.endpoint, job.probe.take());
        match outcome {
            Ok(x) => {
                if lane.backoff.success(probe) {
                    tracing::info!("{}: the shadow answered again; backoff over", lane.name);
                }
                metrics.record_shadow_response(endpoint, x.status, x.first_byte, x.complete);
                job.settle(Ok(()));
                if let Some(mut sample) = x.sample {
                    sample.latency = Some(x.complete);
                    lane.correlator.shadow(job.req.id, lane.rule, epoch, endpoint, Ok(sample), job.trace);
                }
            }
            Err(e) => {
                lane.failed(&lane.backoff, probe, &e, Role::Shadow);
                let kind = e.kind().unwrap_or(ShadowErrorKind::Other);
                lane.warn(&e);
                if matches!(e, ReplayError::ResponseTooLarge { .. }) {
                    job.settle(Err(RequestDrop::ShadowResponseTooLarge));
                } else {
                    metrics.record_shadow_error(kind);
                    job.settle(Err(RequestDrop::ShadowError));
                }
                lane.correlator.shadow(job.req.id, lane.rule, epoch, endpoint, Err(kind), job.trace);
            }
        }
    }
    // The same requests to the secondary (a second instance of the current version), for noise
    // learning; after the shadow's, in the same replay slot, so it adds no concurrency.
    if let (Some(_), Some((target, pool, backoff))) = (lane.correlator.keep(lane.rule), &lane.secondary) {
        replay_secondary(&lane, (target, pool, backoff), &jobs, &metrics).await;
    }
}

/// What a pipeline needs to know of a request whose bytes end at `end` in its buffer.
fn part(req: &CapturedRequest, end: usize) -> Part<'_> {
    Part {
        id: req.id,
        method: req.method(),
        end,
        idempotent: pipeline::idempotent(req.method()),
        keep_alive: request_keep_alive(req),
    }
}

/// The secondary's halves of a batch's requests, in one pipeline too.
async fn replay_secondary(
    lane: &LaneState,
    (target, pool, backoff): (&ShadowTarget, &Pool, &Arc<Backoff>),
    jobs: &[Job],
    metrics: &Metrics,
) {
    let mut wire = Vec::with_capacity(jobs.iter().map(|j| j.req.raw.len() + 64).sum());
    let mut parts = Vec::with_capacity(jobs.len());
    let mut admitted = Vec::with_capacity(jobs.len());
    // Stamped as they go out, as the shadow's requests are.
    let epoch = lane.compare_epoch();
    for Job { req, endpoint, .. } in jobs {
        let failed = |kind| lane.correlator.secondary(req.id, lane.rule, epoch, *endpoint, Err(kind));
        let probe = match backoff.admit() {
            Admission::Drop => {
                failed(ShadowErrorKind::ConnectRefused);
                continue;
            }
            Admission::Go => None,
            Admission::Probe(p) => Some(p),
        };
        if edit_request_into(req, &lane.controls, target, &mut wire).is_err() {
            failed(ShadowErrorKind::Other);
            continue;
        }
        parts.push(part(req, wire.len()));
        admitted.push((req.id, *endpoint, probe));
    }
    if parts.is_empty() {
        return;
    }
    let outcomes = pipeline::send(&lane.route(target, pool), &wire, &parts, metrics).await;
    for ((id, endpoint, probe), outcome) in admitted.into_iter().zip(outcomes) {
        let answer = match outcome {
            Ok(x) => {
                backoff.success(probe);
                match x.sample {
                    Some(mut sample) => {
                        sample.latency = Some(x.complete);
                        Ok(sample)
                    }
                    None => Err(ShadowErrorKind::Other),
                }
            }
            Err(e) => {
                lane.failed(backoff, probe, &e, Role::Secondary);
                Err(e.kind().unwrap_or(ShadowErrorKind::Other))
            }
        };
        lane.correlator.secondary(id, lane.rule, epoch, endpoint, answer);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replay::edit::tests::captured;

    #[test]
    fn keep_alive_follows_version_and_connection() {
        assert!(request_keep_alive(&captured(b"GET / HTTP/1.1\r\n\r\n")));
        assert!(!request_keep_alive(&captured(b"GET / HTTP/1.1\r\nConnection: x, Close\r\n\r\n")));
        assert!(!request_keep_alive(&captured(b"GET / HTTP/1.0\r\n\r\n")));
        assert!(request_keep_alive(&captured(b"GET / HTTP/1.0\r\nconnection: keep-alive\r\n\r\n")));
    }

    #[test]
    fn error_kinds() {
        let t = || "x:1".to_owned();
        let io = |k| io::Error::from(k);
        assert_eq!(
            ReplayError::Connect { target: t(), source: io(io::ErrorKind::ConnectionRefused) }.kind(),
            Some(ShadowErrorKind::ConnectRefused)
        );
        assert_eq!(
            ReplayError::ConnectTimeout { target: t(), timeout: Duration::from_secs(1) }.kind(),
            Some(ShadowErrorKind::Timeout)
        );
        assert_eq!(
            ReplayError::Read { id: 1, target: t(), source: io(io::ErrorKind::ConnectionReset) }.kind(),
            Some(ShadowErrorKind::Reset)
        );
        assert_eq!(ReplayError::Closed { id: 1, target: t() }.kind(), Some(ShadowErrorKind::Reset));
        assert_eq!(
            ReplayError::BadResponse { id: 1, target: t(), what: HttpError::BadStatus }.kind(),
            Some(ShadowErrorKind::BadResponse)
        );
        assert_eq!(ReplayError::NoAddress { target: t() }.kind(), Some(ShadowErrorKind::Other));
        assert_eq!(ReplayError::InvalidCapture { id: 1, what: "x" }.kind(), None);
    }

    #[test]
    fn target_failure_kinds() {
        let t = || "x:1".to_owned();
        let io = |k| io::Error::from(k);
        let connect = |k| ReplayError::Connect { target: t(), source: io(k) }.target_failure();
        assert_eq!(connect(io::ErrorKind::ConnectionRefused), Some(TargetFailure::ConnectRefused));
        assert_eq!(connect(io::ErrorKind::TimedOut), Some(TargetFailure::ConnectTimeout));
        assert_eq!(connect(io::ErrorKind::ConnectionReset), Some(TargetFailure::Reset));
        assert_eq!(connect(io::ErrorKind::HostUnreachable), Some(TargetFailure::ConnectError));
        let read = |k| ReplayError::Read { id: 1, target: t(), source: io(k) }.target_failure();
        assert_eq!(read(io::ErrorKind::ConnectionReset), Some(TargetFailure::Reset));
        assert_eq!(read(io::ErrorKind::UnexpectedEof), Some(TargetFailure::Closed));
        assert_eq!(ReplayError::Closed { id: 1, target: t() }.target_failure(), Some(TargetFailure::Closed));
        assert_eq!(
            ReplayError::Timeout { id: 1, target: t(), timeout: Duration::from_secs(1) }.target_failure(),
            Some(TargetFailure::Timeout)
        );
        let too_large = ReplayError::ResponseTooLarge { id: 1, target: t(), cap: 1 };
        assert_eq!(too_large.target_failure(), Some(TargetFailure::ResponseTooLarge));
        assert_eq!(too_large.kind(), Some(ShadowErrorKind::BadResponse), "to the comparison: a bad response");
        assert_eq!(ReplayError::InvalidCapture { id: 1, what: "x" }.target_failure(), None);
        let body = ReplayError::BodyWithoutBody { id: 1, target: t(), status: 204 };
        assert_eq!(body.target_failure(), Some(TargetFailure::BadResponse));
        assert_eq!(body.kind(), Some(ShadowErrorKind::BadResponse));
        assert_eq!(
            body.to_string(),
            "read the response to request 1 from shadow x:1: a body after its 204 response, which has none \
             (HEAD, 204, 304); connection closed"
        );
        assert!(matches!(body.again(7), ReplayError::BodyWithoutBody { id: 7, status: 204, .. }));
    }

    #[test]
    fn start_outside_a_runtime_is_an_error() {
        assert!(matches!(
            ReplayEngine::start(&[], Correlator::new(Arc::new(Metrics::default()), None)),
            Err(ReplayError::NoRuntime)
        ));
    }
}
