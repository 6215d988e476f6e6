#!/usr/bin/env bash
# The asynchronous-FL recipe: synchronous vs FedAsync vs FedBuff, cloud-only and
# hierarchical, 3 seeds each (fedge compare), then the table of README.md and the 16-device
# latency example. Usage: examples/async/run_recipe.sh [OUT] [--bounded]
#   full:      Fashion-MNIST, the FedAvg CNN, 100 devices (hours on 2 cores)
#   --bounded: digits, an MLP, 30 devices, devices 100x slower so compute still dominates,
#              target accuracy 0.90 (about 20 minutes on 2 cores)
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${1:-runs/async-recipe}
SETS=()
if [[ "${2:-}" == "--bounded" ]]; then
  SETS=(--set data.dataset=digits --set model.name=mlp --set data.min_size=5
        --set system.devices=30 --set training.lr=0.1 --set training.epochs=5
        --set training.batch_size=16 --set system.device.gflops_min=0.002
        --set system.device.gflops_max=0.2 --set target_accuracy=0.90 --set rounds=40)
fi
mkdir -p "$OUT"
.venv/bin/fedge compare examples/async/cloud.toml --seeds 3 --no-progress --out "$OUT/cloud" \
  --vary algorithm=fedavg,fedasync,fedbuff "${SETS[@]}" > "$OUT/cloud.txt" &
.venv/bin/fedge compare examples/async/hierarchical.toml --seeds 3 --no-progress \
  --out "$OUT/hierarchical" --vary algorithm=hierarchical,fedasync_hier,fedbuff_hier \
  "${SETS[@]}" > "$OUT/hierarchical.txt" &
wait
.venv/bin/python examples/async/tables.py "$OUT"
PYTHONPATH=src .venv/bin/python examples/async/latency16.py
