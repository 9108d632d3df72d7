//! The guarded ramp: a rule's sampling rate raised step by step while guards judge the shadow
//! on the current step's pairs, and pulled to 0 at once when one has evidence of harm.
//!
//! A ramp first measures a baseline: the primary's latency with the shadow receiving nothing
//! (requests are captured at the last step's rate, timed and not replayed, counted as
//! `ramp_baseline`). Then each step lasts at least `step_seconds` and needs `min_pairs` compared
//! pairs; it advances when both are met and no guard leans toward harm, and the last step is
//! held (`done`). Four guards, each a sequential test ([`evidence`]) on the step's window only:
//!
//! - `errors`: pairs where the shadow failed (5xx, timeout, reset, refused) and the primary did
//!   not, against the reverse; harm is an excess beyond `error_excess_percent`.
//! - `latency`: pairs where the shadow took longer than `latency_ratio` times the primary plus
//!   `latency_floor`, against the reverse (the two sides timed alike, from the kernel's
//!   timestamps); harm is an excess beyond 5 % of pairs: the ratio's p95 over the limit.
//! - `harm` (do no harm): the primary's own responses slower than `harm_ratio` times its p99
//!   before the ramp (an upper bound of it) plus the floor, beyond 1 % of them: a shadow that
//!   shares a database or a node with production slows production down, and this sees it.
//! - `shedding`: the rule's requests the daemon shed (`queue_full`, `shadow_backoff`) beyond
//!   `shed_percent`.
//!
//! `alpha` bounds the chance that a healthy shadow trips the whole ramp: it is split evenly over
//! the guards and steps. A guard trips at wealth `1/α_each` and with at least [`TRIP_MIN`]
//! outcomes; too few pairs hold, never advance and never trip. The state machine is pure (time is
//! passed in); [`crate::run`] feeds it, applies its rates to the kernel and keeps its state.

pub mod evidence;
pub mod feed;
pub mod store;

use std::{fmt, time::Duration};

use serde::{Deserialize, Serialize};

use self::evidence::{Tally, log_wealth};
pub use self::feed::{BaselineSeen, PairSeen, RampFeed, WindowCounts, WindowMode};

/// Outcomes a guard needs before it may trip, however strong the evidence.
pub const TRIP_MIN: u64 = 20;
/// The share of pairs allowed past the latency limit (the limit is on the ratio's p95).
pub const LATENCY_TAIL: f64 = 0.05;
/// The share of primary responses allowed past the harm threshold (it is on the p99).
pub const HARM_TAIL: f64 = 0.01;

/// A rule's ramp, as configured (`[rule.ramp]`, `--ramp`).
#[derive(Clone, Debug, PartialEq)]
pub struct RampConfig {
    /// Sampling rates of the steps, in parts per million, increasing.
    pub steps_ppm: Vec<u32>,
    pub step: Duration,
    pub min_pairs: u64,
    pub baseline: Duration,
    /// Primary responses the baseline needs: its p99 is taken as an upper bound, which is only
    /// near the p99 with a couple of thousand of them (with a few hundred it is their maximum).
    pub baseline_responses: u64,
    pub alpha: f64,
    pub error_excess: f64,
    pub latency_ratio: f64,
    pub latency_floor: Duration,
    pub harm_ratio: f64,
    pub shed: f64,
}

impl Default for RampConfig {
    fn default() -> Self {
        Self {
            steps_ppm: [1, 5, 10, 25, 50, 100].map(|p| p * 10_000).to_vec(),
            step: Duration::from_secs(300),
            min_pairs: 200,
            baseline: Duration::from_secs(60),
            baseline_responses: 2000,
            alpha: 0.05,
            error_excess: 0.01,
            latency_ratio: 1.2,
            latency_floor: Duration::from_millis(5),
            harm_ratio: 1.2,
            shed: 0.01,
        }
    }
}

impl RampConfig {
    /// Checks what the settings cannot check one by one.
    pub fn validate(&self) -> Result<(), String> {
        if self.steps_ppm.is_empty() {
            return Err("a ramp needs at least one step".into());
        }
        if self.steps_ppm.contains(&0) {
            return Err("a step of 0 % mirrors nothing: steps are above 0".into());
        }
        if self.steps_ppm.windows(2).any(|w| w[1] <= w[0]) {
            return Err("steps must increase".into());
        }
        Ok(())
    }

    /// The log of the wealth at which one guard trips on one step.
    fn bar(&self) -> f64 {
        let tests = (Guard::ALL.len() * self.steps_ppm.len()) as f64;
        (tests / self.alpha).ln()
    }

    fn last_ppm(&self) -> u32 {
        self.steps_ppm.last().copied().unwrap_or(0)
    }
}

/// The guards, in the order they are judged and reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Guard {
    Errors,
    Latency,
    Harm,
    Shedding,
}

impl Guard {
    pub const ALL: [Self; 4] = [Self::Errors, Self::Latency, Self::Harm, Self::Shedding];

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Errors => "errors",
            Self::Latency => "latency",
            Self::Harm => "harm",
            Self::Shedding => "shedding",
        }
    }

    fn tally(self, w: &WindowCounts) -> Tally {
        match self {
            Self::Errors => w.errors,
            Self::Latency => w.latency,
            Self::Harm => w.harm,
            Self::Shedding => w.shedding,
        }
    }

    fn tolerance(self, c: &RampConfig) -> f64 {
        match self {
            Self::Errors => c.error_excess,
            Self::Latency => LATENCY_TAIL,
            Self::Harm => HARM_TAIL,
            Self::Shedding => c.shed,
        }
    }

    /// What a `+1` outcome is, and a `-1` (for the guards that compare both ways), for the
    /// reason a person reads.
    fn what(self) -> (&'static str, Option<&'static str>) {
        match self {
            Self::Errors => ("pairs failed by the shadow alone", Some("by the primary alone")),
            Self::Latency => ("pairs slower on the shadow past the limit", Some("slower on the primary")),
            Self::Harm => ("primary responses slower than the baseline allows", None),
            Self::Shedding => ("requests shed (queue_full, shadow_backoff)", None),
        }
    }
}

/// Where a ramp is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Not running: the rule's rate is the operator's (after `abort`).
    Off,
    /// Measuring the primary's latency before the shadow receives anything.
    Baseline,
    /// At a step, its clock running, nothing in the way.
    Advancing,
    /// At a step whose time is up, waiting for pairs or for a guard's evidence to clear.
    Holding,
    /// A guard found harm: the rule's rate is 0 until an operator acts.
    Tripped,
    /// Held at its step by an operator (the guards still watch).
    Paused,
    /// At the last step, its time and pairs met: held there (the guards still watch).
    Done,
}

impl State {
    pub const ALL: [Self; 7] =
        [Self::Off, Self::Baseline, Self::Advancing, Self::Holding, Self::Tripped, Self::Paused, Self::Done];

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Off => "off",
            Self::Baseline => "baseline",
            Self::Advancing => "advancing",
            Self::Holding => "holding",
            Self::Tripped => "tripped",
            Self::Paused => "paused",
            Self::Done => "done",
        }
    }

    /// Whether the ramp sets the rule's rate (an operator's `rate` is refused).
    pub const fn owns_rate(self) -> bool {
        !matches!(self, Self::Off)
    }

    /// Whether the guards judge the window.
    const fn guarded(self) -> bool {
        matches!(self, Self::Advancing | Self::Holding | Self::Paused | Self::Done)
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a ramp moved (the `reason` label of `shadow_ramp_transitions_total`; in JSON the same
/// text: a trip is its guard's name).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(into = "&'static str", try_from = "String")]
pub enum Reason {
    /// Started (by the config, or `ramp start`).
    Start,
    /// The baseline was measured.
    Baseline,
    /// A step's time and pairs were met: the next one.
    Step,
    /// A step's time is up and it cannot advance yet.
    Hold,
    /// What held it cleared.
    Clear,
    Trip(Guard),
    Pause,
    Resume,
    Abort,
    /// A restarted daemon took up the saved state.
    Restore,
}

impl Reason {
    pub fn label(self) -> &'static str {
        match self {
            Self::Start => "start",
            Self::Baseline => "baseline",
            Self::Step => "step",
            Self::Hold => "hold",
            Self::Clear => "clear",
            Self::Trip(g) => g.as_str(),
            Self::Pause => "pause",
            Self::Resume => "resume",
            Self::Abort => "abort",
            Self::Restore => "restore",
        }
    }

    /// Every label, for the metrics to export at 0.
    pub const ALL: [Self; 13] = [
        Self::Start,
        Self::Baseline,
        Self::Step,
        Self::Hold,
        Self::Clear,
        Self::Trip(Guard::Errors),
        Self::Trip(Guard::Latency),
        Self::Trip(Guard::Harm),
        Self::Trip(Guard::Shedding),
        Self::Pause,
        Self::Resume,
        Self::Abort,
        Self::Restore,
    ];
}

impl From<Reason> for &'static str {
    fn from(r: Reason) -> Self {
        r.label()
    }
}

impl TryFrom<String> for Reason {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        Self::ALL.into_iter().find(|r| r.label() == s).ok_or_else(|| format!("'{s}' is not a ramp transition's reason"))
    }
}

/// One transition: logged as one line, counted, and kept as the ramp's last.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Transition {
    pub from: State,
    pub to: State,
    pub reason: Reason,
    /// The step it happened at (0-based), and what a person reads: the guard, its figures.
    pub step: usize,
    pub detail: String,
    pub at_unix_ms: u64,
}

/// One guard's figures in the current window.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GuardStatus {
    pub guard: Guard,
    /// Outcomes seen, and the `+1` and `-1` among them.
    pub n: u64,
    pub against: u64,
    pub reverse: u64,
    /// The evidence of harm (the test's wealth), and where it trips.
    pub evidence: f64,
    pub trips_at: f64,
}

/// A ramp as operators see it (`shadowctl ramp`, `status --json` under `"ramp"`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RampStatus {
    pub rule: String,
    pub state: State,
    /// The current step (0-based) and how many there are.
    pub step: usize,
    pub steps: usize,
    /// The rate the ramp sets now.
    pub rate_percent: f64,
    /// Time at the step (or in the baseline), and the pairs compared in it.
    pub seconds_at_step: f64,
    pub pairs: u64,
    /// What decides now: why it holds, what tripped it, what it waits for.
    pub reason: String,
    /// The primary's p99 before the ramp (an upper bound), when measured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline_p99_ms: Option<f64>,
    pub guards: Vec<GuardStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition: Option<Transition>,
}

/// What a ramp keeps across restarts.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Saved {
    /// The steps it ran with: other steps in the config start the ramp anew.
    pub steps_ppm: Vec<u32>,
    pub state: State,
    pub step: usize,
    pub since_unix_ms: u64,
    #[serde(default)]
    pub baseline_p99_ns: Option<u64>,
    #[serde(default)]
    pub last: Option<Transition>,
}

/// An operator's command to a ramp.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RampAction {
    Start,
    Pause,
    Resume,
    Abort,
}

/// One rule's ramp.
#[derive(Clone, Debug)]
pub struct Ramp {
    pub cfg: RampConfig,
    state: State,
    step: usize,
    /// When the current step (or baseline) began.
    since_ms: u64,
    baseline_p99: Option<Duration>,
    /// Why it holds (or what it waits for), kept for the status.
    reason: String,
    last: Option<Transition>,
}

fn ms_between(from: u64, to: u64) -> Duration {
    Duration::from_millis(to.saturating_sub(from))
}

impl Ramp {
    /// A ramp starting now, at its baseline.
    pub fn start(cfg: RampConfig, now_ms: u64) -> (Self, Transition) {
        let mut r = Self {
            cfg,
            state: State::Off,
            step: 0,
            since_ms: now_ms,
            baseline_p99: None,
            reason: String::new(),
            last: None,
        };
        let t = r.go(State::Baseline, Reason::Start, 0, "measuring the primary's latency first".into(), now_ms);
        (r, t)
    }

    /// A ramp taken up from its saved state, when it ran with the same steps.
    pub fn restore(cfg: RampConfig, saved: Saved, now_ms: u64) -> Option<(Self, Transition)> {
        if saved.steps_ppm != cfg.steps_ppm || saved.step >= cfg.steps_ppm.len() {
            return None;
        }
        let mut r = Self {
            cfg,
            state: saved.state,
            step: saved.step,
            since_ms: saved.since_unix_ms.min(now_ms),
            baseline_p99: saved.baseline_p99_ns.map(Duration::from_nanos),
            reason: saved.last.as_ref().map(|t| t.detail.clone()).unwrap_or_default(),
            last: saved.last,
        };
        // A guarded step needs its baseline; without it, measure it again.
        if r.state.guarded() && r.baseline_p99.is_none() {
            let t = r.go(State::Baseline, Reason::Restore, 0, "no saved baseline: measuring it again".into(), now_ms);
            return Some((r, t));
        }
        // Holding is recomputed from the window; advancing is where it resumes.
        if r.state == State::Holding {
            r.state = State::Advancing;
        }
        let detail =
            format!("taken up from the saved state: {} at step {} of {}", r.state, r.step + 1, r.cfg.steps_ppm.len());
        let t = Transition {
            from: r.state,
            to: r.state,
            reason: Reason::Restore,
            step: r.step,
            detail,
            at_unix_ms: now_ms,
        };
        r.last = Some(t.clone());
        Some((r, t))
    }

    pub fn state(&self) -> State {
        self.state
    }

    pub fn step(&self) -> usize {
        self.step
    }

    /// The rate the ramp sets now, in ppm: the baseline captures at the last step's rate (no
    /// request is replayed), a tripped or stopped ramp at 0.
    pub fn rate_ppm(&self) -> u32 {
        match self.state {
            State::Off | State::Tripped => 0,
            State::Baseline | State::Done => self.cfg.last_ppm(),
            State::Advancing | State::Holding | State::Paused => {
                self.cfg.steps_ppm.get(self.step).copied().unwrap_or(0)
            }
        }
    }

    /// How the rule's window counts now (`None`: it does not).
    pub fn window_mode(&self) -> Option<WindowMode> {
        let floor = self.cfg.latency_floor;
        let mode = |baseline| WindowMode {
            baseline,
            latency_ratio: self.cfg.latency_ratio,
            latency_floor: floor,
            harm_threshold: self.baseline_p99.map(|p| p.mul_f64(self.cfg.harm_ratio) + floor),
        };
        match self.state {
            State::Off | State::Tripped => None,
            State::Baseline => Some(mode(true)),
            _ => Some(mode(false)),
        }
    }

    pub fn saved(&self) -> Saved {
        Saved {
            steps_ppm: self.cfg.steps_ppm.clone(),
            state: self.state,
            step: self.step,
            since_unix_ms: self.since_ms,
            baseline_p99_ns: self.baseline_p99.map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)),
            last: self.last.clone(),
        }
    }

    fn go(&mut self, to: State, reason: Reason, step: usize, detail: String, now_ms: u64) -> Transition {
        let t = Transition { from: self.state, to, reason, step, detail: detail.clone(), at_unix_ms: now_ms };
        // A new step or phase starts its clock (and its window, emptied by the caller); holding,
        // clearing and pausing stay in the step.
        if Self::starts_window(&t) {
            self.since_ms = now_ms;
        }
        self.state = to;
        self.step = step;
        self.reason = detail;
        self.last = Some(t.clone());
        t
    }

    /// Whether a transition starts a new step or phase, whose window must be emptied: each is
    /// judged on its own outcomes. Holding, clearing, pausing and resuming a pause stay in it.
    pub fn starts_window(t: &Transition) -> bool {
        let stays = matches!(t.reason, Reason::Hold | Reason::Clear | Reason::Pause)
            || t.reason == Reason::Resume && t.from == State::Paused;
        !stays
    }

    /// Each guard's figures on window `w`.
    pub fn guards(&self, w: &WindowCounts) -> Vec<GuardStatus> {
        let bar = self.cfg.bar();
        Guard::ALL
            .iter()
            .map(|&g| {
                let t = g.tally(w);
                GuardStatus {
                    guard: g,
                    n: t.n,
                    against: t.up,
                    reverse: t.down,
                    evidence: evidence::wealth(t, g.tolerance(&self.cfg)),
                    trips_at: bar.exp(),
                }
            })
            .collect()
    }

    /// Judge the window at `now_ms`: at most one transition. `baseline`: what the baseline has
    /// measured so far (while in it).
    pub fn judge(&mut self, w: &WindowCounts, baseline: Option<BaselineSeen>, now_ms: u64) -> Option<Transition> {
        let elapsed = ms_between(self.since_ms, now_ms);
        match self.state {
            State::Off | State::Tripped => None,
            State::Baseline => {
                let seen = baseline.unwrap_or(BaselineSeen { responses: 0, p99_upper: Duration::ZERO });
                if elapsed >= self.cfg.baseline && seen.responses >= self.cfg.baseline_responses {
                    self.baseline_p99 = Some(seen.p99_upper);
                    let detail = format!(
                        "baseline: the primary's p99 is at most {:.2} ms ({} responses); step 1 at {}%",
                        seen.p99_upper.as_secs_f64() * 1e3,
                        seen.responses,
                        ppm_percent(self.cfg.steps_ppm[0])
                    );
                    return Some(self.go(State::Advancing, Reason::Baseline, 0, detail, now_ms));
                }
                self.reason = format!(
                    "measuring the primary's latency: {}/{} responses, {:.0}/{} s",
                    seen.responses,
                    self.cfg.baseline_responses,
                    elapsed.as_secs_f64(),
                    self.cfg.baseline.as_secs()
                );
                None
            }
            State::Advancing | State::Holding | State::Paused | State::Done => self.judge_step(w, elapsed, now_ms),
        }
    }

    fn judge_step(&mut self, w: &WindowCounts, elapsed: Duration, now_ms: u64) -> Option<Transition> {
        let bar = self.cfg.bar();
        let mut leaning = None;
        for g in Guard::ALL {
            let t = g.tally(w);
            let lw = log_wealth(t, g.tolerance(&self.cfg));
            if lw >= bar && t.n >= TRIP_MIN {
                let (against, reverse) = g.what();
                let reverse = reverse.map(|r| format!(" ({} {r})", t.down)).unwrap_or_default();
                let detail = format!(
                    "{} tripped at step {} ({}%): {} of {} {against}{reverse}, an excess of {:.1}% against a tolerance of {:.1}%; evidence {:.0} (trips at {:.0})",
                    g.as_str(),
                    self.step + 1,
                    ppm_percent(self.rate_ppm()),
                    t.up,
                    t.n,
                    t.mean() * 100.0,
                    g.tolerance(&self.cfg) * 100.0,
                    lw.exp(),
                    bar.exp()
                );
                let step = self.step;
                return Some(self.go(State::Tripped, Reason::Trip(g), step, detail, now_ms));
            }
            // Half way to the bar (in logs): evidence building; do not advance on it.
            if lw >= bar / 2.0 && leaning.is_none() {
                leaning = Some((g, lw.exp()));
            }
        }
        let pairs = w.errors.n;
        let blocker = if elapsed < self.cfg.step {
            None
        } else if pairs < self.cfg.min_pairs {
            Some(format!(
                "{pairs}/{} pairs at step {} after {:.0} s",
                self.cfg.min_pairs,
                self.step + 1,
                elapsed.as_secs_f64()
            ))
        } else {
            leaning.map(|(g, e)| {
                format!("{} guard leans toward harm (evidence {e:.1}, trips at {:.0})", g.as_str(), bar.exp())
            })
        };
        let step = self.step;
        match (self.state, blocker) {
            (State::Paused | State::Done, _) => {
                self.reason = if self.state == State::Paused {
                    format!("paused by an operator at step {} ({pairs} pairs)", step + 1)
                } else {
                    format!("held at the last step ({pairs} pairs, guards watching)")
                };
                None
            }
            (State::Advancing, Some(why)) => Some(self.go(State::Holding, Reason::Hold, step, why, now_ms)),
            (_, Some(why)) => {
                self.reason = why;
                None
            }
            (_, None) if elapsed >= self.cfg.step => {
                let detail = format!(
                    "step {} ({}%) passed: {pairs} pairs in {:.0} s, no guard found harm",
                    step + 1,
                    ppm_percent(self.rate_ppm()),
                    elapsed.as_secs_f64()
                );
                if step + 1 >= self.cfg.steps_ppm.len() {
                    Some(self.go(State::Done, Reason::Step, step, detail, now_ms))
                } else {
                    Some(self.go(State::Advancing, Reason::Step, step + 1, detail, now_ms))
                }
            }
            (State::Holding, None) => {
                Some(self.go(State::Advancing, Reason::Clear, step, "what held the step cleared".into(), now_ms))
            }
            (_, None) => {
                self.reason = format!(
                    "step {} of {}: {pairs}/{} pairs, {:.0}/{} s",
                    step + 1,
                    self.cfg.steps_ppm.len(),
                    self.cfg.min_pairs,
                    elapsed.as_secs_f64(),
                    self.cfg.step.as_secs()
                );
                None
            }
        }
    }

    /// An operator's command; `Err`: refused, with why.
    pub fn act(&mut self, action: RampAction, now_ms: u64) -> Result<Transition, String> {
        let step = self.step;
        match (action, self.state) {
            (RampAction::Start, State::Off | State::Tripped | State::Done) => {
                self.baseline_p99 = None;
                Ok(self.go(
                    State::Baseline,
                    Reason::Start,
                    0,
                    "started by an operator: measuring the baseline first".into(),
                    now_ms,
                ))
            }
            (RampAction::Start, s) => Err(format!("the ramp is already running ({s}): abort it first to start anew")),
            (RampAction::Pause, State::Advancing | State::Holding) => Ok(self.go(
                State::Paused,
                Reason::Pause,
                step,
                format!("paused by an operator at step {}", step + 1),
                now_ms,
            )),
            (RampAction::Pause, s) => Err(format!("only a ramp at a step can be paused (this one is {s})")),
            (RampAction::Resume, State::Paused) => {
                // Pausing holds the step without stopping its clock: a resumed step whose time
                // and pairs are met advances at the next judgement.
                self.state = State::Advancing;
                let t = Transition {
                    from: State::Paused,
                    to: State::Advancing,
                    reason: Reason::Resume,
                    step,
                    detail: format!("resumed by an operator at step {}", step + 1),
                    at_unix_ms: now_ms,
                };
                self.reason.clone_from(&t.detail);
                self.last = Some(t.clone());
                Ok(t)
            }
            (RampAction::Resume, State::Tripped) => {
                let (to, detail) = if self.baseline_p99.is_some() {
                    (
                        State::Advancing,
                        format!(
                            "resumed by an operator after a trip: step 1 at {}%",
                            ppm_percent(self.cfg.steps_ppm[0])
                        ),
                    )
                } else {
                    (State::Baseline, "resumed by an operator after a trip: measuring the baseline".to_string())
                };
                Ok(self.go(to, Reason::Resume, 0, detail, now_ms))
            }
            (RampAction::Resume, s) => Err(format!("only a paused or tripped ramp can be resumed (this one is {s})")),
            (RampAction::Abort, State::Off) => Err("the ramp is not running".into()),
            (RampAction::Abort, _) => Ok(self.go(
                State::Off,
                Reason::Abort,
                step,
                "aborted by an operator: the rule's rate is 0 and yours to set".into(),
                now_ms,
            )),
        }
    }

    /// The status for operators, on window `w`.
    pub fn status(&self, rule: &str, w: &WindowCounts, baseline: Option<BaselineSeen>, now_ms: u64) -> RampStatus {
        let pairs = if self.state == State::Baseline { baseline.map_or(0, |b| b.responses) } else { w.errors.n };
        RampStatus {
            rule: rule.to_string(),
            state: self.state,
            step: self.step,
            steps: self.cfg.steps_ppm.len(),
            rate_percent: ppm_percent(self.rate_ppm()),
            seconds_at_step: ms_between(self.since_ms, now_ms).as_secs_f64(),
            pairs,
            reason: self.reason.clone(),
            baseline_p99_ms: self.baseline_p99.map(|d| d.as_secs_f64() * 1e3),
            guards: if self.state.guarded() { self.guards(w) } else { Vec::new() },
            last_transition: self.last.clone(),
        }
    }
}

fn ppm_percent(ppm: u32) -> f64 {
    f64::from(ppm) / 10_000.0
}

#[cfg(test)]
mod tests;
