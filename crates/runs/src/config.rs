//! The run configuration: one TOML file fully specifies a POPri run.
//!
//! Every key has the POPri reference value as its default except `data.train`, which must be
//! given (`"sotu"` selects the built-in demo data), and the seed texts of the prompts
//! (`prompts.seed_file` or `prompts.topics`). Unknown keys are errors that name the key and the
//! closest known one; [`RunConfig::load`] applies `dotted.key=value` overrides on top of the
//! file, resolves relative paths and validates the result.

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};

use privacy_accounting::AccountantKind;
pub use protocol::messages::Aggregation;
use serde::{Deserialize, Serialize};

use crate::error::{Result, RunError};
use crate::prompts::PromptTemplate;
use dp_mechanics::sampling::ClientSampling;
pub use training_config::PreferenceConfig;

/// The names of the seven Llama projections LoRA can adapt (PEFT module names).
pub const LORA_TARGETS: [&str; 7] = [
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
];

/// The value of `data.train` that selects the built-in State of the Union demo data.
pub const SOTU: &str = "sotu";

/// A complete, resolved run configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    /// `[run]`: name, seed, device, threads.
    #[serde(default)]
    pub run: RunSection,
    /// `[data]`: the private client data.
    pub data: DataSection,
    /// `[model]`: generator and embedder files.
    #[serde(default)]
    pub model: ModelSection,
    /// `[prompts]`: the public seed texts and the prompts built from them.
    #[serde(default)]
    pub prompts: PromptSection,
    /// `[generation]`: sampling of the candidates.
    #[serde(default)]
    pub generation: GenerationSection,
    /// `[privacy]`: the budget, noise and client sampling.
    #[serde(default)]
    pub privacy: PrivacySection,
    /// `[pairs]`: which ranks become preference pairs.
    #[serde(default)]
    pub pairs: PairSection,
    /// `[lora]`: the adapter.
    #[serde(default)]
    pub lora: LoraSection,
    /// `[dpo]`: the preference optimisation of every round.
    #[serde(default)]
    pub dpo: PreferenceConfig,
    /// `[output]`: the final synthetic data set.
    #[serde(default)]
    pub output: OutputSection,
    /// `[eval]`: per-round diagnostics.
    #[serde(default)]
    pub eval: EvalSection,
    /// `[serve]`: the HTTP server of `fedsyn serve` (other commands ignore it).
    #[serde(default)]
    pub serve: ServeSection,
    /// `[pe]`: Private Evolution (`run.method = "pe"` or `"pe-sft"`; other methods ignore it).
    #[serde(default)]
    pub pe: PeSection,
    /// `[fedavg]`: DP-FedAvg (`run.method = "dp-fedavg"`; other methods ignore it).
    #[serde(default)]
    pub fedavg: FedAvgSection,
}

/// `[run]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RunSection {
    /// A name for the run (reports show it).
    pub name: String,
    /// The seed every non-private random choice derives from (prompts, candidate sampling, DPO
    /// shuffling). It is public (in every config and run directory), so neither the DP noise
    /// nor the client sampling derives from it: see `privacy.noise_seed` and
    /// `privacy.sampling_seed`.
    pub seed: u64,
    /// `auto`, `cpu`, `cuda` or `cuda:N`.
    pub device: String,
    /// CPU threads for libtorch.
    pub threads: usize,
    /// Which method makes the synthetic data (or, for DP-FedAvg, the model).
    pub method: Method,
}

/// The methods a run can use (`run.method`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Method {
    /// POPri: client preferences over candidates, DPO on the generator (the default).
    #[default]
    #[serde(rename = "popri")]
    Popri,
    /// Private Evolution: noisy nearest-neighbour votes select a population that the generator
    /// rephrases.
    #[serde(rename = "pe")]
    Pe,
    /// PE's votes, then supervised fine-tuning of the generator on the top samples.
    #[serde(rename = "pe-sft")]
    PeSft,
    /// DP-FedAvg: the downstream model trained on the clients with clipped, noised updates.
    #[serde(rename = "dp-fedavg")]
    DpFedavg,
}

impl Method {
    /// The name used in configurations and reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Popri => "popri",
            Method::Pe => "pe",
            Method::PeSft => "pe-sft",
            Method::DpFedavg => "dp-fedavg",
        }
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Default for RunSection {
    fn default() -> Self {
        Self {
            name: "popri".into(),
            seed: 0,
            device: "auto".into(),
            threads: 2,
            method: Method::Popri,
        }
    }
}

/// Where the private training texts come from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "String", into = "String")]
pub enum TrainData {
    /// The built-in State of the Union demo data (`"sotu"`).
    Sotu,
    /// A federated JSONL file (`{"client_id", "text"}` per line).
    File(PathBuf),
}

impl From<String> for TrainData {
    fn from(text: String) -> Self {
        if text == SOTU {
            TrainData::Sotu
        } else {
            TrainData::File(PathBuf::from(text))
        }
    }
}

impl From<TrainData> for String {
    fn from(data: TrainData) -> Self {
        match data {
            TrainData::Sotu => SOTU.into(),
            TrainData::File(path) => path.to_string_lossy().into_owned(),
        }
    }
}

/// `[data]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSection {
    /// The private training data: a JSONL path or `"sotu"`.
    pub train: TrainData,
    /// A separate private eval file; when absent, `eval_fraction` of each client's texts is
    /// held out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval: Option<PathBuf>,
    /// Fraction of each client's texts held out for evaluation when `eval` is absent.
    #[serde(default = "default_eval_fraction")]
    pub eval_fraction: f64,
    /// Keep only the first n clients by id (quick runs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_clients: Option<usize>,
    /// Keep at most n documents of each client, a seeded sample, before the eval split (quick
    /// runs on data with many documents per client).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_texts_per_client: Option<usize>,
    /// Seeds the draws of the data: each client's document sample, the per-client eval
    /// hold-out and the eval split's validation and test halves. Default: `run.seed`. Fix it
    /// to compare runs of several `run.seed` on the same data and eval texts (then the seeds
    /// vary the method only, and every run pairs with the references token by token).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
}

fn default_eval_fraction() -> f64 {
    0.1
}

/// `[model]`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelSection {
    /// The generator (GGUF file or HF folder); default: the installed SmolLM2 GGUF.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub generator: Option<PathBuf>,
    /// The sentence embedder folder; default: the installed all-MiniLM-L6-v2.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub embedder: Option<PathBuf>,
    /// What the generator computes in, for sampling and preference training.
    #[serde(skip_serializing_if = "GeneratorDtype::is_auto")]
    pub generator_dtype: GeneratorDtype,
}

/// The generator's compute dtype (`model.generator_dtype`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GeneratorDtype {
    /// The device's default: bf16 on CUDA, fp32 on the CPU.
    #[default]
    Auto,
    /// fp32.
    F32,
    /// bf16 where the device computes it natively (CUDA, or a CPU with AVX512-BF16 or
    /// AMX); elsewhere the run computes in fp32 and says so. The LoRA adapters and the
    /// optimiser stay fp32.
    Bf16,
}

impl GeneratorDtype {
    /// Whether this is the default (left out of written configurations).
    pub fn is_auto(&self) -> bool {
        *self == GeneratorDtype::Auto
    }
}

/// How POPri's public prompts are written (`prompts.style`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PromptStyle {
    /// The paper's few-shot prompt: `examples_per_prompt` public seed texts under "Original
    /// Text Sample" headers, and the header of one more, which the model writes.
    #[default]
    FewShot,
    /// One chat turn per prompt: `prompts.instruction` with a topic drawn from
    /// `prompts.topics`, in the generator's chat template; the candidates are its replies. No
    /// seed pool. Suits small instruction-tuned models, which continue few-shot lists poorly.
    Chat,
}

/// The default `prompts.instruction` (`{topic}` is replaced by a topic).
pub const DEFAULT_INSTRUCTION: &str =
    "Write one short paragraph of a speech about {topic}. Reply with the paragraph only.";

/// `[prompts]`. Exactly one of `seed_file` and `topics` supplies the public seed pool.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PromptSection {
    /// A file of public seed texts, one per line.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seed_file: Option<PathBuf>,
    /// Topics the base model writes seed texts about (when there is no seed file).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub topics: Vec<String>,
    /// Seed texts written per topic.
    pub seeds_per_topic: usize,
    /// J: prompts per round.
    pub num_prompts: usize,
    /// Seed examples shown in each prompt.
    pub examples_per_prompt: usize,
    /// A custom prompt template with placeholders `{0}` … `{n-1}` for the n examples (the
    /// reference's `generation_prompt.txt` syntax); default: POPri's template.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
    /// `"few-shot"` (the paper's prompts) or `"chat"` (an instruction per topic).
    pub style: PromptStyle,
    /// The chat style's request; `{topic}` is replaced by one of `topics`.
    pub instruction: String,
}

impl Default for PromptSection {
    fn default() -> Self {
        Self {
            seed_file: None,
            topics: Vec::new(),
            seeds_per_topic: 10,
            num_prompts: 1800,
            examples_per_prompt: 3,
            template: None,
            style: PromptStyle::FewShot,
            instruction: DEFAULT_INSTRUCTION.to_string(),
        }
    }
}

/// `[generation]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GenerationSection {
    /// K: candidates sampled per prompt.
    pub candidates_per_prompt: usize,
    /// Most new tokens per candidate.
    pub max_new_tokens: usize,
    /// Sampling temperature.
    pub temperature: f64,
    /// Nucleus sampling mass.
    pub top_p: f64,
    /// Candidates are cut to this many generator tokens after cleaning.
    pub truncate_tokens: usize,
    /// Sequences sampled together.
    pub batch_size: usize,
}

impl Default for GenerationSection {
    fn default() -> Self {
        Self {
            candidates_per_prompt: 10,
            max_new_tokens: 85,
            temperature: 1.0,
            top_p: 1.0,
            truncate_tokens: 64,
            batch_size: 64,
        }
    }
}

/// How clients are chosen each round (`privacy.sampling`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SamplingKind {
    /// Every client every round.
    Full,
    /// Each client independently with probability `privacy.q`.
    Poisson,
    /// `privacy.cohort` clients uniformly without replacement.
    Cohort,
}

/// `[privacy]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PrivacySection {
    /// The ε budget of the whole run.
    pub epsilon: f64,
    /// δ.
    pub delta: f64,
    /// T: planned rounds (σ is calibrated so that T rounds fit the budget).
    pub rounds: u64,
    /// σ, noise std divided by the clip bound; calibrated from ε when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub noise_multiplier: Option<f64>,
    /// C: per-client L2 clip bound of the score vector.
    pub clip: f64,
    /// Client sampling scheme.
    pub sampling: SamplingKind,
    /// Poisson inclusion probability (sampling = "poisson").
    #[serde(skip_serializing_if = "Option::is_none")]
    pub q: Option<f64>,
    /// Cohort size (sampling = "cohort").
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cohort: Option<u64>,
    /// The accountant the budget stop rule uses (metrics show both).
    pub accountant: AccountantKind,
    /// ONLY for reproducible tests: seeds the DP noise. Absent (the default), the noise is
    /// seeded from the operating system's CSPRNG.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub noise_seed: Option<u64>,
    /// ONLY for reproducible tests: seeds the choice of each round's clients. Absent (the
    /// default), cohorts come from the operating system's CSPRNG, so that nobody can compute
    /// which rounds held a given client (the amplification by subsampling that the ledger
    /// charges needs the sample to be secret). A run that sets it is NOT differentially private
    /// and its privacy statement says so; `fedsyn serve` refuses it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sampling_seed: Option<u64>,
}

impl Default for PrivacySection {
    fn default() -> Self {
        Self {
            epsilon: 1.0,
            delta: 3e-6,
            rounds: 20,
            noise_multiplier: None,
            clip: 1.0,
            sampling: SamplingKind::Full,
            q: None,
            cohort: None,
            accountant: AccountantKind::Rdp,
            noise_seed: None,
            sampling_seed: None,
        }
    }
}

impl PrivacySection {
    /// Why a run of this section is not differentially private, when a test seed makes its
    /// randomness public (`None` for every real run).
    pub fn test_seeds_void_the_guarantee(&self) -> Option<String> {
        let mut reasons = Vec::new();
        if let Some(seed) = self.noise_seed {
            reasons.push(format!(
                "privacy.noise_seed = {seed} makes the DP noise reproducible, so anyone who \
                 knows the seed can subtract it"
            ));
        }
        if let Some(seed) = self.sampling_seed {
            reasons.push(format!(
                "privacy.sampling_seed = {seed} makes the cohorts reproducible, so anyone who \
                 knows the seed knows which rounds held each client and the amplification by \
                 subsampling does not hold"
            ));
        }
        (!reasons.is_empty())
            .then(|| format!("{} (test seeds are for tests only).", reasons.join("; ")))
    }

    /// The client-sampling scheme these keys describe.
    pub fn client_sampling(&self) -> Result<ClientSampling> {
        match self.sampling {
            SamplingKind::Full => Ok(ClientSampling::Full),
            SamplingKind::Poisson => {
                let q = self.q.ok_or_else(|| {
                    value_error(
                        "privacy.q",
                        "(absent)",
                        "sampling = \"poisson\" needs a rate q in (0, 1]",
                    )
                })?;
                Ok(ClientSampling::Poisson { q })
            }
            SamplingKind::Cohort => {
                let m = self.cohort.ok_or_else(|| {
                    value_error(
                        "privacy.cohort",
                        "(absent)",
                        "sampling = \"cohort\" needs a cohort size >= 1",
                    )
                })?;
                Ok(ClientSampling::Cohort { m })
            }
        }
    }
}

/// `[pairs]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PairSection {
    /// The rank (0 = best) of the rejected candidate of every pair.
    pub rejected_rank: usize,
}

impl Default for PairSection {
    fn default() -> Self {
        Self { rejected_rank: 4 }
    }
}

/// `[lora]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LoraSection {
    /// Rank r.
    pub r: usize,
    /// α (scaling α/r).
    pub alpha: f64,
    /// Dropout on the adapter input during training.
    pub dropout: f64,
    /// Adapted projections (PEFT names, see [`LORA_TARGETS`]).
    pub targets: Vec<String>,
}

impl Default for LoraSection {
    fn default() -> Self {
        Self {
            r: 16,
            alpha: 16.0,
            dropout: 0.0,
            targets: LORA_TARGETS.iter().map(|t| t.to_string()).collect(),
        }
    }
}

/// Which prompts the final synthetic data set is sampled from (`output.synthetic_prompts`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SyntheticPrompts {
    /// Fresh prompts built from the seed pool, one sample per prompt (the reference).
    Fresh,
    /// The prompts of the rounds, reused.
    Reuse,
}

/// `[output]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OutputSection {
    /// N: synthetic samples written after the last round.
    pub synthetic_samples: usize,
    /// Which prompts they are sampled from.
    pub synthetic_prompts: SyntheticPrompts,
}

impl Default for OutputSection {
    fn default() -> Self {
        Self {
            synthetic_samples: 1000,
            synthetic_prompts: SyntheticPrompts::Fresh,
        }
    }
}

/// `[eval]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EvalSection {
    /// Compute the per-round FID against the private eval set (a non-private diagnostic).
    pub fid: bool,
    /// Compute it on all J·K candidates of a round instead of the first sample of each prompt
    /// (the reference's choice), for small runs whose J alone gives a noisy estimate.
    pub fid_all_candidates: bool,
}

impl Default for EvalSection {
    fn default() -> Self {
        Self {
            fid: true,
            fid_all_candidates: false,
        }
    }
}

/// How PE keeps survivors from the noisy vote counts (`pe.selection`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PeSelection {
    /// The M samples with the highest noisy counts (ties to the lower index; Aug-PE's `rank`).
    Top,
    /// M draws with replacement, each sample with probability ∝ its thresholded noisy count
    /// (uniform when every count is 0).
    Proportional,
}

/// `[pe]`: Private Evolution (Aug-PE style) and PE+SFT. Every round votes on a population of
/// N = M·V samples, plus the M survivors when `keep_survivors` is set (Aug-PE's L = V + 1).
/// PE starts from N samples of the generator on the public prompts and evolves them by
/// rephrasing; PE+SFT draws N fresh samples from its generator every round and fine-tunes it
/// (SFT, with the `[dpo]` section's optimiser settings and `loss = "sft"` whatever `dpo.loss`
/// says) on the M selected ones, with the public prompts that wrote them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PeSection {
    /// M: survivors kept each round (PE+SFT: samples trained on each round). Aug-PE: 2000.
    pub population: usize,
    /// V: rephrasings the generator writes of every survivor. Aug-PE: 6.
    pub variations: usize,
    /// H: subtracted from every noisy count, which is then clamped at 0 (in votes; each
    /// client's histogram has L2 norm 1).
    pub threshold: f64,
    /// How survivors are chosen from the noisy counts.
    pub selection: PeSelection,
    /// Whether the survivors themselves join the next population beside their variations.
    pub keep_survivors: bool,
    /// The request that makes the generator rephrase one survivor: `{text}` is replaced by
    /// the survivor (sent as a chat turn when the generator has a chat template).
    pub rephrase_template: String,
}

/// The placeholder of `pe.rephrase_template`.
pub const REPHRASE_PLACEHOLDER: &str = "{text}";

impl Default for PeSection {
    fn default() -> Self {
        Self {
            population: 2000,
            variations: 6,
            threshold: 0.0,
            selection: PeSelection::Top,
            keep_survivors: true,
            rephrase_template: "Rephrase the following text, keeping its topic and style. \
                                Reply with the rephrased text only.\n\n{text}"
                .to_string(),
        }
    }
}

impl PeSection {
    /// N: the samples every round votes on.
    pub fn voted_population(&self) -> usize {
        self.population * (self.variations + usize::from(self.keep_survivors))
    }
}

/// The embedding precision on the wire (`serve.embedding_dtype`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WireDtype {
    /// IEEE half precision (2 bytes a value).
    F16,
    /// IEEE single precision (4 bytes a value).
    F32,
}

/// `[serve]`: `fedsyn serve`, the server for remote clients.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServeSection {
    /// The address to listen on (`--bind` overrides it); loopback unless told otherwise.
    pub bind: String,
    /// Enrolled clients needed before round 0 opens.
    pub min_clients: usize,
    /// Seconds a round attempt stays open for submissions.
    pub round_deadline_seconds: u64,
    /// Fraction of the sampled clients whose submissions close the round early. At the
    /// deadline a round is released with whatever arrived (there is no minimum: see
    /// [`REMOVED_KEYS`]). Below 1, one client's answer can push another's out of the sum, so
    /// rounds are charged with sensitivity 2C (`serve::run::release_clip`): twice the noise.
    pub quorum: f64,
    /// Largest request body accepted; default: ~32 bytes per score value + 4 KiB.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_body_bytes: Option<usize>,
    /// Requests per minute each client token may make.
    pub rate_limit_per_minute: u32,
    /// Embedding precision on the wire.
    pub embedding_dtype: WireDtype,
    /// Deflate the candidate embeddings.
    pub compress: bool,
    /// How score vectors reach the server: `"plain"` (each client's clipped vector in the
    /// clear, for a trusted server) or `"secagg+"` (SecAgg+: the server learns only the sum;
    /// see docs/threat-model.md).
    pub aggregation: Aggregation,
    /// SecAgg+: neighbours per client (the whole cohort when it is smaller). More neighbours
    /// tolerate more drop-outs and corrupt clients, at more client work (one mask each).
    pub secagg_neighbours: usize,
    /// SecAgg+: seconds each short step (keys, shares, unmasking) waits for the clients; the
    /// masked-input step waits until the round deadline.
    pub secagg_step_seconds: u64,
}

impl Default for ServeSection {
    fn default() -> Self {
        Self {
            bind: "127.0.0.1:8080".into(),
            min_clients: 2,
            round_deadline_seconds: 120,
            quorum: 1.0,
            max_body_bytes: None,
            rate_limit_per_minute: 120,
            embedding_dtype: WireDtype::F16,
            compress: true,
            aggregation: Aggregation::Plain,
            secagg_neighbours: 64,
            secagg_step_seconds: 30,
        }
    }
}

impl ServeSection {
    /// The body limit: the configured one, or ~32 bytes per score value (J·K of them) + 4 KiB.
    pub fn body_limit(&self, values: usize) -> usize {
        self.max_body_bytes
            .unwrap_or_else(|| values.saturating_mul(32).saturating_add(4096))
    }
}

/// `[fedavg]`: DP-FedAvg (McMahan et al. 2018) of the downstream model's LoRA adapter. Each
/// round every sampled client trains the global adapter on its own texts (a fresh AdamW at a
/// constant `local_lr`, `local_steps` steps of `local_batch` sequences of ≤ 64 tokens), clips
/// its update to L2 ≤ `privacy.clip`; the server adds N(0, σ²C²) to the sum, divides by the
/// expected cohort size and applies the average times `server_lr`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FedAvgSection {
    /// Local optimiser steps per client and round.
    pub local_steps: u64,
    /// The clients' AdamW learning rate (constant).
    pub local_lr: f64,
    /// Sequences per local step.
    pub local_batch: usize,
    /// The server's step size on the averaged update (1 = plain averaging).
    pub server_lr: f64,
    /// γ of adaptive clipping (Andrew et al. 2021): the clip bound follows the γ-quantile of
    /// the update norms. Absent: the bound stays `privacy.clip`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub adaptive_clip_quantile: Option<f64>,
    /// η of adaptive clipping: C ← C · exp(−η (b̄ − γ)) each round.
    pub adaptive_clip_lr: f64,
    /// σ_b, the noise std of the count of unclipped clients (adaptive clipping); absent:
    /// max(expected cohort size / 20 (Andrew et al.'s choice), 2σ).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub adaptive_clip_noise: Option<f64>,
}

impl Default for FedAvgSection {
    fn default() -> Self {
        Self {
            local_steps: 5,
            local_lr: 2e-4,
            local_batch: 8,
            server_lr: 1.0,
            adaptive_clip_quantile: None,
            adaptive_clip_lr: 0.2,
            adaptive_clip_noise: None,
        }
    }
}

/// Every key of the schema, by section, read from the section types themselves (their serde
/// field names), so that a new field is a known key with no second list to keep.
/// `deny_unknown_fields` rejects anything else too; this gives the error a dotted name and a
/// suggestion, for file keys and overrides alike.
fn schema() -> [(&'static str, &'static [&'static str]); 14] {
    use serde_aux::serde_introspection::serde_introspect as keys;
    [
        ("run", keys::<RunSection>()),
        ("data", keys::<DataSection>()),
        ("model", keys::<ModelSection>()),
        ("prompts", keys::<PromptSection>()),
        ("generation", keys::<GenerationSection>()),
        ("privacy", keys::<PrivacySection>()),
        ("pairs", keys::<PairSection>()),
        ("lora", keys::<LoraSection>()),
        ("dpo", keys::<PreferenceConfig>()),
        ("output", keys::<OutputSection>()),
        ("eval", keys::<EvalSection>()),
        ("serve", keys::<ServeSection>()),
        ("pe", keys::<PeSection>()),
        ("fedavg", keys::<FedAvgSection>()),
    ]
}

/// The keys that hold paths (resolved against the config file's folder, or against the current
/// directory when they come from an override).
const PATH_KEYS: [&str; 5] = [
    "data.train",
    "data.eval",
    "model.generator",
    "model.embedder",
    "prompts.seed_file",
];

impl RunConfig {
    /// The seed of the data's draws: `data.seed`, else `run.seed`.
    pub fn data_seed(&self) -> u64 {
        self.data.seed.unwrap_or(self.run.seed)
    }

    /// Reads the TOML file at `path`, applies `overrides` (each `dotted.key=value`; the value is
    /// parsed as a TOML value, or taken as a string when it is not one), resolves relative
    /// paths (file values against the file's folder, override values against the current
    /// directory) and validates the result.
    pub fn load(path: &Path, overrides: &[String]) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| RunError::io(path, e))?;
        let base = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        Self::parse(&text, &path.display().to_string(), base, overrides)
    }

    /// Parses configuration text whose relative paths are relative to `base_dir` (itself
    /// relative to the current directory when not absolute), then validates it (no overrides).
    pub fn from_toml(text: &str, base_dir: &Path) -> Result<Self> {
        Self::parse(text, "(text)", base_dir, &[])
    }

    fn parse(text: &str, source_name: &str, base_dir: &Path, overrides: &[String]) -> Result<Self> {
        let mut table: toml::Table =
            text.parse()
                .map_err(|e: toml::de::Error| RunError::ConfigSyntax {
                    source_name: source_name.to_string(),
                    message: e.to_string(),
                })?;
        check_keys(&table, source_name)?;
        let mut overridden = BTreeSet::new();
        for assignment in overrides {
            let key = apply_override(&mut table, assignment)?;
            overridden.insert(key);
        }
        let source_name = if overrides.is_empty() {
            source_name.to_string()
        } else {
            format!("{source_name} with --set overrides")
        };
        let mut config: RunConfig =
            toml::Value::Table(table)
                .try_into()
                .map_err(|e: toml::de::Error| RunError::ConfigSyntax {
                    source_name,
                    // "… expected f64\nin `privacy.epsilon`" → one line.
                    message: e.to_string().trim_end().replace("\nin `", " in `"),
                })?;
        // Absolute, so that the saved config means the same files wherever it is read from.
        let current_dir = std::env::current_dir().map_err(|e| RunError::io(".", e))?;
        let base_dir = std::path::absolute(base_dir).map_err(|e| RunError::io(base_dir, e))?;
        config.resolve_paths(|key| {
            if overridden.contains(key) {
                current_dir.as_path()
            } else {
                base_dir.as_path()
            }
        });
        config.validate()?;
        Ok(config)
    }

    /// Makes every relative path absolute against the folder `base_for(key)` names.
    fn resolve_paths<'a>(&mut self, base_for: impl Fn(&str) -> &'a Path) {
        let resolve = |key: &str, path: &mut PathBuf| {
            if path.is_relative() {
                *path = base_for(key).join(&*path);
            }
        };
        if let TrainData::File(path) = &mut self.data.train {
            resolve(PATH_KEYS[0], path);
        }
        let optional = [
            (PATH_KEYS[1], &mut self.data.eval),
            (PATH_KEYS[2], &mut self.model.generator),
            (PATH_KEYS[3], &mut self.model.embedder),
            (PATH_KEYS[4], &mut self.prompts.seed_file),
        ];
        for (key, path) in optional {
            if let Some(path) = path {
                resolve(key, path);
            }
        }
    }

    /// The resolved configuration as TOML (saved as `config.toml` in the run directory).
    pub fn to_toml(&self) -> Result<String> {
        toml::to_string_pretty(self).map_err(|e| RunError::ConfigSyntax {
            source_name: "(resolved config)".into(),
            message: e.to_string(),
        })
    }

    /// Checks every value and their combinations; the error names the key and the fix.
    pub fn validate(&self) -> Result<()> {
        self.validate_run()?;
        self.validate_data()?;
        self.validate_prompts()?;
        self.validate_generation()?;
        self.validate_privacy()?;
        self.validate_lora()?;
        self.validate_dpo()?;
        self.validate_serve()?;
        self.validate_pe()?;
        self.validate_fedavg()?;
        if self.output.synthetic_samples == 0 {
            return Err(value_error(
                "output.synthetic_samples",
                0,
                "write at least one synthetic sample",
            ));
        }
        Ok(())
    }

    fn validate_fedavg(&self) -> Result<()> {
        let fedavg = &self.fedavg;
        if fedavg.local_steps == 0 {
            return Err(value_error("fedavg.local_steps", 0, "must be at least 1"));
        }
        positive("fedavg.local_batch", fedavg.local_batch)?;
        let rates = [
            ("fedavg.local_lr", fedavg.local_lr),
            ("fedavg.server_lr", fedavg.server_lr),
            ("fedavg.adaptive_clip_lr", fedavg.adaptive_clip_lr),
        ];
        for (key, rate) in rates {
            if !(rate.is_finite() && rate > 0.0) {
                return Err(value_error(key, rate, "a finite rate > 0"));
            }
        }
        if let Some(quantile) = fedavg.adaptive_clip_quantile {
            if !(quantile > 0.0 && quantile < 1.0) {
                return Err(value_error(
                    "fedavg.adaptive_clip_quantile",
                    quantile,
                    "a quantile in (0, 1) (Andrew et al. 2021 use 0.5), or remove the key for a \
                     fixed clip bound",
                ));
            }
        }
        if let Some(noise) = fedavg.adaptive_clip_noise {
            if !(noise.is_finite() && noise > 0.0) {
                return Err(value_error(
                    "fedavg.adaptive_clip_noise",
                    noise,
                    "a finite noise std > 0, or remove the key for max(cohort / 20, 2σ)",
                ));
            }
        }
        Ok(())
    }

    fn validate_pe(&self) -> Result<()> {
        let pe = &self.pe;
        positive("pe.population", pe.population)?;
        positive("pe.variations", pe.variations)?;
        if !(pe.threshold.is_finite() && pe.threshold >= 0.0) {
            return Err(value_error(
                "pe.threshold",
                pe.threshold,
                "a number of votes >= 0 (0: no threshold)",
            ));
        }
        if !pe.rephrase_template.contains(REPHRASE_PLACEHOLDER) {
            return Err(value_error(
                "pe.rephrase_template",
                format!("{:?}", pe.rephrase_template),
                format!("the request must contain {REPHRASE_PLACEHOLDER}, where the survivor goes"),
            ));
        }
        Ok(())
    }

    fn validate_serve(&self) -> Result<()> {
        let serve = &self.serve;
        if serve.bind.parse::<std::net::SocketAddr>().is_err() {
            return Err(value_error(
                "serve.bind",
                format!("{:?}", serve.bind),
                "an IP address and port, e.g. \"127.0.0.1:8080\" (port 0 picks a free one)",
            ));
        }
        positive("serve.min_clients", serve.min_clients)?;
        if serve.round_deadline_seconds == 0 {
            return Err(value_error(
                "serve.round_deadline_seconds",
                0,
                "give clients at least 1 second to submit",
            ));
        }
        if !(serve.quorum.is_finite() && serve.quorum > 0.0 && serve.quorum <= 1.0) {
            return Err(value_error(
                "serve.quorum",
                serve.quorum,
                "a fraction in (0, 1] of the sampled clients",
            ));
        }
        if let Some(limit) = serve.max_body_bytes {
            if limit < 1024 {
                return Err(value_error(
                    "serve.max_body_bytes",
                    limit,
                    "at least 1024 bytes (a score vector needs ~32 bytes per candidate)",
                ));
            }
        }
        if !(2..=254).contains(&serve.secagg_neighbours) {
            return Err(value_error(
                "serve.secagg_neighbours",
                serve.secagg_neighbours,
                "between 2 and 254 neighbours per client (a Shamir share is named by one byte; \
                 with fewer than 2 a sum could hold one client's vector alone)",
            ));
        }
        if serve.aggregation == Aggregation::SecAggPlus && serve.quorum < 1.0 {
            return Err(value_error(
                "serve.quorum",
                serve.quorum,
                "1 with serve.aggregation = \"secagg+\" (a secure round closes each step when \
                 every client answered or at the step's deadline; delete serve.quorum)",
            ));
        }
        if serve.secagg_step_seconds == 0 {
            return Err(value_error(
                "serve.secagg_step_seconds",
                0,
                "give clients at least 1 second per secure-aggregation step",
            ));
        }
        if serve.rate_limit_per_minute == 0 {
            return Err(value_error(
                "serve.rate_limit_per_minute",
                0,
                "allow each client at least 1 request per minute",
            ));
        }
        Ok(())
    }

    fn validate_run(&self) -> Result<()> {
        let device = self.run.device.trim().to_ascii_lowercase();
        let cuda_index = device
            .strip_prefix("cuda:")
            .is_some_and(|n| n.parse::<usize>().is_ok());
        if !(matches!(device.as_str(), "auto" | "cpu" | "cuda" | "gpu") || cuda_index) {
            return Err(value_error(
                "run.device",
                format!("{:?}", self.run.device),
                "use \"auto\", \"cpu\", \"cuda\" or \"cuda:N\"",
            ));
        }
        positive("run.threads", self.run.threads)
    }

    fn validate_data(&self) -> Result<()> {
        let data = &self.data;
        if let TrainData::File(path) = &data.train {
            if path.as_os_str().is_empty() {
                return Err(value_error(
                    "data.train",
                    "\"\"",
                    "give a federated JSONL file or \"sotu\"",
                ));
            }
        }
        let fraction = data.eval_fraction;
        if !(fraction.is_finite() && (0.0..1.0).contains(&fraction)) {
            return Err(value_error(
                "data.eval_fraction",
                fraction,
                "a fraction in [0, 1) of each client's texts",
            ));
        }
        if data.eval.is_none() && fraction == 0.0 && self.eval.fid {
            return Err(value_error(
                "data.eval_fraction",
                fraction,
                "eval.fid needs eval texts: set data.eval_fraction > 0, give data.eval, or set \
                 eval.fid = false",
            ));
        }
        if let Some(n) = data.max_clients {
            positive("data.max_clients", n)?;
        }
        if let Some(n) = data.max_texts_per_client {
            positive("data.max_texts_per_client", n)?;
        }
        Ok(())
    }

    fn validate_prompts(&self) -> Result<()> {
        let prompts = &self.prompts;
        match (&prompts.seed_file, prompts.topics.is_empty()) {
            (Some(_), false) => {
                return Err(value_error(
                    "prompts.topics",
                    format!("{:?}", prompts.topics),
                    "give either prompts.seed_file or prompts.topics, not both",
                ))
            }
            (None, true) => {
                return Err(value_error(
                    "prompts.seed_file",
                    "(absent)",
                    "the prompts need public seed texts: set prompts.seed_file (one text per \
                     line) or prompts.topics (a list of topics the base model writes about)",
                ))
            }
            _ => {}
        }
        if let Some(blank) = prompts.topics.iter().find(|t| t.trim().is_empty()) {
            return Err(value_error(
                "prompts.topics",
                format!("{blank:?}"),
                "every topic must be non-empty",
            ));
        }
        if !prompts.topics.is_empty() {
            positive("prompts.seeds_per_topic", prompts.seeds_per_topic)?;
        }
        positive("prompts.num_prompts", prompts.num_prompts)?;
        positive("prompts.examples_per_prompt", prompts.examples_per_prompt)?;
        if prompts.style == PromptStyle::Chat {
            if prompts.topics.is_empty() {
                return Err(value_error(
                    "prompts.topics",
                    "(empty)",
                    "prompts.style = \"chat\" draws each prompt's topic from prompts.topics: \
                     list some",
                ));
            }
            if !prompts.instruction.contains("{topic}") {
                return Err(value_error(
                    "prompts.instruction",
                    format!("{:?}", prompts.instruction),
                    "an instruction with {topic} where the topic goes",
                ));
            }
            if prompts.template.is_some() {
                return Err(value_error(
                    "prompts.template",
                    "(set)",
                    "no template with prompts.style = \"chat\" (the template is the few-shot \
                     style's; the chat style's request is prompts.instruction)",
                ));
            }
        }
        if let Some(template) = &prompts.template {
            PromptTemplate::parse(template, prompts.examples_per_prompt).map_err(|e| {
                value_error("prompts.template", format!("{template:?}"), e.to_string())
            })?;
        }
        Ok(())
    }

    fn validate_generation(&self) -> Result<()> {
        let generation = &self.generation;
        if generation.candidates_per_prompt < 2 {
            return Err(value_error(
                "generation.candidates_per_prompt",
                generation.candidates_per_prompt,
                "a preference pair needs K >= 2 candidates per prompt (reference: 10)",
            ));
        }
        positive("generation.max_new_tokens", generation.max_new_tokens)?;
        positive("generation.truncate_tokens", generation.truncate_tokens)?;
        positive("generation.batch_size", generation.batch_size)?;
        let temperature = generation.temperature;
        if !(temperature.is_finite() && temperature > 0.0) {
            return Err(value_error(
                "generation.temperature",
                temperature,
                "a temperature > 0 (at 0 all K candidates of a prompt would be identical)",
            ));
        }
        let top_p = generation.top_p;
        if !(top_p.is_finite() && top_p > 0.0 && top_p <= 1.0) {
            return Err(value_error(
                "generation.top_p",
                top_p,
                "a probability mass in (0, 1]",
            ));
        }
        let rank = self.pairs.rejected_rank;
        if rank == 0 || rank >= generation.candidates_per_prompt {
            return Err(value_error(
                "pairs.rejected_rank",
                rank,
                format!(
                    "the rejected candidate's rank must lie in 1..K-1 = 1..{} (rank 0 is the \
                     chosen one; reference: 4)",
                    generation.candidates_per_prompt - 1
                ),
            ));
        }
        Ok(())
    }

    fn validate_privacy(&self) -> Result<()> {
        let privacy = &self.privacy;
        if !(privacy.epsilon.is_finite() && privacy.epsilon > 0.0) {
            return Err(value_error(
                "privacy.epsilon",
                privacy.epsilon,
                "a finite budget > 0 (e.g. 1 or 7)",
            ));
        }
        if !(privacy.delta.is_finite() && privacy.delta > 0.0 && privacy.delta < 1.0) {
            return Err(value_error(
                "privacy.delta",
                privacy.delta,
                "0 < delta < 1, well below 1/number of clients (reference: 3e-6)",
            ));
        }
        if privacy.rounds == 0 {
            return Err(value_error("privacy.rounds", 0, "plan at least one round"));
        }
        if let Some(sigma) = privacy.noise_multiplier {
            if !(sigma.is_finite() && sigma > 0.0) {
                return Err(value_error(
                    "privacy.noise_multiplier",
                    sigma,
                    "a finite sigma > 0, or remove the key to calibrate it from epsilon",
                ));
            }
        }
        if !(privacy.clip.is_finite() && privacy.clip > 0.0) {
            return Err(value_error(
                "privacy.clip",
                privacy.clip,
                "a finite clip bound > 0 (reference: 1)",
            ));
        }
        self.validate_sampling()
    }

    fn validate_sampling(&self) -> Result<()> {
        let privacy = &self.privacy;
        let stray = match privacy.sampling {
            SamplingKind::Full => privacy
                .q
                .map(|_| "privacy.q")
                .or(privacy.cohort.map(|_| "privacy.cohort")),
            SamplingKind::Poisson => privacy.cohort.map(|_| "privacy.cohort"),
            SamplingKind::Cohort => privacy.q.map(|_| "privacy.q"),
        };
        if let Some(key) = stray {
            return Err(value_error(
                key,
                "(set)",
                format!(
                    "privacy.q applies to sampling = \"poisson\" and privacy.cohort to sampling \
                     = \"cohort\"; remove {key} or change privacy.sampling"
                ),
            ));
        }
        match privacy.client_sampling()? {
            ClientSampling::Full => {}
            ClientSampling::Poisson { q } => {
                if !(q.is_finite() && q > 0.0 && q <= 1.0) {
                    return Err(value_error("privacy.q", q, "a sampling rate in (0, 1]"));
                }
            }
            ClientSampling::Cohort { m } => {
                if m == 0 {
                    return Err(value_error(
                        "privacy.cohort",
                        0,
                        "a cohort of at least 1 client",
                    ));
                }
                if let Some(n) = self.data.max_clients {
                    if m > n as u64 {
                        return Err(value_error(
                            "privacy.cohort",
                            m,
                            format!("at most data.max_clients = {n} clients"),
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    fn validate_lora(&self) -> Result<()> {
        let lora = &self.lora;
        positive("lora.r", lora.r)?;
        if !(lora.alpha.is_finite() && lora.alpha > 0.0) {
            return Err(value_error("lora.alpha", lora.alpha, "a finite alpha > 0"));
        }
        if !(lora.dropout.is_finite() && (0.0..1.0).contains(&lora.dropout)) {
            return Err(value_error(
                "lora.dropout",
                lora.dropout,
                "a probability in [0, 1)",
            ));
        }
        if lora.targets.is_empty() {
            return Err(value_error(
                "lora.targets",
                "[]",
                format!("adapt at least one of {LORA_TARGETS:?}"),
            ));
        }
        let mut seen = BTreeSet::new();
        for target in &lora.targets {
            if !LORA_TARGETS.contains(&target.as_str()) {
                return Err(value_error(
                    "lora.targets",
                    format!("{target:?}"),
                    format!("each target must be one of {LORA_TARGETS:?}"),
                ));
            }
            if !seen.insert(target) {
                return Err(value_error(
                    "lora.targets",
                    format!("{target:?}"),
                    "each target may appear once",
                ));
            }
        }
        Ok(())
    }

    /// `[dpo]` is the trainer's own configuration; its checks name the field.
    fn validate_dpo(&self) -> Result<()> {
        self.dpo.validate().map_err(|e| RunError::ConfigValue {
            key: format!("dpo.{}", e.name),
            value: "(see the fix)".to_string(),
            fix: e.message,
        })
    }
}

fn value_error(key: &str, value: impl fmt::Display, fix: impl Into<String>) -> RunError {
    RunError::ConfigValue {
        key: key.to_string(),
        value: value.to_string(),
        fix: fix.into(),
    }
}

fn positive(key: &str, value: usize) -> Result<()> {
    if value == 0 {
        Err(value_error(key, 0, "must be at least 1"))
    } else {
        Ok(())
    }
}

/// Rejects sections and keys the schema does not have, naming the closest known one.
fn check_keys(table: &toml::Table, source_name: &str) -> Result<()> {
    for (section, value) in table {
        let Some(keys) = section_keys(section) else {
            return Err(unknown_key(
                section,
                source_name,
                schema().into_iter().map(|s| s.0),
            ));
        };
        let toml::Value::Table(entries) = value else {
            return Err(RunError::ConfigSyntax {
                source_name: source_name.to_string(),
                message: format!("`{section}` must be a table ([{section}]), not a value"),
            });
        };
        for key in entries.keys() {
            let dotted = format!("{section}.{key}");
            if let Some((_, why)) = REMOVED_KEYS.iter().find(|(k, _)| *k == dotted) {
                return Err(RunError::ConfigSyntax {
                    source_name: source_name.to_string(),
                    message: format!("`{dotted}` was removed: {why}"),
                });
            }
            if !keys.contains(&key.as_str()) {
                return Err(unknown_key(
                    &format!("{section}.{key}"),
                    source_name,
                    keys.iter().map(|k| format!("{section}.{k}")),
                ));
            }
        }
    }
    Ok(())
}

/// Keys that no longer exist, with why and what to do instead (a plain "unknown key" would
/// not tell a user with an older configuration what changed).
pub const REMOVED_KEYS: &[(&str, &str)] = &[(
    "serve.min_submissions",
    "a round whose sampled clients mostly stayed silent was abandoned and a new cohort drawn, \
     which let whoever controls the answers choose who is released while the ledger charged \
     one draw; a round's cohort is now drawn once and released at its deadline with what \
     arrived. Delete the key (from DIR/config.toml too, to resume an older run)",
)];

fn section_keys(section: &str) -> Option<&'static [&'static str]> {
    schema()
        .into_iter()
        .find(|(name, _)| *name == section)
        .map(|(_, keys)| keys)
}

fn unknown_key<S: AsRef<str>>(
    key: &str,
    source_name: &str,
    known: impl Iterator<Item = S>,
) -> RunError {
    let known: Vec<String> = known.map(|k| k.as_ref().to_string()).collect();
    let closest = known
        .iter()
        .map(|k| (edit_distance(key, k), k))
        .min_by_key(|(distance, _)| *distance)
        .filter(|(distance, _)| *distance <= 3)
        .map(|(_, k)| format!("did you mean `{k}`? "))
        .unwrap_or_default();
    RunError::ConfigSyntax {
        source_name: source_name.to_string(),
        message: format!(
            "unknown key `{key}`: {closest}known keys here: {}",
            known.join(", ")
        ),
    }
}

/// Levenshtein distance, for "did you mean" suggestions.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut current = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let substitution = previous[j] + usize::from(ca != *cb);
            current[j + 1] = substitution.min(previous[j + 1] + 1).min(current[j] + 1);
        }
        previous = current;
    }
    previous[b.len()]
}

/// Applies one `section.key=value` override; returns the dotted key.
fn apply_override(table: &mut toml::Table, assignment: &str) -> Result<String> {
    let source_name = format!("--set {assignment}");
    let syntax = |message: String| RunError::ConfigSyntax {
        source_name: source_name.clone(),
        message,
    };
    let (key, raw) = assignment
        .split_once('=')
        .ok_or_else(|| syntax("expected KEY=VALUE, e.g. dpo.beta=0.05".into()))?;
    let key = key.trim();
    let (section, name) = key
        .split_once('.')
        .ok_or_else(|| syntax(format!("`{key}` is not a dotted key like section.key")))?;
    let mut one = toml::Table::new();
    one.insert(
        section.to_string(),
        toml::Value::Table(toml::Table::from_iter([(
            name.to_string(),
            toml::Value::Boolean(false),
        )])),
    );
    check_keys(&one, &source_name)?;
    let value = parse_override_value(raw.trim());
    let entry = table
        .entry(section.to_string())
        .or_insert_with(|| toml::Value::Table(toml::Table::new()));
    match entry {
        toml::Value::Table(section_table) => {
            section_table.insert(name.to_string(), value);
        }
        _ => return Err(syntax(format!("`{section}` is not a table"))),
    }
    Ok(key.to_string())
}

/// A TOML value if the text is one (`0.05`, `true`, `["a", "b"]`, `"quoted"`), else the text
/// itself as a string (`sotu`, `runs/a.jsonl`).
fn parse_override_value(raw: &str) -> toml::Value {
    format!("value = {raw}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("value"))
        .unwrap_or_else(|| toml::Value::String(raw.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = "[data]\ntrain = \"sotu\"\n[prompts]\ntopics = [\"taxes\"]\n";

    fn config(text: &str) -> Result<RunConfig> {
        RunConfig::from_toml(text, Path::new("/base"))
    }

    fn key_of(error: RunError) -> String {
        match error {
            RunError::ConfigValue { key, .. } => key,
            other => panic!("expected a ConfigValue error, got {other}"),
        }
    }

    #[test]
    fn the_generator_dtype_parses_and_auto_stays_out_of_written_configs() {
        let plain = config(MINIMAL).unwrap();
        assert_eq!(plain.model.generator_dtype, GeneratorDtype::Auto);
        assert!(!plain.to_toml().unwrap().contains("generator_dtype"));
        let bf16 = config(&format!("{MINIMAL}[model]\ngenerator_dtype = \"bf16\"\n")).unwrap();
        assert_eq!(bf16.model.generator_dtype, GeneratorDtype::Bf16);
        let written = bf16.to_toml().unwrap();
        assert!(written.contains("generator_dtype = \"bf16\""), "{written}");
        let err = config(&format!("{MINIMAL}[model]\ngenerator_dtype = \"f16\"\n"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("generator_dtype") && err.contains("bf16"),
            "{err}"
        );
    }

    #[test]
    fn the_data_seed_defaults_to_the_run_seed() {
        let plain = config(&format!("[run]\nseed = 5\n{MINIMAL}")).unwrap();
        assert_eq!(plain.data_seed(), 5);
        let fixed = config(&format!(
            "[run]\nseed = 5\n{}",
            MINIMAL.replace("[data]\n", "[data]\nseed = 0\n")
        ))
        .unwrap();
        assert_eq!(fixed.data_seed(), 0);
        assert!(fixed.to_toml().unwrap().contains("seed = 0"));
    }

    #[test]
    fn the_chat_prompt_style_needs_topics_and_an_instruction_with_a_topic() {
        let chat = config(&format!("{MINIMAL}style = \"chat\"\n")).unwrap();
        assert_eq!(chat.prompts.style, PromptStyle::Chat);
        assert!(chat.prompts.instruction.contains("{topic}"));
        for (extra, key) in [
            (
                "style = \"chat\"\ninstruction = \"Write.\"\n",
                "prompts.instruction",
            ),
            (
                "style = \"chat\"\ntemplate = \"{0}\"\nexamples_per_prompt = 1\n",
                "prompts.template",
            ),
        ] {
            let error = config(&format!("{MINIMAL}{extra}")).unwrap_err();
            assert_eq!(key_of(error), key, "{extra}");
        }
        // Every text-writing method takes either style, so that a comparison differs only in
        // the method.
        for method in ["pe", "pe-sft"] {
            let chat = config(&format!(
                "[run]\nmethod = \"{method}\"\n{MINIMAL}style = \"chat\"\n"
            ))
            .unwrap();
            assert_eq!(chat.prompts.style, PromptStyle::Chat, "{method}");
        }
        assert!(config(&format!("{MINIMAL}style = \"chatty\"\n")).is_err());
    }

    #[test]
    fn the_serve_section_has_defaults_and_checked_values() {
        let serve = config(MINIMAL).unwrap().serve;
        assert_eq!(serve, ServeSection::default());
        assert_eq!(serve.bind, "127.0.0.1:8080");
        assert_eq!(serve.body_limit(1000), 1000 * 32 + 4096);
        let text = format!("{MINIMAL}[serve]\nmin_clients = 50\nembedding_dtype = \"f32\"\n");
        let serve = config(&text).unwrap().serve;
        assert_eq!(
            (serve.min_clients, serve.embedding_dtype),
            (50, WireDtype::F32)
        );
        for (bad, key) in [
            ("bind = \"localhost\"", "serve.bind"),
            ("min_clients = 0", "serve.min_clients"),
            ("round_deadline_seconds = 0", "serve.round_deadline_seconds"),
            ("quorum = 1.5", "serve.quorum"),
            ("quorum = 0.0", "serve.quorum"),
            ("max_body_bytes = 10", "serve.max_body_bytes"),
            ("rate_limit_per_minute = 0", "serve.rate_limit_per_minute"),
            ("secagg_neighbours = 1", "serve.secagg_neighbours"),
            ("secagg_neighbours = 255", "serve.secagg_neighbours"),
            ("secagg_step_seconds = 0", "serve.secagg_step_seconds"),
            ("aggregation = \"secagg+\"\nquorum = 0.5", "serve.quorum"),
        ] {
            let error = config(&format!("{MINIMAL}[serve]\n{bad}\n")).unwrap_err();
            assert_eq!(key_of(error), key, "{bad}");
        }
        let secure = config(&format!("{MINIMAL}[serve]\naggregation = \"secagg+\"\n")).unwrap();
        assert_eq!(secure.serve.aggregation, Aggregation::SecAggPlus);
        let misspelt = config(&format!("{MINIMAL}[serve]\naggregation = \"secagg\"\n"));
        assert!(misspelt.is_err());
        let unknown = config(&format!("{MINIMAL}[serve]\nport = 1\n")).unwrap_err();
        assert!(unknown.to_string().contains("serve.port"), "{unknown}");
        let removed = config(&format!("{MINIMAL}[serve]\nmin_submissions = 2\n"))
            .unwrap_err()
            .to_string();
        assert!(
            removed.contains("serve.min_submissions` was removed") && removed.contains("Delete"),
            "{removed}"
        );
    }

    #[test]
    fn defaults_are_the_reference_values() {
        let c = config(MINIMAL).unwrap();
        assert_eq!(c.data.train, TrainData::Sotu);
        assert_eq!(
            (c.prompts.num_prompts, c.prompts.examples_per_prompt),
            (1800, 3)
        );
        assert_eq!(c.generation, GenerationSection::default());
        assert_eq!(
            (
                c.generation.candidates_per_prompt,
                c.generation.max_new_tokens
            ),
            (10, 85)
        );
        assert_eq!((c.privacy.delta, c.privacy.rounds), (3e-6, 20));
        assert_eq!(c.privacy.accountant, AccountantKind::Rdp);
        assert_eq!(c.pairs.rejected_rank, 4);
        assert_eq!(
            (c.lora.r, c.lora.alpha, c.lora.targets.len()),
            (16, 16.0, 7)
        );
        assert_eq!(
            (c.dpo.beta, c.dpo.lr, c.dpo.batch_size * c.dpo.grad_accum),
            (0.01, 8e-7, 24)
        );
        assert_eq!((c.dpo.max_prompt_length, c.dpo.max_length), (256, 512));
        assert!(c.privacy.noise_seed.is_none() && c.eval.fid);
    }

    #[test]
    fn schema_lists_exactly_the_serialised_keys() {
        let mut c = config(MINIMAL).unwrap();
        // Fill every optional key so that it serialises.
        c.data.eval = Some("/e.jsonl".into());
        c.data.max_clients = Some(5);
        c.model.generator = Some("/g.gguf".into());
        c.model.embedder = Some("/m".into());
        c.model.generator_dtype = GeneratorDtype::Bf16;
        c.prompts.seed_file = Some("/s.txt".into());
        c.prompts.template = Some("{0}{1}{2}".into());
        c.privacy.noise_multiplier = Some(2.0);
        c.privacy.q = Some(0.5);
        c.privacy.cohort = Some(3);
        c.privacy.noise_seed = Some(1);
        c.privacy.sampling_seed = Some(1);
        c.dpo.seed = 1;
        c.data.max_texts_per_client = Some(3);
        c.data.seed = Some(0);
        c.dpo.total_steps = Some(10);
        c.dpo.max_steps = Some(10);
        c.fedavg.adaptive_clip_quantile = Some(0.5);
        c.fedavg.adaptive_clip_noise = Some(1.0);
        c.serve.max_body_bytes = Some(65_536);
        let table: toml::Table = c.to_toml().unwrap().parse().unwrap();
        let serialised: Vec<(String, Vec<String>)> = table
            .iter()
            .map(|(s, v)| {
                let mut keys: Vec<String> = v.as_table().unwrap().keys().cloned().collect();
                keys.sort();
                (s.clone(), keys)
            })
            .collect();
        let mut schema: Vec<(String, Vec<String>)> = schema()
            .into_iter()
            .map(|(s, keys)| {
                let mut keys: Vec<String> = keys.iter().map(|k| k.to_string()).collect();
                keys.sort();
                (s.to_string(), keys)
            })
            .collect();
        schema.sort();
        let mut serialised = serialised;
        serialised.sort();
        assert_eq!(serialised, schema);
    }

    #[test]
    fn the_key_list_has_every_section_of_the_config_type() {
        let sections: Vec<&str> = schema().into_iter().map(|(name, _)| name).collect();
        let fields = serde_aux::serde_introspection::serde_introspect::<RunConfig>();
        assert_eq!(sections, fields);
    }

    #[test]
    fn resolved_config_round_trips_through_toml() {
        let text = format!(
            "{MINIMAL}[privacy]\nsampling = \"poisson\"\nq = 0.25\nepsilon = 7\n\
             [dpo]\nloss = \"sigmoid\"\nschedule = \"linear\"\n[data.x]\n"
        )
        .replace("[data.x]\n", "");
        let c = config(&text).unwrap();
        assert_eq!(c.privacy.epsilon, 7.0);
        assert_eq!(c.dpo.schedule, training_config::LrSchedule::Linear);
        assert_eq!(c.dpo.loss, training_config::PreferenceLoss::Dpo);
        let saved = c.to_toml().unwrap();
        let back = RunConfig::from_toml(&saved, Path::new("/elsewhere")).unwrap();
        assert_eq!(back, c);
        assert!(saved.contains("loss = \"dpo\""), "{saved}");
    }

    #[test]
    fn relative_paths_become_absolute() {
        let text = "[data]\ntrain = \"clients.jsonl\"\neval = \"/abs/eval.jsonl\"\n\
                    [prompts]\nseed_file = \"seeds/public.txt\"\n";
        let c = RunConfig::from_toml(text, Path::new("configs")).unwrap();
        let base = std::env::current_dir().unwrap().join("configs");
        assert_eq!(c.data.train, TrainData::File(base.join("clients.jsonl")));
        assert_eq!(c.data.eval, Some(PathBuf::from("/abs/eval.jsonl")));
        assert_eq!(c.prompts.seed_file, Some(base.join("seeds/public.txt")));
    }

    #[test]
    fn unknown_keys_are_named_with_a_suggestion() {
        let text = format!("{MINIMAL}[generation]\ntempreature = 0.7\n");
        let message = config(&text).unwrap_err().to_string();
        assert!(
            message.contains("`generation.tempreature`")
                && message.contains("did you mean `generation.temperature`"),
            "{message}"
        );
        let message = config(&format!("{MINIMAL}[privcy]\n"))
            .unwrap_err()
            .to_string();
        assert!(message.contains("did you mean `privacy`"), "{message}");
    }

    #[test]
    fn wrong_types_name_the_key() {
        let text = format!("{MINIMAL}[privacy]\nepsilon = \"one\"\n");
        let message = config(&text).unwrap_err().to_string();
        assert!(message.contains("privacy.epsilon"), "{message}");
        let message = config(&format!("{MINIMAL}[privacy]\nsampling = \"random\"\n"))
            .unwrap_err()
            .to_string();
        assert!(
            message.contains("privacy.sampling") && message.contains("poisson"),
            "{message}"
        );
    }

    #[test]
    fn overrides_apply_parse_and_are_checked() {
        let dir = std::env::temp_dir().join(format!("server-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("run.toml");
        let text = format!("{MINIMAL}[model]\ngenerator = \"models/g.gguf\"\n");
        std::fs::write(&path, text).unwrap();
        let overrides = [
            "dpo.beta=0.05",
            "privacy.sampling=poisson",
            "privacy.q = 0.5",
            "lora.targets=[\"q_proj\", \"v_proj\"]",
            "data.train=clients.jsonl",
        ]
        .map(String::from);
        let c = RunConfig::load(&path, &overrides).unwrap();
        assert_eq!(c.dpo.beta, 0.05);
        assert_eq!(
            c.privacy.client_sampling().unwrap(),
            ClientSampling::Poisson { q: 0.5 }
        );
        assert_eq!(c.lora.targets, ["q_proj", "v_proj"]);
        // File paths resolve against the file's folder, override paths against the cwd.
        assert_eq!(c.model.generator, Some(dir.join("models/g.gguf")));
        let cwd = std::env::current_dir().unwrap();
        assert_eq!(c.data.train, TrainData::File(cwd.join("clients.jsonl")));

        let typo = RunConfig::load(&path, &["dpo.betta=0.1".to_string()]).unwrap_err();
        let message = typo.to_string();
        assert!(
            message.contains("--set dpo.betta=0.1") && message.contains("`dpo.beta`"),
            "{message}"
        );
        let bad = RunConfig::load(&path, &["privacy.epsilon=-1".to_string()]).unwrap_err();
        assert_eq!(key_of(bad), "privacy.epsilon");
        assert!(RunConfig::load(&path, &["no_equals".to_string()]).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn validation_names_the_key() {
        let cases = [
            ("[privacy]\nepsilon = 0", "privacy.epsilon"),
            ("[privacy]\ndelta = 1.0", "privacy.delta"),
            ("[privacy]\nrounds = 0", "privacy.rounds"),
            ("[privacy]\nclip = 0", "privacy.clip"),
            ("[privacy]\nsampling = \"poisson\"", "privacy.q"),
            ("[privacy]\nsampling = \"poisson\"\nq = 1.5", "privacy.q"),
            (
                "[privacy]\nsampling = \"cohort\"\ncohort = 0",
                "privacy.cohort",
            ),
            ("[privacy]\nq = 0.5", "privacy.q"),
            (
                "[privacy]\nnoise_multiplier = -2",
                "privacy.noise_multiplier",
            ),
            ("[pairs]\nrejected_rank = 10", "pairs.rejected_rank"),
            ("[pairs]\nrejected_rank = 0", "pairs.rejected_rank"),
            (
                "[generation]\ncandidates_per_prompt = 1",
                "generation.candidates_per_prompt",
            ),
            ("[generation]\ntop_p = 0", "generation.top_p"),
            ("[generation]\ntemperature = 0", "generation.temperature"),
            ("[run]\ndevice = \"tpu\"", "run.device"),
            ("[lora]\ntargets = [\"qkv\"]", "lora.targets"),
            ("[dpo]\nlr_min = 1.0", "dpo.lr_min"),
            ("[dpo]\nmax_length = 100", "dpo.max_length"),
            ("[data]\neval_fraction = 1.0", "data.eval_fraction"),
        ];
        for (section, key) in cases {
            // Later sections override MINIMAL's where both set [data]/[prompts]: merge by hand.
            let text = if section.starts_with("[data]") {
                format!(
                    "[data]\ntrain = \"sotu\"\n{}\n[prompts]\ntopics = [\"t\"]\n",
                    &section[7..]
                )
            } else {
                format!("{MINIMAL}{section}\n")
            };
            let error = config(&text).unwrap_err();
            assert_eq!(key_of(error), key, "case {section:?}");
        }
        // The seed pool: neither, or both.
        let neither = config("[data]\ntrain = \"sotu\"\n").unwrap_err();
        assert_eq!(key_of(neither), "prompts.seed_file");
        let both = config(&format!("{MINIMAL}seed_file = \"s.txt\"\n")).unwrap_err();
        assert_eq!(key_of(both), "prompts.topics");
        let template = config(&format!("{MINIMAL}template = \"only {{0}}\"\n")).unwrap_err();
        assert_eq!(key_of(template), "prompts.template");
    }

    #[test]
    fn pe_section_defaults_parse_and_validation_names_the_key() {
        let c = config(MINIMAL).unwrap();
        assert_eq!((c.pe.population, c.pe.variations), (2000, 6));
        assert_eq!(c.pe.voted_population(), 2000 * 7);
        let text = format!(
            "{MINIMAL}[pe]\npopulation = 8\nvariations = 2\nkeep_survivors = false\n\
             selection = \"proportional\"\nthreshold = 1.5\n"
        );
        let c = config(&text).unwrap();
        assert_eq!(c.pe.selection, PeSelection::Proportional);
        assert_eq!((c.pe.voted_population(), c.pe.threshold), (16, 1.5));
        let cases = [
            ("population = 0", "pe.population"),
            ("variations = 0", "pe.variations"),
            ("threshold = -1.0", "pe.threshold"),
            (
                "rephrase_template = \"Rephrase this.\"",
                "pe.rephrase_template",
            ),
        ];
        for (line, key) in cases {
            let error = config(&format!("{MINIMAL}[pe]\n{line}\n")).unwrap_err();
            assert_eq!(key_of(error), key, "case {line:?}");
        }
        let message = config(&format!("{MINIMAL}[pe]\nselection = \"best\"\n"))
            .unwrap_err()
            .to_string();
        assert!(
            message.contains("pe.selection") && message.contains("proportional"),
            "{message}"
        );
    }

    #[test]
    fn edit_distance_counts_single_edits() {
        assert_eq!(edit_distance("beta", "betta"), 1);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("", "abc"), 3);
    }
}
