#!/usr/bin/env bash
# The robustness recipe: attack x defence at 0 / 10 / 20 / 30 % malicious devices, 3 seeds
# each (fedge compare), then the table (tables.py). Usage:
#   examples/robustness/run_recipe.sh [OUT] [extra --set arguments for every run ...]
# e.g. the bounded version of README.md:
#   examples/robustness/run_recipe.sh runs/robustness-small --set data.dataset=digits \
#     --set model.name=mlp --set system.devices=20 --set rounds=10 --set data.test_limit=0
# ATTACKS / DEFENCES (names below) and SEEDS may be set in the environment to run a subset.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${1:-runs/robustness-recipe}
shift || true
EXTRA=("$@")
SEEDS=${SEEDS:-3}
mkdir -p "$OUT"

declare -A ATTACK=(
  [sign_flip]="attack=[{kind='sign_flip', share=0.1, scale=1.0}]"
  [gaussian]="attack=[{kind='gaussian', share=0.1, std=0.1}]"
  [scaled]="attack=[{kind='scaled', share=0.1, scale=10.0}]"
  [label_flip]="attack=[{kind='label_flip', share=0.1}]"
  [backdoor]="attack=[{kind='backdoor', share=0.1, target=0, fraction=0.5, boost=10.0}]"
  [free_rider]="attack=[{kind='free_rider', share=0.1, noise_std=0.001, claimed_samples=2000}]"
)
declare -A DEFENCE=(
  [mean]="federation.aggregator=mean"
  [median]="federation.aggregator=median"
  [trimmed_mean]="federation.aggregator=trimmed_mean|federation.aggregator_params={trim_ratio=0.3}"
  [multikrum]="federation.aggregator=multikrum|federation.aggregator_params={n_byzantine=3}"
  [norm_bound]="defence.norm_bound=1.0"
  [detection]="defence.detection=validation"
)
ATTACKS=${ATTACKS:-"sign_flip gaussian scaled label_flip backdoor free_rider"}
DEFENCES=${DEFENCES:-"mean median trimmed_mean multikrum norm_bound detection"}

cell() {
  local attack=$1 defence=$2
  local sets=(--set "name=$attack-$defence" --set "${ATTACK[$attack]}")
  IFS='|' read -ra parts <<< "${DEFENCE[$defence]}"
  for p in "${parts[@]}"; do sets+=(--set "$p"); done
  for e in "${EXTRA[@]}"; do sets+=("$e"); done
  .venv/bin/fedge compare examples/robustness/base.toml --seeds "$SEEDS" --no-progress \
    --vary attack.0.share=0.0,0.1,0.2,0.3 "${sets[@]}" --out "$OUT" > "$OUT/$attack-$defence.txt"
}

# two cells at a time (one torch thread each)
pids=()
for attack in $ATTACKS; do
  for defence in $DEFENCES; do
    OMP_NUM_THREADS=1 cell "$attack" "$defence" &
    pids+=($!)
    if (( ${#pids[@]} >= ${JOBS:-2} )); then wait "${pids[0]}"; pids=("${pids[@]:1}"); fi
  done
done
wait
.venv/bin/python examples/robustness/tables.py "$OUT"
