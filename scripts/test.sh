#!/usr/bin/env bash
# Set up (if needed) and run the whole test suite: unit tests on tiny models plus
# integration tests on the real MiniLM and ../shared/data (skipped, visibly, where absent).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
.venv/bin/python -m ruff check spruce tests bench
# The layers of pyproject.toml's [tool.importlinter]: no upward imports, no circles.
.venv/bin/lint-imports --no-cache
.venv/bin/python -m pytest "$@"
