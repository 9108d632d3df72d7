//! The ramp's state machine, and its judgement both ways over seeded runs: how often a healthy
//! shadow trips a whole ramp (A/A, checked after every batch of pairs as the daemon does) and
//! how many pairs a real regression takes to trip it. The runs go through the real feed (its
//! classification of pairs and responses) and the real judge.

use std::time::Duration;

use super::*;
use crate::rule::RuleId;

fn quick() -> RampConfig {
    RampConfig {
        steps_ppm: vec![10_000, 50_000, 250_000, 1_000_000],
        step: Duration::from_secs(10),
        min_pairs: 100,
        baseline: Duration::from_secs(5),
        baseline_responses: 100,
        ..RampConfig::default()
    }
}

fn tally(up: u64, down: u64, n: u64) -> Tally {
    Tally { up, down, n }
}

fn window(pairs: u64, errors_up: u64) -> WindowCounts {
    WindowCounts { errors: tally(errors_up, 0, pairs), ..WindowCounts::default() }
}

const BASE: Option<BaselineSeen> = Some(BaselineSeen { responses: 500, p99_upper: Duration::from_millis(20) });

fn at_step(cfg: RampConfig) -> Ramp {
    let (mut r, t) = Ramp::start(cfg, 0);
    assert_eq!((t.from, t.to, t.reason), (State::Off, State::Baseline, Reason::Start));
    let t = r.judge(&WindowCounts::default(), BASE, 5_000).expect("baseline done");
    assert_eq!((t.to, t.reason, t.step), (State::Advancing, Reason::Baseline, 0));
    r
}

#[test]
fn config_checks_its_steps() {
    assert!(RampConfig::default().validate().is_ok());
    for (steps, why) in [
        (vec![], "at least one step"),
        (vec![0, 10], "above 0"),
        (vec![10, 10], "increase"),
        (vec![50, 10], "increase"),
    ] {
        let c = RampConfig { steps_ppm: steps, ..RampConfig::default() };
        assert!(c.validate().expect_err("invalid").contains(why));
    }
    // Split over 4 guards and 6 steps: 24 tests at 0.05.
    assert!((RampConfig::default().bar() - (24.0f64 / 0.05).ln()).abs() < 1e-12);
}

#[test]
fn the_baseline_needs_its_time_and_its_responses() {
    let (mut r, _) = Ramp::start(quick(), 1_000);
    assert_eq!(r.rate_ppm(), 1_000_000, "the baseline captures at the last step's rate");
    assert!(r.window_mode().expect("counts").baseline, "and holds replay back");
    let few = Some(BaselineSeen { responses: 99, p99_upper: Duration::from_millis(3) });
    assert!(r.judge(&WindowCounts::default(), few, 60_000).is_none(), "too few responses");
    assert!(r.status("api", &WindowCounts::default(), few, 60_000).reason.contains("99/100 responses"));
    assert!(r.judge(&WindowCounts::default(), BASE, 5_999).is_none(), "too early");
    let t = r.judge(&WindowCounts::default(), BASE, 6_000).expect("measured");
    assert_eq!((t.to, t.step), (State::Advancing, 0));
    assert_eq!(r.rate_ppm(), 10_000);
    let m = r.window_mode().expect("counts");
    assert!(!m.baseline);
    // 20 ms * 1.2 + 5 ms floor.
    assert_eq!(m.harm_threshold, Some(Duration::from_millis(29)));
}

#[test]
fn steps_advance_on_time_and_pairs_and_the_last_is_held() {
    let mut r = at_step(quick());
    assert!(r.judge(&window(500, 0), None, 14_999).is_none(), "time not up");
    assert_eq!(r.state(), State::Advancing);
    let t = r.judge(&window(99, 0), None, 15_000).expect("holds for pairs");
    assert_eq!((t.to, t.reason), (State::Holding, Reason::Hold));
    assert!(t.detail.contains("99/100 pairs at step 1"), "{}", t.detail);
    assert!(r.judge(&window(99, 0), None, 20_000).is_none(), "still holding, not logged again");
    let t = r.judge(&window(100, 0), None, 20_001).expect("advances");
    assert_eq!((t.from, t.to, t.reason, t.step), (State::Holding, State::Advancing, Reason::Step, 1));
    assert!(Ramp::starts_window(&t));
    assert_eq!(r.rate_ppm(), 50_000);
    assert_eq!(r.status("api", &window(0, 0), None, 20_001).rate_percent, 5.0);
    // The new step's clock starts at the transition.
    assert!(r.judge(&window(100, 0), None, 30_000).is_none());
    assert!(r.judge(&window(100, 0), None, 30_001).is_some());
    assert!(r.judge(&window(100, 0), None, 40_001).is_some());
    assert_eq!((r.step(), r.rate_ppm()), (3, 1_000_000));
    let t = r.judge(&window(100, 0), None, 50_001).expect("done");
    assert_eq!((t.to, t.step), (State::Done, 3));
    assert_eq!(r.rate_ppm(), 1_000_000, "the last step is held");
    assert!(r.judge(&window(100_000, 0), None, 900_000).is_none(), "done stays done");
    assert_eq!(
        r.status("api", &window(100_000, 0), None, 900_000).reason,
        "held at the last step (100000 pairs, guards watching)"
    );
}

#[test]
fn a_guard_leaning_toward_harm_holds_the_step() {
    let mut r = at_step(quick());
    // 10 shadow-only failures in 120 pairs: evidence, not yet enough to trip.
    let w = window(120, 10);
    let lw = log_wealth(w.errors, 0.01);
    assert!(lw >= r.cfg.bar() / 2.0 && lw < r.cfg.bar(), "{lw} vs {}", r.cfg.bar());
    let t = r.judge(&w, None, 20_000).expect("holds");
    assert_eq!(t.to, State::Holding);
    assert!(t.detail.contains("errors guard leans toward harm"), "{}", t.detail);
    // Less evidence (8 of 120: a third of the way in logs) does not hold a step.
    let mut other = at_step(quick());
    let w8 = window(120, 8);
    assert!(log_wealth(w8.errors, 0.01) < other.cfg.bar() / 2.0);
    let t = other.judge(&w8, None, 20_000).expect("advances");
    assert_eq!((t.reason, t.step), (Reason::Step, 1));
    // More clean pairs dilute it: the hold clears and the step advances.
    let t = r.judge(&window(2000, 10), None, 21_000).expect("advances");
    assert_eq!((t.reason, t.step), (Reason::Step, 1));
}

#[test]
fn a_guard_trips_only_with_enough_outcomes_and_says_why_in_one_line() {
    let mut r = at_step(quick());
    // 19 failures of 19: overwhelming, but under TRIP_MIN outcomes.
    assert!(r.judge(&window(19, 19), None, 1_000).is_none());
    let t = r.judge(&window(20, 20), None, 1_100).expect("trips");
    assert_eq!((t.from, t.to, t.reason), (State::Advancing, State::Tripped, Reason::Trip(Guard::Errors)));
    assert!(!t.detail.contains('\n'));
    assert!(
        t.detail.starts_with(
            "errors tripped at step 1 (1%): 20 of 20 pairs failed by the shadow alone (0 by the primary alone), an excess of 100.0% against a tolerance of 1.0%"
        ),
        "{}",
        t.detail
    );
    assert_eq!(r.rate_ppm(), 0, "a tripped ramp mirrors nothing");
    assert!(r.window_mode().is_none());
    assert!(r.judge(&window(0, 0), None, 99_000_000).is_none(), "tripped stays tripped");
    let e = r.act(RampAction::Pause, 2_000).expect_err("not at a step");
    assert!(e.contains("tripped"), "{e}");
    // Resume starts again from the first step, keeping the baseline.
    let t = r.act(RampAction::Resume, 3_000).expect("resume");
    assert_eq!((t.to, t.step), (State::Advancing, 0));
    assert!(Ramp::starts_window(&t), "a resumed trip starts from an empty window");
    assert_eq!(r.rate_ppm(), 10_000);
}

#[test]
fn every_guard_trips_on_its_own_evidence() {
    for g in Guard::ALL {
        let mut r = at_step(quick());
        let mut w = WindowCounts { errors: tally(0, 0, 1000), ..WindowCounts::default() };
        let bad = tally(300, 0, 1000);
        match g {
            Guard::Errors => w.errors = bad,
            Guard::Latency => w.latency = bad,
            Guard::Harm => w.harm = bad,
            Guard::Shedding => w.shedding = bad,
        }
        let t = r.judge(&w, None, 1_000).expect("trips");
        assert_eq!(t.reason, Reason::Trip(g));
        assert!(t.detail.starts_with(&format!("{} tripped", g.as_str())), "{}", t.detail);
        let s = r.status("api", &w, None, 2_000);
        assert!(s.guards.is_empty(), "a tripped ramp judges nothing");
    }
}

#[test]
fn operators_pause_resume_abort_and_start() {
    let mut r = at_step(quick());
    let t = r.act(RampAction::Pause, 10_000).expect("pause");
    assert_eq!((t.to, Ramp::starts_window(&t)), (State::Paused, false));
    assert!(r.judge(&window(5000, 0), None, 60_000).is_none(), "a paused ramp does not advance");
    assert_eq!(r.status("api", &window(5000, 0), None, 60_000).reason, "paused by an operator at step 1 (5000 pairs)");
    assert_eq!(r.rate_ppm(), 10_000, "and keeps its step's rate");
    // The guards still watch while paused.
    let t = r.judge(&window(100, 100), None, 61_000).expect("trips while paused");
    assert_eq!((t.from, t.to), (State::Paused, State::Tripped));
    assert!(Ramp::starts_window(&t));
    let mut r = at_step(quick());
    r.act(RampAction::Pause, 1_000).expect("pause");
    let t = r.act(RampAction::Resume, 20_000).expect("resume");
    assert_eq!((t.from, t.to, Ramp::starts_window(&t)), (State::Paused, State::Advancing, false));
    assert!(r.judge(&window(200, 0), None, 20_001).is_some(), "the paused time counted");
    assert!(r.act(RampAction::Start, 0).expect_err("running").contains("already running"));
    assert!(State::ALL.iter().filter(|s| s.owns_rate()).count() == 6, "every state but off owns the rate");
    assert!(r.state().owns_rate());
    let t = r.act(RampAction::Abort, 30_000).expect("abort");
    assert_eq!((t.to, r.rate_ppm()), (State::Off, 0));
    assert!(!r.state().owns_rate());
    assert!(r.act(RampAction::Abort, 30_000).is_err());
    let t = r.act(RampAction::Start, 40_000).expect("start");
    assert_eq!(t.to, State::Baseline);
}

#[test]
fn saved_state_resumes_the_same_step_and_a_trip_stays() {
    let mut r = at_step(quick());
    r.judge(&window(100, 0), None, 15_000).expect("step 2");
    let saved = r.saved();
    assert_eq!((saved.state, saved.step, saved.since_unix_ms), (State::Advancing, 1, 15_000));
    let (back, t) = Ramp::restore(quick(), saved.clone(), 20_000).expect("restored");
    assert_eq!((back.state(), back.step(), back.rate_ppm()), (State::Advancing, 1, 50_000));
    assert_eq!(t.reason, Reason::Restore);
    assert_eq!(back.window_mode().expect("counts").harm_threshold, Some(Duration::from_millis(29)));
    // Its time at the step goes on from the saved start.
    assert_eq!(back.status("api", &WindowCounts::default(), None, 20_000).seconds_at_step, 5.0);
    // Other steps in the config: not taken up.
    let other = RampConfig { steps_ppm: vec![10_000, 20_000], ..quick() };
    assert!(Ramp::restore(other, saved.clone(), 20_000).is_none());
    // A trip survives.
    r.judge(&window(50, 50), None, 16_000).expect("trip");
    let (back, _) = Ramp::restore(quick(), r.saved(), 30_000).expect("restored");
    assert_eq!((back.state(), back.rate_ppm()), (State::Tripped, 0));
    // A guarded state without its baseline measures it again.
    let lost = Saved { baseline_p99_ns: None, ..saved };
    let (back, t) = Ramp::restore(quick(), lost, 30_000).expect("restored");
    assert_eq!((back.state(), t.to), (State::Baseline, State::Baseline));
}

#[test]
fn the_status_names_the_step_the_rate_and_each_guard() {
    let r = at_step(quick());
    let w = WindowCounts { errors: tally(2, 1, 40), latency: tally(3, 2, 39), ..WindowCounts::default() };
    let s = r.status("api", &w, None, 8_000);
    assert_eq!((s.rule.as_str(), s.state, s.step, s.steps, s.pairs), ("api", State::Advancing, 0, 4, 40));
    assert_eq!(s.rate_percent, 1.0);
    assert_eq!(s.baseline_p99_ms, Some(20.0));
    assert_eq!(s.guards.len(), 4);
    assert_eq!(
        (s.guards[1].guard, s.guards[1].against, s.guards[1].reverse, s.guards[1].n),
        (Guard::Latency, 3, 2, 39)
    );
    let json = serde_json::to_value(&s).expect("json");
    assert_eq!(json["state"], "advancing");
    assert_eq!(json["rate_percent"], 1.0);
}

// The judgement over seeded runs.

/// A side's latency: log-normal around `median_ms` with spread `sigma`.
fn latency(rng: &mut fastrand::Rng, median_ms: f64, sigma: f64) -> Duration {
    // Box-Muller.
    let (u1, u2) = (rng.f64().max(1e-12), rng.f64());
    let z = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
    Duration::from_secs_f64(median_ms * 1e-3 * (sigma * z).exp())
}

/// How the simulated shadow behaves from the pair `from` on.
#[derive(Clone, Copy)]
struct Shadow {
    error_rate: f64,
    slowdown: f64,
    /// How much slower the primary gets (a shadow doing harm).
    harm: f64,
    from: u64,
}

const HEALTHY: Shadow = Shadow { error_rate: 0.02, slowdown: 1.0, harm: 1.0, from: 0 };

/// One whole ramp, judged every 10 pairs: `Some(pairs from the regression's start to the trip)`
/// when it tripped, with the guard.
fn run(seed: u64, cfg: &RampConfig, bad: Shadow) -> Option<(Guard, u64)> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let feed = RampFeed::default();
    let rule = RuleId::new(0);
    let (mut ramp, _) = Ramp::start(cfg.clone(), 0);
    feed.set(rule, ramp.window_mode());
    let (mut now, mut pairs) = (0u64, 0u64);
    // 20 pairs a second at every step; as many primary responses.
    for i in 0..200_000u64 {
        now += 50;
        let s = if pairs >= bad.from { bad } else { HEALTHY };
        let primary = latency(&mut rng, 20.0 * s.harm, 0.3);
        feed.primary(rule, primary);
        if !feed.held_back(rule) {
            let (pf, sf) = (rng.f64() < HEALTHY.error_rate, rng.f64() < s.error_rate);
            let shadow = latency(&mut rng, 20.0 * s.harm * s.slowdown, 0.3);
            feed.pair(
                rule,
                PairSeen { primary_failed: pf, shadow_failed: sf, latencies: (!sf).then_some((primary, shadow)) },
            );
            feed.offered(rule, false);
            pairs += 1;
        }
        if i % 10 != 9 {
            continue;
        }
        let w = feed.read(rule);
        if let Some(t) = ramp.judge(&w, feed.baseline(rule), now) {
            if std::env::var_os("RAMP_DEBUG").is_some() {
                eprintln!("{t:?} {w:?} {:?}", ramp.window_mode());
            }
            if let Reason::Trip(g) = t.reason {
                return Some((g, pairs.saturating_sub(bad.from)));
            }
            if Ramp::starts_window(&t) {
                feed.set(rule, ramp.window_mode());
            }
        }
        if ramp.state() == State::Done {
            return None;
        }
    }
    panic!("seed {seed}: the ramp neither finished nor tripped");
}

fn sim_cfg() -> RampConfig {
    RampConfig {
        steps_ppm: vec![10_000, 50_000, 100_000, 250_000, 500_000, 1_000_000],
        step: Duration::from_secs(30),
        min_pairs: 200,
        baseline: Duration::from_secs(30),
        ..RampConfig::default()
    }
}

#[test]
fn a_healthy_shadow_rarely_trips_a_whole_ramp() {
    let cfg = sim_cfg();
    let runs = 200;
    let trips: Vec<(Guard, u64)> = (0..runs).filter_map(|seed| run(seed, &cfg, HEALTHY)).collect();
    let rate = trips.len() as f64 / runs as f64;
    eprintln!("A/A: {} of {runs} healthy ramps tripped ({:.1} %): {trips:?}", trips.len(), rate * 100.0);
    assert!(rate <= cfg.alpha, "{rate} > alpha {}", cfg.alpha);
}

/// Pairs from the regression's start to the trip, over seeded runs: each must trip, within a
/// bound; the figures are printed for the docs.
fn detect(name: &str, bad: Shadow, guard: Guard, bound: u64) {
    let cfg = sim_cfg();
    let mut pairs: Vec<u64> = (100..140)
        .map(|seed| {
            let (g, n) = run(seed, &cfg, bad).unwrap_or_else(|| panic!("{name}: seed {seed} never tripped"));
            assert_eq!(g, guard, "{name}: seed {seed}");
            n
        })
        .collect();
    pairs.sort_unstable();
    let (median, worst) = (pairs[pairs.len() / 2], pairs[pairs.len() - 1]);
    eprintln!("{name}: tripped by {} in all 40 runs; pairs to trip median {median}, max {worst}", guard.as_str());
    assert!(worst <= bound, "{name}: {worst} pairs > {bound}");
}

#[test]
fn a_shadow_that_fails_everything_trips_in_a_few_dozen_pairs() {
    detect("all 5xx", Shadow { error_rate: 1.0, from: 400, ..HEALTHY }, Guard::Errors, 60);
}

#[test]
fn a_five_point_error_excess_trips_within_a_bound() {
    detect("+5 points of errors", Shadow { error_rate: 0.07, from: 400, ..HEALTHY }, Guard::Errors, 4000);
}

#[test]
fn a_slower_shadow_trips_the_latency_guard() {
    detect("1.5x slower", Shadow { slowdown: 1.5, from: 400, ..HEALTHY }, Guard::Latency, 300);
}

#[test]
fn a_shadow_that_slows_production_trips_the_harm_guard() {
    detect("primary 2x slower", Shadow { harm: 2.0, from: 400, ..HEALTHY }, Guard::Harm, 500);
}
