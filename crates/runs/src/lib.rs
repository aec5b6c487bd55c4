//! A run's inputs and records, without libtorch:
//! - [`config`]: the run configuration (one TOML file fully specifies a run), and [`prompts`],
//!   the public prompts it configures;
//! - [`run_dir`]: the run directory, laid out so that a crash at any point leaves files a
//!   resumed run can trust (ledger, metrics rows, checkpoints);
//! - [`records`]: what a finished run and its evaluation leave there (`summary.json`,
//!   `eval.json`).
//!
//! The simulation, the server and the evaluation (crate `server`) write them; the reports
//! (crate `reports`) and the `fedsyn` binary read them without linking libtorch.

pub mod config;
pub mod digest;
pub mod error;
pub mod prompts;
pub mod records;
pub mod run_dir;

pub use config::RunConfig;
pub use error::{Result, RunError};
pub use run_dir::{write_atomic, Histogram, PendingCheckpoint, PhaseSeconds, RoundMetrics, RunDir};
