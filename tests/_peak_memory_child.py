"""Child process of tests/test_plan_memory.py: planned vs peak resident memory per method.

Linux only: writing 5 to ``/proc/self/clear_refs`` resets the peak resident set size
(``VmHWM``), so one process measures each run from the resident size just before it. Prints
one JSON object: for each method, the plan's storage + product bytes and the measured rise.
"""

from __future__ import annotations

import ctypes
import gc
import json
from pathlib import Path

import torch


def _status_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    msg = f"no {field} in /proc/self/status"
    raise RuntimeError(msg)


def main() -> None:
    import scalable_hrank as hr
    from scalable_hrank.data.digits import gaussian
    from scalable_hrank.models.mlp import mlp

    small = mlp((30, 40, 20, 5), seed=0), gaussian(20, 30, 5, seed=1)  # n = 2100
    large = mlp((150, 100, 100, 10), seed=0), gaussian(30, 150, 10, seed=1)  # n = 26000
    runs = {"exact": (small, {}), "sketch": (large, {"memory_bytes": 80 * 2**20}),
            "density": (large, {"max_matvecs": 1200})}
    # warm up every path on a tiny problem: lazy imports and allocator pools go in the baseline
    tiny = mlp((4, 3, 2), seed=0), gaussian(5, 4, 2, seed=1)
    for method in runs:
        hr.estimate_rank(tiny[0], "mse", tiny[1], "loss", method=method, rtol=1e-3)
    out = {}
    for method, ((model, data), kw) in runs.items():
        gc.collect()
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand freed pages back: a fresh baseline
        Path("/proc/self/clear_refs").write_text("5")
        before = _status_bytes("VmRSS")
        res = hr.estimate_rank(model, "mse", data, "loss", method=method, rtol=1e-3, **kw)
        peak = _status_bytes("VmHWM")
        plan = res.extra["plan"]
        out[method] = {"planned": plan["storage_bytes"] + plan["product_bytes"],
                       "measured": peak - before, "n": res.n}
        del res
    print(json.dumps(out))


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
