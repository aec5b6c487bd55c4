//! Sampling benchmark: generated tokens per second of fedsyn's Llama generator, printed as one
//! JSON object for `benches/run-models.sh generate` to set beside transformers' `generate`
//! (`benches/python/generate_anchor.py`, same prompt ids, batch, settings and thread count).
//!
//! Setting: SmolLM2-135M-Instruct Q4_1 GGUF (scripts/setup.sh) dequantised to fp32 on the CPU;
//! a batch of B prompts of exactly 222 tokens each (row i: the first 222 tokens of the i-th
//! State of the Union address, in file-name order, cycling); 64 new tokens per row sampled
//! at temperature 1.0 (no top-k, no top-p), end-of-sequence ignored so that every row makes
//! all 64; 2 torch threads. The model is loaded (timed separately) and warmed up on a batch of
//! 2 × 4 tokens (untimed); then one timed `generate` (prefill + 64 decoding steps). Peak
//! memory is the process's VmHWM at the end (Linux).
//!
//! Run: `cargo bench -p models --bench generate [-- --batch B --new-tokens N --prompt-tokens P
//! --threads T --device D --seed S --save-prompts FILE.json]`. `--save-prompts` writes the
//! prompt ids for the Python side.

use std::path::PathBuf;
use std::time::Instant;

use models::llama::{Generator, SamplingParams};
use models::{Assets, DeviceChoice};
use serde_json::{json, Value};

struct Options {
    batch: usize,
    new_tokens: usize,
    prompt_tokens: usize,
    threads: i32,
    device: DeviceChoice,
    seed: u64,
    save_prompts: Option<PathBuf>,
}

fn options() -> Options {
    let mut options = Options {
        batch: 16,
        new_tokens: 64,
        prompt_tokens: 222,
        threads: 2,
        device: DeviceChoice::Cpu,
        seed: 0,
        save_prompts: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || {
            args.next()
                .unwrap_or_else(|| panic!("{flag} needs a value"))
        };
        match flag.as_str() {
            "--batch" => options.batch = value().parse().expect("--batch N"),
            "--new-tokens" => options.new_tokens = value().parse().expect("--new-tokens N"),
            "--prompt-tokens" => {
                options.prompt_tokens = value().parse().expect("--prompt-tokens N")
            }
            "--threads" => options.threads = value().parse().expect("--threads N"),
            "--device" => options.device = value().parse().expect("--device auto|cpu|cuda[:N]"),
            "--seed" => options.seed = value().parse().expect("--seed N"),
            "--save-prompts" => options.save_prompts = Some(PathBuf::from(value())),
            // cargo bench passes --bench to harness = false targets.
            "--bench" => {}
            other => panic!("unknown option {other}"),
        }
    }
    options
}

/// Row i: the first `length` token ids of the i-th address (file-name order, cycling).
fn prompts(generator: &Generator, rows: usize, length: usize) -> Vec<Vec<u32>> {
    let dir = Assets::discover()
        .sotu_dir()
        .expect("the State of the Union texts (scripts/setup.sh)");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("readable SOTU folder")
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "txt"))
        .collect();
    files.sort();
    (0..rows)
        .map(|row| {
            let text =
                std::fs::read_to_string(&files[row % files.len()]).expect("readable address");
            // Enough characters for `length` tokens (English BPE: ≥ 2 characters per token).
            let head: String = text.chars().take(length * 8).collect();
            let ids = generator.encode_prompt(&head, false).expect("tokenises");
            assert!(ids.len() >= length, "{} is too short", files[row].display());
            ids[..length].to_vec()
        })
        .collect()
}

/// CPU time (user + system, all threads) of this process so far, from /proc/self/stat; with
/// the wall time it shows whether other processes took the cores during the run.
fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let after_name = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

fn main() {
    let options = options();
    tch::set_num_threads(options.threads);
    let device = options.device.resolve().expect("device");
    let path = Assets::discover()
        .smollm2_gguf()
        .expect("the SmolLM2 GGUF (scripts/setup.sh)");

    let started = Instant::now();
    let generator = Generator::from_gguf(&path, device).expect("loads");
    let load_seconds = started.elapsed().as_secs_f64();
    let prompts = prompts(&generator, options.batch, options.prompt_tokens);
    if let Some(file) = &options.save_prompts {
        std::fs::write(file, serde_json::to_string(&prompts).unwrap()).expect("writes prompts");
    }

    let params = SamplingParams {
        max_new_tokens: options.new_tokens,
        temperature: 1.0,
        seed: options.seed,
        ignore_eos: true,
        ..SamplingParams::default()
    };
    let warm_up = SamplingParams {
        max_new_tokens: 4,
        ..params.clone()
    };
    let short: Vec<Vec<u32>> = prompts.iter().take(2).cloned().collect();
    generator
        .generate_from_ids(&short, &warm_up)
        .expect("warm-up runs");

    let cpu_before = cpu_seconds();
    let started = Instant::now();
    let completions = generator
        .generate_from_ids(&prompts, &params)
        .expect("generates");
    let seconds = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds()
        .zip(cpu_before)
        .map(|(after, before)| after - before);
    let generated: usize = completions.iter().map(|c| c.token_ids.len()).sum();
    assert_eq!(
        generated,
        options.batch * options.new_tokens,
        "every row makes all tokens"
    );

    let report: Value = json!({
        "tool": "fedsyn",
        "model": path.file_name().map(|n| n.to_string_lossy().to_string()),
        "device": format!("{device:?}"),
        "dtype": format!("{:?}", generator.model().kind()),
        "threads": tch::get_num_threads(),
        "batch": options.batch,
        "prompt_tokens": options.prompt_tokens,
        "new_tokens": options.new_tokens,
        "generated_tokens": generated,
        "load_seconds": load_seconds,
        "seconds": seconds,
        "cpu_seconds": cpu,
        "matmul": format!("{:?}", generator.model().lm_head.backend()),
        "tokens_per_second": generated as f64 / seconds,
        "peak_rss_mib": peak_rss_mib(),
        "first_text": completions[0].text.chars().take(120).collect::<String>(),
    });
    println!("{report}");
}
