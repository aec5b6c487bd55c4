//! Preference training on the tiny Llama: log-probabilities, DPO / IPO / SFT losses and LoRA
//! gradients against PyTorch + PEFT (crates/models/tests/fixtures/dpo_reference.json, written
//! by scripts/reference/dpo.py), rewards that rise on a toy preference set, and a
//! save-then-resume that equals an uninterrupted run.

#[path = "support/tiny_llama.rs"]
mod tiny_llama;

use std::collections::BTreeMap;
use std::path::PathBuf;

use models::llama::{CausalLm, LoraConfig, LoraTarget};
use models::train::{
    pair_log_probs, sequence_log_probs, LrSchedule, PairScores, PreferenceConfig, PreferenceLoss,
    PreferenceTrainer, SequenceBatch, StepMetrics, TokenizedPair, Truncation,
};
use serde::Deserialize;
use tch::{Device, Tensor};

#[derive(Deserialize)]
struct Reference {
    beta: f64,
    label_smoothing: f64,
    eos_id: u32,
    pairs: Vec<RawPair>,
    /// The `{name, shape}` list of the adapter's tensors.
    adapter_tensors: serde_json::Value,
    policy_chosen: Vec<f64>,
    policy_rejected: Vec<f64>,
    reference_chosen: Vec<f64>,
    reference_rejected: Vec<f64>,
    completion_tokens: Vec<i64>,
    losses: BTreeMap<String, LossReference>,
}

#[derive(Deserialize)]
struct RawPair {
    prompt: Vec<u32>,
    chosen: Vec<u32>,
    rejected: Vec<u32>,
}

#[derive(Deserialize)]
struct LossReference {
    loss: f64,
    /// Per adapter tensor, its gradient (flattened).
    grads: Option<BTreeMap<String, Vec<f32>>>,
}

fn reference() -> Reference {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/dpo_reference.json"
    );
    serde_json::from_str(&std::fs::read_to_string(path).expect("fixture exists")).expect("parses")
}

/// The adapter as PEFT held it: the fixture's adapter_config.json and the hash-defined weights
/// written to adapter_model.safetensors (once per process).
fn reference_adapter_dir(reference: &Reference) -> PathBuf {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        tiny_llama::dpo_adapter_dir("dpo-reference-adapter", &reference.adapter_tensors)
    })
    .clone()
}

fn temp_dir(label: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("fedsyn-dpo-{label}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

fn tiny_model() -> CausalLm {
    CausalLm::from_hf_dir(&tiny_llama::tiny_llama_dir(), Device::Cpu).expect("tiny Llama loads")
}

fn adapted_model(reference: &Reference) -> CausalLm {
    let mut model = tiny_model();
    model
        .load_adapter(&reference_adapter_dir(reference))
        .expect("the PEFT adapter loads");
    model
}

fn reference_pairs(reference: &Reference) -> Vec<TokenizedPair> {
    reference
        .pairs
        .iter()
        .map(|p| {
            TokenizedPair::from_ids(
                &p.prompt,
                &p.chosen,
                Some(&p.rejected),
                reference.eos_id,
                &Truncation::default(),
            )
            .expect("pair fits")
        })
        .collect()
}

fn assert_close(got: f64, want: f64, relative: f64, what: &str) {
    let error = (got - want).abs() / want.abs().max(1e-12);
    assert!(
        error <= relative,
        "{what}: {got} vs {want} (relative error {error:e})"
    );
}

/// Both ways of scoring a pair batch: the concatenated sequences in one pass, and each prompt
/// once for both its completions (`pair_log_probs`, what the trainer runs).
#[test]
fn log_probs_match_peft_with_and_without_the_adapter() {
    let reference = reference();
    let model = adapted_model(&reference);
    let pairs = reference_pairs(&reference);
    let refs: Vec<&TokenizedPair> = pairs.iter().collect();
    let batch = SequenceBatch::chosen_then_rejected(&refs, Device::Cpu);
    let _no_grad = tch::no_grad_guard();
    for (adapter, chosen, rejected) in [
        (true, &reference.policy_chosen, &reference.policy_rejected),
        (
            false,
            &reference.reference_chosen,
            &reference.reference_rejected,
        ),
    ] {
        let logits = model
            .forward_train(&batch.input_ids, &batch.attention_mask, adapter, false)
            .unwrap();
        let concatenated = sequence_log_probs(&logits, &batch).unwrap();
        let (shared_batch, shared) = pair_log_probs(&model, &refs, adapter, false).unwrap();
        assert_eq!(shared_batch.tokens, batch.tokens);
        for (way, log_probs) in [("concatenated", concatenated), ("shared prompts", shared)] {
            let split = PairScores::split(&log_probs.sum);
            for (i, (want_c, want_r)) in chosen.iter().zip(rejected).enumerate() {
                let what = |side| format!("{way}: pair {i} {side}, adapter {adapter}");
                assert_close(
                    split.chosen.double_value(&[i as i64]),
                    *want_c,
                    1e-5,
                    &what("chosen"),
                );
                assert_close(
                    split.rejected.double_value(&[i as i64]),
                    *want_r,
                    1e-5,
                    &what("rejected"),
                );
            }
            assert_eq!(
                Vec::<i64>::try_from(&log_probs.tokens).unwrap(),
                reference.completion_tokens
            );
        }
    }
}

/// One trainer step at learning rate 0 over the whole batch, no clipping: its loss and the
/// gradients it leaves on the adapter are the loss and gradients of the batch.
fn one_step(
    reference: &Reference,
    loss: PreferenceLoss,
    label_smoothing: f64,
) -> (CausalLm, StepMetrics) {
    let mut model = adapted_model(reference);
    let config = PreferenceConfig {
        loss,
        beta: reference.beta,
        label_smoothing,
        lr: 0.0,
        lr_min: 0.0,
        schedule: LrSchedule::Constant,
        batch_size: reference.pairs.len(),
        grad_accum: 1,
        max_grad_norm: 0.0,
        ..PreferenceConfig::default()
    };
    let mut trainer = PreferenceTrainer::new(config).unwrap();
    let metrics = trainer
        .train(&mut model, &reference_pairs(reference), |_| {})
        .unwrap();
    assert_eq!(metrics.len(), 1);
    (model, metrics[0].clone())
}

fn check_loss_and_grads(kind: &str, loss: PreferenceLoss) {
    let reference = reference();
    let (model, metrics) = one_step(&reference, loss, 0.0);
    let want = &reference.losses[kind];
    assert_close(metrics.loss, want.loss, 1e-5, &format!("{kind} loss"));
    let grads = want.grads.as_ref().expect("gradients in the fixture");
    let params = model.lora_parameters();
    assert_eq!(params.len(), grads.len());
    let mut total = 0.0;
    for (name, param) in &params {
        let want = Tensor::from_slice(&grads[name]);
        let got = param.grad().reshape([-1]);
        let error = (&got - &want).norm().double_value(&[]);
        let scale = want.norm().double_value(&[]);
        total += scale * scale;
        assert!(
            error <= 1e-4 * scale.max(1e-8),
            "{kind}: gradient of {name} is off by {error:e} (norm {scale:e})"
        );
    }
    assert_close(
        metrics.grad_norm,
        total.sqrt(),
        1e-4,
        &format!("{kind} grad norm"),
    );
}

#[test]
fn dpo_loss_and_lora_gradients_match_peft() {
    check_loss_and_grads("dpo", PreferenceLoss::Dpo);
}

#[test]
fn ipo_loss_and_lora_gradients_match_peft() {
    check_loss_and_grads("ipo", PreferenceLoss::Ipo);
}

#[test]
fn sft_loss_and_lora_gradients_match_peft() {
    check_loss_and_grads("sft", PreferenceLoss::Sft);
}

#[test]
fn label_smoothing_matches_cdpo() {
    let reference = reference();
    let (_, metrics) = one_step(&reference, PreferenceLoss::Dpo, reference.label_smoothing);
    assert_close(
        metrics.loss,
        reference.losses["dpo_smoothed"].loss,
        1e-5,
        "cDPO loss",
    );
}

/// Eight pairs over the tiny vocabulary: the chosen completions use low word ids, the
/// rejected ones high ids, so a preference is learnable.
fn toy_pairs(eos: u32) -> Vec<TokenizedPair> {
    (0..8u32)
        .map(|i| {
            let prompt = [4 + i, 20 + 2 * i, 9 + i];
            let chosen = [5 + i % 3, 6 + i % 4, 7];
            let rejected = [50 + i % 5, 60 - i % 3];
            TokenizedPair::from_ids(
                &prompt,
                &chosen,
                Some(&rejected),
                eos,
                &Truncation::default(),
            )
            .unwrap()
        })
        .collect()
}

fn fresh_adapter(model: &mut CausalLm, dropout: f64) {
    let config = LoraConfig {
        rank: 4,
        alpha: 8.0,
        dropout,
        targets: LoraTarget::ALL.to_vec(),
    };
    model.add_lora(&config, 7).unwrap();
}

fn mean<F: Fn(&StepMetrics) -> f64>(steps: &[StepMetrics], field: F) -> f64 {
    steps.iter().map(field).sum::<f64>() / steps.len() as f64
}

#[test]
fn rewards_accuracy_and_margin_rise_on_a_toy_preference_set() {
    let mut model = tiny_model();
    fresh_adapter(&mut model, 0.0);
    let config = PreferenceConfig {
        beta: 0.1,
        lr: 5e-3,
        schedule: LrSchedule::Constant,
        lr_min: 0.0,
        batch_size: 4,
        grad_accum: 1,
        epochs: 8,
        ..PreferenceConfig::default()
    };
    let mut trainer = PreferenceTrainer::new(config).unwrap();
    let mut seen = 0;
    let steps = trainer
        .train(&mut model, &toy_pairs(2), |_| seen += 1)
        .unwrap();
    assert_eq!((steps.len(), seen), (16, 16));
    // A fresh adapter is the reference: no margin, no pair ranked right yet.
    assert_eq!(steps[0].rewards_margins, Some(0.0));
    assert_eq!(steps[0].rewards_accuracies, Some(0.0));
    let (early, late) = (&steps[..2], &steps[12..]);
    let accuracy = |s: &StepMetrics| s.rewards_accuracies.unwrap();
    let margin = |s: &StepMetrics| s.rewards_margins.unwrap();
    assert!(
        mean(late, accuracy) >= 0.9,
        "late accuracy {}",
        mean(late, accuracy)
    );
    assert!(
        mean(late, margin) > mean(early, margin) + 0.05,
        "{steps:#?}"
    );
    assert!(mean(late, |s| s.loss) < mean(early, |s| s.loss));
    assert!(steps
        .iter()
        .all(|s| s.grad_norm.is_finite() && s.tokens_per_second > 0.0));
}

/// A trainer for two rounds of two steps each, with one schedule across the rounds.
fn resume_config() -> PreferenceConfig {
    PreferenceConfig {
        beta: 0.1,
        lr: 2e-3,
        schedule: LrSchedule::Cosine,
        warmup_steps: 1,
        total_steps: Some(6),
        lr_min: 0.0,
        batch_size: 1,
        grad_accum: 2,
        epochs: 1,
        seed: 11,
        ..PreferenceConfig::default()
    }
}

fn lora_values(model: &CausalLm) -> Vec<Vec<f32>> {
    model
        .lora_parameters()
        .iter()
        .map(|(_, t)| Vec::<f32>::try_from(t.detach().reshape([-1])).unwrap())
        .collect()
}

#[test]
fn save_then_resume_equals_an_uninterrupted_run() {
    // Adapter dropout 0.1 in both runs: the resumed run must draw the same dropout masks.
    let pairs = toy_pairs(2);
    let (round1, round2) = pairs.split_at(4);

    let mut straight_model = tiny_model();
    fresh_adapter(&mut straight_model, 0.1);
    let mut straight = PreferenceTrainer::new(resume_config()).unwrap();
    straight.train(&mut straight_model, round1, |_| {}).unwrap();
    let straight_round2 = straight.train(&mut straight_model, round2, |_| {}).unwrap();

    let dir = temp_dir("resume");
    {
        let mut model = tiny_model();
        fresh_adapter(&mut model, 0.1);
        let mut trainer = PreferenceTrainer::new(resume_config()).unwrap();
        trainer.train(&mut model, round1, |_| {}).unwrap();
        model.save_adapter(&dir, "tiny-llama").unwrap();
        trainer.save(&dir).unwrap();
    }
    let mut resumed_model = tiny_model();
    resumed_model.load_adapter(&dir).unwrap();
    let mut resumed = PreferenceTrainer::load(&dir, Device::Cpu).unwrap();
    assert_eq!(resumed.global_step(), 2);
    let resumed_round2 = resumed.train(&mut resumed_model, round2, |_| {}).unwrap();

    assert_eq!(resumed_round2.len(), 2);
    for (a, b) in straight_round2.iter().zip(&resumed_round2) {
        assert_eq!((a.step, a.learning_rate), (b.step, b.learning_rate));
        assert_eq!((a.loss, a.grad_norm), (b.loss, b.grad_norm));
        assert_eq!(a.rewards_margins, b.rewards_margins);
    }
    assert_eq!(lora_values(&straight_model), lora_values(&resumed_model));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn training_without_an_adapter_or_with_bad_pairs_is_refused() {
    let mut model = tiny_model();
    let mut trainer = PreferenceTrainer::new(PreferenceConfig::default()).unwrap();
    let err = trainer
        .train(&mut model, &toy_pairs(2), |_| {})
        .unwrap_err();
    assert!(err.to_string().contains("add_lora"), "{err}");
    fresh_adapter(&mut model, 0.0);
    let out_of_vocabulary = vec![TokenizedPair {
        prompt: vec![3],
        chosen: vec![64],
        rejected: vec![2],
    }];
    let err = trainer
        .train(&mut model, &out_of_vocabulary, |_| {})
        .unwrap_err();
    assert!(err.to_string().contains("token id 64"), "{err}");
}
