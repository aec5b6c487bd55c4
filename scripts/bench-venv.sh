#!/usr/bin/env bash
# Creates the benchmark-only Python environment `.venv-bench/` in the repository root.
#
# This venv holds the Python tools fedsyn is compared against (reference fixtures and
# side-by-side benchmarks). fedsyn itself never needs Python. The script is idempotent and fast
# when nothing changed: a stamp file records the exact requirement lists last installed, and the
# install is skipped while they match.
#
# To add a package, append it (pinned) to one of the two lists below.
#
# Usage: scripts/bench-venv.sh            # create or update, then print the interpreter path
#        PYTHON=python3.12 scripts/bench-venv.sh
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${repo_root}/.venv-bench"
python="${PYTHON:-python3}"

# Installed with their dependencies.
requirements=(
  "dp-accounting==0.6.0"
  "numpy"
  "scipy"
  # The model stack fedsyn's models are checked and timed against (same torch as .venv).
  "torch==2.11.0"
  "transformers==5.24.0"
  "sentence-transformers==6.2.0"
  "peft==0.21.2"
  "gguf==0.19.0"
  # MAUVE reference (scripts/reference/mauve.py): the package and its k-means/PCA back ends.
  "mauve-text==0.4.0"
  "faiss-cpu==1.15.1"
  "scikit-learn==1.9.1"
)

# Installed with --no-deps. Opacus imports torch at package level, but its RDP analysis module
# (opacus/accountants/analysis/rdp.py) needs only numpy and scipy; the reference scripts load
# that one file by path with importlib, so torch is never installed or imported.
requirements_no_deps=(
  "opacus==1.6.0"
)

stamp="${venv}/.requirements-stamp"
wanted="$(printf 'deps:%s\n' "${requirements[@]}"; printf 'nodeps:%s\n' "${requirements_no_deps[@]}")"

if [[ -x "${venv}/bin/python" && -f "${stamp}" && "$(cat "${stamp}")" == "${wanted}" ]]; then
  echo "${venv}/bin/python"
  exit 0
fi

if [[ ! -x "${venv}/bin/python" ]]; then
  echo "creating ${venv}" >&2
  "${python}" -m venv "${venv}"
fi

pip=("${venv}/bin/python" -m pip --disable-pip-version-check --quiet)
"${pip[@]}" install "${requirements[@]}" >&2
if ((${#requirements_no_deps[@]})); then
  "${pip[@]}" install --no-deps "${requirements_no_deps[@]}" >&2
fi

printf '%s' "${wanted}" >"${stamp}"
echo "${venv}/bin/python"
