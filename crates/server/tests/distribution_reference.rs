//! fedsyn's distribution metrics against the Python references: the fixture is written by
//! `scripts/reference/mauve.py` (MAUVE from the `mauve-text` package over several seeds, k-NN
//! precision/recall by brute force in numpy) on one real set and three synthetic sets (same
//! distribution, shifted, partly overlapping).
//!
//! Precision/recall are exact counts, so they must match exactly. MAUVE goes through k-means,
//! whose local optimum depends on the initial centroids; fedsyn's k-means draws them from
//! another generator than faiss, so single values differ by up to the k-means spread (a
//! standard deviation of up to ~0.06 on the "shifted" case, for both implementations). What must
//! agree is the distribution over seeds: the mean over 40 seeds within [`MEAN_TOLERANCE`] of
//! `mauve-text`'s mean over its 40 seeds (measured: 0.000, 0.012 and 0.006 apart), and a
//! standard deviation within a factor [`SPREAD_FACTOR`] of the package's.

use serde::Deserialize;
use server::distribution::{knn_precision_recall, mauve, MauveOptions};
use std::collections::BTreeMap;

/// Largest allowed |mean of fedsyn over seeds − mean of mauve-text over seeds| (about 3
/// standard errors of the difference on the noisiest case).
const MEAN_TOLERANCE: f64 = 0.03;
/// Largest allowed ratio between the two standard deviations over seeds.
const SPREAD_FACTOR: f64 = 2.0;

#[derive(Deserialize)]
struct Fixture {
    seeds: Vec<u64>,
    real: Vec<Vec<f32>>,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    name: String,
    synthetic: Vec<Vec<f32>>,
    mauve_by_seed: Vec<f64>,
    precision_recall: BTreeMap<String, Reference>,
}

#[derive(Deserialize)]
struct Reference {
    precision: f64,
    recall: f64,
}

fn fixture() -> Fixture {
    serde_json::from_str(include_str!("fixtures/distribution_reference.json"))
        .expect("the fixture is valid JSON (regenerate with scripts/reference/mauve.py)")
}

#[test]
fn precision_recall_match_brute_force_numpy() {
    let fixture = fixture();
    for case in &fixture.cases {
        for (k, reference) in &case.precision_recall {
            let k: usize = k.parse().unwrap();
            let ours = knn_precision_recall(&fixture.real, &case.synthetic, k).unwrap();
            assert_eq!(
                (ours.precision, ours.recall),
                (reference.precision, reference.recall),
                "{} with k = {k}",
                case.name
            );
        }
    }
}

#[test]
fn mauve_agrees_with_mauve_text_within_its_seed_spread() {
    let fixture = fixture();
    for case in &fixture.cases {
        let theirs = &case.mauve_by_seed;
        let ours: Vec<f64> = fixture
            .seeds
            .iter()
            .map(|&seed| {
                let options = MauveOptions {
                    seed,
                    ..MauveOptions::default()
                };
                mauve(&case.synthetic, &fixture.real, &options).unwrap()
            })
            .collect();
        let (our_mean, our_sd) = mean_and_sd(&ours);
        let (their_mean, their_sd) = mean_and_sd(theirs);
        assert!(
            (our_mean - their_mean).abs() <= MEAN_TOLERANCE,
            "{}: mean {our_mean} vs mauve-text {their_mean} (ours {ours:?}, theirs {theirs:?})",
            case.name
        );
        let ratio = our_sd.max(1e-3) / their_sd.max(1e-3);
        assert!(
            (1.0 / SPREAD_FACTOR..=SPREAD_FACTOR).contains(&ratio),
            "{}: standard deviation over seeds {our_sd} vs mauve-text {their_sd}",
            case.name
        );
    }
}

fn mean_and_sd(values: &[f64]) -> (f64, f64) {
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    let variance = values.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n;
    (mean, variance.sqrt())
}

#[test]
fn mauve_orders_the_cases_as_mauve_text() {
    // Same distribution > shifted > partly overlapping, with the default seed.
    let fixture = fixture();
    let options = MauveOptions::default();
    let score = |name: &str| {
        let case = fixture.cases.iter().find(|c| c.name == name).unwrap();
        mauve(&case.synthetic, &fixture.real, &options).unwrap()
    };
    let (same, shifted, overlap) = (score("same"), score("shifted"), score("overlap"));
    assert!(
        same > shifted && shifted > overlap,
        "{same} {shifted} {overlap}"
    );
}
