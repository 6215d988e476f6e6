#!/usr/bin/env bash
# The main job: set up, then FedAvg on Fashion-MNIST over a simulated device-edge-cloud system.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/fedge run examples/quickstart.toml "$@"
