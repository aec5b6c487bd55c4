#!/usr/bin/env bash
# The GPU check, in one call on a lent GPU machine (see /work/.library/device): builds fedsyn
# with CUDA libtorch, checks the CUDA path and times it, writing everything under $OUT (or
# target/gpu-check). Each step's output is kept; a failing step does not stop the others.
#
#   scripts/gpu-check.sh            # all steps (about 10 minutes on an H100)
#
# Needs: an NVIDIA GPU, Rust (cargo), Python 3 with pip and the PyPI wheel torch==2.13.0
# (scripts/setup.sh installs it; the wheel carries CUDA). A machine whose image lacks cargo or
# cannot reach PyPI cannot build fedsyn: the script says so and stops (exit 3).
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-target/gpu-check}"
mkdir -p "$out"
export OMP_WAIT_POLICY=PASSIVE

missing() { echo "gpu-check: $1" | tee -a "$out/summary.txt" >&2; exit 3; }
command -v nvidia-smi >/dev/null || missing "no nvidia-smi: not a GPU machine"
command -v cargo >/dev/null || missing "no cargo on this machine: install Rust (rustup) to build fedsyn"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.csv"

step() { # step NAME COMMAND...: runs it, keeps its output, records status and seconds
  local name="$1"; shift
  local start=$SECONDS
  "$@" >"$out/$name.log" 2>&1
  local status=$?
  echo "$name: exit $status, $((SECONDS - start)) s" | tee -a "$out/summary.txt"
}

step setup scripts/setup.sh || true
step build cargo build --release --bin fedsyn --bin fedsyn-ml --bench generate --bench embed --bench dpo_step
B=target/release/fedsyn
# CUDA must be really on (libtorch_cuda linked, a device visible).
step doctor "$B" doctor --json
# Correctness on CUDA (bf16): greedy text of the generator, embeddings of the embedder.
step generate "$B" generate --device cuda --prompt "The capital of France is" --greedy --max-tokens 16 --json
printf '{"text": "A one-line test of the embedder on the GPU."}\n{"text": "x"}\n' >"$out/texts.jsonl"
step embed "$B" embed --device cuda "$out/texts.jsonl" --out "$out/embeddings.jsonl"
# Timings: sampling (batch 64), embedding (2,000 speeches if ../shared is here), one DPO step.
step bench-generate cargo bench --quiet --bench generate -- --batch 64 --device cuda
step bench-embed cargo bench --quiet --bench embed -- --device cuda
step bench-dpo cargo bench --quiet --bench dpo_step -- --device cuda
# One paper-scale POPri round (J = 1800, K = 10) with seconds per phase in metrics.jsonl.
step paper-round "$B" simulate --quiet --json --config experiments/paper-scale.toml \
  --set privacy.rounds=1 --set output.synthetic_samples=100 --out "$out/paper-round"
cp "$out/paper-round/metrics.jsonl" "$out/paper-round-metrics.jsonl" 2>/dev/null
cat "$out/summary.txt"
