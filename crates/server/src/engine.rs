//! One POPri round, written once: the simulation drives it with in-process clients, the HTTP
//! server with remote ones; both reach the clients through [`ScoreTransport`].
//!
//! A round (Hou et al., ICML 2025, §3): the generator writes K candidates for each of J public
//! prompts; the candidates are embedded and sent to the sampled clients; each returns its
//! standardised, clipped score vector; the server sums them, **commits the round's privacy cost
//! to the ledger**, adds Gaussian noise, ranks each prompt's candidates by noisy score and
//! trains the generator's LoRA adapter with DPO on (best, r-th best) pairs.

use std::time::Instant;

use models::train::{PreferencePair, PreferenceTrainer, StepMetrics};
use models::{Generator, SamplingParams, SentenceEmbedder};
use tch::Tensor;

use crate::config::PromptStyle;
use crate::error::{Result, ServerError};
use crate::generation::{derive_seed, truncate_to_tokens, with_adapter_merged};
use crate::noise::{l2_norm, GaussianMechanism, GridSum, PlannedRelease};
use crate::pairs::{preference_agreement, preference_pairs, RankedPair};
use crate::prompts::clean_completion;
pub use crate::run_dir::PhaseSeconds;
use crate::run_dir::{Histogram, NonPrivate, NonPrivateMetrics};
use privacy_accounting::Sampling;
use round_driver::{Progress, Round};

/// Bins of the per-round histogram of noisy scores in the metrics.
const NOISY_SCORE_BINS: usize = 20;

/// What the server sends to the clients of a round.
pub struct RoundTask<'a> {
    /// The round number (0-based).
    pub round: u64,
    /// The L2 bound every client clips its score vector to.
    pub clip: f64,
    /// The round's release: the grid every client vector is rounded to before the sum.
    pub mechanism: &'a GaussianMechanism,
    /// Candidate embeddings, `[J·K, d]`, prompt-major (candidate `j·K + k`).
    pub candidates: &'a Tensor,
}

/// The clients' answer to a round: the sum of their clipped score vectors.
#[derive(Debug, Clone)]
pub struct CollectedScores {
    /// Σ over the contributing clients of their clipped vectors, each on the round's grid
    /// (length J·K). Absent clients add zero.
    pub sum: GridSum,
    /// Simulation only: how the clients' vectors looked before the sum.
    pub nonprivate: Option<NonPrivate<ContributionStats>>,
}

/// Un-noised statistics of the clients' contributions (simulation diagnostics).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ContributionStats {
    /// How many clients contributed.
    pub clients: usize,
    /// How many of them had to scale their vector down to the clip bound.
    pub clipped: usize,
    /// Mean L2 norm of the vectors before clipping.
    pub mean_pre_clip_norm: f64,
}

/// How the round engine reaches the clients: in-process simulated clients or remote ones over
/// HTTP. The engine samples the clients; the transport only collects their vectors.
pub trait ScoreTransport {
    /// Number of clients that could be sampled.
    fn population(&self) -> usize;
    /// Sends `task` to the clients `sampled` (indices into the population) and returns the sum
    /// of their clipped score vectors. Clients that do not answer add zero to the sum (the
    /// round is still accounted for everyone sampled: see `docs/privacy.md`).
    fn collect(&mut self, task: &RoundTask<'_>, sampled: &[usize]) -> Result<CollectedScores>;
}

/// The candidates of one round, prompt-major.
#[derive(Debug, Clone)]
pub struct Candidates {
    /// Cleaned candidate texts (candidate `j·K + k` is prompt j's k-th sample).
    pub texts: Vec<String>,
    /// Number of prompts J.
    pub prompts: usize,
    /// Candidates per prompt K.
    pub per_prompt: usize,
}

/// A finished round: its candidates, their embeddings (`[J·K, d]`) and its report.
pub struct RoundOutput {
    pub candidates: Candidates,
    pub embeddings: Tensor,
    pub report: RoundReport,
}

/// Everything a finished round reports (the engine's part of the metrics row).
#[derive(Debug, Clone)]
pub struct RoundReport {
    pub round: u64,
    /// Clients sampled (public only for full participation and fixed cohorts).
    pub sampled: usize,
    pub noise_std: f64,
    /// Simulation only: the un-noised diagnostics (contributing clients, clipping, signal to
    /// noise, agreement of the noisy and clean preferences).
    pub nonprivate: Option<NonPrivate<NonPrivateMetrics>>,
    /// Histogram of the noisy scores (released: drawn after the cost was committed).
    pub noisy_scores: Option<Histogram>,
    pub dpo: Vec<StepMetrics>,
    pub seconds: PhaseSeconds,
}

/// The fixed settings of every round.
#[derive(Debug, Clone)]
pub struct RoundSettings {
    /// K, candidates per prompt.
    pub per_prompt: usize,
    /// How candidates are sampled (the seed is replaced per round and batch).
    pub sampling: SamplingParams,
    /// Candidates are cut to this many generator tokens.
    pub truncate_tokens: usize,
    /// Rows per generation batch.
    pub batch_size: usize,
    /// Texts per embedding batch.
    pub embed_batch: usize,
    /// Per-client L2 clip bound C.
    pub clip: f64,
    /// Noise multiplier σ (noise std σ·Δ, see [`GaussianMechanism`]).
    pub noise_multiplier: f64,
    /// Rank of the rejected candidate in each pair (0 = best).
    pub rejected_rank: usize,
    /// The run's seed; candidate sampling derives per-round streams from it.
    pub seed: u64,
    /// The public prompts' style, which says how a candidate is cleaned
    /// ([`clean_completion`]).
    pub prompt_style: PromptStyle,
}

/// The POPri round engine: the generator with its adapter and trainer, the embedder, the fixed
/// public prompts.
pub struct PopriEngine {
    generator: Generator,
    embedder: SentenceEmbedder,
    trainer: PreferenceTrainer,
    prompts: Vec<String>,
    settings: RoundSettings,
}

impl PopriEngine {
    /// An engine over `prompts` (public: built from the public seed pool, never private data).
    pub fn new(
        generator: Generator,
        embedder: SentenceEmbedder,
        trainer: PreferenceTrainer,
        prompts: Vec<String>,
        settings: RoundSettings,
    ) -> Result<PopriEngine> {
        if prompts.is_empty() {
            return Err(ServerError::argument(
                "prompts",
                0,
                "at least one public prompt per round",
            ));
        }
        if settings.rejected_rank == 0 || settings.rejected_rank >= settings.per_prompt {
            return Err(ServerError::argument(
                "pairs.rejected_rank",
                settings.rejected_rank,
                format!(
                    "a rank in 1..{} (below generation.candidates_per_prompt)",
                    settings.per_prompt
                ),
            ));
        }
        Ok(PopriEngine {
            generator,
            embedder,
            trainer,
            prompts,
            settings,
        })
    }

    /// The generator (with its adapter).
    pub fn generator(&self) -> &Generator {
        &self.generator
    }

    /// The embedder the candidates are embedded with.
    pub fn embedder(&self) -> &SentenceEmbedder {
        &self.embedder
    }

    /// The preference trainer (its optimiser state carries over between rounds).
    pub fn trainer(&self) -> &PreferenceTrainer {
        &self.trainer
    }

    /// The fixed prompts.
    pub fn prompts(&self) -> &[String] {
        &self.prompts
    }

    /// The release of round `round` under `sampling`: its mechanism on the J·K scores and the
    /// ledger event the budget rule checks and the round commits.
    pub fn planned_release(&self, round: u64, sampling: Sampling) -> Result<PlannedRelease> {
        popri_release(
            self.settings.noise_multiplier,
            self.settings.clip,
            self.prompts.len() * self.settings.per_prompt,
            sampling,
            round,
        )
    }

    /// Runs `round` with the clients of its cohort under its release (from
    /// [`Self::planned_release`]).
    ///
    /// `round.commit` is given the round's ledger event after the clients' vectors are summed
    /// and before any noise is drawn or the sum is used: it must make the cost durable (the
    /// ledger). Noise exists only through the charge it returns, so no noisy value can exist
    /// whose cost is not on disk.
    pub fn run_round(
        &mut self,
        round: Round<'_, ServerError>,
        transport: &mut dyn ScoreTransport,
    ) -> Result<RoundOutput> {
        let mut seconds = PhaseSeconds::default();

        let clock = Instant::now();
        let prompts = self.prompts.clone();
        let candidates = self.sample_candidates(
            &prompts,
            self.settings.per_prompt,
            round.number,
            round.progress,
        )?;
        seconds.generate = clock.elapsed().as_secs_f64();

        let clock = Instant::now();
        let embeddings = self.embed_candidates(&candidates.texts, round.progress)?;
        seconds.embed = clock.elapsed().as_secs_f64();

        let mut output =
            self.run_round_with_candidates(round, candidates, embeddings, transport)?;
        output.report.seconds.generate = seconds.generate;
        output.report.seconds.embed = seconds.embed;
        Ok(output)
    }

    /// The embeddings of candidate texts (`[n, d]`).
    pub fn embed_candidates(&self, texts: &[String], progress: &dyn Progress) -> Result<Tensor> {
        progress.start("embed", texts.len() as u64);
        let embeddings = self
            .embedder
            .embed_tensor(texts, self.settings.embed_batch)?;
        progress.advance(texts.len() as u64);
        progress.finish();
        Ok(embeddings)
    }

    /// Runs `round` on candidates made earlier (by [`Self::sample_candidates`] and
    /// [`Self::embed_candidates`]): the
    /// HTTP server persists a round's candidates when it opens the round, so that after a
    /// restart the clients keep scoring, and DPO trains on, exactly the texts they were sent.
    pub fn run_round_with_candidates(
        &mut self,
        round: Round<'_, ServerError>,
        candidates: Candidates,
        embeddings: Tensor,
        transport: &mut dyn ScoreTransport,
    ) -> Result<RoundOutput> {
        let Round {
            number,
            cohort: sampled,
            release,
            commit,
            noise,
            progress,
        } = round;
        let mut seconds = PhaseSeconds::default();
        let clock = Instant::now();
        let mechanism = *release
            .mechanism(0)
            .ok_or_else(|| ServerError::internal("a POPri release without a mechanism"))?;
        let task = RoundTask {
            round: number,
            clip: self.settings.clip,
            mechanism: &mechanism,
            candidates: &embeddings,
        };
        let collected = transport.collect(&task, sampled)?;
        seconds.score = clock.elapsed().as_secs_f64();
        if collected.sum.len() != candidates.texts.len() {
            return Err(ServerError::argument(
                "client score sum",
                format!("{} values", collected.sum.len()),
                format!("{} values, one per candidate", candidates.texts.len()),
            ));
        }

        let clock = Instant::now();
        let mut charge = release.commit(commit)?;
        let noise_std = mechanism.noise_std();
        let noisy = noise.release(&mut charge, 0, &collected.sum)?;
        let pairs = preference_pairs(
            &noisy,
            candidates.prompts,
            candidates.per_prompt,
            self.settings.rejected_rank,
        )?;
        // Simulation only (only simulated clients report their statistics): how the noisy
        // results compare with the clean ones.
        let nonprivate = match &collected.nonprivate {
            Some(stats) => {
                let clean = collected.sum.values_nonprivate();
                let expected_noise = noise_std * (clean.len() as f64).sqrt();
                let agreement = preference_agreement(
                    &noisy,
                    &clean,
                    candidates.prompts,
                    candidates.per_prompt,
                )?;
                Some(stats.map(|stats| NonPrivateMetrics {
                    clients_nonprivate: Some(stats.clients as u64),
                    clipped_fraction_nonprivate:
                        (stats.clients > 0).then(|| stats.clipped as f64 / stats.clients as f64),
                    mean_pre_clip_norm_nonprivate:
                        (stats.clients > 0).then_some(stats.mean_pre_clip_norm),
                    signal_to_noise_nonprivate:
                        Some(l2_norm(&clean) / expected_noise).filter(|v| v.is_finite()),
                    preference_agreement_nonprivate: Some(agreement),
                    ..NonPrivateMetrics::default()
                }))
            }
            None => None,
        };
        seconds.aggregate = clock.elapsed().as_secs_f64();

        let clock = Instant::now();
        let dpo = self.train(&candidates, &pairs, progress)?;
        seconds.dpo = clock.elapsed().as_secs_f64();

        let report = RoundReport {
            round: number,
            sampled: sampled.len(),
            noise_std,
            nonprivate,
            noisy_scores: Histogram::of(&noisy, NOISY_SCORE_BINS),
            dpo,
            seconds,
        };
        Ok(RoundOutput {
            candidates,
            embeddings,
            report,
        })
    }

    /// DPO on the round's pairs (prompt = the public prompt, chosen/rejected = candidates).
    fn train(
        &mut self,
        candidates: &Candidates,
        pairs: &[RankedPair],
        progress: &dyn Progress,
    ) -> Result<Vec<StepMetrics>> {
        let pairs: Vec<PreferencePair> = pairs
            .iter()
            .map(|pair| PreferencePair {
                prompt: self.prompts[pair.prompt].clone(),
                chosen: candidates.texts[pair.chosen].clone(),
                rejected: candidates.texts[pair.rejected].clone(),
            })
            .collect();
        let config = self.trainer.config();
        let epoch_steps = config.steps_per_epoch(pairs.len()) * config.epochs as u64;
        let steps = config
            .max_steps
            .map_or(epoch_steps, |max| max.min(epoch_steps));
        progress.start("dpo", steps);
        let metrics = self
            .trainer
            .train_pairs(&mut self.generator, &pairs, false, |_| progress.advance(1))?;
        progress.finish();
        Ok(metrics)
    }

    /// Samples `per_prompt` completions of each prompt, prompt-major, cleaned and cut to the
    /// token limit, with a sampling stream derived from the run seed and `stream`. The adapter
    /// is merged into the base weights while sampling (base-model speed) and unmerged after,
    /// restoring the base weights bit for bit.
    pub fn sample_candidates(
        &mut self,
        prompts: &[String],
        per_prompt: usize,
        stream: u64,
        progress: &dyn Progress,
    ) -> Result<Candidates> {
        with_adapter_merged(
            self,
            |engine| &mut engine.generator,
            |engine| engine.sample_with_current_weights(prompts, per_prompt, stream, progress),
        )
    }

    fn sample_with_current_weights(
        &self,
        prompts: &[String],
        per_prompt: usize,
        stream: u64,
        progress: &dyn Progress,
    ) -> Result<Candidates> {
        let ids = prompts
            .iter()
            .map(|p| self.generator.encode_prompt(p, false))
            .collect::<models::Result<Vec<_>>>()?;
        let rows: Vec<&Vec<u32>> = ids
            .iter()
            .flat_map(|row| std::iter::repeat_n(row, per_prompt))
            .collect();
        progress.start("generate", rows.len() as u64);
        let mut texts = Vec::with_capacity(rows.len());
        for (batch_index, batch) in rows.chunks(self.settings.batch_size.max(1)).enumerate() {
            let params = SamplingParams {
                seed: derive_seed(self.settings.seed, stream, batch_index as u64),
                ..self.settings.sampling.clone()
            };
            let batch: Vec<Vec<u32>> = batch.iter().map(|r| (*r).clone()).collect();
            for completion in self.generator.generate_from_ids(&batch, &params)? {
                let text = clean_completion(self.settings.prompt_style, &completion.text);
                texts.push(truncate_to_tokens(
                    &self.generator,
                    &text,
                    self.settings.truncate_tokens,
                )?);
            }
            progress.advance(batch.len() as u64);
        }
        progress.finish();
        Ok(Candidates {
            texts,
            prompts: prompts.len(),
            per_prompt,
        })
    }
}

/// The release of a POPri round: noise multiplier `sigma` on the sum of `candidates` scores
/// per client, clipped to `clip`, under `sampling`.
pub fn popri_release(
    sigma: f64,
    clip: f64,
    candidates: usize,
    sampling: Sampling,
    round: u64,
) -> Result<PlannedRelease> {
    Ok(PlannedRelease::single(
        GaussianMechanism::new(sigma, clip, candidates)?,
        sampling,
        round,
        "popri round: noisy sum of clipped client score vectors",
    ))
}
