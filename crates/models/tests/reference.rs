//! Compares the dequantisers with the `gguf` Python package (llama.cpp's reader), through
//! `tests/fixtures/gguf_reference.json` written by `scripts/reference/gguf_tensors.py`.

mod common;

use models::gguf::{dequantize_bytes, GgufFile};
use models::GgmlType;
use serde::Deserialize;

const TOLERANCE: f32 = 1e-6;

#[derive(Deserialize)]
struct Reference {
    model: ModelReference,
    synthetic: Vec<SyntheticBlocks>,
}

#[derive(Deserialize)]
struct ModelReference {
    file: String,
    tensors: Vec<TensorReference>,
}

#[derive(Deserialize)]
struct TensorReference {
    name: String,
    #[serde(rename = "type")]
    ggml_type: String,
    dims: Vec<u64>,
    shape: Vec<usize>,
    first_values: Vec<f32>,
}

#[derive(Deserialize)]
struct SyntheticBlocks {
    #[serde(rename = "type")]
    ggml_type: String,
    n_values: usize,
    bytes_hex: String,
    values: Vec<f32>,
}

fn reference() -> Reference {
    let text = include_str!("fixtures/gguf_reference.json");
    serde_json::from_str(text).expect("the fixture parses")
}

fn type_named(name: &str) -> GgmlType {
    (0..64)
        .filter_map(GgmlType::from_id)
        .find(|t| t.name() == name)
        .unwrap_or_else(|| panic!("unknown type {name} in the fixture"))
}

fn hex_bytes(hex: &str) -> Vec<u8> {
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex digits"))
        .collect()
}

fn assert_close(ours: &[f32], theirs: &[f32], what: &str) {
    assert_eq!(ours.len(), theirs.len(), "{what}: value count");
    for (i, (a, b)) in ours.iter().zip(theirs).enumerate() {
        assert!(
            (a - b).abs() <= TOLERANCE,
            "{what}[{i}]: ours {a}, gguf-py {b}"
        );
    }
}

#[test]
fn synthetic_blocks_match_gguf_py_for_every_supported_type() {
    let reference = reference();
    let mut covered: Vec<GgmlType> = Vec::new();
    for case in &reference.synthetic {
        let ggml_type = type_named(&case.ggml_type);
        let bytes = hex_bytes(&case.bytes_hex);
        let ours = dequantize_bytes(&case.ggml_type, ggml_type, &bytes, case.n_values).unwrap();
        assert_close(&ours, &case.values, &case.ggml_type);
        covered.push(ggml_type);
    }
    for t in models::gguf::DEQUANTISABLE {
        assert!(covered.contains(&t), "the fixture has no {t} case");
    }
}

#[test]
fn smollm2_tensors_match_gguf_py() {
    let Some(path) = common::smollm2_gguf() else {
        return;
    };
    let reference = reference();
    let gguf = GgufFile::open(&path).unwrap();
    assert!(
        path.ends_with(&reference.model.file),
        "fixture made from another file"
    );
    assert!(!reference.model.tensors.is_empty());
    for expected in &reference.model.tensors {
        let tensor = gguf.tensor(&expected.name).unwrap();
        assert_eq!(
            tensor.ggml_type.name(),
            expected.ggml_type,
            "{}",
            expected.name
        );
        assert_eq!(tensor.dims, expected.dims, "{}", expected.name);
        assert_eq!(tensor.shape(), expected.shape, "{}", expected.name);
        let values = gguf.dequantize_tensor(tensor).unwrap();
        let n = expected.first_values.len();
        assert_close(&values[..n], &expected.first_values, &expected.name);
    }
}
