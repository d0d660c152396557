"""Block orthonormalization against a basis: CGS2 plus a rank-revealing block step.

Every inner product goes through :func:`inner`, so the same code runs on a basis sharded by
rows across processes (each process holds a slice of every vector; ``reduce`` sums the small
Gram matrices). Nothing here moves an n-vector to the host.

A basis is an (n, m) tensor with orthonormal columns or a sequence of such column panels
(together orthonormal): a growing Krylov basis is kept in panels so that it never has to be
copied to grow. Classical Gram-Schmidt against panels computes every panel's coefficients from
the same input, so it is the same projection as against the concatenated basis.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from scalable_hrank.linalg._types import Reduce

__all__ = ["Basis", "OrthBlock", "inner", "orthonormalize", "project_out"]

#: An orthonormal basis: one (n, m) tensor, or a sequence of (n, m_i) column panels.
Basis = Tensor | Sequence[Tensor] | None

#: Rows of n processed at a time when inner products are accumulated in a wider dtype.
_CHUNK_ELEMENTS = 1 << 22


def inner(a: Tensor, b: Tensor, reduce: Reduce = None, *,
          dtype: torch.dtype | None = None) -> Tensor:
    """Return ``a^T b``, summed over processes by ``reduce``.

    Args:
        a: Shape (n, p) (or (n,)), the local rows of p vectors.
        b: Shape (n, q) (or (n,)), same dtype and device as ``a``.
        reduce: Sums the (p, q) result over processes; None for one process.
        dtype: Accumulation dtype of the result (e.g. ``torch.float64`` for a float32 basis).
            The wider product is formed in chunks of rows, so at most ~4M extra elements are
            alive at once; None keeps the input dtype.

    Returns:
        Shape (p, q) (scalars for vectors), on the device of ``a``, in ``dtype`` or the input
        dtype. Cost: n p q flops, no products with the operator.
    """
    if dtype is None or dtype == a.dtype:
        out = a.mT @ b if a.dim() == 2 else a @ b
        if dtype is not None and out.dtype != dtype:
            out = out.to(dtype)
    else:
        a2 = a if a.dim() == 2 else a.unsqueeze(1)
        b2 = b if b.dim() == 2 else b.unsqueeze(1)
        n = a2.shape[0]
        width = max(1, a2.shape[1] + b2.shape[1])
        step = max(1024, _CHUNK_ELEMENTS // width)
        out = torch.zeros(a2.shape[1], b2.shape[1], dtype=dtype, device=a.device)
        for start in range(0, n, step):
            stop = min(n, start + step)
            out += a2[start:stop].to(dtype).mT @ b2[start:stop].to(dtype)
        if a.dim() == 1:
            out = out.squeeze(0)
        if b.dim() == 1:
            out = out.squeeze(-1)
    if reduce is not None:
        out = reduce(out)
    return out


def panels_of(basis: Basis) -> list[Tensor]:
    """The non-empty (n, m_i) column panels of ``basis`` (a tensor is one panel)."""
    if basis is None:
        return []
    if isinstance(basis, Tensor):
        return [basis] if basis.shape[1] else []
    return [p for p in basis if p.shape[1]]


def project_out(w: Tensor, basis: Basis, reduce: Reduce = None, *,
                passes: int = 2) -> Tensor:
    """Remove the components of ``w`` along an orthonormal ``basis`` (classical Gram-Schmidt).

    Args:
        w: Shape (n, k).
        basis: Shape (n, m) with orthonormal columns (a column view is fine), a sequence of
            such column panels, or None.
        reduce: See :func:`inner`.
        passes: Number of CGS passes; 2 ("twice is enough") gives orthogonality to working
            precision.

    Returns:
        A new (n, k) tensor ``(I - Q Q^T)^passes w`` (``w`` itself when ``passes`` is 0 and
        there is a basis). Cost: 4 n m k flops per pass, memory of one extra (n, k) block.
    """
    panels = panels_of(basis)
    if not panels:
        return w.clone()
    for _ in range(passes):
        coeffs = [inner(p, w, reduce) for p in panels]
        w = w - panels[0] @ coeffs[0]
        for p, c in zip(panels[1:], coeffs[1:], strict=True):
            w.addmm_(p, c, alpha=-1.0)
    return w


@dataclass(frozen=True)
class OrthBlock:
    """Result of :func:`orthonormalize`.

    Attributes:
        block: Shape (n, k_kept), orthonormal columns orthogonal to the basis, input dtype.
            When ``fill`` was requested, dropped columns are replaced by fresh random ones
            (marked in ``num_random``).
        norms: Shape (k,), float64 on CPU: the singular values of the projected input block,
            descending (the spectral norm of the residual block is ``norms[0]``).
        dropped_norm: Frobenius norm of the part of the projected input that was dropped
            (columns below ``drop_tol``): an upper bound on what ``block`` fails to represent.
        num_random: Number of fresh random columns appended (``fill=True`` only).
    """

    block: Tensor
    norms: Tensor
    dropped_norm: float
    num_random: int = 0


def _rotate(w: Tensor, reduce: Reduce) -> tuple[Tensor, Tensor]:
    """Rotate the columns of w by the eigenvectors of its float64 Gram matrix.

    Returns the rotated block (orthogonal columns up to rounding, largest first) and its
    column norms measured directly (float64), which are accurate to about eps ||w|| even for
    the small ones (the Gram eigenvalues are only accurate to eps ||w||^2).
    """
    gram = inner(w, w, reduce, dtype=torch.float64)
    gram = 0.5 * (gram + gram.mT)
    _, vecs = torch.linalg.eigh(gram)
    vecs = vecs.flip(-1)
    y = w @ vecs.to(w.dtype)
    sq = (y.to(torch.float64) ** 2).sum(dim=0) if y.dtype != torch.float64 else (y * y).sum(0)
    if reduce is not None:
        sq = reduce(sq)
    return y, sq.clamp_min(0.0).sqrt()


def orthonormalize(w: Tensor, basis: Basis = None, *, drop_tol: float | None = None,
                   reduce: Reduce = None, generator: torch.Generator | None = None,
                   fill: bool = False, passes: int = 2) -> OrthBlock:
    """Orthonormalize a block against an orthonormal basis and within itself, rank-revealing.

    Steps: CGS2 against ``basis``; a rank-revealing factorization of the projected block (thin
    SVD on one process; with ``reduce``, two rotations by the eigenvectors of the float64 Gram
    matrix with the column norms measured directly, so every inner product is reducible); drop
    the directions with singular value ``<= drop_tol`` (their Frobenius norm is returned as
    ``dropped_norm``); then a second pass (project against ``basis`` again and re-orthonormalize
    within the block), and a third only when the second lost more than half of a column.

    Args:
        w: Shape (n, k), any float dtype; not modified.
        basis: Shape (n, m) orthonormal columns or a sequence of column panels (None or
            m = 0: no basis).
        drop_tol: Absolute threshold on the singular values of the projected block. Default:
            ``8 * k * eps(dtype) * max column norm of w`` (before projection).
        reduce: See :func:`inner`.
        generator: CPU generator for the replacement columns (``fill=True``).
        fill: Replace dropped columns by fresh Gaussian directions (drawn on CPU, moved),
            orthonormalized the same way, so the block keeps width k (while m + k <= n).
        passes: CGS passes against ``basis`` before the block step. 0 when the caller has
            already removed the basis components once (block Lanczos does): the first pass
            leaves components of about eps times the input's norm along the basis, below
            any drop threshold, and the second pass inside the block step removes them.

    Returns:
        An :class:`OrthBlock`. Cost: no operator products; about 8 n (m + k) k flops and two
        extra (n, k) blocks of memory.

    Raises:
        ValueError: If ``w`` is not two-dimensional or ``fill`` is set without a generator.
    """
    if w.dim() != 2:
        msg = f"w must have shape (n, k); got {tuple(w.shape)}"
        raise ValueError(msg)
    if fill and generator is None:
        msg = "fill=True needs a generator"
        raise ValueError(msg)
    n, k = w.shape
    eps = torch.finfo(w.dtype).eps
    if drop_tol is None:
        sq = (w.to(torch.float64) ** 2).sum(0)
        if reduce is not None:
            sq = reduce(sq)
        scale = float(sq.max().sqrt()) if k else 0.0
        drop_tol = 8.0 * max(k, 1) * eps * scale
    panels = panels_of(basis)
    m = sum(p.shape[1] for p in panels)
    if k == 0:
        empty = w.new_zeros(n, 0)
        return OrthBlock(empty, torch.zeros(0, dtype=torch.float64), 0.0)

    w = project_out(w, panels, reduce, passes=passes) if passes else w
    if reduce is None:
        # Backward-stable SVD of the tall block: singular values accurate to eps ||w||.
        u, sv, _ = torch.linalg.svd(w, full_matrices=False)
        norms = sv.to(torch.float64)
        keep = norms > drop_tol
        x = u if bool(keep.all()) else u[:, keep]
        del u
    else:
        # Sharded rows: Gram rotations (a block Jacobi sweep, twice, so the directions of the
        # small singular values are clean), column norms measured directly.
        y, norms = _rotate(w, reduce)
        y, norms = _rotate(y, reduce)
        keep = norms > drop_tol
        x = y[:, keep] / norms[keep].to(w.dtype)
    dropped_sq = float((norms[~keep] ** 2).sum())
    x, lost_sq = _second_pass(x, panels, reduce, norms[keep])
    dropped_sq += lost_sq
    out_norms = norms.cpu()

    num_random = 0
    if fill:
        want = min(k - x.shape[1], n - m - x.shape[1])
        if want > 0:
            extra = torch.randn(n, want, generator=generator, dtype=w.dtype)
            extra = extra.to(w.device)
            full = [*panels, x]
            extra = project_out(extra, full, reduce, passes=2)
            ey, enorms = _rotate(extra, reduce)
            ekeep = enorms > 8.0 * eps * math.sqrt(n)
            ex = ey[:, ekeep] / enorms[ekeep].to(w.dtype)
            ex, _ = _second_pass(ex, full, reduce, enorms[ekeep])
            x = torch.cat([x, ex], dim=1)
            num_random = ex.shape[1]
    return OrthBlock(x, out_norms, math.sqrt(dropped_sq), num_random)


def _second_pass(x: Tensor, basis: list[Tensor], reduce: Reduce,
                 scales: Tensor) -> tuple[Tensor, float]:
    """Re-orthogonalize unit columns against ``basis`` and each other ("twice is enough").

    ``scales`` (k,) are the sizes the unit columns stood for. A column that collapses (loses
    more than half its norm: it was mostly rounding) is dropped; returned is an upper bound on
    the squared size of what was lost: ``sum_i n_i^2 ||scales * v_i||^2`` over the dropped
    rotated columns i (norm n_i, rotation vector v_i).
    """
    lost_sq = 0.0
    for _ in range(2):
        if x.shape[1] == 0:
            return x, lost_sq
        coeffs = [inner(p, x, reduce) for p in basis]
        for p, c in zip(basis, coeffs, strict=True):
            x.addmm_(p, c, alpha=-1.0)  # x is this module's own block: in place
        gram = inner(x, x, reduce, dtype=torch.float64)
        _, vecs = torch.linalg.eigh(0.5 * (gram + gram.mT))
        y = x @ vecs.to(x.dtype)
        del x
        sq = (y.to(torch.float64) ** 2).sum(0)
        if reduce is not None:
            sq = reduce(sq)
        norms = sq.clamp_min(0.0).sqrt()
        keep = norms > 0.5
        if not bool(keep.all()):
            weights = (scales.to(vecs.device).unsqueeze(1) * vecs[:, ~keep]) ** 2
            lost_sq += float((norms[~keep] ** 2 * weights.sum(0)).sum())
            scales = torch.full((int(keep.sum()),), float(scales.max()), dtype=torch.float64)
        x = y.div_(norms.to(y.dtype)) if bool(keep.all()) else y[:, keep] / norms[keep].to(
            y.dtype)
        if bool(keep.all()):
            # One clean pass after the first: orthonormal to working precision.
            return x, lost_sq
    return x, lost_sq
