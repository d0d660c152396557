#!/usr/bin/env bash
# GPU scale run of the certified sketch (< 5 minutes on one H100/H200): deep linear
# [15600, 64, 64, 10], N = 64, float64, n = 1,003,136, rank(H_L) = 3000 by the closed-form
# formula. Prints the rank, the wall time, the products' share, the floor and the peak GPU
# memory against the basis; writes $OUT/sketch_scale.json when OUT is set. Extra arguments
# go to scripts/bench/sketch_floor.py (later ones win: `--quick --device cpu` is a smoke run).
set -euo pipefail
source "$(dirname "$0")/env.sh"
JSON=()
if [[ -n "${OUT:-}" ]]; then JSON=(--json "$OUT/sketch_scale.json"); fi
exec timeout 290 "$PY" scripts/bench/sketch_floor.py --widths 15600,64,64,10 --samples 64 \
  --device cuda "${JSON[@]}" "$@"
