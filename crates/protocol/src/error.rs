//! Errors of the candidate format and the plain-Rust score, each naming the field or argument
//! at fault.

use thiserror::Error;

/// A candidate message that cannot be read, or scores that cannot be computed from it.
#[derive(Debug, Error)]
pub enum ProtocolError {
    /// The candidate message of a round is malformed (see [`crate::wire`]).
    #[error("bad candidate message: {field}: {problem}")]
    BadCandidates {
        /// The field of the wire format at fault.
        field: &'static str,
        /// What is wrong with it.
        problem: String,
    },
    /// An argument of the score (the clip bound, the texts' embeddings) cannot be used.
    #[error("invalid {name}: {message}")]
    InvalidArgument {
        /// The argument at fault.
        name: &'static str,
        /// What is wrong and how to fix it.
        message: String,
    },
    /// A vector about to be sent is longer than the sensitivity the accountant assumes: a bug
    /// in the clipping arithmetic, never the user's input, so nothing is sent.
    #[error("{what}: its norm {norm} exceeds the bound {bound} that the privacy accounting assumes; not sent (this is a bug in fedsyn: please report it)")]
    SensitivityViolated {
        /// The vector at fault.
        what: &'static str,
        /// Its L2 norm, measured.
        norm: f64,
        /// The bound it had to meet.
        bound: f64,
    },
    /// A value that must be finite is not.
    #[error("{what} holds a non-finite value (NaN or ±inf); nothing non-finite is scored or sent")]
    NonFinite {
        /// The vector at fault.
        what: &'static str,
    },
}

impl ProtocolError {
    /// Whether the user can fix this in what they gave (an argument of the score), as opposed
    /// to a malformed message from the server.
    pub fn is_bad_input(&self) -> bool {
        matches!(self, ProtocolError::InvalidArgument { .. })
    }
}

/// The result type of the protocol's functions.
pub type Result<T> = std::result::Result<T, ProtocolError>;
