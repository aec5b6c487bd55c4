//! Preference optimisation of a Llama-family model's LoRA adapter: DPO, IPO and SFT as TRL
//! defines them, with AdamW and learning-rate schedules as PyTorch and transformers define
//! them.
//!
//! - [`preference`]: pairs `{prompt, chosen, rejected}` to token ids (TRL's truncation) and
//!   padded batches.
//! - [`loss`]: completion log-probabilities, the DPO / IPO / SFT losses, implicit rewards.
//! - [`optim`]: AdamW, gradient-norm clipping, schedules, optimiser state files.
//! - [`downstream`]: causal-LM training of the adapter on plain texts and top-1 next-token
//!   accuracy (the downstream model of utility evaluation and DP-FedAvg).
//! - [`dpo`]: [`PreferenceTrainer`], which POPri calls every round with that round's pairs,
//!   carrying the adapter and optimiser across rounds.
//!
//! ```no_run
//! # fn main() -> models::Result<()> {
//! use models::llama::{Generator, LoraConfig};
//! use models::train::{PreferenceConfig, PreferencePair, PreferenceTrainer};
//! let mut generator = Generator::load("SmolLM2-135M-Instruct.Q4_1.gguf".as_ref(), tch::Device::Cpu)?;
//! generator.model_mut().add_lora(&LoraConfig::default(), 0)?;
//! let mut trainer = PreferenceTrainer::new(PreferenceConfig::default())?;
//! let pairs = vec![PreferencePair {
//!     prompt: "Write one sentence about rivers.".to_string(),
//!     chosen: "Rivers carry water to the sea.".to_string(),
//!     rejected: "Cats.".to_string(),
//! }];
//! let metrics = trainer.train_pairs(&mut generator, &pairs, true, |m| eprintln!("{}", m.loss))?;
//! generator.model().save_adapter("adapter".as_ref(), "SmolLM2-135M-Instruct")?;
//! trainer.save("adapter".as_ref())?;
//! # let _ = metrics; Ok(()) }
//! ```

pub mod downstream;
pub mod dpo;
pub mod loss;
pub mod optim;
pub mod preference;

pub use downstream::{
    encode_texts, mean_token_loss, next_token_accuracy, next_token_hits, CausalLmConfig,
    CausalLmTrainer, TokenAccuracy, TrainingStats,
};
pub use dpo::{pair_log_probs, PreferenceConfig, PreferenceTrainer, StepMetrics};
pub use loss::{
    pair_losses, sequence_log_probs, sequence_log_probs_from_hidden, sequence_scores, sft_loss,
    PairScores, PreferenceLoss, SequenceLogProbs,
};
pub use optim::{clip_grad_norm, AdamW, AdamWConfig, LrSchedule, LrScheduler};
pub use preference::{PreferencePair, SequenceBatch, TokenizedPair, Truncation};
