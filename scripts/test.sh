#!/usr/bin/env bash
# Set up (if needed) and run the whole test suite: unit tests on tiny models plus
# integration tests on the real MiniLM and ../shared/data (skipped, visibly, where absent).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
.venv/bin/python -m ruff check spruce tests bench
.venv/bin/python -m pytest "$@"
