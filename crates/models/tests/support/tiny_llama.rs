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
    let weights = hashed_tensors(&reference["tensors"], synthetic_value);
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
        let tensors = hashed_tensors(&reference["adapter_tensors"], |name, hash, index| {
            scale * synthetic_value(name, hash, index)
        });
        write_adapter_dir("peft-tiny-llama", &source, &tensors)
    })
    .clone()
}

/// The adapter that scripts/reference/dpo.py defines (`adapter_value`) and the DPO and
/// downstream fixtures were computed with, as folder `label`: fixture `tiny-llama-lora`'s
/// `adapter_config.json` and, for each `{"name", "shape"}` of `specs`, the tensor whose
/// values are 0.25 · [`hash_unit`] of the name's FNV-1a hash and the flat index.
pub fn dpo_adapter_dir(label: &str, specs: &serde_json::Value) -> PathBuf {
    let tensors = hashed_tensors(specs, |_, hash, index| 0.25 * hash_unit(hash, index));
    write_adapter_dir(label, &fixture_dir("tiny-llama-lora"), &tensors)
}

/// A temporary folder `label` with the `adapter_config.json` of fixture folder `config_source`
/// and `tensors` as `adapter_model.safetensors`.
fn write_adapter_dir(label: &str, config_source: &Path, tensors: &[(String, Tensor)]) -> PathBuf {
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

/// For each `{"name", "shape"}` of the JSON list `specs`, the named tensor whose element at
/// flat index i is `value(name, FNV-1a hash of name, i)`, computed in f64 and rounded once to
/// f32, as the reference scripts do.
fn hashed_tensors(
    specs: &serde_json::Value,
    value: impl Fn(&str, u64, u64) -> f64,
) -> Vec<(String, Tensor)> {
    specs
        .as_array()
        .expect("tensors listed")
        .iter()
        .map(|spec| {
            let name = spec["name"].as_str().expect("name").to_string();
            let shape: Vec<i64> = spec["shape"]
                .as_array()
                .expect("shape")
                .iter()
                .map(|d| d.as_i64().expect("dimension"))
                .collect();
            let hash = fnv1a64(&name);
            let count: i64 = shape.iter().product();
            let values: Vec<f32> = (0..count as u64)
                .map(|index| value(&name, hash, index) as f32)
                .collect();
            let tensor = Tensor::from_slice(&values).view(shape.as_slice());
            (name, tensor)
        })
        .collect()
}

fn fnv1a64(text: &str) -> u64 {
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
fn hash_unit(name_hash: u64, index: u64) -> f64 {
    ((splitmix64(name_hash ^ index) >> 40) as f64 - (1u64 << 23) as f64) / (1u64 << 23) as f64
}

/// `synthetic_value` of scripts/reference/generator.py: uniform in [-1, 1) on a 2^-23 grid,
/// scaled by the kind of tensor (in f64).
fn synthetic_value(name: &str, name_hash: u64, index: u64) -> f64 {
    let unit = hash_unit(name_hash, index);
    if name.ends_with("norm.weight") {
        1.0 + 0.125 * unit
    } else if name.ends_with(".bias") {
        0.125 * unit
    } else {
        0.375 * unit
    }
}
