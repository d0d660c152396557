"""Worker for tests/test_distributed_rank.py: one process of a data-parallel rank run.

Every process builds the same model and data, keeps its shard of the samples, and writes
products, ranks and eigenvalues to OUT/rank-<r>.json (OUT/single.json without a process group).
MODE: "single", "replicated" or "sharded" (the Krylov basis), or "user" (replicated, in a
group the worker joins and leaves with torch.distributed itself). Exit 1 when a thread of the
group outlives leaving it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

import scalable_hrank as hr
from scalable_hrank.data.digits import gaussian
from scalable_hrank.models.mlp import mlp

KINDS = ("loss", "outer", "functional")


def main(out_dir: str, mode: str) -> int:
    model = mlp((8, 6, 6, 3), seed=3)
    x, y = gaussian(30, 8, 3, loss="cross_entropy", seed=4)
    batches = [(x[:13], y[:13]), (x[13:], y[13:])]
    name = "single"
    if mode != "single":
        from scalable_hrank.distributed import init_from_env, shard

        if mode == "user":  # a group joined by the user's own code, not init_from_env
            torch.distributed.init_process_group("gloo")
        world = init_from_env()
        batches = shard(batches, world.rank, world.size, by="sample")
        name = f"rank-{world.rank}"
    v = torch.randn(sum(p.numel() for p in model.parameters()), 3,
                    generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    doc = {}
    for kind in KINDS:
        op = hr.curvature_operator(model, "cross_entropy", batches, kind)
        res = hr.estimate_rank(model, "cross_entropy", batches, kind, method="sketch",
                               shard_basis=mode == "sharded")
        eig = hr.eigenvalues(model, "cross_entropy", batches, kind, k=3, which="LM")
        doc[kind] = {"product": (op @ v).tolist(), "rank": res.rank,
                     "certified": res.certified, "ritz": list(res.eigenvalues),
                     "matvecs": res.matvecs, "eigenvalues": list(eig.values),
                     "n": res.n, "sharded_basis": res.extra.get("sharded_basis")}
    Path(out_dir, f"{name}.json").write_text(json.dumps(doc))
    if mode != "single":
        from scalable_hrank.distributed import shutdown
        from scalable_hrank.distributed.env import group_threads

        if mode == "user":
            torch.distributed.barrier()
            torch.distributed.destroy_process_group()
            left = group_threads()
        else:
            left = shutdown()
        if left:  # the group was not freed: exit could abort
            print(f"threads of the process group outlived leaving it: {left}")
            return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1], sys.argv[2]))
