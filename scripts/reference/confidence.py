#!/usr/bin/env python3
"""Generates the reference fixture for `fedsyn compare`'s confidence intervals.

Writes crates/reports/tests/fixtures/confidence_reference.json, which the unit test
`report::stats::tests::intervals_match_scipy` compares against. Run it in the benchmark venv:

    scripts/bench-venv.sh && .venv-bench/bin/python scripts/reference/confidence.py

Two sections, from SciPy:

* ``mean``: the Student-t interval of a mean over seeds, ``scipy.stats.t.interval(level,
  n - 1, loc=mean, scale=sem)``;
* ``welch``: the interval of a difference of two means with unequal variances,
  ``scipy.stats.ttest_ind(a, b, equal_var=False).confidence_interval(level)``;
* ``paired_bootstrap``: the percentile interval of the difference of two accuracies over the
  same positions, ``scipy.stats.bootstrap((a, b), mean difference, paired=True,
  method="percentile", n_resamples=100000)``.
"""

import json
import pathlib

import numpy as np
import scipy
import scipy.stats

OUT = pathlib.Path(__file__).resolve().parents[2] / "crates/reports/tests/fixtures/confidence_reference.json"


def main():
    rng = np.random.default_rng(20261207)
    means = []
    for n, level in [(2, 0.95), (3, 0.95), (5, 0.95), (10, 0.95), (30, 0.9), (4, 0.99)]:
        values = (0.3 + 0.02 * rng.standard_normal(n)).tolist()
        low, high = scipy.stats.t.interval(
            level, n - 1, loc=np.mean(values), scale=scipy.stats.sem(values)
        )
        means.append(
            {"values": values, "level": level, "mean": float(np.mean(values)), "low": float(low), "high": float(high)}
        )
    welch = []
    for na, nb, level in [(2, 2, 0.95), (3, 5, 0.95), (5, 3, 0.95), (10, 4, 0.9), (6, 6, 0.99)]:
        a = (0.31 + 0.01 * rng.standard_normal(na)).tolist()
        b = (0.30 + 0.03 * rng.standard_normal(nb)).tolist()
        ci = scipy.stats.ttest_ind(a, b, equal_var=False).confidence_interval(level)
        welch.append(
            {
                "a": a,
                "b": b,
                "level": level,
                "difference": float(np.mean(a) - np.mean(b)),
                "low": float(ci.low),
                "high": float(ci.high),
            }
        )
    paired = []
    for n, pa, pb, level in [(400, 0.40, 0.36, 0.95), (2000, 0.31, 0.30, 0.95), (1000, 0.5, 0.5, 0.9)]:
        a = (rng.random(n) < pa).astype(int)
        # b agrees with a on most positions (two models scored on the same tokens).
        flip = rng.random(n) < 0.3
        b = np.where(flip, (rng.random(n) < pb).astype(int), a)
        result = scipy.stats.bootstrap(
            (a, b),
            lambda x, y, axis: np.mean(x, axis=axis) - np.mean(y, axis=axis),
            paired=True,
            vectorized=True,
            method="percentile",
            confidence_level=level,
            n_resamples=100000,
            random_state=np.random.default_rng(7),
        )
        paired.append(
            {
                "a": a.tolist(),
                "b": b.tolist(),
                "level": level,
                "difference": float(np.mean(a) - np.mean(b)),
                "low": float(result.confidence_interval.low),
                "high": float(result.confidence_interval.high),
            }
        )
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(
        json.dumps({"scipy": scipy.__version__, "mean": means, "welch": welch, "paired_bootstrap": paired}, indent=1) + "\n"
    )
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
