//! The server's rounds, on their own (blocking) thread: [`PopriEngine`] with remote clients,
//! run by the same [`Driver`] as every simulation (budget rule, cohort, commit, noise,
//! checkpoint), with a SQLite ledger ([`SqliteLedger`]) and round log ([`ServedLog`]).
//!
//! Durable writes of round t, in this order:
//! 1. the round opens: round, sampled client ids (drawn once: the cohort never changes, see
//!    [`crate::serve::coordinator::RemoteTransport`] for why), deadline, candidate texts and
//!    the encoded candidate bytes (SQLite; the `attempt` column is always 0);
//! 2. each submission, in its own transaction (receipt = SHA-256 of the vector's bytes);
//! 3. the round closes at quorum or deadline (later submissions → 410), with whatever
//!    arrived; only the admin's stop abandons it instead (nothing released, nothing charged,
//!    no further round);
//!
//!    (Under `serve.aggregation = "secagg+"`, 2 and 3 are one step: no vector is stored; the
//!    round's SecAgg+ session runs in memory, and its unmasked sum is kept and the round closed
//!    in one transaction. A kill during the session restarts it for the same cohort; a kill
//!    after it charges and releases the kept sum.)
//! 4. the ledger row of round t, the kept sum and the erasure of the client vectors, in one
//!    SQLite transaction (primary key = round; the round's `commit`, before any noise
//!    exists), mirrored to `ledger.json`;
//! 5. noise, DPO, then the checkpoint of round t (adapter, trainer, state) renamed into place;
//! 6. the round is marked released (its kept sum and its cohort record erased), then the
//!    metrics row.
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
//! - after 5: the checkpoint exists, so round t is done: the resumed run marks it released
//!   if it was not (erasing its sum) and continues with t + 1, repairing `metrics.jsonl` from
//!   the checkpoint's copy of the row.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use models::train::PreferenceTrainer;
use models::Assets;
use privacy_accounting::{Ledger, LedgerEvent, Sampling};
use protocol::{encode_candidates, CandidateMatrix, EmbeddingDtype};
use tch::Tensor;

use crate::config::{Aggregation, RunConfig, WireDtype};
use crate::engine::{popri_release, Candidates, PopriEngine, RoundSettings};
use crate::error::{Result, RunError, ServerError};
use crate::noise::{grid_for, NoiseSource, PlannedRelease};
use crate::run_dir::{RoundMetrics, RunDir};
use crate::sampling::ClientSampler;
use crate::serve::coordinator::{now_unix_ms, Coordinator, RemoteTransport, RunState};
use crate::serve::store::{RoundRecord, RoundStatus};
use crate::setup;
use crate::simulate::{popri_settings, resume_popri, round_metrics, write_engine_checkpoint};
use round_driver::{
    plan_noise, BudgetGuard, Driver, LedgerStore, Progress, Round, RoundLog, RoundMethod,
};

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
    let device = setup::run_device(config)?;
    let assets = Assets::discover();
    let embedder = setup::load_embedder(config, &assets, device)?;
    let mut generator = setup::load_generator(config, &assets, device)?;
    let seed_pool = setup::seed_pool(config, dir, &generator, progress)?;
    let template = setup::prompt_template(config)?;
    let prompts = setup::public_prompts(config, dir, &template, &seed_pool, &generator)?;

    let (trainer, saved_noise, first_round) = resume_popri(config, dir, &mut generator, device)?;
    // `fedsyn serve` refuses `privacy.noise_seed`: a fresh OS-keyed stream.
    let mut noise = NoiseSource::resume(saved_noise.as_ref(), config.privacy.noise_seed)?;
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
    // σ is replaced by the planned one before the first round runs.
    let settings = popri_settings(config, sigma.unwrap_or(0.0));
    let guard = BudgetGuard::new(&config.privacy);
    let mut rounds = ServedRounds {
        config,
        sampler: sampler.clone(),
        dir,
        coordinator,
        sigma,
        settings,
        engine: None,
        parts: Some((generator, embedder, trainer, prompts)),
        prepared: None,
    };
    let mut ledger = SqliteLedger::open(config, dir, coordinator, &guard)?;
    let mut log = ServedLog { dir, coordinator };
    Driver {
        sampler: &sampler,
        guard: &guard,
        noise: &mut noise,
        progress,
        on_round,
    }
    .run(
        &mut rounds,
        &mut ledger,
        &mut log,
        first_round..config.privacy.rounds,
    )?;

    let engine = match rounds.engine {
        Some(engine) => engine,
        None => {
            let (generator, embedder, trainer, prompts) =
                rounds.parts.take().expect("the engine parts are unused");
            PopriEngine::new(generator, embedder, trainer, prompts, rounds.settings)?
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

/// What [`RoundMethod::plan`] learnt about the round it planned.
struct Prepared {
    /// The clients the cohort is drawn from, in enrolment order.
    population: Vec<String>,
    sampling: Sampling,
    /// The round's record when it was opened before a restart (its cohort and candidates).
    held: Option<RoundRecord>,
}

/// `fedsyn serve`'s POPri rounds for the [`Driver`]: remote clients through
/// [`RemoteTransport`], the engine built once the first round's σ is planned.
struct ServedRounds<'a> {
    config: &'a RunConfig,
    /// The run's sampler (for how a round over the current population is accounted).
    sampler: ClientSampler,
    dir: &'a RunDir,
    coordinator: &'a Arc<Coordinator>,
    sigma: Option<f64>,
    settings: RoundSettings,
    engine: Option<PopriEngine>,
    parts: Option<EngineParts>,
    prepared: Option<Prepared>,
}

impl RoundMethod<ServerError> for ServedRounds<'_> {
    fn population(&self) -> usize {
        self.prepared.as_ref().map_or(0, |p| p.population.len())
    }

    /// Waits for the clients (the population is known only now: clients enrol while the server
    /// runs), plans σ once, and the round's release; `None` when the run was stopped.
    fn plan(&mut self, round: u64) -> Result<Option<PlannedRelease>> {
        if self.coordinator.stop_requested() {
            return Ok(None);
        }
        let store = self.coordinator.store();
        let held = self
            .coordinator
            .current_attempt()
            .filter(|open| open.round == round);
        let previous = store.latest_attempt(round)?;
        let (population, held) = match (held, previous) {
            (Some(_), Some(record)) => (store.clients_in_order(record.population)?, Some(record)),
            (None, Some(record)) => {
                // A round opened before and no longer held: abandoned by an older fedsyn with
                // too few submissions. Opening it again would draw a second cohort for the same
                // round, which the ledger cannot account for (see `RemoteTransport`).
                return Err(ServerError::Run(RunError::RunDir {
                    path: self.dir.root().to_path_buf(),
                    message: format!(
                        "round {round} was abandoned ({:?}) by an earlier fedsyn that sampled \
                         again after too few submissions; this version never draws a second \
                         cohort for a round: start a new run with `fedsyn serve --config FILE \
                         --out NEW_DIR`",
                        record.status
                    ),
                }));
            }
            _ => match self
                .coordinator
                .wait_until_ready(self.config.serve.min_clients)?
            {
                Some(enrolled) => (store.clients_in_order(enrolled)?, None),
                None => return Ok(None),
            },
        };
        // Warned about once per process, at the first round that has the problem.
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
        self.prepared = Some(Prepared {
            population,
            sampling,
            held,
        });
        Ok(Some(release))
    }

    /// Opens the round with its cohort (or takes up its record held from before a restart),
    /// collects, charges, adds noise and trains; `None` when a stop abandoned it (nothing
    /// charged).
    fn run_round(&mut self, round: Round<'_, ServerError>) -> Result<Option<RoundMetrics>> {
        let progress = round.progress;
        let prepared = self
            .prepared
            .take()
            .ok_or_else(|| ServerError::internal("a served round ran without its plan"))?;
        if self.engine.is_none() {
            let (generator, embedder, trainer, prompts) =
                self.parts.take().expect("the engine is built once");
            self.engine = Some(PopriEngine::new(
                generator,
                embedder,
                trainer,
                prompts,
                self.settings.clone(),
            )?);
        }
        let engine = self.engine.as_mut().expect("built above");
        let clock = Instant::now();
        let (candidates, embeddings) = match &prepared.held {
            Some(record) => recorded(engine, record, progress)?,
            None => {
                let prompts = engine.prompts().to_vec();
                let per_prompt = self.config.generation.candidates_per_prompt;
                let candidates =
                    engine.sample_candidates(&prompts, per_prompt, round.number, progress)?;
                let embeddings = engine.embed_candidates(&candidates.texts, progress)?;
                let record = first_record(self.config, round.number, &candidates, &embeddings)?;
                let deadline = self.config.serve.round_deadline_seconds * 1000;
                self.coordinator.open_attempt(&RoundRecord {
                    attempt: 0,
                    status: RoundStatus::Open,
                    population: prepared.population.len(),
                    sampled: round
                        .cohort
                        .iter()
                        .map(|&i| prepared.population[i].clone())
                        .collect(),
                    deadline_unix_ms: now_unix_ms() + deadline,
                    ..record
                })?;
                (candidates, embeddings)
            }
        };
        let prepare_seconds = clock.elapsed().as_secs_f64();

        let mut transport =
            RemoteTransport::new(self.coordinator.clone(), prepared.population.len());
        // The remote transport reads the cohort from the round's record, not from the indices
        // the engine hands it.
        let output =
            match engine.run_round_with_candidates(round, candidates, embeddings, &mut transport) {
                Ok(output) => output,
                Err(_) if transport.stopped() => return Ok(None),
                Err(error) => return Err(error),
            };
        let mut report = output.report;
        report.sampled = transport.sampled();
        // Generation and embedding happened when the round opened.
        report.seconds.generate = prepare_seconds;
        Ok(Some(round_metrics(
            self.config,
            self.settings.noise_multiplier,
            &prepared.sampling,
            &report,
        )))
    }

    fn checkpoint(&mut self, metrics: &RoundMetrics, noise: &NoiseSource) -> Result<()> {
        let engine = self
            .engine
            .as_ref()
            .ok_or_else(|| ServerError::internal("a served checkpoint without an engine"))?;
        write_engine_checkpoint(self.dir, self.config, engine, noise, metrics)
    }
}

impl ServedRounds<'_> {
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
}

/// The stored candidates of a round and their embeddings (recomputed from the texts: the
/// embedder is deterministic, and the clients keep the bytes they were sent).
fn recorded(
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

/// The record of round `round`'s candidates (encoded once, served to every client); its cohort
/// and deadline are filled in when the round opens.
fn first_record(
    config: &RunConfig,
    round: u64,
    candidates: &Candidates,
    embeddings: &Tensor,
) -> Result<RoundRecord> {
    let rows = setup::rows(embeddings)?;
    let dim = rows.first().map_or(0, Vec::len);
    let matrix = CandidateMatrix {
        round,
        clip: config.privacy.clip,
        rows: rows.len(),
        dim,
        values: rows.into_iter().flatten().collect(),
    };
    let dtype = match config.serve.embedding_dtype {
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
        candidates: encode_candidates(&matrix, dtype, config.serve.compress),
    })
}

/// The SQLite ledger of a served run: a round's charge, its kept sum and the erasure of its
/// client vectors in one transaction, mirrored to `ledger.json` and the ε gauges.
struct SqliteLedger<'a> {
    dir: &'a RunDir,
    coordinator: &'a Arc<Coordinator>,
    guard: &'a BudgetGuard,
    delta: f64,
    /// The grid the stored vectors are rounded to when they are summed.
    grid: f64,
    ledger: Ledger,
}

impl<'a> SqliteLedger<'a> {
    fn open(
        config: &RunConfig,
        dir: &'a RunDir,
        coordinator: &'a Arc<Coordinator>,
        guard: &'a BudgetGuard,
    ) -> Result<Self> {
        let delta = config.privacy.delta;
        Ok(Self {
            dir,
            coordinator,
            guard,
            delta,
            grid: grid_for(release_clip(config.privacy.clip, config.serve.quorum)),
            ledger: coordinator.store().ledger(delta)?,
        })
    }
}

impl LedgerStore<ServerError> for SqliteLedger<'_> {
    fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    fn commit(&mut self, event: &LedgerEvent) -> Result<()> {
        let store = self.coordinator.store();
        let open = self
            .coordinator
            .current_attempt()
            .ok_or_else(|| ServerError::internal("no round is open at the ledger commit"))?;
        store.commit_round(
            event,
            open.attempt,
            open.rows,
            self.grid,
            open.sampled_count,
            now_unix_ms(),
        )?;
        self.ledger = store.ledger(self.delta)?;
        let (rdp, pld) = self.guard.spent(&self.ledger)?;
        self.coordinator.metrics().set_epsilon(rdp, pld);
        // ledger.json mirrors the SQLite ledger for the tools that read run directories.
        Ok(self.dir.save_ledger(&self.ledger)?)
    }
}

/// A served run's round log: the cohort of a round held from before a restart is its record's;
/// a released round is marked so in SQLite (its vectors and cohort record erased).
struct ServedLog<'a> {
    dir: &'a RunDir,
    coordinator: &'a Arc<Coordinator>,
}

impl RoundLog<ServerError> for ServedLog<'_> {
    fn cohort(
        &mut self,
        round: u64,
        sampler: &ClientSampler,
        population: usize,
    ) -> Result<Vec<usize>> {
        let store = self.coordinator.store();
        let held = self
            .coordinator
            .current_attempt()
            .filter(|open| open.round == round);
        if held.is_some() {
            if let Some(record) = store.latest_attempt(round)? {
                let clients = store.clients_in_order(record.population)?;
                return Ok(clients
                    .iter()
                    .enumerate()
                    .filter(|(_, id)| record.sampled.contains(id))
                    .map(|(i, _)| i)
                    .collect());
            }
        }
        // Drawn here and persisted with the round's candidates when it opens: nothing has been
        // sent to any client before then, so a crash in between redraws a cohort nobody saw.
        Ok(sampler.sample(round, population)?)
    }

    fn close_round(&mut self) -> Result<()> {
        let open = self
            .coordinator
            .current_attempt()
            .ok_or_else(|| ServerError::internal("no round to release"))?;
        self.coordinator
            .retire(open.round, open.attempt, RoundStatus::Released)?;
        self.coordinator
            .metrics()
            .rounds_released
            .fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn append(&mut self, metrics: &RoundMetrics) -> Result<()> {
        Ok(self.dir.append_metrics(metrics)?)
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
    let aggregation = match config.serve.aggregation {
        Aggregation::Plain => {
            "plain (serve.aggregation = \"plain\"): each client sent its clipped score vector \
             to this server in the clear; the server (and whoever runs it) saw every vector. \
             Only the noisy sums were released."
        }
        Aggregation::SecAggPlus => {
            "SecAgg+ (serve.aggregation = \"secagg+\"): each client sent its vector masked; \
             this server saw only keys, encrypted shares, masked vectors and each round's \
             un-noised sum, never one client's vector (against a server that follows the \
             protocol and fewer corrupt neighbours than the threshold: docs/threat-model.md). \
             Only the noisy sums were released."
        }
    };
    setup::write_statement(dir, &ledger, config, Some(aggregation))
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
