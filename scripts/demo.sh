#!/usr/bin/env bash
# The README's main job: install everything (scripts/setup.sh), build, and run the default
# POPri simulation on the State of the Union addresses (experiments/sotu-popri.toml).
# Extra arguments go to `fedsyn simulate` (e.g. --out runs/demo, --set privacy.epsilon=4).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --release --bin fedsyn --bin fedsyn-ml
# libgomp's threads: fedsyn sets a short spin before they sleep (GOMP_SPINCOUNT=3000) unless
# OMP_WAIT_POLICY or GOMP_SPINCOUNT is set (src/main.rs).
exec target/release/fedsyn simulate --config experiments/sotu-popri.toml "$@"
