//! The server half of every method: POPri's round engine ([`engine`]), PE, PE+SFT and
//! DP-FedAvg, each run by `round-driver`'s loop either in a simulation ([`simulate`],
//! in-process clients) or by the HTTP server ([`serve`], remote clients); preference pairs,
//! the evaluation ([`evaluate`]: downstream accuracy, FID, MAUVE, memorisation).

/// The run configuration, its prompts, the run directory and digests (from `runs`).
pub use runs::{config, digest, prompts, run_dir};
pub mod distribution;
pub mod engine;
pub mod error;
pub mod evaluate;
mod fedavg;
pub mod fid;
pub mod memorisation;
/// The DP release of a round (from `dp-mechanics`).
pub use dp_mechanics::release as noise;
pub mod pairs;
mod pe;
/// Client sampling (from `dp-mechanics`).
pub use dp_mechanics::sampling;
pub mod serve;
pub mod setup;
pub mod simulate;

pub use config::RunConfig;
pub use error::{Result, RunError, ServerError};
pub use noise::{NoiseSource, NoiseState};
pub use pairs::{preference_agreement, preference_pairs, RankedPair};
pub use run_dir::{write_atomic, Histogram, PendingCheckpoint, PhaseSeconds, RoundMetrics, RunDir};
pub use sampling::{ClientSampler, ClientSampling};
