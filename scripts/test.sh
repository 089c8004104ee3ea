#!/usr/bin/env bash
# README command 2: the whole test suite, against the machine's PostgreSQL and Redis.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
bash scripts/services.sh
# llama.cpp, for the GGUF export's tests (the [gguf] extra): here, not in bootstrap.sh, so
# that the quickstart does not wait for it. PyPI has only its sdist: the first
# install compiles llama.cpp (20 minutes measured on 2 busy cores); later venvs reuse the wheel
# that pip cached.
# GGML_NATIVE=OFF: a portable build, so that the cached wheel runs on any x86-64 CPU.
.venv/bin/python -c "import llama_cpp" 2>/dev/null \
  || CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF}" \
    .venv/bin/pip install -q -e ".[gguf]"
# The dashboard's tests (tests/ui/) drive Debian's chromium and chromedriver: installed when
# missing; where that is not possible they are skipped, saying why.
{ command -v chromium && command -v chromedriver; } >/dev/null \
  || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
    chromium chromium-driver; } >/dev/null 2>&1 \
  || echo "chromium could not be installed: the UI tests (tests/ui/) will be skipped" >&2
exec .venv/bin/python -m pytest -q "$@"
