//! Properties every sound accountant has, checked on random mechanisms.
//!
//! * More releases, a higher sampling rate or less noise never lower ε.
//! * PLD is at least as tight as RDP: the PLD ε may exceed the RDP ε by at most the
//!   discretisation error PLD states.
//! * σ calibration returns (nearly) the smallest σ meeting the target: ε(σ*) ≤ target while a
//!   σ smaller by twice the tolerance misses it.
//! * The round budget is exact: `rounds` meet the target, `rounds + 1` do not.
//!
//! PLD is an upper bound with a stated discretisation error e: its estimate lies in
//! [ε, ε + e]. So for a pair whose exact ε's are ordered, ε̂(a) ≤ ε̂(b) + e(a) is what
//! monotonicity promises, and that is what is checked. Case counts are small so that the suite
//! runs in seconds in release and well under a minute in debug; PLD cases use few rounds.

use privacy_accounting::calibration::{
    calibrate_sigma, epsilon_for, max_rounds, DEFAULT_SIGMA_TOLERANCE,
};
use privacy_accounting::{AccountantKind, EpsilonEstimate, PoissonGaussian};
use proptest::prelude::*;

/// Float noise allowed in RDP comparisons (relative).
const RDP_SLACK: f64 = 1e-9;
const DELTA: f64 = 1e-5;

/// `a` ≤ `b` up to float noise.
fn at_most(a: f64, b: f64) -> bool {
    a <= b + RDP_SLACK * b.abs().max(1.0)
}

/// Estimate `a` (of the smaller exact ε) against `b`: `a` may exceed `b` by the discretisation
/// error `a` states (PLD; RDP states none, so its estimates must be ordered up to float noise).
fn no_larger(a: &EpsilonEstimate, b: &EpsilonEstimate) -> bool {
    at_most(a.epsilon, b.epsilon + a.discretisation_error.unwrap_or(0.0))
}

/// A log-uniform draw from [lo, hi].
fn log_uniform(lo: f64, hi: f64) -> impl Strategy<Value = f64> {
    (lo.ln()..hi.ln()).prop_map(f64::exp)
}

/// Two ordered draws from [lo, hi], log-uniform.
fn ordered_pair(lo: f64, hi: f64) -> impl Strategy<Value = (f64, f64)> {
    (log_uniform(lo, hi), log_uniform(lo, hi)).prop_map(|(a, b)| (a.min(b), a.max(b)))
}

/// The estimate of `kind` after `steps` releases at rate `q` and noise `sigma`, at [`DELTA`].
fn sampled_epsilon(kind: AccountantKind, q: f64, sigma: f64, steps: u64) -> EpsilonEstimate {
    let mechanism = PoissonGaussian::new(q, sigma).expect("valid mechanism");
    epsilon_for(kind, mechanism, steps, DELTA).expect("epsilon_for")
}

/// More releases never lower ε.
fn check_grows_with_rounds(
    kind: AccountantKind,
    q: f64,
    sigma: f64,
    steps: u64,
    extra: u64,
) -> Result<(), TestCaseError> {
    let fewer = sampled_epsilon(kind, q, sigma, steps);
    let more = sampled_epsilon(kind, q, sigma, steps + extra);
    prop_assert!(
        no_larger(&fewer, &more),
        "{kind}: T={steps}: {fewer:?} > T={}: {more:?}",
        steps + extra
    );
    Ok(())
}

/// A higher sampling rate never lowers ε.
fn check_grows_with_sampling_rate(
    kind: AccountantKind,
    q_low: f64,
    q_high: f64,
    sigma: f64,
    steps: u64,
) -> Result<(), TestCaseError> {
    let low = sampled_epsilon(kind, q_low, sigma, steps);
    let high = sampled_epsilon(kind, q_high, sigma, steps);
    prop_assert!(
        no_larger(&low, &high),
        "{kind}: q={q_low}: {low:?} > q={q_high}: {high:?}"
    );
    Ok(())
}

/// More noise never raises ε.
fn check_falls_with_noise(
    kind: AccountantKind,
    q: f64,
    sigma_low: f64,
    sigma_high: f64,
    steps: u64,
) -> Result<(), TestCaseError> {
    let noisy = sampled_epsilon(kind, q, sigma_high, steps);
    let quiet = sampled_epsilon(kind, q, sigma_low, steps);
    prop_assert!(
        no_larger(&noisy, &quiet),
        "{kind}: sigma={sigma_high}: {noisy:?} > sigma={sigma_low}: {quiet:?}"
    );
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn rdp_epsilon_grows_with_rounds(
        q in log_uniform(1e-4, 1.0),
        sigma in log_uniform(0.5, 20.0),
        steps in 1u64..100_000,
        extra in 1u64..100_000,
    ) {
        check_grows_with_rounds(AccountantKind::Rdp, q, sigma, steps, extra)?;
    }

    #[test]
    fn rdp_epsilon_grows_with_sampling_rate(
        (q_low, q_high) in ordered_pair(1e-5, 1.0),
        sigma in log_uniform(0.5, 20.0),
        steps in 1u64..100_000,
    ) {
        check_grows_with_sampling_rate(AccountantKind::Rdp, q_low, q_high, sigma, steps)?;
    }

    #[test]
    fn rdp_epsilon_falls_with_noise(
        q in log_uniform(1e-4, 1.0),
        (sigma_low, sigma_high) in ordered_pair(0.3, 50.0),
        steps in 1u64..100_000,
    ) {
        check_falls_with_noise(AccountantKind::Rdp, q, sigma_low, sigma_high, steps)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(12))]

    #[test]
    fn pld_epsilon_grows_with_rounds(
        q in log_uniform(1e-3, 1.0),
        sigma in log_uniform(0.6, 10.0),
        steps in 1u64..40,
        extra in 1u64..40,
    ) {
        check_grows_with_rounds(AccountantKind::Pld, q, sigma, steps, extra)?;
    }

    #[test]
    fn pld_epsilon_grows_with_sampling_rate(
        (q_low, q_high) in ordered_pair(1e-3, 1.0),
        sigma in log_uniform(0.6, 10.0),
        steps in 1u64..40,
    ) {
        check_grows_with_sampling_rate(AccountantKind::Pld, q_low, q_high, sigma, steps)?;
    }

    #[test]
    fn pld_epsilon_falls_with_noise(
        q in log_uniform(1e-3, 1.0),
        (sigma_low, sigma_high) in ordered_pair(0.6, 10.0),
        steps in 1u64..40,
    ) {
        check_falls_with_noise(AccountantKind::Pld, q, sigma_low, sigma_high, steps)?;
    }

    #[test]
    fn pld_is_no_looser_than_rdp(
        q in log_uniform(1e-3, 1.0),
        sigma in log_uniform(0.6, 10.0),
        steps in 1u64..200,
    ) {
        let pld = sampled_epsilon(AccountantKind::Pld, q, sigma, steps);
        let rdp = sampled_epsilon(AccountantKind::Rdp, q, sigma, steps);
        prop_assert!(
            no_larger(&pld, &rdp),
            "q={q} sigma={sigma} T={steps}: PLD {pld:?} > RDP {rdp:?}"
        );
    }
}

/// How far an estimate may sit below what the accountant's own search saw at a neighbouring
/// point: float noise, plus for PLD the stated discretisation error (the grid makes the PLD
/// estimate move non-monotonically by up to that much).
fn search_slack(estimate: &EpsilonEstimate) -> f64 {
    RDP_SLACK * estimate.epsilon.abs().max(1.0) + estimate.discretisation_error.unwrap_or(0.0)
}

/// Checks that `sigma` is the smallest noise meeting `target` up to the relative tolerance:
/// ε(σ*) ≤ target, and ε(σ*·(1 − 2·tol)) > target (up to `search_slack`).
fn check_minimal_sigma(
    kind: AccountantKind,
    q: f64,
    steps: u64,
    target: f64,
) -> Result<(), TestCaseError> {
    let tolerance = DEFAULT_SIGMA_TOLERANCE;
    let calibration = calibrate_sigma(kind, target, q, steps, DELTA, tolerance)
        .map_err(|e| TestCaseError::fail(format!("calibrate_sigma: {e}")))?;
    let sigma = calibration.sigma;
    let at_sigma = sampled_epsilon(kind, q, sigma, steps).epsilon;
    prop_assert!(
        at_most(at_sigma, target),
        "{kind}: eps(sigma*={sigma}) = {at_sigma} > target {target}"
    );
    prop_assert!(
        (calibration.epsilon - at_sigma).abs() <= 1e-9 * at_sigma.max(1.0),
        "{kind}: calibration reports eps {} but eps(sigma*) = {at_sigma}",
        calibration.epsilon
    );
    let smaller = sigma * (1.0 - 2.0 * tolerance);
    let estimate = sampled_epsilon(kind, q, smaller, steps);
    let at_smaller = estimate.epsilon;
    prop_assert!(
        at_smaller > target - search_slack(&estimate),
        "{kind}: sigma*={sigma} is not minimal: eps({smaller}) = {at_smaller} <= target {target}"
    );
    Ok(())
}

/// Checks that `rounds` meet `target` and one more round does not (up to `search_slack`).
fn check_round_budget(
    kind: AccountantKind,
    q: f64,
    sigma: f64,
    target: f64,
) -> Result<(), TestCaseError> {
    let mechanism = PoissonGaussian::new(q, sigma).expect("valid mechanism");
    let budget = max_rounds(kind, mechanism, target, DELTA)
        .map_err(|e| TestCaseError::fail(format!("max_rounds: {e}")))?;
    let rounds = budget.rounds;
    prop_assert!(
        !budget.capped,
        "{kind}: the search hit its cap at {rounds} rounds"
    );
    if rounds > 0 {
        let at_budget = sampled_epsilon(kind, q, sigma, rounds).epsilon;
        prop_assert!(
            at_most(at_budget, target),
            "{kind}: {rounds} rounds give eps {at_budget} > target {target}"
        );
    }
    let estimate = sampled_epsilon(kind, q, sigma, rounds + 1);
    let one_more = estimate.epsilon;
    prop_assert!(
        one_more > target - search_slack(&estimate),
        "{kind}: {} rounds still meet the target ({one_more} <= {target})",
        rounds + 1
    );
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    #[test]
    fn rdp_sigma_calibration_is_minimal(
        target in log_uniform(0.3, 10.0),
        q in log_uniform(1e-3, 1.0),
        steps in 1u64..10_000,
    ) {
        check_minimal_sigma(AccountantKind::Rdp, q, steps, target)?;
    }

    #[test]
    fn rdp_round_budget_is_exact(
        target in log_uniform(0.5, 10.0),
        q in log_uniform(1e-2, 1.0),
        sigma in log_uniform(0.7, 5.0),
    ) {
        check_round_budget(AccountantKind::Rdp, q, sigma, target)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(8))]

    #[test]
    fn pld_sigma_calibration_is_minimal(
        target in log_uniform(0.5, 8.0),
        q in log_uniform(1e-2, 1.0),
        steps in 1u64..30,
    ) {
        check_minimal_sigma(AccountantKind::Pld, q, steps, target)?;
    }
}
