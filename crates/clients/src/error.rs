//! Errors of the clients crate: each names the file (and line), client or argument at fault and
//! the fix.

use std::path::PathBuf;

use thiserror::Error;

/// Everything that can go wrong while reading client data, embedding it or scoring candidates.
#[derive(Debug, Error)]
pub enum ClientsError {
    /// The operating system refused to read or write a file or folder.
    #[error("cannot access {path}: {source}")]
    Io {
        /// The file or folder at fault.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A line of a federated JSONL file is not a valid document.
    #[error("{path}:{line}: {problem}; {fix}")]
    BadDocument {
        /// The JSONL file.
        path: PathBuf,
        /// The 1-based line number.
        line: usize,
        /// What is wrong with the line.
        problem: String,
        /// How to repair it.
        fix: &'static str,
    },
    /// The State of the Union folder or one of its addresses cannot be used.
    #[error("{path}: {problem}")]
    Sotu {
        /// The folder or address file.
        path: PathBuf,
        /// What is wrong and how to fix it.
        problem: String,
    },
    /// A client has evaluation text but no training text, so it cannot score candidates.
    #[error("client `{client}` has no training text: give it at least one training document, or drop it from the data")]
    NoTrainText {
        /// The client's id.
        client: String,
    },
    /// An argument is outside the values the function accepts.
    #[error("invalid {name}: {message}")]
    InvalidArgument {
        /// The argument.
        name: &'static str,
        /// What is wrong and what is allowed.
        message: String,
    },
    /// A vector or update about to be sent is longer than the sensitivity the accountant
    /// assumes: a bug in the clipping arithmetic, never the user's input, so nothing is sent.
    #[error("{what}: its norm {norm} exceeds the bound {bound} that the privacy accounting assumes; not sent (this is a bug in fedsyn: please report it)")]
    SensitivityViolated {
        /// The vector or update at fault.
        what: &'static str,
        /// Its L2 norm, measured.
        norm: f64,
        /// The bound it had to meet.
        bound: f64,
    },
    /// A tensor holds NaN or infinite values where only finite ones may go.
    #[error(
        "{what} holds a non-finite value (NaN or ±inf); nothing non-finite may be scored or sent"
    )]
    NonFinite {
        /// The tensor or vector at fault.
        what: &'static str,
    },
    /// The sentence embedder failed.
    #[error(transparent)]
    Model(#[from] models::ModelError),
    /// A libtorch operation failed.
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
}

/// The result type of this crate.
pub type Result<T> = std::result::Result<T, ClientsError>;

/// An [`ClientsError::Io`] for `path`, for use with `map_err`.
pub(crate) fn io_error(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> ClientsError {
    let path = path.to_path_buf();
    move |source| ClientsError::Io { path, source }
}

impl ClientsError {
    /// Whether the user can fix this in the data they gave (a malformed line, an empty text, a
    /// client without training text), as opposed to a failure of the machine or of fedsyn.
    pub fn is_bad_input(&self) -> bool {
        matches!(
            self,
            ClientsError::BadDocument { .. }
                | ClientsError::Sotu { .. }
                | ClientsError::NoTrainText { .. }
                | ClientsError::InvalidArgument { .. }
        )
    }
}
