"""estimate_rank(method="sketch") against exact_rank (dense float64 eigvalsh): wall time.

Deep linear MLPs [d, 20, 20, 10] without biases, mse loss, N = 4 Gaussian samples with
Gaussian targets, float64. Growing d grows n = 20 d + 600 while the ranks stay fixed by
the paper's formulas (H_L: 328), so the matrix-free cost grows like n and the dense one like
n^3. Dense runs only up to --max-dense (memory n^2 float64 for the matrix plus eigvalsh's
workspace); beyond it the dense time is extrapolated as t(n0) (n / n0)^3 from the largest
measured n0 and marked as such.

ARPACK ``scipy.sparse.linalg.eigsh(op.to_scipy(), k=pred + 12, which="LM")`` is the baseline a
user would pick (k a few above the known rank, count of ``|lambda| > tol`` at the sketch's
threshold; no certificate); it runs right after the sketch on the same operator, up to
--max-eigsh.

    .venv/bin/python scripts/bench/rank_vs_dense.py                 # 1k ... 50k, 200k sketch only
    .venv/bin/python scripts/bench/rank_vs_dense.py --quick         # smoke run, < 30 s
    .venv/bin/python scripts/bench/rank_vs_dense.py --sizes 20000 --max-dense 20000
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from common import machine, maxrss_mb, write_json  # noqa: E402

import scalable_hrank as hr  # noqa: E402
from scalable_hrank.models.mlp import mlp  # noqa: E402
from scalable_hrank.theory import predict_rank_from_widths  # noqa: E402

HIDDEN, K, N = 20, 10, 4


def problem(n_target: int, seed: int = 0):
    d = max(1, round((n_target - HIDDEN * HIDDEN - HIDDEN * K) / HIDDEN))
    widths = [d, HIDDEN, HIDDEN, K]
    model = mlp(widths, activation="linear", bias=False, seed=seed, dtype=torch.float64)
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(N, d, generator=g, dtype=torch.float64)
    y = torch.randn(N, K, generator=g, dtype=torch.float64)
    return widths, model, (x, y)


def eigsh_baseline(model, data, kind: str, pred: int, tol: float) -> dict:
    """ARPACK eigsh with k = pred + 12 on the same operator; its count at the sketch's tol."""
    from scipy.sparse.linalg import eigsh

    op = hr.curvature_operator(model, "mse", data, kind)
    k = min(op.size - 1, pred + 12)
    gc.collect()
    t0 = time.perf_counter()
    vals = eigsh(op.to_scipy(), k=k, which="LM", return_eigenvectors=False)
    te = time.perf_counter() - t0
    return {"eigsh_rank": int((abs(vals) > tol).sum()), "eigsh_s": te, "eigsh_k": k,
            "eigsh_matvecs": op.matvecs}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", default="1000,5000,10000,20000,50000,200000",
                   help="target parameter counts n (comma separated)")
    p.add_argument("--max-dense", type=int, default=20000,
                   help="largest n for exact_rank (default 20000: 3.2 GB matrix)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--dense-ref", default=None, metavar="N:SECONDS",
                   help="extrapolate dense times from this earlier measurement (e.g. a "
                        "previous run's largest dense n) when no dense run is made here")
    p.add_argument("--kind", default="loss")
    p.add_argument("--max-eigsh", type=int, default=200000,
                   help="largest n for the ARPACK eigsh baseline (0: never)")
    p.add_argument("--quick", action="store_true", help="smoke run (n = 1k, 2k), < 30 s")
    p.add_argument("--json", default=None, help="write results here")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    sizes = [1000, 2000] if a.quick else [int(s) for s in a.sizes.split(",")]
    info = machine()
    info["threads"] = torch.get_num_threads()
    print(f"# {info}", flush=True)
    print(f"{'n':>8} {'widths':>22} {'pred':>5} {'sketch':>6} {'cert':>5} {'prods':>6} "
          f"{'sketch s':>9} {'eigsh':>6} {'eigsh s':>8} {'eigsh/sk':>8} "
          f"{'exact':>6} {'exact s':>9} {'dense/sketch':>12} {'maxrss MB':>9}",
          flush=True)
    rows = []
    last_dense: tuple[int, float] | None = None
    if a.dense_ref:
        n_ref, t_ref = a.dense_ref.split(":")
        last_dense = (int(n_ref), float(t_ref))
    for n_t in sizes:
        widths, model, data = problem(n_t)
        pred = getattr(predict_rank_from_widths(widths, loss="mse", num_samples=N), a.kind)
        gc.collect()
        t0 = time.perf_counter()
        s = hr.estimate_rank(model, "mse", data, a.kind, method="sketch", seed=0)
        ts = time.perf_counter() - t0
        row = {"n": s.n, "widths": widths, "predicted": pred, "sketch_rank": s.rank,
               "certified": s.certified, "sketch_matvecs": s.matvecs, "sketch_s": ts,
               "sketch_tol": s.tol}
        if s.n <= a.max_eigsh:
            row.update(eigsh_baseline(model, data, a.kind, pred, s.tol))
        if s.n <= a.max_dense:
            gc.collect()
            t0 = time.perf_counter()
            e = hr.exact_rank(model, "mse", data, a.kind,
                              max_memory_bytes=64 * 2**30)
            te = time.perf_counter() - t0
            row.update(exact_rank=e.rank, exact_s=te, exact_tol=e.tol, extrapolated=False)
            last_dense = (s.n, te)
        elif last_dense is not None:
            n0, t0d = last_dense
            row.update(exact_rank=None, exact_s=t0d * (s.n / n0) ** 3, extrapolated=True)
        row["speedup"] = row.get("exact_s", float("nan")) / ts
        row["maxrss_mb"] = maxrss_mb()
        rows.append(row)
        ex = "-" if row.get("exact_rank") is None else str(row["exact_rank"])
        mark = "~" if row.get("extrapolated") else " "
        eg = (f"{row['eigsh_rank']:>6} {row['eigsh_s']:>8.2f} {row['eigsh_s'] / ts:>8.2f}"
              if "eigsh_rank" in row else f"{'-':>6} {'-':>8} {'-':>8}")
        print(f"{s.n:>8} {str(widths):>22} {pred:>5} {s.rank:>6} {str(s.certified):>5} "
              f"{s.matvecs:>6} {ts:>9.2f} {eg} {ex:>6} "
              f"{mark}{row.get('exact_s', float('nan')):>8.1f} "
              f"{row['speedup']:>12.1f} {row['maxrss_mb']:>9.0f}", flush=True)
    print("# ~ = dense time extrapolated as t(n0) (n/n0)^3 from the largest dense run", flush=True)
    write_json(a.json, {"machine": info, "kind": a.kind, "rows": rows, "argv": sys.argv})


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
