"""Child processes of the tests: waiting for them, and the environment of a peak-memory child."""

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


#: Environment of a child that measures its peak resident memory (``VmHWM``). glibc's adaptive
#: mmap threshold rises after the first large frees; blocks of a few MB then come from the heap,
#: whose freed pages it may keep, and the peak of the same run varied by up to 3.5x (live memory
#: did not). A fixed threshold returns every freed block, so the peak is what the code holds.
#: (Arrays above 32 MB are always mapped apart, so large runs see no such slack.)
PEAK_MEMORY_ENV = {"OMP_NUM_THREADS": "1", "MALLOC_MMAP_THRESHOLD_": "131072"}
