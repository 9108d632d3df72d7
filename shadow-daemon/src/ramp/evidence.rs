//! The ramp's sequential test: evidence against "no harm" that stays valid while it is looked at
//! after every pair.
//!
//! Each guard turns what it sees into outcomes `X` in `{-1, 0, +1}` (one per pair, request or
//! response) and tests `H0: E[X] <= tolerance`. For a fixed bet `λ` in `[0, 1/(1 + tolerance)]`
//! the wealth `Π (1 + λ (X_i - tolerance))` is a nonnegative supermartingale under `H0` (each
//! factor's expectation is at most 1 and never negative), and so is the average of several such
//! wealths with fixed weights. By Ville's inequality the chance that it ever reaches `1/α`, at any
//! of the moments it is checked, is at most `α` under `H0`: checking continuously costs nothing,
//! unlike a fixed threshold on a small sample. (Waudby-Smith & Ramdas, "Estimating means of
//! bounded random variables by betting", 2023; a mixture over a grid of bets stands in for
//! choosing one, so a small excess and a gross one are both caught, the gross one in a few pairs.)
//!
//! Because every bet is fixed, the wealth depends only on how many `+1`, `-1` and `0` were seen,
//! not on their order: a guard's state is three counters, updated without a lock on the hot path
//! and judged here, a pure function of them.

/// Bets of the mixture, as fractions of the largest allowed bet `1/(1 + tolerance)`: from bold
/// (a shadow that fails everything is caught in a handful of pairs) to cautious (a one-point
/// excess over thousands). Geometric, so each scale of effect has a bet near its best.
const BETS: [f64; 10] = [0.9, 0.6, 0.4, 0.25, 0.15, 0.1, 0.06, 0.04, 0.025, 0.015];

/// What one guard has seen in a window: outcomes `+1` (evidence of harm: the shadow failed and
/// the primary did not, the shadow was slower beyond the limit, ...), `-1` (the reverse, for the
/// guards that compare both ways) and the rest (`n` counts all three).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Tally {
    pub up: u64,
    pub down: u64,
    pub n: u64,
}

impl Tally {
    /// Outcomes that were neither `+1` nor `-1`.
    pub fn zero(&self) -> u64 {
        self.n.saturating_sub(self.up).saturating_sub(self.down)
    }

    /// The mean of the outcomes seen (0 when none were).
    pub fn mean(&self) -> f64 {
        if self.n == 0 { 0.0 } else { (self.up as f64 - self.down as f64) / self.n as f64 }
    }
}

/// `ln` of the mixture wealth of `t` against `H0: E[X] <= tolerance` (`tolerance` in `[0, 1)`).
/// 0 (wealth 1) with nothing seen; grows with evidence of harm, shrinks without it.
pub fn log_wealth(t: Tally, tolerance: f64) -> f64 {
    let tol = tolerance.clamp(0.0, 0.999);
    let top = 1.0 / (1.0 + tol);
    let (up, down, zero) = (t.up as f64, t.down as f64, t.zero() as f64);
    let logs = BETS.map(|f| {
        let l = f * top;
        // Each term is 0 when its count is: 0 * ln(0) never happens (f < 1 keeps 1 - l(1+tol) > 0).
        up * (l * (1.0 - tol)).ln_1p() + down * (-l * (1.0 + tol)).ln_1p() + zero * (-l * tol).ln_1p()
    });
    // The average of the wealths, in logs: ln(Σ e^x / k).
    let max = logs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let sum: f64 = logs.iter().map(|x| (x - max).exp()).sum();
    max + (sum / BETS.len() as f64).ln()
}

/// The wealth itself (saturating at `f64::MAX`), as reported to operators: "e = 37 of 480".
pub fn wealth(t: Tally, tolerance: f64) -> f64 {
    log_wealth(t, tolerance).exp().min(f64::MAX)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn t(up: u64, down: u64, n: u64) -> Tally {
        Tally { up, down, n }
    }

    #[test]
    fn nothing_seen_is_no_evidence() {
        assert!(log_wealth(t(0, 0, 0), 0.01).abs() < 1e-12);
        assert_eq!(t(0, 0, 0).mean(), 0.0);
        assert_eq!(t(3, 1, 10).zero(), 6);
        assert!((t(3, 1, 10).mean() - 0.2).abs() < 1e-12);
    }

    #[test]
    fn outcomes_within_the_tolerance_lose_wealth_and_harm_gains_it() {
        // All zeros with a positive tolerance: every bet loses a little.
        assert!(log_wealth(t(0, 0, 100), 0.01) < 0.0);
        // As many -1 as +1: no evidence.
        assert!(log_wealth(t(50, 50, 1000), 0.0) < 0.0);
        // Every pair harmful: the bold bet wins fast.
        let w = wealth(t(10, 0, 10), 0.01);
        assert!(w > 50.0, "{w}");
        // More harm, more evidence; more counter-evidence, less.
        assert!(log_wealth(t(11, 0, 11), 0.01) > log_wealth(t(10, 0, 10), 0.01));
        assert!(log_wealth(t(10, 1, 11), 0.01) < log_wealth(t(10, 0, 11), 0.01));
        // A larger tolerance makes the same counts weaker evidence.
        assert!(log_wealth(t(30, 0, 300), 0.05) < log_wealth(t(30, 0, 300), 0.01));
    }

    #[test]
    fn the_mixture_is_the_mean_of_its_bets() {
        // Pinned by hand for one tally: mean over the grid of (1+l(1-tol))^up (1-l(1+tol))^down (1-l tol)^zero.
        let (tally, tol) = (t(4, 1, 20), 0.05);
        let top = 1.0 / 1.05;
        let by_hand: f64 = BETS
            .iter()
            .map(|f| {
                let l = f * top;
                (1.0 + l * 0.95).powi(4) * (1.0 - l * 1.05).powi(1) * (1.0 - l * 0.05).powi(15)
            })
            .sum::<f64>()
            / BETS.len() as f64;
        assert!((wealth(tally, tol) - by_hand).abs() < 1e-9 * by_hand, "{} vs {by_hand}", wealth(tally, tol));
    }

    /// Seeded runs of a healthy side (`E[X] = 0`, under a tolerance of 1 point), checked after
    /// every outcome as the ramp does: the share that ever reaches 1/α stays below α.
    #[test]
    fn continuous_checking_of_a_healthy_side_rarely_crosses() {
        let alpha: f64 = 0.05;
        let bar = (1.0 / alpha).ln();
        let runs = 400;
        let mut crossed = 0;
        for seed in 0..runs {
            let mut rng = fastrand::Rng::with_seed(seed);
            let mut tally = Tally::default();
            // 2 % errors on each side, independently: the discordant pairs cancel on average.
            for _ in 0..3000 {
                let (a, b) = (rng.f64() < 0.02, rng.f64() < 0.02);
                tally.n += 1;
                match (a, b) {
                    (true, false) => tally.up += 1,
                    (false, true) => tally.down += 1,
                    _ => {}
                }
                if log_wealth(tally, 0.01) >= bar {
                    crossed += 1;
                    break;
                }
            }
        }
        let rate = f64::from(crossed) / runs as f64;
        assert!(rate <= alpha, "{crossed} of {runs} healthy runs crossed 1/α");
    }

    proptest! {
        /// Wealth only depends on the counts, and adding a harmful outcome never lowers it;
        /// adding a reverse one never raises it.
        #[test]
        fn monotone_in_the_evidence(up in 0u64..500, down in 0u64..500, zero in 0u64..5000, tol in 0.0f64..0.5) {
            let base = t(up, down, up + down + zero);
            let more_up = t(up + 1, down, up + down + zero + 1);
            let more_down = t(up, down + 1, up + down + zero + 1);
            let lw = log_wealth(base, tol);
            prop_assert!(lw.is_finite());
            prop_assert!(log_wealth(more_up, tol) >= lw - 1e-9);
            prop_assert!(log_wealth(more_down, tol) <= lw + 1e-9);
        }
    }
}
