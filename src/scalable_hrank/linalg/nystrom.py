"""Randomized Nystrom approximation of a PSD operator (stable shifted algorithm).

Caveats for rank counting: the approximation is Loewner-below A (up to rounding and the
shift), so its count of eigenvalues above tau never exceeds the true count, but it
undercounts whenever the sketch misses part of the spectrum above tau (a flat tail above tau
saturates the sketch: grow it), and eigenvalues below about the shift ``nu`` are clipped to
zero. Counting the singular values of the raw one-pass sketch A Omega instead amplifies a
noise / tail floor by about ``sqrt(n / sketch_size)`` (shared/DESIGN.md). Use
:func:`~scalable_hrank.linalg.krylov_rank.krylov_rank` (Rayleigh-Ritz with a certificate) for
rank decisions; Nystrom is a fast PSD approximation with a saturation check.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from scalable_hrank._validation import check_positive_int, check_tolerance
from scalable_hrank.linalg import block_krylov as _block
from scalable_hrank.linalg._types import MatMat, Reduce
from scalable_hrank.linalg.orth import inner, orthonormalize

__all__ = ["NystromApprox", "NystromRank", "nystrom", "nystrom_rank"]

F64 = torch.float64


@dataclass(frozen=True)
class NystromApprox:
    """``A ~ U diag(eigenvalues) U^T``.

    Attributes:
        eigenvalues: Shape (l,) float64 on CPU, descending, ``>= 0`` (clipped at 0 after the
            shift is removed).
        eigenvectors: Shape (n, l), operator dtype and device (orthonormal up to the
            accuracy of the small eigenvalues' directions).
        shift: nu, the stabilizing shift ``sqrt(n) * eps(dtype) * ||Y||``.
        num_matvecs: Products spent (= l, one pass).
    """

    eigenvalues: Tensor
    eigenvectors: Tensor
    shift: float
    num_matvecs: int


@dataclass(frozen=True)
class NystromRank:
    """Count of Nystrom eigenvalues above a threshold.

    Attributes:
        rank: ``#{eigenvalues > tol}``.
        tol: Absolute threshold used.
        saturated: The count reached ``sketch_size - oversampling``: the sketch is too small,
            grow it (the count is then only a lower bound).
    """

    rank: int
    tol: float
    saturated: bool


def nystrom(matmat: MatMat, n: int, *, sketch_size: int, generator: torch.Generator,
            dtype: torch.dtype = torch.float64, device: torch.device | str = "cpu",
            reduce: Reduce = None) -> NystromApprox:
    """Single-pass randomized Nystrom approximation of a PSD operator.

    Tropp, Yurtsever, Udell and Cevher (2017), "Fixed-rank approximation of a positive-
    semidefinite matrix from streaming data", Alg. 3: Omega orthonormal Gaussian (n, l),
    Y = A Omega, nu = sqrt(n) eps(||Y||), Y_nu = Y + nu Omega, C = chol(Omega^T Y_nu),
    B = Y_nu C^{-1}, B = U Sigma V^T, Lambda = max(0, Sigma^2 - nu). The core is float64:
    Omega^T Y_nu, its Cholesky factor, B itself (an (n, l) float64 temporary) and Sigma^2 from
    the eigendecomposition of B^T B (absolute error about eps(float64) ||A||, so the
    eigenvalues above the shift are accurate; their directions less so when tiny).

    Args:
        matmat: ``X (n, k) -> A X (n, k)`` in ``dtype`` on ``device``; A symmetric PSD.
        n: Operator size.
        sketch_size: l (products, one block).
        generator: CPU generator for Omega.
        dtype: Sketch dtype.
        device: Sketch device.
        reduce: Sums inner products over processes when vectors are sharded by rows.

    Returns:
        A :class:`NystromApprox`. Cost: l products in one pass (one call), memory 3 l
        length-n vectors plus an (n, l) float64 temporary.

    Raises:
        ValueError: If ``Omega^T (Y + nu Omega)`` is not positive definite (A is not PSD).
    """
    check_positive_int("n", n)
    check_positive_int("sketch_size", sketch_size, maximum=n)
    omega = orthonormalize(_block.draw(n, sketch_size, generator, dtype, device), None,
                           reduce=reduce, generator=generator, fill=True).block
    y = matmat(omega)
    _block.check_product(omega, y)
    ynorm = math.sqrt(float(inner(y, y, reduce, dtype=F64).diagonal().sum()))
    nu = math.sqrt(n) * torch.finfo(dtype).eps * ynorm
    y_nu = y + nu * omega
    core = inner(omega, y_nu, reduce, dtype=F64)
    core = 0.5 * (core + core.mT)
    chol, info = torch.linalg.cholesky_ex(core)
    if int(info) != 0:
        msg = "Omega^T (A Omega + nu Omega) is not positive definite: is A PSD?"
        raise ValueError(msg)
    # B = Y_nu C^{-1} with core = L L^T, C = L^T, formed explicitly in float64 (the
    # algebraic shortcut C^{-T} (Y^T Y) C^{-1} amplifies the Gram's rounding by 1 / nu).
    b = torch.linalg.solve_triangular(chol.mT, y_nu.to(F64), upper=True, left=False)
    btb = inner(b, b, reduce)
    s2, v = torch.linalg.eigh(0.5 * (btb + btb.mT))
    s2, v = s2.flip(0).clamp_min(0.0), v.flip(1)
    lam = (s2 - nu).clamp_min(0.0)
    inv_sigma = torch.where(s2 > 0, s2.clamp_min(1e-300).rsqrt(), torch.zeros_like(s2))
    u = (b @ (v * inv_sigma)).to(dtype)
    return NystromApprox(eigenvalues=lam.cpu(), eigenvectors=u, shift=nu,
                         num_matvecs=sketch_size)


def nystrom_rank(approx: NystromApprox, *, tol: float | None = None,
                 rtol: float | None = None, oversampling: int = 0) -> NystromRank:
    """Count Nystrom eigenvalues above ``tol`` (or ``rtol * largest``) and flag saturation.

    Args:
        approx: From :func:`nystrom`.
        tol: Absolute threshold (overrides ``rtol``).
        rtol: Relative threshold (default 1e-8) times the largest eigenvalue. Eigenvalues at
            or below about ``shift`` are clipped to 0, so they are never counted.
        oversampling: Saturation when ``rank >= sketch_size - oversampling``.

    Returns:
        A :class:`NystromRank`. No products.
    """
    tol = check_tolerance("tol", tol)
    rtol = check_tolerance("rtol", rtol)
    lam = approx.eigenvalues
    if tol is None:
        top = float(lam.max()) if lam.numel() else 0.0
        tol = (1e-8 if rtol is None else rtol) * top
    rank = int((lam > tol).sum())
    size = lam.numel()
    return NystromRank(rank=rank, tol=tol, saturated=rank >= size - oversampling)
