//! Privacy statements: what a run's ε means, in words a reader can publish.
//!
//! Modelled on TF Privacy's `compute_dp_sgd_privacy_statement`: the unit of privacy, the
//! adjacency relation, δ, ε under each accountant, the sampling that was assumed (and, for fixed
//! cohorts, the Poisson figure with its caveat), rounds, noise multipliers and clip bounds.

use serde::{Deserialize, Serialize};

use crate::error::{check_delta, Result};
use crate::ledger::Ledger;
use crate::sampling::Sampling;
use crate::{tightest, AccountantKind, EpsilonEstimate};

/// What one unit of privacy is: the guarantee protects all data of one client.
pub const UNIT_OF_PRIVACY: &str = "one client: all of the text held by a single client";
/// The neighbouring relation the guarantee is stated for.
pub const ADJACENCY: &str = "add/remove one client";
/// What the guarantee covers.
pub const COVERS: &str = "every noisy aggregate released by the server, and everything computed \
     from them: every model checkpoint, adapter and synthetic sample, not only the final ones";

/// A privacy statement for a ledger at one δ.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PrivacyStatement {
    /// Set when the run used a test seed (noise or client sampling): why the run is NOT
    /// differentially private, whatever the numbers below say.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_differentially_private: Option<String>,
    /// Whose privacy is protected.
    pub unit_of_privacy: String,
    /// The neighbouring relation.
    pub adjacency: String,
    /// δ of every ε below.
    pub delta: f64,
    /// ε under each accountant (each is a valid upper bound; the smallest is the guarantee).
    pub epsilons: Vec<EpsilonEstimate>,
    /// The smallest certified ε over the accountants.
    pub epsilon: f64,
    /// Rounds with at least one release (distinct round numbers, or entries without one).
    pub rounds: u64,
    /// Total number of noisy releases.
    pub releases: u64,
    /// Distinct noise multipliers used.
    pub noise_multipliers: Vec<f64>,
    /// Distinct per-client clip bounds, where recorded.
    pub clip_bounds: Vec<f64>,
    /// The sampling schemes used and how each was accounted.
    pub sampling: Vec<String>,
    /// Only when fixed cohorts were used: ε (smallest over accountants) had those cohorts been
    /// Poisson samples at rate m/n. Not a guarantee; shown to explain the gap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epsilon_if_poisson: Option<f64>,
    /// What the guarantee covers.
    pub covers: String,
    /// For a run served to remote clients: how their vectors were aggregated, and who saw
    /// what on the way (the guarantee above covers only the noisy releases).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aggregation: Option<String>,
    /// Warnings a reader should see.
    pub caveats: Vec<String>,
}

impl PrivacyStatement {
    /// Accounts `ledger` at `delta` under each of `accountants` and states the result.
    pub fn from_ledger(
        ledger: &Ledger,
        delta: f64,
        accountants: &[AccountantKind],
    ) -> Result<Self> {
        check_delta(delta)?;
        let epsilons = accountants
            .iter()
            .map(|&kind| ledger.epsilon(kind, delta))
            .collect::<Result<Vec<_>>>()?;
        let epsilon = smallest_epsilon(&epsilons);
        let uses_fixed_cohorts = ledger
            .events
            .iter()
            .any(|e| matches!(e.sampling, Sampling::FixedCohort { .. }));
        let epsilon_if_poisson = if uses_fixed_cohorts {
            let poisson = as_if_poisson(ledger);
            let estimates = accountants
                .iter()
                .map(|&kind| poisson.epsilon(kind, delta))
                .collect::<Result<Vec<_>>>()?;
            Some(smallest_epsilon(&estimates))
        } else {
            None
        };
        let caveats = caveats(ledger, &epsilons, uses_fixed_cohorts);
        Ok(Self {
            not_differentially_private: None,
            unit_of_privacy: UNIT_OF_PRIVACY.into(),
            adjacency: ADJACENCY.into(),
            delta,
            epsilon,
            epsilons,
            rounds: count_rounds(ledger),
            releases: ledger.releases(),
            noise_multipliers: distinct(ledger.events.iter().map(|e| e.noise_multiplier)),
            clip_bounds: distinct(ledger.events.iter().filter_map(|e| e.clip_bound)),
            sampling: distinct(ledger.events.iter().map(|e| e.sampling.describe())),
            epsilon_if_poisson,
            covers: COVERS.into(),
            aggregation: None,
            caveats,
        })
    }

    /// The same statement for a run whose randomness was not secret (a test seed): `why` says
    /// which seed and what it exposes; the statement's first line says the run is NOT
    /// differentially private.
    pub fn voided(mut self, why: impl Into<String>) -> Self {
        self.not_differentially_private = Some(why.into());
        self
    }

    /// The same statement, saying how a served run aggregated its clients' vectors and who
    /// saw what.
    pub fn with_aggregation(mut self, description: impl Into<String>) -> Self {
        self.aggregation = Some(description.into());
        self
    }

    /// The statement as pretty-printed JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a statement always serialises")
    }

    /// The statement as Markdown, for a README or a paper's appendix.
    pub fn to_markdown(&self) -> String {
        let mut md = String::new();
        if let Some(why) = &self.not_differentially_private {
            md.push_str(&format!(
                "**This run is NOT differentially private: {why}** The numbers below are what \
                 the ledger would give had the randomness been secret.\n\n"
            ));
        }
        md.push_str("# Privacy statement\n\n");
        if self.not_differentially_private.is_none() {
            md.push_str(&format!(
                "This run satisfies **({}, {})-differential privacy** at the user level.\n\n",
                format_epsilon(self.epsilon),
                self.delta
            ));
        }
        md.push_str(&format!(
            "- **Unit of privacy:** {}\n",
            self.unit_of_privacy
        ));
        md.push_str(&format!("- **Adjacency:** {}\n", self.adjacency));
        md.push_str(&format!("- **δ:** {}\n", self.delta));
        md.push_str(&format!(
            "- **Releases:** {} noisy aggregate(s) over {} round(s)\n",
            self.releases, self.rounds
        ));
        md.push_str(&format!(
            "- **Noise multiplier(s) σ:** {}\n",
            join_numbers(&self.noise_multipliers)
        ));
        let clips = if self.clip_bounds.is_empty() {
            "not recorded".to_string()
        } else {
            join_numbers(&self.clip_bounds)
        };
        md.push_str(&format!("- **Clip bound(s) C:** {clips}\n"));
        for sampling in &self.sampling {
            md.push_str(&format!("- **Sampling:** {sampling}\n"));
        }
        md.push_str(&format!("- **Covers:** {}\n", self.covers));
        if let Some(aggregation) = &self.aggregation {
            md.push_str(&format!("- **Aggregation:** {aggregation}\n"));
        }
        md.push('\n');
        md.push_str("| accountant | ε | δ | detail |\n|---|---|---|---|\n");
        for estimate in &self.epsilons {
            md.push_str(&format!(
                "| {} | {} | {} | {} |\n",
                estimate.accountant,
                format_epsilon(estimate.epsilon),
                estimate.delta,
                estimate_detail(estimate)
            ));
        }
        if let Some(eps) = self.epsilon_if_poisson {
            md.push_str(&format!(
                "\nHad the fixed cohorts been Poisson samples at the same rate, ε would be {} \
                 (not a guarantee: fixed cohorts are a different mechanism).\n",
                format_epsilon(eps)
            ));
        }
        if !self.caveats.is_empty() {
            md.push_str("\n**Caveats**\n\n");
            for caveat in &self.caveats {
                md.push_str(&format!("- {caveat}\n"));
            }
        }
        md
    }
}

/// One cell describing how an estimate was obtained (order for RDP, error for PLD).
pub fn estimate_detail(estimate: &EpsilonEstimate) -> String {
    match (estimate.order, estimate.discretisation_error) {
        (Some(order), _) if estimate.order_at_grid_edge => {
            format!("order {order} (edge of the order grid)")
        }
        (Some(order), _) => format!("order {order}"),
        (None, Some(error)) => format!("discretisation error ≤ {error:.2e}"),
        (None, None) => String::new(),
    }
}

/// ε formatted for people: 4 significant digits, "∞" when unbounded.
pub fn format_epsilon(epsilon: f64) -> String {
    if epsilon.is_infinite() {
        "∞".into()
    } else {
        format!("{epsilon:.4}")
    }
}

fn smallest_epsilon(estimates: &[EpsilonEstimate]) -> f64 {
    tightest(estimates).map_or(f64::INFINITY, |e| e.epsilon)
}

/// The same ledger with every fixed cohort replaced by Poisson sampling at rate m/n.
fn as_if_poisson(ledger: &Ledger) -> Ledger {
    let mut poisson = ledger.clone();
    for event in &mut poisson.events {
        if let Sampling::FixedCohort { m, n } = event.sampling {
            event.sampling = Sampling::Poisson {
                q: m as f64 / n as f64,
            };
        }
    }
    poisson
}

fn caveats(ledger: &Ledger, estimates: &[EpsilonEstimate], fixed_cohorts: bool) -> Vec<String> {
    let mut caveats = Vec::new();
    if ledger.events.is_empty() {
        caveats.push("the ledger is empty: nothing has been released yet".into());
    }
    if fixed_cohorts {
        caveats.push(
            "fixed-size cohorts are accounted with a conservative bound (Poisson rate m/n, \
             sensitivity 2C); the true ε lies between the Poisson figure and the stated one"
                .into(),
        );
    }
    for estimate in estimates {
        if estimate.order_at_grid_edge {
            caveats.push(format!(
                "the RDP optimum lies at the edge of the order grid (order {}); the RDP ε may be \
                 loose — the PLD figure does not have this limitation",
                estimate.order.unwrap_or(f64::NAN)
            ));
        }
    }
    caveats
}

fn count_rounds(ledger: &Ledger) -> u64 {
    let mut rounds: Vec<u64> = ledger.events.iter().filter_map(|e| e.round).collect();
    rounds.sort_unstable();
    rounds.dedup();
    let unnumbered: u64 = ledger
        .events
        .iter()
        .filter(|e| e.round.is_none())
        .map(|e| e.count)
        .sum();
    rounds.len() as u64 + unnumbered
}

/// The values in first-seen order, without repeats.
fn distinct<T: PartialEq>(values: impl Iterator<Item = T>) -> Vec<T> {
    let mut out: Vec<T> = Vec::new();
    for v in values {
        if !out.contains(&v) {
            out.push(v);
        }
    }
    out
}

fn join_numbers(values: &[f64]) -> String {
    values
        .iter()
        .map(|v| v.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::LedgerEvent;

    fn ledger_with(sampling: Sampling, rounds: u64) -> Ledger {
        let mut ledger = Ledger::new();
        for round in 0..rounds {
            ledger
                .push(
                    LedgerEvent::gaussian(2.0, sampling, 1)
                        .with_round(round)
                        .with_clip_bound(1.0),
                )
                .unwrap();
        }
        ledger
    }

    #[test]
    fn fixed_cohorts_state_the_conservative_bound_and_the_poisson_figure() {
        let ledger = ledger_with(Sampling::FixedCohort { m: 10, n: 100 }, 50);
        let statement =
            PrivacyStatement::from_ledger(&ledger, 1e-5, &[AccountantKind::Rdp]).unwrap();
        let poisson = statement.epsilon_if_poisson.unwrap();
        assert!(poisson < statement.epsilon, "{statement:?}");
        assert!(statement.caveats.iter().any(|c| c.contains("conservative")));
        assert_eq!(statement.rounds, 50);
        assert_eq!(statement.clip_bounds, vec![1.0]);
        let md = statement.to_markdown();
        assert!(md.contains("fixed cohorts of 10 of 100") && md.contains("not a guarantee"));
    }

    #[test]
    fn poisson_runs_have_no_poisson_comparison_and_take_the_tightest_epsilon() {
        let ledger = ledger_with(Sampling::Poisson { q: 0.1 }, 20);
        let statement = PrivacyStatement::from_ledger(&ledger, 1e-5, &AccountantKind::ALL).unwrap();
        assert!(statement.epsilon_if_poisson.is_none());
        let smallest = statement
            .epsilons
            .iter()
            .map(|e| e.epsilon)
            .fold(f64::INFINITY, f64::min);
        assert_eq!(statement.epsilon, smallest);
        let back: PrivacyStatement = serde_json::from_str(&statement.to_json()).unwrap();
        assert_eq!(back, statement);
    }

    #[test]
    fn an_empty_ledger_costs_nothing_and_says_so() {
        let statement =
            PrivacyStatement::from_ledger(&Ledger::new(), 1e-5, &[AccountantKind::Rdp]).unwrap();
        assert_eq!(statement.epsilon, 0.0);
        assert_eq!(statement.releases, 0);
        assert!(statement.caveats.iter().any(|c| c.contains("empty")));
    }
}
