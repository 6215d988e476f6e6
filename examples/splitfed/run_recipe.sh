#!/usr/bin/env bash
# The split / collaborative recipe: every table of examples/splitfed/README.md, 3 seeds each,
# 20 rounds (the configs say 10). One run at a time (one torch thread); about 6 minutes.
set -euo pipefail
cd "$(dirname "$0")/../.."
bash scripts/setup.sh
OUT=${1:-runs/splitfed-recipe}
ROUNDS=${ROUNDS:-20}
compare() {
  .venv/bin/fedge compare "$2" --seeds 3 --no-progress --set rounds="$ROUNDS" --out "$OUT/$1" \
    "${@:3}" > "$OUT.$1.txt"
}
mkdir -p "$OUT"
# (a) cloud-only (cut 0) and (b) collaborative SplitFed (cut 6), no dormancy
compare cut examples/splitfed/splitfed.toml --vary split.cut=0,6
# (c) collaborative with cloud dormancy (WAN latency trace)
compare dormancy examples/splitfed/dormancy.toml
# (c') the same with every edge allowed to go dormant (the config lets only edge0)
compare dormancy-all examples/splitfed/dormancy.toml --set split.master=all
# vanilla split learning and U-shaped SplitFed, same budget
compare algorithms examples/splitfed/splitfed.toml --vary algorithm=split,ushaped
.venv/bin/python examples/splitfed/tables.py "$OUT"
