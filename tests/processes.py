"""Waiting for child processes started by multi-process tests."""

from __future__ import annotations

import subprocess


def finish(procs: list[subprocess.Popen], timeout: float) -> list[tuple[int, str]]:
    """``(return code, combined output)`` of each process; kills the ones still running."""
    out = []
    try:
        for p in procs:
            text, _ = p.communicate(timeout=timeout)
            out.append((p.returncode, text))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return out
