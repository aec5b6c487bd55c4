//! A federated POPri simulation: the round engine with in-process clients, a run directory that
//! survives a kill, and the budget rule that stops before a round would overspend.
//!
//! Durable writes of round t, in this order (why resuming never loses or double-counts budget):
//! 1. the ledger entry of round t, saved before any noise is drawn (the round's `commit`);
//! 2. the checkpoint of round t (adapter, trainer state, noise state, its metrics row), written
//!    under a temporary name and renamed when complete;
//! 3. the metrics row, appended to `metrics.jsonl`.
//!
//! A kill between 1 and 2 leaves round t charged but not checkpointed: the resumed run re-runs
//! round t under the entry already in the ledger (nothing the lost attempt computed left the
//! process, so the one charge covers the one release). A kill between 2 and 3 is repaired from
//! the checkpoint's copy of the row.

use std::path::Path;
use std::time::Instant;

use models::train::PreferenceTrainer;
use models::{Assets, Generator};
use privacy_accounting::Sampling;
use serde::{Deserialize, Serialize};
use tch::Device;

use crate::config::{Method, RunConfig};
use runs::records::SimulationSummary;

use crate::engine::{
    CollectedScores, ContributionStats, PopriEngine, RoundOutput, RoundReport, RoundSettings,
    RoundTask, ScoreTransport,
};
use crate::error::{Result, ServerError};
use crate::finish::{finish_simulation, synthetic_fid_nonprivate, Released};
use crate::noise::{GridSum, NoiseSource, NoiseState, PlannedRelease};
use crate::run_dir::{read_checkpoint_state, write_atomic, NonPrivate, RoundMetrics, RunDir};
use crate::setup::{
    base_model_name, fid_to, load_embedder, load_generator, lora_config, prompt_template,
    public_cohort, public_prompts, rows, run_device, sampling_params, sampling_rate, seed_pool,
    simulation_sampling, write_popri_synthetic, SimulatedClients, EMBED_BATCH,
};
use clients::{FederatedData, SimulatedPopulation};
use round_driver::{simulate_rounds, Progress, Round, RoundMethod};

/// The engine state saved in every checkpoint beside the adapter and the trainer.
pub(crate) const STATE_FILE: &str = "state.json";

/// The simulated clients as a [`ScoreTransport`]: each sampled client scores the candidates
/// against its own texts in this process, with the clients' code (`clients::scores`).
pub struct SimulatedTransport<'a> {
    population: &'a SimulatedPopulation,
    /// The clients' raw data: the witness of the non-private diagnostics.
    data: &'a FederatedData,
    progress: &'a dyn Progress,
}

impl ScoreTransport for SimulatedTransport<'_> {
    fn population(&self) -> usize {
        self.population.len()
    }

    fn collect(&mut self, task: &RoundTask<'_>, sampled: &[usize]) -> Result<CollectedScores> {
        self.progress.start("score", sampled.len() as u64);
        let progress = self.progress;
        let sum = self.population.score_sum(
            task.candidates,
            sampled,
            task.clip,
            task.mechanism.grid(),
            |done| progress.advance(done as u64),
        )?;
        self.progress.finish();
        Ok(CollectedScores {
            sum: GridSum::from_units(task.mechanism, sum.units)?,
            nonprivate: Some(NonPrivate::measured(
                self.data,
                ContributionStats {
                    clients: sum.clients,
                    clipped: sum.clipped,
                    mean_pre_clip_norm: sum.mean_pre_clip_norm,
                },
            )),
        })
    }
}

/// The one-line account of a finished round that the CLI prints. The training loss is the
/// round's DPO loss (POPri), SFT loss (PE+SFT) or the clients' local loss (DP-FedAvg).
pub fn round_line(metrics: &RoundMetrics) -> String {
    let nonprivate = metrics.nonprivate_or_default();
    let opt =
        |v: Option<f64>, digits: usize| v.map_or("-".to_string(), |v| format!("{v:.digits$}"));
    format!(
        "round {:>3}: ε {:.4} (RDP) / {:.4} (PLD), cohort {}, train loss {}{}, reward acc {}, \
         FID {} (non-private), {:.1} s (generate {:.1}, embed {:.1}, score {:.1}, train {:.1})",
        metrics.round,
        metrics.epsilon_rdp,
        metrics.epsilon_pld,
        metrics.cohort.map_or("private".into(), |n| n.to_string()),
        opt(metrics.train_loss.or(nonprivate.local_loss_nonprivate), 4),
        if metrics.train_loss.is_none() && nonprivate.local_loss_nonprivate.is_some() {
            " (non-private)"
        } else {
            ""
        },
        opt(metrics.reward_accuracy, 2),
        opt(metrics.fid_nonprivate(), 4),
        metrics.wall_seconds,
        metrics.seconds.generate,
        metrics.seconds.embed,
        metrics.seconds.score,
        metrics.seconds.dpo,
    )
}

/// What a checkpoint holds beside the adapter and the trainer.
/// Shared with the HTTP server's loop (serve/run.rs), which checkpoints the same engine.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct EngineState {
    pub(crate) round: u64,
    /// Only for test-seeded noise: an OS-seeded stream is never written to disk (whoever held
    /// it could subtract the noise); a resumed run draws a fresh OS seed.
    pub(crate) noise: Option<NoiseState>,
    pub(crate) metrics: RoundMetrics,
}

/// A simulation bound to its run directory.
pub struct Simulation {
    dir: RunDir,
    config: RunConfig,
    /// This process owns the run directory while the simulation exists.
    _lock: crate::run_dir::RunDirLock,
}

impl Simulation {
    /// A new run of `config` in `dir` (created; an existing directory must be empty, or hold a
    /// run of the same configuration, which is then continued).
    pub fn create(config: RunConfig, dir: &Path) -> Result<Simulation> {
        config.validate()?;
        let dir = RunDir::create(dir, &config)?;
        let _lock = dir.lock()?;
        Ok(Simulation { dir, config, _lock })
    }

    /// The run in `dir`, to be continued from its last checkpoint with its saved configuration.
    pub fn resume(dir: &Path) -> Result<Simulation> {
        let dir = RunDir::open(dir)?;
        let _lock = dir.lock()?;
        let config = dir.load_config()?;
        config.validate()?;
        Ok(Simulation { dir, config, _lock })
    }

    /// The resolved configuration.
    pub fn config(&self) -> &RunConfig {
        &self.config
    }

    /// The run directory.
    pub fn run_dir(&self) -> &Path {
        self.dir.root()
    }

    /// Runs the remaining rounds of the configured method (`run.method`), then writes the
    /// synthetic data (or model) and the privacy statement. `on_round` sees each finished round's
    /// metrics.
    pub fn run(
        self,
        progress: &dyn Progress,
        on_round: &dyn Fn(&RoundMetrics),
    ) -> Result<SimulationSummary> {
        match self.config.run.method {
            Method::Popri => self.run_popri(progress, on_round),
            Method::Pe | Method::PeSft => {
                crate::pe::run_pe(&self.dir, &self.config, progress, on_round)
            }
            Method::DpFedavg => {
                crate::fedavg::run_dp_fedavg(&self.dir, &self.config, progress, on_round)
            }
        }
    }

    /// The POPri loop: rounds of the engine with the simulated clients.
    fn run_popri(
        self,
        progress: &dyn Progress,
        on_round: &dyn Fn(&RoundMetrics),
    ) -> Result<SimulationSummary> {
        let clock = Instant::now();
        let config = &self.config;
        let device = run_device(config)?;
        let assets = Assets::discover();

        // The clients: private data, embedded once (cached), kept as per-client sums.
        let embedder = load_embedder(config, &assets, device)?;
        let clients =
            SimulatedClients::load(config, &assets, &embedder, self.dir.root(), progress)?;
        let population = &clients.population;
        let eval_embeddings = clients.eval_rows.as_ref();

        // The server: generator, public prompts, budget.
        let mut generator = load_generator(config, &assets, device)?;
        let seed_pool = seed_pool(config, &self.dir, &generator, progress)?;
        let template = prompt_template(config)?;
        let prompts = public_prompts(config, &self.dir, &template, &seed_pool, &generator)?;

        let (sampler, accounting, plan) = simulation_sampling(config, population.len())?;

        // Resume from the last checkpoint, or start fresh.
        let (trainer, saved_noise, first_round) =
            resume_popri(config, &self.dir, &mut generator, device)?;
        let settings = popri_settings(config, plan.sigma);
        let mut method = PopriRounds {
            engine: PopriEngine::new(generator, embedder, trainer, prompts, settings)?,
            transport: SimulatedTransport {
                population,
                data: &clients.data,
                progress,
            },
            dir: &self.dir,
            config,
            sigma: plan.sigma,
            accounting,
            eval_embeddings,
        };
        let (stop_reason, ledger) = simulate_rounds(
            &mut method,
            &self.dir,
            &config.privacy,
            &sampler,
            saved_noise.as_ref(),
            first_round,
            progress,
            on_round,
        )?;
        let mut engine = method.engine;

        // The released outputs: synthetic data from the final adapter (post-processing of
        // noisy results, no further privacy cost) and the statement.
        let synthetic = write_popri_synthetic(
            &mut engine,
            config,
            &self.dir,
            &template,
            &seed_pool,
            progress,
        )?;
        let released = Released {
            samples: synthetic.texts.len(),
            path: self.dir.synthetic_path(),
            fid_nonprivate: synthetic_fid_nonprivate(
                eval_embeddings.map(Vec::as_slice),
                engine.embedder(),
                &synthetic.texts,
            )?,
            generator_dtype: engine.generator().model().kind(),
        };
        finish_simulation(
            &self.dir,
            config,
            &ledger,
            stop_reason,
            plan.sigma,
            released,
            clock,
        )
    }
}

/// A POPri round of the simulation, for the [`Driver`]: the engine with the simulated clients,
/// and the non-private FID diagnostic.
struct PopriRounds<'a> {
    engine: PopriEngine,
    transport: SimulatedTransport<'a>,
    dir: &'a RunDir,
    config: &'a RunConfig,
    sigma: f64,
    accounting: Sampling,
    eval_embeddings: Option<&'a Vec<Vec<f32>>>,
}

impl RoundMethod<ServerError> for PopriRounds<'_> {
    fn population(&self) -> usize {
        self.transport.population()
    }

    fn plan(&mut self, round: u64) -> Result<Option<PlannedRelease>> {
        self.engine
            .planned_release(round, self.accounting)
            .map(Some)
    }

    fn run_round(&mut self, round: Round<'_, ServerError>) -> Result<Option<RoundMetrics>> {
        let output = self.engine.run_round(round, &mut self.transport)?;
        let eval_clock = Instant::now();
        let (fid, mean_distance) = match self.eval_embeddings {
            Some(eval) => fid_to(
                eval,
                &diagnostic_rows(&output, self.config.eval.fid_all_candidates)?,
            )?,
            None => (None, None),
        };
        let mut report = output.report;
        report.seconds.eval = eval_clock.elapsed().as_secs_f64();
        if let Some(nonprivate) = report.nonprivate.as_mut() {
            nonprivate.get_mut().fid_nonprivate = fid;
            nonprivate.get_mut().mean_distance_sq_nonprivate = mean_distance;
        }
        Ok(Some(round_metrics(
            self.config,
            self.sigma,
            &self.accounting,
            &report,
        )))
    }

    fn checkpoint(&mut self, metrics: &RoundMetrics, noise: &NoiseSource) -> Result<()> {
        write_engine_checkpoint(self.dir, self.config, &self.engine, noise, metrics)
    }
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

/// The POPri generator's adapter and trainer from the last checkpoint in `dir` (whose metrics
/// row is repaired from it), or a fresh adapter and trainer; with the checkpoint's noise state
/// (test seeds only) and the next round's number. The simulation and the server resume alike.
pub(crate) fn resume_popri(
    config: &RunConfig,
    dir: &RunDir,
    generator: &mut Generator,
    device: Device,
) -> Result<(PreferenceTrainer, Option<NoiseState>, u64)> {
    Ok(match dir.latest_checkpoint()? {
        Some((round, path)) => {
            generator.model_mut().load_adapter(&path.join("adapter"))?;
            let trainer = PreferenceTrainer::load(&path.join("trainer"), device)?;
            let state: EngineState = read_checkpoint_state(&path.join(STATE_FILE))?;
            dir.repair_metrics(round, &state.metrics)?;
            (trainer, state.noise, round + 1)
        }
        None => {
            generator
                .model_mut()
                .add_lora(&lora_config(config)?, config.run.seed)?;
            (PreferenceTrainer::new(config.dpo.clone())?, None, 0)
        }
    })
}

/// The settings of every POPri round of `config` at noise multiplier `sigma`.
pub(crate) fn popri_settings(config: &RunConfig, sigma: f64) -> RoundSettings {
    RoundSettings {
        per_prompt: config.generation.candidates_per_prompt,
        sampling: sampling_params(config),
        truncate_tokens: config.generation.truncate_tokens,
        batch_size: config.generation.batch_size,
        embed_batch: EMBED_BATCH,
        clip: config.privacy.clip,
        noise_multiplier: sigma,
        rejected_rank: config.pairs.rejected_rank,
        seed: config.run.seed,
        prompt_style: config.prompts.style,
    }
}

/// The metrics row of a POPri round (simulated or served: the report's `nonprivate` part is
/// present only in a simulation), without ε and the wall time, which the caller fills in.
pub(crate) fn round_metrics(
    config: &RunConfig,
    sigma: f64,
    accounting: &Sampling,
    report: &RoundReport,
) -> RoundMetrics {
    let last = report.dpo.last();
    let mean = |f: &dyn Fn(&models::train::StepMetrics) -> Option<f64>| {
        let values: Vec<f64> = report.dpo.iter().filter_map(f).collect();
        (!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64)
    };
    RoundMetrics {
        round: report.round,
        wall_seconds: 0.0,
        epsilon_rdp: 0.0,
        epsilon_pld: 0.0,
        delta: config.privacy.delta,
        sigma,
        q: sampling_rate(accounting),
        clip: config.privacy.clip,
        cohort: public_cohort(accounting, report.sampled),
        noise_std: report.noise_std,
        train_loss: mean(&|m| Some(m.loss)).or(last.map(|m| m.loss)),
        reward_accuracy: mean(&|m| m.rewards_accuracies),
        reward_margin: mean(&|m| m.rewards_margins),
        seconds: report.seconds,
        noisy_score_histogram: report.noisy_scores.clone(),
        nonprivate: report.nonprivate.clone(),
    }
}

/// Writes round `metrics.round`'s checkpoint of a POPri engine: adapter (PEFT format), trainer
/// state, noise state (test seeds only) and the metrics row, renamed into place when complete.
pub(crate) fn write_engine_checkpoint(
    dir: &RunDir,
    config: &RunConfig,
    engine: &PopriEngine,
    noise: &NoiseSource,
    metrics: &RoundMetrics,
) -> Result<()> {
    let pending = dir.begin_checkpoint(metrics.round)?;
    engine
        .generator()
        .model()
        .save_adapter(&pending.path().join("adapter"), &base_model_name(config))?;
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
