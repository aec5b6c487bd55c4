//! `fedsyn-ml`: the fedsyn commands that need libtorch (models). Users call them through
//! `fedsyn <command>`, which forwards here with the arguments untouched; this binary parses them
//! as `fedsyn` would.
//!
//! To add a command: a variant in `Command` (with its implementation in a module here) and an
//! entry in the `fedsyn` package's `src/torch_commands.rs`, so that `fedsyn` lists and forwards
//! it.

mod client_embed_cli;
mod doctor;
mod eval_cli;
mod jsonl_input;
mod models_cli;
mod serve_cli;
mod simulate_cli;
mod train_cli;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use fedsyn::exit_status::{self, bad_input_of};
use fedsyn::output_format::CommandLine;

type Cli = CommandLine<Command>;

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
        Command::Generate(args) => models_cli::generate(args, cli.output.json),
        Command::Embed(args) => models_cli::embed(args, cli.output.json),
        Command::Doctor => doctor::run(cli.output.json),
        Command::Dpo(args) => train_cli::dpo(args, cli.output.json),
        Command::Simulate(args) => simulate_cli::run(&args, cli.output.json),
        Command::Eval(args) => eval_cli::run(&args, cli.output.json),
        Command::ClientEmbed(args) => client_embed_cli::run(&args, cli.output.json),
        Command::Serve(args) => serve_cli::run(&args, cli.output.json),
    };
    exit_status::exit_code(result, is_bad_input)
}

/// Bad input: a problem the user can fix in what they typed or gave us.
fn is_bad_input(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        bad_input_of(cause, models::ModelError::is_bad_input)
            || cause.is::<jsonl_input::InputError>()
            || bad_input_of(cause, clients::ClientsError::is_bad_input)
            || bad_input_of(cause, server::ServerError::is_bad_input)
            || cause.is::<training_config::InvalidHyperparameter>()
            || exit_status::shared_bad_input(cause)
    })
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use fedsyn::torch_commands::TORCH_COMMANDS;

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
