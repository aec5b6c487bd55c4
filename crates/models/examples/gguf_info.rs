//! Prints a GGUF file's header: metadata (arrays abbreviated) and a count of tensors per type.
//!
//! `cargo run -p models --example gguf_info -- [FILE.gguf]`; without an argument it reads the
//! SmolLM2 file that `scripts/setup.sh` installs.

use std::collections::BTreeMap;
use std::process::ExitCode;

use models::{Assets, GgufFile};

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gguf_info: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> models::Result<()> {
    let path = match std::env::args_os().nth(1) {
        Some(arg) => arg.into(),
        None => Assets::discover().smollm2_gguf()?,
    };
    let gguf = GgufFile::open(&path)?;
    println!(
        "{}: GGUF v{}, alignment {}, data at byte {}",
        path.display(),
        gguf.version(),
        gguf.alignment(),
        gguf.data_start()
    );
    for (key, value) in gguf.metadata() {
        let mut shown = value.to_string();
        if shown.chars().count() > 100 {
            shown = shown.chars().take(100).collect::<String>() + "…";
        }
        let kind = match value {
            models::GgufValue::Array { .. } => value.describe(),
            scalar => scalar.value_type().name().to_string(),
        };
        println!("  {key} [{kind}] = {shown}");
    }
    let mut per_type: BTreeMap<u32, (String, usize)> = BTreeMap::new();
    for tensor in gguf.tensors() {
        let entry = per_type
            .entry(tensor.ggml_type.id())
            .or_insert_with(|| (tensor.ggml_type.name().to_string(), 0));
        entry.1 += 1;
    }
    println!("{} tensors:", gguf.tensors().len());
    for (name, count) in per_type.values() {
        println!("  {name}: {count}");
    }
    Ok(())
}
