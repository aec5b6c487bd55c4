//! Loads tiny Llama and Qwen2 Hugging Face folders and compares logits of a left-padded batch
//! (1e-4), cached step-by-step decoding and greedy continuations with transformers' outputs.
//!
//! `scripts/reference/generator.py` wrote each folder's configuration, tokenizer and
//! `reference.json`, but no weights file: every weight is a function of its tensor's name and
//! flat index (integer hashing, see `synthetic_value`), so the test writes `model.safetensors`
//! itself (tests/support/tiny_llama.rs), with exactly the values transformers ran with.

mod common;
#[path = "support/tiny_llama.rs"]
mod tiny_llama;

use std::path::PathBuf;

use common::left_padded;
use models::llama::{generate_ids, CausalLm, Generator, SamplingParams};
use serde::Deserialize;
use tch::{Device, Kind, Tensor};
use tiny_llama::{fixture_dir, tiny_model_dir};

const TOLERANCE: f32 = 1e-4;

#[derive(Deserialize)]
struct Reference {
    prompts: Vec<Vec<u32>>,
    /// Per row, per real (unpadded) position: the logits.
    logits: Vec<Vec<Vec<f32>>>,
    greedy_ids: Vec<Vec<u32>>,
    max_new_tokens: usize,
    eos_id: u32,
    text_prompt: Option<String>,
    text_prompt_ids: Option<Vec<u32>>,
    chat_prompt_ids: Option<Vec<u32>>,
}

/// The folder of fixture `name` with its weights written, and its reference outputs.
fn fixture(name: &str) -> (PathBuf, Reference) {
    let text =
        std::fs::read_to_string(fixture_dir(name).join("reference.json")).expect("fixture exists");
    let reference: Reference = serde_json::from_str(&text).expect("fixture parses");
    (tiny_model_dir(name), reference)
}

fn max_difference(got: &Tensor, want: &[f32]) -> f32 {
    let got = Vec::<f32>::try_from(got.reshape([-1])).unwrap();
    assert_eq!(got.len(), want.len());
    got.iter()
        .zip(want)
        .map(|(g, w)| (g - w).abs())
        .fold(0.0, f32::max)
}

fn check_logits(name: &str) {
    let (dir, reference) = fixture(name);
    let model = CausalLm::from_hf_dir(&dir, Device::Cpu).unwrap();
    let (ids, mask, positions) = left_padded(&reference.prompts, 0);
    let logits = model.forward(&ids, &positions, &mask, None).unwrap();
    let width = ids.size()[1];
    for (row, (prompt, expected)) in reference.prompts.iter().zip(&reference.logits).enumerate() {
        let first_real = width - prompt.len() as i64;
        for (offset, want) in expected.iter().enumerate() {
            let got = logits.get(row as i64).get(first_real + offset as i64);
            let diff = max_difference(&got, want);
            assert!(
                diff < TOLERANCE,
                "{name} row {row} position {offset}: max |Δ| {diff}"
            );
        }
    }
}

/// The fixture's prompts continued by `generate_ids` (padding id 0, no stop strings).
fn generate_reference_prompts(
    model: &CausalLm,
    reference: &Reference,
    params: &SamplingParams,
) -> Vec<models::llama::GeneratedIds> {
    generate_ids(
        model,
        &reference.prompts,
        params,
        &[reference.eos_id],
        0,
        |_, _| false,
    )
    .unwrap()
}

fn check_greedy(name: &str) {
    let (dir, reference) = fixture(name);
    let model = CausalLm::from_hf_dir(&dir, Device::Cpu).unwrap();
    let params = SamplingParams::greedy(reference.max_new_tokens);
    let generated = generate_reference_prompts(&model, &reference, &params);
    let ids: Vec<Vec<u32>> = generated.into_iter().map(|g| g.ids).collect();
    assert_eq!(ids, reference.greedy_ids, "{name}: greedy continuation");
}

/// With `logprobs`, each greedy token comes with its log-probability: the first one equals the
/// log-softmax of transformers' last prompt logits, and every one equals that of a single
/// uncached forward pass over the prompt and the tokens before it.
#[test]
fn greedy_tokens_come_with_the_models_log_probabilities() {
    let (dir, reference) = fixture("tiny-llama");
    let model = CausalLm::from_hf_dir(&dir, Device::Cpu).unwrap();
    let params = SamplingParams {
        logprobs: true,
        ..SamplingParams::greedy(reference.max_new_tokens)
    };
    let generated = generate_reference_prompts(&model, &reference, &params);
    for (row, (prompt, generated)) in reference.prompts.iter().zip(&generated).enumerate() {
        assert_eq!(generated.logprobs.len(), generated.ids.len(), "row {row}");
        let last_logits = Tensor::from_slice(reference.logits[row].last().unwrap());
        let first = last_logits
            .log_softmax(-1, Kind::Float)
            .double_value(&[i64::from(generated.ids[0])]) as f32;
        assert!(
            (first - generated.logprobs[0]).abs() < TOLERANCE,
            "row {row}: first token {} vs transformers {first}",
            generated.logprobs[0]
        );
        let sequence: Vec<u32> = prompt.iter().chain(&generated.ids).copied().collect();
        let (ids, mask, positions) = left_padded(&[sequence], 0);
        let full = model
            .forward(&ids, &positions, &mask, None)
            .unwrap()
            .log_softmax(-1, Kind::Float);
        for (step, (&token, &logprob)) in generated.ids.iter().zip(&generated.logprobs).enumerate()
        {
            let position = (prompt.len() + step - 1) as i64;
            let want = full.double_value(&[0, position, i64::from(token)]) as f32;
            assert!(
                (want - logprob).abs() < 1e-4,
                "row {row} step {step}: {logprob} vs {want} from the full pass"
            );
        }
    }
    let without = generate_reference_prompts(&model, &reference, &SamplingParams::greedy(2));
    assert!(without.iter().all(|g| g.logprobs.is_empty()));
}

#[test]
fn tiny_llama_logits_match_transformers() {
    check_logits("tiny-llama");
}

#[test]
fn tiny_qwen2_logits_match_transformers() {
    check_logits("tiny-qwen2");
}

#[test]
fn tiny_llama_greedy_continuation_matches_transformers() {
    check_greedy("tiny-llama");
}

#[test]
fn tiny_qwen2_greedy_continuation_matches_transformers() {
    check_greedy("tiny-qwen2");
}

/// Feeding a padded batch one slot at a time through the cache gives the logits of the
/// single full forward pass.
#[test]
fn cached_decoding_matches_the_full_pass() {
    let (dir, reference) = fixture("tiny-qwen2");
    let model = CausalLm::from_hf_dir(&dir, Device::Cpu).unwrap();
    let (ids, mask, positions) = left_padded(&reference.prompts, 0);
    let width = ids.size()[1];
    let diff = cached_against_full_pass(&model, &ids, &mask, &positions, width);
    assert!(diff < 1e-5, "max |Δ| {diff}");
    let (rows, width) = (ids.size()[0], ids.size()[1]);
    // A full cache refuses one more slot.
    let mut cache = model.new_cache(rows as usize, width as usize).unwrap();
    let _filled = model
        .forward(&ids, &positions, &mask, Some(&mut cache))
        .unwrap();
    let one_more = Tensor::ones([rows, width + 1], (Kind::Int64, Device::Cpu));
    let err = model
        .forward(
            &ids.narrow(1, 0, 1),
            &positions.narrow(1, 0, 1),
            &one_more,
            Some(&mut cache),
        )
        .unwrap_err();
    assert!(err.to_string().contains("capacity"), "{err}");
}

/// In bf16 a decoding step on the CPU attends over the whole cache buffer, its unfilled
/// slots masked: stepping through a cache with room to spare gives the full pass's logits to
/// bf16's precision (0.06 here, as through the filled slots alone; with the empty slots
/// unmasked, 2.7).
#[test]
fn bf16_cached_decoding_over_the_whole_buffer_matches_the_full_pass() {
    let (dir, reference) = fixture("tiny-qwen2");
    let model = CausalLm::load_as(&dir, Device::Cpu, Kind::BFloat16).unwrap();
    let (ids, mask, positions) = left_padded(&reference.prompts, 0);
    let width = ids.size()[1];
    let diff = cached_against_full_pass(&model, &ids, &mask, &positions, width + 7);
    assert!(diff < 0.25, "max |Δ| {diff}");
}

/// The largest difference, over real positions, between the logits of one full forward pass
/// and those of a prefill of 3 slots followed by one slot at a time through a cache of
/// `capacity` slots.
fn cached_against_full_pass(
    model: &CausalLm,
    ids: &Tensor,
    mask: &Tensor,
    positions: &Tensor,
    capacity: i64,
) -> f32 {
    let full = model.forward(ids, positions, mask, None).unwrap();
    let (rows, width) = (ids.size()[0], ids.size()[1]);
    let mut cache = model.new_cache(rows as usize, capacity as usize).unwrap();
    let prefix = 3;
    let first = model
        .forward(
            &ids.narrow(1, 0, prefix),
            &positions.narrow(1, 0, prefix),
            &mask.narrow(1, 0, prefix),
            Some(&mut cache),
        )
        .unwrap();
    let mut pieces = vec![first];
    for slot in prefix..width {
        let step = model
            .forward(
                &ids.narrow(1, slot, 1),
                &positions.narrow(1, slot, 1),
                &mask.narrow(1, 0, slot + 1),
                Some(&mut cache),
            )
            .unwrap();
        pieces.push(step);
    }
    let stepped = Tensor::cat(&pieces, 1);
    // Compare real positions only: padded slots attend to themselves alone by design.
    let real = mask.unsqueeze(-1).expand_as(&full).to_kind(Kind::Bool);
    f32::try_from(
        (full - stepped)
            .abs()
            .masked_select(&real)
            .max()
            .to_kind(Kind::Float),
    )
    .unwrap()
}

/// The tokenizer.json, tokenizer_config.json chat template and BOS handling of a Hugging
/// Face folder give transformers' prompt ids.
#[test]
fn tiny_llama_folder_tokenises_like_transformers() {
    let (dir, reference) = fixture("tiny-llama");
    let generator = Generator::from_hf_dir(&dir, Device::Cpu).unwrap();
    let text = reference.text_prompt.unwrap();
    assert_eq!(
        generator.encode_prompt(&text, false).unwrap(),
        reference.text_prompt_ids.unwrap()
    );
    assert_eq!(
        generator.encode_prompt(&text, true).unwrap(),
        reference.chat_prompt_ids.unwrap()
    );
    assert_eq!(generator.eos_ids(), [2]);
}

#[test]
fn mismatched_inputs_are_refused_with_a_reason() {
    let (dir, _) = fixture("tiny-llama");
    let model = CausalLm::from_hf_dir(&dir, Device::Cpu).unwrap();
    let ids = Tensor::from_slice(&[1i64, 2, 3]).view([1, 3]);
    let positions = Tensor::from_slice(&[0i64, 1, 2]).view([1, 3]);
    let refusal = |ids: &Tensor, mask: &Tensor| {
        model
            .forward(ids, &positions, mask, None)
            .unwrap_err()
            .to_string()
    };
    let short_mask = Tensor::ones([1, 2], (Kind::Int64, Device::Cpu));
    let err = refusal(&ids, &short_mask);
    assert!(err.contains("attention_mask"), "{err}");
    let big = Tensor::from_slice(&[1i64, 2, 64]).view([1, 3]);
    let err = refusal(&big, &Tensor::ones([1, 3], (Kind::Int64, Device::Cpu)));
    assert!(err.contains("0..64"), "{err}");
    let missing = CausalLm::from_hf_dir(&dir.join("nonexistent"), Device::Cpu).unwrap_err();
    assert!(missing.to_string().contains("config.json"), "{missing}");
}

/// A batch larger than one prefill slice, whose rows finish at different steps, so that
/// finished rows are dropped from the batch: every row still gets its own prompt's greedy
/// continuation. The stop token is one that the second prompt's continuation produces early
/// and the first prompt's never does.
#[test]
fn sliced_prefill_and_dropping_finished_rows_keep_each_row_intact() {
    let (dir, reference) = fixture("tiny-qwen2");
    let model = CausalLm::from_hf_dir(&dir, Device::Cpu).unwrap();
    let [long, short] = [&reference.greedy_ids[0], &reference.greedy_ids[1]];
    let stop = *short[1..short.len() - 1]
        .iter()
        .find(|id| !long.contains(id))
        .expect("the second continuation has a token the first lacks, before its end");
    let until_stop = |ids: &Vec<u32>| -> Vec<u32> {
        let end = ids
            .iter()
            .position(|&id| id == stop)
            .map_or(ids.len(), |i| i + 1);
        ids[..end].to_vec()
    };
    let expected = [until_stop(long), until_stop(short)];
    assert!(expected[1].len() < expected[0].len());
    let rows = 21;
    let prompts: Vec<Vec<u32>> = (0..rows)
        .map(|i| reference.prompts[i % 2].clone())
        .collect();
    let params = SamplingParams::greedy(reference.max_new_tokens);
    let generated = generate_ids(&model, &prompts, &params, &[stop], 0, |_, _| false).unwrap();
    for (i, row) in generated.iter().enumerate() {
        assert_eq!(row.ids, expected[i % 2], "row {i}");
    }
}
