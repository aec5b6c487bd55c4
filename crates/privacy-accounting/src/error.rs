//! Errors of the accounting crate: each names the argument at fault and what would fix it.

use std::fmt::Display;

use thiserror::Error;

/// Everything that can go wrong while accounting.
#[derive(Debug, Error)]
pub enum AccountingError {
    /// An argument is outside its domain (q outside (0, 1], σ ≤ 0, δ outside (0, 1), …).
    #[error("invalid {name} = {value}: {expected}")]
    InvalidArgument {
        /// The argument's name as the user spells it (e.g. `q`, `sigma`, `delta`).
        name: &'static str,
        /// The offending value, formatted.
        value: String,
        /// What a valid value looks like.
        expected: &'static str,
    },
    /// A calibration target cannot be reached with the given parameters.
    #[error("target unreachable: {0}")]
    Unreachable(String),
    /// A ledger file could not be parsed.
    #[error("invalid ledger: {0}")]
    Ledger(String),
}

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, AccountingError>;

/// Fails with [`AccountingError::InvalidArgument`] (naming `name`, its `value` and what is
/// `expected`) unless `valid`. `value` is only formatted on failure, so the checks on hot paths
/// cost a comparison.
pub(crate) fn require(
    valid: bool,
    name: &'static str,
    value: impl Display,
    expected: &'static str,
) -> Result<()> {
    if valid {
        Ok(())
    } else {
        Err(AccountingError::InvalidArgument {
            name,
            value: value.to_string(),
            expected,
        })
    }
}

/// Fails unless `value` is a finite number > 0 (the domain of noise levels, sensitivities and
/// grid spacings); `expected` is the message for the user.
pub(crate) fn require_positive(
    name: &'static str,
    value: f64,
    expected: &'static str,
) -> Result<()> {
    require(value.is_finite() && value > 0.0, name, value, expected)
}

/// Fails unless `q` is a sampling rate in (0, 1].
pub fn check_sampling_rate(q: f64) -> Result<()> {
    require(
        q.is_finite() && q > 0.0 && q <= 1.0,
        "q",
        q,
        "the sampling rate must lie in (0, 1]",
    )
}

/// Fails unless `sigma` is a finite, positive noise multiplier.
pub fn check_noise_multiplier(sigma: f64) -> Result<()> {
    require_positive(
        "sigma",
        sigma,
        "the noise multiplier must be a finite number > 0",
    )
}

/// Fails unless `delta` lies in (0, 1).
pub fn check_delta(delta: f64) -> Result<()> {
    require(
        delta.is_finite() && delta > 0.0 && delta < 1.0,
        "delta",
        delta,
        "delta must lie in (0, 1), typically well below 1/number of clients",
    )
}

/// Fails unless `epsilon` is finite and ≥ 0.
pub fn check_epsilon(epsilon: f64) -> Result<()> {
    require(
        epsilon.is_finite() && epsilon >= 0.0,
        "epsilon",
        epsilon,
        "epsilon must be a finite number >= 0",
    )
}
