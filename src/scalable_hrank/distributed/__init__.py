"""Several processes on one computation: torch.distributed set-up, data shards, sharded bases.

Launch one process per GPU (or CPU worker) with ``torchrun`` or ``srun``; every process calls
:func:`init_from_env`. Data-parallel products: each process takes :func:`shard` of the data and
sums its products with :func:`all_reduce_sum`. A basis too large for one device is sharded by
rows: wrap the operator in :class:`ShardedMatMat` and pass :func:`sharded_reduce` as the solver's
``reduce``. Identical seeds on every process keep the solvers in lock-step.
"""

from scalable_hrank.distributed.env import (
    DEFAULT_TIMEOUT_S,
    World,
    all_reduce_sum,
    batches_of,
    env_from_slurm,
    init_from_env,
    is_distributed,
    shard,
    shutdown,
    world,
)
from scalable_hrank.distributed.sharded import ShardedMatMat, sharded_reduce, split_sizes

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "ShardedMatMat",
    "World",
    "all_reduce_sum",
    "batches_of",
    "env_from_slurm",
    "init_from_env",
    "is_distributed",
    "shard",
    "sharded_reduce",
    "shutdown",
    "split_sizes",
    "world",
]
