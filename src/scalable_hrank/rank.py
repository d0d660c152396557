"""Rank estimation entry points: :func:`estimate_rank` and :func:`eigenvalues`.

:func:`estimate_rank` builds the curvature operator, asks the memory planner for a plan (which
resolves ``method="auto"``), and hands a :class:`~scalable_hrank.estimators.RankRequest` to the
chosen estimator of the registry (:mod:`scalable_hrank.estimators`: "exact", "sketch",
"lanczos", "density", and any registered since), which returns the :class:`RankResult`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from scalable_hrank._validation import check_choice, check_positive_int
from scalable_hrank.device_memory import format_bytes
from scalable_hrank.errors import NotConvergedError
from scalable_hrank.estimators import (
    AUTO_EXACT_MAX_N,
    SCALE_MATVECS,
    RankRequest,
    estimator,
    method_names,
    resume_entry,
    spectral_scale,
)
from scalable_hrank.estimators.density import (
    DEFAULT_DEFLATE,
    DEFAULT_DENSITY_MATVECS,
    DEFAULT_PROBES,
)
from scalable_hrank.exact import model_copy
from scalable_hrank.linalg.eigen import eigenpairs
from scalable_hrank.operators import CurvatureOperator
from scalable_hrank.operators.losses import LossFn
from scalable_hrank.planner import METHODS, plan
from scalable_hrank.result import RankResult
from scalable_hrank.threshold import check_thresholds


def _cast_model(model: nn.Module, dtype: torch.dtype | None,
                params: Any) -> tuple[nn.Module, Any]:
    if dtype is None or all(p.dtype == dtype for p in model.parameters()):
        return model, params
    return model_copy(model, dtype, params)


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
        kind: "loss" (H_L), "outer" (H_O), "functional" (H_F) or a registered kind
            (:func:`scalable_hrank.operators.kinds.register_kind`).
        method: "sketch" (block Krylov, certified), "lanczos" (block size 1), "density"
            (spectral-density count with an interval), "exact" (dense), "auto" (a policy
            over these, :mod:`scalable_hrank.estimators.auto`), or a registered method
            (:func:`scalable_hrank.estimators.register_estimator`).
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
        resume_state: A state saved from ``on_block`` to resume from (same result). With
            ``method="auto"`` the run goes on with the method that saved it, whatever the
            memory budget would choose now.
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
    check_choice("method", method, method_names())
    check_positive_int("block_size", block_size)
    check_positive_int("max_matvecs", max_matvecs, allow_none=True)
    rtol, atol = check_thresholds(rtol, atol)
    model_c, params_c = _cast_model(model, dtype, params)
    op = CurvatureOperator(model_c, loss, data, kind, params=params_c, cache=cache)
    first = op.first_batch()
    options = dict(density or {})
    notes: list[str] = []
    resumed = resume_entry(resume_state) if method == "auto" else None
    if resumed is not None:
        # a resumed run goes on with the method that saved the state, whatever the memory now
        method = resumed.name
        block_size = getattr(resume_state, "block_size", block_size)
        notes.append(f"auto: resuming the saved {method} state")
    chosen = plan(model_c, op.size, (first.inputs, first.targets), method, dtype=op.dtype,
                  device=op.device, memory_bytes=memory_bytes, block_size=block_size,
                  exact_max_n=AUTO_EXACT_MAX_N,
                  probes=options.get("num_probes", DEFAULT_PROBES),
                  deflation=options.get("num_deflate", DEFAULT_DEFLATE),
                  density_matvecs=max_matvecs or DEFAULT_DENSITY_MATVECS,
                  )  # raises PlanError (numbers, fixes) if no fit
    if method == "auto":
        method = chosen.method
        block_size = chosen.block_size  # the width the plan fitted
        notes.append(f"auto chose {method} (block {chosen.block_size}): needs "
                     f"{format_bytes(chosen.total_bytes)} of {format_bytes(chosen.available_bytes)}"
                     + (f"; basis holds ranks up to {chosen.max_rank}" if chosen.max_rank else ""))
    request = RankRequest(
        model=model, loss=loss, data=data, params=params, op=op, model_cast=model_c,
        params_cast=params_c, kind=op.kind, rtol=rtol, atol=atol, seed=seed,
        generator=torch.Generator().manual_seed(seed), max_matvecs=max_matvecs,
        block_size=block_size, certificate_steps=certificate_steps, memory_bytes=memory_bytes,
        cache=cache, on_block=on_block, resume_state=resume_state, options=options,
        shard_basis=shard_basis, plan=chosen, notes=notes,
        extra={"plan": chosen.to_dict()}, start=start)
    return estimator(method).run(request)


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


__all__ = ["METHODS", "SCALE_MATVECS", "EigenResult", "eigenvalues", "estimate_rank",
           "spectral_scale"]
