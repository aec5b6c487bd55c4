#!/usr/bin/env bash
# Regenerates the method comparison of experiments/RESULTS.md: every method at each ε on one data
# set, the downstream evaluation of each run, the ε = ∞ / ε = 0 references, and the table.
#
#   experiments/compare.sh sotu [EPSILON...]      (default ε: 1 7)
#   SEEDS="1 2 3" experiments/compare.sh sotu 1   (each method at each ε once per seed)
#   METHODS="popri pe" experiments/compare.sh sotu 1   (only these methods; default: all four)
#   OUT=runs/mine experiments/compare.sh sotu 1        (where the runs go; default runs/compare)
#   FEDSYN=/path/to/fedsyn ...                          (another build; default target/release)
#   SAMPLES=1000 OUT=runs/s1000 ...  (synthetic samples per run, and texts the downstream
#                            model trains on, references included; default 128; give each
#                            SAMPLES its own OUT, since finished runs are skipped by name)
#
# With SEEDS, every run is repeated with `run.seed` set to each seed (directories end in
# -seed<s>) on the same data (`data.seed` = 0 for runs and references alike, so the seeds vary
# the methods only and every run is scored on the same eval tokens), and `fedsyn compare` reports each method's mean and 95 % interval over the seeds
# and POPri's difference to every other method with its interval, saying in words when a
# difference is within noise. Without SEEDS each run uses its config's seed, once.
#
# Runs go to runs/compare/<data>-<method>-eps<ε>/ and are skipped when their eval.json exists,
# so an interrupted comparison continues where it stopped (a half-finished run is resumed).
# Every run writes SAMPLES (128) synthetic samples (the demo configs write 48) and the downstream
# model trains on all of them, as the ε = ∞ reference trains on as many real texts.
# Needs `scripts/setup.sh` and a release build (`cargo build --release`).
set -euo pipefail
cd "$(dirname "$0")/.."

data="${1:?usage: experiments/compare.sh sotu [EPSILON...]}"
shift
if [[ $# -gt 0 ]]; then epsilons=("$@"); else epsilons=(1 7); fi
fedsyn="${FEDSYN:-target/release/fedsyn}"
out="${OUT:-runs/compare}"
samples="${SAMPLES:-128}"
mkdir -p "$out"
export OMP_WAIT_POLICY=PASSIVE

# ε outer, methods inner, references after the first ε: a comparison cut short still has one
# complete column.
read -r -a seeds <<< "${SEEDS:-}"
read -r -a methods <<< "${METHODS:-popri pe pe-sft dp-fedavg}"

simulate_and_eval() { # METHOD EPSILON [SEED]
  local config="experiments/$data-$1.toml" run="$out/$data-$1-eps$2" seed_args=()
  if [[ -n ${3:-} ]]; then
    run="$run-seed$3"
    seed_args=(--set run.seed="$3" --set data.seed=0)
  fi
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
      --set output.synthetic_samples="$samples" "${seed_args[@]}" --out "$run" --quiet
  fi
  "$fedsyn" eval "$run" --max-train-texts "$samples" --quiet
}

reference_eval() { # real|public
  local dir="$out/$data-$1"
  runs+=("$dir")
  # The real reference trains on as many texts as the runs' synthetic sets (SAMPLES).
  local seed_args=()
  [[ ${#seeds[@]} -gt 0 ]] && seed_args=(--set data.seed=0)
  [[ -f $dir/eval.json ]] || "$fedsyn" eval --reference "$1" \
    --config "experiments/$data-popri.toml" --set output.synthetic_samples="$samples" "${seed_args[@]}" \
    --max-train-texts "$samples" --out "$dir" --quiet
}

runs=()
for index in "${!epsilons[@]}"; do
  for method in "${methods[@]}"; do
    if [[ ${#seeds[@]} -eq 0 ]]; then
      simulate_and_eval "$method" "${epsilons[$index]}"
    else
      for seed in "${seeds[@]}"; do
        simulate_and_eval "$method" "${epsilons[$index]}" "$seed"
      done
    fi
  done
  if [[ $index -eq 0 ]]; then
    reference_eval real
    reference_eval public
  fi
  "$fedsyn" compare "${runs[@]}" --out "$out/$data-table"
done
