//! The tiny Llama and Qwen2 fixtures as loadable Hugging Face folders, for tests of this crate and of
//! the `fedsyn` binary (included with `#[path]`).
//!
//! `scripts/reference/generator.py` wrote the folder's configuration, tokenizer and
//! `reference.json` but no weights: every weight is a function of its tensor's name and flat
//! index (`synthetic_value`), so `model.safetensors` is written here, once per test process,
//! with exactly the values transformers (and PEFT, in scripts/reference/peft_adapter.py) ran
//! with.

#![allow(dead_code)] // each including test uses some of these

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use models::llama::{ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE};
use tch::Tensor;

/// `crates/models/tests/fixtures/<name>` in the source tree, whichever package's test
/// includes this file.
pub fn fixture_dir(name: &str) -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    ["tests/fixtures", "../models/tests/fixtures"]
        .iter()
        .map(|fixtures| manifest.join(fixtures).join(name))
        .find(|dir| dir.is_dir())
        .unwrap_or_else(|| panic!("no fixture folder {name}"))
}

/// A temporary copy of the tiny Llama folder with its weights written (made once per process).
pub fn tiny_llama_dir() -> PathBuf {
    tiny_model_dir("tiny-llama")
}

/// A temporary copy of tiny fixture `name` (`tiny-llama`, `tiny-qwen2`) with its weights
/// written, made once per process and name.
pub fn tiny_model_dir(name: &str) -> PathBuf {
    static DIRS: OnceLock<Mutex<HashMap<String, PathBuf>>> = OnceLock::new();
    let mut dirs = DIRS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    dirs.entry(name.to_string())
        .or_insert_with(|| materialise(name))
        .clone()
}

/// Copies fixture `name` into a fresh folder and writes its synthetic weights there.
fn materialise(name: &str) -> PathBuf {
    let source = fixture_dir(name);
    let dir = std::env::temp_dir().join(format!("fedsyn-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    for entry in std::fs::read_dir(&source).expect("fixture readable") {
        let path = entry.expect("fixture entry").path();
        std::fs::copy(&path, dir.join(path.file_name().expect("file name"))).expect("copy");
    }
    let reference: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(source.join("reference.json")).expect("reference.json"),
    )
    .expect("reference.json parses");
    let weights: Vec<(String, Tensor)> = tensor_specs(&reference["tensors"])
        .into_iter()
        .map(|(name, shape)| {
            let tensor = synthetic_tensor(&name, &shape);
            (name, tensor)
        })
        .collect();
    Tensor::write_safetensors(&weights, dir.join("model.safetensors")).expect("weights written");
    dir
}

/// PEFT's adapter fixture `peft-tiny-llama` as a loadable folder: PEFT's own
/// `adapter_config.json` and the weights PEFT saved, rewritten from their names and shapes
/// (`adapter_tensors` in its reference.json: each value is `adapter_scale` times
/// `synthetic_value`, as scripts/reference/peft_adapter.py set them). Made once per process.
pub fn peft_adapter_dir() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let source = fixture_dir("peft-tiny-llama");
        let reference: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(source.join("reference.json")).expect("reference.json"),
        )
        .expect("reference.json parses");
        let scale = reference["adapter_scale"].as_f64().expect("adapter_scale");
        let tensors: Vec<(String, Tensor)> = tensor_specs(&reference["adapter_tensors"])
            .into_iter()
            .map(|(name, shape)| {
                let tensor = scaled_synthetic_tensor(&name, &shape, scale);
                (name, tensor)
            })
            .collect();
        write_adapter_dir("peft-tiny-llama", &source, &tensors)
    })
    .clone()
}

/// A temporary folder `label` with the `adapter_config.json` of fixture folder `config_source`
/// and `tensors` as `adapter_model.safetensors`.
pub fn write_adapter_dir(
    label: &str,
    config_source: &Path,
    tensors: &[(String, Tensor)],
) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("fedsyn-{label}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    std::fs::copy(
        config_source.join(ADAPTER_CONFIG_FILE),
        dir.join(ADAPTER_CONFIG_FILE),
    )
    .expect("adapter config copied");
    Tensor::write_safetensors(tensors, dir.join(ADAPTER_WEIGHTS_FILE)).expect("adapter written");
    dir
}

/// `(name, shape)` of every entry of a JSON list of `{"name", "shape"}`.
fn tensor_specs(specs: &serde_json::Value) -> Vec<(String, Vec<i64>)> {
    specs
        .as_array()
        .expect("tensors listed")
        .iter()
        .map(|spec| {
            let name = spec["name"].as_str().expect("name").to_string();
            let shape = spec["shape"]
                .as_array()
                .expect("shape")
                .iter()
                .map(|d| d.as_i64().expect("dimension"))
                .collect();
            (name, shape)
        })
        .collect()
}

/// Tensor `name` of shape `shape` as `synthetic_value` in scripts/reference/generator.py
/// defines it.
fn synthetic_tensor(name: &str, shape: &[i64]) -> Tensor {
    scaled_synthetic_tensor(name, shape, 1.0)
}

/// `scale · synthetic_value` for every index, computed in f64 and rounded once to f32, as the
/// reference scripts do.
fn scaled_synthetic_tensor(name: &str, shape: &[i64], scale: f64) -> Tensor {
    let hash = fnv1a64(name);
    let count: i64 = shape.iter().product();
    let values: Vec<f32> = (0..count as u64)
        .map(|index| (scale * synthetic_value(name, index, hash)) as f32)
        .collect();
    Tensor::from_slice(&values).view(shape)
}

pub fn fnv1a64(text: &str) -> u64 {
    text.bytes().fold(0xCBF2_9CE4_8422_2325, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01B3)
    })
}

fn splitmix64(value: u64) -> u64 {
    let mut z = value.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Uniform in [-1, 1) on a 2^-23 grid from a tensor name's hash and a flat index (`unit` in
/// the reference scripts).
pub fn hash_unit(name_hash: u64, index: u64) -> f64 {
    ((splitmix64(name_hash ^ index) >> 40) as f64 - (1u64 << 23) as f64) / (1u64 << 23) as f64
}

/// Uniform in [-1, 1) on a 2^-23 grid, scaled by the kind of tensor (in f64).
fn synthetic_value(name: &str, index: u64, name_hash: u64) -> f64 {
    let unit = hash_unit(name_hash, index);
    if name.ends_with("norm.weight") {
        1.0 + 0.125 * unit
    } else if name.ends_with(".bias") {
        0.125 * unit
    } else {
        0.375 * unit
    }
}
