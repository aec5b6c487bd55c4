//! Fixtures shared by this crate's unit tests.

use crate::data::{ClientData, FederatedData};

/// A release grid as the server uses (2^−30 of a clip bound of 1).
pub const GRID: f64 = 1.0 / (1u64 << 30) as f64;

/// Clients with `counts[i]` texts each (the texts themselves are never read).
pub fn data_with_text_counts(counts: &[usize]) -> FederatedData {
    let clients = counts
        .iter()
        .enumerate()
        .map(|(i, &count)| ClientData {
            id: format!("client-{i:02}"),
            train: (0..count).map(|t| format!("text {t}")).collect(),
            eval: Vec::new(),
        })
        .collect();
    FederatedData {
        clients,
        eval_only: Vec::new(),
    }
}
