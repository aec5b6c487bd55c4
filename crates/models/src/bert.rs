//! Sentence embeddings with a BERT encoder, as sentence-transformers computes them for
//! all-MiniLM-L6-v2: WordPiece tokens (truncated to the model's `max_seq_length`) → BERT
//! encoder → mean of the token states over the attention mask → L2 normalisation.
//!
//! Texts are embedded in batches of similar length (sorted by token count, padded only to the
//! longest text of each batch), and the results are returned in input order.

pub mod config;
mod encoder;

use std::path::{Path, PathBuf};

use tch::{Device, Kind, Tensor};
use tokenizers::{Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy};

use crate::device::compute_kind;
use crate::error::{ModelError, Result};
use crate::safetensors_io::SafetensorsFile;
use crate::tokenizer::from_tokenizer_json;
use config::{BertConfig, SentencePipeline};
use encoder::BertEncoder;

/// The id of `[PAD]` in BERT vocabularies; padded positions are masked, so any id would do.
const PAD_ID: i64 = 0;

/// A sentence embedder loaded from a sentence-transformers folder (`config.json`,
/// `model.safetensors`, `tokenizer.json`, `modules.json`, `sentence_bert_config.json`, the
/// pooling module's `config.json`).
#[derive(Debug)]
pub struct SentenceEmbedder {
    tokenizer: Tokenizer,
    encoder: BertEncoder,
    config: BertConfig,
    pipeline: SentencePipeline,
    device: Device,
    kind: Kind,
    dir: PathBuf,
}

impl SentenceEmbedder {
    /// Loads the model in `dir` onto `device`, computing in [`compute_kind`]`(device)` (bf16 on
    /// CUDA, fp32 on the CPU).
    pub fn load(dir: &Path, device: Device) -> Result<SentenceEmbedder> {
        Self::load_as(dir, device, compute_kind(device))
    }

    /// Loads the model in `dir` onto `device`, computing in `kind`.
    pub fn load_as(dir: &Path, device: Device, kind: Kind) -> Result<SentenceEmbedder> {
        let config = BertConfig::from_file(&dir.join("config.json"))?;
        let pipeline = SentencePipeline::from_dir(dir)?;
        // Longer inputs would run past the position-embedding table.
        let max_seq_length = pipeline
            .max_seq_length
            .min(config.max_position_embeddings as usize);
        let pipeline = SentencePipeline {
            max_seq_length,
            ..pipeline
        };
        let tokenizer = sentence_tokenizer(&dir.join("tokenizer.json"), max_seq_length)?;
        let weights = SafetensorsFile::open(&dir.join("model.safetensors"))?;
        let encoder = tch::no_grad(|| BertEncoder::load(&weights, &config, device, kind))?;
        Ok(SentenceEmbedder {
            tokenizer,
            encoder,
            config,
            pipeline,
            device,
            kind,
            dir: dir.to_path_buf(),
        })
    }

    /// The length of every embedding (the encoder's hidden size, 384 for MiniLM-L6).
    pub fn dim(&self) -> usize {
        self.config.hidden_size as usize
    }

    /// Inputs are truncated to this many tokens, `[CLS]` and `[SEP]` included.
    pub fn max_seq_length(&self) -> usize {
        self.pipeline.max_seq_length
    }

    /// The device the model runs on.
    pub fn device(&self) -> Device {
        self.device
    }

    /// The dtype the model computes in (embeddings are always returned as f32).
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// The folder the model was loaded from.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The encoder's hyper-parameters.
    pub fn config(&self) -> &BertConfig {
        &self.config
    }

    /// Embeds `texts`, `batch_size` at a time; one embedding of [`dim`](Self::dim) values per
    /// text, in input order.
    pub fn embed<S: AsRef<str>>(&self, texts: &[S], batch_size: usize) -> Result<Vec<Vec<f32>>> {
        let embeddings = self.embed_tensor(texts, batch_size)?;
        let flat = Vec::<f32>::try_from(embeddings.f_flatten(0, -1)?)?;
        Ok(flat
            .chunks(self.dim().max(1))
            .map(<[f32]>::to_vec)
            .collect())
    }

    /// Embeds `texts`, `batch_size` at a time, into an f32 CPU tensor of shape
    /// [texts, [`dim`](Self::dim)], row i belonging to `texts[i]`.
    pub fn embed_tensor<S: AsRef<str>>(&self, texts: &[S], batch_size: usize) -> Result<Tensor> {
        if batch_size == 0 {
            return Err(ModelError::InvalidArgument {
                name: "batch size",
                message: "must be at least 1".to_string(),
            });
        }
        let _no_grad = tch::no_grad_guard();
        let token_ids = self.tokenize(texts)?;
        let mut output = Tensor::f_zeros(
            [texts.len() as i64, self.dim() as i64],
            (Kind::Float, Device::Cpu),
        )?;
        for batch in length_sorted_batches(&token_ids, batch_size) {
            let rows: Vec<&[u32]> = batch.iter().map(|&i| token_ids[i].as_slice()).collect();
            let embedded = self.embed_batch(&rows)?;
            let positions: Vec<i64> = batch.iter().map(|&i| i as i64).collect();
            // Rows go back to their input positions (in place; the returned alias is unused).
            let positions = Tensor::f_from_slice(&positions)?;
            let _ = output.f_index_copy_(0, &positions, &embedded)?;
        }
        Ok(output)
    }

    /// The number of tokens the model sees for each text, after truncation and including
    /// `[CLS]` and `[SEP]`.
    pub fn token_counts<S: AsRef<str>>(&self, texts: &[S]) -> Result<Vec<usize>> {
        Ok(self.tokenize(texts)?.iter().map(Vec::len).collect())
    }

    /// Token ids of every text, `[CLS] … [SEP]`, truncated to `max_seq_length`.
    fn tokenize<S: AsRef<str>>(&self, texts: &[S]) -> Result<Vec<Vec<u32>>> {
        // With `do_lower_case`, sentence-transformers lower-cases before WordPiece.
        let prepared: Vec<String> = texts
            .iter()
            .map(|text| {
                let text = text.as_ref();
                if self.pipeline.lowercase {
                    text.to_lowercase()
                } else {
                    text.to_string()
                }
            })
            .collect();
        let encodings =
            self.tokenizer
                .encode_batch(prepared, true)
                .map_err(|e| ModelError::Tokenizer {
                    source_name: self.dir.join("tokenizer.json").display().to_string(),
                    message: e.to_string(),
                })?;
        Ok(encodings
            .into_iter()
            .map(|encoding| encoding.get_ids().to_vec())
            .collect())
    }

    /// Embeds one batch of token-id rows: pads them to the longest, runs the encoder, pools.
    /// Returns [rows, dim] f32 on the CPU.
    fn embed_batch(&self, rows: &[&[u32]]) -> Result<Tensor> {
        let (token_ids, attention_mask) = padded_batch(rows, self.device)?;
        let hidden = self.encoder.forward(&token_ids, &attention_mask)?;
        let pooled = mean_pool(&hidden.f_to_kind(Kind::Float)?, &attention_mask)?;
        let embeddings = if self.pipeline.normalize {
            l2_normalize(&pooled)?
        } else {
            pooled
        };
        Ok(embeddings.f_to_device(Device::Cpu)?)
    }
}

/// The tokenizer of `tokenizer.json` with sentence-transformers' truncation (`max_length`
/// tokens including the special ones, cutting the end) and without the file's own fixed
/// padding: batches are padded here, to their longest row.
fn sentence_tokenizer(path: &Path, max_length: usize) -> Result<Tokenizer> {
    let mut tokenizer = from_tokenizer_json(path)?;
    tokenizer
        .with_truncation(Some(TruncationParams {
            direction: TruncationDirection::Right,
            max_length,
            strategy: TruncationStrategy::LongestFirst,
            stride: 0,
        }))
        .map_err(|e| ModelError::Tokenizer {
            source_name: path.display().to_string(),
            message: e.to_string(),
        })?;
    tokenizer.with_padding(None);
    Ok(tokenizer)
}

/// Input indices grouped into batches of at most `batch_size`, longest texts first, so that
/// each batch holds texts of similar length and little padding.
fn length_sorted_batches(token_ids: &[Vec<u32>], batch_size: usize) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..token_ids.len()).collect();
    // Stable: equal lengths keep input order.
    order.sort_by_key(|&i| std::cmp::Reverse(token_ids[i].len()));
    order.chunks(batch_size).map(<[usize]>::to_vec).collect()
}

/// Right-pads `rows` to the longest: token ids [rows, seq] int64 and the attention mask
/// [rows, seq] bool (true on real tokens), both on `device`.
fn padded_batch(rows: &[&[u32]], device: Device) -> Result<(Tensor, Tensor)> {
    let seq_len = rows.iter().map(|row| row.len()).max().unwrap_or(0);
    let mut ids = vec![PAD_ID; rows.len() * seq_len];
    let mut mask = vec![false; rows.len() * seq_len];
    for (r, row) in rows.iter().enumerate() {
        let start = r * seq_len;
        for (slot, &id) in ids[start..start + row.len()].iter_mut().zip(row.iter()) {
            *slot = i64::from(id);
        }
        mask[start..start + row.len()].fill(true);
    }
    let shape = [rows.len() as i64, seq_len as i64];
    let ids = Tensor::f_from_slice(&ids)?
        .f_view(shape)?
        .f_to_device(device)?;
    let mask = Tensor::f_from_slice(&mask)?
        .f_view(shape)?
        .f_to_device(device)?;
    Ok((ids, mask))
}

/// Mean of the token states over real tokens: Σ mask·h / max(Σ mask, 1e-9), as
/// sentence-transformers' mean pooling. `hidden`: [rows, seq, dim]; `mask`: [rows, seq].
fn mean_pool(hidden: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let weights = mask.f_to_kind(hidden.kind())?.f_unsqueeze(-1)?;
    let summed = hidden.f_mul(&weights)?.f_sum_dim_intlist(1, false, None)?;
    let counts = weights
        .f_sum_dim_intlist(1, false, None)?
        .f_clamp_min(1e-9)?;
    Ok(summed.f_div(&counts)?)
}

/// Scales every row to unit Euclidean length: x / max(‖x‖₂, 1e-12), as
/// `torch.nn.functional.normalize`.
fn l2_normalize(rows: &Tensor) -> Result<Tensor> {
    let norms = rows
        .f_norm_scalaropt_dim(2, [-1i64].as_slice(), true)?
        .f_clamp_min(1e-12)?;
    Ok(rows.f_div(&norms)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_group_similar_lengths_and_cover_every_input_once() {
        let lengths = [3usize, 9, 1, 9, 5, 2, 7];
        let rows: Vec<Vec<u32>> = lengths.iter().map(|&n| vec![1; n]).collect();
        let batches = length_sorted_batches(&rows, 3);
        assert_eq!(batches, vec![vec![1, 3, 6], vec![4, 0, 5], vec![2]]);
    }

    #[test]
    fn padding_masks_exactly_the_added_positions() {
        let rows: [&[u32]; 2] = [&[101, 7, 102], &[101, 102]];
        let (ids, mask) = padded_batch(&rows, Device::Cpu).unwrap();
        assert_eq!(ids.size(), [2, 3]);
        assert_eq!(
            Vec::<i64>::try_from(ids.flatten(0, -1)).unwrap(),
            [101, 7, 102, 101, 102, PAD_ID]
        );
        assert_eq!(
            Vec::<bool>::try_from(mask.flatten(0, -1)).unwrap(),
            [true, true, true, true, true, false]
        );
    }

    #[test]
    fn mean_pooling_ignores_padding_and_normalising_gives_unit_rows() {
        // Row 0: tokens (1, 2) and (3, 4), then padding that must not count; row 1: one
        // token (0, 0), then padding.
        let hidden = Tensor::from_slice(&[
            1.0f32, 2.0, 3.0, 4.0, 100.0, 100.0, //
            0.0, 0.0, 7.0, 7.0, 9.0, 9.0,
        ])
        .view([2, 3, 2]);
        let mask = Tensor::from_slice(&[true, true, false, true, false, false]).view([2, 3]);
        let pooled = mean_pool(&hidden, &mask).unwrap();
        let values = Vec::<f32>::try_from(pooled.flatten(0, -1)).unwrap();
        assert_eq!(values, [2.0, 3.0, 0.0, 0.0]);
        let normalized = l2_normalize(&pooled).unwrap();
        let values = Vec::<f32>::try_from(normalized.flatten(0, -1)).unwrap();
        let expected = [2.0 / 13f32.sqrt(), 3.0 / 13f32.sqrt()];
        assert!((values[0] - expected[0]).abs() < 1e-6 && (values[1] - expected[1]).abs() < 1e-6);
        // A zero row stays zero instead of turning into NaN.
        assert_eq!(&values[2..], [0.0, 0.0]);
    }
}
