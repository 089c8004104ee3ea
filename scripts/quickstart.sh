#!/usr/bin/env bash
# README command 1: install, then prune the embedded default model (SmolLM2-135M) on the built-in
# calibration text with the default settings, and print where the pruned model is.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec .venv/bin/blockprune prune --overwrite "$@"
