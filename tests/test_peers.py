"""Cross-checks against the peers: PyHessian's SLQ and GPyTorch's Lanczos (extra ``peers``).

GPyTorch's ``linear_operator.utils.lanczos.lanczos_tridiag`` serves as an independent
tridiagonalization for an SLQ count written here from scratch (only its tridiagonalization: its
``lanczos_tridiag_to_diag`` masks negative eigenvalues, which would corrupt counts of an
indefinite Hessian).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import scalable_hrank as hr
from scalable_hrank.linalg import MatMat, lanczos, rademacher, ritz_pairs, smooth_step
from tests.dense_reference import gaussian_data, linear_mlp


def gpytorch_tridiagonal(matmat: MatMat, v0: torch.Tensor, *, num_matvecs: int) -> torch.Tensor:
    """Lanczos tridiagonal T (m, m), float64 on CPU, from GPyTorch's ``lanczos_tridiag``.

    Args:
        matmat: ``X (n, k) -> A X (n, k)``.
        v0: Start vector (n,) in the operator's dtype and device.
        num_matvecs: Steps m (products).
    """
    from linear_operator.utils.lanczos import lanczos_tridiag

    n = v0.shape[0]
    _, t = lanczos_tridiag(matmat, max_iter=num_matvecs, dtype=v0.dtype, device=v0.device,
                           matrix_shape=torch.Size([n, n]), init_vecs=v0.reshape(n, 1),
                           tol=1e-10)
    return t.squeeze(0).double().cpu()


def count_from_tridiagonals(tridiagonals: list[torch.Tensor], n: int, *, tau: float,
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


def _problem():
    model = linear_mlp([10, 8, 8, 3], seed=4)
    return model, gaussian_data(20, 10, 3, "mse", seed=5)


def test_gpytorch_tridiagonal_matches_ours() -> None:
    pytest.importorskip("linear_operator", reason="the peers extra is not installed")
    model, data = _problem()
    op = hr.curvature_operator(model, "mse", data, "loss")
    v0 = torch.randn(op.size, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    theirs = torch.linalg.eigvalsh(gpytorch_tridiagonal(op.matmat, v0, num_matvecs=30))
    ours = ritz_pairs(lanczos(op.matmat, v0, num_matvecs=30)).values.flip(0)
    assert torch.allclose(theirs, ours, rtol=1e-8, atol=1e-10 * float(ours.abs().max()))


def test_gpytorch_backend_count_matches_dense() -> None:
    pytest.importorskip("linear_operator", reason="the peers extra is not installed")
    model, data = _problem()
    exact = hr.exact_rank(model, "mse", data, "outer")
    op = hr.curvature_operator(model, "mse", data, "outer")
    probes = rademacher(op.size, 6, generator=torch.Generator().manual_seed(1))
    # Depth = size: Lanczos terminates, so the quadrature is exact for every probe.
    ts = [gpytorch_tridiagonal(op.matmat, probes[:, j], num_matvecs=op.size)
          for j in range(probes.shape[1])]
    mags = sorted((abs(v) for v in exact.eigenvalues), reverse=True)
    tau, delta = exact.tol, mags[exact.rank - 1] / 2
    count = count_from_tridiagonals(ts, op.size, tau=tau, delta=delta)
    # Hutchinson with 6 probes on a rank-r projector: sd <= sqrt(2 r / 6).
    assert abs(count - exact.rank) <= 4 * (2 * exact.rank / 6) ** 0.5


def test_pyhessian_density_sees_our_spectrum(monkeypatch) -> None:
    pyhessian = pytest.importorskip("pyhessian", reason="the peers extra is not installed")

    def eig(t: torch.Tensor, eigenvectors: bool = False):  # torch.eig was removed in torch 2
        vals, vecs = torch.linalg.eigh(t)
        return torch.stack([vals, torch.zeros_like(vals)], dim=1), vecs

    monkeypatch.setattr(torch, "eig", eig, raising=False)
    model, (x, y) = _problem()
    model = model.float()
    x, y = x.float(), y.float()

    class HalfSumSquares(nn.Module):  # our "mse": mean over samples of 1/2 ||F - y||^2
        def forward(self, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
            return 0.5 * ((out - target) ** 2).sum() / out.shape[0]

    comp = pyhessian.hessian(model, HalfSumSquares(), data=(x, y), cuda=False)
    torch.manual_seed(0)
    nodes, weights = comp.density(iter=40, n_v=2)
    exact = hr.exact_rank(model, "mse", (x, y), "loss")
    top = max(exact.eigenvalues)
    bottom = min(exact.eigenvalues)
    for ns, ws in zip(nodes, weights, strict=True):
        assert abs(max(ns) - top) <= 1e-3 * top  # extreme Ritz values converge first
        assert abs(min(ns) - bottom) <= 1e-3 * top
        assert abs(sum(ws) - 1.0) < 1e-4
    ours = hr.estimate_rank(model, "mse", (x, y), "loss", method="density", seed=0)
    assert ours.rank_low <= exact.rank <= ours.rank_high
