"""Deflation before a density count: the deflated pairs must not move the count (issue 12).

A loose Ritz pair (residual r) leaves the off-diagonal block R = (I - Q Q^T) A Q, and the
deflated operator then lifts A's null directions to eigenvalues of size about
``||R||^2 / min|theta|``. At a threshold near the rounding level those land just above tau,
close the gap SLQ settles in, and the k vs 0.75 k check never passes (the whole budget
went, 16,000 products then, on the case below).
"""

from __future__ import annotations

import torch

import scalable_hrank as hr
from scalable_hrank.data.digits import gaussian
from scalable_hrank.density import _deflation
from scalable_hrank.linalg import deflation_shift, eigenpairs
from scalable_hrank.models.mlp import mlp
from scalable_hrank.operators import curvature_operator
from tests.dense_reference import dense_curvatures
from tests.linalg.planted import planted

F64 = torch.float64


def _tiny_case():
    return mlp((8, 6, 6, 3), seed=1), gaussian(12, 8, 3, seed=2)


def test_deflation_shift_bounds_the_lift_of_the_null_space() -> None:
    """Loose top eigenvectors lift zero eigenvalues by at most the bound, and not far less."""
    n, r = 60, 8
    lam = torch.cat([torch.linspace(2.0, 5.0, r, dtype=F64), torch.zeros(n - r, dtype=F64)])
    p = planted(lam, seed=3)
    u = torch.linalg.eigh(p.matrix).eigenvectors[:, -r:]  # the top r eigenvectors
    gen = torch.Generator().manual_seed(4)
    for eps in (1e-6, 1e-4, 1e-2):
        q, _ = torch.linalg.qr(u + eps * torch.randn(n, r, generator=gen, dtype=F64))
        theta, s = torch.linalg.eigh(q.T @ p.matrix @ q)  # Rayleigh-Ritz on span(q)
        q = q @ s
        res = torch.linalg.vector_norm(p.matrix @ q - q * theta, dim=0)
        proj = torch.eye(n, dtype=F64) - q @ q.T
        mu = torch.linalg.eigvalsh(proj @ p.matrix @ proj).abs()
        lifted = float(mu.max())  # span(q) holds A's range: the rest was A's null space
        bound = deflation_shift(theta, res)
        assert lifted <= bound, (eps, lifted, bound)
        assert lifted >= 1e-3 * bound, (eps, lifted, bound)


def test_eigenpairs_meet_a_shift_tolerance() -> None:
    n = 200
    p = planted(torch.cat([torch.linspace(1.0, 3.0, 10, dtype=F64),
                           torch.linspace(0.0, 0.9, n - 10, dtype=F64)]), seed=5)
    gen = torch.Generator().manual_seed(6)
    loose = eigenpairs(p.matmat(), n, 6, which="LM", tol=1e-3, generator=gen)
    tight = eigenpairs(p.matmat(), n, 6, which="LM", tol=1e-3, shift_tol=1e-14,
                       generator=torch.Generator().manual_seed(6))
    assert deflation_shift(loose.values, loose.residual_norms) > 1e-14
    assert tight.converged and deflation_shift(tight.values, tight.residual_norms) <= 1e-14
    assert tight.num_matvecs > loose.num_matvecs


def test_deflating_keeps_the_dense_count_at_a_tiny_threshold() -> None:
    """The issue's case: tau = 6e-13 (n eps of the scale); deflation must not add eigenvalues."""
    model, data = _tiny_case()
    op = curvature_operator(model, "mse", data, "functional")
    x, y = data
    h = dense_curvatures(model, "mse", x, y)["functional"]
    tau = 6.367e-13
    want = int((torch.linalg.eigvalsh(h).abs() > tau).sum())
    (q, theta), _ = _deflation(op, 10, tau, torch.Generator().manual_seed(5))
    proj = torch.eye(op.size, dtype=F64) - q @ q.T
    rest = torch.linalg.eigvalsh(proj @ h @ proj).abs()
    assert int((theta.abs() > tau).sum()) + int((rest > tau).sum()) == want
    # and a clean gap: nothing of the rest between 4 tau and 1e-3 (A has nothing there)
    assert int(((rest > 4 * tau) & (rest < 1e-3)).sum()) == 0


def test_tiny_density_count_settles_far_below_its_budget() -> None:
    """Issue 12: this count spent its whole 16,000-product budget; it needs about 500."""
    model, data = _tiny_case()
    res = hr.estimate_rank(model, "mse", data, "functional", method="density", seed=5,
                           density={"num_probes": 2})
    truth = hr.exact_rank(model, "mse", data, "functional").rank
    assert res.extra["converged"] and res.guarantee == "estimate"
    assert res.matvecs <= 1000, res.matvecs
    assert res.rank_low <= truth <= res.rank_high
