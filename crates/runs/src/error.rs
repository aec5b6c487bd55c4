//! Errors of a run's configuration and files: each names the key, argument, file or line at
//! fault and the fix.

use std::path::PathBuf;

use thiserror::Error;

/// Everything that can go wrong reading, checking or writing a run's configuration and files.
#[derive(Debug, Error)]
pub enum RunError {
    /// A configuration file or override could not be read or parsed.
    #[error("config {source_name}: {message}")]
    ConfigSyntax {
        /// The file (or `--set KEY=VALUE`) the text came from.
        source_name: String,
        /// What is wrong, as the TOML parser or the schema says it.
        message: String,
    },
    /// A configuration key holds a value outside its domain.
    #[error("config key `{key}` = {value}: {fix}")]
    ConfigValue {
        /// The dotted key, e.g. `privacy.epsilon`.
        key: String,
        /// The offending value, formatted.
        value: String,
        /// What a valid value looks like.
        fix: String,
    },
    /// A function argument is outside its domain.
    #[error("invalid {name} = {value}: {expected}")]
    InvalidArgument {
        /// The argument's name.
        name: &'static str,
        /// The offending value, formatted.
        value: String,
        /// What a valid value looks like.
        expected: String,
    },
    /// A file or directory could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The path involved.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A data file has a bad line.
    #[error("{}:{line}: {message}", path.display())]
    Data {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong and how to fix it.
        message: String,
    },
    /// A run directory is in a state the operation cannot work with.
    #[error("run directory {}: {message}", path.display())]
    RunDir {
        /// The run directory.
        path: PathBuf,
        /// What is wrong and what to do.
        message: String,
    },
    /// Privacy accounting failed (invalid mechanism, unreachable target, …).
    #[error(transparent)]
    Accounting(#[from] privacy_accounting::AccountingError),
    /// Client sampling or the DP release failed.
    #[error(transparent)]
    Dp(#[from] dp_mechanics::DpError),
    /// A plot could not be drawn or written.
    #[error("plot {}: {message}", path.display())]
    Plot {
        /// The file being written.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// A state the code should never reach: a bug in fedsyn, not a problem of the input.
    #[error("internal error (a bug in fedsyn; please report it): {0}")]
    Internal(String),
}

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, RunError>;

impl RunError {
    /// Whether the user can fix this in what they gave (a config, a data file, a run
    /// directory), as opposed to a failure of the machine or of fedsyn.
    pub fn is_bad_input(&self) -> bool {
        match self {
            RunError::ConfigSyntax { .. }
            | RunError::ConfigValue { .. }
            | RunError::InvalidArgument { .. }
            | RunError::Data { .. }
            | RunError::RunDir { .. }
            | RunError::Accounting(_) => true,
            RunError::Dp(e) => e.is_bad_input(),
            RunError::Io { .. } | RunError::Plot { .. } | RunError::Internal(_) => false,
        }
    }

    /// A bug: a state the code should never reach (exit 1, never "bad input").
    pub fn internal(message: impl Into<String>) -> Self {
        RunError::Internal(message.into())
    }

    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        RunError::Io {
            path: path.into(),
            source,
        }
    }

    /// An invalid argument.
    pub fn argument(
        name: &'static str,
        value: impl std::fmt::Display,
        expected: impl Into<String>,
    ) -> Self {
        RunError::InvalidArgument {
            name,
            value: value.to_string(),
            expected: expected.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn input_errors_are_bad_input_and_bugs_are_not() {
        assert!(RunError::argument("privacy.q", 2, "a rate in (0, 1]").is_bad_input());
        assert!(!RunError::internal("unreachable").is_bad_input());
        let io = std::io::Error::other("disk full");
        assert!(!RunError::io("/tmp/x", io).is_bad_input());
    }
}
