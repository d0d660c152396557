"""Check a multi-process launch end to end, through the path production runs.

Run ``srun -n 2 python -m scalable_hrank.distributed.selfcheck --out report.json``.

Every process joins the group (:func:`init_from_env`) and computes on its device
(:func:`resolve_device`), then checks against references computed identically on every rank
(same seed): an all-reduce of the ranks, sharded inner products (a Gram matrix summed with
:func:`sharded_reduce`), a :class:`ShardedMatMat` product with a random symmetric matrix, and
the production path of ``hrank rank --distributed [--shard-basis]``: the data split with
:func:`shard`, then :func:`scalable_hrank.estimate_rank` with a replicated and with a sharded
Krylov basis, for H_L, H_O and H_F of a linear network whose ranks the formulas give exactly.
Rank 0 writes a JSON report (``--out``). Every process then leaves the group
(:func:`shutdown`); the exit code is 0 when every check passed and no thread of the group
outlived it, 1 otherwise.

``--die-rank R`` makes rank R exit right after joining, ``--hang-rank R`` makes it sleep:
the others must then fail within the collective timeout (``--timeout``), not hang.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import socket
import sys
import time
from pathlib import Path

import torch

from scalable_hrank._io import atomic_write_text
from scalable_hrank.distributed.env import all_reduce_sum, init_from_env, shard, shutdown
from scalable_hrank.distributed.resources import resolve_device, to_device
from scalable_hrank.distributed.sharded import ShardedMatMat, sharded_reduce

logger = logging.getLogger(__name__)


def run_checks(n: int = 37, k: int = 3, seed: int = 0) -> dict:
    """Run the checks in the current process group; return a JSON-ready report."""
    w = init_from_env()
    dev = resolve_device("auto")
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(n, n, dtype=torch.float64, generator=gen)
    a = (a + a.T).to(dev)
    x = torch.randn(n, k, dtype=torch.float64, generator=gen).to(dev)
    op = ShardedMatMat(lambda v: a @ v, n)
    reduce = sharded_reduce() or (lambda t: t)
    total = all_reduce_sum(torch.tensor([float(w.rank + 1)], dtype=torch.float64, device=dev))
    gram = reduce(op.local(x).T @ op.local(x))
    y_local = op(op.local(x))
    y_full = op.gather(y_local)
    report = {
        "rank": w.rank,
        "world": w.size,
        "local_rank": w.local_rank,
        "backend": w.backend,
        "device": w.device,
        "host": socket.gethostname(),
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        "all_reduce": float(total.item()),
        "all_reduce_expected": w.size * (w.size + 1) / 2,
        "gram_error": float((gram - x.T @ x).abs().max()),
        "matmat_error": float((y_full - a @ x).abs().max()),
        "local_rows": op.n_local,
    }
    report["device"] = str(dev)
    report.update(_krylov_check(op, a, reduce, seed))
    report["production"] = _production_check(w.rank, w.size, dev)
    report["ok"] = (report["all_reduce"] == report["all_reduce_expected"]
                    and report["gram_error"] < 1e-10 and report["matmat_error"] < 1e-10
                    and report.get("krylov_rank") == report.get("krylov_rank_expected")
                    and all(r["ok"] for r in report["production"].values()))
    return report


def _production_check(rank: int, world: int, device: torch.device) -> dict:
    """``hrank rank --distributed`` on a linear network: formula ranks, both basis layouts.

    The data are split as the command line splits them (:func:`shard`); each kind is solved
    with the basis replicated on every process and sharded by rows (``shard_basis=True``).
    """
    import scalable_hrank as hr
    from scalable_hrank.data.digits import gaussian
    from scalable_hrank.models.mlp import mlp

    model, data = mlp((8, 4, 3), seed=0), gaussian(12, 8, 3, loss="mse", seed=1)
    predicted = hr.predict_rank(model, loss="mse", data=data)
    model, local = model.to(device), to_device(shard(data, rank, world), device)
    out = {}
    for kind in ("loss", "outer", "functional"):
        expected = int(getattr(predicted, kind))
        for layout in ("replicated", "sharded"):
            res = hr.estimate_rank(model, "mse", local, kind, method="sketch", seed=0,
                                   shard_basis=layout == "sharded")
            out[f"{kind}/{layout}"] = {
                "rank": res.rank, "expected": expected, "certified": res.certified,
                "rows": (res.extra.get("sharded_basis") or {}).get("rows", res.n),
                "ok": res.rank == expected and res.certified}
    return out


def _krylov_check(op: ShardedMatMat, a: torch.Tensor, reduce, seed: int) -> dict:
    """Rank of a planted low-rank matrix with the basis sharded over the processes."""
    try:
        from scalable_hrank.linalg import krylov_rank
    except ImportError:  # pragma: no cover - linalg not built yet
        return {}
    n = a.shape[0]
    gen = torch.Generator().manual_seed(seed + 1)
    u = torch.linalg.qr(torch.randn(n, 9, dtype=torch.float64, generator=gen))[0].to(a.device)
    planted = u @ torch.diag(torch.logspace(0, -3, 9, dtype=torch.float64)).to(a.device) @ u.T
    sharded = ShardedMatMat(lambda v: planted @ v, n, rank=op.rank, world=op.world)
    res = krylov_rank(sharded, sharded.n_local, rtol=1e-8, block_size=4,
                      generator=torch.Generator().manual_seed(seed), device=a.device,
                      reduce=None if op.world == 1 else reduce)
    return {"krylov_rank": int(res.rank), "krylov_rank_expected": 9,
            "krylov_matvecs": int(getattr(res, "num_matvecs", -1))}


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; see the module docstring."""
    p = argparse.ArgumentParser(prog="python -m scalable_hrank.distributed.selfcheck")
    p.add_argument("--out", type=Path, help="JSON report written by rank 0")
    p.add_argument("--timeout", type=float, default=None, help="collective timeout (s)")
    p.add_argument("--die-rank", type=int, default=None)
    p.add_argument("--hang-rank", type=int, default=None)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    w = init_from_env(timeout=args.timeout)
    if w.rank == args.die_rank:
        os._exit(0)  # a peer that disappears without leaving the group
    if w.rank == args.hang_rank:
        time.sleep(3600)
    t0 = time.monotonic()
    try:
        report = run_checks()
    except Exception as exc:  # noqa: BLE001 - reported, with the time it took to fail
        logger.error("rank %d failed after %.1fs: %s: %s", w.rank, time.monotonic() - t0,  # noqa: TRY400
                     type(exc).__name__, exc)
        os._exit(1)  # skip destroy_process_group, which may wait on the dead peer
    if w.rank == 0 and args.out:
        atomic_write_text(args.out, json.dumps(report, indent=2) + "\n")
    logger.info("rank %d: %s", w.rank, json.dumps(report))
    if left := shutdown():  # the group would be torn down at exit, which can abort
        logger.error("rank %d: the process group's threads outlived shutdown: %s", w.rank,
                     ", ".join(left))
        return 1
    return 0 if report["ok"] else 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
