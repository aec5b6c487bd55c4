//! The POPri score vector a client sends for a round's candidates (computed on the client,
//! from its private texts):
//!
//! s\[k\] = Σ_j cos(e_k, x_j) over the client's text embeddings x_j, for every candidate
//! embedding e_k; then s is standardised over k (mean 0, population standard deviation 1) and
//! clipped to L2 norm ≤ C.
//!
//! With unit vectors, Σ_j cos(e_k, x_j) = e_k · Σ_j x_j, so a client needs only the sum of its
//! normalised text embeddings. The candidate rows are normalised again here: the client does
//! not trust the server to have sent unit vectors. A standardised vector has norm √N, so with
//! C < √N every client sends a vector of norm exactly C. A client whose scores are all equal
//! (standard deviation 0) sends the zero vector, never NaN.

use tch::{Kind, Tensor};

use crate::error::{ClientsError, Result};

// The constants of the score: one definition with the plain-Rust score `fedsyn client` runs.
use protocol::score::{CLIP_MARGIN, DEGENERATE_STD_RATIO, NORM_EPSILON};

/// One client's clipped score vector.
#[derive(Debug, Clone, PartialEq)]
pub struct ClippedScores {
    /// The standardised and clipped scores, one per candidate: what the client sends.
    pub values: Vec<f32>,
    /// The L2 norm of the standardised vector before clipping (√N, or 0 for a client whose
    /// scores were all equal).
    pub pre_clip_norm: f64,
    /// Whether clipping scaled the vector down.
    pub clipped: bool,
}

/// The score vector of a client whose normalised text embeddings sum to `client_sum` (`[d]`)
/// for the candidate embeddings `candidates` (`[N, d]`), clipped to L2 norm ≤ `clip`.
///
/// Errors when the shapes disagree, `clip` is not a positive finite number, or any input or
/// output value is not finite.
pub fn client_score_vector(
    candidates: &Tensor,
    client_sum: &Tensor,
    clip: f64,
) -> Result<ClippedScores> {
    let candidates = unit_candidates(candidates)?;
    let dim = candidates.size()[1];
    if client_sum.size() != [dim] {
        return Err(ClientsError::InvalidArgument {
            name: "client embedding sum",
            message: format!(
                "has shape {:?}, but the candidates have {dim} columns",
                client_sum.size()
            ),
        });
    }
    let client_sum = client_sum.f_to_device(candidates.device())?;
    ensure_finite(&client_sum, "the client embedding sum")?;
    let mut rows = score_rows(&client_sum.f_unsqueeze(0)?, &candidates, clip)?;
    Ok(ClippedScores {
        values: Vec::<f32>::try_from(rows.values.f_flatten(0, -1)?)?,
        pre_clip_norm: rows.pre_clip_norms.remove(0),
        clipped: rows.clipped.remove(0),
    })
}

/// The candidates checked (`[N, d]` with N, d ≥ 1, finite) and scaled to unit rows, in f64 on
/// their device. The scores are computed in f64 so that equal candidates get equal scores:
/// an f32 product differs in the last bits between rows, and standardising would blow that
/// noise up into a full-norm vector.
pub(crate) fn unit_candidates(candidates: &Tensor) -> Result<Tensor> {
    let size = candidates.size();
    if size.len() != 2 || size.contains(&0) {
        return Err(ClientsError::InvalidArgument {
            name: "candidate embeddings",
            message: format!("have shape {size:?}; expected [candidates, dim], both at least 1"),
        });
    }
    ensure_finite(candidates, "the candidate embeddings")?;
    unit_rows(candidates)
}

/// `rows` (`[m, d]`) in f64, each scaled to unit length (a zero row stays zero).
pub(crate) fn unit_rows(rows: &Tensor) -> Result<Tensor> {
    let rows = rows.f_to_kind(Kind::Double)?;
    let norms = rows
        .f_norm_scalaropt_dim(2, [1i64].as_slice(), true)?
        .f_clamp_min(NORM_EPSILON)?;
    Ok(rows.f_div(&norms)?)
}

/// Client score vectors, one a row, from [`score_rows`].
pub(crate) struct ClippedRows {
    /// `[m, N]` f32: row i is client i's vector.
    pub values: Tensor,
    /// Each row's norm before clipping.
    pub pre_clip_norms: Vec<f64>,
    /// Whether each row was scaled down.
    pub clipped: Vec<bool>,
}

/// The clipped score vectors of the clients whose embedding sums are the rows of `sums`
/// (`[m, d]`) for unit candidate rows (`[N, d]`, from [`unit_candidates`]): the one definition
/// of the client math; single clients and the simulated population both go through it.
/// Computed in f64; the vectors are returned in f32, as clients send them.
pub(crate) fn score_rows(
    sums: &Tensor,
    unit_candidates: &Tensor,
    clip: f64,
) -> Result<ClippedRows> {
    check_clip(clip)?;
    let sums = sums.f_to_kind(Kind::Double)?;
    let raw = sums.f_matmul(&unit_candidates.f_tr()?)?;
    let (std, mean) = raw.f_std_mean_correction([1i64].as_slice(), 0, true)?;
    // |raw score| ≤ ‖sum‖ (the candidates are unit rows), so a spread this far below ‖sum‖ is
    // rounding noise of equal scores.
    let noise_floor = sums
        .f_norm_scalaropt_dim(2, [1i64].as_slice(), true)?
        .f_mul_scalar(DEGENERATE_STD_RATIO)?;
    let usable = std
        .f_gt_tensor(&noise_floor)?
        .f_logical_and(&std.f_isfinite()?)?;
    // (raw − mean) / std has norm √N exactly (the definition of the population std), so
    // clipping it to `clip` multiplies it by min(1, clip/√N): one factor for every usable row.
    let standardised_norm = (raw.size()[1] as f64).sqrt();
    let clip_factor = (clip * CLIP_MARGIN / standardised_norm).min(1.0);
    // Unusable rows get the factor 0 (their std is replaced by 1 first, so no 0/0 is formed).
    let row_factor = std
        .f_where_scalarother(&usable, 1.0)?
        .f_reciprocal()?
        .f_mul_scalar(clip_factor)?
        .f_where_scalarother(&usable, 0.0)?;
    let mut values = raw.f_sub(&mean)?;
    // In place (one [m, N] temporary fewer); the returned alias is unused.
    let _ = values.f_mul_(&row_factor)?;
    let values = values.f_to_kind(Kind::Float)?;
    ensure_finite(&values, "a client score vector")?;
    ensure_rows_within(&values, clip, "client score vector")?;
    let usable = Vec::<bool>::try_from(usable.f_flatten(0, -1)?)?;
    Ok(ClippedRows {
        values,
        pre_clip_norms: usable
            .iter()
            .map(|&u| if u { standardised_norm } else { 0.0 })
            .collect(),
        clipped: usable.iter().map(|&u| u && clip_factor < 1.0).collect(),
    })
}

/// Errors unless every row of `values` (`what`, in the error) has L2 norm ≤ `bound`, measured:
/// the sensitivity the accountant assumes must not rest on the arithmetic that bounded the rows
/// (standardising to norm √N, then scaling) being right.
pub(crate) fn ensure_rows_within(values: &Tensor, bound: f64, what: &'static str) -> Result<()> {
    let norms =
        values
            .f_to_kind(Kind::Double)?
            .f_norm_scalaropt_dim(2, [1i64].as_slice(), false)?;
    let largest = if norms.numel() == 0 {
        0.0
    } else {
        norms.f_max()?.f_double_value(&[])?
    };
    if largest <= bound {
        Ok(())
    } else {
        Err(ClientsError::SensitivityViolated {
            what,
            norm: largest,
            bound,
        })
    }
}

/// Errors unless `clip` is a positive finite number.
pub(crate) fn check_clip(clip: f64) -> Result<()> {
    if clip.is_finite() && clip > 0.0 {
        Ok(())
    } else {
        Err(ClientsError::InvalidArgument {
            name: "clip bound",
            message: format!("{clip} is not a positive finite number"),
        })
    }
}

/// Errors naming `what` unless every value of `tensor` is finite.
pub(crate) fn ensure_finite(tensor: &Tensor, what: &'static str) -> Result<()> {
    let all_finite = bool::try_from(tensor.f_isfinite()?.f_all()?)?;
    if all_finite {
        Ok(())
    } else {
        Err(ClientsError::NonFinite { what })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// `rows` random unit vectors of length `dim` (f64, for the direct computation).
    fn random_unit_rows(rng: &mut ChaCha8Rng, rows: usize, dim: usize) -> Vec<Vec<f64>> {
        (0..rows)
            .map(|_| {
                let v: Vec<f64> = (0..dim).map(|_| rng.gen_range(-1.0..1.0)).collect();
                let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
                v.into_iter().map(|x| x / norm).collect()
            })
            .collect()
    }

    fn tensor_of(rows: &[Vec<f64>]) -> Tensor {
        let flat: Vec<f32> = rows.iter().flatten().map(|&x| x as f32).collect();
        Tensor::from_slice(&flat).view([rows.len() as i64, rows[0].len() as i64])
    }

    /// The POPri client score written out: cosines summed in f64, standardised, clipped.
    fn direct_scores(candidates: &[Vec<f64>], texts: &[Vec<f64>], clip: f64) -> Vec<f64> {
        let cosine = |a: &[f64], b: &[f64]| {
            let dot: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
            let norm = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
            dot / (norm(a) * norm(b))
        };
        let raw: Vec<f64> = candidates
            .iter()
            .map(|e| texts.iter().map(|x| cosine(e, x)).sum())
            .collect();
        let n = raw.len() as f64;
        let mean = raw.iter().sum::<f64>() / n;
        let std = (raw.iter().map(|s| (s - mean).powi(2)).sum::<f64>() / n).sqrt();
        let z: Vec<f64> = raw.iter().map(|s| (s - mean) / std).collect();
        let norm = z.iter().map(|x| x * x).sum::<f64>().sqrt();
        let scale = if norm > clip { clip / norm } else { 1.0 };
        z.into_iter().map(|x| x * scale).collect()
    }

    fn sum_rows(rows: &[Vec<f64>]) -> Tensor {
        let dim = rows[0].len();
        let sum: Vec<f32> = (0..dim)
            .map(|c| rows.iter().map(|r| r[c]).sum::<f64>() as f32)
            .collect();
        Tensor::from_slice(&sum)
    }

    #[test]
    fn scores_match_a_direct_cosine_computation() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let candidates = random_unit_rows(&mut rng, 60, 16);
        let texts = random_unit_rows(&mut rng, 5, 16);
        for clip in [1.0, 100.0] {
            let scores =
                client_score_vector(&tensor_of(&candidates), &sum_rows(&texts), clip).unwrap();
            let expected = direct_scores(&candidates, &texts, clip);
            for (got, want) in scores.values.iter().zip(&expected) {
                assert!((f64::from(*got) - want).abs() < 1e-6, "{got} vs {want}");
            }
            assert!((scores.pre_clip_norm - 60f64.sqrt()).abs() < 1e-9);
            assert_eq!(scores.clipped, clip < 60f64.sqrt());
        }
    }

    #[test]
    fn candidate_rows_are_renormalised_on_the_client() {
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        let candidates = random_unit_rows(&mut rng, 20, 8);
        let texts = random_unit_rows(&mut rng, 3, 8);
        let unit = client_score_vector(&tensor_of(&candidates), &sum_rows(&texts), 1.0).unwrap();
        // Rows scaled by different factors (a server sending non-unit rows) change nothing.
        let scales = Tensor::from_slice(&(1..=20).map(|i| i as f32 * 0.7).collect::<Vec<_>>());
        let stretched = tensor_of(&candidates) * scales.unsqueeze(1);
        let scaled = client_score_vector(&stretched, &sum_rows(&texts), 1.0).unwrap();
        for (a, b) in unit.values.iter().zip(&scaled.values) {
            assert!((a - b).abs() < 1e-5);
        }
    }

    #[test]
    fn clipped_vectors_respect_the_bound() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let candidates = tensor_of(&random_unit_rows(&mut rng, 500, 32));
        for clip in [0.01, 1.0, 7.5] {
            let texts = random_unit_rows(&mut rng, 4, 32);
            let scores = client_score_vector(&candidates, &sum_rows(&texts), clip).unwrap();
            let norm = scores
                .values
                .iter()
                .map(|&x| f64::from(x).powi(2))
                .sum::<f64>()
                .sqrt();
            assert!(norm <= clip, "norm {norm} > clip {clip}");
            assert!(norm > clip * (1.0 - 1e-6), "norm {norm}, clip {clip}");
        }
    }

    #[test]
    fn equal_scores_give_the_zero_vector() {
        let mut rng = ChaCha8Rng::seed_from_u64(4);
        let candidates = tensor_of(&random_unit_rows(&mut rng, 10, 6));
        // A zero embedding sum: every score is 0.
        let zeros =
            client_score_vector(&candidates, &Tensor::zeros([6], tch::kind::FLOAT_CPU), 1.0)
                .unwrap();
        assert_eq!(zeros.values, vec![0.0; 10]);
        assert_eq!((zeros.pre_clip_norm, zeros.clipped), (0.0, false));
        // Identical candidates: every score is the same non-zero value.
        let row = random_unit_rows(&mut rng, 1, 6);
        let same = tensor_of(&vec![row[0].clone(); 10]);
        let texts = random_unit_rows(&mut rng, 2, 6);
        let scores = client_score_vector(&same, &sum_rows(&texts), 1.0).unwrap();
        assert_eq!(scores.values, vec![0.0; 10]);
    }

    #[test]
    fn non_finite_inputs_and_bad_arguments_are_errors() {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let rows = random_unit_rows(&mut rng, 4, 3);
        let sum = sum_rows(&rows[..2]);
        let mut with_nan = rows.clone();
        with_nan[1][2] = f64::NAN;
        let err = client_score_vector(&tensor_of(&with_nan), &sum, 1.0).unwrap_err();
        assert!(matches!(err, ClientsError::NonFinite { .. }), "{err}");
        let inf_sum = Tensor::from_slice(&[1.0f32, f32::INFINITY, 0.0]);
        let err = client_score_vector(&tensor_of(&rows), &inf_sum, 1.0).unwrap_err();
        assert!(matches!(err, ClientsError::NonFinite { .. }), "{err}");
        for clip in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            let err = client_score_vector(&tensor_of(&rows), &sum, clip).unwrap_err();
            assert!(err.to_string().contains("clip bound"), "{err}");
        }
        let err = client_score_vector(
            &tensor_of(&rows),
            &Tensor::zeros([4], tch::kind::FLOAT_CPU),
            1.0,
        )
        .unwrap_err();
        assert!(err.to_string().contains("3 columns"), "{err}");
    }

    #[test]
    fn a_row_over_the_bound_is_a_bug_not_bad_input() {
        let rows = Tensor::from_slice(&[0.6f32, 0.8, 0.0, 3.0, 4.0, 0.0]).view([2, 3]);
        ensure_rows_within(&rows, 5.0 + 1e-6, "rows").unwrap();
        let err = ensure_rows_within(&rows, 4.9, "rows").unwrap_err();
        assert!(
            matches!(err, ClientsError::SensitivityViolated { norm, bound, .. }
                if (norm - 5.0).abs() < 1e-6 && bound == 4.9),
            "{err}"
        );
        assert!(!err.is_bad_input(), "a broken bound exits 1, not 2: {err}");
        assert!(err.to_string().contains("not sent"), "{err}");
        let nan = Tensor::from_slice(&[f32::NAN, 0.0]).view([1, 2]);
        assert!(
            ensure_rows_within(&nan, 1.0, "rows").is_err(),
            "NaN fails closed"
        );
    }
}
