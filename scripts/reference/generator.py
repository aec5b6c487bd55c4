#!/usr/bin/env python3
"""Reference outputs of transformers for crate `models`' Llama-family generator.

Writes, under crates/models/tests/fixtures/:

  * generator_reference.json: SmolLM2-135M-Instruct (the GGUF file of scripts/setup.sh, loaded
    by transformers with `gguf_file=`, dequantised to fp32). For three prompts (one rendered
    with the model's chat template): the prompt ids, the last-position logits (top 50, every
    97th id, summary numbers) and the greedy 24-token continuation.
  * tiny-llama/ and tiny-qwen2/: small models with synthetic, hash-defined weights (no weights
    file is stored: the test rebuilds model.safetensors from the names and shapes listed in
    reference.json), their configuration written with `save_pretrained` (config.json,
    generation_config.json; tiny-llama also a word-level tokenizer.json and a
    tokenizer_config.json with a chat template), each with a
    reference.json: logits of a left-padded batch at every real position, and the greedy
    continuation of that batch by `generate`.

Run with the benchmark venv (scripts/bench-venv.sh) from the repository root:
    .venv-bench/bin/python scripts/reference/generator.py
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer

from reference_common import ROOT, models_env

FIXTURES = ROOT / "crates" / "models" / "tests" / "fixtures"

PROMPTS = [
    {"text": "The State of the Union is", "chat": False},
    {"text": "Write one sentence about the history of the United States Congress.", "chat": True},
    {
        "text": "Fellow-Citizens of the Senate and House of Representatives: In meeting you "
        "again I feel much satisfaction in being able to",
        "chat": False,
    },
]
GREEDY_TOKENS = 24
TOP_LOGITS = 50
LOGIT_STRIDE = 97


def rounded(values) -> list:
    """Seven significant digits: ample for tolerances of 1e-4 and above, half the bytes."""
    return [float(f"{v:.7g}") for v in values]


def logit_summary(logits: torch.Tensor) -> dict:
    top = logits.topk(TOP_LOGITS)
    return {
        "top_ids": top.indices.tolist(),
        "top_values": rounded(top.values.tolist()),
        "strided_every": LOGIT_STRIDE,
        "strided_values": rounded(logits[::LOGIT_STRIDE].tolist()),
        "logsumexp": float(torch.logsumexp(logits.double(), 0)),
        "mean": float(logits.double().mean()),
        "std": float(logits.double().std()),
    }


def smollm2_reference() -> dict:
    gguf_path = Path(models_env()["FEDSYN_SMOLLM2_GGUF"])
    folder, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    model.eval()
    eos = tokenizer.eos_token_id
    cases = []
    for prompt in PROMPTS:
        if prompt["chat"]:
            messages = [{"role": "user", "content": prompt["text"]}]
            text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        else:
            text = prompt["text"]
            ids = tokenizer(text)["input_ids"]
        input_ids = torch.tensor([ids])
        with torch.no_grad():
            logits = model(input_ids).logits[0, -1]
            output = model.generate(
                input_ids,
                attention_mask=torch.ones_like(input_ids),
                do_sample=False,
                max_new_tokens=GREEDY_TOKENS,
                eos_token_id=eos,
                pad_token_id=eos,
            )
        cases.append({
            "text": prompt["text"],
            "chat": prompt["chat"],
            "formatted": text,
            "prompt_ids": ids,
            "last_logits": logit_summary(logits),
            "greedy_ids": output[0, len(ids):].tolist(),
            "greedy_text": tokenizer.decode(output[0, len(ids):], skip_special_tokens=True),
        })
    return {
        "generator": "scripts/reference/generator.py",
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
        "model_file": name,
        "eos_id": eos,
        "greedy_tokens": GREEDY_TOKENS,
        "cases": cases,
    }


# The tiny models' weights are not stored: each value is a function of the tensor's name and
# the value's flat index, which crates/models/tests/llama_hf_dir.rs evaluates the same way
# (64-bit integer hashing, then exact or IEEE-rounded arithmetic), so the test rebuilds the
# very weights these references were computed with.
MASK64 = (1 << 64) - 1


def fnv1a64(text: str) -> int:
    value = 0xCBF29CE484222325
    for byte in text.encode():
        value = ((value ^ byte) * 0x100000001B3) & MASK64
    return value


def splitmix64(value: int) -> int:
    value = (value + 0x9E3779B97F4A7C15) & MASK64
    value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & MASK64
    return value ^ (value >> 31)


def synthetic_value(name: str, index: int, name_hash: int) -> float:
    """Uniform in [-1, 1) on a 2^-23 grid, scaled so that greedy choices are far from ties and
    norm gains and biases sit away from their 1 / 0 initial values (wrong loading shows)."""
    unit = ((splitmix64(name_hash ^ index) >> 40) - (1 << 23)) / float(1 << 23)
    if name.endswith("norm.weight"):
        return 1.0 + 0.125 * unit
    if name.endswith(".bias"):
        return 0.125 * unit
    return 0.375 * unit


def synthesise(model: torch.nn.Module) -> None:
    """Overwrites every parameter with its synthetic values (float64 maths, rounded to f32)."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            name_hash = fnv1a64(name)
            values = [synthetic_value(name, i, name_hash) for i in range(param.numel())]
            param.copy_(torch.tensor(values, dtype=torch.float64).reshape(param.shape))


def saved_tensors(model: torch.nn.Module) -> list:
    """Name and shape of every tensor `save_pretrained` writes (tied weights once)."""
    import tempfile
    from safetensors import safe_open

    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        with safe_open(str(Path(tmp) / "model.safetensors"), framework="pt") as f:
            return [{"name": k, "shape": list(f.get_slice(k).get_shape())} for k in sorted(f.keys())]


# Word-level vocabulary of the tiny Llama: 4 special tokens, then w0 .. w59.
TINY_VOCAB = ["<unk>", "<s>", "</s>", "<|user|>"] + [f"w{i}" for i in range(60)]
TINY_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}<|user|> {{ message['content'] }} "
    "{% endfor %}{% if add_generation_prompt %}w0{% endif %}"
)


def tiny_tokenizer(folder: Path) -> None:
    """A word-level tokenizer.json whose post-processor adds BOS, like Llama's."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, decoders
    from tokenizers import AddedToken

    tokenizer = Tokenizer(models.WordLevel({t: i for i, t in enumerate(TINY_VOCAB)}, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.add_special_tokens([AddedToken(t, special=True) for t in TINY_VOCAB[:4]])
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", 1)])
    tokenizer.decoder = decoders.WordPiece(prefix="##")
    tokenizer.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "bos_token": "<s>",
        "eos_token": "</s>",
        "chat_template": TINY_CHAT_TEMPLATE,
    }, indent=1) + "\n")
    return tokenizer


def tiny_reference(kind: str) -> None:
    common = dict(vocab_size=len(TINY_VOCAB), hidden_size=32, intermediate_size=64,
                  num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                  max_position_embeddings=256, rms_norm_eps=1e-5, bos_token_id=1,
                  eos_token_id=2, pad_token_id=0)
    torch.manual_seed(0)
    if kind == "llama":
        config = transformers.LlamaConfig(**common, tie_word_embeddings=False,
                                          rope_parameters={"rope_type": "default",
                                                           "rope_theta": 500000.0})
        model = transformers.LlamaForCausalLM(config)
    else:
        config = transformers.Qwen2Config(**common, tie_word_embeddings=True,
                                          rope_parameters={"rope_type": "default",
                                                           "rope_theta": 1000000.0})
        model = transformers.Qwen2ForCausalLM(config)
    model.eval()
    synthesise(model)
    folder = FIXTURES / f"tiny-{kind}"
    folder.mkdir(parents=True, exist_ok=True)
    # The configuration only (as `save_pretrained` would write it): the weights are rebuilt
    # from `tensors` by the Rust test.
    model.config.architectures = [type(model).__name__]
    model.config.dtype = torch.float32
    model.config.save_pretrained(folder)
    model.generation_config.save_pretrained(folder)

    # A left-padded batch: row 0 full, row 1 with three pads (pad id 0).
    rows = [[5, 17, 33, 8, 41, 12, 9], [22, 7, 50, 31]]
    width = max(len(r) for r in rows)
    input_ids = torch.tensor([[0] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    positions = (mask.cumsum(1) - 1).clamp(min=0)
    with torch.no_grad():
        logits = model(input_ids=input_ids, attention_mask=mask, position_ids=positions).logits
        generated = model.generate(input_ids=input_ids, attention_mask=mask, do_sample=False,
                                   max_new_tokens=8, eos_token_id=2, pad_token_id=0)
    real_logits = [logits[b, width - len(r):].tolist() for b, r in enumerate(rows)]
    greedy = []
    for row in generated[:, width:].tolist():
        # generate pads rows that ended with EOS; keep the EOS, drop the padding after it.
        greedy.append(row[: row.index(2) + 1] if 2 in row else row)
    reference = {
        "generator": "scripts/reference/generator.py",
        "transformers_version": transformers.__version__,
        "prompts": rows,
        "logits": [[rounded(position) for position in row] for row in real_logits],
        "greedy_ids": greedy,
        "max_new_tokens": 8,
        "eos_id": 2,
        "tensors": saved_tensors(model),
    }
    if kind == "llama":
        tokenizer = tiny_tokenizer(folder)
        words = "w5 w6 w7 w8"
        chat = TINY_CHAT_TEMPLATE  # rendered by transformers below, for the Rust chat check
        hf_tokenizer = transformers.PreTrainedTokenizerFast(
            tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
        hf_tokenizer.chat_template = chat
        reference["text_prompt"] = words
        reference["text_prompt_ids"] = hf_tokenizer(words)["input_ids"]
        reference["chat_prompt_ids"] = hf_tokenizer.apply_chat_template(
            [{"role": "user", "content": words}], add_generation_prompt=True, tokenize=True,
            return_dict=False)
    (folder / "reference.json").write_text(json.dumps(reference) + "\n")
    print(f"wrote {folder.relative_to(ROOT)}")


def main() -> None:
    torch.set_num_threads(2)
    tiny_reference("llama")
    tiny_reference("qwen2")
    output = FIXTURES / "generator_reference.json"
    output.write_text(json.dumps(smollm2_reference(), ensure_ascii=False, indent=1) + "\n")
    print(f"wrote {output.relative_to(ROOT)} (transformers {transformers.__version__})")


if __name__ == "__main__":
    main()
