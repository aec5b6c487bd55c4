//! Private Evolution (Aug-PE style, Xie et al. 2024) and PE+SFT as simulations, with the same
//! run directory, ledger discipline and diagnostics as the POPri loop ([`crate::simulate`]).
//!
//! A PE round over a population of N synthetic samples (N = M·V, plus the M survivors when
//! `pe.keep_survivors` is set; round 0's population is N samples of the generator on the public
//! prompts, prompt i mod J writing sample i):
//! 1. embed the population with the sentence embedder;
//! 2. every sampled client votes: each of its private texts for its nearest sample, the
//!    client's histogram L2-normalised to 1 (`clients::pe`): user-level sensitivity 1;
//! 3. the round's privacy cost is committed to the ledger, then N(0, σ²) is added to every bin
//!    of the summed histogram;
//! 4. the threshold H is subtracted and the counts clamped at 0; M survivors are kept, the top
//!    M or M draws ∝ count (`pe.selection`);
//! 5. the generator writes V rephrasings of every survivor: the next population.
//!
//! PE+SFT shares steps 1–4; then the generator's LoRA adapter is fine-tuned (SFT) on the
//! survivors, each with the public prompt that wrote it, and the next population is N fresh
//! samples of the fine-tuned generator on the public prompts.
//!
//! Everything after step 3 is post-processing of the noisy counts. Durable writes of round t,
//! in order: the ledger entry (before any noise is drawn); the checkpoint (the next
//! population, the survivors, the noise state of test seeds, the metrics row and, for PE+SFT,
//! the adapter and trainer), renamed into place when complete; the metrics row. A run killed
//! between the first two re-runs round t under the entry already in the ledger.
//!
//! The per-round FID diagnostic (non-private, as POPri's) is that of the whole population the
//! round votes on (round 0: the public model alone); `eval.fid_all_candidates` does not apply.
//!
//! The synthetic set: PE writes the last round's survivors by noisy count, then the final
//! population (their rephrasings), up to `output.synthetic_samples` distinct texts; when those
//! are fewer, more rephrasings of the survivors fill it (post-processing of released texts), so
//! that PE's set has the size every method writes and a downstream comparison is not skewed by
//! PE training on fewer texts; PE+SFT
//! samples `output.synthetic_samples` texts from its fine-tuned generator, from fresh or
//! reused public prompts as POPri does (`output.synthetic_prompts`).

use std::collections::HashSet;
use std::time::Instant;

use clients::VotingPopulation;
use models::train::{PreferenceConfig, PreferenceLoss, PreferencePair, PreferenceTrainer};
use models::{Assets, Generator, SamplingParams, SentenceEmbedder};
use privacy_accounting::{Ledger, Sampling};
use rand::distributions::{Distribution, WeightedIndex};
use rand::Rng;
use serde::{Deserialize, Serialize};
use tch::{Device, Tensor};

use crate::config::{
    Method, PeSection, PeSelection, RunConfig, SyntheticPrompts, REPHRASE_PLACEHOLDER,
};
use crate::error::{Result, ServerError};
use crate::finish::{finish_simulation, synthetic_fid_nonprivate, Released};
use crate::generation::{derive_seed, truncate_to_tokens, with_adapter_merged};
use crate::noise::{l2_norm, GaussianMechanism, GridSum, NoiseSource, NoiseState, PlannedRelease};
use crate::prompts::{clean_completion, PromptTemplate};
use crate::run_dir::{
    read_checkpoint_state, write_atomic, Histogram, NonPrivate, NonPrivateMetrics, PhaseSeconds,
    RoundMetrics, RunDir,
};
use crate::sampling::{derived_rng, ClientSampler};
use crate::setup::{
    base_model_name, fid_to, load_embedder, load_generator, lora_config, prompt_template,
    prompts_of_style, public_cohort, public_prompts, rows, run_device, sampling_params,
    sampling_rate, seed_pool, simulation_sampling, write_synthetic_texts, SimulatedClients,
    EMBED_BATCH, SYNTHETIC_STREAM,
};
use round_driver::{simulate_rounds, NoisePlan, Progress, Round, RoundMethod};
use runs::records::{SimulationSummary, StopReason};

/// The L2 bound of every client's vote histogram: the sensitivity of the summed histogram.
const SENSITIVITY: f64 = 1.0;
/// The round state saved in every checkpoint (beside the adapter and trainer of PE+SFT).
const STATE_FILE: &str = "state.json";
/// Bins of the per-round histogram of noisy counts in the metrics.
const NOISY_COUNT_BINS: usize = 20;

/// One member of a population.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Sample {
    text: String,
    /// The public prompt (index into `prompts.json`) that wrote it; `None` for a rephrasing.
    prompt: Option<usize>,
}

/// What a checkpoint holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct PeState {
    round: u64,
    /// Only for test-seeded noise (see [`NoiseSource::state`]).
    noise: Option<NoiseState>,
    metrics: RoundMetrics,
    /// The round's survivors, distinct, by noisy count (highest first).
    survivors: Vec<Sample>,
    /// The population the next round votes on (empty after PE+SFT's last planned round).
    next_population: Vec<Sample>,
}

/// Runs the remaining rounds of a `pe` or `pe-sft` simulation in `dir`, then writes the
/// synthetic data, the privacy statement, `rounds.svg` and `summary.json`. `on_round` sees each
/// finished round's metrics.
pub(crate) fn run_pe(
    dir: &RunDir,
    config: &RunConfig,
    progress: &dyn Progress,
    on_round: &dyn Fn(&RoundMetrics),
) -> Result<SimulationSummary> {
    let clock = Instant::now();
    let (mut run, sampler) = PeRun::open(dir, config, progress)?;
    let (saved_noise, first_round) = run.resume_or_start(progress)?;
    let (stop_reason, ledger) = simulate_rounds(
        &mut run,
        dir,
        &config.privacy,
        &sampler,
        saved_noise.as_ref(),
        first_round,
        progress,
        on_round,
    )?;
    run.finish(&ledger, stop_reason, clock, progress)
}

/// Everything a PE run holds between rounds.
struct PeRun<'a> {
    dir: &'a RunDir,
    config: &'a RunConfig,
    /// PE+SFT (`pe-sft`) rather than PE.
    sft: bool,
    device: Device,
    embedder: SentenceEmbedder,
    voters: VotingPopulation,
    /// The clients' raw data: the witness of the non-private diagnostics.
    data: clients::FederatedData,
    /// The private eval set's embeddings, for the FID diagnostic (`eval.fid`).
    eval_rows: Option<Vec<Vec<f32>>>,
    generator: Generator,
    /// PE+SFT's trainer (set by [`PeRun::resume_or_start`]).
    trainer: Option<PreferenceTrainer>,
    seed_pool: Vec<String>,
    template: PromptTemplate,
    /// The J public prompts.
    prompts: Vec<String>,
    accounting: Sampling,
    plan: NoisePlan,
    /// The population the next round votes on.
    population: Vec<Sample>,
    /// The last round's survivors.
    survivors: Vec<Sample>,
    /// The state of the round that ran and is not yet checkpointed.
    pending: Option<PeState>,
}

impl<'a> PeRun<'a> {
    /// Loads the clients (embedded once, cached), the generator, the public prompts and the
    /// ledger, and plans the noise.
    fn open(
        dir: &'a RunDir,
        config: &'a RunConfig,
        progress: &dyn Progress,
    ) -> Result<(Self, ClientSampler)> {
        let sft = match config.run.method {
            Method::Pe => false,
            Method::PeSft => true,
            other => {
                return Err(ServerError::argument(
                    "run.method",
                    other,
                    "pe or pe-sft (the Private Evolution loop runs only these)",
                ))
            }
        };
        let device = run_device(config)?;
        let assets = Assets::discover();

        let embedder = load_embedder(config, &assets, device)?;
        let clients = SimulatedClients::load(config, &assets, &embedder, dir.root(), progress)?;
        let voters = VotingPopulation::new(&clients.data, &clients.train_embeddings)?;

        let generator = load_generator(config, &assets, device)?;
        let seed_pool = seed_pool(config, dir, &generator, progress)?;
        let template = prompt_template(config)?;
        let prompts = public_prompts(config, dir, &template, &seed_pool, &generator)?;

        let (sampler, accounting, plan) = simulation_sampling(config, voters.len())?;
        let run = PeRun {
            dir,
            config,
            sft,
            device,
            embedder,
            voters,
            eval_rows: clients.eval_rows,
            data: clients.data,
            generator,
            trainer: None,
            seed_pool,
            template,
            prompts,
            accounting,
            plan,
            population: Vec::new(),
            survivors: Vec::new(),
            pending: None,
        };
        Ok((run, sampler))
    }

    /// Sets the population the next round votes on and the last survivors, from the last
    /// checkpoint or the public model's samples before round 0; returns the saved state of a
    /// test-seeded noise stream and the next round's number.
    fn resume_or_start(&mut self, progress: &dyn Progress) -> Result<(Option<NoiseState>, u64)> {
        let config = self.config;
        match self.dir.latest_checkpoint()? {
            Some((round, path)) => {
                let state: PeState = read_checkpoint_state(&path.join(STATE_FILE))?;
                self.dir.repair_metrics(round, &state.metrics)?;
                if self.sft {
                    self.generator
                        .model_mut()
                        .load_adapter(&path.join("adapter"))?;
                    self.trainer =
                        Some(PreferenceTrainer::load(&path.join("trainer"), self.device)?);
                }
                self.population = state.next_population;
                self.survivors = state.survivors;
                Ok((state.noise, round + 1))
            }
            None => {
                if self.sft {
                    self.generator
                        .model_mut()
                        .add_lora(&lora_config(config)?, config.run.seed)?;
                    self.trainer = Some(PreferenceTrainer::new(sft_config(&config.dpo))?);
                }
                let initial = Writer::new(&mut self.generator, config).public_samples(
                    &self.prompts,
                    config.pe.voted_population(),
                    0,
                    progress,
                )?;
                self.population = initial;
                Ok((None, 0))
            }
        }
    }
}

impl RoundMethod<ServerError> for PeRun<'_> {
    fn population(&self) -> usize {
        self.voters.len()
    }

    fn plan(&mut self, round: u64) -> Result<Option<PlannedRelease>> {
        let mechanism =
            GaussianMechanism::new(self.plan.sigma, SENSITIVITY, self.population.len())?;
        Ok(Some(PlannedRelease::single(
            mechanism,
            self.accounting,
            round,
            "pe round: noisy sum of L2-normalised nearest-neighbour vote histograms",
        )))
    }

    /// Runs `round` over the current population: votes, noise, survivors, the next population.
    fn run_round(&mut self, round: Round<'_, ServerError>) -> Result<Option<RoundMetrics>> {
        let progress = round.progress;
        let mut seconds = PhaseSeconds::default();
        let population = std::mem::take(&mut self.population);
        let mechanism = *round
            .release
            .mechanism(0)
            .ok_or_else(|| ServerError::internal("a PE release without a mechanism"))?;

        let phase = Instant::now();
        let embeddings = embed(&self.embedder, &population, progress)?;
        seconds.embed = phase.elapsed().as_secs_f64();

        let phase = Instant::now();
        progress.start("votes", round.cohort.len() as u64);
        let votes = self
            .voters
            .vote_sum(&embeddings, round.cohort, mechanism.grid(), |done| {
                progress.advance(done as u64)
            })?;
        progress.finish();
        let votes_sum = GridSum::from_units(&mechanism, votes.units)?;
        seconds.score = phase.elapsed().as_secs_f64();

        let phase = Instant::now();
        // Noisy values exist only through the charge, made after the cost is on disk.
        let mut charge = round.release.commit(round.commit)?;
        let noise_std = mechanism.noise_std();
        let noisy = round.noise.release(&mut charge, 0, &votes_sum)?;
        let pe = &self.config.pe;
        let counts = thresholded(&noisy, pe.threshold);
        let selected = select_survivors(
            &counts,
            pe.population,
            pe.selection,
            &mut derived_rng(self.config.run.seed, "pe selection", round.number),
        )?;
        let survivors: Vec<Sample> = ranked_distinct(&selected, &counts)
            .into_iter()
            .map(|i| population[i].clone())
            .collect();
        let chosen: Vec<Sample> = selected.iter().map(|&i| population[i].clone()).collect();
        seconds.aggregate = phase.elapsed().as_secs_f64();

        let phase = Instant::now();
        let (fid, mean_distance) = match &self.eval_rows {
            Some(eval) => fid_to(eval, &rows(&embeddings)?)?,
            None => (None, None),
        };
        seconds.eval = phase.elapsed().as_secs_f64();

        let (next_population, sft_loss) =
            self.evolve(round.number, chosen, &mut seconds, progress)?;

        let clean = votes_sum.values_nonprivate();
        let expected_noise = noise_std * (clean.len() as f64).sqrt();
        let metrics = RoundMetrics {
            round: round.number,
            delta: self.config.privacy.delta,
            sigma: self.plan.sigma,
            q: sampling_rate(&self.accounting),
            clip: SENSITIVITY,
            cohort: public_cohort(&self.accounting, round.cohort.len()),
            noise_std,
            train_loss: sft_loss,
            seconds,
            noisy_score_histogram: Histogram::of(&noisy, NOISY_COUNT_BINS),
            nonprivate: Some(NonPrivate::measured(
                &self.data,
                NonPrivateMetrics {
                    clients_nonprivate: Some(votes.clients as u64),
                    signal_to_noise_nonprivate: Some(l2_norm(&clean) / expected_noise)
                        .filter(|v| v.is_finite()),
                    fid_nonprivate: fid,
                    mean_distance_sq_nonprivate: mean_distance,
                    ..NonPrivateMetrics::default()
                },
            )),
            ..RoundMetrics::default()
        };
        self.pending = Some(PeState {
            round: round.number,
            noise: None,
            metrics: metrics.clone(),
            survivors,
            next_population,
        });
        Ok(Some(metrics))
    }

    /// Writes round `metrics.round`'s checkpoint: the state and, for PE+SFT, the adapter (PEFT
    /// format) and the trainer; then the round's next population becomes the current one.
    fn checkpoint(&mut self, metrics: &RoundMetrics, noise: &NoiseSource) -> Result<()> {
        let mut state = self.pending.take().ok_or_else(|| {
            ServerError::internal(format!(
                "checkpoint of round {} that did not run",
                metrics.round
            ))
        })?;
        state.metrics = metrics.clone();
        state.noise = noise.state();
        let pending = self.dir.begin_checkpoint(state.round)?;
        if let Some(trainer) = &self.trainer {
            self.generator.model().save_adapter(
                &pending.path().join("adapter"),
                &base_model_name(self.config),
            )?;
            trainer.save(&pending.path().join("trainer"))?;
        }
        let json = serde_json::to_string(&state)
            .map_err(|e| ServerError::argument("state", "(unserialisable)", e.to_string()))?;
        write_atomic(&pending.path().join(STATE_FILE), json.as_bytes())?;
        pending.commit()?;
        self.population = state.next_population;
        self.survivors = state.survivors;
        Ok(())
    }
}

impl PeRun<'_> {
    /// The next population from round `round`'s `chosen` survivors (and, for PE+SFT, the mean
    /// SFT loss): PE rephrases them; PE+SFT fine-tunes on them, then samples afresh (nothing
    /// after the last planned round, whose population would never be voted on).
    fn evolve(
        &mut self,
        round: u64,
        chosen: Vec<Sample>,
        seconds: &mut PhaseSeconds,
        progress: &dyn Progress,
    ) -> Result<(Vec<Sample>, Option<f64>)> {
        let config = self.config;
        if !self.sft {
            let phase = Instant::now();
            let variations = Writer::new(&mut self.generator, config).rephrasings(
                &chosen,
                &config.pe,
                round + 1,
                progress,
            )?;
            seconds.generate = phase.elapsed().as_secs_f64();
            let kept = if config.pe.keep_survivors {
                chosen
            } else {
                Vec::new()
            };
            return Ok((kept.into_iter().chain(variations).collect(), None));
        }
        let phase = Instant::now();
        let trainer = self.trainer.as_mut().ok_or_else(|| {
            ServerError::argument("pe-sft trainer", "(absent)", "a trainer for PE+SFT")
        })?;
        let loss = fine_tune(
            trainer,
            &mut self.generator,
            &self.prompts,
            &chosen,
            progress,
        )?;
        seconds.dpo = phase.elapsed().as_secs_f64();
        let phase = Instant::now();
        let next = if round + 1 == config.privacy.rounds {
            Vec::new()
        } else {
            Writer::new(&mut self.generator, config).public_samples(
                &self.prompts,
                config.pe.voted_population(),
                round + 1,
                progress,
            )?
        };
        seconds.generate = phase.elapsed().as_secs_f64();
        Ok((next, loss))
    }

    /// PE's synthetic set: the survivors and the final population, then, while fewer than
    /// `output.synthetic_samples` distinct texts, more rephrasings of the survivors (at most
    /// [`FILL_PASSES`] passes: a small model may repeat itself).
    fn pe_synthetic_set(&mut self, progress: &dyn Progress) -> Result<Vec<String>> {
        let count = self.config.output.synthetic_samples;
        let mut pool = self.population.clone();
        let mut synthetic = final_population(&self.survivors, &pool, count);
        for pass in 0..FILL_PASSES {
            let missing = count.saturating_sub(synthetic.len());
            if missing == 0 || self.survivors.is_empty() {
                break;
            }
            let pe = PeSection {
                variations: missing.div_ceil(self.survivors.len()),
                ..self.config.pe.clone()
            };
            // Streams below the synthetic stream, counting down: never a round's (round t
            // uses stream t) nor PE+SFT's synthetic set.
            let stream = SYNTHETIC_STREAM - 1 - pass;
            let extra = Writer::new(&mut self.generator, self.config).rephrasings(
                &self.survivors,
                &pe,
                stream,
                progress,
            )?;
            pool.extend(extra);
            synthetic = final_population(&self.survivors, &pool, count);
        }
        Ok(synthetic)
    }

    /// Writes the released outputs (post-processing of noisy results: no further privacy cost),
    /// the statement, `rounds.svg` and `summary.json`.
    fn finish(
        mut self,
        ledger: &Ledger,
        stop_reason: StopReason,
        clock: Instant,
        progress: &dyn Progress,
    ) -> Result<SimulationSummary> {
        let (dir, config) = (self.dir, self.config);
        let synthetic = if self.sft {
            Writer::new(&mut self.generator, config).synthetic_set(
                &self.seed_pool,
                &self.prompts,
                &self.template,
                progress,
            )?
        } else {
            self.pe_synthetic_set(progress)?
        };
        write_synthetic_texts(dir, &synthetic)?;
        let released = Released {
            samples: synthetic.len(),
            path: dir.synthetic_path(),
            fid_nonprivate: synthetic_fid_nonprivate(
                self.eval_rows.as_deref(),
                &self.embedder,
                &synthetic,
            )?,
            generator_dtype: self.generator.model().kind(),
        };
        finish_simulation(
            dir,
            config,
            ledger,
            stop_reason,
            self.plan.sigma,
            released,
            clock,
        )
    }
}

/// How many times PE's synthetic set is topped up with more rephrasings of the survivors.
const FILL_PASSES: u64 = 3;

/// The `[dpo]` optimiser settings with the SFT loss: what PE+SFT trains with.
fn sft_config(dpo: &PreferenceConfig) -> PreferenceConfig {
    PreferenceConfig {
        loss: PreferenceLoss::Sft,
        ..dpo.clone()
    }
}

/// The population's embeddings (`[N, d]`).
fn embed(
    embedder: &SentenceEmbedder,
    population: &[Sample],
    progress: &dyn Progress,
) -> Result<Tensor> {
    if population.is_empty() {
        return Err(ServerError::argument(
            "population",
            0,
            "at least one synthetic sample to vote on (the checkpoint holds none: resume from \
             an earlier one or start a new run)",
        ));
    }
    let texts: Vec<&str> = population.iter().map(|s| s.text.as_str()).collect();
    progress.start("embed", texts.len() as u64);
    let embeddings = embedder.embed_tensor(&texts, EMBED_BATCH)?;
    progress.advance(texts.len() as u64);
    progress.finish();
    Ok(embeddings)
}

/// max(count − `threshold`, 0) for every noisy count.
fn thresholded(noisy: &[f64], threshold: f64) -> Vec<f64> {
    noisy.iter().map(|c| (c - threshold).max(0.0)).collect()
}

/// The survivors of a round from the thresholded noisy `counts`: the `count` highest (ties to
/// the lower index; all of them when there are fewer), or `count` draws with replacement with
/// probability ∝ count (uniform when every count is 0).
fn select_survivors<R: Rng + ?Sized>(
    counts: &[f64],
    count: usize,
    selection: PeSelection,
    rng: &mut R,
) -> Result<Vec<usize>> {
    match selection {
        PeSelection::Top => {
            let mut order = by_count(counts, 0..counts.len());
            order.truncate(count);
            Ok(order)
        }
        PeSelection::Proportional => {
            let total: f64 = counts.iter().sum();
            let weights: Vec<f64> = if total > 0.0 {
                counts.to_vec()
            } else {
                vec![1.0; counts.len()]
            };
            let draw = WeightedIndex::new(&weights).map_err(|e| {
                ServerError::argument(
                    "noisy counts",
                    format!("{} values", counts.len()),
                    format!("finite counts >= 0 over at least one sample ({e})"),
                )
            })?;
            Ok((0..count).map(|_| draw.sample(rng)).collect())
        }
    }
}

/// `indices` sorted by count, highest first, ties to the lower index.
fn by_count(counts: &[f64], indices: impl Iterator<Item = usize>) -> Vec<usize> {
    let mut order: Vec<usize> = indices.collect();
    order.sort_by(|&a, &b| counts[b].total_cmp(&counts[a]).then(a.cmp(&b)));
    order
}

/// The distinct indices of `selected`, by count (highest first).
fn ranked_distinct(selected: &[usize], counts: &[f64]) -> Vec<usize> {
    let mut seen = HashSet::new();
    let distinct: Vec<usize> = selected
        .iter()
        .copied()
        .filter(|&i| seen.insert(i))
        .collect();
    by_count(counts, distinct.into_iter())
}

/// PE's synthetic set: the survivors by noisy count, then the final population, the first
/// `count` distinct texts.
fn final_population(survivors: &[Sample], population: &[Sample], count: usize) -> Vec<String> {
    let mut seen = HashSet::new();
    survivors
        .iter()
        .chain(population)
        .map(|s| s.text.clone())
        .filter(|text| seen.insert(text.clone()))
        .take(count)
        .collect()
}

/// What the generator is asked to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Task {
    /// Continue a public few-shot prompt (POPri's template): cleaned as POPri's candidates.
    Continue,
    /// Rephrase a survivor (`pe.rephrase_template`).
    Rephrase,
}

/// Words that mark the start of a small chat model's reply as a preamble ("Rephrased text:",
/// "Here is the rephrased version:") rather than the rephrasing itself.
const PREAMBLE_MARKERS: [&str; 7] = [
    "rephras",
    "paraphras",
    "rewrit",
    "translat",
    "here is",
    "here's",
    "version",
];
/// A preamble ends with a colon within this many characters of the start.
const PREAMBLE_MAX_CHARS: usize = 100;

/// A rephrasing with whitespace flattened and any leading preambles ("Translated text:
/// Rephrased text: …") removed; the text as it is when nothing would be left.
fn without_preamble(text: &str) -> String {
    let mut rest = text.split_whitespace().collect::<Vec<_>>().join(" ");
    while let Some(colon) = rest
        .char_indices()
        .take(PREAMBLE_MAX_CHARS)
        .find(|&(_, c)| c == ':')
        .map(|(i, _)| i)
    {
        let head = rest[..colon].to_lowercase();
        let tail = rest[colon + 1..].trim_start();
        if tail.is_empty() || !PREAMBLE_MARKERS.iter().any(|m| head.contains(m)) {
            break;
        }
        rest = tail.to_string();
    }
    rest
}

/// The request that makes the generator rephrase `text`.
fn rephrase_request(template: &str, text: &str) -> String {
    let flat = text.split_whitespace().collect::<Vec<_>>().join(" ");
    template.replace(REPHRASE_PLACEHOLDER, &flat)
}

/// SFT of the adapter on the survivors, each with the public prompt that wrote it; the mean
/// loss of the steps (`None` when nothing was trained on).
fn fine_tune(
    trainer: &mut PreferenceTrainer,
    generator: &mut Generator,
    prompts: &[String],
    survivors: &[Sample],
    progress: &dyn Progress,
) -> Result<Option<f64>> {
    let pairs: Vec<PreferencePair> = survivors
        .iter()
        .filter(|s| !s.text.is_empty())
        .filter_map(|s| {
            s.prompt.map(|p| PreferencePair {
                prompt: prompts[p].clone(),
                chosen: s.text.clone(),
                rejected: String::new(),
            })
        })
        .collect();
    if pairs.is_empty() {
        return Ok(None);
    }
    let config = trainer.config();
    let epoch_steps = config.steps_per_epoch(pairs.len()) * config.epochs as u64;
    progress.start(
        "sft",
        config
            .max_steps
            .map_or(epoch_steps, |max| max.min(epoch_steps)),
    );
    let steps = trainer.train_pairs(generator, &pairs, false, |_| progress.advance(1))?;
    progress.finish();
    Ok((!steps.is_empty()).then(|| steps.iter().map(|s| s.loss).sum::<f64>() / steps.len() as f64))
}

/// Samples texts with the generator (its adapter merged while sampling, when it has one),
/// cleaned and cut to `generation.truncate_tokens` tokens.
struct Writer<'a> {
    generator: &'a mut Generator,
    /// The run's sampling settings (the seed is replaced per batch).
    params: SamplingParams,
    config: &'a RunConfig,
}

impl<'a> Writer<'a> {
    fn new(generator: &'a mut Generator, config: &'a RunConfig) -> Writer<'a> {
        Writer {
            generator,
            params: sampling_params(config),
            config,
        }
    }

    /// `count` samples on the public `prompts` (sample i from prompt i mod J), from sampling
    /// stream `stream`.
    fn public_samples(
        &mut self,
        prompts: &[String],
        count: usize,
        stream: u64,
        progress: &dyn Progress,
    ) -> Result<Vec<Sample>> {
        let picked: Vec<usize> = (0..count).map(|i| i % prompts.len().max(1)).collect();
        let requests: Vec<String> = picked.iter().map(|&p| prompts[p].clone()).collect();
        let texts = self.sample(&requests, Task::Continue, stream, progress)?;
        Ok(texts
            .into_iter()
            .zip(picked)
            .map(|(text, prompt)| Sample {
                text,
                prompt: Some(prompt),
            })
            .collect())
    }

    /// `pe.variations` rephrasings of every survivor, survivor after survivor; a rephrasing
    /// that comes out empty is replaced by its survivor.
    fn rephrasings(
        &mut self,
        survivors: &[Sample],
        pe: &PeSection,
        stream: u64,
        progress: &dyn Progress,
    ) -> Result<Vec<Sample>> {
        let sources: Vec<&Sample> = survivors
            .iter()
            .flat_map(|s| std::iter::repeat_n(s, pe.variations))
            .collect();
        let requests: Vec<String> = sources
            .iter()
            .map(|s| rephrase_request(&pe.rephrase_template, &s.text))
            .collect();
        let texts = self.sample(&requests, Task::Rephrase, stream, progress)?;
        Ok(texts
            .into_iter()
            .zip(sources)
            .map(|(text, source)| Sample {
                text: if text.is_empty() {
                    source.text.clone()
                } else {
                    text
                },
                prompt: None,
            })
            .collect())
    }

    /// PE+SFT's synthetic set: one sample per prompt, fresh public prompts of the configured
    /// style (as POPri's set) or the rounds' prompts reused (`output.synthetic_prompts`).
    fn synthetic_set(
        &mut self,
        seed_pool: &[String],
        prompts: &[String],
        template: &PromptTemplate,
        progress: &dyn Progress,
    ) -> Result<Vec<String>> {
        let count = self.config.output.synthetic_samples;
        let requests = match self.config.output.synthetic_prompts {
            SyntheticPrompts::Fresh => prompts_of_style(
                self.config,
                template,
                seed_pool,
                self.generator,
                count,
                "synthetic prompts",
            )?,
            SyntheticPrompts::Reuse => prompts.iter().cycle().take(count).cloned().collect(),
        };
        // Stream u64::MAX: the population of round t comes from stream t.
        self.sample(&requests, Task::Continue, SYNTHETIC_STREAM, progress)
    }

    fn sample(
        &mut self,
        requests: &[String],
        task: Task,
        stream: u64,
        progress: &dyn Progress,
    ) -> Result<Vec<String>> {
        with_adapter_merged(
            self,
            |writer| &mut *writer.generator,
            |writer| writer.sample_with_current_weights(requests, task, stream, progress),
        )
    }

    fn sample_with_current_weights(
        &self,
        requests: &[String],
        task: Task,
        stream: u64,
        progress: &dyn Progress,
    ) -> Result<Vec<String>> {
        // An instruction-tuned generator follows a rephrase request best as a chat turn.
        let chat = task == Task::Rephrase && self.generator.format_prompt("", true).is_ok();
        let phase = match task {
            Task::Continue => "generate",
            Task::Rephrase => "rephrase",
        };
        progress.start(phase, requests.len() as u64);
        let mut texts = Vec::with_capacity(requests.len());
        for (index, batch) in requests
            .chunks(self.config.generation.batch_size.max(1))
            .enumerate()
        {
            let params = SamplingParams {
                seed: derive_seed(self.config.run.seed, stream, index as u64),
                ..self.params.clone()
            };
            for completion in self.generator.generate(batch, chat, &params)? {
                let text = match task {
                    Task::Continue => clean_completion(self.config.prompts.style, &completion.text),
                    Task::Rephrase => without_preamble(&completion.text),
                };
                texts.push(truncate_to_tokens(
                    self.generator,
                    &text,
                    self.config.generation.truncate_tokens,
                )?);
            }
            progress.advance(batch.len() as u64);
        }
        progress.finish();
        Ok(texts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha20Rng;

    fn sample(text: &str) -> Sample {
        Sample {
            text: text.to_string(),
            prompt: None,
        }
    }

    #[test]
    fn the_threshold_subtracts_and_clamps_at_zero() {
        assert_eq!(
            thresholded(&[3.5, 1.0, -2.0, 0.5], 1.0),
            vec![2.5, 0.0, 0.0, 0.0]
        );
        assert_eq!(thresholded(&[-0.5, 2.0], 0.0), vec![0.0, 2.0]);
    }

    #[test]
    fn top_selection_keeps_the_highest_counts_ties_to_the_lower_index() {
        let counts = [1.0, 5.0, 0.0, 5.0, 3.0, 0.0];
        let mut rng = ChaCha20Rng::seed_from_u64(0);
        let top = select_survivors(&counts, 3, PeSelection::Top, &mut rng).unwrap();
        assert_eq!(top, vec![1, 3, 4]);
        // Asking for more than there are keeps everything, in order; zeros tie by index.
        let all = select_survivors(&counts, 10, PeSelection::Top, &mut rng).unwrap();
        assert_eq!(all, vec![1, 3, 4, 0, 2, 5]);
    }

    #[test]
    fn proportional_selection_follows_the_counts() {
        let counts = [0.0, 1.0, 3.0, 0.0];
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        let drawn = select_survivors(&counts, 4000, PeSelection::Proportional, &mut rng).unwrap();
        let mut tally = [0usize; 4];
        for i in drawn {
            tally[i] += 1;
        }
        // Zero counts are never drawn; 1 : 3 within sampling error (σ ≈ 27 draws).
        assert_eq!((tally[0], tally[3]), (0, 0));
        assert!((tally[2] as f64 - 3000.0).abs() < 150.0, "{tally:?}");
        // Every count 0: uniform over all samples.
        let uniform =
            select_survivors(&[0.0; 3], 3000, PeSelection::Proportional, &mut rng).unwrap();
        for i in 0..3 {
            let n = uniform.iter().filter(|&&d| d == i).count();
            assert!((n as f64 - 1000.0).abs() < 120.0, "sample {i}: {n}");
        }
    }

    #[test]
    fn survivors_are_ranked_distinct_and_the_final_set_has_no_duplicates() {
        let counts = [0.5, 4.0, 2.0];
        assert_eq!(ranked_distinct(&[2, 0, 2, 1, 0], &counts), vec![1, 2, 0]);
        let survivors = [sample("b"), sample("a")];
        let population = [sample("a"), sample("c"), sample("b"), sample("d")];
        assert_eq!(
            final_population(&survivors, &population, 3),
            vec!["b", "a", "c"]
        );
        assert_eq!(final_population(&survivors, &population, 10).len(), 4);
    }

    #[test]
    fn rephrase_requests_hold_the_flattened_text() {
        let request = rephrase_request("Rephrase: {text} (keep it short)", "one\n two\tthree");
        assert_eq!(request, "Rephrase: one two three (keep it short)");
    }

    #[test]
    fn rephrasings_lose_their_preambles_but_nothing_else() {
        let cases = [
            (
                "The original text is rephrased as: The treaty\nholds.",
                "The treaty holds.",
            ),
            (
                "Translated text: Rephrased text: In addition, the directive",
                "In addition, the directive",
            ),
            ("Here's a reformatted version: Taxes rose.", "Taxes rose."),
            // A colon that ends no preamble, or one with nothing after it, stays.
            (
                "The economy: growth and jobs",
                "The economy: growth and jobs",
            ),
            ("Rephrased text:", "Rephrased text:"),
        ];
        for (raw, cleaned) in cases {
            assert_eq!(without_preamble(raw), cleaned, "{raw:?}");
        }
    }

    #[test]
    fn pe_sft_trains_with_the_dpo_settings_and_the_sft_loss() {
        let dpo = PreferenceConfig {
            lr: 1e-3,
            ..PreferenceConfig::default()
        };
        let sft = sft_config(&dpo);
        assert_eq!((sft.loss, sft.lr), (PreferenceLoss::Sft, 1e-3));
    }
}
