//! Privacy accounting for user-level differentially private federated learning.
//!
//! Every mechanism fedsyn runs is a Gaussian sum query over clipped client contributions,
//! released once per round under some client-sampling scheme. This crate turns a history of such
//! releases (a [`Ledger`]) into (ε, δ) guarantees under two accountants:
//!
//! * [`rdp::RdpAccountant`] — Rényi DP of the Poisson-subsampled Gaussian (Mironov, Talwar &
//!   Zhang 2019), converted to (ε, δ) the way Opacus does;
//! * [`pld::PldAccountant`] — the privacy-loss distribution, discretised pessimistically and
//!   composed by FFT; tighter than RDP.
//!
//! It also calibrates noise to a target ε ([`calibration`]), calibrates the single-release
//! analytic Gaussian mechanism ([`analytic_gaussian`]), and writes privacy statements
//! ([`statement`]). Pure Rust: no torch, no Python.

pub mod analytic_gaussian;
pub mod calibration;
pub mod error;
pub mod ledger;
pub mod pld;
pub mod rdp;
pub mod sampling;
pub mod statement;

#[cfg(test)]
mod test_support;

use serde::{Deserialize, Serialize};

pub use error::{AccountingError, Result};
pub use ledger::{Ledger, LedgerEvent};
pub use sampling::{PoissonGaussian, Sampling};

/// Which accountant produced a number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AccountantKind {
    /// Rényi DP with the Opacus conversion to (ε, δ).
    Rdp,
    /// Privacy-loss distribution (tighter).
    Pld,
}

impl AccountantKind {
    /// Both accountants, in the order reports list them.
    pub const ALL: [AccountantKind; 2] = [AccountantKind::Rdp, AccountantKind::Pld];

    /// The lowercase name used on the command line and in JSON.
    pub fn name(self) -> &'static str {
        match self {
            AccountantKind::Rdp => "rdp",
            AccountantKind::Pld => "pld",
        }
    }

    /// A fresh accountant of this kind with its default settings.
    pub fn accountant(self) -> Box<dyn Accountant> {
        match self {
            AccountantKind::Rdp => Box::new(rdp::RdpAccountant::default()),
            AccountantKind::Pld => Box::new(pld::PldAccountant::default()),
        }
    }
}

impl std::fmt::Display for AccountantKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// An (ε, δ) guarantee and how it was obtained.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpsilonEstimate {
    /// ε at `delta`.
    pub epsilon: f64,
    /// δ.
    pub delta: f64,
    /// The accountant that produced ε.
    pub accountant: AccountantKind,
    /// RDP only: the Rényi order at which the minimum was reached.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub order: Option<f64>,
    /// RDP only: true when the optimal order is the smallest or largest of the grid, so a wider
    /// grid could give a smaller ε.
    #[serde(default)]
    pub order_at_grid_edge: bool,
    /// PLD only: an estimate of how much ε is overstated by the discretisation (ε is an upper
    /// bound; the exact value lies in [ε − error, ε]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub discretisation_error: Option<f64>,
}

/// The estimate with the smallest ε: every accountant's ε is a valid bound, so the tightest is
/// the guarantee. NaN sorts above every number, so it is never chosen over a real bound.
pub fn tightest(estimates: &[EpsilonEstimate]) -> Option<&EpsilonEstimate> {
    estimates
        .iter()
        .min_by(|a, b| a.epsilon.total_cmp(&b.epsilon))
}

/// A privacy accountant: composes Poisson-subsampled Gaussian releases and converts the
/// composition to (ε, δ).
pub trait Accountant {
    /// Which accountant this is.
    fn kind(&self) -> AccountantKind;
    /// Records `count` releases of `mechanism`.
    fn compose(&mut self, mechanism: PoissonGaussian, count: u64) -> Result<()>;
    /// The smallest ε this accountant can certify at `delta` for everything composed so far.
    fn epsilon(&self, delta: f64) -> Result<EpsilonEstimate>;
    /// The δ this accountant certifies at `epsilon`.
    fn delta(&self, epsilon: f64) -> Result<f64>;
}
