//! Low-rank adapters (LoRA, Hu et al. 2021) on the projections of a Llama decoder, and their
//! files in PEFT's format.
//!
//! A targeted projection `y = x Wᵀ` becomes `y = x Wᵀ + s · dropout(x) Aᵀ Bᵀ` with `A`
//! `[r, in]`, `B` `[out, r]` and `s = α / r`; `W` stays frozen. PEFT's initialisation: `A`
//! uniform in ±1/√in (kaiming-uniform with a = √5), `B` zero, so a fresh adapter is the
//! identity. Adapters live in fp32 whatever the compute dtype, as PEFT keeps them.
//!
//! This codebase stacks q/k/v (and gate/up) into one matrix product; an [`AdaptedLinear`]
//! keeps that single base product and adds each part's low-rank output into its columns.
//!
//! On disk an adapter is a folder with `adapter_config.json` and `adapter_model.safetensors`,
//! the tensors named as PEFT names them for a causal LM
//! (`base_model.model.model.layers.{i}.self_attn.q_proj.lora_A.weight`), so that
//! `PeftModel.from_pretrained` reads what fedsyn writes and the other way round.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::str::FromStr;

use safetensors::tensor::{Dtype, View};
use serde_json::{json, Value};
use tch::{Device, Kind, Tensor};

use super::layers::Linear;
use super::CausalLm;
use crate::error::{ModelError, Result};
use crate::safetensors_io::SafetensorsFile;

/// The adapter configuration file of a PEFT adapter folder.
pub const ADAPTER_CONFIG_FILE: &str = "adapter_config.json";
/// The adapter weights file of a PEFT adapter folder.
pub const ADAPTER_WEIGHTS_FILE: &str = "adapter_model.safetensors";

/// A projection of a decoder block that can carry a LoRA adapter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LoraTarget {
    /// The query projection, `self_attn.q_proj`.
    Q,
    /// The key projection, `self_attn.k_proj`.
    K,
    /// The value projection, `self_attn.v_proj`.
    V,
    /// The attention output projection, `self_attn.o_proj`.
    O,
    /// The MLP gate projection, `mlp.gate_proj`.
    Gate,
    /// The MLP up projection, `mlp.up_proj`.
    Up,
    /// The MLP down projection, `mlp.down_proj`.
    Down,
}

impl LoraTarget {
    /// Every projection, in the order of a decoder block (and of saved tensors).
    pub const ALL: [LoraTarget; 7] = [
        LoraTarget::Q,
        LoraTarget::K,
        LoraTarget::V,
        LoraTarget::O,
        LoraTarget::Gate,
        LoraTarget::Up,
        LoraTarget::Down,
    ];

    /// The module name PEFT's `target_modules` uses (`q_proj`, …).
    pub fn module_name(self) -> &'static str {
        match self {
            LoraTarget::Q => "q_proj",
            LoraTarget::K => "k_proj",
            LoraTarget::V => "v_proj",
            LoraTarget::O => "o_proj",
            LoraTarget::Gate => "gate_proj",
            LoraTarget::Up => "up_proj",
            LoraTarget::Down => "down_proj",
        }
    }

    /// The module's path inside a decoder block (`self_attn.q_proj`, `mlp.gate_proj`).
    pub fn module_path(self) -> &'static str {
        match self {
            LoraTarget::Q => "self_attn.q_proj",
            LoraTarget::K => "self_attn.k_proj",
            LoraTarget::V => "self_attn.v_proj",
            LoraTarget::O => "self_attn.o_proj",
            LoraTarget::Gate => "mlp.gate_proj",
            LoraTarget::Up => "mlp.up_proj",
            LoraTarget::Down => "mlp.down_proj",
        }
    }
}

impl fmt::Display for LoraTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.module_name())
    }
}

impl FromStr for LoraTarget {
    type Err = ModelError;

    /// Reads a module name (`q_proj`) or path (`self_attn.q_proj`), as PEFT's
    /// `target_modules` may hold either.
    fn from_str(text: &str) -> Result<LoraTarget> {
        LoraTarget::ALL
            .into_iter()
            .find(|t| text == t.module_name() || text == t.module_path())
            .ok_or_else(|| ModelError::InvalidArgument {
                name: "LoRA target",
                message: format!(
                    "`{text}` is not a projection of a Llama block; use {}",
                    module_list(&LoraTarget::ALL)
                ),
            })
    }
}

fn module_list(targets: &[LoraTarget]) -> String {
    targets
        .iter()
        .map(|t| t.module_name())
        .collect::<Vec<_>>()
        .join(", ")
}

/// LoRA hyper-parameters: rank, scale, dropout and which projections get adapters.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraConfig {
    /// Rank `r` of every adapter.
    pub rank: i64,
    /// `lora_alpha`: the low-rank output is scaled by `alpha / rank`.
    pub alpha: f64,
    /// Dropout probability on the adapter input, in training only.
    pub dropout: f64,
    /// The projections that get adapters, in every layer.
    pub targets: Vec<LoraTarget>,
}

impl Default for LoraConfig {
    /// POPri's: r 16, α 16, no dropout, all seven projections.
    fn default() -> Self {
        LoraConfig {
            rank: 16,
            alpha: 16.0,
            dropout: 0.0,
            targets: LoraTarget::ALL.to_vec(),
        }
    }
}

impl LoraConfig {
    /// Checks the ranges: rank ≥ 1, alpha finite and > 0, dropout in [0, 1), at least one
    /// target and none twice.
    pub fn validate(&self) -> Result<()> {
        let invalid = |message: String| {
            Err(ModelError::InvalidArgument {
                name: "LoRA config",
                message,
            })
        };
        if self.rank < 1 {
            return invalid(format!("rank is {}; it must be at least 1", self.rank));
        }
        if !(self.alpha.is_finite() && self.alpha > 0.0) {
            return invalid(format!("alpha is {}; it must be > 0", self.alpha));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return invalid(format!(
                "dropout is {}; it must lie in [0, 1)",
                self.dropout
            ));
        }
        if self.targets.is_empty() {
            return invalid(format!(
                "no target modules; choose from {}",
                module_list(&LoraTarget::ALL)
            ));
        }
        for (i, target) in self.targets.iter().enumerate() {
            if self.targets[..i].contains(target) {
                return invalid(format!("target {target} is listed twice"));
            }
        }
        Ok(())
    }

    /// The factor `alpha / rank` applied to every low-rank output.
    pub fn scaling(&self) -> f64 {
        self.alpha / self.rank as f64
    }

    /// The same configuration with the targets in block order (q, k, v, o, gate, up, down),
    /// the order in which they are stored and saved.
    fn in_block_order(&self) -> LoraConfig {
        let mut ordered = self.clone();
        ordered.targets = LoraTarget::ALL
            .into_iter()
            .filter(|t| self.targets.contains(t))
            .collect();
        ordered
    }
}

/// How a forward pass uses the adapters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AdapterMode {
    /// The base model: adapters (if any) are ignored.
    Off,
    /// Adapters on, no dropout.
    On,
    /// Adapters on with their dropout (training).
    Training,
}

/// The adapter of one projection: `A` `[r, in]`, `B` `[out, r]` (fp32, trainable).
#[derive(Debug)]
pub(crate) struct LoraPair {
    a: Tensor,
    b: Tensor,
    scaling: f64,
    dropout: f64,
}

impl LoraPair {
    /// A fresh adapter as PEFT initialises it: `A` uniform in ±1/√in from the stream `seed`,
    /// `B` zero.
    pub(crate) fn fresh(
        rows: i64,
        inputs: i64,
        config: &LoraConfig,
        seed: u64,
        device: Device,
    ) -> Result<LoraPair> {
        let bound = 1.0 / (inputs as f64).sqrt();
        let values = seeded_uniform((config.rank * inputs) as usize, bound, seed);
        let a = Tensor::f_from_slice(&values)?
            .f_view([config.rank, inputs])?
            .f_to_device(device)?;
        let b = Tensor::f_zeros([rows, config.rank], (Kind::Float, device))?;
        Ok(LoraPair::from_tensors(a, b, config))
    }

    /// An adapter with the given weights (made fp32 leaves that require grad).
    pub(crate) fn from_tensors(a: Tensor, b: Tensor, config: &LoraConfig) -> LoraPair {
        let leaf = |t: Tensor| t.to_kind(Kind::Float).detach().set_requires_grad(true);
        LoraPair {
            a: leaf(a),
            b: leaf(b),
            scaling: config.scaling(),
            dropout: config.dropout,
        }
    }

    /// `A`, `[r, in]`.
    fn a(&self) -> &Tensor {
        &self.a
    }

    /// `B`, `[out, r]`.
    fn b(&self) -> &Tensor {
        &self.b
    }

    /// `s · B A`, the change the adapter makes to the weight (no graph recorded).
    fn weight_delta(&self) -> Tensor {
        let _no_grad = tch::no_grad_guard();
        self.b.mm(&self.a) * self.scaling
    }
}

/// `count` values uniform in [−bound, bound) from the stream `seed` (SplitMix64): the same
/// seed gives the same values on every machine, and the global libtorch generator is left
/// alone.
fn seeded_uniform(count: usize, bound: f64, seed: u64) -> Vec<f32> {
    let stream = splitmix64(seed);
    (0..count as u64)
        .map(|i| {
            let unit = (splitmix64(stream.wrapping_add(i)) >> 40) as f64 / (1u64 << 24) as f64;
            ((2.0 * unit - 1.0) * bound) as f32
        })
        .collect()
}

fn splitmix64(value: u64) -> u64 {
    let mut z = value.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// FNV-1a of `text`: mixes a tensor's name into its initialisation stream.
fn name_hash(text: &str) -> u64 {
    text.bytes().fold(0xCBF2_9CE4_8422_2325, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01B3)
    })
}

/// One projection inside a (possibly stacked) [`AdaptedLinear`]: which output columns it
/// owns and its adapter, if it has one.
#[derive(Debug)]
struct Part {
    target: LoraTarget,
    offset: i64,
    rows: i64,
    adapter: Option<LoraPair>,
    /// While merged: the base rows as they were, so that unmerging restores them exactly
    /// (subtracting `s·BA` again would leave rounding differences that accumulate).
    unmerged_rows: Option<Tensor>,
}

/// A frozen projection (one [`Linear`], or several of the same input stacked into one) with
/// optional LoRA adapters on its parts.
#[derive(Debug)]
pub(crate) struct AdaptedLinear {
    base: Linear,
    parts: Vec<Part>,
}

impl AdaptedLinear {
    /// A single projection.
    pub(crate) fn single(target: LoraTarget, linear: Linear) -> AdaptedLinear {
        AdaptedLinear::stacked(vec![(target, linear)])
    }

    /// Projections of the same input stacked into one matrix product, in the given order.
    pub(crate) fn stacked(projections: Vec<(LoraTarget, Linear)>) -> AdaptedLinear {
        let mut offset = 0;
        let mut parts = Vec::with_capacity(projections.len());
        let mut linears = Vec::with_capacity(projections.len());
        for (target, linear) in projections {
            let rows = linear.out_features();
            parts.push(Part {
                unmerged_rows: None,
                target,
                offset,
                rows,
                adapter: None,
            });
            offset += rows;
            linears.push(linear);
        }
        let base = if linears.len() == 1 {
            linears.remove(0)
        } else {
            // The per-part views are dropped: the stacked product is all forward needs.
            Linear::stacked(linears).0
        };
        AdaptedLinear { base, parts }
    }

    /// The frozen map.
    pub(crate) fn base(&self) -> &Linear {
        &self.base
    }

    /// The output width of part `target`, if this projection has that part.
    pub(crate) fn rows_of(&self, target: LoraTarget) -> Option<i64> {
        self.part(target).map(|part| part.rows)
    }

    /// The adapter of part `target`, if it has one.
    pub(crate) fn adapter(&self, target: LoraTarget) -> Option<&LoraPair> {
        self.part(target).and_then(|part| part.adapter.as_ref())
    }

    /// Whether any part has an adapter.
    pub(crate) fn has_adapters(&self) -> bool {
        self.parts.iter().any(|part| part.adapter.is_some())
    }

    /// Gives part `target` the adapter `pair` (replacing any); the caller has checked the
    /// shapes against [`AdaptedLinear::rows_of`] and the input width.
    pub(crate) fn attach(&mut self, target: LoraTarget, pair: LoraPair) {
        if let Some(part) = self.parts.iter_mut().find(|part| part.target == target) {
            part.adapter = Some(pair);
        }
    }

    fn part(&self, target: LoraTarget) -> Option<&Part> {
        self.parts.iter().find(|part| part.target == target)
    }

    /// Applies the map to the last dimension of `x`: the base product, plus each adapter's
    /// low-rank output added into its part's columns unless `mode` is off.
    pub(crate) fn forward(&self, x: &Tensor, mode: AdapterMode) -> Tensor {
        let out = self.base.forward(x);
        if mode == AdapterMode::Off || !self.has_adapters() {
            return out;
        }
        let adapted: Vec<(&Part, &LoraPair)> = self
            .parts
            .iter()
            .filter_map(|part| part.adapter.as_ref().map(|pair| (part, pair)))
            .collect();
        // PEFT runs adapters in their own dtype (fp32) and casts the result back.
        let input = if x.kind() == Kind::Float {
            x.shallow_clone()
        } else {
            x.to_kind(Kind::Float)
        };
        let low_rank = low_rank_inputs(&input, &adapted, mode == AdapterMode::Training);
        for ((part, pair), hidden) in adapted.iter().zip(low_rank) {
            let delta = hidden.linear::<Tensor>(&pair.b, None).to_kind(out.kind());
            // In place into the part's columns: no zero blocks for untargeted parts and no
            // concatenation; autograd records it as a slice update.
            let mut columns = out.narrow(-1, part.offset, part.rows);
            columns += delta;
        }
        out
    }

    /// Adds `s · B A` of every adapter into the frozen weight, keeping a copy of the rows it
    /// changes.
    pub(crate) fn merge(&mut self) {
        let _no_grad = tch::no_grad_guard();
        for part in &mut self.parts {
            if let Some(pair) = &part.adapter {
                let mut rows = self.base.weight().narrow(0, part.offset, part.rows);
                part.unmerged_rows = Some(rows.copy());
                rows += pair.weight_delta().to_kind(rows.kind());
            }
        }
    }

    /// Puts back the rows [`AdaptedLinear::merge`] changed, bit for bit.
    pub(crate) fn unmerge(&mut self) {
        let _no_grad = tch::no_grad_guard();
        for part in &mut self.parts {
            if let Some(saved) = part.unmerged_rows.take() {
                let mut rows = self.base.weight().narrow(0, part.offset, part.rows);
                rows.copy_(&saved);
            }
        }
    }
}

/// `s · dropout(x) Aᵀ` of each adapter, `[..., r]`. Without dropout the `A`s of all parts
/// are stacked into one product; with it each part draws its own mask, as PEFT's separate
/// modules do.
fn low_rank_inputs(x: &Tensor, adapted: &[(&Part, &LoraPair)], train: bool) -> Vec<Tensor> {
    let dropout = adapted.first().map_or(0.0, |(_, pair)| pair.dropout);
    let scaling = adapted.first().map_or(1.0, |(_, pair)| pair.scaling);
    if train && dropout > 0.0 {
        return adapted
            .iter()
            .map(|(_, pair)| x.dropout(dropout, true).linear::<Tensor>(&pair.a, None) * scaling)
            .collect();
    }
    if let [(_, pair)] = adapted {
        return vec![x.linear::<Tensor>(&pair.a, None) * scaling];
    }
    let stacked_a = Tensor::cat(&adapted.iter().map(|(_, p)| &p.a).collect::<Vec<_>>(), 0);
    let hidden = x.linear::<Tensor>(&stacked_a, None) * scaling;
    let mut start = 0;
    adapted
        .iter()
        .map(|(_, pair)| {
            let rank = pair.a.size()[0];
            let part = hidden.narrow(-1, start, rank);
            start += rank;
            part
        })
        .collect()
}

/// The adapter state of a model: its configuration and whether the adapters are merged into
/// the frozen weights.
#[derive(Debug)]
pub(crate) struct LoraState {
    pub(crate) config: LoraConfig,
    pub(crate) merged: bool,
}

/// Which matrix of an adapter.
#[derive(Debug, Clone, Copy)]
enum Matrix {
    A,
    B,
}

/// PEFT's name of matrix `matrix` of `target`'s adapter in layer `layer`, as
/// `save_pretrained` writes it for a causal LM.
fn peft_tensor_name(layer: usize, target: LoraTarget, matrix: Matrix) -> String {
    let letter = match matrix {
        Matrix::A => 'A',
        Matrix::B => 'B',
    };
    format!(
        "base_model.model.model.layers.{layer}.{}.lora_{letter}.weight",
        target.module_path()
    )
}

impl CausalLm {
    /// Adds fresh adapters (PEFT's initialisation, `A` drawn from `seed`, `B` zero) to the
    /// projections `config` targets in every layer. Errors if the model already has adapters.
    pub fn add_lora(&mut self, config: &LoraConfig, seed: u64) -> Result<()> {
        config.validate()?;
        self.check_no_adapters()?;
        let config = &config.in_block_order();
        let mut pairs = Vec::new();
        for (layer, target, rows, inputs) in self.adapter_shapes(&config.targets) {
            let stream = seed ^ name_hash(&peft_tensor_name(layer, target, Matrix::A));
            let pair = LoraPair::fresh(rows, inputs, config, stream, self.device)?;
            pairs.push((layer, target, pair));
        }
        self.install(config.clone(), pairs);
        Ok(())
    }

    /// The adapters' configuration, when the model has adapters.
    pub fn lora_config(&self) -> Option<&LoraConfig> {
        self.lora.as_ref().map(|state| &state.config)
    }

    /// Whether the adapters are merged into the frozen weights ([`CausalLm::merge_lora`]).
    pub fn is_lora_merged(&self) -> bool {
        self.lora.as_ref().is_some_and(|state| state.merged)
    }

    /// The trainable tensors with their PEFT names, layer by layer in block order (q, k, v, o,
    /// gate, up, down; `lora_A` before `lora_B`). They are shallow clones of the adapters'
    /// leaves: gradients land on them, and an optimiser updates them in place (under
    /// `no_grad`). Empty when the model has no adapters.
    pub fn lora_parameters(&self) -> Vec<(String, Tensor)> {
        let mut parameters = Vec::new();
        for (layer, block) in self.layers.iter().enumerate() {
            for target in LoraTarget::ALL {
                if let Some(pair) = block.projection(target).adapter(target) {
                    for (matrix, tensor) in [(Matrix::A, pair.a()), (Matrix::B, pair.b())] {
                        parameters.push((
                            peft_tensor_name(layer, target, matrix),
                            tensor.shallow_clone(),
                        ));
                    }
                }
            }
        }
        parameters
    }

    /// Adds `s · B A` of every adapter into its frozen weight, so that sampling runs at the
    /// base model's speed; the adapters are then skipped by every forward pass until
    /// [`CausalLm::unmerge_lora`]. Do not change the adapters while merged.
    pub fn merge_lora(&mut self) -> Result<()> {
        match &self.lora {
            None => return Err(no_adapters("merge")),
            Some(state) if state.merged => {
                return Err(ModelError::LoraState(
                    "the adapters are already merged; unmerge them first".to_string(),
                ))
            }
            Some(_) => {}
        }
        self.set_merged(true);
        Ok(())
    }

    /// Undoes [`CausalLm::merge_lora`]: the base weights come back bit for bit (merging kept
    /// a copy of the rows it changed, which costs their memory while merged).
    pub fn unmerge_lora(&mut self) -> Result<()> {
        match &self.lora {
            None => return Err(no_adapters("unmerge")),
            Some(state) if !state.merged => {
                return Err(ModelError::LoraState(
                    "the adapters are not merged, so there is nothing to unmerge".to_string(),
                ))
            }
            Some(_) => {}
        }
        self.set_merged(false);
        Ok(())
    }

    /// Writes the adapters as PEFT does: `adapter_config.json` (recording `base_model` as
    /// `base_model_name_or_path`) and `adapter_model.safetensors` in `dir`, created if needed.
    pub fn save_adapter(&self, dir: &Path, base_model: &str) -> Result<()> {
        let state = self.lora.as_ref().ok_or_else(|| no_adapters("save"))?;
        std::fs::create_dir_all(dir).map_err(|source| ModelError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let config_path = dir.join(ADAPTER_CONFIG_FILE);
        let config_text =
            serde_json::to_string_pretty(&peft_config_json(&state.config, base_model))
                .unwrap_or_default();
        std::fs::write(&config_path, config_text + "\n").map_err(|source| ModelError::Io {
            path: config_path,
            source,
        })?;
        write_f32_safetensors(&dir.join(ADAPTER_WEIGHTS_FILE), &self.lora_parameters())
    }

    /// Adds the adapters of a PEFT adapter folder (`adapter_config.json`,
    /// `adapter_model.safetensors`). Errors, leaving the model unchanged, if the model
    /// already has adapters, if the configuration uses an option fedsyn does not implement
    /// (rsLoRA, DoRA, biases, per-module ranks, …), or if a tensor is missing, extra or of
    /// the wrong shape.
    pub fn load_adapter(&mut self, dir: &Path) -> Result<()> {
        self.check_no_adapters()?;
        let config_path = dir.join(ADAPTER_CONFIG_FILE);
        if !config_path.is_file() {
            return Err(ModelError::Adapter {
                path: dir.to_path_buf(),
                message: format!(
                    "no {ADAPTER_CONFIG_FILE}: not a PEFT adapter folder (PEFT's \
                     save_pretrained and fedsyn write one next to {ADAPTER_WEIGHTS_FILE})"
                ),
            });
        }
        let config = read_peft_config(&config_path)?;
        let weights_path = dir.join(ADAPTER_WEIGHTS_FILE);
        if !weights_path.is_file() {
            let hint = if dir.join("adapter_model.bin").is_file() {
                "the folder has adapter_model.bin (pickle), which fedsyn does not read; \
                 re-save the adapter with safe_serialization=True"
            } else {
                "the adapter weights are missing"
            };
            return Err(ModelError::Adapter {
                path: weights_path,
                message: hint.to_string(),
            });
        }
        let file = SafetensorsFile::open(&weights_path)?;
        let expected = self.adapter_shapes(&config.targets);
        let mut known: Vec<String> = Vec::with_capacity(2 * expected.len());
        for &(layer, target, ..) in &expected {
            known.push(peft_tensor_name(layer, target, Matrix::A));
            known.push(peft_tensor_name(layer, target, Matrix::B));
        }
        if let Some(extra) = file
            .names()
            .into_iter()
            .find(|name| !known.iter().any(|k| k == name))
        {
            return Err(ModelError::Adapter {
                path: weights_path,
                message: format!(
                    "tensor `{extra}` is not among the adapters {ADAPTER_CONFIG_FILE} declares \
                     for this model ({} layers; target_modules {}): the adapter belongs to \
                     another model, or the config does not match the weights",
                    self.layers.len(),
                    module_list(&config.targets)
                ),
            });
        }
        let mut pairs = Vec::with_capacity(expected.len());
        for (layer, target, rows, inputs) in expected {
            let load = |matrix, shape: &[i64]| {
                file.tensor(
                    &peft_tensor_name(layer, target, matrix),
                    shape,
                    self.device,
                    Kind::Float,
                )
            };
            let a = load(Matrix::A, &[config.rank, inputs])?;
            let b = load(Matrix::B, &[rows, config.rank])?;
            pairs.push((layer, target, LoraPair::from_tensors(a, b, &config)));
        }
        self.install(config, pairs);
        Ok(())
    }

    /// `(layer, target, rows, inputs)` of the adapter on each of `targets` in every layer,
    /// layer by layer: the rows of the projection's output that `target` computes, and the
    /// projection's input width.
    fn adapter_shapes(&self, targets: &[LoraTarget]) -> Vec<(usize, LoraTarget, i64, i64)> {
        let mut shapes = Vec::with_capacity(self.layers.len() * targets.len());
        for (layer, block) in self.layers.iter().enumerate() {
            for &target in targets {
                let projection = block.projection(target);
                let rows = projection.rows_of(target).unwrap_or(0);
                shapes.push((layer, target, rows, projection.base().in_features()));
            }
        }
        shapes
    }

    fn check_no_adapters(&self) -> Result<()> {
        match self.lora {
            Some(_) => Err(ModelError::LoraState(
                "the model already has adapters; fedsyn keeps one adapter per model".to_string(),
            )),
            None => Ok(()),
        }
    }

    /// Attaches every adapter and records the configuration (nothing here can fail, so a
    /// model is either fully adapted or untouched).
    fn install(&mut self, config: LoraConfig, pairs: Vec<(usize, LoraTarget, LoraPair)>) {
        for (layer, target, pair) in pairs {
            self.layers[layer]
                .projection_mut(target)
                .attach(target, pair);
        }
        self.lora = Some(LoraState {
            config,
            merged: false,
        });
    }

    /// Merges (`true`) or unmerges every adapter.
    fn set_merged(&mut self, merged: bool) {
        for block in &mut self.layers {
            for projection in block.projections_mut() {
                if merged {
                    projection.merge();
                } else {
                    projection.unmerge();
                }
            }
        }
        if let Some(state) = self.lora.as_mut() {
            state.merged = merged;
        }
    }
}

fn no_adapters(action: &str) -> ModelError {
    ModelError::LoraState(format!(
        "cannot {action}: the model has no adapters (add_lora or load_adapter first)"
    ))
}

/// `adapter_config.json` with every key PEFT 0.21 writes for a LoRA adapter (defaults for
/// the options fedsyn does not use), so that PEFT reads it without warnings.
fn peft_config_json(config: &LoraConfig, base_model: &str) -> Value {
    let targets: Vec<&str> = config.targets.iter().map(|t| t.module_name()).collect();
    json!({
        "alora_invocation_tokens": null,
        "alpha_pattern": {},
        "arrow_config": null,
        "auto_mapping": null,
        "base_model_name_or_path": base_model,
        "bias": "none",
        "corda_config": null,
        "ensure_weight_tying": false,
        "eva_config": null,
        "exclude_modules": null,
        "fan_in_fan_out": false,
        "inference_mode": true,
        "init_lora_weights": true,
        "kasa_config": null,
        "layer_replication": null,
        "layers_pattern": null,
        "layers_to_transform": null,
        "loftq_config": {},
        "lora_alpha": config.alpha,
        "lora_bias": false,
        "lora_dropout": config.dropout,
        "lora_ga_config": null,
        "megatron_config": null,
        "megatron_core": "megatron.core",
        "modules_to_save": null,
        "monteclora_config": null,
        "peft_type": "LORA",
        "peft_version": "0.21.2",
        "qalora_group_size": 16,
        "r": config.rank,
        "rank_pattern": {},
        "revision": null,
        "target_modules": targets,
        "target_parameters": null,
        "task_type": "CAUSAL_LM",
        "trainable_token_indices": null,
        "use_bdlora": null,
        "use_dora": false,
        "use_qalora": false,
        "use_rslora": false,
        "velora_config": null,
    })
}

/// Keys of a PEFT LoRA config that change the computation in ways fedsyn does not
/// implement; each must be absent or hold its "off" value (null, false, empty).
const UNSUPPORTED_OPTIONS: [(&str, &str); 17] = [
    ("use_rslora", "rank-stabilised scaling α/√r"),
    ("use_dora", "DoRA (weight-decomposed LoRA)"),
    ("lora_bias", "trainable adapter biases"),
    ("fan_in_fan_out", "transposed (Conv1D) base weights"),
    ("rank_pattern", "per-module ranks"),
    ("alpha_pattern", "per-module alphas"),
    ("layers_to_transform", "adapters on a subset of layers"),
    ("layers_pattern", "adapters on a subset of layers"),
    ("modules_to_save", "fully trained extra modules"),
    ("target_parameters", "adapters on raw parameters"),
    ("exclude_modules", "excluded modules"),
    ("layer_replication", "replicated layers"),
    ("trainable_token_indices", "trainable token embeddings"),
    ("use_qalora", "quantisation-aware LoRA"),
    ("alora_invocation_tokens", "activated LoRA"),
    ("use_bdlora", "block-diagonal LoRA"),
    ("arrow_config", "Arrow adapter routing"),
];

/// Reads a PEFT `adapter_config.json` into a [`LoraConfig`]; missing keys take PEFT's
/// defaults (r 8, lora_alpha 8, lora_dropout 0).
fn read_peft_config(path: &Path) -> Result<LoraConfig> {
    let text = std::fs::read_to_string(path).map_err(|source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let fail = |message: String| ModelError::Adapter {
        path: path.to_path_buf(),
        message,
    };
    let json: Value =
        serde_json::from_str(&text).map_err(|e| fail(format!("not valid JSON: {e}")))?;
    let Value::Object(fields) = &json else {
        return Err(fail("expected a JSON object".to_string()));
    };
    let field = |key: &str| fields.get(key).filter(|value| !value.is_null());
    match field("peft_type").and_then(Value::as_str) {
        Some("LORA") => {}
        other => {
            return Err(fail(format!(
                "peft_type is {}; fedsyn reads LoRA adapters (\"LORA\") only",
                other.map_or("missing".to_string(), |t| format!("\"{t}\""))
            )))
        }
    }
    for (key, what) in UNSUPPORTED_OPTIONS {
        if field(key).is_some_and(is_switched_on) {
            return Err(fail(format!(
                "`{key}` is set ({what}), which fedsyn does not implement; save the adapter \
                 without it"
            )));
        }
    }
    if let Some(bias) = field("bias").filter(|b| b.as_str() != Some("none")) {
        return Err(fail(format!(
            "bias is {bias}; fedsyn's adapters have no biases (bias \"none\")"
        )));
    }
    if let Some(init) = field("init_lora_weights").filter(|v| !v.is_boolean()) {
        if init.as_str() != Some("gaussian") {
            return Err(fail(format!(
                "init_lora_weights is {init}: such adapters expect a modified base model, \
                 which fedsyn does not build"
            )));
        }
    }
    let number = |key: &str, default: f64| -> Result<f64> {
        match field(key) {
            None => Ok(default),
            Some(value) => value
                .as_f64()
                .ok_or_else(|| fail(format!("`{key}` is {value}, not a number"))),
        }
    };
    let rank = number("r", 8.0)?;
    if rank.fract() != 0.0 {
        return Err(fail(format!("`r` is {rank}, not a whole number")));
    }
    let config = LoraConfig {
        rank: rank as i64,
        alpha: number("lora_alpha", 8.0)?,
        dropout: number("lora_dropout", 0.0)?,
        targets: read_targets(field("target_modules")).map_err(fail)?,
    };
    config.validate().map_err(|e| fail(e.to_string()))?;
    // Block order, whatever order PEFT wrote its (unordered) set in.
    Ok(config.in_block_order())
}

/// PEFT's `target_modules`: a list of module names, or the string "all-linear" (every
/// projection but the output head).
fn read_targets(value: Option<&Value>) -> std::result::Result<Vec<LoraTarget>, String> {
    match value {
        Some(Value::String(all)) if all == "all-linear" => Ok(LoraTarget::ALL.to_vec()),
        Some(Value::String(pattern)) => Err(format!(
            "target_modules is the regular expression \"{pattern}\"; fedsyn reads a list of \
             module names ({}) or \"all-linear\"",
            module_list(&LoraTarget::ALL)
        )),
        Some(Value::Array(names)) => {
            let mut targets: Vec<LoraTarget> = Vec::with_capacity(names.len());
            for name in names {
                let name = name
                    .as_str()
                    .ok_or_else(|| format!("target_modules holds {name}, not a module name"))?;
                let target = name.parse::<LoraTarget>().map_err(|_| {
                    format!(
                        "target module `{name}` is not a projection of fedsyn's Llama blocks \
                         ({})",
                        module_list(&LoraTarget::ALL)
                    )
                })?;
                if !targets.contains(&target) {
                    targets.push(target);
                }
            }
            Ok(targets)
        }
        Some(other) => Err(format!(
            "target_modules is {other}; expected a list of names"
        )),
        None => Err("target_modules is missing".to_string()),
    }
}

/// Whether an option's value turns it on (anything but null, false, 0, "" or empty).
fn is_switched_on(value: &Value) -> bool {
    match value {
        Value::Null => false,
        Value::Bool(on) => *on,
        Value::Number(n) => n.as_f64() != Some(0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(items) => !items.is_empty(),
        Value::Object(fields) => !fields.is_empty(),
    }
}

/// A tensor's fp32 values as little-endian bytes, for the safetensors writer.
struct F32Bytes {
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

impl View for &F32Bytes {
    fn dtype(&self) -> Dtype {
        Dtype::F32
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.bytes)
    }
    fn data_len(&self) -> usize {
        self.bytes.len()
    }
}

/// Writes `tensors` as fp32 with the `{"format": "pt"}` metadata PyTorch writers add (some
/// loaders insist on it).
fn write_f32_safetensors(path: &Path, tensors: &[(String, Tensor)]) -> Result<()> {
    let mut stored = Vec::with_capacity(tensors.len());
    for (name, tensor) in tensors {
        let host = tensor
            .detach()
            .f_to_device(Device::Cpu)?
            .f_to_kind(Kind::Float)?;
        let values = Vec::<f32>::try_from(host.reshape([-1]))?;
        let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let shape = host.size().iter().map(|&d| d as usize).collect();
        stored.push((name.clone(), F32Bytes { shape, bytes }));
    }
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::tensor::serialize_to_file(
        stored.iter().map(|(name, data)| (name.as_str(), data)),
        &Some(metadata),
        path,
    )
    .map_err(|e| ModelError::Adapter {
        path: path.to_path_buf(),
        message: format!("cannot write: {e:?}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_read_peft_names_and_paths() {
        for target in LoraTarget::ALL {
            assert_eq!(target.module_name().parse::<LoraTarget>().unwrap(), target);
            assert_eq!(target.module_path().parse::<LoraTarget>().unwrap(), target);
            assert_eq!(target.to_string(), target.module_name());
        }
        let error = "lm_head".parse::<LoraTarget>().unwrap_err().to_string();
        assert!(
            error.contains("lm_head") && error.contains("down_proj"),
            "{error}"
        );
    }

    #[test]
    fn default_config_is_popri_s_and_validation_names_the_field() {
        let config = LoraConfig::default();
        assert_eq!((config.rank, config.alpha, config.dropout), (16, 16.0, 0.0));
        assert_eq!(config.targets, LoraTarget::ALL);
        assert_eq!(config.scaling(), 1.0);
        config.validate().unwrap();
        let broken = [
            (
                LoraConfig {
                    rank: 0,
                    ..LoraConfig::default()
                },
                "rank",
            ),
            (
                LoraConfig {
                    alpha: f64::NAN,
                    ..LoraConfig::default()
                },
                "alpha",
            ),
            (
                LoraConfig {
                    dropout: 1.0,
                    ..LoraConfig::default()
                },
                "dropout",
            ),
            (
                LoraConfig {
                    targets: vec![],
                    ..LoraConfig::default()
                },
                "no target",
            ),
            (
                LoraConfig {
                    targets: vec![LoraTarget::Q, LoraTarget::Q],
                    ..LoraConfig::default()
                },
                "twice",
            ),
        ];
        for (config, word) in broken {
            let message = config.validate().unwrap_err().to_string();
            assert!(message.contains(word), "{message}");
        }
    }

    #[test]
    fn target_lists_all_linear_and_regexes() {
        let listed = read_targets(Some(&json!(["down_proj", "q_proj", "self_attn.v_proj"])));
        assert_eq!(
            listed.unwrap(),
            [LoraTarget::Down, LoraTarget::Q, LoraTarget::V]
        );
        assert_eq!(
            read_targets(Some(&json!("all-linear"))).unwrap(),
            LoraTarget::ALL
        );
        assert!(read_targets(Some(&json!(".*_proj")))
            .unwrap_err()
            .contains("regular"));
        assert!(read_targets(None).unwrap_err().contains("missing"));
        assert!(read_targets(Some(&json!([1]))).is_err());
    }

    #[test]
    fn options_count_as_on_unless_null_false_or_empty() {
        for off in [
            json!(null),
            json!(false),
            json!({}),
            json!([]),
            json!(""),
            json!(0),
        ] {
            assert!(!is_switched_on(&off), "{off}");
        }
        for on in [
            json!(true),
            json!({"q_proj": 8}),
            json!([0]),
            json!("x"),
            json!(2),
        ] {
            assert!(is_switched_on(&on), "{on}");
        }
    }

    #[test]
    fn seeded_values_are_uniform_in_the_bound_and_repeat() {
        let values = seeded_uniform(10_000, 0.5, 42);
        assert!(values.iter().all(|v| (-0.5..0.5).contains(v)));
        let mean = values.iter().map(|&v| f64::from(v)).sum::<f64>() / 1e4;
        let variance = values
            .iter()
            .map(|&v| (f64::from(v) - mean).powi(2))
            .sum::<f64>()
            / 1e4;
        assert!(mean.abs() < 0.01, "{mean}");
        assert!((variance - 0.25 / 3.0).abs() < 0.005, "{variance}");
        assert_eq!(values, seeded_uniform(10_000, 0.5, 42));
        assert_ne!(values, seeded_uniform(10_000, 0.5, 43));
    }

    fn random_linear(rows: i64, inputs: i64) -> Linear {
        Linear::new(
            Tensor::randn([rows, inputs], (Kind::Float, Device::Cpu)),
            None,
        )
    }

    /// q, k, v stacked with adapters on q and v only (k's columns must stay the base's).
    fn stacked_with_adapters() -> AdaptedLinear {
        let mut projection = AdaptedLinear::stacked(vec![
            (LoraTarget::Q, random_linear(12, 8)),
            (LoraTarget::K, random_linear(4, 8)),
            (LoraTarget::V, random_linear(4, 8)),
        ]);
        let config = LoraConfig {
            rank: 2,
            alpha: 6.0,
            ..LoraConfig::default()
        };
        for (target, rows) in [(LoraTarget::Q, 12), (LoraTarget::V, 4)] {
            let a = Tensor::randn([2, 8], (Kind::Float, Device::Cpu));
            let b = Tensor::randn([rows, 2], (Kind::Float, Device::Cpu));
            projection.attach(target, LoraPair::from_tensors(a, b, &config));
        }
        projection
    }

    #[test]
    fn stacked_adapters_add_s_b_a_x_to_their_own_columns() {
        let projection = stacked_with_adapters();
        let x = Tensor::randn([3, 5, 8], (Kind::Float, Device::Cpu));
        let base = projection.forward(&x, AdapterMode::Off);
        let adapted = projection.forward(&x, AdapterMode::On);
        let difference = |a: &Tensor, b: &Tensor| (a - b).abs().max().double_value(&[]);
        for (target, offset, rows) in [(LoraTarget::Q, 0, 12), (LoraTarget::V, 16, 4)] {
            let pair = projection.adapter(target).unwrap();
            let expected = x.matmul(&pair.a().tr()).matmul(&pair.b().tr()) * 3.0;
            let got = adapted.narrow(-1, offset, rows) - base.narrow(-1, offset, rows);
            assert!(difference(&got, &expected) < 1e-4, "{target}");
        }
        assert!(
            adapted.narrow(-1, 12, 4).equal(&base.narrow(-1, 12, 4)),
            "k untouched"
        );
    }

    #[test]
    fn merging_then_unmerging_restores_the_weights_exactly() {
        let mut projection = stacked_with_adapters();
        let original = projection.base().weight().copy();
        let x = Tensor::randn([4, 8], (Kind::Float, Device::Cpu));
        let adapted = projection.forward(&x, AdapterMode::On);
        projection.merge();
        let merged = projection.forward(&x, AdapterMode::Off);
        assert!((merged - adapted).abs().max().double_value(&[]) < 1e-4);
        assert!(
            !projection.base().weight().equal(&original),
            "merging changed the weight"
        );
        projection.unmerge();
        assert!(
            projection.base().weight().equal(&original),
            "unmerging restores the weight bit for bit"
        );
    }
}
