#!/usr/bin/env python3
"""PEFT reference for fedsyn's LoRA adapters (crate `models`, src/llama/lora.rs).

Default mode writes crates/models/tests/fixtures/peft-tiny-llama/:

  * adapter_config.json, adapter_model.safetensors: a LoRA adapter (r 4, alpha 8, all seven
    projections) on the tiny Llama of generator.py, saved by PEFT's `save_pretrained`, with
    deterministic nonzero weights (a function of each tensor's name and index, as the tiny
    model's own weights are);
  * reference.json: transformers + PEFT outputs with the adapter: logits of a right-padded
    batch at every real position, and the greedy continuation of a left-padded batch.

`--check DIR` reads an adapter that fedsyn saved into DIR (with `fedsyn_logits.json` beside
it: input ids, attention mask and fedsyn's logits at every real position), loads it with
`PeftModel.from_pretrained` onto the same tiny Llama, and prints the largest difference
between PEFT's logits and fedsyn's.

Run with the benchmark venv (scripts/bench-venv.sh) from the repository root:
    .venv-bench/bin/python scripts/reference/peft_adapter.py [--check DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import peft
import torch
import transformers
from peft import LoraConfig, PeftModel, get_peft_model

sys.path.insert(0, str(Path(__file__).resolve().parent))
from safetensors import safe_open  # noqa: E402
from generator import FIXTURES, ROOT, fnv1a64, rounded, synthesise, synthetic_value  # noqa: E402

TINY_LLAMA = FIXTURES / "tiny-llama"
OUTPUT = FIXTURES / "peft-tiny-llama"
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
# Rows of the right-padded batch (pad id 0): row 0 full, row 1 with three pads.
ROWS = [[5, 17, 33, 8, 41, 12, 9], [22, 7, 50, 31]]
GREEDY_TOKENS = 8
EOS_ID = 2
# Adapter weights are the tiny model's synthetic values times this, small enough that the
# adapted model stays in the range of the base one.
ADAPTER_SCALE = 0.25


def tiny_llama() -> torch.nn.Module:
    """The tiny Llama exactly as generator.py built it: its saved config, synthetic weights."""
    config = transformers.AutoConfig.from_pretrained(TINY_LLAMA)
    model = transformers.LlamaForCausalLM(config)
    model.eval()
    synthesise(model)
    return model


def saved_name(parameter_name: str) -> str:
    """The name `save_pretrained` gives a LoRA parameter (the adapter name dropped)."""
    return parameter_name.replace(".default", "")


def set_adapter_weights(model: torch.nn.Module) -> None:
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_" not in name:
                continue
            key = saved_name(name)
            key_hash = fnv1a64(key)
            values = [ADAPTER_SCALE * synthetic_value(key, i, key_hash) for i in range(param.numel())]
            param.copy_(torch.tensor(values, dtype=torch.float64).reshape(param.shape))


def padded(rows: list, left: bool) -> tuple:
    width = max(len(r) for r in rows)
    ids, mask = [], []
    for row in rows:
        pad = [0] * (width - len(row))
        ids.append(pad + row if left else row + pad)
        ones = [1] * len(row)
        mask.append(pad + ones if left else ones + pad)
    return torch.tensor(ids), torch.tensor(mask)


def real_logits(model: torch.nn.Module, input_ids: torch.Tensor, mask: torch.Tensor) -> list:
    """Logits of a right-padded batch at each row's real positions (positions 0, 1, …)."""
    with torch.no_grad():
        logits = model(input_ids=input_ids, attention_mask=mask).logits
    lengths = mask.sum(1).tolist()
    return [logits[row, :length].tolist() for row, length in enumerate(lengths)]


def write_reference() -> None:
    torch.set_num_threads(2)
    model = tiny_llama()
    config = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=TARGETS,
                        task_type="CAUSAL_LM")
    adapted = get_peft_model(model, config)
    set_adapter_weights(adapted)
    adapted.eval()
    OUTPUT.mkdir(parents=True, exist_ok=True)
    adapted.save_pretrained(OUTPUT)
    (OUTPUT / "README.md").unlink(missing_ok=True)  # PEFT's model card template
    # The weights file is not kept (no model files in git): every value is ADAPTER_SCALE times
    # `synthetic_value` of its tensor's name, so the test rewrites it from the names and shapes
    # PEFT saved, recorded here.
    weights = OUTPUT / "adapter_model.safetensors"
    with safe_open(weights, framework="pt") as saved:
        adapter_tensors = [{"name": key, "shape": list(saved.get_slice(key).get_shape())}
                           for key in sorted(saved.keys())]
    weights.unlink()

    input_ids, mask = padded(ROWS, left=False)
    logits = real_logits(adapted, input_ids, mask)
    left_ids, left_mask = padded(ROWS, left=True)
    positions = (left_mask.cumsum(1) - 1).clamp(min=0)
    with torch.no_grad():
        generated = adapted.generate(input_ids=left_ids, attention_mask=left_mask,
                                     position_ids=positions, do_sample=False,
                                     max_new_tokens=GREEDY_TOKENS, eos_token_id=EOS_ID,
                                     pad_token_id=0)
    width = left_ids.shape[1]
    greedy = []
    for row in generated[:, width:].tolist():
        greedy.append(row[: row.index(EOS_ID) + 1] if EOS_ID in row else row)
    reference = {
        "generator": "scripts/reference/peft_adapter.py",
        "peft_version": peft.__version__,
        "transformers_version": transformers.__version__,
        "rows": ROWS,
        "logits": [[rounded(position) for position in row] for row in logits],
        "greedy_ids": greedy,
        "max_new_tokens": GREEDY_TOKENS,
        "eos_id": EOS_ID,
        "adapter_scale": ADAPTER_SCALE,
        "adapter_tensors": adapter_tensors,
    }
    (OUTPUT / "reference.json").write_text(json.dumps(reference) + "\n")
    print(f"wrote {OUTPUT.relative_to(ROOT)} (peft {peft.__version__})")


def check(folder: Path) -> None:
    torch.set_num_threads(2)
    fedsyn = json.loads((folder / "fedsyn_logits.json").read_text())
    adapted = PeftModel.from_pretrained(tiny_llama(), folder)
    adapted.eval()
    input_ids = torch.tensor(fedsyn["input_ids"])
    mask = torch.tensor(fedsyn["attention_mask"])
    peft_logits = real_logits(adapted, input_ids, mask)
    worst = 0.0
    for peft_row, fedsyn_row in zip(peft_logits, fedsyn["logits"], strict=True):
        difference = (torch.tensor(peft_row) - torch.tensor(fedsyn_row)).abs().max().item()
        worst = max(worst, difference)
    # The adapter must change the model, or the comparison proves nothing.
    base_logits = real_logits(tiny_llama(), input_ids, mask)
    effect = max((torch.tensor(a) - torch.tensor(b)).abs().max().item()
                 for a, b in zip(peft_logits, base_logits))
    print(f"max |PEFT - fedsyn| logit difference: {worst:.3g} "
          f"(the adapter moves logits by up to {effect:.3g})")
    if worst > 1e-4:
        sys.exit("difference above 1e-4")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", type=Path, metavar="DIR",
                        help="compare an adapter saved by fedsyn (with fedsyn_logits.json)")
    args = parser.parse_args()
    if args.check:
        check(args.check)
    else:
        write_reference()


if __name__ == "__main__":
    main()
