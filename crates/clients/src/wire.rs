//! The binary form in which a server sends a round's candidate embeddings to its clients. The
//! format and its checks live in [`protocol::wire`] (a crate without libtorch, for
//! `fedsyn client`); this module is the server's door to it, with this crate's error type.

pub use protocol::wire::{
    encode_candidates, CandidateMatrix, EmbeddingDtype, HEADER_LEN, MAGIC, MAX_VALUES,
};

use crate::error::{ClientsError, Result};

/// The candidate matrix in `bytes` (a message from [`encode_candidates`]), every field checked
/// (see [`protocol::wire::decode_candidates`]); errors name the field.
pub fn decode_candidates(bytes: &[u8]) -> Result<CandidateMatrix> {
    protocol::wire::decode_candidates(bytes).map_err(|error| match error {
        protocol::ProtocolError::BadCandidates { field, problem } => {
            ClientsError::BadCandidates { field, problem }
        }
        other => ClientsError::BadCandidates {
            field: "message",
            problem: other.to_string(),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decoding_errors_name_the_field() {
        let matrix = CandidateMatrix {
            round: 1,
            clip: 2.0,
            rows: 2,
            dim: 2,
            values: vec![0.5, -0.5, 0.25, 1.0],
        };
        let mut bytes = encode_candidates(&matrix, EmbeddingDtype::F32, true);
        assert_eq!(decode_candidates(&bytes).unwrap(), matrix);
        bytes[0] = b'X';
        match decode_candidates(&bytes).unwrap_err() {
            ClientsError::BadCandidates { field, .. } => assert_eq!(field, "magic"),
            other => panic!("{other}"),
        }
    }
}
