//! Errors of the DP mechanics.

use thiserror::Error;

/// What can go wrong while sampling a cohort or releasing a sum.
#[derive(Debug, Error)]
pub enum DpError {
    /// A function argument is outside its domain (a configuration the user can fix).
    #[error("invalid {name} = {value}: {expected}")]
    InvalidArgument {
        /// The argument's name.
        name: &'static str,
        /// The offending value, formatted.
        value: String,
        /// What a valid value looks like.
        expected: String,
    },
    /// The operating system's random number generator failed.
    #[error("the operating system's random number generator failed: {0}")]
    Rng(String),
    /// A state the code should never reach: a bug, not a problem of the input.
    #[error("internal error (a bug in fedsyn; please report it): {0}")]
    Internal(String),
    /// The sampling scheme is not one the accountants can handle.
    #[error(transparent)]
    Accounting(#[from] privacy_accounting::AccountingError),
}

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, DpError>;

impl DpError {
    /// Whether the user can fix this in what they gave.
    pub fn is_bad_input(&self) -> bool {
        matches!(
            self,
            DpError::InvalidArgument { .. } | DpError::Accounting(_)
        )
    }

    /// An invalid argument.
    pub(crate) fn argument(
        name: &'static str,
        value: impl std::fmt::Display,
        expected: impl Into<String>,
    ) -> Self {
        DpError::InvalidArgument {
            name,
            value: value.to_string(),
            expected: expected.into(),
        }
    }

    /// A bug.
    pub(crate) fn internal(message: impl Into<String>) -> Self {
        DpError::Internal(message.into())
    }
}
