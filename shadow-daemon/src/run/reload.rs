//! A reload (SIGHUP or `shadowctl reload`): read the config file again, validate everything,
//! then apply the rules to the kernel, the replay lanes, the comparison and the interfaces. Flow
//! state is kept; replays queued under the old rules finish (up to [`RELOAD_GRACE`]). Refused as
//! a whole, with the reason, when anything is invalid: the running config stays.

use super::{
    RELOAD_GRACE,
    daemon::{Daemon, compare_hub, fences, log_rules, rule_runtimes, tell_systemd},
    ramp::Ramps,
};
use crate::{
    compare::{CompareSettings, EpochReason},
    config::{DaemonConfig, Rule},
    control::{ErrorBody, ErrorKind},
    correlate::Correlator,
    egress::Fence,
    operate::Operations,
    replay::ReplayEngine,
};

impl Daemon {
    /// Reload the config file; counted as applied or refused.
    pub(super) fn reload(&mut self) -> Result<(), ErrorBody> {
        tell_systemd(&format!("RELOADING=1\n{}", crate::sys::notify::monotonic_usec()));
        let outcome = self.apply_reload().map_err(|msg| ErrorBody::new(ErrorKind::Rejected, msg));
        self.reloads.count(&outcome);
        tell_systemd("READY=1");
        outcome
    }

    fn apply_reload(&mut self) -> Result<(), String> {
        let Some(args) = &self.cfg.source else {
            return Err("started without --config: there is no file to reload".into());
        };
        let new = args.as_ref().clone().resolve().map_err(|e| e.to_string())?;
        // The comparison goes on across a reload that keeps every rule's name and compare
        // settings; otherwise it starts anew for the new rules (the report says so by its counts).
        let spec = |c: &DaemonConfig| -> Vec<(String, Option<CompareSettings>)> {
            c.rules.iter().map(|r| (r.name.clone(), r.compare.clone())).collect()
        };
        let kept = spec(&new) == spec(&self.cfg);
        // One correlator per hub: requests waiting across the reload still meet their answers.
        let correlator = if kept {
            self.correlator.clone()
        } else {
            Correlator::with_ramp(
                self.metrics.clone(),
                compare_hub(&new, &self.metrics).map_err(|e| e.to_string())?,
                self.ramp_feed().clone(),
            )
        };
        let new_engine = ReplayEngine::start(&new.rules, correlator.clone()).map_err(|e| e.to_string())?;
        // The fences before the rest: a cgroup path that is not cgroup v2 refuses the reload.
        match &mut self.fence {
            Some(f) => f.apply(&fences(&new)).map_err(|e| e.to_string())?,
            None => self.fence = Fence::start(&new.pin_dir, &fences(&new)).map_err(|e| e.to_string())?,
        }
        let retargeted = retargeted(&self.cfg.rules, &new.rules);
        let new_file = rule_runtimes(&new);
        let before = self.ops.rules().to_vec();
        let mut merged = self.ops.replace_rules(&self.file_rules, new_file.clone());
        // The ramps follow the new rules by name; a ramping rule's rate is its ramp's.
        let ramp_rates = match &mut self.ramps {
            Some(r) => r.reload(&new),
            None => match Ramps::start(&new, self.ramp_feed().clone()).map_err(|e| e.to_string())? {
                Some(r) => {
                    let rates = r.rates();
                    self.ramps = Some(r);
                    rates
                }
                None => Vec::new(),
            },
        };
        if !ramp_rates.is_empty() {
            for (id, ppm) in ramp_rates {
                if let Some(r) = merged.get_mut(id.index()) {
                    r.rate_ppm = ppm;
                }
            }
            merged = self.ops.replace_rules(&[], merged);
        }
        if let Err(e) = self.capture.set_rules(&Operations::kernel_rules(&merged)) {
            self.ops.replace_rules(&[], before);
            return Err(e.to_string());
        }
        self.file_rules = new_file;
        let old = std::mem::replace(&mut self.engine, new_engine);
        match (self.correlator.hub(), correlator.hub()) {
            (Some(h), Some(_)) if kept => {
                for (id, _) in new.rules.with_ids().filter(|(_, r)| retargeted.contains(&r.name)) {
                    // What the old target still answers is no pair of the new epoch.
                    old.retire_compare(id);
                    h.start_epoch(id, EpochReason::Target);
                }
            }
            (before, Some(h)) => h.open(before.map(|b| (b.as_ref(), retargeted.as_slice()))),
            (Some(before), None) => before.close(),
            (None, None) => {}
        }
        tokio::spawn(async move { old.shutdown(RELOAD_GRACE).await });
        if !kept && (self.correlator.hub().is_some() || correlator.hub().is_some()) {
            tracing::info!("reload changed the rules' names or comparison settings: the comparison starts anew");
        }
        self.correlator = correlator;
        if new.interfaces != self.interfaces.patterns {
            self.interfaces.patterns = new.interfaces.clone();
            let _ = self.interfaces.attach_present(&mut self.capture, false);
        }
        log_rules(self.ops.rules());
        tracing::info!("reloaded: {} rule(s)", self.ops.rules().len());
        let source = self.cfg.source.take();
        self.cfg = new;
        self.cfg.source = source;
        Ok(())
    }
}

/// Names of the rules of `new` that `old` has under the same name with another shadow target
/// (or none, or one where it had none): their comparison starts a new epoch.
fn retargeted(old: &[Rule], new: &[Rule]) -> Vec<String> {
    let target = |r: &Rule| r.shadow.as_ref().map(ToString::to_string);
    new.iter()
        .filter(|r| old.iter().any(|o| o.name == r.name && target(o) != target(r)))
        .map(|r| r.name.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replay::controls::ShadowTarget;

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
