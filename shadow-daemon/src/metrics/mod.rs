//! What the daemon counts and measures, for Prometheus (`/metrics`) and for the summary printed
//! at exit.
//!
//! Request accounting is a ledger: every request the extraction stage saw ends in exactly one
//! outcome, so that at every scrape
//!
//! ```text
//! shadow_requests_captured_total = shadow_requests_replayed_total
//!     + sum(shadow_requests_dropped_total) + shadow_requests_in_flight
//! ```
//!
//! The four values are kept under one lock and published from one snapshot; a request that is
//! admitted carries a [`RequestTicket`] that settles it exactly once, and a ticket that is dropped
//! unsettled (shutdown, an aborted task) settles as `shutdown`, so nothing leaves the ledger
//! silently.
//!
//! Latency is recorded twice: Prometheus histograms (fixed buckets, aggregatable) and
//! hdrhistograms (exact percentiles for the summary), both per endpoint with a bounded endpoint
//! count.

pub mod endpoint;
mod ledger;
mod server;
mod text;

use std::{
    collections::BTreeMap,
    fmt,
    sync::{
        Arc, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use endpoint::EndpointNames;
pub use endpoint::{DEFAULT_MAX_ENDPOINTS, EndpointId, endpoint_template};
pub use ledger::{DropCounts, RequestCounts, RequestDrop, RequestTicket, reason};
use ledger::{Ledger, LedgerCollector};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::{Registry, Unit},
};
use serde::{Deserialize, Serialize};
pub use server::MetricsServer;
use shadow_common::counter::NAMES as KERNEL_COUNTER_NAMES;

/// Prometheus histogram buckets for latencies, in seconds: sub-millisecond to the longest
/// sensible request timeout.
const LATENCY_BUCKETS: [f64; 15] =
    [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];
/// hdrhistogram range in microseconds: 1 µs to 1 h (larger values are clamped).
const HDR_HIGH_US: u64 = 3_600_000_000;

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("bind the metrics endpoint to {addr}: {source}")]
    Bind { addr: std::net::SocketAddr, source: std::io::Error },
    #[error("read the local address of the metrics endpoint: {0}")]
    LocalAddr(std::io::Error),
    #[error("encode the metrics registry as text: formatting failed")]
    Encode,
}

/// How a replay to the shadow failed (`shadow_errors_total{kind}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ShadowErrorKind {
    ConnectRefused,
    /// Connecting or the whole exchange took longer than its timeout.
    Timeout,
    /// The connection was reset or closed before the response was complete.
    Reset,
    /// The shadow answered with something that is not a followable HTTP/1.x response.
    BadResponse,
    /// Name resolution, unreachable network and anything else.
    Other,
}

impl ShadowErrorKind {
    pub const ALL: [Self; 5] = [Self::ConnectRefused, Self::Timeout, Self::Reset, Self::BadResponse, Self::Other];

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::ConnectRefused => "connect_refused",
            Self::Timeout => "timeout",
            Self::Reset => "reset",
            Self::BadResponse => "bad_response",
            Self::Other => "other",
        }
    }
}

const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// Index into `STATUS_CLASSES`.
fn status_class_index(status: u16) -> usize {
    match status {
        100..=199 => 0,
        200..=299 => 1,
        300..=399 => 2,
        400..=499 => 3,
        _ => 4,
    }
}

/// A poisoned lock only means another thread panicked mid-update of a counter: the numbers are
/// still the best we have, and metrics must not take the daemon down.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClassLabels {
    class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SideLabels {
    side: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LatencyLabels {
    side: &'static str,
    endpoint: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ExtractionLabels {
    reason: &'static str,
    direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabels {
    version: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Side {
    Primary,
    Shadow,
}

impl Side {
    const fn as_str(self) -> &'static str {
        match self {
            Self::Primary => "primary",
            Self::Shadow => "shadow",
        }
    }
}

type Hdr<T> = hdrhistogram::Histogram<T>;

fn hdr<T: hdrhistogram::Counter>(sigfig: u8) -> Hdr<T> {
    Hdr::new_with_bounds(1, HDR_HIGH_US, sigfig).unwrap_or_else(|_| unreachable!("constant bounds are valid"))
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// Per-endpoint latency. Allocated on first use: most of the endpoint cap is usually unused, and
/// an endpoint seen only on one side costs nothing for the other.
#[derive(Default)]
struct EndpointLatency {
    primary: Option<(Box<Hdr<u32>>, Histogram)>,
    shadow: Option<(Box<Hdr<u32>>, Histogram)>,
}

/// Endpoint names and every latency distribution, under one lock: recording a response takes it
/// once.
struct Endpoints {
    names: EndpointNames,
    latency: Vec<EndpointLatency>,
    overall: Overall,
    /// Reused to build endpoint names, so a known endpoint is found without allocating.
    scratch: String,
}

/// Overall latency for the summary: 3 significant digits, as there are only four of them.
struct Overall {
    primary_first_byte: Hdr<u64>,
    primary_complete: Hdr<u64>,
    shadow_first_byte: Hdr<u64>,
    shadow_complete: Hdr<u64>,
}

/// Counters the replay engine updates per connection.
#[derive(Clone, Debug, Default)]
pub(crate) struct ConnectionMetrics {
    pub opened: Counter,
    pub reused: Counter,
    pub retries: Counter,
    pub open: Gauge,
    pub sent_bytes: Counter,
}

/// Every metric of the daemon. Cheap to share (`Arc<Metrics>`); every method takes `&self`.
pub struct Metrics {
    registry: Registry,
    ledger: Arc<Mutex<Ledger>>,
    responses: Family<ClassLabels, Counter>,
    /// The `responses` counters by status class (`STATUS_CLASSES` order), looked up once.
    response_counters: [Counter; 5],
    errors: Family<KindLabels, Counter>,
    /// The `errors` counters in `ShadowErrorKind::ALL` order, looked up once.
    error_counters: [Counter; 5],
    response_latency: HistogramFamily<LatencyLabels>,
    first_byte: [Histogram; 2],
    endpoints: Mutex<Endpoints>,
    endpoints_tracked: Gauge,
    endpoint_overflow: Counter,
    primary_unmatched: Counter,
    kernel: Vec<(&'static str, Counter)>,
    ring_buffer_dropped: Counter,
    flows: Gauge,
    buffered_bytes: Gauge,
    extraction: Family<ExtractionLabels, Counter>,
    pub(crate) connections: ConnectionMetrics,
    ready: AtomicBool,
    ready_gauge: Gauge,
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics").field("requests", &self.requests()).finish_non_exhaustive()
    }
}

fn kernel_help(name: &str) -> &'static str {
    match name {
        "packets_seen" => "Packets the eBPF programs ran on",
        "service_port_segments" => "TCP segments to or from a service port",
        "requests_sampled" => "Requests the kernel sampled for capture",
        "requests_skipped" => "Requests the kernel did not sample",
        "segments_emitted" => "Segments copied into the ring buffer",
        "bytes_emitted" => "Payload bytes copied into the ring buffer",
        "ringbuf_full" => "Segments lost because the ring buffer was full",
        "copy_failed" => "Segments lost because the payload copy failed",
        "truncated" => "Segments too large to copy, emitted header-only",
        "unsupported_ipv6_ext" => "IPv6 packets with extension headers that are not walked",
        "segments_not_sampled" => "Service-port segments not emitted because their request was not sampled",
        "ipv4_fragments" => "IPv4 fragments on a service port, not captured",
        "request_start_retransmits" => "Retransmitted request-start segments that kept their request's decision",
        _ => "eBPF program counter, summed over CPUs",
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
        let response_counters = STATUS_CLASSES.map(|class| responses.get_or_create(&ClassLabels { class }).clone());
        registry.register("shadow_responses", "Complete responses from the shadow, by status class", responses.clone());
        let errors = Family::<KindLabels, Counter>::default();
        let error_counters =
            ShadowErrorKind::ALL.map(|kind| errors.get_or_create(&KindLabels { kind: kind.as_str() }).clone());
        registry.register("shadow_errors", "Replays that failed, by kind", errors.clone());

        let response_latency: HistogramFamily<LatencyLabels> = Family::new_with_constructor(latency_histogram);
        registry.register_with_unit(
            "shadow_response_latency",
            "Request to complete response, per endpoint: for the primary from the captured request's last byte to the \
             response's last byte, for the shadow from the request written to the response read",
            Unit::Seconds,
            response_latency.clone(),
        );
        let first_byte_family: HistogramFamily<SideLabels> = Family::new_with_constructor(latency_histogram);
        let first_byte = [Side::Primary, Side::Shadow]
            .map(|s| first_byte_family.get_or_create(&SideLabels { side: s.as_str() }).clone());
        registry.register_with_unit(
            "shadow_first_byte_latency",
            "Request to the response head (shadow) or to the first response byte (primary)",
            Unit::Seconds,
            first_byte_family,
        );

        let endpoints_tracked = Gauge::default();
        registry.register(
            "shadow_endpoints",
            "Endpoints with their own latency series (the cap excludes `other`)",
            endpoints_tracked.clone(),
        );
        let endpoint_overflow = Counter::default();
        registry.register(
            "shadow_endpoint_overflow",
            "Requests counted under endpoint `other` because the endpoint cap was reached",
            endpoint_overflow.clone(),
        );
        let primary_unmatched = Counter::default();
        registry.register(
            "shadow_primary_responses_unmatched",
            "Primary responses whose request was not seen (or forgotten), counted without an endpoint",
            primary_unmatched.clone(),
        );

        let kernel: Vec<(&'static str, Counter)> =
            KERNEL_COUNTER_NAMES.iter().map(|n| (*n, Counter::default())).collect();
        for (name, c) in &kernel {
            registry.register(format!("shadow_kernel_{name}"), kernel_help(name), c.clone());
        }
        let ring_buffer_dropped = Counter::default();
        registry.register(
            "shadow_ring_buffer_dropped_records",
            "Records lost between the kernel and the daemon",
            ring_buffer_dropped.clone(),
        );
        let flows = Gauge::default();
        registry.register("shadow_flows", "Connections tracked by reassembly", flows.clone());
        let buffered_bytes = Gauge::default();
        registry.register_with_unit(
            "shadow_buffered",
            "Bytes buffered by reassembly and extraction",
            Unit::Bytes,
            buffered_bytes.clone(),
        );
        let extraction = Family::<ExtractionLabels, Counter>::default();
        registry.register(
            "shadow_extraction_events",
            "Stream and message events of the extraction stage, by reason and direction",
            extraction.clone(),
        );

        let connections = ConnectionMetrics::default();
        registry.register(
            "shadow_replay_connections_opened",
            "Connections opened to shadow targets",
            connections.opened.clone(),
        );
        registry.register(
            "shadow_replay_connection_reuses",
            "Requests sent on a kept-alive connection",
            connections.reused.clone(),
        );
        registry.register(
            "shadow_replay_retries",
            "Requests sent again on a new connection after a kept-alive one turned out closed",
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

        let ready_gauge = Gauge::default();
        registry.register("shadow_ready", "1 once capture is attached", ready_gauge.clone());
        let build = Family::<VersionLabels, Gauge>::default();
        build.get_or_create(&VersionLabels { version: env!("CARGO_PKG_VERSION") }).set(1);
        registry.register("shadow_build_info", "Version of the running daemon", build);

        let overall = Overall {
            primary_first_byte: hdr(3),
            primary_complete: hdr(3),
            shadow_first_byte: hdr(3),
            shadow_complete: hdr(3),
        };
        // Slot 0 is `other`.
        let latency = vec![EndpointLatency::default()];
        Self {
            registry,
            ledger,
            responses,
            response_counters,
            errors,
            error_counters,
            response_latency,
            first_byte,
            endpoints: Mutex::new(Endpoints {
                names: EndpointNames::new(max_endpoints),
                latency,
                overall,
                scratch: String::with_capacity(64),
            }),
            endpoints_tracked,
            endpoint_overflow,
            primary_unmatched,
            kernel,
            ring_buffer_dropped,
            flows,
            buffered_bytes,
            extraction,
            connections,
            ready: AtomicBool::new(false),
            ready_gauge,
        }
    }

    /// Admit one captured request into the ledger (captured and in flight); the ticket settles it.
    pub fn admit(&self) -> RequestTicket {
        Ledger::admit(&self.ledger)
    }

    /// A request the extraction stage saw but could not deliver (a gap, a parse error, ...):
    /// counted as captured and dropped for `reason` in one step.
    pub fn record_extraction_drop(&self, reason: &'static str) {
        lock(&self.ledger).captured_and_dropped(reason);
    }

    /// The ledger now.
    pub fn requests(&self) -> RequestCounts {
        lock(&self.ledger).counts()
    }

    /// The endpoint of a request (see [`endpoint_template`]), registered if there is room.
    pub fn endpoint(&self, method: &[u8], target: &[u8]) -> EndpointId {
        let mut guard = lock(&self.endpoints);
        let e = &mut *guard;
        endpoint::endpoint_template_into(&mut e.scratch, method, target);
        let (id, overflowed) = e.names.intern(&e.scratch);
        if overflowed {
            self.endpoint_overflow.inc();
        } else if e.latency.len() <= id.0 as usize {
            e.latency.push(EndpointLatency::default());
            self.endpoints_tracked.set(i64::try_from(e.names.len()).unwrap_or(i64::MAX));
        }
        id
    }

    /// The name of an endpoint id.
    pub fn endpoint_name(&self, id: EndpointId) -> String {
        lock(&self.endpoints).names.name(id).to_owned()
    }

    /// Primary latency of one exchange, from the captured timestamps. `None`: the request is not
    /// known (counted, recorded in the overall latency only).
    pub fn record_primary(&self, endpoint: Option<EndpointId>, first_byte: Duration, complete: Duration) {
        if endpoint.is_none() {
            self.primary_unmatched.inc();
        }
        self.record(Side::Primary, endpoint, first_byte, complete);
    }

    /// One complete shadow response.
    pub fn record_shadow_response(&self, endpoint: EndpointId, status: u16, first_byte: Duration, complete: Duration) {
        self.response_counters[status_class_index(status)].inc();
        self.record(Side::Shadow, Some(endpoint), first_byte, complete);
    }

    pub fn record_shadow_error(&self, kind: ShadowErrorKind) {
        self.error_counters[kind as usize].inc();
    }

    fn record(&self, side: Side, endpoint: Option<EndpointId>, first_byte: Duration, complete: Duration) {
        let idx = side as usize;
        self.first_byte[idx].observe(first_byte.as_secs_f64());
        let mut e = lock(&self.endpoints);
        let Endpoints { names, latency, overall: o, .. } = &mut *e;
        let (fb, c) = match side {
            Side::Primary => (&mut o.primary_first_byte, &mut o.primary_complete),
            Side::Shadow => (&mut o.shadow_first_byte, &mut o.shadow_complete),
        };
        fb.saturating_record(micros(first_byte));
        c.saturating_record(micros(complete));
        let Some(id) = endpoint else { return };
        let Some(slot) = latency.get_mut(id.0 as usize) else { return };
        let per_side = match side {
            Side::Primary => &mut slot.primary,
            Side::Shadow => &mut slot.shadow,
        };
        let (h, prom) = per_side.get_or_insert_with(|| {
            let labels = LatencyLabels { side: side.as_str(), endpoint: names.name(id).to_owned() };
            (Box::new(hdr(2)), self.response_latency.get_or_create(&labels).clone())
        });
        h.saturating_record(micros(complete));
        prom.observe(complete.as_secs_f64());
    }

    /// The eBPF per-CPU counters, summed: names from `shadow_common::counter::NAMES`, absolute
    /// values. Unknown names are ignored (a newer kernel object with an older daemon).
    pub fn set_kernel_counters(&self, values: &[(&'static str, u64)]) {
        for (name, v) in values {
            if let Some((_, c)) = self.kernel.iter().find(|(n, _)| n == name) {
                c.inner().store(*v, Ordering::Relaxed);
            }
        }
    }

    /// Records lost between the kernel and the daemon, absolute.
    pub fn set_ring_buffer_dropped(&self, total: u64) {
        self.ring_buffer_dropped.inner().store(total, Ordering::Relaxed);
    }

    pub fn set_flows(&self, flows: u64) {
        self.flows.set(i64::try_from(flows).unwrap_or(i64::MAX));
    }

    pub fn set_buffered_bytes(&self, bytes: u64) {
        self.buffered_bytes.set(i64::try_from(bytes).unwrap_or(i64::MAX));
    }

    /// Extraction-stage event totals as (reason, direction, absolute count).
    pub fn set_extraction_stats(&self, stats: &[(&'static str, &'static str, u64)]) {
        for (reason, direction, v) in stats {
            self.extraction.get_or_create(&ExtractionLabels { reason, direction }).inner().store(*v, Ordering::Relaxed);
        }
    }

    /// Ready once capture is attached (`/readyz`, `shadow_ready`).
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
        self.ready_gauge.set(i64::from(ready));
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    /// The registry in the OpenMetrics text format, or in the Prometheus text format 0.0.4 (what
    /// promtool and older scrapers read).
    pub fn encode(&self, format: TextFormat) -> Result<String, MetricsError> {
        let mut om = String::with_capacity(16 * 1024);
        prometheus_client::encoding::text::encode(&mut om, &self.registry).map_err(|_| MetricsError::Encode)?;
        Ok(match format {
            TextFormat::OpenMetrics => om,
            TextFormat::Prometheus => text::openmetrics_to_prometheus(&om),
        })
    }

    /// Everything counted, with exact latency percentiles.
    pub fn summary(&self) -> Summary {
        let requests = self.requests();
        let count_family = |f: &Family<ClassLabels, Counter>, keys: &[&'static str]| -> BTreeMap<String, u64> {
            keys.iter().map(|k| ((*k).to_owned(), f.get_or_create(&ClassLabels { class: k }).get())).collect()
        };
        let shadow_responses = count_family(&self.responses, &STATUS_CLASSES);
        let shadow_errors = ShadowErrorKind::ALL
            .iter()
            .map(|k| (k.as_str().to_owned(), self.errors.get_or_create(&KindLabels { kind: k.as_str() }).get()))
            .collect();
        let (primary, shadow) = {
            let e = lock(&self.endpoints);
            let o = &e.overall;
            (
                SideLatency {
                    first_byte: LatencySummary::of(&o.primary_first_byte),
                    complete: LatencySummary::of(&o.primary_complete),
                },
                SideLatency {
                    first_byte: LatencySummary::of(&o.shadow_first_byte),
                    complete: LatencySummary::of(&o.shadow_complete),
                },
            )
        };
        let mut endpoints: Vec<EndpointSummary> = {
            let e = lock(&self.endpoints);
            e.latency
                .iter()
                .enumerate()
                .filter(|(_, l)| l.primary.is_some() || l.shadow.is_some())
                .map(|(i, l)| EndpointSummary {
                    endpoint: e.names.name(EndpointId(i as u32)).to_owned(),
                    primary: l.primary.as_ref().map(|(h, _)| LatencySummary::of(h)).unwrap_or_default(),
                    shadow: l.shadow.as_ref().map(|(h, _)| LatencySummary::of(h)).unwrap_or_default(),
                })
                .collect()
        };
        endpoints.sort_by(|a, b| {
            (b.primary.count + b.shadow.count)
                .cmp(&(a.primary.count + a.shadow.count))
                .then(a.endpoint.cmp(&b.endpoint))
        });
        Summary {
            reconciles: requests.reconciles(),
            requests,
            shadow_responses,
            shadow_errors,
            primary,
            shadow,
            endpoints,
            endpoint_overflow: self.endpoint_overflow.get(),
            primary_unmatched: self.primary_unmatched.get(),
            kernel: self.kernel.iter().map(|(n, c)| ((*n).to_owned(), c.get())).collect(),
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

impl TextFormat {
    pub const fn content_type(self) -> &'static str {
        match self {
            Self::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Self::Prometheus => "text/plain; version=0.0.4; charset=utf-8",
        }
    }
}

/// Percentiles of one latency distribution, in milliseconds (0 when empty).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LatencySummary {
    pub count: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl LatencySummary {
    fn of<T: hdrhistogram::Counter>(h: &Hdr<T>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Self {
            count: h.len(),
            p50_ms: ms(h.value_at_quantile(0.50)),
            p90_ms: ms(h.value_at_quantile(0.90)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            max_ms: ms(h.max()),
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SideLatency {
    pub first_byte: LatencySummary,
    pub complete: LatencySummary,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct EndpointSummary {
    pub endpoint: String,
    /// Request to complete response.
    pub primary: LatencySummary,
    pub shadow: LatencySummary,
}

/// What the daemon prints at exit and the demo shows.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub requests: RequestCounts,
    /// `captured = replayed + dropped + in_flight` held for these numbers.
    pub reconciles: bool,
    pub shadow_responses: BTreeMap<String, u64>,
    pub shadow_errors: BTreeMap<String, u64>,
    pub primary: SideLatency,
    pub shadow: SideLatency,
    /// Busiest first.
    pub endpoints: Vec<EndpointSummary>,
    pub endpoint_overflow: u64,
    pub primary_unmatched: u64,
    pub kernel: BTreeMap<String, u64>,
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r = &self.requests;
        writeln!(
            f,
            "requests: captured {}  replayed {}  dropped {}  in flight {}{}",
            r.captured,
            r.replayed,
            r.dropped_total(),
            r.in_flight,
            if self.reconciles { "" } else { "  (DOES NOT RECONCILE)" }
        )?;
        let nonzero = |m: &BTreeMap<String, u64>| {
            m.iter().filter(|(_, v)| **v > 0).map(|(k, v)| format!("{k} {v}")).collect::<Vec<_>>().join(", ")
        };
        for (label, m) in [
            ("dropped", &r.dropped.0),
            ("shadow responses", &self.shadow_responses),
            ("shadow errors", &self.shadow_errors),
        ] {
            let s = nonzero(m);
            if !s.is_empty() {
                writeln!(f, "{label}: {s}")?;
            }
        }
        writeln!(f, "{:<40} {:>8} {:>9} {:>9} {:>9} {:>9}", "latency (ms)", "count", "p50", "p90", "p99", "max")?;
        let row = |f: &mut fmt::Formatter<'_>, name: &str, l: &LatencySummary| {
            writeln!(
                f,
                "{:<40} {:>8} {:>9.3} {:>9.3} {:>9.3} {:>9.3}",
                name, l.count, l.p50_ms, l.p90_ms, l.p99_ms, l.max_ms
            )
        };
        row(f, "primary (complete)", &self.primary.complete)?;
        row(f, "shadow (complete)", &self.shadow.complete)?;
        row(f, "primary (first byte)", &self.primary.first_byte)?;
        row(f, "shadow (first byte)", &self.shadow.first_byte)?;
        for e in &self.endpoints {
            let mut name = e.endpoint.clone();
            name.truncate(30);
            row(f, &format!("  {name} primary"), &e.primary)?;
            row(f, &format!("  {name} shadow"), &e.shadow)?;
        }
        if self.endpoint_overflow > 0 {
            writeln!(f, "{} requests past the endpoint cap are under `other`", self.endpoint_overflow)?;
        }
        Ok(())
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
        m.record_extraction_drop("gap");
        m.record_extraction_drop("parse_error");
        let r = m.requests();
        assert_eq!((r.captured, r.in_flight), (5, 3));
        assert!(r.reconciles());
        a.replayed();
        b.dropped(reason::QUEUE_FULL);
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
        m.record_extraction_drop("gap");
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
            assert_eq!(*k as usize, i, "{k:?}");
        }
        for (status, class) in [(100, "1xx"), (204, "2xx"), (302, "3xx"), (404, "4xx"), (503, "5xx"), (599, "5xx")] {
            assert_eq!(STATUS_CLASSES[status_class_index(status)], class);
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
        m.set_extraction_stats(&[("gap", "request", 4), ("parse_error", "response", 1)]);
        m.set_extraction_stats(&[("gap", "request", 6)]);
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
        assert_eq!(sample_of(&prom, "shadow_ready"), Some(1.0));
        assert_eq!(m.summary().kernel["packets_seen"], 12);
    }
}
