"""Lock-step Lanczos (the SLQ and certificate engine): time and memory per step, against a
baseline commit, side by side in one run.

Each path runs in a fresh process (its own ``src`` tree on PYTHONPATH) that times
``advance_probes`` for ``--steps`` steps of ``--probes`` probes at size n on a diagonal
operator (a product costing one pass over the block, so the step's own overhead shows), and
reports the peak resident growth during the steps in length-n float64 vectors per probe.
The paths alternate (baseline, current, baseline, ...) and each is summarised by its minimum
and median. With ``--count WIDTHS`` each process instead runs a whole density count,
``estimate_rank(method="density")`` on a deep linear MLP of those widths (mse, ``--samples``
Gaussian samples, ``--max-matvecs`` products), and reports its seconds and result.

    OMP_NUM_THREADS=1 python scripts/bench/lockstep.py --baseline f5a009a --n 400000 \
        --probes 16 --steps 100 --reps 3
    OMP_NUM_THREADS=1 python scripts/bench/lockstep.py --baseline f5a009a \
        --count 1500,64,64,10 --samples 64 --max-matvecs 3200 --reps 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

CHILD = r"""
import json, os, sys, time
import torch
torch.set_num_threads(1)
from scalable_hrank.linalg.decomp import advance_probes, start_probes
n, probes, steps = (int(a) for a in sys.argv[1:4])
g = torch.Generator().manual_seed(0)
d = torch.rand(n, generator=g, dtype=torch.float64)
state, _ = start_probes(torch.randn(n, probes, generator=g, dtype=torch.float64), None)
advance_probes(state, lambda x: d[:, None] * x, 2, None)  # warm-up

def status(field):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(field))

before = status("VmRSS")
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
start = time.perf_counter()
advance_probes(state, lambda x: d[:, None] * x, steps, None)
seconds = time.perf_counter() - start
peak = status("VmHWM") - before
print(json.dumps({"seconds": seconds, "vectors_per_probe": peak / (8 * n * probes)}))
"""

COUNT = r"""
import json, sys, time
import torch
torch.set_num_threads(1)
sys.path.insert(0, sys.argv[4])
from sketch_floor import problem
import scalable_hrank as hr
model, data = problem([int(w) for w in sys.argv[1].split(",")], int(sys.argv[2]))
start = time.perf_counter()
res = hr.estimate_rank(model, "mse", data, "loss", method="density", seed=0,
                       max_matvecs=int(sys.argv[3]))
print(json.dumps({"seconds": time.perf_counter() - start, "n": res.n, "rank": res.rank,
                  "interval": [res.rank_low, res.rank_high], "matvecs": res.matvecs}))
"""


def baseline_tree(rev: str, into: Path) -> Path:
    """Extract ``src`` of commit ``rev`` into ``into`` and return its path."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "src"],
                             capture_output=True, check=True).stdout
    tar = into / "src.tar"
    tar.write_bytes(archive)
    with tarfile.open(tar) as t:
        t.extractall(into, filter="data")
    return into / "src"


def run(src: Path, args: argparse.Namespace) -> dict:
    env = {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": "1"}
    if args.count:
        argv = [COUNT, args.count, str(args.samples), str(args.max_matvecs),
                str(Path(__file__).resolve().parent)]
    else:
        argv = [CHILD, str(args.n), str(args.probes), str(args.steps)]
    out = subprocess.run([sys.executable, "-c", *argv], env=env, capture_output=True,
                         text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--baseline", default=None, help="commit to compare with (git rev)")
    ap.add_argument("--n", type=int, default=400_000)
    ap.add_argument("--probes", type=int, default=16)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--count", default=None, help="widths: time a whole density count")
    ap.add_argument("--samples", type=int, default=64)
    ap.add_argument("--max-matvecs", type=int, default=3200)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        paths = {"current": ROOT / "src"}
        if args.baseline:
            paths = {f"baseline {args.baseline}": baseline_tree(args.baseline, Path(tmp)),
                     **paths}
        results: dict[str, list[dict]] = {name: [] for name in paths}
        for _ in range(args.reps):
            for name, src in paths.items():
                results[name].append(run(src, args))
    mins = {}
    if args.count:
        print(f"# density count, widths {args.count}, N = {args.samples}, "
              f"{args.max_matvecs} products, 1 thread, load {os.getloadavg()[0]:.1f}")
        print("| path | min (s) | median (s) | n | rank [interval] | products |")
        print("|---|---|---|---|---|---|")
    else:
        print(f"# n = {args.n}, {args.probes} probes, {args.steps} steps, 1 thread, "
              f"load {os.getloadavg()[0]:.1f}")
        print("| path | min (s) | median (s) | per step (ms) | peak vectors per probe |")
        print("|---|---|---|---|---|")
    for name, rows in results.items():
        secs = [r["seconds"] for r in rows]
        mins[name] = min(secs)
        if args.count:
            r = rows[0]
            tail = f"{r['n']:,} | {r['rank']} {r['interval']} | {r['matvecs']}"
        else:
            tail = (f"{1e3 * min(secs) / args.steps:.1f} | "
                    f"{rows[0]['vectors_per_probe']:.2f}")
        print(f"| {name} | {min(secs):.2f} | {statistics.median(secs):.2f} | {tail} |")
    if len(mins) == 2:
        base, cur = mins.values()
        print(f"baseline / current (minimum): {base / cur:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
