# Sourced by the GPU scripts: the repository root as working directory, offline Hugging Face
# hub, src on PYTHONPATH, and PY the interpreter (PYTHON, else .venv/bin/python, else python3).
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
export HF_HUB_OFFLINE=1
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}"
PY="${PYTHON:-}"
if [[ -z "$PY" ]]; then
  if [[ -x .venv/bin/python ]]; then PY=.venv/bin/python; else PY=python3; fi
fi
