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

fn relative_error(got: f64, want: f64) -> f64 {
    (got - want).abs() / want.abs()
}

#[test]
fn frechet_distance_matches_scipy() {
    let text = include_str!("fixtures/fid_reference.json");
    let reference: Reference = serde_json::from_str(text).expect("fixture parses");
    assert_eq!(reference.cases.len(), 4);
    for case in &reference.cases {
        let fid = frechet_distance(&case.a, &case.b).unwrap();
        let error = relative_error(fid, case.fid);
        assert!(
            error < 1e-6,
            "{}: {fid} vs scipy {} ({error:e})",
            case.name,
            case.fid
        );
        // FID is symmetric in its arguments.
        let swapped = frechet_distance(&case.b, &case.a).unwrap();
        assert!(
            relative_error(swapped, case.fid) < 1e-6,
            "{}: swapped {swapped}",
            case.name
        );
        let mean = mean_distance_sq(&case.a, &case.b).unwrap();
        let error = relative_error(mean, case.mean_distance_sq);
        assert!(
            error < 1e-9,
            "{}: {mean} vs {} ({error:e})",
            case.name,
            case.mean_distance_sq
        );
    }
}
