//! The server half of every method: POPri's round engine ([`engine`]), PE, PE+SFT and
//! DP-FedAvg, each run by `round-driver`'s loop either in a simulation ([`simulate`],
//! in-process clients) or by the HTTP server ([`serve`], remote clients); preference pairs,
//! the evaluation ([`evaluate`]: downstream accuracy, FID, MAUVE, memorisation).

// Paths inside this crate for the modules of `runs` and `dp-mechanics` it uses most.
pub(crate) use dp_mechanics::{release as noise, sampling};
pub(crate) use runs::{config, digest, prompts, run_dir};
pub mod distribution;
mod engine;
pub mod error;
pub mod evaluate;
mod fedavg;
pub mod fid;
mod finish;
mod generation;
mod memorisation;
mod pairs;
mod pe;
pub mod serve;
mod setup;
pub mod simulate;

pub use error::{Result, RunError, ServerError};
