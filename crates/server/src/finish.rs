//! The end of every method's simulation, after its last round: post-processing of released
//! values (no further privacy cost), the same for POPri, PE, PE+SFT and DP-FedAvg.

use std::path::PathBuf;
use std::time::Instant;

use models::SentenceEmbedder;
use privacy_accounting::Ledger;
use round_driver::BudgetGuard;
use runs::records::{SimulationSummary, StopReason};

use crate::config::RunConfig;
use crate::error::{Result, ServerError};
use crate::run_dir::{write_atomic, RoundMetrics, RunDir};
use crate::setup::{fid_to, rows, write_statement, EMBED_BATCH};

/// What a finished simulation released besides its rounds.
pub(crate) struct Released {
    /// Synthetic texts written (0 for DP-FedAvg, which releases a model).
    pub samples: usize,
    /// Where: `synthetic.jsonl`, or DP-FedAvg's adapter folder.
    pub path: PathBuf,
    /// Non-private diagnostic: FID of the synthetic texts to the private eval set.
    pub fid_nonprivate: Option<f64>,
    /// What the generator computed in.
    pub generator_dtype: tch::Kind,
}

/// FID of `texts` to the private eval set's embeddings `eval` (non-private), when both have
/// at least two members.
pub(crate) fn synthetic_fid_nonprivate(
    eval: Option<&[Vec<f32>]>,
    embedder: &SentenceEmbedder,
    texts: &[String],
) -> Result<Option<f64>> {
    match eval {
        Some(eval) if texts.len() >= 2 => {
            let embeddings = embedder.embed_tensor(texts, EMBED_BATCH)?;
            Ok(fid_to(eval, &rows(&embeddings)?)?.0)
        }
        _ => Ok(None),
    }
}

/// The end of every simulation, after its last round (post-processing of released values: no
/// further privacy cost): the privacy statement, `rounds.svg` and `summary.json`, which it
/// returns.
pub(crate) fn finish_simulation(
    dir: &RunDir,
    config: &RunConfig,
    ledger: &Ledger,
    stop_reason: StopReason,
    sigma: f64,
    released: Released,
    clock: Instant,
) -> Result<SimulationSummary> {
    write_statement(dir, ledger, config, None)?;
    let (epsilon_rdp, epsilon_pld) = BudgetGuard::new(&config.privacy).spent(ledger)?;
    let metrics = dir.read_metrics()?;
    reports::plot::write_rounds_svg(&metrics, config.privacy.epsilon, &dir.rounds_plot_path())?;
    let summary = SimulationSummary {
        run_dir: dir.root().to_path_buf(),
        rounds: metrics.len() as u64,
        stop_reason,
        epsilon_rdp,
        epsilon_pld,
        target_epsilon: config.privacy.epsilon,
        delta: config.privacy.delta,
        sigma,
        fid_nonprivate_per_round: metrics.iter().map(RoundMetrics::fid_nonprivate).collect(),
        synthetic_fid_nonprivate: released.fid_nonprivate,
        synthetic_samples: released.samples,
        synthetic_path: released.path,
        statement_path: dir.statement_md_path(),
        seconds: clock.elapsed().as_secs_f64(),
        generator_dtype: models::dtype_name(released.generator_dtype).to_string(),
    };
    let json = serde_json::to_string_pretty(&summary)
        .map_err(|e| ServerError::internal(format!("summary.json cannot be encoded: {e}")))?;
    write_atomic(&dir.summary_path(), json.as_bytes())?;
    Ok(summary)
}
