//! The POPri client score of `clients::client_score_vector`, computed in plain Rust
//! (f64) instead of libtorch, so that the polling client process never loads libtorch: a
//! process linked to it holds ~190 MB of private memory before it does anything, and a machine
//! running many clients pays that once per client.
//!
//! The arithmetic is the same, step by step (unit candidate rows, dot products with the
//! client's embedding sum, population standardisation, one clip factor with the same margin,
//! zeros for a degenerate spread, the norm measured on the f32 values sent); a test checks
//! both against each other (`crates/clients/tests/remote_score.rs`).

use crate::error::{ProtocolError, Result};
use crate::wire::CandidateMatrix;

/// A standard deviation at most this fraction of ‖client sum‖ (the bound on |score|) is f64
/// rounding noise of equal scores (e.g. from duplicate candidates), not a ranking: such a
/// client sends zeros. Shared with the libtorch score (`clients::scores`).
pub const DEGENERATE_STD_RATIO: f64 = 1e-12;
/// The clip bound is applied as `clip · CLIP_MARGIN`: rounding the f64 vector to the f32 values
/// sent moves each by at most 2⁻²⁴ relative, so with this margin their norm is ≤ `clip`
/// strictly, as the privacy accounting assumes.
pub const CLIP_MARGIN: f64 = 1.0 - 1.0 / (1u64 << 22) as f64;
/// Norms below this are treated as zero when normalising rows (as
/// `torch.nn.functional.normalize`).
pub const NORM_EPSILON: f64 = 1e-12;

/// The clipped score vector (one f32 per candidate row, L2 norm ≤ `clip`) of a client whose
/// normalised text embeddings sum to `embedding_sum`.
///
/// Errors when the widths disagree, the clip bound is not a positive finite number, or any
/// input is not finite.
pub fn score_candidates(
    candidates: &CandidateMatrix,
    embedding_sum: &[f32],
    clip: f64,
) -> Result<Vec<f32>> {
    check_inputs(candidates, embedding_sum, clip)?;
    let sum: Vec<f64> = embedding_sum.iter().map(|&v| f64::from(v)).collect();
    let raw: Vec<f64> = candidates
        .values
        .chunks_exact(candidates.dim)
        .map(|row| unit_dot(row, &sum))
        .collect();
    let n = raw.len() as f64;
    let mean = raw.iter().sum::<f64>() / n;
    let std = (raw.iter().map(|s| (s - mean).powi(2)).sum::<f64>() / n).sqrt();
    let sum_norm = sum.iter().map(|v| v * v).sum::<f64>().sqrt();
    let usable = std.is_finite() && std > sum_norm * DEGENERATE_STD_RATIO;
    // (raw − mean) / std has norm √N, so clipping it is one factor for the whole vector.
    let clip_factor = (clip * CLIP_MARGIN / n.sqrt()).min(1.0);
    let factor = if usable { clip_factor / std } else { 0.0 };
    let values: Vec<f32> = raw.iter().map(|s| ((s - mean) * factor) as f32).collect();
    check_output(&values, clip)?;
    Ok(values)
}

/// `row / max(‖row‖, ε) · sum`, in f64.
fn unit_dot(row: &[f32], sum: &[f64]) -> f64 {
    let (dot, squares) = row
        .iter()
        .zip(sum)
        .fold((0.0, 0.0), |(dot, squares), (&x, &s)| {
            let x = f64::from(x);
            (dot + x * s, squares + x * x)
        });
    dot / squares.sqrt().max(NORM_EPSILON)
}

fn check_inputs(candidates: &CandidateMatrix, embedding_sum: &[f32], clip: f64) -> Result<()> {
    let invalid =
        |name: &'static str, message: String| ProtocolError::InvalidArgument { name, message };
    if !(clip.is_finite() && clip > 0.0) {
        return Err(invalid(
            "clip bound",
            format!("{clip} is not a positive finite number"),
        ));
    }
    if candidates.rows == 0
        || candidates.dim == 0
        || candidates.values.len() != candidates.rows * candidates.dim
    {
        return Err(invalid(
            "candidate embeddings",
            format!(
                "{} values for {} rows × {} columns; expected rows × columns, both at least 1",
                candidates.values.len(),
                candidates.rows,
                candidates.dim
            ),
        ));
    }
    if embedding_sum.len() != candidates.dim {
        return Err(invalid(
            "client embedding sum",
            format!(
                "has {} values, but the candidates have {} columns",
                embedding_sum.len(),
                candidates.dim
            ),
        ));
    }
    if !candidates.values.iter().all(|v| v.is_finite()) {
        return Err(ProtocolError::NonFinite {
            what: "the candidate embeddings",
        });
    }
    if !embedding_sum.iter().all(|v| v.is_finite()) {
        return Err(ProtocolError::NonFinite {
            what: "the client embedding sum",
        });
    }
    Ok(())
}

/// Errors unless every value is finite and their norm, measured, is within `clip`.
fn check_output(values: &[f32], clip: f64) -> Result<()> {
    if !values.iter().all(|v| v.is_finite()) {
        return Err(ProtocolError::NonFinite {
            what: "a client score vector",
        });
    }
    let norm = values
        .iter()
        .map(|&v| f64::from(v).powi(2))
        .sum::<f64>()
        .sqrt();
    if norm <= clip {
        Ok(())
    } else {
        Err(ProtocolError::SensitivityViolated {
            what: "a client score vector",
            norm,
            bound: clip,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn random_matrix(rng: &mut ChaCha8Rng, rows: usize, dim: usize) -> CandidateMatrix {
        CandidateMatrix {
            round: 0,
            clip: 1.0,
            rows,
            dim,
            values: (0..rows * dim).map(|_| rng.gen_range(-1.0..1.0)).collect(),
        }
    }

    #[test]
    fn equal_candidates_and_zero_rows_give_zeros() {
        let row = [0.3f32, -0.2, 0.9];
        let equal = CandidateMatrix {
            round: 0,
            clip: 1.0,
            rows: 4,
            dim: 3,
            values: row.repeat(4),
        };
        let sum = [1.0f32, 0.5, -0.25];
        assert_eq!(score_candidates(&equal, &sum, 1.0).unwrap(), vec![0.0; 4]);
        let zeros = CandidateMatrix {
            values: vec![0.0; 12],
            ..equal
        };
        assert_eq!(score_candidates(&zeros, &sum, 1.0).unwrap(), vec![0.0; 4]);
    }

    #[test]
    fn bad_inputs_are_errors() {
        let mut rng = ChaCha8Rng::seed_from_u64(6);
        let candidates = random_matrix(&mut rng, 5, 4);
        let sum = [0.5f32; 4];
        for clip in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            assert!(score_candidates(&candidates, &sum, clip).is_err(), "{clip}");
        }
        assert!(score_candidates(&candidates, &sum[..3], 1.0).is_err());
        assert!(score_candidates(&candidates, &[f32::NAN; 4], 1.0).is_err());
        let mut bad = candidates.clone();
        bad.values[7] = f32::INFINITY;
        assert!(score_candidates(&bad, &sum, 1.0).is_err());
        bad.values.pop();
        assert!(score_candidates(&bad, &sum, 1.0).is_err());
    }

    #[test]
    fn a_vector_over_the_clip_is_a_bug_not_bad_input() {
        check_output(&[0.6, 0.8], 1.0 + 1e-6).unwrap();
        let err = check_output(&[3.0, 4.0], 4.9).unwrap_err();
        assert!(
            matches!(err, ProtocolError::SensitivityViolated { norm, bound, .. }
                if (norm - 5.0).abs() < 1e-9 && bound == 4.9),
            "{err}"
        );
        assert!(!err.is_bad_input(), "a broken bound exits 1, not 2: {err}");
        assert!(matches!(
            check_output(&[f32::NAN], 1.0),
            Err(ProtocolError::NonFinite { .. })
        ));
    }
}
