//! The objectives: completion log-probabilities of a batch, the DPO (sigmoid, with cDPO label
//! smoothing), IPO and SFT losses, and DPO's implicit rewards, defined as TRL defines them.

use tch::{Device, Kind, Tensor};

use super::preference::SequenceBatch;
use crate::error::{ModelError, Result};
use crate::llama::Linear;

pub use training_config::PreferenceLoss;

/// The per-sequence score `loss` compares: the summed completion log-probability, or its
/// per-token mean for IPO.
pub fn sequence_scores(loss: PreferenceLoss, log_probs: &SequenceLogProbs) -> Tensor {
    match loss {
        PreferenceLoss::Ipo => &log_probs.sum / log_probs.tokens.clamp_min(1),
        PreferenceLoss::Dpo | PreferenceLoss::Sft => log_probs.sum.shallow_clone(),
    }
}

/// The loss of each pair (`[pairs]`) from the sequence scores (see [`sequence_scores`]) of
/// the policy and the reference. Not defined for SFT, whose loss is a token mean over the
/// batch ([`sft_loss`]).
pub fn pair_losses(
    loss: PreferenceLoss,
    beta: f64,
    label_smoothing: f64,
    policy: &PairScores,
    reference: &PairScores,
) -> Result<Tensor> {
    let margin = (&policy.chosen - &policy.rejected) - (&reference.chosen - &reference.rejected);
    match loss {
        PreferenceLoss::Dpo => {
            let scaled = margin * beta;
            let agree = scaled.log_sigmoid() * (1.0 - label_smoothing);
            let disagree = scaled.neg().log_sigmoid() * label_smoothing;
            Ok((agree + disagree).neg())
        }
        PreferenceLoss::Ipo => Ok((margin - 1.0 / (2.0 * beta)).square()),
        PreferenceLoss::Sft => Err(ModelError::InvalidArgument {
            name: "loss",
            message: "SFT has no pairwise loss; use sft_loss".to_string(),
        }),
    }
}

/// Sequence scores of the chosen and the rejected completions of some pairs (`[pairs]` each).
#[derive(Debug)]
pub struct PairScores {
    /// Scores of the chosen completions.
    pub chosen: Tensor,
    /// Scores of the rejected completions.
    pub rejected: Tensor,
}

impl PairScores {
    /// Splits scores of a chosen-then-rejected batch into its halves.
    pub fn split(scores: &Tensor) -> PairScores {
        let pairs = scores.size()[0] / 2;
        PairScores {
            chosen: scores.narrow(0, 0, pairs),
            rejected: scores.narrow(0, pairs, pairs),
        }
    }

    /// DPO's implicit rewards `β · (policy − reference)` of the chosen and the rejected
    /// completions, without gradient.
    pub fn rewards(&self, reference: &PairScores, beta: f64) -> PairScores {
        PairScores {
            chosen: ((&self.chosen - &reference.chosen) * beta).detach(),
            rejected: ((&self.rejected - &reference.rejected) * beta).detach(),
        }
    }
}

/// Per-row completion log-probabilities of a batch.
#[derive(Debug)]
pub struct SequenceLogProbs {
    /// `[rows]`: the sum over completion tokens of log p(token | everything before it).
    pub sum: Tensor,
    /// `[rows]`: the number of completion tokens (int64).
    pub tokens: Tensor,
}

/// The completion log-probabilities of `batch` under `logits` (`[rows, width, vocab]`, the
/// next-token logits at every position): position t's logits score token t + 1, and only
/// tokens marked in the completion mask count.
pub fn sequence_log_probs(logits: &Tensor, batch: &SequenceBatch) -> Result<SequenceLogProbs> {
    let vocab = check_leading_shape("logits", logits, batch)?;
    let scored = ScoredPositions::of(batch);
    let picked = logits.reshape([-1, vocab]).index_select(0, &scored.flat);
    Ok(scored.log_probs(&picked, batch.rows(), logits.device()))
}

/// As [`sequence_log_probs`], from the final hidden states (`[rows, width, d]`) and the output
/// head: the head runs on the scored positions only. With prompts longer than completions
/// most positions are prompt positions, so this skips most of the head's work (the largest
/// matrix of a small model) and never holds the `[rows, width, vocab]` logits.
pub fn sequence_log_probs_from_hidden(
    hidden: &Tensor,
    head: &Linear,
    batch: &SequenceBatch,
) -> Result<SequenceLogProbs> {
    let width = check_leading_shape("hidden states", hidden, batch)?;
    let scored = ScoredPositions::of(batch);
    let picked = head.forward(&hidden.reshape([-1, width]).index_select(0, &scored.flat));
    Ok(scored.log_probs(&picked, batch.rows(), hidden.device()))
}

/// Checks that `tensor` is `[rows, width, _]` for `batch` and returns its last dimension.
fn check_leading_shape(what: &'static str, tensor: &Tensor, batch: &SequenceBatch) -> Result<i64> {
    let (rows, width) = (batch.rows(), batch.input_ids.size()[1]);
    match tensor.size().as_slice() {
        &[r, w, last] if r == rows && w == width => Ok(last),
        shape => Err(ModelError::InvalidArgument {
            name: what,
            message: format!("shape {shape:?} does not fit a batch of [{rows}, {width}]"),
        }),
    }
}

/// The positions whose next-token prediction is scored.
struct ScoredPositions {
    /// Flat indices (`row · width + t`) of the positions t whose next token (t + 1) is a
    /// completion token.
    flat: Tensor,
    /// The row of each.
    rows: Tensor,
    /// The token each predicts.
    targets: Tensor,
    /// `[rows]`: how many positions each row has.
    counts: Tensor,
}

impl ScoredPositions {
    fn of(batch: &SequenceBatch) -> ScoredPositions {
        let width = batch.input_ids.size()[1];
        // scored[r, t] = 1 when token t + 1 is a completion token.
        let scored = Tensor::cat(
            &[
                batch.completion_mask.narrow(1, 1, width - 1),
                batch.completion_mask.narrow(1, 0, 1).zeros_like(),
            ],
            1,
        );
        let flat = scored.reshape([-1]).nonzero().squeeze_dim(1);
        let targets = batch
            .input_ids
            .roll([-1], [1])
            .reshape([-1])
            .index_select(0, &flat);
        ScoredPositions {
            rows: flat.divide_scalar_mode(width, "floor"),
            counts: scored.sum_dim_intlist(1, false, Kind::Int64),
            flat,
            targets,
        }
    }

    /// Per-row sums of log p(target) from the logits at the scored positions (`[n, vocab]`).
    fn log_probs(&self, picked_logits: &Tensor, rows: i64, device: Device) -> SequenceLogProbs {
        let logits = picked_logits.to_kind(Kind::Float);
        let token_log_probs = logits
            .gather(1, &self.targets.unsqueeze(1), false)
            .squeeze_dim(1)
            - logits.logsumexp([1], false);
        let sum =
            Tensor::zeros([rows], (Kind::Float, device)).index_add(0, &self.rows, &token_log_probs);
        SequenceLogProbs {
            sum,
            tokens: self.counts.shallow_clone(),
        }
    }
}

/// SFT's loss: the mean negative log-likelihood over every completion token of the batch
/// (as `cross_entropy` over the chosen completions' tokens, TRL's `sft` loss).
pub fn sft_loss(log_probs: &SequenceLogProbs) -> Tensor {
    let tokens = log_probs.tokens.sum(Kind::Float).clamp_min(1.0);
    log_probs.sum.sum(Kind::Float).neg() / tokens
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::preference::TokenizedPair;

    fn scores(chosen: &[f32], rejected: &[f32]) -> PairScores {
        PairScores {
            chosen: Tensor::from_slice(chosen),
            rejected: Tensor::from_slice(rejected),
        }
    }

    #[test]
    fn dpo_and_ipo_follow_their_formulas() {
        let policy = scores(&[-3.0, -5.0], &[-4.0, -4.0]);
        let reference = scores(&[-3.5, -5.0], &[-3.5, -4.5]);
        // margins h = (−3 + 4) − 0 = 1 and (−5 + 4) − (−0.5) = −0.5
        let dpo = pair_losses(PreferenceLoss::Dpo, 0.5, 0.1, &policy, &reference).unwrap();
        let sigmoid = |x: f64| 1.0 / (1.0 + (-x).exp());
        for (i, h) in [1.0f64, -0.5].into_iter().enumerate() {
            let want = -0.9 * sigmoid(0.5 * h).ln() - 0.1 * sigmoid(-0.5 * h).ln();
            let got = dpo.double_value(&[i as i64]);
            assert!((got - want).abs() < 1e-6, "{got} vs {want}");
        }
        let ipo = pair_losses(PreferenceLoss::Ipo, 0.5, 0.0, &policy, &reference).unwrap();
        assert!((ipo.double_value(&[1]) - 2.25).abs() < 1e-6);
        let rewards = policy.rewards(&reference, 0.5);
        assert!((rewards.chosen.double_value(&[0]) - 0.25).abs() < 1e-6);
        assert!((rewards.rejected.double_value(&[0]) + 0.25).abs() < 1e-6);
    }

    #[test]
    fn log_probs_count_completion_tokens_only() {
        let truncation = crate::train::Truncation {
            max_prompt_length: 4,
            max_length: 8,
        };
        let a = TokenizedPair::from_ids(&[1, 2], &[3], None, 0, &truncation).unwrap();
        let b = TokenizedPair::from_ids(&[1], &[2, 3], None, 0, &truncation).unwrap();
        let batch = SequenceBatch::chosen(&[&a, &b], Device::Cpu);
        // Zero logits: every position predicts uniformly over 4 ids, so each scored token
        // has log p = −ln 4.
        let logits = Tensor::zeros([2, 4, 4], (Kind::Float, Device::Cpu));
        let log_probs = sequence_log_probs(&logits, &batch).unwrap();
        let tokens = Vec::<i64>::try_from(&log_probs.tokens).unwrap();
        assert_eq!(tokens, [2, 3]);
        let sum = Vec::<f32>::try_from(&log_probs.sum).unwrap();
        let ln4 = 4f32.ln();
        assert!((sum[0] + 2.0 * ln4).abs() < 1e-6 && (sum[1] + 3.0 * ln4).abs() < 1e-6);
        let sft = f64::try_from(sft_loss(&log_probs)).unwrap();
        assert!((sft - f64::from(ln4)).abs() < 1e-6);
        let ipo = sequence_scores(PreferenceLoss::Ipo, &log_probs);
        assert!((ipo.double_value(&[1]) + f64::from(ln4)).abs() < 1e-6);
    }
}
