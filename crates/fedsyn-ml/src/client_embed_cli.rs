//! `fedsyn client-embed`: embeds a client's texts into its state folder (the profile
//! `fedsyn client` scores with). `fedsyn client` runs it by itself when needed; run it by hand
//! to prepare a client before it joins.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use clients::profile::client_profile;
use models::Assets;
use remote_client::read_client_texts;

/// Arguments of `fedsyn client-embed`.
#[derive(Debug, Args)]
pub struct ClientEmbedArgs {
    /// The client's private texts: one {"text": …} object per line.
    #[arg(long, value_name = "JSONL")]
    pub data: PathBuf,
    /// The client's state folder (as `fedsyn client --state-dir`).
    #[arg(long, value_name = "DIR", default_value = ".fedsyn-client")]
    pub state_dir: PathBuf,
    /// The sentence embedder's folder (default: the installed all-MiniLM-L6-v2).
    #[arg(long, value_name = "DIR")]
    pub embedder: Option<PathBuf>,
}

/// Runs `fedsyn client-embed`.
pub fn run(args: &ClientEmbedArgs, json: bool) -> Result<()> {
    let texts = read_client_texts(&args.data)?;
    let embedder_dir = match &args.embedder {
        Some(dir) => dir.clone(),
        None => Assets::discover().minilm_dir()?,
    };
    let profile = client_profile(&texts, &embedder_dir, &args.state_dir)
        .with_context(|| format!("embedding the texts of {}", args.data.display()))?;
    if json {
        println!(
            "{}",
            serde_json::json!({"texts": profile.texts, "cached": profile.cached})
        );
    } else {
        eprintln!(
            "{} texts {} in {}",
            profile.texts,
            if profile.cached {
                "were already embedded"
            } else {
                "embedded"
            },
            args.state_dir.display()
        );
    }
    Ok(())
}
