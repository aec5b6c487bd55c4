//! DPO step benchmark: one optimiser step of fedsyn's preference trainer, printed as one JSON
//! object for `benches/run-models.sh dpo` to set beside PyTorch + PEFT doing the same step
//! (`benches/python/dpo_step_anchor.py`, same token ids, settings and thread count).
//!
//! Setting: SmolLM2-135M-Instruct Q4_1 GGUF (scripts/setup.sh) dequantised to fp32 on the CPU;
//! a LoRA adapter of rank 16 (α 16, no dropout) on all seven projections of every layer; 8
//! pairs, each a 128-token prompt (the start of the i-th State of the Union address, in
//! file-name order, cycling) with a chosen completion (the address's next 63 tokens) and a
//! rejected one (63 tokens of the next address), each ending with the end-of-sequence token:
//! 16 sequences of 192 tokens, no padding; DPO (β 0.01), AdamW at 8e-7, clipping at 1.0; one
//! micro-batch of all 8 pairs; 2 torch threads.
//!
//! Timed: one `PreferenceTrainer::train` call, which computes the reference log-probabilities
//! (adapter off, no gradient) and then takes the step (forward with the adapter, backward,
//! clipping, AdamW). Both parts are timed on both sides: `seconds` is their sum, `step_seconds`
//! the step alone. Untimed before: loading, adding the adapter, and one warm-up call of the
//! same size (so that the timed step is a step of a running training loop, not the first
//! touch of its activation memory). Peak memory is the process's VmHWM at the end (Linux).
//!
//! Run: `cargo bench -p models --bench dpo_step [-- --pairs N --prompt-tokens P --completion-tokens C
//! --rank R --threads T --device D --dtype auto|f32|bf16 --save-pairs FILE.json]`. `--save-pairs` writes the token
//! ids for the Python side.

use std::path::PathBuf;
use std::time::Instant;

use models::llama::{Generator, LoraConfig};
use models::train::{LrSchedule, PreferenceConfig, PreferenceTrainer, TokenizedPair};
use serde_json::{json, Value};
use support::{Flags, Runtime};

mod support;

struct Options {
    pairs: usize,
    prompt_tokens: usize,
    completion_tokens: usize,
    rank: i64,
    runtime: Runtime,
    save_pairs: Option<PathBuf>,
}

fn options() -> Options {
    let mut options = Options {
        pairs: 8,
        prompt_tokens: 128,
        completion_tokens: 64,
        rank: 16,
        runtime: Runtime::default(),
        save_pairs: None,
    };
    let mut flags = Flags::from_env();
    while let Some(flag) = flags.next_flag() {
        match flag.as_str() {
            "--pairs" => options.pairs = flags.parse("N"),
            "--prompt-tokens" => options.prompt_tokens = flags.parse("N"),
            "--completion-tokens" => options.completion_tokens = flags.parse("N"),
            "--rank" => options.rank = flags.parse("R"),
            "--save-pairs" => options.save_pairs = Some(flags.path()),
            other => options.runtime.read_shared_flag(other, &mut flags),
        }
    }
    options
}

/// Pair i: prompt = address i's first P tokens, chosen = its next C − 1, rejected = address
/// i + 1's tokens at the same place; EOS appended to both completions.
fn pairs(generator: &Generator, options: &Options) -> Vec<TokenizedPair> {
    let (p, c) = (options.prompt_tokens, options.completion_tokens - 1);
    let addresses = support::address_ids(generator, options.pairs + 1, p + c);
    let eos = generator.eos_ids()[0];
    let truncation = models::train::Truncation {
        max_prompt_length: p,
        max_length: p + c + 1,
    };
    (0..options.pairs)
        .map(|i| {
            TokenizedPair::from_ids(
                &addresses[i][..p],
                &addresses[i][p..],
                Some(&addresses[i + 1][p..]),
                eos,
                &truncation,
            )
            .expect("pair fits")
        })
        .collect()
}

fn config(batch: usize) -> PreferenceConfig {
    PreferenceConfig {
        beta: 0.01,
        lr: 8e-7,
        schedule: LrSchedule::Constant,
        batch_size: batch,
        grad_accum: 1,
        epochs: 1,
        max_grad_norm: 1.0,
        ..PreferenceConfig::default()
    }
}

fn main() {
    let options = options();
    let device = options.runtime.start();
    let (path, mut generator, load_seconds) =
        support::load_smollm2(device, options.runtime.kind(device));
    let pairs = pairs(&generator, &options);
    if let Some(file) = &options.save_pairs {
        std::fs::write(file, serde_json::to_string(&pairs).unwrap()).expect("writes pairs");
    }
    let lora = LoraConfig {
        rank: options.rank,
        alpha: options.rank as f64,
        ..LoraConfig::default()
    };
    let model = generator.model_mut();
    model.add_lora(&lora, 0).expect("adapter added");

    let mut warm_up = PreferenceTrainer::new(config(options.pairs)).expect("config");
    let warm_up_started = Instant::now();
    warm_up.train(model, &pairs, |_| {}).expect("warm-up step");
    let warm_up_seconds = warm_up_started.elapsed().as_secs_f64();

    let mut trainer = PreferenceTrainer::new(config(options.pairs)).expect("config");
    let started = Instant::now();
    let steps = trainer.train(model, &pairs, |_| {}).expect("one step");
    let seconds = started.elapsed().as_secs_f64();
    assert_eq!(steps.len(), 1, "one optimiser step");
    let step = &steps[0];
    let tokens = 2 * options.pairs * (options.prompt_tokens + options.completion_tokens);
    let step_seconds = tokens as f64 / step.tokens_per_second;

    let report: Value = json!({
        "tool": "fedsyn",
        "model": path.file_name().map(|n| n.to_string_lossy().to_string()),
        "device": format!("{device:?}"),
        "dtype": format!("{:?}", model.kind()),
        "threads": tch::get_num_threads(),
        "pairs": options.pairs,
        "prompt_tokens": options.prompt_tokens,
        "completion_tokens": options.completion_tokens,
        "rank": options.rank,
        "trainable_parameters": model.lora_parameters().iter().map(|(_, t)| t.numel()).sum::<usize>(),
        "load_seconds": load_seconds,
        "warm_up_seconds": warm_up_seconds,
        "seconds": seconds,
        "step_seconds": step_seconds,
        "reference_seconds": seconds - step_seconds,
        "pairs_per_second": options.pairs as f64 / seconds,
        "loss": step.loss,
        "grad_norm": step.grad_norm,
        "logps_chosen": step.logps_chosen,
        "peak_rss_mib": support::peak_rss_mib(),
    });
    println!("{report}");
}
