//! What can go wrong in a SecAgg+ session.

/// A protocol message refused, or a session that cannot produce its sum.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProtocolError {
    /// The message belongs to another step than the session's current one.
    #[error("this session is at step `{current}`, not `{sent}`; fetch the session again and send the message of its current step")]
    WrongStep {
        current: &'static str,
        sent: &'static str,
    },
    /// The sender is not (or no longer) a participant of the current step.
    #[error("you are not a participant of this step (you were not sampled, or you missed an earlier step of this session)")]
    NotParticipant,
    /// The sender already sent a different message for this step.
    #[error(
        "you already sent a different message for this step; a step takes one message per client"
    )]
    Conflict,
    /// The message is malformed (lengths, recipients, share kinds).
    #[error("invalid message: {0}")]
    Invalid(String),
    /// What the server sent a client breaks the protocol's rules: the client refuses to go on.
    #[error("the server's message breaks the protocol, refused: {0}")]
    Refused(String),
    /// Too few clients answered the unmasking for the sum to be recovered.
    #[error("the sum cannot be unmasked: {0}")]
    Unrecoverable(String),
    /// The operating system's randomness failed.
    #[error("the operating system's random number generator failed: {0}")]
    Randomness(String),
}

pub type Result<T> = std::result::Result<T, ProtocolError>;
