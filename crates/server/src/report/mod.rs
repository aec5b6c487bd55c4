//! Reports of finished runs: [`compare_runs`] (`fedsyn compare`: several runs and the ε = ∞ /
//! ε = 0 references, method × ε) and [`write_run_report`] (`fedsyn report`: one run as
//! Markdown and self-contained HTML).
//!
//! Pure file reading and rendering: `config.toml`, `summary.json`, `metrics.jsonl`,
//! `eval.json`, `synthetic.jsonl` and `privacy-statement.md` in, Markdown, XHTML, JSON and SVG
//! out. Nothing here loads a model.

mod chart;
pub mod compare;
mod document;
mod record;
pub mod run_report;
pub mod stats;

pub use compare::{compare_runs, Comparison, ComparisonRow, Contrast, SeedGroup};
pub use record::RunRecord;
pub use run_report::{write_run_report, ReportFiles, ReportOptions};
