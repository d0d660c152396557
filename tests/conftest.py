"""Shared pytest setup: make the src-layout package and the helpers in tests/ importable."""

import importlib.util
import sys
from pathlib import Path

_TESTS = Path(__file__).resolve().parent
if importlib.util.find_spec("scalable_hrank") is None:  # not installed: use the checkout
    sys.path.insert(0, str(_TESTS.parent / "src"))
if str(_TESTS) not in sys.path:  # tests/dense_reference.py, from any test subfolder
    sys.path.insert(0, str(_TESTS))
