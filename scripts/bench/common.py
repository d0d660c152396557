"""Helpers shared by the benchmarks in scripts/bench: machine description, interleaved
timing, peak-memory measurement in fresh subprocesses, JSON output.

Timing: the paths of one comparison are run round-robin (A, B, C, A, B, C, ...) and each is
summarised by its minimum and median, so a ratio is always taken from the same run and a
burst of load from other processes hits every path alike.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch


def cpu_model() -> str:
    """The CPU model name (lscpu's "Model name", else /proc/cpuinfo, else platform)."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        for line in out.splitlines():
            if line.strip().startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(device: str = "cpu") -> dict[str, Any]:
    """Machine, software and load at the time of the call."""
    info: dict[str, Any] = {
        "cpu": cpu_model(), "cores": os.cpu_count(), "torch": torch.__version__,
        "python": platform.python_version(), "default_threads": default_threads(),
        "loadavg": [round(x, 2) for x in os.getloadavg()],
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


_DEFAULT_THREADS = torch.get_num_threads()


def default_threads() -> int:
    """torch's thread count at import (before any set_num_threads)."""
    return _DEFAULT_THREADS


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def interleaved(fns: Mapping[str, Callable[[], Any]], reps: int, *, device: str = "cpu",
                warmup: int = 1) -> dict[str, dict[str, float]]:
    """Seconds per call of each function, run round-robin; {name: {min, median, reps}}."""
    for f in fns.values():
        for _ in range(warmup):
            f()
            sync(device)
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(reps):
        for k, f in fns.items():
            sync(device)
            t0 = time.perf_counter()
            f()
            sync(device)
            times[k].append(time.perf_counter() - t0)
    out = {}
    for k, ts in times.items():
        ts.sort()
        out[k] = {"min": ts[0], "median": ts[len(ts) // 2], "reps": len(ts)}
    return out


def maxrss_mb() -> float:
    """Peak resident set size of this process so far, in MB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def rss_mb() -> float:
    """Current resident set size in MB (/proc/self/statm)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return float("nan")


def run_child(script: str, args: list[str], env: Mapping[str, str] | None = None,
              timeout: float = 1800) -> dict[str, Any]:
    """Run ``python script args`` in a fresh process; parse the last line of stdout as JSON."""
    full_env = {**os.environ, **(env or {})}
    proc = subprocess.run([sys.executable, script, *args], capture_output=True, text=True,
                          env=full_env, timeout=timeout, check=False)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {"error": (proc.stderr or proc.stdout)[-800:], "rc": proc.returncode}
    return json.loads(lines[-1])


def write_json(path: str | os.PathLike[str] | None, payload: Any) -> None:
    if path is None:
        return
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(payload, indent=2, default=str))


def fmt_ms(s: float) -> str:
    return f"{s * 1e3:.1f} ms" if s < 10 else f"{s:.1f} s"
