//! The privacy ledger: every release that spent budget, in order, serialisable as JSON.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::error::{
    check_delta, check_noise_multiplier, require, require_positive, AccountingError, Result,
};
use crate::sampling::Sampling;
use crate::{Accountant, AccountantKind, EpsilonEstimate};

/// The noise mechanism of a release. Tagged so that ledgers stay readable when other
/// mechanisms are added.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mechanism {
    /// Gaussian noise added to a sum of L2-clipped per-client contributions.
    Gaussian,
}

/// One entry of the ledger: `count` identical releases.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LedgerEvent {
    /// The noise mechanism.
    pub mechanism: Mechanism,
    /// Noise standard deviation divided by the per-client L2 sensitivity (clip bound).
    pub noise_multiplier: f64,
    /// How the clients of each release were chosen.
    pub sampling: Sampling,
    /// How many releases this entry stands for (≥ 1).
    pub count: u64,
    /// The round this entry belongs to, when it is one round of a run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub round: Option<u64>,
    /// Free text: what was released ("popri round 3 scores", "dp-fedavg step", …).
    #[serde(default)]
    pub label: String,
    /// The per-client clip bound C, when known (for statements; ε does not depend on it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clip_bound: Option<f64>,
    /// When the entry was committed, seconds since the Unix epoch.
    #[serde(default)]
    pub timestamp: u64,
}

impl LedgerEvent {
    /// A Gaussian release event stamped with the current time.
    pub fn gaussian(noise_multiplier: f64, sampling: Sampling, count: u64) -> Self {
        Self {
            mechanism: Mechanism::Gaussian,
            noise_multiplier,
            sampling,
            count,
            round: None,
            label: String::new(),
            clip_bound: None,
            timestamp: now_unix_seconds(),
        }
    }

    /// Sets the round number.
    pub fn with_round(mut self, round: u64) -> Self {
        self.round = Some(round);
        self
    }

    /// Sets the label.
    pub fn with_label(mut self, label: impl Into<String>) -> Self {
        self.label = label.into();
        self
    }

    /// Sets the clip bound.
    pub fn with_clip_bound(mut self, clip_bound: f64) -> Self {
        self.clip_bound = Some(clip_bound);
        self
    }

    /// Checks that the entry describes a valid release.
    pub fn validate(&self) -> Result<()> {
        check_noise_multiplier(self.noise_multiplier)?;
        self.sampling.validate()?;
        require(
            self.count != 0,
            "count",
            self.count,
            "a ledger entry stands for at least one release",
        )?;
        if let Some(c) = self.clip_bound {
            require_positive(
                "clip_bound",
                c,
                "the clip bound must be a finite number > 0",
            )?;
        }
        Ok(())
    }
}

/// An ordered list of releases: the complete privacy history of a run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Ledger {
    /// The δ the run is accounted at, when the run fixed one (reports use it by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delta: Option<f64>,
    /// The releases, oldest first.
    pub events: Vec<LedgerEvent>,
}

impl Ledger {
    /// An empty ledger.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a validated entry.
    pub fn push(&mut self, event: LedgerEvent) -> Result<()> {
        event.validate()?;
        self.events.push(event);
        Ok(())
    }

    /// Total number of releases recorded.
    pub fn releases(&self) -> u64 {
        self.events.iter().map(|e| e.count).sum()
    }

    /// Parses a ledger from JSON: either `{"events": [...]}` or a bare array of events.
    pub fn from_json(text: &str) -> Result<Self> {
        let ledger: Ledger = match serde_json::from_str::<Ledger>(text) {
            Ok(ledger) => ledger,
            Err(object_err) => match serde_json::from_str::<Vec<LedgerEvent>>(text) {
                Ok(events) => Ledger {
                    delta: None,
                    events,
                },
                Err(_) => return Err(AccountingError::Ledger(object_err.to_string())),
            },
        };
        if let Some(delta) = ledger.delta {
            check_delta(delta).map_err(|e| AccountingError::Ledger(e.to_string()))?;
        }
        for (i, event) in ledger.events.iter().enumerate() {
            event
                .validate()
                .map_err(|e| AccountingError::Ledger(format!("event {i}: {e}")))?;
        }
        Ok(ledger)
    }

    /// The ledger as pretty-printed JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a ledger always serialises")
    }

    /// Reads a ledger file.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| AccountingError::Ledger(format!("cannot read {}: {e}", path.display())))?;
        Self::from_json(&text).map_err(|e| match e {
            AccountingError::Ledger(msg) => {
                AccountingError::Ledger(format!("{}: {msg}", path.display()))
            }
            other => other,
        })
    }

    /// Writes the ledger durably: to a temporary file, synced, then renamed over `path`, so a
    /// crash leaves either the old or the new ledger, never a torn one.
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        use std::io::Write;
        let tmp = path.with_extension("json.tmp");
        {
            let mut file = std::fs::File::create(&tmp)?;
            file.write_all(self.to_json().as_bytes())?;
            file.sync_all()?;
        }
        std::fs::rename(&tmp, path)?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    }

    /// Composes every entry into `accountant`.
    pub fn compose_into(&self, accountant: &mut dyn Accountant) -> Result<()> {
        for event in &self.events {
            accountant.compose(event.sampling.bound(event.noise_multiplier)?, event.count)?;
        }
        Ok(())
    }

    /// ε at `delta` under the accountant `kind` with its default settings.
    /// An empty ledger released nothing, so its ε is exactly 0 (the RDP conversion alone would
    /// report its small floor instead).
    pub fn epsilon(&self, kind: AccountantKind, delta: f64) -> Result<EpsilonEstimate> {
        check_delta(delta)?;
        if self.events.is_empty() {
            return Ok(EpsilonEstimate {
                epsilon: 0.0,
                delta,
                accountant: kind,
                order: None,
                order_at_grid_edge: false,
                discretisation_error: None,
            });
        }
        let mut accountant = kind.accountant();
        self.compose_into(accountant.as_mut())?;
        accountant.epsilon(delta)
    }
}

fn now_unix_seconds() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_round_trip_keeps_every_field() {
        let mut ledger = Ledger::new();
        ledger
            .push(
                LedgerEvent::gaussian(1.5, Sampling::Poisson { q: 0.01 }, 100)
                    .with_round(3)
                    .with_label("popri scores")
                    .with_clip_bound(1.0),
            )
            .unwrap();
        ledger
            .push(LedgerEvent::gaussian(
                2.0,
                Sampling::FixedCohort { m: 10, n: 100 },
                1,
            ))
            .unwrap();
        let back = Ledger::from_json(&ledger.to_json()).unwrap();
        assert_eq!(back, ledger);
        assert_eq!(back.releases(), 101);
    }

    #[test]
    fn bad_entries_name_the_field() {
        let text = r#"{"events":[{"mechanism":"gaussian","noise_multiplier":-1,
            "sampling":{"kind":"full"},"count":1}]}"#;
        let err = Ledger::from_json(text).unwrap_err().to_string();
        assert!(err.contains("event 0") && err.contains("sigma"), "{err}");
        assert!(Ledger::from_json("{not json").is_err());
    }

    #[test]
    fn bare_event_arrays_are_accepted() {
        let text = r#"[{"mechanism":"gaussian","noise_multiplier":1.0,
            "sampling":{"kind":"poisson","q":0.5},"count":2}]"#;
        assert_eq!(Ledger::from_json(text).unwrap().releases(), 2);
    }

    #[test]
    fn save_then_load() {
        let dir = std::env::temp_dir().join(format!("ledger-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("ledger.json");
        let mut ledger = Ledger::new();
        ledger
            .push(LedgerEvent::gaussian(1.0, Sampling::Full, 5))
            .unwrap();
        ledger.save(&path).unwrap();
        assert_eq!(Ledger::load(&path).unwrap(), ledger);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
