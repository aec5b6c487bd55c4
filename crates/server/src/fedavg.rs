//! DP-FedAvg (McMahan et al. 2018), the baseline that trains the downstream model on the clients
//! directly instead of writing synthetic data: the model is the run's public generator with a
//! LoRA adapter (the same model `fedsyn eval` trains on synthetic data, so the comparison is
//! like for like), and only the adapter is federated.
//!
//! Each round:
//! 1. clients are sampled as configured (Poisson, fixed cohort or all) and accounted as
//!    sampled;
//! 2. every sampled client trains the global adapter on its own texts and clips its update Δ
//!    to L2 ≤ C (`clients::local_update`, the one place the clip happens);
//! 3. the round's privacy cost is committed to the ledger, before any noise is drawn;
//! 4. the server adds N(0, σ²C²) to every coordinate of Σ Δ (OS-seeded ChaCha20), divides by
//!    the expected cohort size — q·n under Poisson sampling, m for a fixed cohort, n with every
//!    client — (the standard unbiased estimator of the mean update: dividing by the realised
//!    count would make the denominator itself a private statistic), and applies it times
//!    `fedavg.server_lr`.
//!
//! With adaptive clipping (Andrew et al. 2021, `fedavg.adaptive_clip_quantile` = γ) each client
//! also reports bᵢ = [‖Δᵢ‖ ≤ C]; the server releases b̄ = (Σ(bᵢ − ½) + N(0, σ_b²)) / m̄ + ½ and
//! sets C ← C · exp(−η (b̄ − γ)). The two releases of a round are one Gaussian mechanism on the
//! concatenation (Δ-sum with sensitivity C, count with sensitivity ½): with the update noise
//! multiplier σ_Δ its multiplier is σ = (σ_Δ⁻² + (2σ_b)⁻²)^(−½). The ledger records that σ,
//! the one the budget plan calibrates, and σ_Δ is derived from it (which needs 2σ_b > σ).
//!
//! Durable writes per round, as the POPri loop (see [`crate::simulate`]): ledger entry, then
//! the checkpoint (adapter, clip bound, noise state of test seeds, metrics row), then the
//! metrics row; a resumed run re-runs a charged but unfinished round under its entry. The
//! final adapter is written to `model/` (PEFT format).

use std::path::Path;
use std::time::Instant;

use clients::local_update::{adapter_values, set_adapter};
use clients::{local_update, LocalTraining};
use models::train::downstream::DEFAULT_MAX_TOKENS;
use models::train::{encode_texts, CausalLmConfig, LrSchedule};
use models::{Assets, CausalLm};
use privacy_accounting::Sampling;
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use crate::config::RunConfig;
use crate::error::{Result, ServerError};
use crate::finish::{finish_simulation, Released};
use crate::generation::derive_seed;
use crate::noise::{GaussianMechanism, GridSum, NoiseSource, NoiseState, PlannedRelease};
use crate::run_dir::{
    read_checkpoint_state, write_atomic, NonPrivate, NonPrivateMetrics, PhaseSeconds, RoundMetrics,
    RunDir,
};
use crate::setup::{
    base_model_name, load_data, load_generator, lora_config, public_cohort, run_device,
    sampling_rate, simulation_sampling,
};
use round_driver::{simulate_rounds, Progress, Round, RoundMethod};
use runs::records::SimulationSummary;
use runs::records::MODEL_DIR;

/// The round state saved in every checkpoint beside the adapter.
const STATE_FILE: &str = "state.json";
/// The adapter's folder inside a checkpoint.
const ADAPTER_DIR: &str = "adapter";
/// FID and ε per round, drawn after the run (FID stays empty: DP-FedAvg writes no text).
/// Salt of the clients' local-training seeds (apart from every other stream of the run seed).
const LOCAL_SEED_STREAM: u64 = 0xFEDA_0000;

/// What a checkpoint holds beside the adapter.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct FedAvgState {
    round: u64,
    /// The clip bound of the next round (moves under adaptive clipping).
    next_clip: f64,
    /// Only for test-seeded noise (an OS-seeded stream is never written to disk).
    noise: Option<NoiseState>,
    metrics: RoundMetrics,
}

/// Adaptive clipping's settings (Andrew et al. 2021).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdaptiveClip {
    /// γ: the target fraction of unclipped updates.
    pub quantile: f64,
    /// η: the geometric step of the bound.
    pub lr: f64,
    /// σ_b: the noise std of Σ(bᵢ − ½).
    pub count_noise: f64,
}

impl AdaptiveClip {
    /// The update-sum noise multiplier σ_Δ that makes the round's joint mechanism (sum and
    /// count) a Gaussian mechanism of multiplier `sigma`: (σ⁻² − (2σ_b)⁻²)^(−½).
    pub fn update_sigma(&self, sigma: f64) -> Result<f64> {
        let remaining = sigma.powi(-2) - (2.0 * self.count_noise).powi(-2);
        if remaining.is_nan() || remaining <= 0.0 {
            return Err(ServerError::argument(
                "fedavg.adaptive_clip_noise",
                self.count_noise,
                format!(
                    "a count noise above σ/2 = {:.4}, so that budget is left for the update sum \
                     (or remove the key: max(cohort / 20, 2σ))",
                    sigma / 2.0
                ),
            ));
        }
        Ok(remaining.powf(-0.5))
    }

    /// C · exp(−η (b̄ − γ)) for the noisy fraction b̄ of unclipped updates.
    pub fn next_clip(&self, clip: f64, unclipped_fraction: f64) -> f64 {
        clip * (-self.lr * (unclipped_fraction - self.quantile)).exp()
    }
}

/// σ_b when `fedavg.adaptive_clip_noise` is absent: Andrew et al.'s expected cohort / 20, but
/// at least 2σ, which keeps σ_Δ within 3.3 % of σ (small cohorts would otherwise spend most of
/// the budget on the count).
pub fn default_count_noise(expected_cohort: f64, sigma: f64) -> f64 {
    (expected_cohort / 20.0).max(2.0 * sigma)
}

/// The denominator of the noisy average: the expected number of clients per round (q·n under
/// Poisson sampling, m for a fixed cohort, n with every client).
pub fn expected_cohort(sampling: &Sampling, population: usize) -> f64 {
    match sampling {
        Sampling::Poisson { q } => q * population as f64,
        Sampling::FixedCohort { m, .. } => *m as f64,
        Sampling::Full => population as f64,
    }
}

/// `noisy_sum` divided by `denominator` (the expected cohort, public): the released average.
pub fn average(mut noisy_sum: Vec<f64>, denominator: f64) -> Result<Vec<f64>> {
    if !(denominator.is_finite() && denominator > 0.0) {
        return Err(ServerError::argument(
            "denominator",
            denominator,
            "the expected cohort size, > 0",
        ));
    }
    noisy_sum.iter_mut().for_each(|v| *v /= denominator);
    Ok(noisy_sum)
}

/// The clients' texts as token sequences of the downstream model, in client order.
/// The clients' raw data is returned too: it is the witness of the non-private diagnostics.
fn client_sequences(
    config: &RunConfig,
    assets: &Assets,
    tokenizer: &models::tokenizers::Tokenizer,
) -> Result<(clients::FederatedData, Vec<Vec<Vec<u32>>>)> {
    let data = load_data(config, assets)?;
    let sequences = data
        .clients
        .iter()
        .map(|client| Ok(encode_texts(tokenizer, &client.train, DEFAULT_MAX_TOKENS)?))
        .collect::<Result<Vec<_>>>()?;
    Ok((data, sequences))
}

/// Runs the remaining DP-FedAvg rounds of the run in `dir`, then writes the final adapter
/// (`model/`), the privacy statement, `rounds.svg` and `summary.json`. `on_round` sees each
/// finished round's metrics.
pub(crate) fn run_dp_fedavg(
    dir: &RunDir,
    config: &RunConfig,
    progress: &dyn Progress,
    on_round: &dyn Fn(&RoundMetrics),
) -> Result<SimulationSummary> {
    let clock = Instant::now();
    let device = run_device(config)?;
    let assets = Assets::discover();
    let mut generator = load_generator(config, &assets, device)?;
    let (data, clients) = client_sequences(config, &assets, generator.tokenizer())?;

    let (sampler, accounting, plan) = simulation_sampling(config, clients.len())?;
    let denominator = expected_cohort(&accounting, clients.len());
    let fedavg = &config.fedavg;
    let adaptive = fedavg.adaptive_clip_quantile.map(|quantile| AdaptiveClip {
        quantile,
        lr: fedavg.adaptive_clip_lr,
        count_noise: fedavg
            .adaptive_clip_noise
            .unwrap_or_else(|| default_count_noise(denominator, plan.sigma)),
    });
    let update_sigma = match &adaptive {
        Some(adaptive) => adaptive.update_sigma(plan.sigma)?,
        None => plan.sigma,
    };
    let (saved_noise, clip, first_round) = match dir.latest_checkpoint()? {
        Some((round, path)) => {
            generator
                .model_mut()
                .load_adapter(&path.join(ADAPTER_DIR))?;
            let state: FedAvgState = read_checkpoint_state(&path.join(STATE_FILE))?;
            dir.repair_metrics(round, &state.metrics)?;
            (state.noise, state.next_clip, round + 1)
        }
        None => {
            generator
                .model_mut()
                .add_lora(&lora_config(config)?, config.run.seed)?;
            (None, config.privacy.clip, 0)
        }
    };
    let model = generator.model();
    let global = adapter_values(model);
    let mut method = FedAvgRounds {
        dir,
        config,
        model,
        parameters: global.iter().map(|t| t.numel()).sum(),
        global,
        clients: &clients,
        data: &data,
        sigma: plan.sigma,
        update_sigma,
        adaptive,
        accounting,
        denominator,
        clip,
        next_clip: clip,
    };
    let (stop_reason, ledger) = simulate_rounds(
        &mut method,
        dir,
        &config.privacy,
        &sampler,
        saved_noise.as_ref(),
        first_round,
        progress,
        on_round,
    )?;

    save_model(dir, config, model)?;
    // DP-FedAvg releases a model, not text: its adapter folder.
    let released = Released {
        samples: 0,
        path: dir.root().join(MODEL_DIR),
        fid_nonprivate: None,
        generator_dtype: model.kind(),
    };
    finish_simulation(
        dir,
        config,
        &ledger,
        stop_reason,
        plan.sigma,
        released,
        clock,
    )
}

/// A DP-FedAvg round of the simulation, for the [`Driver`]: the global adapter, the clients'
/// token sequences and the (possibly adaptive) clip bound.
struct FedAvgRounds<'a> {
    dir: &'a RunDir,
    config: &'a RunConfig,
    model: &'a CausalLm,
    /// The global adapter's values (in the order of `CausalLm::lora_parameters`).
    global: Vec<Tensor>,
    /// Their number: the dimension of the released update.
    parameters: usize,
    clients: &'a [Vec<Vec<u32>>],
    /// The clients' raw data: the witness of the non-private diagnostics.
    data: &'a clients::FederatedData,
    sigma: f64,
    update_sigma: f64,
    adaptive: Option<AdaptiveClip>,
    accounting: Sampling,
    denominator: f64,
    /// This round's clip bound.
    clip: f64,
    /// The next round's (moved by adaptive clipping), taken up at the checkpoint.
    next_clip: f64,
}

impl RoundMethod<ServerError> for FedAvgRounds<'_> {
    fn population(&self) -> usize {
        self.clients.len()
    }

    /// The update sum, and under adaptive clipping the count Σ(bᵢ − ½) (sensitivity ½, noise
    /// σ_b = multiplier 2σ_b): one joint Gaussian mechanism of multiplier σ.
    fn plan(&mut self, round: u64) -> Result<Option<PlannedRelease>> {
        let update = GaussianMechanism::new(self.update_sigma, self.clip, self.parameters)?;
        let count = self
            .adaptive
            .map(|a| GaussianMechanism::new(2.0 * a.count_noise, 0.5, 1))
            .transpose()?;
        let label = match self.adaptive {
            None => "dp-fedavg round: noisy sum of clipped client updates".to_string(),
            Some(a) => format!(
                "dp-fedavg round: noisy sum of clipped client updates (σ_Δ = {:.4}) and noisy \
                 count of unclipped clients (σ_b = {:.4}, sensitivity ½), one Gaussian \
                 mechanism of multiplier (σ_Δ⁻² + (2σ_b)⁻²)^(−½)",
                self.update_sigma, a.count_noise
            ),
        };
        Ok(Some(PlannedRelease::joint(
            std::iter::once(update).chain(count).collect(),
            self.accounting,
            round,
            &label,
        )))
    }

    fn run_round(&mut self, round: Round<'_, ServerError>) -> Result<Option<RoundMetrics>> {
        let config = self.config;
        let update = *round
            .release
            .mechanism(0)
            .ok_or_else(|| ServerError::internal("a DP-FedAvg release without a mechanism"))?;
        let count = round.release.mechanism(1).copied();
        let local_clock = Instant::now();
        let round_sum = client_updates(
            self.model,
            &self.global,
            self.clients,
            round.cohort,
            config,
            round.number,
            (&update, count.as_ref()),
            round.progress,
        )?;
        let local_seconds = local_clock.elapsed().as_secs_f64();

        let aggregate_clock = Instant::now();
        // Released from here on: noise exists only through the charge, made after the cost is
        // on disk.
        let mut charge = round.release.commit(round.commit)?;
        let noisy = round.noise.release(&mut charge, 0, &round_sum.sum)?;
        let released_average = unflatten(&average(noisy, self.denominator)?, &self.global)?;
        self.global = self
            .global
            .iter()
            .zip(&released_average)
            .map(|(g, a)| (g.to_kind(Kind::Double) + a * config.fedavg.server_lr).to_kind(g.kind()))
            .collect();
        set_adapter(self.model, &self.global)?;
        self.next_clip = match (&self.adaptive, &round_sum.unclipped_minus_half) {
            (Some(adaptive), Some(count)) => {
                let noisy = average(
                    round.noise.release(&mut charge, 1, count)?,
                    self.denominator,
                )?;
                adaptive.next_clip(self.clip, noisy[0] + 0.5)
            }
            _ => self.clip,
        };
        let aggregate_seconds = aggregate_clock.elapsed().as_secs_f64();

        let contributed = round_sum.contributed;
        Ok(Some(RoundMetrics {
            round: round.number,
            delta: config.privacy.delta,
            sigma: self.sigma,
            q: sampling_rate(&self.accounting),
            clip: self.clip,
            cohort: public_cohort(&self.accounting, round.cohort.len()),
            noise_std: update.noise_std(),
            nonprivate: Some(NonPrivate::measured(
                self.data,
                NonPrivateMetrics {
                    clients_nonprivate: Some(contributed as u64),
                    clipped_fraction_nonprivate: (contributed > 0)
                        .then(|| round_sum.clipped as f64 / contributed as f64),
                    mean_pre_clip_norm_nonprivate: (contributed > 0)
                        .then(|| round_sum.pre_clip_norms / contributed as f64),
                    local_loss_nonprivate: round_sum.mean_loss(),
                    update_norm_nonprivate: Some(crate::noise::l2_norm(
                        &round_sum.sum.values_nonprivate(),
                    )),
                    ..NonPrivateMetrics::default()
                },
            )),
            seconds: PhaseSeconds {
                score: local_seconds,
                aggregate: aggregate_seconds,
                ..PhaseSeconds::default()
            },
            ..RoundMetrics::default()
        }))
    }

    fn checkpoint(&mut self, metrics: &RoundMetrics, noise: &NoiseSource) -> Result<()> {
        let state = FedAvgState {
            round: metrics.round,
            next_clip: self.next_clip,
            noise: noise.state(),
            metrics: metrics.clone(),
        };
        checkpoint(self.dir, self.config, self.model, &state)?;
        self.clip = self.next_clip;
        Ok(())
    }
}

/// The sum of a round's clipped updates and its (non-private) statistics.
struct RoundSum {
    /// Σ Δᵢ over the adapter's parameters (flattened in order), on the release grid.
    sum: GridSum,
    /// Σ (bᵢ − ½), bᵢ = [‖Δᵢ‖ ≤ C] (adaptive clipping's count), on its grid.
    unclipped_minus_half: Option<GridSum>,
    /// Clients whose update was added (a client whose update was not finite adds zero).
    contributed: usize,
    clipped: usize,
    pre_clip_norms: f64,
    losses: Vec<f64>,
}

impl RoundSum {
    fn mean_loss(&self) -> Option<f64> {
        (!self.losses.is_empty())
            .then(|| self.losses.iter().sum::<f64>() / self.losses.len() as f64)
    }
}

/// Every sampled client's clipped update from `global`, each rounded to the grid of `update`
/// (and its clip bit to the grid of `count`), summed. A client without a usable sequence (every
/// text under two tokens) sends a zero update; a client whose local training diverged (a
/// non-finite update) is dropped: it adds zero, which the sensitivity covers like any other
/// vector of norm ≤ C.
#[allow(clippy::too_many_arguments)]
fn client_updates(
    model: &CausalLm,
    global: &[Tensor],
    clients: &[Vec<Vec<u32>>],
    sampled: &[usize],
    config: &RunConfig,
    round: u64,
    (update, count): (&GaussianMechanism, Option<&GaussianMechanism>),
    progress: &dyn Progress,
) -> Result<RoundSum> {
    let fedavg = &config.fedavg;
    let clip = update.clip();
    let mut total = RoundSum {
        sum: GridSum::zeros(update),
        unclipped_minus_half: count.map(GridSum::zeros),
        contributed: 0,
        clipped: 0,
        pre_clip_norms: 0.0,
        losses: Vec::new(),
    };
    let add_bit = |total: &mut RoundSum, unclipped: bool| -> Result<()> {
        if let (Some(sum), Some(count)) = (total.unclipped_minus_half.as_mut(), count) {
            sum.add(count, &[if unclipped { 0.5 } else { -0.5 }])?;
        }
        Ok(())
    };
    progress.start("local training", sampled.len() as u64);
    for &client in sampled {
        let sequences = &clients[client];
        if sequences.is_empty() {
            add_bit(&mut total, true)?;
            total.contributed += 1;
            progress.advance(1);
            continue;
        }
        let training = LocalTraining {
            steps: fedavg.local_steps,
            config: CausalLmConfig {
                lr: fedavg.local_lr,
                schedule: LrSchedule::Constant,
                batch_size: fedavg.local_batch,
                seed: derive_seed(config.run.seed, LOCAL_SEED_STREAM ^ round, client as u64),
                ..CausalLmConfig::default()
            },
        };
        let Some(local) = usable_update(local_update(model, global, sequences, &training, clip))?
        else {
            eprintln!("warning: round {round}: a client's local update was not finite; dropped");
            progress.advance(1);
            continue;
        };
        total.sum.add(update, &flatten(&local.update.delta)?)?;
        add_bit(&mut total, !local.update.clipped)?;
        total.contributed += 1;
        total.clipped += usize::from(local.update.clipped);
        total.pre_clip_norms += local.update.pre_clip_norm;
        total.losses.push(local.mean_loss);
        progress.advance(1);
    }
    progress.finish();
    Ok(total)
}

/// A client's local update, or `None` when its training diverged (a non-finite update): that
/// client adds zero, a vector the sensitivity covers like any other, instead of aborting the
/// run. Every other error still ends the run.
fn usable_update(
    update: clients::Result<clients::LocalUpdate>,
) -> Result<Option<clients::LocalUpdate>> {
    match update {
        Ok(local) => Ok(Some(local)),
        Err(clients::ClientsError::NonFinite { .. }) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// The values of `tensors` (f64), one after another.
fn flatten(tensors: &[Tensor]) -> Result<Vec<f64>> {
    let parts: Vec<Tensor> = tensors
        .iter()
        .map(|t| t.to_kind(Kind::Double).reshape([-1]))
        .collect();
    Vec::<f64>::try_from(Tensor::cat(&parts, 0)).map_err(|e| ServerError::Model(e.into()))
}

/// `values` cut into tensors of the shapes of `like` (f64).
fn unflatten(values: &[f64], like: &[Tensor]) -> Result<Vec<Tensor>> {
    let mut offset = 0;
    let mut tensors = Vec::with_capacity(like.len());
    for tensor in like {
        let count = tensor.numel();
        let part = values.get(offset..offset + count).ok_or_else(|| {
            ServerError::argument("update", values.len(), "one value per adapter parameter")
        })?;
        tensors.push(Tensor::from_slice(part).view(tensor.size().as_slice()));
        offset += count;
    }
    Ok(tensors)
}

/// Writes round `state.round`'s checkpoint: the global adapter (PEFT format) and the state.
fn checkpoint(
    dir: &RunDir,
    config: &RunConfig,
    model: &CausalLm,
    state: &FedAvgState,
) -> Result<()> {
    let pending = dir.begin_checkpoint(state.round)?;
    model.save_adapter(&pending.path().join(ADAPTER_DIR), &base_model_name(config))?;
    let json = serde_json::to_string_pretty(state)
        .map_err(|e| ServerError::argument("state", "(unserialisable)", e.to_string()))?;
    write_atomic(&pending.path().join(STATE_FILE), json.as_bytes())?;
    pending.commit()?;
    Ok(())
}

/// Writes the final adapter to `model/`, complete or not at all (written beside, then renamed).
fn save_model(dir: &RunDir, config: &RunConfig, model: &CausalLm) -> Result<()> {
    let target = dir.root().join(MODEL_DIR);
    let partial = dir.root().join(format!("{MODEL_DIR}.partial"));
    remove_dir_if_present(&partial)?;
    model.save_adapter(&partial, &base_model_name(config))?;
    remove_dir_if_present(&target)?;
    std::fs::rename(&partial, &target).map_err(|e| ServerError::io(&target, e))
}

fn remove_dir_if_present(path: &Path) -> Result<()> {
    match std::fs::remove_dir_all(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(ServerError::io(path, e)),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The adaptive clipping of the tests (γ ½, η 0.2, σ_b 4), under the planned σ 2.
    const ADAPTIVE: AdaptiveClip = AdaptiveClip {
        quantile: 0.5,
        lr: 0.2,
        count_noise: 4.0,
    };
    const PLANNED_SIGMA: f64 = 2.0;

    #[test]
    fn a_diverged_client_is_dropped_and_other_errors_end_the_run() {
        let diverged = clients::ClientsError::NonFinite {
            what: "the local model update",
        };
        assert!(usable_update(Err(diverged)).unwrap().is_none());
        let other = clients::ClientsError::InvalidArgument {
            name: "clip",
            message: "NaN".into(),
        };
        assert!(usable_update(Err(other)).is_err());
        let update = clients::clip_update(vec![Tensor::from_slice(&[3.0f64, 4.0])], 1.0).unwrap();
        let local = clients::LocalUpdate {
            update,
            mean_loss: 0.5,
        };
        assert!(usable_update(Ok(local)).unwrap().is_some());
    }

    #[test]
    fn the_average_divides_the_noisy_sum_by_the_expected_cohort() {
        assert_eq!(expected_cohort(&Sampling::Poisson { q: 0.25 }, 40), 10.0);
        assert_eq!(
            expected_cohort(&Sampling::FixedCohort { m: 5, n: 40 }, 40),
            5.0
        );
        assert_eq!(expected_cohort(&Sampling::Full, 40), 40.0);
        assert_eq!(average(vec![8.0, -4.0], 8.0).unwrap(), vec![1.0, -0.5]);
        assert!(average(vec![1.0], 0.0).is_err());
    }

    #[test]
    fn the_joint_release_of_update_and_count_is_charged_at_the_planned_sigma() {
        let (adaptive, sigma) = (ADAPTIVE, PLANNED_SIGMA);
        let update =
            GaussianMechanism::new(adaptive.update_sigma(sigma).unwrap(), 0.6, 10).unwrap();
        let count = GaussianMechanism::new(2.0 * adaptive.count_noise, 0.5, 1).unwrap();
        let release = PlannedRelease::joint(vec![update, count], Sampling::Full, 0, "test");
        assert!((release.event().noise_multiplier - sigma).abs() < 1e-12);
        // The count's noise is σ_b (up to the grid's share of its sensitivity).
        assert!((count.noise_std() / adaptive.count_noise - 1.0).abs() < 1e-5);
    }

    #[test]
    fn adaptive_clipping_splits_the_budget_and_follows_the_quantile() {
        let (adaptive, sigma) = (ADAPTIVE, PLANNED_SIGMA);
        let update_sigma = adaptive.update_sigma(sigma).unwrap();
        // The joint mechanism has exactly the planned multiplier.
        let joint = (update_sigma.powi(-2) + (2.0 * adaptive.count_noise).powi(-2)).powf(-0.5);
        assert!((joint - sigma).abs() < 1e-12 && update_sigma > sigma);
        // Too little count noise leaves no budget for the sum.
        let greedy = AdaptiveClip {
            count_noise: 0.9,
            ..adaptive
        };
        let error = greedy.update_sigma(sigma).unwrap_err().to_string();
        assert!(error.contains("fedavg.adaptive_clip_noise"), "{error}");
        // All unclipped: the bound shrinks; all clipped: it grows; at γ it stays.
        assert!((adaptive.next_clip(1.0, 1.0) - (-0.1f64).exp()).abs() < 1e-15);
        assert!(adaptive.next_clip(1.0, 0.0) > 1.0);
        assert_eq!(adaptive.next_clip(1.0, 0.5), 1.0);
    }

    #[test]
    fn updates_flatten_and_come_back_in_shape() {
        let tensors = vec![
            Tensor::from_slice(&[1.0f64, 2.0, 3.0, 4.0]).view([2, 2]),
            Tensor::from_slice(&[5.0f64]),
        ];
        let flat = flatten(&tensors).unwrap();
        assert_eq!(flat, [1.0, 2.0, 3.0, 4.0, 5.0]);
        let back = unflatten(&flat, &tensors).unwrap();
        assert_eq!(back[0].size(), [2, 2]);
        assert_eq!(
            Vec::<f64>::try_from(back[0].reshape([-1])).unwrap(),
            [1.0, 2.0, 3.0, 4.0]
        );
        assert!(unflatten(&flat[..3], &tensors).is_err());
    }
}
