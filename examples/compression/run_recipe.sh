#!/usr/bin/env bash
# The compression recipe: every config of this folder over 3 seeds (fedge compare).
# Two configs run at a time (one torch thread each); about 45 minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/../.."
bash scripts/setup.sh
OUT=${1:-runs/compression-recipe}
mkdir -p "$OUT"
run() {
  for name in "$@"; do
    .venv/bin/fedge compare "examples/compression/$name.toml" --seeds 3 --no-progress \
      --out "$OUT/$name" > "$OUT/$name.txt"
  done
}
run none topk topk_noef stc hierarchical_none &
run fp16 qsgd8 qsgd2 hierarchical &
wait
.venv/bin/python examples/compression/tables.py "$OUT"
