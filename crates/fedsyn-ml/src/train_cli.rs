//! `fedsyn dpo`: preference training of a LoRA adapter on a JSONL file of pairs.
//!
//! Each non-blank line is an object `{"prompt": …, "chosen": …, "rejected": …}` (strings;
//! other fields are ignored). With `--loss sft` a line needs a prompt and the completion to
//! imitate, as `"completion"` or `"chosen"` (the same files serve both losses); `"rejected"`
//! is then ignored. The adapter (PEFT format: `adapter_config.json`,
//! `adapter_model.safetensors`) and the trainer state (`optimizer.safetensors`,
//! `optimizer.json`, `trainer_state.json`) are written to `--out`; `--resume DIR` continues
//! from such a folder (the adapter, optimiser moments, schedule and shuffling).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Args;
use models::llama::{LoraConfig, LoraTarget};
use models::train::{
    LrSchedule, PreferenceConfig, PreferenceLoss, PreferencePair, PreferenceTrainer, StepMetrics,
    TokenizedPair,
};
use models::{DeviceChoice, Generator};
use serde::Serialize;

use crate::jsonl_input::{read_json_lines, InputError};
use crate::models_cli::generator_path;

/// Arguments of `fedsyn dpo`. Defaults are POPri's (β 0.01, lr 8e-7 cosine to 3e-7, 8 pairs
/// × 3 accumulated, LoRA r 16 α 16 on all seven projections).
#[derive(Debug, Args)]
pub struct DpoArgs {
    /// JSONL file of pairs: `{"prompt", "chosen", "rejected"}` per line (for `--loss sft`:
    /// `{"prompt", "completion"}` or `{"prompt", "chosen"}`).
    #[arg(long)]
    pub pairs: PathBuf,
    /// Folder to write the adapter (PEFT format) and the trainer state to.
    #[arg(long)]
    pub out: PathBuf,
    /// A GGUF file or Hugging Face folder of a Llama-family model (default: SmolLM2-135M-Instruct
    /// as installed by scripts/setup.sh, or FEDSYN_SMOLLM2_GGUF).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Continue from a folder an earlier `fedsyn dpo` wrote (adapter and trainer state); the
    /// hyper-parameters saved there apply, except `--max-steps`.
    #[arg(long)]
    pub resume: Option<PathBuf>,
    /// The objective: dpo (sigmoid), ipo or sft.
    #[arg(long, default_value = "dpo")]
    pub loss: String,
    /// β of DPO (τ of IPO).
    #[arg(long, default_value_t = 0.01)]
    pub beta: f64,
    /// cDPO label smoothing in [0, 0.5).
    #[arg(long, default_value_t = 0.0)]
    pub label_smoothing: f64,
    /// Peak learning rate.
    #[arg(long, default_value_t = 8e-7)]
    pub lr: f64,
    /// Learning-rate schedule: constant, linear, cosine or cosine_with_min_lr.
    #[arg(long, default_value = "cosine_with_min_lr")]
    pub schedule: String,
    /// Where cosine_with_min_lr ends (at most --lr).
    #[arg(long, default_value_t = 3e-7)]
    pub lr_min: f64,
    /// Linear warm-up steps.
    #[arg(long, default_value_t = 0)]
    pub warmup_steps: u64,
    /// Passes over the pairs.
    #[arg(long, default_value_t = 1)]
    pub epochs: usize,
    /// Pairs per forward pass.
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
    /// Forward passes per optimiser step (effective batch = batch size × this).
    #[arg(long, default_value_t = 3)]
    pub grad_accum: usize,
    /// Stop after this many optimiser steps.
    #[arg(long)]
    pub max_steps: Option<u64>,
    /// Clip gradients to this global L2 norm (0: no clipping).
    #[arg(long, default_value_t = 1.0)]
    pub max_grad_norm: f64,
    /// Prompts keep their last this many tokens.
    #[arg(long, default_value_t = 256)]
    pub max_prompt_length: usize,
    /// Prompt plus completion are cut to this many tokens.
    #[arg(long, default_value_t = 512)]
    pub max_length: usize,
    /// LoRA rank of a new adapter.
    #[arg(long, default_value_t = 16)]
    pub lora_r: i64,
    /// LoRA alpha of a new adapter (outputs scaled by alpha / r).
    #[arg(long, default_value_t = 16.0)]
    pub lora_alpha: f64,
    /// LoRA dropout of a new adapter.
    #[arg(long, default_value_t = 0.0)]
    pub lora_dropout: f64,
    /// Seed of the adapter's initialisation and of the shuffling.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Render each prompt with the model's chat template as one user turn (as
    /// `fedsyn generate --chat` does).
    #[arg(long)]
    pub chat: bool,
    /// Where to run: auto, cpu, cuda, cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: String,
}

impl DpoArgs {
    fn config(&self) -> Result<PreferenceConfig> {
        let loss: PreferenceLoss = self.loss.parse()?;
        let schedule: LrSchedule = self.schedule.parse()?;
        let config = PreferenceConfig {
            loss,
            beta: self.beta,
            label_smoothing: self.label_smoothing,
            lr: self.lr,
            schedule,
            warmup_steps: self.warmup_steps,
            lr_min: self.lr_min.min(self.lr),
            total_steps: None,
            epochs: self.epochs,
            batch_size: self.batch_size,
            grad_accum: self.grad_accum,
            max_grad_norm: self.max_grad_norm,
            max_prompt_length: self.max_prompt_length,
            max_length: self.max_length,
            seed: self.seed,
            max_steps: self.max_steps,
            ..PreferenceConfig::default()
        };
        config.validate()?;
        Ok(config)
    }

    fn lora(&self) -> LoraConfig {
        LoraConfig {
            rank: self.lora_r,
            alpha: self.lora_alpha,
            dropout: self.lora_dropout,
            targets: LoraTarget::ALL.to_vec(),
        }
    }
}

/// One pair read from the file, with its line number for messages.
struct NumberedPair {
    line: usize,
    pair: PreferencePair,
}

/// What `fedsyn dpo --json` prints.
#[derive(Serialize)]
struct DpoReport<'a> {
    model: String,
    device: String,
    pairs: usize,
    loss: &'static str,
    out: String,
    resumed_from: Option<String>,
    global_step: u64,
    load_seconds: f64,
    train_seconds: f64,
    steps: &'a [StepMetrics],
}

/// Runs `fedsyn dpo`.
pub fn dpo(args: DpoArgs, json: bool) -> Result<()> {
    let device = args.device.parse::<DeviceChoice>()?.resolve()?;
    // The trainer state is small: read it (or check the arguments) before anything heavy.
    let mut trainer = match &args.resume {
        Some(dir) => {
            let mut trainer = PreferenceTrainer::load(dir, device).with_context(|| {
                format!("--resume {}: loading the trainer state", dir.display())
            })?;
            if args.max_steps.is_some() {
                trainer.set_max_steps(args.max_steps)?;
            }
            trainer
        }
        None => PreferenceTrainer::new(args.config()?)?,
    };
    let loss = trainer.config().loss;
    // Read and check the whole file before loading the model: a bad line fails fast.
    let pairs = read_pairs(&args.pairs, loss == PreferenceLoss::Sft)?;
    let model_path = generator_path(args.model.as_deref())?;

    let started = Instant::now();
    let mut generator = Generator::load(&model_path, device)
        .with_context(|| format!("loading the generator from {}", model_path.display()))?;
    match &args.resume {
        Some(dir) => generator
            .model_mut()
            .load_adapter(dir)
            .with_context(|| format!("--resume {}: loading the adapter", dir.display()))?,
        None => generator.model_mut().add_lora(&args.lora(), args.seed)?,
    }
    let load_seconds = started.elapsed().as_secs_f64();

    let truncation = trainer.config().truncation();
    let tokenized = pairs
        .iter()
        .map(|numbered| {
            let with_rejected = loss != PreferenceLoss::Sft;
            TokenizedPair::encode(
                &generator,
                &numbered.pair,
                args.chat,
                with_rejected,
                &truncation,
            )
            .map_err(|e| {
                InputError(format!(
                    "{} line {}: {e}",
                    args.pairs.display(),
                    numbered.line
                ))
            })
        })
        .collect::<std::result::Result<Vec<_>, _>>()?;

    let started = Instant::now();
    let loss_name = loss.as_str();
    // Progress goes to standard error in both modes (--json writes only standard output).
    let steps = trainer.train(generator.model_mut(), &tokenized, |step| {
        eprintln!("{}", progress_line(step));
    })?;
    let train_seconds = started.elapsed().as_secs_f64();

    generator
        .model()
        .save_adapter(&args.out, &model_path.display().to_string())
        .with_context(|| format!("writing the adapter to {}", args.out.display()))?;
    trainer
        .save(&args.out)
        .with_context(|| format!("writing the trainer state to {}", args.out.display()))?;

    let mut out = std::io::stdout().lock();
    if json {
        let report = DpoReport {
            model: model_path.display().to_string(),
            device: format!("{device:?}"),
            pairs: tokenized.len(),
            loss: loss_name,
            out: args.out.display().to_string(),
            resumed_from: args.resume.as_ref().map(|p| p.display().to_string()),
            global_step: trainer.global_step(),
            load_seconds,
            train_seconds,
            steps: &steps,
        };
        serde_json::to_writer_pretty(&mut out, &report)?;
        writeln!(out)?;
    } else {
        writeln!(
            out,
            "trained {} steps on {} pairs ({loss_name}) in {train_seconds:.1} s on {device:?}; \
             adapter and trainer state in {}",
            steps.len(),
            tokenized.len(),
            args.out.display()
        )?;
    }
    out.flush()?;
    Ok(())
}

/// One line of progress on standard error.
fn progress_line(step: &StepMetrics) -> String {
    let mut line = format!(
        "step {:>5}  epoch {:.2}  loss {:.4}  lr {:.3e}  grad_norm {:.3}",
        step.step, step.epoch, step.loss, step.learning_rate, step.grad_norm
    );
    if let (Some(accuracy), Some(margin)) = (step.rewards_accuracies, step.rewards_margins) {
        line.push_str(&format!("  accuracy {accuracy:.2}  margin {margin:.4}"));
    }
    line.push_str(&format!("  {:.0} tokens/s", step.tokens_per_second));
    line
}

/// Reads every non-blank line of `path` as a pair (see the module documentation).
fn read_pairs(path: &Path, sft: bool) -> Result<Vec<NumberedPair>> {
    let mut pairs = Vec::new();
    for line in read_json_lines(path)? {
        let field = |name: &str, what: &str| -> std::result::Result<String, InputError> {
            line.text(name)?
                .map(str::to_string)
                .ok_or_else(|| InputError(format!("{}: no {what}", line.at)))
        };
        let prompt = field("prompt", "field `prompt`")?;
        let pair = if sft {
            let completion = match line.text("completion")? {
                Some(completion) => completion.to_string(),
                None => field(
                    "chosen",
                    "field `completion` or `chosen` (the text to imitate)",
                )?,
            };
            PreferencePair {
                prompt,
                chosen: completion,
                rejected: String::new(),
            }
        } else {
            PreferencePair {
                prompt,
                chosen: field("chosen", "field `chosen`")?,
                rejected: field("rejected", "field `rejected`")?,
            }
        };
        pairs.push(NumberedPair {
            line: line.line,
            pair,
        });
    }
    if pairs.is_empty() {
        return Err(InputError(format!("{} holds no pairs", path.display())).into());
    }
    Ok(pairs)
}
