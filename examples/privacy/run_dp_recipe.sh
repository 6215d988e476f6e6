#!/usr/bin/env bash
# The differential-privacy recipe: accuracy against ε on Fashion-MNIST over 3 seeds
# (fedge compare, 95% CIs): plain FedAvg on the same workload, DP-FedAvg with central noise
# over a sweep of noise multipliers, and local DP over its own sweep.
# The full recipe (30 rounds, 2000 devices) takes a few hours on 2 cores; pass --set
# overrides after the output directory to bound it, e.g.
#   bash examples/privacy/run_dp_recipe.sh runs/dp-small --set rounds=3 --set system.devices=300
set -euo pipefail
cd "$(dirname "$0")/../.."
bash scripts/setup.sh
OUT=${1:-runs/dp-recipe}
shift || true
mkdir -p "$OUT"
compare() {
  local name=$1
  shift
  .venv/bin/fedge compare "$@" --seeds 3 --no-progress --out "$OUT/$name" > "$OUT/$name.txt"
}
compare none examples/privacy/dp_central.toml --set "privacy.mechanism='none'" "$@" &
compare central examples/privacy/dp_central.toml \
  --vary privacy.noise_multiplier=0.3,0.5,1.0,2.0 "$@" &
wait
compare local examples/privacy/dp_local.toml --vary privacy.noise_multiplier=0.01,0.03,0.1 "$@"
cat "$OUT/none.txt" "$OUT/central.txt" "$OUT/local.txt"
