//! LoRA adapters on the tiny Llama: PEFT's own adapter and outputs
//! (scripts/reference/peft_adapter.py wrote fixtures/peft-tiny-llama/), gradients against
//! finite differences, merging, the base model with adapters off, save/load round trips and
//! the errors of bad adapter folders.

#[path = "support/tiny_llama.rs"]
mod tiny_llama;

use std::path::{Path, PathBuf};

use models::llama::{generate_ids, CausalLm, LoraConfig, LoraTarget, SamplingParams};
use models::ModelError;
use serde::Deserialize;
use serde_json::{json, Value};
use tch::{Device, Kind, Tensor};
use tiny_llama::{fixture_dir, peft_adapter_dir, tiny_llama_dir};

/// PEFT's outputs with the fixture adapter (see peft_adapter.py).
#[derive(Deserialize)]
struct PeftReference {
    rows: Vec<Vec<i64>>,
    /// Per row, per real position: the logits.
    logits: Vec<Vec<Vec<f32>>>,
    greedy_ids: Vec<Vec<u32>>,
    max_new_tokens: usize,
    eos_id: u32,
}

fn peft_reference() -> PeftReference {
    let path = fixture_dir("peft-tiny-llama").join("reference.json");
    serde_json::from_str(&std::fs::read_to_string(path).expect("reference exists"))
        .expect("reference parses")
}

fn tiny_model() -> CausalLm {
    CausalLm::from_hf_dir(&tiny_llama_dir(), Device::Cpu).expect("tiny llama loads")
}

/// r 4, α 8 on all seven projections, as the PEFT fixture.
fn small_config() -> LoraConfig {
    LoraConfig {
        rank: 4,
        alpha: 8.0,
        ..LoraConfig::default()
    }
}

/// A model with fresh adapters whose `B`s are set nonzero (deterministic values), so that the
/// adapters change the model.
fn adapted_model(seed: u64) -> CausalLm {
    let mut model = tiny_model();
    model.add_lora(&small_config(), seed).unwrap();
    let _no_grad = tch::no_grad_guard();
    for (index, (name, mut tensor)) in model.lora_parameters().into_iter().enumerate() {
        if name.contains("lora_B") {
            let count = tensor.numel() as i64;
            let values = (Tensor::arange(count, (Kind::Float, Device::Cpu)) * 0.7 + index as f64)
                .sin()
                * 0.1;
            tensor.copy_(&values.view(tensor.size().as_slice()));
        }
    }
    model
}

/// `rows` right-padded with id 0: ids and 0/1 mask, `[rows, width]`.
fn right_padded(rows: &[Vec<i64>]) -> (Tensor, Tensor) {
    let width = rows.iter().map(Vec::len).max().unwrap();
    let (mut ids, mut mask) = (Vec::new(), Vec::new());
    for row in rows {
        ids.extend(
            row.iter()
                .copied()
                .chain(std::iter::repeat_n(0, width - row.len())),
        );
        mask.extend((0..width).map(|i| i64::from(i < row.len())));
    }
    let shape = [rows.len() as i64, width as i64];
    (
        Tensor::from_slice(&ids).view(shape),
        Tensor::from_slice(&mask).view(shape),
    )
}

fn batch() -> (Tensor, Tensor) {
    right_padded(&peft_reference().rows)
}

fn max_abs_difference(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

/// The logits of `logits` (`[rows, width, vocab]`) at each row's real positions, as nested
/// vectors.
fn real_positions(logits: &Tensor, mask: &Tensor) -> Vec<Vec<Vec<f32>>> {
    let lengths = Vec::<i64>::try_from(mask.sum_dim_intlist(1, false, Kind::Int64)).unwrap();
    lengths
        .iter()
        .enumerate()
        .map(|(row, &length)| {
            let rows = logits.get(row as i64).narrow(0, 0, length);
            Vec::<Vec<f32>>::try_from(rows).unwrap()
        })
        .collect()
}

fn worst_difference(got: &[Vec<Vec<f32>>], want: &[Vec<Vec<f32>>]) -> f32 {
    assert_eq!(got.len(), want.len());
    let mut worst = 0f32;
    for (got_row, want_row) in got.iter().zip(want) {
        assert_eq!(got_row.len(), want_row.len(), "real positions per row");
        for (g, w) in got_row.iter().flatten().zip(want_row.iter().flatten()) {
            worst = worst.max((g - w).abs());
        }
    }
    worst
}

#[test]
fn peft_adapter_gives_peft_logits() {
    let reference = peft_reference();
    let mut model = tiny_model();
    let (ids, mask) = batch();
    let base = model.forward_train(&ids, &mask, false, false).unwrap();
    model.load_adapter(&peft_adapter_dir()).unwrap();
    assert_eq!(model.lora_config(), Some(&small_config()));

    let trained_path = model.forward_train(&ids, &mask, true, false).unwrap();
    let got = real_positions(&trained_path, &mask);
    let worst = worst_difference(&got, &reference.logits);
    assert!(worst < 1e-4, "training pass vs PEFT: {worst}");
    // The adapter must matter, or the comparison proves nothing.
    let moved = worst_difference(&real_positions(&base, &mask), &reference.logits);
    assert!(moved > 0.1, "the adapter moves logits by only {moved}");

    // The sampling pass (no-grad, general padding mask) uses the unmerged adapter too.
    let width = ids.size()[1];
    let positions = Tensor::arange(width, (Kind::Int64, Device::Cpu))
        .view([1, width])
        .repeat([2, 1]);
    let sampling_path = model.forward(&ids, &positions, &mask, None).unwrap();
    let worst = worst_difference(&real_positions(&sampling_path, &mask), &reference.logits);
    assert!(worst < 1e-4, "sampling pass vs PEFT: {worst}");
}

#[test]
fn peft_adapter_greedy_continuations_are_peft_generate_s() {
    let reference = peft_reference();
    let mut model = tiny_model();
    model.load_adapter(&peft_adapter_dir()).unwrap();
    let prompts: Vec<Vec<u32>> = reference
        .rows
        .iter()
        .map(|row| row.iter().map(|&id| id as u32).collect())
        .collect();
    let params = SamplingParams {
        max_new_tokens: reference.max_new_tokens,
        greedy: true,
        ..SamplingParams::default()
    };
    let greedy = |model: &CausalLm| -> Vec<Vec<u32>> {
        generate_ids(model, &prompts, &params, &[reference.eos_id], 0, |_, _| {
            false
        })
        .unwrap()
        .into_iter()
        .map(|row| row.ids)
        .collect()
    };
    assert_eq!(greedy(&model), reference.greedy_ids, "unmerged adapter");
    model.merge_lora().unwrap();
    assert_eq!(greedy(&model), reference.greedy_ids, "merged adapter");
}

#[test]
fn adapters_off_is_the_base_model_exactly() {
    let (ids, mask) = batch();
    let base = tiny_model()
        .forward_train(&ids, &mask, false, false)
        .unwrap();

    let adapted = adapted_model(1);
    let reference_pass = adapted.forward_train(&ids, &mask, false, false).unwrap();
    assert!(
        reference_pass.equal(&base),
        "adapter off must be the base model"
    );
    assert!(
        !reference_pass.requires_grad(),
        "the reference pass records no graph"
    );
    let adapted_pass = adapted.forward_train(&ids, &mask, true, false).unwrap();
    assert!(max_abs_difference(&adapted_pass, &base) > 0.01);

    // Fresh adapters (B = 0) leave the model as it was, to the bit.
    let mut fresh = tiny_model();
    fresh.add_lora(&LoraConfig::default(), 3).unwrap();
    let fresh_pass = fresh.forward_train(&ids, &mask, true, false).unwrap();
    assert!(fresh_pass.equal(&base));
    assert!(fresh_pass.requires_grad());
}

#[test]
fn merging_keeps_the_outputs_and_unmerging_restores_the_base() {
    let (ids, mask) = batch();
    let mut model = adapted_model(2);
    let width = ids.size()[1];
    let positions = Tensor::arange(width, (Kind::Int64, Device::Cpu))
        .view([1, width])
        .repeat([2, 1]);
    let base = model.forward_train(&ids, &mask, false, false).unwrap();
    let unmerged = model.forward(&ids, &positions, &mask, None).unwrap();

    model.merge_lora().unwrap();
    assert!(model.is_lora_merged());
    let merged = model.forward(&ids, &positions, &mask, None).unwrap();
    let difference = max_abs_difference(&merged, &unmerged);
    assert!(difference < 1e-5, "merged vs unmerged: {difference}");
    assert!(matches!(model.merge_lora(), Err(ModelError::LoraState(_))));
    assert!(matches!(
        model.forward_train(&ids, &mask, true, true),
        Err(ModelError::LoraState(_))
    ));

    model.unmerge_lora().unwrap();
    assert!(matches!(
        model.unmerge_lora(),
        Err(ModelError::LoraState(_))
    ));
    let restored = model.forward_train(&ids, &mask, false, false).unwrap();
    let difference = max_abs_difference(&restored, &base);
    assert!(difference < 1e-5, "base after unmerge: {difference}");
}

/// The loss whose gradient is checked: a fixed weighting of the logits at real positions,
/// summed in f64.
fn probe_loss(model: &CausalLm, ids: &Tensor, mask: &Tensor) -> Tensor {
    let logits = model.forward_train(ids, mask, true, false).unwrap();
    let count = logits.numel() as i64;
    let weights = (Tensor::arange(count, (Kind::Double, Device::Cpu)) * 0.37)
        .cos()
        .view(logits.size().as_slice());
    let real = mask.unsqueeze(-1).to_kind(Kind::Double);
    (logits.to_kind(Kind::Double) * weights * real).sum(Kind::Double)
}

#[test]
fn lora_gradients_match_central_differences() {
    let model = adapted_model(4);
    let (ids, mask) = batch();
    probe_loss(&model, &ids, &mask).backward();
    let parameters = model.lora_parameters();
    assert_eq!(parameters.len(), 2 * 7 * 2);
    // A and B of every projection kind, in both layers (layer 0's gradients pass through
    // all of layer 1: norms, rotary positions, attention, SwiGLU, oneDNN products).
    let checked = [
        "layers.0.self_attn.q_proj.lora_A",
        "layers.0.self_attn.k_proj.lora_B",
        "layers.0.self_attn.v_proj.lora_A",
        "layers.0.mlp.up_proj.lora_B",
        "layers.0.mlp.down_proj.lora_A",
        "layers.1.self_attn.o_proj.lora_A",
        "layers.1.mlp.gate_proj.lora_B",
        "layers.1.self_attn.v_proj.lora_B",
    ];
    let step = 1e-2;
    for wanted in checked {
        let (name, tensor) = parameters
            .iter()
            .find(|(name, _)| name.contains(wanted))
            .unwrap_or_else(|| panic!("no parameter {wanted}"));
        let gradient = tensor.grad();
        assert!(gradient.defined(), "{name} got no gradient");
        // The entry with the largest gradient: well above the fp32 noise of the difference.
        let flat_index = gradient
            .abs()
            .reshape([-1])
            .argmax(0, false)
            .int64_value(&[]);
        let analytic = gradient.reshape([-1]).double_value(&[flat_index]);
        let mut entry = tensor.reshape([-1]).get(flat_index);
        let original = entry.double_value(&[]);
        let loss_at = |value: f64, entry: &mut Tensor| {
            let _no_grad = tch::no_grad_guard();
            let _ = entry.fill_(value);
            probe_loss(&model, &ids, &mask).double_value(&[])
        };
        let numeric = (loss_at(original + step, &mut entry) - loss_at(original - step, &mut entry))
            / (2.0 * step);
        let _ = loss_at(original, &mut entry);
        let relative = (numeric - analytic).abs() / analytic.abs().max(1e-3);
        assert!(
            relative < 1e-3,
            "{name}[{flat_index}]: analytic {analytic}, central difference {numeric}"
        );
    }
}

#[test]
fn dropout_acts_in_training_passes_only() {
    let mut model = tiny_model();
    let config = LoraConfig {
        dropout: 0.5,
        ..small_config()
    };
    model.add_lora(&config, 5).unwrap();
    {
        let _no_grad = tch::no_grad_guard();
        for (_, mut tensor) in model.lora_parameters() {
            let _ = tensor.fill_(0.05);
        }
    }
    let (ids, mask) = batch();
    let evaluation = model.forward_train(&ids, &mask, true, false).unwrap();
    assert!(evaluation.equal(&model.forward_train(&ids, &mask, true, false).unwrap()));
    let training = model.forward_train(&ids, &mask, true, true).unwrap();
    assert!(max_abs_difference(&training, &evaluation) > 1e-4);
}

#[test]
fn fresh_adapters_follow_peft_initialisation_and_the_seed() {
    let mut model = tiny_model();
    model.add_lora(&LoraConfig::default(), 11).unwrap();
    assert_eq!(model.lora_config(), Some(&LoraConfig::default()));
    let parameters = model.lora_parameters();
    let names: Vec<&str> = parameters.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names.len(), 2 * 7 * 2);
    assert_eq!(
        &names[..3],
        [
            "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight",
            "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight",
            "base_model.model.model.layers.0.self_attn.k_proj.lora_A.weight",
        ]
    );
    assert_eq!(
        names[27],
        "base_model.model.model.layers.1.mlp.down_proj.lora_B.weight"
    );
    for (name, tensor) in &parameters {
        assert!(
            tensor.requires_grad() && tensor.kind() == Kind::Float,
            "{name}"
        );
        if name.contains("lora_B") {
            assert_eq!(
                tensor.abs().max().double_value(&[]),
                0.0,
                "{name} starts at 0"
            );
        } else {
            // kaiming_uniform(a = √5) on [r, in]: uniform in ±1/√in.
            let inputs = tensor.size()[1] as f64;
            let bound = 1.0 / inputs.sqrt();
            assert_eq!(tensor.size()[0], 16, "{name}");
            assert!(tensor.abs().max().double_value(&[]) <= bound, "{name}");
            let std = tensor.std(true).double_value(&[]);
            let expected = bound / 3f64.sqrt();
            assert!(
                (std - expected).abs() < 0.15 * expected,
                "{name}: std {std}"
            );
        }
    }
    let again = {
        let mut model = tiny_model();
        model.add_lora(&LoraConfig::default(), 11).unwrap();
        model.lora_parameters()
    };
    let other_seed = {
        let mut model = tiny_model();
        model.add_lora(&LoraConfig::default(), 12).unwrap();
        model.lora_parameters()
    };
    assert!(parameters[0].1.equal(&again[0].1), "same seed, same A");
    assert!(
        !parameters[0].1.equal(&other_seed[0].1),
        "another seed, another A"
    );
    assert!(
        !parameters[0].1.equal(&parameters[2].1.narrow(1, 0, 32)),
        "each A has its own stream"
    );

    assert!(matches!(
        model.add_lora(&LoraConfig::default(), 11),
        Err(ModelError::LoraState(_))
    ));
}

fn scratch_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("fedsyn-lora-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Saves the adapted model's adapter with the logits beside it in the form
/// `peft_adapter.py --check DIR` reads.
#[test]
fn saved_adapters_load_back_to_the_same_logits() {
    let config = LoraConfig {
        targets: vec![
            LoraTarget::Q,
            LoraTarget::V,
            LoraTarget::Down,
            LoraTarget::Up,
        ],
        ..small_config()
    };
    let mut model = tiny_model();
    model.add_lora(&config, 9).unwrap();
    {
        let _no_grad = tch::no_grad_guard();
        for (index, (_, mut tensor)) in model.lora_parameters().into_iter().enumerate() {
            let count = tensor.numel() as i64;
            let values = (Tensor::arange(count, (Kind::Float, Device::Cpu)) * 1.3 + index as f64)
                .sin()
                * 0.2;
            tensor.copy_(&values.view(tensor.size().as_slice()));
        }
    }
    let dir = scratch_dir("saved");
    model.save_adapter(&dir, "tiny-llama").unwrap();
    let (ids, mask) = batch();
    let logits = model.forward_train(&ids, &mask, true, false).unwrap();
    let beside = json!({
        "input_ids": Vec::<Vec<i64>>::try_from(&ids).unwrap(),
        "attention_mask": Vec::<Vec<i64>>::try_from(&mask).unwrap(),
        "logits": real_positions(&logits, &mask),
    });
    std::fs::write(dir.join("fedsyn_logits.json"), beside.to_string()).unwrap();
    eprintln!(
        "adapter saved in {} (check: .venv-bench/bin/python scripts/reference/peft_adapter.py --check DIR)",
        dir.display()
    );

    let written: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("adapter_config.json")).unwrap())
            .unwrap();
    assert_eq!(written["peft_type"], "LORA");
    assert_eq!(written["task_type"], "CAUSAL_LM");
    assert_eq!(written["r"], 4);
    assert_eq!(written["lora_alpha"], 8.0);
    assert_eq!(written["base_model_name_or_path"], "tiny-llama");
    assert_eq!(
        written["target_modules"],
        json!(["q_proj", "v_proj", "up_proj", "down_proj"])
    );

    let mut loaded = tiny_model();
    loaded.load_adapter(&dir).unwrap();
    assert_eq!(loaded.lora_config(), model.lora_config());
    let reloaded = loaded.forward_train(&ids, &mask, true, false).unwrap();
    assert!(reloaded.equal(&logits), "a round trip changes nothing");
    let names =
        |m: &CausalLm| -> Vec<String> { m.lora_parameters().into_iter().map(|(n, _)| n).collect() };
    assert_eq!(names(&loaded), names(&model));
}

/// Writes the fixture adapter into a scratch folder with its config edited by `edit`.
fn edited_adapter(name: &str, edit: impl FnOnce(&mut Value)) -> PathBuf {
    let source = peft_adapter_dir();
    let dir = scratch_dir(name);
    std::fs::copy(
        source.join("adapter_model.safetensors"),
        dir.join("adapter_model.safetensors"),
    )
    .unwrap();
    let mut config: Value =
        serde_json::from_str(&std::fs::read_to_string(source.join("adapter_config.json")).unwrap())
            .unwrap();
    edit(&mut config);
    std::fs::write(dir.join("adapter_config.json"), config.to_string()).unwrap();
    dir
}

fn load_error(dir: &Path) -> String {
    let mut model = tiny_model();
    let error = model
        .load_adapter(dir)
        .expect_err("a bad adapter is refused");
    assert!(model.lora_config().is_none(), "a failed load adds nothing");
    assert!(model.lora_parameters().is_empty());
    error.to_string()
}

#[test]
fn bad_adapter_folders_are_refused_with_the_reason() {
    // (case, key set in the fixture's config, its value, words the error must contain).
    let cases = [
        ("rslora", "use_rslora", json!(true), "use_rslora"),
        ("dora", "use_dora", json!(true), "use_dora"),
        ("bias", "bias", json!("all"), "bias"),
        (
            "ranks",
            "rank_pattern",
            json!({"q_proj": 8}),
            "rank_pattern",
        ),
        (
            "head",
            "target_modules",
            json!(["q_proj", "lm_head"]),
            "lm_head",
        ),
        (
            "regex",
            "target_modules",
            json!(".*proj"),
            "regular expression",
        ),
        ("ia3", "peft_type", json!("IA3"), "IA3"),
        // The file holds r = 4 tensors.
        ("rank", "r", json!(8), "shape"),
        // The file holds adapters of all seven projections.
        (
            "extra",
            "target_modules",
            json!(["q_proj"]),
            "not among the adapters",
        ),
    ];
    for (name, key, value, expected) in cases {
        let message = load_error(&edited_adapter(name, |config| config[key] = value));
        assert!(message.contains(expected), "{name}: {message}");
    }

    let missing = scratch_dir("missing");
    let message = load_error(&missing);
    assert!(message.contains("adapter_config.json"), "{message}");
    std::fs::copy(
        fixture_dir("peft-tiny-llama").join("adapter_config.json"),
        missing.join("adapter_config.json"),
    )
    .unwrap();
    let message = load_error(&missing);
    assert!(message.contains("adapter_model.safetensors"), "{message}");
}

#[test]
fn state_errors_name_the_fix() {
    let mut model = tiny_model();
    let (ids, mask) = batch();
    for result in [model.merge_lora(), model.unmerge_lora()] {
        assert!(matches!(result, Err(ModelError::LoraState(_))));
    }
    assert!(model.save_adapter(&scratch_dir("none"), "x").is_err());
    let error = model.forward_train(&ids, &mask, true, false).unwrap_err();
    assert!(error.to_string().contains("add_lora"), "{error}");

    // Left padding is refused: the training pass puts row r's first token at position 0.
    let left_mask = Tensor::from_slice(&[1i64, 1, 1, 0, 1, 1]).view([2, 3]);
    let left_ids = Tensor::from_slice(&[5i64, 6, 7, 0, 8, 9]).view([2, 3]);
    let error = model
        .forward_train(&left_ids, &left_mask, false, false)
        .unwrap_err();
    assert!(error.to_string().contains("right-padded"), "{error}");

    let bad = LoraConfig {
        rank: 0,
        ..LoraConfig::default()
    };
    assert!(model.add_lora(&bad, 0).is_err());
    assert!(model.lora_config().is_none());
}
