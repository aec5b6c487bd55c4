//! Errors of the accounting crate: each names the argument at fault and what would fix it.

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

/// Fails unless `q` is a sampling rate in (0, 1].
pub fn check_sampling_rate(q: f64) -> Result<()> {
    if q.is_finite() && q > 0.0 && q <= 1.0 {
        Ok(())
    } else {
        Err(AccountingError::InvalidArgument {
            name: "q",
            value: format!("{q}"),
            expected: "the sampling rate must lie in (0, 1]",
        })
    }
}

/// Fails unless `sigma` is a finite, positive noise multiplier.
pub fn check_noise_multiplier(sigma: f64) -> Result<()> {
    if sigma.is_finite() && sigma > 0.0 {
        Ok(())
    } else {
        Err(AccountingError::InvalidArgument {
            name: "sigma",
            value: format!("{sigma}"),
            expected: "the noise multiplier must be a finite number > 0",
        })
    }
}

/// Fails unless `delta` lies in (0, 1).
pub fn check_delta(delta: f64) -> Result<()> {
    if delta.is_finite() && delta > 0.0 && delta < 1.0 {
        Ok(())
    } else {
        Err(AccountingError::InvalidArgument {
            name: "delta",
            value: format!("{delta}"),
            expected: "delta must lie in (0, 1), typically well below 1/number of clients",
        })
    }
}

/// Fails unless `epsilon` is finite and ≥ 0.
pub fn check_epsilon(epsilon: f64) -> Result<()> {
    if epsilon.is_finite() && epsilon >= 0.0 {
        Ok(())
    } else {
        Err(AccountingError::InvalidArgument {
            name: "epsilon",
            value: format!("{epsilon}"),
            expected: "epsilon must be a finite number >= 0",
        })
    }
}
