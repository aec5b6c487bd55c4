//! `fedsyn-ml`: the fedsyn commands that need libtorch (models). Users call them through
//! `fedsyn <command>`, which forwards here with the arguments untouched; this binary parses them
//! as `fedsyn` would.
//!
//! To add a command: a variant in `Command` (with its implementation in a module here) and an
//! entry in `src/torch_commands.rs`, so that `fedsyn` lists and forwards it.

#[path = "../client_embed_cli.rs"]
mod client_embed_cli;
#[path = "../doctor.rs"]
mod doctor;
#[path = "../eval_cli.rs"]
mod eval_cli;
#[path = "../exit_status.rs"]
mod exit_status;
#[path = "../jsonl_input.rs"]
mod jsonl_input;
#[path = "../models_cli.rs"]
mod models_cli;
#[path = "../serve_cli.rs"]
mod serve_cli;
#[path = "../simulate_cli.rs"]
mod simulate_cli;
#[path = "../train_cli.rs"]
mod train_cli;
// Only the tests read these (to check that `fedsyn` forwards exactly our commands).
#[cfg(test)]
#[allow(dead_code)] // TORCH_BINARY is for `fedsyn`
#[path = "../torch_commands.rs"]
mod torch_commands;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Differentially private synthetic text and federated learning (model commands).
#[derive(Debug, Parser)]
#[command(name = "fedsyn", bin_name = "fedsyn", version, about, long_about = None)]
struct Cli {
    /// Print machine-readable JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Sample text from the generator (SmolLM2 GGUF or any Llama-family model).
    Generate(models_cli::GenerateArgs),
    /// Embed the texts of a JSONL file with the sentence embedder (all-MiniLM-L6-v2).
    Embed(models_cli::EmbedArgs),
    /// Show the libtorch in use, threads, CUDA devices and where the default models were found.
    Doctor,
    /// Train a LoRA adapter on preference pairs (DPO, IPO) or completions (SFT).
    Dpo(train_cli::DpoArgs),
    /// Run a federated simulation (POPri, PE, PE+SFT or DP-FedAvg) on simulated clients' data.
    Simulate(simulate_cli::SimulateArgs),
    /// Measure a run's utility: downstream next-token accuracy on the private eval texts, FID,
    /// precision/recall and MAUVE (writes eval.json); or a non-private reference's.
    Eval(eval_cli::EvalArgs),
    /// Embed a client's texts into its state folder (`fedsyn client` runs it when needed).
    ClientEmbed(client_embed_cli::ClientEmbedArgs),
    /// Serve a POPri run to remote clients over HTTP(S): enrolment, rounds, privacy ledger.
    Serve(serve_cli::ServeArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result: anyhow::Result<()> = match cli.command {
        Command::Generate(args) => models_cli::generate(args, cli.json),
        Command::Embed(args) => models_cli::embed(args, cli.json),
        Command::Doctor => doctor::run(cli.json),
        Command::Dpo(args) => train_cli::dpo(args, cli.json),
        Command::Simulate(args) => simulate_cli::run(&args, cli.json),
        Command::Eval(args) => eval_cli::run(&args, cli.json),
        Command::ClientEmbed(args) => client_embed_cli::run(&args, cli.json),
        Command::Serve(args) => serve_cli::run(&args, cli.json),
    };
    exit_status::exit_code(result, is_bad_input)
}

/// Bad input: a problem the user can fix in what they typed or gave us.
fn is_bad_input(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause
            .downcast_ref::<models::ModelError>()
            .is_some_and(models::ModelError::is_bad_input)
            || cause.downcast_ref::<jsonl_input::InputError>().is_some()
            || cause
                .downcast_ref::<clients::ClientsError>()
                .is_some_and(clients::ClientsError::is_bad_input)
            || cause
                .downcast_ref::<server::ServerError>()
                .is_some_and(server::ServerError::is_bad_input)
            || exit_status::shared_bad_input(cause)
            || cause
                .downcast_ref::<training_config::InvalidHyperparameter>()
                .is_some()
    })
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::torch_commands::TORCH_COMMANDS;

    #[test]
    fn fedsyn_forwards_exactly_the_commands_defined_here() {
        let here: Vec<String> = super::Cli::command()
            .get_subcommands()
            .map(|c| c.get_name().to_string())
            .collect();
        let forwarded: Vec<String> = TORCH_COMMANDS.iter().map(|(n, _)| n.to_string()).collect();
        assert_eq!(here, forwarded);
    }
}
