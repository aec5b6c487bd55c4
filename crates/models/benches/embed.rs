//! Embedding benchmark: documents per second of fedsyn's MiniLM sentence embedder, printed as
//! one JSON object for `benches/run-models.sh embed` to set beside sentence-transformers
//! (`benches/python/embed_anchor.py`, same documents, batch size and thread count).
//!
//! Setting: the first 2,000 speeches (field `text`) of
//! `../shared/data/shakespeare_roles/train.jsonl`, all-MiniLM-L6-v2 as installed by
//! scripts/setup.sh, batch 64, CPU fp32 (or `--device cuda`: bf16), 2 torch threads. The model
//! is loaded (timed separately) and warmed up on the first batch (untimed); then one timed
//! `embed` of all documents, which tokenises, sorts by length, batches, and pools. Peak memory
//! is the process's VmHWM at the end (Linux).
//!
//! Run: `cargo bench -p models --bench embed [-- --docs N --batch-size B --threads T --device D
//! --kind f32|bf16 --save FILE.f32]`. `--save` writes the embeddings as raw little-endian f32
//! (docs × 384, input order) for the agreement check of `run-models.sh`.

use std::path::PathBuf;
use std::time::Instant;

use models::{Assets, SentenceEmbedder};
use serde_json::{json, Value};
use support::{Flags, Runtime};

mod support;

struct Options {
    data: PathBuf,
    docs: usize,
    batch_size: usize,
    runtime: Runtime,
    save: Option<PathBuf>,
}

fn options() -> Options {
    let mut options = Options {
        data: PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../../shared/data/shakespeare_roles/train.jsonl"),
        docs: 2000,
        batch_size: 64,
        runtime: Runtime::default(),
        save: None,
    };
    let mut flags = Flags::from_env();
    while let Some(flag) = flags.next_flag() {
        match flag.as_str() {
            "--data" => options.data = flags.path(),
            "--docs" => options.docs = flags.parse("N"),
            "--batch-size" => options.batch_size = flags.parse("N"),
            "--save" => options.save = Some(flags.path()),
            other => options.runtime.read_shared_flag(other, &mut flags),
        }
    }
    options
}

fn read_texts(options: &Options) -> Vec<String> {
    let content = std::fs::read_to_string(&options.data)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", options.data.display()));
    let texts: Vec<String> = content
        .lines()
        .take(options.docs)
        .map(|line| {
            let record: Value = serde_json::from_str(line).expect("a JSON line");
            record["text"].as_str().expect("a text field").to_string()
        })
        .collect();
    assert_eq!(texts.len(), options.docs, "not enough documents");
    texts
}

/// A memory figure of this process in MiB (see [`support::status_mib`]), 0 where /proc is
/// unavailable.
fn status_mib(field: &str) -> f64 {
    support::status_mib(field).unwrap_or(0.0)
}

fn main() {
    let options = options();
    // libtorch is loaded before main runs: this is its share of the resident memory.
    let rss_at_start = status_mib("VmRSS");
    let device = options.runtime.start();
    let texts = read_texts(&options);
    let model_dir = Assets::discover()
        .minilm_dir()
        .expect("all-MiniLM-L6-v2 is installed");

    let load_start = Instant::now();
    let kind = options.runtime.kind(device);
    let embedder = SentenceEmbedder::load_as(&model_dir, device, kind).expect("the model loads");
    let load_seconds = load_start.elapsed().as_secs_f64();
    let token_counts = embedder.token_counts(&texts).expect("tokenise");

    embedder
        .embed(
            &texts[..options.batch_size.min(texts.len())],
            options.batch_size,
        )
        .expect("warm-up");
    let start = Instant::now();
    let embeddings = embedder
        .embed_tensor(&texts, options.batch_size)
        .expect("embed");
    let seconds = start.elapsed().as_secs_f64();

    if let Some(path) = &options.save {
        let flat = Vec::<f32>::try_from(embeddings.flatten(0, -1)).expect("f32 values");
        let bytes: Vec<u8> = flat.iter().flat_map(|x| x.to_le_bytes()).collect();
        std::fs::write(path, bytes).expect("write the embeddings");
    }
    let result = json!({
        "tool": "fedsyn",
        "device": format!("{device:?}"),
        "kind": format!("{:?}", embedder.kind()),
        "docs": texts.len(),
        "tokens": token_counts.iter().sum::<usize>(),
        "batch_size": options.batch_size,
        "threads": tch::get_num_threads(),
        "load_seconds": load_seconds,
        "seconds": seconds,
        "docs_per_s": texts.len() as f64 / seconds,
        "dim": embedder.dim(),
        "peak_rss_mib": status_mib("VmHWM"),
        "rss_at_start_mib": rss_at_start,
        "rss_anon_end_mib": status_mib("RssAnon"),
        "rss_file_end_mib": status_mib("RssFile"),
    });
    println!("{result}");
}
