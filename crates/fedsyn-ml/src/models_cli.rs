//! The model commands of `fedsyn-ml` (users call them as `fedsyn <command>`).
//!
//! `fedsyn embed FILE.jsonl`: one embedding per JSON line of the input, written as JSON lines
//! `{"index": i, "id": …, "embedding": [...]}` in input order.
//!
//! `fedsyn generate --prompt TEXT`: samples continuations of a prompt (optionally in the
//! model's chat format) with the generator, optionally with a LoRA adapter (`--adapter`, PEFT
//! format), printed as text or, with `--json`, as one object.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Args;
use models::{Assets, DeviceChoice, Generator, SamplingParams, SentenceEmbedder};
use serde::Serialize;
use serde_json::Value;

use crate::jsonl_input::{read_json_lines, InputError};

/// Arguments of `fedsyn embed`.
#[derive(Debug, Args)]
pub struct EmbedArgs {
    /// A JSONL file: one JSON object per line, each with a string field holding the text.
    /// Blank lines are skipped (and not counted in `index`).
    pub file: PathBuf,
    /// The field of each object that holds the text.
    #[arg(long, default_value = "text")]
    pub text_field: String,
    /// Texts embedded together; larger is faster until memory runs out.
    #[arg(long, default_value_t = 64)]
    pub batch_size: usize,
    /// Where to run: auto (the first CUDA device if there is one, else the CPU), cpu, cuda,
    /// cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Compute dtype: auto (bf16 on CUDA, f32 on the CPU), f32, or bf16 (about twice as fast
    /// on CPUs with AVX512-BF16, embeddings within cosine ≈ 0.9999 of f32).
    #[arg(long, default_value = "auto")]
    pub dtype: String,
    /// Write the embeddings here instead of to standard output (with --json, a summary with
    /// the timings is then printed to standard output).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Embed the first batch this many times, untimed, before the timed run (CUDA loads its
    /// kernels on first use), so that the reported speed is a warm model's.
    #[arg(long, default_value_t = 0)]
    pub warmup: u32,
    /// The sentence-transformers model folder (default: all-MiniLM-L6-v2 as installed by
    /// scripts/setup.sh, or FEDSYN_MINILM_DIR).
    #[arg(long)]
    pub model_dir: Option<PathBuf>,
}

/// Records are embedded this many at a time (each chunk sorted by length and batched), so
/// that memory stays bounded for any file size.
const RECORDS_PER_CHUNK: usize = 8192;

/// One input record: its text, and its `id` field if it has one.
#[derive(Debug)]
struct Record {
    text: String,
    id: Option<Value>,
}

/// One output line.
#[derive(Serialize)]
struct EmbeddingLine<'a> {
    index: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a Value>,
    embedding: &'a [f32],
}

/// The compute dtype a `--dtype` value names on `device` (bf16 on a CPU without native bf16
/// falls back to fp32, saying so on standard error).
fn compute_dtype(text: &str, device: tch::Device) -> Result<tch::Kind> {
    let (kind, notice) = text.parse::<models::DtypeChoice>()?.resolve(device);
    if let Some(notice) = notice {
        eprintln!("note: {notice}");
    }
    Ok(kind)
}

/// What `fedsyn embed --json --out FILE` prints.
#[derive(Serialize)]
struct EmbedReport {
    model_dir: String,
    device: String,
    dtype: String,
    texts: usize,
    dim: usize,
    batch_size: usize,
    warmup: u32,
    load_seconds: f64,
    embed_seconds: f64,
    texts_per_second: f64,
}

/// Runs `fedsyn embed`.
pub fn embed(args: EmbedArgs, json: bool) -> Result<()> {
    if args.batch_size == 0 {
        return Err(InputError("--batch-size must be at least 1".to_string()).into());
    }
    // Read and check the whole input before loading the model: a bad line fails fast.
    let records = read_records(&args.file, &args.text_field)?;
    let device = args.device.parse::<DeviceChoice>()?.resolve()?;
    let kind = compute_dtype(&args.dtype, device)?;
    let model_dir = match &args.model_dir {
        Some(dir) => dir.clone(),
        None => Assets::discover().minilm_dir()?,
    };
    let mut out: Box<dyn Write> = match &args.out {
        Some(path) => {
            Box::new(BufWriter::new(File::create(path).map_err(|e| {
                InputError(format!("cannot create {}: {e}", path.display()))
            })?))
        }
        None => Box::new(BufWriter::new(std::io::stdout().lock())),
    };
    let destination = args
        .out
        .as_ref()
        .map_or("standard output".to_string(), |p| p.display().to_string());
    let started = Instant::now();
    let embedder = SentenceEmbedder::load_as(&model_dir, device, kind)
        .with_context(|| format!("loading the sentence embedder from {}", model_dir.display()))?;
    let load_seconds = started.elapsed().as_secs_f64();
    if let Some(first) = records.chunks(args.batch_size).next() {
        let texts: Vec<&str> = first.iter().map(|r| r.text.as_str()).collect();
        for _ in 0..args.warmup {
            embedder.embed(&texts, args.batch_size)?;
        }
    }
    let started = Instant::now();

    for (chunk_index, chunk) in records.chunks(RECORDS_PER_CHUNK).enumerate() {
        let texts: Vec<&str> = chunk.iter().map(|r| r.text.as_str()).collect();
        let embeddings = embedder.embed(&texts, args.batch_size)?;
        for (offset, (record, embedding)) in chunk.iter().zip(&embeddings).enumerate() {
            let line = EmbeddingLine {
                index: chunk_index * RECORDS_PER_CHUNK + offset,
                id: record.id.as_ref(),
                embedding,
            };
            serde_json::to_writer(&mut out, &line)?;
            out.write_all(b"\n")
                .with_context(|| format!("writing to {destination}"))?;
        }
    }
    out.flush()
        .with_context(|| format!("writing to {destination}"))?;
    let embed_seconds = started.elapsed().as_secs_f64();
    let texts_per_second = records.len() as f64 / embed_seconds.max(1e-9);
    if json && args.out.is_some() {
        let report = EmbedReport {
            model_dir: model_dir.display().to_string(),
            device: device_name(device),
            dtype: format!("{kind:?}"),
            texts: records.len(),
            dim: embedder.dim(),
            batch_size: args.batch_size,
            warmup: args.warmup,
            load_seconds,
            embed_seconds,
            texts_per_second,
        };
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        eprintln!(
            "embedded {} texts (dim {}) on {} in {embed_seconds:.1} s ({texts_per_second:.1} \
             texts/s) after loading the model in {load_seconds:.1} s",
            records.len(),
            embedder.dim(),
            device_name(device),
        );
    }
    Ok(())
}

/// Reads every non-blank line of `path` as a JSON object with a string field `text_field`.
fn read_records(path: &Path, text_field: &str) -> Result<Vec<Record>> {
    let mut records = Vec::new();
    for mut line in read_json_lines(path)? {
        let Some(text) = line.text(text_field)?.map(str::to_string) else {
            let fields: Vec<&str> = line.object.keys().map(String::as_str).collect();
            return Err(InputError(format!(
                "{}: no field `{text_field}` (fields: {}); choose one with --text-field",
                line.at,
                if fields.is_empty() {
                    "none".to_string()
                } else {
                    fields.join(", ")
                }
            ))
            .into());
        };
        records.push(Record {
            text,
            id: line.object.remove("id"),
        });
    }
    Ok(records)
}

fn device_name(device: tch::Device) -> String {
    match device {
        tch::Device::Cpu => "cpu".to_string(),
        tch::Device::Cuda(n) => format!("cuda:{n}"),
        other => format!("{other:?}"),
    }
}

/// Arguments of `fedsyn generate`.
#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// The prompt text.
    #[arg(long)]
    pub prompt: String,
    /// Wrap the prompt in the model's chat template as one user turn, followed by the
    /// assistant's turn header.
    #[arg(long)]
    pub chat: bool,
    /// Number of samples of the prompt, generated together as one batch.
    #[arg(short = 'n', long = "num-samples", default_value_t = 1,
          value_parser = clap::value_parser!(u64).range(1..=4096))]
    pub num_samples: u64,
    /// Softmax temperature (0 means greedy).
    #[arg(long, default_value_t = 1.0, value_parser = parse_temperature)]
    pub temperature: f64,
    /// Nucleus sampling: keep the most likely tokens up to this probability mass, in (0, 1].
    #[arg(long, default_value_t = 1.0, value_parser = parse_top_p)]
    pub top_p: f64,
    /// Keep only the K most likely tokens (0: all).
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    /// Most new tokens per sample.
    #[arg(long, default_value_t = 128,
          value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub max_tokens: u64,
    /// Seed of the sampler: the same seed, prompt and settings give the same text on the CPU.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Always take the most likely token (ignores temperature, top-p, top-k and seed).
    #[arg(long)]
    pub greedy: bool,
    /// Stop a sample once its text contains this string (repeatable); the text is cut before it.
    #[arg(long = "stop")]
    pub stop: Vec<String>,
    /// Keep generating past end-of-sequence tokens, up to --max-tokens (for throughput
    /// measurements).
    #[arg(long)]
    pub ignore_eos: bool,
    /// With --json: also print the prompt's token ids and, per sample, its token ids and each
    /// token's log-probability under the model (before temperature, top-k and top-p), to check
    /// the model against another implementation.
    #[arg(long)]
    pub logprobs: bool,
    /// A GGUF file or a Hugging Face folder (config.json, *.safetensors, tokenizer.json) of a
    /// Llama, Mistral or Qwen2 model (default: SmolLM2-135M-Instruct as installed by
    /// scripts/setup.sh, or FEDSYN_SMOLLM2_GGUF).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// A LoRA adapter folder in PEFT's format (adapter_config.json and
    /// adapter_model.safetensors, as fedsyn or PEFT's save_pretrained write it) trained on
    /// --model: samples come from the adapted model.
    #[arg(long, value_name = "ADAPTER_DIR")]
    pub adapter: Option<PathBuf>,
    /// Where to run: auto (the first CUDA device if there is one, else the CPU), cpu, cuda,
    /// cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Compute dtype: auto (bf16 on CUDA, f32 on the CPU), f32, or bf16.
    #[arg(long, default_value = "auto")]
    pub dtype: String,
    /// Generate the batch this many times, untimed, before the timed run (CUDA loads its
    /// kernels on first use), so that the reported speed is a warm model's.
    #[arg(long, default_value_t = 0)]
    pub warmup: u32,
}

fn parse_temperature(text: &str) -> std::result::Result<f64, String> {
    match text.parse::<f64>() {
        Ok(t) if t.is_finite() && t >= 0.0 => Ok(t),
        _ => Err(format!("`{text}` is not a number ≥ 0")),
    }
}

fn parse_top_p(text: &str) -> std::result::Result<f64, String> {
    match text.parse::<f64>() {
        Ok(p) if p > 0.0 && p <= 1.0 => Ok(p),
        _ => Err(format!("`{text}` is not a number in (0, 1]")),
    }
}

/// What `fedsyn generate --json` prints.
#[derive(Serialize)]
struct GenerateReport<'a> {
    model: String,
    adapter: Option<String>,
    device: String,
    dtype: String,
    prompt: &'a str,
    chat: bool,
    prompt_tokens: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    prompt_token_ids: Option<Vec<u32>>,
    seed: u64,
    greedy: bool,
    samples: Vec<SampleReport>,
    generated_tokens: usize,
    load_seconds: f64,
    generate_seconds: f64,
    tokens_per_second: f64,
}

#[derive(Serialize)]
struct SampleReport {
    index: usize,
    text: String,
    tokens: usize,
    finish_reason: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    token_ids: Option<Vec<u32>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    logprobs: Option<Vec<f32>>,
}

/// The generator a model command loads: `--model PATH` (which must exist), or the installed
/// SmolLM2 GGUF.
pub fn generator_path(model: Option<&Path>) -> Result<PathBuf> {
    match model {
        Some(path) if !path.exists() => Err(InputError(format!(
            "--model {}: no such file or folder",
            path.display()
        ))
        .into()),
        Some(path) => Ok(path.to_path_buf()),
        None => Ok(Assets::discover().smollm2_gguf()?),
    }
}

/// Runs `fedsyn generate`.
pub fn generate(args: GenerateArgs, json: bool) -> Result<()> {
    let device = args.device.parse::<DeviceChoice>()?.resolve()?;
    let model_path = generator_path(args.model.as_deref())?;
    let params = SamplingParams {
        max_new_tokens: args.max_tokens as usize,
        greedy: args.greedy,
        temperature: args.temperature,
        top_p: args.top_p,
        top_k: args.top_k,
        seed: args.seed,
        stop_strings: args.stop.clone(),
        ignore_eos: args.ignore_eos,
        logprobs: args.logprobs,
    };
    if args.logprobs && !json {
        return Err(InputError(
            "--logprobs prints token ids and log-probabilities in the JSON report: add --json"
                .to_string(),
        )
        .into());
    }
    params.validate()?;

    if let Some(dir) = args.adapter.as_ref().filter(|dir| !dir.is_dir()) {
        return Err(InputError(format!(
            "--adapter {}: no such folder (expected a PEFT adapter folder with {} and {})",
            dir.display(),
            models::llama::ADAPTER_CONFIG_FILE,
            models::llama::ADAPTER_WEIGHTS_FILE
        ))
        .into());
    }

    let kind = compute_dtype(&args.dtype, device)?;
    let started = Instant::now();
    let mut generator = Generator::load_as(&model_path, device, kind)
        .with_context(|| format!("loading the generator from {}", model_path.display()))?;
    if let Some(dir) = &args.adapter {
        let model = generator.model_mut();
        model
            .load_adapter(dir)
            .with_context(|| format!("loading the LoRA adapter from {}", dir.display()))?;
        // Sampling only: folding the adapter into the weights makes every step as fast as
        // the base model's.
        model.merge_lora()?;
    }
    let load_seconds = started.elapsed().as_secs_f64();
    let prompt_ids = generator.encode_prompt(&args.prompt, args.chat)?;
    let prompts = vec![prompt_ids.clone(); args.num_samples as usize];
    for _ in 0..args.warmup {
        generator.generate_from_ids(&prompts, &params)?;
    }
    let started = Instant::now();
    let completions = generator.generate_from_ids(&prompts, &params)?;
    let generate_seconds = started.elapsed().as_secs_f64();
    let generated_tokens: usize = completions.iter().map(|c| c.token_ids.len()).sum();
    let tokens_per_second = generated_tokens as f64 / generate_seconds.max(1e-9);

    let mut out = std::io::stdout().lock();
    if json {
        let report = GenerateReport {
            model: model_path.display().to_string(),
            adapter: args.adapter.as_ref().map(|dir| dir.display().to_string()),
            device: format!("{device:?}"),
            dtype: format!("{kind:?}"),
            prompt: &args.prompt,
            chat: args.chat,
            prompt_tokens: prompt_ids.len(),
            prompt_token_ids: args.logprobs.then(|| prompt_ids.clone()),
            seed: args.seed,
            greedy: params.is_greedy(),
            samples: completions
                .into_iter()
                .enumerate()
                .map(|(index, c)| SampleReport {
                    index,
                    tokens: c.token_ids.len(),
                    finish_reason: c.finish_reason.as_str(),
                    token_ids: args.logprobs.then(|| c.token_ids.clone()),
                    logprobs: args.logprobs.then_some(c.logprobs),
                    text: c.text,
                })
                .collect(),
            generated_tokens,
            load_seconds,
            generate_seconds,
            tokens_per_second,
        };
        serde_json::to_writer_pretty(&mut out, &report)?;
        writeln!(out)?;
    } else {
        let several = completions.len() > 1;
        for (index, completion) in completions.iter().enumerate() {
            if several {
                writeln!(
                    out,
                    "--- sample {} ({} tokens, {}) ---",
                    index + 1,
                    completion.token_ids.len(),
                    completion.finish_reason.as_str()
                )?;
            }
            writeln!(out, "{}", completion.text)?;
        }
        eprintln!(
            "generated {generated_tokens} tokens in {generate_seconds:.2} s on {device:?} \
             ({tokens_per_second:.1} tokens/s; prompt {} tokens; model load {load_seconds:.2} s)",
            prompt_ids.len()
        );
    }
    out.flush()?;
    Ok(())
}
