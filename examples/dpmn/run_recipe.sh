#!/usr/bin/env bash
# The DPMN recipe: every table of examples/dpmn/README.md, 3 seeds each.
# Two comparisons run at a time (one torch thread each); about 45 minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/../.."
bash scripts/setup.sh
CFG=examples/dpmn/dpmn.toml
OUT=${1:-runs/dpmn-recipe}
compare() { .venv/bin/fedge compare "$CFG" --seeds 3 --no-progress --out "$OUT/$1" "${@:2}"; }
METHODS=algorithm=dfl,dpmp,dpcg,dpmn_r,dpmn
mkdir -p "$OUT"
{
  compare devices-100 --vary "$METHODS" --set system.devices=100 > "$OUT.devices-100.txt"
} &
{
  compare devices-20-50 --vary "$METHODS" --vary system.devices=20,50 \
    > "$OUT.devices-20-50.txt"
  compare delta --vary decentralized.delta=0,0.1,0.2,0.4,0.6 > "$OUT.delta.txt"
  compare lambda-0 --set decentralized.lambda=0 --vary system.devices=20,50,100 \
    > "$OUT.lambda-0.txt"
} &
wait
tail -n +1 "$OUT".*.txt
