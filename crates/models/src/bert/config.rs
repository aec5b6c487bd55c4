//! The configuration files of a sentence-transformers BERT folder: the encoder's `config.json`
//! (Hugging Face), and the sentence-transformers pipeline around it — `modules.json` (which
//! modules run after the encoder), `sentence_bert_config.json` (truncation length, lower-casing)
//! and the pooling module's `config.json`.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Deserialize;

use crate::error::{ModelError, Result};

/// The hyper-parameters of a BERT encoder, from the Hugging Face `config.json`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct BertConfig {
    /// Rows of the word-embedding table.
    pub vocab_size: i64,
    /// Width of every hidden state (384 for MiniLM-L6).
    pub hidden_size: i64,
    /// Number of encoder layers.
    pub num_hidden_layers: i64,
    /// Attention heads per layer; `hidden_size` splits evenly among them.
    pub num_attention_heads: i64,
    /// Width of the feed-forward block's hidden layer.
    pub intermediate_size: i64,
    /// Rows of the learned position-embedding table: the longest input the model can take.
    pub max_position_embeddings: i64,
    /// Rows of the token-type (segment) embedding table.
    pub type_vocab_size: i64,
    /// The ε of every LayerNorm.
    pub layer_norm_eps: f64,
    /// The feed-forward activation; only `gelu` (the exact, erf-based GELU) is implemented.
    pub hidden_act: String,
    /// Only `absolute` (learned) position embeddings are implemented.
    #[serde(default = "absolute_positions")]
    pub position_embedding_type: String,
}

fn absolute_positions() -> String {
    "absolute".to_string()
}

impl BertConfig {
    /// Reads `config.json` and checks that it describes the BERT variant implemented here.
    pub fn from_file(path: &Path) -> Result<BertConfig> {
        let config: BertConfig = read_json(path)?;
        let unsupported = |message: String| {
            Err(ModelError::ModelConfig {
                file: path.to_path_buf(),
                message,
            })
        };
        if config.hidden_act != "gelu" {
            return unsupported(format!(
                "hidden_act is `{}`; only `gelu` is implemented",
                config.hidden_act
            ));
        }
        if config.position_embedding_type != "absolute" {
            return unsupported(format!(
                "position_embedding_type is `{}`; only `absolute` is implemented",
                config.position_embedding_type
            ));
        }
        let sizes = [
            config.vocab_size,
            config.hidden_size,
            config.num_hidden_layers,
            config.num_attention_heads,
            config.intermediate_size,
            config.max_position_embeddings,
            config.type_vocab_size,
        ];
        if sizes.iter().any(|&size| size <= 0) {
            return unsupported("every size and count must be positive".to_string());
        }
        if config.hidden_size % config.num_attention_heads != 0 {
            return unsupported(format!(
                "hidden_size {} does not split evenly into {} attention heads",
                config.hidden_size, config.num_attention_heads
            ));
        }
        Ok(config)
    }

    /// Width of one attention head.
    pub fn head_dim(&self) -> i64 {
        self.hidden_size / self.num_attention_heads
    }
}

/// What sentence-transformers does around the encoder, for the pipeline
/// Transformer → Pooling (mean) → Normalize, the only one implemented.
#[derive(Debug, Clone, PartialEq)]
pub struct SentencePipeline {
    /// Inputs are truncated to this many tokens, `[CLS]` and `[SEP]` included.
    pub max_seq_length: usize,
    /// Whether texts are lower-cased before tokenising (sentence-transformers does it in
    /// Python, not in the tokenizer).
    pub lowercase: bool,
    /// Whether embeddings are scaled to unit L2 norm (a `Normalize` module follows pooling).
    pub normalize: bool,
}

/// One entry of `modules.json`.
#[derive(Debug, Deserialize)]
struct ModuleEntry {
    path: String,
    #[serde(rename = "type")]
    module_type: String,
}

/// `sentence_bert_config.json`. sentence-transformers 6 no longer writes `max_seq_length`
/// here: it is the tokenizer's `model_max_length` (`tokenizer_config.json`).
#[derive(Debug, Deserialize)]
struct SentenceBertConfig {
    #[serde(default)]
    max_seq_length: Option<usize>,
    #[serde(default)]
    do_lower_case: bool,
}

#[derive(Debug, Deserialize)]
struct TokenizerConfig {
    #[serde(default)]
    model_max_length: Option<f64>,
}

/// `1_Pooling/config.json`: one flag per mode up to sentence-transformers 5, one
/// `pooling_mode` (a name or a list of names) from 6 on.
#[derive(Debug, Deserialize)]
struct PoolingConfig {
    #[serde(default)]
    pooling_mode: Option<serde_json::Value>,
    #[serde(default)]
    pooling_mode_cls_token: bool,
    #[serde(default)]
    pooling_mode_mean_tokens: bool,
    #[serde(default)]
    pooling_mode_max_tokens: bool,
    #[serde(default)]
    pooling_mode_mean_sqrt_len_tokens: bool,
    #[serde(default)]
    pooling_mode_weightedmean_tokens: bool,
    #[serde(default)]
    pooling_mode_lasttoken: bool,
}

const TRANSFORMER: &str = "Transformer";
const POOLING: &str = "Pooling";
const NORMALIZE: &str = "Normalize";

/// The class name of a sentence-transformers module type. `modules.json` names each class by
/// its import path, which moved in sentence-transformers 6
/// (`sentence_transformers.models.Pooling` became
/// `sentence_transformers.sentence_transformer.modules.pooling.Pooling`): the class decides.
fn module_class(module_type: &str) -> &str {
    match module_type.strip_prefix("sentence_transformers.") {
        Some(path) => path.rsplit('.').next().unwrap_or(path),
        None => module_type,
    }
}

impl SentencePipeline {
    /// Reads the sentence-transformers files of `dir` and checks that the pipeline is
    /// Transformer → mean Pooling → optional Normalize.
    pub fn from_dir(dir: &Path) -> Result<SentencePipeline> {
        let modules_path = dir.join("modules.json");
        let modules: Vec<ModuleEntry> = read_json(&modules_path)?;
        let types: Vec<&str> = modules.iter().map(|m| m.module_type.as_str()).collect();
        let classes: Vec<&str> = types.iter().map(|t| module_class(t)).collect();
        let normalize = match classes.as_slice() {
            [TRANSFORMER, POOLING] => false,
            [TRANSFORMER, POOLING, NORMALIZE] => true,
            _ => {
                return Err(ModelError::ModelConfig {
                    file: modules_path,
                    message: format!(
                        "the modules are {types:?}; only Transformer → Pooling → (Normalize) \
                         is implemented"
                    ),
                })
            }
        };
        let pooling_path = dir.join(&modules[1].path).join("config.json");
        let pooling: PoolingConfig = read_json(&pooling_path)?;
        let only_mean = match &pooling.pooling_mode {
            Some(serde_json::Value::String(mode)) => mode == "mean",
            Some(serde_json::Value::Array(modes)) => modes == &[serde_json::json!("mean")],
            Some(_) => false,
            None => pooling.pooling_mode_mean_tokens,
        } && !(pooling.pooling_mode_cls_token
            || pooling.pooling_mode_max_tokens
            || pooling.pooling_mode_mean_sqrt_len_tokens
            || pooling.pooling_mode_weightedmean_tokens
            || pooling.pooling_mode_lasttoken);
        if !only_mean {
            return Err(ModelError::ModelConfig {
                file: pooling_path,
                message: "only mean pooling (`pooling_mode` \"mean\", or \
                          `pooling_mode_mean_tokens` alone) is implemented"
                    .to_string(),
            });
        }
        let sentence: SentenceBertConfig = read_json(&dir.join("sentence_bert_config.json"))?;
        let max_seq_length = match sentence.max_seq_length {
            Some(length) => length,
            None => {
                let tokenizer_path = dir.join("tokenizer_config.json");
                let tokenizer: TokenizerConfig = read_json(&tokenizer_path)?;
                // transformers writes a huge float (1e30) for "no limit": that is not a length.
                match tokenizer.model_max_length {
                    Some(length) if (1.0..=1e6).contains(&length) => length as usize,
                    _ => {
                        return Err(ModelError::ModelConfig {
                            file: tokenizer_path,
                            message: "no max_seq_length in sentence_bert_config.json and no \
                                      usable model_max_length here: add one of them"
                                .to_string(),
                        })
                    }
                }
            }
        };
        Ok(SentencePipeline {
            max_seq_length,
            lowercase: sentence.do_lower_case,
            normalize,
        })
    }
}

/// Parses the JSON file at `path`; both a missing file and a missing key name the file.
fn read_json<T: DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|e| ModelError::ModelConfig {
        file: PathBuf::from(path),
        message: format!("cannot parse: {e}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = crate::test_support::scratch_dir(&format!("bert-{name}"));
        std::fs::create_dir_all(dir.join("1_Pooling")).unwrap();
        dir
    }

    const MINILM_CONFIG: &str = r#"{"hidden_act": "gelu", "hidden_size": 384,
        "intermediate_size": 1536, "layer_norm_eps": 1e-12, "max_position_embeddings": 512,
        "num_attention_heads": 12, "num_hidden_layers": 6, "type_vocab_size": 2,
        "vocab_size": 30522, "model_type": "bert"}"#;

    #[test]
    fn bert_config_reads_minilm_and_refuses_other_variants() {
        let dir = scratch("config");
        let path = dir.join("config.json");
        std::fs::write(&path, MINILM_CONFIG).unwrap();
        let config = BertConfig::from_file(&path).unwrap();
        assert_eq!((config.hidden_size, config.head_dim()), (384, 32));
        assert_eq!(config.position_embedding_type, "absolute");

        std::fs::write(&path, MINILM_CONFIG.replace("\"gelu\"", "\"relu\"")).unwrap();
        let err = BertConfig::from_file(&path).unwrap_err().to_string();
        assert!(err.contains("config.json") && err.contains("relu"), "{err}");

        std::fs::write(&path, MINILM_CONFIG.replace("\"hidden_size\": 384,", "")).unwrap();
        let err = BertConfig::from_file(&path).unwrap_err().to_string();
        assert!(err.contains("hidden_size"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// `modules.json` as sentence-transformers 5 (`sentence_transformers.models.*`) and 6
    /// (`sentence_transformers.{base,sentence_transformer}.modules.*`) write it.
    fn write_modules(dir: &Path, version: u32, last: &str) {
        let [transformer, pooling, last] = if version < 6 {
            [TRANSFORMER, POOLING, last].map(|c| format!("sentence_transformers.models.{c}"))
        } else {
            [
                "sentence_transformers.base.modules.transformer.Transformer".to_string(),
                "sentence_transformers.sentence_transformer.modules.pooling.Pooling".to_string(),
                format!(
                    "sentence_transformers.base.modules.{}.{last}",
                    last.to_lowercase()
                ),
            ]
        };
        std::fs::write(
            dir.join("modules.json"),
            format!(
                r#"[{{"path": "", "type": "{transformer}"}},
                    {{"path": "1_Pooling", "type": "{pooling}"}},
                    {{"path": "2_Last", "type": "{last}"}}]"#
            ),
        )
        .unwrap();
    }

    /// sentence-transformers 5's `sentence_bert_config.json` and mean-pooling config; returns
    /// the pooling config's path.
    fn write_version_5_configs(dir: &Path) -> PathBuf {
        std::fs::write(
            dir.join("sentence_bert_config.json"),
            r#"{"max_seq_length": 256, "do_lower_case": false}"#,
        )
        .unwrap();
        let pooling = dir.join("1_Pooling").join("config.json");
        std::fs::write(&pooling, r#"{"pooling_mode_mean_tokens": true}"#).unwrap();
        pooling
    }

    #[test]
    fn pipelines_of_sentence_transformers_5_and_6_load_and_others_are_refused() {
        let dir = scratch("versions");
        let pooling = write_version_5_configs(&dir);
        for version in [5, 6] {
            if version == 6 {
                // Version 6's files: the length in the tokenizer's config, one pooling mode.
                std::fs::write(
                    dir.join("sentence_bert_config.json"),
                    r#"{"transformer_task": "feature-extraction"}"#,
                )
                .unwrap();
                std::fs::write(
                    dir.join("tokenizer_config.json"),
                    r#"{"model_max_length": 256, "do_lower_case": true}"#,
                )
                .unwrap();
                std::fs::write(&pooling, r#"{"pooling_mode": "mean"}"#).unwrap();
            }
            write_modules(&dir, version, NORMALIZE);
            let pipeline = SentencePipeline::from_dir(&dir).unwrap();
            assert!(pipeline.normalize, "sentence-transformers {version}");
            assert_eq!(pipeline.max_seq_length, 256);
            write_modules(&dir, version, "Dense");
            let err = SentencePipeline::from_dir(&dir).unwrap_err().to_string();
            assert!(err.contains("Dense"), "{err}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn pipeline_needs_mean_pooling() {
        let dir = scratch("pipeline");
        write_modules(&dir, 5, NORMALIZE);
        let pooling = write_version_5_configs(&dir);
        let pipeline = SentencePipeline::from_dir(&dir).unwrap();
        assert_eq!(
            pipeline,
            SentencePipeline {
                max_seq_length: 256,
                lowercase: false,
                normalize: true
            }
        );

        std::fs::write(
            &pooling,
            r#"{"pooling_mode_mean_tokens": false, "pooling_mode_cls_token": true}"#,
        )
        .unwrap();
        let err = SentencePipeline::from_dir(&dir).unwrap_err().to_string();
        assert!(err.contains("mean pooling"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
