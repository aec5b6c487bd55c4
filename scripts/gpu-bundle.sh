#!/usr/bin/env bash
# Makes the GPU bundle: everything a lent GPU machine (no cargo, no network, python3 with
# torch 2.11.0+cu130, transformers, peft and sentence-transformers; at most 64 MiB carried)
# needs to run fedsyn's CUDA path beside the Python stack:
#
#   bin/fedsyn, bin/fedsyn-ml   stripped release binaries, linked against libtorch 2.11.0
#                               (they find the machine's libtorch through LD_LIBRARY_PATH,
#                               which gpu_check.py sets from its torch)
#   tokenizers/smollm2/         SmolLM2-135M-Instruct's tokenizer (tokenizer.json, its config
#                               and chat template), written from the GGUF file by transformers
#   tokenizers/minilm/          all-MiniLM-L6-v2's tokenizer files
#   data/sotu/                  the State of the Union addresses since 1961 (CC0), the text the
#                               round, the DPO pairs and the embedding benchmark use
#   configs/paper-scale.toml    the POPri configuration the timed round starts from
#   gpu_check.py, dpo_step_anchor.py, anchor_common.py
#                               the GPU-side script, the PEFT DPO step it times and the
#                               helpers that step imports
#   manifest.json               the libtorch the binaries were built against, the newest glibc
#                               and libstdc++ symbol versions they need, the commit, file sizes
#
# Usage:
#   scripts/gpu-bundle.sh [--bin-dir DIR] [--out DIR]
#     --bin-dir DIR   take fedsyn and fedsyn-ml from DIR instead of building them
#                     (cargo build --release)
#     --out DIR       where to write the bundle (default target/gpu-bundle; replaced)
#
# Then, with the device tool: run `python3 target/gpu-bundle/gpu_check.py` with
# carry ["target/gpu-bundle"]; it writes $OUT/summary.json. On a machine without a GPU,
# `python3 target/gpu-bundle/gpu_check.py --device cpu --tiny` runs the same steps on tiny
# shapes (crates/fedsyn-ml/tests/gpu_bundle.rs does that).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$(pwd)"

bin_dir=""
out="target/gpu-bundle"
while [[ $# -gt 0 ]]; do
    case "$1" in
    --bin-dir) bin_dir="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    *) echo "gpu-bundle: unknown argument '$1' (use --bin-dir DIR, --out DIR)" >&2; exit 2 ;;
    esac
done

# The bundle may hold no more than this: the device tool carries at most 64 MiB, and the
# working tree travels beside it.
LIMIT_BYTES=$((56 * 1024 * 1024))

fail() { echo "gpu-bundle: $1" >&2; exit 1; }
[[ -f .cache/models.env ]] || fail ".cache/models.env is missing: run scripts/setup.sh first"
# shellcheck disable=SC1091
source .cache/models.env
for tool in strip objdump; do
    command -v "$tool" >/dev/null || fail "$tool not found: install binutils"
done

if [[ -z "$bin_dir" ]]; then
    cargo build --release --bin fedsyn --bin fedsyn-ml
    bin_dir="target/release"
fi
for binary in fedsyn fedsyn-ml; do
    [[ -x "$bin_dir/$binary" ]] || fail "no executable $bin_dir/$binary"
done

rm -rf "$out"
mkdir -p "$out/bin" "$out/tokenizers/minilm" "$out/data/sotu" "$out/configs"
for binary in fedsyn fedsyn-ml; do
    strip -o "$out/bin/$binary" "$bin_dir/$binary"
done

# SmolLM2's tokenizer as a Hugging Face folder, converted from the GGUF by transformers (the
# same conversion scripts/reference/tokenizer_ids.py checks fedsyn's GGUF tokenizer against).
"$FEDSYN_VENV_PYTHON" - "$FEDSYN_SMOLLM2_GGUF" "$out/tokenizers/smollm2" <<'EOF'
import sys
from pathlib import Path

from transformers import AutoTokenizer

gguf = Path(sys.argv[1])
tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
tokenizer.save_pretrained(sys.argv[2])
EOF
for file in tokenizer.json tokenizer_config.json vocab.txt special_tokens_map.json; do
    [[ -f "$FEDSYN_MINILM_DIR/$file" ]] && cp "$FEDSYN_MINILM_DIR/$file" "$out/tokenizers/minilm/"
done
[[ -f "$out/tokenizers/minilm/tokenizer.json" ]] || fail "no tokenizer.json in $FEDSYN_MINILM_DIR"

shopt -s nullglob
addresses=()
for file in "$FEDSYN_SOTU_DIR"/*.txt; do
    year="$(basename "$file" | cut -d_ -f1)"
    [[ "$year" -ge 1961 ]] && addresses+=("$file")
done
shopt -u nullglob
[[ ${#addresses[@]} -gt 40 ]] || fail "expected over 40 addresses since 1961 in $FEDSYN_SOTU_DIR"
cp "${addresses[@]}" "$out/data/sotu/"

cp experiments/paper-scale.toml "$out/configs/"
cp scripts/gpu/gpu_check.py benches/python/dpo_step_anchor.py benches/python/anchor_common.py \
    "$out/"

# The newest versioned glibc / libstdc++ symbols the binaries import: the GPU machine's own
# libraries must provide them (gpu_check.py checks this first).
newest() { # newest PREFIX FILE...: the highest PREFIX_x.y.z version any FILE imports
    objdump -T "${@:2}" | grep -o "$1_[0-9.]*" | sed "s/^$1_//" | sort -V | tail -n 1
}
glibc="$(newest GLIBC "$out"/bin/*)"
glibcxx="$(newest GLIBCXX "$out"/bin/*)"
torch_version="$(sed -n "s/^__version__ = '\(.*\)'/\1/p" "$FEDSYN_LIBTORCH/version.py")"
[[ -n "$torch_version" ]] || fail "cannot read the libtorch version from $FEDSYN_LIBTORCH/version.py"
commit="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
dirty="$(git status --porcelain --untracked-files=no 2>/dev/null | head -c 1)"

"$FEDSYN_VENV_PYTHON" - "$out" "$torch_version" "$glibc" "$glibcxx" "$commit${dirty:+-dirty}" <<'EOF'
import json
import sys
from pathlib import Path

out, torch_version, glibc, glibcxx, commit = sys.argv[1:]
root = Path(out)
files = {str(p.relative_to(root)): p.stat().st_size for p in sorted(root.rglob("*")) if p.is_file()}
manifest = {
    "torch_version": torch_version,
    "glibc_required": glibc,
    "glibcxx_required": glibcxx,
    "commit": commit,
    "bytes": sum(files.values()),
    "files": files,
}
(root / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
EOF

bytes="$(du -sb "$out" | cut -f1)"
if [[ "$bytes" -gt "$LIMIT_BYTES" ]]; then
    fail "the bundle is $((bytes / 1024 / 1024)) MiB, over the $((LIMIT_BYTES / 1024 / 1024)) MiB it may take"
fi
echo "gpu-bundle: $out, $((bytes / 1024)) KiB (libtorch $torch_version, glibc ≥ $glibc, GLIBCXX ≥ $glibcxx)"
