//! `fedsyn simulate`: a federated run (POPri, PE, PE+SFT or DP-FedAvg) with simulated clients;
//! users call it as `fedsyn simulate --config experiments/sotu-popri.toml`.

use std::cell::RefCell;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use round_driver::Progress;
use runs::config::RunConfig;
use runs::RoundMetrics;
use server::simulate::{round_line, Simulation};

/// Arguments of `fedsyn simulate`.
#[derive(Debug, Args)]
pub struct SimulateArgs {
    /// The run's TOML configuration (see experiments/*.toml).
    #[arg(long, required_unless_present = "resume")]
    pub config: Option<PathBuf>,
    /// Override one configuration value, e.g. `--set privacy.epsilon=2` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,
    /// The method: popri, pe, pe-sft or dp-fedavg (the same as `--set run.method=M`).
    #[arg(long, value_name = "METHOD", conflicts_with = "resume")]
    pub method: Option<String>,
    /// The run directory (default: runs/<run.name>-<UTC time>).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Continue the run in this directory from its last finished round (after a crash or a
    /// kill); its saved configuration is used.
    #[arg(long, value_name = "RUN_DIR", conflicts_with_all = ["config", "out"])]
    pub resume: Option<PathBuf>,
    /// No progress bars; only the one-line summary per round.
    #[arg(long)]
    pub quiet: bool,
}

/// Runs `fedsyn simulate`.
pub fn run(args: &SimulateArgs, json: bool) -> Result<()> {
    let progress: Box<dyn Progress> = if args.quiet || json {
        Box::new(round_driver::Silent)
    } else {
        Box::new(Bars::default())
    };
    let print_round = |metrics: &RoundMetrics| eprintln!("{}", round_line(metrics));
    let simulation = match &args.resume {
        Some(dir) => Simulation::resume(dir)
            .with_context(|| format!("cannot resume the run in {}", dir.display()))?,
        None => {
            let path = args.config.as_ref().expect("clap requires --config");
            let mut overrides = args.overrides.clone();
            if let Some(method) = &args.method {
                overrides.push(format!("run.method={method}"));
            }
            let config = RunConfig::load(path, &overrides)?;
            let dir = args
                .out
                .clone()
                .unwrap_or_else(|| default_run_dir(&config.run.name));
            Simulation::create(config, &dir)?
        }
    };
    eprintln!(
        "run directory: {} (resume after a crash with `fedsyn simulate --resume {}`)",
        simulation.run_dir().display(),
        simulation.run_dir().display()
    );
    let summary = simulation.run(progress.as_ref(), &print_round)?;
    if json {
        println!("{}", serde_json::to_string(&summary)?);
    } else {
        println!("{}", summary.describe());
    }
    Ok(())
}

/// `runs/<name>-<UTC date and time>`.
fn default_run_dir(name: &str) -> PathBuf {
    let seconds = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    PathBuf::from("runs").join(format!("{name}-{seconds}"))
}

/// One progress bar per phase, on stderr.
#[derive(Default)]
struct Bars {
    bar: RefCell<Option<ProgressBar>>,
}

impl Progress for Bars {
    fn start(&self, phase: &'static str, total: u64) {
        let bar = ProgressBar::new(total);
        bar.set_style(
            ProgressStyle::with_template("{prefix:>9} [{bar:30}] {pos}/{len} {elapsed}/{eta}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        bar.set_prefix(phase);
        *self.bar.borrow_mut() = Some(bar);
    }

    fn advance(&self, done: u64) {
        if let Some(bar) = self.bar.borrow().as_ref() {
            bar.inc(done);
        }
    }

    fn finish(&self) {
        if let Some(bar) = self.bar.borrow_mut().take() {
            bar.finish_and_clear();
        }
    }
}
