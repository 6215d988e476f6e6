#!/usr/bin/env bash
# Regenerate docs/screenshots/*.png: a small run and a comparison, rendered by headless
# Chromium (Debian package chromium; scripts/setup.sh installs it).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
exec .venv/bin/python scripts/screenshots.py "$@"
