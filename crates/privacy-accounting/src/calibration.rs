//! Calibration: ε for a number of steps, the noise σ that meets a target ε, and the number of
//! rounds a budget allows — for either accountant, through the [`Accountant`] trait.

use serde::Serialize;

use crate::error::{
    check_delta, check_epsilon, check_noise_multiplier, check_sampling_rate, require,
};
use crate::rdp::{rdp_to_epsilon, RdpAccountant};
use crate::{
    Accountant, AccountantKind, AccountingError, EpsilonEstimate, PoissonGaussian, Result,
};

/// Tolerance used by default: relative width of the final σ bracket.
pub const DEFAULT_SIGMA_TOLERANCE: f64 = 1e-4;
/// [`max_rounds`] stops searching here and reports `capped = true`.
pub const MAX_ROUNDS_CAP: u64 = 1_000_000_000_000;
/// Largest σ [`calibrate_sigma`] tries before declaring the target unreachable.
pub const SIGMA_SEARCH_MAX: f64 = 1e7;
/// Smallest σ [`calibrate_sigma`] tries; if even this little noise meets the target, it is
/// returned (any larger σ does too).
pub const SIGMA_SEARCH_MIN: f64 = 1e-3;

/// ε after `steps` releases of `mechanism` under the accountant `kind`, at `delta`.
pub fn epsilon_for(
    kind: AccountantKind,
    mechanism: PoissonGaussian,
    steps: u64,
    delta: f64,
) -> Result<EpsilonEstimate> {
    check_delta(delta)?;
    let mut accountant = kind.accountant();
    accountant.compose(mechanism, steps)?;
    accountant.epsilon(delta)
}

/// The result of [`calibrate_sigma`].
#[derive(Debug, Clone, Serialize)]
pub struct SigmaCalibration {
    /// The calibrated noise multiplier: the upper end of the final bracket, so `epsilon` ≤
    /// `target_epsilon` always holds, and σ·(1 − `tolerance`) would exceed the target.
    pub sigma: f64,
    /// ε actually achieved with `sigma`.
    pub epsilon: f64,
    /// The ε asked for.
    pub target_epsilon: f64,
    /// δ.
    pub delta: f64,
    /// Poisson sampling rate.
    pub q: f64,
    /// Number of releases.
    pub steps: u64,
    /// The accountant that certified `epsilon`.
    pub accountant: AccountantKind,
    /// Relative width of the final σ bracket.
    pub tolerance: f64,
}

/// The smallest noise multiplier σ (to relative `tolerance`) for which `steps` releases of the
/// Poisson-subsampled Gaussian at rate `q` satisfy ε ≤ `target_epsilon` at `delta`.
///
/// ε is non-increasing in σ, so σ is bracketed by doubling (or halving) from σ = 1 and then
/// bisected geometrically until the bracket's relative width is at most `tolerance`. The upper
/// end of the bracket is returned: the achieved ε is always ≤ the target, never above it.
///
/// Fails with [`AccountingError::Unreachable`] when the target is ≤ 0 or lies below what the
/// accountant can certify with any noise (RDP over a finite order grid has an ε floor > 0 as
/// σ → ∞).
pub fn calibrate_sigma(
    kind: AccountantKind,
    target_epsilon: f64,
    q: f64,
    steps: u64,
    delta: f64,
    tolerance: f64,
) -> Result<SigmaCalibration> {
    check_target(target_epsilon)?;
    check_sampling_rate(q)?;
    check_delta(delta)?;
    check_steps(steps)?;
    check_tolerance(tolerance)?;
    let epsilon_at = |sigma: f64| -> Result<f64> {
        Ok(epsilon_for(kind, PoissonGaussian { q, sigma }, steps, delta)?.epsilon)
    };
    let meets = |epsilon: f64| epsilon <= target_epsilon;

    // Bracket: `high` meets the target, `low` does not.
    let (mut low, mut high, mut high_epsilon) = {
        let start = 1.0;
        let start_epsilon = epsilon_at(start)?;
        if meets(start_epsilon) {
            let mut high = (start, start_epsilon);
            loop {
                let low = 0.5 * high.0;
                if low < SIGMA_SEARCH_MIN {
                    return Ok(calibration(
                        kind,
                        target_epsilon,
                        q,
                        steps,
                        delta,
                        tolerance,
                        high,
                    ));
                }
                let low_epsilon = epsilon_at(low)?;
                if !meets(low_epsilon) {
                    break (low, high.0, high.1);
                }
                high = (low, low_epsilon);
            }
        } else {
            let mut low = start;
            loop {
                let high = 2.0 * low;
                if high > SIGMA_SEARCH_MAX {
                    return Err(unreachable_target(kind, target_epsilon, steps, delta, q));
                }
                let high_epsilon = epsilon_at(high)?;
                if meets(high_epsilon) {
                    break (low, high, high_epsilon);
                }
                low = high;
            }
        }
    };

    while high - low > tolerance * high {
        let mid = (low * high).sqrt();
        let mid_epsilon = epsilon_at(mid)?;
        if meets(mid_epsilon) {
            high = mid;
            high_epsilon = mid_epsilon;
        } else {
            low = mid;
        }
    }
    Ok(calibration(
        kind,
        target_epsilon,
        q,
        steps,
        delta,
        tolerance,
        (high, high_epsilon),
    ))
}

fn calibration(
    accountant: AccountantKind,
    target_epsilon: f64,
    q: f64,
    steps: u64,
    delta: f64,
    tolerance: f64,
    (sigma, epsilon): (f64, f64),
) -> SigmaCalibration {
    SigmaCalibration {
        sigma,
        epsilon,
        target_epsilon,
        delta,
        q,
        steps,
        accountant,
        tolerance,
    }
}

/// Why no σ ≤ [`SIGMA_SEARCH_MAX`] meets the target, and what would.
fn unreachable_target(
    kind: AccountantKind,
    target_epsilon: f64,
    steps: u64,
    delta: f64,
    q: f64,
) -> AccountingError {
    let message = match kind {
        AccountantKind::Rdp => {
            let floor = rdp_epsilon_floor(delta);
            format!(
                "epsilon = {target_epsilon} at delta = {delta} cannot be certified by RDP over \
                 its default orders even with sigma = {SIGMA_SEARCH_MAX:e}: its conversion to \
                 (epsilon, delta) alone costs epsilon ≈ {floor:.4}. Use --accountant pld, a \
                 larger delta or a larger target epsilon"
            )
        }
        AccountantKind::Pld => format!(
            "epsilon = {target_epsilon} at delta = {delta} is not reached for {steps} steps at \
             q = {q} even with sigma = {SIGMA_SEARCH_MAX:e}: use a larger delta or a larger \
             target epsilon"
        ),
    };
    AccountingError::Unreachable(message)
}

/// The ε the RDP conversion reports for no privacy loss at all (RDP = 0 at every default
/// order): no noise level gets RDP's ε below this.
fn rdp_epsilon_floor(delta: f64) -> f64 {
    let accountant = RdpAccountant::default();
    rdp_to_epsilon(accountant.orders(), accountant.rdp(), delta).epsilon
}

/// The result of [`max_rounds`].
#[derive(Debug, Clone, Serialize)]
pub struct RoundsBudget {
    /// The largest number of releases with ε ≤ `target_epsilon` (0 if even one exceeds it).
    pub rounds: u64,
    /// ε after `rounds` releases (0 when `rounds` is 0: nothing released).
    pub epsilon: f64,
    /// ε after `rounds` + 1 releases (above the target unless `capped`).
    pub epsilon_next: f64,
    /// True when the search stopped at [`MAX_ROUNDS_CAP`] with the target still unmet.
    pub capped: bool,
    /// The ε budget.
    pub target_epsilon: f64,
    /// δ.
    pub delta: f64,
    /// Poisson sampling rate.
    pub q: f64,
    /// Noise multiplier.
    pub sigma: f64,
    /// The accountant used.
    pub accountant: AccountantKind,
}

/// The largest number of releases of `mechanism` whose ε at `delta` stays ≤ `target_epsilon`.
///
/// ε is non-decreasing in the number of releases: an exponential search finds a bracket, a
/// binary search its end. The search stops at [`MAX_ROUNDS_CAP`] (`capped = true`).
pub fn max_rounds(
    kind: AccountantKind,
    mechanism: PoissonGaussian,
    target_epsilon: f64,
    delta: f64,
) -> Result<RoundsBudget> {
    check_sampling_rate(mechanism.q)?;
    check_noise_multiplier(mechanism.sigma)?;
    check_epsilon(target_epsilon)?;
    check_delta(delta)?;
    let curve = EpsilonCurve::new(kind, mechanism, delta)?;
    let budget = |rounds: u64, epsilon: f64, epsilon_next: f64, capped: bool| RoundsBudget {
        rounds,
        epsilon,
        epsilon_next,
        capped,
        target_epsilon,
        delta,
        q: mechanism.q,
        sigma: mechanism.sigma,
        accountant: kind,
    };

    let first = curve.epsilon(1)?;
    if first > target_epsilon {
        return Ok(budget(0, 0.0, first, false));
    }
    // Invariant: `low` rounds meet the target (with ε `low_epsilon`), `high` rounds do not.
    let (mut low, mut low_epsilon) = (1u64, first);
    let (mut high, mut high_epsilon) = loop {
        let next = low.saturating_mul(2).min(MAX_ROUNDS_CAP);
        let epsilon = curve.epsilon(next)?;
        if epsilon > target_epsilon {
            break (next, epsilon);
        }
        (low, low_epsilon) = (next, epsilon);
        if low == MAX_ROUNDS_CAP {
            let beyond = curve.epsilon(MAX_ROUNDS_CAP + 1)?;
            return Ok(budget(low, low_epsilon, beyond, true));
        }
    };
    while high - low > 1 {
        let mid = low + (high - low) / 2;
        let epsilon = curve.epsilon(mid)?;
        if epsilon <= target_epsilon {
            (low, low_epsilon) = (mid, epsilon);
        } else {
            (high, high_epsilon) = (mid, epsilon);
        }
    }
    Ok(budget(low, low_epsilon, high_epsilon, false))
}

/// ε as a function of the number of releases of one mechanism. For RDP the per-step RDP is
/// computed once and scaled (RDP composes additively); other accountants compose afresh.
enum EpsilonCurve {
    Rdp {
        per_step: RdpAccountant,
        delta: f64,
    },
    Other {
        kind: AccountantKind,
        mechanism: PoissonGaussian,
        delta: f64,
    },
}

impl EpsilonCurve {
    fn new(kind: AccountantKind, mechanism: PoissonGaussian, delta: f64) -> Result<Self> {
        Ok(match kind {
            AccountantKind::Rdp => {
                let mut per_step = RdpAccountant::default();
                per_step.compose(mechanism, 1)?;
                EpsilonCurve::Rdp { per_step, delta }
            }
            AccountantKind::Pld => EpsilonCurve::Other {
                kind,
                mechanism,
                delta,
            },
        })
    }

    fn epsilon(&self, steps: u64) -> Result<f64> {
        match self {
            EpsilonCurve::Rdp { per_step, delta } => {
                let scaled: Vec<f64> = per_step.rdp().iter().map(|r| r * steps as f64).collect();
                Ok(rdp_to_epsilon(per_step.orders(), &scaled, *delta).epsilon)
            }
            EpsilonCurve::Other {
                kind,
                mechanism,
                delta,
            } => Ok(epsilon_for(*kind, *mechanism, steps, *delta)?.epsilon),
        }
    }
}

/// A target ε must be a finite number; ≤ 0 is a valid question with no answer.
fn check_target(target_epsilon: f64) -> Result<()> {
    if !target_epsilon.is_finite() {
        return check_epsilon(target_epsilon);
    }
    if target_epsilon <= 0.0 {
        return Err(AccountingError::Unreachable(format!(
            "target epsilon = {target_epsilon}: no finite noise gives epsilon <= 0 at delta < 1; \
             choose a target epsilon > 0"
        )));
    }
    Ok(())
}

fn check_steps(steps: u64) -> Result<()> {
    require(
        steps != 0,
        "steps",
        steps,
        "at least one release to calibrate noise for",
    )
}

fn check_tolerance(tolerance: f64) -> Result<()> {
    require(
        tolerance.is_finite() && tolerance > 0.0 && tolerance < 1.0,
        "tolerance",
        tolerance,
        "a relative tolerance in (0, 1), e.g. 1e-4",
    )
}

#[cfg(test)]
mod tests {

    use super::*;

    fn rdp_epsilon(q: f64, sigma: f64, steps: u64, delta: f64) -> f64 {
        epsilon_for(
            AccountantKind::Rdp,
            PoissonGaussian { q, sigma },
            steps,
            delta,
        )
        .unwrap()
        .epsilon
    }

    #[test]
    fn rdp_calibration_meets_the_target_tightly() {
        for target in [1.0, 2.0, 8.0] {
            let tolerance = DEFAULT_SIGMA_TOLERANCE;
            let c = calibrate_sigma(AccountantKind::Rdp, target, 0.01, 10_000, 1e-5, tolerance)
                .unwrap();
            assert_eq!(c.epsilon, rdp_epsilon(0.01, c.sigma, 10_000, 1e-5));
            assert!(c.epsilon <= target, "{c:?}");
            // One tolerance less noise would overshoot: σ is minimal to the tolerance.
            let smaller = rdp_epsilon(0.01, c.sigma * (1.0 - tolerance), 10_000, 1e-5);
            assert!(smaller > target, "{c:?}: {smaller}");
            assert_eq!(
                (c.q, c.steps, c.delta, c.target_epsilon),
                (0.01, 10_000, 1e-5, target)
            );
            assert_eq!(c.accountant, AccountantKind::Rdp);
        }
    }

    #[test]
    fn calibration_reproduces_a_published_sigma() {
        // Full participation, 11 rounds, δ = 3e-6: σ = 2.31 gives ε ≈ 7.58.
        let c = calibrate_sigma(AccountantKind::Rdp, 7.58, 1.0, 11, 3e-6, 1e-6).unwrap();
        assert!((c.sigma - 2.31).abs() < 0.01, "{c:?}");
    }

    #[test]
    fn unreachable_targets_say_why() {
        for target in [0.0, -1.0] {
            let err = calibrate_sigma(AccountantKind::Rdp, target, 0.01, 100, 1e-5, 1e-4);
            assert!(
                matches!(err, Err(AccountingError::Unreachable(_))),
                "{err:?}"
            );
        }
        // Below RDP's conversion floor (≈ 0.10 at δ = 1e-5 with the default orders).
        let err = calibrate_sigma(AccountantKind::Rdp, 0.05, 0.01, 100, 1e-5, 1e-4).unwrap_err();
        let message = err.to_string();
        assert!(matches!(err, AccountingError::Unreachable(_)));
        assert!(
            message.contains("pld") && message.contains("delta"),
            "{message}"
        );
    }

    #[test]
    fn invalid_calibration_arguments_name_the_argument() {
        let name_of = |r: Result<SigmaCalibration>| match r {
            Err(AccountingError::InvalidArgument { name, .. }) => name,
            other => panic!("unexpected {other:?}"),
        };
        let kind = AccountantKind::Rdp;
        assert_eq!(
            name_of(calibrate_sigma(kind, 1.0, 0.0, 10, 1e-5, 1e-4)),
            "q"
        );
        assert_eq!(
            name_of(calibrate_sigma(kind, 1.0, 0.1, 10, 1.0, 1e-4)),
            "delta"
        );
        assert_eq!(
            name_of(calibrate_sigma(kind, 1.0, 0.1, 0, 1e-5, 1e-4)),
            "steps"
        );
        assert_eq!(
            name_of(calibrate_sigma(kind, 1.0, 0.1, 10, 1e-5, 0.0)),
            "tolerance"
        );
        assert_eq!(
            name_of(calibrate_sigma(kind, f64::NAN, 0.1, 10, 1e-5, 1e-4)),
            "epsilon"
        );
    }

    #[test]
    fn pld_calibration_is_no_noisier_than_rdp() {
        let (q, steps, delta, target) = (0.01, 1_000, 1e-5, 1.0);
        let rdp = calibrate_sigma(AccountantKind::Rdp, target, q, steps, delta, 1e-3).unwrap();
        let pld = calibrate_sigma(AccountantKind::Pld, target, q, steps, delta, 1e-3).unwrap();
        assert!(pld.epsilon <= target, "{pld:?}");
        assert!(pld.sigma <= rdp.sigma * (1.0 + 1e-3), "{pld:?} vs {rdp:?}");
    }

    #[test]
    fn max_rounds_is_the_last_affordable_round() {
        let mechanism = PoissonGaussian {
            q: 0.01,
            sigma: 1.0,
        };
        let budget = max_rounds(AccountantKind::Rdp, mechanism, 2.0, 1e-5).unwrap();
        assert!(!budget.capped && budget.rounds > 0, "{budget:?}");
        let at = rdp_epsilon(0.01, 1.0, budget.rounds, 1e-5);
        let after = rdp_epsilon(0.01, 1.0, budget.rounds + 1, 1e-5);
        assert_eq!((budget.epsilon, budget.epsilon_next), (at, after));
        assert!(at <= 2.0 && after > 2.0, "{budget:?}");
    }

    #[test]
    fn max_rounds_edge_cases() {
        // A single full-participation release at σ = 1 already costs ε > 1.
        let loud = PoissonGaussian { q: 1.0, sigma: 1.0 };
        let none = max_rounds(AccountantKind::Rdp, loud, 1.0, 1e-5).unwrap();
        assert_eq!((none.rounds, none.epsilon, none.capped), (0, 0.0, false));
        assert!(none.epsilon_next > 1.0);
        // Almost no privacy loss per release: the search stops at the cap.
        let quiet = PoissonGaussian {
            q: 1e-7,
            sigma: 1e4,
        };
        let capped = max_rounds(AccountantKind::Rdp, quiet, 10.0, 1e-5).unwrap();
        assert!(
            capped.capped && capped.rounds == MAX_ROUNDS_CAP,
            "{capped:?}"
        );
        assert!(capped.epsilon <= 10.0);
    }

    #[test]
    fn epsilon_for_matches_a_hand_built_accountant() {
        let mechanism = PoissonGaussian {
            q: 0.04,
            sigma: 1.5,
        };
        let estimate = epsilon_for(AccountantKind::Rdp, mechanism, 2250, 1e-5).unwrap();
        let mut accountant = RdpAccountant::default();
        accountant.compose(mechanism, 2250).unwrap();
        assert_eq!(estimate, accountant.epsilon(1e-5).unwrap());
        assert!(epsilon_for(AccountantKind::Rdp, mechanism, 10, 0.0).is_err());
    }
}
