//! The downstream model of utility evaluation: causal-LM training of a model's LoRA adapter on
//! plain texts, and top-1 next-token accuracy, as the POPri paper measures the utility of a
//! synthetic data set (train a small LM on it, score next-token predictions on private held-out
//! text).
//!
//! Every text becomes one sequence of at most `max_tokens` tokens (the paper's 64), encoded
//! without special tokens and cut at the end; texts of fewer than two tokens are dropped (they
//! hold no prediction). Position t predicts token t + 1, so a sequence of n tokens has n − 1
//! scored positions; padding is never scored. The training loss is the mean negative
//! log-likelihood over every scored position of a batch (transformers' causal-LM loss).

use std::time::Instant;

use serde::{Deserialize, Serialize};
use tch::{Device, Kind};
use tokenizers::Tokenizer;

use crate::error::{ModelError, Result};
use crate::llama::CausalLm;
use crate::train::dpo::Shuffler;
use crate::train::loss::{sequence_log_probs_from_hidden, sft_loss};
use crate::train::optim::{clip_grad_norm, AdamW, AdamWConfig, LrSchedule, LrScheduler};
use crate::train::preference::SequenceBatch;

/// The paper's sequence length for the downstream model.
pub const DEFAULT_MAX_TOKENS: usize = 64;

/// Token ids of `texts` for causal-LM training or scoring: each text encoded by `tokenizer`
/// without special tokens, cut to its first `max_tokens` ids; texts with fewer than two ids
/// are left out (nothing to predict).
pub fn encode_texts<S: AsRef<str>>(
    tokenizer: &Tokenizer,
    texts: &[S],
    max_tokens: usize,
) -> Result<Vec<Vec<u32>>> {
    if max_tokens < 2 {
        return Err(ModelError::InvalidArgument {
            name: "max_tokens",
            message: format!("{max_tokens}: a sequence needs at least 2 tokens"),
        });
    }
    let mut sequences = Vec::with_capacity(texts.len());
    for text in texts {
        let encoding =
            tokenizer
                .encode(text.as_ref(), false)
                .map_err(|e| ModelError::Tokenizer {
                    source_name: "the downstream model's tokenizer".to_string(),
                    message: e.to_string(),
                })?;
        let ids = encoding.get_ids();
        if ids.len() >= 2 {
            sequences.push(ids[..ids.len().min(max_tokens)].to_vec());
        }
    }
    Ok(sequences)
}

/// Correct top-1 next-token predictions out of the scored positions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenAccuracy {
    /// Positions whose most likely next token was the actual one.
    pub correct: u64,
    /// Scored positions (every real token but each sequence's first).
    pub tokens: u64,
}

impl TokenAccuracy {
    /// The count of per-position outcomes (see [`next_token_hits`]).
    pub fn of(hits: &[bool]) -> TokenAccuracy {
        TokenAccuracy {
            correct: hits.iter().filter(|&&hit| hit).count() as u64,
            tokens: hits.len() as u64,
        }
    }

    /// `correct / tokens` (0 when nothing was scored).
    pub fn accuracy(&self) -> f64 {
        if self.tokens == 0 {
            0.0
        } else {
            self.correct as f64 / self.tokens as f64
        }
    }
}

/// Top-1 next-token accuracy of `model` over `sequences`, `batch_size` sequences per forward
/// pass, without gradients (the count of [`next_token_hits`]).
pub fn next_token_accuracy(
    model: &CausalLm,
    sequences: &[Vec<u32>],
    batch_size: usize,
) -> Result<TokenAccuracy> {
    Ok(TokenAccuracy::of(&next_token_hits(
        model, sequences, batch_size,
    )?))
}

/// Whether `model`'s most likely next token was the actual one at each scored position (every
/// real token but each sequence's first), sequence by sequence, `batch_size` sequences per
/// forward pass, without gradients: the outcomes that paired comparisons between two models
/// resample. The LoRA adapter takes part when the model has one (it must not be merged:
/// unmerge it first); ties in the logits go to the lowest token id, as `argmax`.
pub fn next_token_hits(
    model: &CausalLm,
    sequences: &[Vec<u32>],
    batch_size: usize,
) -> Result<Vec<bool>> {
    check_sequences(model, sequences, batch_size)?;
    let _no_grad = tch::no_grad_guard();
    let adapter = model.lora_config().is_some();
    let mut outcomes = Vec::new();
    for chunk in sequences.chunks(batch_size) {
        let batch = sequence_batch(chunk, model.device());
        let width = batch.input_ids.size()[1];
        let hidden =
            model.forward_train_hidden(&batch.input_ids, &batch.attention_mask, adapter, false)?;
        let predicted = model
            .lm_head
            .forward(&hidden.narrow(1, 0, width - 1))
            .argmax(-1, false);
        let targets = batch.input_ids.narrow(1, 1, width - 1);
        let scored = batch.completion_mask.narrow(1, 1, width - 1);
        // Row-major: each sequence's positions in order, sequences in order.
        let hits = Vec::<i64>::try_from(
            predicted
                .eq_tensor(&targets)
                .to_kind(Kind::Int64)
                .flatten(0, -1)
                .to_device(tch::Device::Cpu),
        )?;
        let scored = Vec::<i64>::try_from(
            scored
                .to_kind(Kind::Int64)
                .flatten(0, -1)
                .to_device(tch::Device::Cpu),
        )?;
        outcomes.extend(
            hits.iter()
                .zip(&scored)
                .filter(|(_, &scored)| scored != 0)
                .map(|(&hit, _)| hit != 0),
        );
    }
    Ok(outcomes)
}

/// Mean negative log-likelihood per scored position of `model` over `sequences` (no
/// gradients; the adapter takes part when present).
pub fn mean_token_loss(model: &CausalLm, sequences: &[Vec<u32>], batch_size: usize) -> Result<f64> {
    check_sequences(model, sequences, batch_size)?;
    let _no_grad = tch::no_grad_guard();
    let adapter = model.lora_config().is_some();
    let (mut nll, mut tokens) = (0.0, 0i64);
    for chunk in sequences.chunks(batch_size) {
        let batch = sequence_batch(chunk, model.device());
        let hidden =
            model.forward_train_hidden(&batch.input_ids, &batch.attention_mask, adapter, false)?;
        let log_probs = sequence_log_probs_from_hidden(&hidden, &model.lm_head, &batch)?;
        nll -= f64::try_from(log_probs.sum.sum(Kind::Double))?;
        tokens += i64::try_from(log_probs.tokens.sum(Kind::Int64))?;
    }
    Ok(nll / tokens.max(1) as f64)
}

/// Hyper-parameters of causal-LM training of a LoRA adapter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CausalLmConfig {
    /// Peak learning rate of AdamW (the paper's downstream training: 2e-4).
    pub lr: f64,
    /// The learning-rate schedule over the planned steps.
    pub schedule: LrSchedule,
    /// Sequences per optimiser step.
    pub batch_size: usize,
    /// Bound on the global gradient norm (0: no clipping), as transformers' Trainer (1.0).
    pub max_grad_norm: f64,
    /// AdamW's decoupled weight decay.
    pub weight_decay: f64,
    /// Seeds the order sequences are visited in.
    pub seed: u64,
}

impl Default for CausalLmConfig {
    /// AdamW at 2e-4 decaying linearly to 0 (transformers' Trainer schedule), batches of 8,
    /// gradient norm ≤ 1, no weight decay.
    fn default() -> Self {
        CausalLmConfig {
            lr: 2e-4,
            schedule: LrSchedule::Linear,
            batch_size: 8,
            max_grad_norm: 1.0,
            weight_decay: 0.0,
            seed: 0,
        }
    }
}

impl CausalLmConfig {
    /// Checks the ranges; the error names the field.
    pub fn validate(&self) -> Result<()> {
        if !(self.lr.is_finite() && self.lr > 0.0) {
            let message = format!("{} is not a finite rate > 0", self.lr);
            return Err(ModelError::invalid_argument("lr", message));
        }
        if self.batch_size == 0 {
            let message = "0: use at least 1 sequence";
            return Err(ModelError::invalid_argument("batch_size", message));
        }
        if !(self.max_grad_norm.is_finite() && self.max_grad_norm >= 0.0) {
            let message = format!("{} is not a finite bound ≥ 0", self.max_grad_norm);
            return Err(ModelError::invalid_argument("max_grad_norm", message));
        }
        Ok(self.adamw().validate()?)
    }

    fn adamw(&self) -> AdamWConfig {
        AdamWConfig {
            weight_decay: self.weight_decay,
            ..AdamWConfig::default()
        }
    }

    /// Optimiser steps of one pass over `sequences` sequences.
    pub fn steps_per_epoch(&self, sequences: usize) -> u64 {
        sequences.div_ceil(self.batch_size.max(1)) as u64
    }
}

/// What a call to [`CausalLmTrainer::train_steps`] measured.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TrainingStats {
    /// Optimiser steps taken.
    pub steps: u64,
    /// Mean of the steps' losses (each the batch's mean token NLL, before the update).
    pub mean_loss: f64,
    /// Scored positions trained on.
    pub tokens: u64,
    /// Wall-clock seconds.
    pub seconds: f64,
}

/// Trains a model's LoRA adapter as a causal LM on token sequences, carrying the optimiser,
/// the schedule and the visiting order across calls.
#[derive(Debug)]
pub struct CausalLmTrainer {
    config: CausalLmConfig,
    optimizer: AdamW,
    scheduler: LrScheduler,
    shuffler: Shuffler,
    /// Indices still to visit in the current pass, next one last.
    pending: Vec<usize>,
}

impl CausalLmTrainer {
    /// A trainer whose schedule spans `total_steps` optimiser steps.
    pub fn new(config: CausalLmConfig, total_steps: u64) -> Result<CausalLmTrainer> {
        config.validate()?;
        Ok(CausalLmTrainer {
            optimizer: AdamW::new(config.adamw())?,
            scheduler: LrScheduler::new(config.lr, config.schedule, 0.0, 0, total_steps.max(1)),
            shuffler: Shuffler { state: config.seed },
            pending: Vec::new(),
            config,
        })
    }

    /// The hyper-parameters.
    pub fn config(&self) -> &CausalLmConfig {
        &self.config
    }

    /// One pass over `sequences` in a fresh seeded order
    /// ([`CausalLmConfig::steps_per_epoch`] steps).
    pub fn train_epoch(
        &mut self,
        model: &CausalLm,
        sequences: &[Vec<u32>],
    ) -> Result<TrainingStats> {
        self.pending.clear();
        self.train_steps(
            model,
            sequences,
            self.config.steps_per_epoch(sequences.len()),
        )
    }

    /// `steps` optimiser steps, each on the next `batch_size` sequences of a seeded order of
    /// `sequences` (a new order starts when one is used up; a batch never spans two orders).
    /// The model must carry an unmerged LoRA adapter, whose tensors are the trained ones.
    /// `sequences` must be the same set on every call that continues an order.
    pub fn train_steps(
        &mut self,
        model: &CausalLm,
        sequences: &[Vec<u32>],
        steps: u64,
    ) -> Result<TrainingStats> {
        check_sequences(model, sequences, self.config.batch_size)?;
        if model.lora_config().is_none() {
            return Err(ModelError::InvalidArgument {
                name: "model",
                message: "it has no LoRA adapter to train; add one (add_lora) first".to_string(),
            });
        }
        let started = Instant::now();
        let params = model.lora_parameters();
        let dropout = model.lora_config().map_or(0.0, |lora| lora.dropout);
        let bound = if self.config.max_grad_norm > 0.0 {
            self.config.max_grad_norm
        } else {
            f64::INFINITY
        };
        let (mut loss_sum, mut tokens) = (0.0, 0u64);
        for _ in 0..steps {
            let indices = self.next_batch(sequences.len());
            let rows: Vec<Vec<u32>> = indices.iter().map(|&i| sequences[i].clone()).collect();
            let batch = sequence_batch(&rows, model.device());
            if dropout > 0.0 {
                // Dropout masks from libtorch's generator, seeded per step: reproducible runs.
                tch::manual_seed((self.shuffler.next_u64() >> 1) as i64);
            }
            for (_, param) in &params {
                param.shallow_clone().zero_grad();
            }
            let hidden =
                model.forward_train_hidden(&batch.input_ids, &batch.attention_mask, true, true)?;
            let log_probs = sequence_log_probs_from_hidden(&hidden, &model.lm_head, &batch)?;
            let loss = sft_loss(&log_probs);
            loss.backward();
            clip_grad_norm(&params, bound)?;
            self.optimizer.step(&params, self.scheduler.lr())?;
            self.scheduler.advance();
            loss_sum += f64::try_from(loss.detach())?;
            tokens += u64::try_from(i64::try_from(log_probs.tokens.sum(Kind::Int64))?).unwrap_or(0);
        }
        for (_, param) in &params {
            param.shallow_clone().zero_grad();
        }
        Ok(TrainingStats {
            steps,
            mean_loss: loss_sum / steps.max(1) as f64,
            tokens,
            seconds: started.elapsed().as_secs_f64(),
        })
    }

    /// The indices of the next batch, starting a new seeded order when the current one is
    /// used up.
    fn next_batch(&mut self, sequences: usize) -> Vec<usize> {
        if self.pending.is_empty() {
            self.pending = self.shuffler.permutation(sequences);
            self.pending.reverse();
        }
        let take = self.config.batch_size.min(self.pending.len());
        let split = self.pending.len() - take;
        let mut batch = self.pending.split_off(split);
        batch.reverse();
        batch
    }
}

/// Right-padded rows whose every token but the first is scored (the first token is the
/// "prompt" of [`SequenceBatch`]: it predicts but is not predicted).
fn sequence_batch(sequences: &[Vec<u32>], device: Device) -> SequenceBatch {
    let rows: Vec<(&[u32], &[u32])> = sequences.iter().map(|ids| (&ids[..1], &ids[1..])).collect();
    SequenceBatch::new(&rows, device)
}

/// Checks that there is something to score and that every sequence fits the model.
fn check_sequences(model: &CausalLm, sequences: &[Vec<u32>], batch_size: usize) -> Result<()> {
    let invalid = |message: String| {
        Err(ModelError::InvalidArgument {
            name: "sequences",
            message,
        })
    };
    if batch_size == 0 {
        return Err(ModelError::InvalidArgument {
            name: "batch_size",
            message: "0: use at least 1 sequence per batch".to_string(),
        });
    }
    if sequences.is_empty() {
        return invalid("no sequences were given (every text had fewer than 2 tokens?)".into());
    }
    let vocab = model.config().vocab_size as u32;
    for (index, ids) in sequences.iter().enumerate() {
        if ids.len() < 2 {
            return invalid(format!(
                "sequence {index} has {} token(s); 2 are needed",
                ids.len()
            ));
        }
        if ids.len() as i64 > model.max_positions() {
            return invalid(format!(
                "sequence {index} has {} tokens; the model takes at most {}",
                ids.len(),
                model.max_positions()
            ));
        }
        if let Some(id) = ids.iter().copied().find(|&id| id >= vocab) {
            return invalid(format!(
                "sequence {index} holds token id {id}; the model's vocabulary has {vocab}"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accuracy_is_a_ratio_and_zero_when_nothing_was_scored() {
        let accuracy = TokenAccuracy {
            correct: 3,
            tokens: 12,
        };
        assert_eq!(accuracy.accuracy(), 0.25);
        assert_eq!(TokenAccuracy::default().accuracy(), 0.0);
    }

    #[test]
    fn batches_score_every_token_but_the_first() {
        let batch = sequence_batch(&[vec![5, 6, 7], vec![8, 9]], Device::Cpu);
        let scored = Vec::<Vec<i64>>::try_from(&batch.completion_mask).unwrap();
        assert_eq!(scored, [vec![0, 1, 1], vec![0, 1, 0]]);
    }

    #[test]
    fn orders_cover_every_sequence_once_per_pass() {
        let config = CausalLmConfig {
            batch_size: 3,
            ..CausalLmConfig::default()
        };
        let mut trainer = CausalLmTrainer::new(config, 10).unwrap();
        let mut seen: Vec<usize> = (0..3).flat_map(|_| trainer.next_batch(7)).collect();
        // 3 + 3 + 1: the last batch of a pass is short rather than spanning two orders.
        assert_eq!(seen.len(), 7);
        seen.sort_unstable();
        assert_eq!(seen, (0..7).collect::<Vec<_>>());
        assert_eq!(trainer.next_batch(7).len(), 3);
    }
}
