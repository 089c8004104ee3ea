#!/usr/bin/env bash
# README command 2: the whole test suite, against the machine's PostgreSQL and Redis.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
bash scripts/services.sh
exec .venv/bin/python -m pytest -q "$@"
