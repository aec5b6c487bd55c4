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

use models::llama::SamplingParams;
use serde_json::{json, Value};
use support::{Flags, Runtime};

mod support;

struct Options {
    batch: usize,
    new_tokens: usize,
    prompt_tokens: usize,
    runtime: Runtime,
    seed: u64,
    save_prompts: Option<PathBuf>,
}

fn options() -> Options {
    let mut options = Options {
        batch: 16,
        new_tokens: 64,
        prompt_tokens: 222,
        runtime: Runtime::default(),
        seed: 0,
        save_prompts: None,
    };
    let mut flags = Flags::from_env();
    while let Some(flag) = flags.next_flag() {
        match flag.as_str() {
            "--batch" => options.batch = flags.parse("N"),
            "--new-tokens" => options.new_tokens = flags.parse("N"),
            "--prompt-tokens" => options.prompt_tokens = flags.parse("N"),
            "--seed" => options.seed = flags.parse("N"),
            "--save-prompts" => options.save_prompts = Some(flags.path()),
            other => options.runtime.read_shared_flag(other, &mut flags),
        }
    }
    options
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

fn main() {
    let options = options();
    let device = options.runtime.start();
    let (path, generator, load_seconds) =
        support::load_smollm2(device, options.runtime.kind(device));
    // Row i: the first `prompt_tokens` ids of the i-th address.
    let prompts = support::address_ids(&generator, options.batch, options.prompt_tokens);
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
        "peak_rss_mib": support::peak_rss_mib(),
        "first_text": completions[0].text.chars().take(120).collect::<String>(),
    });
    println!("{report}");
}
