//! `fedsyn compare`: several runs (and the ε = ∞ / ε = 0 references) side by side, method × ε.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::chart::{Line, LineChart};
use crate::document::{Block, Document};
use crate::record::RunRecord;
use crate::stats::{
    difference_interval, mean_interval, paired_bootstrap, Interval, LEVEL, RESAMPLES,
};
use runs::records::{MemorisationResult, ANCHOR_WORDS};
use runs::records::{Reference, TokenHits};
use runs::run_dir::write_atomic;
use runs::{Result, RunError};

/// What a row shows instead of numbers when its run has no `eval.json`.
pub const NOT_EVALUATED: &str = "not evaluated (run `fedsyn eval DIR`)";

/// Files `compare` writes to its output folder.
pub const COMPARE_MD: &str = "compare.md";
/// The same table as JSON.
pub const COMPARE_JSON: &str = "compare.json";
/// Downstream accuracy by method and ε.
pub const ACCURACY_SVG: &str = "accuracy.svg";
/// FID per round of every run.
pub const FID_ROUNDS_SVG: &str = "fid-rounds.svg";

/// One row of the comparison: one run or reference.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ComparisonRow {
    /// The run directory.
    pub run_dir: PathBuf,
    /// `run.name`.
    pub name: String,
    /// `popri`, `pe`, `pe-sft`, `dp-fedavg`, or `real` / `public` for the references.
    pub method: String,
    /// The target ε; `None` for the references.
    pub epsilon_target: Option<f64>,
    /// ε as printed: the target, `∞` (real) or `0` (public).
    pub epsilon: String,
    /// ε spent under the RDP and the PLD accountant.
    pub epsilon_rdp: Option<f64>,
    pub epsilon_pld: Option<f64>,
    /// Whether the directory has an `eval.json`.
    pub evaluated: bool,
    /// Downstream top-1 next-token accuracy on the private eval texts.
    pub accuracy: Option<f64>,
    /// (accuracy − accuracy at ε = 0) / (accuracy at ε = ∞ − accuracy at ε = 0), when both
    /// references are part of the comparison.
    pub gap_closed: Option<f64>,
    /// Distribution metrics of the synthetic set against the private eval set (non-private
    /// diagnostics).
    pub fid: Option<f64>,
    pub mauve: Option<f64>,
    pub precision: Option<f64>,
    pub recall: Option<f64>,
    /// The memorisation check (non-private diagnostics): the longest word run any synthetic
    /// text shares with a private training text, and how many share a run of at least
    /// `memorisation::ANCHOR_WORDS` words.
    pub longest_shared_words: Option<usize>,
    pub texts_sharing_anchor_run: Option<usize>,
    /// The test positions' outcomes (for the paired bootstrap; not in `compare.json`).
    #[serde(skip)]
    pub test_hits: Option<TokenHits>,
}

/// The runs of one method at one target ε (one per seed), summarised over the evaluated ones.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SeedGroup {
    pub method: String,
    pub epsilon_target: f64,
    /// ε as printed.
    pub epsilon: String,
    /// Evaluated runs (seeds) in the group.
    pub runs: usize,
    /// Mean and 95 % interval over the seeds (Student's t); `None` for a single seed.
    pub accuracy: Option<Interval>,
    pub gap_closed: Option<Interval>,
    /// Non-private diagnostic.
    pub mauve: Option<Interval>,
    /// The group's accuracies, one per seed.
    pub accuracies: Vec<f64>,
}

/// A method against another at one ε (or against the public model), over seeds.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Contrast {
    /// ε as printed.
    pub epsilon: String,
    pub method: String,
    /// The other method, or `public` (the ε = 0 reference).
    pub against: String,
    /// accuracy(method) − accuracy(against): Welch's 95 % interval between two methods; the
    /// method's interval minus the reference's single value against the public model.
    pub difference: Interval,
    /// Whether the interval excludes 0.
    pub significant: bool,
    /// The contrast in words.
    pub statement: String,
}

/// The comparison of several run directories.
#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    /// Runs sorted by method, then ε; the references last.
    pub rows: Vec<ComparisonRow>,
    /// The runs grouped by method and ε (several seeds each), in the order of `rows`.
    pub groups: Vec<SeedGroup>,
    /// POPri against every other method and the public model, at each ε with seeds enough.
    pub contrasts: Vec<Contrast>,
    /// Each POPri run against each other run scored on the same eval tokens (same data and
    /// seed) at the same ε, and against the references: a paired bootstrap over the tokens.
    pub token_contrasts: Vec<Contrast>,
    /// Downstream accuracy of the ε = ∞ reference (trained on the real texts), if given.
    pub accuracy_real: Option<f64>,
    /// Downstream accuracy of the ε = 0 reference (the public model), if given.
    pub accuracy_public: Option<f64>,
    /// FID per round of each run, for the plot.
    #[serde(skip)]
    fid_per_round: Vec<(String, Vec<(f64, f64)>)>,
}

/// Reads every directory and builds the comparison. Fails on a directory that is not a run,
/// or when two directories hold the same reference (pass one ε = ∞ and one ε = 0).
pub fn compare_runs(dirs: &[PathBuf]) -> Result<Comparison> {
    if dirs.is_empty() {
        return Err(RunError::argument(
            "RUN_DIR",
            "none",
            "at least one run directory",
        ));
    }
    let records = dirs
        .iter()
        .map(|dir| RunRecord::load(dir))
        .collect::<Result<Vec<_>>>()?;
    let accuracy_real = reference_accuracy(&records, Reference::Real)?;
    let accuracy_public = reference_accuracy(&records, Reference::Public)?;
    let mut rows: Vec<ComparisonRow> = records
        .iter()
        .map(|record| row(record, accuracy_real, accuracy_public))
        .collect();
    rows.sort_by(|a, b| {
        sort_key(a)
            .partial_cmp(&sort_key(b))
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    let fid_per_round = records
        .iter()
        .filter(|record| record.reference().is_none())
        .map(|record| {
            let points = record
                .metrics
                .iter()
                .filter_map(|m| m.fid_nonprivate().map(|fid| (m.round as f64, fid)))
                .collect();
            (record.label(), points)
        })
        .collect();
    let groups = seed_groups(&rows);
    let contrasts = contrasts(&groups, accuracy_public);
    let token_contrasts = token_contrasts(&rows);
    Ok(Comparison {
        rows,
        groups,
        contrasts,
        token_contrasts,
        accuracy_real,
        accuracy_public,
        fid_per_round,
    })
}

/// The evaluated runs of each (method, target ε), in the order of `rows`.
fn seed_groups(rows: &[ComparisonRow]) -> Vec<SeedGroup> {
    let mut groups: Vec<SeedGroup> = Vec::new();
    let mut members: Vec<Vec<&ComparisonRow>> = Vec::new();
    for row in rows.iter().filter(|r| r.accuracy.is_some()) {
        let Some(epsilon_target) = row.epsilon_target else {
            continue;
        };
        let found = groups
            .iter()
            .position(|g| g.method == row.method && g.epsilon_target == epsilon_target);
        let index = found.unwrap_or_else(|| {
            groups.push(SeedGroup {
                method: row.method.clone(),
                epsilon_target,
                epsilon: row.epsilon.clone(),
                runs: 0,
                accuracy: None,
                gap_closed: None,
                mauve: None,
                accuracies: Vec::new(),
            });
            members.push(Vec::new());
            groups.len() - 1
        });
        members[index].push(row);
    }
    for (group, rows) in groups.iter_mut().zip(&members) {
        let values = |f: fn(&ComparisonRow) -> Option<f64>| -> Option<Vec<f64>> {
            rows.iter().map(|r| f(r)).collect()
        };
        group.runs = rows.len();
        group.accuracies = values(|r| r.accuracy).unwrap_or_default();
        group.accuracy = mean_interval(&group.accuracies, LEVEL);
        group.gap_closed = values(|r| r.gap_closed).and_then(|v| mean_interval(&v, LEVEL));
        group.mauve = values(|r| r.mauve).and_then(|v| mean_interval(&v, LEVEL));
    }
    groups
}

/// POPri's accuracy against each other method at the same ε (Welch) and against the public
/// model, wherever both sides have two or more seeds.
fn contrasts(groups: &[SeedGroup], public: Option<f64>) -> Vec<Contrast> {
    let mut out = Vec::new();
    for popri in groups.iter().filter(|g| g.method == "popri" && g.runs >= 2) {
        for other in groups
            .iter()
            .filter(|g| g.method != "popri" && g.epsilon_target == popri.epsilon_target)
        {
            if let Some(difference) =
                difference_interval(&popri.accuracies, &other.accuracies, LEVEL)
            {
                out.push(contrast(
                    &popri.epsilon,
                    &popri.method,
                    &other.method,
                    difference,
                    format!("Welch, {} vs {} seeds", popri.runs, other.runs),
                ));
            }
        }
        if let (Some(public), Some(accuracy)) = (public, popri.accuracy) {
            let difference = Interval {
                estimate: accuracy.estimate - public,
                low: accuracy.low - public,
                high: accuracy.high - public,
                level: accuracy.level,
            };
            out.push(contrast(
                &popri.epsilon,
                &popri.method,
                "public",
                difference,
                format!(
                    "{} seeds against the public model's single evaluation",
                    popri.runs
                ),
            ));
        }
    }
    out
}

/// Each POPri run against each other run at its ε, and each reference, scored on the same eval
/// tokens: a paired bootstrap of the accuracy difference over the tokens (the within-run
/// uncertainty of the evaluation itself; seeds add the training's).
fn token_contrasts(rows: &[ComparisonRow]) -> Vec<Contrast> {
    // Each row's outcomes decoded once: (row, the scored tokens' hash, the outcomes).
    let scored: Vec<(&ComparisonRow, &str, Vec<bool>)> = rows
        .iter()
        .filter_map(|row| {
            let hits = row.test_hits.as_ref()?;
            Some((row, hits.tokens_sha256.as_str(), hits.outcomes()?))
        })
        .collect();
    let mut out = Vec::new();
    for (popri, tokens, mine) in scored.iter().filter(|(r, ..)| r.method == "popri") {
        for (other, _, theirs) in scored.iter().filter(|(r, other_tokens, _)| {
            r.method != "popri"
                && other_tokens == tokens
                && (r.epsilon_target.is_none() || r.epsilon_target == popri.epsilon_target)
        }) {
            if let Some(difference) = paired_bootstrap(mine, theirs, LEVEL, RESAMPLES, 0) {
                let how = format!(
                    "paired bootstrap over {} eval tokens, {} against {}",
                    mine.len(),
                    popri.run_dir.display(),
                    other.run_dir.display()
                );
                out.push(contrast(
                    &popri.epsilon,
                    &popri.method,
                    &other.method,
                    difference,
                    how,
                ));
            }
        }
    }
    out
}

fn contrast(
    epsilon: &str,
    method: &str,
    against: &str,
    difference: Interval,
    how: String,
) -> Contrast {
    let significant = difference.excludes(0.0);
    let verdict = if !significant {
        "not significant: the interval contains 0, so this difference is within noise".to_string()
    } else if difference.estimate > 0.0 {
        format!("significant: {method} is better")
    } else {
        format!("significant: {against} is better")
    };
    let statement = format!(
        "At ε = {epsilon}, {method} − {against} = {} percentage points of accuracy (95 % CI, \
         {how}): {verdict}.",
        difference.format(100.0, 2)
    );
    Contrast {
        epsilon: epsilon.to_string(),
        method: method.to_string(),
        against: against.to_string(),
        difference,
        significant,
        statement,
    }
}

/// The accuracy of the one directory holding `reference` (`None` when there is none).
fn reference_accuracy(records: &[RunRecord], reference: Reference) -> Result<Option<f64>> {
    let mut found = records
        .iter()
        .filter(|record| record.reference() == Some(reference));
    let Some(first) = found.next() else {
        return Ok(None);
    };
    if let Some(second) = found.next() {
        return Err(RunError::argument(
            "RUN_DIR",
            format!(
                "{} and {} are both the `{}` reference",
                first.dir.display(),
                second.dir.display(),
                reference.as_str()
            ),
            "at most one ε = ∞ (real) and one ε = 0 (public) reference per comparison",
        ));
    }
    Ok(first.eval.as_ref().map(|eval| eval.downstream.accuracy))
}

fn row(record: &RunRecord, real: Option<f64>, public: Option<f64>) -> ComparisonRow {
    let eval = record.eval.as_ref();
    let accuracy = eval.map(|e| e.downstream.accuracy);
    let distribution = eval.and_then(|e| e.distribution.as_ref());
    let memorisation = eval.and_then(|e| e.memorisation_nonprivate.as_ref());
    let spent = record.epsilon_spent();
    ComparisonRow {
        run_dir: record.dir.clone(),
        name: record.name().to_string(),
        method: record.method(),
        epsilon_target: record.epsilon_target(),
        epsilon: record.epsilon_text(),
        epsilon_rdp: spent.map(|s| s.0),
        epsilon_pld: spent.map(|s| s.1),
        evaluated: eval.is_some(),
        accuracy,
        gap_closed: gap_closed(accuracy, real, public),
        fid: distribution.map(|d| d.fid),
        mauve: distribution.map(|d| d.mauve),
        precision: distribution.map(|d| d.precision),
        recall: distribution.map(|d| d.recall),
        longest_shared_words: memorisation.map(MemorisationResult::longest_run),
        texts_sharing_anchor_run: memorisation.map(|m| m.texts_sharing_anchor_run),
        test_hits: eval.and_then(|e| e.downstream.test_hits.clone()),
    }
}

/// (acc − acc₀) / (acc∞ − acc₀); `None` without both references or when they are equal.
pub fn gap_closed(accuracy: Option<f64>, real: Option<f64>, public: Option<f64>) -> Option<f64> {
    let (accuracy, real, public) = (accuracy?, real?, public?);
    let gap = real - public;
    (gap.abs() > 1e-12).then(|| (accuracy - public) / gap)
}

/// Methods in a fixed order (POPri first, the references last), then ε.
fn sort_key(row: &ComparisonRow) -> (u8, String, f64) {
    let rank = match row.method.as_str() {
        "popri" => 0,
        "pe" => 1,
        "pe-sft" => 2,
        "dp-fedavg" => 3,
        "public" => 5,
        "real" => 6,
        _ => 4,
    };
    (
        rank,
        row.method.clone(),
        row.epsilon_target.unwrap_or(f64::INFINITY),
    )
}

impl Comparison {
    /// The table (Markdown).
    pub fn table_markdown(&self) -> String {
        let mut doc = Document::new("");
        doc.push(self.table());
        let markdown = doc.to_markdown();
        // Drop the empty title line.
        markdown
            .split_once("\n\n")
            .map_or(markdown.clone(), |(_, rest)| rest.to_string())
    }

    fn table(&self) -> Block {
        let header = [
            "method",
            "ε",
            "ε spent (RDP / PLD)",
            "accuracy",
            "gap closed",
            "FID †",
            "MAUVE †",
            "precision †",
            "recall †",
            "longest shared run † (texts sharing ≥ {anchor} words)",
            "run",
        ]
        .map(|title| title.replace("{anchor}", &ANCHOR_WORDS.to_string()))
        .to_vec();
        let number = |v: Option<f64>| v.map_or("–".to_string(), |v| format!("{v:.4}"));
        let rows = self
            .rows
            .iter()
            .map(|row| {
                let spent = match (row.epsilon_rdp, row.epsilon_pld) {
                    (Some(rdp), Some(pld)) => format!("{rdp:.3} / {pld:.3}"),
                    _ => "–".to_string(),
                };
                let accuracy = if row.evaluated {
                    number(row.accuracy)
                } else {
                    NOT_EVALUATED.replace("DIR", &row.run_dir.display().to_string())
                };
                let gap = row
                    .gap_closed
                    .map_or("–".to_string(), |g| format!("{:.1} %", 100.0 * g));
                vec![
                    row.method.clone(),
                    row.epsilon.clone(),
                    spent,
                    accuracy,
                    gap,
                    number(row.fid),
                    number(row.mauve),
                    number(row.precision),
                    number(row.recall),
                    match (row.longest_shared_words, row.texts_sharing_anchor_run) {
                        (Some(longest), Some(texts)) => {
                            format!("{longest} ({texts})")
                        }
                        _ => "–".to_string(),
                    },
                    row.run_dir.display().to_string(),
                ]
            })
            .collect();
        Block::Table(header, rows)
    }

    /// The groups of several seeds, mean [95 % CI]; `None` when every group has one run.
    fn seed_table(&self) -> Option<Block> {
        if self.groups.iter().all(|g| g.runs < 2) {
            return None;
        }
        let header = [
            "method",
            "ε",
            "seeds",
            "accuracy (%)",
            "gap closed (%)",
            "MAUVE †",
        ]
        .map(String::from)
        .to_vec();
        let cell = |v: Option<Interval>, scale: f64, digits: usize| {
            v.map_or("–".to_string(), |v| v.format(scale, digits))
        };
        let rows = self
            .groups
            .iter()
            .map(|g| {
                vec![
                    g.method.clone(),
                    g.epsilon.clone(),
                    g.runs.to_string(),
                    cell(g.accuracy, 100.0, 2),
                    cell(g.gap_closed, 100.0, 1),
                    cell(g.mauve, 1.0, 3),
                ]
            })
            .collect();
        Some(Block::Table(header, rows))
    }

    /// The whole comparison as a document: the table, notes and the two plots.
    fn document(&self) -> Result<Document> {
        let mut doc = Document::new("fedsyn comparison");
        doc.push(self.table());
        if let Some(seeds) = self.seed_table() {
            doc.push(Block::Paragraph(
                "Across seeds: mean [95 % confidence interval] of the runs of each method and \
                 ε (Student's t over seeds)."
                    .to_string(),
            ));
            doc.push(seeds);
            if !self.contrasts.is_empty() {
                doc.push(Block::List(
                    self.contrasts.iter().map(|c| c.statement.clone()).collect(),
                ));
            }
        }
        if !self.token_contrasts.is_empty() {
            doc.push(Block::Paragraph(
                "Run against run, on the same eval tokens (a paired bootstrap over the tokens: \
                 the uncertainty of the evaluation, not of training; several seeds measure \
                 that):"
                    .to_string(),
            ));
            doc.push(Block::List(
                self.token_contrasts
                    .iter()
                    .map(|c| c.statement.clone())
                    .collect(),
            ));
        }
        let mut notes = vec![
            "accuracy: top-1 next-token accuracy of the downstream model on the private eval \
             texts (`fedsyn eval`)."
                .to_string(),
            "† non-private diagnostics: they read the private eval set without noise.".to_string(),
        ];
        match (self.accuracy_real, self.accuracy_public) {
            (Some(real), Some(public)) => notes.push(format!(
                "gap closed = (accuracy − {public:.4}) / ({real:.4} − {public:.4}): the share of \
                 the distance from the public model (ε = 0) to training on the real texts \
                 (ε = ∞) that the run covers."
            )),
            _ => notes.push(
                "gap closed needs both references: add the directories written by `fedsyn eval \
                 --reference real` and `--reference public`."
                    .to_string(),
            ),
        }
        doc.push(Block::List(notes));
        let accuracy = self.accuracy_chart();
        if accuracy.has_data() {
            doc.push(Block::Plot {
                file: ACCURACY_SVG.to_string(),
                svg: accuracy.to_svg()?,
                caption: "Downstream accuracy by method and target ε".to_string(),
            });
        }
        let fid = self.fid_chart();
        if fid.has_data() {
            doc.push(Block::Plot {
                file: FID_ROUNDS_SVG.to_string(),
                svg: fid.to_svg()?,
                caption: "FID of each round's samples to the private eval set (non-private \
                          diagnostic)"
                    .to_string(),
            });
        }
        Ok(doc)
    }

    fn accuracy_chart(&self) -> LineChart {
        let mut chart = LineChart::new(
            "Downstream accuracy by method and ε",
            "target ε",
            "accuracy",
        );
        let mut methods: Vec<&str> = Vec::new();
        for row in &self.rows {
            if row.epsilon_target.is_some() && !methods.contains(&row.method.as_str()) {
                methods.push(&row.method);
            }
        }
        let epsilons = || self.rows.iter().filter_map(|r| r.epsilon_target);
        let x0 = epsilons().fold(f64::INFINITY, f64::min).min(0.0);
        let x1 = epsilons().fold(0.0, f64::max).max(1.0);
        // With several seeds: each method's mean over seeds with its 95 % interval as error
        // bars; otherwise each run.
        let seeded = self.groups.iter().any(|g| g.runs >= 2);
        for method in methods {
            if seeded {
                let mut groups: Vec<&SeedGroup> =
                    self.groups.iter().filter(|g| g.method == method).collect();
                groups.sort_by(|a, b| a.epsilon_target.total_cmp(&b.epsilon_target));
                let points = groups
                    .iter()
                    .map(|g| {
                        let mean = g.accuracies.iter().sum::<f64>() / g.accuracies.len() as f64;
                        (g.epsilon_target, mean)
                    })
                    .collect();
                let bars = groups
                    .iter()
                    .filter_map(|g| Some((g.epsilon_target, g.accuracy?.low, g.accuracy?.high)))
                    .collect();
                chart = chart.line(Line::data(method, points).with_error_bars(bars));
                continue;
            }
            let mut points: Vec<(f64, f64)> = self
                .rows
                .iter()
                .filter(|r| r.method == method)
                .filter_map(|r| Some((r.epsilon_target?, r.accuracy?)))
                .collect();
            points.sort_by(|a, b| a.0.total_cmp(&b.0));
            chart = chart.line(Line::data(method, points));
        }
        if let Some(real) = self.accuracy_real {
            chart = chart.line(Line::horizontal("ε = ∞ (real texts)", real, x0, x1));
        }
        if let Some(public) = self.accuracy_public {
            chart = chart.line(Line::horizontal("ε = 0 (public model)", public, x0, x1));
        }
        chart
    }

    fn fid_chart(&self) -> LineChart {
        let mut chart = LineChart::new(
            "FID per round (non-private diagnostic)",
            "round",
            "FID to the private eval set",
        )
        .integer_x();
        for (label, points) in &self.fid_per_round {
            chart = chart.line(Line::data(label.clone(), points.clone()));
        }
        chart
    }

    /// Writes `compare.md`, `compare.json` and the plots into `out` (created if needed);
    /// returns the files written.
    pub fn write(&self, out: &Path) -> Result<Vec<PathBuf>> {
        std::fs::create_dir_all(out).map_err(|e| RunError::io(out, e))?;
        let doc = self.document()?;
        let mut written = Vec::new();
        let mut put = |name: &str, bytes: &[u8]| -> Result<()> {
            let path = out.join(name);
            write_atomic(&path, bytes)?;
            written.push(path);
            Ok(())
        };
        put(COMPARE_MD, doc.to_markdown().as_bytes())?;
        let json = serde_json::to_string_pretty(self)
            .map_err(|e| RunError::argument("comparison", "(unserialisable)", e.to_string()))?;
        put(COMPARE_JSON, json.as_bytes())?;
        for (file, svg) in doc.plots() {
            put(file, svg.as_bytes())?;
        }
        Ok(written)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(method: &str, epsilon: Option<f64>, accuracy: f64) -> ComparisonRow {
        ComparisonRow {
            run_dir: PathBuf::from(format!("runs/{method}-{accuracy}")),
            name: method.to_string(),
            method: method.to_string(),
            epsilon_target: epsilon,
            epsilon: epsilon.map_or("0".to_string(), |e| format!("{e}")),
            epsilon_rdp: epsilon,
            epsilon_pld: epsilon,
            evaluated: true,
            accuracy: Some(accuracy),
            gap_closed: gap_closed(Some(accuracy), Some(0.40), Some(0.20)),
            fid: None,
            mauve: Some(accuracy * 2.0),
            precision: None,
            recall: None,
            longest_shared_words: None,
            texts_sharing_anchor_run: None,
            test_hits: None,
        }
    }

    #[test]
    fn runs_scored_on_the_same_tokens_are_compared_by_a_paired_bootstrap() {
        let tokens = vec![vec![1u32, 2, 3, 4, 5]; 100];
        let other_tokens = vec![vec![9u32, 8, 7]; 100];
        // 400 positions: POPri right on 60 %, PE on the same ones but 40 more wrong.
        let popri_hits: Vec<bool> = (0..400).map(|i| i % 5 < 3).collect();
        let pe_hits: Vec<bool> = (0..400).map(|i| i % 5 < 3 && i % 10 != 0).collect();
        let mut popri = row("popri", Some(1.0), 0.6);
        popri.test_hits = Some(TokenHits::new(&tokens, &popri_hits));
        let mut pe = row("pe", Some(1.0), 0.5);
        pe.test_hits = Some(TokenHits::new(&tokens, &pe_hits));
        let mut public = row("public", None, 0.6);
        public.test_hits = Some(TokenHits::new(&tokens, &popri_hits));
        // Scored on other tokens, or at another ε: never paired.
        let mut elsewhere = row("pe", Some(1.0), 0.5);
        elsewhere.test_hits = Some(TokenHits::new(&other_tokens, &pe_hits[..200]));
        let mut later = row("pe", Some(7.0), 0.5);
        later.test_hits = Some(TokenHits::new(&tokens, &pe_hits));
        let contrasts = token_contrasts(&[popri, pe, public, elsewhere, later]);
        let verdicts: Vec<(&str, bool)> = contrasts
            .iter()
            .map(|c| (c.against.as_str(), c.significant))
            .collect();
        assert_eq!(verdicts, [("pe", true), ("public", false)]);
        assert!((contrasts[0].difference.estimate - 0.1).abs() < 1e-12);
        assert!(contrasts[0]
            .statement
            .contains("paired bootstrap over 400 eval tokens"));
        assert!(contrasts[1].statement.contains("within noise"));
    }

    #[test]
    fn seeds_are_grouped_and_popri_is_contrasted_with_welch_intervals() {
        let mut rows = Vec::new();
        for accuracy in [0.30, 0.32, 0.31] {
            rows.push(row("popri", Some(1.0), accuracy));
        }
        for accuracy in [0.25, 0.26, 0.24] {
            rows.push(row("pe", Some(1.0), accuracy));
        }
        for accuracy in [0.27, 0.35] {
            rows.push(row("dp-fedavg", Some(1.0), accuracy));
        }
        rows.push(row("popri", Some(7.0), 0.33));
        let groups = seed_groups(&rows);
        let shape: Vec<(&str, f64, usize)> = groups
            .iter()
            .map(|g| (g.method.as_str(), g.epsilon_target, g.runs))
            .collect();
        assert_eq!(
            shape,
            [
                ("popri", 1.0, 3),
                ("pe", 1.0, 3),
                ("dp-fedavg", 1.0, 2),
                ("popri", 7.0, 1)
            ]
        );
        assert_eq!(
            groups[0].accuracy,
            mean_interval(&[0.30, 0.32, 0.31], LEVEL)
        );
        assert!(groups[3].accuracy.is_none(), "one seed has no interval");
        let gap = groups[0].gap_closed.unwrap();
        assert!((gap.estimate - 0.55).abs() < 1e-12, "{gap:?}");

        let contrasts = contrasts(&groups, Some(0.20));
        let verdicts: Vec<(&str, bool)> = contrasts
            .iter()
            .map(|c| (c.against.as_str(), c.significant))
            .collect();
        assert_eq!(
            verdicts,
            [("pe", true), ("dp-fedavg", false), ("public", true)]
        );
        assert!(
            contrasts[1].statement.contains("not significant"),
            "{}",
            contrasts[1].statement
        );
        assert!(
            contrasts[0].statement.contains("popri is better"),
            "{}",
            contrasts[0].statement
        );
        let comparison = Comparison {
            rows,
            groups,
            contrasts,
            token_contrasts: Vec::new(),
            accuracy_real: Some(0.40),
            accuracy_public: Some(0.20),
            fid_per_round: Vec::new(),
        };
        let markdown = comparison.document().unwrap().to_markdown();
        assert!(markdown.contains("95 % confidence interval"), "{markdown}");
        assert!(
            markdown.contains("| popri | 1 | 3 | 31.00 \\[28.52, 33.48\\]"),
            "{markdown}"
        );
        assert!(markdown.contains("within noise"), "{markdown}");
        let svg = comparison.accuracy_chart().to_svg().unwrap();
        assert!(svg.contains("<polyline") || svg.contains("<path"), "{svg}");
    }

    #[test]
    fn gap_closed_is_the_share_of_the_reference_gap() {
        let half = gap_closed(Some(0.3), Some(0.4), Some(0.2)).unwrap();
        assert!((half - 0.5).abs() < 1e-12, "{half}");
        assert_eq!(gap_closed(Some(0.4), Some(0.4), Some(0.2)), Some(1.0));
        assert_eq!(gap_closed(Some(0.2), Some(0.4), Some(0.2)), Some(0.0));
        assert_eq!(gap_closed(Some(0.3), None, Some(0.2)), None);
        assert_eq!(gap_closed(Some(0.3), Some(0.2), Some(0.2)), None);
        assert_eq!(gap_closed(None, Some(0.4), Some(0.2)), None);
    }
}
