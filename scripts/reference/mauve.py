#!/usr/bin/env python3
"""Reference MAUVE (the `mauve-text` package) and k-NN precision/recall for fedsyn's
distribution metrics, written to crates/server/tests/fixtures/distribution_reference.json for
crates/server/tests/distribution_reference.rs.

One set P of float "embeddings" (a mixture of Gaussian blobs) and three sets Q against it:
  * same     - an independent draw from P's mixture,
  * shifted  - P's mixture moved by a fixed vector,
  * overlap  - from 6 of P's 8 blobs and 2 blobs P does not have.
Values are rounded to 4 decimals before anything is computed, so the file holds exactly the
inputs (as float32) that both sides use.

MAUVE: mauve.compute_mauve(p_features=Q, q_features=P) with the package defaults (L2
normalisation, PCA to 90 % of the variance, faiss k-means with n/10 buckets, 5 restarts, 500
iterations, 25 mixture weights, scaling 5), once per seed in SEEDS (40): k-means depends on its
initialisation, so the fixture records the package's own spread, which is what fedsyn's k-means
(another random generator) can be held to.

Precision/recall (Kynkaenniemi et al. 2019), brute force in float64: radius of each real row =
distance to its k-th nearest other real row; precision = share of synthetic rows within (<=)
the radius of some real row; recall = the same with the roles swapped. Real = P, synthetic = Q.

Run from the repository root (needs the benchmark venv, scripts/bench-venv.sh):
    .venv-bench/bin/python scripts/reference/mauve.py
"""

import json
import sys
from importlib.metadata import version
from pathlib import Path

# This file is itself called mauve.py: drop its folder from the import path so that `import
# mauve` finds the package.
sys.path = [entry for entry in sys.path if Path(entry or ".").resolve() != Path(__file__).resolve().parent]

import mauve  # noqa: E402
import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
OUTPUT = ROOT / "crates" / "server" / "tests" / "fixtures" / "distribution_reference.json"

DIM = 24
ROWS = 300
BLOBS = 8
# 40 seeds: the k-means spread of MAUVE is up to ~0.06 (standard deviation) on these sets, so a
# mean over 40 runs pins the centre to ~0.01.
SEEDS = list(range(40))
NEIGHBOURS = [3, 5]


def draw(rng, centres, n, spread=0.45):
    """n rows from equal-weight Gaussian blobs around `centres`."""
    picks = rng.integers(0, len(centres), size=n)
    return centres[picks] + spread * rng.standard_normal((n, DIM))


def as_fixture_values(rows):
    """Rounded to 4 decimals and read back as float32, exactly as the Rust test reads them."""
    return np.asarray(json.loads(json.dumps(np.round(rows, 4).tolist())), dtype=np.float32)


def precision_recall(real, synthetic, k):
    real64, synthetic64 = real.astype(np.float64), synthetic.astype(np.float64)

    def squared(a, b):
        return ((a[:, None, :] - b[None, :, :]) ** 2).sum(axis=-1)

    def radii(rows):
        d = squared(rows, rows)
        np.fill_diagonal(d, np.inf)  # the k-th nearest *other* row
        return np.sort(d, axis=1)[:, k - 1]

    cross = squared(synthetic64, real64)  # [synthetic, real]
    precision = float(np.mean((cross <= radii(real64)[None, :]).any(axis=1)))
    recall = float(np.mean((cross.T <= radii(synthetic64)[None, :]).any(axis=1)))
    return precision, recall


def main():
    rng = np.random.default_rng(20251127)
    centres = 1.2 * rng.standard_normal((2 * BLOBS, DIM))
    p = as_fixture_values(draw(rng, centres[:BLOBS], ROWS))
    shift = np.zeros(DIM)
    shift[:4] = 0.6
    overlap_centres = np.concatenate([centres[: 3 * BLOBS // 4], centres[BLOBS:BLOBS + BLOBS // 4]])
    qs = {
        "same": draw(rng, centres[:BLOBS], ROWS),
        "shifted": draw(rng, centres[:BLOBS], ROWS) + shift,
        "overlap": draw(rng, overlap_centres, ROWS),
    }
    cases = []
    for name, q in qs.items():
        q = as_fixture_values(q)
        # fedsyn calls mauve(p = synthetic, q = real); mauve-text stacks its q_features first.
        values = [
            float(mauve.compute_mauve(p_features=q, q_features=p, seed=seed, verbose=False).mauve)
            for seed in SEEDS
        ]
        pr = {str(k): dict(zip(("precision", "recall"), precision_recall(p, q, k))) for k in NEIGHBOURS}
        cases.append({
            "name": name,
            "synthetic": np.round(q.astype(np.float64), 4).tolist(),
            "mauve_by_seed": values,
            "precision_recall": pr,
        })
        print(f"{name}: mauve {np.mean(values):.4f} (min {min(values):.4f}, max {max(values):.4f}), pr {pr}")
    fixture = {
        "generator": f"scripts/reference/mauve.py (mauve-text {version('mauve-text')}, "
        f"faiss-cpu {version('faiss-cpu')}, scikit-learn {version('scikit-learn')}, numpy {np.__version__})",
        "seeds": SEEDS,
        "real": np.round(p.astype(np.float64), 4).tolist(),
        "cases": cases,
    }
    OUTPUT.write_text(json.dumps(fixture, separators=(",", ":")) + "\n")
    print(f"wrote {OUTPUT} ({OUTPUT.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
