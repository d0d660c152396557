"""Block orthonormalization against a basis: (selective) CGS2 plus a rank-revealing block step.

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
        there is a basis), in the layout of ``w``. Cost: 4 n m k flops per pass, memory of
        one extra (n, k) block.
    """
    panels = panels_of(basis)
    if not panels:
        return w.clone()
    if passes:
        # one new block in w's layout (column-major blocks update fastest), updated in
        # place by every pass
        w = w.clone()
    for _ in range(passes):
        coeffs = [inner(p, w, reduce) for p in panels]
        for p, c in zip(panels, coeffs, strict=True):
            w.addmm_(p, c, alpha=-1.0)
    return w


@dataclass(frozen=True)
class OrthBlock:
    """Result of :func:`orthonormalize`.

    Attributes:
        block: Shape (n, k_kept), orthonormal columns orthogonal to the basis, input dtype.
            When ``fill`` was requested, dropped columns are replaced by fresh random ones
            (marked in ``num_random``).
        norms: Shape (k,), float64 on CPU: the singular values of the projected input block
            (column norms after its rotation to orthogonal columns, measured directly),
            descending (the spectral norm of the residual block is ``norms[0]``).
        dropped_norm: Frobenius norm of the part of the projected input that was dropped
            (columns below ``drop_tol``): an upper bound on what ``block`` fails to represent.
        num_random: Number of fresh random columns appended (``fill=True`` only).
        coupling: Shape (k_kept, k) float64, ``block^T w`` for the projected input w (the
            fresh columns' rows are zero), from the factorization rather than a pass over w,
            so that w need not be kept.
    """

    block: Tensor
    norms: Tensor
    dropped_norm: float
    num_random: int = 0
    coupling: Tensor | None = None


#: A direction whose norm kept at least this fraction through the caller's Gram-Schmidt pass
#: (norm after / norm before, per direction of the block) is orthogonal to the basis to within
#: 1 / REORTH_RATIO times the rounding of one pass, so it skips the second pass; the others
#: get it ("twice is enough"). This is the classical choice (Daniel, Gragg, Kaufman and
#: Stewart), the loosest under which what the basis has already lost is not amplified: with a
#: looser ratio the loss grows from block to block (1/16 lost orthogonality completely).
REORTH_RATIO = 1.0 / math.sqrt(2.0)

#: Rows per chunk of an in-place rotation (:func:`_rotate_`): the only extra memory it needs.
_ROTATE_ELEMENTS = 1 << 18


def _column_norms(w: Tensor, reduce: Reduce) -> Tensor:
    """Column 2-norms of w (n, k) in float64, summed over processes (no (n, k) temporary)."""
    sq = torch.linalg.vector_norm(w, dim=0, dtype=torch.float64) ** 2
    if reduce is not None:
        sq = reduce(sq)
    return sq.clamp_min(0.0).sqrt()


def _rotate_(w: Tensor, reduce: Reduce) -> tuple[Tensor, Tensor]:
    """Rotate the columns of w in place by the eigenvectors of its float64 Gram matrix.

    Returns the rotation (k, k) float64 (``w_after = w_before @ rotation``, largest Gram
    eigenvalue first) and the column norms of the rotated block measured directly (float64;
    the Gram eigenvalues are only accurate to eps ||w||^2, and how well the small columns
    match singular directions is :func:`_factor_`'s concern). Memory: a chunk of
    :data:`_ROTATE_ELEMENTS` numbers, not a block.
    """
    gram = inner(w, w, reduce, dtype=torch.float64)
    _, vecs = torch.linalg.eigh(0.5 * (gram + gram.mT))
    vecs = vecs.flip(-1)
    rot = vecs.to(w.dtype)
    rows = max(256, _ROTATE_ELEMENTS // max(1, w.shape[1]))
    for start in range(0, w.shape[0], rows):
        chunk = w[start:start + rows]
        chunk.copy_(chunk @ rot)
    return vecs, _column_norms(w, reduce)


#: Columns whose norm after two rotations is below this fraction of the largest are resolved
#: separately (:func:`_factor_`): a Gram matrix resolves norms only down to about sqrt(eps)
#: of the block's largest.
_SPLIT = 1e-6


def _factor_(w: Tensor, reduce: Reduce) -> tuple[Tensor, Tensor]:
    """Make the columns of w mutually orthogonal in place, resolving small directions.

    Two Gram rotations (:func:`_rotate_`) of the columns still to be resolved; the columns
    whose measured norm is below :data:`_SPLIT` of the largest are then cleared of the larger
    ones (classical Gram-Schmidt within the block, in place) and resolved the same way on
    their own scale, so every norm is measured to about eps times the block's largest (as a
    thin SVD gives it), however ill-conditioned w is.

    Returns:
        ``(t, norms)``: t (k, k) float64 with ``w_after = w_before @ t`` (up to rounding) and
        the measured column norms (k,) float64 of w_after.
    """
    k = w.shape[1]
    t = torch.eye(k, dtype=torch.float64, device=w.device)
    norms = torch.zeros(k, dtype=torch.float64, device=w.device)
    lo = 0
    while lo < k:
        sub = w[:, lo:]
        r1, _ = _rotate_(sub, reduce)
        r2, part = _rotate_(sub, reduce)
        t[:, lo:] = t[:, lo:] @ (r1 @ r2.to(r1.device))
        part = part.to(norms.device)
        big = part > _SPLIT * part.max()
        nb = int(big.long().cumprod(0).sum())
        norms[lo:lo + nb] = part[:nb]
        if nb in (0, k - lo):
            norms[lo + nb:] = part[nb:]
            break
        for _ in range(2):  # clear the small columns of the large ones, twice
            c = inner(sub[:, :nb], sub[:, nb:], reduce, dtype=torch.float64)
            c = c / (part[:nb] ** 2).unsqueeze(1)
            sub[:, nb:].addmm_(sub[:, :nb], c.to(w.dtype), alpha=-1.0)
            t[:, lo + nb:] -= t[:, lo:lo + nb] @ c
        lo += nb
    return t, norms


def _keep_columns(x: Tensor, keep: Tensor) -> Tensor:
    """``x[:, keep]``: a view when the kept columns are a leading run, else a copy."""
    kk = int(keep.sum())
    if bool(keep[:kk].all()):
        return x[:, :kk]
    return x[:, keep]


def orthonormalize(w: Tensor, basis: Basis = None, *, drop_tol: float | None = None,
                   reduce: Reduce = None, generator: torch.Generator | None = None,
                   fill: bool = False, passes: int = 2, removed_gram: Tensor | None = None,
                   overwrite: bool = False) -> OrthBlock:
    """Orthonormalize a block against an orthonormal basis and within itself, rank-revealing.

    Steps: CGS2 against ``basis`` (``passes``); a rank-revealing factorization of the projected
    block (:func:`_factor_`: rotations by the eigenvectors of its float64 Gram matrix, twice,
    with the small directions resolved apart from the large ones and the column norms measured
    directly, all in place, every inner product reducible over processes); drop the
    directions with norm ``<= drop_tol`` (their Frobenius norm is returned as
    ``dropped_norm``); then a second pass (project against ``basis`` again and
    re-orthonormalize within the block), and a third only when the second lost more than half
    of a column. With ``removed_gram`` the second pass is selective: only the directions that
    kept less than :data:`REORTH_RATIO` of their norm through the caller's pass get it.

    Args:
        w: Shape (n, k), any float dtype; not modified unless ``overwrite``.
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
        removed_gram: With ``passes=0``: shape (k, k) float64, the Gram matrix ``C^T C`` of
            the coefficients C the caller's pass removed (w = w_0 - Q C), so that the squared
            norm of direction t before that pass is ``t^T (C^T C + w^T w) t``. None: every
            direction gets the second pass.
        overwrite: With ``passes=0``: work in w's own storage (the returned block is a view
            of it) instead of a copy.

    Returns:
        An :class:`OrthBlock` (with ``coupling``). Cost: no operator products; about
        4 n m k flops for the second pass (on the directions that need it) plus
        ``4 n m k passes`` and about 12 n k^2 within the block. Memory: one (n, k) block
        (none with ``overwrite``) and a few k x k matrices.

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
        scale = float(_column_norms(w, reduce).max()) if k else 0.0
        drop_tol = 8.0 * max(k, 1) * eps * scale
    panels = panels_of(basis)
    m = sum(p.shape[1] for p in panels)
    if k == 0:
        empty = w.new_zeros(n, 0)
        return OrthBlock(empty, torch.zeros(0, dtype=torch.float64), 0.0,
                         coupling=torch.zeros(0, 0, dtype=torch.float64))

    if passes:
        w = project_out(w, panels, reduce, passes=passes)
    elif not overwrite:
        w = w.clone()
    rot, norms = _factor_(w, reduce)  # w now = w_in @ rot, mutually orthogonal columns
    keep = norms > drop_tol
    dropped_sq = float((norms[~keep] ** 2).sum())
    scales = norms[keep]
    # X^T W_in = diag(1 / s) W_now[:, keep]^T W_now rot^-1 (W_in = W_now rot^-1): the Gram of
    # the rotated block carries the rotation's rounding, which is relatively large for the
    # small directions, so it is measured rather than taken as diagonal
    gram = inner(w, w, reduce, dtype=torch.float64)
    coupling = torch.linalg.solve(rot.mT, (gram[keep] / scales.unsqueeze(1)).mT).mT
    x = _keep_columns(w, keep)
    x.div_(scales.to(device=x.device, dtype=x.dtype))
    first = 0
    if removed_gram is not None and passes == 0 and x.shape[1]:
        kept_rot = rot[:, keep.to(rot.device)]
        before_sq = ((removed_gram.to(rot.device) @ kept_rot) * kept_rot).sum(0) + scales ** 2
        # clean: kept REORTH_RATIO of its own norm through the pass (orthogonal to the basis)
        # and of the block's largest (orthogonal to the block's other directions after the
        # in-place rotations, whose rounding is eps times the largest)
        clean = ((scales >= REORTH_RATIO * before_sq.clamp_min(0.0).sqrt())
                 & (scales >= REORTH_RATIO * scales.max()))
        # a leading run of clean directions skips the pass; the rest (a view) gets it
        first = int(clean.long().cumprod(0).sum())
    if first < x.shape[1]:
        tail = x[:, first:]
        against = [*panels, x[:, :first]] if first else panels
        known = [None] * len(panels) + ([coupling[:first]] if first else [])
        tail, lost_sq, rows = _second_pass(tail, against, reduce, scales[first:],
                                           rows=coupling[first:], known=known)
        dropped_sq += lost_sq
        coupling = torch.cat([coupling[:first], rows])
        if tail.shape[1] != x.shape[1] - first:
            x = torch.cat([x[:, :first], tail], dim=1)
    out_norms = norms.sort(descending=True).values.cpu()

    num_random = 0
    if fill:
        want = min(k - x.shape[1], n - m - x.shape[1])
        if want > 0:
            extra = torch.randn(n, want, generator=generator, dtype=w.dtype)
            extra = extra.to(w.device)
            full = [*panels, x]
            extra = project_out(extra, full, reduce, passes=2)
            _, enorms = _factor_(extra, reduce)
            ekeep = enorms > 8.0 * eps * math.sqrt(n)
            ex = extra[:, ekeep.to(extra.device)] / enorms[ekeep].to(w.dtype)
            ex, _, _ = _second_pass(ex, full, reduce, enorms[ekeep])
            x = torch.cat([x, ex], dim=1)
            num_random = ex.shape[1]
            coupling = torch.cat([coupling, coupling.new_zeros(ex.shape[1], k)])
    return OrthBlock(x, out_norms, math.sqrt(dropped_sq), num_random, coupling)


def _second_pass(x: Tensor, basis: list[Tensor], reduce: Reduce, scales: Tensor, *,
                 rows: Tensor | None = None, known: list[Tensor | None] | None = None,
                 ) -> tuple[Tensor, float, Tensor | None]:
    """Re-orthogonalize unit columns against ``basis`` and each other, in place ("twice is enough").

    ``scales`` (k,) are the sizes the unit columns stood for. A column that collapses (loses
    more than half its norm: it was mostly rounding) is dropped; returned is an upper bound on
    the squared size of what was lost: ``sum_i n_i^2 ||scales * v_i||^2`` over the dropped
    rotated columns i (norm n_i, rotation vector v_i). ``rows`` (k, q) float64 are ``x^T W``
    for some block W and ``known[i]`` the rows ``basis[i]^T W`` (None: rounding, taken as
    zero); the rows of the result are returned updated along (None without ``rows``).
    """
    lost_sq = 0.0
    for _ in range(2):
        if x.shape[1] == 0:
            return x, lost_sq, rows
        coeffs = [inner(p, x, reduce) for p in basis]
        for p, c in zip(basis, coeffs, strict=True):
            x.addmm_(p, c, alpha=-1.0)  # x is this module's own block: in place
        if rows is not None:
            for c, kn in zip(coeffs, known or [None] * len(basis), strict=True):
                if kn is not None:
                    rows = rows - c.to(torch.float64).mT @ kn
        vecs, norms = _rotate_(x, reduce)
        vecs, norms = vecs.to(scales.device), norms.to(scales.device)
        keep = norms > 0.5
        if rows is not None:
            rows = vecs.mT @ rows
        if bool(keep.all()):
            # One clean pass after the first: orthonormal to working precision.
            x.div_(norms.to(device=x.device, dtype=x.dtype))
            return x, lost_sq, None if rows is None else rows / norms.unsqueeze(1)
        weights = (scales.unsqueeze(1) * vecs[:, ~keep]) ** 2
        lost_sq += float((norms[~keep] ** 2 * weights.sum(0)).sum())
        scales = torch.full((int(keep.sum()),), float(scales.max()), dtype=torch.float64,
                            device=scales.device)
        x = x[:, keep.to(x.device)] / norms[keep].to(device=x.device, dtype=x.dtype)
        if rows is not None:
            rows = rows[keep] / norms[keep].unsqueeze(1)
    return x, lost_sq, rows
