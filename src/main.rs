//! `fedsyn`: differentially private synthetic text and federated learning.
//!
//! This executable does not link libtorch. Commands that need a model (see
//! `src/torch_commands.rs`) are implemented in `fedsyn-ml` (crates/fedsyn-ml) and forwarded
//! there, arguments untouched; everything else (privacy budgets, the remote client, comparisons and
//! reports of run directories) runs here.

mod budget;
mod client_cli;
mod compare_cli;
mod report_cli;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Arg, CommandFactory, FromArgMatches, Subcommand};

use fedsyn::exit_status;
use fedsyn::output_format::CommandLine;
use fedsyn::torch_commands::{torch_command, TORCH_BINARY, TORCH_COMMANDS};

type Cli = CommandLine<Command>;

#[derive(Debug, Subcommand)]
enum Command {
    /// Privacy-budget calculators: ε of a schedule, σ for a target ε, rounds a budget allows,
    /// and reports of a run's ledger.
    #[command(subcommand)]
    Budget(budget::BudgetCommand),
    /// Join a `fedsyn serve` run as a client: embed your texts locally, score the candidates
    /// of each round and submit the clipped scores (never the texts).
    Client(client_cli::ClientArgs),
    /// Compare runs and the ε = ∞ / ε = 0 references, method × ε: accuracy, FID, MAUVE,
    /// precision/recall, share of the gap closed (table, compare.md/json, plots).
    Compare(compare_cli::CompareArgs),
    /// Write a run's report: report.md and a self-contained report.html with its plots.
    Report(report_cli::ReportArgs),
}

fn main() -> ExitCode {
    let matches = command_line().get_matches();
    if let Some((name, _)) = matches.subcommand() {
        if TORCH_COMMANDS
            .iter()
            .any(|(torch_name, _)| *torch_name == name)
        {
            return forward_to_torch_binary();
        }
    }
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(error) => error.exit(),
    };
    let result = match cli.command {
        Command::Budget(command) => budget::run(command, cli.output.json),
        Command::Client(args) => client_cli::run(&args, cli.output.json),
        Command::Compare(args) => compare_cli::run(&args, cli.output.json),
        Command::Report(args) => report_cli::run(&args, cli.output.json),
    };
    exit_status::exit_code(result, is_bad_input)
}

/// The full command line: our own subcommands plus, for `--help` and routing, one entry per
/// libtorch command that takes its arguments verbatim (the other binary parses them).
fn command_line() -> clap::Command {
    TORCH_COMMANDS
        .iter()
        .fold(Cli::command(), |cmd, (name, about)| {
            cmd.subcommand(
                clap::Command::new(*name)
                    .about(*about)
                    .disable_help_flag(true)
                    .arg(
                        Arg::new("args")
                            .num_args(0..)
                            .trailing_var_arg(true)
                            .allow_hyphen_values(true),
                    ),
            )
        })
}

/// Replaces this process with `fedsyn-ml`, same arguments; returns only on failure.
fn forward_to_torch_binary() -> ExitCode {
    let mut command = torch_command();
    command.args(std::env::args_os().skip(1));
    let binary = PathBuf::from(command.get_program());
    let error = exec(command);
    eprintln!(
        "error: cannot run {}: {error}\n  the model commands live in `{TORCH_BINARY}`, built \
         next to `fedsyn` by `cargo build --release`; run scripts/setup.sh first if libtorch is \
         missing",
        binary.display()
    );
    ExitCode::from(exit_status::EXIT_FAILURE)
}

#[cfg(unix)]
fn exec(mut command: std::process::Command) -> std::io::Error {
    use std::os::unix::process::CommandExt;
    command.exec()
}

#[cfg(not(unix))]
fn exec(mut command: std::process::Command) -> std::io::Error {
    match command.status() {
        Ok(status) => std::process::exit(status.code().unwrap_or(1)),
        Err(error) => error,
    }
}

/// Bad input is anything the user can fix by changing what they typed or gave us.
fn is_bad_input(error: &anyhow::Error) -> bool {
    error
        .chain()
        .any(|cause| exit_status::shared_bad_input(cause) || cause.is::<budget::UsageError>())
}
