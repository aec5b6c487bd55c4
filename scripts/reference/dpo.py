#!/usr/bin/env python3
"""Reference values of PyTorch, PEFT and transformers for fedsyn's preference training.

Writes, under crates/models/tests/fixtures/:

  * tiny-llama-lora/adapter_config.json: a PEFT LoRA adapter (r 4, alpha 8, no dropout, the
    seven projections) on the tiny Llama of scripts/reference/generator.py, as
    `save_pretrained` writes its configuration. Its weights are not stored (no weights file
    in git): every A and B value is a function of the tensor's name and flat index (the same
    integer hashing as the tiny model's weights, see `adapter_value`), which the Rust test
    evaluates to rebuild adapter_model.safetensors.
  * dpo_reference.json: for a batch of three pairs of fixed token ids (TRL's layout: chosen
    rows then rejected rows, right padding, completion tokens scored, EOS appended), beta 0.1:
    the policy (adapter on) and reference (adapter off) log-probabilities, the DPO loss (also
    with label smoothing 0.2), the IPO loss (log-probabilities averaged over completion
    tokens, as TRL's loss_type="ipo"), the SFT loss (token-mean NLL of the chosen
    completions), and the gradient of every LoRA tensor for DPO, IPO and SFT.
  * optim_reference.json: torch.optim.AdamW over five steps on fixed tensors and gradients
    (betas 0.9/0.95, eps 1e-6, weight decay 0.01, a different learning rate each step);
    torch.nn.utils.clip_grad_norm_ on fixed gradients; and transformers' four schedules
    (constant, linear, cosine, cosine with min lr) with warm-up, as LambdaLR steps them.

The losses are written out here from TRL's definitions (trl is not in the benchmark venv):
sigmoid loss -(1-ls)·logσ(βh) - ls·logσ(-βh), IPO (h - 1/(2β))², h = (π_c - π_r) - (ref_c - ref_r).

Run with the benchmark venv (scripts/bench-venv.sh) from the repository root:
    .venv-bench/bin/python scripts/reference/dpo.py
"""

from __future__ import annotations

import json
import math
import sys
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
import transformers
from peft import LoraConfig, get_peft_model
from safetensors import safe_open

sys.path.insert(0, str(Path(__file__).resolve().parent))
import generator  # noqa: E402  (the tiny model's hash-defined weights)

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "crates" / "models" / "tests" / "fixtures"
ADAPTER_DIR = FIXTURES / "tiny-llama-lora"

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
RANK, ALPHA = 4, 8
BETA = 0.1
LABEL_SMOOTHING = 0.2
EOS, PAD = 2, 0

# (prompt, chosen, rejected) token ids before EOS is appended; lengths differ so that padding
# and the completion mask are exercised.
PAIRS = [
    ([5, 17, 33, 8, 41], [12, 9, 30], [44, 7]),
    ([22, 7, 50], [31, 31, 6, 19, 40], [11]),
    ([4, 60, 13, 27, 35, 52, 9], [18], [63, 21, 47, 5]),
]


def adapter_value(name: str, index: int, name_hash: int) -> float:
    """Uniform in [-0.25, 0.25) on a 2^-25 grid: small beside the base weights, yet large
    enough that the adapter moves every log-probability visibly."""
    unit = ((generator.splitmix64(name_hash ^ index) >> 40) - (1 << 23)) / float(1 << 23)
    return 0.25 * unit


def tiny_llama() -> torch.nn.Module:
    config = transformers.LlamaConfig.from_pretrained(FIXTURES / "tiny-llama")
    model = transformers.LlamaForCausalLM(config)
    generator.synthesise(model)
    model.eval()
    return model


def adapted_model():
    """The tiny Llama with a PEFT adapter whose weights are hash-defined; writes the adapter's
    configuration and returns the model with the saved tensor names and shapes."""
    lora = LoraConfig(r=RANK, lora_alpha=ALPHA, lora_dropout=0.0, target_modules=TARGETS,
                      bias="none", task_type="CAUSAL_LM")
    model = get_peft_model(tiny_llama(), lora)
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        with safe_open(str(Path(tmp) / "adapter_model.safetensors"), framework="pt") as f:
            tensors = [{"name": k, "shape": list(f.get_slice(k).get_shape())} for k in sorted(f.keys())]
        ADAPTER_DIR.mkdir(parents=True, exist_ok=True)
        config = json.loads((Path(tmp) / "adapter_config.json").read_text())
        # PEFT writes target_modules from a set: sorted, the file is the same on every run.
        config["target_modules"] = sorted(config["target_modules"])
        (ADAPTER_DIR / "adapter_config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    # Saved names drop the adapter name: base_model.model.….lora_A.weight ↔ ….lora_A.default.weight
    by_saved_name = {n.replace(".default", ""): p for n, p in model.named_parameters() if "lora_" in n}
    with torch.no_grad():
        for spec in tensors:
            param = by_saved_name[spec["name"]]
            name_hash = generator.fnv1a64(spec["name"])
            values = [adapter_value(spec["name"], i, name_hash) for i in range(param.numel())]
            param.copy_(torch.tensor(values, dtype=torch.float64).reshape(param.shape))
    model.eval()
    return model, tensors, by_saved_name


def batch():
    """TRL's concatenated batch: chosen rows, then rejected rows, right-padded."""
    rows = [(p, c + [EOS]) for p, c, _ in PAIRS] + [(p, r + [EOS]) for p, _, r in PAIRS]
    width = max(len(p) + len(c) for p, c in rows)
    ids, attention, completion = [], [], []
    for prompt, answer in rows:
        pad = width - len(prompt) - len(answer)
        ids.append(prompt + answer + [PAD] * pad)
        attention.append([1] * (len(prompt) + len(answer)) + [0] * pad)
        completion.append([0] * len(prompt) + [1] * len(answer) + [0] * pad)
    return torch.tensor(ids), torch.tensor(attention), torch.tensor(completion)


def sequence_log_probs(model, ids, attention, completion):
    """Per row: the sum of completion-token log-probabilities and their count."""
    logits = model(input_ids=ids, attention_mask=attention).logits[:, :-1].float()
    labels = ids[:, 1:]
    mask = completion[:, 1:].bool()
    token_log_probs = torch.gather(logits.log_softmax(-1), 2, labels.unsqueeze(2)).squeeze(2)
    return (token_log_probs * mask).sum(-1), mask.sum(-1)


def losses(kind, policy, reference, counts):
    n = len(PAIRS)
    if kind == "sft":
        return -policy[:n].sum() / counts[:n].sum()
    if kind == "ipo":
        policy, reference = policy / counts, reference / counts
    h = (policy[:n] - policy[n:]) - (reference[:n] - reference[n:])
    if kind == "ipo":
        return ((h - 1 / (2 * BETA)) ** 2).mean()
    smoothing = LABEL_SMOOTHING if kind == "dpo_smoothed" else 0.0
    return (-F.logsigmoid(BETA * h) * (1 - smoothing) - F.logsigmoid(-BETA * h) * smoothing).mean()


def dpo_reference() -> dict:
    model, tensors, params = adapted_model()
    ids, attention, completion = batch()
    with torch.no_grad(), model.disable_adapter():
        reference, counts = sequence_log_probs(model, ids, attention, completion)
    results = {}
    for kind in ["dpo", "dpo_smoothed", "ipo", "sft"]:
        model.zero_grad(set_to_none=True)
        policy, _ = sequence_log_probs(model, ids, attention, completion)
        loss = losses(kind, policy, reference, counts)
        loss.backward()
        entry = {"loss": float(loss.detach())}
        if kind != "dpo_smoothed":
            entry["grads"] = {spec["name"]: generator.rounded(params[spec["name"]].grad.reshape(-1).tolist())
                              for spec in tensors}
        results[kind] = entry
    n = len(PAIRS)
    return {
        "generator": "scripts/reference/dpo.py",
        "torch_version": torch.__version__,
        "transformers_version": transformers.__version__,
        "peft_version": __import__("peft").__version__,
        "beta": BETA,
        "label_smoothing": LABEL_SMOOTHING,
        "eos_id": EOS,
        "pairs": [{"prompt": p, "chosen": c, "rejected": r} for p, c, r in PAIRS],
        "adapter_tensors": tensors,
        "policy_chosen": policy[:n].tolist(),
        "policy_rejected": policy[n:].tolist(),
        "reference_chosen": reference[:n].tolist(),
        "reference_rejected": reference[n:].tolist(),
        "completion_tokens": counts.tolist(),
        "losses": results,
    }


def values(shape, salt):
    """Fixed float32 values of mixed sign and magnitude."""
    count = math.prod(shape)
    return torch.tensor([math.sin(1.7 * i + salt) * (1 + (i % 3)) for i in range(count)],
                        dtype=torch.float32).reshape(shape)


def adamw_reference() -> dict:
    params = [values([3, 4], 0.3).requires_grad_(), values([5], 1.1).requires_grad_()]
    initial = [p.detach().flatten().tolist() for p in params]
    optimizer = torch.optim.AdamW(params, lr=1e-3, betas=(0.9, 0.95), eps=1e-6, weight_decay=0.01)
    lrs = [1e-3, 2e-3, 5e-4, 1e-3, 0.0]
    steps = []
    for step, lr in enumerate(lrs):
        grads = [values(p.shape, 10.0 + step + k) * 0.1 for k, p in enumerate(params)]
        for p, g in zip(params, grads):
            p.grad = g.clone()
        for group in optimizer.param_groups:
            group["lr"] = lr
        optimizer.step()
        steps.append({
            "lr": lr,
            "grads": [g.flatten().tolist() for g in grads],
            "params": [p.detach().flatten().tolist() for p in params],
        })
    return {"betas": [0.9, 0.95], "eps": 1e-6, "weight_decay": 0.01,
            "shapes": [list(p.shape) for p in params], "initial": initial, "steps": steps}


def clip_reference() -> dict:
    params = [torch.zeros(3, 4, requires_grad=True), torch.zeros(5, requires_grad=True)]
    grads = [values([3, 4], 2.0), values([5], 3.0)]
    for p, g in zip(params, grads):
        p.grad = g.clone()
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm=1.5)
    return {"max_norm": 1.5, "grads": [g.flatten().tolist() for g in grads],
            "norm": float(norm), "clipped": [p.grad.flatten().tolist() for p in params]}


def schedules_reference() -> dict:
    from transformers import optimization as opt
    peak, warmup, total, min_lr = 2e-4, 3, 12, 5e-5
    makers = {
        "constant": lambda o: opt.get_constant_schedule_with_warmup(o, warmup),
        "linear": lambda o: opt.get_linear_schedule_with_warmup(o, warmup, total),
        "cosine": lambda o: opt.get_cosine_schedule_with_warmup(o, warmup, total),
        "cosine_with_min_lr": lambda o: opt.get_cosine_with_min_lr_schedule_with_warmup(
            o, warmup, total, min_lr=min_lr),
    }
    curves = {}
    for name, make in makers.items():
        optimizer = torch.optim.AdamW([torch.zeros(1, requires_grad=True)], lr=peak)
        scheduler = make(optimizer)
        lrs = []
        for _ in range(total + 3):
            lrs.append(scheduler.get_last_lr()[0])
            optimizer.step()
            scheduler.step()
        curves[name] = lrs
    return {"peak_lr": peak, "warmup_steps": warmup, "total_steps": total, "lr_min": min_lr,
            "lrs": curves}


def main() -> None:
    torch.set_num_threads(2)
    torch.manual_seed(0)
    reference = dpo_reference()
    out = FIXTURES / "dpo_reference.json"
    out.write_text(json.dumps(reference) + "\n")
    print(f"wrote {out.relative_to(ROOT)} and {ADAPTER_DIR.relative_to(ROOT)}/adapter_config.json")
    optim = {
        "generator": "scripts/reference/dpo.py",
        "torch_version": torch.__version__,
        "transformers_version": transformers.__version__,
        "adamw": adamw_reference(),
        "clip_grad_norm": clip_reference(),
        "schedules": schedules_reference(),
    }
    out = FIXTURES / "optim_reference.json"
    out.write_text(json.dumps(optim) + "\n")
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
