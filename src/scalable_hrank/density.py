"""Rank by spectral density: deflate the top outliers, then count the rest by SLQ.

For ranks too large to hold a Krylov basis of (rank x P) numbers. Memory: the deflation
block (``num_deflate`` vectors) plus about 5 vectors per probe at the peak of a Lanczos step
(two kept, the product, the new vector, one for the operator), independent of the depth.

H_O with a built-in loss is counted in the output space when that is smaller (M = N x C
outputs < P; ``operators.gram``): its Gram matrix ``G`` (M x M) has H_O's non-zero
eigenvalues, so the count is the same, but the null space that makes SLQ wander shrinks
from ``P - r`` to ``M - r`` dimensions. Up to ``DENSE_OUTPUT_MAX`` outputs (and within the
budget) G is formed from M products and the count is exact, whatever P is.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import torch

from scalable_hrank.errors import NotConvergedError
from scalable_hrank.linalg import DensityRank, SLQState, deflation_shift, eigenpairs, slq_rank
from scalable_hrank.linalg.slq import MAX_DEPTH
from scalable_hrank.operators import CurvatureOperator
from scalable_hrank.operators.gram import OutputGramOperator, unavailable_reason
from scalable_hrank.result import RankResult, find_gap, rank_curve

#: Default budget of the SLQ stage (products), probes and deflated eigenpairs. 16 probes keep
#: the probe half-width within 5 % of a count of a few hundred on n in the low thousands
#: (relative sd about sqrt(2 / (probes * count))); the budget allows each 1375 steps (12
#: probes had 1333 of 16,000 products).
DEFAULT_DENSITY_MATVECS = 22000
DEFAULT_PROBES = 16
DEFAULT_DEFLATE = 32
#: Largest output dimension M for which H_O is counted from the dense M x M Gram matrix
#: (M products, 8 M^2 bytes: 134 MB at 4096).
DENSE_OUTPUT_MAX = 4096


class _Counted(Protocol):
    """What SLQ counts on: a square operator with ``matmat``, ``size``, dtype, device."""

    size: int
    dtype: torch.dtype
    device: torch.device

    def matmat(self, block: torch.Tensor) -> torch.Tensor: ...


def _deflation(op: _Counted, k: int, tau: float, generator: torch.Generator,
               ) -> tuple[tuple[torch.Tensor, torch.Tensor] | None, int]:
    """Top-|lambda| Ritz pairs (Q (P, k'), theta (k',)) to deflate, and the products spent.

    The pairs must be accurate enough not to move the count: deflating them shifts the
    eigenvalues near zero by at most ``linalg.deflation_shift`` of the pairs, held to
    ``tau / 4`` (a loose pair would lift null directions above a small tau and leave no gap
    there for SLQ to settle in). When the budget runs out first, only the largest-|theta|
    pairs that meet the bound together are kept (possibly none).
    """
    if k == 0:
        return None, 0
    shift_tol = tau / 4
    try:
        pairs = eigenpairs(op.matmat, op.size, k, which="LM", tol=1e-4, shift_tol=shift_tol,
                           max_matvecs=min(op.size, 8 * k + 64), generator=generator,
                           dtype=op.dtype, device=op.device)
    except NotConvergedError as exc:  # keep the pairs that are accurate enough
        pairs = exc.partial
    keep = 0
    while (keep < pairs.values.numel() and deflation_shift(
            pairs.values[:keep + 1], pairs.residual_norms[:keep + 1]) <= shift_tol):
        keep += 1
    if keep == 0:
        return None, pairs.num_matvecs
    return (pairs.vectors[:, :keep], pairs.values[:keep]), pairs.num_matvecs


def density_rank(op: CurvatureOperator, *, tau: float, psd: bool, generator: torch.Generator,
                 max_matvecs: int | None = None, num_probes: int = DEFAULT_PROBES,
                 num_deflate: int = DEFAULT_DEFLATE, confidence: float = 0.95,
                 on_block: Callable[[SLQState], None] | None = None,
                 resume_state: SLQState | None = None,
                 output_space: bool = True) -> RankResult:
    """Count eigenvalues with |lambda| > tau of ``op`` by deflated SLQ.

    H_O with a built-in loss is counted on its output-space Gram matrix when the data has
    fewer outputs M than parameters P (module docstring): exactly from the dense M x M
    matrix when ``M <= min(DENSE_OUTPUT_MAX, budget)``, else by SLQ on it.

    Args:
        op: The curvature operator.
        tau: Absolute threshold (> 0).
        psd: True for H_O with a convex loss (SLQ then needs about sqrt(kappa) steps).
        generator: CPU generator for deflation start block and probes.
        max_matvecs: Budget of the SLQ stage (default ``DEFAULT_DENSITY_MATVECS``).
        num_probes: Rademacher probes (relative sd about sqrt(2 / (probes * rank))).
        num_deflate: Top-|lambda| eigenpairs removed first (shrinks lambda_max / gap); only
            those accurate enough not to move the count at tau are kept (``_deflation``).
        confidence: Level of the probe part of [rank_low, rank_high].
        on_block: Called with the SLQ state every few Lanczos steps (checkpointing).
        resume_state: An SLQ state saved from ``on_block``: the run continues from it (the
            deflation is recomputed, deterministically from the same seed).
        output_space: Allow the output-space count of H_O (False: always SLQ on ``op``).

    Returns:
        RankResult with method "density". Converged: guarantee "estimate", ``rank`` the point
        estimate (midpoint of the two bracketing readings, ``extra["readings"]``) and
        ``[rank_low, rank_high]`` its interval at ``confidence``; the exact dense
        output-space count is "certified". When SLQ does not converge within the budget the
        result says so (guarantee "bound", ``extra["feasible"] = False``,
        ``extra["matvecs_needed"]``): ``rank`` and ``rank_low`` are then a lower bound
        (the count of the eigenvalues the depth reached resolves,
        ``extra["resolved_threshold"]``, at ``confidence``) and ``rank_high`` is P (M in the
        output space): no number is guessed. ``extra["space"]`` says where the count ran
        ("parameters", "outputs" or "outputs-dense"; the last is exact and certified).
    """
    budget = max_matvecs if max_matvecs is not None else DEFAULT_DENSITY_MATVECS
    counted: _Counted = op
    space_notes: list[str] = []
    if output_space and psd and unavailable_reason(op) is None:
        gram = OutputGramOperator(op)
        if gram.size < op.size:
            space_notes.append(
                f"H_O counted in the output space: its {gram.size} x {gram.size} Gram matrix "
                f"has the non-zero eigenvalues of the {op.size} x {op.size} H_O")
            if gram.size <= min(DENSE_OUTPUT_MAX, budget):
                return _dense_output_rank(op, gram, tau=tau, notes=space_notes)
            counted = gram
    k = min(num_deflate, max(counted.size // 10, 0))
    deflation, spent = _deflation(counted, k, tau, generator)
    dr: DensityRank = slq_rank(counted.matmat, counted.size, tau=tau, generator=generator,
                               num_probes=num_probes, max_matvecs=budget,
                               max_steps=max(2, budget // num_probes), psd=psd,
                               deflation=deflation, confidence=confidence,
                               dtype=counted.dtype, device=counted.device, state=resume_state,
                               on_step=on_block)
    notes = space_notes + list(dr.notes)
    extra = {
        "estimate": dr.estimate, "probe_std": dr.probe_std,
        "resolution_bias": dr.resolution_bias, "num_steps": dr.num_steps,
        "num_probes": dr.num_probes, "converged": dr.converged, "feasible": dr.converged,
        "steps_needed": dr.steps_needed, "matvecs_needed": dr.matvecs_needed + spent,
        "kappa": dr.kappa, "lambda_max_deflated": dr.lambda_max, "delta": dr.delta,
        "delta_below": dr.delta_below,
        "num_deflated": dr.num_deflated, "deflated_count": dr.deflated_count,
        "deflation_matvecs": spent, "psd": psd,
        "space": "outputs" if counted is not op else "parameters", "counted_size": counted.size,
        **_spectrum_of(op.size, counted.size, dr.nodes, dr.weights),
    }
    if dr.converged:
        rank, low, high, guarantee = dr.rank, dr.rank_low, dr.rank_high, "estimate"
        extra["readings"] = dr.readings
    else:
        guarantee = "bound"
        fixes = ("raise max_matvecs, deflate more, or raise the threshold"
                 if dr.steps_needed <= MAX_DEPTH else
                 f"that is beyond the depth cap ({MAX_DEPTH} steps): deflate more or raise "
                 "the threshold")
        notes.append(
            f"infeasible within the budget: the spread kappa = {dr.kappa:.3g} needs about "
            f"{dr.steps_needed} steps x {dr.num_probes} probes = {dr.matvecs_needed} products "
            f"(ran {dr.num_steps} steps); {fixes}.")
        # not converged, slq_rank always bounds the count from below (deflated count included)
        assert dr.lower_bound is not None and dr.bound_at is not None
        low = dr.lower_bound
        extra["resolved_threshold"] = dr.bound_at
        unresolved = (f"Eigenvalues between tau and {dr.bound_at:.3g} are not resolved"
                      if dr.bound_at > tau else
                      "Eigenvalues just below tau are not yet told from those above it")
        notes.append(
            f"bound: at {dr.num_steps} steps SLQ resolves |lambda| above about "
            f"{dr.bound_at:.3g} (tau = {tau:.3g}); counting those gives rank >= {low} "
            f"(lower end at {confidence:.0%}, with the 0.75 k vs k change). {unresolved}, "
            f"so the count at tau is not reported as the rank (it read "
            f"{dr.estimate:.1f}, unverified).")
        rank, high = low, counted.size
    mags = []
    if deflation is not None:
        mags = deflation[1].abs().tolist()
    return RankResult(
        rank=rank, n=op.size, kind=op.kind, method="density", tol=tau, scale=dr.lambda_max,
        matvecs=spent + dr.num_matvecs, seconds=0.0, certified=False, rank_low=low,
        rank_high=high, confidence=confidence, guarantee=guarantee,
        eigenvalues=tuple(sorted(mags, reverse=True)) or None, gap=dr.gap, notes=tuple(notes),
        dtype=str(op.dtype), device=str(op.device), extra=extra,
    )


def bound_from_parts(res: RankResult, parts: Sequence[CurvatureOperator], *, seed: int,
                     max_matvecs: int | None = None, **options: Any) -> RankResult:
    """Close an infeasible H_L count from above with its parts: H_L = H_O + H_F.

    Weyl's inequality for singular values, ``s_{i+j-1}(A + B) <= s_i(A) + s_j(B)``, gives
    ``rank_tau(H_L) <= rank_{tau/2}(H_O) + rank_{tau/2}(H_F)`` at every threshold tau. Each
    part is counted by :func:`density_rank` at ``tau / 2`` (H_O exactly in the output space
    when it is small, H_F by SLQ, whose zero is interior too but usually behind a gap).
    When both counts are feasible, ``rank_high`` becomes the sum of their upper ends;
    ``confidence`` is then that of all three one-sided ends holding together (union bound:
    ``1 - 3 (1 - c) / 2``). The result stays a "bound" (``rank == rank_low``);
    ``extra["midpoint"]`` is the middle of the two bounds, close to the rank when the ranges
    of H_O and H_F meet little (measured: docs/benchmarks.md).

    Args:
        res: An infeasible :func:`density_rank` result for H_L (``rank_low`` its lower bound).
        parts: The H_O and H_F operators of the same model, data and parameters.
        seed: Seeds each part's generator (``seed + 1`` and ``seed + 2``).
        max_matvecs: Budget of each part's count (default ``DEFAULT_DENSITY_MATVECS``).
        **options: ``num_probes``, ``num_deflate``, ``confidence``, ``output_space``.

    Returns:
        ``res`` with ``extra["parts_bound"]`` (each part's upper end, feasibility, products
        and where it was counted) and, when both parts are feasible, the closed interval.
        ``res.matvecs`` is unchanged (the operators count the parts' products).
    """
    tau, highs, info = res.tol, [], {}
    for i, op in enumerate(parts):
        part = density_rank(op, tau=tau / 2, psd=op.spec.is_psd(op.builtin_loss),
                            generator=torch.Generator().manual_seed(seed + 1 + i),
                            max_matvecs=max_matvecs, **options)
        feasible = bool(part.extra["feasible"])
        info[op.kind] = {"rank_high": part.rank_high, "estimate": part.extra["estimate"],
                         "feasible": feasible, "matvecs": part.matvecs,
                         "space": part.extra["space"]}
        highs.append(part.rank_high if feasible else None)
    extra = {**res.extra, "parts_bound": info}
    if None in highs:
        missing = [kind for kind, v in info.items() if not v["feasible"]]
        note = (f"no upper bound from the parts: the count of {', '.join(missing)} at tau / 2 "
                "is infeasible within the budget too")
        return dataclasses.replace(res, notes=(*res.notes, note), extra=extra)
    low = res.rank_low
    high = max(low, min(res.n, sum(highs)))
    mid = (low + high) / 2
    level = 1.0 - 1.5 * (1.0 - res.confidence)
    extra["midpoint"] = mid
    note = (f"upper bound from the parts at tau / 2: rank(H_L) <= {highs[0]} "
            f"({parts[0].kind}) + {highs[1]} ({parts[1].kind}) = {high} (Weyl); both bounds "
            f"hold together at {level:.1%}; their midpoint {mid:.0f} is within "
            f"+-{(high - low) / 2:.0f} ({(high - low) / 2 / max(mid, 1):.1%}) of the rank")
    return dataclasses.replace(res, rank=low, rank_high=high, confidence=level,
                               guarantee="bound", notes=(*res.notes, note), extra=extra)


def _dense_output_rank(op: CurvatureOperator, gram: OutputGramOperator, *, tau: float,
                       notes: list[str]) -> RankResult:
    """Exact count of H_O's eigenvalues above ``tau`` from the dense output Gram matrix.

    Cost: M products (one per output), an M x M float64 eigendecomposition.
    """
    before = gram.matvecs
    vals = torch.linalg.eigvalsh(gram.to_dense().double()).flip(0).cpu()
    mags = vals.abs()
    rank = int((mags > tau).sum())
    scale = float(mags.max()) if mags.numel() else 0.0
    m, n = gram.size, op.size
    notes = [*notes, f"exact: the dense Gram matrix from {m} products"]
    extra = {
        "space": "outputs-dense", "counted_size": m, "converged": True, "feasible": True,
        "estimate": float(rank), "psd": True,
        **_spectrum_of(n, m, vals.unsqueeze(0), torch.full((1, m), 1.0 / m,
                                                            dtype=torch.float64)),
    }
    return RankResult(
        rank=rank, n=n, kind=op.kind, method="density", tol=tau, scale=scale,
        matvecs=gram.matvecs - before, seconds=0.0, certified=True, rank_low=rank,
        rank_high=rank, eigenvalues=tuple(vals.tolist()),
        inertia=(int((vals > tau).sum()), int((vals < -tau).sum())),
        rank_curve=rank_curve(mags.tolist(), scale),
        gap=find_gap(mags.tolist(), floor=m * torch.finfo(torch.float64).eps * scale),
        notes=tuple(notes), dtype=str(op.dtype), device=str(op.device), extra=extra,
    )


def _spectrum_of(n: int, m: int, nodes: torch.Tensor, weights: torch.Tensor,
                 ) -> dict[str, list[list[float]]]:
    """Nodes and weights (rows summing to 1) of an n x n operator's spectrum, for plots.

    From an m x m operator with the same non-zero eigenvalues (m <= n): the weights are
    scaled by m / n and each row gains a node at zero holding the other n - m eigenvalues.
    """
    if m < n:
        rows = nodes.shape[0]
        nodes = torch.cat([nodes, torch.zeros(rows, 1, dtype=nodes.dtype)], dim=1)
        weights = torch.cat([weights * (m / n),
                             torch.full((rows, 1), (n - m) / n, dtype=weights.dtype)], dim=1)
    return {"nodes": nodes.tolist(), "weights": weights.tolist()}
