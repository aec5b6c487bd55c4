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
use std::str::FromStr;
use std::time::Instant;

use clients::local_update::{adapter_values, set_adapter};
use clients::{local_update, LocalTraining};
use models::train::downstream::DEFAULT_MAX_TOKENS;
use models::train::{encode_texts, CausalLmConfig, LrSchedule};
use models::{Assets, CausalLm, DeviceChoice};
use privacy_accounting::{LedgerEvent, Sampling};
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use crate::budget::{plan_noise, BudgetGuard};
use crate::config::RunConfig;
use crate::engine::{derive_seed, Progress};
use crate::error::{Result, ServerError};
use crate::evaluate::MODEL_DIR;
use crate::noise::{NoiseSource, NoiseState};
use crate::run_dir::{read_checkpoint_state, write_atomic, PhaseSeconds, RoundMetrics, RunDir};
use crate::sampling::ClientSampler;
use crate::setup::{
    base_model_name, load_data, load_generator, lora_config, sampling_rate, write_statement,
};
use crate::simulate::{SimulationSummary, StopReason};

/// The round state saved in every checkpoint beside the adapter.
const STATE_FILE: &str = "state.json";
/// The adapter's folder inside a checkpoint.
const ADAPTER_DIR: &str = "adapter";
/// FID and ε per round, drawn after the run (FID stays empty: DP-FedAvg writes no text).
const ROUNDS_PLOT_FILE: &str = "rounds.svg";
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

/// Adds N(0, `noise_std`²) to every value of the summed updates, then divides by
/// `denominator`: the released average update.
pub fn noisy_average(
    sum: &mut [f64],
    noise: &mut NoiseSource,
    noise_std: f64,
    denominator: f64,
) -> Result<()> {
    if !(denominator.is_finite() && denominator > 0.0) {
        return Err(ServerError::argument(
            "denominator",
            denominator,
            "the expected cohort size, > 0",
        ));
    }
    noise.add_gaussian(sum, noise_std)?;
    for value in sum.iter_mut() {
        *value /= denominator;
    }
    Ok(())
}

/// The clients' texts as token sequences of the downstream model, in client order.
fn client_sequences(
    config: &RunConfig,
    assets: &Assets,
    tokenizer: &models::tokenizers::Tokenizer,
) -> Result<Vec<Vec<Vec<u32>>>> {
    let data = load_data(config, assets)?;
    data.clients
        .iter()
        .map(|client| Ok(encode_texts(tokenizer, &client.train, DEFAULT_MAX_TOKENS)?))
        .collect()
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
    tch::set_num_threads(config.run.threads.max(1) as i32);
    let device = DeviceChoice::from_str(&config.run.device)?.resolve()?;
    let assets = Assets::discover();
    let mut generator = load_generator(config, &assets, device)?;
    let clients = client_sequences(config, &assets, generator.tokenizer())?;

    let sampler = ClientSampler::new(config.privacy.client_sampling()?, config.run.seed)?;
    let accounting = sampler.accounting(clients.len())?;
    let plan = plan_noise(&config.privacy, accounting)?;
    let guard = BudgetGuard::new(&config.privacy);
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
    let mut ledger = dir.load_ledger()?;
    ledger.delta.get_or_insert(config.privacy.delta);

    let (mut noise, mut clip, first_round) = match dir.latest_checkpoint()? {
        Some((round, path)) => {
            generator
                .model_mut()
                .load_adapter(&path.join(ADAPTER_DIR))?;
            let state: FedAvgState = read_checkpoint_state(&path.join(STATE_FILE))?;
            dir.repair_metrics(round, &state.metrics)?;
            let noise = match &state.noise {
                Some(saved) => NoiseSource::restore(saved),
                None => NoiseSource::from_os()?,
            };
            (noise, state.next_clip, round + 1)
        }
        None => {
            generator
                .model_mut()
                .add_lora(&lora_config(config)?, config.run.seed)?;
            (
                NoiseSource::from_config(config.privacy.noise_seed)?,
                config.privacy.clip,
                0,
            )
        }
    };
    let model = generator.model();
    let mut global = adapter_values(model);

    let mut stop_reason = StopReason::RoundsCompleted;
    for round in first_round..config.privacy.rounds {
        let round_clock = Instant::now();
        let sampled = sampler.sample(round, clients.len())?;
        let event = LedgerEvent::gaussian(plan.sigma, accounting, 1)
            .with_round(round)
            .with_clip_bound(clip)
            .with_label(match adaptive {
                None => "dp-fedavg round: noisy sum of clipped client updates".to_string(),
                Some(a) => format!(
                    "dp-fedavg round: noisy sum of clipped client updates (σ_Δ = {update_sigma:.4}) \
                     and noisy count of unclipped clients (σ_b = {:.4}, sensitivity ½), one \
                     Gaussian mechanism of multiplier (σ_Δ⁻² + (2σ_b)⁻²)^(−½)",
                    a.count_noise
                ),
            });
        // Charged but not checkpointed by a run that was killed: re-run under that charge.
        let already_charged = ledger.events.last().is_some_and(|e| e.round == Some(round));
        if !already_charged && guard.would_exceed(&ledger, &event)? {
            stop_reason = StopReason::BudgetExhausted;
            break;
        }

        let local_clock = Instant::now();
        let round_sum = client_updates(
            model, &global, &clients, &sampled, config, round, clip, progress,
        )?;
        let local_seconds = local_clock.elapsed().as_secs_f64();

        let aggregate_clock = Instant::now();
        if !already_charged {
            ledger.push(event)?;
            dir.save_ledger(&ledger)?;
        }
        // Released from here on: drawn only after the charge is on disk.
        let noise_std = update_sigma * clip;
        let mut flat = flatten(&round_sum.sum)?;
        noisy_average(&mut flat, &mut noise, noise_std, denominator)?;
        let average = unflatten(&flat, &round_sum.sum)?;
        global = global
            .iter()
            .zip(&average)
            .map(|(g, a)| (g.to_kind(Kind::Double) + a * fedavg.server_lr).to_kind(g.kind()))
            .collect();
        set_adapter(model, &global)?;
        let next_clip = match &adaptive {
            Some(adaptive) => {
                let mut count = [round_sum.unclipped_minus_half];
                noisy_average(&mut count, &mut noise, adaptive.count_noise, denominator)?;
                adaptive.next_clip(clip, count[0] + 0.5)
            }
            None => clip,
        };
        let aggregate_seconds = aggregate_clock.elapsed().as_secs_f64();

        let (epsilon_rdp, epsilon_pld) = guard.spent(&ledger)?;
        let contributed = sampled.len();
        let metrics = RoundMetrics {
            round,
            wall_seconds: round_clock.elapsed().as_secs_f64(),
            epsilon_rdp,
            epsilon_pld,
            delta: config.privacy.delta,
            sigma: plan.sigma,
            q: sampling_rate(&accounting),
            clip,
            clients: contributed as u64,
            clipped_fraction: (contributed > 0)
                .then(|| round_sum.clipped as f64 / contributed as f64),
            mean_pre_clip_norm: (contributed > 0)
                .then(|| round_sum.pre_clip_norms / contributed as f64),
            noise_std,
            local_loss: round_sum.mean_loss(),
            seconds: PhaseSeconds {
                score: local_seconds,
                aggregate: aggregate_seconds,
                ..PhaseSeconds::default()
            },
            ..RoundMetrics::default()
        };
        let state = FedAvgState {
            round,
            next_clip,
            noise: noise.state(),
            metrics: metrics.clone(),
        };
        checkpoint(dir, config, model, &state)?;
        dir.append_metrics(&metrics)?;
        on_round(&metrics);
        clip = next_clip;
    }

    save_model(dir, config, model)?;
    write_statement(dir, &ledger, config)?;
    let (epsilon_rdp, epsilon_pld) = guard.spent(&ledger)?;
    let metrics = dir.read_metrics()?;
    crate::plot::write_rounds_svg(
        &metrics,
        config.privacy.epsilon,
        &dir.root().join(ROUNDS_PLOT_FILE),
    )?;
    let summary = SimulationSummary {
        run_dir: dir.root().to_path_buf(),
        rounds: metrics.len() as u64,
        stop_reason,
        epsilon_rdp,
        epsilon_pld,
        target_epsilon: config.privacy.epsilon,
        delta: config.privacy.delta,
        sigma: plan.sigma,
        fid_nonprivate_per_round: metrics.iter().map(|m| m.fid_nonprivate).collect(),
        synthetic_fid_nonprivate: None,
        synthetic_samples: 0,
        // DP-FedAvg releases a model, not text: its adapter folder.
        synthetic_path: dir.root().join(MODEL_DIR),
        statement_path: dir.statement_md_path(),
        seconds: clock.elapsed().as_secs_f64(),
    };
    let json = serde_json::to_string_pretty(&summary)
        .map_err(|e| ServerError::argument("summary", "(unserialisable)", e.to_string()))?;
    write_atomic(&dir.root().join("summary.json"), json.as_bytes())?;
    Ok(summary)
}

/// The sum of a round's clipped updates and its (non-private) statistics.
struct RoundSum {
    /// Σ Δᵢ per adapter tensor (f64).
    sum: Vec<Tensor>,
    /// Σ (bᵢ − ½), bᵢ = [‖Δᵢ‖ ≤ C] (adaptive clipping's count).
    unclipped_minus_half: f64,
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

/// Every sampled client's clipped update from `global`, summed. A client without a usable
/// sequence (every text under two tokens) sends a zero update.
#[allow(clippy::too_many_arguments)]
fn client_updates(
    model: &CausalLm,
    global: &[Tensor],
    clients: &[Vec<Vec<u32>>],
    sampled: &[usize],
    config: &RunConfig,
    round: u64,
    clip: f64,
    progress: &dyn Progress,
) -> Result<RoundSum> {
    let fedavg = &config.fedavg;
    let mut total = RoundSum {
        sum: global
            .iter()
            .map(|g| Tensor::zeros_like(g).to_kind(Kind::Double))
            .collect(),
        unclipped_minus_half: 0.0,
        clipped: 0,
        pre_clip_norms: 0.0,
        losses: Vec::new(),
    };
    progress.start("local training", sampled.len() as u64);
    for &client in sampled {
        let sequences = &clients[client];
        if sequences.is_empty() {
            total.unclipped_minus_half += 0.5;
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
        let local = local_update(model, global, sequences, &training, clip)?;
        for (sum, delta) in total.sum.iter_mut().zip(&local.update.delta) {
            *sum += delta;
        }
        total.unclipped_minus_half += if local.update.clipped { -0.5 } else { 0.5 };
        total.clipped += usize::from(local.update.clipped);
        total.pre_clip_norms += local.update.pre_clip_norm;
        total.losses.push(local.mean_loss);
        progress.advance(1);
    }
    progress.finish();
    Ok(total)
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

    fn moments(values: &[f64]) -> (f64, f64) {
        let n = values.len() as f64;
        let mean = values.iter().sum::<f64>() / n;
        let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0);
        (mean, var.sqrt())
    }

    #[test]
    fn the_noise_on_the_sum_has_std_sigma_times_clip() {
        // σ = 1.7, C = 0.6: over 200 000 coordinates the sample std is within 1 % of σC
        // (its relative standard error is 1/√(2n) ≈ 0.16 %).
        let (sigma, clip) = (1.7, 0.6);
        let mut noise = NoiseSource::from_test_seed(11);
        let mut sum = vec![0.0; 200_000];
        noisy_average(&mut sum, &mut noise, sigma * clip, 1.0).unwrap();
        let (mean, std) = moments(&sum);
        assert!(
            mean.abs() < 5.0 * sigma * clip / (sum.len() as f64).sqrt(),
            "{mean}"
        );
        assert!((std / (sigma * clip) - 1.0).abs() < 0.01, "{std}");
    }

    #[test]
    fn the_average_divides_the_noisy_sum_by_the_expected_cohort() {
        assert_eq!(expected_cohort(&Sampling::Poisson { q: 0.25 }, 40), 10.0);
        assert_eq!(
            expected_cohort(&Sampling::FixedCohort { m: 5, n: 40 }, 40),
            5.0
        );
        assert_eq!(expected_cohort(&Sampling::Full, 40), 40.0);
        // The same noise stream with and without the division: (s + z) / m exactly.
        let sum = vec![3.0, -1.0, 0.5, 8.0];
        let (mut a, mut b) = (sum.clone(), sum.clone());
        noisy_average(&mut a, &mut NoiseSource::from_test_seed(5), 0.3, 1.0).unwrap();
        noisy_average(&mut b, &mut NoiseSource::from_test_seed(5), 0.3, 8.0).unwrap();
        for (x, y) in a.iter().zip(&b) {
            assert!((x / 8.0 - y).abs() < 1e-15, "{x} {y}");
        }
        assert!(a.iter().zip(&sum).all(|(x, s)| x != s), "noise was added");
        let mut empty = vec![1.0];
        assert!(noisy_average(&mut empty, &mut NoiseSource::from_test_seed(5), 0.3, 0.0).is_err());
    }

    #[test]
    fn adaptive_clipping_splits_the_budget_and_follows_the_quantile() {
        let adaptive = AdaptiveClip {
            quantile: 0.5,
            lr: 0.2,
            count_noise: 4.0,
        };
        let sigma = 2.0;
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
