//! `fedsyn budget …`: offline privacy-budget calculators and ledger reports.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use privacy_accounting::calibration::{calibrate_sigma, max_rounds, DEFAULT_SIGMA_TOLERANCE};
use privacy_accounting::pld::{PldAccountant, PldConfig};
use privacy_accounting::rdp::RdpAccountant;
use privacy_accounting::statement::{estimate_detail, format_epsilon, PrivacyStatement};
use privacy_accounting::{tightest, Accountant, AccountantKind, EpsilonEstimate, Ledger, Sampling};
use serde_json::{json, Value};

/// A mistake in the command line that clap cannot see (missing combination of flags, …).
#[derive(Debug)]
pub struct UsageError(String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

#[derive(Debug, Subcommand)]
pub enum BudgetCommand {
    /// ε spent by `--steps` releases of the subsampled Gaussian mechanism.
    Epsilon(EpsilonArgs),
    /// The smallest noise multiplier σ that keeps ε at or below a target.
    Sigma(SigmaArgs),
    /// How many rounds a noise multiplier and an ε budget allow.
    Rounds(RoundsArgs),
    /// A privacy statement for a run's ledger (Markdown or JSON).
    Report(ReportArgs),
}

/// Which accountant(s) to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AccountantChoice {
    /// Rényi DP, converted to (ε, δ) as Opacus does.
    Rdp,
    /// Privacy-loss distribution (tighter).
    Pld,
    /// Both, side by side.
    All,
}

impl AccountantChoice {
    fn kinds(self) -> Vec<AccountantKind> {
        match self {
            AccountantChoice::Rdp => vec![AccountantKind::Rdp],
            AccountantChoice::Pld => vec![AccountantKind::Pld],
            AccountantChoice::All => AccountantKind::ALL.to_vec(),
        }
    }
}

/// How clients are sampled each round: `--q` (Poisson) or `--cohort M --population N`.
#[derive(Debug, Args)]
pub struct SamplingArgs {
    /// Poisson sampling rate: each client joins each round independently with probability q.
    #[arg(long, conflicts_with_all = ["cohort", "population"])]
    q: Option<f64>,
    /// Fixed cohort size m: exactly m of the --population clients, drawn without replacement.
    #[arg(long, requires = "population")]
    cohort: Option<u64>,
    /// Number of clients n the fixed cohorts are drawn from.
    #[arg(long, requires = "cohort")]
    population: Option<u64>,
}

impl SamplingArgs {
    fn sampling(&self) -> Result<Sampling> {
        let sampling = match (self.q, self.cohort, self.population) {
            (Some(q), _, _) => Sampling::Poisson { q },
            (None, Some(m), Some(n)) => Sampling::FixedCohort { m, n },
            _ => {
                return Err(UsageError(
                    "say how clients are sampled: --q RATE for Poisson sampling, or \
                     --cohort M --population N for fixed cohorts"
                        .into(),
                )
                .into())
            }
        };
        sampling.validate()?;
        Ok(sampling)
    }
}

#[derive(Debug, Args)]
pub struct EpsilonArgs {
    #[command(flatten)]
    sampling: SamplingArgs,
    /// Noise multiplier σ: noise standard deviation divided by the clip bound.
    #[arg(long)]
    sigma: f64,
    /// Number of releases (rounds or steps); `1e4` is accepted.
    #[arg(long, value_parser = parse_count)]
    steps: u64,
    /// δ of the (ε, δ) guarantee.
    #[arg(long)]
    delta: f64,
    /// Accountant(s) to run.
    #[arg(long, value_enum, default_value_t = AccountantChoice::All)]
    accountant: AccountantChoice,
    /// RDP: comma-separated Rényi orders (> 1) instead of Opacus's default grid.
    #[arg(long, value_delimiter = ',')]
    orders: Option<Vec<f64>>,
    /// PLD: grid spacing of privacy-loss values instead of the automatic choice.
    #[arg(long)]
    pld_grid: Option<f64>,
}

#[derive(Debug, Args)]
pub struct SigmaArgs {
    #[command(flatten)]
    sampling: SamplingArgs,
    /// The ε not to exceed.
    #[arg(long)]
    target_epsilon: f64,
    /// Number of releases (rounds or steps); `1e4` is accepted.
    #[arg(long, value_parser = parse_count)]
    steps: u64,
    /// δ of the (ε, δ) guarantee.
    #[arg(long)]
    delta: f64,
    /// Relative precision of σ.
    #[arg(long, default_value_t = DEFAULT_SIGMA_TOLERANCE)]
    tolerance: f64,
    /// Accountant(s) to run.
    #[arg(long, value_enum, default_value_t = AccountantChoice::All)]
    accountant: AccountantChoice,
}

#[derive(Debug, Args)]
pub struct RoundsArgs {
    #[command(flatten)]
    sampling: SamplingArgs,
    /// Noise multiplier σ.
    #[arg(long)]
    sigma: f64,
    /// The ε not to exceed.
    #[arg(long)]
    target_epsilon: f64,
    /// δ of the (ε, δ) guarantee.
    #[arg(long)]
    delta: f64,
    /// Accountant(s) to run.
    #[arg(long, value_enum, default_value_t = AccountantChoice::All)]
    accountant: AccountantChoice,
}

/// Output format of `budget report`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ReportFormat {
    /// Markdown privacy statement.
    Md,
    /// JSON privacy statement.
    Json,
}

#[derive(Debug, Args)]
pub struct ReportArgs {
    /// A ledger JSON file (a run's `ledger.json`).
    ledger: PathBuf,
    /// δ to report at; defaults to the δ stored in the ledger.
    #[arg(long)]
    delta: Option<f64>,
    /// Output format (`--json` implies json).
    #[arg(long, value_enum, default_value_t = ReportFormat::Md)]
    format: ReportFormat,
    /// Accountant(s) to run.
    #[arg(long, value_enum, default_value_t = AccountantChoice::All)]
    accountant: AccountantChoice,
}

/// Runs one `budget` subcommand, printing a table or, with `json`, one JSON object.
pub fn run(command: BudgetCommand, json: bool) -> Result<()> {
    match command {
        BudgetCommand::Epsilon(args) => epsilon(args, json),
        BudgetCommand::Sigma(args) => sigma(args, json),
        BudgetCommand::Rounds(args) => rounds(args, json),
        BudgetCommand::Report(args) => report(args, json),
    }
}

fn epsilon(args: EpsilonArgs, json: bool) -> Result<()> {
    let sampling = args.sampling.sampling()?;
    let mechanism = sampling.bound(args.sigma)?;
    let mut estimates = Vec::new();
    for kind in args.accountant.kinds() {
        let mut accountant = configured_accountant(kind, &args)?;
        accountant.compose(mechanism, args.steps)?;
        estimates.push(accountant.epsilon(args.delta)?);
    }
    let inputs = json!({
        "sigma": args.sigma,
        "steps": args.steps,
        "sampling": sampling,
        "accounted_as": mechanism,
    });
    if json {
        let best = tightest(&estimates).context("no accountant selected")?;
        print_json(with_results(best, &estimates, inputs));
    } else {
        println!(
            "ε after {} release(s), σ = {}, δ = {}",
            args.steps, args.sigma, args.delta
        );
        println!("sampling: {}", sampling.describe());
        println!("{:<10} {:>12}  detail", "accountant", "ε");
        for estimate in &estimates {
            println!(
                "{:<10} {:>12}  {}",
                estimate.accountant.name(),
                format_epsilon(estimate.epsilon),
                estimate_detail(estimate)
            );
        }
    }
    Ok(())
}

/// An accountant of `kind` with the orders or grid the user asked for, else the defaults.
fn configured_accountant(kind: AccountantKind, args: &EpsilonArgs) -> Result<Box<dyn Accountant>> {
    Ok(match kind {
        AccountantKind::Rdp => match &args.orders {
            Some(orders) => Box::new(RdpAccountant::new(orders.clone())?),
            None => kind.accountant(),
        },
        AccountantKind::Pld => {
            let config = PldConfig {
                value_discretization_interval: args.pld_grid,
                ..PldConfig::default()
            };
            config.validate()?;
            Box::new(PldAccountant::new(config))
        }
    })
}

fn sigma(args: SigmaArgs, json: bool) -> Result<()> {
    let sampling = args.sampling.sampling()?;
    // Every scheme is bounded by a Poisson Gaussian whose σ is proportional to ours: calibrate
    // that one, then scale back.
    let unit = sampling.bound(1.0)?;
    let mut results = Vec::new();
    for kind in args.accountant.kinds() {
        let calibration = calibrate_sigma(
            kind,
            args.target_epsilon,
            unit.q,
            args.steps,
            args.delta,
            args.tolerance,
        )?;
        results.push((kind, calibration.sigma / unit.sigma, calibration));
    }
    let (best_kind, best_sigma, _) = results
        .iter()
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .context("no accountant selected")?;
    if json {
        let rows: Vec<Value> = results
            .iter()
            .map(|(kind, sigma, c)| {
                json!({
                    "accountant": kind, "sigma": sigma, "epsilon": c.epsilon,
                    "tolerance": c.tolerance,
                })
            })
            .collect();
        print_json(json!({
            "sigma": best_sigma,
            "accountant": best_kind,
            "target_epsilon": args.target_epsilon,
            "delta": args.delta,
            "steps": args.steps,
            "sampling": sampling,
            "results": rows,
        }));
    } else {
        println!(
            "smallest σ for ε ≤ {} after {} release(s), δ = {}",
            args.target_epsilon, args.steps, args.delta
        );
        println!("sampling: {}", sampling.describe());
        println!("{:<10} {:>12} {:>12}", "accountant", "σ", "ε reached");
        for (kind, sigma, calibration) in &results {
            println!(
                "{:<10} {:>12.6} {:>12}",
                kind.name(),
                sigma,
                format_epsilon(calibration.epsilon)
            );
        }
    }
    Ok(())
}

fn rounds(args: RoundsArgs, json: bool) -> Result<()> {
    let sampling = args.sampling.sampling()?;
    let mechanism = sampling.bound(args.sigma)?;
    let budgets = args
        .accountant
        .kinds()
        .into_iter()
        .map(|kind| max_rounds(kind, mechanism, args.target_epsilon, args.delta).map(|b| (kind, b)))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    if json {
        let rows: Vec<Value> = budgets
            .iter()
            .map(|(kind, b)| {
                json!({
                    "accountant": kind, "rounds": b.rounds, "epsilon": b.epsilon,
                    "epsilon_next": b.epsilon_next, "capped": b.capped,
                })
            })
            .collect();
        let (best_kind, best) = budgets
            .iter()
            .max_by_key(|(_, b)| b.rounds)
            .context("no accountant selected")?;
        print_json(json!({
            "rounds": best.rounds,
            "accountant": best_kind,
            "sigma": args.sigma,
            "target_epsilon": args.target_epsilon,
            "delta": args.delta,
            "sampling": sampling,
            "results": rows,
        }));
    } else {
        println!(
            "rounds allowed by ε ≤ {} at σ = {}, δ = {}",
            args.target_epsilon, args.sigma, args.delta
        );
        println!("sampling: {}", sampling.describe());
        println!(
            "{:<10} {:>14} {:>12} {:>16}",
            "accountant", "rounds", "ε spent", "ε one round more"
        );
        for (kind, budget) in &budgets {
            let capped = if budget.capped { " (cap)" } else { "" };
            println!(
                "{:<10} {:>14} {:>12} {:>16}",
                kind.name(),
                format!("{}{capped}", budget.rounds),
                format_epsilon(budget.epsilon),
                format_epsilon(budget.epsilon_next)
            );
        }
    }
    Ok(())
}

fn report(args: ReportArgs, json: bool) -> Result<()> {
    let ledger = Ledger::load(&args.ledger)?;
    let delta = args.delta.or(ledger.delta).ok_or_else(|| {
        UsageError(format!(
            "{} does not record δ: pass --delta (e.g. --delta 1e-5)",
            args.ledger.display()
        ))
    })?;
    let statement = PrivacyStatement::from_ledger(&ledger, delta, &args.accountant.kinds())?;
    if json || args.format == ReportFormat::Json {
        println!("{}", statement.to_json());
    } else {
        print!("{}", statement.to_markdown());
    }
    Ok(())
}

/// The tightest estimate's fields at the top level, all estimates under `results`, and the
/// inputs, so that `jq .epsilon` works whichever accountants ran.
fn with_results(best: &EpsilonEstimate, all: &[EpsilonEstimate], inputs: Value) -> Value {
    let mut out = serde_json::to_value(best).expect("estimates serialise");
    let map = out.as_object_mut().expect("an estimate is a JSON object");
    if let Value::Object(inputs) = inputs {
        map.extend(inputs);
    }
    map.insert(
        "results".into(),
        serde_json::to_value(all).expect("estimates serialise"),
    );
    out
}

fn print_json(value: Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(&value).expect("JSON values serialise")
    );
}

/// Parses a count such as `10000` or `1e4` (it must be a whole number ≥ 1).
fn parse_count(text: &str) -> std::result::Result<u64, String> {
    if let Ok(n) = text.parse::<u64>() {
        return if n >= 1 {
            Ok(n)
        } else {
            Err("must be at least 1".into())
        };
    }
    match text.parse::<f64>() {
        // `u64::MAX as f64` rounds up to 2^64, which does not fit: exclusive bound.
        Ok(x) if x >= 1.0 && x.fract() == 0.0 && x < u64::MAX as f64 => Ok(x as u64),
        _ => Err(format!(
            "`{text}` is not a whole number ≥ 1 (e.g. 10000 or 1e4)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::parse_count;

    #[test]
    fn counts_accept_scientific_notation() {
        assert_eq!(parse_count("10000"), Ok(10_000));
        assert_eq!(parse_count("1e4"), Ok(10_000));
        assert!(parse_count("0").is_err());
        assert!(parse_count("2.5").is_err());
        assert!(parse_count("-3").is_err());
        assert!(parse_count("1.8446744073709552e19").is_err());
    }
}
