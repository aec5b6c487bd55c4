//! The DP mechanics of a fedsyn round, in plain Rust (no libtorch): who takes part in a round
//! ([`sampling`]: secret, OS-drawn cohorts and how the ledger accounts for them) and how a sum
//! of clipped client vectors is released ([`release`]: one value object for the ledger event and
//! the noise, a charge that must be durable before any noise exists, exact discrete Gaussian
//! noise on a fixed grid), and the type of values computed from un-noised data
//! ([`nonprivate`]). The accountants that turn the ledger into ε are in `privacy-accounting`.

pub mod error;
pub mod nonprivate;
pub mod release;
pub mod sampling;

pub use error::{DpError, Result};
pub use nonprivate::{NonPrivate, RawClientData};
pub use release::{
    clip_in_place, grid_for, l2_norm, Charge, GaussianMechanism, GridSum, NoiseSource, NoiseState,
    PlannedRelease, GRID_BITS,
};
pub use sampling::{derived_rng, ClientSampler, ClientSampling};
