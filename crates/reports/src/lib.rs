//! Reports of runs, without libtorch, so that `fedsyn compare` and `fedsyn report` run in the
//! `fedsyn` binary, which never links it:
//! - [`compare_runs`] (`fedsyn compare`): several runs and the ε = ∞ / ε = 0 references,
//!   method × ε;
//! - [`write_run_report`] (`fedsyn report`): one run as Markdown and self-contained HTML;
//! - [`plot`]: the `rounds.svg` a run redraws after each round.
//!
//! Pure file reading and rendering: `config.toml`, `summary.json`, `metrics.jsonl`,
//! `eval.json`, `synthetic.jsonl` and `privacy-statement.md` in, Markdown, XHTML, JSON and SVG
//! out. Nothing here loads a model.

mod chart;
pub mod compare;
mod document;
pub mod plot;
mod record;
pub mod run_report;
pub mod stats;

pub use compare::{compare_runs, Comparison, ComparisonRow, Contrast, SeedGroup};
pub use record::RunRecord;
pub use run_report::{write_run_report, ReportFiles, ReportOptions};
