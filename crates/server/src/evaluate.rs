//! Utility of a run's output, measured as the POPri paper does (`fedsyn eval`): train a
//! downstream causal LM on the synthetic texts and report its top-1 next-token accuracy on the
//! clients' private eval texts; plus distribution metrics between the synthetic and the
//! private eval texts' embeddings (FID, k-NN precision/recall, MAUVE).
//!
//! The downstream model is the run's public generator (SmolLM2-135M-Instruct by default) with a
//! fresh LoRA adapter of the run's `[lora]` shape: the public pretrained model plays the part of
//! the paper's C4-pretrained DistilGPT2 (the ε = 0 reference), and LoRA keeps CPU training
//! feasible. Training: AdamW at 2e-4 decaying linearly, batches of 8 sequences of at most 64
//! tokens (the paper's recipe), gradient norm ≤ 1.
//!
//! The private eval split of the run (same data, seed and eval fraction) is cut per client, by a
//! seeded shuffle, into a validation half and a test half. The epoch is chosen on the validation
//! half only; the accuracy reported is the test half's at that epoch (the reference chooses the
//! epoch on the eval set itself, which overstates the accuracy).

use std::path::{Path, PathBuf};
use std::time::Instant;

use clients::local_update::{adapter_values, set_adapter};
use clients::FederatedData;
use models::llama::LoraConfig;
use models::train::{
    encode_texts, next_token_hits, CausalLmConfig, CausalLmTrainer, TokenAccuracy,
};
use models::{Assets, CausalLm, Generator, SentenceEmbedder};
use rand::seq::SliceRandom;
use rand::Rng;
use serde::Deserialize;
use tch::Tensor;

use crate::config::{Method, RunConfig};
use crate::distribution::{knn_precision_recall, mauve, MauveOptions, DEFAULT_NEIGHBOURS};
use crate::error::{Result, RunError, ServerError};
use crate::fid::frechet_distance;
use crate::run_dir::{write_atomic, RunDir};
use crate::sampling::derived_rng;
use crate::setup::{
    base_model_name, embed_with_progress, embedding_cache_dir, generator_path, load_data,
    load_embedder, lora_config, rows, run_device,
};
use round_driver::{BudgetGuard, Progress};
use runs::records::{
    DistributionResult, DownstreamResult, EpochAccuracy, EvalReport, MemorisationResult, Reference,
    TokenHits, EVAL_FILE, EVAL_SCHEMA, MODEL_DIR,
};

/// Sequences per forward pass when scoring.
const SCORE_BATCH: usize = 16;
/// Domain of the seeded choices made here (validation/test split, subsamples).
const EVAL_DOMAIN: &str = "fedsyn/eval";

/// How much `fedsyn eval` trains and scores.
#[derive(Debug, Clone, PartialEq)]
pub struct EvalOptions {
    /// Training epochs over the synthetic texts (the best on validation is kept).
    pub epochs: usize,
    /// At most this many training texts (a seeded sample).
    pub max_train_texts: usize,
    /// At most this many texts in each of the validation and test halves (seeded samples).
    pub max_eval_texts: usize,
    /// Tokens per sequence (the paper's 64).
    pub max_tokens: usize,
}

impl Default for EvalOptions {
    /// Sized for a few minutes on two CPU cores with SmolLM2-135M: 3 epochs over at most 256
    /// texts, at most 400 texts in each eval half.
    fn default() -> Self {
        EvalOptions {
            epochs: 3,
            max_train_texts: 256,
            max_eval_texts: 400,
            max_tokens: models::train::downstream::DEFAULT_MAX_TOKENS,
        }
    }
}

impl EvalOptions {
    fn validate(&self) -> Result<()> {
        let checks = [
            ("--epochs", self.epochs),
            ("--max-train-texts", self.max_train_texts),
            ("--max-eval-texts", self.max_eval_texts),
        ];
        for (name, value) in checks {
            if value == 0 {
                return Err(ServerError::argument(name, 0, "at least 1"));
            }
        }
        if self.max_tokens < 2 {
            return Err(ServerError::argument(
                "max tokens",
                self.max_tokens,
                "at least 2 tokens per sequence",
            ));
        }
        Ok(())
    }
}

/// The private eval texts of a run, halved per client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EvalSplit {
    /// Texts the epoch is chosen on.
    pub validation: Vec<String>,
    /// Texts the reported accuracy is measured on.
    pub test: Vec<String>,
}

impl EvalSplit {
    /// Each client's eval texts (and the eval-only texts, as one more group) shuffled with a
    /// stream of `seed` and the group's index, the first half to validation, the
    /// rest to test, an odd text out to either by a seeded coin; then each half cut to at most
    /// `max_texts` by a seeded sample.
    pub fn of(data: &FederatedData, seed: u64, max_texts: usize) -> EvalSplit {
        let groups = data
            .clients
            .iter()
            .map(|client| client.eval.as_slice())
            .chain(std::iter::once(data.eval_only.as_slice()));
        let (mut validation, mut test) = (Vec::new(), Vec::new());
        for (index, texts) in groups.enumerate() {
            let mut rng = derived_rng(seed, EVAL_DOMAIN, index as u64);
            let mut shuffled = texts.to_vec();
            shuffled.shuffle(&mut rng);
            // An odd text out goes to either half by a coin: clients with one eval text each
            // still fill both halves.
            let odd_to_validation = shuffled.len() % 2 == 1 && rng.gen_bool(0.5);
            let rest = shuffled.split_off(shuffled.len() / 2 + usize::from(odd_to_validation));
            validation.extend(shuffled);
            test.extend(rest);
        }
        EvalSplit {
            validation: seeded_sample(validation, max_texts, seed, u64::MAX - 1),
            test: seeded_sample(test, max_texts, seed, u64::MAX),
        }
    }

    /// Every text of both halves.
    pub fn all(&self) -> Vec<&str> {
        self.validation
            .iter()
            .chain(&self.test)
            .map(String::as_str)
            .collect()
    }
}

/// At most `max` of `texts`, a seeded sample kept in the original order.
fn seeded_sample(texts: Vec<String>, max: usize, seed: u64, stream: u64) -> Vec<String> {
    if texts.len() <= max {
        return texts;
    }
    let mut rng = derived_rng(seed, EVAL_DOMAIN, stream);
    let mut kept = rand::seq::index::sample(&mut rng, texts.len(), max).into_vec();
    kept.sort_unstable();
    kept.into_iter().map(|i| texts[i].clone()).collect()
}

/// Evaluates the run in `run_dir` (any method) and writes `run_dir/eval.json`.
pub fn evaluate_run(
    run_dir: &Path,
    options: &EvalOptions,
    progress: &dyn Progress,
) -> Result<EvalReport> {
    options.validate()?;
    let clock = Instant::now();
    let run_dir = std::path::absolute(run_dir).map_err(|e| ServerError::io(run_dir, e))?;
    let dir = RunDir::open(&run_dir)?;
    let config = dir.load_config()?;
    let session = Session::open(&config, options)?;
    let data = load_data(&config, &session.assets)?;
    let split = session.split(&config, &data)?;
    let guard = BudgetGuard::new(&config.privacy);
    let (epsilon_rdp, epsilon_pld) = guard.spent(&dir.load_ledger()?)?;
    let (downstream, distribution, memorisation) = match config.run.method {
        Method::DpFedavg => {
            let adapter = dir.root().join(MODEL_DIR);
            if !adapter.is_dir() {
                return Err(ServerError::Run(RunError::RunDir {
                    path: dir.root().to_path_buf(),
                    message: format!(
                        "a dp-fedavg run keeps its model in {MODEL_DIR}/, which is missing: \
                         finish the run first (fedsyn simulate --resume)"
                    ),
                }));
            }
            let mut generator = session.generator()?;
            generator.model_mut().load_adapter(&adapter)?;
            let described = format!(
                "{} + the run's DP-FedAvg LoRA adapter ({MODEL_DIR}/), sequences of ≤ {} tokens",
                session.base_name, options.max_tokens
            );
            let downstream = session.score_only(&generator, &split, progress, described)?;
            (downstream, None, None)
        }
        Method::Popri | Method::Pe | Method::PeSft => {
            let synthetic = read_synthetic(&dir.synthetic_path())?;
            let train = seeded_sample(
                synthetic.clone(),
                options.max_train_texts,
                config.run.seed,
                0,
            );
            let downstream = session.train_and_score(&config, &train, &split, progress)?;
            // The synthetic texts are embedded once, for both diagnostics.
            let embedder = session.embedder(&config, dir.root())?;
            let synthetic: Vec<&str> = synthetic.iter().map(String::as_str).collect();
            let embeddings = embedder.embed(&synthetic, progress, "embed texts")?;
            let distribution = distribution(&embedder, &embeddings, &split, progress)?;
            let memorisation = memorisation(&embedder, &synthetic, &embeddings, &data, progress)?;
            (downstream, distribution, memorisation)
        }
    };
    let report = EvalReport {
        schema: EVAL_SCHEMA,
        method: config.run.method.as_str().to_string(),
        run_dir: Some(dir.root().to_path_buf()),
        epsilon_target: Some(config.privacy.epsilon),
        epsilon_rdp: Some(epsilon_rdp),
        epsilon_pld: Some(epsilon_pld),
        delta: Some(config.privacy.delta),
        downstream,
        distribution,
        memorisation_nonprivate: memorisation,
        seconds: clock.elapsed().as_secs_f64(),
    };
    write_report(dir.root(), &report)?;
    Ok(report)
}

/// Evaluates a non-private reference for the data of `config` and writes `out/eval.json` and
/// `out/config.toml` (the configuration it was measured for).
pub fn evaluate_reference(
    reference: Reference,
    config: &RunConfig,
    out: &Path,
    options: &EvalOptions,
    progress: &dyn Progress,
) -> Result<EvalReport> {
    options.validate()?;
    config.validate()?;
    let clock = Instant::now();
    std::fs::create_dir_all(out).map_err(|e| ServerError::io(out, e))?;
    write_atomic(&out.join("config.toml"), config.to_toml()?.as_bytes())?;
    let session = Session::open(config, options)?;
    let data = load_data(config, &session.assets)?;
    let split = session.split(config, &data)?;
    let (downstream, distribution) = match reference {
        Reference::Public => {
            let generator = session.generator()?;
            let described = format!(
                "{} (public, no training), sequences of ≤ {} tokens",
                session.base_name, options.max_tokens
            );
            let downstream = session.score_only(&generator, &split, progress, described)?;
            (downstream, None)
        }
        Reference::Real => {
            // As many real texts as a run of this config trains the downstream model on
            // (its synthetic set, capped alike), so that the gap to ε = ∞ measures the texts'
            // quality, not their number.
            let real: Vec<String> = data.train_texts().into_iter().map(String::from).collect();
            let count = options.max_train_texts.min(config.output.synthetic_samples);
            let train = seeded_sample(real, count, config.run.seed, 0);
            let downstream = session.train_and_score(config, &train, &split, progress)?;
            let embedder = session.embedder(config, out)?;
            let train: Vec<&str> = train.iter().map(String::as_str).collect();
            let embeddings = embedder.embed(&train, progress, "embed texts")?;
            let distribution = distribution(&embedder, &embeddings, &split, progress)?;
            (downstream, distribution)
        }
    };
    let report = EvalReport {
        schema: EVAL_SCHEMA,
        method: reference.as_str().to_string(),
        run_dir: None,
        epsilon_target: None,
        epsilon_rdp: None,
        epsilon_pld: None,
        delta: None,
        downstream,
        distribution,
        memorisation_nonprivate: None,
        seconds: clock.elapsed().as_secs_f64(),
    };
    write_report(out, &report)?;
    Ok(report)
}

fn write_report(dir: &Path, report: &EvalReport) -> Result<()> {
    let json = serde_json::to_string_pretty(report)
        .map_err(|e| ServerError::argument("eval report", "(unserialisable)", e.to_string()))?;
    Ok(write_atomic(&dir.join(EVAL_FILE), json.as_bytes())?)
}

/// The texts of a `synthetic.jsonl` (`{"text": …}` per line).
fn read_synthetic(path: &Path) -> Result<Vec<String>> {
    #[derive(Deserialize)]
    struct Line {
        text: String,
    }
    let content = std::fs::read_to_string(path).map_err(|e| ServerError::io(path, e))?;
    let mut texts = Vec::new();
    for (number, line) in content.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let parsed: Line = serde_json::from_str(line).map_err(|e| {
            ServerError::Run(RunError::RunDir {
                path: path.to_path_buf(),
                message: format!("line {} is not {{\"text\": …}} ({e})", number + 1),
            })
        })?;
        texts.push(parsed.text);
    }
    if texts.is_empty() {
        return Err(ServerError::Run(RunError::RunDir {
            path: path.to_path_buf(),
            message: "no synthetic texts to train on".to_string(),
        }));
    }
    Ok(texts)
}

fn check_split(split: &EvalSplit) -> Result<()> {
    if split.validation.is_empty() || split.test.is_empty() {
        return Err(ServerError::argument(
            "data.eval_fraction",
            format!(
                "{} validation / {} test texts",
                split.validation.len(),
                split.test.len()
            ),
            "fedsyn eval needs private eval texts in both halves: give each client at least two \
             eval texts (raise data.eval_fraction or give data.eval)",
        ));
    }
    Ok(())
}

/// What every evaluation loads once: device, assets and options.
struct Session<'a> {
    assets: Assets,
    device: tch::Device,
    options: &'a EvalOptions,
    generator_path: PathBuf,
    base_name: String,
    lora: LoraConfig,
    seed: u64,
}

impl<'a> Session<'a> {
    fn open(config: &RunConfig, options: &'a EvalOptions) -> Result<Session<'a>> {
        let device = run_device(config)?;
        let assets = Assets::discover();
        let generator_path = generator_path(config, &assets)?;
        Ok(Session {
            device,
            generator_path,
            base_name: base_model_name(config),
            lora: LoraConfig {
                dropout: 0.0,
                ..lora_config(config)?
            },
            seed: config.run.seed,
            options,
            assets,
        })
    }

    fn split(&self, config: &RunConfig, data: &FederatedData) -> Result<EvalSplit> {
        let split = EvalSplit::of(data, config.data_seed(), self.options.max_eval_texts);
        check_split(&split)?;
        Ok(split)
    }

    fn generator(&self) -> Result<Generator> {
        Ok(Generator::load(&self.generator_path, self.device)?)
    }

    fn encode(
        &self,
        generator: &Generator,
        texts: &[String],
        what: &'static str,
    ) -> Result<Vec<Vec<u32>>> {
        let sequences = encode_texts(generator.tokenizer(), texts, self.options.max_tokens)?;
        if sequences.is_empty() {
            return Err(ServerError::argument(
                what,
                format!("{} texts", texts.len()),
                "texts of at least 2 tokens to train on or score",
            ));
        }
        Ok(sequences)
    }

    /// The downstream model trained here: the public model with a fresh adapter.
    fn describe_trained(&self) -> String {
        format!(
            "{} + fresh LoRA r {} α {} on {}, trained {} epoch(s) with AdamW lr 2e-4 (linear \
             decay), batches of 8 sequences of ≤ {} tokens",
            self.base_name,
            self.lora.rank,
            self.lora.alpha,
            self.lora
                .targets
                .iter()
                .map(|t| t.module_name())
                .collect::<Vec<_>>()
                .join(","),
            self.options.epochs,
            self.options.max_tokens
        )
    }

    /// The test accuracy of `generator`'s model as it is.
    fn score_only(
        &self,
        generator: &Generator,
        split: &EvalSplit,
        progress: &dyn Progress,
        model: String,
    ) -> Result<DownstreamResult> {
        let test = self.encode(generator, &split.test, "test texts")?;
        let hits = score(generator.model(), &test, progress, "test")?;
        let accuracy = TokenAccuracy::of(&hits);
        Ok(DownstreamResult {
            model,
            accuracy: accuracy.accuracy(),
            eval_tokens: accuracy.tokens,
            validation: Vec::new(),
            chosen_epoch: 0,
            train_texts: 0,
            seed: self.seed,
            test_hits: Some(TokenHits::new(&test, &hits)),
        })
    }

    /// Trains a fresh adapter on `train` for the configured epochs, keeps the epoch with the
    /// best validation accuracy and reports the test accuracy of that epoch's adapter.
    fn train_and_score(
        &self,
        config: &RunConfig,
        train: &[String],
        split: &EvalSplit,
        progress: &dyn Progress,
    ) -> Result<DownstreamResult> {
        let mut generator = self.generator()?;
        let sequences = self.encode(&generator, train, "training texts")?;
        let validation = self.encode(&generator, &split.validation, "validation texts")?;
        let test = self.encode(&generator, &split.test, "test texts")?;
        generator
            .model_mut()
            .add_lora(&self.lora, config.run.seed)?;
        let model = generator.model();
        let training = CausalLmConfig {
            seed: config.run.seed,
            ..CausalLmConfig::default()
        };
        let steps_per_epoch = training.steps_per_epoch(sequences.len());
        let mut trainer =
            CausalLmTrainer::new(training, steps_per_epoch * self.options.epochs as u64)?;
        let mut curve = Vec::with_capacity(self.options.epochs);
        let mut best: Option<(usize, f64, Vec<Tensor>)> = None;
        for epoch in 1..=self.options.epochs {
            progress.start("train", steps_per_epoch);
            for _ in 0..steps_per_epoch {
                trainer.train_steps(model, &sequences, 1)?;
                progress.advance(1);
            }
            progress.finish();
            let accuracy =
                TokenAccuracy::of(&score(model, &validation, progress, "validate")?).accuracy();
            curve.push(EpochAccuracy { epoch, accuracy });
            if best.as_ref().is_none_or(|(_, top, _)| accuracy > *top) {
                best = Some((epoch, accuracy, adapter_values(model)));
            }
        }
        let (chosen_epoch, _, snapshot) = best.ok_or_else(|| {
            ServerError::argument("--epochs", 0, "at least one epoch of training")
        })?;
        set_adapter(model, &snapshot)?;
        let hits = score(model, &test, progress, "test")?;
        let accuracy = TokenAccuracy::of(&hits);
        Ok(DownstreamResult {
            test_hits: Some(TokenHits::new(&test, &hits)),
            model: self.describe_trained(),
            accuracy: accuracy.accuracy(),
            eval_tokens: accuracy.tokens,
            validation: curve,
            chosen_epoch,
            train_texts: train.len(),
            seed: config.run.seed,
        })
    }

    /// The run's sentence embedder with the shared embedding cache, loaded once for every
    /// embedding an evaluation makes.
    fn embedder(&self, config: &RunConfig, cache_base: &Path) -> Result<TextEmbedder> {
        Ok(TextEmbedder {
            embedder: load_embedder(config, &self.assets, self.device)?,
            cache: embedding_cache_dir(&self.assets, cache_base),
        })
    }
}

/// A sentence embedder and the on-disk cache it embeds through.
struct TextEmbedder {
    embedder: SentenceEmbedder,
    cache: PathBuf,
}

impl TextEmbedder {
    fn embed(
        &self,
        texts: &[&str],
        progress: &dyn Progress,
        phase: &'static str,
    ) -> Result<Tensor> {
        embed_with_progress(&self.embedder, texts, &self.cache, progress, phase)
    }
}

/// FID, precision/recall and MAUVE between the evaluated texts (`samples`, their embeddings)
/// and all private eval texts (both halves: nothing is chosen on these numbers); `None` when
/// either side has too few texts for the k-NN balls (at most k = `DEFAULT_NEIGHBOURS`).
fn distribution(
    embedder: &TextEmbedder,
    samples: &Tensor,
    split: &EvalSplit,
    progress: &dyn Progress,
) -> Result<Option<DistributionResult>> {
    let eval_texts = split.all();
    if samples.size()[0] <= DEFAULT_NEIGHBOURS as i64 || eval_texts.len() <= DEFAULT_NEIGHBOURS {
        return Ok(None);
    }
    let eval = rows(&embedder.embed(&eval_texts, progress, "embed eval")?)?;
    let samples = rows(samples)?;
    let pr = knn_precision_recall(&eval, &samples, DEFAULT_NEIGHBOURS)?;
    Ok(Some(DistributionResult {
        fid: frechet_distance(&samples, &eval)?,
        precision: pr.precision,
        recall: pr.recall,
        mauve: mauve(&samples, &eval, &MauveOptions::default())?,
        synthetic_texts: samples.len(),
        eval_texts: eval.len(),
    }))
}

/// The memorisation diagnostic of the synthetic texts (with their embeddings) against the
/// clients' training texts (`None` without synthetic texts).
fn memorisation(
    embedder: &TextEmbedder,
    synthetic: &[&str],
    synthetic_embeddings: &Tensor,
    data: &FederatedData,
    progress: &dyn Progress,
) -> Result<Option<MemorisationResult>> {
    if synthetic.is_empty() {
        return Ok(None);
    }
    let private = data.train_texts();
    let private_embeddings = embedder.embed(&private, progress, "embed private texts")?;
    crate::memorisation::measure(
        synthetic,
        &private,
        synthetic_embeddings,
        &private_embeddings,
    )
    .map(Some)
}

/// Each scored position's top-1 outcome of `model` on `sequences`, reported as one progress
/// phase.
fn score(
    model: &CausalLm,
    sequences: &[Vec<u32>],
    progress: &dyn Progress,
    phase: &'static str,
) -> Result<Vec<bool>> {
    progress.start(phase, sequences.len() as u64);
    let mut hits = Vec::new();
    for chunk in sequences.chunks(SCORE_BATCH * 4) {
        hits.extend(next_token_hits(model, chunk, SCORE_BATCH)?);
        progress.advance(chunk.len() as u64);
    }
    progress.finish();
    Ok(hits)
}

#[cfg(test)]
mod tests {
    #[test]
    fn token_hits_round_trip_and_name_their_tokens() {
        let hits: Vec<bool> = (0..13).map(|i| i % 3 == 0).collect();
        let sequences = vec![vec![1u32, 2, 3], vec![4, 5]];
        let stored = TokenHits::new(&sequences, &hits);
        assert_eq!(stored.positions, 13);
        assert_eq!(stored.outcomes().unwrap(), hits);
        let json = serde_json::to_string(&stored).unwrap();
        assert_eq!(serde_json::from_str::<TokenHits>(&json).unwrap(), stored);
        // Other tokens, or the same tokens split differently, are another set.
        let split = vec![vec![1u32, 2], vec![3, 4, 5]];
        assert_ne!(
            TokenHits::new(&split, &hits).tokens_sha256,
            stored.tokens_sha256
        );
        let corrupt = TokenHits {
            positions: 20,
            ..stored
        };
        assert!(corrupt.outcomes().is_none());
    }

    use super::*;
    use clients::ClientData;

    fn client(id: &str, eval: usize) -> ClientData {
        ClientData {
            id: id.to_string(),
            train: vec![format!("{id} train")],
            eval: (0..eval).map(|i| format!("{id} eval {i}")).collect(),
        }
    }

    #[test]
    fn the_eval_split_halves_each_client_and_is_seeded() {
        let data = FederatedData {
            clients: vec![client("a", 4), client("b", 1), client("c", 5)],
            eval_only: vec!["x".to_string(), "y".to_string()],
        };
        let split = EvalSplit::of(&data, 7, 100);
        // a: 2 + 2, b: 0 + 1 or 1 + 0, c: 2 + 3 or 3 + 2, eval-only: 1 + 1.
        assert!((5..=7).contains(&split.validation.len()), "{split:?}");
        assert_eq!(split.validation.len() + split.test.len(), 12);
        let ones = FederatedData {
            clients: (0..40).map(|i| client(&format!("c{i}"), 1)).collect(),
            eval_only: Vec::new(),
        };
        let halves = EvalSplit::of(&ones, 7, 100);
        assert!(
            (10..=30).contains(&halves.validation.len()),
            "one-text clients fill both halves: {}",
            halves.validation.len()
        );
        let mut all: Vec<&str> = split.all();
        all.sort_unstable();
        let mut want = data.eval_texts();
        want.sort_unstable();
        assert_eq!(all, want, "every eval text in exactly one half");
        assert_eq!(split, EvalSplit::of(&data, 7, 100));
        let other_seeds = (8..20).map(|seed| EvalSplit::of(&data, seed, 100));
        assert!(
            other_seeds.into_iter().any(|s| s != split),
            "the seed matters"
        );
        let capped = EvalSplit::of(&data, 7, 3);
        assert_eq!((capped.validation.len(), capped.test.len()), (3, 3));
        assert!(capped
            .validation
            .iter()
            .all(|t| split.validation.contains(t)));
        assert!(capped.test.iter().all(|t| split.test.contains(t)));
    }

    #[test]
    fn references_parse_and_bad_names_say_which_exist() {
        assert_eq!("real".parse::<Reference>().unwrap(), Reference::Real);
        assert_eq!("public".parse::<Reference>().unwrap().as_str(), "public");
        let error = "infinite".parse::<Reference>().unwrap_err().to_string();
        assert!(
            error.contains("real") && error.contains("public"),
            "{error}"
        );
    }
}
