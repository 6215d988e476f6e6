#!/usr/bin/env bash
# The personalization recipe: every row of examples/personalization/README.md, 3 seeds each.
# Usage: examples/personalization/run_recipe.sh [OUT] [extra fedge compare args, e.g. --set rounds=5]
set -euo pipefail
cd "$(dirname "$0")/../.."
CFG=examples/personalization/personalization.toml
OUT=${1:-runs/personalization-recipe}
shift || true
compare() { .venv/bin/fedge compare "$CFG" --seeds 3 --no-progress --out "$OUT/$1" "${@:2}"; }
mkdir -p "$OUT"
# FedAvg's global model evaluated on each own split (0 epochs), and after 1 epoch of fine-tuning
compare fedavg --set algorithm=fedavg --vary personalization.finetune_epochs=0,1 "$@" \
  > "$OUT.fedavg.txt"
# the personalized methods
compare personal --vary algorithm=fedper,ditto,dpmn "$@" > "$OUT.personal.txt"
.venv/bin/python examples/personalization/table.py "$OUT"
