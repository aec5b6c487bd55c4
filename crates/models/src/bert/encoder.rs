//! The BERT encoder (Devlin et al., 2019) as Hugging Face's `BertModel` computes it, for
//! inference: embeddings, then post-LayerNorm Transformer layers. Padding is handled by the
//! attention mask alone; the pooler head is not used by sentence embedders and is not loaded.

use tch::{Device, Kind, Tensor};

use super::config::BertConfig;
use crate::error::Result;
use crate::llama::Linear;
use crate::safetensors_io::SafetensorsFile;

/// Where the weights come from, on which device and in which dtype.
struct WeightSource<'a> {
    file: &'a SafetensorsFile,
    device: Device,
    kind: Kind,
}

impl WeightSource<'_> {
    fn tensor(&self, name: &str, shape: &[i64]) -> Result<Tensor> {
        self.file.tensor(name, shape, self.device, self.kind)
    }
}

/// Loads `y = x Wᵀ + b` layers as the generator's [`Linear`] (one implementation of the affine
/// map, with its faster oneDNN path for fp32 on the CPU).
fn load_linear(source: &WeightSource, prefix: &str, inputs: i64, outputs: i64) -> Result<Linear> {
    Ok(Linear::new(
        source.tensor(&format!("{prefix}.weight"), &[outputs, inputs])?,
        Some(source.tensor(&format!("{prefix}.bias"), &[outputs])?),
    ))
}

/// Layer normalisation over the last (hidden) dimension, with a learned scale and shift.
#[derive(Debug)]
struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl LayerNorm {
    fn load(source: &WeightSource, prefix: &str, config: &BertConfig) -> Result<LayerNorm> {
        let width = config.hidden_size;
        Ok(LayerNorm {
            weight: source.tensor(&format!("{prefix}.weight"), &[width])?,
            bias: source.tensor(&format!("{prefix}.bias"), &[width])?,
            eps: config.layer_norm_eps,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let width = self.weight.size();
        Ok(x.f_layer_norm(width, Some(&self.weight), Some(&self.bias), self.eps, true)?)
    }
}

/// Token embeddings: word + learned absolute position + token type, then LayerNorm.
#[derive(Debug)]
struct Embeddings {
    word: Tensor,
    position: Tensor,
    /// The row for token type 0: single-sentence inputs use no other.
    first_token_type: Tensor,
    norm: LayerNorm,
}

impl Embeddings {
    fn load(source: &WeightSource, config: &BertConfig) -> Result<Embeddings> {
        let width = config.hidden_size;
        let token_types = source.tensor(
            "embeddings.token_type_embeddings.weight",
            &[config.type_vocab_size, width],
        )?;
        Ok(Embeddings {
            word: source.tensor(
                "embeddings.word_embeddings.weight",
                &[config.vocab_size, width],
            )?,
            position: source.tensor(
                "embeddings.position_embeddings.weight",
                &[config.max_position_embeddings, width],
            )?,
            first_token_type: token_types.f_get(0)?,
            norm: LayerNorm::load(source, "embeddings.LayerNorm", config)?,
        })
    }

    /// `token_ids`: [batch, seq] int64 → [batch, seq, hidden]. Positions count from 0 at the
    /// first token of every row (inputs are right-padded).
    fn forward(&self, token_ids: &Tensor) -> Result<Tensor> {
        let seq_len = token_ids.size()[1];
        let words = Tensor::f_embedding(&self.word, token_ids, -1, false, false)?;
        let positions = self.position.f_narrow(0, 0, seq_len)?;
        let summed = words.f_add(&positions)?.f_add(&self.first_token_type)?;
        self.norm.forward(&summed)
    }
}

/// Multi-head self-attention over all unmasked tokens, with its output projection.
#[derive(Debug)]
struct SelfAttention {
    /// Query, key and value projections stacked, in that order.
    query_key_value: Linear,
    output: Linear,
    heads: i64,
    head_dim: i64,
}

impl SelfAttention {
    fn load(source: &WeightSource, prefix: &str, config: &BertConfig) -> Result<SelfAttention> {
        let width = config.hidden_size;
        let projections: Vec<String> = ["query", "key", "value"]
            .iter()
            .map(|name| format!("{prefix}.attention.self.{name}"))
            .collect();
        Ok(SelfAttention {
            query_key_value: Linear::stacked(
                projections
                    .iter()
                    .map(|prefix| load_linear(source, prefix, width, width))
                    .collect::<Result<Vec<_>>>()?,
            )
            .0,
            output: load_linear(
                source,
                &format!("{prefix}.attention.output.dense"),
                width,
                width,
            )?,
            heads: config.num_attention_heads,
            head_dim: config.head_dim(),
        })
    }

    /// `hidden`: [batch, seq, width]; `key_mask`: [batch, 1, 1, seq] bool, true where a key
    /// may be attended to. Returns [batch, seq, width] (before the residual connection).
    fn forward(&self, hidden: &Tensor, key_mask: &Tensor) -> Result<Tensor> {
        let (batch, seq, width) = hidden.size3()?;
        // [batch, seq, 3·width] → [3, batch, heads, seq, head_dim]
        let qkv = self
            .query_key_value
            .forward(hidden)
            .f_view([batch, seq, 3, self.heads, self.head_dim])?
            .f_permute([2, 0, 3, 1, 4])?;
        let [query, key, value] = [qkv.f_get(0)?, qkv.f_get(1)?, qkv.f_get(2)?];
        // softmax(q kᵀ / √head_dim + mask) v in one fused kernel; the default scale is
        // 1/√head_dim, as in BERT.
        let attended = Tensor::f_scaled_dot_product_attention(
            &query,
            &key,
            &value,
            Some(key_mask),
            0.0,
            false,
            None,
            false,
        )?;
        let merged = attended.f_transpose(1, 2)?.f_reshape([batch, seq, width])?;
        Ok(self.output.forward(&merged))
    }
}

/// One post-LayerNorm Transformer layer:
/// `h = LN(x + Attn(x))`, `out = LN(h + W₂ GELU(W₁ h))`.
#[derive(Debug)]
struct EncoderLayer {
    attention: SelfAttention,
    attention_norm: LayerNorm,
    intermediate: Linear,
    output: Linear,
    output_norm: LayerNorm,
}

impl EncoderLayer {
    fn load(source: &WeightSource, index: i64, config: &BertConfig) -> Result<EncoderLayer> {
        let prefix = format!("encoder.layer.{index}");
        let (width, inner) = (config.hidden_size, config.intermediate_size);
        Ok(EncoderLayer {
            attention: SelfAttention::load(source, &prefix, config)?,
            attention_norm: LayerNorm::load(
                source,
                &format!("{prefix}.attention.output.LayerNorm"),
                config,
            )?,
            intermediate: load_linear(
                source,
                &format!("{prefix}.intermediate.dense"),
                width,
                inner,
            )?,
            output: load_linear(source, &format!("{prefix}.output.dense"), inner, width)?,
            output_norm: LayerNorm::load(source, &format!("{prefix}.output.LayerNorm"), config)?,
        })
    }

    fn forward(&self, hidden: &Tensor, key_mask: &Tensor) -> Result<Tensor> {
        // The residual sums and the activation are computed in place into fresh projection
        // outputs: same values, less memory traffic and a lower peak.
        let mut attended = self.attention.forward(hidden, key_mask)?;
        let _ = attended.f_add_(hidden)?;
        let hidden = self.attention_norm.forward(&attended)?;
        let mut expanded = self.intermediate.forward(&hidden);
        // "gelu" in Hugging Face configs is the exact GELU, x·Φ(x) (approximate = "none").
        let _ = expanded.f_gelu_("none")?;
        let mut projected = self.output.forward(&expanded);
        let _ = projected.f_add_(&hidden)?;
        self.output_norm.forward(&projected)
    }
}

/// The BERT encoder: token ids and attention mask in, one hidden state per token out.
#[derive(Debug)]
pub(crate) struct BertEncoder {
    embeddings: Embeddings,
    layers: Vec<EncoderLayer>,
}

impl BertEncoder {
    /// Loads the encoder's weights (Hugging Face `BertModel` names, no `bert.` prefix) onto
    /// `device` as `kind`, checking every shape against `config`.
    pub(crate) fn load(
        weights: &SafetensorsFile,
        config: &BertConfig,
        device: Device,
        kind: Kind,
    ) -> Result<BertEncoder> {
        let source = WeightSource {
            file: weights,
            device,
            kind,
        };
        Ok(BertEncoder {
            embeddings: Embeddings::load(&source, config)?,
            layers: (0..config.num_hidden_layers)
                .map(|index| EncoderLayer::load(&source, index, config))
                .collect::<Result<_>>()?,
        })
    }

    /// `token_ids`: [batch, seq] int64; `attention_mask`: [batch, seq] bool, true on real
    /// tokens. Returns the last layer's hidden states, [batch, seq, hidden]. Rows of padding
    /// positions hold values that callers must mask out.
    pub(crate) fn forward(&self, token_ids: &Tensor, attention_mask: &Tensor) -> Result<Tensor> {
        let (batch, seq) = token_ids.size2()?;
        // Every query may look at every real token of its own row and at no padding.
        let key_mask = attention_mask.f_view([batch, 1, 1, seq])?;
        let mut hidden = self.embeddings.forward(token_ids)?;
        for layer in &self.layers {
            hidden = layer.forward(&hidden, &key_mask)?;
        }
        Ok(hidden)
    }
}
