//! The records a run leaves besides its rounds, as the reports read them: `summary.json`
//! ([`SimulationSummary`]) and `eval.json` ([`EvalReport`], with the memorisation diagnostic's
//! [`MemorisationResult`]). Their writers (`server`'s simulation and evaluation) link
//! libtorch; these types do not.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::digest::{decode_hex, hex, sha256};
use crate::error::{Result, RunError};
use crate::run_dir::Histogram;

/// Why a simulation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// Every planned round ran.
    RoundsCompleted,
    /// The next round would have spent more than the target ε.
    BudgetExhausted,
    /// The run was stopped from outside (`fedsyn serve`'s admin stop, or no clients to serve):
    /// the open round, if any, was abandoned before its charge.
    Stopped,
}

/// What `fedsyn simulate` prints at the end (and writes as `summary.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SimulationSummary {
    /// The run directory.
    pub run_dir: PathBuf,
    /// Rounds finished (checkpointed).
    pub rounds: u64,
    /// Why the run stopped.
    pub stop_reason: StopReason,
    /// ε spent (RDP accountant) at `delta`.
    pub epsilon_rdp: f64,
    /// ε spent (PLD accountant) at `delta`.
    pub epsilon_pld: f64,
    /// The target ε of the configuration.
    pub target_epsilon: f64,
    /// δ.
    pub delta: f64,
    /// The noise multiplier used.
    pub sigma: f64,
    /// Non-private diagnostic: FID of each round's candidates to the private eval set (round 0:
    /// the public model alone).
    pub fid_nonprivate_per_round: Vec<Option<f64>>,
    /// Non-private diagnostic: FID of the final synthetic set to the private eval set.
    pub synthetic_fid_nonprivate: Option<f64>,
    /// Samples written to `synthetic.jsonl`.
    pub synthetic_samples: usize,
    /// The synthetic data file.
    pub synthetic_path: PathBuf,
    /// The privacy statement (Markdown).
    pub statement_path: PathBuf,
    /// Wall-clock seconds of this invocation.
    pub seconds: f64,
    /// What the generator computed in (`f32` or `bf16`; `model.generator_dtype` resolved on
    /// this machine). Empty in summaries written before it was recorded.
    #[serde(default)]
    pub generator_dtype: String,
}

impl SimulationSummary {
    /// A short human-readable account.
    pub fn describe(&self) -> String {
        let fid = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.4}"));
        let per_round: Vec<String> = self
            .fid_nonprivate_per_round
            .iter()
            .map(|v| fid(*v))
            .collect();
        format!(
            "run {}: {} round(s), {}; ε spent {:.4} (RDP) / {:.4} (PLD) of {} at δ = {:e}, σ = {:.4}\n\
             FID to the private eval set (non-private diagnostic) per round: [{}]; synthetic set: {}\n\
             {} synthetic samples in {}\nprivacy statement: {}",
            self.run_dir.display(),
            self.rounds,
            match self.stop_reason {
                StopReason::RoundsCompleted => "all planned rounds done",
                StopReason::BudgetExhausted => "stopped: the next round would exceed the budget",
                StopReason::Stopped => "stopped from outside",
            },
            self.epsilon_rdp,
            self.epsilon_pld,
            self.target_epsilon,
            self.delta,
            self.sigma,
            per_round.join(", "),
            fid(self.synthetic_fid_nonprivate),
            self.synthetic_samples,
            self.synthetic_path.display(),
            self.statement_path.display(),
        )
    }
}

/// The file `fedsyn eval` writes in the run (or reference) directory.
pub const EVAL_FILE: &str = "eval.json";
/// The version of [`EvalReport`]'s layout.
pub const EVAL_SCHEMA: u32 = 1;
/// Where a DP-FedAvg run keeps its trained adapter.
pub const MODEL_DIR: &str = "model";

/// `eval.json`: what `fedsyn eval` measured (read by `fedsyn compare` and `fedsyn report`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalReport {
    /// [`EVAL_SCHEMA`].
    pub schema: u32,
    /// `popri`, `pe`, `pe-sft`, `dp-fedavg`, or the references `real` (ε = ∞) and `public`
    /// (ε = 0).
    pub method: String,
    /// The evaluated run (`None` for a reference).
    pub run_dir: Option<PathBuf>,
    /// The run's ε budget (`None` for the references).
    pub epsilon_target: Option<f64>,
    /// ε spent by the run (RDP accountant).
    pub epsilon_rdp: Option<f64>,
    /// ε spent by the run (PLD accountant).
    pub epsilon_pld: Option<f64>,
    /// δ of both ε.
    pub delta: Option<f64>,
    /// Next-token accuracy of the downstream model.
    pub downstream: DownstreamResult,
    /// Embedding-distribution metrics (`None` when there is no text to compare: DP-FedAvg and
    /// the public reference).
    pub distribution: Option<DistributionResult>,
    /// The memorisation diagnostic: each synthetic text's nearest private training text by
    /// embedding cosine and its longest word run shared with one (computed from the clients'
    /// raw texts; runs of a method that writes synthetic text only; absent from older
    /// reports).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memorisation_nonprivate: Option<MemorisationResult>,
    /// Wall-clock seconds of the evaluation.
    pub seconds: f64,
}

/// The downstream model's result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DownstreamResult {
    /// What was trained and how.
    pub model: String,
    /// Top-1 next-token accuracy on the test half of the private eval split.
    pub accuracy: f64,
    /// Positions scored for `accuracy` (its resolution: one token is 1/`eval_tokens`).
    pub eval_tokens: u64,
    /// Validation accuracy after each training epoch (empty when nothing was trained here).
    pub validation: Vec<EpochAccuracy>,
    /// The epoch with the best validation accuracy, whose model `accuracy` measures (0 when
    /// nothing was trained here: the public model, or a DP-FedAvg run's own adapter).
    pub chosen_epoch: usize,
    /// Texts the downstream model was trained on.
    pub train_texts: usize,
    /// The seed of the adapter's initialisation, the batch order and the split.
    pub seed: u64,
    /// Each test position's outcome, for the paired bootstrap of `fedsyn compare` between
    /// runs scored on the same tokens (absent from reports of older versions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_hits: Option<TokenHits>,
}

/// The outcomes of the scored test positions: which next tokens the model got right.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenHits {
    /// SHA-256 (hex) of the scored sequences' token ids: two runs are compared position by
    /// position only when these are equal.
    pub tokens_sha256: String,
    /// Scored positions.
    pub positions: u64,
    /// One bit per position (1 = correct), least significant bit first, as hex.
    pub bits: String,
}

impl TokenHits {
    /// The outcomes of `hits` on `sequences`.
    pub fn new(sequences: &[Vec<u32>], hits: &[bool]) -> TokenHits {
        let ids: Vec<u8> = sequences
            .iter()
            .flat_map(|s| {
                // Each sequence's length first, so that a different split point differs.
                std::iter::once(s.len() as u32)
                    .chain(s.iter().copied())
                    .flat_map(u32::to_le_bytes)
            })
            .collect();
        let mut bytes = vec![0u8; hits.len().div_ceil(8)];
        for (i, _) in hits.iter().enumerate().filter(|(_, &hit)| hit) {
            bytes[i / 8] |= 1 << (i % 8);
        }
        TokenHits {
            tokens_sha256: hex(&sha256(&ids)),
            positions: hits.len() as u64,
            bits: hex(&bytes),
        }
    }

    /// The outcomes, position by position; `None` when `bits` does not hold `positions` bits.
    pub fn outcomes(&self) -> Option<Vec<bool>> {
        let bytes = decode_hex(&self.bits)?;
        let positions = usize::try_from(self.positions).ok()?;
        if bytes.len() != positions.div_ceil(8) {
            return None;
        }
        Some(
            (0..positions)
                .map(|i| bytes[i / 8] & (1 << (i % 8)) != 0)
                .collect(),
        )
    }
}

/// Validation accuracy after one epoch.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct EpochAccuracy {
    /// 1-based epoch.
    pub epoch: usize,
    /// Top-1 next-token accuracy on the validation half.
    pub accuracy: f64,
}

/// Distribution metrics between the evaluated texts' and the private eval texts' embeddings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DistributionResult {
    /// Fréchet distance (lower is closer).
    pub fid: f64,
    /// k-NN precision (k = 3): share of evaluated texts inside the private texts' manifold.
    pub precision: f64,
    /// k-NN recall (k = 3): share of private texts inside the evaluated texts' manifold.
    pub recall: f64,
    /// MAUVE (mauve-text's defaults), in (0, 1].
    pub mauve: f64,
    /// Evaluated (synthetic, or for `real` training) texts embedded.
    pub synthetic_texts: usize,
    /// Private eval texts embedded.
    pub eval_texts: usize,
}

/// Reads an `eval.json`.
pub fn read_report(path: &Path) -> Result<EvalReport> {
    let text = std::fs::read_to_string(path).map_err(|e| RunError::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| RunError::RunDir {
        path: path.to_path_buf(),
        message: format!("{EVAL_FILE} cannot be read ({e}); rerun fedsyn eval"),
    })
}

/// The non-private references of a comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reference {
    /// ε = ∞: the downstream model trained on the clients' real training texts.
    Real,
    /// ε = 0: the public model alone, without any training.
    Public,
}

impl Reference {
    /// The method name `eval.json` records.
    pub fn as_str(self) -> &'static str {
        match self {
            Reference::Real => "real",
            Reference::Public => "public",
        }
    }
}

impl FromStr for Reference {
    type Err = RunError;

    fn from_str(text: &str) -> Result<Reference> {
        match text {
            "real" => Ok(Reference::Real),
            "public" => Ok(Reference::Public),
            other => Err(RunError::argument(
                "--reference",
                other,
                "real (ε = ∞: trained on the clients' texts) or public (ε = 0: the public model)",
            )),
        }
    }
}

/// Runs of at least this many words are found from an index of their first this many words
/// and then followed in the text; shorter ones are looked up in per-length sets.
pub const ANCHOR_WORDS: usize = 8;

/// What `eval.json` records (`memorisation_nonprivate`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemorisationResult {
    /// Synthetic texts checked.
    pub synthetic_texts: usize,
    /// Private training texts they were compared with.
    pub private_texts: usize,
    /// Per synthetic text (in `synthetic.jsonl` order): the cosine to its nearest private
    /// training text.
    pub nearest_cosine: Vec<f64>,
    /// Per synthetic text: the index (among the private training texts, clients in id order)
    /// of that nearest text.
    pub nearest_index: Vec<usize>,
    /// Per synthetic text: the longest run of words it shares with any private training text.
    pub longest_shared_words: Vec<usize>,
    /// Histogram of `nearest_cosine`.
    pub cosine_histogram: Histogram,
    /// Histogram of `longest_shared_words` (bins 0–1, 2–3, …, and one for runs of 32 and
    /// more).
    pub shared_words_histogram: Histogram,
    /// Synthetic texts sharing a run of at least [`ANCHOR_WORDS`] words with a private text.
    pub texts_sharing_anchor_run: usize,
}

impl MemorisationResult {
    /// The longest word run any synthetic text shares with a private text.
    pub fn longest_run(&self) -> usize {
        self.longest_shared_words.iter().copied().max().unwrap_or(0)
    }

    /// The median of the synthetic texts' longest shared runs (the upper one of an even
    /// count).
    pub fn median_run(&self) -> usize {
        let mut sorted = self.longest_shared_words.clone();
        sorted.sort_unstable();
        sorted.get(sorted.len() / 2).copied().unwrap_or(0)
    }

    /// The highest cosine of a synthetic text to its nearest private text.
    pub fn highest_cosine(&self) -> f64 {
        self.nearest_cosine.iter().copied().fold(f64::NAN, f64::max)
    }
}
