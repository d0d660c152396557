"""The memory plan counts what runs: planned vs measured peak memory for each method.

The measurement runs in a fresh process (tests/_peak_memory_child.py), which resets the
kernel's peak resident set size before each method and reports the rise during the run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.processes import PEAK_MEMORY_ENV

ROOT = Path(__file__).resolve().parents[1]


def _can_reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:  # noqa: PTH123
            f.write("5")
    except OSError:
        return False
    return True


@pytest.mark.skipif(not sys.platform.startswith("linux") or not _can_reset_peak(),
                    reason="needs Linux /proc/self/clear_refs to reset the peak RSS")
def test_planned_memory_within_2x_of_measured_peak() -> None:
    env = {**os.environ, **PEAK_MEMORY_ENV, "PYTHONPATH": os.pathsep.join(
        [str(ROOT / "src"), str(ROOT), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, str(ROOT / "tests" / "_peak_memory_child.py")],
                         capture_output=True, text=True, env=env, timeout=300, check=True)
    measured = json.loads(out.stdout.strip().splitlines()[-1])
    assert set(measured) == {"exact", "sketch", "density"}
    for method, m in measured.items():
        ratio = m["measured"] / m["planned"]
        # the storage dominates: at least 50 MB planned for each run
        assert m["planned"] > 50 * 2**20, method
        assert 0.5 <= ratio <= 2.0, (method, m, ratio)
