//! Helpers shared by the unit tests of several modules.

use std::fmt::Display;

/// ∫ f over [low, high] by composite Simpson quadrature with `n` (even) intervals.
pub(crate) fn simpson(f: impl Fn(f64) -> f64, low: f64, high: f64, n: usize) -> f64 {
    let h = (high - low) / n as f64;
    let mut total = f(low) + f(high);
    for k in 1..n {
        let weight = if k % 2 == 1 { 4.0 } else { 2.0 };
        total += weight * f(low + k as f64 * h);
    }
    total * h / 3.0
}

/// |value − reference| / |reference|.
pub(crate) fn relative_error(value: f64, reference: f64) -> f64 {
    ((value - reference) / reference).abs()
}

/// Fails the test unless `value` is within relative error `tolerance` (exclusive) of
/// `reference`; the message starts with `what`, the case being checked.
#[track_caller]
pub(crate) fn assert_relative_error_below(
    value: f64,
    reference: f64,
    tolerance: f64,
    what: impl Display,
) {
    let error = relative_error(value, reference);
    assert!(
        error < tolerance,
        "{what}: {value} vs {reference} (relative error {error:e}, allowed {tolerance:e})"
    );
}
