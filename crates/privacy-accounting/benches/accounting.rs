//! Accounting benchmark: the operations a user runs before and after training, timed in one
//! process, printed as one JSON object for `benches/run-accounting.sh` to set beside the Python
//! tools (Opacus, dp_accounting).
//!
//! Setting: q = 0.01, σ = 1, T = 10⁴, δ = 1e-5, σ calibrated to ε = 2. Each operation is run
//! once to warm up, then repeated until at least `MIN_TOTAL` has passed (at least
//! `MIN_REPEATS`, at most `MAX_REPEATS` times); the median is reported. Peak memory is the
//! process's VmHWM at the end (Linux), next to its resident size before the first operation
//! (the shared libraries the binary loads); the difference is what the accountants used.
//!
//! Run: `cargo bench -p privacy-accounting --bench accounting` (or `benches/run-accounting.sh` for the comparison).

use std::hint::black_box;
use std::time::{Duration, Instant};

use privacy_accounting::calibration::{calibrate_sigma, DEFAULT_SIGMA_TOLERANCE};
use privacy_accounting::pld::PldAccountant;
use privacy_accounting::rdp::{default_orders, RdpAccountant};
use privacy_accounting::{Accountant, AccountantKind, EpsilonEstimate, PoissonGaussian};
use serde_json::{json, Value};

const Q: f64 = 0.01;
const SIGMA: f64 = 1.0;
const STEPS: u64 = 10_000;
const DELTA: f64 = 1e-5;
const TARGET_EPSILON: f64 = 2.0;

const MIN_TOTAL: Duration = Duration::from_secs(1);
const MIN_REPEATS: usize = 5;
const MAX_REPEATS: usize = 1000;

/// Median wall time of `op` in milliseconds, after one warm-up call, and the last result.
fn time_median<T>(mut op: impl FnMut() -> T) -> (f64, usize, T) {
    let mut result = black_box(op());
    let mut samples = Vec::new();
    let started = Instant::now();
    while samples.len() < MIN_REPEATS
        || (started.elapsed() < MIN_TOTAL && samples.len() < MAX_REPEATS)
    {
        let start = Instant::now();
        result = black_box(op());
        samples.push(start.elapsed().as_secs_f64() * 1e3);
    }
    samples.sort_by(f64::total_cmp);
    (samples[samples.len() / 2], samples.len(), result)
}

fn mechanism() -> PoissonGaussian {
    PoissonGaussian::new(Q, SIGMA).expect("benchmark mechanism is valid")
}

fn epsilon_with(mut accountant: impl Accountant) -> EpsilonEstimate {
    accountant
        .compose(mechanism(), STEPS)
        .expect("compose the benchmark mechanism");
    accountant.epsilon(DELTA).expect("epsilon of the benchmark")
}

fn rdp_epsilon(orders: Vec<f64>) -> Value {
    let (ms, repeats, estimate) =
        time_median(|| epsilon_with(RdpAccountant::new(orders.clone()).expect("valid orders")));
    json!({
        "median_ms": ms,
        "repeats": repeats,
        "orders": orders.len(),
        "epsilon": estimate.epsilon,
        "order": estimate.order,
    })
}

fn pld_epsilon() -> Value {
    let (ms, repeats, estimate) = time_median(|| epsilon_with(PldAccountant::default()));
    json!({
        "median_ms": ms,
        "repeats": repeats,
        "epsilon": estimate.epsilon,
        "discretisation_error": estimate.discretisation_error,
    })
}

fn sigma_calibration(kind: AccountantKind) -> Value {
    let (ms, repeats, calibration) = time_median(|| {
        calibrate_sigma(
            kind,
            TARGET_EPSILON,
            Q,
            STEPS,
            DELTA,
            DEFAULT_SIGMA_TOLERANCE,
        )
        .expect("target epsilon 2 is reachable")
    });
    json!({
        "median_ms": ms,
        "repeats": repeats,
        "sigma": calibration.sigma,
        "epsilon": calibration.epsilon,
        "tolerance": DEFAULT_SIGMA_TOLERANCE,
    })
}

/// A memory figure of this process in MiB from /proc/self/status (Linux only): `VmHWM` is the
/// peak resident set size, `VmRSS` the current one.
fn status_mib(field: &str) -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

fn main() {
    // The benchmark binary belongs to the root package and so loads its shared libraries
    // (libtorch among them: hundreds of MiB resident before any accounting runs). The resident
    // size before the first operation is recorded so the accountants' own peak can be told
    // apart from that.
    let baseline_rss_mib = status_mib("VmRSS:");
    let report = json!({
        "tool": "fedsyn privacy-accounting",
        "setting": {"q": Q, "sigma": SIGMA, "steps": STEPS, "delta": DELTA,
                    "target_epsilon": TARGET_EPSILON},
        // default_orders() are Opacus's 151 orders, so this is like for like with Opacus.
        "rdp_epsilon": rdp_epsilon(default_orders()),
        "pld_epsilon": pld_epsilon(),
        "rdp_sigma_calibration": sigma_calibration(AccountantKind::Rdp),
        "pld_sigma_calibration": sigma_calibration(AccountantKind::Pld),
        "peak_rss_mib": status_mib("VmHWM:"),
        "baseline_rss_mib": baseline_rss_mib,
    });
    println!("{report}");
}
