#!/usr/bin/env python3
"""The Python side of the sampling benchmark: transformers ``generate`` on the same prompts.

Same setting as crates/models/benches/generate.rs: SmolLM2-135M-Instruct Q4_1 GGUF (``FEDSYN_SMOLLM2_GGUF``
in .cache/models.env) loaded by transformers with ``gguf_file=`` and dequantised to fp32 on the
CPU; the prompt ids that the Rust side wrote with ``--save-prompts`` (B rows of 222 tokens, no
padding); ``generate(do_sample=True, temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=64,
min_new_tokens=64)`` (min_new_tokens makes every row produce all 64 tokens, as fedsyn's
``ignore_eos`` does) with ``--threads`` (2) torch threads and the default attention (SDPA).
One untimed warm-up (2 rows × 4 tokens), then one timed ``generate``. Peak RSS is
``ru_maxrss`` of this interpreter, which runs nothing else.

Usage:
    .venv-bench/bin/python benches/python/generate_anchor.py --prompts prompts.json > python.json
    .venv-bench/bin/python benches/python/generate_anchor.py --markdown RUN.json...
        (any number of runs of either tool at any batch; the best of each is shown)
"""

import argparse
import json
import sys
import time
from pathlib import Path

from anchor_common import (load_gguf_model, models_env, offline, peak_rss_mib, run_or_tabulate,
                           stack_text, versions)


def run(args) -> None:
    offline()
    import torch

    torch.set_num_threads(args.threads)
    prompts = json.loads(Path(args.prompts).read_text())
    if len({len(p) for p in prompts}) != 1:
        sys.exit("the prompts must all have the same length (no padding in this benchmark)")
    gguf_path = Path(models_env()["FEDSYN_SMOLLM2_GGUF"])

    start = time.perf_counter()
    model = load_gguf_model(gguf_path, args.dtype)
    model.eval()
    load_seconds = time.perf_counter() - start

    input_ids = torch.tensor(prompts)
    settings = dict(do_sample=True, temperature=1.0, top_k=0, top_p=1.0, pad_token_id=2)
    torch.manual_seed(args.seed)
    with torch.no_grad():
        warm = input_ids[:2]
        model.generate(warm, attention_mask=torch.ones_like(warm), max_new_tokens=4,
                       min_new_tokens=4, **settings)
        cpu_start = time.process_time()
        start = time.perf_counter()
        output = model.generate(input_ids, attention_mask=torch.ones_like(input_ids),
                                max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens,
                                **settings)
        seconds = time.perf_counter() - start
        cpu_seconds = time.process_time() - cpu_start
    generated = output.shape[0] * (output.shape[1] - input_ids.shape[1])
    print(json.dumps({
        "tool": "transformers",
        "model": gguf_path.name,
        "device": "Cpu",
        "dtype": {"f32": "Float", "bf16": "BFloat16"}[args.dtype],
        "threads": torch.get_num_threads(),
        "batch": input_ids.shape[0],
        "prompt_tokens": input_ids.shape[1],
        "new_tokens": args.new_tokens,
        "generated_tokens": generated,
        "load_seconds": load_seconds,
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "tokens_per_second": generated / seconds,
        "peak_rss_mib": peak_rss_mib(),
        "attention": model.config._attn_implementation,
        "versions": versions(),
    }))


def markdown(paths: list) -> None:
    """One row per (batch, tool): the fastest of that tool's runs at that batch (the machine
    is shared, so slower repeats measure other processes), with the median beside it."""
    runs = [json.loads(Path(p).read_text()) for p in paths]
    groups = {}
    for run in runs:
        groups.setdefault((run["batch"], run["tool"]), []).append(run)
    print("| batch | tool | tokens/s (best) | tokens/s (median) | runs | seconds | CPU seconds "
          "| fedsyn / transformers | peak RSS (MiB, all runs) | model load (s) |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    python = next(r for r in runs if r["tool"] == "transformers")
    rust = next(r for r in runs if r["tool"] == "fedsyn")
    for batch in sorted({b for b, _ in groups}):
        best = {}
        for tool in ("transformers", "fedsyn"):
            group = sorted(groups.get((batch, tool), []), key=lambda r: r["tokens_per_second"])
            if group:
                rss = sorted(r["peak_rss_mib"] for r in group)
                best[tool] = (group[-1], group[len(group) // 2]["tokens_per_second"], len(group),
                              f"{rss[0]:.0f}–{rss[-1]:.0f}" if len(rss) > 1 else f"{rss[0]:.0f}")
        base = best.get("transformers", (None,))[0]
        for tool, (run, median, count, rss) in best.items():
            label = f"transformers {python['versions']['transformers']}" if tool == "transformers" \
                else "fedsyn"
            ratio = (f"{run['tokens_per_second'] / base['tokens_per_second']:.2f}×"
                     if base else "—")
            print(f"| {batch} | {label} | {run['tokens_per_second']:.1f} | {median:.1f} | {count} | "
                  f"{run['seconds']:.2f} | {run['cpu_seconds']:.2f} | {ratio} | {rss} | "
                  f"{run['load_seconds']:.2f} |")
    print()
    print(f"Each run: {python['prompt_tokens']}-token prompts (no padding), "
          f"{python['new_tokens']} new tokens per row sampled at temperature 1.0, {python['dtype']} on the "
          f"CPU (fedsyn: {rust.get('dtype', 'Float')}), {python['threads']} torch threads, its own process; time = prefill + all "
          f"decoding steps, model load excluded. {stack_text(python)}; fedsyn: tch 0.24 on the "
          f"same libtorch, matmuls through {rust.get('matmul', '?')}.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    prompts = parser.add_argument("--prompts",
                                  help="JSON list of prompt id lists (from the Rust side)")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dtype", choices=["f32", "bf16"], default="f32")
    run_or_tabulate(parser, prompts, run, markdown)


if __name__ == "__main__":
    main()
