#!/usr/bin/env bash
# The README's test command: set everything up, then run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
# Release mode: the accountants' FFTs and the model tests are slow unoptimised.
cargo test --workspace --release
