"""Rank estimators: turn a curvature operator and a solver into a :class:`RankResult`.

Strategies: "exact" (dense float64, :mod:`scalable_hrank.exact`), "sketch" (adaptive
randomized block Krylov with a residual certificate), "lanczos" (the same with block size 1),
"density" (stochastic Lanczos quadrature count with a confidence interval), and "auto", which
picks by size and memory and says why.
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from scalable_hrank._validation import check_choice, check_positive_int
from scalable_hrank.density import (
    DEFAULT_DEFLATE,
    DEFAULT_DENSITY_MATVECS,
    DEFAULT_PROBES,
    bound_from_parts,
    density_rank,
)
from scalable_hrank.errors import NotConvergedError, NumericalWarning
from scalable_hrank.exact import DEFAULT_DENSE_MEMORY, exact_rank, model_copy
from scalable_hrank.linalg.eigen import eigenpairs, spectral_norm
from scalable_hrank.linalg.krylov_rank import KrylovRank, certificate_steps_for, krylov_rank
from scalable_hrank.operators import CurvatureOperator
from scalable_hrank.operators.losses import LossFn
from scalable_hrank.planner import format_bytes, plan
from scalable_hrank.result import RankResult, find_gap, rank_curve
from scalable_hrank.threshold import (
    check_thresholds,
    default_rtol,
    noise_floor,
    noise_limited,
    noise_note,
)

METHODS = ("auto", "exact", "sketch", "lanczos", "density")
#: Largest P for which method "auto" picks the dense reference.
AUTO_EXACT_MAX_N = 3000

#: Products spent on the spectral norm of H_L when another kind needs it as the scale.
SCALE_MATVECS = 10


def _cast_model(model: nn.Module, dtype: torch.dtype | None,
                params: Any) -> tuple[nn.Module, Any]:
    if dtype is None or all(p.dtype == dtype for p in model.parameters()):
        return model, params
    return model_copy(model, dtype, params)


def spectral_scale(op: CurvatureOperator, generator: torch.Generator,
                   num_matvecs: int = SCALE_MATVECS) -> float:
    """Estimate ||op|| (Lanczos: largest |Ritz value| plus its residual, an upper estimate).

    Cost: ``num_matvecs`` products (fewer if Lanczos finds an invariant subspace).
    """
    norm = spectral_norm(op.matmat, op.size, num_matvecs=min(num_matvecs, op.size),
                         generator=generator, dtype=op.dtype, device=op.device)
    return float(norm.upper_bound)


def _krylov_result(kr: KrylovRank, *, kind: str, method: str, n: int, scale: float,
                   matvecs: int, seconds: float, notes: list[str], dtype: torch.dtype,
                   device: torch.device, extra: dict[str, Any]) -> RankResult:
    ritz = kr.ritz_values.tolist()
    gap = find_gap(ritz, floor=10 * noise_floor(scale, dtype, kr.noise_floor))
    if not kr.certified:
        notes.append(f"not certified within {matvecs} products: rank {kr.rank} is a certified "
                     f"lower bound; upper bound {kr.rank_high}")
    if gap is None:
        notes.append("no spectral gap (ratio >= 1e3) among the Ritz values above 10x the "
                     "noise floor: the rank depends on the threshold; read rank_curve")
    return RankResult(
        rank=kr.rank, n=n, kind=kind, method=method, tol=kr.tol, scale=scale, matvecs=matvecs,
        seconds=seconds, certified=kr.certified, rank_low=kr.rank_low, rank_high=kr.rank_high,
        guarantee="certified" if kr.certified else "bound",
        eigenvalues=tuple(ritz), inertia=kr.inertia, noise_floor=kr.noise_floor,
        rank_curve=rank_curve(ritz, scale), gap=gap, notes=tuple(notes), dtype=str(dtype),
        device=str(device),
        extra={"error_bound": kr.error_bound, "residual_norm": kr.residual_norm,
               "basis_size": kr.basis_size, **extra},
    )


def estimate_rank(model: nn.Module, loss: str | LossFn, data: Any, kind: str = "loss", *,
                  method: str = "auto",
                  params: None | Sequence[str] | Sequence[nn.Parameter] = None,
                  rtol: float | None = None, atol: float | None = None, seed: int = 0,
                  max_matvecs: int | None = None, dtype: torch.dtype | None = torch.float64,
                  block_size: int = 8, certificate_steps: int | None = None,
                  memory_bytes: int | None = None, cache: bool = True,
                  on_block: Callable[[Any], None] | None = None,
                  resume_state: Any = None,
                  density: dict[str, Any] | None = None,
                  shard_basis: bool = False) -> RankResult:
    """Numerical rank of H_L, H_O or H_F without forming the matrix.

    Args:
        model: The network. Copied to ``dtype`` when its parameters have another dtype.
        loss: "mse", "cross_entropy", "logcosh" or a callable ``loss(outputs, targets)``.
        data: An (inputs, targets) pair or an iterable of pairs (a DataLoader).
        kind: "loss" (H_L), "outer" (H_O) or "functional" (H_F).
        method: "sketch" (block Krylov, certified), "lanczos" (block size 1), "density"
            (spectral-density count with an interval), "exact" (dense), or "auto".
        params: None (all trainable), name globs, or the model's parameter objects.
        rtol: Threshold relative to sigma_max(H_L); default min(max(P, 10) eps, sqrt(eps)) of
            ``dtype`` (:func:`scalable_hrank.threshold.default_rtol`).
        atol: Absolute threshold; with ``rtol`` the larger applies.
        seed: Seeds the CPU generator behind every random vector (same on every process).
        max_matvecs: Product budget of the solver (default P + certificate).
        dtype: Product dtype; float64 by default (rank decisions). None keeps the model's.
        block_size: Krylov block width for "sketch".
        certificate_steps: Lanczos steps of the residual certificate (default: enough for a
            failure probability <= 1e-10, about 27-35).
        memory_bytes: Memory budget checked by :func:`scalable_hrank.planner.plan` before
            solving (default: the device's free memory); "auto" picks exact, sketch or
            density and the block size from it.
        cache: Keep per-batch graphs across products (see ``CurvatureOperator``).
        on_block: Called with the solver state after every Krylov block, or every few SLQ
            steps for "density" (checkpointing: save ``state.snapshot()``).
        resume_state: A state saved from ``on_block`` to resume from (same result).
        density: Options of the "density" method (``num_probes``, ``num_deflate``,
            ``confidence``, ``output_space``; see :func:`scalable_hrank.density.density_rank`),
            and ``bound_from_parts``: when the H_L count is infeasible, also count H_O and
            H_F at ``tau / 2`` (each with the same budget) for the upper bound
            ``rank(H_L) <= rank(H_O) + rank(H_F)``
            (:func:`scalable_hrank.density.bound_from_parts`).
        shard_basis: Under torch.distributed, each process keeps only its slice of every
            Krylov basis vector (memory per process falls with the number of processes;
            one all-gather per product). Same result as the replicated basis.

    Returns:
        A :class:`RankResult`. ``matvecs`` counts every product: 3 for the symmetry probe,
        ``SCALE_MATVECS`` for the H_L scale (kinds "outer"/"functional" without ``atol``),
        and the solver's.

    Raises:
        ValueError: Bad method/threshold/budget, a non-symmetric or non-deterministic
            operator (symmetry probe), and every error of ``CurvatureOperator``.
    """
    start = time.perf_counter()
    check_choice("method", method, METHODS)
    check_positive_int("block_size", block_size)
    check_positive_int("max_matvecs", max_matvecs, allow_none=True)
    rtol, atol = check_thresholds(rtol, atol)
    model_c, params_c = _cast_model(model, dtype, params)
    op = CurvatureOperator(model_c, loss, data, kind, params=params_c, cache=cache)
    n = op.size
    notes: list[str] = []
    extra: dict[str, Any] = {}
    first = next(iter(op._batches))  # noqa: SLF001 - the batch the planner measures
    dopts = density or {}
    chosen = plan(model_c, n, (first.inputs, first.targets), method, dtype=op.dtype,
                  device=op.device, memory_bytes=memory_bytes, block_size=block_size,
                  exact_max_n=AUTO_EXACT_MAX_N,
                  probes=dopts.get("num_probes", DEFAULT_PROBES),
                  deflation=dopts.get("num_deflate", DEFAULT_DEFLATE),
                  density_matvecs=max_matvecs or DEFAULT_DENSITY_MATVECS,
                  )  # raises PlanError (numbers, fixes) if no fit
    extra["plan"] = chosen.to_dict()
    if (max_matvecs is None and chosen.max_rank is not None and chosen.max_rank < n
            and chosen.method in ("sketch", "lanczos")):
        # the basis must stay within the plan: beyond it the answer is a certified bound
        max_matvecs = chosen.max_rank + (certificate_steps or certificate_steps_for(n))
        notes.append(f"memory plan caps the Krylov basis at {chosen.max_rank} vectors")
    if method == "auto":
        method = chosen.method
        block_size = chosen.block_size if method == "sketch" else block_size
        notes.append(f"auto chose {method} (block {chosen.block_size}): needs "
                     f"{format_bytes(chosen.total_bytes)} of {format_bytes(chosen.available_bytes)}"
                     + (f"; basis holds ranks up to {chosen.max_rank}" if chosen.max_rank else ""))
    if method == "exact":
        res = exact_rank(model, loss, data, kind, params=params, rtol=rtol, atol=atol,
                         max_memory_bytes=max(DEFAULT_DENSE_MEMORY, memory_bytes or 0))
        return _with(res, notes=tuple(notes) + res.notes,
                     seconds=time.perf_counter() - start, extra={**res.extra, **extra})
    generator = torch.Generator().manual_seed(seed)
    asym = op.check_symmetry(generator)
    extra["symmetry_probe"] = asym
    rtol_eff = default_rtol(n, op.dtype) if rtol is None and atol is None else rtol
    scale_matvecs = 0
    if kind == "loss" and atol is None:
        tol, scale = None, None
    else:
        if kind == "loss":
            scale = spectral_scale(op, generator)
        else:
            op_loss = CurvatureOperator(model_c, loss, data, "loss", params=params_c,
                                        cache=cache)
            scale = spectral_scale(op_loss, generator)
            scale_matvecs = op_loss.matvecs
        tol = max(atol or 0.0, (rtol_eff or 0.0) * scale)
    if method == "density":
        if chosen.deflation is not None and "num_deflate" not in dopts:
            density = {**dopts, "num_deflate": chosen.deflation}
        if tol is None:
            scale = spectral_scale(op, generator)
            tol = (rtol_eff or 0.0) * scale
        opts = dict(density or {})
        parts = opts.pop("bound_from_parts", False)
        res = density_rank(op, tau=tol, psd=kind == "outer" and isinstance(loss, str),
                           generator=generator, max_matvecs=max_matvecs, on_block=on_block,
                           resume_state=resume_state, **opts)
        matvecs = op.matvecs + scale_matvecs
        if kind == "loss" and not res.extra["feasible"]:
            if parts:
                part_ops = [CurvatureOperator(model_c, loss, data, part, params=params_c,
                                              cache=cache)
                            for part in ("outer", "functional")]
                res = bound_from_parts(res, part_ops, seed=seed, max_matvecs=max_matvecs,
                                       convex=isinstance(loss, str), **opts)
                matvecs += sum(part_op.matvecs for part_op in part_ops)
            else:
                res = _with(res, notes=(*res.notes, (
                    "for an upper bound too, count the parts: density={'bound_from_parts': "
                    "True} (CLI --parts-bound) bounds rank(H_L) by rank(H_O) + rank(H_F)")))
        res = _with(res, matvecs=matvecs, scale=scale,
                    seconds=time.perf_counter() - start, notes=tuple(notes) + res.notes,
                    extra={**res.extra, **extra})
        return _check_noise_floor(res, op.dtype)
    overhead = op.matvecs + scale_matvecs
    matmat, n_local, reduce, shard = op.matmat, n, None, None
    if shard_basis and torch.distributed.is_available() and torch.distributed.is_initialized():
        from scalable_hrank.distributed import ShardedMatMat, sharded_reduce

        matmat = ShardedMatMat(op.matmat, n)
        n_local, reduce, shard = matmat.n_local, sharded_reduce(), (matmat.offset, n)
        extra["sharded_basis"] = {"offset": matmat.offset, "rows": n_local}
    kr = krylov_rank(matmat, n_local, tol=tol, rtol=None if tol is not None else rtol_eff,
                     block_size=1 if method == "lanczos" else block_size,
                     max_matvecs=max_matvecs, certificate_steps=certificate_steps,
                     generator=generator, dtype=op.dtype, device=op.device, reduce=reduce,
                     state=resume_state, on_block=on_block, shard=shard)
    if scale is None:
        scale = kr.sigma_max_estimate
    extra["block_size"] = 1 if method == "lanczos" else block_size
    res = _krylov_result(kr, kind=kind, method=method, n=n, scale=scale,
                         matvecs=overhead + kr.num_matvecs,
                         seconds=time.perf_counter() - start, notes=notes, dtype=op.dtype,
                         device=op.device, extra=extra)
    return _check_noise_floor(res, op.dtype)


def _with(res: RankResult, **changes: Any) -> RankResult:
    return dataclasses.replace(res, **changes)


def _check_noise_floor(res: RankResult, dtype: torch.dtype) -> RankResult:
    """Mark a matrix-free count whose threshold sits at the product noise floor unreliable.

    The decision uses the round-off floor ``eps(dtype) * scale``; ``noise_floor`` records
    the larger of it and the error measured from the products' asymmetry (a noisy estimate
    at small n, so it informs but does not decide). Below ``NOISE_MARGIN`` times the floor,
    round-off can move eigenvalues across ``tol`` either way, so neither a certificate nor a
    bound holds: the result says so, with the fix, and a :class:`NumericalWarning` is raised.
    An exact dense output-space count is left as it is.
    """
    floor = noise_floor(res.scale, dtype)
    recorded = noise_floor(res.scale, dtype, res.noise_floor or 0.0)
    if res.guarantee == "exact" or res.extra.get("space") == "outputs-dense":
        return _with(res, noise_floor=recorded)
    if not noise_limited(res.tol, floor):
        return _with(res, noise_floor=recorded)
    note = noise_note(res.tol, floor, dtype)
    warnings.warn(f"{res.kind}: {note}", NumericalWarning, stacklevel=3)
    return _with(res, noise_floor=recorded, guarantee="unreliable", certified=False, rank_low=0,
                 rank_high=res.n, confidence=1.0, notes=(*res.notes, note))




@dataclass(frozen=True)
class EigenResult:
    """Extreme eigenvalues of a curvature matrix with residual certificates.

    Attributes:
        values: k eigenvalue estimates (float64), ordered by ``which``.
        residual_norms: ``||H v - theta v||`` of each pair; by Weyl/Bauer-Fike each true
            eigenvalue lies within that distance of ``theta`` (symmetric H).
        converged: All residuals <= ``tol * max|theta|``.
        which: "LA", "SA" or "LM".
        kind: Which matrix.
        n: Number of parameters P.
        matvecs: Products spent (symmetry probe included).
        seconds: Wall time.
    """

    values: tuple[float, ...]
    residual_norms: tuple[float, ...]
    converged: bool
    which: str
    kind: str
    n: int
    matvecs: int
    seconds: float


def eigenvalues(model: nn.Module, loss: str | LossFn, data: Any, kind: str = "loss",
                k: int = 6, which: str = "LA", *,
                params: None | Sequence[str] | Sequence[nn.Parameter] = None,
                tol: float = 1e-8, seed: int = 0, max_matvecs: int | None = None,
                dtype: torch.dtype | None = torch.float64, block_size: int = 8,
                cache: bool = True) -> EigenResult:
    """The k largest ("LA"), smallest ("SA") or largest-magnitude ("LM") eigenvalues.

    Block Lanczos with full reorthogonalization (:func:`scalable_hrank.linalg.eigenpairs`).

    Args:
        model: The network (copied to ``dtype`` if needed).
        loss: Loss name or callable.
        data: An (inputs, targets) pair or an iterable of pairs.
        kind: "loss", "outer" or "functional".
        k: Number of eigenvalues.
        which: "LA", "SA" or "LM".
        params: Parameter selection.
        tol: Relative residual target ``||Hv - theta v|| <= tol * max|theta|``.
        seed: Seeds the start block.
        max_matvecs: Budget (default P).
        dtype: Product dtype (float64 default; None keeps the model's).
        block_size: Block width.
        cache: Keep per-batch graphs across products.

    Returns:
        An :class:`EigenResult`.

    Raises:
        NotConvergedError: Budget exhausted; ``.partial`` holds the EigenResult so far.
        ValueError: Bad arguments, and every error of ``CurvatureOperator``.
    """
    start = time.perf_counter()
    check_choice("which", which, ("LA", "SA", "LM"))
    model_c, params_c = _cast_model(model, dtype, params)
    op = CurvatureOperator(model_c, loss, data, kind, params=params_c, cache=cache)
    check_positive_int("k", k, maximum=op.size)
    generator = torch.Generator().manual_seed(seed)
    op.check_symmetry(generator)

    def wrap(pairs: Any, converged: bool) -> EigenResult:
        return EigenResult(values=tuple(pairs.values.tolist()),
                           residual_norms=tuple(pairs.residual_norms.tolist()),
                           converged=converged, which=which, kind=kind, n=op.size,
                           matvecs=op.matvecs, seconds=time.perf_counter() - start)

    try:
        pairs = eigenpairs(op.matmat, op.size, k, which=which, tol=tol,
                           block_size=min(block_size, op.size), max_matvecs=max_matvecs,
                           generator=generator, dtype=op.dtype, device=op.device)
    except NotConvergedError as exc:
        msg = f"{exc}; the best pairs so far are in .partial"
        raise NotConvergedError(msg, partial=wrap(exc.partial, False)) from exc
    return wrap(pairs, pairs.converged)


__all__ = ["METHODS", "EigenResult", "eigenvalues", "estimate_rank"]
