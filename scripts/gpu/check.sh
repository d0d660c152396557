#!/usr/bin/env bash
# GPU check of curvature products (< 5 minutes on one H100). Prints a table; writes
# $OUT/gpu_check.json when OUT is set. Extra arguments go to check.py (--help).
set -euo pipefail
cd "$(dirname "$0")/../.."
export HF_HUB_OFFLINE=1
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}"
PY="${PYTHON:-}"
if [[ -z "$PY" ]]; then
  if [[ -x .venv/bin/python ]]; then PY=.venv/bin/python; else PY=python3; fi
fi
exec timeout 290 "$PY" scripts/gpu/check.py "$@"
