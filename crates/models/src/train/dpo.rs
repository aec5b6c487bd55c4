//! The preference trainer: DPO, IPO or SFT on a LoRA adapter, with AdamW, gradient
//! accumulation, clipping and a learning-rate schedule, resumable after any call.
//!
//! One [`PreferenceTrainer`] lives for a whole POPri run: each round hands it that round's
//! pairs ([`PreferenceTrainer::train`]); the adapter (in the model) and the optimiser state,
//! schedule position and shuffling stream (in the trainer) carry over from round to round.
//! The reference model is the base model, the adapter switched off, so its log-probabilities
//! are computed once per pair at the start of a call and reused by every epoch.

use std::path::Path;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use super::loss::{
    pair_losses, sequence_log_probs_from_hidden, sequence_scores, sft_loss, PairScores,
    SequenceLogProbs,
};
use super::optim::{clip_grad_norm, read_json, write_json, AdamW, LrScheduler};
use super::preference::{PreferencePair, SequenceBatch, TokenizedPair};
use crate::error::{ModelError, Result};
use crate::llama::{CausalLm, Generator, SharedPromptBatch};
pub use training_config::PreferenceConfig;

/// What one optimiser step measured, under TRL's metric names (in JSON).
///
/// Rewards, accuracies, margins and log-probabilities are means over the step's pairs;
/// rewards are DPO's implicit rewards `β (log π − log π_ref)` (per-token means for IPO) and
/// absent for SFT, which has no reference.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepMetrics {
    /// Optimiser steps taken by this trainer, this one included.
    pub step: u64,
    /// Epochs into the current call (fractional, as TRL logs it).
    pub epoch: f64,
    /// The loss, averaged over the step's micro-batches.
    pub loss: f64,
    /// Mean implicit reward of the chosen completions.
    #[serde(rename = "rewards/chosen", skip_serializing_if = "Option::is_none")]
    pub rewards_chosen: Option<f64>,
    /// Mean implicit reward of the rejected completions.
    #[serde(rename = "rewards/rejected", skip_serializing_if = "Option::is_none")]
    pub rewards_rejected: Option<f64>,
    /// Fraction of pairs whose chosen reward exceeds the rejected one.
    #[serde(rename = "rewards/accuracies", skip_serializing_if = "Option::is_none")]
    pub rewards_accuracies: Option<f64>,
    /// Mean of chosen minus rejected reward.
    #[serde(rename = "rewards/margins", skip_serializing_if = "Option::is_none")]
    pub rewards_margins: Option<f64>,
    /// Mean policy log-probability of the chosen completions (summed over their tokens; the
    /// per-token mean for IPO, as the loss sees it).
    #[serde(rename = "logps/chosen")]
    pub logps_chosen: f64,
    /// The same for the rejected completions (absent for SFT).
    #[serde(rename = "logps/rejected", skip_serializing_if = "Option::is_none")]
    pub logps_rejected: Option<f64>,
    /// The global gradient norm before clipping.
    pub grad_norm: f64,
    /// The learning rate this step ran at.
    pub learning_rate: f64,
    /// Sequence tokens (prompt and completion, no padding) processed per second by this
    /// step's forward and backward passes and its update.
    pub tokens_per_second: f64,
}

/// Per-pair sequence scores of the reference model, computed once per call.
#[derive(Debug, Clone, Copy)]
struct ReferenceScores {
    chosen: f32,
    rejected: f32,
}

/// A small, fast, splittable generator (SplitMix64): the order pairs are visited in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Shuffler {
    pub(crate) state: u64,
}

impl Shuffler {
    pub(crate) fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// `0..n` in a uniformly random order (Fisher–Yates; Lemire's multiply for the bound).
    pub(crate) fn permutation(&mut self, n: usize) -> Vec<usize> {
        let mut order: Vec<usize> = (0..n).collect();
        for i in (1..n).rev() {
            let j = ((u128::from(self.next_u64()) * (i as u128 + 1)) >> 64) as usize;
            order.swap(i, j);
        }
        order
    }
}

/// Everything but the adapter that a resumed run needs (`trainer_state.json`).
#[derive(Debug, Serialize, Deserialize)]
struct SavedTrainer {
    format: u32,
    config: PreferenceConfig,
    shuffler: Shuffler,
    global_step: u64,
    epochs_completed: u64,
    calls_completed: u64,
    /// The schedule carried across calls (only with `total_steps`).
    scheduler: Option<LrScheduler>,
}

const TRAINER_STATE_FILE: &str = "trainer_state.json";
const TRAINER_STATE_FORMAT: u32 = 1;

/// Trains a model's LoRA adapter on preference pairs; see the module documentation.
#[derive(Debug)]
pub struct PreferenceTrainer {
    config: PreferenceConfig,
    optimizer: AdamW,
    shuffler: Shuffler,
    global_step: u64,
    epochs_completed: u64,
    calls_completed: u64,
    scheduler: Option<LrScheduler>,
}

impl PreferenceTrainer {
    /// A trainer at step 0.
    pub fn new(config: PreferenceConfig) -> Result<PreferenceTrainer> {
        config.validate()?;
        let scheduler = config
            .total_steps
            .map(|total| run_scheduler(&config, total));
        Ok(PreferenceTrainer {
            optimizer: AdamW::new(config.adamw())?,
            shuffler: Shuffler { state: config.seed },
            global_step: 0,
            epochs_completed: 0,
            calls_completed: 0,
            scheduler,
            config,
        })
    }

    /// The hyper-parameters.
    pub fn config(&self) -> &PreferenceConfig {
        &self.config
    }

    /// Changes the step limit of later calls (e.g. when resuming a saved trainer).
    pub fn set_max_steps(&mut self, max_steps: Option<u64>) -> Result<()> {
        let config = PreferenceConfig {
            max_steps,
            ..self.config.clone()
        };
        config.validate()?;
        self.config = config;
        Ok(())
    }

    /// Optimiser steps taken so far, over all calls.
    pub fn global_step(&self) -> u64 {
        self.global_step
    }

    /// Tokenises `pairs` with `generator` (see [`TokenizedPair::encode`]) and trains its
    /// model on them ([`PreferenceTrainer::train`]).
    pub fn train_pairs(
        &mut self,
        generator: &mut Generator,
        pairs: &[PreferencePair],
        chat: bool,
        progress: impl FnMut(&StepMetrics),
    ) -> Result<Vec<StepMetrics>> {
        let truncation = self.config.truncation();
        let with_rejected = self.config.loss.needs_reference();
        let tokenized = pairs
            .iter()
            .map(|pair| TokenizedPair::encode(generator, pair, chat, with_rejected, &truncation))
            .collect::<Result<Vec<_>>>()?;
        self.train(generator.model_mut(), &tokenized, progress)
    }

    /// Trains `model`'s adapter on `pairs` for the configured epochs (or `max_steps`),
    /// calling `progress` after every optimiser step, and returns every step's metrics.
    ///
    /// The model must carry a LoRA adapter ([`CausalLm::add_lora`] or
    /// [`CausalLm::load_adapter`]); its trainable parameters are the adapter's.
    pub fn train(
        &mut self,
        model: &mut CausalLm,
        pairs: &[TokenizedPair],
        mut progress: impl FnMut(&StepMetrics),
    ) -> Result<Vec<StepMetrics>> {
        self.check_inputs(model, pairs)?;
        let reference = self.reference_scores(model, pairs)?;
        let epoch_steps = self.config.steps_per_epoch(pairs.len());
        let planned = self
            .config
            .max_steps
            .map_or(epoch_steps * self.config.epochs as u64, |max| {
                max.min(epoch_steps * self.config.epochs as u64)
            });
        let mut scheduler = match &self.scheduler {
            Some(carried) => carried.clone(),
            None => run_scheduler(&self.config, planned),
        };
        let params = model.lora_parameters();
        let dropout = model.lora_config().map_or(0.0, |lora| lora.dropout);
        let mut metrics = Vec::with_capacity(planned as usize);
        for epoch in 0..self.config.epochs {
            if metrics.len() as u64 == planned {
                break;
            }
            let order = self.shuffler.permutation(pairs.len());
            let micro_batches: Vec<&[usize]> = order.chunks(self.config.batch_size).collect();
            let groups: Vec<&[&[usize]]> = micro_batches.chunks(self.config.grad_accum).collect();
            for (step_in_epoch, group) in groups.iter().enumerate() {
                if metrics.len() as u64 == planned {
                    break;
                }
                if dropout > 0.0 {
                    // Dropout masks come from libtorch's generator: seeding it per step makes
                    // a resumed run draw the masks the uninterrupted one would have.
                    tch::manual_seed(step_seed(self.config.seed, self.global_step));
                }
                let lr = scheduler.lr();
                let mut step = self.step(model, &params, pairs, &reference, group, lr)?;
                scheduler.advance();
                self.global_step += 1;
                step.step = self.global_step;
                step.epoch = epoch as f64 + (step_in_epoch + 1) as f64 / epoch_steps as f64;
                progress(&step);
                metrics.push(step);
                if step_in_epoch + 1 == groups.len() {
                    self.epochs_completed += 1;
                }
            }
        }
        if self.scheduler.is_some() {
            self.scheduler = Some(scheduler);
        }
        self.calls_completed += 1;
        Ok(metrics)
    }

    fn check_inputs(&self, model: &CausalLm, pairs: &[TokenizedPair]) -> Result<()> {
        let invalid = |message: String| {
            Err(ModelError::InvalidArgument {
                name: "preference pairs",
                message,
            })
        };
        if model.lora_config().is_none() {
            return Err(ModelError::InvalidArgument {
                name: "model",
                message: "it has no LoRA adapter to train; add one (add_lora) or load one \
                          (load_adapter) first"
                    .to_string(),
            });
        }
        if pairs.is_empty() {
            return invalid("no pairs were given".to_string());
        }
        let longest = pairs
            .iter()
            .map(|p| p.prompt.len() + p.chosen.len().max(p.rejected.len()))
            .max()
            .unwrap_or(0);
        if longest as i64 > model.max_positions() {
            return invalid(format!(
                "the longest sequence has {longest} tokens; the model takes at most {}",
                model.max_positions()
            ));
        }
        let vocab = model.config().vocab_size as u32;
        for (index, pair) in pairs.iter().enumerate() {
            if pair.prompt.is_empty() || pair.chosen.is_empty() {
                return invalid(format!(
                    "pair {index} has an empty prompt or chosen completion"
                ));
            }
            if self.config.loss.needs_reference() && pair.rejected.is_empty() {
                return invalid(format!(
                    "pair {index} has no rejected completion, which {} needs",
                    self.config.loss.as_str()
                ));
            }
            let ids = pair.prompt.iter().chain(&pair.chosen).chain(&pair.rejected);
            if let Some(id) = ids.copied().find(|&id| id >= vocab) {
                return invalid(format!(
                    "pair {index} holds token id {id}; the model's vocabulary has {vocab}"
                ));
            }
        }
        Ok(())
    }

    /// The reference model's sequence scores of every pair (adapter off, no gradient), in
    /// batches twice the training micro-batch (no activations are kept for a backward pass).
    fn reference_scores(
        &self,
        model: &CausalLm,
        pairs: &[TokenizedPair],
    ) -> Result<Vec<ReferenceScores>> {
        if !self.config.loss.needs_reference() {
            return Ok(Vec::new());
        }
        let _no_grad = tch::no_grad_guard();
        let mut scores = Vec::with_capacity(pairs.len());
        for chunk in pairs.chunks(2 * self.config.batch_size) {
            let refs: Vec<&TokenizedPair> = chunk.iter().collect();
            let (_, log_probs) = pair_log_probs(model, &refs, false, false)?;
            let split = PairScores::split(&sequence_scores(self.config.loss, &log_probs));
            let chosen = Vec::<f32>::try_from(split.chosen.to_device(Device::Cpu))?;
            let rejected = Vec::<f32>::try_from(split.rejected.to_device(Device::Cpu))?;
            scores.extend(
                chosen
                    .into_iter()
                    .zip(rejected)
                    .map(|(chosen, rejected)| ReferenceScores { chosen, rejected }),
            );
        }
        Ok(scores)
    }

    /// One optimiser step over the micro-batches `group` (indices into `pairs`).
    fn step(
        &mut self,
        model: &CausalLm,
        params: &[(String, Tensor)],
        pairs: &[TokenizedPair],
        reference: &[ReferenceScores],
        group: &[&[usize]],
        lr: f64,
    ) -> Result<StepMetrics> {
        let started = Instant::now();
        for (_, param) in params {
            param.shallow_clone().zero_grad();
        }
        let mut totals = StepTotals::default();
        for indices in group {
            let batch_pairs: Vec<&TokenizedPair> = indices.iter().map(|&i| &pairs[i]).collect();
            // Empty for SFT, which has no reference.
            let batch_reference: Vec<ReferenceScores> = indices
                .iter()
                .filter_map(|&i| reference.get(i).copied())
                .collect();
            let output = self.micro_batch(model, &batch_pairs, &batch_reference)?;
            // Each micro-batch's mean loss counts 1/n of the step (mean over micro-batches).
            (&output.loss / group.len() as f64).backward();
            totals.add(&output, indices.len())?;
        }
        // A bound of 0 means no clipping; the norm is still measured (the scale is then 1).
        let bound = if self.config.max_grad_norm > 0.0 {
            self.config.max_grad_norm
        } else {
            f64::INFINITY
        };
        let grad_norm = clip_grad_norm(params, bound)?;
        self.optimizer.step(params, lr)?;
        let seconds = started.elapsed().as_secs_f64().max(1e-9);
        Ok(totals.metrics(group.len(), grad_norm, lr, seconds))
    }

    /// The loss of one micro-batch and what the metrics need from it.
    fn micro_batch(
        &self,
        model: &CausalLm,
        pairs: &[&TokenizedPair],
        reference: &[ReferenceScores],
    ) -> Result<MicroBatchOutput> {
        let device = model.device();
        let loss_kind = self.config.loss;
        if !loss_kind.needs_reference() {
            let batch = SequenceBatch::chosen(pairs, device);
            let log_probs = batch_log_probs(model, &batch, true, true)?;
            return Ok(MicroBatchOutput {
                loss: sft_loss(&log_probs),
                policy_chosen: log_probs.sum.detach(),
                policy_rejected: None,
                rewards: None,
                tokens: batch.tokens,
            });
        }
        let (batch, log_probs) = pair_log_probs(model, pairs, true, true)?;
        let policy = PairScores::split(&sequence_scores(loss_kind, &log_probs));
        let reference = PairScores {
            chosen: Tensor::from_slice(&reference.iter().map(|r| r.chosen).collect::<Vec<_>>())
                .to_device(device),
            rejected: Tensor::from_slice(&reference.iter().map(|r| r.rejected).collect::<Vec<_>>())
                .to_device(device),
        };
        let losses = pair_losses(
            loss_kind,
            self.config.beta,
            self.config.label_smoothing,
            &policy,
            &reference,
        )?;
        let rewards = policy.rewards(&reference, self.config.beta);
        Ok(MicroBatchOutput {
            loss: losses.mean(Kind::Float),
            policy_chosen: policy.chosen.detach(),
            policy_rejected: Some(policy.rejected.detach()),
            rewards: Some(rewards),
            tokens: batch.tokens,
        })
    }

    /// Writes the optimiser state and `trainer_state.json` into `dir` (created if needed).
    /// The adapter itself is the model's: save it with [`CausalLm::save_adapter`].
    pub fn save(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|source| ModelError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        self.optimizer.save(dir)?;
        let saved = SavedTrainer {
            format: TRAINER_STATE_FORMAT,
            config: self.config.clone(),
            shuffler: self.shuffler,
            global_step: self.global_step,
            epochs_completed: self.epochs_completed,
            calls_completed: self.calls_completed,
            scheduler: self.scheduler.clone(),
        };
        write_json(&dir.join(TRAINER_STATE_FILE), &saved)
    }

    /// Reads a trainer written by [`PreferenceTrainer::save`], its optimiser state on
    /// `device` (the model's).
    pub fn load(dir: &Path, device: Device) -> Result<PreferenceTrainer> {
        let path = dir.join(TRAINER_STATE_FILE);
        let saved: SavedTrainer = read_json(&path)?;
        if saved.format != TRAINER_STATE_FORMAT {
            return Err(ModelError::TrainingState {
                path,
                message: format!(
                    "format {} is not the format {TRAINER_STATE_FORMAT} this fedsyn reads",
                    saved.format
                ),
            });
        }
        saved.config.validate()?;
        Ok(PreferenceTrainer {
            optimizer: AdamW::load(dir, device)?,
            config: saved.config,
            shuffler: saved.shuffler,
            global_step: saved.global_step,
            epochs_completed: saved.epochs_completed,
            calls_completed: saved.calls_completed,
            scheduler: saved.scheduler,
        })
    }
}

/// A schedule over `total` steps from the configuration.
fn run_scheduler(config: &PreferenceConfig, total: u64) -> LrScheduler {
    LrScheduler::new(
        config.lr,
        config.schedule,
        config.lr_min,
        config.warmup_steps,
        total,
    )
}

/// The libtorch seed of step `step` of a run seeded `seed`.
fn step_seed(seed: u64, step: u64) -> i64 {
    let mut shuffler = Shuffler {
        state: seed ^ step.wrapping_mul(0xD1B5_4A32_D192_ED03),
    };
    (shuffler.next_u64() >> 1) as i64
}

/// Completion log-probabilities of `batch` under the policy (`adapter`) or the reference.
fn batch_log_probs(
    model: &CausalLm,
    batch: &SequenceBatch,
    adapter: bool,
    train: bool,
) -> Result<SequenceLogProbs> {
    let hidden =
        model.forward_train_hidden(&batch.input_ids, &batch.attention_mask, adapter, train)?;
    sequence_log_probs_from_hidden(&hidden, &model.lm_head, batch)
}

/// Completion log-probabilities of the chosen rows of `pairs`, then their rejected rows (TRL's
/// concatenated batch, returned with them), under the policy (`adapter`) or the reference.
/// Each prompt runs once for both of its completions
/// ([`CausalLm::forward_train_shared_prompts`]); the hidden states are then laid out as the
/// concatenated batch's, so that scoring is the same as for an unshared pass.
pub fn pair_log_probs(
    model: &CausalLm,
    pairs: &[&TokenizedPair],
    adapter: bool,
    train: bool,
) -> Result<(SequenceBatch, SequenceLogProbs)> {
    let device = model.device();
    let batch = SequenceBatch::chosen_then_rejected(pairs, device);
    let prompt_rows: Vec<(&[u32], &[u32])> = pairs
        .iter()
        .map(|p| (p.prompt.as_slice(), &[][..]))
        .collect();
    let prompts = SequenceBatch::new(&prompt_rows, device);
    let continuation_rows: Vec<(&[u32], &[u32])> = pairs
        .iter()
        .map(|p| (&[][..], p.chosen.as_slice()))
        .chain(pairs.iter().map(|p| (&[][..], p.rejected.as_slice())))
        .collect();
    let continuations = SequenceBatch::new(&continuation_rows, device);
    let n = pairs.len();
    let prompt_of: Vec<i64> = (0..2 * n).map(|row| (row % n) as i64).collect();
    let (prompt_width, width) = (
        prompts.input_ids.size()[1],
        continuations.input_ids.size()[1],
    );
    let shared = SharedPromptBatch {
        prompt_ids: prompts.input_ids,
        prompt_mask: prompts.attention_mask,
        continuation_ids: continuations.input_ids,
        continuation_mask: continuations.attention_mask,
        prompt_of,
    };
    let (prompt_hidden, continuation_hidden) =
        model.forward_train_shared_prompts(&shared, adapter, train)?;
    // Row r, position t of the concatenated batch: prompt position t of its pair, or
    // continuation position t − (prompt length); padding borrows any row (never scored).
    let full_width = batch.input_ids.size()[1];
    let mut source = Vec::with_capacity(2 * n * full_width as usize);
    for (row, &pair) in shared.prompt_of.iter().enumerate() {
        let prompt_length = pairs[pair as usize].prompt.len() as i64;
        for t in 0..full_width {
            source.push(if t < prompt_length {
                pair * prompt_width + t
            } else {
                let offset = (t - prompt_length).min(width - 1);
                n as i64 * prompt_width + row as i64 * width + offset
            });
        }
    }
    let d = prompt_hidden.size()[2];
    let hidden = Tensor::cat(
        &[
            prompt_hidden.reshape([-1, d]),
            continuation_hidden.reshape([-1, d]),
        ],
        0,
    )
    .index_select(0, &Tensor::from_slice(&source).to_device(device))
    .view([2 * n as i64, full_width, d]);
    let log_probs = sequence_log_probs_from_hidden(&hidden, &model.lm_head, &batch)?;
    Ok((batch, log_probs))
}

/// The loss of a micro-batch (with its graph) and its detached statistics.
struct MicroBatchOutput {
    loss: Tensor,
    policy_chosen: Tensor,
    policy_rejected: Option<Tensor>,
    rewards: Option<PairScores>,
    tokens: usize,
}

/// Sums over a step's micro-batches, for its metrics.
#[derive(Default)]
struct StepTotals {
    loss: f64,
    pairs: usize,
    tokens: usize,
    logps_chosen: f64,
    logps_rejected: f64,
    rewards_chosen: f64,
    rewards_rejected: f64,
    correct: f64,
    has_rewards: bool,
}

impl StepTotals {
    fn add(&mut self, output: &MicroBatchOutput, pairs: usize) -> Result<()> {
        let sum = |t: &Tensor| -> Result<f64> { Ok(f64::try_from(t.sum(Kind::Double))?) };
        self.loss += f64::try_from(output.loss.detach())?;
        self.pairs += pairs;
        self.tokens += output.tokens;
        self.logps_chosen += sum(&output.policy_chosen)?;
        if let Some(rejected) = &output.policy_rejected {
            self.logps_rejected += sum(rejected)?;
        }
        if let Some(rewards) = &output.rewards {
            self.has_rewards = true;
            self.rewards_chosen += sum(&rewards.chosen)?;
            self.rewards_rejected += sum(&rewards.rejected)?;
            self.correct += sum(&rewards.chosen.gt_tensor(&rewards.rejected))?;
        }
        Ok(())
    }

    fn metrics(&self, micro_batches: usize, grad_norm: f64, lr: f64, seconds: f64) -> StepMetrics {
        let pairs = self.pairs.max(1) as f64;
        let reward = |value: f64| self.has_rewards.then_some(value / pairs);
        StepMetrics {
            step: 0,
            epoch: 0.0,
            loss: self.loss / micro_batches.max(1) as f64,
            rewards_chosen: reward(self.rewards_chosen),
            rewards_rejected: reward(self.rewards_rejected),
            rewards_accuracies: reward(self.correct),
            rewards_margins: reward(self.rewards_chosen - self.rewards_rejected),
            logps_chosen: self.logps_chosen / pairs,
            logps_rejected: self.has_rewards.then_some(self.logps_rejected / pairs),
            grad_norm,
            learning_rate: lr,
            tokens_per_second: self.tokens as f64 / seconds,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::PreferenceLoss;

    #[test]
    fn shuffles_are_permutations_that_depend_on_the_seed() {
        let mut a = Shuffler { state: 7 };
        let first = a.permutation(50);
        let mut sorted = first.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..50).collect::<Vec<_>>());
        assert_ne!(first, a.permutation(50));
        assert_ne!(first, Shuffler { state: 8 }.permutation(50));
        assert_eq!(first, Shuffler { state: 7 }.permutation(50));
    }

    #[test]
    fn steps_per_epoch_round_up_partial_batches_and_groups() {
        let config = PreferenceConfig {
            batch_size: 4,
            grad_accum: 3,
            ..PreferenceConfig::default()
        };
        assert_eq!(config.steps_per_epoch(24), 2);
        assert_eq!(config.steps_per_epoch(25), 3);
        assert_eq!(config.steps_per_epoch(1), 1);
    }

    #[test]
    fn configs_round_trip_through_json_and_bad_ones_are_named() {
        let config = PreferenceConfig {
            loss: PreferenceLoss::Ipo,
            total_steps: Some(40),
            ..PreferenceConfig::default()
        };
        let text = serde_json::to_string(&config).unwrap();
        assert_eq!(
            serde_json::from_str::<PreferenceConfig>(&text).unwrap(),
            config
        );
        let partial: PreferenceConfig = serde_json::from_str(r#"{"beta": 0.1}"#).unwrap();
        assert_eq!(partial.lr, 8e-7);
        let bad = PreferenceConfig {
            label_smoothing: 0.5,
            ..PreferenceConfig::default()
        };
        assert!(bad
            .validate()
            .unwrap_err()
            .to_string()
            .contains("label_smoothing"));
    }
}
