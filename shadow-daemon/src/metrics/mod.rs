//! What the daemon counts and measures, for Prometheus (`/metrics`) and for the summary printed
//! at exit. A sink: it knows no stage; stages call it with their own reasons as label values.
//!
//! [`Metrics`] wires the registry; the parts live beside it: [`ledger`] (every request's one
//! outcome, so that captured = replayed + dropped + in flight at every scrape), `latency`
//! (Prometheus histograms and hdrhistograms per endpoint), `absolute` (totals counted elsewhere,
//! such as the kernel's counters, published by a collector), [`summary`] (the exit summary),
//! [`endpoint`] (endpoint names), `targets` (per shadow target: failures by kind and backoff
//! state), `traces` (what replay did to trace contexts), `server` (the HTTP endpoint) and `text`
//! (exposition formats).

//!
mod absolute;
mod compared;
pub mod endpoint;
mod latency;
pub mod ledger;
pub mod ops;
mod server;
pub mod summary;
mod targets;
mod traces;

use std::{
    fmt,
    sync::{
        Arc, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use absolute::{AbsoluteCollector, Absolutes};
use compared::Compared;
#[cfg(any(test, feature = "test-util"))]
pub use compared::classic_only_compared_histogram;
pub use compared::{ComparedPair, compared_histogram, compared_latency_buckets};
pub use endpoint::{DEFAULT_MAX_ENDPOINTS, EndpointId, endpoint_template};
use latency::Latency;
pub use ledger::{DropCounts, RequestCounts, RequestTicket};
use ledger::{Ledger, LedgerCollector};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::{Registry, Unit},
};
pub use server::{MetricsServer, VerdictSource};
pub use summary::{EndpointSummary, LatencySummary, SideLatency, Summary};
pub use targets::TargetMetrics;
use targets::Targets;
pub use traces::TraceMetrics;
use traces::Traces;

pub use crate::label::{Counted, Dropped, EventReason, RequestDrop, Role, ShadowErrorKind, TargetFailure};
use crate::label::{DropReason, EpochReason, NotCompared, ResponseClass, SecondaryOutcome, Side, Uncompared};

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("bind the metrics endpoint to {addr}: {source}")]
    Bind { addr: std::net::SocketAddr, source: std::io::Error },
    #[error("read the local address of the metrics endpoint: {0}")]
    LocalAddr(std::io::Error),
    #[error("encode the metrics registry: {0}")]
    Encode(String),
}

/// A poisoned lock only means another thread panicked mid-update of a counter: the numbers are
/// still the best we have, and metrics must not take the daemon down.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClassLabels {
    class: ResponseClass,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: ShadowErrorKind,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabels {
    version: &'static str,
    /// The git commit it was built from (or the build's SHADOW_REVISION).
    revision: &'static str,
}

/// Counters the replay engine updates per connection.
#[derive(Clone, Debug, Default)]
pub(crate) struct ConnectionMetrics {
    pub opened: Counter,
    pub reused: Counter,
    pub retries: Counter,
    pub pipelined: Counter,
    pub writes: Counter,
    pub open: Gauge,
    pub sent_bytes: Counter,
}

/// Every metric of the daemon. Cheap to share (`Arc<Metrics>`); every method takes `&self`.
pub struct Metrics {
    registry: Registry,
    ledger: Arc<Mutex<Ledger>>,
    responses: Family<ClassLabels, Counter>,
    /// The `responses` counters by status class (`ResponseClass::STATUS` order), looked up once.
    response_counters: [Counter; 5],
    errors: Family<KindLabels, Counter>,
    /// The `errors` counters in `ShadowErrorKind::ALL` order, looked up once.
    error_counters: [Counter; 5],
    latency: Latency,
    primary_unmatched: Counter,
    absolutes: Arc<Mutex<Absolutes>>,
    flows: Gauge,
    buffered_bytes: Gauge,
    pub(crate) connections: ConnectionMetrics,
    ready: AtomicBool,
    ready_gauge: Gauge,
    ops: Arc<Mutex<ops::Operations>>,
    compared: Compared,
    targets: Targets,
    traces: Traces,
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics").field("requests", &self.requests()).finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_ENDPOINTS)
    }
}

impl Metrics {
    /// `max_endpoints`: distinct endpoints with their own latency series; the rest are `other`.
    pub fn new(max_endpoints: usize) -> Self {
        let mut registry = Registry::default();
        let ledger = Ledger::shared();
        registry.register_collector(Box::new(LedgerCollector(ledger.clone())));

        let responses = Family::<ClassLabels, Counter>::default();
        let response_counters =
            ResponseClass::STATUS.map(|class| responses.get_or_create(&ClassLabels { class }).clone());
        registry.register("shadow_responses", "Complete responses from the shadow, by status class", responses.clone());
        let errors = Family::<KindLabels, Counter>::default();
        let error_counters = ShadowErrorKind::ALL.map(|kind| errors.get_or_create(&KindLabels { kind }).clone());
        registry.register("shadow_errors", "Replays that failed, by kind", errors.clone());

        let latency = Latency::register(&mut registry, max_endpoints);
        let primary_unmatched = Counter::default();
        registry.register(
            "shadow_primary_responses_unmatched",
            "Primary responses whose request was not seen (or forgotten), counted without an endpoint",
            primary_unmatched.clone(),
        );

        let absolutes = Absolutes::shared();
        registry.register_collector(Box::new(AbsoluteCollector(absolutes.clone())));
        let flows = Gauge::default();
        registry.register("shadow_flows", "Connections tracked by reassembly", flows.clone());
        let buffered_bytes = Gauge::default();
        registry.register_with_unit(
            "shadow_buffered",
            "Bytes buffered by reassembly and extraction",
            Unit::Bytes,
            buffered_bytes.clone(),
        );
        let connections = ConnectionMetrics::default();
        registry.register(
            "shadow_replay_connections_opened",
            "Connections opened to shadow targets",
            connections.opened.clone(),
        );
        registry.register(
            "shadow_replay_connection_reuses",
            "Requests sent on a connection that carried a request before (kept alive, or behind another in one write)",
            connections.reused.clone(),
        );
        registry.register(
            "shadow_replay_pipelined",
            "Requests written behind another in one write on one connection (HTTP/1.1 pipelining of idempotent \
             requests that waited together); each timed from when the shadow could start on it",
            connections.pipelined.clone(),
        );
        registry.register(
            "shadow_replay_writes",
            "Writes to shadow targets: one per request sent alone, one per pipeline",
            connections.writes.clone(),
        );
        registry.register(
            "shadow_replay_retries",
            "Requests sent again on a new connection because the shadow provably never received them (none of \
             their bytes acknowledged by its TCP, none of their response read): a kept-alive connection that \
             turned out closed, or the rest of a pipeline behind what a failing connection had taken",
            connections.retries.clone(),
        );
        registry.register(
            "shadow_replay_connections",
            "Connections to shadow targets open now",
            connections.open.clone(),
        );
        registry.register_with_unit(
            "shadow_replay_sent",
            "Request bytes written to shadow targets",
            Unit::Bytes,
            connections.sent_bytes.clone(),
        );

        let ops = Arc::new(Mutex::new(ops::Operations::default()));
        registry.register_collector(Box::new(ops::OpsCollector(ops.clone())));
        let compared = Compared::register(&mut registry);
        let targets = Targets::register(&mut registry);
        let traces = Traces::register(&mut registry);
        let ready_gauge = Gauge::default();
        registry.register("shadow_ready", "1 once capture is attached", ready_gauge.clone());
        let build = Family::<VersionLabels, Gauge>::default();
        build
            .get_or_create(&VersionLabels { version: env!("CARGO_PKG_VERSION"), revision: env!("SHADOW_REVISION") })
            .set(1);
        registry.register("shadow_build_info", "Version and source revision of the running daemon", build);

        Self {
            registry,
            ledger,
            responses,
            response_counters,
            errors,
            error_counters,
            latency,
            primary_unmatched,
            absolutes,
            flows,
            buffered_bytes,
            connections,
            ready: AtomicBool::new(false),
            ready_gauge,
            ops,
            compared,
            targets,
            traces,
        }
    }

    /// Rule `rule`'s `shadow_trace_contexts_total` series. Look it up once per lane.
    pub fn traces(&self, rule: &str) -> TraceMetrics {
        self.traces.rule(rule)
    }

    /// The series of one shadow target of a rule (`role`: `shadow` or `secondary`): failures by
    /// kind and backoff state. Look it up once per lane, not per request.
    pub fn target(&self, rule: &str, role: Role, target: &str) -> TargetMetrics {
        self.targets.target(rule, role, target)
    }

    /// One compared pair: `shadow_comparisons_total`, `shadow_compared_responses_total` and
    /// `shadow_compared_latency_seconds` (every series of its endpoint exists from its first pair).
    pub fn record_compared(&self, pair: &ComparedPair<'_>) {
        self.compared.record(pair);
    }

    /// Halves of pairs waiting in the pair table, and their bytes.
    pub fn set_pairs_waiting(&self, halves: usize, bytes: usize) {
        self.compared.set_waiting(halves, bytes);
    }

    /// Replayed requests that never became a compared pair (`shadow_compare_unpaired_total`).
    pub fn record_unpaired(&self, reason: NotCompared, n: u64) {
        self.compared.unpaired(reason, n);
    }

    /// Primary responses not compared (`shadow_compare_primary_uncompared_total`).
    pub fn record_uncompared(&self, reason: Uncompared, n: u64) {
        self.compared.uncompared(reason, n);
    }

    /// A comparison epoch of `rule` started, for `reason`: the rule's per-endpoint
    /// comparison series restart from zero, `shadow_compare_epoch_start_seconds` and
    /// `shadow_compare_epochs_total` say when and why.
    pub fn start_compare_epoch(&self, rule: &str, reason: EpochReason, started_unix_secs: f64) {
        self.compared.start_epoch(rule, reason, started_unix_secs);
    }

    /// `rule` no longer compares (a reload removed it): its comparison series leave.
    pub fn forget_compare_rule(&self, rule: &str) {
        self.compared.forget_rule(rule);
    }

    /// What became of the secondary's responses (`shadow_compare_secondary_total`).
    pub fn record_secondary(&self, reason: SecondaryOutcome, n: u64) {
        self.compared.secondary(reason, n);
    }

    /// Admit one captured request into the ledger (captured and in flight); the ticket settles it.
    pub fn admit(&self) -> RequestTicket {
        Ledger::admit(&self.ledger)
    }

    /// A request the extraction stage saw but could not deliver (a gap, a parse error, ...):
    /// counted as captured and dropped for `reason` in one step.
    pub fn record_extraction_drop(&self, reason: DropReason) {
        lock(&self.ledger).captured_and_dropped(reason);
    }

    /// The extraction stage's report into the ledger, in one step: requests dropped since its
    /// last report (by reason) and how many it holds now, begun and not yet handed over (still
    /// arriving, or held for the primary's answer); those count as captured and in flight.
    /// Call it once everything the stage handed over has been admitted.
    pub fn record_extraction(&self, dropped: &[(DropReason, u64)], holding: u64) {
        lock(&self.ledger).extraction(dropped, holding);
    }

    /// The ledger now.
    pub fn requests(&self) -> RequestCounts {
        lock(&self.ledger).counts()
    }

    /// The endpoint of a request (see [`endpoint_template`]), registered if there is room.
    pub fn endpoint(&self, method: &[u8], target: &[u8]) -> EndpointId {
        self.latency.endpoint(method, target)
    }

    /// The name of an endpoint id.
    pub fn endpoint_name(&self, id: EndpointId) -> String {
        self.latency.endpoint_name(id)
    }

    /// Primary latency of one exchange, from the captured timestamps. `None`: the request is not
    /// known (counted, recorded in the overall latency only).
    pub fn record_primary(&self, endpoint: Option<EndpointId>, first_byte: Duration, complete: Duration) {
        if endpoint.is_none() {
            self.primary_unmatched.inc();
        }
        self.latency.record(Side::Primary, endpoint, first_byte, complete);
    }

    /// One complete shadow response.
    pub fn record_shadow_response(&self, endpoint: EndpointId, status: u16, first_byte: Duration, complete: Duration) {
        self.response_counters[ResponseClass::of(status).index()].inc();
        self.latency.record(Side::Shadow, Some(endpoint), first_byte, complete);
    }

    pub fn record_shadow_error(&self, kind: ShadowErrorKind) {
        self.error_counters[kind.index()].inc();
    }

    /// The eBPF per-CPU counters, summed: names from `shadow_common::counter::NAMES`, absolute
    /// values. Unknown names are ignored (a newer kernel object with an older daemon).
    pub fn set_kernel_counters(&self, values: &[(&'static str, u64)]) {
        lock(&self.absolutes).set_kernel(values);
    }

    /// The egress fence's attempts as (rule, destination, verdict, absolute count).
    pub fn set_egress_attempts(&self, series: Vec<(String, String, String, u64)>) {
        lock(&self.absolutes).egress = series;
    }

    /// Records lost between the kernel and the daemon, absolute.
    pub fn set_ring_buffer_dropped(&self, total: u64) {
        lock(&self.absolutes).ring_buffer_dropped = total;
    }

    pub fn set_flows(&self, flows: u64) {
        self.flows.set(i64::try_from(flows).unwrap_or(i64::MAX));
    }

    pub fn set_buffered_bytes(&self, bytes: u64) {
        self.buffered_bytes.set(i64::try_from(bytes).unwrap_or(i64::MAX));
    }

    /// Extraction-stage event totals as (reason, direction, absolute count); totals not given
    /// keep their last value.
    pub fn set_extraction_stats(&self, stats: &[(EventReason, Counted, u64)]) {
        let mut a = lock(&self.absolutes);
        for &(reason, counted, v) in stats {
            a.extraction.insert((reason, counted), v);
        }
    }

    /// Ready once capture is attached (`/readyz`, `shadow_ready`).
    /// The operations snapshot (interfaces, control socket, reloads, rule rates).
    pub fn set_operations(&self, snapshot: ops::Operations) {
        *lock(&self.ops) = snapshot;
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
        self.ready_gauge.set(i64::from(ready));
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    /// The registry in one of the expositions Prometheus reads, each written by prometheus-client
    /// itself: OpenMetrics text, the Prometheus text format 0.0.4 (what promtool and older
    /// scrapers read), or Prometheus' delimited protobuf (the one that carries native histograms).
    pub fn encode_as(&self, format: Exposition) -> Result<Vec<u8>, MetricsError> {
        use prometheus_client::encoding::{prometheus_protobuf, prometheus_text, text};
        match format {
            Exposition::OpenMetrics | Exposition::Prometheus => {
                let mut out = String::with_capacity(16 * 1024);
                let done = if format == Exposition::OpenMetrics {
                    text::encode(&mut out, &self.registry)
                } else {
                    prometheus_text::encode(&mut out, &self.registry)
                };
                done.map_err(|_| MetricsError::Encode("formatting failed".into()))?;
                Ok(out.into_bytes())
            }
            Exposition::Protobuf => {
                prometheus_protobuf::encode_to_vec(&self.registry).map_err(|e| MetricsError::Encode(e.to_string()))
            }
        }
    }

    /// As [`encode_as`](Self::encode_as), for the two text formats.
    pub fn encode(&self, format: TextFormat) -> Result<String, MetricsError> {
        let bytes = self.encode_as(format.into())?;
        String::from_utf8(bytes).map_err(|_| MetricsError::Encode("the text is not UTF-8".into()))
    }

    /// Everything counted, with exact latency percentiles.
    pub fn summary(&self) -> Summary {
        let requests = self.requests();
        let shadow_responses = ResponseClass::STATUS
            .iter()
            .map(|&class| (class.as_str().to_owned(), self.responses.get_or_create(&ClassLabels { class }).get()))
            .collect();
        let shadow_errors = ShadowErrorKind::ALL
            .iter()
            .map(|&kind| (kind.as_str().to_owned(), self.errors.get_or_create(&KindLabels { kind }).get()))
            .collect();
        let (primary, shadow) = self.latency.overall();
        let endpoints = self.latency.by_endpoint();
        Summary {
            reconciles: requests.reconciles(),
            requests,
            shadow_responses,
            shadow_errors,
            primary,
            shadow,
            endpoints,
            endpoint_overflow: self.latency.overflow(),
            primary_unmatched: self.primary_unmatched.get(),
            replay_writes: self.connections.writes.get(),
            replay_pipelined: self.connections.pipelined.get(),
            kernel: lock(&self.absolutes).kernel.iter().map(|(n, v)| ((*n).to_owned(), *v)).collect(),
        }
    }
}

/// Text exposition flavours served on `/metrics`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TextFormat {
    /// `application/openmetrics-text; version=1.0.0`
    OpenMetrics,
    /// `text/plain; version=0.0.4`
    Prometheus,
}

impl From<TextFormat> for Exposition {
    fn from(f: TextFormat) -> Self {
        match f {
            TextFormat::OpenMetrics => Self::OpenMetrics,
            TextFormat::Prometheus => Self::Prometheus,
        }
    }
}

/// Everything `/metrics` can answer in, chosen from the scraper's `Accept` header
/// ([`Exposition::negotiate`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exposition {
    OpenMetrics,
    Prometheus,
    /// `io.prometheus.client.MetricFamily` messages, length-delimited: the exposition Prometheus
    /// asks for first when its native histograms are on, and the only one that carries them.
    Protobuf,
}

impl Exposition {
    pub const fn content_type(self) -> &'static str {
        match self {
            Self::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Self::Prometheus => prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
            Self::Protobuf => {
                "application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; encoding=delimited"
            }
        }
    }

    /// The format an `Accept` header prefers among the three, by its q-values (ties go to the
    /// first listed); the 0.0.4 text when the header names none of them (or is absent), so curl
    /// and promtool get what they read.
    pub fn negotiate(accept: Option<&str>) -> Self {
        let mut best: Option<(f32, Self)> = None;
        for range in accept.unwrap_or("").split(',') {
            let mut parts = range.split(';').map(str::trim);
            let media = parts.next().unwrap_or("").to_ascii_lowercase();
            let mut q = 1.0f32;
            let (mut proto, mut delimited) = (false, false);
            for p in parts {
                let Some((k, v)) = p.split_once('=') else { continue };
                let v = v.trim().trim_matches('"');
                match k.trim().to_ascii_lowercase().as_str() {
                    "q" => q = v.parse().unwrap_or(0.0),
                    "proto" => proto = v == "io.prometheus.client.MetricFamily",
                    "encoding" => delimited = v == "delimited",
                    _ => {}
                }
            }
            let format = match media.as_str() {
                "application/vnd.google.protobuf" if proto && delimited => Self::Protobuf,
                "application/openmetrics-text" => Self::OpenMetrics,
                "text/plain" => Self::Prometheus,
                _ => continue,
            };
            if q > 0.0 && best.is_none_or(|(bq, _)| q > bq) {
                best = Some((q, format));
            }
        }
        best.map_or(Self::Prometheus, |(_, f)| f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ledger_reconciles_through_every_outcome() {
        let m = Metrics::new(10);
        let a = m.admit();
        let b = m.admit();
        let c = m.admit();
        m.record_extraction_drop(DropReason::Gap);
        m.record_extraction_drop(DropReason::ParseError);
        let r = m.requests();
        assert_eq!((r.captured, r.in_flight), (5, 3));
        assert!(r.reconciles());
        a.replayed();
        b.dropped(RequestDrop::QueueFull);
        drop(c);
        let r = m.requests();
        assert_eq!((r.captured, r.replayed, r.in_flight, r.dropped_total()), (5, 1, 0, 4));
        assert_eq!(r.dropped["shutdown"], 1, "an unsettled ticket is a shutdown drop");
        assert_eq!(r.dropped["gap"], 1);
        assert_eq!(r.dropped["queue_full"], 1);
        assert!(r.reconciles());
        assert_eq!(r.dropped["rate_limited"], 0, "known reasons are present at zero");
    }

    fn sample_of(text: &str, name: &str) -> Option<f64> {
        text.lines().find_map(|l| {
            l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')).and_then(|v| v.trim().parse().ok())
        })
    }

    #[test]
    fn encodes_ledger_consistently_in_both_formats() {
        let m = Metrics::new(10);
        let t = m.admit();
        m.record_extraction_drop(DropReason::Gap);
        let om = m.encode(TextFormat::OpenMetrics).unwrap();
        assert!(om.ends_with("# EOF\n"));
        assert!(om.contains("# TYPE shadow_requests_captured counter"));
        let prom = m.encode(TextFormat::Prometheus).unwrap();
        assert!(prom.contains("# TYPE shadow_requests_captured_total counter"));
        assert!(!prom.contains("# EOF") && !prom.contains("# UNIT"));
        assert_eq!(sample_of(&prom, "shadow_requests_captured_total"), Some(2.0));
        assert_eq!(sample_of(&prom, "shadow_requests_in_flight"), Some(1.0));
        assert_eq!(sample_of(&prom, "shadow_requests_dropped_total{reason=\"gap\"}"), Some(1.0));
        t.replayed();
        let prom = m.encode(TextFormat::Prometheus).unwrap();
        assert_eq!(sample_of(&prom, "shadow_requests_replayed_total"), Some(1.0));
        assert_eq!(sample_of(&prom, "shadow_requests_in_flight"), Some(0.0));
    }

    #[test]
    fn the_accept_header_picks_the_exposition() {
        use Exposition::*;
        assert_eq!(Exposition::negotiate(None), Prometheus);
        assert_eq!(Exposition::negotiate(Some("*/*")), Prometheus);
        assert_eq!(Exposition::negotiate(Some("text/plain")), Prometheus);
        assert_eq!(Exposition::negotiate(Some("application/openmetrics-text; version=1.0.0")), OpenMetrics);
        // Prometheus 2.x's default: OpenMetrics first.
        let prom2 = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,\
                     text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert_eq!(Exposition::negotiate(Some(prom2)), OpenMetrics);
        // With native histograms on: protobuf first, and only the delimited MetricFamily kind.
        let native = "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited;q=0.7,\
                      text/plain;version=0.0.4;q=0.3";
        assert_eq!(Exposition::negotiate(Some(native)), Protobuf);
        assert_eq!(
            Exposition::negotiate(Some("application/vnd.google.protobuf;proto=other;encoding=delimited")),
            Prometheus
        );
        assert_eq!(
            Exposition::negotiate(Some(
                "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=text"
            )),
            Prometheus
        );
        // q-values decide, not order; q=0 means never; a tie keeps the first.
        assert_eq!(Exposition::negotiate(Some("text/plain;q=0.2, application/openmetrics-text;q=0.9")), OpenMetrics);
        assert_eq!(Exposition::negotiate(Some("application/openmetrics-text;q=0, text/plain;q=0.1")), Prometheus);
        assert_eq!(Exposition::negotiate(Some("application/openmetrics-text, text/plain")), OpenMetrics);
        assert_eq!(Exposition::negotiate(Some("text/plain;q=0.5, application/openmetrics-text;q=0.5")), Prometheus);
        assert_eq!(Exposition::negotiate(Some("application/openmetrics-text;q=oops")), Prometheus);
    }

    #[test]
    fn compared_latency_is_classic_in_text_and_native_too_in_protobuf() {
        use prometheus_client::encoding::prometheus_protobuf;
        let m = Metrics::new(10);
        for ms in [1u64, 2, 3, 50, 900] {
            m.record_compared(&ComparedPair {
                rule: "api",
                endpoint: "GET /a",
                outcome: crate::label::Outcome::Match,
                primary_status: 200,
                primary_latency: Duration::from_millis(ms),
                shadow: Some((200, Some(Duration::from_millis(ms + 1)))),
            });
        }
        let prom = m.encode(TextFormat::Prometheus).unwrap();
        let buckets = prom.lines().filter(|l| l.starts_with("shadow_compared_latency_seconds_bucket{")).count();
        assert_eq!(
            buckets,
            2 * (compared::compared_latency_buckets().len() + 1),
            "classic: every bound and +Inf, both sides"
        );
        let families = prometheus_protobuf::encode(&m.registry).unwrap();
        let f = families.iter().find(|f| f.name == "shadow_compared_latency_seconds").unwrap();
        assert_eq!(f.metric.len(), 2);
        for metric in &f.metric {
            let h = metric.histogram.as_ref().unwrap();
            assert_eq!(h.schema, i32::from(compared::NATIVE_SCHEMA));
            assert_eq!(h.sample_count, 5);
            // Five observations in five distinct buckets: the spans cover five, the deltas
            // (first count, then differences) sum up to the last bucket's count.
            let covered: u32 = h.positive_span.iter().map(|s| s.length).sum();
            assert_eq!(covered as usize, h.positive_delta.len());
            let counts: Vec<i64> = h
                .positive_delta
                .iter()
                .scan(0i64, |c, d| {
                    *c += d;
                    Some(*c)
                })
                .collect();
            assert_eq!(counts.iter().sum::<i64>(), 5);
            assert_eq!(counts.iter().filter(|&&c| c > 0).count(), 5);
            assert!(!h.bucket.is_empty(), "the classic buckets ride along for rules that read them");
        }
    }

    #[test]
    fn latency_per_endpoint_and_overall() {
        let m = Metrics::new(2);
        let a = m.endpoint(b"GET", b"/users/1");
        assert_eq!(m.endpoint(b"GET", b"/users/2?x"), a);
        let b = m.endpoint(b"GET", b"/b");
        let other = m.endpoint(b"GET", b"/c");
        assert_eq!(other, EndpointId::OTHER);
        for ms in 1..=100u64 {
            m.record_primary(Some(a), Duration::from_millis(ms / 2), Duration::from_millis(ms));
            m.record_shadow_response(a, 200, Duration::from_millis(ms), Duration::from_millis(2 * ms));
        }
        m.record_shadow_response(b, 503, Duration::from_millis(1), Duration::from_millis(1));
        m.record_primary(None, Duration::from_millis(1), Duration::from_millis(1));
        m.record_shadow_error(ShadowErrorKind::Timeout);
        let s = m.summary();
        assert_eq!(s.primary.complete.count, 101);
        assert_eq!(s.shadow.complete.count, 101);
        assert_eq!(s.endpoints[0].endpoint, "GET /users/:id");
        let e = &s.endpoints[0];
        assert_eq!(e.primary.count, 100);
        assert!((49.0..=51.0).contains(&e.primary.p50_ms), "{}", e.primary.p50_ms);
        assert!((98.0..=100.5).contains(&e.primary.p99_ms), "{}", e.primary.p99_ms);
        assert!((198.0..=201.0).contains(&e.shadow.max_ms), "{}", e.shadow.max_ms);
        assert_eq!(s.shadow_responses["2xx"], 100);
        assert_eq!(s.shadow_responses["5xx"], 1);
        assert_eq!(s.shadow_errors["timeout"], 1);
        assert_eq!(s.endpoint_overflow, 1);
        assert_eq!(s.primary_unmatched, 1);
        let json = serde_json::to_string(&s).unwrap();
        let back: Summary = serde_json::from_str(&json).unwrap();
        assert_eq!(back, s);
        let text = s.to_string();
        assert!(text.contains("GET /users/:id") && text.contains("shadow responses: 2xx 100, 5xx 1"), "{text}");

        let prom = m.encode(TextFormat::Prometheus).unwrap();
        assert_eq!(sample_of(&prom, "shadow_endpoints"), Some(2.0));
        assert_eq!(
            sample_of(&prom, "shadow_response_latency_seconds_count{side=\"primary\",endpoint=\"GET /users/:id\"}"),
            Some(100.0)
        );
        assert_eq!(sample_of(&prom, "shadow_first_byte_latency_seconds_count{side=\"shadow\"}"), Some(101.0));
        assert_eq!(sample_of(&prom, "shadow_responses_total{class=\"5xx\"}"), Some(1.0));
    }

    #[test]
    fn error_kinds_index_their_counters() {
        for (i, k) in ShadowErrorKind::ALL.iter().enumerate() {
            assert_eq!(k.index(), i, "{k:?}");
        }
        // The response counters are indexed by class: a status's class is at its index.
        for (status, class) in [(100, "1xx"), (204, "2xx"), (302, "3xx"), (404, "4xx"), (503, "5xx"), (599, "5xx")] {
            assert_eq!(ResponseClass::STATUS[ResponseClass::of(status).index()].as_str(), class);
        }
    }

    #[test]
    fn setters_publish_absolute_values() {
        let m = Metrics::new(1);
        m.set_kernel_counters(&[("packets_seen", 10), ("ringbuf_full", 2), ("not_a_counter", 5)]);
        m.set_kernel_counters(&[("packets_seen", 12)]);
        m.set_ring_buffer_dropped(3);
        m.set_flows(7);
        m.set_buffered_bytes(4096);
        let gap = EventReason::Dropped(DropReason::Gap);
        m.set_extraction_stats(&[
            (gap, Counted::Requests, 4),
            (EventReason::Dropped(DropReason::ParseError), Counted::Responses, 1),
            (EventReason::Record(crate::label::RecordDrop::Short), Counted::Records, 2),
        ]);
        m.set_extraction_stats(&[(gap, Counted::Requests, 6)]);
        assert!(!m.is_ready());
        m.set_ready(true);
        assert!(m.is_ready());
        let prom = m.encode(TextFormat::Prometheus).unwrap();
        assert_eq!(sample_of(&prom, "shadow_kernel_packets_seen_total"), Some(12.0));
        assert_eq!(sample_of(&prom, "shadow_kernel_ringbuf_full_total"), Some(2.0));
        assert_eq!(sample_of(&prom, "shadow_ring_buffer_dropped_records_total"), Some(3.0));
        assert_eq!(sample_of(&prom, "shadow_flows"), Some(7.0));
        assert_eq!(sample_of(&prom, "shadow_buffered_bytes"), Some(4096.0));
        assert_eq!(sample_of(&prom, "shadow_extraction_events_total{reason=\"gap\",direction=\"request\"}"), Some(6.0));
        let e = "shadow_extraction_events_total{reason=\"parse_error\",direction=\"response\"}";
        assert_eq!(sample_of(&prom, e), Some(1.0));
        let e = "shadow_extraction_events_total{reason=\"short_record\",direction=\"records\"}";
        assert_eq!(sample_of(&prom, e), Some(2.0));
        assert_eq!(sample_of(&prom, "shadow_ready"), Some(1.0));
        assert_eq!(m.summary().kernel["packets_seen"], 12);
        // The build's identity: version and source revision, as --version prints them.
        let rev = env!("SHADOW_REVISION");
        assert!(!rev.is_empty() && rev.bytes().all(|b| b.is_ascii_graphic()), "{rev}");
        let info = format!("shadow_build_info{{version=\"{}\",revision=\"{rev}\"}}", env!("CARGO_PKG_VERSION"));
        assert_eq!(sample_of(&prom, &info), Some(1.0), "{prom}");
        assert_eq!(crate::VERSION, format!("{} ({rev})", env!("CARGO_PKG_VERSION")));
    }
}
