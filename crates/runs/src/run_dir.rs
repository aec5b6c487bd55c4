//! The run directory: everything a run writes, laid out so that a crash at any point leaves
//! files a resumed run can trust.
//!
//! ```text
//! <run>/config.toml                 the resolved configuration
//! <run>/ledger.json                 every release that spent privacy budget
//! <run>/metrics.jsonl               one RoundMetrics per line
//! <run>/checkpoints/round-0003/     complete checkpoints only (adapter/, trainer/, state.json)
//! <run>/synthetic.jsonl             the final synthetic data
//! <run>/privacy-statement.{md,json}
//! ```
//!
//! Whole files are replaced atomically ([`write_atomic`]); metrics lines are appended and
//! synced one by one; a checkpoint is written under a temporary name and renamed into place
//! only when complete, so [`RunDir::latest_checkpoint`] never returns a torn one.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use privacy_accounting::Ledger;
use serde::{Deserialize, Serialize};

use crate::config::RunConfig;
use crate::error::{Result, RunError};
pub use dp_mechanics::NonPrivate;

const CONFIG: &str = "config.toml";
const LEDGER: &str = "ledger.json";
const METRICS: &str = "metrics.jsonl";
const CHECKPOINTS: &str = "checkpoints";
const SYNTHETIC: &str = "synthetic.jsonl";
const ROUNDS_PLOT: &str = "rounds.svg";
const STATEMENT_MD: &str = "privacy-statement.md";
const STATEMENT_JSON: &str = "privacy-statement.json";
const CHECKPOINT_PREFIX: &str = "round-";
const PARTIAL_SUFFIX: &str = ".partial";
/// Private state (mode 0700): never a released output.
const PRIVATE_DIR: &str = "private";
/// The cohort of the round in progress, so that a resumed run takes it up instead of drawing
/// another (a cohort is drawn once).
const OPEN_COHORT: &str = "open-cohort.json";

/// Seconds spent in each phase of a round.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct PhaseSeconds {
    /// Sampling the candidates.
    pub generate: f64,
    /// Embedding the candidates.
    pub embed: f64,
    /// Client scoring.
    pub score: f64,
    /// Summing, clipping bookkeeping and noising.
    pub aggregate: f64,
    /// Preference optimisation.
    pub dpo: f64,
    /// Diagnostics.
    pub eval: f64,
}

/// One line of `metrics.jsonl`. The schema is stable: every released field is always present
/// (`null` when not computed).
///
/// Every top-level field is either public configuration, ε from the ledger, or a function of
/// released (noisy) values and public data, so it is covered by the run's guarantee.
/// Diagnostics computed from un-noised private data live in `nonprivate`, whose every field ends
/// in `_nonprivate`: only a simulation can make one (see [`NonPrivate`]), a served run's rows
/// never have it, and reports label it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RoundMetrics {
    /// The round (0-based).
    pub round: u64,
    /// Wall-clock seconds of the round.
    pub wall_seconds: f64,
    /// ε spent after this round, RDP accountant.
    pub epsilon_rdp: f64,
    /// ε spent after this round, PLD accountant.
    pub epsilon_pld: f64,
    /// δ of both ε.
    pub delta: f64,
    /// Noise multiplier σ.
    pub sigma: f64,
    /// Client sampling rate (1 for full participation, m/n for cohorts).
    pub q: f64,
    /// Clip bound C.
    pub clip: f64,
    /// Clients sampled when that number is public (full participation: everyone; a fixed
    /// cohort: m); `None` under Poisson sampling, whose cohort size is private.
    #[serde(default)]
    pub cohort: Option<u64>,
    /// Standard deviation of the noise added to each coordinate (σ·Δ, Δ the grid-rounded
    /// sensitivity, see `dp_mechanics::release`).
    pub noise_std: f64,
    /// Mean training loss of the round's server-side training on released values: DPO (POPri)
    /// or SFT (PE+SFT); `None` for methods that train nothing on the server. Read from older rows
    /// under its former name `dpo_loss`.
    #[serde(alias = "dpo_loss")]
    pub train_loss: Option<f64>,
    /// Mean reward accuracy of the round.
    pub reward_accuracy: Option<f64>,
    /// Mean reward margin of the round.
    pub reward_margin: Option<f64>,
    /// Seconds per phase.
    pub seconds: PhaseSeconds,
    /// Histogram of the round's noisy scores (released values, drawn after the ledger commit);
    /// `None` in rows written before it existed.
    #[serde(default)]
    pub noisy_score_histogram: Option<Histogram>,
    /// Simulation only: diagnostics of un-noised data, NOT covered by the privacy guarantee.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nonprivate: Option<NonPrivate<NonPrivateMetrics>>,
}

/// The non-private diagnostics of one simulated round (every field may be absent).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct NonPrivateMetrics {
    /// Clients that contributed (exact; under Poisson sampling the count itself is private).
    pub clients_nonprivate: Option<u64>,
    /// Fraction of contributing clients whose vector was clipped.
    pub clipped_fraction_nonprivate: Option<f64>,
    /// Mean L2 norm of the client vectors before clipping.
    pub mean_pre_clip_norm_nonprivate: Option<f64>,
    /// ‖clean sum‖ / (noise_std · √N).
    pub signal_to_noise_nonprivate: Option<f64>,
    /// Fraction of prompts whose noisy winner equals the clean winner.
    pub preference_agreement_nonprivate: Option<f64>,
    /// FID between the round's samples and the private eval set.
    pub fid_nonprivate: Option<f64>,
    /// ‖mean difference‖² of the same embeddings.
    pub mean_distance_sq_nonprivate: Option<f64>,
    /// DP-FedAvg: the mean training loss of the clients' local steps.
    pub local_loss_nonprivate: Option<f64>,
    /// DP-FedAvg: the L2 norm of the clean (un-noised) update sum.
    pub update_norm_nonprivate: Option<f64>,
}

impl RoundMetrics {
    /// The round's FID to the private eval set, when the simulation measured it.
    pub fn fid_nonprivate(&self) -> Option<f64> {
        self.nonprivate
            .as_ref()
            .and_then(|n| n.get().fid_nonprivate)
    }

    /// The non-private diagnostics, if any (`Default` when none).
    pub fn nonprivate_or_default(&self) -> NonPrivateMetrics {
        self.nonprivate
            .as_ref()
            .map(|n| n.get().clone())
            .unwrap_or_default()
    }
}

/// An equal-width histogram: `counts[i]` values fell in `[edges[i], edges[i + 1])` (the last bin
/// also holds its upper edge).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Histogram {
    pub edges: Vec<f64>,
    pub counts: Vec<u64>,
}

impl Histogram {
    /// `bins` equal-width bins over the range of the finite `values` (`None` when there are
    /// none). Non-finite values are left out.
    pub fn of(values: &[f64], bins: usize) -> Option<Histogram> {
        let finite = values.iter().copied().filter(|v| v.is_finite());
        let (low, high) = finite.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        });
        if bins == 0 || low > high {
            return None;
        }
        // A single distinct value still gets a bin of width 1 around it.
        let (low, high) = if low == high {
            (low - 0.5, high + 0.5)
        } else {
            (low, high)
        };
        let width = (high - low) / bins as f64;
        let edges = (0..=bins).map(|i| low + width * i as f64).collect();
        let mut counts = vec![0u64; bins];
        for value in values.iter().filter(|v| v.is_finite()) {
            let bin = (((value - low) / width) as usize).min(bins - 1);
            counts[bin] += 1;
        }
        Some(Histogram { edges, counts })
    }
}

impl RoundMetrics {
    /// Every number must be finite: JSON has no NaN (serde_json would write `null`, which reads
    /// back as "not computed").
    fn check_finite(&self) -> Result<()> {
        let s = &self.seconds;
        let required = [
            ("wall_seconds", self.wall_seconds),
            ("epsilon_rdp", self.epsilon_rdp),
            ("epsilon_pld", self.epsilon_pld),
            ("delta", self.delta),
            ("sigma", self.sigma),
            ("q", self.q),
            ("clip", self.clip),
            ("noise_std", self.noise_std),
            ("seconds.generate", s.generate),
            ("seconds.embed", s.embed),
            ("seconds.score", s.score),
            ("seconds.aggregate", s.aggregate),
            ("seconds.dpo", s.dpo),
            ("seconds.eval", s.eval),
        ];
        let nonprivate = self.nonprivate_or_default();
        let optional = [
            ("train_loss", self.train_loss),
            ("reward_accuracy", self.reward_accuracy),
            ("reward_margin", self.reward_margin),
            (
                "clipped_fraction_nonprivate",
                nonprivate.clipped_fraction_nonprivate,
            ),
            (
                "mean_pre_clip_norm_nonprivate",
                nonprivate.mean_pre_clip_norm_nonprivate,
            ),
            (
                "signal_to_noise_nonprivate",
                nonprivate.signal_to_noise_nonprivate,
            ),
            (
                "preference_agreement_nonprivate",
                nonprivate.preference_agreement_nonprivate,
            ),
            ("fid_nonprivate", nonprivate.fid_nonprivate),
            (
                "mean_distance_sq_nonprivate",
                nonprivate.mean_distance_sq_nonprivate,
            ),
            ("local_loss_nonprivate", nonprivate.local_loss_nonprivate),
            ("update_norm_nonprivate", nonprivate.update_norm_nonprivate),
        ];
        let values = required
            .into_iter()
            .chain(optional.into_iter().filter_map(|(k, v)| v.map(|v| (k, v))));
        let histogram_edges = self.noisy_score_histogram.iter().flat_map(|h| {
            h.edges
                .iter()
                .map(|&edge| ("noisy_score_histogram.edges", edge))
        });
        for (name, value) in values.chain(histogram_edges) {
            if !value.is_finite() {
                return Err(RunError::argument(
                    "metrics",
                    format!("{name} = {value} in round {}", self.round),
                    "finite numbers only (use None for a value that was not computed)",
                ));
            }
        }
        Ok(())
    }
}

/// `summary.json` of a finished run (`records::SimulationSummary`).
pub const SUMMARY_FILE: &str = "summary.json";

/// A run directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunDir {
    root: PathBuf,
}

/// A checkpoint being written: fill [`PendingCheckpoint::path`], then
/// [`PendingCheckpoint::commit`]. Dropped without commit, it stays under its temporary name and
/// is never taken for a checkpoint.
#[derive(Debug)]
pub struct PendingCheckpoint {
    round: u64,
    partial: PathBuf,
    complete: PathBuf,
}

impl PendingCheckpoint {
    /// The folder to write the checkpoint's files into.
    pub fn path(&self) -> &Path {
        &self.partial
    }

    /// The round it belongs to.
    pub fn round(&self) -> u64 {
        self.round
    }

    /// Syncs every file, then renames the folder to its final name; returns that path.
    pub fn commit(self) -> Result<PathBuf> {
        sync_tree(&self.partial)?;
        fs::rename(&self.partial, &self.complete).map_err(|e| RunError::io(&self.complete, e))?;
        sync_dir(self.complete.parent().unwrap_or(Path::new(".")))?;
        Ok(self.complete)
    }
}

impl RunDir {
    /// Creates the run directory for `config` (writing `config.toml`). An existing directory is
    /// accepted only if it is empty or holds a run of the same resolved configuration (which
    /// the caller then resumes: load its ledger with [`RunDir::load_ledger`], never start a new
    /// one over it).
    pub fn create(path: &Path, config: &RunConfig) -> Result<Self> {
        let run = Self {
            root: path.to_path_buf(),
        };
        let wanted = config.to_toml()?;
        if path.exists() {
            if !path.is_dir() {
                return Err(run.error("exists and is not a directory: choose another --out"));
            }
            let mut entries = fs::read_dir(path).map_err(|e| RunError::io(path, e))?;
            if entries.next().is_some() {
                run.check_same_config(config)?;
                return Ok(run);
            }
        }
        fs::create_dir_all(run.checkpoints_dir())
            .map_err(|e| RunError::io(run.checkpoints_dir(), e))?;
        write_atomic(&run.config_path(), wanted.as_bytes())?;
        Ok(run)
    }

    /// Opens an existing run directory (for `--resume`).
    pub fn open(path: &Path) -> Result<Self> {
        let run = Self {
            root: path.to_path_buf(),
        };
        if !run.config_path().is_file() {
            return Err(run.error(format!(
                "has no {CONFIG}: it is not a fedsyn run directory (start a new run instead of \
                 --resume)"
            )));
        }
        Ok(run)
    }

    /// Saves the cohort of `round`, the round in progress, as private state (0600 under a 0700
    /// folder): which clients a round held is secret, and a resumed run must take the same
    /// cohort up rather than draw again.
    pub fn save_open_cohort(&self, round: u64, cohort: &[usize]) -> Result<()> {
        let dir = self.root.join(PRIVATE_DIR);
        fs::create_dir_all(&dir).map_err(|e| RunError::io(&dir, e))?;
        set_mode(&dir, 0o700)?;
        let json = serde_json::to_vec(&OpenCohort {
            round,
            clients: cohort.to_vec(),
        })
        .map_err(|e| RunError::argument("cohort", "(unserialisable)", e.to_string()))?;
        write_atomic_private(&dir.join(OPEN_COHORT), &json)
    }

    /// The saved cohort of `round`, if the round was in progress when the run stopped.
    pub fn open_cohort(&self, round: u64) -> Result<Option<Vec<usize>>> {
        let path = self.root.join(PRIVATE_DIR).join(OPEN_COHORT);
        if !path.exists() {
            return Ok(None);
        }
        let text = fs::read_to_string(&path).map_err(|e| RunError::io(&path, e))?;
        let saved: OpenCohort = serde_json::from_str(&text)
            .map_err(|e| RunError::io(&path, std::io::Error::other(e)))?;
        Ok((saved.round == round).then_some(saved.clients))
    }

    /// Forgets the open cohort once its round is checkpointed.
    pub fn clear_open_cohort(&self) -> Result<()> {
        let path = self.root.join(PRIVATE_DIR).join(OPEN_COHORT);
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(RunError::io(&path, e)),
        }
    }

    /// Loads the run's resolved configuration.
    pub fn load_config(&self) -> Result<RunConfig> {
        RunConfig::load(&self.config_path(), &[])
    }

    /// The directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Takes the directory for this process (see [`RunDirLock`]).
    pub fn lock(&self) -> Result<RunDirLock> {
        RunDirLock::acquire(&self.root)
    }

    /// `config.toml`.
    pub fn config_path(&self) -> PathBuf {
        self.root.join(CONFIG)
    }

    /// `ledger.json`.
    pub fn ledger_path(&self) -> PathBuf {
        self.root.join(LEDGER)
    }

    /// `metrics.jsonl`.
    pub fn metrics_path(&self) -> PathBuf {
        self.root.join(METRICS)
    }

    /// `rounds.svg`: ε and the non-private FID per round, redrawn at the end of a run.
    pub fn rounds_plot_path(&self) -> PathBuf {
        self.root.join(ROUNDS_PLOT)
    }

    /// `summary.json` of a finished run.
    pub fn summary_path(&self) -> PathBuf {
        self.root.join(SUMMARY_FILE)
    }

    /// `synthetic.jsonl`.
    pub fn synthetic_path(&self) -> PathBuf {
        self.root.join(SYNTHETIC)
    }

    /// `privacy-statement.md`.
    pub fn statement_md_path(&self) -> PathBuf {
        self.root.join(STATEMENT_MD)
    }

    /// `privacy-statement.json`.
    pub fn statement_json_path(&self) -> PathBuf {
        self.root.join(STATEMENT_JSON)
    }

    /// `checkpoints/`.
    pub fn checkpoints_dir(&self) -> PathBuf {
        self.root.join(CHECKPOINTS)
    }

    /// `checkpoints/round-{round:04}/` (complete checkpoints only live here).
    pub fn checkpoint_dir(&self, round: u64) -> PathBuf {
        self.checkpoints_dir()
            .join(format!("{CHECKPOINT_PREFIX}{round:04}"))
    }

    /// The run's ledger; empty when none was saved yet.
    pub fn load_ledger(&self) -> Result<Ledger> {
        let path = self.ledger_path();
        if !path.exists() {
            return Ok(Ledger::new());
        }
        Ok(Ledger::load(&path)?)
    }

    /// Saves the ledger atomically.
    pub fn save_ledger(&self, ledger: &Ledger) -> Result<()> {
        write_atomic(&self.ledger_path(), ledger.to_json().as_bytes())
    }

    /// Appends one line to `metrics.jsonl` and syncs it to disk. A torn last line left by a
    /// crash is dropped first.
    pub fn append_metrics(&self, metrics: &RoundMetrics) -> Result<()> {
        metrics.check_finite()?;
        let path = self.metrics_path();
        let created = !path.exists();
        drop_torn_tail(&path)?;
        let mut line = serde_json::to_string(metrics).map_err(|e| {
            RunError::argument("metrics", format!("round {}", metrics.round), e.to_string())
        })?;
        line.push('\n');
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| RunError::io(&path, e))?;
        file.write_all(line.as_bytes())
            .and_then(|()| file.flush())
            .and_then(|()| file.sync_all())
            .map_err(|e| RunError::io(&path, e))?;
        if created {
            sync_dir(&self.root)?;
        }
        Ok(())
    }

    /// Every complete line of `metrics.jsonl` (none when the file does not exist).
    pub fn read_metrics(&self) -> Result<Vec<RoundMetrics>> {
        let path = self.metrics_path();
        if !path.exists() {
            return Ok(Vec::new());
        }
        let text = fs::read_to_string(&path).map_err(|e| RunError::io(&path, e))?;
        let complete = text.rfind('\n').map_or("", |end| &text[..end]);
        complete
            .lines()
            .enumerate()
            .filter(|(_, line)| !line.trim().is_empty())
            .map(|(i, line)| {
                serde_json::from_str(line).map_err(|e| RunError::Data {
                    path: path.clone(),
                    line: i + 1,
                    message: format!("not a metrics record ({e})"),
                })
            })
            .collect()
    }

    /// Keeps only the metrics of rounds ≤ `last_round` (for a resume from that round's
    /// checkpoint, when later rounds were logged but not checkpointed).
    pub fn truncate_metrics(&self, last_round: u64) -> Result<()> {
        let kept: Vec<RoundMetrics> = self
            .read_metrics()?
            .into_iter()
            .filter(|m| m.round <= last_round)
            .collect();
        let mut text = String::new();
        for metrics in &kept {
            let line = serde_json::to_string(metrics).map_err(|e| {
                RunError::argument("metrics", format!("round {}", metrics.round), e.to_string())
            })?;
            text.push_str(&line);
            text.push('\n');
        }
        write_atomic(&self.metrics_path(), text.as_bytes())
    }

    /// Makes `metrics.jsonl` end with the row of the last checkpoint (`round`): rows of rounds
    /// that were not checkpointed are dropped, a row lost to a kill is restored from `row` (the
    /// checkpoint's copy).
    pub fn repair_metrics(&self, round: u64, row: &RoundMetrics) -> Result<()> {
        self.truncate_metrics(round)?;
        let has_row = self
            .read_metrics()?
            .last()
            .is_some_and(|last| last.round == round);
        if !has_row {
            self.append_metrics(row)?;
        }
        Ok(())
    }

    /// Starts the checkpoint of `round` in a fresh temporary folder (any partial checkpoint a
    /// crash left behind is removed). Fails if the round already has a complete checkpoint.
    pub fn begin_checkpoint(&self, round: u64) -> Result<PendingCheckpoint> {
        let complete = self.checkpoint_dir(round);
        if complete.exists() {
            return Err(self.error(format!(
                "round {round} already has a checkpoint at {}; resume after it instead",
                complete.display()
            )));
        }
        self.remove_partial_checkpoints()?;
        let partial = self
            .checkpoints_dir()
            .join(format!(".{CHECKPOINT_PREFIX}{round:04}{PARTIAL_SUFFIX}"));
        fs::create_dir_all(&partial).map_err(|e| RunError::io(&partial, e))?;
        Ok(PendingCheckpoint {
            round,
            partial,
            complete,
        })
    }

    /// The newest complete checkpoint: its round and folder.
    pub fn latest_checkpoint(&self) -> Result<Option<(u64, PathBuf)>> {
        let dir = self.checkpoints_dir();
        if !dir.exists() {
            return Ok(None);
        }
        let mut latest: Option<(u64, PathBuf)> = None;
        for entry in fs::read_dir(&dir).map_err(|e| RunError::io(&dir, e))? {
            let entry = entry.map_err(|e| RunError::io(&dir, e))?;
            let name = entry.file_name();
            let round = name
                .to_str()
                .and_then(|n| n.strip_prefix(CHECKPOINT_PREFIX))
                .filter(|digits| digits.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|digits| digits.parse::<u64>().ok());
            if let Some(round) = round.filter(|_| entry.path().is_dir()) {
                if latest.as_ref().is_none_or(|(r, _)| round > *r) {
                    latest = Some((round, entry.path()));
                }
            }
        }
        Ok(latest)
    }

    fn remove_partial_checkpoints(&self) -> Result<()> {
        let dir = self.checkpoints_dir();
        fs::create_dir_all(&dir).map_err(|e| RunError::io(&dir, e))?;
        for entry in fs::read_dir(&dir).map_err(|e| RunError::io(&dir, e))? {
            let path = entry.map_err(|e| RunError::io(&dir, e))?.path();
            let partial = path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with('.') && n.ends_with(PARTIAL_SUFFIX));
            if partial {
                fs::remove_dir_all(&path).map_err(|e| RunError::io(&path, e))?;
            }
        }
        Ok(())
    }

    /// Accepts an existing directory only if its config equals `config`.
    fn check_same_config(&self, config: &RunConfig) -> Result<()> {
        let path = self.config_path();
        if !path.is_file() {
            return Err(self.error(format!(
                "is not empty and has no {CONFIG}: it is not a fedsyn run; choose an empty or \
                 new directory"
            )));
        }
        let existing = fs::read_to_string(&path).map_err(|e| RunError::io(&path, e))?;
        let differences = differing_keys(&existing, &config.to_toml()?);
        if differences.is_empty() {
            return Ok(());
        }
        Err(self.error(format!(
            "holds a run with a different configuration ({}); choose a new directory, or \
             resume that run with its own config",
            differences.join("; ")
        )))
    }

    fn error(&self, message: impl Into<String>) -> RunError {
        RunError::RunDir {
            path: self.root.clone(),
            message: message.into(),
        }
    }
}

/// Dotted keys whose values differ between two TOML documents, as `key: old -> new`.
fn differing_keys(old: &str, new: &str) -> Vec<String> {
    let flatten = |text: &str| -> Option<BTreeMap<String, String>> {
        let table: toml::Table = text.parse().ok()?;
        let mut flat = BTreeMap::new();
        flatten_into(&mut flat, "", &toml::Value::Table(table));
        Some(flat)
    };
    let (Some(old), Some(new)) = (flatten(old), flatten(new)) else {
        return vec![format!("its {CONFIG} does not parse")];
    };
    let keys: std::collections::BTreeSet<&String> = old.keys().chain(new.keys()).collect();
    keys.into_iter()
        .filter(|k| old.get(*k) != new.get(*k))
        .map(|k| {
            let show = |v: Option<&String>| v.cloned().unwrap_or_else(|| "(absent)".into());
            format!("{k}: {} -> {}", show(old.get(k)), show(new.get(k)))
        })
        .collect()
}

fn flatten_into(flat: &mut BTreeMap<String, String>, prefix: &str, value: &toml::Value) {
    match value {
        toml::Value::Table(table) => {
            for (key, value) in table {
                let key = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                flatten_into(flat, &key, value);
            }
        }
        other => {
            flat.insert(prefix.to_string(), other.to_string());
        }
    }
}

/// Reads the JSON state file a checkpoint keeps beside its adapter (each method its own type).
pub fn read_checkpoint_state<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| RunError::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| RunError::RunDir {
        path: path.to_path_buf(),
        message: format!("the checkpoint state cannot be read ({e})"),
    })
}

/// Replaces `path` with `bytes` atomically and durably: write a temporary file beside it, sync
/// it, rename it over `path`, sync the folder. A crash leaves the old or the new file, never a
/// mix.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let name = path
        .file_name()
        .ok_or_else(|| RunError::argument("path", path.display(), "a file path"))?;
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let tmp = dir.join(format!(".{}.tmp", name.to_string_lossy()));
    {
        let mut file = File::create(&tmp).map_err(|e| RunError::io(&tmp, e))?;
        file.write_all(bytes)
            .and_then(|()| file.sync_all())
            .map_err(|e| RunError::io(&tmp, e))?;
    }
    fs::rename(&tmp, path).map_err(|e| RunError::io(path, e))?;
    sync_dir(dir)
}

/// [`write_atomic`] for secrets and private state: the file is mode 0600 from its creation.
pub fn write_atomic_private(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .ok_or_else(|| RunError::argument("path", path.display(), "a file path"))?;
    let tmp = dir.join(format!(".{}.tmp", name.to_string_lossy()));
    {
        let mut options = OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(&tmp).map_err(|e| RunError::io(&tmp, e))?;
        set_mode(&tmp, 0o600)?;
        file.write_all(bytes)
            .and_then(|()| file.sync_all())
            .map_err(|e| RunError::io(&tmp, e))?;
    }
    fs::rename(&tmp, path).map_err(|e| RunError::io(path, e))?;
    sync_dir(dir)
}

/// Sets a path's Unix permission bits (nothing elsewhere).
fn set_mode(path: &Path, mode: u32) -> Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(path, fs::Permissions::from_mode(mode))
            .map_err(|e| RunError::io(path, e))?;
    }
    #[cfg(not(unix))]
    let _ = (path, mode);
    Ok(())
}

/// The private record of the round in progress.
#[derive(Debug, Serialize, Deserialize)]
struct OpenCohort {
    round: u64,
    clients: Vec<usize>,
}

/// Truncates a file that does not end with a newline back to its last complete line.
fn drop_torn_tail(path: &Path) -> Result<()> {
    if !path.exists() {
        return Ok(());
    }
    let bytes = fs::read(path).map_err(|e| RunError::io(path, e))?;
    if bytes.is_empty() || bytes.ends_with(b"\n") {
        return Ok(());
    }
    let keep = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    let file = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|e| RunError::io(path, e))?;
    file.set_len(keep as u64)
        .and_then(|()| file.sync_all())
        .map_err(|e| RunError::io(path, e))
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| RunError::io(dir, e))
}

/// The lock file of a run directory; it holds the pid of the process that owns the run.
const LOCK: &str = ".lock";

/// One run directory, one process: a second `fedsyn serve` or `fedsyn simulate` on the same
/// directory would interleave rounds, charges and checkpoints with the first (two servers
/// sampling and charging the same round, two simulations writing one ledger). An exclusive
/// advisory lock on `DIR/.lock`, released by the operating system when the holder exits or is
/// killed, so a crash never leaves a stale lock behind. Keep the value for as long as the
/// directory is in use.
#[derive(Debug)]
pub struct RunDirLock {
    _file: File,
}

impl RunDirLock {
    /// Locks `dir` for this process, writing its pid into the lock file; a directory locked by
    /// another process is refused with that process's pid.
    pub fn acquire(dir: &Path) -> Result<Self> {
        use std::io::Read;
        let path = dir.join(LOCK);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| RunError::io(&path, e))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = match holder.trim() {
                    "" => "unknown pid".to_string(),
                    pid => format!("pid {pid}"),
                };
                return Err(RunError::RunDir {
                    path: dir.to_path_buf(),
                    message: format!(
                        "is in use by another fedsyn process ({holder}); one run directory takes \
                         one process: stop that one first (then --resume), or choose another \
                         directory"
                    ),
                });
            }
            Err(fs::TryLockError::Error(e)) => return Err(RunError::io(&path, e)),
        }
        file.set_len(0)
            .and_then(|()| writeln!(file, "{}", std::process::id()))
            .and_then(|()| file.sync_all())
            .map_err(|e| RunError::io(&path, e))?;
        Ok(RunDirLock { _file: file })
    }
}

/// Syncs every file and folder under `dir`, then `dir` itself.
fn sync_tree(dir: &Path) -> Result<()> {
    for entry in fs::read_dir(dir).map_err(|e| RunError::io(dir, e))? {
        let path = entry.map_err(|e| RunError::io(dir, e))?.path();
        if path.is_dir() {
            sync_tree(&path)?;
        } else {
            File::open(&path)
                .and_then(|f| f.sync_all())
                .map_err(|e| RunError::io(&path, e))?;
        }
    }
    sync_dir(dir)
}

#[cfg(test)]
mod tests {
    use privacy_accounting::{LedgerEvent, Sampling};

    use super::*;

    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> Self {
            let path =
                std::env::temp_dir().join(format!("server-run-dir-{name}-{}", std::process::id()));
            let _ = fs::remove_dir_all(&path);
            Self(path)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn config(epsilon: f64) -> RunConfig {
        let text = format!(
            "[data]\ntrain = \"sotu\"\n[prompts]\ntopics = [\"t\"]\n[privacy]\nepsilon = \
             {epsilon}\n"
        );
        RunConfig::from_toml(&text, Path::new("/")).unwrap()
    }

    /// The witness of values a unit test makes up.
    struct MadeUpData;
    impl dp_mechanics::RawClientData for MadeUpData {}

    fn metrics(round: u64) -> RoundMetrics {
        RoundMetrics {
            round,
            wall_seconds: 1.5,
            epsilon_rdp: 0.2,
            epsilon_pld: 0.15,
            delta: 3e-6,
            sigma: 19.3,
            q: 1.0,
            clip: 1.0,
            cohort: Some(10),
            noise_std: 19.3,
            train_loss: Some(0.69),
            reward_accuracy: None,
            reward_margin: None,
            seconds: PhaseSeconds::default(),
            noisy_score_histogram: None,
            nonprivate: Some(NonPrivate::measured(
                &MadeUpData,
                NonPrivateMetrics {
                    clients_nonprivate: Some(10),
                    clipped_fraction_nonprivate: Some(1.0),
                    mean_pre_clip_norm_nonprivate: Some(134.2),
                    preference_agreement_nonprivate: Some(0.4),
                    ..NonPrivateMetrics::default()
                },
            )),
        }
    }

    #[test]
    fn histogram_counts_every_finite_value_once() {
        let values = [0.0, 0.1, 0.5, 0.99, 1.0, f64::NAN, -1.0];
        let h = Histogram::of(&values, 4).unwrap();
        assert_eq!(h.edges, vec![-1.0, -0.5, 0.0, 0.5, 1.0]);
        // -1 → bin 0; 0, 0.1 → bin 2; 0.5, 0.99, 1.0 (upper edge) → bin 3; NaN left out.
        assert_eq!(h.counts, vec![1, 0, 2, 3]);
        let single = Histogram::of(&[2.0, 2.0], 2).unwrap();
        assert_eq!(single.counts, vec![0, 2]);
        assert!(Histogram::of(&[f64::NAN], 3).is_none());
        assert!(Histogram::of(&[1.0], 0).is_none());
    }

    #[test]
    fn create_refuses_foreign_or_different_runs() {
        let tmp = TempDir::new("create");
        let run = RunDir::create(&tmp.0, &config(1.0)).unwrap();
        assert!(run.config_path().is_file() && run.checkpoints_dir().is_dir());
        assert_eq!(run.load_config().unwrap(), config(1.0));
        // The same config again: a resumable run.
        assert_eq!(RunDir::create(&tmp.0, &config(1.0)).unwrap(), run);
        // Another config: refused, naming the key.
        let message = RunDir::create(&tmp.0, &config(7.0))
            .unwrap_err()
            .to_string();
        assert!(message.contains("privacy.epsilon: 1.0 -> 7.0"), "{message}");
        // A non-empty folder that is not a run.
        let foreign = TempDir::new("foreign");
        fs::create_dir_all(&foreign.0).unwrap();
        fs::write(foreign.0.join("notes.txt"), "x").unwrap();
        assert!(RunDir::create(&foreign.0, &config(1.0)).is_err());
        assert!(RunDir::open(&foreign.0).is_err());
        assert_eq!(RunDir::open(&tmp.0).unwrap(), run);
    }

    #[test]
    fn metrics_append_read_and_survive_a_torn_line() {
        let tmp = TempDir::new("metrics");
        let run = RunDir::create(&tmp.0, &config(1.0)).unwrap();
        run.append_metrics(&metrics(0)).unwrap();
        run.append_metrics(&metrics(1)).unwrap();
        // A crash mid-write leaves half a line.
        let mut file = OpenOptions::new()
            .append(true)
            .open(run.metrics_path())
            .unwrap();
        file.write_all(b"{\"round\": 2, \"wall_sec").unwrap();
        drop(file);
        assert_eq!(run.read_metrics().unwrap(), vec![metrics(0), metrics(1)]);
        run.append_metrics(&metrics(2)).unwrap();
        assert_eq!(
            run.read_metrics().unwrap(),
            vec![metrics(0), metrics(1), metrics(2)]
        );
        run.truncate_metrics(0).unwrap();
        assert_eq!(run.read_metrics().unwrap(), vec![metrics(0)]);
        // Every field is present, absent values as null.
        let line = fs::read_to_string(run.metrics_path()).unwrap();
        assert!(line.contains("\"train_loss\":0.69"), "{line}");
        assert!(line.contains("\"fid_nonprivate\":null"), "{line}");
        let mut bad = metrics(3);
        bad.nonprivate.as_mut().unwrap().get_mut().fid_nonprivate = Some(f64::NAN);
        let message = run.append_metrics(&bad).unwrap_err().to_string();
        assert!(message.contains("fid_nonprivate"), "{message}");
    }

    #[test]
    fn the_open_cohort_is_private_state_for_its_round_only() {
        let tmp = TempDir::new("cohort");
        let run = RunDir::create(&tmp.0, &config(1.0)).unwrap();
        assert_eq!(run.open_cohort(3).unwrap(), None);
        run.save_open_cohort(3, &[4, 1, 9]).unwrap();
        assert_eq!(run.open_cohort(3).unwrap(), Some(vec![4, 1, 9]));
        // Another round's cohort is never taken for this one.
        assert_eq!(run.open_cohort(4).unwrap(), None);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode(&tmp.0.join("private")), 0o700);
            assert_eq!(mode(&tmp.0.join("private/open-cohort.json")), 0o600);
        }
        run.clear_open_cohort().unwrap();
        assert_eq!(run.open_cohort(3).unwrap(), None);
        run.clear_open_cohort().unwrap();
    }

    #[test]
    fn only_committed_checkpoints_count() {
        let tmp = TempDir::new("checkpoints");
        let run = RunDir::create(&tmp.0, &config(1.0)).unwrap();
        assert_eq!(run.latest_checkpoint().unwrap(), None);
        for round in [0, 1] {
            let pending = run.begin_checkpoint(round).unwrap();
            fs::write(pending.path().join("state.json"), "{}").unwrap();
            fs::create_dir_all(pending.path().join("adapter")).unwrap();
            fs::write(pending.path().join("adapter/weights"), [1u8, 2]).unwrap();
            pending.commit().unwrap();
        }
        // Round 2 crashes half-way.
        let torn = run.begin_checkpoint(2).unwrap();
        fs::write(torn.path().join("state.json"), "{").unwrap();
        drop(torn);
        let (round, path) = run.latest_checkpoint().unwrap().unwrap();
        assert_eq!((round, path.clone()), (1, run.checkpoint_dir(1)));
        assert!(path.ends_with("checkpoints/round-0001"));
        assert_eq!(fs::read(path.join("adapter/weights")).unwrap(), [1, 2]);
        assert!(run.begin_checkpoint(1).is_err());
        // Retrying round 2 replaces the partial folder.
        let retry = run.begin_checkpoint(2).unwrap();
        assert!(!retry.path().join("state.json").exists());
        retry.commit().unwrap();
        assert_eq!(run.latest_checkpoint().unwrap().unwrap().0, 2);
    }

    #[test]
    fn ledger_and_atomic_writes() {
        let tmp = TempDir::new("ledger");
        let run = RunDir::create(&tmp.0, &config(1.0)).unwrap();
        assert_eq!(run.load_ledger().unwrap(), Ledger::new());
        let mut ledger = Ledger::new();
        ledger
            .push(LedgerEvent::gaussian(19.3, Sampling::Full, 1).with_round(0))
            .unwrap();
        run.save_ledger(&ledger).unwrap();
        assert_eq!(run.load_ledger().unwrap(), ledger);
        let file = run.root().join("note.txt");
        write_atomic(&file, b"first").unwrap();
        write_atomic(&file, b"second").unwrap();
        assert_eq!(fs::read(&file).unwrap(), b"second");
        let leftovers: Vec<_> = fs::read_dir(run.root())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty());
    }

    #[test]
    fn a_locked_run_directory_is_refused_naming_the_holder_until_released() {
        let tmp = TempDir::new("lock");
        let run = RunDir::create(&tmp.0, &config(1.0)).unwrap();
        let held = run.lock().unwrap();
        // The lock is per open file: a second taker, even in this process, is refused.
        let message = run.lock().unwrap_err().to_string();
        assert!(
            message.contains(&format!("pid {}", std::process::id())),
            "{message}"
        );
        drop(held);
        let _again = run.lock().unwrap();
    }
}
