//! The MiniLM sentence embedder against sentence-transformers, through
//! `tests/fixtures/embedder_reference.json` written by `scripts/reference/embedder.py`
//! (fp32 on the CPU on both sides).

mod common;

use models::SentenceEmbedder;
use serde::Deserialize;
use tch::Device;

/// Every embedding must point the same way as sentence-transformers' to this cosine.
const MIN_COSINE: f64 = 0.9999;
/// Both sides compute in fp32 with the same kernels, so components agree to rounding (the
/// fixture keeps 7 significant digits); a slightly different function (e.g. GELU's tanh
/// approximation, cosine ≈ 0.99999) already breaks this.
const MAX_COMPONENT_DIFFERENCE: f32 = 1e-5;

#[derive(Deserialize)]
struct Reference {
    max_seq_length: usize,
    texts: Vec<String>,
    token_counts: Vec<usize>,
    embeddings: Vec<Vec<f32>>,
}

fn reference() -> Reference {
    let text = include_str!("fixtures/embedder_reference.json");
    serde_json::from_str(text).expect("the fixture parses")
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| f64::from(*x) * f64::from(*y))
        .sum();
    let norm = |v: &[f32]| v.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    dot / (norm(a) * norm(b))
}

fn largest_difference(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn norm(v: &[f32]) -> f64 {
    v.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt()
}

#[test]
fn embeddings_match_sentence_transformers() {
    let Some(dir) = common::minilm_dir() else {
        return;
    };
    let embedder = SentenceEmbedder::load(&dir, Device::Cpu).unwrap();
    let reference = reference();
    assert_eq!(embedder.dim(), 384);
    assert_eq!(embedder.max_seq_length(), reference.max_seq_length);
    assert_eq!(
        embedder.token_counts(&reference.texts).unwrap(),
        reference.token_counts,
        "token counts after truncation"
    );

    // Batches of 4 mix lengths and padding; order must still be the input order.
    let ours = embedder.embed(&reference.texts, 4).unwrap();
    assert_eq!(ours.len(), reference.texts.len());
    let mut lowest = f64::INFINITY;
    let mut largest_gap = 0.0f32;
    for ((text, mine), theirs) in reference.texts.iter().zip(&ours).zip(&reference.embeddings) {
        assert_eq!(mine.len(), 384, "{text:?}");
        assert!((norm(mine) - 1.0).abs() < 1e-5, "norm of {text:?}");
        let similarity = cosine(mine, theirs);
        assert!(
            similarity >= MIN_COSINE,
            "{text:?}: cosine {similarity} with sentence-transformers"
        );
        lowest = lowest.min(similarity);
        let gap = largest_difference(mine, theirs);
        assert!(
            gap <= MAX_COMPONENT_DIFFERENCE,
            "{text:?}: a component differs by {gap} from sentence-transformers"
        );
        largest_gap = largest_gap.max(gap);
    }
    eprintln!(
        "against sentence-transformers: lowest cosine {lowest:.9}, largest component \
         difference {largest_gap:.2e}"
    );
}

#[test]
fn batching_and_padding_do_not_change_embeddings() {
    let Some(dir) = common::minilm_dir() else {
        return;
    };
    let embedder = SentenceEmbedder::load(&dir, Device::Cpu).unwrap();
    let texts = reference().texts;
    let one_at_a_time = embedder.embed(&texts, 1).unwrap();
    let all_at_once = embedder.embed(&texts, texts.len()).unwrap();
    for ((text, alone), together) in texts.iter().zip(&one_at_a_time).zip(&all_at_once) {
        let largest_gap = alone
            .iter()
            .zip(together)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(largest_gap < 1e-5, "{text:?}: differs by {largest_gap}");
    }
    // Texts equal up to the truncation point embed alike (fixture texts 27 and 28).
    assert!(texts[27][..500] == texts[28][..500] && texts[27] != texts[28]);
    assert!(cosine(&all_at_once[27], &all_at_once[28]) > 0.999_999);
    // Distinct texts do not.
    assert!(cosine(&all_at_once[6], &all_at_once[9]) < 0.9);
}

#[test]
fn a_zero_batch_size_is_refused_and_no_texts_give_no_rows() {
    let Some(dir) = common::minilm_dir() else {
        return;
    };
    let embedder = SentenceEmbedder::load(&dir, Device::Cpu).unwrap();
    let err = embedder.embed(&["text"], 0).unwrap_err().to_string();
    assert!(err.contains("batch size"), "{err}");
    let none: [&str; 0] = [];
    assert!(embedder.embed(&none, 8).unwrap().is_empty());
}
