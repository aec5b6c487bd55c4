//! fedsyn's FID against scipy: the fixture is written by `scripts/reference/fid.py`
//! (numpy.cov + scipy.linalg.sqrtm of Σa·Σb, the pytorch-fid formula; scipy.linalg.eigh for the
//! singular case).

use serde::Deserialize;
use server::fid::{frechet_distance, mean_distance_sq};

#[derive(Deserialize)]
struct Reference {
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    name: String,
    a: Vec<Vec<f32>>,
    b: Vec<Vec<f32>>,
    fid: f64,
    mean_distance_sq: f64,
}

#[test]
fn frechet_distance_matches_scipy() {
    let text = include_str!("fixtures/fid_reference.json");
    let reference: Reference = serde_json::from_str(text).expect("fixture parses");
    assert_eq!(reference.cases.len(), 4);
    for case in &reference.cases {
        for (what, got, want, tolerance) in [
            (
                "FID vs scipy",
                frechet_distance(&case.a, &case.b).unwrap(),
                case.fid,
                1e-6,
            ),
            // FID is symmetric in its arguments.
            (
                "FID swapped vs scipy",
                frechet_distance(&case.b, &case.a).unwrap(),
                case.fid,
                1e-6,
            ),
            (
                "mean distance",
                mean_distance_sq(&case.a, &case.b).unwrap(),
                case.mean_distance_sq,
                1e-9,
            ),
        ] {
            let relative_error = (got - want).abs() / want.abs();
            assert!(
                relative_error < tolerance,
                "{}: {what} {got} vs {want} ({relative_error:e})",
                case.name
            );
        }
    }
}
