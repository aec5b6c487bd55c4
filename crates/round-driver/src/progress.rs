//! Progress of the long phases of a round (sampling, embedding, scoring, training), for the
//! command line's progress bars and log lines.

/// Receives the progress of a round's phases.
pub trait Progress {
    /// A phase starts with `total` units of work.
    fn start(&self, phase: &'static str, total: u64);
    /// `done` more units of the current phase are finished.
    fn advance(&self, done: u64);
    /// The current phase is over.
    fn finish(&self);
}

/// Progress that goes nowhere.
pub struct Silent;

impl Progress for Silent {
    fn start(&self, _: &'static str, _: u64) {}
    fn advance(&self, _: u64) {}
    fn finish(&self) {}
}
