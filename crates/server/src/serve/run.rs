//! The server's round loop around [`PopriEngine`], on its own (blocking) thread.
//!
//! Durable writes of round t, in this order:
//! 1. the round opens: round, sampled client ids (drawn once: the cohort never changes, see
//!    [`crate::serve::coordinator::RemoteTransport`] for why), deadline, candidate texts and
//!    the encoded candidate bytes (SQLite; the `attempt` column is always 0);
//! 2. each submission, in its own transaction (receipt = SHA-256 of the vector's bytes);
//! 3. the round closes at quorum or deadline (later submissions → 410), with whatever
//!    arrived; only the admin's stop abandons it instead (nothing released, nothing charged,
//!    no further round);
//! 4. the ledger row of round t, the kept sum and the erasure of the client vectors, in one
//!    SQLite transaction (primary key = round; the engine's `commit_cost`, before any noise
//!    exists), mirrored to `ledger.json`;
//! 5. noise, DPO, then the checkpoint of round t (adapter, trainer, state) renamed into place;
//! 6. the metrics row; the round is marked released and its kept sum erased.
//!
//! Why a `kill -9` anywhere, then `fedsyn serve --resume`, neither loses nor double-counts
//! budget nor releases a round twice:
//! - before 3: the round is still open; the restarted server takes it up (same round id,
//!   same cohort, same candidates, the stored submissions count, the deadline moves past the
//!   restart);
//! - between 3 and 4: the round is closed and uncharged; the sum of its stored vectors is
//!   charged and used exactly as without the kill;
//! - between 4 and 5: round t is charged but nothing noisy left the process (the noise and the
//!   adapter died with it). The resumed run draws fresh noise for the same kept sum under the
//!   one charge already committed: one charge, one release — the argument of `simulate.rs`;
//!   the ledger's primary key makes a second charge impossible anyway;
//! - between 5 and 6: the checkpoint exists, so round t is done: the resumed run marks it
//!   released (erasing its sum) and continues with t + 1, repairing `metrics.jsonl` from
//!   the checkpoint's copy of the row.

use std::str::FromStr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use clients::{encode_candidates, CandidateMatrix, EmbeddingDtype};
use models::train::PreferenceTrainer;
use models::{Assets, DeviceChoice};
use privacy_accounting::{LedgerEvent, Sampling};
use tch::Tensor;

use crate::budget::{plan_noise, BudgetGuard};
use crate::config::{RunConfig, WireDtype};
use crate::engine::{
    popri_release, Candidates, PopriEngine, Progress, RoundSettings, ScoreTransport,
};
use crate::error::{Result, ServerError};
use crate::noise::{NoiseSource, PlannedRelease};
use crate::run_dir::{read_checkpoint_state, RoundMetrics, RunDir};
use crate::sampling::ClientSampler;
use crate::serve::coordinator::{now_unix_ms, Coordinator, RemoteTransport, RunState};
use crate::serve::store::{RoundRecord, RoundStatus};
use crate::setup;
use crate::simulate::{round_metrics, write_engine_checkpoint, EngineState, STATE_FILE};

/// `meta` key of the noise multiplier, planned once when round 0 opens.
const SIGMA_KEY: &str = "sigma";

/// Runs the remaining rounds of the run in `dir`, then writes the synthetic data and the
/// privacy statement and marks the run finished. `on_round` sees each released round.
pub fn run_rounds(
    config: &RunConfig,
    dir: &RunDir,
    coordinator: &Arc<Coordinator>,
    progress: &dyn Progress,
    on_round: &dyn Fn(&RoundMetrics),
) -> Result<()> {
    if coordinator.snapshot().0 == RunState::Finished {
        return Ok(());
    }
    tch::set_num_threads(config.run.threads.max(1) as i32);
    let device = DeviceChoice::from_str(&config.run.device)?.resolve()?;
    let assets = Assets::discover();
    let embedder = setup::load_embedder(config, &assets, device)?;
    let mut generator = setup::load_generator(config, &assets, device)?;
    let seed_pool = setup::seed_pool(config, dir, &generator, progress)?;
    let template = setup::prompt_template(config)?;
    let prompts = setup::public_prompts(config, dir, &template, &seed_pool)?;

    let checkpoint = dir.latest_checkpoint()?;
    let (trainer, mut noise, first_round) = match &checkpoint {
        Some((round, path)) => {
            generator.model_mut().load_adapter(&path.join("adapter"))?;
            let trainer = PreferenceTrainer::load(&path.join("trainer"), device)?;
            let state: EngineState = read_checkpoint_state(&path.join(STATE_FILE))?;
            dir.repair_metrics(*round, &state.metrics)?;
            let noise = match &state.noise {
                Some(saved) => NoiseSource::restore(saved),
                None => NoiseSource::from_os()?,
            };
            (trainer, noise, round + 1)
        }
        None => {
            generator
                .model_mut()
                .add_lora(&setup::lora_config(config)?, config.run.seed)?;
            let trainer = PreferenceTrainer::new(config.dpo.clone())?;
            (
                trainer,
                NoiseSource::from_config(config.privacy.noise_seed)?,
                0,
            )
        }
    };
    release_checkpointed_attempt(coordinator, first_round)?;
    let (rdp, pld) = BudgetGuard::new(&config.privacy)
        .spent(&coordinator.store().ledger(config.privacy.delta)?)?;
    coordinator.metrics().set_epsilon(rdp, pld);

    // Secret cohorts from the OS, always: `fedsyn serve` refuses `privacy.sampling_seed`.
    let sampler = ClientSampler::new(config.privacy.client_sampling()?, None)?;
    let sigma = coordinator
        .store()
        .meta(SIGMA_KEY)?
        .and_then(|s| s.parse::<f64>().ok());
    let settings = RoundSettings {
        per_prompt: config.generation.candidates_per_prompt,
        sampling: setup::sampling_params(config),
        truncate_tokens: config.generation.truncate_tokens,
        batch_size: config.generation.batch_size,
        embed_batch: setup::EMBED_BATCH,
        clip: config.privacy.clip,
        // Replaced by the planned σ before the first round runs.
        noise_multiplier: sigma.unwrap_or(0.0),
        rejected_rank: config.pairs.rejected_rank,
        seed: config.run.seed,
    };
    let mut rounds = RoundLoop {
        config,
        dir,
        coordinator,
        sampler,
        guard: BudgetGuard::new(&config.privacy),
        sigma,
        settings,
    };
    let mut engine: Option<PopriEngine> = None;
    let mut parts = Some((generator, embedder, trainer, prompts));
    for round in first_round..config.privacy.rounds {
        if coordinator.stop_requested() {
            break;
        }
        let Some(opened) = rounds.open(round, &mut engine, &mut parts, progress)? else {
            break;
        };
        let engine = engine.as_mut().expect("opened rounds have an engine");
        match rounds.run(engine, opened, &mut noise, progress)? {
            Some(metrics) => on_round(&metrics),
            None => break,
        }
    }

    let engine = match engine {
        Some(engine) => engine,
        None => {
            let (generator, embedder, trainer, prompts) =
                parts.take().expect("the engine parts are unused");
            PopriEngine::new(
                generator,
                embedder,
                trainer,
                prompts,
                rounds.settings.clone(),
            )?
        }
    };
    write_outputs(
        config,
        dir,
        coordinator,
        engine,
        &seed_pool,
        &template,
        progress,
    )?;
    coordinator.set_state(RunState::Finished)
}

/// A checkpoint exists for every round before `first_round`; an attempt of such a round that
/// is not yet marked released (a kill between the checkpoint and the mark) is released now.
fn release_checkpointed_attempt(coordinator: &Coordinator, first_round: u64) -> Result<()> {
    let Some(open) = coordinator.current_attempt() else {
        return Ok(());
    };
    if open.round < first_round {
        coordinator.retire(open.round, open.attempt, RoundStatus::Released)?;
    }
    Ok(())
}

type EngineParts = (
    models::Generator,
    models::SentenceEmbedder,
    PreferenceTrainer,
    Vec<String>,
);

/// A round attempt ready to be collected.
struct Opened {
    round: u64,
    population: Vec<String>,
    candidates: Candidates,
    embeddings: Tensor,
    /// The round's release (its ledger event and noise), planned when the round opened.
    release: PlannedRelease,
    sampling: Sampling,
    /// Seconds spent generating and embedding the candidates (or re-embedding stored ones).
    prepare_seconds: f64,
}

struct RoundLoop<'a> {
    config: &'a RunConfig,
    dir: &'a RunDir,
    coordinator: &'a Arc<Coordinator>,
    sampler: ClientSampler,
    guard: BudgetGuard,
    sigma: Option<f64>,
    settings: RoundSettings,
}

impl RoundLoop<'_> {
    /// Opens round `round` (or takes up its attempt held from before a restart); `None` when
    /// the run should stop (stop requested, or the round would exceed the budget).
    fn open(
        &mut self,
        round: u64,
        engine: &mut Option<PopriEngine>,
        parts: &mut Option<EngineParts>,
        progress: &dyn Progress,
    ) -> Result<Option<Opened>> {
        let store = self.coordinator.store();
        let held = self
            .coordinator
            .current_attempt()
            .filter(|open| open.round == round);
        let previous = store.latest_attempt(round)?;
        let population = match (&held, &previous) {
            (Some(_), Some(record)) => store.clients_in_order(record.population)?,
            _ => match self
                .coordinator
                .wait_until_ready(self.config.serve.min_clients)?
            {
                Some(enrolled) => store.clients_in_order(enrolled)?,
                None => return Ok(None),
            },
        };
        // The population is known only now (clients enrol while the server runs): warned
        // about once per process, at the first round that has the problem.
        static DELTA_WARNED: std::sync::atomic::AtomicBool =
            std::sync::atomic::AtomicBool::new(false);
        if let Some(warning) = delta_warning(self.config.privacy.delta, population.len()) {
            if !DELTA_WARNED.swap(true, Ordering::Relaxed) {
                eprintln!("warning: {warning}");
            }
        }
        let sampling = self.sampler.accounting(population.len())?;
        let sigma = self.sigma(sampling)?;
        self.settings.noise_multiplier = sigma;
        let release = popri_release(
            sigma,
            release_clip(self.config.privacy.clip, self.config.serve.quorum),
            self.config.prompts.num_prompts * self.config.generation.candidates_per_prompt,
            sampling,
            round,
        )?;
        let charged = store.ledger_rows()?.iter().any(|row| row.round == round);
        let ledger = store.ledger(self.config.privacy.delta)?;
        if !charged && held.is_none() && self.guard.would_exceed(&ledger, release.event())? {
            return Ok(None);
        }
        if engine.is_none() {
            let (generator, embedder, trainer, prompts) =
                parts.take().expect("the engine is built once");
            *engine = Some(PopriEngine::new(
                generator,
                embedder,
                trainer,
                prompts,
                self.settings.clone(),
            )?);
        }
        let engine = engine.as_mut().expect("built above");
        let clock = Instant::now();
        let (candidates, embeddings) = match (held, previous) {
            (Some(_), Some(record)) => self.recorded(engine, &record, progress)?,
            (None, Some(record)) => {
                // A round opened before and no longer held: abandoned by an older fedsyn with
                // too few submissions. Opening it again would draw a second cohort for the same
                // round, which the ledger cannot account for (see `RemoteTransport`).
                return Err(ServerError::RunDir {
                    path: self.dir.root().to_path_buf(),
                    message: format!(
                        "round {round} was abandoned ({:?}) by an earlier fedsyn that sampled \
                         again after too few submissions; this version never draws a second \
                         cohort for a round: start a new run with `fedsyn serve --config FILE \
                         --out NEW_DIR`",
                        record.status
                    ),
                });
            }
            _ => {
                let prompts = engine.prompts().to_vec();
                let per_prompt = self.config.generation.candidates_per_prompt;
                let candidates = engine.sample_candidates(&prompts, per_prompt, round, progress)?;
                let embeddings = engine.embed_candidates(&candidates.texts, progress)?;
                let record = self.first_record(round, &candidates, &embeddings)?;
                self.open_round(round, &population, &record)?;
                (candidates, embeddings)
            }
        };
        let prepare_seconds = clock.elapsed().as_secs_f64();
        Ok(Some(Opened {
            round,
            population,
            candidates,
            embeddings,
            release,
            sampling,
            prepare_seconds,
        }))
    }

    /// The stored candidates of an attempt and their embeddings (recomputed from the texts:
    /// the embedder is deterministic, and the clients keep the bytes they were sent).
    fn recorded(
        &self,
        engine: &PopriEngine,
        record: &RoundRecord,
        progress: &dyn Progress,
    ) -> Result<(Candidates, Tensor)> {
        let candidates = Candidates {
            texts: record.texts.clone(),
            prompts: record.prompts,
            per_prompt: record.per_prompt,
        };
        let embeddings = engine.embed_candidates(&candidates.texts, progress)?;
        Ok((candidates, embeddings))
    }

    /// σ: the persisted one, or planned now (once) for the population of round 0.
    fn sigma(&mut self, sampling: Sampling) -> Result<f64> {
        if let Some(sigma) = self.sigma {
            return Ok(sigma);
        }
        let sigma = plan_noise(&self.config.privacy, sampling)?.sigma;
        self.coordinator
            .store()
            .set_meta(SIGMA_KEY, &sigma.to_string())?;
        self.sigma = Some(sigma);
        Ok(sigma)
    }

    /// The record of round `round`'s candidates (encoded once, served to every client).
    fn first_record(
        &self,
        round: u64,
        candidates: &Candidates,
        embeddings: &Tensor,
    ) -> Result<RoundRecord> {
        let rows = setup::rows(embeddings)?;
        let dim = rows.first().map_or(0, Vec::len);
        let matrix = CandidateMatrix {
            round,
            clip: self.config.privacy.clip,
            rows: rows.len(),
            dim,
            values: rows.into_iter().flatten().collect(),
        };
        let dtype = match self.config.serve.embedding_dtype {
            WireDtype::F16 => EmbeddingDtype::F16,
            WireDtype::F32 => EmbeddingDtype::F32,
        };
        Ok(RoundRecord {
            round,
            attempt: 0,
            status: RoundStatus::Open,
            population: 0,
            sampled: Vec::new(),
            deadline_unix_ms: 0,
            texts: candidates.texts.clone(),
            prompts: candidates.prompts,
            per_prompt: candidates.per_prompt,
            rows: matrix.rows,
            dim,
            candidates: encode_candidates(&matrix, dtype, self.config.serve.compress),
        })
    }

    /// Samples the cohort of `round` from `population` (once: the round's own sampling stream,
    /// the cohort an uninterrupted simulation would draw) and opens the round (persisted).
    fn open_round(&self, round: u64, population: &[String], template: &RoundRecord) -> Result<()> {
        let indices = self.sampler.sample(round, population.len())?;
        let deadline = self.config.serve.round_deadline_seconds * 1000;
        let record = RoundRecord {
            attempt: 0,
            status: RoundStatus::Open,
            population: population.len(),
            sampled: indices.iter().map(|&i| population[i].clone()).collect(),
            deadline_unix_ms: now_unix_ms() + deadline,
            ..template.clone()
        };
        self.coordinator.open_attempt(&record)
    }

    /// Collects, charges, adds noise, trains, checkpoints and releases an opened round;
    /// `None` when a stop abandoned it (nothing charged).
    fn run(
        &self,
        engine: &mut PopriEngine,
        opened: Opened,
        noise: &mut NoiseSource,
        progress: &dyn Progress,
    ) -> Result<Option<RoundMetrics>> {
        let clock = Instant::now();
        let store = self.coordinator.store();
        let round = opened.round;
        let prepare_seconds = opened.prepare_seconds;
        let mut transport = RemoteTransport::new(self.coordinator.clone(), opened.population.len());
        let population_indices: Vec<usize> = (0..transport.population()).collect();
        let coordinator = self.coordinator;
        let (dir, delta) = (self.dir, self.config.privacy.delta);
        let grid = opened
            .release
            .mechanism(0)
            .map(|m| m.grid())
            .ok_or_else(|| ServerError::internal("a served round without a release"))?;
        let guard = &self.guard;
        let mut commit_cost = move |event: &LedgerEvent| -> Result<()> {
            let open = coordinator
                .current_attempt()
                .ok_or_else(|| ServerError::Http("no round at the ledger commit".into()))?;
            // The charge, the kept sum and the erasure of the client vectors: one transaction.
            store.commit_round(
                event,
                open.attempt,
                open.rows,
                grid,
                open.sampled_count,
                now_unix_ms(),
            )?;
            // ledger.json mirrors the SQLite ledger for the tools that read run directories.
            let ledger = store.ledger(delta)?;
            let (rdp, pld) = guard.spent(&ledger)?;
            coordinator.metrics().set_epsilon(rdp, pld);
            dir.save_ledger(&ledger)
        };
        let output = match engine.run_round_with_candidates(
            round,
            opened.candidates,
            opened.embeddings,
            &population_indices,
            &mut transport,
            noise,
            opened.release,
            &mut commit_cost,
            progress,
        ) {
            Ok(output) => output,
            Err(_) if transport.stopped() => return Ok(None),
            Err(error) => return Err(error),
        };
        let ledger = store.ledger(delta)?;
        let (epsilon_rdp, epsilon_pld) = self.guard.spent(&ledger)?;
        let mut report = output.report;
        report.sampled = transport.sampled();
        // Generation and embedding happened when the round opened.
        report.seconds.generate = prepare_seconds;
        let metrics = RoundMetrics {
            epsilon_rdp,
            epsilon_pld,
            wall_seconds: prepare_seconds + clock.elapsed().as_secs_f64(),
            ..round_metrics(
                self.config,
                self.settings.noise_multiplier,
                &opened.sampling,
                &report,
            )
        };
        self.checkpoint(engine, noise, &metrics)?;
        self.dir.append_metrics(&metrics)?;
        let attempt = self
            .coordinator
            .current_attempt()
            .ok_or_else(|| ServerError::Http("no attempt to release".into()))?;
        self.coordinator
            .retire(round, attempt.attempt, RoundStatus::Released)?;
        self.coordinator
            .metrics()
            .rounds_released
            .fetch_add(1, Ordering::Relaxed);
        Ok(Some(metrics))
    }

    fn checkpoint(
        &self,
        engine: &PopriEngine,
        noise: &NoiseSource,
        metrics: &RoundMetrics,
    ) -> Result<()> {
        write_engine_checkpoint(self.dir, self.config, engine, noise, metrics)
    }
}

/// The synthetic data from the final adapter (post-processing: no privacy cost) and the
/// privacy statement of the SQLite ledger.
fn write_outputs(
    config: &RunConfig,
    dir: &RunDir,
    coordinator: &Coordinator,
    mut engine: PopriEngine,
    seed_pool: &[String],
    template: &crate::prompts::PromptTemplate,
    progress: &dyn Progress,
) -> Result<()> {
    setup::write_popri_synthetic(&mut engine, config, dir, template, seed_pool, progress)?;
    let ledger = coordinator.store().ledger(config.privacy.delta)?;
    dir.save_ledger(&ledger)?;
    setup::write_statement(dir, &ledger, config)
}

/// The per-client bound a served round is charged with. With `serve.quorum` = 1 a round closes
/// at its deadline or once every sampled client answered, so a client's answer never changes
/// which other answers are counted: the sensitivity is C. With a quorum below 1 it closes as soon
/// as a fraction answered, and one client's (early) answer can push another's out of the sum:
/// between neighbouring populations the sum then moves by up to ‖x − y‖ ≤ 2C, so the round is
/// charged with 2C (twice the noise for the same ε).
pub fn release_clip(clip: f64, quorum: f64) -> f64 {
    if quorum < 1.0 {
        2.0 * clip
    } else {
        clip
    }
}

/// The warning when δ is not small against the population: with δ ≥ 1/n a mechanism that
/// publishes one random client's data in full satisfies (0, δ)-DP, so the guarantee says
/// little. `None` when δ < 1/n.
pub fn delta_warning(delta: f64, population: usize) -> Option<String> {
    (population > 0 && delta * population as f64 >= 1.0).then(|| {
        format!(
            "privacy.delta = {delta:e} is at least 1/n for the n = {population} clients \
             sampled from: (ε, δ)-DP with δ ≥ 1/n allows publishing some client's data \
             outright; choose delta well below 1/{population} (e.g. 1/n² or smaller) for a new run"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::{delta_warning, release_clip};

    #[test]
    fn an_early_quorum_doubles_the_charged_sensitivity() {
        assert_eq!(release_clip(0.5, 1.0), 0.5);
        assert_eq!(release_clip(0.5, 0.8), 1.0);
    }

    #[test]
    fn delta_at_or_above_one_over_n_is_warned_about() {
        assert!(delta_warning(1e-5, 1000).is_none());
        assert!(delta_warning(0.01, 99).is_none());
        let warning = delta_warning(0.01, 100).unwrap();
        assert!(
            warning.contains("privacy.delta") && warning.contains("n = 100"),
            "{warning}"
        );
        assert!(delta_warning(0.5, 3).is_some());
        assert!(delta_warning(0.5, 0).is_none());
    }
}
