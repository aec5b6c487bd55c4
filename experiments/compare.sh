#!/usr/bin/env bash
# Regenerates the method comparison of experiments/RESULTS.md: every method at each ε on one data
# set, the downstream evaluation of each run, the ε = ∞ / ε = 0 references, and the table.
#
#   experiments/compare.sh sotu [EPSILON...]      (default ε: 1 7)
#
# Runs go to runs/compare/<data>-<method>-eps<ε>/ and are skipped when their eval.json exists,
# so an interrupted comparison continues where it stopped (a half-finished run is resumed).
# Every run writes 128 synthetic samples (the demo configs write 48) so the downstream model has
# something to train on. Needs `scripts/setup.sh` and a release build (`cargo build --release`).
set -euo pipefail
cd "$(dirname "$0")/.."

data="${1:?usage: experiments/compare.sh sotu [EPSILON...]}"
shift
if [[ $# -gt 0 ]]; then epsilons=("$@"); else epsilons=(1 7); fi
fedsyn="${FEDSYN:-target/release/fedsyn}"
out=runs/compare
mkdir -p "$out"
export OMP_WAIT_POLICY=PASSIVE

# ε outer, methods inner, references after the first ε: a comparison cut short still has one
# complete column.
simulate_and_eval() { # METHOD EPSILON
  local config="experiments/$data-$1.toml" run="$out/$data-$1-eps$2"
  if [[ ! -f $config ]]; then
    echo "skipping $1: no $config" >&2
    return
  fi
  runs+=("$run")
  [[ -f $run/eval.json ]] && return
  if [[ -f $run/summary.json ]]; then
    :
  elif [[ -f $run/config.toml ]]; then
    "$fedsyn" simulate --resume "$run" --quiet
  else
    "$fedsyn" simulate --config "$config" --set privacy.epsilon="$2" \
      --set output.synthetic_samples=128 --out "$run" --quiet
  fi
  "$fedsyn" eval "$run" --quiet
}

reference_eval() { # real|public
  local dir="$out/$data-$1"
  runs+=("$dir")
  [[ -f $dir/eval.json ]] || "$fedsyn" eval --reference "$1" \
    --config "experiments/$data-popri.toml" --out "$dir" --quiet
}

runs=()
for index in "${!epsilons[@]}"; do
  for method in popri pe pe-sft dp-fedavg; do
    simulate_and_eval "$method" "${epsilons[$index]}"
  done
  if [[ $index -eq 0 ]]; then
    reference_eval real
    reference_eval public
  fi
  "$fedsyn" compare "${runs[@]}" --out "$out/$data-table"
done
