"""The "density" estimator: a deflated SLQ count with an interval (:mod:`scalable_hrank.density`).

Memory: the larger of the deflation phase (its block Lanczos basis of
:func:`deflation_basis` columns, held in panels, plus three blocks and the kept eigenvectors)
and the SLQ phase (the kept eigenvectors plus :data:`SLQ_VECTORS_PER_PROBE` per probe), and on
the CPU the quadrature's ``8 depth^2`` bytes (:func:`density_vectors`, :func:`_storage`).
Products: probes x Lanczos depth, set by the budget (``max_matvecs``), not by the rank.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator

from scalable_hrank.density import (
    DEFAULT_DEFLATE,
    DEFAULT_DENSITY_MATVECS,
    DEFAULT_PROBES,
    bound_from_parts,
    density_rank,
)
from scalable_hrank.estimators.common import (
    check_noise_floor,
    probe_and_threshold,
    spectral_scale,
    with_changes,
)
from scalable_hrank.estimators.registry import Estimator, RankRequest, Sizing, register_estimator
from scalable_hrank.linalg import SLQState
from scalable_hrank.linalg.decomp import VECTORS_PER_RUN
from scalable_hrank.linalg.slq import MAX_DEPTH
from scalable_hrank.operators import kind_spec
from scalable_hrank.result import RankResult

#: Length-n vectors per SLQ probe at the peak of a lock-step Lanczos step (the engine's
#: count; 3.1 per probe measured besides the operator's own).
SLQ_VECTORS_PER_PROBE = VECTORS_PER_RUN
#: Block width of the deflation's block Lanczos.
DEFLATION_BLOCK = 8


def deflation_basis(n: int, deflation: int) -> int:
    """Columns the deflation's block Lanczos holds at most: ``min(n, 8 d + 64)``."""
    return min(n, 8 * deflation + 64) if deflation > 0 else 0


def density_vectors(n: int, probes: int, deflation: int) -> int:
    """Length-n vectors at the peak of a density count.

    The deflation phase holds its basis in panels (at most ``1.25 m + 16`` allocated for
    ``m = deflation_basis(n, d)``: no panel is copied to grow), three blocks of
    :data:`DEFLATION_BLOCK` and the d kept vectors; the SLQ phase the d vectors and
    :data:`SLQ_VECTORS_PER_PROBE` per probe.
    """
    defl = deflation_basis(n, deflation)
    phase1 = math.ceil(1.25 * defl) + 16 + 3 * DEFLATION_BLOCK + deflation if defl else 0
    return max(phase1, deflation + SLQ_VECTORS_PER_PROBE * probes)


def quadrature_depth(budget: int, probes: int) -> int:
    """Lanczos depth per probe that a product budget allows (at most ``MAX_DEPTH``)."""
    return min(MAX_DEPTH, max(2, budget // probes))


def _storage(sizing: Sizing) -> int:
    # the quadrature's tridiagonal eigenvectors live in host memory
    depth = quadrature_depth(sizing.max_matvecs, sizing.probes) \
        if sizing.device_type == "cpu" else 0
    return (density_vectors(sizing.n, sizing.probes, sizing.deflation) * sizing.n
            * sizing.itemsize + 8 * depth * depth)


def _configurations(sizing: Sizing) -> Iterator[Sizing]:
    """Deflation d (capped at n // 10), then d / 2, d / 4 and none (each with a note)."""
    d = min(sizing.deflation, sizing.n // 10)
    base = sizing.but(block_size=min(sizing.block_size, sizing.probes))
    for dd in sorted({d, d // 2, d // 4, 0}, reverse=True):
        note = f"deflation lowered from {d} to {dd} eigenpairs to fit" if dd < d else None
        yield base.but(deflation=dd, note=note)


def _parts_note(kind: str) -> str:
    spec = kind_spec(kind)
    parts = " + ".join(f"rank({kind_spec(p).symbol})" for p in spec.parts)
    return ("for an upper bound too, count the parts: density={'bound_from_parts': True} "
            f"(CLI --parts-bound) bounds rank({spec.symbol}) by {parts}")


def _run(request: RankRequest) -> RankResult:
    op, plan = request.op, request.plan
    opts = dict(request.options)
    if plan.deflation is not None and "num_deflate" not in opts:
        opts["num_deflate"] = plan.deflation
    threshold = probe_and_threshold(request)
    tol, scale = threshold.tol, threshold.scale
    if tol is None:
        scale = spectral_scale(op, request.generator)
        tol = (threshold.rtol or 0.0) * scale
    parts = opts.pop("bound_from_parts", False)
    res = density_rank(op, tau=tol, psd=op.spec.is_psd(op.builtin_loss),
                       generator=request.generator, max_matvecs=request.max_matvecs,
                       on_block=request.on_block, resume_state=request.resume_state, **opts)
    matvecs = op.matvecs + threshold.scale_matvecs
    if op.spec.parts and not res.extra["feasible"]:
        if parts:
            part_ops = [request.operator(part) for part in op.spec.parts]
            res = bound_from_parts(res, part_ops, seed=request.seed,
                                   max_matvecs=request.max_matvecs, **opts)
            matvecs += sum(part_op.matvecs for part_op in part_ops)
        else:
            res = with_changes(res, notes=(*res.notes, _parts_note(op.kind)))
    res = with_changes(res, matvecs=matvecs, scale=scale,
                       seconds=time.perf_counter() - request.start,
                       notes=tuple(request.notes) + res.notes,
                       extra={**res.extra, **request.extra})
    return check_noise_floor(res, op.dtype)


DENSITY = register_estimator(Estimator(
    name="density", run=_run, storage_bytes=_storage,
    product_width=lambda s: max(s.probes, DEFLATION_BLOCK), configurations=_configurations,
    resume_state=SLQState,
))

__all__ = ["DEFAULT_DEFLATE", "DEFAULT_DENSITY_MATVECS", "DEFAULT_PROBES", "DENSITY",
           "DEFLATION_BLOCK", "SLQ_VECTORS_PER_PROBE", "deflation_basis", "density_vectors",
           "quadrature_depth"]
