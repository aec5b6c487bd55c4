//! The subcommands that need libtorch. They live in the `fedsyn-ml` executable, installed next
//! to `fedsyn`; `fedsyn` forwards them there, so that `fedsyn budget …` never loads libtorch
//! (loading it takes about half a second and 500 MB) and still answers in milliseconds.
//! `fedsyn-ml`'s tests check this list against its own commands.

use std::path::PathBuf;
use std::process::Command;

/// The name of the executable holding the libtorch commands.
pub const TORCH_BINARY: &str = "fedsyn-ml";

/// (name, one-line description) of every subcommand `fedsyn` forwards to `fedsyn-ml`.
pub const TORCH_COMMANDS: &[(&str, &str)] = &[
    (
        "generate",
        "Sample text from the generator (SmolLM2 GGUF or any Llama-family model)",
    ),
    (
        "embed",
        "Embed the texts of a JSONL file with the sentence embedder (all-MiniLM-L6-v2)",
    ),
    (
        "doctor",
        "Show the libtorch in use, threads, CUDA devices and where the default models were found",
    ),
    (
        "dpo",
        "Train a LoRA adapter on preference pairs (DPO, IPO) or completions (SFT)",
    ),
    (
        "simulate",
        "Run a federated simulation (POPri, PE, PE+SFT or DP-FedAvg) on simulated clients' data",
    ),
    (
        "eval",
        "Measure a run's utility: downstream next-token accuracy on the private eval texts, FID, \
         precision/recall and MAUVE (writes eval.json); or a non-private reference's",
    ),
    (
        "client-embed",
        "Embed a client's texts into its state folder (`fedsyn client` runs it when needed)",
    ),
    (
        "serve",
        "Serve a POPri run to remote clients over HTTP(S): enrolment, rounds, privacy ledger",
    ),
];

/// Where `fedsyn-ml` is: next to the running executable, else wherever the PATH has it.
pub fn torch_binary_path() -> PathBuf {
    let name = format!("{TORCH_BINARY}{}", std::env::consts::EXE_SUFFIX);
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join(&name)))
        .filter(|path| path.exists())
        .unwrap_or_else(|| PathBuf::from(name))
}

/// How long libgomp's idle threads spin before they sleep, unless the user set
/// `OMP_WAIT_POLICY` or `GOMP_SPINCOUNT`. Decoding runs thousands of small parallel ops back to
/// back: threads that sleep at once (`OMP_WAIT_POLICY=PASSIVE`) wake for each, and that made
/// the decoder layers 1.55× slower on a 2-core Xeon (`sampling_profile` example: 10.7 s
/// against 6.9 s with libgomp's default spin); the default spin (300,000 rounds) starves a
/// process that shares its cores. 3,000 rounds kept most of the gain (8.1 s).
const GOMP_SPINCOUNT: &str = "3000";

/// A command that runs `fedsyn-ml` (see [`torch_binary_path`]) with libgomp's spin set to
/// [`GOMP_SPINCOUNT`] unless the user chose a wait policy: libgomp reads its settings when
/// libtorch loads, so they must be in the child's environment from the start.
pub fn torch_command() -> Command {
    let mut command = Command::new(torch_binary_path());
    if std::env::var_os("OMP_WAIT_POLICY").is_none() && std::env::var_os("GOMP_SPINCOUNT").is_none()
    {
        command.env("GOMP_SPINCOUNT", GOMP_SPINCOUNT);
    }
    command
}
