//! ε values published for DP synthetic text, reproduced with the default RDP accountant.
//!
//! Both papers run full participation (q = 1) for T rounds at δ = 3e-6 and report RDP ε with the
//! Opacus conversion:
//!
//! * PrE-Text (Hou et al., ICML 2024): T = 11, σ = 11.3 → ε ≈ 1.29; σ = 2.31 → ε ≈ 7.58.
//! * POPri (ICML 2025): T = 20, σ = 19.3 → ε ≈ 0.997; σ = 3.35 → ε ≈ 6.96.
//!
//! The PLD accountant is tighter, so it must never report more than RDP. With q = 1 the T
//! releases compose exactly into one Gaussian release with noise multiplier σ/√T, so PLD must also
//! agree with the analytic Gaussian ε of that single release.

use privacy_accounting::analytic_gaussian::analytic_gaussian_epsilon;
use privacy_accounting::pld::PldAccountant;
use privacy_accounting::rdp::RdpAccountant;
use privacy_accounting::{Accountant, EpsilonEstimate, PoissonGaussian};

const DELTA: f64 = 3e-6;
/// The papers print two or three significant digits.
const PUBLISHED_TOLERANCE: f64 = 0.01;
/// PLD against the exact single-Gaussian ε: its discretisation is ~1e-4 in ε by default.
const PLD_VS_EXACT_RELATIVE: f64 = 0.01;

struct Published {
    source: &'static str,
    sigma: f64,
    rounds: u64,
    epsilon: f64,
}

const PUBLISHED: [Published; 4] = [
    Published {
        source: "PrE-Text, sigma 11.3",
        sigma: 11.3,
        rounds: 11,
        epsilon: 1.29,
    },
    Published {
        source: "PrE-Text, sigma 2.31",
        sigma: 2.31,
        rounds: 11,
        epsilon: 7.58,
    },
    Published {
        source: "POPri, sigma 19.3",
        sigma: 19.3,
        rounds: 20,
        epsilon: 0.997,
    },
    Published {
        source: "POPri, sigma 3.35",
        sigma: 3.35,
        rounds: 20,
        epsilon: 6.96,
    },
];

fn epsilon_of(mut accountant: impl Accountant, case: &Published) -> EpsilonEstimate {
    let full_participation = PoissonGaussian::new(1.0, case.sigma).expect("valid mechanism");
    accountant
        .compose(full_participation, case.rounds)
        .expect("compose");
    accountant.epsilon(DELTA).expect("epsilon")
}

#[test]
fn rdp_reproduces_published_epsilons() {
    for case in &PUBLISHED {
        let rdp = epsilon_of(RdpAccountant::default(), case);
        assert!(
            (rdp.epsilon - case.epsilon).abs() <= PUBLISHED_TOLERANCE,
            "{}: RDP eps {} (order {:?}) vs published {}",
            case.source,
            rdp.epsilon,
            rdp.order,
            case.epsilon
        );
        assert!(
            !rdp.order_at_grid_edge,
            "{}: optimal order {:?} at the edge of the default grid",
            case.source, rdp.order
        );
    }
}

#[test]
fn pld_is_tighter_than_rdp_on_published_settings() {
    for case in &PUBLISHED {
        let rdp = epsilon_of(RdpAccountant::default(), case);
        let pld = epsilon_of(PldAccountant::default(), case);
        assert!(
            pld.epsilon <= rdp.epsilon,
            "{}: PLD eps {} > RDP eps {}",
            case.source,
            pld.epsilon,
            rdp.epsilon
        );
    }
}

#[test]
fn pld_matches_the_exact_composed_gaussian() {
    for case in &PUBLISHED {
        let pld = epsilon_of(PldAccountant::default(), case);
        let composed_std = case.sigma / (case.rounds as f64).sqrt();
        let exact = analytic_gaussian_epsilon(DELTA, composed_std, 1.0).expect("epsilon");
        assert!(
            pld.epsilon >= exact * (1.0 - 1e-7),
            "{}: PLD eps {} below the exact {exact}: not an upper bound",
            case.source,
            pld.epsilon
        );
        assert!(
            (pld.epsilon - exact) / exact <= PLD_VS_EXACT_RELATIVE,
            "{}: PLD eps {} vs exact {exact}",
            case.source,
            pld.epsilon
        );
    }
}
