//! Preference pairs: text to token ids as TRL's `DPOTrainer` prepares them, and padded
//! batches for one forward pass.
//!
//! A pair is a prompt and two completions, the chosen (preferred) and the rejected one. The
//! prompt is encoded as the generator encodes prompts for sampling (so the completions are
//! scored in the context they were sampled in), each completion on its own without special
//! tokens and with the end-of-sequence token appended. The prompt keeps its last
//! `max_prompt_length` tokens (its end is what the completion continues); then each
//! completion is cut so that prompt and completion fit in `max_length`.

use serde::{Deserialize, Serialize};
use tch::{Device, Tensor};

use crate::error::{ModelError, Result};
use crate::llama::Generator;
pub use training_config::Truncation;

/// One preference pair as text (a line of a pairs JSONL file).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreferencePair {
    /// The prompt both completions continue.
    pub prompt: String,
    /// The preferred completion.
    pub chosen: String,
    /// The other completion (unused by SFT, which may leave it empty).
    pub rejected: String,
}

/// A pair as token ids, truncated, each completion ending with the end-of-sequence token
/// (unless truncation cut it off).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenizedPair {
    /// The prompt's ids.
    pub prompt: Vec<u32>,
    /// The chosen completion's ids.
    pub chosen: Vec<u32>,
    /// The rejected completion's ids (empty for SFT data).
    pub rejected: Vec<u32>,
}

impl TokenizedPair {
    /// Assembles a pair from ids as TRL does: `eos` appended to both completions, the prompt
    /// cut to its last `max_prompt_length` ids, each completion to what `max_length` leaves.
    /// `rejected` is `None` for SFT data (no rejected completion); an empty one is the bare
    /// EOS, like an empty chosen completion.
    pub fn from_ids(
        prompt: &[u32],
        chosen: &[u32],
        rejected: Option<&[u32]>,
        eos: u32,
        truncation: &Truncation,
    ) -> Result<TokenizedPair> {
        truncation.validate()?;
        if prompt.is_empty() {
            return Err(ModelError::InvalidArgument {
                name: "prompt",
                message: "a preference pair's prompt has no tokens".to_string(),
            });
        }
        let prompt = &prompt[prompt.len().saturating_sub(truncation.max_prompt_length)..];
        let room = truncation.max_length - prompt.len();
        let completion = |ids: &[u32]| -> Vec<u32> {
            let mut with_eos: Vec<u32> = ids.iter().copied().chain([eos]).collect();
            with_eos.truncate(room);
            with_eos
        };
        Ok(TokenizedPair {
            prompt: prompt.to_vec(),
            chosen: completion(chosen),
            rejected: rejected.map(completion).unwrap_or_default(),
        })
    }

    /// Encodes `pair` with the generator's tokenizer: the prompt as the generator encodes
    /// prompts for sampling (`chat`: rendered as one user turn with the model's chat
    /// template), the completions without special tokens; then [`TokenizedPair::from_ids`]
    /// with the generator's first end-of-sequence id.
    /// `with_rejected`: whether the loss uses the rejected completion (an empty one then
    /// becomes the bare EOS; without it the pair has none, as SFT data).
    pub fn encode(
        generator: &Generator,
        pair: &PreferencePair,
        chat: bool,
        with_rejected: bool,
        truncation: &Truncation,
    ) -> Result<TokenizedPair> {
        let eos = *generator
            .eos_ids()
            .first()
            .ok_or_else(|| ModelError::InvalidArgument {
                name: "model",
                message: "the model names no end-of-sequence token, which preference \
                          training appends to every completion"
                    .to_string(),
            })?;
        let prompt = generator.encode_prompt(&pair.prompt, chat)?;
        let encode =
            |text: &str| -> Result<Vec<u32>> {
                if text.is_empty() {
                    return Ok(Vec::new());
                }
                let encoding = generator.tokenizer().encode(text, false).map_err(|e| {
                    ModelError::Tokenizer {
                        source_name: "the generator's tokenizer".to_string(),
                        message: e.to_string(),
                    }
                })?;
                Ok(encoding.get_ids().to_vec())
            };
        let chosen = encode(&pair.chosen)?;
        let rejected = if with_rejected {
            Some(encode(&pair.rejected)?)
        } else {
            None
        };
        TokenizedPair::from_ids(&prompt, &chosen, rejected.as_deref(), eos, truncation)
    }
}

/// Sequences (prompt + completion) right-padded to one width, for one forward pass.
#[derive(Debug)]
pub struct SequenceBatch {
    /// `[rows, width]` token ids (int64), padding filled with id 0.
    pub input_ids: Tensor,
    /// `[rows, width]`, 1 at real tokens, 0 at padding.
    pub attention_mask: Tensor,
    /// `[rows, width]`, 1 at completion tokens (the tokens whose log-probabilities count),
    /// 0 at prompt tokens and padding.
    pub completion_mask: Tensor,
    /// Real (unpadded) tokens in the batch.
    pub tokens: usize,
}

impl SequenceBatch {
    /// Right-pads `rows` (prompt, completion) onto `device`.
    pub fn new(rows: &[(&[u32], &[u32])], device: Device) -> SequenceBatch {
        let width = rows
            .iter()
            .map(|(p, c)| p.len() + c.len())
            .max()
            .unwrap_or(0)
            .max(1);
        let mut ids = Vec::with_capacity(rows.len() * width);
        let mut attention = Vec::with_capacity(rows.len() * width);
        let mut completion = Vec::with_capacity(rows.len() * width);
        let mut tokens = 0;
        for (prompt, answer) in rows {
            let length = prompt.len() + answer.len();
            tokens += length;
            ids.extend(prompt.iter().chain(answer.iter()).map(|&id| i64::from(id)));
            ids.extend(std::iter::repeat_n(0, width - length));
            attention.extend(std::iter::repeat_n(1i64, length));
            attention.extend(std::iter::repeat_n(0, width - length));
            completion.extend(std::iter::repeat_n(0i64, prompt.len()));
            completion.extend(std::iter::repeat_n(1, answer.len()));
            completion.extend(std::iter::repeat_n(0, width - length));
        }
        let shape = [rows.len() as i64, width as i64];
        let tensor = |values: &[i64]| Tensor::from_slice(values).view(shape).to_device(device);
        SequenceBatch {
            input_ids: tensor(&ids),
            attention_mask: tensor(&attention),
            completion_mask: tensor(&completion),
            tokens,
        }
    }

    /// The chosen sequences of `pairs`, then their rejected ones (TRL's concatenated batch:
    /// one forward pass scores both halves).
    pub fn chosen_then_rejected(pairs: &[&TokenizedPair], device: Device) -> SequenceBatch {
        let rows: Vec<(&[u32], &[u32])> = pairs
            .iter()
            .map(|p| (p.prompt.as_slice(), p.chosen.as_slice()))
            .chain(
                pairs
                    .iter()
                    .map(|p| (p.prompt.as_slice(), p.rejected.as_slice())),
            )
            .collect();
        SequenceBatch::new(&rows, device)
    }

    /// The chosen sequences of `pairs` only (supervised fine-tuning).
    pub fn chosen(pairs: &[&TokenizedPair], device: Device) -> SequenceBatch {
        let rows: Vec<(&[u32], &[u32])> = pairs
            .iter()
            .map(|p| (p.prompt.as_slice(), p.chosen.as_slice()))
            .collect();
        SequenceBatch::new(&rows, device)
    }

    /// Number of rows.
    pub fn rows(&self) -> i64 {
        self.input_ids.size()[0]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The number of completion tokens in `batch`.
    fn completion_tokens(batch: &SequenceBatch) -> Result<i64> {
        Ok(i64::try_from(
            batch
                .completion_mask
                .sum(tch::Kind::Int64)
                .to_device(Device::Cpu),
        )?)
    }

    fn lengths(max_prompt_length: usize, max_length: usize) -> Truncation {
        Truncation {
            max_prompt_length,
            max_length,
        }
    }

    #[test]
    fn prompts_keep_their_end_and_completions_get_eos_then_fit() {
        let pair =
            TokenizedPair::from_ids(&[1, 2, 3, 4, 5], &[6, 7, 8], Some(&[9]), 0, &lengths(3, 6))
                .unwrap();
        assert_eq!(pair.prompt, [3, 4, 5]);
        assert_eq!(pair.chosen, [6, 7, 8]); // EOS cut: 3 + 4 > 6
        assert_eq!(pair.rejected, [9, 0]);
        let roomy = TokenizedPair::from_ids(&[1], &[2], None, 0, &lengths(4, 8)).unwrap();
        assert_eq!(roomy.chosen, [2, 0]);
        assert!(
            roomy.rejected.is_empty(),
            "SFT data has no rejected completion"
        );
        // An empty sampled completion is still a completion: the bare EOS.
        let empty = TokenizedPair::from_ids(&[1], &[], Some(&[]), 0, &lengths(4, 8)).unwrap();
        assert_eq!((empty.chosen, empty.rejected), (vec![0], vec![0]));
        assert!(roomy.rejected.is_empty());
        let no_room =
            TokenizedPair::from_ids(&[1], &[2], Some(&[3]), 0, &lengths(4, 4)).unwrap_err();
        assert!(no_room.to_string().contains("max_length"), "{no_room}");
    }

    #[test]
    fn batches_pad_right_and_mark_only_completions() {
        let a =
            TokenizedPair::from_ids(&[10, 11], &[12], Some(&[13, 14]), 2, &lengths(4, 8)).unwrap();
        let b =
            TokenizedPair::from_ids(&[20], &[21, 22, 23], Some(&[24]), 2, &lengths(4, 8)).unwrap();
        let batch = SequenceBatch::chosen_then_rejected(&[&a, &b], Device::Cpu);
        let ids = Vec::<Vec<i64>>::try_from(&batch.input_ids).unwrap();
        assert_eq!(
            ids,
            [
                vec![10, 11, 12, 2, 0],
                vec![20, 21, 22, 23, 2],
                vec![10, 11, 13, 14, 2],
                vec![20, 24, 2, 0, 0]
            ]
        );
        let completion = Vec::<Vec<i64>>::try_from(&batch.completion_mask).unwrap();
        assert_eq!(completion[0], [0, 0, 1, 1, 0]);
        assert_eq!(completion[3], [0, 1, 1, 0, 0]);
        let attention = Vec::<Vec<i64>>::try_from(&batch.attention_mask).unwrap();
        assert_eq!(attention[3], [1, 1, 1, 0, 0]);
        assert_eq!(batch.tokens, 4 + 5 + 5 + 3);
        assert_eq!(completion_tokens(&batch).unwrap(), 2 + 4 + 3 + 2);
    }
}
