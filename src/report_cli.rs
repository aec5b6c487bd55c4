//! `fedsyn report RUN_DIR`: one run as Markdown and self-contained HTML (see
//! `reports::run_report`).

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use reports::{write_run_report, ReportOptions};

/// Arguments of `fedsyn report`.
#[derive(Debug, Args)]
pub struct ReportArgs {
    /// The run directory (report.md, report.html and report-plots/ are written into it).
    #[arg(value_name = "RUN_DIR")]
    pub run_dir: PathBuf,
    /// How many synthetic texts to show.
    #[arg(long, default_value_t = ReportOptions::default().sample_texts)]
    pub samples: usize,
}

/// Runs `fedsyn report`.
pub fn run(args: &ReportArgs, json: bool) -> Result<()> {
    let options = ReportOptions {
        sample_texts: args.samples,
        ..ReportOptions::default()
    };
    let files = write_run_report(&args.run_dir, &options)?;
    if json {
        println!("{}", serde_json::to_string(&files)?);
    } else {
        println!("wrote {}", files.markdown.display());
        println!("wrote {}", files.html.display());
        println!(
            "wrote {} plot(s) in {}",
            files.plots.len(),
            args.run_dir
                .join(reports::run_report::REPORT_PLOTS)
                .display()
        );
    }
    Ok(())
}
