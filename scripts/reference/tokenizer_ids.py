#!/usr/bin/env python3
"""Reference token ids for crate `models`' tokenizers, from the Python `tokenizers` package,
written to crates/models/tests/fixtures/tokenizer_reference.json.

  * SmolLM2: the GGUF file's vocabulary, merges and control tokens (read with the `gguf`
    package) are put into a tokenizer.json laid out as SmolLM2's upstream one (Digits split,
    then GPT-2 byte-level BPE) and loaded with `tokenizers.Tokenizer.from_str`; the Rust side
    builds the same tokenizer through the crate's builder API instead.
  * all-MiniLM-L6-v2: its own tokenizer.json (with its truncation and padding to 128).

Run from the repository root after scripts/setup.sh:
    python3 scripts/reference/tokenizer_ids.py
Missing packages (gguf==0.19.0, tokenizers==0.22.2, the Python twin of the Rust crate used)
are installed with `pip install --target .cache/reference-pydeps`.
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path

from reference_common import ROOT, models_env, write_fixture

PYDEPS = ROOT / ".cache" / "reference-pydeps"
REQUIREMENTS = {"gguf": "gguf==0.19.0", "tokenizers": "tokenizers==0.22.2"}
OUTPUT = ROOT / "crates" / "models" / "tests" / "fixtures" / "tokenizer_reference.json"
TOKEN_TYPE_CONTROL = 3

TEXTS = [
    "Hello, world!",
    "The quick brown fox jumps over the lazy dog.",
    "  leading spaces,\ttabs\tand trailing spaces   ",
    "Line one\nLine two\n\n\nafter blank lines\r\nwindows line",
    "Numbers: 7, 42, 2025, 3.14159, 1,000,000 and -0.5e-10.",
    "Contractions: I'm, you're, it's, we'll, they'd, don't, CAN'T, She'S.",
    "Café naïve résumé — déjà vu; Straße; Ærøskøbing.",
    "中文字符测试，日本語のテキスト、한국어 문장.",
    "Emoji: 😀🎉👍🏽 and a family 👨‍👩‍👧‍👦.",
    "Code: fn main() { println!(\"{}\", x[0] + 1); } // done",
    "def f(x):\n    return {'a': [1, 2, 3]}\n",
    "URLs like https://example.com/path?q=1&r=two#frag and user@example.org",
    "<|im_start|>user\nWhat is the State of the Union?<|im_end|>\n<|im_start|>assistant\n",
    "<|endoftext|>text after a special token<|im_end|>",
    "Mr. Speaker, Mr. Vice President, Members of Congress, my fellow Americans: "
    "tonight I report to you that the state of our Union is strong.",
    "Fellow-Citizens of the Senate and House of Representatives: In meeting you again I feel "
    "much satisfaction in being able to repeat my congratulations on the favorable prospects.",
    "ALL CAPS SENTENCE WITH MIXED case AND PunCtuation!!! ???",
    "",
    " ",
    "a",
]


def import_packages():
    """Imports gguf and tokenizers, installing them into PYDEPS when missing."""
    sys.path.insert(0, str(PYDEPS))
    missing = []
    for module, requirement in REQUIREMENTS.items():
        try:
            importlib.import_module(module)
        except ImportError:
            missing.append(requirement)
    if missing:
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", "--target", str(PYDEPS), *missing],
            check=True,
        )
        importlib.invalidate_caches()
    import gguf
    import tokenizers

    return gguf, tokenizers


def field_strings(reader, key: str) -> list:
    field = reader.fields[key]
    return [bytes(field.parts[i]).decode("utf-8") for i in field.data]


def field_ints(reader, key: str) -> list:
    field = reader.fields[key]
    return [int(field.parts[i][0]) for i in field.data]


def smollm2_tokenizer_json(gguf, path: str) -> str:
    """SmolLM2's tokenizer.json, rebuilt from the GGUF metadata."""
    reader = gguf.GGUFReader(path)
    tokens = field_strings(reader, "tokenizer.ggml.tokens")
    merges = field_strings(reader, "tokenizer.ggml.merges")
    types = field_ints(reader, "tokenizer.ggml.token_type")
    added = [
        {"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
         "normalized": False, "special": True}
        for i, (t, ty) in enumerate(zip(tokens, types)) if ty == TOKEN_TYPE_CONTROL
    ]
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
                  "use_regex": True}
    return json.dumps({
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": True}, byte_level]},
        "post_processor": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False,
                           "use_regex": True},
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True,
                    "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None,
                  "continuing_subword_prefix": None, "end_of_word_suffix": None,
                  "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": {t: i for i, t in enumerate(tokens)}, "merges": merges},
    })


def main() -> None:
    gguf, tokenizers = import_packages()
    env = models_env()
    smollm2 = tokenizers.Tokenizer.from_str(smollm2_tokenizer_json(gguf, env["FEDSYN_SMOLLM2_GGUF"]))
    minilm = tokenizers.Tokenizer.from_file(str(Path(env["FEDSYN_MINILM_DIR"]) / "tokenizer.json"))
    smollm2_ids = [smollm2.encode(t, add_special_tokens=False).ids for t in TEXTS]
    for text, ids in zip(TEXTS, smollm2_ids):
        assert smollm2.decode(ids, skip_special_tokens=False) == text, text
    minilm_encodings = [minilm.encode(t) for t in TEXTS]
    reference = {
        "generator": "scripts/reference/tokenizer_ids.py",
        "tokenizers_version": tokenizers.__version__,
        "texts": TEXTS,
        "smollm2_ids": smollm2_ids,
        "minilm_ids": [e.ids for e in minilm_encodings],
        "minilm_attention_mask": [e.attention_mask for e in minilm_encodings],
    }
    write_fixture(OUTPUT, reference, f"{len(TEXTS)} texts (tokenizers {tokenizers.__version__})")


if __name__ == "__main__":
    main()
