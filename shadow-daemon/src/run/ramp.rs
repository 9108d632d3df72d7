//! The rules' ramps in the running daemon: started (or taken up from `--state-dir`) with the
//! daemon, judged once a tick on their windows, their rates written to the kernel, every
//! transition logged as one line, counted and saved; operators' commands and the status.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::Arc,
    time::SystemTime,
};

use super::RunError;
use crate::{
    config::DaemonConfig,
    control::{ErrorBody, ErrorKind},
    metrics::ops::RampFigures,
    ramp::{
        Ramp, RampAction, RampConfig, RampFeed, RampStatus, Reason, State, Transition,
        store::{self, LoadError},
    },
    rule::RuleId,
};

/// Unix time in ms: ramps date their steps by the wall clock, so that a restarted daemon knows
/// how long the step has run.
pub(super) fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// One rule's ramp, by the rule's name.
struct Entry {
    name: String,
    ramp: Ramp,
}

pub(super) struct Ramps {
    dir: PathBuf,
    feed: Arc<RampFeed>,
    /// Indexed by rule id; `None`: the rule's rate is fixed.
    rules: Vec<Option<Entry>>,
    /// `shadow_ramp_transitions_total` by (rule, from, to, reason).
    transitions: BTreeMap<(String, State, State, &'static str), u64>,
}

/// A rate a ramp set: to apply to the rule in the kernel.
pub(super) type RateChange = (RuleId, u32);

impl Ramps {
    /// The ramps of `cfg`'s rules, taken up from the state in `cfg.state_dir` when they ran with
    /// the same steps, else started; `None` when no rule ramps (nothing is read or created).
    pub(super) fn start(cfg: &DaemonConfig, feed: Arc<RampFeed>) -> Result<Option<Self>, RunError> {
        if cfg.rules.iter().all(|r| r.ramp.is_none()) {
            return Ok(None);
        }
        store::prepare(&cfg.state_dir).map_err(|e| RunError::Io {
            op: format!("--state-dir {}: create the ramps' state directory", cfg.state_dir.display()),
            source: e,
        })?;
        let mut saved = match store::load(&cfg.state_dir) {
            Ok(s) => s.rules,
            Err(e) => {
                match e {
                    LoadError::Missing(_) => tracing::info!("ramp: {e}: every ramp starts at its first step"),
                    _ => tracing::warn!("ramp: {e}: every ramp starts at its first step"),
                }
                BTreeMap::new()
            }
        };
        let mut ramps = Self { dir: cfg.state_dir.clone(), feed, rules: Vec::new(), transitions: BTreeMap::new() };
        let now = unix_ms();
        for r in cfg.rules.iter() {
            let entry = r.ramp.clone().map(|c| {
                let (ramp, t) = Self::begin(&r.name, c, saved.remove(&r.name), now);
                log(&r.name, &t);
                *ramps.transitions.entry((r.name.clone(), t.from, t.to, t.reason.label())).or_default() += 1;
                Entry { name: r.name.clone(), ramp }
            });
            ramps.rules.push(entry);
        }
        ramps.reset_windows();
        ramps.save();
        Ok(Some(ramps))
    }

    /// A rule's ramp from its saved state, or from the start.
    fn begin(name: &str, cfg: RampConfig, saved: Option<crate::ramp::Saved>, now: u64) -> (Ramp, Transition) {
        match saved {
            Some(s) => {
                let steps = s.steps_ppm.clone();
                Ramp::restore(cfg.clone(), s, now).unwrap_or_else(|| {
                    tracing::info!(
                        "ramp {name}: the saved state ran other steps ({} ppm): the ramp starts at its first step",
                        steps.iter().map(u32::to_string).collect::<Vec<_>>().join(",")
                    );
                    Ramp::start(cfg, now)
                })
            }
            None => Ramp::start(cfg, now),
        }
    }

    fn entries(&self) -> impl Iterator<Item = (RuleId, &Entry)> {
        self.rules.iter().enumerate().filter_map(|(i, e)| e.as_ref().map(|e| (RuleId::new(i), e)))
    }

    /// Every window counts as its ramp is now, from empty.
    fn reset_windows(&self) {
        for (i, e) in self.rules.iter().enumerate() {
            self.feed.set(RuleId::new(i), e.as_ref().and_then(|e| e.ramp.window_mode()));
        }
    }

    /// The rates the ramps set now (to write at start, after a reload).
    pub(super) fn rates(&self) -> Vec<RateChange> {
        self.entries().filter(|(_, e)| e.ramp.state().owns_rate()).map(|(id, e)| (id, e.ramp.rate_ppm())).collect()
    }

    /// Whether rule `id`'s rate is the ramp's (an operator's `rate` is refused), and its state.
    pub(super) fn owner(&self, id: RuleId) -> Option<State> {
        let e = self.rules.get(id.index())?.as_ref()?;
        e.ramp.state().owns_rate().then(|| e.ramp.state())
    }

    /// Judge every ramp on its window: the rates that changed.
    pub(super) fn tick(&mut self) -> Vec<RateChange> {
        let now = unix_ms();
        let mut moved = Vec::new();
        for i in 0..self.rules.len() {
            let id = RuleId::new(i);
            let Some(e) = self.rules[i].as_mut() else { continue };
            let w = self.feed.read(id);
            let before = e.ramp.rate_ppm();
            if let Some(t) = e.ramp.judge(&w, self.feed.baseline(id), now) {
                moved.push((id, before, t));
            }
        }
        self.settle(moved)
    }

    /// After transitions: log and count each, empty the windows of new steps, save, and say
    /// which rates changed.
    fn settle(&mut self, moved: Vec<(RuleId, u32, Transition)>) -> Vec<RateChange> {
        if moved.is_empty() {
            return Vec::new();
        }
        let mut changes = Vec::new();
        for (id, before, t) in moved {
            let Some(e) = self.rules[id.index()].as_ref() else { continue };
            log(&e.name, &t);
            *self.transitions.entry((e.name.clone(), t.from, t.to, t.reason.label())).or_default() += 1;
            if Ramp::starts_window(&t) {
                self.feed.set(id, e.ramp.window_mode());
            }
            if e.ramp.rate_ppm() != before || t.to == State::Off {
                changes.push((id, e.ramp.rate_ppm()));
            }
        }
        self.save();
        changes
    }

    /// `ramp start|pause|resume|abort [--rule NAME]`: the command applied to the named rule's
    /// ramp, or to every ramp; refused as a whole (nothing changes) when a ramp cannot take it.
    pub(super) fn act(
        &mut self,
        rule: Option<&str>,
        id: Option<RuleId>,
        action: RampAction,
    ) -> Result<Vec<RateChange>, ErrorBody> {
        let chosen: Vec<RuleId> = match (rule, id) {
            (Some(name), Some(id)) => {
                if self.rules.get(id.index()).and_then(Option::as_ref).is_none() {
                    return Err(ErrorBody::new(
                        ErrorKind::NoSuchRule,
                        format!("rule '{name}' has no ramp ([rule.ramp], --ramp)"),
                    ));
                }
                vec![id]
            }
            _ => self.entries().map(|(id, _)| id).collect(),
        };
        let now = unix_ms();
        // Try on copies first: all or nothing.
        let mut tried = Vec::new();
        for &id in &chosen {
            let Some(e) = self.rules[id.index()].as_ref() else { continue };
            let mut r = e.ramp.clone();
            let before = r.rate_ppm();
            let t =
                r.act(action, now).map_err(|m| ErrorBody::new(ErrorKind::Rejected, format!("ramp {}: {m}", e.name)))?;
            tried.push((id, before, t, r));
        }
        let mut moved = Vec::new();
        for (id, before, t, r) in tried {
            if let Some(e) = self.rules[id.index()].as_mut() {
                e.ramp = r;
            }
            moved.push((id, before, t));
        }
        Ok(self.settle(moved))
    }

    /// Every ramp's status, or the named rule's.
    pub(super) fn status(&self, only: Option<RuleId>) -> Vec<RampStatus> {
        let now = unix_ms();
        self.entries()
            .filter(|(id, _)| only.is_none_or(|o| o == *id))
            .map(|(id, e)| e.ramp.status(&e.name, &self.feed.read(id), self.feed.baseline(id), now))
            .collect()
    }

    /// Rule `id`'s status.
    pub(super) fn status_of(&self, id: RuleId) -> Option<RampStatus> {
        self.status(Some(id)).into_iter().next()
    }

    /// The figures the metrics publish.
    pub(super) fn figures(&self) -> RampFigures {
        RampFigures {
            rules: self.entries().map(|(_, e)| (e.name.clone(), e.ramp.state(), e.ramp.rate_ppm())).collect(),
            transitions: self.transitions.iter().map(|((r, f, t, why), n)| (r.clone(), *f, *t, *why, *n)).collect(),
        }
    }

    /// After a reload: a rule that keeps its name and its ramp's settings keeps its ramp where
    /// it is; one with other settings starts anew; one without a ramp has none. The rates the
    /// ramps set, to write.
    pub(super) fn reload(&mut self, cfg: &DaemonConfig) -> Vec<RateChange> {
        let now = unix_ms();
        let mut old: BTreeMap<String, Ramp> = self.rules.drain(..).flatten().map(|e| (e.name, e.ramp)).collect();
        let mut started = Vec::new();
        for r in cfg.rules.iter() {
            let entry = r.ramp.clone().map(|c| match old.remove(&r.name) {
                Some(ramp) if ramp.cfg == c => Entry { name: r.name.clone(), ramp },
                _ => {
                    let (ramp, t) = Ramp::start(c, now);
                    started.push((r.name.clone(), t));
                    Entry { name: r.name.clone(), ramp }
                }
            });
            self.rules.push(entry);
        }
        for (name, t) in started {
            log(&name, &t);
            *self.transitions.entry((name, t.from, t.to, t.reason.label())).or_default() += 1;
        }
        // Rule ids may have moved: every window starts again (the steps keep their clocks).
        self.reset_windows();
        self.save();
        self.rates()
    }

    fn save(&self) {
        let rules: BTreeMap<String, crate::ramp::Saved> =
            self.entries().map(|(_, e)| (e.name.clone(), e.ramp.saved())).collect();
        if let Err(e) = store::save(&self.dir, &rules) {
            tracing::error!(
                "ramp: cannot save the ramps' state in {} ({e}): a restart would start them anew",
                path_display(&self.dir)
            );
        }
    }
}

fn path_display(p: &Path) -> String {
    p.display().to_string()
}

/// One line per transition: where it went, why, and the figures.
fn log(rule: &str, t: &Transition) {
    let line =
        format!("ramp {rule}: {} -> {} ({}) at step {}: {}", t.from, t.to, t.reason.label(), t.step + 1, t.detail);
    match t.reason {
        Reason::Trip(_) => tracing::error!("{line}"),
        Reason::Hold | Reason::Abort => tracing::warn!("{line}"),
        _ => tracing::info!("{line}"),
    }
}
