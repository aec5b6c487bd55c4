#!/usr/bin/env python3
"""Reference sentence embeddings of all-MiniLM-L6-v2 from sentence-transformers, written to
crates/models/tests/fixtures/embedder_reference.json for crates/models/tests/embedder.rs.

The model is loaded offline from the folder scripts/setup.sh installs (FEDSYN_MINILM_DIR in
.cache/models.env), on the CPU in fp32. The texts cover the edge cases of the pipeline: a
one-character text, an empty and a whitespace-only text, accents, CJK, right-to-left script,
emoji, and texts longer than the 256-token limit (truncation). The fixture also records each
text's token count after truncation.

Run from the repository root (needs the benchmark venv, scripts/bench-venv.sh):
    .venv-bench/bin/python scripts/reference/embedder.py
"""

import os
from importlib.metadata import version

from reference_common import ROOT, models_env, write_fixture

OUTPUT = ROOT / "crates" / "models" / "tests" / "fixtures" / "embedder_reference.json"

# Significant digits kept in the fixture: far below the test's cosine tolerance (1e-4).
DIGITS = 7

SPEECH = (
    "Friends, Romans, countrymen, lend me your ears; I come to bury Caesar, not to praise him. "
    "The evil that men do lives after them; the good is oft interred with their bones; so let "
    "it be with Caesar. The noble Brutus hath told you Caesar was ambitious: if it were so, it "
    "was a grievous fault, and grievously hath Caesar answer'd it. "
)

TEXTS = [
    "a",
    "",
    "   \t\n  ",
    "?",
    "Hello, world!",
    "The quick brown fox jumps over the lazy dog.",
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The girl is carrying a baby.",
    "A man is riding a horse.",
    "A woman is playing violin.",
    "Two men pushed carts through the woods.",
    "A man is riding a white horse on an enclosed ground.",
    "A monkey is playing drums.",
    "Someone in a gorilla costume is playing a set of drums.",
    "Café naïve résumé — déjà vu; Straße; Ærøskøbing.",
    "中文字符测试，日本語のテキスト、한국어 문장.",
    "مرحبا بالعالم، هذه جملة باللغة العربية.",
    "Emoji: 😀🎉👍🏽 and a family 👨‍👩‍👧‍👦.",
    "🔥🔥🔥",
    "Numbers: 7, 42, 2025, 3.14159, 1,000,000 and -0.5e-10.",
    "ALL CAPS SENTENCE WITH MIXED case AND PunCtuation!!! ???",
    "  leading and trailing whitespace  ",
    "Code: fn main() { println!(\"{}\", x[0] + 1); } // done",
    "To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer\n"
    "The slings and arrows of outrageous fortune,\nOr to take arms against a sea of troubles.",
    "Mr. Speaker, Mr. Vice President, Members of Congress, my fellow Americans: tonight I "
    "report to you that the state of our Union is strong.",
    "supercalifragilisticexpialidocious antidisestablishmentarianism pneumonoultramicroscopic",
    # Longer than 256 tokens: sentence-transformers keeps the first 255 word pieces and [SEP].
    SPEECH * 5,
    # The same beginning with a different tail past the cut: must embed identically.
    SPEECH * 4 + "Completely different words after the truncation point. " * 40,
    " ".join(["word"] * 600),
]


def main() -> None:
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    import torch
    from sentence_transformers import SentenceTransformer

    model_dir = models_env()["FEDSYN_MINILM_DIR"]
    model = SentenceTransformer(model_dir, device="cpu")
    model.eval()
    assert model.max_seq_length == 256, model.max_seq_length
    embeddings = model.encode(TEXTS, batch_size=8, convert_to_numpy=True)
    token_counts = [int(model.preprocess([t])["attention_mask"].sum()) for t in TEXTS]
    reference = {
        "generator": "scripts/reference/embedder.py",
        "versions": {
            "torch": torch.__version__,
            "transformers": version("transformers"),
            "sentence-transformers": version("sentence-transformers"),
        },
        "max_seq_length": model.max_seq_length,
        "texts": TEXTS,
        "token_counts": token_counts,
        "embeddings": [[float(f"{x:.{DIGITS}g}") for x in row] for row in embeddings.tolist()],
    }
    write_fixture(OUTPUT, reference,
                  f"{len(TEXTS)} texts, dim {embeddings.shape[1]}, token counts {token_counts}")


if __name__ == "__main__":
    main()
