"""What the reference scripts (scripts/reference/*.py) share: the repository root, the model
paths that scripts/setup.sh recorded, and the way a JSON fixture is written.

Standard library only: tokenizer_ids.py runs with the system python3, before any venv exists.
"""

import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def models_env() -> dict:
    """The paths scripts/setup.sh wrote to .cache/models.env; FEDSYN_* variables set in the
    environment take precedence, as they do for fedsyn's own `Assets`. (benches/python/
    anchor_common.py reads it the same way: it travels alone in the GPU bundle, so it cannot
    import this file.)"""
    env_file = ROOT / ".cache" / "models.env"
    if not env_file.is_file():
        sys.exit(f"{env_file} is missing: run scripts/setup.sh first")
    pairs = (line.partition("=") for line in env_file.read_text().splitlines())
    values = {key.strip(): value.strip() for key, _, value in pairs
              if key and not key.startswith("#")}
    values.update({k: v for k, v in os.environ.items() if k.startswith("FEDSYN_") and v})
    return values


def write_fixture(path: Path, content: dict, details: str) -> None:
    """Writes `content` to `path` as one line of JSON, non-ASCII text kept as it is, and prints
    "wrote PATH: DETAILS"."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(content, ensure_ascii=False) + "\n")
    print(f"wrote {path.relative_to(ROOT)}: {details}")
