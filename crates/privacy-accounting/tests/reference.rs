//! The accountants against reference values from Opacus 1.6 and dp_accounting 0.6.
//!
//! The fixture is written by `scripts/reference/accounting.py` (run it in the venv made by
//! `scripts/bench-venv.sh`); its header records the tool versions. What is compared:
//!
//! * RDP per order against Opacus's `compute_rdp`, within 1e-6 relative (1e-12 absolute for
//!   values below 1e-12). Opacus's float64 log-space sums lose relative accuracy on tiny values
//!   (up to 1e-2 relative near 1e-12, and NaN at order 1e4), so the fixture also carries
//!   30-digit mpmath values for every per-step RDP below 1e-3 and every custom order; matching
//!   those to the same tolerance is accepted too. An accountant that is *more* accurate than
//!   Opacus therefore passes, one that is wrong does not.
//! * ε and the optimal order against Opacus's `get_privacy_spent` (1e-6 relative; the same
//!   order, or an order the fixture lists as tied), or against the same conversion applied to
//!   the exact RDP values where the fixture gives them.
//! * PLD ε within 1 % of dp_accounting's PLD ε refined until converged (< 0.1 % change), and
//!   never below it by more than that convergence gap: the PLD accountant promises an upper
//!   bound. Its stated discretisation error must also cover the gap to the reference.
//! * Analytic Gaussian σ within 1e-6 relative of dp_accounting's `get_sigma_gaussian`.

use privacy_accounting::analytic_gaussian::{
    analytic_gaussian_delta, analytic_gaussian_epsilon, analytic_gaussian_sigma,
};
use privacy_accounting::pld::PldAccountant;
use privacy_accounting::rdp::RdpAccountant;
use privacy_accounting::{Accountant, PoissonGaussian};
use serde::Deserialize;

const FIXTURE: &str = include_str!("fixtures/accounting_reference.json");

/// Relative tolerance against the Python tools (RDP values, ε, analytic Gaussian σ).
const RELATIVE: f64 = 1e-6;
/// Below this magnitude RDP values are compared absolutely (float64 noise of the references).
const ABSOLUTE_FLOOR: f64 = 1e-12;
/// PLD ε may differ from the converged dp_accounting ε by this fraction.
const PLD_RELATIVE: f64 = 0.01;
/// Slack on top of the reference's own convergence gap when checking the upper-bound promise.
const PLD_BOUND_SLACK: f64 = 1e-4;
/// How many failures a test lists before giving up the list.
const SHOWN_FAILURES: usize = 25;

#[derive(Debug, Deserialize)]
struct Fixture {
    tools: Tools,
    opacus_default_orders: Vec<f64>,
    rdp: Vec<RdpCase>,
    pld: Vec<PldCase>,
    analytic_gaussian: AnalyticGaussian,
}

#[derive(Debug, Deserialize)]
struct Tools {
    opacus: String,
    dp_accounting: String,
}

#[derive(Debug, Deserialize)]
struct RdpCase {
    q: f64,
    sigma: f64,
    /// Present for the custom-order cases; otherwise Opacus's default orders.
    #[serde(default)]
    orders: Option<Vec<f64>>,
    /// Opacus per step; `None` where Opacus returned NaN or infinity.
    opacus_rdp_per_step: Vec<Option<f64>>,
    /// mpmath at 30 digits; `None` where not computed.
    exact_rdp_per_step: Vec<Option<f64>>,
    epsilon_cases: Vec<EpsilonCase>,
}

#[derive(Debug, Deserialize)]
struct EpsilonCase {
    steps: u64,
    delta: f64,
    epsilon: f64,
    order: f64,
    #[serde(default)]
    tied_orders: Vec<f64>,
    #[serde(default)]
    exact_input_epsilon: Option<f64>,
    #[serde(default)]
    exact_input_order: Option<f64>,
    #[serde(default)]
    exact_input_tied_orders: Vec<f64>,
}

#[derive(Debug, Deserialize)]
struct PldCase {
    q: f64,
    sigma: f64,
    steps: u64,
    delta: f64,
    epsilon: f64,
    relative_change: f64,
    converged: bool,
}

#[derive(Debug, Deserialize)]
struct AnalyticGaussian {
    cases: Vec<AnalyticGaussianCase>,
}

#[derive(Debug, Deserialize)]
struct AnalyticGaussianCase {
    epsilon: f64,
    delta: f64,
    sensitivity: f64,
    sigma: f64,
}

fn fixture() -> Fixture {
    serde_json::from_str(FIXTURE).expect("the committed fixture parses")
}

/// `actual` agrees with `reference` to `relative`, or absolutely to `ABSOLUTE_FLOOR` when the
/// reference is below the floor.
fn close(actual: f64, reference: f64, relative: f64) -> bool {
    if reference.abs() < ABSOLUTE_FLOOR {
        (actual - reference).abs() <= ABSOLUTE_FLOOR
    } else {
        (actual - reference).abs() <= relative * reference.abs()
    }
}

fn same_order(actual: Option<f64>, expected: f64, tied: &[f64]) -> bool {
    actual.is_some_and(|order| {
        std::iter::once(&expected)
            .chain(tied)
            .any(|candidate| (order - candidate).abs() <= 1e-9 * candidate)
    })
}

fn fail_with(failures: &[String], checked: usize, what: &str) {
    assert!(
        failures.is_empty(),
        "{} of {checked} {what} disagree with the reference; first ones:\n{}",
        failures.len(),
        failures
            .iter()
            .take(SHOWN_FAILURES)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
}

fn orders_of<'a>(case: &'a RdpCase, fixture: &'a Fixture) -> &'a [f64] {
    case.orders
        .as_deref()
        .unwrap_or(&fixture.opacus_default_orders)
}

fn rdp_accountant(orders: &[f64], q: f64, sigma: f64, steps: u64) -> RdpAccountant {
    let mut accountant = RdpAccountant::new(orders.to_vec()).expect("valid order grid");
    let mechanism = PoissonGaussian::new(q, sigma).expect("valid mechanism");
    accountant.compose(mechanism, steps).expect("compose");
    accountant
}

#[test]
fn fixture_records_the_tools_it_came_from() {
    let fixture = fixture();
    assert_eq!(fixture.tools.opacus, "1.6.0");
    assert_eq!(fixture.tools.dp_accounting, "0.6.0");
    assert_eq!(fixture.opacus_default_orders.len(), 151);
    assert!(fixture.rdp.len() >= 36 && fixture.pld.len() >= 10);
}

#[test]
fn rdp_per_order_matches_opacus() {
    let fixture = fixture();
    let mut failures = Vec::new();
    let mut checked = 0;
    let mut only_exact = 0;
    for case in &fixture.rdp {
        let orders = orders_of(case, &fixture);
        let accountant = rdp_accountant(orders, case.q, case.sigma, 1);
        let ours = accountant.rdp().to_vec();
        assert_eq!(ours.len(), orders.len(), "one RDP value per order");
        for (i, &order) in orders.iter().enumerate() {
            checked += 1;
            let opacus = case.opacus_rdp_per_step[i];
            let exact = case.exact_rdp_per_step[i];
            let matches_opacus = opacus.is_some_and(|o| close(ours[i], o, RELATIVE));
            let matches_exact = exact.is_some_and(|e| close(ours[i], e, RELATIVE));
            if !(matches_opacus || matches_exact) {
                failures.push(format!(
                    "q={} sigma={} order={order}: ours {} vs opacus {opacus:?}, exact {exact:?}",
                    case.q, case.sigma, ours[i]
                ));
            } else if !matches_opacus {
                only_exact += 1;
            }
        }
    }
    eprintln!("{only_exact} of {checked} values match the 30-digit value but not Opacus");
    fail_with(&failures, checked, "per-order RDP values");
}

#[test]
fn rdp_free_function_matches_the_accountant_grid() {
    let fixture = fixture();
    for case in fixture.rdp.iter().filter(|c| c.orders.is_some()) {
        let orders = orders_of(case, &fixture);
        let grid = rdp_accountant(orders, case.q, case.sigma, 1).rdp().to_vec();
        for (&order, &from_grid) in orders.iter().zip(&grid) {
            let single = privacy_accounting::rdp::rdp_poisson_gaussian(case.q, case.sigma, order);
            assert!(
                close(single, from_grid, 1e-12),
                "q={} sigma={} order={order}: {single} vs {from_grid}",
                case.q,
                case.sigma
            );
        }
    }
}

#[test]
fn rdp_epsilon_and_order_match_opacus() {
    let fixture = fixture();
    let mut failures = Vec::new();
    let mut checked = 0;
    for case in &fixture.rdp {
        let orders = orders_of(case, &fixture);
        for eps_case in &case.epsilon_cases {
            checked += 1;
            let accountant = rdp_accountant(orders, case.q, case.sigma, eps_case.steps);
            let estimate = match accountant.epsilon(eps_case.delta) {
                Ok(estimate) => estimate,
                Err(e) => {
                    failures.push(format!("q={} sigma={}: error {e}", case.q, case.sigma));
                    continue;
                }
            };
            let matches_opacus = close(estimate.epsilon, eps_case.epsilon, RELATIVE)
                && same_order(estimate.order, eps_case.order, &eps_case.tied_orders);
            let matches_exact = match (eps_case.exact_input_epsilon, eps_case.exact_input_order) {
                (Some(eps), Some(order)) => {
                    close(estimate.epsilon, eps, RELATIVE)
                        && same_order(estimate.order, order, &eps_case.exact_input_tied_orders)
                }
                _ => false,
            };
            let at_edge = estimate
                .order
                .is_some_and(|o| o == orders[0] || o == orders[orders.len() - 1]);
            if !(matches_opacus || matches_exact) || at_edge != estimate.order_at_grid_edge {
                failures.push(format!(
                    "q={} sigma={} T={} delta={}: ours eps={} order={:?} edge={} vs opacus \
                     eps={} order={} (exact-input {:?} at {:?})",
                    case.q,
                    case.sigma,
                    eps_case.steps,
                    eps_case.delta,
                    estimate.epsilon,
                    estimate.order,
                    estimate.order_at_grid_edge,
                    eps_case.epsilon,
                    eps_case.order,
                    eps_case.exact_input_epsilon,
                    eps_case.exact_input_order,
                ));
            }
        }
    }
    fail_with(&failures, checked, "RDP epsilons");
}

#[test]
fn pld_epsilon_matches_converged_dp_accounting() {
    let fixture = fixture();
    let mut failures = Vec::new();
    for case in &fixture.pld {
        assert!(
            case.converged,
            "reference PLD case {case:?} did not converge"
        );
        let mut accountant = PldAccountant::default();
        let mechanism = PoissonGaussian::new(case.q, case.sigma).expect("valid mechanism");
        accountant.compose(mechanism, case.steps).expect("compose");
        let estimate = accountant.epsilon(case.delta).expect("epsilon");
        let reference = case.epsilon;
        let gap = (estimate.epsilon - reference) / reference;
        // The reference is itself an upper bound that approaches the exact value from above;
        // it is within `relative_change` of it.
        let lowest_sound = reference * (1.0 - case.relative_change - PLD_BOUND_SLACK);
        let error = estimate.discretisation_error.unwrap_or(0.0);
        let error_covers_gap = estimate.epsilon - error <= reference * (1.0 + PLD_BOUND_SLACK);
        if gap.abs() > PLD_RELATIVE || estimate.epsilon < lowest_sound || !error_covers_gap {
            failures.push(format!(
                "q={} sigma={} T={} delta={}: ours {} (stated error {error}) vs dp_accounting \
                 {reference} ({:+.3} %)",
                case.q,
                case.sigma,
                case.steps,
                case.delta,
                estimate.epsilon,
                100.0 * gap
            ));
        }
    }
    fail_with(&failures, fixture.pld.len(), "PLD epsilons");
}

#[test]
fn analytic_gaussian_matches_dp_accounting() {
    let fixture = fixture();
    for case in &fixture.analytic_gaussian.cases {
        let inputs = format!(
            "eps={} delta={} sigma={} sens={}",
            case.epsilon, case.delta, case.sigma, case.sensitivity
        );
        // σ is calibrated from (ε, δ). The reference σ is a root found to 1e-14, so ε and δ
        // also round-trip through it.
        for (what, ours, reference) in [
            (
                "sigma",
                analytic_gaussian_sigma(case.epsilon, case.delta, case.sensitivity),
                case.sigma,
            ),
            (
                "delta",
                analytic_gaussian_delta(case.epsilon, case.sigma, case.sensitivity),
                case.delta,
            ),
            (
                "epsilon",
                analytic_gaussian_epsilon(case.delta, case.sigma, case.sensitivity),
                case.epsilon,
            ),
        ] {
            let ours = ours.unwrap_or_else(|e| panic!("{inputs}: {what}: {e}"));
            assert!(
                close(ours, reference, RELATIVE),
                "{inputs}: {what} {ours} vs dp_accounting {reference}"
            );
        }
    }
}
