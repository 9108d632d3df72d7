//! What operators change while the daemon runs: per-rule sampling rates, pause and resume,
//! applied to the capture's kernel maps, and the `status` answer read back from them. The
//! daemon owns one [`Operations`] beside the capture, so a change and the answer that reads it
//! back are one step; which command does what is the daemon's one `match` (see [`crate::run`]).

use std::time::Instant;

use crate::{
    capture::{Capture, HookKind, KernelRule},
    control::{ErrorBody, ErrorKind, RuleStatus, Status},
    metrics::Metrics,
    rule::RuleId,
    service::ServiceMatch,
};

/// One rule as operators see it: its services and shadow, the rate set for it, and whether it
/// is paused (then the kernel samples nothing for it; the set rate comes back on resume).
#[derive(Clone, Debug, PartialEq)]
pub struct RuleRuntime {
    pub name: String,
    pub services: Vec<ServiceMatch>,
    pub shadow: Option<String>,
    pub rate_ppm: u32,
    pub paused: bool,
}

impl RuleRuntime {
    fn kernel_ppm(&self) -> u32 {
        if self.paused { 0 } else { self.rate_ppm }
    }
}

/// Daemon facts that `status` reports and operators cannot change.
#[derive(Clone, Debug)]
pub struct Facts {
    pub hook: HookKind,
    pub interfaces: Vec<String>,
    pub ring_buffer_bytes: u64,
}

pub struct Operations {
    started: Instant,
    facts: Facts,
    rules: Vec<RuleRuntime>,
}

pub fn percent_to_ppm(percent: f64) -> Option<u32> {
    (percent.is_finite() && (0.0..=100.0).contains(&percent)).then(|| (percent * 10_000.0).round() as u32)
}

pub fn ppm_to_percent(ppm: u32) -> f64 {
    f64::from(ppm) / 10_000.0
}

impl Operations {
    pub fn new(facts: Facts, rules: Vec<RuleRuntime>) -> Self {
        Self { started: Instant::now(), facts, rules }
    }

    pub fn rules(&self) -> &[RuleRuntime] {
        &self.rules
    }

    /// What the kernel must hold for these rules (a paused rule samples nothing).
    pub fn kernel_rules(rules: &[RuleRuntime]) -> Vec<KernelRule> {
        rules.iter().map(|r| KernelRule { services: r.services.clone(), sample_ppm: r.kernel_ppm() }).collect()
    }

    /// Replace the rules after a reload: a rule that keeps its name keeps its paused state and,
    /// when the new file does not change its rate, the rate an operator set live.
    pub fn replace_rules(&mut self, old_file: &[RuleRuntime], new: Vec<RuleRuntime>) -> Vec<RuleRuntime> {
        let merged: Vec<RuleRuntime> = new
            .into_iter()
            .map(|mut r| {
                if let Some(cur) = self.rules.iter().find(|c| c.name == r.name) {
                    r.paused = cur.paused;
                    let file_unchanged = old_file.iter().any(|o| o.name == r.name && o.rate_ppm == r.rate_ppm);
                    if file_unchanged {
                        r.rate_ppm = cur.rate_ppm;
                    }
                }
                r
            })
            .collect();
        self.rules = merged.clone();
        merged
    }

    /// `rate PERCENT [--rule NAME]`: the rate of one rule or of every rule (kept while paused).
    pub fn set_rate(&mut self, capture: &mut Capture, rule: Option<&str>, percent: f64) -> Result<(), ErrorBody> {
        let Some(ppm) = percent_to_ppm(percent) else {
            return Err(ErrorBody::new(
                ErrorKind::InvalidArgument,
                format!("rate: {percent} is not a percentage (0-100)"),
            ));
        };
        self.change(capture, rule, |r| r.rate_ppm = ppm)
    }

    /// Rule `id`'s rate, set by its ramp (kept while paused).
    pub fn set_rule_ppm(&mut self, capture: &mut Capture, id: RuleId, ppm: u32) -> Result<(), ErrorBody> {
        let Some(r) = self.rules.get_mut(id.index()) else { return Ok(()) };
        r.rate_ppm = ppm;
        capture.set_rule_ppm(id, r.kernel_ppm()).map_err(|e| ErrorBody::new(ErrorKind::Internal, e.to_string()))
    }

    /// `pause` (`true`) or `resume` (`false`) one rule or every rule.
    pub fn set_paused(&mut self, capture: &mut Capture, rule: Option<&str>, paused: bool) -> Result<(), ErrorBody> {
        self.change(capture, rule, |r| r.paused = paused)
    }

    /// Change one rule (by name) or all, and write each changed rule's rate to the kernel.
    fn change(
        &mut self,
        capture: &mut Capture,
        rule: Option<&str>,
        f: impl Fn(&mut RuleRuntime),
    ) -> Result<(), ErrorBody> {
        let ids: Vec<RuleId> = match rule {
            None => RuleId::all(self.rules.len()).collect(),
            Some(name) => vec![self.id_of(name)?],
        };
        for id in ids {
            let r = &mut self.rules[id.index()];
            f(r);
            let ppm = r.kernel_ppm();
            capture.set_rule_ppm(id, ppm).map_err(|e| ErrorBody::new(ErrorKind::Internal, e.to_string()))?;
        }
        Ok(())
    }

    /// The rule named `name`, or an error naming the rules there are.
    pub fn id_of(&self, name: &str) -> Result<RuleId, ErrorBody> {
        match self.rules.iter().position(|r| r.name == name) {
            Some(i) => Ok(RuleId::new(i)),
            None => {
                let known: Vec<&str> = self.rules.iter().map(|r| r.name.as_str()).collect();
                Err(ErrorBody::new(
                    ErrorKind::NoSuchRule,
                    format!("no rule named '{name}' (rules: {})", known.join(", ")),
                ))
            }
        }
    }

    /// The status answer; each rule's kernel rate is read back from the kernel's map.
    pub fn status(&self, capture: &Capture, metrics: &Metrics) -> Status {
        let summary = metrics.summary();
        let mut counters: std::collections::BTreeMap<String, u64> = [
            ("requests_captured", summary.requests.captured),
            ("requests_replayed", summary.requests.replayed),
            ("requests_dropped", summary.requests.dropped_total()),
            ("requests_in_flight", summary.requests.in_flight),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        if let Ok(k) = capture.counters() {
            for (name, v) in shadow_common::counter::NAMES.iter().zip(k) {
                if matches!(*name, "ringbuf_full" | "requests_sampled" | "requests_skipped" | "requests_no_rule") {
                    counters.insert(format!("kernel_{name}"), v);
                }
            }
        }
        Status {
            version: env!("CARGO_PKG_VERSION").to_string(),
            uptime_secs: self.started.elapsed().as_secs_f64(),
            hook: self.facts.hook.as_str().into(),
            interfaces: self.facts.interfaces.clone(),
            attached: capture.attached(),
            ring_buffer_bytes: self.facts.ring_buffer_bytes,
            rules: self
                .rules
                .iter()
                .zip(RuleId::all(self.rules.len()))
                .map(|(r, id)| RuleStatus {
                    name: r.name.clone(),
                    matches: r.services.iter().map(ToString::to_string).collect(),
                    shadow: r.shadow.clone(),
                    sample_percent: ppm_to_percent(r.rate_ppm),
                    kernel_percent: capture.rule_ppm(id).map_or(f64::NAN, ppm_to_percent),
                    paused: r.paused,
                    ramp: None,
                })
                .collect(),
            counters,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(name: &str, ppm: u32, paused: bool) -> RuleRuntime {
        RuleRuntime {
            name: name.into(),
            services: vec![ServiceMatch::any_address(80)],
            shadow: None,
            rate_ppm: ppm,
            paused,
        }
    }

    #[test]
    fn percent_conversion_is_bounded_and_exact() {
        assert_eq!(percent_to_ppm(100.0), Some(1_000_000));
        assert_eq!(percent_to_ppm(0.0), Some(0));
        assert_eq!(percent_to_ppm(12.5), Some(125_000));
        assert_eq!(percent_to_ppm(0.0001), Some(1));
        for bad in [100.01, -0.1, f64::NAN, f64::INFINITY] {
            assert_eq!(percent_to_ppm(bad), None, "{bad}");
        }
        assert_eq!(ppm_to_percent(125_000), 12.5);
    }

    #[test]
    fn paused_rules_sample_nothing_in_the_kernel() {
        let k = Operations::kernel_rules(&[rule("a", 500_000, false), rule("b", 500_000, true)]);
        assert_eq!(k.iter().map(|r| r.sample_ppm).collect::<Vec<_>>(), vec![500_000, 0]);
    }

    #[test]
    fn reload_keeps_live_rates_and_pauses_unless_the_file_changed_the_rate() {
        let facts = Facts { hook: HookKind::Tc, interfaces: vec!["eth0".into()], ring_buffer_bytes: 1 };
        let file = vec![rule("a", 100_000, false), rule("b", 100_000, false)];
        let mut ops = Operations::new(facts, vec![rule("a", 500_000, true), rule("b", 20_000, false)]);
        // New file: a unchanged (10 %), b changed to 30 %, c new.
        let merged =
            ops.replace_rules(&file, vec![rule("a", 100_000, false), rule("b", 300_000, false), rule("c", 1, false)]);
        assert_eq!(merged[0], rule("a", 500_000, true), "live rate and pause survive an unchanged file");
        assert_eq!(merged[1], rule("b", 300_000, false), "the file's new rate wins");
        assert_eq!(merged[2], rule("c", 1, false));
        assert_eq!(ops.rules(), &merged[..]);
    }
}
