//! `fedsyn eval`: the utility of a run's output (downstream next-token accuracy on the private
//! eval texts, and distribution metrics), or of a non-private reference, written as `eval.json`
//! (see `server::evaluate`).

use std::cell::Cell;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Args;
use round_driver::Progress;
use runs::config::RunConfig;
use runs::records::{EvalReport, Reference};
use server::evaluate::{evaluate_reference, evaluate_run, EvalOptions};

/// Arguments of `fedsyn eval`.
#[derive(Debug, Args)]
pub struct EvalArgs {
    /// The run directory to evaluate (writes RUN_DIR/eval.json).
    #[arg(
        value_name = "RUN_DIR",
        required_unless_present = "reference",
        conflicts_with = "reference"
    )]
    pub run_dir: Option<PathBuf>,
    /// Evaluate a non-private reference instead of a run: `real` (ε = ∞, trained on the
    /// clients' real training texts) or `public` (ε = 0, the public model untrained).
    #[arg(long, value_name = "real|public", requires_all = ["config", "out"])]
    pub reference: Option<String>,
    /// The run configuration whose data the reference is measured on (with --reference).
    #[arg(long, requires = "reference")]
    pub config: Option<PathBuf>,
    /// Override one configuration value, e.g. `--set data.max_clients=50` (with --reference).
    #[arg(long = "set", value_name = "KEY=VALUE", requires = "reference")]
    pub overrides: Vec<String>,
    /// Where the reference's eval.json and config.toml go (with --reference).
    #[arg(long, requires = "reference")]
    pub out: Option<PathBuf>,
    /// Training epochs of the downstream model (the best on the validation half is kept).
    #[arg(long, default_value_t = EvalOptions::default().epochs)]
    pub epochs: usize,
    /// Train on at most this many texts (a seeded sample).
    #[arg(long, default_value_t = EvalOptions::default().max_train_texts)]
    pub max_train_texts: usize,
    /// At most this many private eval texts in each of the validation and test halves.
    #[arg(long, default_value_t = EvalOptions::default().max_eval_texts)]
    pub max_eval_texts: usize,
    /// No progress bars.
    #[arg(long)]
    pub quiet: bool,
}

/// Runs `fedsyn eval`.
pub fn run(args: &EvalArgs, json: bool) -> Result<()> {
    let options = EvalOptions {
        epochs: args.epochs,
        max_train_texts: args.max_train_texts,
        max_eval_texts: args.max_eval_texts,
        ..EvalOptions::default()
    };
    let progress: Box<dyn Progress> = if args.quiet || json {
        Box::new(round_driver::Silent)
    } else {
        Box::new(PhaseLines::default())
    };
    let report = match (&args.run_dir, &args.reference) {
        (Some(dir), None) => evaluate_run(dir, &options, progress.as_ref())
            .with_context(|| format!("cannot evaluate the run in {}", dir.display()))?,
        (None, Some(name)) => {
            let reference: Reference = name.parse()?;
            let path = args.config.as_ref().context("--reference needs --config")?;
            let out = args.out.as_ref().context("--reference needs --out")?;
            let config = RunConfig::load(path, &args.overrides)?;
            evaluate_reference(reference, &config, out, &options, progress.as_ref())?
        }
        _ => anyhow::bail!("give a RUN_DIR or --reference real|public, not both"),
    };
    if json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!("{}", describe(&report));
    }
    Ok(())
}

/// A short human-readable account.
fn describe(report: &EvalReport) -> String {
    let downstream = &report.downstream;
    let epsilon = match (
        report.epsilon_rdp,
        report.epsilon_pld,
        report.epsilon_target,
    ) {
        (Some(rdp), Some(pld), Some(target)) => {
            format!("ε spent {rdp:.3} (RDP) / {pld:.3} (PLD) of {target}")
        }
        _ if report.method == "real" => "ε = ∞ (non-private reference)".to_string(),
        _ => "ε = 0 (no private data)".to_string(),
    };
    let curve: Vec<String> = downstream
        .validation
        .iter()
        .map(|e| format!("{}: {:.4}", e.epoch, e.accuracy))
        .collect();
    let mut lines = vec![
        format!("{} ({epsilon})", report.method),
        format!(
            "next-token accuracy {:.4} on {} test tokens (±{:.4} standard error){}",
            downstream.accuracy,
            downstream.eval_tokens,
            standard_error(downstream.accuracy, downstream.eval_tokens),
            if curve.is_empty() {
                String::new()
            } else {
                format!(
                    "; epoch {} chosen on validation [{}]",
                    downstream.chosen_epoch,
                    curve.join(", ")
                )
            }
        ),
        format!("model: {}", downstream.model),
    ];
    if let Some(d) = &report.distribution {
        lines.push(format!(
            "FID {:.4}, precision {:.3}, recall {:.3}, MAUVE {:.3} ({} texts vs {} private eval texts)",
            d.fid, d.precision, d.recall, d.mauve, d.synthetic_texts, d.eval_texts
        ));
    }
    lines.push(format!("{:.1} s", report.seconds));
    lines.join("\n")
}

/// The binomial standard error of an accuracy over `tokens` positions.
fn standard_error(accuracy: f64, tokens: u64) -> f64 {
    (accuracy * (1.0 - accuracy) / tokens.max(1) as f64).sqrt()
}

/// One line on stderr per finished phase (training an epoch takes minutes: a line per phase
/// says where the evaluation is without a bar per step).
#[derive(Default)]
struct PhaseLines {
    started: Cell<Option<(&'static str, u64, Instant)>>,
}

impl Progress for PhaseLines {
    fn start(&self, phase: &'static str, total: u64) {
        self.started.set(Some((phase, total, Instant::now())));
    }

    fn advance(&self, _done: u64) {}

    fn finish(&self) {
        if let Some((phase, total, clock)) = self.started.take() {
            eprintln!(
                "{phase:>12}: {total} done in {:.1} s",
                clock.elapsed().as_secs_f64()
            );
        }
    }
}
