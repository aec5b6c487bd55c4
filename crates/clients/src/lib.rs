//! The clients' side of fedsyn: their private documents ([`data`], [`sotu`]), the embeddings of
//! those documents computed once and cached on disk ([`embeddings`]), the POPri score vector a
//! client sends for a round's candidates ([`scores`]), and a simulated population of many
//! clients that produces the sum of their score vectors in bounded memory ([`population`]).
//! Private Evolution's clients send normalised nearest-neighbour vote histograms instead
//! ([`pe`]).
//!
//! Everything here reads private data; only the clipped score vectors (or vote histograms)
//! leave a client.

pub mod data;
pub mod embeddings;
pub mod error;
mod files;
mod hash;
pub mod local_update;
pub mod pe;
pub mod population;
pub mod profile;
pub mod scores;
pub mod sotu;
#[cfg(test)]
mod test_support;

pub use data::{read_documents, sample_per_client, ClientData, Document, FederatedData};
pub use embeddings::embed_cached;
pub use error::{ClientsError, Result};
pub use local_update::{clip_update, local_update, ClippedUpdate, LocalTraining, LocalUpdate};
pub use pe::{client_votes, NormalisedVotes, VoteSum, VotingPopulation};
pub use population::{ScoreSum, SimulatedPopulation};
pub use scores::{client_score_vector, ClippedScores};
pub use sotu::{sotu_documents, write_documents};
