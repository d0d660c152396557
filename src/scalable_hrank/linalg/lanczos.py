"""Lanczos and block Lanczos with full reorthogonalization, and Rayleigh-Ritz pairs.

Full reorthogonalization (classical Gram-Schmidt, twice) is what makes Ritz values countable:
without it converged eigenvalues reappear as ghost copies (Paige) and a count of
``|theta| > tau`` double-counts them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from scalable_hrank._validation import check_positive_int
from scalable_hrank.linalg import decomp as _engine
from scalable_hrank.linalg._types import MatMat, Reduce
from scalable_hrank.linalg.orth import inner, project_out

__all__ = [
    "BlockLanczosDecomposition",
    "LanczosDecomposition",
    "RitzPairs",
    "block_lanczos",
    "lanczos",
    "largest_ritz_magnitudes",
    "ritz_pairs",
]

F64 = torch.float64


@dataclass(frozen=True)
class LanczosDecomposition:
    """``A Q = Q T + betas[-1] q_{m+1} e_m^T`` with T tridiagonal.

    Attributes:
        basis: Q, shape (n, m), orthonormal columns, dtype of ``v0``.
        alphas: Shape (m,) float64 (CPU), the diagonal of T.
        betas: Shape (m,) float64 (CPU); ``betas[:-1]`` is the off-diagonal of T and
            ``betas[-1]`` the norm of the residual (0 up to rounding after a breakdown).
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
class BlockLanczosDecomposition:
    """Block Krylov basis with its projected matrix ``B = Q^T A Q``.

    Attributes:
        basis: Q, shape (n, m), orthonormal columns, operator dtype.
        projected: B, shape (m, m) float64 (device of the basis), symmetrized, filled from the
            products themselves (column block j from the product with block j).
        residual_norm: Upper bound on ``||A Q - Q B||`` (last residual block plus every part
            dropped as (near-)dependent).
        asymmetry: ``||B - B^T||_F / ||B||_F`` over the entries two products both give: a
            free relative estimate of the product noise floor.
        num_matvecs: Products spent (a block of k counts k).
        residual_coupling: Shape (k', k_last) float64: ``X_next^T A X_last``, so the Ritz
            residual of ``Q s`` is ``||residual_coupling @ s[-k_last:]||`` (+ dropped parts).
        dropped_norm: Norm of all dropped residual parts.
        breakdown: True when the Krylov space became invariant (next block empty).
    """

    basis: Tensor
    projected: Tensor
    residual_norm: float
    asymmetry: float
    num_matvecs: int
    residual_coupling: Tensor
    dropped_norm: float
    breakdown: bool


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


def _breakdown_tol(dtype: torch.dtype, scale: float, m: int) -> float:
    return 16.0 * math.sqrt(m + 1) * torch.finfo(dtype).eps * scale


def lanczos(matmat: MatMat, v0: Tensor, *, num_matvecs: int, reorthogonalize: bool = True,
            reduce: Reduce = None) -> LanczosDecomposition:
    """Tridiagonalize a symmetric operator A from the start vector ``v0``.

    Args:
        matmat: ``X (n, k) -> A X (n, k)``, same dtype and device as ``v0``.
        v0: Start vector, shape (n,) (or (n, 1)), float32 or float64; need not be normalized.
        num_matvecs: Krylov depth m (at most n). Cost: m products of one column; memory
            (m + 3) length-n vectors; reorthogonalization 8 n m^2 flops in total.
        reorthogonalize: Full reorthogonalization against all previous vectors, twice (CGS2).
            Required for counting Ritz values; without it only the three-term recurrence is
            used (fine for quadrature, ghosts appear in the Ritz values).
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
    nrm = math.sqrt(float(inner(v, v, reduce, dtype=F64)))
    if nrm == 0.0:
        msg = "v0 must be nonzero"
        raise ValueError(msg)
    q = v / nrm
    rows = v.new_empty(num_matvecs, n)
    alphas: list[float] = []
    betas: list[float] = []
    breakdown = False
    scale = 0.0
    prev: Tensor | None = None
    beta_prev = 0.0
    for j in range(num_matvecs):
        rows[j] = q[:, 0]
        aq = matmat(q)
        _engine.check_product(q, aq)
        alpha = float(inner(q, aq, reduce, dtype=F64))
        w = aq - alpha * q
        if prev is not None:
            w = w - beta_prev * prev
        if reorthogonalize:
            w = project_out(w, rows[: j + 1].mT, reduce, passes=2)
        else:
            # Local reorthogonalization only (keeps the three-term recurrence clean).
            w = w - float(inner(q, w, reduce)) * q
        beta = math.sqrt(max(float(inner(w, w, reduce, dtype=F64)), 0.0))
        scale = max(scale, abs(alpha), beta, math.sqrt(float(inner(aq, aq, reduce, dtype=F64))))
        alphas.append(alpha)
        betas.append(beta)
        if beta <= _breakdown_tol(v.dtype, scale, j + 1):
            breakdown = True
            break
        prev, q, beta_prev = q, w / beta, beta
    m = len(alphas)
    return LanczosDecomposition(
        basis=rows[:m].mT, alphas=torch.tensor(alphas, dtype=F64),
        betas=torch.tensor(betas, dtype=F64), num_matvecs=m, breakdown=breakdown)


def largest_ritz_magnitudes(matmat: MatMat, v0: Tensor, *, num_matvecs: int,
                            reduce: Reduce = None,
                            breakdown_tol: float = 0.0) -> tuple[Tensor, int]:
    """Run s independent Lanczos recurrences at once; return each one's largest ``|Ritz|``.

    Column i of ``v0`` starts run i; every step multiplies the still active columns as one
    block (so a basis-sized projection inside ``matmat`` is read once for all runs). Each run
    is the three-term recurrence of :func:`lanczos` without reorthogonalization (ghost copies
    do not change the largest ``|Ritz value|``) and stops alone on a breakdown
    (``beta <= breakdown_tol``).

    Args:
        matmat: ``X (n, k) -> A X (n, k)``, dtype and device of ``v0``.
        v0: Start vectors, shape (n, s), nonzero columns.
        num_matvecs: Steps per run (products of one column each).
        reduce: Sums inner products over processes when vectors are sharded by rows.
        breakdown_tol: A run stops when its beta falls to it (default: exact zero only).

    Returns:
        ``(theta, products)``: shape (s,) float64 on CPU, the largest ``|eigenvalue|`` of each
        run's tridiagonal matrix, and the products spent (at most ``s * num_matvecs``).
        Memory: 4 blocks of (n, s).
    """
    if v0.dim() != 2 or v0.shape[1] == 0:
        msg = f"v0 must have shape (n, s) with s >= 1; got {tuple(v0.shape)}"
        raise ValueError(msg)
    check_positive_int("num_matvecs", num_matvecs)
    s = v0.shape[1]
    norms = (inner(v0, v0, reduce, dtype=F64).diagonal()).sqrt()
    if bool((norms == 0).any()):
        msg = "v0 must have nonzero columns"
        raise ValueError(msg)
    q = v0 / norms.to(v0.dtype)
    prev = torch.zeros_like(q)
    beta = torch.zeros(s, dtype=F64, device=v0.device)
    active = list(range(s))
    alphas: list[list[float]] = [[] for _ in range(s)]
    betas: list[list[float]] = [[] for _ in range(s)]
    products = 0
    for _ in range(num_matvecs):
        aq = matmat(q)
        _engine.check_product(q, aq)
        products += len(active)
        alpha = _coldot(q, aq, reduce)
        w = aq - q * alpha.to(q.dtype) - prev * beta.to(q.dtype)
        w = w - q * _coldot(q, w, reduce).to(q.dtype)
        beta = _coldot(w, w, reduce).clamp_min(0.0).sqrt()
        keep = []
        for j, run in enumerate(active):
            alphas[run].append(float(alpha[j]))
            if float(beta[j]) > breakdown_tol:
                betas[run].append(float(beta[j]))
                keep.append(j)
        if not keep:
            break
        idx = torch.tensor(keep, device=q.device)
        active = [active[j] for j in keep]
        beta = beta[idx]
        prev, q = q[:, idx], w[:, idx] / beta.to(q.dtype)
    theta = torch.zeros(s, dtype=F64)
    for run in range(s):
        k = len(alphas[run])
        t = torch.diag(torch.tensor(alphas[run], dtype=F64))
        if k > 1:
            off = torch.tensor(betas[run][: k - 1], dtype=F64)
            t = t + torch.diag(off, 1) + torch.diag(off, -1)
        theta[run] = torch.linalg.eigvalsh(t).abs().max()
    return theta, products


def _coldot(a: Tensor, b: Tensor, reduce: Reduce) -> Tensor:
    """Column-wise inner products (s,) in float64, summed over processes by ``reduce``."""
    out = (a.to(F64) * b.to(F64)).sum(0)
    return reduce(out) if reduce is not None else out


def block_lanczos(matmat: MatMat, v0: Tensor, *, num_matvecs: int,
                  reduce: Reduce = None) -> BlockLanczosDecomposition:
    """Block Lanczos with full reorthogonalization (block CGS2) from the start block ``v0``.

    A thin wrapper over the engine in :mod:`.decomp.block` that runs it to the budget or to
    breakdown and returns the decomposition.

    Each product with a block X (n, k) fills column block j of B = Q^T A Q in float64 and,
    after two Gram-Schmidt passes and a rank-revealing orthonormalization (dependent columns
    dropped), gives the next block. B is symmetrized from these entries; the entries that two
    products both give yield the asymmetry (noise-floor) estimate.

    Args:
        matmat: ``X (n, k) -> A X (n, k)``, dtype and device of ``v0``.
        v0: Start block, shape (n, b) (any full-rank block; (n,) is treated as b = 1).
        num_matvecs: Product budget; the basis has at most this many columns. Cost: that many
            products (in blocks of b), memory (m + 3 b) length-n vectors, 8 n m^2 flops.
        reduce: Sums inner products over processes when vectors are sharded by rows.

    Returns:
        A :class:`BlockLanczosDecomposition`; it stops early when the block becomes empty
        (``breakdown=True``: the Krylov space is invariant).

    Raises:
        ValueError: If ``num_matvecs`` is not a positive integer or ``v0`` is not 1-D/2-D.
    """
    v = v0.reshape(-1, 1) if v0.dim() == 1 else v0
    if v.dim() != 2:
        msg = f"v0 must have shape (n, b); got {tuple(v0.shape)}"
        raise ValueError(msg)
    n, b = v.shape
    check_positive_int("num_matvecs", num_matvecs)
    gen = torch.Generator()
    state = _engine.init_state(n, b, v, gen, reduce)
    def drop_tol(scale: float, m: int) -> float:
        return _breakdown_tol(v.dtype, scale, m)

    while state.pending.shape[1] and state.size < n:
        width = min(state.pending.shape[1], num_matvecs - state.num_matvecs, n - state.size)
        if width <= 0:
            break
        _engine.step(state, matmat, reduce, width=width, drop_tol=drop_tol)
    breakdown = state.pending.shape[1] == 0 and state.size < n
    coupling = state.coupling if state.coupling is not None else torch.zeros(0, 0, dtype=F64)
    return BlockLanczosDecomposition(
        basis=state.basis, projected=state.projected,
        residual_norm=_engine.residual_bound(state), asymmetry=_engine.asymmetry(state),
        num_matvecs=state.num_matvecs, residual_coupling=coupling,
        dropped_norm=math.sqrt(state.dropped_sq), breakdown=breakdown)


def ritz_pairs(decomp: LanczosDecomposition | BlockLanczosDecomposition) -> RitzPairs:
    """Rayleigh-Ritz pairs of a (block) Lanczos decomposition.

    Args:
        decomp: From :func:`lanczos` (use ``reorthogonalize=True``) or :func:`block_lanczos`.

    Returns:
        :class:`RitzPairs`, values descending. Cost: an (m, m) float64 eigendecomposition and
        one (n, m) x (m, m) product; no operator products.
    """
    if isinstance(decomp, LanczosDecomposition):
        t = decomp.tridiagonal
        vals, vecs = torch.linalg.eigh(t)
        res = decomp.betas[-1].abs() * vecs[-1, :].abs()
        extra = 0.0
    else:
        vals, vecs = torch.linalg.eigh(decomp.projected)
        kl = decomp.residual_coupling.shape[1]
        if kl:
            res = torch.linalg.vector_norm(decomp.residual_coupling @ vecs[-kl:, :], dim=0)
        else:
            res = torch.zeros_like(vals)
        extra = decomp.dropped_norm
    vals, vecs, res = vals.flip(0), vecs.flip(1), res.flip(0)
    vectors = decomp.basis @ vecs.to(device=decomp.basis.device, dtype=decomp.basis.dtype)
    return RitzPairs(values=vals.cpu(), vectors=vectors, residual_norms=(res.cpu() + extra))
