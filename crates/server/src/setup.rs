//! The set-up every method's run shares, written once: the simulated clients (private data,
//! embedded and cached), the generator, the public seed pool and prompt template, the noise plan
//! inputs, and the released outputs (synthetic texts, privacy statement).

use std::path::{Path, PathBuf};
use std::str::FromStr;

use clients::{
    embed_cached, sample_per_client, sotu_documents, FederatedData, SimulatedPopulation,
};
use models::llama::{LoraConfig, LoraTarget};
use models::{Assets, DeviceChoice, DtypeChoice, Generator, SamplingParams, SentenceEmbedder};
use privacy_accounting::statement::PrivacyStatement;
use privacy_accounting::{AccountantKind, Ledger, Sampling};
use tch::{Device, Tensor};

use crate::config::PromptStyle;
use crate::config::{GeneratorDtype, RunConfig, SyntheticPrompts, TrainData};
use crate::engine::{Candidates, PopriEngine};
use crate::error::{Result, RunError, ServerError};
use crate::fid::{frechet_distance, mean_distance_sq};
use crate::generation::derive_seed;
use crate::prompts::{
    build_prompts_with, chat_requests, clean_candidate, seed_pool_from_file, PromptTemplate,
};
use crate::run_dir::{write_atomic, RunDir};
use crate::sampling::{derived_rng, ClientSampler};
use round_driver::{plan_noise, NoisePlan, Progress};

/// Texts per embedding batch.
pub const EMBED_BATCH: usize = 64;
/// The public seed pool written by the base model from `prompts.topics`, kept for resuming.
const SEED_POOL_FILE: &str = "seed-pool.json";
/// The sampling stream of the seed pool (rounds use their number; the synthetic set its own).
const SEED_POOL_STREAM: u64 = u64::MAX - 1;

/// The file of the J public prompts in a run directory.
const PROMPTS_FILE: &str = "prompts.json";
/// The sampling stream of the final synthetic set (rounds use their number).
pub const SYNTHETIC_STREAM: u64 = u64::MAX;

/// The run's J public prompts, built from the public seed pool with the run's (public) seed,
/// and saved to `prompts.json` so that anyone can check that no private text is in them.
pub fn public_prompts(
    config: &RunConfig,
    dir: &RunDir,
    template: &PromptTemplate,
    seed_pool: &[String],
    generator: &Generator,
) -> Result<Vec<String>> {
    let prompts = prompts_of_style(
        config,
        template,
        seed_pool,
        generator,
        config.prompts.num_prompts,
        "prompts",
    )?;
    let json = serde_json::to_string_pretty(&prompts)
        .map_err(|e| ServerError::argument("prompts", "(unserialisable)", e.to_string()))?;
    write_atomic(&dir.root().join(PROMPTS_FILE), json.as_bytes())?;
    Ok(prompts)
}

/// POPri's synthetic set: one sample of the final generator per prompt (fresh prompts from the
/// seed pool, or the rounds' prompts again: `output.synthetic_prompts`), written to
/// `synthetic.jsonl`. Post-processing of released values: no privacy cost.
pub fn write_popri_synthetic(
    engine: &mut PopriEngine,
    config: &RunConfig,
    dir: &RunDir,
    template: &PromptTemplate,
    seed_pool: &[String],
    progress: &dyn Progress,
) -> Result<Candidates> {
    let output = &config.output;
    let prompts = match output.synthetic_prompts {
        SyntheticPrompts::Fresh => prompts_of_style(
            config,
            template,
            seed_pool,
            engine.generator(),
            output.synthetic_samples,
            "synthetic prompts",
        )?,
        SyntheticPrompts::Reuse => engine
            .prompts()
            .iter()
            .cycle()
            .take(output.synthetic_samples)
            .cloned()
            .collect(),
    };
    let synthetic = engine.sample_candidates(&prompts, 1, SYNTHETIC_STREAM, progress)?;
    write_synthetic_texts(dir, &synthetic.texts)?;
    Ok(synthetic)
}

/// `count` public prompts of the configured style, from the run's seed stream `stream`: few-shot
/// prompts over `seed_pool`, or chat requests rendered as one user turn of `generator`'s chat
/// template (the rendered text is the prompt: generation and DPO then see the same tokens).
pub(crate) fn prompts_of_style(
    config: &RunConfig,
    template: &PromptTemplate,
    seed_pool: &[String],
    generator: &Generator,
    count: usize,
    stream: &str,
) -> Result<Vec<String>> {
    let mut rng = derived_rng(config.run.seed, stream, 0);
    match config.prompts.style {
        PromptStyle::FewShot => Ok(build_prompts_with(template, seed_pool, count, &mut rng)?),
        PromptStyle::Chat => chat_requests(
            &config.prompts.instruction,
            &config.prompts.topics,
            count,
            &mut rng,
        )
        .iter()
        .map(|request| Ok(generator.format_prompt(request, true)?))
        .collect(),
    }
}

/// The simulated clients of a run: their data, their training texts' embeddings (one row per
/// text, in `data.train_texts()` order), the population that scores with them, and the private
/// eval set's embeddings when the run's diagnostics need them.
pub struct SimulatedClients {
    pub data: FederatedData,
    pub train_embeddings: Tensor,
    pub population: SimulatedPopulation,
    /// Rows of the private eval set's embeddings (`None` when `eval.fid` is off).
    pub eval_rows: Option<Vec<Vec<f32>>>,
}

impl SimulatedClients {
    /// Loads the clients' data of `config` and embeds it with `embedder` (cached on disk).
    pub fn load(
        config: &RunConfig,
        assets: &Assets,
        embedder: &SentenceEmbedder,
        run_dir: &Path,
        progress: &dyn Progress,
    ) -> Result<SimulatedClients> {
        let data = load_data(config, assets)?;
        let cache = embedding_cache_dir(assets, run_dir);
        let train_embeddings = embed_with_progress(
            embedder,
            &data.train_texts(),
            &cache,
            progress,
            "embed clients",
        )?;
        let population = SimulatedPopulation::new(&data, &train_embeddings)?;
        let eval_rows = if config.eval.fid {
            let eval =
                embed_with_progress(embedder, &data.eval_texts(), &cache, progress, "embed eval")?;
            Some(rows(&eval)?)
        } else {
            None
        };
        Ok(SimulatedClients {
            data,
            train_embeddings,
            population,
            eval_rows,
        })
    }
}

/// The clients' data: the built-in SOTU conversion or a federated JSONL file, with its eval
/// split (the same split for every method and for `fedsyn eval`, given the config).
pub fn load_data(config: &RunConfig, assets: &Assets) -> Result<FederatedData> {
    let mut documents = match &config.data.train {
        TrainData::Sotu => sotu_documents(&assets.sotu_dir()?)?,
        TrainData::File(path) => clients::read_documents(path)?,
    };
    if let Some(max) = config.data.max_texts_per_client {
        documents = sample_per_client(documents, max, config.data_seed());
    }
    let mut data = match &config.data.eval {
        Some(path) => FederatedData::from_train_eval(documents, clients::read_documents(path)?)?,
        None => FederatedData::split(documents, config.data.eval_fraction, config.data_seed())?,
    };
    if let Some(max) = config.data.max_clients {
        data.clients.truncate(max);
    }
    Ok(data)
}

/// Where client embeddings are cached: `.cache/embeddings` beside the installed models (shared
/// by runs), or the run directory when the models were not found through `.cache/models.env`.
pub fn embedding_cache_dir(assets: &Assets, run_dir: &Path) -> PathBuf {
    assets.source().and_then(Path::parent).map_or_else(
        || run_dir.join("embeddings"),
        |cache| cache.join("embeddings"),
    )
}

/// Embeds `texts` through the on-disk cache, reporting progress as phase `phase`.
pub fn embed_with_progress(
    embedder: &SentenceEmbedder,
    texts: &[&str],
    cache: &Path,
    progress: &dyn Progress,
    phase: &'static str,
) -> Result<Tensor> {
    progress.start(phase, texts.len() as u64);
    let mut reported = 0;
    let embeddings = embed_cached(embedder, texts, cache, EMBED_BATCH, |done, _| {
        progress.advance((done - reported) as u64);
        reported = done;
    })?;
    progress.finish();
    Ok(embeddings)
}

/// The rows of a `[n, d]` tensor.
pub fn rows(tensor: &Tensor) -> Result<Vec<Vec<f32>>> {
    let tensor = tensor.to_device(Device::Cpu).to_kind(tch::Kind::Float);
    Vec::<Vec<f32>>::try_from(&tensor).map_err(|e| ServerError::Model(e.into()))
}

/// FID and squared mean distance of `samples` to the private eval set (`None` with fewer than
/// two of either).
pub fn fid_to(eval: &[Vec<f32>], samples: &[Vec<f32>]) -> Result<(Option<f64>, Option<f64>)> {
    if samples.len() < 2 || eval.len() < 2 {
        return Ok((None, None));
    }
    Ok((
        Some(frechet_distance(samples, eval)?),
        Some(mean_distance_sq(samples, eval)?),
    ))
}

/// The device `run.device` names, with libtorch's CPU threads set to `run.threads` first (the
/// models are loaded onto it).
pub fn run_device(config: &RunConfig) -> Result<Device> {
    tch::set_num_threads(config.run.threads.max(1) as i32);
    Ok(DeviceChoice::from_str(&config.run.device)?.resolve()?)
}

/// A simulation's client sampler (`privacy.client_sampling`; secret cohorts unless the test seed
/// `privacy.sampling_seed` is set), how its cohorts of `population` clients are accounted, and
/// the noise planned for them.
pub fn simulation_sampling(
    config: &RunConfig,
    population: usize,
) -> Result<(ClientSampler, Sampling, NoisePlan)> {
    let sampler = ClientSampler::new(
        config.privacy.client_sampling()?,
        config.privacy.sampling_seed,
    )?;
    let accounting = sampler.accounting(population)?;
    let plan = plan_noise(&config.privacy, accounting)?;
    Ok((sampler, accounting, plan))
}

/// The embedder of `config` (the installed all-MiniLM-L6-v2 unless `model.embedder` says).
pub fn load_embedder(
    config: &RunConfig,
    assets: &Assets,
    device: Device,
) -> Result<SentenceEmbedder> {
    let dir = match &config.model.embedder {
        Some(dir) => dir.clone(),
        None => assets.minilm_dir()?,
    };
    Ok(SentenceEmbedder::load(&dir, device)?)
}

/// The generator of `config` (the installed SmolLM2 GGUF unless `model.generator` says), in
/// the dtype `model.generator_dtype` asks for (bf16 on a CPU without native bf16 runs fp32
/// and says so on standard error).
pub fn load_generator(config: &RunConfig, assets: &Assets, device: Device) -> Result<Generator> {
    let path = generator_path(config, assets)?;
    let choice = match config.model.generator_dtype {
        GeneratorDtype::Auto => DtypeChoice::Auto,
        GeneratorDtype::F32 => DtypeChoice::F32,
        GeneratorDtype::Bf16 => DtypeChoice::Bf16,
    };
    let (kind, notice) = choice.resolve(device);
    if let Some(notice) = notice {
        eprintln!("note: model.generator_dtype: {notice}");
    }
    Ok(Generator::load_as(&path, device, kind)?)
}

/// The generator's file or folder.
pub fn generator_path(config: &RunConfig, assets: &Assets) -> Result<PathBuf> {
    match &config.model.generator {
        Some(path) => Ok(path.clone()),
        None => Ok(assets.smollm2_gguf()?),
    }
}

/// The name an adapter's `base_model_name_or_path` records.
pub fn base_model_name(config: &RunConfig) -> String {
    config
        .model
        .generator
        .as_ref()
        .map_or("SmolLM2-135M-Instruct".to_string(), |p| {
            p.display().to_string()
        })
}

/// The prompt template of `config` (POPri's unless `prompts.template` is set).
pub fn prompt_template(config: &RunConfig) -> Result<PromptTemplate> {
    match &config.prompts.template {
        Some(text) => Ok(PromptTemplate::parse(
            text,
            config.prompts.examples_per_prompt,
        )?),
        None => Ok(PromptTemplate::popri(config.prompts.examples_per_prompt)),
    }
}

/// The public seed pool: a file of public texts, or texts the base model writes from the
/// configured topics (before any adapter exists: never private data), saved in the run
/// directory so a resumed run uses the same pool.
pub fn seed_pool(
    config: &RunConfig,
    dir: &RunDir,
    generator: &Generator,
    progress: &dyn Progress,
) -> Result<Vec<String>> {
    let prompts = &config.prompts;
    if prompts.style == PromptStyle::Chat {
        // Chat prompts are written from the topics alone.
        return Ok(Vec::new());
    }
    if let Some(path) = &prompts.seed_file {
        return Ok(seed_pool_from_file(path)?);
    }
    let saved = dir.root().join(SEED_POOL_FILE);
    if saved.exists() {
        let text = std::fs::read_to_string(&saved).map_err(|e| ServerError::io(&saved, e))?;
        return serde_json::from_str(&text).map_err(|e| {
            ServerError::Run(RunError::RunDir {
                path: dir.root().to_path_buf(),
                message: format!("{SEED_POOL_FILE} is corrupt ({e}); delete it to regenerate"),
            })
        });
    }
    let requests: Vec<String> = prompts
        .topics
        .iter()
        .flat_map(|topic| std::iter::repeat_n(seed_request(topic), prompts.seeds_per_topic))
        .collect();
    progress.start("seed pool", requests.len() as u64);
    let mut pool = Vec::with_capacity(requests.len());
    let batches = requests.chunks(config.generation.batch_size.max(1));
    for (index, batch) in batches.enumerate() {
        // Every batch its own stream, apart from the rounds' and the synthetic set's.
        let params = SamplingParams {
            seed: derive_seed(config.run.seed, SEED_POOL_STREAM, index as u64),
            ..sampling_params(config)
        };
        for completion in generator.generate(batch, true, &params)? {
            let text = clean_candidate(&completion.text);
            if !text.is_empty() {
                pool.push(text);
            }
        }
        progress.advance(batch.len() as u64);
    }
    progress.finish();
    let json = serde_json::to_string_pretty(&pool)
        .map_err(|e| ServerError::argument("seed pool", "(unserialisable)", e.to_string()))?;
    write_atomic(&saved, json.as_bytes())?;
    Ok(pool)
}

/// The request that makes the base model write one public seed text on `topic`.
fn seed_request(topic: &str) -> String {
    format!(
        "Write one paragraph (about 60 words) of a speech on {topic}. \
         Reply with the paragraph only."
    )
}

/// The LoRA adapter of `config`.
pub fn lora_config(config: &RunConfig) -> Result<LoraConfig> {
    let lora = &config.lora;
    let targets = lora
        .targets
        .iter()
        .map(|t| LoraTarget::from_str(t))
        .collect::<models::Result<Vec<_>>>()?;
    let lora_config = LoraConfig {
        rank: lora.r as i64,
        alpha: lora.alpha,
        dropout: lora.dropout,
        targets,
    };
    lora_config.validate()?;
    Ok(lora_config)
}

/// How candidates are sampled (the seed is set per round and batch by the caller).
pub fn sampling_params(config: &RunConfig) -> SamplingParams {
    let generation = &config.generation;
    SamplingParams {
        max_new_tokens: generation.max_new_tokens,
        temperature: generation.temperature,
        top_p: generation.top_p,
        // A few-shot model starts the next sample: stop there (the text is cut at "Orig"
        // anyway). A chat reply ends at the end-of-turn token.
        stop_strings: match config.prompts.style {
            PromptStyle::FewShot => vec!["Original Text Sample".to_string()],
            PromptStyle::Chat => Vec::new(),
        },
        ..SamplingParams::default()
    }
}

/// The sampling rate the metrics report: q, m/n for cohorts, 1 for full participation.
pub fn sampling_rate(sampling: &Sampling) -> f64 {
    match sampling {
        Sampling::Poisson { q } => *q,
        Sampling::FixedCohort { m, n } => *m as f64 / *n as f64,
        Sampling::Full => 1.0,
    }
}

/// Writes `synthetic.jsonl` (`{"text": …}` per line).
pub fn write_synthetic_texts(dir: &RunDir, texts: &[String]) -> Result<()> {
    let mut lines = String::new();
    for text in texts {
        lines.push_str(&serde_json::json!({ "text": text }).to_string());
        lines.push('\n');
    }
    Ok(write_atomic(&dir.synthetic_path(), lines.as_bytes())?)
}

/// Writes the privacy statement of `ledger` (Markdown and JSON) under both accountants;
/// `aggregation` says, for a served run, how the clients' vectors were aggregated.
pub fn write_statement(
    dir: &RunDir,
    ledger: &Ledger,
    config: &RunConfig,
    aggregation: Option<&str>,
) -> Result<()> {
    let mut statement = PrivacyStatement::from_ledger(
        ledger,
        config.privacy.delta,
        &[AccountantKind::Rdp, AccountantKind::Pld],
    )?;
    if let Some(aggregation) = aggregation {
        statement = statement.with_aggregation(aggregation);
    }
    if let Some(why) = config.privacy.test_seeds_void_the_guarantee() {
        statement = statement.voided(why);
    }
    write_atomic(&dir.statement_md_path(), statement.to_markdown().as_bytes())?;
    Ok(write_atomic(
        &dir.statement_json_path(),
        statement.to_json().as_bytes(),
    )?)
}

/// How many clients a round sampled, when that number is public: everyone under full
/// participation, m for a fixed cohort; under Poisson sampling the cohort's size is private.
pub(crate) fn public_cohort(accounting: &Sampling, sampled: usize) -> Option<u64> {
    match accounting {
        Sampling::Full => Some(sampled as u64),
        Sampling::FixedCohort { m, .. } => Some(*m),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sampling_settings_reach_the_generators_parameters() {
        let mut config = RunConfig::from_toml(
            "[data]\ntrain = \"sotu\"\n[prompts]\ntopics = [\"taxes\"]\n\
             [generation]\ntemperature = 0.7\ntop_p = 0.9\nmax_new_tokens = 40\n",
            std::path::Path::new("."),
        )
        .unwrap();
        let params = sampling_params(&config);
        assert_eq!(
            (params.temperature, params.top_p, params.max_new_tokens),
            (0.7, 0.9, 40)
        );
        assert_eq!(params.stop_strings, ["Original Text Sample"]);
        config.prompts.style = PromptStyle::Chat;
        assert!(sampling_params(&config).stop_strings.is_empty());
        let settings = crate::simulate::popri_settings(&config, 1.0);
        assert_eq!(settings.sampling.temperature, 0.7);
        assert_eq!(settings.prompt_style, PromptStyle::Chat);
    }

    #[test]
    fn fixed_cohort_rate_is_m_over_n() {
        assert_eq!(sampling_rate(&Sampling::FixedCohort { m: 5, n: 20 }), 0.25);
        assert_eq!(sampling_rate(&Sampling::Poisson { q: 0.1 }), 0.1);
        assert_eq!(sampling_rate(&Sampling::Full), 1.0);
    }
}
