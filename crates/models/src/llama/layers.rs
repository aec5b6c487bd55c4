//! The building blocks of a Llama-family decoder block, each a small struct that owns its
//! weights: [`Linear`] projections, [`RmsNorm`], [`RotaryEmbedding`], grouped-query
//! [`Attention`], the SwiGLU [`Mlp`] and the pre-norm [`DecoderLayer`] that wires them. The
//! seven projections of a block can carry LoRA adapters (see `lora.rs`).

use std::sync::{Arc, Mutex};

use tch::{Device, Kind, Tensor};

use super::cache::LayerKv;
use super::config::LlamaConfig;
use super::lora::{AdaptedLinear, AdapterMode, LoraTarget};
use super::mkl_packed::PackedWeight;
use super::{mkl_packed, onednn};

/// Which library multiplies matrices for a [`Linear`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatmulBackend {
    /// libtorch's `linear` (MKL on the CPU, cuBLAS on CUDA), which packs the weight anew at
    /// every call.
    Torch,
    /// libtorch's `linear` as [`Self::Torch`], except while decoding: then the weights are
    /// packed once into MKL's layout for the whole generation (see `mkl_packed.rs`). Opt-in
    /// (`FEDSYN_CPU_MATMUL=mkl-packed`): decoding runs 6–10 % faster, but the packed copy
    /// raised a demo round's peak memory by 12 % (BENCHMARKS.md).
    MklPacked,
    /// oneDNN's fp32 inner product (CPU, fp32 only); see `onednn.rs` for why.
    OneDnn,
}

impl MatmulBackend {
    /// For fp32 CPU weights: oneDNN where it runs AVX-512 and libtorch's MKL would run AVX2
    /// (processors with AVX-512 but not Intel's: MKL picks AVX-512 code on Intel parts only).
    /// MKL wherever both run the same width, since oneDNN's inner product re-lays the weight
    /// out on every call: on Intel with AVX-512 (about 15 % slower prefill and 10 % slower
    /// decoding through oneDNN on a Xeon, `sampling_profile` example), and with both capped at
    /// AVX2, as on processors without AVX-512 (sampling through oneDNN 2–12 % slower, same machine).
    /// libtorch's `linear` on every other device or dtype.
    /// `FEDSYN_CPU_MATMUL=torch`, `=mkl-packed` or `=onednn` forces one (to compare them).
    pub fn for_weight(weight: &Tensor) -> MatmulBackend {
        if weight.device() != Device::Cpu || weight.kind() != Kind::Float {
            return MatmulBackend::Torch;
        }
        MatmulBackend::cpu_fp32()
    }

    /// The backend of fp32 products on the CPU in this process (see [`Self::for_weight`]).
    pub fn cpu_fp32() -> MatmulBackend {
        // Decided once per process: the environment, the processor and the libtorch build
        // are the same for every layer.
        static CPU_FP32: std::sync::OnceLock<MatmulBackend> = std::sync::OnceLock::new();
        *CPU_FP32.get_or_init(|| match std::env::var("FEDSYN_CPU_MATMUL").as_deref() {
            Ok("torch") => MatmulBackend::Torch,
            Ok("mkl-packed") if mkl_packed::available() => MatmulBackend::MklPacked,
            Ok("mkl-packed") => MatmulBackend::Torch,
            _ if !onednn::available() => MatmulBackend::Torch,
            Ok("onednn") => MatmulBackend::OneDnn,
            _ if onednn::onednn_runs_wider_than_mkl() => MatmulBackend::OneDnn,
            _ => MatmulBackend::Torch,
        })
    }

    /// The name `fedsyn doctor` reports and `FEDSYN_CPU_MATMUL` takes.
    pub fn name(self) -> &'static str {
        match self {
            MatmulBackend::Torch => "torch",
            MatmulBackend::MklPacked => "mkl-packed",
            MatmulBackend::OneDnn => "onednn",
        }
    }
}

/// An affine map `y = x Wᵀ + b` with frozen weights (LoRA adapters attach around it).
#[derive(Debug)]
pub struct Linear {
    /// The weight, `[out_features, in_features]` as PyTorch stores it, contiguous.
    weight: Tensor,
    /// The bias, `[out_features]`, when the layer has one.
    bias: Option<Tensor>,
    backend: MatmulBackend,
    /// The weight in MKL's packed layout while a generation decodes
    /// ([`Linear::pack_for_rows`]); only [`MatmulBackend::MklPacked`] layers get one.
    packed: Mutex<Option<Arc<PackedWeight>>>,
}

impl Linear {
    /// Wraps a `[out, in]` weight and an optional `[out]` bias (already on their device and
    /// in the compute dtype).
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Linear {
        let weight = weight.contiguous();
        Linear {
            backend: MatmulBackend::for_weight(&weight),
            weight,
            bias: bias.map(|b| b.contiguous()),
            packed: Mutex::new(None),
        }
    }

    /// Applies the map to the last dimension of `x`. Differentiable with respect to `x` on
    /// both backends (oneDNN's inner product has a backward pass in libtorch), never with
    /// respect to the frozen weight.
    pub fn forward(&self, x: &Tensor) -> Tensor {
        if self.backend == MatmulBackend::MklPacked && !x.requires_grad() {
            if let Some(packed) = self.packed_weight() {
                // Another row count (a prefill beside the decoding) takes libtorch's product.
                if x.kind() == Kind::Float && x.device() == Device::Cpu && packed.fits(x) {
                    return packed.linear(x, self.bias.as_ref());
                }
            }
        }
        if self.backend == MatmulBackend::OneDnn && x.kind() == Kind::Float {
            // A failure here would be a libtorch build without a oneDNN piece; the plain
            // product is the same map.
            if let Ok(y) = onednn::linear(x, &self.weight, self.bias.as_ref()) {
                return y;
            }
        }
        x.linear(&self.weight, self.bias.as_ref())
    }

    /// The library that multiplies for this layer.
    pub fn backend(&self) -> MatmulBackend {
        self.backend
    }

    /// Packs the weight into MKL's layout for products of `rows` rows, used by
    /// [`Linear::forward`] (outside autograd, for inputs of that many rows) until
    /// [`Linear::unpack`] or the next packing. Nothing happens unless
    /// the backend is [`MatmulBackend::MklPacked`]. The packed copy costs the weight's memory
    /// again, which is why it lives only while a generation decodes.
    pub(crate) fn pack_for_rows(&self, rows: i64) {
        if self.backend != MatmulBackend::MklPacked {
            return;
        }
        let packed = PackedWeight::new(&self.weight, rows).map(Arc::new);
        *self
            .packed
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = packed;
    }

    /// Drops the packed copy, if any: products go back to libtorch's `linear`.
    pub(crate) fn unpack(&self) {
        *self
            .packed
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = None;
    }

    fn packed_weight(&self) -> Option<Arc<PackedWeight>> {
        self.packed
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Stacks the output rows of maps of the same input into one map, so that one matrix
    /// product computes them all (fewer, larger products run faster), and rebuilds each part
    /// as a view of the stacked weight, so the weights are stored once. All parts have a bias
    /// or none does.
    pub fn stacked(parts: Vec<Linear>) -> (Linear, Vec<Linear>) {
        let weights: Vec<&Tensor> = parts.iter().map(|p| &p.weight).collect();
        let biases: Option<Vec<&Tensor>> = parts.iter().map(|p| p.bias.as_ref()).collect();
        let stacked = Linear::new(
            Tensor::cat(&weights, 0),
            biases.map(|biases| Tensor::cat(&biases, 0)),
        );
        let mut start = 0;
        let views = parts
            .iter()
            .map(|part| {
                let rows = part.out_features();
                let view = Linear {
                    weight: stacked.weight.narrow(0, start, rows),
                    bias: stacked.bias.as_ref().map(|b| b.narrow(0, start, rows)),
                    backend: stacked.backend,
                    packed: Mutex::new(None),
                };
                start += rows;
                view
            })
            .collect();
        (stacked, views)
    }

    /// The weight, `[out_features, in_features]`.
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// The bias, if any.
    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }

    /// Width of the input.
    pub fn in_features(&self) -> i64 {
        self.weight.size()[1]
    }

    /// Width of the output.
    pub fn out_features(&self) -> i64 {
        self.weight.size()[0]
    }
}

/// Root-mean-square normalisation: `x / sqrt(mean(x²) + ε) · g`, computed in fp32 whatever
/// the compute dtype, as the reference implementation does, because bf16 squares lose the
/// small components.
#[derive(Debug)]
pub struct RmsNorm {
    gain: Tensor,
    eps: f64,
}

impl RmsNorm {
    /// A norm with per-channel gain `gain` (`[d]`).
    pub fn new(gain: Tensor, eps: f64) -> RmsNorm {
        RmsNorm { gain, eps }
    }

    /// Normalises the last dimension of `x`.
    pub fn forward(&self, x: &Tensor) -> Tensor {
        let kind = x.kind();
        if kind == Kind::Float {
            // libtorch's fused kernel: one pass instead of six element-wise operations.
            let width = x.size().last().copied().unwrap_or(0);
            return x.rms_norm([width], Some(&self.gain), self.eps);
        }
        let x32 = x.to_kind(Kind::Float);
        let mean_square = x32.square().mean_dim(-1, true, Kind::Float);
        let normalised = x32 * (mean_square + self.eps).rsqrt();
        &self.gain * normalised.to_kind(kind)
    }
}

/// Rotary position embeddings with the "rotate half" pairing of Hugging Face checkpoints:
/// value i of a head is paired with value i + head_dim/2, and pair i turns by the angle
/// position · θ^(−2i/head_dim).
#[derive(Debug)]
pub struct RotaryEmbedding {
    /// cos of every angle, `[max_positions, head_dim]` (each frequency twice, once per half).
    cos: Tensor,
    /// sin of the same angles, negated in the first half: the rotation of a pair (a, b) is
    /// (a cos − b sin, b cos + a sin), i.e. `x cos + swap_halves(x) signed_sin`.
    signed_sin: Tensor,
}

impl RotaryEmbedding {
    /// Precomputes the angles of positions `0..max_positions`. Frequencies and angles are
    /// computed in fp32 exactly as transformers does, then cast to `kind`.
    pub fn new(config: &LlamaConfig, max_positions: usize, device: Device, kind: Kind) -> Self {
        let head_dim = config.head_dim as i64;
        let exponents = Tensor::arange_start_step(0, head_dim, 2, (Kind::Int64, device))
            .to_kind(Kind::Float)
            / head_dim as f64;
        let theta = Tensor::from(config.rope_theta as f32).to_device(device);
        let inverse_frequencies = theta.pow(&exponents).reciprocal();
        let positions = Tensor::arange(max_positions as i64, (Kind::Float, device));
        let angles = positions.outer(&inverse_frequencies);
        let sin = angles.sin();
        RotaryEmbedding {
            cos: Tensor::cat(&[&angles, &angles], -1).cos().to_kind(kind),
            signed_sin: Tensor::cat(&[&sin.neg(), &sin], -1).to_kind(kind),
        }
    }

    /// The number of positions the tables cover.
    pub fn max_positions(&self) -> i64 {
        self.cos.size()[0]
    }

    /// cos and signed sin for `positions` (`[batch, seq]`), shaped `[batch, 1, seq,
    /// head_dim]` to broadcast over heads.
    pub fn angles_at(&self, positions: &Tensor) -> (Tensor, Tensor) {
        let flat = positions.reshape([-1]);
        let (batch, seq) = (positions.size()[0], positions.size()[1]);
        let pick = |table: &Tensor| table.index_select(0, &flat).reshape([batch, 1, seq, -1]);
        (pick(&self.cos), pick(&self.signed_sin))
    }
}

/// Turns `x` (`[batch, heads, seq, head_dim]`) by the angles whose cos and signed sin are
/// given: `x cos + swap_halves(x) signed_sin`, which is transformers'
/// `x cos + rotate_half(x) sin` with the sign moved into the table (three operations
/// instead of six; this runs twice per layer and step).
fn apply_rotary(x: &Tensor, cos: &Tensor, signed_sin: &Tensor) -> Tensor {
    let half = x.size()[3] / 2;
    let swapped = x.roll([half], [3]);
    (x * cos).addcmul(&swapped, signed_sin)
}

/// Which slots (cached and new) each new query may attend to.
#[derive(Debug)]
pub enum AttentionMask {
    /// Every query may see every slot: one new token per row and no padding.
    Everything,
    /// Nothing cached and no padding: query i sees slots 0..=i, which lets the fused kernel
    /// skip the blocks above the diagonal instead of computing and then masking them.
    Causal,
    /// `[batch, 1, seq, keys]`, true where the query may see the key.
    Allowed(Tensor),
}

/// What every block of one forward pass sees alike: the rotary angles of the new positions
/// (from [`RotaryEmbedding::angles_at`]), which keys each query may see, and whether the
/// adapters take part. Built once per pass and handed to every block by value (it holds only
/// references).
#[derive(Clone, Copy)]
pub(crate) struct PassInputs<'a> {
    pub(crate) cos: &'a Tensor,
    pub(crate) sin: &'a Tensor,
    pub(crate) mask: &'a AttentionMask,
    pub(crate) adapters: AdapterMode,
}

/// Multi-head attention whose keys and values have fewer heads than its queries (grouped-query
/// attention); each key/value head serves `heads / kv_heads` consecutive query heads.
#[derive(Debug)]
pub struct Attention {
    /// The query (`d → heads · head_dim`), key and value (`d → kv_heads · head_dim`)
    /// projections stacked into one product.
    qkv_proj: AdaptedLinear,
    /// Output projection, `heads · head_dim → d`.
    o_proj: AdaptedLinear,
    num_heads: i64,
    num_kv_heads: i64,
    head_dim: i64,
}

impl Attention {
    /// Assembles the four projections (q, k, v, o) of a layer.
    pub(crate) fn new(config: &LlamaConfig, projections: [Linear; 4]) -> Attention {
        let [q_proj, k_proj, v_proj, o_proj] = projections;
        Attention {
            qkv_proj: AdaptedLinear::stacked(vec![
                (LoraTarget::Q, q_proj),
                (LoraTarget::K, k_proj),
                (LoraTarget::V, v_proj),
            ]),
            o_proj: AdaptedLinear::single(LoraTarget::O, o_proj),
            num_heads: config.num_heads as i64,
            num_kv_heads: config.num_kv_heads as i64,
            head_dim: config.head_dim as i64,
        }
    }

    /// Attends from the `seq` new positions of `x` (`[batch, seq, d]`) to every earlier
    /// position `kv` supplies (a cache, or a shared prompt) and to themselves, with the
    /// angles, mask and adapter mode of `pass`.
    pub(crate) fn forward(&self, x: &Tensor, pass: PassInputs<'_>, kv: LayerKv<'_>) -> Tensor {
        let PassInputs {
            cos,
            sin,
            mask,
            adapters,
        } = pass;
        let (batch, seq) = (x.size()[0], x.size()[1]);
        let (heads, kv_heads) = (self.num_heads, self.num_kv_heads);
        // One product for q, k and v; heads laid out [batch, q heads | k heads | v heads,
        // seq, head_dim]. Queries and keys turn by the same angles, so they are rotated
        // together.
        let all_heads = self
            .qkv_proj
            .forward(x, adapters)
            .view([batch, seq, heads + 2 * kv_heads, self.head_dim])
            .transpose(1, 2);
        let rotated = apply_rotary(&all_heads.narrow(1, 0, heads + kv_heads), cos, sin);
        let queries = rotated.narrow(1, 0, heads);
        let keys = rotated.narrow(1, heads, kv_heads);
        let values = all_heads.narrow(1, heads + kv_heads, kv_heads);
        let (keys, values) = match kv {
            LayerKv::Fresh => (keys, values),
            LayerKv::Cache(cache) => cache.append(&keys, &values),
            LayerKv::WholeCache(cache) => cache.append_whole(&keys, &values),
            LayerKv::Record(kept) => {
                kept.push((keys.shallow_clone(), values.shallow_clone()));
                (keys, values)
            }
            LayerKv::Prefix((prompt_keys, prompt_values)) => (
                Tensor::cat(&[prompt_keys, &keys], 2),
                Tensor::cat(&[prompt_values, &values], 2),
            ),
        };
        let scale = 1.0 / (self.head_dim as f64).sqrt();
        let (allowed, causal) = match mask {
            AttentionMask::Everything => (None, false),
            AttentionMask::Causal => (None, true),
            AttentionMask::Allowed(allowed) => (Some(allowed), false),
        };
        let attended = if seq == 1 && x.device() == Device::Cpu {
            self.attend_one_query(&queries, &keys, &values, allowed, scale)
        } else {
            Tensor::scaled_dot_product_attention(
                &queries,
                &keys,
                &values,
                allowed,
                0.0,
                causal,
                scale,
                self.num_heads != self.num_kv_heads,
            )
        };
        let merged = attended
            .transpose(1, 2)
            .reshape([batch, seq, self.num_heads * self.head_dim]);
        self.o_proj.forward(&merged, adapters)
    }
}

impl Attention {
    /// Attention of one new position per row (a decoding step) on the CPU: the query heads
    /// that share a key/value head are stacked into one small matrix, so each row's cached
    /// keys and values are read once per group by two batched products, where libtorch's
    /// fused kernel runs one matrix-vector product per query head.
    fn attend_one_query(
        &self,
        queries: &Tensor,
        keys: &Tensor,
        values: &Tensor,
        allowed: Option<&Tensor>,
        scale: f64,
    ) -> Tensor {
        let batch = queries.size()[0];
        let group = self.num_heads / self.num_kv_heads;
        let grouped = queries.reshape([batch, self.num_kv_heads, group, self.head_dim]) * scale;
        let mut scores = grouped.matmul(&keys.transpose(2, 3));
        if let Some(allowed) = allowed {
            // allowed: [batch, 1, 1, keys], broadcast over key/value heads and the group.
            scores = scores.masked_fill(&allowed.logical_not(), f64::NEG_INFINITY);
        }
        scores.softmax(-1, scores.kind()).matmul(values).reshape([
            batch,
            self.num_heads,
            1,
            self.head_dim,
        ])
    }
}

/// The SwiGLU feed-forward network: `down(silu(gate(x)) ⊙ up(x))`.
#[derive(Debug)]
pub struct Mlp {
    /// The gate and up projections (`d → intermediate` each) stacked into one product.
    gate_up_proj: AdaptedLinear,
    /// Down projection, `intermediate → d`.
    down_proj: AdaptedLinear,
    /// Width of the gate (and of the up) projection.
    intermediate: i64,
}

impl Mlp {
    /// Assembles the three projections of a layer.
    pub(crate) fn new(gate_proj: Linear, up_proj: Linear, down_proj: Linear) -> Mlp {
        Mlp {
            intermediate: gate_proj.out_features(),
            gate_up_proj: AdaptedLinear::stacked(vec![
                (LoraTarget::Gate, gate_proj),
                (LoraTarget::Up, up_proj),
            ]),
            down_proj: AdaptedLinear::single(LoraTarget::Down, down_proj),
        }
    }

    /// Applies the network to the last dimension of `x`.
    pub(crate) fn forward(&self, x: &Tensor, adapters: AdapterMode) -> Tensor {
        let gate_up = self.gate_up_proj.forward(x, adapters);
        let width = self.intermediate;
        let gate = gate_up.narrow(-1, 0, width).silu();
        self.down_proj
            .forward(&(gate * gate_up.narrow(-1, width, width)), adapters)
    }
}

/// One pre-norm decoder block: `h = x + attn(norm₁(x))`, `out = h + mlp(norm₂(h))`.
#[derive(Debug)]
pub struct DecoderLayer {
    /// Norm before attention (`input_layernorm`).
    pub input_norm: RmsNorm,
    /// The attention sub-layer.
    pub attention: Attention,
    /// Norm before the MLP (`post_attention_layernorm`).
    pub post_attention_norm: RmsNorm,
    /// The feed-forward sub-layer.
    pub mlp: Mlp,
}

impl DecoderLayer {
    /// Runs the block on `x` (`[batch, seq, d]`); see [`Attention::forward`] for the rest.
    pub(crate) fn forward(&self, x: &Tensor, pass: PassInputs<'_>, kv: LayerKv<'_>) -> Tensor {
        let attended = self
            .attention
            .forward(&self.input_norm.forward(x), pass, kv);
        let h = x + attended;
        let fed_forward = self
            .mlp
            .forward(&self.post_attention_norm.forward(&h), pass.adapters);
        h + fed_forward
    }

    /// The projection that computes `target` (q, k and v share one, as do gate and up).
    pub(crate) fn projection(&self, target: LoraTarget) -> &AdaptedLinear {
        match target {
            LoraTarget::Q | LoraTarget::K | LoraTarget::V => &self.attention.qkv_proj,
            LoraTarget::O => &self.attention.o_proj,
            LoraTarget::Gate | LoraTarget::Up => &self.mlp.gate_up_proj,
            LoraTarget::Down => &self.mlp.down_proj,
        }
    }

    /// As [`DecoderLayer::projection`], mutable.
    pub(crate) fn projection_mut(&mut self, target: LoraTarget) -> &mut AdaptedLinear {
        match target {
            LoraTarget::Q | LoraTarget::K | LoraTarget::V => &mut self.attention.qkv_proj,
            LoraTarget::O => &mut self.attention.o_proj,
            LoraTarget::Gate | LoraTarget::Up => &mut self.mlp.gate_up_proj,
            LoraTarget::Down => &mut self.mlp.down_proj,
        }
    }

    /// The frozen maps of the block's four (stacked) projections.
    pub(crate) fn linears(&self) -> [&Linear; 4] {
        [
            self.attention.qkv_proj.base(),
            self.attention.o_proj.base(),
            self.mlp.gate_up_proj.base(),
            self.mlp.down_proj.base(),
        ]
    }

    /// The block's four (stacked) projections.
    pub(crate) fn projections_mut(&mut self) -> [&mut AdaptedLinear; 4] {
        [
            &mut self.attention.qkv_proj,
            &mut self.attention.o_proj,
            &mut self.mlp.gate_up_proj,
            &mut self.mlp.down_proj,
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotate_half_turns_each_pair_by_its_angle() {
        // head_dim 4: pairs (0, 2) and (1, 3); with θ = 10000, pair 1 turns by pos / 100.
        let config = LlamaConfig {
            family: super::super::config::Family::Llama,
            vocab_size: 1,
            hidden_size: 4,
            intermediate_size: 1,
            num_layers: 1,
            num_heads: 1,
            num_kv_heads: 1,
            head_dim: 4,
            rope_theta: 10_000.0,
            rms_norm_eps: 1e-6,
            max_position_embeddings: 8,
            tie_word_embeddings: true,
            qkv_bias: false,
            o_bias: false,
            mlp_bias: false,
        };
        let rope = RotaryEmbedding::new(&config, 8, Device::Cpu, Kind::Float);
        let (cos, sin) = rope.angles_at(&Tensor::from_slice(&[3i64]).view([1, 1]));
        let x = Tensor::from_slice(&[1.0f32, 1.0, 0.0, 0.0]).view([1, 1, 1, 4]);
        let turned = Vec::<f32>::try_from(apply_rotary(&x, &cos, &sin).reshape([-1])).unwrap();
        let expected = [3f32.cos(), 0.03f32.cos(), 3f32.sin(), 0.03f32.sin()];
        for (got, want) in turned.iter().zip(expected) {
            assert!((got - want).abs() < 1e-6, "{turned:?} vs {expected:?}");
        }
    }

    /// A layer packed for decoding multiplies through the packed weight for that row count
    /// and through libtorch for any other (a prefill), the same map either way; unpacked, it
    /// is libtorch's again.
    #[test]
    fn packed_linear_is_the_same_map_for_every_row_count() {
        let _no_grad = tch::no_grad_guard();
        let options = (Kind::Float, Device::Cpu);
        let weight = Tensor::randn([64, 32], options);
        let mut linear = Linear::new(weight.copy(), Some(Tensor::randn([64], options)));
        // As FEDSYN_CPU_MATMUL=mkl-packed makes it, where this libtorch has MKL.
        if mkl_packed::available() {
            linear.backend = MatmulBackend::MklPacked;
        }
        linear.pack_for_rows(6);
        assert_eq!(linear.packed_weight().is_some(), mkl_packed::available());
        for rows in [6, 5, 40] {
            let x = Tensor::randn([rows, 1, 32], options);
            let want = x.linear(&weight, linear.bias());
            let diff = f32::try_from((linear.forward(&x) - want).abs().max()).unwrap();
            assert!(diff < 1e-4, "rows {rows}: {diff}");
        }
        linear.unpack();
        assert!(linear.packed_weight().is_none());
    }

    #[test]
    fn rms_norm_scales_to_unit_root_mean_square() {
        let norm = RmsNorm::new(Tensor::from_slice(&[1.0f32, 2.0]), 0.0);
        let out = Vec::<f32>::try_from(norm.forward(&Tensor::from_slice(&[3.0f32, 4.0]))).unwrap();
        let rms = (12.5f32).sqrt();
        assert!((out[0] - 3.0 / rms).abs() < 1e-6 && (out[1] - 8.0 / rms).abs() < 1e-6);
    }
}
