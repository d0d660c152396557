"""Exact numerical ranks from dense float64 curvature matrices (the reference for all else)."""

from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from scalable_hrank.operators import CurvatureOperator, kind_spec, parameter_space
from scalable_hrank.operators.losses import LossFn
from scalable_hrank.result import RankResult, find_gap, rank_curve
from scalable_hrank.threshold import check_thresholds, resolve_threshold

#: Default cap on the memory the dense eigendecomposition may take (bytes).
DEFAULT_DENSE_MEMORY = 4 * 2**30
#: n x n float64 matrices alive at the peak of the dense path per matrix (the matrix,
#: ``m - m.T``, ``m + m.T``, its half, and the eigensolver's copy).
DENSE_COPIES = 5


def _with_scale_kinds(kinds: Sequence[str]) -> list[str]:
    """``kinds`` and the kinds whose sigma_max scales their thresholds, without repeats."""
    return sorted({*kinds, *(kind_spec(k).scale_kind for k in kinds)})


def dense_memory_bytes(n: int, kinds: Sequence[str]) -> int:
    """Bytes for the dense path: ``DENSE_COPIES`` float64 n x n matrices per matrix.

    Those are the matrix, its transpose sums and the eigensolver's copy. The matrices are
    those of ``kinds`` plus their scale kinds (H_L for the built-in kinds), whose sigma_max
    is the threshold's scale.
    """
    return DENSE_COPIES * 8 * n * n * len(_with_scale_kinds(kinds))


def model_copy(model: nn.Module, dtype: torch.dtype,
               params: None | Sequence[str] | Sequence[nn.Parameter]) -> tuple[nn.Module, Any]:
    """Deep-copy ``model`` to ``dtype``; parameter objects in ``params`` become their names.

    Names, because the copy holds other parameter objects than the ones passed.
    """
    if params is not None and not isinstance(params, str) and all(
            isinstance(p, torch.Tensor) for p in params):
        ids = {id(p) for p in params}
        params = [n for n, p in model.named_parameters() if id(p) in ids]
    return copy.deepcopy(model).to(dtype), params


def symmetric_eigvals(matrix: Tensor) -> tuple[Tensor, float]:
    """Eigenvalues (descending, float64, CPU) of the symmetric part, and max |M - M^T|.

    The asymmetry measures the rounding error of the products.
    """
    m = matrix.double()
    asym = float((m - m.T).abs().max()) if m.numel() else 0.0
    vals = torch.linalg.eigvalsh((m + m.T) / 2).flip(0).cpu()
    return vals, asym


def exact_ranks(model: nn.Module, loss: str | LossFn, data: Any,
                kinds: Sequence[str] = ("loss", "outer", "functional"), *,
                params: None | Sequence[str] | Sequence[nn.Parameter] = None,
                rtol: float | None = None, atol: float | None = None,
                max_memory_bytes: int = DEFAULT_DENSE_MEMORY) -> dict[str, RankResult]:
    """:func:`exact_rank` for several kinds, building the dense H_L (the scale) only once.

    Args:
        model: The network (copied to float64).
        loss: Loss name or callable.
        data: An (inputs, targets) pair or an iterable of pairs.
        kinds: Which of "loss", "outer", "functional".
        params: Parameter selection.
        rtol: Threshold relative to sigma_max(H_L).
        atol: Absolute threshold.
        max_memory_bytes: Refuse beyond this estimate.

    Returns:
        Kind -> RankResult. Cost: P products per kind, plus P for H_L if not among ``kinds``.
    """
    dense = _DenseCache(model, loss, data, params, max_memory_bytes, kinds)
    return {k: _rank_from_dense(dense, k, rtol, atol) for k in kinds}


class _DenseCache:
    """Dense float64 matrices of one model, built on demand and kept (the scale is shared)."""

    def __init__(self, model: nn.Module, loss: str | LossFn, data: Any, params: Any,
                 max_memory_bytes: int, kinds: Sequence[str]) -> None:
        space, _ = parameter_space(model, params)
        need = dense_memory_bytes(space.size, kinds)
        if need > max_memory_bytes:
            msg = (f"the dense path ({', '.join(_with_scale_kinds(kinds))}) for "
                   f"P={space.size} parameters needs about {need / 2**30:.1f} GiB (limit "
                   f"{max_memory_bytes / 2**30:.1f} GiB); use estimate_rank, select fewer "
                   "params, or raise max_memory_bytes")
            raise ValueError(msg)
        self.model, self.params = model_copy(model, torch.float64, params)
        self.loss, self.data = loss, data
        self._eig: dict[str, tuple[Tensor, float, int, str]] = {}

    def eig(self, kind: str) -> tuple[Tensor, float, int, str]:
        """(eigenvalues descending, asymmetry, products spent, device) of one kind."""
        if kind not in self._eig:
            op = CurvatureOperator(self.model, self.loss, self.data, kind, params=self.params)
            vals, asym = symmetric_eigvals(op.to_dense())
            self._eig[kind] = (vals, asym, op.matvecs, str(op.device))
        return self._eig[kind]


def _rank_from_dense(dense: _DenseCache, kind: str, rtol: float | None,
                     atol: float | None) -> RankResult:
    start = time.perf_counter()
    check_thresholds(rtol, atol)
    built = kind in dense._eig
    vals, asym, matvecs, device = dense.eig(kind)
    spent = 0 if built else matvecs
    scale_kind = kind_spec(kind).scale_kind
    if scale_kind not in dense._eig:
        spent += dense.eig(scale_kind)[2]
    scale_vals = dense.eig(scale_kind)[0]
    scale = float(scale_vals.abs().max()) if scale_vals.numel() else 0.0
    n = vals.numel()
    tol = resolve_threshold(scale, n, torch.float64, rtol, atol)
    mags = vals.abs()
    rank = int((mags > tol).sum())
    gap = find_gap(mags.tolist(), floor=n * torch.finfo(torch.float64).eps * scale)
    notes: list[str] = []
    if gap is None:
        notes.append("no spectral gap (ratio >= 1e3) above the float64 noise floor: the rank "
                     "depends on the threshold; read rank_curve")
    elif not (gap[0] <= tol < gap[1]):
        notes.append(f"threshold {tol:.3g} lies outside the largest gap "
                     f"({gap[0]:.3g}, {gap[1]:.3g})")
    return RankResult(
        rank=rank, n=n, kind=kind, method="exact", tol=tol, scale=scale, matvecs=spent,
        seconds=time.perf_counter() - start, certified=True, rank_low=rank, rank_high=rank,
        eigenvalues=tuple(vals.tolist()),
        inertia=(int((vals > tol).sum()), int((vals < -tol).sum())),
        noise_floor=asym, rank_curve=rank_curve(mags.tolist(), scale), gap=gap,
        notes=tuple(notes), dtype=str(torch.float64), device=device,
    )


def exact_rank(model: nn.Module, loss: str | LossFn, data: Any, kind: str = "loss", *,
               params: None | Sequence[str] | Sequence[nn.Parameter] = None,
               rtol: float | None = None, atol: float | None = None,
               max_memory_bytes: int = DEFAULT_DENSE_MEMORY) -> RankResult:
    """Numerical rank from the dense float64 matrix and its full eigendecomposition.

    The model and data are copied to float64; the matrix is built from P products with unit
    vectors (the same operator as the matrix-free methods), symmetrized, and diagonalized
    with ``torch.linalg.eigvalsh``.

    Args:
        model: The network (copied to float64; the original is untouched).
        loss: "mse", "cross_entropy", "logcosh" or a callable (see ``curvature_operator``).
        data: An (inputs, targets) pair or an iterable of pairs.
        kind: "loss" (H_L), "outer" (H_O) or "functional" (H_F).
        params: None (all trainable), name globs, or the model's parameter objects.
        rtol: Threshold relative to sigma_max(H_L). Default min(max(P, 10) eps, sqrt(eps)) of
            float64.
        atol: Absolute threshold; with both, the larger applies.
        max_memory_bytes: Refuse when the dense path needs more (see
            :func:`dense_memory_bytes`); raise it deliberately for larger models.

    Returns:
        RankResult with method "exact", certified=True, all eigenvalues (descending).

    Cost: P products (2P for kind "outer"/"functional": H_L gives the scale), O(P^3) flops.

    Raises:
        ValueError: Bad threshold, the memory estimate exceeds ``max_memory_bytes``, and every
            error of :class:`~scalable_hrank.CurvatureOperator`.
    """
    start = time.perf_counter()
    check_thresholds(rtol, atol)
    dense = _DenseCache(model, loss, data, params, max_memory_bytes, (kind,))
    res = _rank_from_dense(dense, kind, rtol, atol)
    return dataclasses.replace(res, seconds=time.perf_counter() - start)
