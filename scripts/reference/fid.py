#!/usr/bin/env python3
"""Reference Fréchet distances for fedsyn's FID, written to
crates/server/tests/fixtures/fid_reference.json for crates/server/tests/fid_reference.rs.

Each case holds two small sets of float32 "embeddings" and the FID computed the usual way
(as pytorch-fid and POPri's evaluation do): means and unbiased covariances in float64
(numpy.cov), then ||mu_a - mu_b||^2 + tr(S_a) + tr(S_b) - 2 tr(sqrtm(S_a S_b)) with
scipy.linalg.sqrtm, real part. Also ||mu_a - mu_b||^2. The sets differ in size, mean, scale
and correlation so that every term matters. The first three cases are full rank (n > d), where
sqrtm is accurate; the fourth ("singular", n < d) is computed through symmetric
eigendecompositions (scipy.linalg.eigh), since sqrtm of a singular product is not.

Run from the repository root (needs the benchmark venv, scripts/bench-venv.sh):
    .venv-bench/bin/python scripts/reference/fid.py
"""

import json
from importlib.metadata import version
from pathlib import Path

import numpy as np
import scipy.linalg

ROOT = Path(__file__).resolve().parents[2]
OUTPUT = ROOT / "crates" / "server" / "tests" / "fixtures" / "fid_reference.json"

DIM = 16


def sample(rng, n, mean_shift, scale, mixing):
    """n rows of correlated data, rounded to float32 (what fedsyn's embeddings are)."""
    base = rng.standard_normal((n, DIM)) @ mixing * scale + mean_shift
    return base.astype(np.float32)


def frechet(a, b):
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    mu_a, mu_b = a64.mean(axis=0), b64.mean(axis=0)
    cov_a, cov_b = np.cov(a64, rowvar=False), np.cov(b64, rowvar=False)
    root = np.real(scipy.linalg.sqrtm(cov_a @ cov_b))
    mean_term = float(np.sum((mu_a - mu_b) ** 2))
    fid = mean_term + float(np.trace(cov_a) + np.trace(cov_b) - 2.0 * np.trace(root))
    return fid, mean_term


def frechet_symmetric(a, b):
    """The same distance through symmetric eigendecompositions (scipy.linalg.eigh):
    tr((S_a^1/2 S_b S_a^1/2)^1/2), tiny negative eigenvalues clamped to 0. Used for singular
    covariances (fewer rows than dimensions), where sqrtm of the non-symmetric S_a S_b is
    inaccurate."""
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    mu_a, mu_b = a64.mean(axis=0), b64.mean(axis=0)
    cov_a, cov_b = np.cov(a64, rowvar=False), np.cov(b64, rowvar=False)
    values, vectors = scipy.linalg.eigh(cov_a)
    root_a = (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T
    inner = scipy.linalg.eigvalsh(root_a @ cov_b @ root_a)
    cross = float(np.sum(np.sqrt(np.clip(inner, 0.0, None))))
    mean_term = float(np.sum((mu_a - mu_b) ** 2))
    return mean_term + float(np.trace(cov_a) + np.trace(cov_b)) - 2.0 * cross, mean_term


def main() -> None:
    rng = np.random.default_rng(20250611)
    identity = np.eye(DIM)
    correlated = np.eye(DIM) + 0.3 * rng.standard_normal((DIM, DIM))
    cases = []
    specs = [
        ("shifted-mean", (40, 0.0, 1.0, identity), (30, 0.5, 1.0, identity)),
        ("different-scale", (40, 0.0, 0.2, correlated), (30, 0.1, 0.5, identity)),
        ("correlated-both", (40, 1.0, 0.1, correlated), (30, 1.0, 0.12, correlated.T)),
    ]
    for name, spec_a, spec_b in specs:
        a = sample(rng, *spec_a)
        b = sample(rng, *spec_b)
        fid, mean_term = frechet(a, b)
        cases.append(
            {
                "name": name,
                "a": a.tolist(),
                "b": b.tolist(),
                "fid": fid,
                "mean_distance_sq": mean_term,
            }
        )
    # Fewer rows than dimensions: both covariances are singular.
    a = sample(rng, 10, 0.0, 1.0, correlated)
    b = sample(rng, 12, 0.3, 0.8, identity)
    fid, mean_term = frechet_symmetric(a, b)
    cases.append(
        {"name": "singular", "a": a.tolist(), "b": b.tolist(), "fid": fid, "mean_distance_sq": mean_term}
    )
    reference = {
        "generator": "scripts/reference/fid.py",
        "versions": {"numpy": np.__version__, "scipy": version("scipy")},
        "cases": cases,
    }
    OUTPUT.parent.mkdir(parents=True, exist_ok=True)
    OUTPUT.write_text(json.dumps(reference) + "\n")
    for case in cases:
        print(f"{case['name']}: fid {case['fid']:.10g}, mean term {case['mean_distance_sq']:.6g}")


if __name__ == "__main__":
    main()
