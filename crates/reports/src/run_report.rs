//! `fedsyn report RUN_DIR`: one run as `report.md` (plots as SVG files next to it) and a
//! self-contained `report.html` (the same content, plots inline).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::chart::{histogram_svg, Line, LineChart};
use crate::document::{Block, Document};
use crate::record::{format_number, RunRecord};
use runs::records::EvalReport;
use runs::records::ANCHOR_WORDS;
use runs::run_dir::{write_atomic, RoundMetrics};
use runs::{Result, RunError};

/// The Markdown report, in the run directory.
pub const REPORT_MD: &str = "report.md";
/// The HTML report, in the run directory.
pub const REPORT_HTML: &str = "report.html";
/// The folder of the Markdown report's plots, in the run directory.
pub const REPORT_PLOTS: &str = "report-plots";

/// What the report shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReportOptions {
    /// How many synthetic texts (the first of `synthetic.jsonl`) to show.
    pub sample_texts: usize,
    /// At most this many noisy-score histograms (rounds spread evenly, first and last kept).
    pub max_histograms: usize,
}

impl Default for ReportOptions {
    fn default() -> Self {
        ReportOptions {
            sample_texts: 10,
            max_histograms: 12,
        }
    }
}

/// The files [`write_run_report`] wrote.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReportFiles {
    /// `RUN_DIR/report.md`.
    pub markdown: PathBuf,
    /// `RUN_DIR/report.html`.
    pub html: PathBuf,
    /// The SVG files the Markdown links to (the HTML inlines the same plots).
    pub plots: Vec<PathBuf>,
}

/// Writes `report.md`, `report.html` and `report-plots/*.svg` into the run directory `dir`.
pub fn write_run_report(dir: &Path, options: &ReportOptions) -> Result<ReportFiles> {
    let record = RunRecord::load(dir)?;
    let doc = build(&record, options)?;
    let plots_dir = dir.join(REPORT_PLOTS);
    std::fs::create_dir_all(&plots_dir).map_err(|e| RunError::io(&plots_dir, e))?;
    let mut plots = Vec::new();
    for (file, svg) in doc.plots() {
        let path = dir.join(file);
        write_atomic(&path, svg.as_bytes())?;
        plots.push(path);
    }
    let markdown = dir.join(REPORT_MD);
    write_atomic(&markdown, doc.to_markdown().as_bytes())?;
    let html = dir.join(REPORT_HTML);
    write_atomic(&html, doc.to_html().as_bytes())?;
    Ok(ReportFiles {
        markdown,
        html,
        plots,
    })
}

/// The marker of non-private diagnostics in tables and captions.
const NONPRIVATE: &str = "†";

fn build(record: &RunRecord, options: &ReportOptions) -> Result<Document> {
    let mut doc = Document::new(format!("fedsyn run report: {}", record.name()));
    overview(record, &mut doc);
    rounds(record, &mut doc)?;
    histograms(&record.metrics, options.max_histograms, &mut doc)?;
    evaluation(record.eval.as_ref(), &record.dir, &mut doc)?;
    samples(record, options.sample_texts, &mut doc)?;
    statement(record, &mut doc)?;
    Ok(doc)
}

fn overview(record: &RunRecord, doc: &mut Document) {
    doc.push(Block::Heading(2, "Overview".into()));
    let mut items = vec![
        format!("run directory: {}", record.dir.display()),
        format!("method: {}", record.method()),
    ];
    if let Some(target) = record.epsilon_target() {
        items.push(format!(
            "target: ε = {} at δ = {:e}",
            format_number(target),
            record.delta()
        ));
    }
    if let Some((rdp, pld)) = record.epsilon_spent() {
        items.push(format!(
            "ε spent: {rdp:.4} (RDP accountant), {pld:.4} (PLD accountant)"
        ));
    }
    match &record.summary {
        Some(summary) => {
            items.push(format!(
                "rounds: {} ({}), noise multiplier σ = {:.4}",
                summary.rounds,
                match summary.stop_reason {
                    runs::records::StopReason::RoundsCompleted => "all planned rounds ran",
                    runs::records::StopReason::BudgetExhausted =>
                        "stopped: the next round would have exceeded the target ε",
                    runs::records::StopReason::Stopped => "stopped from outside",
                },
                summary.sigma
            ));
            items.push(format!("synthetic samples: {}", summary.synthetic_samples));
        }
        None => items.push(format!(
            "no summary.json: the run has not finished ({} round(s) logged)",
            record.metrics.len()
        )),
    }
    items.push(format!(
        "{NONPRIVATE} marks non-private diagnostics: they read private data without noise \
         (simulation only) and are not covered by the privacy guarantee."
    ));
    doc.push(Block::List(items));
}

/// A per-round quantity: header, whether it is a non-private diagnostic, and its value.
struct Column {
    header: &'static str,
    /// File name of its plot (without `.svg`).
    file: &'static str,
    nonprivate: bool,
    value: fn(&RoundMetrics) -> Option<f64>,
}

const OPTIONAL_COLUMNS: &[Column] = &[
    Column {
        header: "FID",
        file: "fid",
        nonprivate: true,
        value: RoundMetrics::fid_nonprivate,
    },
    Column {
        header: "train loss (DPO or SFT)",
        file: "train-loss",
        nonprivate: false,
        value: |m| m.train_loss,
    },
    Column {
        header: "reward accuracy",
        file: "reward-accuracy",
        nonprivate: false,
        value: |m| m.reward_accuracy,
    },
    Column {
        header: "local loss",
        file: "local-loss",
        nonprivate: true,
        value: |m| m.nonprivate_or_default().local_loss_nonprivate,
    },
    Column {
        header: "clipped fraction",
        file: "clipped-fraction",
        nonprivate: true,
        value: |m| m.nonprivate_or_default().clipped_fraction_nonprivate,
    },
    Column {
        header: "signal/noise",
        file: "signal-to-noise",
        nonprivate: true,
        value: |m| m.nonprivate_or_default().signal_to_noise_nonprivate,
    },
    Column {
        header: "preference agreement",
        file: "preference-agreement",
        nonprivate: true,
        value: |m| m.nonprivate_or_default().preference_agreement_nonprivate,
    },
    Column {
        header: "contributing clients",
        file: "contributing-clients",
        nonprivate: true,
        value: |m| {
            m.nonprivate_or_default()
                .clients_nonprivate
                .map(|n| n as f64)
        },
    },
];

impl Column {
    fn title(&self) -> String {
        if self.nonprivate {
            format!("{} {NONPRIVATE}", self.header)
        } else {
            self.header.to_string()
        }
    }

    fn points(&self, metrics: &[RoundMetrics]) -> Vec<(f64, f64)> {
        metrics
            .iter()
            .filter_map(|m| (self.value)(m).map(|v| (m.round as f64, v)))
            .collect()
    }
}

fn rounds(record: &RunRecord, doc: &mut Document) -> Result<()> {
    let metrics = &record.metrics;
    doc.push(Block::Heading(2, "Rounds".into()));
    if metrics.is_empty() {
        doc.push(Block::Paragraph(
            "No rounds logged (metrics.jsonl is missing or empty).".into(),
        ));
        return Ok(());
    }
    let last = metrics.last().map_or(1.0, |m| m.round.max(1) as f64);
    let epsilon = |f: fn(&RoundMetrics) -> f64| -> Vec<(f64, f64)> {
        metrics.iter().map(|m| (m.round as f64, f(m))).collect()
    };
    let mut chart = LineChart::new("ε spent after each round", "round", "ε")
        .integer_x()
        .line(Line::data("RDP", epsilon(|m| m.epsilon_rdp)))
        .line(Line::data("PLD", epsilon(|m| m.epsilon_pld)));
    if let Some(target) = record.epsilon_target() {
        chart = chart.line(Line::horizontal("target", target, 0.0, last));
    }
    doc.push(Block::Plot {
        file: format!("{REPORT_PLOTS}/epsilon.svg"),
        svg: chart.to_svg()?,
        caption: "ε spent after each round under the RDP and PLD accountants, against the target"
            .into(),
    });

    let present: Vec<&Column> = OPTIONAL_COLUMNS
        .iter()
        .filter(|c| metrics.iter().any(|m| (c.value)(m).is_some()))
        .collect();
    let mut header: Vec<String> = ["round", "ε RDP", "ε PLD", "cohort", "σ"]
        .map(String::from)
        .to_vec();
    header.extend(present.iter().map(|c| c.title()));
    let rows = metrics
        .iter()
        .map(|m| {
            let mut row = vec![
                m.round.to_string(),
                format!("{:.4}", m.epsilon_rdp),
                format!("{:.4}", m.epsilon_pld),
                m.cohort.map_or("private".into(), |n| n.to_string()),
                format!("{:.4}", m.sigma),
            ];
            row.extend(
                present
                    .iter()
                    .map(|c| (c.value)(m).map_or("–".into(), |v| format!("{v:.4}"))),
            );
            row
        })
        .collect();
    doc.push(Block::Table(header, rows));

    for column in &present {
        let chart = LineChart::new(
            format!("{} per round", column.title()),
            "round",
            column.header,
        )
        .integer_x()
        .line(Line::data(column.header, column.points(metrics)));
        let caption = if column.nonprivate {
            format!("{} per round (non-private diagnostic)", column.header)
        } else {
            format!("{} per round", column.header)
        };
        doc.push(Block::Plot {
            file: format!("{REPORT_PLOTS}/{}.svg", column.file),
            svg: chart.to_svg()?,
            caption,
        });
    }
    Ok(())
}

fn histograms(metrics: &[RoundMetrics], most: usize, doc: &mut Document) -> Result<()> {
    let with: Vec<&RoundMetrics> = metrics
        .iter()
        .filter(|m| m.noisy_score_histogram.is_some())
        .collect();
    if with.is_empty() || most == 0 {
        return Ok(());
    }
    doc.push(Block::Heading(2, "Noisy scores per round".into()));
    let chosen = spread(with.len(), most);
    doc.push(Block::Paragraph(format!(
        "Histograms of the released (noised) scores of {} of {} round(s). These values are \
         covered by the privacy guarantee: they are drawn after the round's privacy cost was \
         committed to the ledger.",
        chosen.len(),
        with.len()
    )));
    for index in chosen {
        let m = with[index];
        let Some(histogram) = &m.noisy_score_histogram else {
            continue;
        };
        let title = format!("round {}", m.round);
        doc.push(Block::Plot {
            file: format!("{REPORT_PLOTS}/noisy-scores-round-{}.svg", m.round),
            svg: histogram_svg(&title, "noisy score", histogram)?,
            caption: format!("Noisy scores of round {}", m.round),
        });
    }
    Ok(())
}

/// Up to `most` indices of `0..n`, evenly spread, always with the first and the last.
fn spread(n: usize, most: usize) -> Vec<usize> {
    if n <= most {
        return (0..n).collect();
    }
    if most == 1 {
        return vec![n - 1];
    }
    let mut picked: Vec<usize> = (0..most)
        .map(|i| (i as f64 * (n - 1) as f64 / (most - 1) as f64).round() as usize)
        .collect();
    picked.dedup();
    picked
}

fn evaluation(eval: Option<&EvalReport>, dir: &Path, doc: &mut Document) -> Result<()> {
    doc.push(Block::Heading(2, "Evaluation".into()));
    let Some(eval) = eval else {
        doc.push(Block::Paragraph(format!(
            "Not evaluated: run `fedsyn eval {}` for the downstream accuracy and the \
             distribution metrics, then this report again.",
            dir.display()
        )));
        return Ok(());
    };
    let d = &eval.downstream;
    let mut items = vec![
        format!(
            "downstream accuracy (top-1 next token, private eval texts): {:.4} over {} tokens",
            d.accuracy, d.eval_tokens
        ),
        format!(
            "downstream model: {}, trained on {} text(s), epoch {} chosen on the validation half",
            d.model, d.train_texts, d.chosen_epoch
        ),
    ];
    if let Some(dist) = &eval.distribution {
        items.push(format!(
            "{NONPRIVATE} distribution metrics of {} synthetic vs {} private eval texts: FID \
             {:.4}, MAUVE {:.4}, precision {:.4}, recall {:.4}",
            dist.synthetic_texts,
            dist.eval_texts,
            dist.fid,
            dist.mauve,
            dist.precision,
            dist.recall
        ));
    }
    if let Some(m) = &eval.memorisation_nonprivate {
        items.push(format!(
            "{NONPRIVATE} memorisation: of {} synthetic texts, {} share a run of at least {} \
             words with one of the {} private training texts (longest {}, median {}); the \
             highest cosine to a private training text is {:.4}",
            m.synthetic_texts,
            m.texts_sharing_anchor_run,
            ANCHOR_WORDS,
            m.private_texts,
            m.longest_run(),
            m.median_run(),
            m.highest_cosine()
        ));
    }
    doc.push(Block::List(items));
    if let Some(m) = &eval.memorisation_nonprivate {
        let plots = [
            (
                "memorisation-shared-words",
                "Longest word run each synthetic text shares with a private text (nonprivate)",
                "words",
                &m.shared_words_histogram,
                "the longest run of consecutive words it shares with any private training \
                 text (bins of two words; the last holds 32 and more)",
            ),
            (
                "memorisation-cosine",
                "Cosine to the nearest private text (nonprivate)",
                "cosine",
                &m.cosine_histogram,
                "the embedding cosine to its nearest private training text",
            ),
        ];
        for (file, title, x_label, histogram, what) in plots {
            doc.push(Block::Plot {
                file: format!("{REPORT_PLOTS}/{file}.svg"),
                svg: histogram_svg(title, x_label, histogram)?,
                caption: format!("{NONPRIVATE} For each synthetic text, {what}"),
            });
        }
    }
    let validation: Vec<(f64, f64)> = d
        .validation
        .iter()
        .map(|v| (v.epoch as f64, v.accuracy))
        .collect();
    if !validation.is_empty() {
        let chart = LineChart::new(
            "Downstream validation accuracy by epoch",
            "epoch",
            "accuracy",
        )
        .integer_x()
        .line(Line::data("validation half", validation));
        doc.push(Block::Plot {
            file: format!("{REPORT_PLOTS}/validation.svg"),
            svg: chart.to_svg()?,
            caption: "Validation accuracy of the downstream model after each epoch".into(),
        });
    }
    Ok(())
}

fn samples(record: &RunRecord, count: usize, doc: &mut Document) -> Result<()> {
    doc.push(Block::Heading(2, "Sample synthetic texts".into()));
    let path = record.dir.join("synthetic.jsonl");
    if !path.is_file() {
        doc.push(Block::Paragraph(
            "No synthetic.jsonl (DP-FedAvg trains a model, in model/, instead of writing texts; \
             other methods write it at the end of the run)."
                .into(),
        ));
        return Ok(());
    }
    let texts = first_texts(&path, count)?;
    doc.push(Block::Paragraph(format!(
        "The first {} text(s) of synthetic.jsonl.",
        texts.len()
    )));
    for text in texts {
        doc.push(Block::Verbatim(text));
    }
    Ok(())
}

/// The `text` of the first `count` lines of a `synthetic.jsonl`.
fn first_texts(path: &Path, count: usize) -> Result<Vec<String>> {
    #[derive(Deserialize)]
    struct Line {
        text: String,
    }
    let content = std::fs::read_to_string(path).map_err(|e| RunError::io(path, e))?;
    content
        .lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .take(count)
        .map(|(i, line)| {
            serde_json::from_str::<Line>(line)
                .map(|l| l.text)
                .map_err(|e| RunError::Data {
                    path: path.to_path_buf(),
                    line: i + 1,
                    message: format!("expected {{\"text\": …}} ({e})"),
                })
        })
        .collect()
}

fn statement(record: &RunRecord, doc: &mut Document) -> Result<()> {
    doc.push(Block::Heading(2, "Privacy statement".into()));
    let path = record.dir.join("privacy-statement.md");
    if !path.is_file() {
        doc.push(Block::Paragraph(
            "No privacy-statement.md: the run has not finished.".into(),
        ));
        return Ok(());
    }
    let text = std::fs::read_to_string(&path).map_err(|e| RunError::io(&path, e))?;
    doc.push(Block::Markdown(demote_headings(&text)));
    Ok(())
}

/// The statement without its own title (the section has one), other headings one level down
/// so that they nest under "Privacy statement".
fn demote_headings(markdown: &str) -> String {
    let mut lines = markdown.lines().peekable();
    if lines.peek().is_some_and(|line| line.starts_with("# ")) {
        lines.next();
    }
    lines
        .map(|line| {
            if line.starts_with('#') {
                format!("##{line}")
            } else {
                line.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
        .trim_start()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_keeps_first_and_last() {
        assert_eq!(spread(3, 12), vec![0, 1, 2]);
        assert_eq!(spread(20, 3), vec![0, 10, 19]);
        assert_eq!(spread(20, 1), vec![19]);
    }

    #[test]
    fn statement_headings_nest_under_the_section() {
        assert_eq!(
            demote_headings("# Privacy statement\n\ntext\n## Details"),
            "text\n#### Details"
        );
    }
}
