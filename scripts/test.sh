#!/usr/bin/env bash
# The test command: set up, then lint, type-check, check the import layering, run pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
FEDGE_SETUP_BROWSER=1 bash scripts/setup.sh
.venv/bin/ruff check src tests benchmarks
.venv/bin/ruff format --check src tests benchmarks
.venv/bin/lint-imports
.venv/bin/mypy
.venv/bin/python -m pytest "$@"
