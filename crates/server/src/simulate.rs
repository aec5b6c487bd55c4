//! A federated POPri simulation: the round engine with in-process clients, a run directory that
//! survives a kill, and the budget rule that stops before a round would overspend.
//!
//! Durable writes of round t, in this order (why resuming never loses or double-counts budget):
//! 1. the ledger entry of round t, saved before any noise is drawn (the engine's `commit_cost`);
//! 2. the checkpoint of round t (adapter, trainer state, noise state, its metrics row), written
//!    under a temporary name and renamed when complete;
//! 3. the metrics row, appended to `metrics.jsonl`.
//!
//! A kill between 1 and 2 leaves round t charged but not checkpointed: the resumed run re-runs
//! round t under the entry already in the ledger (nothing the lost attempt computed left the
//! process, so the one charge covers the one release). A kill between 2 and 3 is repaired from
//! the checkpoint's copy of the row.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Instant;

use clients::{
    embed_cached, sample_per_client, sotu_documents, FederatedData, SimulatedPopulation,
};
use models::llama::{LoraConfig, LoraTarget};
use models::train::PreferenceTrainer;
use models::{Assets, DeviceChoice, Generator, SamplingParams, SentenceEmbedder};
use privacy_accounting::statement::PrivacyStatement;
use privacy_accounting::{AccountantKind, LedgerEvent, Sampling};
use serde::{Deserialize, Serialize};
use tch::{Device, Tensor};

use crate::budget::{plan_noise, BudgetGuard, NoisePlan};
use crate::config::{RunConfig, SyntheticPrompts, TrainData};
use crate::engine::{
    derive_seed, Candidates, CollectedScores, PopriEngine, Progress, RoundOutput, RoundReport,
    RoundSettings, RoundTask, ScoreTransport,
};
use crate::error::{Result, ServerError};
use crate::fid::{frechet_distance, mean_distance_sq};
use crate::noise::{NoiseSource, NoiseState};
use crate::prompts::{build_prompts_with, seed_pool_from_file, PromptTemplate};
use crate::run_dir::{write_atomic, RoundMetrics, RunDir};
use crate::sampling::{derived_rng, ClientSampler};

/// Texts per embedding batch.
const EMBED_BATCH: usize = 64;
/// The engine state saved in every checkpoint beside the adapter and the trainer.
const STATE_FILE: &str = "state.json";
/// The public seed pool written by the base model from `prompts.topics`, kept for resuming.
const SEED_POOL_FILE: &str = "seed-pool.json";
/// FID and ε per round, drawn after the run.
const ROUNDS_PLOT_FILE: &str = "rounds.svg";
/// The sampling stream of the seed pool (rounds use their number, the synthetic set
/// `SYNTHETIC_STREAM`).
const SEED_POOL_STREAM: u64 = u64::MAX - 1;
/// The sampling stream of the final synthetic set.
const SYNTHETIC_STREAM: u64 = u64::MAX;
/// The J public prompts of every round.
const PROMPTS_FILE: &str = "prompts.json";

/// The simulated clients as a [`ScoreTransport`]: each sampled client scores the candidates
/// against its own texts in this process, with the clients' code (`clients::scores`).
pub struct SimulatedTransport<'a> {
    population: &'a SimulatedPopulation,
    progress: &'a dyn Progress,
}

impl ScoreTransport for SimulatedTransport<'_> {
    fn population(&self) -> usize {
        self.population.len()
    }

    fn is_simulation(&self) -> bool {
        true
    }

    fn collect(&mut self, task: &RoundTask<'_>, sampled: &[usize]) -> Result<CollectedScores> {
        self.progress.start("score", sampled.len() as u64);
        let progress = self.progress;
        let sum = self
            .population
            .score_sum(task.candidates, sampled, task.clip, |done| {
                progress.advance(done as u64)
            })?;
        self.progress.finish();
        Ok(CollectedScores {
            sum: sum.sum,
            clients: sum.clients,
            clipped: sum.clipped,
            mean_pre_clip_norm: sum.mean_pre_clip_norm,
        })
    }
}

/// Why a simulation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// Every planned round ran.
    RoundsCompleted,
    /// The next round would have spent more than the target ε.
    BudgetExhausted,
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

/// The one-line account of a finished round that the CLI prints.
pub fn round_line(metrics: &RoundMetrics) -> String {
    let opt =
        |v: Option<f64>, digits: usize| v.map_or("-".to_string(), |v| format!("{v:.digits$}"));
    format!(
        "round {:>3}: ε {:.4} (RDP) / {:.4} (PLD), {} clients, DPO loss {}, reward acc {}, \
         FID {} (non-private), {:.1} s (generate {:.1}, embed {:.1}, score {:.1}, dpo {:.1})",
        metrics.round,
        metrics.epsilon_rdp,
        metrics.epsilon_pld,
        metrics.clients,
        opt(metrics.dpo_loss, 4),
        opt(metrics.reward_accuracy, 2),
        opt(metrics.fid_nonprivate, 4),
        metrics.wall_seconds,
        metrics.seconds.generate,
        metrics.seconds.embed,
        metrics.seconds.score,
        metrics.seconds.dpo,
    )
}

/// What a checkpoint holds beside the adapter and the trainer.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct EngineState {
    round: u64,
    /// Only for test-seeded noise: an OS-seeded stream is never written to disk (whoever held
    /// it could subtract the noise); a resumed run draws a fresh OS seed.
    noise: Option<NoiseState>,
    metrics: RoundMetrics,
}

/// A simulation bound to its run directory.
pub struct Simulation {
    dir: RunDir,
    config: RunConfig,
}

impl Simulation {
    /// A new run of `config` in `dir` (created; an existing directory must be empty, or hold a
    /// run of the same configuration, which is then continued).
    pub fn create(config: RunConfig, dir: &Path) -> Result<Simulation> {
        config.validate()?;
        let dir = RunDir::create(dir, &config)?;
        Ok(Simulation { dir, config })
    }

    /// The run in `dir`, to be continued from its last checkpoint with its saved configuration.
    pub fn resume(dir: &Path) -> Result<Simulation> {
        let dir = RunDir::open(dir)?;
        let config = dir.load_config()?;
        config.validate()?;
        Ok(Simulation { dir, config })
    }

    /// The resolved configuration.
    pub fn config(&self) -> &RunConfig {
        &self.config
    }

    /// The run directory.
    pub fn run_dir(&self) -> &Path {
        self.dir.root()
    }

    /// Runs the remaining rounds, then writes the synthetic data and the privacy statement.
    /// `on_round` sees each finished round's metrics.
    pub fn run(
        self,
        progress: &dyn Progress,
        on_round: &dyn Fn(&RoundMetrics),
    ) -> Result<SimulationSummary> {
        let clock = Instant::now();
        let config = &self.config;
        tch::set_num_threads(config.run.threads.max(1) as i32);
        let device = DeviceChoice::from_str(&config.run.device)?.resolve()?;
        let assets = Assets::discover();

        // The clients: private data, embedded once (cached), kept as per-client sums.
        let data = load_data(config, &assets)?;
        let embedder_dir = match &config.model.embedder {
            Some(dir) => dir.clone(),
            None => assets.minilm_dir()?,
        };
        let embedder = SentenceEmbedder::load(&embedder_dir, device)?;
        let cache = embedding_cache_dir(&assets, self.dir.root());
        let train_embeddings = embed_with_progress(
            &embedder,
            &data.train_texts(),
            &cache,
            progress,
            "embed clients",
        )?;
        let population = SimulatedPopulation::new(&data, &train_embeddings)?;
        let eval_embeddings = if config.eval.fid {
            let eval = embed_with_progress(
                &embedder,
                &data.eval_texts(),
                &cache,
                progress,
                "embed eval",
            )?;
            Some(rows(&eval)?)
        } else {
            None
        };

        // The server: generator, public prompts, budget.
        let generator_path = match &config.model.generator {
            Some(path) => path.clone(),
            None => assets.smollm2_gguf()?,
        };
        let mut generator = Generator::load(&generator_path, device)?;
        let seed_pool = self.seed_pool(&generator, progress)?;
        let template = match &config.prompts.template {
            Some(text) => PromptTemplate::parse(text, config.prompts.examples_per_prompt)?,
            None => PromptTemplate::popri(config.prompts.examples_per_prompt),
        };
        let prompts = build_prompts_with(
            &template,
            &seed_pool,
            config.prompts.num_prompts,
            &mut derived_rng(config.run.seed, "prompts", 0),
        )?;

        // Public by construction; saved so anyone can check that no private text is in them.
        let prompts_json = serde_json::to_string_pretty(&prompts)
            .map_err(|e| ServerError::argument("prompts", "(unserialisable)", e.to_string()))?;
        write_atomic(&self.dir.root().join(PROMPTS_FILE), prompts_json.as_bytes())?;

        let sampler = ClientSampler::new(config.privacy.client_sampling()?, config.run.seed)?;
        let accounting = sampler.accounting(population.len())?;
        let plan = plan_noise(&config.privacy, accounting)?;
        let guard = BudgetGuard::new(&config.privacy);
        let mut ledger = self.dir.load_ledger()?;
        ledger.delta.get_or_insert(config.privacy.delta);

        // Resume from the last checkpoint, or start fresh.
        let checkpoint = self.dir.latest_checkpoint()?;
        let (trainer, mut noise, first_round) = match &checkpoint {
            Some((round, path)) => {
                generator.model_mut().load_adapter(&path.join("adapter"))?;
                let trainer = PreferenceTrainer::load(&path.join("trainer"), device)?;
                let state: EngineState = read_state(&path.join(STATE_FILE))?;
                self.repair_metrics(*round, &state.metrics)?;
                let noise = match &state.noise {
                    Some(saved) => NoiseSource::restore(saved),
                    None => NoiseSource::from_os()?,
                };
                (trainer, noise, round + 1)
            }
            None => {
                generator
                    .model_mut()
                    .add_lora(&lora_config(config)?, config.run.seed)?;
                let trainer = PreferenceTrainer::new(config.dpo.clone())?;
                (
                    trainer,
                    NoiseSource::from_config(config.privacy.noise_seed)?,
                    0,
                )
            }
        };

        let settings = RoundSettings {
            per_prompt: config.generation.candidates_per_prompt,
            sampling: sampling_params(config),
            truncate_tokens: config.generation.truncate_tokens,
            batch_size: config.generation.batch_size,
            embed_batch: EMBED_BATCH,
            clip: config.privacy.clip,
            noise_multiplier: plan.sigma,
            rejected_rank: config.pairs.rejected_rank,
            seed: config.run.seed,
        };
        let mut engine = PopriEngine::new(generator, embedder, trainer, prompts, settings)?;
        let mut transport = SimulatedTransport {
            population: &population,
            progress,
        };

        let mut stop_reason = StopReason::RoundsCompleted;
        for round in first_round..config.privacy.rounds {
            let round_clock = Instant::now();
            let sampled = sampler.sample(round, population.len())?;
            let event = LedgerEvent::gaussian(plan.sigma, accounting, 1)
                .with_round(round)
                .with_clip_bound(config.privacy.clip)
                .with_label("popri round: noisy sum of clipped client score vectors");
            // Charged but not checkpointed by a run that was killed: re-run under that charge.
            let already_charged = ledger.events.last().is_some_and(|e| e.round == Some(round));
            if !already_charged && guard.would_exceed(&ledger, &event)? {
                stop_reason = StopReason::BudgetExhausted;
                break;
            }
            let dir = &self.dir;
            let ledger_ref = &mut ledger;
            let mut commit_cost = move || -> Result<()> {
                if !already_charged {
                    ledger_ref.push(event.clone())?;
                    dir.save_ledger(ledger_ref)?;
                }
                Ok(())
            };
            let output = engine.run_round(
                round,
                &sampled,
                &mut transport,
                &mut noise,
                &mut commit_cost,
                progress,
            )?;
            let eval_clock = Instant::now();
            let (fid, mean_distance) = match &eval_embeddings {
                Some(eval) => fid_to(
                    eval,
                    &diagnostic_rows(&output, config.eval.fid_all_candidates)?,
                )?,
                None => (None, None),
            };
            let mut report = output.report;
            report.seconds.eval = eval_clock.elapsed().as_secs_f64();
            let (epsilon_rdp, epsilon_pld) = guard.spent(&ledger)?;
            let metrics = round_metrics(
                config,
                &plan,
                &accounting,
                &report,
                RoundNumbers {
                    epsilon_rdp,
                    epsilon_pld,
                    fid,
                    mean_distance,
                    wall_seconds: round_clock.elapsed().as_secs_f64(),
                },
            );
            self.checkpoint(&engine, &noise, &metrics)?;
            self.dir.append_metrics(&metrics)?;
            on_round(&metrics);
        }

        // The released outputs: synthetic data from the final adapter (post-processing of
        // noisy results, no further privacy cost) and the statement.
        let synthetic = self.write_synthetic(&mut engine, &seed_pool, &template, progress)?;
        let synthetic_fid = match &eval_embeddings {
            Some(eval) if synthetic.texts.len() >= 2 => {
                let embeddings = engine
                    .embedder()
                    .embed_tensor(&synthetic.texts, EMBED_BATCH)?;
                fid_to(eval, &rows(&embeddings)?)?.0
            }
            _ => None,
        };
        let statement = PrivacyStatement::from_ledger(
            &ledger,
            config.privacy.delta,
            &[AccountantKind::Rdp, AccountantKind::Pld],
        )?;
        write_atomic(
            &self.dir.statement_md_path(),
            statement.to_markdown().as_bytes(),
        )?;
        write_atomic(
            &self.dir.statement_json_path(),
            statement.to_json().as_bytes(),
        )?;

        let (epsilon_rdp, epsilon_pld) = guard.spent(&ledger)?;
        let metrics = self.dir.read_metrics()?;
        let summary = SimulationSummary {
            run_dir: self.dir.root().to_path_buf(),
            rounds: metrics.len() as u64,
            stop_reason,
            epsilon_rdp,
            epsilon_pld,
            target_epsilon: config.privacy.epsilon,
            delta: config.privacy.delta,
            sigma: plan.sigma,
            fid_nonprivate_per_round: metrics.iter().map(|m| m.fid_nonprivate).collect(),
            synthetic_fid_nonprivate: synthetic_fid,
            synthetic_samples: synthetic.texts.len(),
            synthetic_path: self.dir.synthetic_path(),
            statement_path: self.dir.statement_md_path(),
            seconds: clock.elapsed().as_secs_f64(),
        };
        crate::plot::write_rounds_svg(
            &metrics,
            config.privacy.epsilon,
            &self.dir.root().join(ROUNDS_PLOT_FILE),
        )?;
        let json = serde_json::to_string_pretty(&summary)
            .map_err(|e| ServerError::argument("summary", "(unserialisable)", e.to_string()))?;
        write_atomic(&self.dir.root().join("summary.json"), json.as_bytes())?;
        Ok(summary)
    }

    /// The public seed pool: a file of public texts, or texts the base model writes from the
    /// configured topics (before any adapter exists: never private data), saved in the run
    /// directory so a resumed run uses the same pool.
    fn seed_pool(&self, generator: &Generator, progress: &dyn Progress) -> Result<Vec<String>> {
        let prompts = &self.config.prompts;
        if let Some(path) = &prompts.seed_file {
            return seed_pool_from_file(path);
        }
        let saved = self.dir.root().join(SEED_POOL_FILE);
        if saved.exists() {
            let text = std::fs::read_to_string(&saved).map_err(|e| ServerError::io(&saved, e))?;
            return serde_json::from_str(&text).map_err(|e| ServerError::RunDir {
                path: self.dir.root().to_path_buf(),
                message: format!("{SEED_POOL_FILE} is corrupt ({e}); delete it to regenerate"),
            });
        }
        let requests: Vec<String> = prompts
            .topics
            .iter()
            .flat_map(|topic| std::iter::repeat_n(seed_request(topic), prompts.seeds_per_topic))
            .collect();
        progress.start("seed pool", requests.len() as u64);
        let mut pool = Vec::with_capacity(requests.len());
        let batches = requests.chunks(self.config.generation.batch_size.max(1));
        for (index, batch) in batches.enumerate() {
            // Every batch its own stream, apart from the rounds' and the synthetic set's.
            let params = SamplingParams {
                seed: derive_seed(self.config.run.seed, SEED_POOL_STREAM, index as u64),
                ..sampling_params(&self.config)
            };
            for completion in generator.generate(batch, true, &params)? {
                let text = crate::prompts::clean_candidate(&completion.text);
                if !text.is_empty() {
                    pool.push(text);
                }
            }
            progress.advance(batch.len() as u64);
        }
        progress.finish();
        let json = serde_json::to_string_pretty(&pool)
            .map_err(|e| ServerError::argument("seed pool", "(unserialisable)", e.to_string()))?;
        write_atomic(&saved, json.as_bytes())?;
        Ok(pool)
    }

    /// Writes round `metrics.round`'s checkpoint: adapter (PEFT format), trainer state, noise
    /// state (test seeds only) and the metrics row.
    fn checkpoint(
        &self,
        engine: &PopriEngine,
        noise: &NoiseSource,
        metrics: &RoundMetrics,
    ) -> Result<()> {
        let pending = self.dir.begin_checkpoint(metrics.round)?;
        let base = self
            .config
            .model
            .generator
            .as_ref()
            .map_or("SmolLM2-135M-Instruct".to_string(), |p| {
                p.display().to_string()
            });
        engine
            .generator()
            .model()
            .save_adapter(&pending.path().join("adapter"), &base)?;
        engine.trainer().save(&pending.path().join("trainer"))?;
        let state = EngineState {
            round: metrics.round,
            noise: noise.state(),
            metrics: metrics.clone(),
        };
        let json = serde_json::to_string_pretty(&state)
            .map_err(|e| ServerError::argument("state", "(unserialisable)", e.to_string()))?;
        write_atomic(&pending.path().join(STATE_FILE), json.as_bytes())?;
        pending.commit()?;
        Ok(())
    }

    /// Makes `metrics.jsonl` end with the row of the last checkpoint (`round`): rows of rounds
    /// that were not checkpointed are dropped, a row lost to a kill is restored.
    fn repair_metrics(&self, round: u64, row: &RoundMetrics) -> Result<()> {
        self.dir.truncate_metrics(round)?;
        let has_row = self
            .dir
            .read_metrics()?
            .last()
            .is_some_and(|last| last.round == round);
        if !has_row {
            self.dir.append_metrics(row)?;
        }
        Ok(())
    }

    /// Samples the synthetic data set and writes `synthetic.jsonl` (`{"text": …}` per line).
    fn write_synthetic(
        &self,
        engine: &mut PopriEngine,
        seed_pool: &[String],
        template: &PromptTemplate,
        progress: &dyn Progress,
    ) -> Result<Candidates> {
        let output = &self.config.output;
        let prompts = match output.synthetic_prompts {
            SyntheticPrompts::Fresh => build_prompts_with(
                template,
                seed_pool,
                output.synthetic_samples,
                &mut derived_rng(self.config.run.seed, "synthetic prompts", 0),
            )?,
            SyntheticPrompts::Reuse => engine
                .prompts()
                .iter()
                .cycle()
                .take(output.synthetic_samples)
                .cloned()
                .collect(),
        };
        let synthetic = engine.sample_candidates(&prompts, 1, SYNTHETIC_STREAM, progress)?;
        let mut lines = String::new();
        for text in &synthetic.texts {
            let line = serde_json::json!({ "text": text });
            lines.push_str(&line.to_string());
            lines.push('\n');
        }
        write_atomic(&self.dir.synthetic_path(), lines.as_bytes())?;
        Ok(synthetic)
    }
}

/// The request that makes the base model write one public seed text on `topic`.
fn seed_request(topic: &str) -> String {
    format!(
        "Write one paragraph (about 60 words) of a speech on {topic}. \
         Reply with the paragraph only."
    )
}

/// The clients' data: the built-in SOTU conversion or a federated JSONL file, with its eval
/// split.
fn load_data(config: &RunConfig, assets: &Assets) -> Result<FederatedData> {
    let mut documents = match &config.data.train {
        TrainData::Sotu => sotu_documents(&assets.sotu_dir()?)?,
        TrainData::File(path) => clients::read_documents(path)?,
    };
    if let Some(max) = config.data.max_texts_per_client {
        documents = sample_per_client(documents, max, config.run.seed);
    }
    let mut data = match &config.data.eval {
        Some(path) => FederatedData::from_train_eval(documents, clients::read_documents(path)?)?,
        None => FederatedData::split(documents, config.data.eval_fraction, config.run.seed)?,
    };
    if let Some(max) = config.data.max_clients {
        data.clients.truncate(max);
    }
    Ok(data)
}

/// Where client embeddings are cached: `.cache/embeddings` beside the installed models (shared
/// by runs), or the run directory when the models were not found through `.cache/models.env`.
fn embedding_cache_dir(assets: &Assets, run_dir: &Path) -> PathBuf {
    assets.source().and_then(Path::parent).map_or_else(
        || run_dir.join("embeddings"),
        |cache| cache.join("embeddings"),
    )
}

fn embed_with_progress(
    embedder: &SentenceEmbedder,
    texts: &[&str],
    cache: &Path,
    progress: &dyn Progress,
    phase: &'static str,
) -> Result<Tensor> {
    progress.start(phase, texts.len() as u64);
    let mut reported = 0;
    let embeddings = embed_cached(embedder, texts, cache, EMBED_BATCH, |done, _| {
        progress.advance((done - reported) as u64);
        reported = done;
    })?;
    progress.finish();
    Ok(embeddings)
}

/// The rows of a `[n, d]` tensor.
fn rows(tensor: &Tensor) -> Result<Vec<Vec<f32>>> {
    let tensor = tensor.to_device(Device::Cpu).to_kind(tch::Kind::Float);
    Vec::<Vec<f32>>::try_from(&tensor).map_err(|e| ServerError::Model(e.into()))
}

/// The candidates the FID diagnostic uses: the first sample of each prompt (the reference's
/// choice), or all of them (`eval.fid_all_candidates`, for small demo runs).
fn diagnostic_rows(output: &RoundOutput, all: bool) -> Result<Vec<Vec<f32>>> {
    let all_rows = rows(&output.embeddings)?;
    if all {
        return Ok(all_rows);
    }
    Ok(all_rows
        .into_iter()
        .step_by(output.candidates.per_prompt.max(1))
        .collect())
}

/// FID and squared mean distance of `samples` to the private eval set (`None` with fewer than
/// two samples).
fn fid_to(eval: &[Vec<f32>], samples: &[Vec<f32>]) -> Result<(Option<f64>, Option<f64>)> {
    if samples.len() < 2 || eval.len() < 2 {
        return Ok((None, None));
    }
    Ok((
        Some(frechet_distance(samples, eval)?),
        Some(mean_distance_sq(samples, eval)?),
    ))
}

fn lora_config(config: &RunConfig) -> Result<LoraConfig> {
    let lora = &config.lora;
    let targets = lora
        .targets
        .iter()
        .map(|t| LoraTarget::from_str(t))
        .collect::<models::Result<Vec<_>>>()?;
    let lora_config = LoraConfig {
        rank: lora.r as i64,
        alpha: lora.alpha,
        dropout: lora.dropout,
        targets,
    };
    lora_config.validate()?;
    Ok(lora_config)
}

fn sampling_params(config: &RunConfig) -> SamplingParams {
    let generation = &config.generation;
    SamplingParams {
        max_new_tokens: generation.max_new_tokens,
        temperature: generation.temperature,
        top_p: generation.top_p,
        // The model starts a fifth sample: stop there (the text is cut at "Orig" anyway).
        stop_strings: vec!["Original Text Sample".to_string()],
        ..SamplingParams::default()
    }
}

fn read_state(path: &Path) -> Result<EngineState> {
    let text = std::fs::read_to_string(path).map_err(|e| ServerError::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| ServerError::RunDir {
        path: path.to_path_buf(),
        message: format!("the checkpoint state cannot be read ({e})"),
    })
}

/// Measured values of a round that the engine's report does not hold.
struct RoundNumbers {
    epsilon_rdp: f64,
    epsilon_pld: f64,
    fid: Option<f64>,
    mean_distance: Option<f64>,
    wall_seconds: f64,
}

fn round_metrics(
    config: &RunConfig,
    plan: &NoisePlan,
    accounting: &Sampling,
    report: &RoundReport,
    numbers: RoundNumbers,
) -> RoundMetrics {
    let last = report.dpo.last();
    let mean = |f: &dyn Fn(&models::train::StepMetrics) -> Option<f64>| {
        let values: Vec<f64> = report.dpo.iter().filter_map(f).collect();
        (!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64)
    };
    RoundMetrics {
        round: report.round,
        wall_seconds: numbers.wall_seconds,
        epsilon_rdp: numbers.epsilon_rdp,
        epsilon_pld: numbers.epsilon_pld,
        delta: config.privacy.delta,
        sigma: plan.sigma,
        q: sampling_rate(accounting),
        clip: config.privacy.clip,
        clients: report.clients as u64,
        clipped_fraction: Some(report.clipped_fraction),
        mean_pre_clip_norm: Some(report.mean_pre_clip_norm),
        noise_std: report.noise_std,
        signal_to_noise: report
            .signal_to_noise
            .is_finite()
            .then_some(report.signal_to_noise),
        preference_agreement_nonprivate: report.preference_agreement,
        dpo_loss: mean(&|m| Some(m.loss)).or(last.map(|m| m.loss)),
        reward_accuracy: mean(&|m| m.rewards_accuracies),
        reward_margin: mean(&|m| m.rewards_margins),
        fid_nonprivate: numbers.fid,
        mean_distance_sq_nonprivate: numbers.mean_distance,
        seconds: report.seconds,
    }
}

fn sampling_rate(sampling: &Sampling) -> f64 {
    match sampling {
        Sampling::Poisson { q } => *q,
        Sampling::FixedCohort { m, n } => *m as f64 / *n as f64,
        Sampling::Full => 1.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_cohort_rate_is_m_over_n() {
        assert_eq!(sampling_rate(&Sampling::FixedCohort { m: 5, n: 20 }), 0.25);
        assert_eq!(sampling_rate(&Sampling::Full), 1.0);
    }
}
