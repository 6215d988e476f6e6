#!/usr/bin/env bash
# The edge-caching recipe: every table of examples/caching/README.md, 3 seeds each.
# Usage: examples/caching/run_recipe.sh [OUT] [MOVIELENS_RATINGS MOVIELENS_MOVIES]
# Two comparisons run at a time; about 40 minutes on 2 busy cores (the learned policies
# dominate). Per-run plots are off; tables.py draws hit ratio against cache size.
set -euo pipefail
cd "$(dirname "$0")/../.."
export OMP_NUM_THREADS=1
OUT=${1:-runs/caching-recipe}
POLICIES=caching.policy=fifo,lru,lfu,perfect_lfu,belady,fpcc,rec_aware,fdrl
SIZES=caching.capacity_fraction=0.005,0.01,0.02,0.05
compare() {
  .venv/bin/fedge compare "$1" --seeds 3 --no-progress --set output.plots=false --out "$OUT/$2" "${@:3}"
}
{
  compare examples/caching/zipf.toml zipf --vary "$POLICIES" --vary "$SIZES" > "$OUT.zipf.txt"
  compare examples/caching/zipf.toml theta --vary caching.policy=lru,rec_aware \
    --vary caching.theta=0.8,0.9,0.95,0.98,0.99,1.0 > "$OUT.theta.txt"
} &
{
  compare examples/caching/drift.toml drift --vary "$POLICIES" --vary "$SIZES" > "$OUT.drift.txt"
  compare examples/caching/zipf.toml fdrl-curve --vary caching.policy=fdrl \
    --set caching.fdrl.episodes=12 > "$OUT.fdrl-curve.txt"
  if [ $# -ge 3 ]; then
    compare examples/caching/movielens.toml movielens --vary "$POLICIES" --vary "$SIZES" \
      --set "caching.trace.path='$2'" --set "caching.trace.items_path='$3'" \
      > "$OUT.movielens.txt"
  fi
} &
wait
.venv/bin/python examples/caching/tables.py "$OUT"
