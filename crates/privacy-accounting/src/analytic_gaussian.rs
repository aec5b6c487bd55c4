//! The analytic Gaussian mechanism (Balle & Wang, ICML 2018), and the Gaussian tail functions
//! the accountants share.
//!
//! One release of a query with L2 sensitivity Δ plus Gaussian noise of standard deviation s has
//! the exact privacy profile
//!
//! ```text
//! δ(ε) = Φ(Δ/(2s) − εs/Δ) − e^ε · Φ(−Δ/(2s) − εs/Δ),
//! ```
//!
//! which is tighter than the classical bound s = Δ·√(2 ln(1.25/δ))/ε and also valid for ε ≥ 1.
//! [`analytic_gaussian_delta`] evaluates it, [`analytic_gaussian_epsilon`] and
//! [`analytic_gaussian_sigma`] invert it by bisection.
//!
//! The formula subtracts two tail probabilities that can both be far below the smallest `f64`,
//! so it is evaluated with the scaled complementary error function erfcx(x) = e^{x²}·erfc(x),
//! whose logarithm [`log_erfcx`] stays accurate however deep in the tail x lies.

use std::f64::consts::{FRAC_1_SQRT_2, LN_2};

use libm::{erf, erfc};

use crate::error::{check_delta, check_epsilon, require_positive, AccountingError, Result};

/// Relative tolerance of the bisections that invert the privacy profile.
pub const ANALYTIC_TOLERANCE: f64 = 1e-10;

/// From this argument on, erfc is replaced by its asymptotic expansion. Below it erfc (libm's
/// port of fdlibm, accurate to about an ulp) is far from underflow (erfc(10) ≈ 2e-45); above it
/// the expansion, truncated after [`ASYMPTOTIC_TERMS`] terms, is accurate to better than 1e-17.
const ASYMPTOTIC_FROM: f64 = 10.0;
/// Terms of the asymptotic series of erfcx kept for x ≥ [`ASYMPTOTIC_FROM`]: the first omitted
/// term, (2n−1)!!/(2x²)ⁿ at n = 13, is below 1e-17 there.
const ASYMPTOTIC_TERMS: u32 = 13;
/// ln √π.
const LN_SQRT_PI: f64 = 0.572_364_942_924_700_1;

/// ln erfcx(x) = x² + ln erfc(x), accurate for every finite x (no underflow for large x, no
/// overflow for very negative x).
pub fn log_erfcx(x: f64) -> f64 {
    if x < ASYMPTOTIC_FROM {
        x * x + erfc(x).ln()
    } else {
        log_erfcx_asymptotic(x)
    }
}

/// ln erfc(x), accurate deep in the upper tail where erfc(x) itself underflows.
pub fn log_erfc(x: f64) -> f64 {
    if x < ASYMPTOTIC_FROM {
        erfc(x).ln()
    } else {
        -x * x + log_erfcx_asymptotic(x)
    }
}

/// ln Φ(x), the log of the standard normal CDF, accurate in both tails.
pub fn log_normal_cdf(x: f64) -> f64 {
    if x >= 0.0 {
        // Φ(x) = 1 − ½·erfc(x/√2) is close to 1: log1p keeps the small complement exact.
        (-0.5 * erfc(x * FRAC_1_SQRT_2)).ln_1p()
    } else {
        -LN_2 + log_erfc(-x * FRAC_1_SQRT_2)
    }
}

/// ln erfcx(x) for large x from erfcx(x) ~ 1/(x√π) · Σₙ (−1)ⁿ (2n−1)!!/(2x²)ⁿ.
fn log_erfcx_asymptotic(x: f64) -> f64 {
    let inv_two_x_sq = 1.0 / (2.0 * x * x);
    let mut term = 1.0;
    let mut series = 1.0;
    for n in 1..ASYMPTOTIC_TERMS {
        term *= -f64::from(2 * n - 1) * inv_two_x_sq;
        series += term;
    }
    series.ln() - x.ln() - LN_SQRT_PI
}

/// The exact δ(ε) of one Gaussian release with noise standard deviation `noise_std` of a query
/// with L2 sensitivity `sensitivity` (Balle & Wang 2018, Theorem 8).
pub fn analytic_gaussian_delta(epsilon: f64, noise_std: f64, sensitivity: f64) -> Result<f64> {
    check_epsilon(epsilon)?;
    check_noise_std(noise_std)?;
    check_sensitivity(sensitivity)?;
    Ok(profile_delta(epsilon, noise_std / sensitivity))
}

/// The smallest ε (within relative tolerance [`ANALYTIC_TOLERANCE`], rounded up) such that one
/// Gaussian release with noise standard deviation `noise_std` is (ε, δ)-DP.
pub fn analytic_gaussian_epsilon(delta: f64, noise_std: f64, sensitivity: f64) -> Result<f64> {
    check_delta(delta)?;
    check_noise_std(noise_std)?;
    check_sensitivity(sensitivity)?;
    let ratio = noise_std / sensitivity;
    if profile_delta(0.0, ratio) <= delta {
        return Ok(0.0);
    }
    // δ(ε) decreases to 0 as ε grows: double until below target, then bisect.
    // "Not above" rather than "at most": a NaN δ (a ratio that overflowed to ∞) then ends the
    // search at a small ε instead of doubling ε until it overflows.
    let above_target = |epsilon: f64| profile_delta(epsilon, ratio) > delta;
    let within_target = |epsilon: f64| !above_target(epsilon);
    let (low, high) = bracket_by_doubling(0.0, 1.0, within_target).ok_or_else(|| {
        AccountingError::Unreachable(format!(
            "no finite epsilon reaches delta = {delta} with noise_std/sensitivity = {ratio}"
        ))
    })?;
    Ok(bisect_to_threshold(low, high, within_target))
}

/// The smallest noise standard deviation (within relative tolerance [`ANALYTIC_TOLERANCE`],
/// rounded up) that makes one release of a query with L2 sensitivity `sensitivity`
/// (ε, δ)-DP under the analytic Gaussian mechanism.
pub fn analytic_gaussian_sigma(epsilon: f64, delta: f64, sensitivity: f64) -> Result<f64> {
    check_epsilon(epsilon)?;
    check_delta(delta)?;
    check_sensitivity(sensitivity)?;
    // δ decreases in the noise ratio s/Δ; it tends to 1 as s → 0 and to 0 as s → ∞, so the
    // bracket always closes. Work with the ratio, then scale by Δ.
    let too_noisy = |ratio: f64| profile_delta(epsilon, ratio) <= delta;
    let (low, high) = if too_noisy(1.0) {
        let (mut low, mut high) = (1.0, 1.0);
        while too_noisy(low) {
            high = low;
            low *= 0.5;
        }
        (low, high)
    } else {
        bracket_by_doubling(1.0, 1.0, too_noisy).ok_or_else(|| {
            AccountingError::Unreachable(format!(
                "no finite noise reaches (epsilon = {epsilon}, delta = {delta})"
            ))
        })?
    };
    Ok(bisect_to_threshold(low, high, too_noisy) * sensitivity)
}

/// Doubles `high` (moving `low` up behind it) until `holds(high)`, for a predicate that is
/// false below some threshold and true above it: the bracket (low, high] then contains the
/// threshold. `None` when `high` overflows first (the threshold is not a finite number).
fn bracket_by_doubling(
    mut low: f64,
    mut high: f64,
    holds: impl Fn(f64) -> bool,
) -> Option<(f64, f64)> {
    while !holds(high) {
        low = high;
        high *= 2.0;
        if !high.is_finite() {
            return None;
        }
    }
    Some((low, high))
}

/// Bisects the bracket from `low` to `high` of a threshold predicate (false at `low`, true at
/// `high`) until its relative width is at most [`ANALYTIC_TOLERANCE`], and returns its upper end: the
/// smallest value known to satisfy `holds`, so the answer errs on the safe side.
fn bisect_to_threshold(mut low: f64, mut high: f64, holds: impl Fn(f64) -> bool) -> f64 {
    while high - low > ANALYTIC_TOLERANCE * high {
        let mid = 0.5 * (low + high);
        if holds(mid) {
            high = mid;
        } else {
            low = mid;
        }
    }
    high
}

/// δ(ε) for the noise-to-sensitivity ratio s/Δ, with a = Δ/(2s) and b = εs/Δ (so ε = 2ab).
fn profile_delta(epsilon: f64, ratio: f64) -> f64 {
    let a = 0.5 / ratio;
    let b = epsilon * ratio;
    let delta = if b < a {
        // Φ(a−b) − Φ(−a−b) is an interval around 0: a sum of two erfs, no cancellation.
        let interval = 0.5 * (erf((a - b) * FRAC_1_SQRT_2) + erf((a + b) * FRAC_1_SQRT_2));
        // e^ε − 1 may overflow where the tail underflows: multiply in log space.
        let log_tail = log_expm1(epsilon) - LN_2 + log_erfc((a + b) * FRAC_1_SQRT_2);
        interval - log_tail.exp()
    } else {
        // Both terms are upper tails. With x₁ = (b−a)/√2, x₂ = (b+a)/√2 and x₂² − x₁² = ε,
        // δ = ½·e^{−x₁²}·(erfcx(x₁) − erfcx(x₂)): no exponent cancels, nothing underflows
        // before the final exp.
        let x1 = (b - a) * FRAC_1_SQRT_2;
        let x2 = (b + a) * FRAC_1_SQRT_2;
        let log_x1 = log_erfcx(x1);
        let log_gap = log_x1 + (-(log_erfcx(x2) - log_x1).exp_m1()).ln();
        (-LN_2 - x1 * x1 + log_gap).exp()
    };
    delta.clamp(0.0, 1.0)
}

/// ln(eˣ − 1) for x ≥ 0 (−∞ at 0), without overflow for large x.
pub(crate) fn log_expm1(x: f64) -> f64 {
    if x > 1.0 {
        x + (-(-x).exp()).ln_1p()
    } else {
        x.exp_m1().ln()
    }
}

fn check_noise_std(noise_std: f64) -> Result<()> {
    require_positive(
        "noise_std",
        noise_std,
        "the noise standard deviation must be a finite number > 0",
    )
}

fn check_sensitivity(sensitivity: f64) -> Result<()> {
    require_positive(
        "sensitivity",
        sensitivity,
        "the L2 sensitivity must be a finite number > 0 (the clip bound)",
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::assert_relative_error_below;

    #[test]
    fn tail_functions_match_high_precision_values() {
        // References from mpmath at 40 digits.
        for (x, log_erfcx_ref, log_erfc_ref) in [
            (-3.0, 9.693_136_135_250_447, 0.693_136_135_250_446_8),
            (0.5, -0.485_011_129_837_084_4, -0.735_011_129_837_084_4),
            (5.0, -2.200_889_545_537_434_4, -27.200_889_545_537_434),
            (30.0, -3.974_117_110_643_878, -903.974_117_110_643_9),
            (1e4, -9.782_705_319_900_883, -100_000_009.782_705_32),
        ] {
            assert!((log_erfcx(x) - log_erfcx_ref).abs() < 1e-13, "erfcx {x}");
            assert_relative_error_below(log_erfc(x), log_erfc_ref, 1e-14, format_args!("erfc {x}"));
        }
        for (x, reference) in [
            (-40.0, -804.608_442_013_753_8),
            (-5.0, -15.064_998_393_988_726),
            (-1.0, -1.841_021_645_009_263_5),
            (0.0, -std::f64::consts::LN_2),
            (2.0, -0.023_012_909_328_963_488),
        ] {
            assert_relative_error_below(log_normal_cdf(x), reference, 1e-14, format_args!("Φ {x}"));
        }
        assert_eq!(log_normal_cdf(40.0), 0.0);
    }

    #[test]
    fn asymptotic_branch_joins_smoothly() {
        // Both evaluations of ln erfcx agree where one hands over to the other.
        let x = ASYMPTOTIC_FROM;
        let direct = x * x + erfc(x).ln();
        let asymptotic = log_erfcx_asymptotic(x);
        assert!(
            (direct - asymptotic).abs() < 1e-14,
            "{direct} vs {asymptotic}"
        );
    }

    #[test]
    fn delta_matches_high_precision_values() {
        // δ(ε) for Δ = 1 from mpmath at 40 digits, from the bulk to 1e-82.
        for (epsilon, noise_std, reference) in [
            (1.0, 0.3, 0.847_235_933_405_219),
            (0.5, 2.0, 0.052_440_323_287_669_66),
            (0.01, 20.0, 0.015_419_665_138_025_07),
            (10.0, 1.0, 9.812_705_826_846_956e-23),
            (40.0, 0.5, 8.082_866_373_294_299e-82),
        ] {
            let delta = analytic_gaussian_delta(epsilon, noise_std, 1.0).unwrap();
            assert_relative_error_below(
                delta,
                reference,
                1e-11,
                format_args!("δ({epsilon}) at noise_std {noise_std}"),
            );
        }
    }

    /// δ as the hockey-stick divergence ∫ (p(x) − e^ε q(x))₊ dx between N(0, s²) and N(Δ, s²),
    /// by composite Simpson quadrature.
    fn hockey_stick_by_quadrature(epsilon: f64, noise_std: f64, sensitivity: f64) -> f64 {
        let density = |x: f64, mean: f64| {
            let z = (x - mean) / noise_std;
            (-0.5 * z * z).exp() / (noise_std * (2.0 * std::f64::consts::PI).sqrt())
        };
        let integrand =
            |x: f64| (density(x, 0.0) - epsilon.exp() * density(x, sensitivity)).max(0.0);
        let (low, high) = (-40.0 * noise_std, sensitivity + 40.0 * noise_std);
        crate::test_support::simpson(integrand, low, high, 2_000_000)
    }

    #[test]
    fn delta_formula_matches_the_hockey_stick_integral() {
        for (epsilon, noise_std, sensitivity) in [(0.1, 1.0, 1.0), (1.0, 0.5, 1.0), (3.0, 2.0, 4.0)]
        {
            let formula = analytic_gaussian_delta(epsilon, noise_std, sensitivity).unwrap();
            let integral = hockey_stick_by_quadrature(epsilon, noise_std, sensitivity);
            assert_relative_error_below(
                formula,
                integral,
                1e-6,
                format_args!("{epsilon} {noise_std} {sensitivity}"),
            );
        }
    }

    #[test]
    fn analytic_sigma_beats_the_classical_bound() {
        for epsilon in [0.1, 0.5, 0.9] {
            for delta in [1e-5f64, 1e-10] {
                let classical = (2.0 * (1.25 / delta).ln()).sqrt() / epsilon;
                let analytic = analytic_gaussian_sigma(epsilon, delta, 1.0).unwrap();
                assert!(
                    analytic <= classical,
                    "{epsilon} {delta}: {analytic} > {classical}"
                );
                // Minimal and conservative: δ at σ is within target, slightly less noise is not.
                assert!(analytic_gaussian_delta(epsilon, analytic, 1.0).unwrap() <= delta);
                let less = analytic * (1.0 - 1e-8);
                assert!(analytic_gaussian_delta(epsilon, less, 1.0).unwrap() > delta);
            }
        }
        // Sensitivity scales σ linearly.
        let one = analytic_gaussian_sigma(1.0, 1e-6, 1.0).unwrap();
        let three = analytic_gaussian_sigma(1.0, 1e-6, 3.0).unwrap();
        assert_relative_error_below(three, 3.0 * one, 1e-9, "σ at sensitivity 3 vs 3 × σ at 1");
        // ε = 0 is reachable with enough noise.
        assert!(analytic_gaussian_sigma(0.0, 1e-3, 1.0).unwrap() > 100.0);
    }

    #[test]
    fn epsilon_and_delta_round_trip() {
        for noise_std in [0.3, 1.0, 5.0] {
            for delta in [1e-3, 1e-6, 1e-12] {
                let epsilon = analytic_gaussian_epsilon(delta, noise_std, 1.0).unwrap();
                let back = analytic_gaussian_delta(epsilon, noise_std, 1.0).unwrap();
                assert!(back <= delta, "{noise_std} {delta}: {back}");
                assert_relative_error_below(back, delta, 1e-7, format_args!("{noise_std} {delta}"));
            }
        }
        // So much noise that δ(0) is already below the target: ε = 0.
        assert_eq!(analytic_gaussian_epsilon(0.1, 100.0, 1.0).unwrap(), 0.0);
    }

    #[test]
    fn invalid_arguments_name_the_argument() {
        let name_of = |r: Result<f64>| match r {
            Err(AccountingError::InvalidArgument { name, .. }) => name,
            other => panic!("unexpected {other:?}"),
        };
        assert_eq!(name_of(analytic_gaussian_delta(-1.0, 1.0, 1.0)), "epsilon");
        assert_eq!(name_of(analytic_gaussian_delta(1.0, 0.0, 1.0)), "noise_std");
        assert_eq!(
            name_of(analytic_gaussian_delta(1.0, 1.0, f64::NAN)),
            "sensitivity"
        );
        assert_eq!(name_of(analytic_gaussian_epsilon(0.0, 1.0, 1.0)), "delta");
        assert_eq!(name_of(analytic_gaussian_sigma(1.0, 1.5, 1.0)), "delta");
    }
}
