#!/usr/bin/env bash
# Load on `fedsyn serve`'s submission path (crates/server/benches/serve_load.rs): CLIENTS concurrent clients
# (default 1000) each submit one score vector of J·K = 18,000 values to an open round, all at
# the same moment, on loopback only. Prints one JSON object per run: accepted submissions,
# lost ones (accepted but missing from the server's SQLite store; must be 0), submissions/s,
# p50/p99/max latency (connect to answer, retries after a connection error included), the
# connection errors left after 6 tries, and the server process's RSS before the load and at
# its peak. The server is the store, coordinator and router of `fedsyn serve` in a child
# process, with round 0 opened directly in its store (the candidates are a random matrix: no
# generator runs) and every client enrolled beforehand.
#
# Usage: benches/run-serve.sh [RUNS]     (default RUNS: 3)
# Environment: CLIENTS (1000).
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "${repo_root}"
runs="${1:-3}"
export FEDSYN_LOAD_CLIENTS="${CLIENTS:-1000}"
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"

cargo bench -p server --bench serve_load --no-run
binary="$(cargo bench -p server --bench serve_load --no-run --message-format=json 2>/dev/null \
  | sed -n 's/.*"executable":"\([^"]*serve_load[^"]*\)".*/\1/p' | tail -n 1)"
echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), \
$(lscpu | sed -n 's/^Model name: *//p' | head -n 1)" >&2
for _ in $(seq "${runs}"); do
  # Bounded in time: a run that hangs is killed.
  timeout 600 "${binary}"
done
