//! Errors of the remote client, each naming the argument, file, request or field at fault
//! and the fix.

use std::path::PathBuf;

use thiserror::Error;

/// Everything that can go wrong while a client reads its data and talks to the server.
#[derive(Debug, Error)]
pub enum RemoteError {
    /// An argument, file or setting the user gave cannot be used.
    #[error("invalid {name}: {message}")]
    InvalidArgument {
        /// The argument (`--server`, `--data`, …).
        name: &'static str,
        /// What is wrong and how to fix it.
        message: String,
    },
    /// A line of the client's data file is not a `{"text": …}` object.
    #[error("{path}:{line}: {problem}; each line must be a JSON object like {{\"text\": \"…\"}}")]
    BadLine {
        /// The JSONL file.
        path: PathBuf,
        /// The 1-based line number.
        line: usize,
        /// What is wrong with the line.
        problem: String,
    },
    /// The operating system refused to read or write a file in the state folder.
    #[error("cannot access {path}: {source}")]
    Io {
        /// The file or folder at fault.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The server refused the enrolment token.
    #[error(
        "enrolment refused (HTTP {status}): {detail}; the token is wrong or was used before: \
         ask the server's operator for a new one"
    )]
    EnrolmentRefused {
        /// The HTTP status.
        status: u16,
        /// The server's explanation.
        detail: String,
    },
    /// The server answered a request with an error no retry can change.
    #[error("{request}: the server answered HTTP {status}: {detail}")]
    ServerRefused {
        /// The request, e.g. `GET /v1/tasks/next`.
        request: String,
        /// The HTTP status.
        status: u16,
        /// The server's explanation.
        detail: String,
    },
    /// The server stayed unreachable or failing for longer than the client waits.
    #[error(
        "{request}: gave up after {waited_seconds} s of failures (last: {last}); check that the \
         server runs and that --server is right, or wait longer with --max-wait-seconds"
    )]
    ServerUnreachable {
        /// The request, e.g. `GET /v1/tasks/next`.
        request: String,
        /// How long the client tried.
        waited_seconds: u64,
        /// The last failure.
        last: String,
    },
    /// The server's answer does not follow the protocol (or TLS failed).
    #[error("{request}: {problem}")]
    Protocol {
        /// The request, e.g. `GET /v1/tasks/next`.
        request: String,
        /// What is wrong with the answer.
        problem: String,
    },
    /// The round's candidate message is malformed, or its scores cannot be computed.
    #[error(transparent)]
    Candidates(#[from] protocol::ProtocolError),
}

impl RemoteError {
    /// Whether the user can fix this in what they gave (a flag, the data file, the enrolment
    /// token), as opposed to a failure of the server, the network or fedsyn.
    pub fn is_bad_input(&self) -> bool {
        matches!(
            self,
            RemoteError::InvalidArgument { .. }
                | RemoteError::BadLine { .. }
                | RemoteError::EnrolmentRefused { .. }
        ) || matches!(self, RemoteError::Candidates(error) if error.is_bad_input())
    }
}

/// The result type of the remote client.
pub type Result<T> = std::result::Result<T, RemoteError>;

/// A [`RemoteError::Io`] for `path`, for use with `map_err`.
pub(crate) fn io_error(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> RemoteError {
    let path = path.to_path_buf();
    move |source| RemoteError::Io { path, source }
}
