#!/usr/bin/env bash
# The README's main job: install everything (scripts/setup.sh), build, and run the default
# POPri simulation on the State of the Union addresses (experiments/sotu-popri.toml).
# Extra arguments go to `fedsyn simulate` (e.g. --out runs/demo, --set privacy.epsilon=4).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --release --bin fedsyn --bin fedsyn-ml
# libgomp's busy-waiting threads slow libtorch down several-fold when anything else shares the
# cores; sleeping waits cost little when nothing does.
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
exec target/release/fedsyn simulate --config experiments/sotu-popri.toml "$@"
