#!/usr/bin/env bash
# GPU check of curvature products (< 5 minutes on one H100). Prints a table; writes
# $OUT/gpu_check.json when OUT is set. Extra arguments go to check.py (--help).
set -euo pipefail
source "$(dirname "$0")/env.sh"
exec timeout 290 "$PY" scripts/gpu/check.py "$@"
