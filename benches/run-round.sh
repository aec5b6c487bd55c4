#!/usr/bin/env bash
# One POPri round of the demo (experiments/sotu-popri.toml), fedsyn against the same round
# written with the Python stack (transformers + sentence-transformers + PEFT + numpy,
# benches/python/popri_round_anchor.py), one run each on the same machine, then a Markdown
# table of the seconds per phase (generate, embed, score, aggregate, dpo), the round total and
# each process's peak RSS.
#
# Usage: benches/run-round.sh [OUT_DIR]     (default OUT_DIR: target/bench-round)
#   1. builds target/release/fedsyn and fedsyn-ml;
#   2. a small untimed fedsyn run of the demo data, so that the clients' embeddings are in
#      fedsyn's cache (.cache/embeddings) as in any run after the first;
#   3. fedsyn simulate --config experiments/sotu-popri.toml --set privacy.rounds=1
#      --set output.synthetic_samples=2 --out OUT_DIR/fedsyn-run: the round's seconds are in
#      its metrics.jsonl, the process's peak RSS from /usr/bin/time;
#   4. the Python round on that run's prompts.json, configuration and σ.
#   Writes OUT_DIR/round-fedsyn.json, OUT_DIR/round-python.json and OUT_DIR/round-table.md;
#   OUT_DIR/company.log lists other fedsyn-ml, cargo or rustc processes seen (every 5 s) while
#   the timed part ran, and the table warns when there were any.
# Environment:
#   THREADS (2): torch threads of both sides.
#   OMP_WAIT_POLICY (unset): passed to both sides; unset, both sides get GOMP_SPINCOUNT=3000
#     (fedsyn's default: idle threads spin briefly, then sleep; PASSIVE made fedsyn's decoding
#     1.55x slower, libgomp's default long spin starves anything sharing the cores).
#   SETS: extra `KEY=VALUE` overrides of the demo configuration, space-separated, applied to
#     both sides (e.g. SETS="prompts.num_prompts=2 generation.max_new_tokens=8" for a quick
#     check of the script; SETS=model.generator_dtype=bf16 runs both generators in bf16).
#   PYTHON_DTYPE (auto): the Python generator's dtype, f32 or bf16 (auto: as fedsyn's).
#   QUIET_WAIT_MINUTES (0): first wait, polling every minute, until no other fedsyn-ml, cargo
#     or rustc process runs and the 1-minute load average is below 1.0 at two polls in a row;
#     give up (exit 1) after this many minutes.
# Needs scripts/setup.sh (models, data) and the benchmark venv (scripts/bench-venv.sh).
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "${repo_root}"

out_dir="${1:-${repo_root}/target/bench-round}"
threads="${THREADS:-2}"
# Both sides get the same libgomp settings: fedsyn's own default (a short spin before idle
# threads sleep, GOMP_SPINCOUNT=3000; see src/main.rs) unless OMP_WAIT_POLICY is given.
if [[ -z ${OMP_WAIT_POLICY:-} ]]; then
  export GOMP_SPINCOUNT="${GOMP_SPINCOUNT:-3000}"
fi
config="experiments/sotu-popri.toml"
anchor="benches/python/popri_round_anchor.py"

machine_line() {
  echo "machine: $(lscpu | sed -n 's/^Model name: *//p' | head -1), $(nproc) cores;" \
    "$(date -u +%Y-%m-%d); load average before/after: $1 / $(cut -d' ' -f1-3 /proc/loadavg);" \
    "OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-unset}, GOMP_SPINCOUNT=${GOMP_SPINCOUNT:-unset}"
}

# Other processes that would share the cores: fedsyn-ml, cargo and rustc, except this
# benchmark's own fedsyn (its command line names OUT_DIR) and stopped ones (kill -STOP: they
# take no CPU). One line each, "PID COMMAND".
busy_processes() {
  local name line
  for name in fedsyn-ml cargo rustc; do
    pgrep -a -x "${name}" || true
  done | grep -vF -- "${out_dir}" | while read -r line; do
    [[ "$(ps -o stat= -p "${line%% *}" 2>/dev/null)" == T* ]] || echo "${line}"
  done | cut -c1-160 || true
}

# Records every 5 s which other busy processes run, until killed: a run that overlapped
# another job measured that job too, and the table says so.
watch_for_company() {
  while :; do
    busy_processes | sed "s/^/$(date -u +%H:%M:%S) /"
    sleep 5
  done
}

# Quiet = no other fedsyn-ml/cargo/rustc and a 1-minute load below 1.0 at two polls in a row,
# a minute apart (a job queue that starts its next job seconds after the last one ends looks
# quiet for an instant).
wait_for_quiet() {
  local minutes="$1" waited=0 quiet_polls=0 load
  while :; do
    load="$(cut -d' ' -f1 /proc/loadavg)"
    if [[ -z "$(busy_processes)" ]] && awk -v l="${load}" 'BEGIN { exit !(l < 1.0) }'; then
      quiet_polls=$((quiet_polls + 1))
      if (( quiet_polls >= 2 )); then
        echo "quiet: load ${load}, no other fedsyn-ml/cargo/rustc running" >&2
        return 0
      fi
    else
      quiet_polls=0
    fi
    if (( waited >= minutes )); then
      echo "the machine did not become quiet in ${minutes} minutes (load ${load}); giving up" >&2
      return 1
    fi
    echo "waiting for quiet: load ${load}, busy: $(busy_processes | tr '\n' ' ')" >&2
    sleep 60
    waited=$((waited + 1))
  done
}

# `--set` arguments for fedsyn: the benchmark's own, then SETS.
set_args=(--set "run.threads=${threads}" --set privacy.rounds=1 --set output.synthetic_samples=2)
for assignment in ${SETS:-}; do
  set_args+=(--set "${assignment}")
done

mkdir -p "${out_dir}"
python="$(scripts/bench-venv.sh)"

echo "building target/release/fedsyn and fedsyn-ml ..." >&2
cargo build --release --quiet --bin fedsyn --bin fedsyn-ml

echo "untimed warm-up run (fills fedsyn's client-embedding cache) ..." >&2
rm -rf "${out_dir}/fedsyn-warm"
target/release/fedsyn simulate --config "${config}" "${set_args[@]}" --quiet \
  --set prompts.num_prompts=1 --set generation.candidates_per_prompt=2 \
  --set generation.max_new_tokens=4 --set pairs.rejected_rank=1 \
  --out "${out_dir}/fedsyn-warm" --json >/dev/null

if (( ${QUIET_WAIT_MINUTES:-0} > 0 )); then
  wait_for_quiet "${QUIET_WAIT_MINUTES}"
fi
load_before="$(cut -d' ' -f1-3 /proc/loadavg)"
watch_for_company >"${out_dir}/company.log" &
watcher=$!
trap 'kill "${watcher}" 2>/dev/null || true' EXIT

echo "fedsyn: one round of ${config} ..." >&2
rm -rf "${out_dir}/fedsyn-run"
/usr/bin/time -f '%M' -o "${out_dir}/fedsyn-peak-rss-kib.txt" \
  target/release/fedsyn simulate --config "${config}" "${set_args[@]}" --quiet \
  --out "${out_dir}/fedsyn-run" --json >"${out_dir}/fedsyn-summary.json"
"${python}" "${anchor}" --fedsyn-round "${out_dir}/fedsyn-run" \
  --peak-rss-kib "$(tail -1 "${out_dir}/fedsyn-peak-rss-kib.txt")" \
  >"${out_dir}/round-fedsyn.json"

echo "Python stack: the same round on ${out_dir}/fedsyn-run/prompts.json ..." >&2
"${python}" "${anchor}" --run-dir "${out_dir}/fedsyn-run" --threads "${threads}" \
  --dtype "${PYTHON_DTYPE:-auto}" \
  >"${out_dir}/round-python.json" 2>"${out_dir}/round-python.log"

kill "${watcher}" 2>/dev/null || true
{
  machine_line "${load_before}"
  if [[ -s "${out_dir}/company.log" ]]; then
    echo "WARNING: other jobs ran during the timed part (${out_dir}/company.log):" \
      "$(cut -d' ' -f2- "${out_dir}/company.log" | sort -u | awk '{print $2}' | sort | uniq -c |
        tr '\n' ' ')"
  else
    echo "no other fedsyn-ml, cargo or rustc process ran during the timed part"
  fi
  echo
  "${python}" "${anchor}" --markdown "${out_dir}/round-fedsyn.json" "${out_dir}/round-python.json"
} | tee "${out_dir}/round-table.md"
echo "raw results: ${out_dir}/round-{fedsyn,python}.json, run directory ${out_dir}/fedsyn-run" >&2
