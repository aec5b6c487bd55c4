//! Errors of the server crate: each names the key, argument, file or line at fault and the fix.
//! Errors of a run's configuration and files are `runs`' ([`RunError`]), wrapped.

use std::path::PathBuf;

pub use runs::RunError;
use thiserror::Error;

/// Everything that can go wrong in the server's building blocks.
#[derive(Debug, Error)]
pub enum ServerError {
    /// The configuration, a data file or the run directory is wrong, or a file could not be
    /// read or written (see [`RunError`]).
    #[error(transparent)]
    Run(#[from] RunError),
    /// The generator, the embedder or the trainer failed.
    #[error(transparent)]
    Model(#[from] models::ModelError),
    /// Client-side work failed (data, embeddings, scores).
    #[error(transparent)]
    Clients(#[from] clients::ClientsError),
    /// The generator's tokenizer failed on a candidate.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// The server's SQLite database (`server.sqlite`) failed.
    #[error("server database {}: {message}", path.display())]
    Store {
        /// The database file.
        path: PathBuf,
        /// What failed, and what to do.
        message: String,
    },
    /// The HTTP server failed (binding, TLS set-up, serving).
    #[error("http server: {0}")]
    Http(String),
}

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, ServerError>;

impl From<privacy_accounting::AccountingError> for ServerError {
    fn from(e: privacy_accounting::AccountingError) -> Self {
        ServerError::Run(e.into())
    }
}

impl From<dp_mechanics::DpError> for ServerError {
    fn from(e: dp_mechanics::DpError) -> Self {
        ServerError::Run(e.into())
    }
}

impl ServerError {
    /// Whether the user can fix this in what they gave (a config, a data file, a run
    /// directory), as opposed to a failure of the machine or of fedsyn.
    pub fn is_bad_input(&self) -> bool {
        match self {
            ServerError::Run(e) => e.is_bad_input(),
            ServerError::Model(e) => e.is_bad_input(),
            ServerError::Clients(e) => e.is_bad_input(),
            ServerError::Tokenizer(_) | ServerError::Store { .. } | ServerError::Http(_) => false,
        }
    }

    /// A bug: a state the code should never reach (exit 1, never "bad input").
    pub(crate) fn internal(message: impl Into<String>) -> Self {
        RunError::internal(message).into()
    }

    /// An I/O error on `path`.
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        RunError::io(path, source).into()
    }

    /// An invalid argument.
    pub(crate) fn argument(
        name: &'static str,
        value: impl std::fmt::Display,
        expected: impl Into<String>,
    ) -> Self {
        RunError::argument(name, value, expected).into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bugs_and_libtorch_failures_are_not_bad_input() {
        assert!(!ServerError::internal("unreachable").is_bad_input());
        let torch = models::ModelError::Torch(tch::TchError::Torch("out of memory".into()));
        assert!(!ServerError::Model(torch).is_bad_input());
        let lora = models::ModelError::LoraState("merged twice".into());
        assert!(!ServerError::Model(lora).is_bad_input());
        assert!(ServerError::argument("privacy.q", 2, "a rate in (0, 1]").is_bad_input());
        let device = models::ModelError::UnknownDevice("tpu".into());
        assert!(ServerError::Model(device).is_bad_input());
    }
}
