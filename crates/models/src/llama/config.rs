//! The hyper-parameters of a Llama-family decoder, read from GGUF metadata (`{arch}.*` keys)
//! or from a Hugging Face `config.json` (Llama, Mistral, Qwen2).

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::error::{ModelError, Result};
use crate::gguf::GgufFile;

/// The decoder families whose weights and equations this module implements. They share one
/// architecture (pre-norm RMSNorm blocks, rotary positions, grouped-query attention, SwiGLU);
/// they differ in biases and in how their files lay out the weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// Llama (1, 2, 3 without long-context rope scaling), SmolLM, TinyLlama.
    Llama,
    /// Mistral: Llama's layout; the sliding window only matters beyond its length.
    Mistral,
    /// Qwen2: biases on the query, key and value projections.
    Qwen2,
}

impl Family {
    fn from_name(name: &str) -> Option<Family> {
        match name {
            "llama" => Some(Family::Llama),
            "mistral" => Some(Family::Mistral),
            "qwen2" => Some(Family::Qwen2),
            _ => None,
        }
    }
}

/// What the model computes with: sizes, rotary base, normalisation epsilon, biases, tying.
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaConfig {
    /// The family the file declared.
    pub family: Family,
    /// Number of token ids (rows of the embedding matrix).
    pub vocab_size: usize,
    /// Width of the residual stream, d.
    pub hidden_size: usize,
    /// Width of the SwiGLU hidden layer.
    pub intermediate_size: usize,
    /// Number of decoder blocks.
    pub num_layers: usize,
    /// Number of query heads.
    pub num_heads: usize,
    /// Number of key/value heads; each serves `num_heads / num_kv_heads` query heads.
    pub num_kv_heads: usize,
    /// Width of one head (d / heads unless the file says otherwise).
    pub head_dim: usize,
    /// The rotary base θ: pair i of a head turns by position · θ^(−2i/head_dim).
    pub rope_theta: f64,
    /// ε added to the mean square in RMSNorm.
    pub rms_norm_eps: f64,
    /// Longest position the model was trained for; positions beyond it are refused.
    pub max_position_embeddings: usize,
    /// Whether the output head reuses the token-embedding matrix.
    pub tie_word_embeddings: bool,
    /// Whether the query, key and value projections have biases (Qwen2; Llama's
    /// `attention_bias`).
    pub qkv_bias: bool,
    /// Whether the output projection has a bias (Llama's `attention_bias`).
    pub o_bias: bool,
    /// Whether the three MLP projections have biases (Llama's `mlp_bias`).
    pub mlp_bias: bool,
}

impl LlamaConfig {
    /// How many query heads share one key/value head.
    pub fn kv_group_size(&self) -> usize {
        self.num_heads / self.num_kv_heads
    }

    /// Fails unless the sizes fit together (heads divide evenly, head width even for RoPE).
    pub fn validate(&self, file: &Path) -> Result<()> {
        let bad = |message: String| {
            Err(ModelError::ModelConfig {
                file: file.to_path_buf(),
                message,
            })
        };
        let sizes = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_layers),
            ("num_attention_heads", self.num_heads),
            ("num_key_value_heads", self.num_kv_heads),
            ("head_dim", self.head_dim),
            ("max_position_embeddings", self.max_position_embeddings),
        ];
        if let Some((name, _)) = sizes.iter().find(|(_, size)| *size == 0) {
            return bad(format!("{name} is 0"));
        }
        if !self.num_heads.is_multiple_of(self.num_kv_heads) {
            return bad(format!(
                "{} query heads cannot be shared evenly by {} key/value heads",
                self.num_heads, self.num_kv_heads
            ));
        }
        if !self.head_dim.is_multiple_of(2) {
            return bad(format!(
                "head width {} is odd; rotary embeddings turn pairs of values",
                self.head_dim
            ));
        }
        if !(self.rope_theta.is_finite() && self.rope_theta > 1.0) {
            return bad(format!(
                "rope base {} is not a number above 1",
                self.rope_theta
            ));
        }
        Ok(())
    }

    /// Reads the hyper-parameters from a GGUF file's `{arch}.*` metadata. The output head is
    /// tied when the file has no `output.weight`; biases exist when `blk.0.attn_q.bias` does.
    pub fn from_gguf(gguf: &GgufFile, file: &Path) -> Result<LlamaConfig> {
        let arch = gguf.metadata_str("general.architecture")?;
        let family = Family::from_name(arch).ok_or_else(|| ModelError::ModelConfig {
            file: file.to_path_buf(),
            message: format!(
                "general.architecture is `{arch}`; fedsyn runs llama, mistral and qwen2 models"
            ),
        })?;
        let usize_key = |key: &str| -> Result<usize> {
            Ok(gguf.metadata_u64(&format!("{arch}.{key}"))? as usize)
        };
        let optional = |key: &str| gguf.metadata_value(&format!("{arch}.{key}")).is_some();
        let hidden_size = usize_key("embedding_length")?;
        let num_heads = usize_key("attention.head_count")?;
        let num_kv_heads = if optional("attention.head_count_kv") {
            usize_key("attention.head_count_kv")?
        } else {
            num_heads
        };
        let head_dim = if optional("attention.key_length") {
            usize_key("attention.key_length")?
        } else {
            hidden_size / num_heads.max(1)
        };
        if optional("rope.scaling.type") {
            let scaling = gguf.metadata_str(&format!("{arch}.rope.scaling.type"))?;
            if scaling != "none" {
                return Err(ModelError::ModelConfig {
                    file: file.to_path_buf(),
                    message: format!(
                        "{arch}.rope.scaling.type is `{scaling}`; only unscaled rotary \
                         embeddings are implemented"
                    ),
                });
            }
        }
        let vocab_size = if optional("vocab_size") {
            usize_key("vocab_size")?
        } else {
            gguf.tensor("token_embd.weight")?.shape()[0]
        };
        let qkv_bias = gguf.tensor("blk.0.attn_q.bias").is_ok();
        let config = LlamaConfig {
            family,
            vocab_size,
            hidden_size,
            intermediate_size: usize_key("feed_forward_length")?,
            num_layers: usize_key("block_count")?,
            num_heads,
            num_kv_heads,
            head_dim,
            rope_theta: if optional("rope.freq_base") {
                gguf.metadata_f64(&format!("{arch}.rope.freq_base"))?
            } else {
                10_000.0
            },
            rms_norm_eps: gguf.metadata_f64(&format!("{arch}.attention.layer_norm_rms_epsilon"))?,
            max_position_embeddings: usize_key("context_length")?,
            tie_word_embeddings: gguf.tensor("output.weight").is_err(),
            qkv_bias,
            o_bias: gguf.tensor("blk.0.attn_output.bias").is_ok(),
            mlp_bias: gguf.tensor("blk.0.ffn_up.bias").is_ok(),
        };
        config.validate(file)?;
        Ok(config)
    }

    /// Reads a Hugging Face `config.json` of `model_type` llama, mistral or qwen2.
    pub fn from_hf_config(path: &Path) -> Result<LlamaConfig> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ModelError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let json: Value = serde_json::from_str(&text).map_err(|e| ModelError::ModelConfig {
            file: path.to_path_buf(),
            message: format!("not valid JSON: {e}"),
        })?;
        let keys = HfKeys {
            json: &json,
            file: &file,
        };
        let model_type = keys.string("model_type")?;
        let family = Family::from_name(&model_type).ok_or_else(|| ModelError::ModelConfig {
            file: path.to_path_buf(),
            message: format!("model_type is `{model_type}`; fedsyn runs llama, mistral and qwen2"),
        })?;
        keys.reject_rope_scaling()?;
        let hidden_size = keys.usize("hidden_size")?;
        let num_heads = keys.usize("num_attention_heads")?;
        let attention_bias = keys.optional_bool("attention_bias")?.unwrap_or(false);
        let config = LlamaConfig {
            family,
            vocab_size: keys.usize("vocab_size")?,
            hidden_size,
            intermediate_size: keys.usize("intermediate_size")?,
            num_layers: keys.usize("num_hidden_layers")?,
            num_heads,
            num_kv_heads: keys
                .optional_usize("num_key_value_heads")?
                .unwrap_or(num_heads),
            head_dim: keys
                .optional_usize("head_dim")?
                .unwrap_or(hidden_size / num_heads.max(1)),
            rope_theta: keys.rope_theta()?,
            rms_norm_eps: keys.f64("rms_norm_eps")?,
            max_position_embeddings: keys.usize("max_position_embeddings")?,
            tie_word_embeddings: keys.optional_bool("tie_word_embeddings")?.unwrap_or(false),
            qkv_bias: family == Family::Qwen2 || attention_bias,
            o_bias: family != Family::Qwen2 && attention_bias,
            mlp_bias: keys.optional_bool("mlp_bias")?.unwrap_or(false),
        };
        config.validate(path)?;
        Ok(config)
    }
}

/// Typed access to the keys of a `config.json`, with errors that name the key and file.
struct HfKeys<'a> {
    json: &'a Value,
    file: &'a str,
}

impl HfKeys<'_> {
    fn get(&self, key: &str) -> Option<&Value> {
        self.json.get(key).filter(|value| !value.is_null())
    }

    fn missing(&self, key: &str) -> ModelError {
        ModelError::MissingKey {
            file: self.file.to_string(),
            key: key.to_string(),
        }
    }

    fn wrong(&self, key: &str, expected: &'static str, value: &Value) -> ModelError {
        ModelError::WrongType {
            file: self.file.to_string(),
            key: key.to_string(),
            expected,
            found: value.to_string(),
        }
    }

    /// The value at `key` as `convert` reads it, `None` when the key is absent or null; a value
    /// `convert` rejects is an error saying that `key` should be `expected`.
    fn optional<'v, T>(
        &'v self,
        key: &str,
        expected: &'static str,
        convert: impl FnOnce(&'v Value) -> Option<T>,
    ) -> Result<Option<T>> {
        self.get(key)
            .map(|value| convert(value).ok_or_else(|| self.wrong(key, expected, value)))
            .transpose()
    }

    /// As [`HfKeys::optional`], with an absent `key` an error.
    fn required<'v, T>(
        &'v self,
        key: &str,
        expected: &'static str,
        convert: impl FnOnce(&'v Value) -> Option<T>,
    ) -> Result<T> {
        self.optional(key, expected, convert)?
            .ok_or_else(|| self.missing(key))
    }

    fn string(&self, key: &str) -> Result<String> {
        self.required(key, "a string", |value| value.as_str().map(str::to_string))
    }

    fn optional_usize(&self, key: &str) -> Result<Option<usize>> {
        self.optional(key, "a non-negative integer", |value| {
            value.as_u64().map(|v| v as usize)
        })
    }

    fn usize(&self, key: &str) -> Result<usize> {
        self.optional_usize(key)?.ok_or_else(|| self.missing(key))
    }

    fn f64(&self, key: &str) -> Result<f64> {
        self.required(key, "a number", Value::as_f64)
    }

    fn optional_bool(&self, key: &str) -> Result<Option<bool>> {
        self.optional(key, "a bool", Value::as_bool)
    }

    /// `rope_theta`, or `rope_parameters.rope_theta` as transformers 5 writes it.
    fn rope_theta(&self) -> Result<f64> {
        if self.get("rope_theta").is_some() {
            return self.f64("rope_theta");
        }
        match self
            .get("rope_parameters")
            .and_then(|p| p.get("rope_theta"))
        {
            Some(value) => value
                .as_f64()
                .ok_or_else(|| self.wrong("rope_parameters.rope_theta", "a number", value)),
            None => Ok(10_000.0),
        }
    }

    /// Long-context rope scaling (linear, dynamic, YaRN, Llama 3's) changes the rotation
    /// frequencies; running such a model with plain RoPE would silently give wrong logits.
    fn reject_rope_scaling(&self) -> Result<()> {
        let scaling = [
            ("rope_scaling", self.get("rope_scaling")),
            ("rope_parameters", self.get("rope_parameters")),
        ];
        for (key, value) in scaling {
            let Some(value) = value else { continue };
            let kind = value
                .get("rope_type")
                .or_else(|| value.get("type"))
                .and_then(Value::as_str)
                .unwrap_or("default");
            if kind != "default" {
                return Err(ModelError::ModelConfig {
                    file: PathBuf::from(self.file),
                    message: format!(
                        "{key} asks for `{kind}` rope scaling; only unscaled rotary \
                         embeddings are implemented"
                    ),
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_config(name: &str, json: &str) -> std::path::PathBuf {
        let path = crate::test_support::scratch_dir("llama-config").join(name);
        std::fs::write(&path, json).unwrap();
        path
    }

    #[test]
    fn qwen2_configs_have_qkv_biases_and_default_kv_heads() {
        let path = write_config(
            "qwen2.json",
            r#"{"model_type": "qwen2", "vocab_size": 64, "hidden_size": 32,
                "intermediate_size": 48, "num_hidden_layers": 2, "num_attention_heads": 4,
                "rms_norm_eps": 1e-6, "max_position_embeddings": 128, "rope_theta": 1e6,
                "tie_word_embeddings": true}"#,
        );
        let config = LlamaConfig::from_hf_config(&path).unwrap();
        assert_eq!(config.family, Family::Qwen2);
        assert!(config.qkv_bias && !config.o_bias && !config.mlp_bias);
        assert_eq!((config.num_kv_heads, config.head_dim), (4, 8));
        assert_eq!(config.rope_theta, 1e6);
    }

    #[test]
    fn scaled_rope_unknown_types_and_uneven_heads_are_refused() {
        let base = r#""vocab_size": 64, "hidden_size": 32, "intermediate_size": 48,
            "num_hidden_layers": 2, "num_attention_heads": 4, "rms_norm_eps": 1e-6,
            "max_position_embeddings": 128"#;
        let scaled = write_config(
            "scaled.json",
            &format!(
                r#"{{"model_type": "llama", {base}, "rope_scaling": {{"rope_type": "llama3"}}}}"#
            ),
        );
        let err = LlamaConfig::from_hf_config(&scaled)
            .unwrap_err()
            .to_string();
        assert!(err.contains("`llama3` rope scaling"), "{err}");
        let gpt2 = write_config("gpt2.json", &format!(r#"{{"model_type": "gpt2", {base}}}"#));
        let err = LlamaConfig::from_hf_config(&gpt2).unwrap_err().to_string();
        assert!(err.contains("`gpt2`"), "{err}");
        let uneven = write_config(
            "uneven.json",
            &format!(r#"{{"model_type": "llama", {base}, "num_key_value_heads": 3}}"#),
        );
        let err = LlamaConfig::from_hf_config(&uneven)
            .unwrap_err()
            .to_string();
        assert!(err.contains("4 query heads"), "{err}");
        let missing = write_config("missing.json", r#"{"model_type": "llama"}"#);
        let err = LlamaConfig::from_hf_config(&missing)
            .unwrap_err()
            .to_string();
        assert!(err.contains("hidden_size"), "{err}");
    }
}
