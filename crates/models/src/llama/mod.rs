//! Llama-family causal language models (Llama, SmolLM, Mistral, Qwen2) on libtorch, with a
//! key/value cache, batched sampling and chat templates.
//!
//! The network is the pre-norm decoder of Touvron et al. (2023): token embedding, then N
//! blocks `h = x + Attn(RMSNorm(x))`, `out = h + SwiGLU(RMSNorm(h))` with rotary positions
//! and grouped-query attention, a final RMSNorm and a linear output head (tied to the
//! embedding in small models).
//!
//! A model can carry LoRA adapters (`CausalLm::add_lora`, `load_adapter` for PEFT folders);
//! sampling uses them, and `CausalLm::forward_train` runs the differentiable pass that trains
//! them (or, with the adapters off, the frozen reference model).
//!
//! ```no_run
//! # fn main() -> models::Result<()> {
//! use models::llama::{Generator, SamplingParams};
//! let generator = Generator::load("SmolLM2-135M-Instruct.Q4_1.gguf".as_ref(), tch::Device::Cpu)?;
//! let params = SamplingParams { max_new_tokens: 32, ..SamplingParams::default() };
//! let prompts = ["Write a haiku about rivers.".to_string()];
//! let completions = generator.generate(&prompts, true, &params)?;
//! println!("{}", completions[0].text);
//! # Ok(()) }
//! ```

mod allocator;
mod cache;
mod chat;
mod config;
mod generate;
mod layers;
mod lora;
mod mkl_packed;
// Shared with other CPU models of the crate (fp32 matrix products through oneDNN).
pub(crate) mod onednn;
mod sampling;
mod weights;

use std::path::Path;

use tch::{Device, Kind, Tensor};

use crate::device::compute_kind;
use crate::error::{ModelError, Result};
use crate::gguf::GgufFile;

pub use allocator::keep_freed_memory;
use cache::LayerKv;
pub use cache::{KvCache, LayerCache};
pub use chat::{ChatMessage, ChatTemplate};
pub use config::{Family, LlamaConfig};
pub use generate::{generate_ids, Completion, FinishReason, GeneratedIds, Generator};
use layers::PassInputs;
pub use layers::{
    Attention, AttentionMask, DecoderLayer, Linear, MatmulBackend, Mlp, RmsNorm, RotaryEmbedding,
};
use lora::{AdapterMode, LoraState};
pub use lora::{LoraConfig, LoraTarget, ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE};
pub use sampling::{nucleus_prefix_widths, Sampler, SamplingParams};
use weights::WeightSource;

/// Longest rotary table precomputed; models with longer contexts are run up to this length.
const MAX_ROTARY_POSITIONS: usize = 32_768;

/// A Llama-family decoder with its output head: token ids in, next-token logits out.
///
/// Loading a model onto the CPU also calls [`keep_freed_memory`] (a process-wide glibc
/// setting that keeps freed activation memory for reuse).
#[derive(Debug)]
pub struct CausalLm {
    config: LlamaConfig,
    /// Token embeddings, `[vocab, d]`.
    embed_tokens: Tensor,
    /// The decoder blocks.
    pub layers: Vec<DecoderLayer>,
    /// The norm after the last block.
    norm: RmsNorm,
    /// The output head, `d → vocab` (shares the embedding's storage when tied).
    pub lm_head: Linear,
    rope: RotaryEmbedding,
    device: Device,
    kind: Kind,
    /// The LoRA adapters' configuration and merge state, when the model has adapters.
    lora: Option<LoraState>,
}

/// The decoder's weights packed for decoding ([`CausalLm::pack_for_decoding`]); dropping it
/// frees the packed copies, on every way out of a generation.
#[must_use = "the weights stay packed only while the guard lives"]
pub struct PackedForDecoding<'a> {
    model: &'a CausalLm,
}

impl PackedForDecoding<'_> {
    /// Packs again for `rows` rows (decoding dropped finished rows).
    pub fn repack(&self, rows: i64) {
        for linear in self.model.layers.iter().flat_map(DecoderLayer::linears) {
            linear.pack_for_rows(rows);
        }
    }
}

impl Drop for PackedForDecoding<'_> {
    fn drop(&mut self) {
        for linear in self.model.layers.iter().flat_map(DecoderLayer::linears) {
            linear.unpack();
        }
    }
}

impl CausalLm {
    /// Loads a model from a GGUF file (as llama.cpp writes them) or a Hugging Face folder,
    /// whichever `path` is.
    pub fn load(path: &Path, device: Device) -> Result<CausalLm> {
        CausalLm::load_as(path, device, compute_kind(device))
    }

    /// As [`CausalLm::load`], computing in `kind` (f32 or bf16) instead of the device's
    /// default.
    pub fn load_as(path: &Path, device: Device, kind: Kind) -> Result<CausalLm> {
        if path.is_dir() {
            CausalLm::from_hf_dir_as(path, device, kind)
        } else {
            CausalLm::from_open_gguf_as(&GgufFile::open(path)?, path, device, kind)
        }
    }

    /// Loads a GGUF file, dequantising every tensor to f32 and then to the compute dtype of
    /// `device` (fp32 on the CPU, bf16 on CUDA).
    pub fn from_gguf(path: &Path, device: Device) -> Result<CausalLm> {
        let file = GgufFile::open(path)?;
        CausalLm::from_open_gguf(&file, path, device)
    }

    /// As [`CausalLm::from_gguf`], for a file already open (e.g. to read its tokenizer too).
    pub fn from_open_gguf(file: &GgufFile, path: &Path, device: Device) -> Result<CausalLm> {
        CausalLm::from_open_gguf_as(file, path, device, compute_kind(device))
    }

    /// As [`CausalLm::from_open_gguf`], computing in `kind`.
    pub fn from_open_gguf_as(
        file: &GgufFile,
        path: &Path,
        device: Device,
        kind: Kind,
    ) -> Result<CausalLm> {
        let config = LlamaConfig::from_gguf(file, path)?;
        let source = WeightSource::Gguf {
            file,
            path,
            config: &config,
        };
        CausalLm::build(config.clone(), &source, device, kind)
    }

    /// Loads a Hugging Face folder: `config.json` and the `*.safetensors` weights.
    pub fn from_hf_dir(dir: &Path, device: Device) -> Result<CausalLm> {
        CausalLm::from_hf_dir_as(dir, device, compute_kind(device))
    }

    /// As [`CausalLm::from_hf_dir`], computing in `kind`.
    pub fn from_hf_dir_as(dir: &Path, device: Device, kind: Kind) -> Result<CausalLm> {
        let config = LlamaConfig::from_hf_config(&dir.join("config.json"))?;
        let source = WeightSource::open_hf_dir(dir)?;
        CausalLm::build(config, &source, device, kind)
    }

    fn build(
        config: LlamaConfig,
        source: &WeightSource<'_>,
        device: Device,
        kind: Kind,
    ) -> Result<CausalLm> {
        if !matches!(kind, Kind::Float | Kind::BFloat16 | Kind::Half) {
            return Err(ModelError::InvalidArgument {
                name: "kind",
                message: format!("{kind:?} is not a compute dtype: use f32, bf16 or f16"),
            });
        }
        let _no_grad = tch::no_grad_guard();
        if device == Device::Cpu {
            keep_freed_memory();
        }
        let load = |name: &str, shape: &[i64]| source.load(name, shape, device, kind);
        let (d, vocab) = (config.hidden_size as i64, config.vocab_size as i64);
        let head_dim = config.head_dim as i64;
        let q_width = config.num_heads as i64 * head_dim;
        let kv_width = config.num_kv_heads as i64 * head_dim;
        let ffn = config.intermediate_size as i64;

        let linear = |name: &str, out: i64, inp: i64, bias: bool| -> Result<Linear> {
            let weight = load(&format!("{name}.weight"), &[out, inp])?;
            let bias = if bias {
                Some(load(&format!("{name}.bias"), &[out])?)
            } else {
                None
            };
            Ok(Linear::new(weight, bias))
        };
        let norm = |name: &str| -> Result<RmsNorm> {
            Ok(RmsNorm::new(load(name, &[d])?, config.rms_norm_eps))
        };

        let embed_tokens = load("model.embed_tokens.weight", &[vocab, d])?;
        let layers = (0..config.num_layers)
            .map(|i| {
                let p = format!("model.layers.{i}");
                let attention = Attention::new(
                    &config,
                    [
                        linear(
                            &format!("{p}.self_attn.q_proj"),
                            q_width,
                            d,
                            config.qkv_bias,
                        )?,
                        linear(
                            &format!("{p}.self_attn.k_proj"),
                            kv_width,
                            d,
                            config.qkv_bias,
                        )?,
                        linear(
                            &format!("{p}.self_attn.v_proj"),
                            kv_width,
                            d,
                            config.qkv_bias,
                        )?,
                        linear(&format!("{p}.self_attn.o_proj"), d, q_width, config.o_bias)?,
                    ],
                );
                let mlp = Mlp::new(
                    linear(&format!("{p}.mlp.gate_proj"), ffn, d, config.mlp_bias)?,
                    linear(&format!("{p}.mlp.up_proj"), ffn, d, config.mlp_bias)?,
                    linear(&format!("{p}.mlp.down_proj"), d, ffn, config.mlp_bias)?,
                );
                Ok(DecoderLayer {
                    input_norm: norm(&format!("{p}.input_layernorm.weight"))?,
                    attention,
                    post_attention_norm: norm(&format!("{p}.post_attention_layernorm.weight"))?,
                    mlp,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        // Some tied checkpoints still ship lm_head.weight (a copy); use it when present.
        let lm_head = if source.contains("lm_head.weight") {
            linear("lm_head", vocab, d, false)?
        } else if config.tie_word_embeddings {
            Linear::new(embed_tokens.shallow_clone(), None)
        } else {
            linear("lm_head", vocab, d, false)?
        };
        let rope = RotaryEmbedding::new(
            &config,
            config.max_position_embeddings.min(MAX_ROTARY_POSITIONS),
            device,
            kind,
        );
        Ok(CausalLm {
            norm: norm("model.norm.weight")?,
            config,
            embed_tokens,
            layers,
            lm_head,
            rope,
            device,
            kind,
            lora: None,
        })
    }

    /// The hyper-parameters.
    pub fn config(&self) -> &LlamaConfig {
        &self.config
    }

    /// Where the weights live.
    pub fn device(&self) -> Device {
        self.device
    }

    /// The dtype of weights and activations (fp32 on the CPU, bf16 on CUDA).
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// The longest position (0-based, exclusive) the model can be run at.
    pub fn max_positions(&self) -> i64 {
        self.rope.max_positions()
    }

    /// An empty key/value cache for `batch` sequences of up to `capacity` positions.
    pub fn new_cache(&self, batch: usize, capacity: usize) -> Result<KvCache> {
        KvCache::new(&self.config, batch, capacity, self.device, self.kind)
    }

    /// Next-token logits (fp32, `[batch, seq, vocab]`) for every position of `input_ids`.
    /// See [`CausalLm::forward_hidden`] for the arguments.
    pub fn forward(
        &self,
        input_ids: &Tensor,
        positions: &Tensor,
        attention_mask: &Tensor,
        cache: Option<&mut KvCache>,
    ) -> Result<Tensor> {
        let hidden = self.forward_hidden(input_ids, positions, attention_mask, cache)?;
        Ok(self.logits(&hidden))
    }

    /// The final hidden states (`[batch, seq, d]`, after the last norm) of `input_ids`
    /// (`[batch, seq]`, int64) at `positions` (`[batch, seq]`, the rotary position of each
    /// token: with left padding, row r's first real token is at 0).
    ///
    /// `attention_mask` (`[batch, cached + seq]`, nonzero = real token) covers the cached
    /// slots and the new ones; padding slots are never attended to. Without a cache the call
    /// sees only `input_ids`; with one, the new keys and values are appended to it.
    ///
    /// LoRA adapters, when present and not merged, take part (without dropout).
    pub fn forward_hidden(
        &self,
        input_ids: &Tensor,
        positions: &Tensor,
        attention_mask: &Tensor,
        mut cache: Option<&mut KvCache>,
    ) -> Result<Tensor> {
        let _no_grad = tch::no_grad_guard();
        let cached = cache.as_ref().map_or(0, |c| c.len());
        self.check_inputs(input_ids, positions, attention_mask, cached)?;
        let (batch, seq) = (input_ids.size()[0], input_ids.size()[1]);
        if let Some(cache) = cache.as_ref() {
            cache.check_room(batch, seq)?;
        }
        let input_ids = input_ids.to_device(self.device);
        let positions = positions.to_device(self.device);
        let mut mask = attention_mask_for(&attention_mask.to_device(self.device), seq, cached);
        let adapters = match &self.lora {
            Some(state) if !state.merged => AdapterMode::On,
            _ => AdapterMode::Off,
        };
        let kv = match cache.as_deref() {
            // libtorch's bf16 batched product on the CPU first copies an operand whose
            // matrices are strided, as the filled part of the cache is: that copy took half of
            // a decoding layer's time. Over the whole dense buffers, the unfilled slots masked
            // (one mask for every layer), attention reads more slots but copies none.
            Some(cache)
                if seq == 1 && self.device == Device::Cpu && self.kind == Kind::BFloat16 =>
            {
                mask = whole_cache_mask(&mask, batch, cached + seq, cache.capacity());
                PassKv::WholeCache(cache)
            }
            Some(cache) => PassKv::Cache(cache),
            None => PassKv::Fresh,
        };
        let hidden = self.run_blocks(&input_ids, &positions, &mask, kv, adapters);
        if let Some(cache) = cache.as_mut() {
            cache.advance(seq);
        }
        Ok(hidden)
    }

    /// Logits (fp32, `[batch, seq, vocab]`) of right-padded `input_ids` (`[batch, seq]`,
    /// int64) with `attention_mask` (`[batch, seq]`, 1 = real token, every row's real tokens
    /// first), at positions `0..seq`, without a cache: the training pass. See
    /// [`CausalLm::forward_train_hidden`].
    pub fn forward_train(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        adapter: bool,
        train: bool,
    ) -> Result<Tensor> {
        let hidden = self.forward_train_hidden(input_ids, attention_mask, adapter, train)?;
        Ok(self.lm_head.forward(&hidden).to_kind(Kind::Float))
    }

    /// The final hidden states (`[batch, seq, d]`) of the training pass, for callers that
    /// apply the output head in slices (the `[batch, seq, vocab]` logits of long batches are
    /// large); `self.lm_head.forward(&hidden)` gives the logits with the graph kept.
    ///
    /// With `adapter` the LoRA adapters take part and, when grad mode is on, the autograd
    /// graph to their parameters is recorded (frozen weights never get gradients); without,
    /// this is the base model (the DPO reference), from the same weights. `train` turns the
    /// adapters' dropout on. On the CPU the frozen fp32 products run through the backend
    /// sampling uses ([`layers::MatmulBackend`]; libtorch differentiates oneDNN's inner
    /// product with respect to the input, which adapters in earlier layers need). Causal
    /// attention over right padding needs no mask: real tokens come first, so no real query
    /// ever sees a padding key; the logits at padding positions are meaningless and must be
    /// masked by the caller.
    ///
    /// Errors when the mask is not right-padded, when `adapter` is asked of a model without
    /// adapters, or while the adapters are merged.
    pub fn forward_train_hidden(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        adapter: bool,
        train: bool,
    ) -> Result<Tensor> {
        let adapters = self.training_adapters(adapter, train)?;
        let shape = input_ids.size();
        let positions = match shape.as_slice() {
            &[batch, seq] => Tensor::arange(seq, (Kind::Int64, input_ids.device()))
                .view([1, seq])
                .expand([batch, seq], false),
            _ => input_ids.shallow_clone(), // check_inputs names the bad shape
        };
        self.check_inputs(input_ids, &positions, attention_mask, 0)?;
        check_right_padded(attention_mask)?;
        let input_ids = input_ids.to_device(self.device);
        let positions = positions.to_device(self.device);
        Ok(self.run_blocks(
            &input_ids,
            &positions,
            &AttentionMask::Causal,
            PassKv::Fresh,
            adapters,
        ))
    }

    /// The training pass over prompts that several continuations share (the chosen and the
    /// rejected completion of a DPO pair): each prompt runs once, and each continuation
    /// attends to its prompt's keys and values as if it followed the prompt in one sequence,
    /// with gradients flowing back through the shared prompt. The hidden states equal those
    /// of [`CausalLm::forward_train_hidden`] on the concatenated sequences, to float
    /// rounding, for about the cost of the prompts once instead of once per continuation.
    ///
    /// Returns the final hidden states of the prompts (`[prompts, Lp, d]`) and of the
    /// continuations (`[rows, Lc, d]`); those at padding are meaningless. `adapter` and
    /// `train` are as for [`CausalLm::forward_train_hidden`].
    pub fn forward_train_shared_prompts(
        &self,
        batch: &SharedPromptBatch,
        adapter: bool,
        train: bool,
    ) -> Result<(Tensor, Tensor)> {
        let adapters = self.training_adapters(adapter, train)?;
        let SharedPromptBatch {
            prompt_ids,
            prompt_mask,
            continuation_ids,
            continuation_mask,
            prompt_of,
        } = batch;
        let (prompts, prompt_width) = two_dims("prompt_ids", prompt_ids)?;
        let (rows, width) = two_dims("continuation_ids", continuation_ids)?;
        if prompt_of.len() as i64 != rows || prompt_of.iter().any(|&p| !(0..prompts).contains(&p)) {
            return Err(ModelError::InvalidArgument {
                name: "prompt_of",
                message: format!(
                    "{} prompt indices for {rows} continuation rows; each must lie in \
                     0..{prompts}",
                    prompt_of.len()
                ),
            });
        }
        let device = self.device;
        let arange = |n: i64| Tensor::arange(n, (Kind::Int64, device));
        let prompt_positions = arange(prompt_width)
            .view([1, prompt_width])
            .expand([prompts, prompt_width], false);
        self.check_inputs(prompt_ids, &prompt_positions, prompt_mask, 0)?;
        check_right_padded(prompt_mask)?;
        let mut kept = Vec::with_capacity(self.layers.len());
        let prompt_hidden = self.run_blocks(
            &prompt_ids.to_device(device),
            &prompt_positions,
            &AttentionMask::Causal,
            PassKv::Record(&mut kept),
            adapters,
        );

        let row_prompt = Tensor::from_slice(prompt_of).to_device(device);
        let prompt_lengths = prompt_mask
            .to_device(device)
            .ne(0)
            .sum_dim_intlist(1, false, Kind::Int64)
            .index_select(0, &row_prompt);
        // Each continuation token sits right after its prompt's last real token.
        let positions = prompt_lengths.view([rows, 1]) + arange(width).view([1, width]);
        self.check_inputs(continuation_ids, &positions, continuation_mask, 0)?;
        check_right_padded(continuation_mask)?;
        let prefix: Vec<(Tensor, Tensor)> = kept
            .iter()
            .map(|(keys, values)| {
                (
                    keys.index_select(0, &row_prompt),
                    values.index_select(0, &row_prompt),
                )
            })
            .collect();
        // A continuation query sees its prompt's real tokens and, causally, its own row
        // (padding keys of the continuation come after every real query, so causality hides
        // them).
        let prompt_keys = arange(prompt_width)
            .view([1, 1, 1, prompt_width])
            .lt_tensor(&prompt_lengths.view([rows, 1, 1, 1]))
            .expand([rows, 1, width, prompt_width], false);
        let own_keys = Tensor::ones([width, width], (Kind::Bool, device))
            .tril(0)
            .view([1, 1, width, width])
            .expand([rows, 1, width, width], false);
        let allowed = Tensor::cat(&[prompt_keys, own_keys], 3);
        let hidden = self.run_blocks(
            &continuation_ids.to_device(device),
            &positions,
            &AttentionMask::Allowed(allowed),
            PassKv::Prefix(&prefix),
            adapters,
        );
        Ok((prompt_hidden, hidden))
    }

    /// How the adapters take part in a training pass (see
    /// [`CausalLm::forward_train_hidden`]).
    fn training_adapters(&self, adapter: bool, train: bool) -> Result<AdapterMode> {
        Ok(match (&self.lora, adapter) {
            (Some(state), _) if state.merged => {
                return Err(ModelError::LoraState(
                    "the adapters are merged into the weights; unmerge them before a training \
                     pass"
                        .to_string(),
                ))
            }
            (_, false) => AdapterMode::Off,
            (None, true) => {
                return Err(ModelError::LoraState(
                    "a pass with the adapter was asked for, but the model has none (add_lora \
                     or load_adapter first)"
                        .to_string(),
                ))
            }
            (Some(_), true) if train => AdapterMode::Training,
            (Some(_), true) => AdapterMode::On,
        })
    }

    /// Embedding, every block and the final norm.
    fn run_blocks(
        &self,
        input_ids: &Tensor,
        positions: &Tensor,
        mask: &AttentionMask,
        mut kv: PassKv<'_>,
        adapters: AdapterMode,
    ) -> Tensor {
        let (batch, seq) = (input_ids.size()[0], input_ids.size()[1]);
        let (cos, sin) = self.rope.angles_at(positions);
        let pass = PassInputs {
            cos: &cos,
            sin: &sin,
            mask,
            adapters,
        };
        let mut hidden = self
            .embed_tokens
            .index_select(0, &input_ids.reshape([-1]))
            .view([batch, seq, -1]);
        for (i, layer) in self.layers.iter().enumerate() {
            let layer_kv = match &mut kv {
                PassKv::Fresh => LayerKv::Fresh,
                PassKv::Cache(cache) => LayerKv::Cache(cache.layer(i)),
                PassKv::WholeCache(cache) => LayerKv::WholeCache(cache.layer(i)),
                PassKv::Record(kept) => LayerKv::Record(kept),
                PassKv::Prefix(prefix) => LayerKv::Prefix(&prefix[i]),
            };
            hidden = layer.forward(&hidden, pass, layer_kv);
        }
        self.norm.forward(&hidden)
    }

    /// The output head applied to hidden states (any leading shape), as fp32 logits.
    pub fn logits(&self, hidden: &Tensor) -> Tensor {
        let _no_grad = tch::no_grad_guard();
        self.lm_head.forward(hidden).to_kind(Kind::Float)
    }

    /// Packs the weights of every decoder projection for products of `rows` rows, as
    /// decoding runs them (one new position per row, thousands of steps on the same weights),
    /// until the returned guard drops; see [`Linear::pack_for_rows`]. The output head is left
    /// alone: its products are wide enough that MKL's own packing costs little (88 % of the
    /// matrix-product limit in `sampling_profile`), and a second copy of the embedding would
    /// cost its memory. Do not change the weights (merge or unmerge adapters) while packed.
    pub fn pack_for_decoding(&self, rows: i64) -> PackedForDecoding<'_> {
        let packed = PackedForDecoding { model: self };
        packed.repack(rows);
        packed
    }

    fn check_inputs(
        &self,
        input_ids: &Tensor,
        positions: &Tensor,
        attention_mask: &Tensor,
        cached: i64,
    ) -> Result<()> {
        let invalid = |message: String| {
            Err(ModelError::InvalidArgument {
                name: "model input",
                message,
            })
        };
        let ids_shape = input_ids.size();
        if ids_shape.len() != 2 || ids_shape.contains(&0) {
            return invalid(format!(
                "input_ids has shape {ids_shape:?}; expected [batch ≥ 1, seq ≥ 1]"
            ));
        }
        if input_ids.kind() != Kind::Int64 || positions.kind() != Kind::Int64 {
            return invalid("input_ids and positions must be int64".to_string());
        }
        if positions.size() != ids_shape {
            return invalid(format!(
                "positions has shape {:?}, input_ids {ids_shape:?}",
                positions.size()
            ));
        }
        let mask_shape = [ids_shape[0], cached + ids_shape[1]];
        if attention_mask.size() != mask_shape {
            return invalid(format!(
                "attention_mask has shape {:?}; with {cached} cached slots it must be {mask_shape:?}",
                attention_mask.size()
            ));
        }
        let vocab = self.config.vocab_size as i64;
        let (id_min, id_max) = (
            i64::try_from(input_ids.min())?,
            i64::try_from(input_ids.max())?,
        );
        if id_min < 0 || id_max >= vocab {
            return invalid(format!(
                "token ids must lie in 0..{vocab}; found {id_min}..={id_max}"
            ));
        }
        let (pos_min, pos_max) = (
            i64::try_from(positions.min())?,
            i64::try_from(positions.max())?,
        );
        if pos_min < 0 || pos_max >= self.max_positions() {
            return invalid(format!(
                "positions must lie in 0..{}; found {pos_min}..={pos_max}",
                self.max_positions()
            ));
        }
        Ok(())
    }
}

/// Right-padded prompts and the continuations that share them, the input of
/// [`CausalLm::forward_train_shared_prompts`].
#[derive(Debug)]
pub struct SharedPromptBatch {
    /// `[prompts, Lp]` token ids (int64).
    pub prompt_ids: Tensor,
    /// `[prompts, Lp]`, 1 at real tokens, 0 at padding (each row's real tokens first).
    pub prompt_mask: Tensor,
    /// `[rows, Lc]` token ids of the continuations.
    pub continuation_ids: Tensor,
    /// `[rows, Lc]`, 1 at real tokens, 0 at padding.
    pub continuation_mask: Tensor,
    /// The prompt (row of `prompt_ids`) of each continuation row.
    pub prompt_of: Vec<i64>,
}

/// Where the blocks of one pass find keys and values besides the new positions' (see
/// [`LayerKv`]).
enum PassKv<'a> {
    Fresh,
    Cache(&'a KvCache),
    WholeCache(&'a KvCache),
    Record(&'a mut Vec<(Tensor, Tensor)>),
    Prefix(&'a [(Tensor, Tensor)]),
}

/// The mask of a decoding step over a whole cache buffer (`[batch, 1, 1, capacity]`): the
/// slots `mask` allows among the `filled` ones, and none after them.
fn whole_cache_mask(mask: &AttentionMask, batch: i64, filled: i64, capacity: i64) -> AttentionMask {
    let allowed = Tensor::zeros([batch, 1, 1, capacity], (Kind::Bool, Device::Cpu));
    let mut seen = allowed.narrow(3, 0, filled);
    match mask {
        AttentionMask::Allowed(mask) => {
            seen.copy_(mask);
        }
        AttentionMask::Everything | AttentionMask::Causal => {
            let _ = seen.fill_(1);
        }
    }
    AttentionMask::Allowed(allowed)
}

/// The two dimensions of a `[rows, width]` input, or an error naming it.
fn two_dims(name: &'static str, tensor: &Tensor) -> Result<(i64, i64)> {
    match tensor.size().as_slice() {
        &[rows, width] if rows > 0 && width > 0 => Ok((rows, width)),
        shape => Err(ModelError::InvalidArgument {
            name,
            message: format!("shape {shape:?}; expected [rows ≥ 1, width ≥ 1]"),
        }),
    }
}

/// Checks that every row of `attention_mask` (`[batch, seq]`) is real tokens then padding.
fn check_right_padded(attention_mask: &Tensor) -> Result<()> {
    let seq = attention_mask.size()[1];
    let real = attention_mask.ne(0);
    let pad_then_real = real
        .narrow(1, 1, seq - 1)
        .logical_and(&real.narrow(1, 0, seq - 1).logical_not());
    if bool::try_from(pad_then_real.any())? {
        return Err(ModelError::InvalidArgument {
            name: "attention_mask",
            message: "a row has a real token after padding; the training pass takes right-padded \
                      batches (each row's real tokens first, at positions 0, 1, …)"
                .to_string(),
        });
    }
    Ok(())
}

/// Which keys each new query may attend to (`Allowed`: `[batch, 1, seq, cached + seq]`, true
/// = may), with the cheaper forms when there is no padding.
///
/// Query i sits in slot `cached + i`; it sees slots up to its own (causality) that hold real
/// tokens. A padding query would see nothing at all, and softmax over nothing is NaN, which
/// would then leak into real rows through 0 · NaN; so every query also sees its own slot.
fn attention_mask_for(attention_mask: &Tensor, seq: i64, cached: i64) -> AttentionMask {
    let real = attention_mask.ne(0);
    if bool::try_from(real.all()).unwrap_or(false) {
        if seq == 1 {
            return AttentionMask::Everything;
        }
        if cached == 0 {
            return AttentionMask::Causal;
        }
    }
    let device = attention_mask.device();
    let keys = cached + seq;
    let key_slots = Tensor::arange(keys, (Kind::Int64, device)).view([1, keys]);
    let query_slots = Tensor::arange_start(cached, keys, (Kind::Int64, device)).view([seq, 1]);
    let causal = key_slots.le_tensor(&query_slots);
    let own_slot = key_slots.eq_tensor(&query_slots);
    let real_keys = real.view([-1, 1, 1, keys]);
    AttentionMask::Allowed((real_keys.logical_and(&causal)).logical_or(&own_slot))
}
