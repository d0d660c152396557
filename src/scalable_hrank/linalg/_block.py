"""Block Krylov engine shared by block Lanczos, the rank solver and the eigensolver.

The state is a plain dataclass so a pre-empted job can save it and resume bit-identically.
Bases are stored as rows of a (capacity, n) buffer: the first ``size`` rows are a contiguous
(size, n) tensor whatever the capacity, so a resumed run (different capacity) performs the very
same floating-point operations.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch
from torch import Tensor

from scalable_hrank.linalg._types import MatMat, Reduce
from scalable_hrank.linalg.orth import inner, orthonormalize

F64 = torch.float64


@dataclass
class KrylovState:
    """Everything a block Krylov run needs to continue (see :func:`krylov_rank`).

    Treat it as read-only inside ``on_block``; :meth:`snapshot` returns a compact deep copy
    (basis trimmed to ``size`` rows) suitable for ``torch.save``.

    Attributes:
        n: Operator size.
        block_size: Requested block width b.
        dtype: Basis dtype (the operator's).
        basis_rows: Shape (capacity, n); rows ``[:size]`` are the orthonormal basis Q^T.
        size: Basis size m.
        projected: Shape (m, m) float64, the symmetrized Q^T A Q filled from the products.
        pending: Shape (n, k), the next orthonormal block (not yet multiplied); k may be 0
            when the Krylov space became invariant.
        coupling: Shape (k, k_last) float64, ``pending^T A X_last`` from the last product (the
            Krylov residual coefficients; used for Ritz residuals and the asymmetry).
        last_width: Width k_last of the last multiplied block.
        residual_norm: Spectral norm of the last residual block ``(I - QQ^T) A X_last``.
        dropped_sq: Sum of squared norms of residual parts dropped as (near-)dependent.
        asym_sq: Squared Frobenius norm of the known entries of ``B - B^T`` (noise estimate).
        num_matvecs: Products spent (certificate included).
        num_blocks: Blocks multiplied so far.
        generator_state: ``generator.get_state()`` after the last draw.
        phase: "grow", "done" or "final".
        extra: Solver-specific scalars (threshold, sigma estimate, certificate history, ...).
        shard: ``(offset, global length)`` when each process holds rows
            ``offset:offset + n`` of every vector (a sharded basis); None otherwise.
    """

    n: int
    block_size: int
    dtype: torch.dtype
    basis_rows: Tensor
    size: int
    projected: Tensor
    pending: Tensor
    coupling: Tensor | None
    last_width: int
    residual_norm: float
    dropped_sq: float
    asym_sq: float
    num_matvecs: int
    num_blocks: int
    generator_state: Tensor
    phase: str = "grow"
    extra: dict = field(default_factory=dict)
    shard: tuple[int, int] | None = None

    @property
    def dim(self) -> int:
        """Dimension of the whole space: ``n``, or the global length when sharded."""
        return self.shard[1] if self.shard is not None else self.n

    @property
    def basis(self) -> Tensor:
        """Shape (n, m) column view of the basis."""
        return self.basis_rows[: self.size].mT

    def snapshot(self) -> KrylovState:
        """Return a compact deep copy (basis trimmed to ``size`` rows, tensors cloned)."""
        def cp(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.detach().clone()

        return replace(self, basis_rows=self.basis_rows[: self.size].clone(),
                       projected=self.projected.clone(), pending=self.pending.clone(),
                       coupling=cp(self.coupling), generator_state=self.generator_state.clone(),
                       extra=_deepcopy_extra(self.extra))


def _deepcopy_extra(extra: dict) -> dict:
    out = {}
    for key, val in extra.items():
        out[key] = val.clone() if isinstance(val, Tensor) else val
    return out


def draw(n: int, k: int, generator: torch.Generator, dtype: torch.dtype,
         device: torch.device | str, shard: tuple[int, int] | None = None) -> Tensor:
    """Gaussian (n, k) block drawn on CPU from ``generator`` and moved to ``device``.

    With ``shard = (offset, global length)`` the whole (global, k) block is drawn and rows
    ``offset:offset + n`` returned, so every process holds its slice of the same vectors.
    """
    if shard is None:
        return torch.randn(n, k, generator=generator, dtype=dtype).to(device)
    offset, total = shard
    full = torch.randn(total, k, generator=generator, dtype=dtype)
    return full[offset:offset + n].to(device)


def init_state(n: int, block_size: int, start: Tensor, generator: torch.Generator,
               reduce: Reduce, shard: tuple[int, int] | None = None) -> KrylovState:
    """Orthonormalize the start block and return a fresh state."""
    orth = orthonormalize(start, None, reduce=reduce)
    dtype = start.dtype
    cap = min(shard[1] if shard else n, max(4 * block_size, 64))
    return KrylovState(
        n=n, block_size=block_size, dtype=dtype,
        basis_rows=start.new_empty(cap, n), size=0,
        projected=torch.zeros(0, 0, dtype=F64, device=start.device),
        pending=orth.block, coupling=None, last_width=0, residual_norm=math.inf,
        dropped_sq=0.0, asym_sq=0.0, num_matvecs=0, num_blocks=0,
        generator_state=generator.get_state(), shard=shard)


def _append_rows(state: KrylovState, x: Tensor) -> None:
    m, k = state.size, x.shape[1]
    cap = state.basis_rows.shape[0]
    if m + k > cap:
        new_cap = min(state.dim, max(m + k, int(1.5 * cap) + state.block_size))
        rows = state.basis_rows.new_empty(new_cap, state.n)
        rows[:m] = state.basis_rows[:m]
        state.basis_rows = rows
    state.basis_rows[m:m + k] = x.mT
    state.size = m + k


def check_product(x: Tensor, ax: Tensor) -> None:
    """Raise if a product has the wrong shape, dtype or device, or is not finite."""
    if ax.shape != x.shape or ax.dtype != x.dtype or ax.device != x.device:
        msg = (f"matmat must map (n, k) {x.dtype} on {x.device} to the same; got "
               f"{tuple(ax.shape)} {ax.dtype} on {ax.device} for {tuple(x.shape)}")
        raise ValueError(msg)


def step(state: KrylovState, matmat: MatMat, reduce: Reduce, *, width: int,
         drop_tol: Callable[[float, int], float]) -> Tensor:
    """Multiply (the first ``width`` columns of) the pending block and extend the basis.

    One product of ``width`` columns does double duty: it fills column block j of
    B = Q^T A Q (float64) and, projected (CGS2) and orthonormalized (rank-revealing), gives the
    next block. ``drop_tol(scale, m)`` gives the absolute threshold below which residual
    directions are dropped, from the largest product column norm seen (``extra["scale"]``) and
    the basis size. Returns the product A X (n, width) for callers that want it.
    """
    x = state.pending[:, :width]
    ax = matmat(x)
    check_product(x, ax)
    if not bool(torch.isfinite(ax).all()):
        msg = "matmat returned NaN or infinity"
        raise FloatingPointError(msg)
    state.num_matvecs += width
    state.num_blocks += 1
    m = state.size
    q_old = state.basis
    c_old = inner(q_old, ax, reduce, dtype=F64) if m else ax.new_zeros(0, width, dtype=F64)
    d = inner(x, ax, reduce, dtype=F64)
    colsq = (ax.to(F64) ** 2).sum(0) if ax.dtype != F64 else (ax * ax).sum(0)
    if reduce is not None:
        colsq = reduce(colsq)
    scale = max(state.extra.get("scale", 0.0), math.sqrt(float(colsq.max())))
    state.extra["scale"] = scale
    # Asymmetry from the entries that two different products both give.
    asym = float(((d - d.mT) ** 2).sum())
    if state.coupling is not None and state.last_width:
        kl = state.last_width
        sub = state.coupling[:width, :]  # X^T A X_last from the previous product
        asym += 2.0 * float(((c_old[m - kl:m, :] - sub.mT) ** 2).sum())
    state.asym_sq += asym
    b = state.projected
    nb = b.new_zeros(m + width, m + width)
    nb[:m, :m] = b
    nb[:m, m:] = c_old
    nb[m:, :m] = c_old.mT
    nb[m:, m:] = 0.5 * (d + d.mT)
    state.projected = nb
    _append_rows(state, x)
    q = state.basis
    coeff = torch.cat([c_old, d], dim=0).to(ax.dtype)
    w = ax - q @ coeff
    orth = orthonormalize(w, q, drop_tol=drop_tol(scale, state.size), reduce=reduce, passes=1)
    state.pending = orth.block
    state.residual_norm = float(orth.norms[0]) if orth.norms.numel() else 0.0
    state.dropped_sq += orth.dropped_norm ** 2
    state.coupling = inner(orth.block, ax, reduce, dtype=F64)
    state.last_width = width
    return ax


def refill(state: KrylovState, generator: torch.Generator, reduce: Reduce,
           device: torch.device | str) -> None:
    """Replace an empty pending block by fresh Gaussian directions orthogonal to the basis."""
    k = min(state.block_size, state.dim - state.size)
    if k <= 0:
        state.pending = state.pending.new_zeros(state.n, 0)
        return
    g = draw(state.n, k, generator, state.dtype, device, state.shard)
    eps = torch.finfo(state.dtype).eps
    orth = orthonormalize(g, state.basis, drop_tol=8.0 * eps * math.sqrt(state.dim),
                          reduce=reduce)
    state.pending = orth.block
    state.coupling = None
    state.last_width = 0


def residual_bound(state: KrylovState) -> float:
    """Upper bound on ``||A Q - Q B||`` (last residual block plus everything dropped)."""
    return math.hypot(state.residual_norm, math.sqrt(state.dropped_sq))


def asymmetry(state: KrylovState) -> float:
    """Relative asymmetry ``||B - B^T||_F / ||B||_F`` over the entries two products give."""
    norm = float(torch.linalg.matrix_norm(state.projected)) if state.size else 0.0
    return math.sqrt(state.asym_sq) / norm if norm > 0 else 0.0
