#!/usr/bin/env bash
# Side-by-side accounting benchmark: fedsyn (Rust, release) against Opacus and dp_accounting,
# in one go on the same machine, then a Markdown table of times, ratios and peak memory.
#
# Usage: benches/run-accounting.sh [OUT_DIR]     (default OUT_DIR: target/bench-accounting)
# Needs the benchmark venv (created on first use by scripts/bench-venv.sh).
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out_dir="${1:-${repo_root}/target/bench-accounting}"
mkdir -p "${out_dir}"
cd "${repo_root}"
load_before="$(cut -d' ' -f1-3 /proc/loadavg)"

python="$(scripts/bench-venv.sh)"

echo "building and running the Rust benchmark (cargo bench -p privacy-accounting --bench accounting) ..." >&2
cargo bench --quiet -p privacy-accounting --bench accounting >"${out_dir}/rust.json"

rust_pld_epsilon="$("${python}" -c 'import json,sys; print(json.load(open(sys.argv[1]))["pld_epsilon"]["epsilon"])' "${out_dir}/rust.json")"

echo "running the Python anchors, one interpreter per tool ..." >&2
# The machine's OPENBLAS_* settings work around old OpenBLAS builds and slow a current numpy;
# the Python tools are timed without them (this command only), as a user would run them.
env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE \
  "${python}" benches/python/accounting_anchor.py --rust-epsilon "${rust_pld_epsilon}" \
  >"${out_dir}/python.json"

{
  echo "machine: $(lscpu | sed -n 's/^Model name: *//p' | head -1), $(nproc) cores; $(date -u +%Y-%m-%d);" \
    "load average before/after: ${load_before} / $(cut -d' ' -f1-3 /proc/loadavg)"
  echo
  "${python}" benches/python/accounting_anchor.py --markdown "${out_dir}/rust.json" "${out_dir}/python.json"
} | tee "${out_dir}/table.md"
echo "raw results: ${out_dir}/rust.json, ${out_dir}/python.json" >&2
