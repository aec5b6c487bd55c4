#!/usr/bin/env python3
"""Reference values of transformers + PEFT for fedsyn's downstream model (top-1 next-token
accuracy and the causal-LM loss).

Writes crates/models/tests/fixtures/downstream_reference.json: for fixed token sequences of
different lengths (right-padded into one batch, as fedsyn batches them), on the tiny Llama of
scripts/reference/generator.py, with and without the hash-defined PEFT adapter of
scripts/reference/dpo.py (tiny-llama-lora): the argmax prediction at every position whose next
token is real, how many equal that token, and the mean negative log-likelihood over those
positions (transformers' causal-LM loss with padding labels set to -100).

Run with the benchmark venv (scripts/bench-venv.sh) from the repository root:
    .venv-bench/bin/python scripts/reference/downstream.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
import transformers

sys.path.insert(0, str(Path(__file__).resolve().parent))
import dpo  # noqa: E402  (the tiny model with its hash-defined adapter)

OUT = dpo.FIXTURES / "downstream_reference.json"
PAD = 0

# Prefixes of token ids of the tiny vocabulary (64), continued greedily by the adapted model
# except at every third position, which gets another token (see `sequences`): the predictions
# are then partly right, partly wrong. Lengths differ so that padding is exercised.
PREFIXES = [[5, 17, 33], [22, 7], [4, 60, 13, 27], [11, 11], [40]]
CONTINUATIONS = [7, 2, 11, 4, 1]


def sequences(model) -> list[list[int]]:
    rows = []
    for prefix, extra in zip(PREFIXES, CONTINUATIONS):
        ids = list(prefix)
        with torch.no_grad():
            for _ in range(extra):
                logits = model(input_ids=torch.tensor([ids])).logits[0, -1]
                best = int(logits.argmax())
                ids.append((best + 7) % 64 if len(ids) % 3 == 2 else best)
        rows.append(ids)
    return rows


def scores(model, SEQUENCES) -> dict:
    width = max(len(s) for s in SEQUENCES)
    ids = torch.tensor([s + [PAD] * (width - len(s)) for s in SEQUENCES])
    attention = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in SEQUENCES])
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=attention).logits.float()
    labels = ids.masked_fill(attention == 0, -100)[:, 1:]
    shifted = logits[:, :-1]
    loss = F.cross_entropy(shifted.reshape(-1, shifted.shape[-1]), labels.reshape(-1), ignore_index=-100)
    predicted = shifted.argmax(-1)
    scored = labels != -100
    return {
        "predictions": [predicted[i, : len(s) - 1].tolist() for i, s in enumerate(SEQUENCES)],
        "correct": int(((predicted == labels) & scored).sum()),
        "tokens": int(scored.sum()),
        "mean_loss": float(loss),
    }


def main() -> None:
    model, tensors, _ = dpo.adapted_model()
    rows = sequences(model)
    with_adapter = scores(model, rows)
    with model.disable_adapter():
        base = scores(model, rows)
    reference = {
        "generator": "scripts/reference/downstream.py",
        "torch_version": torch.__version__,
        "transformers_version": transformers.__version__,
        "peft_version": __import__("peft").__version__,
        "sequences": rows,
        "adapter_tensors": tensors,
        "with_adapter": with_adapter,
        "base": base,
    }
    OUT.write_text(json.dumps(reference, indent=1) + "\n")
    print(f"wrote {OUT}: accuracy {with_adapter['correct']}/{with_adapter['tokens']} with the adapter, "
          f"{base['correct']}/{base['tokens']} without")


if __name__ == "__main__":
    main()
