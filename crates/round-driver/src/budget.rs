//! The privacy budget of a run: the noise that fits the planned rounds, and the stop rule that
//! refuses a round whose release would take the ledger past the budget.

use privacy_accounting::calibration::{
    calibrate_sigma, epsilon_for, max_rounds, DEFAULT_SIGMA_TOLERANCE,
};
use privacy_accounting::{AccountantKind, Ledger, LedgerEvent, Sampling};
use serde::Serialize;

use runs::config::PrivacySection;
use runs::{Result, RunError};

/// The noise multiplier of a run and what it buys.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NoisePlan {
    /// σ: noise std divided by the clip bound.
    pub sigma: f64,
    /// True when σ was calibrated from ε; false when `privacy.noise_multiplier` was given.
    pub calibrated: bool,
    /// ε after the planned rounds at σ under `accountant` (may exceed the budget only when σ was
    /// given; the stop rule then ends the run early).
    pub planned_epsilon: f64,
    /// The planned rounds, `privacy.rounds`.
    pub planned_rounds: u64,
    /// How many rounds the budget affords at σ.
    pub affordable_rounds: u64,
    /// The accountant of the stop rule.
    pub accountant: AccountantKind,
    /// The sampling every round is accounted with.
    pub sampling: Sampling,
}

/// σ for the run: calibrated so that `privacy.rounds` rounds of `sampling` (what
/// [`dp_mechanics::ClientSampler::accounting`] reports) meet `privacy.epsilon` at
/// `privacy.delta` under `privacy.accountant`, or the configured σ after checking that at least
/// one round fits the budget.
pub fn plan_noise(privacy: &PrivacySection, sampling: Sampling) -> Result<NoisePlan> {
    let kind = privacy.accountant;
    let (epsilon, delta, rounds) = (privacy.epsilon, privacy.delta, privacy.rounds);
    // Every scheme is accounted as a Poisson-subsampled Gaussian at some rate whose noise
    // multiplier is σ times a fixed factor (½ for fixed cohorts): calibrate that mechanism.
    let unit = sampling.bound(1.0)?;
    let (sigma, calibrated) = match privacy.noise_multiplier {
        Some(sigma) => (sigma, false),
        None => {
            let calibration = calibrate_sigma(
                kind,
                epsilon,
                unit.q,
                rounds,
                delta,
                DEFAULT_SIGMA_TOLERANCE,
            )?;
            (calibration.sigma / unit.sigma, true)
        }
    };
    let mechanism = sampling.bound(sigma)?;
    let one_round = epsilon_for(kind, mechanism, 1, delta)?.epsilon;
    if one_round > epsilon {
        return Err(RunError::ConfigValue {
            key: "privacy.noise_multiplier".into(),
            value: sigma.to_string(),
            fix: format!(
                "one round already spends epsilon = {one_round:.4} > privacy.epsilon = {epsilon} \
                 ({kind}); raise the noise multiplier, or remove it to calibrate sigma from \
                 epsilon"
            ),
        });
    }
    let planned_epsilon = epsilon_for(kind, mechanism, rounds, delta)?.epsilon;
    let affordable_rounds = max_rounds(kind, mechanism, epsilon, delta)?.rounds;
    Ok(NoisePlan {
        sigma,
        calibrated,
        planned_epsilon,
        planned_rounds: rounds,
        affordable_rounds,
        accountant: kind,
        sampling,
    })
}

/// The stop rule: a round runs only if its release keeps ε within the budget under the
/// configured accountant.
#[derive(Debug, Clone, PartialEq)]
pub struct BudgetGuard {
    accountant: AccountantKind,
    epsilon: f64,
    delta: f64,
}

impl BudgetGuard {
    /// The guard for `privacy.epsilon` at `privacy.delta` under `privacy.accountant`.
    pub fn new(privacy: &PrivacySection) -> Self {
        Self {
            accountant: privacy.accountant,
            epsilon: privacy.epsilon,
            delta: privacy.delta,
        }
    }

    /// True when composing `next` after everything in `ledger` would take ε above the budget.
    pub fn would_exceed(&self, ledger: &Ledger, next: &LedgerEvent) -> Result<bool> {
        let mut after = ledger.clone();
        after.push(next.clone())?;
        Ok(after.epsilon(self.accountant, self.delta)?.epsilon > self.epsilon)
    }

    /// ε spent so far at the run's δ: (RDP, PLD). Reports show both; the stop rule uses the
    /// configured accountant.
    pub fn spent(&self, ledger: &Ledger) -> Result<(f64, f64)> {
        let rdp = ledger.epsilon(AccountantKind::Rdp, self.delta)?.epsilon;
        let pld = ledger.epsilon(AccountantKind::Pld, self.delta)?.epsilon;
        Ok((rdp, pld))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn privacy(epsilon: f64, rounds: u64, sigma: Option<f64>) -> PrivacySection {
        PrivacySection {
            epsilon,
            rounds,
            noise_multiplier: sigma,
            ..PrivacySection::default()
        }
    }

    #[test]
    fn calibration_reproduces_the_paper_sigmas() {
        // POPri: q = 1, T = 20, δ = 3e-6; σ = 19.3 gives ε ≈ 0.997 and σ = 3.35 gives ε ≈ 6.96.
        let one = plan_noise(&privacy(0.997, 20, None), Sampling::Full).unwrap();
        assert!((one.sigma - 19.3).abs() < 0.05, "{one:?}");
        assert!(one.calibrated && one.planned_epsilon <= 0.997);
        assert!(one.affordable_rounds >= 20);
        let seven = plan_noise(&privacy(6.96, 20, None), Sampling::Full).unwrap();
        assert!((seven.sigma - 3.35).abs() < 0.01, "{seven:?}");
    }

    #[test]
    fn fixed_cohorts_calibrate_twice_the_bounded_sigma() {
        let sampling = Sampling::FixedCohort { m: 10, n: 100 };
        let plan = plan_noise(&privacy(2.0, 50, None), sampling).unwrap();
        let bound = sampling.bound(plan.sigma).unwrap();
        assert_eq!(bound.sigma, plan.sigma / 2.0);
        let epsilon = epsilon_for(AccountantKind::Rdp, bound, 50, 3e-6)
            .unwrap()
            .epsilon;
        assert_eq!(epsilon, plan.planned_epsilon);
        assert!(epsilon <= 2.0);
        // Poisson at the same rate needs about half the noise.
        let poisson = plan_noise(&privacy(2.0, 50, None), Sampling::Poisson { q: 0.1 }).unwrap();
        assert!(
            (plan.sigma / poisson.sigma - 2.0).abs() < 1e-3,
            "{plan:?} {poisson:?}"
        );
    }

    #[test]
    fn a_given_sigma_must_fit_one_round() {
        let plan = plan_noise(&privacy(1.0, 20, Some(10.0)), Sampling::Full).unwrap();
        assert!(!plan.calibrated && plan.sigma == 10.0);
        // σ = 10 affords fewer than 20 rounds at ε = 1: the run will stop early.
        assert!(
            plan.affordable_rounds < 20 && plan.planned_epsilon > 1.0,
            "{plan:?}"
        );
        let error = plan_noise(&privacy(1.0, 20, Some(0.5)), Sampling::Full).unwrap_err();
        let message = error.to_string();
        assert!(message.contains("privacy.noise_multiplier"), "{message}");
    }

    #[test]
    fn the_guard_stops_at_the_last_affordable_round() {
        let section = privacy(1.0, 20, Some(10.0));
        let plan = plan_noise(&section, Sampling::Full).unwrap();
        let guard = BudgetGuard::new(&section);
        let mut ledger = Ledger::new();
        let event = |round| LedgerEvent::gaussian(10.0, Sampling::Full, 1).with_round(round);
        let mut rounds = 0;
        while !guard.would_exceed(&ledger, &event(rounds)).unwrap() {
            ledger.push(event(rounds)).unwrap();
            rounds += 1;
        }
        assert_eq!(rounds, plan.affordable_rounds);
        let (rdp, pld) = guard.spent(&ledger).unwrap();
        assert!(rdp <= 1.0 && pld <= rdp + 1e-9, "{rdp} {pld}");
        assert_eq!(guard.spent(&Ledger::new()).unwrap(), (0.0, 0.0));
    }
}
