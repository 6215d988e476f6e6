#!/usr/bin/env bash
# The MS-FL recipe: every table of examples/msfl/README.md, 3 seeds each.
# Two comparisons run at a time (one torch thread each); about 30 minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/../.."
bash scripts/setup.sh
CFG=examples/msfl/msfl.toml
OUT=${1:-runs/msfl-recipe}
compare() { .venv/bin/fedge compare "$CFG" --seeds 3 --no-progress --out "$OUT/$1" "${@:2}"; }
DIRICHLET=(--set "data.partition='dirichlet'" --set data.alpha=0.5)
RULES=federation.interserver=wa,ba,sa,dwaa,spaa
{
  compare rules-shards --vary "$RULES" > "$OUT.rules-shards.txt"
  compare frameworks-shards --vary algorithm=msfl,hierarchical,single_server \
    > "$OUT.frameworks-shards.txt"
  compare handover --vary federation.handover=true,false > "$OUT.handover.txt"
} &
{
  compare rules-dirichlet --vary "$RULES" "${DIRICHLET[@]}" > "$OUT.rules-dirichlet.txt"
  compare malicious --vary federation.interserver=wa,ba,dwaa,spaa \
    --set "attack=[{kind='gaussian', std=10.0, relative=true, replace=true, tier='edge', nodes=['edge1']}]" \
    > "$OUT.malicious.txt"
} &
wait
tail -n +1 "$OUT".*.txt
