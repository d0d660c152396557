#!/usr/bin/env bash
# Run the whole test suite (Slurm tests skip unless a controller answers; .ci/run starts one).
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
.venv/bin/ruff check src tests scripts
exec .venv/bin/python -m pytest -n 2 --dist loadfile -q "$@"
