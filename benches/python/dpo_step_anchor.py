#!/usr/bin/env python3
"""The Python side of the DPO step benchmark: PyTorch + PEFT taking the step TRL takes.

Same setting as crates/models/benches/dpo_step.rs: SmolLM2-135M-Instruct Q4_1 GGUF (``FEDSYN_SMOLLM2_GGUF``
in .cache/models.env) loaded by transformers with ``gguf_file=`` and dequantised to fp32 on the
CPU; a PEFT LoRA adapter (r 16, alpha 16, dropout 0, the seven projections); the pairs the
Rust side wrote with ``--save-pairs`` (8 × 128 prompt + 64 completion tokens, EOS included).
The step is TRL's ``DPOTrainer`` step written out (trl is not in the benchmark venv): chosen
and rejected rows concatenated into one batch; the reference log-probabilities under
``disable_adapter()`` without gradient; then the policy forward, per-token log-probabilities
as TRL's ``selective_log_softmax`` computes them (gather minus a per-row logsumexp over the
full logits), summed over completion tokens, the sigmoid loss (beta 0.01), backward,
``clip_grad_norm_(1.0)`` and ``torch.optim.AdamW`` (lr 8e-7). Reference and step are timed
on both sides (``seconds``; ``step_seconds`` is the step alone). Untimed before: loading, the
adapter, and one warm-up step of the same size (the timed step is a step of a running
training loop). ``--threads`` (2) torch threads; default attention (SDPA). Peak RSS is
``ru_maxrss`` of this interpreter, which runs nothing else.

Usage:
    .venv-bench/bin/python benches/python/dpo_step_anchor.py --pairs pairs.json > python.json
    .venv-bench/bin/python benches/python/dpo_step_anchor.py --markdown RUN.json...
        (any number of runs of either tool; the best of each is shown)
"""

import argparse
import json
import time
from pathlib import Path

from anchor_common import (load_gguf_model, models_env, offline, peak_rss_mib, run_or_tabulate,
                           stack_text, versions)

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
BETA = 0.01


def batch(pairs):
    """Chosen rows then rejected rows, right-padded with 0; mask of completion tokens."""
    import torch

    rows = [(p["prompt"], p["chosen"]) for p in pairs] + [(p["prompt"], p["rejected"]) for p in pairs]
    width = max(len(p) + len(c) for p, c in rows)
    ids, attention, completion = [], [], []
    for prompt, answer in rows:
        pad = width - len(prompt) - len(answer)
        ids.append(prompt + answer + [0] * pad)
        attention.append([1] * (len(prompt) + len(answer)) + [0] * pad)
        completion.append([0] * len(prompt) + [1] * len(answer) + [0] * pad)
    return torch.tensor(ids), torch.tensor(attention), torch.tensor(completion)


def log_probs(model, ids, attention, completion):
    """Summed completion log-probabilities per row, as TRL's concatenated_forward."""
    import torch

    logits = model(input_ids=ids, attention_mask=attention).logits[:, :-1]
    labels = ids[:, 1:]
    mask = completion[:, 1:].bool()
    selected = torch.gather(logits, -1, labels.unsqueeze(-1)).squeeze(-1)
    # selective_log_softmax: one logsumexp per row, to bound the memory of the full softmax.
    normaliser = torch.stack([torch.logsumexp(row, dim=-1) for row in logits])
    return ((selected - normaliser) * mask).sum(-1)


def reference_log_probs(model, tensors):
    """The reference model's log-probabilities: the adapter off, no gradient."""
    import torch

    with torch.no_grad(), model.disable_adapter():
        return log_probs(model, *tensors)


def step(model, optimizer, params, tensors, n, reference=None):
    """One DPO step; the reference log-probabilities are computed here unless given."""
    import torch
    import torch.nn.functional as F

    start = time.perf_counter()
    if reference is None:
        reference = reference_log_probs(model, tensors)
    reference_seconds = time.perf_counter() - start
    policy = log_probs(model, *tensors)
    h = (policy[:n] - policy[n:]) - (reference[:n] - reference[n:])
    loss = -F.logsigmoid(BETA * h).mean()
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(params, 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    seconds = time.perf_counter() - start
    return (seconds, reference_seconds, float(loss.detach()), float(grad_norm),
            float(policy[:n].detach().mean()))


def run(args) -> None:
    offline()
    import torch
    from peft import LoraConfig, get_peft_model

    torch.set_num_threads(args.threads)
    pairs = json.loads(Path(args.pairs).read_text())
    gguf_path = Path(models_env()["FEDSYN_SMOLLM2_GGUF"])

    start = time.perf_counter()
    model = load_gguf_model(gguf_path, args.dtype)
    load_seconds = time.perf_counter() - start
    lora = LoraConfig(r=args.rank, lora_alpha=args.rank, lora_dropout=0.0, target_modules=TARGETS,
                      bias="none", task_type="CAUSAL_LM")
    model = get_peft_model(model, lora)
    model.train()  # as the trainer runs it (no dropout anywhere in this model)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=8e-7, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)

    tensors = batch(pairs)
    warm_up_seconds = step(model, optimizer, params, tensors, len(pairs))[0]
    seconds, reference_seconds, loss, grad_norm, logps = step(
        model, optimizer, params, tensors, len(pairs))
    print(json.dumps({
        "tool": "pytorch+peft",
        "model": gguf_path.name,
        "device": "Cpu",
        "dtype": {"f32": "Float", "bf16": "BFloat16"}[args.dtype],
        "threads": torch.get_num_threads(),
        "pairs": len(pairs),
        "prompt_tokens": len(pairs[0]["prompt"]),
        "completion_tokens": len(pairs[0]["chosen"]),
        "rank": args.rank,
        "trainable_parameters": sum(p.numel() for p in params),
        "load_seconds": load_seconds,
        "warm_up_seconds": warm_up_seconds,
        "seconds": seconds,
        "step_seconds": seconds - reference_seconds,
        "reference_seconds": reference_seconds,
        "pairs_per_second": len(pairs) / seconds,
        "loss": loss,
        "grad_norm": grad_norm,
        "logps_chosen": logps,
        "peak_rss_mib": peak_rss_mib(),
        "attention": model.config._attn_implementation,
        "versions": versions("peft"),
    }))


def markdown(paths: list) -> None:
    """One row per tool: its fastest run (the machine is shared, so slower repeats measure
    other processes), with the median beside it."""
    runs = [json.loads(Path(p).read_text()) for p in paths]
    groups = {}
    for run in runs:
        groups.setdefault(run["tool"], []).append(run)
    python = groups["pytorch+peft"][0]
    rust = groups.get("fedsyn", [{}])[0]
    print("| tool | seconds (best) | seconds (median) | runs | step s | reference s | "
          "fedsyn speed-up | peak RSS (MiB) | loss | grad norm |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    best = {tool: min(group, key=lambda r: r["seconds"]) for tool, group in groups.items()}
    base = best["pytorch+peft"]["seconds"]
    for tool in ("pytorch+peft", "fedsyn"):
        if tool not in groups:
            continue
        group = sorted(groups[tool], key=lambda r: r["seconds"])
        run = group[0]
        rss = sorted(r["peak_rss_mib"] for r in group)
        label = (f"PyTorch {python['versions']['torch']} + PEFT {python['versions']['peft']}"
                 if tool == "pytorch+peft" else "fedsyn")
        print(f"| {label} | {run['seconds']:.2f} | {group[len(group) // 2]['seconds']:.2f} | "
              f"{len(group)} | {run['step_seconds']:.2f} | {run['reference_seconds']:.2f} | "
              f"{base / run['seconds']:.2f}× | {rss[0]:.0f}–{rss[-1]:.0f} | {run['loss']:.6f} | "
              f"{run['grad_norm']:.4g} |")
    print()
    print(f"One DPO optimiser step: {python['pairs']} pairs of {python['prompt_tokens']} prompt + "
          f"{python['completion_tokens']} completion tokens (one batch of "
          f"{2 * python['pairs']} sequences), LoRA r {python['rank']} on all seven projections "
          f"({python['trainable_parameters']:,} trainable parameters), {python.get('dtype', 'Float')} on the CPU (fedsyn: {rust.get('dtype', 'Float')}), "
          f"{python['threads']} torch threads, each run its own process; time = reference "
          f"log-probabilities (adapter off, no grad) + forward, backward, clipping and AdamW, "
          f"on both sides; model load excluded. {stack_text(python)}, "
          f"peft {python['versions']['peft']}.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    pairs = parser.add_argument("--pairs", help="JSON list of {prompt, chosen, rejected} id lists")
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dtype", choices=["f32", "bf16"], default="f32")
    run_or_tabulate(parser, pairs, run, markdown)


if __name__ == "__main__":
    main()
