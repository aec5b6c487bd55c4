//! The command line both executables parse: `fedsyn-ml` must read every command line exactly
//! as `fedsyn` would, since `fedsyn` forwards it untouched. Only the subcommands differ.

use clap::{Args, Parser, Subcommand};

/// Differentially private synthetic text and federated learning.
#[derive(Debug, Parser)]
#[command(name = "fedsyn", bin_name = "fedsyn", version, about, long_about = None)]
pub struct CommandLine<C: Subcommand> {
    #[command(flatten)]
    pub output: OutputFormat,
    #[command(subcommand)]
    pub command: C,
}

/// How a command prints its result.
#[derive(Debug, Args)]
pub struct OutputFormat {
    /// Print machine-readable JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
}
