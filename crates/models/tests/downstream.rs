//! The downstream model on the tiny Llama: top-1 next-token accuracy and the causal-LM loss
//! against transformers + PEFT (crates/models/tests/fixtures/downstream_reference.json,
//! written by scripts/reference/downstream.py), and training that lowers the loss.

#[path = "support/tiny_llama.rs"]
mod tiny_llama;

use models::llama::{CausalLm, LoraConfig, LoraTarget};
use models::train::{
    mean_token_loss, next_token_accuracy, CausalLmConfig, CausalLmTrainer, LrSchedule,
};
use serde::Deserialize;
use tch::Device;

#[derive(Deserialize)]
struct Reference {
    sequences: Vec<Vec<u32>>,
    /// The `{name, shape}` list of the adapter's tensors.
    adapter_tensors: serde_json::Value,
    with_adapter: Scores,
    base: Scores,
}

#[derive(Deserialize)]
struct Scores {
    correct: u64,
    tokens: u64,
    mean_loss: f64,
}

fn reference() -> Reference {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/downstream_reference.json"
    );
    serde_json::from_str(&std::fs::read_to_string(path).expect("fixture exists")).expect("parses")
}

fn tiny_model() -> CausalLm {
    CausalLm::from_hf_dir(&tiny_llama::tiny_llama_dir(), Device::Cpu).expect("tiny Llama loads")
}

fn assert_scores(model: &CausalLm, sequences: &[Vec<u32>], want: &Scores, what: &str) {
    // Batches of 2 and of all: padding to different widths must not change anything.
    for batch_size in [2, sequences.len()] {
        let accuracy = next_token_accuracy(model, sequences, batch_size).unwrap();
        assert_eq!(
            (accuracy.correct, accuracy.tokens),
            (want.correct, want.tokens),
            "{what}, batches of {batch_size}"
        );
        let loss = mean_token_loss(model, sequences, batch_size).unwrap();
        assert!(
            (loss - want.mean_loss).abs() <= 1e-5 * want.mean_loss.abs(),
            "{what}: loss {loss} vs {}",
            want.mean_loss
        );
    }
}

#[test]
fn accuracy_and_loss_match_transformers_with_and_without_the_adapter() {
    let reference = reference();
    assert!(
        reference.with_adapter.correct > reference.base.correct,
        "the fixture's sequences follow the adapted model"
    );
    let mut adapted = tiny_model();
    let adapter = tiny_llama::dpo_adapter_dir("downstream-adapter", &reference.adapter_tensors);
    adapted.load_adapter(&adapter).unwrap();
    assert_scores(
        &adapted,
        &reference.sequences,
        &reference.with_adapter,
        "adapter",
    );
    assert_scores(
        &tiny_model(),
        &reference.sequences,
        &reference.base,
        "base model",
    );
}

#[test]
fn training_the_adapter_lowers_the_loss_and_raises_the_accuracy() {
    let reference = reference();
    let sequences = &reference.sequences;
    let mut model = tiny_model();
    let lora = LoraConfig {
        rank: 4,
        alpha: 8.0,
        dropout: 0.0,
        targets: LoraTarget::ALL.to_vec(),
    };
    model.add_lora(&lora, 3).unwrap();
    let before_loss = mean_token_loss(&model, sequences, 8).unwrap();
    let before = next_token_accuracy(&model, sequences, 8).unwrap();
    let config = CausalLmConfig {
        lr: 2e-2,
        schedule: LrSchedule::Constant,
        batch_size: 2,
        ..CausalLmConfig::default()
    };
    let epochs = 15;
    let mut trainer = CausalLmTrainer::new(
        config.clone(),
        epochs * config.steps_per_epoch(sequences.len()),
    )
    .unwrap();
    let mut losses = Vec::new();
    for _ in 0..epochs {
        let stats = trainer.train_epoch(&model, sequences).unwrap();
        assert_eq!(stats.steps, 3, "5 sequences in batches of 2");
        assert_eq!(
            stats.tokens, before.tokens,
            "one pass scores every position once"
        );
        losses.push(stats.mean_loss);
    }
    let after_loss = mean_token_loss(&model, sequences, 8).unwrap();
    let after = next_token_accuracy(&model, sequences, 8).unwrap();
    assert!(
        after_loss < 0.5 * before_loss,
        "loss {before_loss} → {after_loss} (epochs: {losses:?})"
    );
    assert!(
        after.correct > before.correct,
        "accuracy {before:?} → {after:?}"
    );
}

#[test]
fn unusable_inputs_are_named() {
    let model = tiny_model();
    let error = next_token_accuracy(&model, &[], 4).unwrap_err().to_string();
    assert!(error.contains("no sequences"), "{error}");
    let error = next_token_accuracy(&model, &[vec![1, 99]], 4)
        .unwrap_err()
        .to_string();
    assert!(error.contains("token id 99"), "{error}");
    let mut trainer = CausalLmTrainer::new(CausalLmConfig::default(), 1).unwrap();
    let error = trainer
        .train_steps(&model, &[vec![1, 2]], 1)
        .unwrap_err()
        .to_string();
    assert!(error.contains("no LoRA adapter"), "{error}");
}
