//! The hyper-parameters of fedsyn's trainers, without libtorch: the preference objective and
//! its settings ([`PreferenceConfig`], the `[dpo]` section of a run configuration), AdamW's
//! settings, the learning-rate schedules and the truncation of pairs.
//!
//! They live apart from the trainers (`models::train`, which re-exports them) so that a run's
//! configuration can be read, checked and reported on by crates that never link libtorch
//! (`fedsyn compare`, `fedsyn report`).

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// A hyper-parameter outside its domain.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("invalid {name}: {message}")]
pub struct InvalidHyperparameter {
    /// The field's name (`beta`, `max_length`, …).
    pub name: &'static str,
    /// What is wrong and what is allowed.
    pub message: String,
}

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, InvalidHyperparameter>;

fn invalid(name: &'static str, message: String) -> InvalidHyperparameter {
    InvalidHyperparameter { name, message }
}

/// Hyper-parameters of a preference run; the defaults are POPri's (§ 1.7 of the reference
/// notes): DPO with β 0.01, AdamW (0.9, 0.999, 1e-8, no weight decay) at 8e-7 with a cosine
/// down to 3e-7, clipping at 1.0, effective batch 24 pairs (8 × 3 accumulated), one epoch,
/// prompts cut to 256 tokens and sequences to 512.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PreferenceConfig {
    /// The objective.
    pub loss: PreferenceLoss,
    /// β: the strength of the pull towards the reference (DPO), or τ of IPO.
    pub beta: f64,
    /// cDPO's label smoothing ε in [0, 0.5): the assumed chance that a label is flipped.
    pub label_smoothing: f64,
    /// The peak learning rate.
    pub lr: f64,
    /// The shape of the learning-rate schedule.
    pub schedule: LrSchedule,
    /// Linear warm-up steps at the start of the schedule.
    pub warmup_steps: u64,
    /// The rate [`LrSchedule::CosineWithMinLr`] ends at.
    pub lr_min: f64,
    /// Optimiser steps the schedule spans. `None`: each `PreferenceTrainer::train` call
    /// runs the whole schedule over its own steps (as a fresh TRL trainer per round does);
    /// `Some(n)`: one schedule of `n` steps across calls (the rate stays at the schedule's end
    /// once it is passed).
    pub total_steps: Option<u64>,
    /// Passes over a call's pairs.
    pub epochs: usize,
    /// Pairs per forward pass (micro-batch).
    pub batch_size: usize,
    /// Micro-batches whose gradients are averaged into one optimiser step.
    pub grad_accum: usize,
    /// Gradients are scaled down to this global L2 norm (0: no clipping).
    pub max_grad_norm: f64,
    /// Prompts keep their last this many tokens.
    pub max_prompt_length: usize,
    /// Prompt plus completion are cut to this many tokens.
    pub max_length: usize,
    /// AdamW's decoupled weight decay.
    pub weight_decay: f64,
    /// AdamW's moment decay rates.
    pub betas: (f64, f64),
    /// AdamW's ε.
    pub eps: f64,
    /// Seeds the shuffling of pairs (and the adapter dropout, when there is any).
    pub seed: u64,
    /// Stop a call after this many optimiser steps (`None`: after `epochs` epochs).
    pub max_steps: Option<u64>,
}

impl Default for PreferenceConfig {
    fn default() -> Self {
        let truncation = Truncation::default();
        let adamw = AdamWConfig::default();
        PreferenceConfig {
            loss: PreferenceLoss::Dpo,
            beta: 0.01,
            label_smoothing: 0.0,
            lr: 8e-7,
            schedule: LrSchedule::CosineWithMinLr,
            warmup_steps: 0,
            lr_min: 3e-7,
            total_steps: None,
            epochs: 1,
            batch_size: 8,
            grad_accum: 3,
            max_grad_norm: 1.0,
            max_prompt_length: truncation.max_prompt_length,
            max_length: truncation.max_length,
            weight_decay: adamw.weight_decay,
            betas: adamw.betas,
            eps: adamw.eps,
            seed: 0,
            max_steps: None,
        }
    }
}

impl PreferenceConfig {
    /// Checks every field's range, naming the first one out of it.
    pub fn validate(&self) -> Result<()> {
        let invalid = |name: &'static str, message: String| Err(invalid(name, message));
        if !(self.beta.is_finite() && self.beta > 0.0) {
            return invalid("beta", format!("{} is not a number > 0", self.beta));
        }
        if !(0.0..0.5).contains(&self.label_smoothing) {
            return invalid(
                "label_smoothing",
                format!("{} is not in [0, 0.5)", self.label_smoothing),
            );
        }
        if !(self.lr.is_finite() && self.lr >= 0.0) {
            return invalid("lr", format!("{} is not a number ≥ 0", self.lr));
        }
        if !(self.lr_min.is_finite() && (0.0..=self.lr).contains(&self.lr_min)) {
            return invalid("lr_min", format!("{} is not in [0, lr]", self.lr_min));
        }
        if self.epochs == 0 || self.batch_size == 0 || self.grad_accum == 0 {
            return invalid(
                "epochs/batch_size/grad_accum",
                format!(
                    "{} / {} / {}: each must be at least 1",
                    self.epochs, self.batch_size, self.grad_accum
                ),
            );
        }
        if self.max_steps == Some(0) || self.total_steps == Some(0) {
            return invalid(
                "max_steps/total_steps",
                "must be at least 1 when given".to_string(),
            );
        }
        if !(self.max_grad_norm.is_finite() && self.max_grad_norm >= 0.0) {
            return invalid(
                "max_grad_norm",
                format!("{} is not a number ≥ 0", self.max_grad_norm),
            );
        }
        self.truncation().validate()?;
        self.adamw().validate()
    }

    /// The prompt and sequence lengths.
    pub fn truncation(&self) -> Truncation {
        Truncation {
            max_prompt_length: self.max_prompt_length,
            max_length: self.max_length,
        }
    }

    /// The optimiser's hyper-parameters.
    pub fn adamw(&self) -> AdamWConfig {
        AdamWConfig {
            betas: self.betas,
            eps: self.eps,
            weight_decay: self.weight_decay,
        }
    }

    /// Optimiser steps one epoch over `pairs` pairs takes (the last step may average fewer
    /// micro-batches).
    pub fn steps_per_epoch(&self, pairs: usize) -> u64 {
        let micro_batches = pairs.div_ceil(self.batch_size);
        micro_batches.div_ceil(self.grad_accum) as u64
    }
}

/// Which objective a preference run minimises.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PreferenceLoss {
    /// Direct Preference Optimisation (Rafailov et al., 2023), TRL's `sigmoid` loss:
    /// `−(1−ε)·log σ(βh) − ε·log σ(−βh)` with `h` the difference of policy and reference
    /// log-ratio margins and `ε` the label smoothing (cDPO).
    #[serde(alias = "sigmoid")]
    Dpo,
    /// Identity Preference Optimisation (Azar et al., 2023, eq. 17): `(h − 1/(2β))²`, with
    /// log-probabilities averaged over completion tokens rather than summed, as TRL's
    /// `loss_type="ipo"` does (policy and reference alike).
    Ipo,
    /// Supervised fine-tuning on the chosen completions: the mean negative log-likelihood
    /// over all their tokens in the batch (no reference model, no rejected completions).
    Sft,
}

impl PreferenceLoss {
    /// Whether the loss compares against the reference model (adapter off).
    pub fn needs_reference(self) -> bool {
        !matches!(self, PreferenceLoss::Sft)
    }

    /// The name used on the command line and in metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            PreferenceLoss::Dpo => "dpo",
            PreferenceLoss::Ipo => "ipo",
            PreferenceLoss::Sft => "sft",
        }
    }
}

impl std::str::FromStr for PreferenceLoss {
    type Err = InvalidHyperparameter;

    fn from_str(text: &str) -> Result<PreferenceLoss> {
        match text {
            "dpo" | "sigmoid" => Ok(PreferenceLoss::Dpo),
            "ipo" => Ok(PreferenceLoss::Ipo),
            "sft" => Ok(PreferenceLoss::Sft),
            other => Err(invalid("loss", format!("`{other}`: use dpo, ipo or sft"))),
        }
    }
}

/// Hyper-parameters of AdamW (Loshchilov & Hutter, 2019); the defaults are PyTorch's, except
/// the weight decay (0, as POPri and TRL's `DPOConfig` use).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AdamWConfig {
    /// Decay rates of the first and second moment estimates.
    pub betas: (f64, f64),
    /// Added to the root of the second moment, for numerical stability.
    pub eps: f64,
    /// Decoupled weight decay: each step multiplies the parameter by `1 − lr · weight_decay`.
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig {
            betas: (0.9, 0.999),
            eps: 1e-8,
            weight_decay: 0.0,
        }
    }
}

impl AdamWConfig {
    /// Checks the ranges PyTorch checks (betas in [0, 1), eps and weight decay ≥ 0).
    pub fn validate(&self) -> Result<()> {
        let (beta1, beta2) = self.betas;
        for (name, beta) in [("beta1", beta1), ("beta2", beta2)] {
            if !(0.0..1.0).contains(&beta) {
                return Err(invalid(name, format!("{beta} is not in [0, 1)")));
            }
        }
        if !(self.eps >= 0.0 && self.eps.is_finite()) {
            return Err(invalid(
                "eps",
                format!("{} is not a finite number ≥ 0", self.eps),
            ));
        }
        if !(self.weight_decay >= 0.0 && self.weight_decay.is_finite()) {
            return Err(invalid(
                "weight_decay",
                format!("{} is not a finite number ≥ 0", self.weight_decay),
            ));
        }
        Ok(())
    }
}

/// The shape of a learning-rate schedule: the factor of the peak rate at each step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LrSchedule {
    /// The peak rate after warm-up (transformers' `get_constant_schedule_with_warmup`).
    Constant,
    /// Linear warm-up from 0, then linear decay to 0 at the last step
    /// (`get_linear_schedule_with_warmup`).
    Linear,
    /// Linear warm-up, then half a cosine down to 0 (`get_cosine_schedule_with_warmup`).
    Cosine,
    /// Linear warm-up, then half a cosine down to a floor, `lr_min`
    /// (`get_cosine_with_min_lr_schedule_with_warmup` with `min_lr`).
    CosineWithMinLr,
}

impl std::str::FromStr for LrSchedule {
    type Err = InvalidHyperparameter;

    fn from_str(text: &str) -> Result<LrSchedule> {
        match text {
            "constant" => Ok(LrSchedule::Constant),
            "linear" => Ok(LrSchedule::Linear),
            "cosine" => Ok(LrSchedule::Cosine),
            "cosine_with_min_lr" => Ok(LrSchedule::CosineWithMinLr),
            other => Err(invalid(
                "schedule",
                format!("`{other}`: use constant, linear, cosine or cosine_with_min_lr"),
            )),
        }
    }
}

/// A learning-rate schedule with its position: the rate for the next optimiser step.
///
/// As PyTorch's `LambdaLR` with transformers' schedule functions: step `t` (0-based) runs at
/// `peak · factor(t)`, so with warm-up the first step runs at rate 0.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LrScheduler {
    /// The rate after warm-up.
    pub peak_lr: f64,
    /// The schedule's shape.
    pub schedule: LrSchedule,
    /// The floor of [`LrSchedule::CosineWithMinLr`] (ignored by the others).
    pub lr_min: f64,
    /// Steps of linear warm-up.
    pub warmup_steps: u64,
    /// Steps the schedule spans (its decay reaches the end here).
    pub total_steps: u64,
    /// Steps already taken.
    pub position: u64,
}

impl LrScheduler {
    /// A schedule at its start.
    pub fn new(
        peak_lr: f64,
        schedule: LrSchedule,
        lr_min: f64,
        warmup_steps: u64,
        total_steps: u64,
    ) -> Self {
        LrScheduler {
            peak_lr,
            schedule,
            lr_min,
            warmup_steps,
            total_steps,
            position: 0,
        }
    }

    /// The rate for step `step` (0-based).
    pub fn lr_at(&self, step: u64) -> f64 {
        self.peak_lr * self.factor_at(step)
    }

    /// The rate of the next step.
    pub fn lr(&self) -> f64 {
        self.lr_at(self.position)
    }

    /// Moves to the next step.
    pub fn advance(&mut self) {
        self.position += 1;
    }

    /// transformers' lambda for `step`: the factor of the peak rate.
    fn factor_at(&self, step: u64) -> f64 {
        let (warmup, total) = (self.warmup_steps as f64, self.total_steps as f64);
        let step_f = step as f64;
        if step < self.warmup_steps {
            return step_f / warmup.max(1.0);
        }
        let decay_steps = (total - warmup).max(1.0);
        let progress = (step_f - warmup) / decay_steps;
        let half_cosine = 0.5 * (1.0 + (std::f64::consts::PI * progress).cos());
        match self.schedule {
            LrSchedule::Constant => 1.0,
            LrSchedule::Linear => ((total - step_f) / decay_steps).max(0.0),
            LrSchedule::Cosine => half_cosine.max(0.0),
            LrSchedule::CosineWithMinLr => {
                let floor = if self.peak_lr > 0.0 {
                    self.lr_min / self.peak_lr
                } else {
                    0.0
                };
                (half_cosine * (1.0 - floor) + floor).max(0.0)
            }
        }
    }
}

/// How long prompts and sequences may be, in tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Truncation {
    /// Prompts keep their last this many tokens.
    pub max_prompt_length: usize,
    /// Prompt plus completion (end-of-sequence token included) are cut to this many.
    pub max_length: usize,
}

impl Default for Truncation {
    /// POPri's (and TRL's older defaults'): 256 prompt tokens, 512 in all.
    fn default() -> Self {
        Truncation {
            max_prompt_length: 256,
            max_length: 512,
        }
    }
}

impl Truncation {
    /// Checks that some room is left for completions.
    pub fn validate(&self) -> Result<()> {
        if self.max_prompt_length == 0 || self.max_length <= self.max_prompt_length {
            return Err(InvalidHyperparameter {
                name: "max_length",
                message: format!(
                    "max_length ({}) must exceed max_prompt_length ({}), which must be ≥ 1",
                    self.max_length, self.max_prompt_length
                ),
            });
        }
        Ok(())
    }
}
