#!/usr/bin/env python3
"""Generates the reference fixture for fedsyn's privacy accountants.

Writes crates/privacy-accounting/tests/fixtures/accounting_reference.json, which the Rust tests
in crates/privacy-accounting/tests/reference.rs compare against. Run it in the benchmark venv:

    scripts/bench-venv.sh && .venv-bench/bin/python scripts/reference/accounting.py

Three sections:

* ``rdp``: Opacus's RDP of the Poisson-subsampled Gaussian per order (``compute_rdp`` with
  steps = 1; Opacus multiplies by the step count) on Opacus's default orders over a grid of
  (q, σ), then ``get_privacy_spent`` ε and best order over a grid of (T, δ). A few cases use
  custom fractional and large orders. Opacus works in float64 log space and loses relative
  accuracy when the RDP is tiny (it returns ≈ 1e-16 absolute noise, even negative values, for
  q = 1e-6, σ = 50) and returns NaN at order 1e4 (its binomial coefficient overflows). So every
  per-step value below ``EXACT_BELOW`` and every custom-order value is also computed at 30
  significant digits with mpmath, straight from the definition of the Rényi divergence
  (a binomial sum for integer orders, quadrature of E_{N(0,σ²)}[(μ/μ₀)^α] for fractional ones).
  Where these "exact" values exist, ε is also recomputed from them with Opacus's own
  ``get_privacy_spent``.
* ``pld``: dp_accounting's PLDAccountant ε at δ, refined (value_discretization_interval divided
  by 3 each time) until ε changes by < 0.1 %: the converged value stands for the exact ε.
  dp_accounting's and Opacus's RDP ε are recorded alongside for the report.
* ``analytic_gaussian``: the smallest σ of the (non-subsampled) Gaussian mechanism at (ε, δ)
  from dp_accounting's ``get_sigma_gaussian`` (Balle & Wang 2018, exact, brentq with xtol
  1e-12), scaled by the sensitivity (σ is linear in it).

Run time is a few minutes on 2 cores; progress goes to stderr.
"""

import json
import math
import multiprocessing
import platform
import sys
import time
import warnings
from importlib.metadata import version
from pathlib import Path

import mpmath
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import torchless_opacus  # noqa: E402

import dp_accounting  # noqa: E402
from dp_accounting.pld import pld_privacy_accountant  # noqa: E402
from dp_accounting.rdp import rdp_privacy_accountant  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[2]
FIXTURE = (
    REPO_ROOT
    / "crates/privacy-accounting/tests/fixtures/accounting_reference.json"
)

OPACUS = torchless_opacus.load_rdp_analysis()
DEFAULT_ORDERS = torchless_opacus.OPACUS_DEFAULT_ALPHAS

# RDP grid: tiny q, q = 1, small and large σ; T up to 1e8.
RDP_SAMPLING_RATES = [1e-6, 1e-5, 1e-3, 0.01, 0.1, 1.0]
RDP_NOISE_MULTIPLIERS = [0.3, 0.5, 1.0, 2.0, 5.0, 50.0]
RDP_STEPS = [1, 10, 1000, 100_000, 1_000_000, 100_000_000]
RDP_DELTAS = [1e-5, 1e-8]

# Fractional and large orders for the fractional series and the large-order paths.
CUSTOM_ORDERS = [1.25, 2.5, 10.5, 100.0, 256.0, 1000.5, 1e4]
CUSTOM_ORDER_MECHANISMS = [(0.01, 1.0), (1e-5, 0.5), (0.1, 2.0), (0.001, 0.8), (1e-6, 0.3)]
CUSTOM_ORDER_STEPS = [1000, 100_000]
CUSTOM_ORDER_DELTA = 1e-5

# Per-step RDP values below this get an mpmath value too: Opacus's float64 log-space sums have
# an absolute error near 1e-12 relative to A_α ≈ 1, which is > 1e-7 relative below ~1e-5.
EXACT_BELOW = 1e-3
EXACT_DIGITS = 30
# The quadrature used for fractional orders must reproduce the binomial sums to this accuracy.
QUADRATURE_CHECK_RELATIVE = 1e-12

# Orders whose ε is within this relative distance of the best count as ties.
TIE_RELATIVE = 1e-9

# PLD cases (q, σ, T, δ): tiny q, small σ, T ≥ 1e5, and the published q = 1 settings.
PLD_CASES = [
    (0.01, 1.0, 10_000, 1e-5),  # the benchmark setting
    (1e-5, 0.5, 100_000, 1e-5),
    (1e-6, 0.3, 1_000_000, 1e-6),
    (0.001, 0.8, 1_000_000, 1e-6),
    (0.001, 1.0, 100_000, 1e-8),
    (0.01, 5.0, 100_000, 1e-5),
    (0.01, 0.5, 1000, 1e-5),
    (0.05, 1.0, 100, 1e-5),
    (0.1, 2.0, 1000, 1e-6),
    (0.3, 0.3, 10, 1e-5),
    (1.0, 11.3, 11, 3e-6),  # PrE-Text
    (1.0, 2.31, 11, 3e-6),  # PrE-Text
    (1.0, 19.3, 20, 3e-6),  # POPri
]
PLD_FIRST_INTERVAL = 1e-3
PLD_REFINEMENT = 3.0
PLD_CONVERGED_RELATIVE = 1e-3
PLD_MAX_REFINEMENTS = 7

ANALYTIC_GAUSSIAN_CASES = [
    # (ε, δ, sensitivity)
    (0.01, 1e-3, 1.0),
    (0.1, 1e-5, 1.0),
    (0.5, 1e-5, 1.0),
    (1.0, 1e-5, 1.0),
    (1.0, 1e-6, 2.0),
    (2.0, 1e-8, 1.0),
    (5.0, 1e-5, 0.5),
    (10.0, 1e-10, 1.0),
    (20.0, 1e-5, 1.0),
]


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def finite_or_none(value: float):
    """JSON has no NaN or infinity: those become null."""
    value = float(value)
    return value if math.isfinite(value) else None


# ---------------------------------------------------------------------------------------------
# High-precision RDP straight from the definition.
#
# The RDP of the Poisson-subsampled Gaussian (add/remove adjacency, sensitivity 1) at order α is
# log(A_α)/(α − 1), A_α = E_{z~N(0,σ²)}[((1 − q) + q·exp((2z − 1)/(2σ²)))^α] (Mironov, Talwar &
# Zhang 2019). For integer α the binomial theorem turns A_α into a finite sum. For fractional α we
# integrate; the integrand has up to two bumps, near z = 0 and near z = α (where the Gaussian
# factor meets the growth of the likelihood ratio), so the interval is split around both.


def exact_log_a_integer(q, sigma, order: int):
    q, sigma = mpmath.mpf(q), mpmath.mpf(sigma)
    total = mpmath.mpf(0)
    for k in range(order + 1):
        total += (
            mpmath.binomial(order, k)
            * (1 - q) ** (order - k)
            * q**k
            * mpmath.exp(mpmath.mpf(k * k - k) / (2 * sigma**2))
        )
    return mpmath.log(total)


def exact_log_a_fractional(q, sigma, order: float):
    q, sigma, alpha = mpmath.mpf(q), mpmath.mpf(sigma), mpmath.mpf(order)
    half_precision = 1 / (2 * sigma**2)
    density = 1 / (mpmath.sqrt(2 * mpmath.pi) * sigma)

    def a_minus_one_integrand(z):
        # A_α − 1 is integrated directly so that tiny RDP values keep their relative accuracy.
        ratio = 1 + q * mpmath.expm1((2 * z - 1) * half_precision)
        return density * mpmath.exp(-z * z * half_precision) * (ratio**alpha - 1)

    splits = sorted(
        {
            mpmath.mpf(x)
            for centre in (0, order)
            for x in (centre - 30 * sigma, centre - 5 * sigma, centre, centre + 5 * sigma,
                      centre + 30 * sigma)
        }
    )
    a_minus_one = mpmath.quad(a_minus_one_integrand, [-mpmath.inf, *splits, mpmath.inf])
    return mpmath.log1p(a_minus_one)


def exact_rdp(args):
    """Per-step RDP at 30 digits, as a float. ``args`` = (q, σ, α) for use with a Pool."""
    q, sigma, order = args
    mpmath.mp.dps = EXACT_DIGITS
    if q == 1.0:
        return order / (2 * sigma**2)
    if float(order).is_integer():
        log_a = exact_log_a_integer(q, sigma, int(order))
    else:
        log_a = exact_log_a_fractional(q, sigma, order)
    return float(log_a / (mpmath.mpf(order) - 1))


def check_quadrature(args):
    """The quadrature path against the exact binomial sum at integer orders: returns the worst
    relative gap for (q, σ)."""
    q, sigma = args
    mpmath.mp.dps = EXACT_DIGITS
    worst = 0.0
    for order in (2, 7, 40):
        by_sum = exact_log_a_integer(q, sigma, order)
        by_quadrature = exact_log_a_fractional(q, sigma, float(order))
        worst = max(worst, float(abs(by_quadrature - by_sum) / abs(by_sum)))
    return worst


# ---------------------------------------------------------------------------------------------
# RDP section.


def opacus_rdp_per_step(q, sigma, orders):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return OPACUS.compute_rdp(q=q, noise_multiplier=sigma, steps=1, orders=orders)


def opacus_epsilon(orders, rdp, delta):
    """Opacus's ε and best order, plus every order within TIE_RELATIVE of the best."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        eps, order = OPACUS.get_privacy_spent(orders=orders, rdp=rdp, delta=delta)
        per_order = [
            float(OPACUS.get_privacy_spent(orders=[a], rdp=[r], delta=delta)[0])
            for a, r in zip(orders, rdp)
        ]
    ties = [
        a
        for a, e in zip(orders, per_order)
        if math.isfinite(e) and e <= float(eps) * (1 + TIE_RELATIVE) and a != order
    ]
    return float(eps), float(order), ties


def needs_exact(opacus_value: float, custom: bool) -> bool:
    return custom or not math.isfinite(opacus_value) or abs(opacus_value) < EXACT_BELOW


def rdp_case(q, sigma, orders, custom, steps_grid, deltas, exact_values):
    opacus = opacus_rdp_per_step(q, sigma, orders)
    exact = [exact_values.get((q, sigma, a)) for a in orders]
    blended = np.array(
        [e if e is not None else o for e, o in zip(exact, opacus)], dtype=float
    )
    cases = []
    for steps in steps_grid:
        for delta in deltas:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                rdp_total = OPACUS.compute_rdp(
                    q=q, noise_multiplier=sigma, steps=steps, orders=orders
                )
            eps, order, ties = opacus_epsilon(orders, rdp_total, delta)
            entry = {
                "steps": steps,
                "delta": delta,
                "epsilon": finite_or_none(eps),
                "order": order,
            }
            if ties:
                entry["tied_orders"] = ties
            exact_eps, exact_order, exact_ties = opacus_epsilon(orders, blended * steps, delta)
            if not (
                math.isfinite(eps)
                and exact_order == order
                and abs(exact_eps - eps) <= 1e-9 * abs(eps)
            ):
                entry["exact_input_epsilon"] = finite_or_none(exact_eps)
                entry["exact_input_order"] = exact_order
                if exact_ties:
                    entry["exact_input_tied_orders"] = exact_ties
            cases.append(entry)
    case = {"q": q, "sigma": sigma}
    if custom:
        # Cases on Opacus's default orders leave them out (they are listed once, top level).
        case["orders"] = [float(a) for a in orders]
    return {
        **case,
        "opacus_rdp_per_step": [finite_or_none(v) for v in opacus],
        "exact_rdp_per_step": exact,
        "epsilon_cases": cases,
    }


def rdp_section(pool):
    mechanisms = [(q, s, False) for q in RDP_SAMPLING_RATES for s in RDP_NOISE_MULTIPLIERS]
    mechanisms += [(q, s, True) for q, s in CUSTOM_ORDER_MECHANISMS]
    jobs = []
    for q, sigma, custom in mechanisms:
        orders = CUSTOM_ORDERS if custom else DEFAULT_ORDERS
        for order, value in zip(orders, opacus_rdp_per_step(q, sigma, orders)):
            if q < 1.0 and needs_exact(value, custom):
                jobs.append((q, sigma, order))
    start = time.time()
    sub_sampled = sorted({(q, s) for q, s, _ in mechanisms if q < 1.0})
    worst = max(pool.map(check_quadrature, sub_sampled))
    log(f"rdp: quadrature vs binomial sums at integer orders: worst relative gap {worst:.1e}")
    if worst > QUADRATURE_CHECK_RELATIVE:
        raise SystemExit("the mpmath quadrature disagrees with the binomial sum: not writing")
    log(f"rdp: {len(jobs)} orders at {EXACT_DIGITS} digits (mpmath) ...")
    exact_values = dict(zip(jobs, pool.map(exact_rdp, jobs, chunksize=4)))
    log(f"rdp: exact values took {time.time() - start:.0f} s")
    cases = []
    for q, sigma, custom in mechanisms:
        if custom:
            case = rdp_case(
                q, sigma, CUSTOM_ORDERS, True, CUSTOM_ORDER_STEPS, [CUSTOM_ORDER_DELTA],
                exact_values,
            )
        else:
            case = rdp_case(
                q, sigma, DEFAULT_ORDERS, False, RDP_STEPS, RDP_DELTAS, exact_values
            )
        cases.append(case)
    log(f"rdp: {len(cases)} mechanisms, {sum(len(c['epsilon_cases']) for c in cases)} ε cases")
    return cases


# ---------------------------------------------------------------------------------------------
# PLD section.


def poisson_gaussian_event(q, sigma):
    return dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma))


def dp_accounting_pld_epsilon(q, sigma, steps, delta, interval):
    accountant = pld_privacy_accountant.PLDAccountant(value_discretization_interval=interval)
    accountant.compose(poisson_gaussian_event(q, sigma), steps)
    return float(accountant.get_epsilon(delta))


def dp_accounting_rdp_epsilon(q, sigma, steps, delta):
    accountant = rdp_privacy_accountant.RdpAccountant()
    accountant.compose(poisson_gaussian_event(q, sigma), steps)
    return float(accountant.get_epsilon(delta))


def pld_case(case):
    q, sigma, steps, delta = case
    start = time.time()
    interval = PLD_FIRST_INTERVAL
    epsilon = dp_accounting_pld_epsilon(q, sigma, steps, delta, interval)
    previous = None
    converged = False
    for _ in range(PLD_MAX_REFINEMENTS):
        previous = (interval, epsilon)
        interval /= PLD_REFINEMENT
        epsilon = dp_accounting_pld_epsilon(q, sigma, steps, delta, interval)
        change = abs(previous[1] - epsilon) / max(abs(epsilon), 1e-300)
        if change < PLD_CONVERGED_RELATIVE:
            converged = True
            break
    rdp_eps, rdp_order, _ = opacus_epsilon(
        DEFAULT_ORDERS,
        OPACUS.compute_rdp(q=q, noise_multiplier=sigma, steps=steps, orders=DEFAULT_ORDERS),
        delta,
    )
    return {
        "q": q,
        "sigma": sigma,
        "steps": steps,
        "delta": delta,
        "epsilon": epsilon,
        "value_discretization_interval": interval,
        "previous_epsilon": previous[1],
        "previous_value_discretization_interval": previous[0],
        "relative_change": abs(previous[1] - epsilon) / max(abs(epsilon), 1e-300),
        "converged": converged,
        "dp_accounting_rdp_epsilon": dp_accounting_rdp_epsilon(q, sigma, steps, delta),
        "opacus_rdp_epsilon": rdp_eps,
        "seconds": round(time.time() - start, 2),
    }


def pld_section(pool):
    log(f"pld: {len(PLD_CASES)} cases, refining the grid until ε moves < 0.1 % ...")
    cases = []
    for result in pool.imap(pld_case, PLD_CASES):
        log(
            f"pld: q={result['q']} σ={result['sigma']} T={result['steps']} "
            f"δ={result['delta']}: ε={result['epsilon']:.6g} at interval "
            f"{result['value_discretization_interval']:.3g} "
            f"(converged={result['converged']}, {result['seconds']} s)"
        )
        cases.append(result)
    return cases


# ---------------------------------------------------------------------------------------------
# Analytic Gaussian section.


def analytic_gaussian_section():
    cases = []
    for epsilon, delta, sensitivity in ANALYTIC_GAUSSIAN_CASES:
        sigma_unit = dp_accounting.get_sigma_gaussian(epsilon, delta, tol=1e-14)
        cases.append(
            {
                "epsilon": epsilon,
                "delta": delta,
                "sensitivity": sensitivity,
                "sigma": sigma_unit * sensitivity,
            }
        )
    log(f"analytic gaussian: {len(cases)} cases")
    return {
        "source": "dp_accounting.get_sigma_gaussian (Balle & Wang 2018, exact; brentq "
        "xtol 1e-14), multiplied by the sensitivity",
        "cases": cases,
    }


def tool_versions():
    return {
        "python": platform.python_version(),
        "opacus": torchless_opacus.opacus_version(),
        "dp_accounting": version("dp-accounting"),
        "numpy": version("numpy"),
        "scipy": version("scipy"),
        "mpmath": version("mpmath"),
    }


def main():
    start = time.time()
    with multiprocessing.Pool(2) as pool:
        rdp = rdp_section(pool)
        pld = pld_section(pool)
    fixture = {
        "generated_by": "scripts/reference/accounting.py",
        "tools": tool_versions(),
        "opacus_default_orders": [float(a) for a in DEFAULT_ORDERS],
        "notes": {
            "rdp": "opacus_rdp_per_step: Opacus compute_rdp(steps=1) per order (null where "
            "Opacus returns NaN/inf); exact_rdp_per_step: the same at 30 digits with mpmath "
            "from the definition (null where not computed: values >= 1e-3 and q = 1, where "
            "Opacus is accurate to ~1e-15). epsilon/order: Opacus get_privacy_spent on "
            "compute_rdp(steps); tied_orders: other orders within 1e-9 relative of the best; "
            "exact_input_*: Opacus get_privacy_spent on the exact values, present only where "
            "it differs.",
            "pld": "epsilon: dp_accounting PLDAccountant at value_discretization_interval, "
            "refined by /3 until the relative change from previous_epsilon is < 1e-3 "
            "(pessimistic estimate: an upper bound approaching the exact value from above).",
        },
        "rdp": rdp,
        "pld": pld,
        "analytic_gaussian": analytic_gaussian_section(),
    }
    FIXTURE.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(fixture, indent=None, separators=(",", ":"), allow_nan=False)
    FIXTURE.write_text(text + "\n")
    log(f"wrote {FIXTURE} ({len(text) / 1024:.0f} KiB) in {time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
