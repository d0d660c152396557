"""Adapters to the peer libraries we cross-check against (optional extra ``peers``).

GPyTorch's ``linear_operator.utils.lanczos.lanczos_tridiag`` serves as an alternative
tridiagonalization backend for SLQ counts (only its tridiagonalization: its
``lanczos_tridiag_to_diag`` masks negative eigenvalues, which would corrupt counts of an
indefinite Hessian). Nothing here is imported by the core package.
"""

from __future__ import annotations

import torch
from torch import Tensor

from scalable_hrank.linalg import MatMat, smooth_step


def gpytorch_tridiagonal(matmat: MatMat, v0: Tensor, *, num_matvecs: int) -> Tensor:
    """Lanczos tridiagonal T (m, m), float64 on CPU, from GPyTorch's ``lanczos_tridiag``.

    Args:
        matmat: ``X (n, k) -> A X (n, k)``.
        v0: Start vector (n,) in the operator's dtype and device.
        num_matvecs: Steps m (products).

    Raises:
        ModuleNotFoundError: Without the ``peers`` extra (gpytorch / linear_operator).
    """
    from linear_operator.utils.lanczos import lanczos_tridiag

    n = v0.shape[0]
    _, t = lanczos_tridiag(matmat, max_iter=num_matvecs, dtype=v0.dtype, device=v0.device,
                           matrix_shape=torch.Size([n, n]), init_vecs=v0.reshape(n, 1),
                           tol=1e-10)
    return t.squeeze(0).double().cpu()


def count_from_tridiagonals(tridiagonals: list[Tensor], n: int, *, tau: float,
                            delta: float) -> float:
    """SLQ count of ``|lambda| > tau`` from Lanczos tridiagonals of Rademacher probes.

    Each tridiagonal of a probe z (||z||^2 = n) gives Gauss nodes theta_j and weights w_j
    (squared first eigenvector components); the count is the mean over probes of
    ``n * sum_j w_j g(|theta_j|)`` with g the smooth step from ``tau`` to ``delta``.
    """
    total = 0.0
    for t in tridiagonals:
        theta, vecs = torch.linalg.eigh(t)
        weights = vecs[0] ** 2
        total += n * float((weights * smooth_step(theta.abs(), tau, delta)).sum())
    return total / len(tridiagonals)
