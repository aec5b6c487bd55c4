//! A clipped vector on the ring Z_{2^64} and the sum back, on the grid of fedsyn's releases.
//!
//! A client clips its vector to C with the one clip function and rounds it to the grid γ of
//! the round's mechanism (`dp_mechanics::grid_for(C)`): the integers the ledger's sensitivity
//! Δ = C(1 + 2^−30) + γ√d/2 already covers. Honest coordinates are at most Δ/γ < 2^22 in
//! magnitude, so 2^64 leaves room for 2^41 clients before a sum could wrap.

use crate::error::{ProtocolError, Result};

/// `scores` clipped to L2 norm ≤ `clip` and rounded to the grid of `clip`, as ring elements
/// (two's complement).
pub fn encode(scores: &[f64], clip: f64) -> Result<Vec<u64>> {
    let mut values = scores.to_vec();
    dp_mechanics::clip_in_place(&mut values, clip)
        .map_err(|e| ProtocolError::Invalid(e.to_string()))?;
    let grid = dp_mechanics::grid_for(clip);
    Ok(values
        .iter()
        .map(|v| (v / grid).round() as i64 as u64)
        .collect())
}

/// The largest coordinate, in grid units, of one honest client's encoded vector: ⌊Δ/γ⌋ for
/// the mechanism's sensitivity Δ and grid γ (a coordinate is at most the vector's norm).
pub fn per_client_units(sensitivity: f64, grid: f64) -> i64 {
    (sensitivity / grid).floor() as i64
}

/// The unmasked ring sum as signed grid units, each coordinate clamped to `[−bound, bound]`.
///
/// Without proofs a client can send any ring element, so the sum of a cohort with a malicious
/// member is arbitrary; the clamp bounds what it can do. With `bound` = the largest cohort
/// times [`per_client_units`], no honest sum is ever clamped, and the clamp (a projection
/// onto a box, 1-Lipschitz and integer-valued) leaves the release's sensitivity at Δ. The
/// bound must not depend on who is in the cohort, or the clamp itself would leak membership.
pub fn decode(sum: &[u64], bound: i64) -> Vec<i64> {
    sum.iter()
        .map(|&w| (w as i64).clamp(-bound, bound))
        .collect()
}
