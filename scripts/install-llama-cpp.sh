#!/usr/bin/env bash
# llama.cpp for the GGUF export's tests (the [gguf] extra), into .venv/ unless it is there.
# scripts/test.sh runs it; bootstrap.sh does not, so that the quickstart does not wait for it.
# PyPI has only llama-cpp-python's sdist, so a new machine compiles it; later venvs reuse the
# wheel that pip cached. Only libllama and ggml are built: no multimodal library (LLAVA_BUILD)
# and no `common` (llama-cpp-lean.cmake beside this file), about half the compile
# (bench/llama_cpp_build.py). GGML_NATIVE=OFF: the cached wheel runs on any x86-64-v3 CPU.
#
#   bash scripts/install-llama-cpp.sh [--cmake-args]   # --cmake-args: print them, install nothing
set -euo pipefail
cd "$(dirname "$0")/.."
CMAKE_ARGS=${CMAKE_ARGS:-"-DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF \
-DLLAMA_BUILD_EXAMPLES=OFF -DCMAKE_PROJECT_llama.cpp_INCLUDE=$PWD/scripts/llama-cpp-lean.cmake"}
if [ "${1:-}" = "--cmake-args" ]; then
  echo "$CMAKE_ARGS"
  exit 0
fi
.venv/bin/python -c "import llama_cpp" 2>/dev/null && exit 0
CMAKE_ARGS="$CMAKE_ARGS" .venv/bin/pip install -q -c constraints.txt -e ".[gguf]"
