//! What operating the daemon changes and counts: interfaces attached as they come and go, the
//! control socket's requests and refusals, reloads, and each rule's sampling rate as the kernel
//! applies it. Set by the daemon's loop as a snapshot, published by a collector at scrape time.

use std::{
    fmt,
    sync::{Arc, Mutex},
};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
};

use super::lock;
use crate::{
    label::{ControlErrorKind, InterfaceEvent, ReloadResult},
    ramp::State,
};

/// Interfaces attached and detached as they came and went, and attaches that failed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InterfaceEvents {
    pub attached: u64,
    pub detached: u64,
    pub attach_failed: u64,
}

impl InterfaceEvents {
    fn labelled(self) -> [(InterfaceEvent, u64); 3] {
        [
            (InterfaceEvent::Attached, self.attached),
            (InterfaceEvent::Detached, self.detached),
            (InterfaceEvent::AttachFailed, self.attach_failed),
        ]
    }
}

/// Config reloads (SIGHUP or `shadowctl reload`) by outcome.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Reloads {
    pub applied: u64,
    pub refused: u64,
}

impl Reloads {
    /// Count one reload's outcome.
    pub fn count<T, E>(&mut self, outcome: &Result<T, E>) {
        match outcome {
            Ok(_) => self.applied += 1,
            Err(_) => self.refused += 1,
        }
    }

    fn labelled(self) -> [(ReloadResult, u64); 2] {
        [(ReloadResult::Applied, self.applied), (ReloadResult::Refused, self.refused)]
    }
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Operations {
    pub interfaces_attached: u64,
    pub interface_events: InterfaceEvents,
    pub control_requests: u64,
    /// By kind, every kind listed.
    pub control_errors: Vec<(ControlErrorKind, u64)>,
    pub reloads: Reloads,
    /// (rule name, fraction of requests the kernel samples now, 0..=1).
    pub rule_sample_ratio: Vec<(String, f64)>,
    pub ramps: RampFigures,
}

/// The ramps' figures: each ramping rule's state and rate (ppm), and its transitions so far as
/// (rule, from, to, reason, count).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RampFigures {
    pub rules: Vec<(String, State, u32)>,
    pub transitions: Vec<(String, State, State, &'static str, u64)>,
}

#[derive(Debug)]
pub(super) struct OpsCollector(pub(super) Arc<Mutex<Operations>>);

impl Collector for OpsCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let s = lock(&self.0).clone();
        let g = ConstGauge::new(i64::try_from(s.interfaces_attached).unwrap_or(i64::MAX));
        g.encode(encoder.encode_descriptor(
            "shadow_interfaces_attached",
            "Interfaces captured on now",
            None,
            g.metric_type(),
        )?)?;
        let mut f = encoder.encode_descriptor(
            "shadow_interface_events",
            "Interfaces attached and detached as they appeared and went, and attaches that failed",
            None,
            MetricType::Counter,
        )?;
        for (event, n) in s.interface_events.labelled() {
            ConstCounter::new(n).encode(f.encode_family(&[("event", event)])?)?;
        }
        let c = ConstCounter::new(s.control_requests);
        c.encode(encoder.encode_descriptor(
            "shadow_control_requests",
            "Well-formed requests served on the control socket",
            None,
            c.metric_type(),
        )?)?;
        let mut f = encoder.encode_descriptor(
            "shadow_control_errors",
            "Control socket requests answered with an error, by kind (refused: a peer not allowed)",
            None,
            MetricType::Counter,
        )?;
        for &(kind, n) in &s.control_errors {
            ConstCounter::new(n).encode(f.encode_family(&[("kind", kind)])?)?;
        }
        let mut f = encoder.encode_descriptor(
            "shadow_config_reloads",
            "Config reloads (SIGHUP or shadowctl reload), applied or refused",
            None,
            MetricType::Counter,
        )?;
        for (result, n) in s.reloads.labelled() {
            ConstCounter::new(n).encode(f.encode_family(&[("result", result)])?)?;
        }
        let mut f = encoder.encode_descriptor(
            "shadow_rule_sample_ratio",
            "Fraction of requests the kernel samples for each rule now (0 while paused)",
            None,
            MetricType::Gauge,
        )?;
        for (rule, r) in &s.rule_sample_ratio {
            ConstGauge::new(*r).encode(f.encode_family(&[("rule", rule.as_str())])?)?;
        }
        encode_ramps(&s.ramps, &mut encoder)
    }
}

fn encode_ramps(r: &RampFigures, encoder: &mut DescriptorEncoder) -> Result<(), fmt::Error> {
    if r.rules.is_empty() {
        return Ok(());
    }
    let mut f = encoder.encode_descriptor(
        "shadow_ramp_rate_percent",
        "The sampling rate a rule's ramp sets now, in percent (0 while tripped)",
        None,
        MetricType::Gauge,
    )?;
    for (rule, _, ppm) in &r.rules {
        ConstGauge::new(f64::from(*ppm) / 10_000.0).encode(f.encode_family(&[("rule", rule.as_str())])?)?;
    }
    let mut f = encoder.encode_descriptor(
        "shadow_ramp_state",
        "A rule's ramp state: 1 for the state it is in, 0 for the others",
        None,
        MetricType::Gauge,
    )?;
    for (rule, state, _) in &r.rules {
        for s in State::ALL {
            let v = i64::from(s == *state);
            ConstGauge::new(v).encode(f.encode_family(&[("rule", rule.as_str()), ("state", s.as_str())])?)?;
        }
    }
    let mut f = encoder.encode_descriptor(
        "shadow_ramp_transitions",
        "Ramp transitions by rule, from and to state, and reason (a guard's name when it tripped)",
        None,
        MetricType::Counter,
    )?;
    for (rule, from, to, reason, n) in &r.transitions {
        ConstCounter::new(*n).encode(f.encode_family(&[
            ("rule", rule.as_str()),
            ("from", from.as_str()),
            ("to", to.as_str()),
            ("reason", reason),
        ])?)?;
    }
    Ok(())
}
