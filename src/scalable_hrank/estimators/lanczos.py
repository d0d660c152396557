"""The "lanczos" estimator: the certified Krylov count with blocks of one column.

Same certificate, basis and resume state as the sketch (:mod:`.sketch`); one product per
step, so no block is ever wider than the rank needs, at the price of a product call per
column. Cost: :func:`.sketch.expected_products` with ``block_size = 1``.
"""

from __future__ import annotations

from scalable_hrank.estimators.registry import Estimator, RankRequest, Sizing, register_estimator
from scalable_hrank.estimators.sketch import (
    expected_products,
    krylov_state_to_device,
    max_products,
    run_krylov,
)
from scalable_hrank.linalg import KrylovState
from scalable_hrank.linalg.krylov_rank import memory_bytes
from scalable_hrank.result import RankResult


def _run(request: RankRequest) -> RankResult:
    return run_krylov(request, method="lanczos", block_size=1)


def _storage(sizing: Sizing) -> int:
    return memory_bytes(sizing.n, sizing.rank, 1, sizing.itemsize)


LANCZOS = register_estimator(Estimator(
    name="lanczos", run=_run, storage_bytes=_storage, product_width=lambda s: 1,
    configurations=lambda s: iter((s.but(block_size=1),)), holds_basis=True,
    expected_products=lambda s: expected_products(s.n, s.rank, 1),
    max_products=max_products, resume_state=KrylovState,
    state_to_device=krylov_state_to_device,
))
