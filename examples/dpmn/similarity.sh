#!/usr/bin/env bash
# The DPMN similarity study of examples/dpmn/README.md ("Which similarity"): the δ sweep for
# each reading of DPMN's cosine similarity (decentralized.similarity), 3 seeds each, and the
# model reading at thresholds near 1.
set -euo pipefail
cd "$(dirname "$0")/../.."
CFG=examples/dpmn/dpmn.toml
OUT=${1:-runs/dpmn-similarity}
compare() { .venv/bin/fedge compare "$CFG" --seeds 3 --no-progress --out "$OUT/$1" "${@:2}"; }
mkdir -p "$OUT"
compare readings --vary decentralized.similarity=update,model,mask_overlap \
  --vary decentralized.delta=0,0.1,0.2,0.4 > "$OUT.readings.txt"
compare model-high --set decentralized.similarity=model \
  --vary decentralized.delta=0.98,0.99 > "$OUT.model-high.txt"
.venv/bin/python examples/dpmn/similarity.py "$OUT"
