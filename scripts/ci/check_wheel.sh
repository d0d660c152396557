#!/usr/bin/env bash
# Build the wheel and check that it ships every sbatch template of slurm/ (their single source).
#   bash scripts/ci/check_wheel.sh [PYTHON]     (default .venv/bin/python)
set -euo pipefail
cd "$(dirname "$0")/../.."
python="${1:-.venv/bin/python}"
dist="$(mktemp -d)"
trap 'rm -rf "$dist"' EXIT
"$python" -m pip wheel --no-deps --no-build-isolation -q -w "$dist" .
wheel="$(ls "$dist"/scalable_hrank-*.whl)"
listing="$("$python" -m zipfile -l "$wheel")"
missing=0
for template in slurm/*.sbatch; do
    name="scalable_hrank/distributed/sbatch/$(basename "$template")"
    if grep -q "^$name " <<<"$listing"; then
        echo "wheel ships $name"
    else
        echo "wheel $(basename "$wheel") lacks $name" >&2
        missing=1
    fi
done
exit "$missing"
