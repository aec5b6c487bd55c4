//! `fedsyn compare RUN_DIR…`: runs and references side by side, method × ε (see
//! `reports::compare`).

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use reports::compare_runs;

/// Arguments of `fedsyn compare`.
#[derive(Debug, Args)]
pub struct CompareArgs {
    /// Run directories, and the reference directories of `fedsyn eval --reference real|public`.
    #[arg(value_name = "RUN_DIR", required = true)]
    pub run_dirs: Vec<PathBuf>,
    /// Where compare.md, compare.json and the plots go (default: only print the table).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// Runs `fedsyn compare`.
pub fn run(args: &CompareArgs, json: bool) -> Result<()> {
    let comparison = compare_runs(&args.run_dirs)?;
    let written = match &args.out {
        Some(out) => comparison.write(out)?,
        None => Vec::new(),
    };
    if json {
        println!("{}", serde_json::to_string(&comparison)?);
        return Ok(());
    }
    print!("{}", comparison.table_markdown());
    for path in written {
        println!("wrote {}", path.display());
    }
    Ok(())
}
