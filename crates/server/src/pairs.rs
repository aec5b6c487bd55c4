//! Preference pairs from the noisy aggregate: for every prompt, its best candidate (chosen)
//! against the candidate at a fixed lower rank (rejected).
//!
//! Candidates are laid out prompt-major: candidate k of prompt j has the global index j·K + k.
//! Ranks order scores descending with ties broken by the lower candidate index, so the result
//! depends on indices only, never on the candidates' strings (the reference ranked strings and
//! let duplicates share a score).

use serde::{Deserialize, Serialize};

use crate::error::{Result, ServerError};

/// One preference pair, as global candidate indices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RankedPair {
    /// The prompt index j.
    pub prompt: usize,
    /// Global index of the rank-0 (highest scored) candidate.
    pub chosen: usize,
    /// Global index of the candidate at the rejected rank.
    pub rejected: usize,
}

/// One pair per prompt: chosen = rank 0, rejected = rank `rejected_rank` (reference: 4 of 10).
pub fn preference_pairs(
    noisy: &[f64],
    prompts: usize,
    per_prompt: usize,
    rejected_rank: usize,
) -> Result<Vec<RankedPair>> {
    check_layout(noisy, "noisy", prompts, per_prompt)?;
    if rejected_rank == 0 || rejected_rank >= per_prompt {
        return Err(ServerError::argument(
            "rejected_rank",
            rejected_rank,
            format!("a rank in 1..{per_prompt} (rank 0 is the chosen candidate)"),
        ));
    }
    Ok((0..prompts)
        .map(|prompt| {
            let order = ranking(noisy, prompt, per_prompt);
            RankedPair {
                prompt,
                chosen: order[0],
                rejected: order[rejected_rank],
            }
        })
        .collect())
}

/// The fraction of prompts whose chosen (rank-0) candidate is the same under the noisy and the
/// clean scores. A simulation-only diagnostic: the clean scores are private.
pub fn preference_agreement(
    noisy: &[f64],
    clean: &[f64],
    prompts: usize,
    per_prompt: usize,
) -> Result<f64> {
    check_layout(noisy, "noisy", prompts, per_prompt)?;
    check_layout(clean, "clean", prompts, per_prompt)?;
    let agreeing = (0..prompts)
        .filter(|&prompt| {
            ranking(noisy, prompt, per_prompt)[0] == ranking(clean, prompt, per_prompt)[0]
        })
        .count();
    Ok(agreeing as f64 / prompts as f64)
}

/// Global indices of `prompt`'s candidates from the highest score down; ties keep index order.
fn ranking(scores: &[f64], prompt: usize, per_prompt: usize) -> Vec<usize> {
    let start = prompt * per_prompt;
    let mut order: Vec<usize> = (start..start + per_prompt).collect();
    // A stable sort on the score alone keeps tied candidates in index order.
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    order
}

fn check_layout(
    scores: &[f64],
    name: &'static str,
    prompts: usize,
    per_prompt: usize,
) -> Result<()> {
    if prompts == 0 || per_prompt < 2 {
        return Err(ServerError::argument(
            "layout",
            format!("{prompts} prompts x {per_prompt} candidates"),
            "at least 1 prompt and 2 candidates per prompt",
        ));
    }
    let expected = prompts.checked_mul(per_prompt);
    if expected != Some(scores.len()) {
        return Err(ServerError::argument(
            name,
            format!("{} scores", scores.len()),
            format!("one score per candidate: {prompts} prompts x {per_prompt} candidates"),
        ));
    }
    if let Some(bad) = scores.iter().position(|s| !s.is_finite()) {
        return Err(ServerError::argument(
            name,
            format!("{} at candidate {bad}", scores[bad]),
            "finite scores only (a NaN or infinity means a broken aggregate)",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_take_rank_zero_and_the_rejected_rank() {
        // Prompt 0: scores 0.1 .. 0.5 ascending → rank 0 is candidate 4, rank 2 is candidate 2.
        // Prompt 1: descending → rank 0 is 5, rank 2 is 7.
        let noisy = [0.1, 0.2, 0.3, 0.4, 0.5, 0.5, 0.4, 0.3, 0.2, 0.1];
        let pairs = preference_pairs(&noisy, 2, 5, 2).unwrap();
        assert_eq!(
            pairs,
            vec![
                RankedPair {
                    prompt: 0,
                    chosen: 4,
                    rejected: 2
                },
                RankedPair {
                    prompt: 1,
                    chosen: 5,
                    rejected: 7
                },
            ]
        );
    }

    #[test]
    fn ties_go_to_the_lower_index() {
        let noisy = [1.0, 3.0, 3.0, 2.0, 2.0];
        let pairs = preference_pairs(&noisy, 1, 5, 3).unwrap();
        // Order: 1, 2 (tied at 3), 3, 4 (tied at 2), 0.
        assert_eq!((pairs[0].chosen, pairs[0].rejected), (1, 4));
        let flat = [0.0; 4];
        let pairs = preference_pairs(&flat, 1, 4, 1).unwrap();
        assert_eq!((pairs[0].chosen, pairs[0].rejected), (0, 1));
    }

    #[test]
    fn bad_inputs_are_errors() {
        assert!(preference_pairs(&[1.0, f64::NAN], 1, 2, 1)
            .unwrap_err()
            .to_string()
            .contains("candidate 1"));
        assert!(preference_pairs(&[1.0; 5], 2, 3, 1).is_err());
        assert!(preference_pairs(&[1.0; 6], 2, 3, 3).is_err());
        assert!(preference_pairs(&[1.0; 6], 2, 3, 0).is_err());
        assert!(preference_pairs(&[], 0, 3, 1).is_err());
    }

    #[test]
    fn agreement_counts_matching_winners() {
        let clean = [0.9, 0.1, 0.0, 0.2, 0.8, 0.0];
        let noisy = [0.95, 0.1, 0.0, 0.9, 0.2, 0.0];
        assert_eq!(preference_agreement(&noisy, &clean, 2, 3).unwrap(), 0.5);
        assert_eq!(preference_agreement(&clean, &clean, 2, 3).unwrap(), 1.0);
        assert!(preference_agreement(&noisy, &clean[..3], 2, 3).is_err());
    }
}
