//! Everything a report reads from one run (or reference) directory.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use runs::config::RunConfig;
use runs::records::SimulationSummary;
use runs::records::{read_report, EvalReport, Reference, EVAL_FILE};
use runs::run_dir::{RoundMetrics, RunDir};
use runs::{Result, RunError};

/// One run directory as the reports see it: its configuration, and whichever of
/// `summary.json`, `metrics.jsonl`, `eval.json` it has.
#[derive(Debug, Clone)]
pub struct RunRecord {
    /// The directory.
    pub dir: PathBuf,
    /// Its resolved configuration (`config.toml`).
    pub config: RunConfig,
    /// `summary.json`, when the run finished.
    pub summary: Option<SimulationSummary>,
    /// `metrics.jsonl` (empty for references and runs that never finished a round).
    pub metrics: Vec<RoundMetrics>,
    /// `eval.json`, when `fedsyn eval` ran on it.
    pub eval: Option<EvalReport>,
}

impl RunRecord {
    /// Reads `dir`; only `config.toml` is required.
    pub fn load(dir: &Path) -> Result<RunRecord> {
        let run = RunDir::open(dir)?;
        let config = run.load_config()?;
        let summary_path = run.summary_path();
        let summary = if summary_path.is_file() {
            Some(read_json(&summary_path, "rerun the run to the end")?)
        } else {
            None
        };
        let eval_path = dir.join(EVAL_FILE);
        let eval = if eval_path.is_file() {
            Some(read_report(&eval_path)?)
        } else {
            None
        };
        Ok(RunRecord {
            dir: dir.to_path_buf(),
            config,
            summary,
            metrics: run.read_metrics()?,
            eval,
        })
    }

    /// The run's method (`popri`, `pe`, …), or `real` / `public` for a reference.
    pub fn method(&self) -> String {
        match (&self.eval, self.reference()) {
            (Some(eval), Some(_)) => eval.method.clone(),
            _ => self.config.run.method.as_str().to_string(),
        }
    }

    /// Which reference the directory holds (from its `eval.json`), if any.
    pub fn reference(&self) -> Option<Reference> {
        let method = self.eval.as_ref()?.method.as_str();
        method.parse().ok()
    }

    /// The run's name (`run.name`).
    pub fn name(&self) -> &str {
        &self.config.run.name
    }

    /// The target ε; `None` for references (ε = ∞ or 0, see [`RunRecord::reference`]).
    pub fn epsilon_target(&self) -> Option<f64> {
        if self.reference().is_some() {
            return None;
        }
        Some(
            self.summary
                .as_ref()
                .map_or(self.config.privacy.epsilon, |s| s.target_epsilon),
        )
    }

    /// ε spent (RDP, PLD): from `summary.json`, else the last metrics row, else `eval.json`.
    pub fn epsilon_spent(&self) -> Option<(f64, f64)> {
        if let Some(summary) = &self.summary {
            return Some((summary.epsilon_rdp, summary.epsilon_pld));
        }
        if let Some(last) = self.metrics.last() {
            return Some((last.epsilon_rdp, last.epsilon_pld));
        }
        let eval = self.eval.as_ref()?;
        Some((eval.epsilon_rdp?, eval.epsilon_pld?))
    }

    /// δ of the ε values.
    pub fn delta(&self) -> f64 {
        self.summary
            .as_ref()
            .map_or(self.config.privacy.delta, |s| s.delta)
    }

    /// A short label for plots: `folder (method, ε = …)` (the folder, since several runs may
    /// share a name).
    pub fn label(&self) -> String {
        let folder = self.dir.file_name().map_or_else(
            || self.dir.display().to_string(),
            |f| f.to_string_lossy().into_owned(),
        );
        format!("{folder} ({}, ε = {})", self.method(), self.epsilon_text())
    }

    /// ε as the tables print it: the target, ∞ or 0 for the references.
    pub fn epsilon_text(&self) -> String {
        match (self.reference(), self.epsilon_target()) {
            (Some(Reference::Real), _) => "∞".to_string(),
            (Some(Reference::Public), _) => "0".to_string(),
            (None, Some(epsilon)) => format_number(epsilon),
            (None, None) => "?".to_string(),
        }
    }
}

/// A number with up to 4 significant decimals and no trailing zeros (`1`, `0.5`, `7.25`).
pub(crate) fn format_number(value: f64) -> String {
    let text = format!("{value:.4}");
    let trimmed = text.trim_end_matches('0').trim_end_matches('.');
    if trimmed.is_empty() || trimmed == "-" {
        "0".to_string()
    } else {
        trimmed.to_string()
    }
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path, fix: &str) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| RunError::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| RunError::Data {
        path: path.to_path_buf(),
        line: e.line(),
        message: format!("cannot be read ({e}); {fix}"),
    })
}

#[cfg(test)]
mod tests {
    use super::format_number;

    #[test]
    fn numbers_lose_trailing_zeros() {
        assert_eq!(format_number(1.0), "1");
        assert_eq!(format_number(0.5), "0.5");
        assert_eq!(format_number(7.123456), "7.1235");
        assert_eq!(format_number(0.0), "0");
    }
}
