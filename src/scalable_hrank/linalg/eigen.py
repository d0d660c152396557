"""Extreme eigenpairs and the spectral norm by block Lanczos with full reorthogonalization."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from scalable_hrank._validation import check_choice, check_positive_int, check_tolerance
from scalable_hrank.errors import NotConvergedError
from scalable_hrank.linalg import decomp as _engine
from scalable_hrank.linalg._types import MatMat, Reduce

__all__ = ["EigenPairs", "SpectralNorm", "deflation_shift", "eigenpairs", "spectral_norm"]

F64 = torch.float64


@dataclass(frozen=True)
class EigenPairs:
    """Ritz approximations of k wanted eigenpairs.

    Attributes:
        values: Shape (k,) float64 on CPU, ordered by ``which`` (LA: descending, SA:
            ascending, LM: descending magnitude).
        vectors: Shape (n, k), operator dtype and device, orthonormal.
        residual_norms: Shape (k,) float64 on CPU, ``||A v - theta v||`` from the Krylov
            relation (exact up to rounding and product noise; no extra products).
        num_matvecs: Products spent.
        converged: Every residual ``<= tol * max|theta|`` (and the shift bound within
            ``shift_tol`` when one was asked for).
    """

    values: Tensor
    vectors: Tensor
    residual_norms: Tensor
    num_matvecs: int
    converged: bool


@dataclass(frozen=True)
class SpectralNorm:
    """Estimate of ``||A||`` from :func:`spectral_norm`.

    Attributes:
        estimate: Largest ``|Ritz value|`` (a lower bound on ``||A||`` up to rounding).
        upper_bound: ``estimate`` plus the residual norm of its Ritz pair: an eigenvalue of A
            lies within that residual of the estimate, so this bounds ``||A||`` from above
            whenever that Ritz pair approximates the extreme eigenvalue (certain in practice
            after ~30 steps from a random start, not guaranteed).
        num_matvecs: Products spent.
    """

    estimate: float
    upper_bound: float
    num_matvecs: int


def _select(vals: Tensor, k: int, which: str) -> Tensor:
    if which == "LA":
        return torch.argsort(vals, descending=True)[:k]
    if which == "SA":
        return torch.argsort(vals)[:k]
    return torch.argsort(vals.abs(), descending=True)[:k]


def eigenpairs(matmat: MatMat, n: int, k: int, *, which: str = "LA", tol: float = 1e-8,
               shift_tol: float | None = None, block_size: int = 8,
               max_matvecs: int | None = None, generator: torch.Generator,
               dtype: torch.dtype = torch.float64, device: torch.device | str = "cpu",
               reduce: Reduce = None) -> EigenPairs:
    """Compute k extreme eigenpairs of a symmetric operator by growing block Lanczos.

    The basis grows (no restarts) until the k wanted Ritz pairs have residual
    ``<= tol * max|theta|``; Ritz residuals come from the Krylov relation for free. An
    invariant block (an exact multiplicity larger than the block) is continued with fresh
    random directions.

    Args:
        matmat: ``X (n, k) -> A X (n, k)`` in ``dtype`` on ``device``; A symmetric.
        n: Operator size.
        k: Number of eigenpairs (``1 <= k <= n``).
        which: "LA" (largest algebraic), "SA" (smallest algebraic), "LM" (largest magnitude).
        tol: Relative residual tolerance.
        shift_tol: When given, also require :func:`deflation_shift` of the k pairs to be
            ``<= shift_tol``: removing them from A then moves no eigenvalue of the rest that
            lies near zero by more than about ``shift_tol`` (what a count at a small
            threshold needs from the pairs it deflates).
        block_size: Block width b.
        max_matvecs: Product budget (default n).
        generator: CPU generator for the start block.
        dtype: Basis dtype.
        device: Basis device.
        reduce: Sums inner products over processes when vectors are sharded by rows.

    Returns:
        :class:`EigenPairs` with ``converged=True``. Cost: m products (final basis size m),
        memory (m + 3 b) length-n vectors, an (m, m) float64 eigendecomposition per block.

    Raises:
        NotConvergedError: When the budget runs out first; ``partial`` is the current
            :class:`EigenPairs` (``converged=False``).
    """
    check_positive_int("n", n)
    check_positive_int("k", k, maximum=n)
    check_choice("which", which, ("LA", "SA", "LM"))
    check_tolerance("tol", tol)
    if shift_tol is not None:
        check_tolerance("shift_tol", shift_tol)
    check_positive_int("block_size", block_size)
    max_matvecs = n if max_matvecs is None else max_matvecs
    check_positive_int("max_matvecs", max_matvecs)
    start = _engine.draw(n, min(block_size, n), generator, dtype, device)
    state = _engine.init_state(n, block_size, start, generator, reduce)

    pairs = None
    while True:
        width = min(state.pending.shape[1], max_matvecs - state.num_matvecs, n - state.size)
        if width <= 0:
            break
        _engine.step(state, matmat, reduce, width=width, drop_tol=_engine.rounding_tol(dtype))
        pairs = _pairs(state, k, which, tol, shift_tol)
        if pairs.converged or state.size >= n:
            return pairs
        if state.pending.shape[1] == 0:
            _engine.refill(state, generator, reduce, device)
    if pairs is None:
        msg = "eigenpairs: no product could be taken"
        raise NotConvergedError(msg)
    msg = (f"eigenpairs did not converge within {max_matvecs} products "
           f"(max residual {float(pairs.residual_norms.max()):.2e})")
    raise NotConvergedError(msg, partial=pairs)


def deflation_shift(values: Tensor, residual_norms: Tensor) -> float:
    """Bound on how far deflating Ritz pairs moves the eigenvalues of A near zero.

    With an orthonormal block Q (n, k), Ritz values theta = diag(Q^T A Q) and residual block
    ``R = (I - Q Q^T) A Q``, A is the block matrix ``[[Theta, R^T], [R, C]]`` and the deflated
    operator keeps only ``C``. Each eigenvalue mu of ``C`` lies within
    ``||R||^2 / (min|theta| - |mu|)`` of an eigenvalue of A (quadratic residual bound for an
    off-diagonal block), so for |mu| far below ``min|theta|`` the shift is about
    ``||R||_F^2 / min|theta| = sum r_i^2 / min|theta_i|``. A loose pair (r_i = 1e-4 |theta|)
    turns the null space of A into eigenvalues of C of size ``1e-8 |theta|``: far above a
    threshold near the rounding level.

    Args:
        values: Ritz values (k,), float64.
        residual_norms: Their residual norms ``||A q_i - theta_i q_i||`` (k,), float64.

    Returns:
        ``sum r_i^2 / min|theta_i|`` (infinity when some theta is 0; 0 for no pairs).
    """
    if values.numel() == 0:
        return 0.0
    low = float(values.abs().min())
    total = float((residual_norms.double() ** 2).sum())
    return total / low if low > 0 else math.inf


def _pairs(state: _engine.KrylovState, k: int, which: str, tol: float,
           shift_tol: float | None) -> EigenPairs:
    vals, vecs = torch.linalg.eigh(state.projected)
    if state.size >= state.n:
        res = torch.zeros_like(vals)
    elif state.coupling is not None and state.coupling.shape[0] and state.last_width:
        kl = state.last_width
        res = torch.linalg.vector_norm(state.coupling @ vecs[-kl:, :], dim=0)
    else:
        res = torch.zeros_like(vals)
    res = res + math.sqrt(state.dropped_sq)
    idx = _select(vals, min(k, vals.numel()), which)
    sel_vals, sel_vecs, sel_res = vals[idx], vecs[:, idx], res[idx]
    scale = float(vals.abs().max()) if vals.numel() else 0.0
    converged = vals.numel() >= k and bool((sel_res <= tol * scale).all())
    if converged and shift_tol is not None:
        converged = deflation_shift(sel_vals, sel_res) <= shift_tol
    vectors = state.combine(sel_vecs)
    return EigenPairs(values=sel_vals.cpu(), vectors=vectors, residual_norms=sel_res.cpu(),
                      num_matvecs=state.num_matvecs, converged=converged)


def spectral_norm(matmat: MatMat, n: int, *, num_matvecs: int = 30,
                  generator: torch.Generator, dtype: torch.dtype = torch.float64,
                  device: torch.device | str = "cpu", reduce: Reduce = None) -> SpectralNorm:
    """Estimate ``||A||`` by Lanczos (full reorthogonalization) from a Gaussian start.

    Args:
        matmat: ``X (n, k) -> A X (n, k)``; A symmetric.
        n: Operator size.
        num_matvecs: Lanczos steps (capped at n). Cost: that many single-column products,
            memory num_matvecs + 3 length-n vectors.
        generator: CPU generator for the start vector.
        dtype: Vector dtype.
        device: Vector device.
        reduce: Sums inner products over processes when vectors are sharded by rows.

    Returns:
        A :class:`SpectralNorm` (estimate and Ritz-residual upper bound).
    """
    check_positive_int("n", n)
    check_positive_int("num_matvecs", num_matvecs)
    v0 = _engine.draw(n, 1, generator, dtype, device)
    dec = _engine.lanczos(matmat, v0, num_matvecs=min(num_matvecs, n), reduce=reduce)
    rp = _engine.ritz_pairs(dec)
    i = int(torch.argmax(rp.values.abs()))
    est = float(rp.values[i].abs())
    return SpectralNorm(estimate=est, upper_bound=est + float(rp.residual_norms[i]),
                        num_matvecs=dec.num_matvecs)
