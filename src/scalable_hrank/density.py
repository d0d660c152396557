"""Rank by spectral density: deflate the top outliers, then count the rest by SLQ.

For ranks too large to hold a Krylov basis of (rank x P) numbers. Memory: the deflation
block (``num_deflate`` vectors) plus 3 vectors per probe, independent of the depth.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from scalable_hrank.errors import NotConvergedError
from scalable_hrank.linalg import DensityRank, SLQState, eigenpairs, slq_rank
from scalable_hrank.operators import CurvatureOperator
from scalable_hrank.result import RankResult

#: Default budget of the SLQ stage (products), probes and deflated eigenpairs.
DEFAULT_DENSITY_MATVECS = 16000
DEFAULT_PROBES = 8
DEFAULT_DEFLATE = 32


def _deflation(op: CurvatureOperator, k: int, generator: torch.Generator,
               ) -> tuple[tuple[torch.Tensor, torch.Tensor] | None, int]:
    """Top-|lambda| Ritz pairs (Q (P, k), theta (k,)) to deflate, and the products spent."""
    if k == 0:
        return None, 0
    try:
        pairs = eigenpairs(op.matmat, op.size, k, which="LM", tol=1e-4,
                           max_matvecs=min(op.size, 8 * k + 64), generator=generator,
                           dtype=op.dtype, device=op.device)
    except NotConvergedError as exc:  # loose pairs still deflate most of the spread
        pairs = exc.partial
    return (pairs.vectors, pairs.values), pairs.num_matvecs


def density_rank(op: CurvatureOperator, *, tau: float, psd: bool, generator: torch.Generator,
                 max_matvecs: int | None = None, num_probes: int = DEFAULT_PROBES,
                 num_deflate: int = DEFAULT_DEFLATE, confidence: float = 0.95,
                 on_block: Callable[[SLQState], None] | None = None,
                 resume_state: SLQState | None = None) -> RankResult:
    """Count eigenvalues with |lambda| > tau of ``op`` by deflated SLQ.

    Args:
        op: The curvature operator.
        tau: Absolute threshold (> 0).
        psd: True for H_O with a convex loss (SLQ then needs about sqrt(kappa) steps).
        generator: CPU generator for deflation start block and probes.
        max_matvecs: Budget of the SLQ stage (default ``DEFAULT_DENSITY_MATVECS``).
        num_probes: Rademacher probes (relative sd about sqrt(2 / (probes * rank))).
        num_deflate: Top-|lambda| eigenpairs removed first (shrinks lambda_max / gap).
        confidence: Level of the probe part of [rank_low, rank_high].
        on_block: Called with the SLQ state every few Lanczos steps (checkpointing).
        resume_state: An SLQ state saved from ``on_block``: the run continues from it (the
            deflation is recomputed, deterministically from the same seed).

    Returns:
        RankResult with method "density", certified False, ``rank_low``/``rank_high`` at
        ``confidence``. When SLQ does not converge within the budget the result says so
        (``extra["feasible"] = False``, ``extra["matvecs_needed"]``): ``rank`` is then only
        the deflated count, a lower bound, and ``rank_high`` is P: no number is guessed.
    """
    k = min(num_deflate, max(op.size // 10, 0))
    deflation, spent = _deflation(op, k, generator)
    budget = max_matvecs if max_matvecs is not None else DEFAULT_DENSITY_MATVECS
    dr: DensityRank = slq_rank(op.matmat, op.size, tau=tau, generator=generator,
                               num_probes=num_probes, max_matvecs=budget,
                               max_steps=max(2, budget // num_probes), psd=psd,
                               deflation=deflation, confidence=confidence, dtype=op.dtype,
                               device=op.device, state=resume_state, on_step=on_block)
    notes = list(dr.notes)
    extra = {
        "estimate": dr.estimate, "probe_std": dr.probe_std,
        "resolution_bias": dr.resolution_bias, "num_steps": dr.num_steps,
        "num_probes": dr.num_probes, "converged": dr.converged, "feasible": dr.converged,
        "steps_needed": dr.steps_needed, "matvecs_needed": dr.matvecs_needed + spent,
        "kappa": dr.kappa, "lambda_max_deflated": dr.lambda_max, "delta": dr.delta,
        "num_deflated": dr.num_deflated, "deflated_count": dr.deflated_count,
        "deflation_matvecs": spent, "psd": psd,
        "nodes": dr.nodes.tolist(), "weights": dr.weights.tolist(),
    }
    if dr.converged:
        rank, low, high = dr.rank, dr.rank_low, dr.rank_high
    else:
        notes.append(
            f"infeasible within the budget: the spread kappa = {dr.kappa:.3g} needs about "
            f"{dr.steps_needed} steps x {dr.num_probes} probes = {dr.matvecs_needed} products "
            f"(ran {dr.num_steps} steps); raise max_matvecs, deflate more, or raise the "
            "threshold. Only the deflated count is a known lower bound.")
        rank, low, high = dr.deflated_count, dr.deflated_count, op.size
    mags = []
    if deflation is not None:
        mags = deflation[1].abs().tolist()
    return RankResult(
        rank=rank, n=op.size, kind=op.kind, method="density", tol=tau, scale=dr.lambda_max,
        matvecs=spent + dr.num_matvecs, seconds=0.0, certified=False, rank_low=low,
        rank_high=high, confidence=confidence if dr.converged else 1.0,
        eigenvalues=tuple(sorted(mags, reverse=True)) or None, gap=dr.gap, notes=tuple(notes),
        dtype=str(op.dtype), device=str(op.device), extra=extra,
    )
