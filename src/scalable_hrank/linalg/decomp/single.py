"""Single-vector Lanczos with full reorthogonalization: the block engine with blocks of one.

Full reorthogonalization is what makes Ritz values countable: without it converged
eigenvalues reappear as ghost copies and a count of ``|theta| > tau`` double-counts them (the
basis-free recurrence in :mod:`.lockstep` is for quadrature and extreme values only).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from scalable_hrank._validation import check_positive_int
from scalable_hrank.linalg._types import MatMat, Reduce
from scalable_hrank.linalg.decomp import block
from scalable_hrank.linalg.orth import inner

__all__ = ["LanczosDecomposition", "RitzPairs", "lanczos", "ritz_pairs", "rounding_tol"]

F64 = torch.float64


def rounding_tol(dtype: torch.dtype) -> Callable[[float, int], float]:
    """The breakdown rule of the full-reorthogonalization mode, as :func:`.block.step` takes it.

    A residual direction of norm at most ``16 sqrt(m + 1) eps scale`` (basis size m, largest
    product column norm ``scale``) is rounding, not a new direction: it is dropped (and
    counted in the residual bound). The lock-step mode's rule is the same comparison with
    the largest tridiagonal coefficient (:func:`.lockstep.advance_probes`).
    """
    eps = torch.finfo(dtype).eps

    def drop_tol(scale: float, m: int) -> float:
        return 16.0 * math.sqrt(m + 1) * eps * scale

    return drop_tol


@dataclass(frozen=True)
class LanczosDecomposition:
    """``A Q = Q T + betas[-1] q_{m+1} e_m^T`` with T tridiagonal.

    Attributes:
        basis: Q, shape (n, m), orthonormal columns, dtype of ``v0``.
        alphas: Shape (m,) float64 (CPU), the diagonal of T.
        betas: Shape (m,) float64 (CPU); ``betas[:-1]`` is the off-diagonal of T and
            ``betas[-1]`` a bound on the residual norm (0 up to rounding after a breakdown).
        num_matvecs: Products spent (= m).
        breakdown: True when an invariant subspace was found (stopped early; normal for an
            exactly low-rank operator: m = number of distinct eigenvalues seen by v0).
    """

    basis: Tensor
    alphas: Tensor
    betas: Tensor
    num_matvecs: int
    breakdown: bool

    @property
    def tridiagonal(self) -> Tensor:
        """T as a dense (m, m) float64 matrix."""
        off = self.betas[:-1]
        return torch.diag(self.alphas) + torch.diag(off, 1) + torch.diag(off, -1)


@dataclass(frozen=True)
class RitzPairs:
    """Rayleigh-Ritz pairs of a decomposition.

    Attributes:
        values: Shape (k,) float64 on CPU, descending.
        vectors: Shape (n, k), basis dtype and device.
        residual_norms: Shape (k,) float64 on CPU, ``||A v - theta v||`` from the Krylov
            relation (no extra products; exact up to rounding and product noise).
    """

    values: Tensor
    vectors: Tensor
    residual_norms: Tensor


def lanczos(matmat: MatMat, v0: Tensor, *, num_matvecs: int,
            reduce: Reduce = None) -> LanczosDecomposition:
    """Tridiagonalize a symmetric operator A from the start vector ``v0``.

    Runs the block engine (:func:`.block.step`) one column at a time: each product fills a
    column of T, and the residual is orthogonalized against the whole basis twice; a
    residual at rounding level (:func:`rounding_tol`) is a breakdown.

    Args:
        matmat: ``X (n, k) -> A X (n, k)``, same dtype and device as ``v0``.
        v0: Start vector, shape (n,) (or (n, 1)), float32 or float64; need not be normalized.
        num_matvecs: Krylov depth m (at most n). Cost: m products of one column; memory
            (m + 3) length-n vectors; reorthogonalization 8 n m^2 flops in total.
        reduce: Sums inner products over processes when vectors are sharded by rows.

    Returns:
        A :class:`LanczosDecomposition`; it stops early with ``breakdown=True`` when the
        residual falls to rounding level (an invariant subspace).

    Raises:
        ValueError: If ``v0`` is zero or has the wrong shape, or ``num_matvecs`` is not in
            ``[1, n]``.
    """
    v = v0.reshape(-1, 1) if v0.dim() == 1 else v0
    if v.dim() != 2 or v.shape[1] != 1:
        msg = f"v0 must have shape (n,) or (n, 1); got {tuple(v0.shape)}"
        raise ValueError(msg)
    n = v.shape[0]
    check_positive_int("num_matvecs", num_matvecs, maximum=n)
    if float(inner(v, v, reduce, dtype=F64)) == 0.0:
        msg = "v0 must be nonzero"
        raise ValueError(msg)
    state = block.init_state(n, 1, v, torch.Generator(), reduce)  # never refilled
    while state.num_matvecs < num_matvecs and state.pending.shape[1]:
        block.step(state, matmat, reduce, width=1, drop_tol=rounding_tol(v.dtype))
    t = state.projected.cpu()
    betas = torch.cat([torch.diagonal(t, 1), torch.tensor([block.residual_bound(state)],
                                                          dtype=F64)])
    return LanczosDecomposition(
        basis=state.basis, alphas=torch.diagonal(t).clone(), betas=betas,
        num_matvecs=state.num_matvecs, breakdown=state.pending.shape[1] == 0)


def ritz_pairs(decomp: LanczosDecomposition) -> RitzPairs:
    """Rayleigh-Ritz pairs of a Lanczos decomposition.

    Returns:
        :class:`RitzPairs`, values descending. Cost: an (m, m) float64 eigendecomposition and
        one (n, m) x (m, m) product; no operator products.
    """
    vals, vecs = torch.linalg.eigh(decomp.tridiagonal)
    res = decomp.betas[-1].abs() * vecs[-1, :].abs()
    vals, vecs, res = vals.flip(0), vecs.flip(1), res.flip(0)
    vectors = decomp.basis @ vecs.to(device=decomp.basis.device, dtype=decomp.basis.dtype)
    return RitzPairs(values=vals.cpu(), vectors=vectors, residual_norms=res.cpu())
