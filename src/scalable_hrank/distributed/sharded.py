"""A Krylov basis sharded across processes: each process holds a slice of every vector."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

from scalable_hrank.distributed.env import all_reduce_sum, is_distributed
from scalable_hrank.linalg._types import MatMat, Reduce


def sharded_reduce() -> Reduce:
    """Return the ``Reduce`` callable for a basis sharded over the default process group.

    It sums a small tensor (partial inner products, a partial Gram matrix ``Q_local^T X_local``)
    over processes. ``None`` (the single-process value of ``Reduce``) when not distributed.
    """
    if not is_distributed():
        return None
    return all_reduce_sum


def split_sizes(n: int, world: int) -> list[int]:
    """Sizes of the contiguous slices of a length-``n`` vector over ``world`` processes.

    The first ``n % world`` slices get one element more (``torch.tensor_split``'s rule).
    """
    base, extra = divmod(n, world)
    return [base + (1 if r < extra else 0) for r in range(world)]


class ShardedMatMat:
    """Apply a full-vector matmat to a block sharded by rows across processes.

    Each process passes its slice ``X_local`` (n_local, k) of a block X (n, k); the slices are
    all-gathered into X, every process applies ``matmat`` (which may itself be data-parallel),
    and each returns its slice of A X. Every process must call it with the same k.

    Cost per call: one all-gather of n * k elements plus one product with A. The basis
    memory per process is n_local * m, but each process still holds one full (n, k) block.

    Args:
        matmat: X -> A X on full (n, k) blocks.
        n: Full vector length.
        rank: This process's rank (default: the process group's, 0 if none).
        world: Number of processes (default: the process group's, 1 if none).

    Attributes:
        sizes: Slice length per rank; ``offset``/``n_local``: this rank's slice.

    """

    def __init__(self, matmat: MatMat, n: int, *, rank: int | None = None,
                 world: int | None = None) -> None:
        dist_on = is_distributed()
        self.matmat = matmat
        self.n = int(n)
        self.rank = rank if rank is not None else (dist.get_rank() if dist_on else 0)
        self.world = world if world is not None else (dist.get_world_size() if dist_on else 1)
        self.sizes = split_sizes(self.n, self.world)
        self.offset = sum(self.sizes[: self.rank])
        self.n_local = self.sizes[self.rank]

    def local(self, full: Tensor) -> Tensor:
        """Return this process's rows of a full (n, ...) tensor."""
        return full[self.offset: self.offset + self.n_local]

    def gather(self, local: Tensor) -> Tensor:
        """All-gather row slices (n_local, k) into the full (n, k) block, on every process.

        Raises:
            ValueError: If ``local`` does not have ``n_local`` rows.

        """
        if self.world == 1:
            return local
        if local.shape[0] != self.n_local:
            msg = (f"expected a slice with {self.n_local} rows on rank {self.rank}; "
                   f"got {local.shape[0]}")
            raise ValueError(msg)
        width = max(self.sizes)
        pad = torch.zeros((width, *local.shape[1:]), dtype=local.dtype, device=local.device)
        pad[: self.n_local] = local
        parts = [torch.empty_like(pad) for _ in range(self.world)]
        dist.all_gather(parts, pad.contiguous())
        return torch.cat([p[:s] for p, s in zip(parts, self.sizes, strict=True)], dim=0)

    def __call__(self, x_local: Tensor) -> Tensor:
        """Return this process's rows of A X, given its rows of X (n_local, k)."""
        full = self.gather(x_local)
        return self.local(self.matmat(full))
