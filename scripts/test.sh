#!/usr/bin/env bash
# README command 2: the whole test suite, against the machine's PostgreSQL and Redis.
set -euo pipefail
cd "$(dirname "$0")/.."
phase() {  # how long each part of the install took, on stderr
  echo "test.sh: $1 in $((SECONDS - start)) s" >&2
  start=$SECONDS
}
start=$SECONDS
bash scripts/bootstrap.sh
bash scripts/services.sh
phase "install (.venv from the lock) and services"
bash scripts/install-llama-cpp.sh  # for the GGUF tests
phase "llama.cpp"
# The dashboard's tests (tests/ui/) drive Debian's chromium and chromedriver: installed when
# missing; where that is not possible they are skipped, saying why.
{ command -v chromium && command -v chromedriver; } >/dev/null \
  || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
    chromium chromium-driver; } >/dev/null 2>&1 \
  || echo "chromium could not be installed: the UI tests (tests/ui/) will be skipped" >&2
phase "chromium"
exec .venv/bin/python -m pytest -q "$@"
