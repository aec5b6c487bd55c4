//! The POPri server: the round engine ([`engine`]), written once and driven either by the
//! simulation ([`simulate`], in-process clients) or by the HTTP server (remote clients), and its
//! building blocks: the run configuration, client sampling, the DP noise, preference pairs,
//! prompts, FID, the run directory and the privacy budget.

pub mod budget;
/// The run configuration, its prompts, the run directory and digests (from `runs`).
pub use runs::{config, digest, prompts, run_dir};
pub mod distribution;
pub mod driver;
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

pub use budget::{plan_noise, BudgetGuard, NoisePlan};
pub use config::RunConfig;
pub use error::{Result, RunError, ServerError};
pub use noise::{NoiseSource, NoiseState};
pub use pairs::{preference_agreement, preference_pairs, RankedPair};
pub use run_dir::{write_atomic, Histogram, PendingCheckpoint, PhaseSeconds, RoundMetrics, RunDir};
pub use sampling::{ClientSampler, ClientSampling};
