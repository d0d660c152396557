"""Block Krylov decomposition: the block Lanczos engine behind the rank solver and eigensolver.

This module is the decomposition only (the estimators that use it live elsewhere:
:mod:`~scalable_hrank.linalg.krylov_rank` counts and certifies, :mod:`~scalable_hrank.linalg.eigen`
extracts eigenpairs, :func:`~scalable_hrank.linalg.decomp.lanczos` returns its single-vector
decomposition). One call of :func:`step` multiplies the pending block X, fills its column block
of the projected matrix B = Q^T A Q in float64, and turns the residual ``(I - QQ^T) A X`` into
the next pending block by block classical Gram-Schmidt run twice (the first pass reuses the
coefficients that fill B, then a rank-revealing factorization drops (near-)dependent directions
and a second pass against the basis and within the block restores orthogonality to working
precision). Everything dropped is added up, so ``||A Q - Q B||`` keeps a rigorous upper bound
(:func:`residual_bound`). An empty pending block (an invariant subspace) is continued by
:func:`refill`; :func:`widen` appends fresh random directions so that later blocks are wide
enough to run the orthogonalization as matrix-matrix products.

The basis is stored as row panels of at most :data:`PANEL_ROWS` basis vectors each (the rows of
Q^T, so each panel's column view is column-major, as the products return their blocks): the
basis grows without ever being copied, and the unused room of the last panel stays below a
quarter of the basis and below one full panel. :class:`KrylovState` is
a plain dataclass of tensors and numbers, so a pre-empted job can
save it (:meth:`KrylovState.snapshot`) and resume bit-identically: the panel boundaries depend
only on the basis size, so a resumed run performs the very same floating-point operations.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch
from torch import Tensor

from scalable_hrank.linalg._types import MatMat, Reduce
from scalable_hrank.linalg.orth import inner, orthonormalize

__all__ = [
    "PANEL_ROWS",
    "WIDEN_ELEMENTS",
    "WIDEN_FROM",
    "KrylovState",
    "asymmetry",
    "check_product",
    "draw",
    "allocated_vectors",
    "init_state",
    "refill",
    "residual_bound",
    "step",
    "target_width",
    "widen",
]

F64 = torch.float64
#: Basis vectors per storage panel: large enough that products with a panel run at matrix-
#: matrix speed, small enough that the unused tail of the last panel stays a few percent of a
#: basis in the thousands.
PANEL_ROWS = 256


#: Basis size from which blocks are widened (``max_block_size`` of the rank solver).
WIDEN_FROM = 256
#: Basis elements (n m) from which blocks are widened: below it the basis stays in the CPU's
#: caches, thin blocks are not memory-bound, and widening would only cost products.
WIDEN_ELEMENTS = 1 << 24


def target_width(m: int, n: int, block_size: int, max_block_size: int) -> int:
    """Pending-block width the rank solver aims for at basis size m (vectors of length n).

    ``block_size`` until the basis holds :data:`WIDEN_FROM` vectors and
    :data:`WIDEN_ELEMENTS` numbers, then ``m / 8`` rounded down to a multiple of
    ``block_size``, between ``block_size`` and ``max_block_size``. The widening adds at most
    about one widest block of products in all, and lets each pass over the basis (which no
    longer fits in the caches) run at matrix-matrix speed.
    """
    if m < WIDEN_FROM or m * n < WIDEN_ELEMENTS or max_block_size <= block_size:
        return block_size
    return min(max_block_size, max(block_size, (m // 8) // block_size * block_size))


@dataclass
class KrylovState:
    """Everything a block Krylov run needs to continue (see :func:`krylov_rank`).

    Treat it as read-only inside ``on_block``; :meth:`snapshot` returns a compact deep copy
    (the last panel trimmed to the rows in use) suitable for ``torch.save``.

    Attributes:
        n: Operator size (local rows when sharded).
        block_size: Requested block width b.
        dtype: Basis dtype (the operator's).
        panels: Row panels of Q^T: the panel opened at basis size s holds
            :func:`panel_height` (s) vectors from s on (shape (rows, n)); the last one is
            in use up to ``size`` (a snapshot trims it to those rows).
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
    panels: list[Tensor]
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
    def columns(self) -> list[Tensor]:
        """The basis as (n, m_i) column views of the panels in use (no copy)."""
        out, start = [], 0
        for panel in self.panels:
            rows = min(panel.shape[0], self.size - start)
            if rows > 0:
                out.append(panel[:rows].mT)
            start += panel_height(start)
        return out

    @property
    def basis(self) -> Tensor:
        """Q as one (n, m) tensor: a copy of the basis (memory m n); prefer :attr:`columns`."""
        cols = self.columns
        if not cols:
            return self.pending.new_zeros(self.n, 0)
        return cols[0] if len(cols) == 1 else torch.cat(cols, dim=1)

    def combine(self, coeffs: Tensor) -> Tensor:
        """Return ``Q @ coeffs`` for coeffs of shape (m, k) (any dtype; cast to the basis')."""
        coeffs = coeffs.to(device=self.pending.device, dtype=self.dtype)
        out = self.pending.new_zeros(self.n, coeffs.shape[1])
        start = 0
        for cols in self.columns:
            out.addmm_(cols, coeffs[start:start + cols.shape[1]])
            start += cols.shape[1]
        return out

    def snapshot(self) -> KrylovState:
        """Return a compact deep copy (last panel trimmed to its rows in use, tensors cloned)."""
        def cp(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.detach().clone()

        panels = [cols.mT.clone() for cols in self.columns]
        return replace(self, panels=panels, projected=self.projected.clone(),
                       pending=self.pending.clone(), coupling=cp(self.coupling),
                       generator_state=self.generator_state.clone(),
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
    """Orthonormalize the start block (n, b) and return a fresh state (empty basis)."""
    orth = orthonormalize(start, None, reduce=reduce)
    return KrylovState(
        n=n, block_size=block_size, dtype=start.dtype, panels=[], size=0,
        projected=torch.zeros(0, 0, dtype=F64, device=start.device),
        pending=orth.block, coupling=None, last_width=0, residual_norm=math.inf,
        dropped_sq=0.0, asym_sq=0.0, num_matvecs=0, num_blocks=0,
        generator_state=generator.get_state(), shard=shard)


def panel_height(start: int) -> int:
    """Rows of the panel that opens when the basis holds ``start`` vectors.

    A sixteenth of the basis so far, rounded up to a multiple of 16, between 16 and
    :data:`PANEL_ROWS`: the unused room of the last panel stays below a sixteenth of the basis
    plus 16 and below :data:`PANEL_ROWS`, and no panel is ever copied to grow.
    """
    return min(PANEL_ROWS, 16 * max(1, -(-start // 256)))


def allocated_vectors(m: int, dim: int) -> int:
    """Basis vectors allocated for a basis of m vectors (space dimension ``dim``)."""
    start = 0
    while start < min(m, dim):
        start += min(panel_height(start), dim - start)
    return start


def _append(state: KrylovState, x: Tensor) -> None:
    """Write the columns of x (n, k) as the next basis vectors, opening panels as needed.

    Panels never move; only a trimmed last panel from a snapshot is reopened at full height
    (a copy of less than one panel, once per resume).
    """
    done, k = 0, x.shape[1]
    while done < k:
        m = state.size
        index, start = 0, 0
        while start + panel_height(start) <= m:
            start += panel_height(start)
            index += 1
        height = min(panel_height(start), state.dim - start)
        row = m - start
        take = min(k - done, height - row)
        if index == len(state.panels):
            state.panels.append(x.new_empty(height, state.n))
        elif state.panels[index].shape[0] < height:
            grown = x.new_empty(height, state.n)
            grown[:row] = state.panels[index][:row]
            state.panels[index] = grown
        state.panels[index][row:row + take] = x[:, done:done + take].mT
        state.size = m + take
        done += take


def check_product(x: Tensor, ax: Tensor) -> None:
    """Raise if a product has the wrong shape, dtype or device, or is not finite."""
    if ax.shape != x.shape or ax.dtype != x.dtype or ax.device != x.device:
        msg = (f"matmat must map (n, k) {x.dtype} on {x.device} to the same; got "
               f"{tuple(ax.shape)} {ax.dtype} on {ax.device} for {tuple(x.shape)}")
        raise ValueError(msg)


def step(state: KrylovState, matmat: MatMat, reduce: Reduce, *, width: int,
         drop_tol: Callable[[float, int], float]) -> None:
    """Multiply (the first ``width`` columns of) the pending block and extend the basis.

    One product of ``width`` columns does double duty: it fills column block j of
    B = Q^T A Q (float64) and, projected and orthonormalized (block CGS2, rank-revealing),
    gives the next block. ``drop_tol(scale, m)`` gives the absolute threshold below which
    residual directions are dropped, from the largest product column norm seen
    (``extra["scale"]``) and the basis size.

    Cost: ``width`` products and about 4 n m width flops for the first Gram-Schmidt pass
    (which also fills B) plus up to as much again for the second, which only the residual
    directions that lost most of their norm in the first get
    (:data:`~.orth.REORTH_RATIO`), plus O(n width^2) within the block.
    Memory besides the basis: the pending block while the product runs, then the product and
    its residual; the factorization works in the residual's storage, which becomes the next
    pending block.
    """
    x = state.pending[:, :width]
    ax = matmat(x)
    check_product(x, ax)
    colsq = torch.linalg.vector_norm(ax, dim=0, dtype=F64) ** 2
    if reduce is not None:
        colsq = reduce(colsq)
    if not bool(torch.isfinite(colsq).all()) and not bool(torch.isfinite(ax).all()):
        msg = "matmat returned NaN or infinity"
        raise FloatingPointError(msg)
    state.num_matvecs += width
    state.num_blocks += 1
    m = state.size
    old = state.columns
    c_old = (torch.cat([inner(cols, ax, reduce, dtype=F64) for cols in old], dim=0) if old
             else ax.new_zeros(0, width, dtype=F64))
    d = inner(x, ax, reduce, dtype=F64)
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
    # The block joins the basis and its storage is released before the residual is formed.
    _append(state, x)
    del x
    state.pending = state.pending.new_empty(state.n, 0)
    # First Gram-Schmidt pass from the coefficients that just filled B (no copy of the
    # product is kept: the coupling comes from the factorization of the residual).
    # The residual is column-major (as the products take their blocks), whatever ax is.
    w = torch.empty_strided(ax.shape, (1, ax.shape[0]), dtype=ax.dtype, device=ax.device)
    w.copy_(ax)
    del ax
    coeffs, start = torch.cat([c_old, d]).to(w.dtype), 0
    for cols in state.columns:
        w.addmm_(cols, coeffs[start:start + cols.shape[1]], alpha=-1.0)
        start += cols.shape[1]
    removed = torch.cat([c_old, d])
    orth = orthonormalize(w, state.columns, drop_tol=drop_tol(scale, state.size),
                          reduce=reduce, passes=0, removed_gram=removed.mT @ removed,
                          overwrite=True)
    del w
    state.pending = orth.block
    state.residual_norm = float(orth.norms[0]) if orth.norms.numel() else 0.0
    state.dropped_sq += orth.dropped_norm ** 2
    # X_next^T A X_last = X_next^T W: X_next is orthogonal to the basis that W was cleared of
    state.coupling = orth.coupling
    state.last_width = width


def _fresh(state: KrylovState, k: int, generator: torch.Generator, reduce: Reduce,
           device: torch.device | str, against: list[Tensor]) -> Tensor:
    """Draw k Gaussian directions, orthonormalized against ``against`` (fewer if dependent)."""
    g = draw(state.n, k, generator, state.dtype, device, state.shard)
    eps = torch.finfo(state.dtype).eps
    # One Gram-Schmidt pass in g's own storage, the second only where the norm drop calls
    # for it (orthonormalize): one block of memory, as a step's residual.
    against = [p for p in against if p.shape[1]]
    coeffs = [inner(p, g, reduce, dtype=F64) for p in against]
    for p, c in zip(against, coeffs, strict=True):
        g.addmm_(p, c.to(g.dtype), alpha=-1.0)
    removed = torch.cat(coeffs) if coeffs else g.new_zeros(0, k, dtype=F64)
    return orthonormalize(g, against, drop_tol=8.0 * eps * math.sqrt(state.dim),
                          reduce=reduce, passes=0, removed_gram=removed.mT @ removed,
                          overwrite=True).block


def refill(state: KrylovState, generator: torch.Generator, reduce: Reduce,
           device: torch.device | str) -> None:
    """Replace an empty pending block by fresh Gaussian directions orthogonal to the basis."""
    k = min(state.block_size, state.dim - state.size)
    state.pending = state.pending.new_zeros(state.n, 0)  # released before the draw
    if k <= 0:
        return
    state.pending = _fresh(state, k, generator, reduce, device, state.columns)
    state.coupling = None
    state.last_width = 0


def widen(state: KrylovState, width: int, generator: torch.Generator, reduce: Reduce,
          device: torch.device | str) -> None:
    """Append Gaussian directions to the pending block until it has ``width`` columns.

    The new directions are orthonormal to the basis and to the pending block, so the Krylov
    residual of the last product still lies in the pending block (their rows of
    ``coupling`` are zero) and :func:`residual_bound` stays valid. Wider blocks turn the
    orthogonalization into matrix-matrix products; each added column costs one product.
    """
    have = state.pending.shape[1]
    k = min(width, state.dim - state.size) - have
    if k <= 0 or have == 0:
        return
    new = _fresh(state, k, generator, reduce, device, [*state.columns, state.pending])
    state.pending = torch.cat([state.pending, new], dim=1)
    if state.coupling is not None:
        pad = state.coupling.new_zeros(new.shape[1], state.coupling.shape[1])
        state.coupling = torch.cat([state.coupling, pad], dim=0)


def residual_bound(state: KrylovState) -> float:
    """Upper bound on ``||A Q - Q B||`` (last residual block plus everything dropped)."""
    return math.hypot(state.residual_norm, math.sqrt(state.dropped_sq))


def asymmetry(state: KrylovState) -> float:
    """Relative asymmetry ``||B - B^T||_F / ||B||_F`` over the entries two products give."""
    norm = float(torch.linalg.matrix_norm(state.projected)) if state.size else 0.0
    return math.sqrt(state.asym_sq) / norm if norm > 0 else 0.0
