//! Values other components count themselves and the daemon only reports: the kernel's per-CPU
//! counters (summed), records lost on the ring buffer, the extraction stage's event totals. They
//! are absolute totals, so they are kept as the latest snapshot and published through a
//! collector at scrape time, as counters, rather than by overwriting a counter's value.

use std::{
    collections::BTreeMap,
    fmt,
    sync::{Arc, Mutex},
};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric},
    metrics::{MetricType, counter::ConstCounter},
};
use shadow_common::counter::NAMES as KERNEL_COUNTER_NAMES;

use super::lock;
use crate::label::{Counted, EventReason};

/// The latest totals.
#[derive(Clone, Debug)]
pub(super) struct Absolutes {
    /// Every kernel counter, in `shadow_common::counter::NAMES` order.
    pub kernel: Vec<(&'static str, u64)>,
    pub ring_buffer_dropped: u64,
    /// (reason, direction) → events.
    pub extraction: BTreeMap<(EventReason, Counted), u64>,
    /// The egress fence's attempts: (rule, destination, verdict) → attempts, counted by the
    /// kernel (its maps are pinned, so the totals go on across daemon restarts).
    pub egress: Vec<(String, String, String, u64)>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EgressLabels {
    rule: String,
    destination: String,
    verdict: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EventLabels {
    reason: EventReason,
    direction: Counted,
}

impl Absolutes {
    pub(super) fn shared() -> Arc<Mutex<Self>> {
        Arc::new(Mutex::new(Self {
            kernel: KERNEL_COUNTER_NAMES.iter().map(|n| (*n, 0)).collect(),
            ring_buffer_dropped: 0,
            extraction: BTreeMap::new(),
            egress: Vec::new(),
        }))
    }

    /// Names not known to this daemon are ignored (a newer kernel object with an older daemon).
    pub(super) fn set_kernel(&mut self, values: &[(&'static str, u64)]) {
        for (name, v) in values {
            if let Some((_, c)) = self.kernel.iter_mut().find(|(n, _)| n == name) {
                *c = *v;
            }
        }
    }
}

fn kernel_help(name: &str) -> &'static str {
    match name {
        "packets_seen" => "Packets the eBPF programs ran on.",
        "service_port_segments" => "TCP segments to or from a service port.",
        "requests_sampled" => "Requests the kernel sampled for capture.",
        "requests_skipped" => "Requests the kernel did not sample.",
        "segments_emitted" => "Segments copied into the ring buffer.",
        "bytes_emitted" => "Payload bytes copied into the ring buffer.",
        "ringbuf_full" => "Segments lost because the ring buffer was full.",
        "copy_failed" => "Segments lost because the payload copy failed.",
        "truncated" => "Segments too large to copy, emitted header-only.",
        "unsupported_ipv6_ext" => "IPv6 packets with extension headers that are not walked.",
        "segments_not_sampled" => "Service-port segments not emitted because their request was not sampled.",
        "ipv4_fragments" => "IPv4 fragments on a service port, not captured.",
        "request_start_retransmits" => "Retransmitted request-start segments that kept their request's decision.",
        "requests_no_rule" => "Request starts on a service port whose server address matches no rule (not captured).",
        "request_start_continued" => {
            "Segments that looked like a request start but continued the request in progress (same acknowledgment)."
        }
        "request_starts_short" => "Request starts too short to classify whole, captured for the daemon to judge.",
        "request_starts_lost" => "Sampled request starts lost because the ring buffer was full (also in ringbuf_full).",
        _ => "eBPF program counter, summed over CPUs.",
    }
}

/// Publishes [`Absolutes`] from one snapshot per scrape.
#[derive(Debug)]
pub(super) struct AbsoluteCollector(pub(super) Arc<Mutex<Absolutes>>);

impl Collector for AbsoluteCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let snap = lock(&self.0).clone();
        for (name, v) in &snap.kernel {
            let c = ConstCounter::new(*v);
            let metric = format!("shadow_kernel_{name}");
            c.encode(encoder.encode_descriptor(&metric, kernel_help(name), None, c.metric_type())?)?;
        }
        let c = ConstCounter::new(snap.ring_buffer_dropped);
        c.encode(encoder.encode_descriptor(
            "shadow_ring_buffer_dropped_records",
            "Records lost between the kernel and the daemon.",
            None,
            c.metric_type(),
        )?)?;
        let mut family = encoder.encode_descriptor(
            "shadow_extraction_events",
            "Stream and message events of the extraction stage, by reason and direction.",
            None,
            MetricType::Counter,
        )?;
        for ((reason, direction), v) in &snap.extraction {
            let labels = EventLabels { reason: *reason, direction: *direction };
            ConstCounter::new(*v).encode(family.encode_family(&labels)?)?;
        }
        if !snap.egress.is_empty() {
            let mut family = encoder.encode_descriptor(
                "shadow_egress_attempts",
                "Connections and unconnected UDP sends the fenced shadow tried, by rule, destination \
                 (ADDR:PORT/PROTOCOL; past 64 per rule, other) and verdict (allowed, refused, observed: not \
                 allowed and let through in observe mode)",
                None,
                MetricType::Counter,
            )?;
            for (rule, destination, verdict, v) in &snap.egress {
                let labels =
                    EgressLabels { rule: rule.clone(), destination: destination.clone(), verdict: verdict.clone() };
                ConstCounter::new(*v).encode(family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}
