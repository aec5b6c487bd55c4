#!/usr/bin/env bash
# Side-by-side model benchmarks: fedsyn (Rust, release) against the Python stack
# (sentence-transformers / transformers), in one go on the same machine, each side in its own
# process (so that each peak RSS is that tool's own), then a Markdown table.
#
# Usage: benches/run-models.sh embed [OUT_DIR]    (default OUT_DIR: target/bench-models)
#   embed: docs/s embedding 2,000 Shakespeare speeches with all-MiniLM-L6-v2 at batch 64,
#          CPU fp32, 2 torch threads: fedsyn (crates/models/benches/embed.rs) vs sentence-transformers
#          (benches/python/embed_anchor.py); then fedsyn once more in bf16. Also reports how
#          closely each fedsyn run's embeddings agree with sentence-transformers'.
#        benches/run-models.sh generate [OUT_DIR]
#   generate: tokens/s sampling 64 new tokens (temperature 1.0) after 222-token prompts with
#          SmolLM2-135M-Instruct (GGUF → fp32), CPU, 2 torch threads, at batch 16 and 64:
#          fedsyn (crates/models/benches/generate.rs) vs transformers generate
#          (benches/python/generate_anchor.py), same prompt ids, one process per run,
#          alternating, best of REPEATS (default 3) runs of each.
#        benches/run-models.sh dpo [OUT_DIR]
#   dpo:   seconds for one DPO optimiser step (reference log-probs included on both sides) of
#          8 pairs (128 prompt + 64 completion tokens) with a rank-16 LoRA on all seven
#          projections of SmolLM2-135M-Instruct (GGUF → fp32), CPU, 2 torch threads: fedsyn
#          (crates/models/benches/dpo_step.rs) vs PyTorch + PEFT (benches/python/dpo_step_anchor.py), same
#          ids, one process per run, alternating, best of REPEATS (default 3) runs of each.
# Needs scripts/setup.sh (models) and the benchmark venv (created on first use by
# scripts/bench-venv.sh). Set THREADS to change the torch thread count of both sides.
# generate and dpo: DTYPE=bf16 runs fedsyn in bf16 (fp32 if the CPU lacks AVX512-BF16, as the
# table then says) and PYTHON_DTYPE (default: DTYPE, else f32) the Python side.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "${repo_root}"

usage() {
  sed -n '2,26p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

machine_line() {
  echo "machine: $(lscpu | sed -n 's/^Model name: *//p' | head -1), $(nproc) cores;" \
    "$(date -u +%Y-%m-%d); load average before/after: $1 / $(cut -d' ' -f1-3 /proc/loadavg)"
}

run_embed() {
  local out_dir="$1" threads="${THREADS:-2}" python load_before
  python="$(scripts/bench-venv.sh)"
  load_before="$(cut -d' ' -f1-3 /proc/loadavg)"

  echo "building and running the Rust benchmark (cargo bench -p models --bench embed), fp32 ..." >&2
  cargo bench --quiet -p models --bench embed -- --threads "${threads}" \
    --save "${out_dir}/embed-rust.f32" >"${out_dir}/embed-rust.json"

  echo "running sentence-transformers (benches/python/embed_anchor.py) ..." >&2
  "${python}" benches/python/embed_anchor.py --threads "${threads}" \
    --save "${out_dir}/embed-python.f32" >"${out_dir}/embed-python.json"

  # Not the like-for-like comparison (sentence-transformers runs fp32): what bf16 on a CPU
  # with AVX512-BF16 gives, and how far its embeddings move.
  echo "running the Rust benchmark again with --dtype bf16 ..." >&2
  cargo bench --quiet -p models --bench embed -- --threads "${threads}" --dtype bf16 \
    --save "${out_dir}/embed-rust-bf16.f32" >"${out_dir}/embed-rust-bf16.json"

  {
    machine_line "${load_before}"
    echo
    "${python}" benches/python/embed_anchor.py --markdown "${out_dir}/embed-python.json" \
      "${out_dir}/embed-rust.json" "${out_dir}/embed-rust-bf16.json" \
      --compare "${out_dir}/embed-python.f32" "${out_dir}/embed-rust.f32" \
      "${out_dir}/embed-rust-bf16.f32"
  } | tee "${out_dir}/embed-table.md"
  echo "raw results: ${out_dir}/embed-rust.json, ${out_dir}/embed-python.json" >&2
}

run_generate() {
  local out_dir="$1" threads="${THREADS:-2}" repeats="${REPEATS:-3}" python load_before
  python="$(scripts/bench-venv.sh)"
  load_before="$(cut -d' ' -f1-3 /proc/loadavg)"
  local results=() batch run
  for batch in 16 64; do
    # Alternating runs, best of REPEATS per tool: on a shared machine a slow run measures
    # whatever else was running, not the tool.
    for run in $(seq 1 "${repeats}"); do
      echo "batch ${batch}, run ${run}/${repeats}: fedsyn (cargo bench -p models --bench generate) ..." >&2
      cargo bench --quiet -p models --bench generate -- --batch "${batch}" --threads "${threads}" \
        --dtype "${DTYPE:-f32}" --save-prompts "${out_dir}/generate-prompts-${batch}.json" \
        >"${out_dir}/generate-rust-${batch}-${run}.json"
      echo "batch ${batch}, run ${run}/${repeats}: transformers (generate_anchor.py) ..." >&2
      "${python}" benches/python/generate_anchor.py --threads "${threads}" \
        --dtype "${PYTHON_DTYPE:-${DTYPE:-f32}}" --prompts "${out_dir}/generate-prompts-${batch}.json" \
        >"${out_dir}/generate-python-${batch}-${run}.json" 2>"${out_dir}/generate-python.log"
      results+=("${out_dir}/generate-rust-${batch}-${run}.json"
                "${out_dir}/generate-python-${batch}-${run}.json")
    done
  done
  {
    machine_line "${load_before}"
    echo
    "${python}" benches/python/generate_anchor.py --markdown "${results[@]}"
  } | tee "${out_dir}/generate-table.md"
  echo "raw results: ${out_dir}/generate-{rust,python}-{16,64}-N.json" >&2
}

run_dpo() {
  local out_dir="$1" threads="${THREADS:-2}" repeats="${REPEATS:-3}" python load_before
  python="$(scripts/bench-venv.sh)"
  load_before="$(cut -d' ' -f1-3 /proc/loadavg)"
  local results=() run
  # Alternating runs, best of REPEATS per tool (see run_generate).
  for run in $(seq 1 "${repeats}"); do
    echo "run ${run}/${repeats}: fedsyn (cargo bench -p models --bench dpo_step) ..." >&2
    cargo bench --quiet -p models --bench dpo_step -- --threads "${threads}" \
      --dtype "${DTYPE:-f32}" --save-pairs "${out_dir}/dpo-pairs.json" >"${out_dir}/dpo-rust-${run}.json"
    echo "run ${run}/${repeats}: PyTorch + PEFT (dpo_step_anchor.py) ..." >&2
    "${python}" benches/python/dpo_step_anchor.py --threads "${threads}" \
      --dtype "${PYTHON_DTYPE:-${DTYPE:-f32}}" --pairs "${out_dir}/dpo-pairs.json" \
      >"${out_dir}/dpo-python-${run}.json" 2>"${out_dir}/dpo-python.log"
    results+=("${out_dir}/dpo-rust-${run}.json" "${out_dir}/dpo-python-${run}.json")
  done
  {
    machine_line "${load_before}"
    echo
    "${python}" benches/python/dpo_step_anchor.py --markdown "${results[@]}"
  } | tee "${out_dir}/dpo-table.md"
  echo "raw results: ${out_dir}/dpo-{rust,python}-N.json" >&2
}

[[ $# -ge 1 ]] || usage
benchmark="$1"
out_dir="${2:-${repo_root}/target/bench-models}"
mkdir -p "${out_dir}"
# Absolute: cargo runs the benchmarks from crates/models, not from here.
out_dir="$(cd "${out_dir}" && pwd)"

case "${benchmark}" in
  embed) run_embed "${out_dir}" ;;
  generate) run_generate "${out_dir}" ;;
  dpo) run_dpo "${out_dir}" ;;
  *) usage ;;
esac
