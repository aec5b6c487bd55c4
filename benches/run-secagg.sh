#!/usr/bin/env bash
# Secure aggregation (SecAgg+) beside the plain mode, at J·K = 18,000 and 1,000 clients, on one
# machine in one run; prints one JSON object per measurement:
# 1. crates/secure-aggregation/benches/session.rs: one session in one process, every message
#    through JSON; per-party CPU seconds (per thread), upload bytes, the server's CPU per round,
#    against the plain mode's client and server work; checks the unmasked sum;
# 2. crates/server/benches/serve_load.rs with FEDSYN_LOAD_SECURE=1: the server's store, coordinator and
#    router (as `fedsyn serve` runs them) with 1,000 client threads running the protocol over
#    loopback HTTP; "lost" compares the unmasked sum with the plain sum of all vectors;
# 3. the same load in plain mode (one POST of the clipped vector per client).
#
# Usage: benches/run-secagg.sh
# Environment: CLIENTS (1000); SECAGG_DIM, SECAGG_NEIGHBOURS, SECAGG_DROPOUT (step 1 only).
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "${repo_root}"
export FEDSYN_LOAD_CLIENTS="${CLIENTS:-1000}"
export SECAGG_CLIENTS="${CLIENTS:-1000}"
echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), \
$(lscpu | sed -n 's/^Model name: *//p' | head -n 1)" >&2
timeout 900 cargo bench -p secure-aggregation --bench session 2>/dev/null | tail -n 1
FEDSYN_LOAD_SECURE=1 timeout 900 cargo bench -p server --bench serve_load 2>/dev/null | tail -n 1
timeout 600 cargo bench -p server --bench serve_load 2>/dev/null | tail -n 1
