//! The protocol between `fedsyn serve` and `fedsyn client`, one definition for both ends: the
//! JSON messages of the HTTP API ([`messages`]; the server's OpenAPI document is derived from
//! them), the binary form of a round's candidate embeddings ([`wire`]), and the POPri score in
//! plain Rust ([`score`]), which a client computes without libtorch and against which the
//! server's tensor path is tested.

pub mod error;
pub mod messages;
pub mod score;
pub mod wire;

pub use error::ProtocolError;
pub use score::score_candidates;
pub use wire::{decode_candidates, encode_candidates, CandidateMatrix, EmbeddingDtype};
