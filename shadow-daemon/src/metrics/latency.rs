//! Latency, recorded twice: Prometheus histograms (fixed buckets, aggregatable across nodes) and
//! hdrhistograms (exact percentiles for the summary), overall and per endpoint, with a bounded
//! number of endpoints.

use std::{sync::Mutex, time::Duration};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::{Registry, Unit},
};

use super::{
    EndpointId,
    endpoint::{self, EndpointNames},
    lock,
    summary::{EndpointSummary, LatencySummary, SideLatency},
};
use crate::label::Side;

/// Prometheus histogram buckets for latencies, in seconds: sub-millisecond to the longest
/// sensible request timeout.
const LATENCY_BUCKETS: [f64; 15] =
    [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];
/// hdrhistogram range in microseconds: 1 µs to 1 h (larger values are clamped).
const HDR_HIGH_US: u64 = 3_600_000_000;

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SideLabels {
    side: Side,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LatencyLabels {
    side: Side,
    endpoint: String,
}

pub(super) type Hdr<T> = hdrhistogram::Histogram<T>;

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

/// The latency metrics and the endpoint table they are kept by.
pub(super) struct Latency {
    response_latency: HistogramFamily<LatencyLabels>,
    first_byte: [Histogram; 2],
    endpoints: Mutex<Endpoints>,
    endpoints_tracked: Gauge,
    endpoint_overflow: Counter,
}

impl Latency {
    /// `max_endpoints`: distinct endpoints with their own latency series; the rest are `other`.
    pub(super) fn register(registry: &mut Registry, max_endpoints: usize) -> Self {
        let response_latency: HistogramFamily<LatencyLabels> = Family::new_with_constructor(latency_histogram);
        registry.register_with_unit(
            "shadow_response_latency",
            "Request to complete response, per endpoint: for the primary from the captured request's last byte to the \
             response's last byte, for the shadow from the request written to the response read",
            Unit::Seconds,
            response_latency.clone(),
        );
        let first_byte_family: HistogramFamily<SideLabels> = Family::new_with_constructor(latency_histogram);
        let first_byte = Side::ALL.map(|side| first_byte_family.get_or_create(&SideLabels { side }).clone());
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
        let overall = Overall {
            primary_first_byte: hdr(3),
            primary_complete: hdr(3),
            shadow_first_byte: hdr(3),
            shadow_complete: hdr(3),
        };
        Self {
            response_latency,
            first_byte,
            endpoints: Mutex::new(Endpoints {
                names: EndpointNames::new(max_endpoints),
                // Slot 0 is `other`.
                latency: vec![EndpointLatency::default()],
                overall,
                scratch: String::with_capacity(64),
            }),
            endpoints_tracked,
            endpoint_overflow,
        }
    }

    /// The endpoint of a request, registered if there is room.
    pub(super) fn endpoint(&self, method: &[u8], target: &[u8]) -> EndpointId {
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

    pub(super) fn endpoint_name(&self, id: EndpointId) -> String {
        lock(&self.endpoints).names.name(id).to_owned()
    }

    /// One exchange of `side`: overall always, per endpoint when it is known.
    pub(super) fn record(&self, side: Side, endpoint: Option<EndpointId>, first_byte: Duration, complete: Duration) {
        self.first_byte[side.index()].observe(first_byte.as_secs_f64());
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
            let labels = LatencyLabels { side, endpoint: names.name(id).to_owned() };
            (Box::new(hdr(2)), self.response_latency.get_or_create(&labels).clone())
        });
        h.saturating_record(micros(complete));
        prom.observe(complete.as_secs_f64());
    }

    /// Overall percentiles: (primary, shadow).
    pub(super) fn overall(&self) -> (SideLatency, SideLatency) {
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
    }

    /// Per-endpoint percentiles, busiest first.
    pub(super) fn by_endpoint(&self) -> Vec<EndpointSummary> {
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
        endpoints
    }

    pub(super) fn overflow(&self) -> u64 {
        self.endpoint_overflow.get()
    }
}
