"""SLQ's Gauss quadrature: the tridiagonal eigenproblem, dense symmetric solver vs LAPACK MRRR.

Each SLQ reading diagonalizes one k x k Lanczos tridiagonal per probe (twice: at k and
0.75 k steps). The package uses MRRR (``scipy.linalg.eigh_tridiagonal``,
``linalg/counting._ritz``); this compares it, side by side in one run, with the dense solver
it replaced, on random tridiagonals, and checks that the quadrature weights agree.

    python scripts/bench/quadrature.py --depths 2000,4000 --probes 8 --threads 1
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np
import torch
from scipy.linalg import eigh_tridiagonal


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--depths", default="2000,4000")
    ap.add_argument("--probes", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"threads {args.threads}")
    print("| depth | probes | dense eigh (s) | MRRR (s) | dense / MRRR | max weight diff |")
    print("|---|---|---|---|---|---|")
    for k in (int(d) for d in args.depths.split(",")):
        alpha = rng.standard_normal((args.probes, k))
        beta = np.abs(rng.standard_normal((args.probes, k - 1))) + 0.1
        start = time.perf_counter()
        dense = []
        for a, b in zip(alpha, beta, strict=True):
            t = torch.diag(torch.from_numpy(a)) + torch.diag(torch.from_numpy(b), 1) \
                + torch.diag(torch.from_numpy(b), -1)
            dense.append(torch.linalg.eigh(t)[1][0].numpy() ** 2)
        t_dense = time.perf_counter() - start
        start = time.perf_counter()
        mrrr = [eigh_tridiagonal(a, b)[1][0] ** 2 for a, b in zip(alpha, beta, strict=True)]
        t_mrrr = time.perf_counter() - start
        diff = max(float(np.abs(x - y).max()) for x, y in zip(dense, mrrr, strict=True))
        print(f"| {k} | {args.probes} | {t_dense:.2f} | {t_mrrr:.2f} | "
              f"{t_dense / t_mrrr:.1f}x | {diff:.1e} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
