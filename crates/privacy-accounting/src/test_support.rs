//! Helpers shared by the unit tests of several modules.

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
