"""The "sketch" estimator: certified block Krylov rank (:func:`~scalable_hrank.linalg.krylov_rank`).

The basis grows until a fresh random block adds nothing above the threshold; the count is then
certified by the Krylov residual plus a Lanczos estimate of the deflated operator's norm
(Weyl). Its cost contract is :func:`expected_products` (products) and
:func:`~scalable_hrank.linalg.krylov_rank.memory_bytes` (memory); the planner, the progress
bars and the README quote these, not a formula of their own.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import torch

from scalable_hrank.estimators.common import check_noise_floor, probe_and_threshold
from scalable_hrank.estimators.registry import (
    Estimator,
    RankRequest,
    Sizing,
    halved_blocks,
    register_estimator,
)
from scalable_hrank.linalg import KrylovState
from scalable_hrank.linalg.krylov_rank import (
    KrylovRank,
    certificate_steps_for,
    krylov_rank,
    memory_bytes,
)
from scalable_hrank.result import RankResult, find_gap, rank_curve
from scalable_hrank.threshold import noise_floor


def expected_products(n: int, rank: int, block_size: int) -> int:
    """Products a certified sketch is expected to take on a rank-``rank`` operator of size n.

    ``rank + 2 b + certificate_steps_for(n)``: the basis reaches the rank plus about two
    blocks of width b before a fresh block adds nothing above the threshold, and one
    certificate run of :func:`~scalable_hrank.linalg.krylov_rank.certificate_steps_for`
    (n) Lanczos steps (27 at n = 100, 35 at n = 1e9) follows; n when ``rank + 2 b >= n``
    (the basis then spans the space and the count needs no certificate). An estimate for an
    operator whose eigenvalues clear the threshold by a gap, not a bound: a failed
    certificate grows the basis and retries, a basis that widens its blocks (ranks in the
    thousands) adds about one widest block, and its batched certificate runs take more
    steps in all. The product budget that stops a run is :func:`max_products` (n plus one
    certificate).
    """
    basis = rank + 2 * block_size
    return n if basis >= n else basis + certificate_steps_for(n)


def max_products(n: int, block_size: int) -> int:  # noqa: ARG001 - the registry's signature
    """The default product budget of a sketch on size n: ``n + certificate_steps_for(n)``."""
    return n + certificate_steps_for(n)


def _storage(sizing: Sizing) -> int:
    return memory_bytes(sizing.n, sizing.rank, sizing.block_size, sizing.itemsize)


#: Tensors of a Krylov state that live on the compute device (the rest stays on the CPU).
_DEVICE_FIELDS = ("projected", "pending", "coupling")


def krylov_state_to_device(state: KrylovState, device: torch.device | str) -> KrylovState:
    """A loaded Krylov state with its device tensors on ``device``.

    Its basis panels, projected matrix, pending block and coupling move; the generator state
    stays on the CPU.
    """
    moved: dict[str, Any] = {name: getattr(state, name).to(device) for name in _DEVICE_FIELDS
                             if isinstance(getattr(state, name, None), torch.Tensor)}
    moved["panels"] = [p.to(device) for p in state.panels]
    return dataclasses.replace(state, **moved)


def krylov_result(kr: KrylovRank, request: RankRequest, *, method: str, scale: float,
                  matvecs: int) -> RankResult:
    """The :class:`RankResult` of a Krylov count: certified, or a bound with its reason."""
    op, notes = request.op, request.notes
    ritz = kr.ritz_values.tolist()
    gap = find_gap(ritz, floor=10 * noise_floor(scale, op.dtype, kr.noise_floor))
    if not kr.certified:
        notes.append(f"not certified within {matvecs} products: rank {kr.rank} is a certified "
                     f"lower bound; upper bound {kr.rank_high}")
    if gap is None:
        notes.append("no spectral gap (ratio >= 1e3) among the Ritz values above 10x the "
                     "noise floor: the rank depends on the threshold; read rank_curve")
    return RankResult(
        rank=kr.rank, n=op.size, kind=request.kind, method=method, tol=kr.tol, scale=scale,
        matvecs=matvecs, seconds=time.perf_counter() - request.start, certified=kr.certified,
        rank_low=kr.rank_low, rank_high=kr.rank_high,
        guarantee="certified" if kr.certified else "bound",
        eigenvalues=tuple(ritz), inertia=kr.inertia, noise_floor=kr.noise_floor,
        rank_curve=rank_curve(ritz, scale), gap=gap, notes=tuple(notes), dtype=str(op.dtype),
        device=str(op.device),
        extra={"error_bound": kr.error_bound, "residual_norm": kr.residual_norm,
               "basis_size": kr.basis_size, **request.extra},
    )


def run_krylov(request: RankRequest, *, method: str, block_size: int) -> RankResult:
    """Count with :func:`krylov_rank` at ``block_size`` (the sketch's and Lanczos's run).

    When the memory plan caps the basis below n and no budget is given, the budget stops
    the basis at the cap (beyond it the answer is a certified bound).
    """
    op, plan = request.op, request.plan
    n, max_matvecs = op.size, request.max_matvecs
    if max_matvecs is None and plan.max_rank is not None and plan.max_rank < n:
        max_matvecs = plan.max_rank + (request.certificate_steps or certificate_steps_for(n))
        request.notes.insert(0, f"memory plan caps the Krylov basis at {plan.max_rank} vectors")
    threshold = probe_and_threshold(request)
    overhead = op.matvecs + threshold.scale_matvecs
    matmat, n_local, reduce, shard = op.matmat, n, None, None
    if request.shard_basis and torch.distributed.is_available() \
            and torch.distributed.is_initialized():
        from scalable_hrank.distributed import ShardedMatMat, sharded_reduce

        matmat = ShardedMatMat(op.matmat, n)
        n_local, reduce, shard = matmat.n_local, sharded_reduce(), (matmat.offset, n)
        request.extra["sharded_basis"] = {"offset": matmat.offset, "rows": n_local}
    kr = krylov_rank(matmat, n_local, tol=threshold.tol,
                     rtol=None if threshold.tol is not None else threshold.rtol,
                     block_size=block_size, max_matvecs=max_matvecs,
                     certificate_steps=request.certificate_steps,
                     generator=request.generator, dtype=op.dtype, device=op.device,
                     reduce=reduce, state=request.resume_state, on_block=request.on_block,
                     shard=shard)
    scale = threshold.scale if threshold.scale is not None else kr.sigma_max_estimate
    request.extra["block_size"] = block_size
    res = krylov_result(kr, request, method=method, scale=scale,
                        matvecs=overhead + kr.num_matvecs)
    return check_noise_floor(res, op.dtype)


def _run(request: RankRequest) -> RankResult:
    return run_krylov(request, method="sketch", block_size=request.block_size)


SKETCH = register_estimator(Estimator(
    name="sketch", run=_run, storage_bytes=_storage, configurations=halved_blocks,
    holds_basis=True,
    expected_products=lambda s: expected_products(s.n, s.rank, s.block_size),
    max_products=max_products, resume_state=KrylovState,
    state_to_device=krylov_state_to_device,
))
