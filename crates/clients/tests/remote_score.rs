//! The plain-Rust POPri score of `fedsyn client` (`protocol::score_candidates`) against
//! the libtorch one of the simulation (`clients::client_score_vector`): the same vectors.

use clients::client_score_vector;
use protocol::{score_candidates, CandidateMatrix};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tch::Tensor;

#[test]
fn the_remote_client_scores_as_the_libtorch_client_code() {
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    for (rows, dim, clip) in [(60, 16, 1.0), (9, 384, 100.0), (500, 32, 3.0), (2, 3, 0.5)] {
        let candidates = CandidateMatrix {
            round: 0,
            clip,
            rows,
            dim,
            values: (0..rows * dim).map(|_| rng.gen_range(-1.0..1.0)).collect(),
        };
        let sum: Vec<f32> = (0..dim).map(|_| rng.gen_range(-3.0..3.0)).collect();
        let ours = score_candidates(&candidates, &sum, clip).unwrap();
        let tensor = Tensor::from_slice(&candidates.values).view([rows as i64, dim as i64]);
        let reference = client_score_vector(&tensor, &Tensor::from_slice(&sum), clip)
            .unwrap()
            .values;
        assert_eq!(ours.len(), rows);
        for (a, b) in ours.iter().zip(&reference) {
            assert!((a - b).abs() <= 1e-6, "{rows}×{dim}: {a} vs {b}");
        }
        let norm = ours
            .iter()
            .map(|&v| f64::from(v).powi(2))
            .sum::<f64>()
            .sqrt();
        assert!(norm <= clip, "{norm} > {clip}");
    }
    // Equal candidates: both send zeros.
    let equal = CandidateMatrix {
        round: 0,
        clip: 1.0,
        rows: 4,
        dim: 3,
        values: [0.3f32, -0.2, 0.9].repeat(4),
    };
    let sum = [1.0f32, 0.5, -0.25];
    let tensor = Tensor::from_slice(&equal.values).view([4, 3]);
    assert_eq!(score_candidates(&equal, &sum, 1.0).unwrap(), vec![0.0; 4]);
    let reference = client_score_vector(&tensor, &Tensor::from_slice(&sum), 1.0).unwrap();
    assert_eq!(reference.values, vec![0.0; 4]);
}
