#!/usr/bin/env python3
"""The Python side of the accounting benchmark: what a user would run instead of fedsyn.

Same setting as crates/privacy-accounting/benches/accounting.rs: q = 0.01, σ = 1, T = 10⁴, δ = 1e-5, σ calibrated to
ε = 2. Each operation runs in a fresh interpreter (``--op NAME``) so that its peak RSS
(``resource.getrusage(...).ru_maxrss``) belongs to that tool alone; imports happen before the
timer starts; the RSS right before the first call is recorded too, so that the operation's own
memory (peak − start) can be told apart from the interpreter's. Timing: one warm-up call, then
repeats until ≥ 1 s (≥ 3, ≤ 200 repeats), median.

Operations:
* ``opacus_rdp``: Opacus ``compute_rdp`` + ``get_privacy_spent`` on its default orders.
* ``opacus_get_noise_multiplier``: Opacus's own ``get_noise_multiplier`` source, run with a
  torch-free stand-in accountant around Opacus's ``compute_rdp``/``get_privacy_spent`` (see
  scripts/reference/torchless_opacus.py; Opacus's accountant module imports torch). Its
  bisection stops at ε within 0.01 of the target (Opacus's default tolerance).
* ``dp_accounting_rdp``: dp_accounting ``RdpAccountant`` with its default orders.
* ``dp_accounting_pld_1e-4``: dp_accounting ``PLDAccountant`` at value_discretization_interval
  1e-4 (its default).
* ``dp_accounting_pld_matched``: the same at the coarsest interval of a ladder whose ε is as
  close to the converged ε as fedsyn's (``--rust-epsilon``); "converged" = interval 1e-5. The
  interval is chosen in a separate interpreter (``choose_pld_interval``, untimed).
* ``dp_accounting_rdp_calibration`` / ``dp_accounting_pld_calibration``: dp_accounting
  ``calibrate_dp_mechanism`` for σ at ε = 2 (PLD at interval 1e-4).

Usage:
    .venv-bench/bin/python benches/python/accounting_anchor.py [--rust-epsilon EPS] > py.json
    .venv-bench/bin/python benches/python/accounting_anchor.py --markdown rust.json py.json
"""

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from importlib.metadata import version
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT / "scripts" / "reference"))

Q, SIGMA, STEPS, DELTA, TARGET_EPSILON = 0.01, 1.0, 10_000, 1e-5, 2.0
CONVERGED_INTERVAL = 1e-5
# dp_accounting's calibration tolerance is absolute in σ: 2.3e-4 at σ ≈ 2.3 matches fedsyn's
# default relative tolerance of 1e-4.
SIGMA_TOLERANCE = 2.3e-4
PLD_INTERVAL_LADDER = [
    1e-2, 5e-3, 3e-3, 2e-3, 1.5e-3, 1e-3, 7e-4, 5e-4, 3e-4, 2e-4, 1e-4, 5e-5, 2e-5, 1e-5
]
MIN_TOTAL_S, MIN_REPEATS, MAX_REPEATS = 1.0, 3, 200


def time_median(op):
    """(median ms, repeats, last result) after one warm-up call."""
    result = op()
    samples = []
    started = time.perf_counter()
    while len(samples) < MIN_REPEATS or (
        time.perf_counter() - started < MIN_TOTAL_S and len(samples) < MAX_REPEATS
    ):
        start = time.perf_counter()
        result = op()
        samples.append((time.perf_counter() - start) * 1e3)
    return statistics.median(samples), len(samples), result


# ---------------------------------------------------------------------------------------------
# Operations: each returns (callable, how to describe its result).


def opacus_rdp(_args):
    import torchless_opacus

    analysis = torchless_opacus.load_rdp_analysis()
    orders = torchless_opacus.OPACUS_DEFAULT_ALPHAS

    def run():
        rdp = analysis.compute_rdp(q=Q, noise_multiplier=SIGMA, steps=STEPS, orders=orders)
        eps, order = analysis.get_privacy_spent(orders=orders, rdp=rdp, delta=DELTA)
        return {"epsilon": float(eps), "order": float(order)}

    return run


def opacus_get_noise_multiplier(_args):
    import torchless_opacus

    get_noise_multiplier = torchless_opacus.load_get_noise_multiplier()

    def run():
        sigma = get_noise_multiplier(
            target_epsilon=TARGET_EPSILON,
            target_delta=DELTA,
            sample_rate=Q,
            steps=STEPS,
            accountant="rdp",
        )
        return {
            "sigma": float(sigma),
            "note": "Opacus utils.get_noise_multiplier source with a torch-free stand-in "
            "accountant around Opacus compute_rdp/get_privacy_spent; epsilon_tolerance 0.01",
        }

    return run


def poisson_gaussian_event():
    import dp_accounting

    return dp_accounting.PoissonSampledDpEvent(Q, dp_accounting.GaussianDpEvent(SIGMA))


def dp_accounting_rdp(_args):
    from dp_accounting.rdp import rdp_privacy_accountant

    event = poisson_gaussian_event()

    def run():
        accountant = rdp_privacy_accountant.RdpAccountant()
        accountant.compose(event, STEPS)
        eps, order = accountant.get_epsilon_and_optimal_order(DELTA)
        return {"epsilon": float(eps), "order": float(order)}

    return run


def pld_epsilon(interval):
    from dp_accounting.pld import pld_privacy_accountant

    accountant = pld_privacy_accountant.PLDAccountant(value_discretization_interval=interval)
    accountant.compose(poisson_gaussian_event(), STEPS)
    return float(accountant.get_epsilon(DELTA))


def dp_accounting_pld_fixed(interval):
    def make(_args):
        def run():
            return {"epsilon": pld_epsilon(interval), "interval": interval}

        return run

    return make


def matched_interval(rust_epsilon):
    """The coarsest ladder interval whose ε is at least as close to the converged ε as
    fedsyn's, with the errors that decided it."""
    converged = pld_epsilon(CONVERGED_INTERVAL)
    target_error = abs(rust_epsilon - converged) / converged
    chosen = None
    for interval in PLD_INTERVAL_LADDER:
        error = abs(pld_epsilon(interval) - converged) / converged
        if error <= target_error:
            chosen = (interval, error)
            break
    if chosen is None:
        chosen = (CONVERGED_INTERVAL, 0.0)
    return {
        "interval": chosen[0],
        "relative_error": chosen[1],
        "rust_relative_error": target_error,
        "converged_epsilon": converged,
        "converged_interval": CONVERGED_INTERVAL,
    }


def choose_pld_interval(args):
    """Not timed: picks the equal-accuracy interval (in its own interpreter, so the fine
    converged grid does not inflate the timed run's peak RSS)."""
    if args.rust_epsilon is None:
        raise SystemExit("choose_pld_interval needs --rust-epsilon")

    def run():
        return matched_interval(args.rust_epsilon)

    return run


def dp_accounting_pld_matched(args):
    if args.pld_match is None:
        raise SystemExit("dp_accounting_pld_matched needs --pld-match (from choose_pld_interval)")
    match = json.loads(args.pld_match)

    def run():
        return {"epsilon": pld_epsilon(match["interval"]), **match}

    return run


def dp_accounting_calibration(make_accountant):
    def make(_args):
        import dp_accounting

        def composed_event(sigma):
            return dp_accounting.SelfComposedDpEvent(
                dp_accounting.PoissonSampledDpEvent(Q, dp_accounting.GaussianDpEvent(sigma)),
                STEPS,
            )

        def run():
            sigma = dp_accounting.calibrate_dp_mechanism(
                make_accountant,
                composed_event,
                TARGET_EPSILON,
                DELTA,
                dp_accounting.LowerEndpointAndGuess(0.0, 1.0),
                tol=SIGMA_TOLERANCE,
            )
            return {"sigma": float(sigma), "tolerance": SIGMA_TOLERANCE}

        return run

    return make


def rdp_accountant_factory():
    from dp_accounting.rdp import rdp_privacy_accountant

    return rdp_privacy_accountant.RdpAccountant()


def pld_accountant_factory():
    from dp_accounting.pld import pld_privacy_accountant

    return pld_privacy_accountant.PLDAccountant(value_discretization_interval=1e-4)


OPERATIONS = {
    "opacus_rdp": opacus_rdp,
    "opacus_get_noise_multiplier": opacus_get_noise_multiplier,
    "dp_accounting_rdp": dp_accounting_rdp,
    "dp_accounting_pld_1e-4": dp_accounting_pld_fixed(1e-4),
    "dp_accounting_pld_matched": dp_accounting_pld_matched,
    "choose_pld_interval": choose_pld_interval,
    "dp_accounting_rdp_calibration": dp_accounting_calibration(rdp_accountant_factory),
    "dp_accounting_pld_calibration": dp_accounting_calibration(pld_accountant_factory),
}


def run_one(args):
    """Child mode: time one operation (or, for choose_pld_interval, just run it once), print
    its JSON line."""
    run = OPERATIONS[args.op](args)
    if args.op == "choose_pld_interval":
        print(json.dumps(run()))
        return
    baseline_mib = current_rss_mib()
    ms, repeats, result = time_median(run)
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    print(json.dumps({"median_ms": ms, "repeats": repeats, "peak_rss_mib": peak_kib / 1024,
                      "baseline_rss_mib": baseline_mib, **result}))


def current_rss_mib():
    """Resident set size now (VmRSS, Linux), or None: the interpreter with the tool imported,
    before the operation first runs."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def cpu_model():
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return platform.processor()
    for line in out.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def run_child(arguments):
    """Runs this script in a fresh interpreter and returns the JSON it prints last."""
    command = [sys.executable, __file__, *arguments]
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def run_all(args):
    """Parent mode: every operation in its own interpreter."""
    report = {
        "tool": "python anchors",
        "versions": {
            "python": platform.python_version(),
            "opacus": version("opacus"),
            "dp_accounting": version("dp-accounting"),
            "numpy": version("numpy"),
            "scipy": version("scipy"),
        },
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count()},
    }
    for name in OPERATIONS:
        if name == "choose_pld_interval":
            continue
        extra = []
        if name == "dp_accounting_pld_matched":
            if args.rust_epsilon is None:
                continue
            print("python anchor: choosing the equal-accuracy PLD grid ...", file=sys.stderr,
                  flush=True)
            match = run_child(["--op", "choose_pld_interval",
                               "--rust-epsilon", repr(args.rust_epsilon)])
            extra = ["--pld-match", json.dumps(match)]
        print(f"python anchor: {name} ...", file=sys.stderr, flush=True)
        report[name] = run_child(["--op", name, *extra])
    print(json.dumps(report))


# ---------------------------------------------------------------------------------------------
# Markdown table of both runs.


def markdown(rust_path, python_path):
    rust = json.loads(Path(rust_path).read_text())
    py = json.loads(Path(python_path).read_text())
    rss = rust.get("peak_rss_mib")
    rows = [
        ("RDP ε (Opacus's 151 orders)", rust["rdp_epsilon"], "Opacus RDP", py["opacus_rdp"]),
        ("RDP ε (Opacus's 151 orders)", rust["rdp_epsilon"], "dp_accounting RDP (its orders)",
         py["dp_accounting_rdp"]),
        ("PLD ε", rust["pld_epsilon"], "dp_accounting PLD, grid 1e-4",
         py["dp_accounting_pld_1e-4"]),
    ]
    if "dp_accounting_pld_matched" in py:
        matched = py["dp_accounting_pld_matched"]
        rows.append(("PLD ε", rust["pld_epsilon"],
                     f"dp_accounting PLD, grid {matched['interval']:g} (equal accuracy)",
                     matched))
    rows += [
        ("RDP σ for ε = 2", rust["rdp_sigma_calibration"], "Opacus get_noise_multiplier*",
         py["opacus_get_noise_multiplier"]),
        ("RDP σ for ε = 2", rust["rdp_sigma_calibration"], "dp_accounting calibrate (RDP)",
         py["dp_accounting_rdp_calibration"]),
        ("PLD σ for ε = 2", rust["pld_sigma_calibration"], "dp_accounting calibrate (PLD 1e-4)",
         py["dp_accounting_pld_calibration"]),
    ]
    lines = [
        "| operation | fedsyn (ms) | result | Python tool | Python (ms) | result | "
        "python/rust | Python peak RSS (MiB) | Python peak − start RSS (MiB) |",
        "|---|---:|---|---|---:|---|---:|---:|---:|",
    ]
    for op, r, tool, p in rows:
        ratio = p["median_ms"] / r["median_ms"]
        lines.append(
            f"| {op} | {milliseconds(r['median_ms'])} | {describe(r)} | {tool} | "
            f"{milliseconds(p['median_ms'])} | {describe(p)} | "
            f"{ratio:.1f}× | {p['peak_rss_mib']:.0f} | {above_baseline(p)} |"
        )
    lines.append("")
    baseline = rust.get("baseline_rss_mib")
    if baseline is None:
        lines.append(f"fedsyn peak RSS, whole benchmark process: {rss:.1f} MiB.")
    else:
        lines.append(
            f"fedsyn peak RSS, whole benchmark process: {rss:.1f} MiB, of which {baseline:.1f} "
            f"MiB were resident before the first operation (the binary's shared libraries); "
            f"peak − start: {rss - baseline:.1f} MiB for all five operations."
        )
    if "dp_accounting_pld_matched" in py:
        m = py["dp_accounting_pld_matched"]
        lines.append(
            f"PLD accuracy: fedsyn ε is {100 * m['rust_relative_error']:.3f} % from the "
            f"converged ε {m['converged_epsilon']:.6f} (dp_accounting at grid "
            f"{m['converged_interval']:g}); dp_accounting at grid {m['interval']:g} is "
            f"{100 * m['relative_error']:.3f} % from it."
        )
    lines.append("* Opacus's get_noise_multiplier loop run with a torch-free stand-in "
                 "accountant around Opacus's own RDP functions (Opacus's accountant module "
                 "imports torch).")
    print("\n".join(lines))


def above_baseline(result):
    """Peak RSS minus the RSS before the operation first ran, when both are known."""
    if result.get("baseline_rss_mib") is None:
        return "–"
    # ru_maxrss and VmRSS are sampled differently; a peak reached during the imports reads as
    # a tiny negative difference, which means the operation added nothing.
    return f"{max(0.0, result['peak_rss_mib'] - result['baseline_rss_mib']):.1f}"


def milliseconds(ms):
    """Three significant digits, without scientific notation."""
    return f"{ms:.0f}" if ms >= 100 else f"{ms:.3g}"


def describe(result):
    parts = []
    if "epsilon" in result and result["epsilon"] is not None:
        parts.append(f"ε={result['epsilon']:.4f}")
    if result.get("discretisation_error") is not None:
        parts.append(f"±{result['discretisation_error']:.1e}")
    if result.get("order") is not None:
        parts.append(f"α={result['order']:g}")
    if "sigma" in result:
        parts.append(f"σ={result['sigma']:.4f}")
    return " ".join(parts)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--op", choices=sorted(OPERATIONS))
    parser.add_argument("--rust-epsilon", type=float, default=None,
                        help="fedsyn's PLD ε, to choose dp_accounting's equal-accuracy grid")
    parser.add_argument("--pld-match", default=None,
                        help="JSON from choose_pld_interval (internal)")
    parser.add_argument("--markdown", nargs=2, metavar=("RUST_JSON", "PYTHON_JSON"))
    args = parser.parse_args()
    if args.markdown:
        markdown(*args.markdown)
    elif args.op:
        run_one(args)
    else:
        run_all(args)


if __name__ == "__main__":
    main()
