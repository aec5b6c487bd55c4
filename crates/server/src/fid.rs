//! Fréchet distance between two sets of embeddings (FID on sentence embeddings, as POPri
//! reports per round), in f64.
//!
//! FID = ‖μa − μb‖² + tr(Σa + Σb − 2 (Σa^½ Σb Σa^½)^½), with unbiased covariances (as
//! `numpy.cov`). The matrix square roots come from symmetric eigendecompositions (Householder
//! tridiagonalisation, then implicit QL with Wilkinson-type shifts), and tiny negative
//! eigenvalues from rounding are clamped to 0. This equals the usual
//! `tr(sqrtm(Σa Σb))` form, since Σa Σb is similar to Σa^½ Σb Σa^½, but needs no complex Schur
//! decomposition. Both sets read private data when one is the private eval set: the result is a
//! non-private diagnostic.

use crate::distribution::check_features;
use crate::error::{Result, ServerError};

/// The Fréchet distance between Gaussians fitted to the rows of `a` and of `b` (≥ 2 rows each,
/// all of one dimension).
pub fn frechet_distance(a: &[Vec<f32>], b: &[Vec<f32>]) -> Result<f64> {
    let dim = check_features(&[("a", a), ("b", b)], 2)?;
    let (mean_a, cov_a) = mean_and_covariance(a, dim);
    let (mean_b, cov_b) = mean_and_covariance(b, dim);
    let sqrt_a = symmetric_sqrt(&cov_a, dim)?;
    let product = multiply(&multiply(&sqrt_a, &cov_b, dim), &sqrt_a, dim);
    let cross = symmetric_eigenvalues(product, dim)?
        .into_iter()
        .map(|value| value.max(0.0).sqrt())
        .sum::<f64>();
    let trace = |m: &[f64]| (0..dim).map(|i| m[i * dim + i]).sum::<f64>();
    let fid = squared_distance(&mean_a, &mean_b) + trace(&cov_a) + trace(&cov_b) - 2.0 * cross;
    // Rounding can leave a tiny negative value for (nearly) identical sets.
    Ok(fid.max(0.0))
}

/// ‖mean(a) − mean(b)‖², the cheaper companion diagnostic (≥ 1 row each).
pub fn mean_distance_sq(a: &[Vec<f32>], b: &[Vec<f32>]) -> Result<f64> {
    let dim = check_features(&[("a", a), ("b", b)], 1)?;
    Ok(squared_distance(&mean(a, dim), &mean(b, dim)))
}

fn mean(rows: &[Vec<f32>], dim: usize) -> Vec<f64> {
    let mut sum = vec![0.0; dim];
    for row in rows {
        for (s, &v) in sum.iter_mut().zip(row) {
            *s += f64::from(v);
        }
    }
    let n = rows.len() as f64;
    sum.iter_mut().for_each(|s| *s /= n);
    sum
}

/// The mean and the unbiased (n − 1) covariance, row-major `dim × dim`.
fn mean_and_covariance(rows: &[Vec<f32>], dim: usize) -> (Vec<f64>, Vec<f64>) {
    let mean = mean(rows, dim);
    let mut cov = vec![0.0; dim * dim];
    let mut centred = vec![0.0; dim];
    for row in rows {
        for ((c, &v), m) in centred.iter_mut().zip(row).zip(&mean) {
            *c = f64::from(v) - m;
        }
        // Upper triangle only; mirrored below.
        for i in 0..dim {
            let ci = centred[i];
            let out = &mut cov[i * dim..(i + 1) * dim];
            for j in i..dim {
                out[j] += ci * centred[j];
            }
        }
    }
    let scale = 1.0 / (rows.len() as f64 - 1.0);
    for i in 0..dim {
        for j in i..dim {
            let value = cov[i * dim + j] * scale;
            cov[i * dim + j] = value;
            cov[j * dim + i] = value;
        }
    }
    (mean, cov)
}

fn squared_distance(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum()
}

/// Row-major `dim × dim` product.
fn multiply(a: &[f64], b: &[f64], dim: usize) -> Vec<f64> {
    let mut out = vec![0.0; dim * dim];
    for i in 0..dim {
        let row = &mut out[i * dim..(i + 1) * dim];
        for k in 0..dim {
            let aik = a[i * dim + k];
            if aik == 0.0 {
                continue;
            }
            for (o, &bkj) in row.iter_mut().zip(&b[k * dim..(k + 1) * dim]) {
                *o += aik * bkj;
            }
        }
    }
    out
}

/// The principal square root of a symmetric positive semi-definite matrix.
fn symmetric_sqrt(matrix: &[f64], dim: usize) -> Result<Vec<f64>> {
    let (values, vectors) = symmetric_eigen(matrix.to_vec(), dim, true)?;
    let vectors = vectors.expect("vectors were requested");
    let roots: Vec<f64> = values.iter().map(|v| v.max(0.0).sqrt()).collect();
    // V diag(√λ) Vᵀ; vectors[i * dim + k] is component i of eigenvector k.
    let mut out = vec![0.0; dim * dim];
    for i in 0..dim {
        for j in i..dim {
            let value: f64 = (0..dim)
                .map(|k| vectors[i * dim + k] * roots[k] * vectors[j * dim + k])
                .sum();
            out[i * dim + j] = value;
            out[j * dim + i] = value;
        }
    }
    Ok(out)
}

fn symmetric_eigenvalues(matrix: Vec<f64>, dim: usize) -> Result<Vec<f64>> {
    Ok(symmetric_eigen(matrix, dim, false)?.0)
}

/// Eigenvalues (and, when asked, eigenvectors as the columns of a row-major matrix) of the
/// symmetric row-major `dim × dim` matrix.
fn symmetric_eigen(
    mut matrix: Vec<f64>,
    dim: usize,
    with_vectors: bool,
) -> Result<(Vec<f64>, Option<Vec<f64>>)> {
    let (diagonal, off_diagonal, mut basis) = tridiagonalise(&mut matrix, dim, with_vectors);
    let values = tridiagonal_ql(diagonal, off_diagonal, basis.as_deref_mut(), dim)?;
    Ok((values, basis))
}

/// Householder reduction of a symmetric matrix to tridiagonal form T = Qᵀ A Q. Returns the
/// diagonal, the sub-diagonal (`off[i]` = T[i+1][i], `off[dim-1]` = 0) and, when asked, Q
/// (row-major). `matrix` is overwritten.
fn tridiagonalise(
    matrix: &mut [f64],
    dim: usize,
    with_q: bool,
) -> (Vec<f64>, Vec<f64>, Option<Vec<f64>>) {
    let mut reflectors: Vec<(usize, f64, Vec<f64>)> = Vec::new();
    let mut off = vec![0.0; dim];
    for k in 0..dim.saturating_sub(2) {
        // x = column k below the diagonal; reflect it onto ±‖x‖ e₁.
        let x: Vec<f64> = (k + 1..dim).map(|i| matrix[i * dim + k]).collect();
        let norm = x.iter().map(|v| v * v).sum::<f64>().sqrt();
        if norm == 0.0 {
            off[k] = 0.0;
            continue;
        }
        let alpha = if x[0] > 0.0 { -norm } else { norm };
        let mut v = x;
        v[0] -= alpha;
        let v_norm_sq: f64 = v.iter().map(|e| e * e).sum();
        off[k] = alpha;
        if v_norm_sq == 0.0 {
            continue;
        }
        let beta = 2.0 / v_norm_sq;
        // B ← H B H with H = I − β v vᵀ on the trailing block B = A[k+1.., k+1..]:
        // p = β B v, w = p − (β pᵀv / 2) v, B ← B − v wᵀ − w vᵀ.
        let start = k + 1;
        let m = dim - start;
        let mut p = vec![0.0; m];
        for (i, pi) in p.iter_mut().enumerate() {
            let row = &matrix[(start + i) * dim + start..(start + i) * dim + dim];
            *pi = beta * row.iter().zip(&v).map(|(a, b)| a * b).sum::<f64>();
        }
        let half = 0.5 * beta * p.iter().zip(&v).map(|(a, b)| a * b).sum::<f64>();
        let w: Vec<f64> = p.iter().zip(&v).map(|(pi, vi)| pi - half * vi).collect();
        for i in 0..m {
            let row = &mut matrix[(start + i) * dim + start..(start + i) * dim + dim];
            for (j, entry) in row.iter_mut().enumerate() {
                *entry -= v[i] * w[j] + w[i] * v[j];
            }
        }
        if with_q {
            reflectors.push((start, beta, v));
        }
    }
    if dim >= 2 {
        off[dim - 2] = matrix[(dim - 1) * dim + dim - 2];
    }
    let diagonal = (0..dim).map(|i| matrix[i * dim + i]).collect();
    let q = with_q.then(|| {
        // Q = H₀ H₁ … : apply the reflectors to the identity from the last one back.
        let mut q = vec![0.0; dim * dim];
        (0..dim).for_each(|i| q[i * dim + i] = 1.0);
        for (start, beta, v) in reflectors.iter().rev() {
            for j in 0..dim {
                let dot: f64 = v
                    .iter()
                    .enumerate()
                    .map(|(i, vi)| vi * q[(start + i) * dim + j])
                    .sum();
                let scale = beta * dot;
                for (i, vi) in v.iter().enumerate() {
                    q[(start + i) * dim + j] -= scale * vi;
                }
            }
        }
        q
    });
    (diagonal, off, q)
}

/// Eigenvalues of the symmetric tridiagonal matrix (`diagonal`, `off`) by the implicit QL
/// algorithm with shifts; when `vectors` holds the tridiagonalising Q, it is turned into the
/// eigenvectors (columns) of the original matrix.
fn tridiagonal_ql(
    mut diagonal: Vec<f64>,
    mut off: Vec<f64>,
    mut vectors: Option<&mut [f64]>,
    dim: usize,
) -> Result<Vec<f64>> {
    const MAX_ITERATIONS: usize = 60;
    // Off-diagonal elements below ε·‖T‖ are dropped: that perturbs every eigenvalue by at most
    // about ε·‖T‖, the accuracy of any backward-stable method. A purely local test
    // (ε·(|d_m| + |d_m+1|)) never deflates a cluster of zero eigenvalues, which singular
    // covariances (fewer rows than dimensions) have.
    let norm = diagonal
        .iter()
        .zip(&off)
        .map(|(d, e)| d.abs() + e.abs())
        .fold(0.0, f64::max);
    let negligible = f64::EPSILON * norm;
    for l in 0..dim {
        let mut iterations = 0;
        loop {
            // The first negligible off-diagonal element at or after l splits the matrix.
            let mut m = l;
            while m + 1 < dim {
                let scale = diagonal[m].abs() + diagonal[m + 1].abs();
                if off[m].abs() <= f64::EPSILON * scale || off[m].abs() <= negligible {
                    break;
                }
                m += 1;
            }
            if m == l {
                break;
            }
            iterations += 1;
            if iterations > MAX_ITERATIONS {
                return Err(ServerError::argument(
                    "covariance",
                    format!("eigenvalue {l} of {dim}"),
                    "the eigen-solver did not converge (the embeddings may hold extreme values)",
                ));
            }
            // Shift from the leading 2×2 block of the unreduced part.
            let g = (diagonal[l + 1] - diagonal[l]) / (2.0 * off[l]);
            let r = g.hypot(1.0);
            let mut g = diagonal[m] - diagonal[l] + off[l] / (g + r.copysign(g));
            let (mut s, mut c, mut p) = (1.0, 1.0, 0.0);
            let mut underflow = false;
            for i in (l..m).rev() {
                let f = s * off[i];
                let b = c * off[i];
                let r = f.hypot(g);
                off[i + 1] = r;
                if r == 0.0 {
                    // Deflate: the rotation chain met an exact zero.
                    diagonal[i + 1] -= p;
                    off[m] = 0.0;
                    underflow = true;
                    break;
                }
                s = f / r;
                c = g / r;
                g = diagonal[i + 1] - p;
                let r = (diagonal[i] - g) * s + 2.0 * c * b;
                p = s * r;
                diagonal[i + 1] = g + p;
                g = c * r - b;
                if let Some(v) = vectors.as_deref_mut() {
                    for k in 0..dim {
                        let row = &mut v[k * dim..(k + 1) * dim];
                        let f = row[i + 1];
                        row[i + 1] = s * row[i] + c * f;
                        row[i] = c * row[i] - s * f;
                    }
                }
            }
            if underflow {
                continue;
            }
            diagonal[l] -= p;
            off[l] = g;
            off[m] = 0.0;
        }
    }
    Ok(diagonal)
}

#[cfg(test)]
mod tests {
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha20Rng;

    use super::*;

    fn random_rows(rng: &mut ChaCha20Rng, n: usize, dim: usize, shift: f32) -> Vec<Vec<f32>> {
        (0..n)
            .map(|_| (0..dim).map(|_| rng.gen::<f32>() + shift).collect())
            .collect()
    }

    #[test]
    fn eigendecomposition_reconstructs_the_matrix() {
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        for dim in [1, 2, 3, 7, 40] {
            let mut a = vec![0.0; dim * dim];
            for i in 0..dim {
                for j in 0..=i {
                    let v: f64 = rng.gen_range(-1.0..1.0);
                    a[i * dim + j] = v;
                    a[j * dim + i] = v;
                }
            }
            let (values, vectors) = symmetric_eigen(a.clone(), dim, true).unwrap();
            let v = vectors.unwrap();
            for i in 0..dim {
                for j in 0..dim {
                    let rebuilt: f64 = (0..dim)
                        .map(|k| v[i * dim + k] * values[k] * v[j * dim + k])
                        .sum();
                    assert!((rebuilt - a[i * dim + j]).abs() < 1e-12, "dim {dim}");
                    let gram: f64 = (0..dim).map(|k| v[k * dim + i] * v[k * dim + j]).sum();
                    let identity = if i == j { 1.0 } else { 0.0 };
                    assert!((gram - identity).abs() < 1e-12, "dim {dim}");
                }
            }
            let mut only = symmetric_eigenvalues(a, dim).unwrap();
            let mut with = values;
            only.sort_by(f64::total_cmp);
            with.sort_by(f64::total_cmp);
            assert!(only.iter().zip(&with).all(|(x, y)| (x - y).abs() < 1e-12));
        }
    }

    #[test]
    fn degenerate_matrices_decompose() {
        // Zero, identity and a rank-1 matrix (repeated eigenvalues, exact zeros).
        let zero = symmetric_eigenvalues(vec![0.0; 9], 3).unwrap();
        assert_eq!(zero, vec![0.0; 3]);
        let mut identity = vec![0.0; 16];
        (0..4).for_each(|i| identity[i * 4 + i] = 1.0);
        let values = symmetric_eigenvalues(identity, 4).unwrap();
        assert!(values.iter().all(|v| (v - 1.0).abs() < 1e-15));
        let u = [1.0, 2.0, 3.0];
        let rank_one: Vec<f64> = (0..9).map(|k| u[k / 3] * u[k % 3]).collect();
        let mut values = symmetric_eigenvalues(rank_one, 3).unwrap();
        values.sort_by(f64::total_cmp);
        assert!(values[0].abs() < 1e-12 && values[1].abs() < 1e-12);
        assert!((values[2] - 14.0).abs() < 1e-12);
    }

    #[test]
    fn identical_sets_are_at_distance_zero_and_shifts_add_their_square() {
        let mut rng = ChaCha20Rng::seed_from_u64(2);
        let a = random_rows(&mut rng, 50, 8, 0.0);
        assert!(frechet_distance(&a, &a).unwrap() < 1e-9);
        // Shifting every row by δ in each of 8 coordinates moves only the mean: FID = 8 δ².
        let shifted: Vec<Vec<f32>> = a
            .iter()
            .map(|r| r.iter().map(|v| v + 0.5).collect())
            .collect();
        let fid = frechet_distance(&a, &shifted).unwrap();
        assert!((fid - 2.0).abs() < 1e-5, "{fid}");
        assert!((mean_distance_sq(&a, &shifted).unwrap() - 2.0).abs() < 1e-5);
    }

    #[test]
    fn fewer_rows_than_dimensions_still_work() {
        // Singular covariances (n < d), as with few prompts and 384-d embeddings.
        let mut rng = ChaCha20Rng::seed_from_u64(3);
        for (n, m, dim) in [(5, 6, 20), (12, 30, 100)] {
            let a = random_rows(&mut rng, n, dim, 0.0);
            let b = random_rows(&mut rng, m, dim, 0.1);
            let ab = frechet_distance(&a, &b).unwrap();
            let ba = frechet_distance(&b, &a).unwrap();
            assert!(ab.is_finite() && ab > 0.0);
            assert!((ab - ba).abs() < 1e-6 * ab, "{ab} vs {ba}");
        }
    }

    #[test]
    fn bad_sets_are_errors() {
        let one = vec![vec![1.0f32, 2.0]];
        let two = vec![vec![1.0f32, 2.0], vec![0.0, 1.0]];
        assert!(frechet_distance(&one, &two).is_err());
        assert!(mean_distance_sq(&one, &two).is_ok());
        let ragged = vec![vec![1.0f32, 2.0], vec![0.0]];
        assert!(frechet_distance(&two, &ragged).is_err());
        let nan = vec![vec![1.0f32, f32::NAN], vec![0.0, 1.0]];
        assert!(frechet_distance(&two, &nan).is_err());
        let empty_rows = vec![Vec::<f32>::new(), Vec::new()];
        assert!(frechet_distance(&empty_rows, &empty_rows).is_err());
    }
}
