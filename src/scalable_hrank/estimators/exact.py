"""The "exact" estimator: the dense float64 reference (:func:`scalable_hrank.exact_rank`).

Cost: n products (another n for the scale kind's matrix when it differs) and
``DENSE_COPIES`` float64 n x n matrices of memory (:data:`scalable_hrank.exact.DENSE_COPIES`).
"""

from __future__ import annotations

import time

from scalable_hrank.estimators.common import with_changes
from scalable_hrank.estimators.registry import (
    Estimator,
    RankRequest,
    Sizing,
    halved_blocks,
    register_estimator,
)
from scalable_hrank.exact import DEFAULT_DENSE_MEMORY, DENSE_COPIES, exact_rank
from scalable_hrank.result import RankResult


def _run(request: RankRequest) -> RankResult:
    res = exact_rank(request.model, request.loss, request.data, request.kind,
                     params=request.params, rtol=request.rtol, atol=request.atol,
                     max_memory_bytes=max(DEFAULT_DENSE_MEMORY, request.memory_bytes or 0))
    return with_changes(res, notes=tuple(request.notes) + res.notes,
                        seconds=time.perf_counter() - request.start,
                        extra={**res.extra, **request.extra})


def _storage(sizing: Sizing) -> int:
    return DENSE_COPIES * 8 * sizing.n * sizing.n


EXACT = register_estimator(Estimator(
    name="exact", run=_run, storage_bytes=_storage, configurations=halved_blocks,
    expected_products=lambda s: s.n, max_products=lambda n, b: n,  # noqa: ARG005
))
