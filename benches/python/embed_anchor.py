#!/usr/bin/env python3
"""The Python side of the embedding benchmark: sentence-transformers on the same documents.

Same setting as crates/models/benches/embed.rs: the first ``--docs`` (2,000) speeches of
``shared/data/shakespeare_roles/train.jsonl`` (field ``text``), all-MiniLM-L6-v2 from the folder
that scripts/setup.sh installs (``FEDSYN_MINILM_DIR`` in .cache/models.env, loaded offline),
``SentenceTransformer.encode`` at batch 64 on the CPU in fp32 with ``--threads`` (2) torch
threads. One untimed warm-up call on the first batch, then one timed ``encode`` of all documents
(it sorts them by length itself). Peak RSS is ``ru_maxrss`` of this interpreter, which runs
nothing else.

With ``--save FILE`` the embeddings are written as raw little-endian float32 (docs × 384, input
order) so that ``--markdown`` can compare them with fedsyn's.

Usage:
    .venv-bench/bin/python benches/python/embed_anchor.py [--save py.f32] > python.json
    .venv-bench/bin/python benches/python/embed_anchor.py --markdown python.json rust.json... \
        [--compare py.f32 rust.f32...]
"""

import argparse
import json
import sys
import time
from pathlib import Path

from anchor_common import (REPO_ROOT, models_env, offline, peak_rss_mib, stack_text,
                           versions)

DEFAULT_DATA = REPO_ROOT.parent / "shared" / "data" / "shakespeare_roles" / "train.jsonl"


def read_texts(path: Path, field: str, count: int) -> list:
    texts = []
    with path.open(encoding="utf-8") as lines:
        for line in lines:
            if len(texts) == count:
                break
            texts.append(json.loads(line)[field])
    if len(texts) < count:
        sys.exit(f"{path} has only {len(texts)} documents, {count} were asked for")
    return texts


def run(args) -> None:
    offline()
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(args.threads)
    texts = read_texts(args.data, args.text_field, args.docs)
    model_dir = models_env()["FEDSYN_MINILM_DIR"]
    model = SentenceTransformer(model_dir, device="cpu")
    model.eval()

    model.encode(texts[: args.batch_size], batch_size=args.batch_size)  # warm-up, untimed
    start = time.perf_counter()
    embeddings = model.encode(texts, batch_size=args.batch_size, convert_to_numpy=True)
    seconds = time.perf_counter() - start

    if args.save:
        embeddings.astype("<f4").tofile(args.save)
    print(json.dumps({
        "tool": "sentence-transformers",
        "docs": len(texts),
        "batch_size": args.batch_size,
        "threads": torch.get_num_threads(),
        "seconds": seconds,
        "docs_per_s": len(texts) / seconds,
        "dim": int(embeddings.shape[1]),
        "peak_rss_mib": peak_rss_mib(),
        "versions": versions("sentence-transformers"),
    }))


def cosines(ours_path: str, theirs_path: str, dim: int):
    import numpy as np

    ours = np.fromfile(ours_path, dtype="<f4").reshape(-1, dim)
    theirs = np.fromfile(theirs_path, dtype="<f4").reshape(-1, dim)
    if ours.shape != theirs.shape:
        sys.exit(f"embedding files differ in shape: {ours.shape} vs {theirs.shape}")
    return (ours * theirs).sum(1) / (
        np.linalg.norm(ours, axis=1) * np.linalg.norm(theirs, axis=1))


def markdown(python_path: str, rust_paths: list, compare: list) -> None:
    """A table of sentence-transformers (first row) and each fedsyn run; with `compare`
    (the Python embeddings file, then one per fedsyn run), each fedsyn row also gives the
    lowest cosine between its embeddings and sentence-transformers'."""
    python = json.loads(Path(python_path).read_text())
    runs = [json.loads(Path(p).read_text()) for p in rust_paths]
    print("| tool | dtype | docs | batch | threads | docs/s | seconds | vs sentence-transformers "
          "| min cosine to sentence-transformers | peak RSS (MiB) |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    print(f"| sentence-transformers {python['versions']['sentence-transformers']} | fp32 | "
          f"{python['docs']} | {python['batch_size']} | {python['threads']} | "
          f"{python['docs_per_s']:.1f} | {python['seconds']:.2f} | 1.00× | — | "
          f"{python['peak_rss_mib']:.0f} |")
    dtypes = {"Float": "fp32", "BFloat16": "bf16"}
    for i, run in enumerate(runs):
        agreement = "—"
        if compare:
            agreement = f"{cosines(compare[i + 1], compare[0], python['dim']).min():.6f}"
        print(f"| fedsyn | {dtypes.get(run['kind'], run['kind'])} | {run['docs']} | "
              f"{run['batch_size']} | {run['threads']} | {run['docs_per_s']:.1f} | "
              f"{run['seconds']:.2f} | {run['docs_per_s'] / python['docs_per_s']:.2f}× | "
              f"{agreement} | {run['peak_rss_mib']:.0f} |")
    print()
    print(f"{stack_text(python)}; fedsyn: tch 0.24 on the same libtorch. Tokens in the "
          f"{python['docs']} documents: {runs[0]['tokens']} (after truncation to 256).")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--text-field", default="text")
    parser.add_argument("--docs", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--save", help="write the embeddings here (raw float32)")
    parser.add_argument("--markdown", nargs="+", metavar="JSON",
                        help="PYTHON_JSON RUST_JSON...: print the comparison table")
    parser.add_argument("--compare", nargs="+", metavar="F32",
                        help="PYTHON_F32 RUST_F32...: embeddings saved by each run, same order")
    args = parser.parse_args()
    if args.markdown:
        if len(args.markdown) < 2 or (args.compare and len(args.compare) != len(args.markdown)):
            parser.error("--markdown needs PYTHON_JSON and at least one RUST_JSON; --compare "
                         "one file per JSON, in the same order")
        markdown(args.markdown[0], args.markdown[1:], args.compare)
    else:
        run(args)


if __name__ == "__main__":
    main()
