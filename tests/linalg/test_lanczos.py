"""The engine's single-vector case (decomp.lanczos), its block case run to a budget, and the
lock-step local mode, each against dense references on planted spectra."""

import math

import pytest
import torch

from scalable_hrank.linalg import decomp
from scalable_hrank.linalg.decomp import lanczos, ritz_pairs

from .planted import gapped_spectrum, planted

F64 = torch.float64


def block_lanczos(matmat, v0, *, num_matvecs):
    """The block engine run to the budget or to an invariant block (what estimators do)."""
    n, b = v0.shape
    state = decomp.init_state(n, b, v0, torch.Generator(), None)
    eps = torch.finfo(v0.dtype).eps
    while state.pending.shape[1] and state.size < n:
        width = min(state.pending.shape[1], num_matvecs - state.num_matvecs, n - state.size)
        if width <= 0:
            break
        decomp.step(state, matmat, None, width=width,
                    drop_tol=lambda scale, m: 16.0 * math.sqrt(m + 1) * eps * scale)
    return state


def block_ritz(state):
    """Ritz values (descending), vectors and residual norms of a block engine state."""
    vals, vecs = torch.linalg.eigh(state.projected)
    kl = state.last_width
    res = torch.linalg.vector_norm(state.coupling @ vecs[-kl:, :], dim=0)
    res = res + math.sqrt(state.dropped_sq)
    return vals.flip(0), state.combine(vecs.flip(1)), res.flip(0)


def _v(n, k=None, seed=0, dtype=F64):
    g = torch.Generator().manual_seed(seed)
    shape = (n,) if k is None else (n, k)
    return torch.randn(*shape, generator=g, dtype=dtype)


def test_lanczos_identity_and_orthonormality():
    n = 120
    lam = torch.linspace(-1, 2, n, dtype=F64)
    p = planted(lam, seed=1)
    dec = lanczos(p.matmat(), _v(n), num_matvecs=40)
    q, t = dec.basis, dec.tridiagonal
    m = dec.num_matvecs
    assert m == 40 and not dec.breakdown
    assert (q.mT @ q - torch.eye(m, dtype=F64)).abs().max() < 1e-13
    resid = p.matrix @ q - q @ t  # = beta_m q_{m+1} e_m^T
    assert resid[:, :-1].abs().max() < 1e-12
    assert abs(float(torch.linalg.vector_norm(resid[:, -1])) - float(dec.betas[-1])) < 1e-12


def test_lanczos_full_depth_equals_eigvalsh():
    n = 60
    lam = torch.linspace(-3, 5, n, dtype=F64) + 0.01 * torch.arange(n, dtype=F64) ** 0.5
    p = planted(lam, seed=2)
    dec = lanczos(p.matmat(), _v(n, seed=3), num_matvecs=n)
    vals = ritz_pairs(dec).values
    ref = torch.linalg.eigvalsh(p.matrix).flip(0)
    torch.testing.assert_close(vals, ref, rtol=0, atol=1e-10)


def test_lanczos_breakdown_on_low_rank():
    n, r = 200, 25
    p = planted(gapped_spectrum(n, r, seed=4), seed=4)
    dec = lanczos(p.matmat(), _v(n, seed=5), num_matvecs=n)
    # r distinct nonzero eigenvalues + the null atom; one extra rounding step at most
    assert dec.breakdown
    assert r + 1 <= dec.num_matvecs <= r + 2
    rp = ritz_pairs(dec)
    assert int((rp.values.abs() > 1e-8).sum()) == r


def test_no_reorthogonalization_makes_ghosts():
    # Ghost copies of converged Ritz values appear without reorthogonalization; counting
    # Ritz values then overcounts, while full reorthogonalization does not.
    n = 400
    lam = torch.cat([torch.tensor([10.0, 9.0, 8.0], dtype=F64),
                     torch.linspace(0, 1, n - 3, dtype=F64)])
    p = planted(lam, seed=6)
    v0 = _v(n, seed=7)
    good = ritz_pairs(lanczos(p.matmat(), v0, num_matvecs=150))
    local, _ = decomp.start_probes(v0[:, None], None)  # the engine's local mode
    decomp.advance_probes(local, p.matmat(), 150, None)
    bad, _ = decomp.gauss_rules(local, 150)
    assert int((good.values > 5).sum()) == 3
    assert int((bad > 5).sum()) > 3
    # the largest Ritz value is the same in both modes (ghosts only repeat it)
    assert math.isclose(float(decomp.extreme_ritz(local)[0]), float(good.values[0]),
                        rel_tol=1e-12)


@pytest.mark.parametrize("dtype", [F64, torch.float32])
def test_block_lanczos_projected_matrix(dtype):
    n = 150
    p = planted(gapped_spectrum(n, 40, seed=8), seed=8)
    dec = block_lanczos(p.matmat(dtype), _v(n, 6, seed=9, dtype=dtype), num_matvecs=30)
    q = dec.basis
    m = q.shape[1]
    eps = torch.finfo(dtype).eps
    assert m == dec.num_matvecs == 30
    assert (q.mT @ q - torch.eye(m, dtype=dtype)).abs().max() < 100 * eps
    a = p.matrix
    ref = q.double().mT @ a @ q.double()
    assert dec.projected.dtype == F64
    assert (dec.projected - ref).abs().max() < 100 * eps
    true_res = torch.linalg.matrix_norm(a @ q.double() - q.double() @ dec.projected, 2)
    assert float(true_res) <= decomp.residual_bound(dec) * (1 + 1e-6) + 100 * eps
    assert decomp.asymmetry(dec) < 100 * eps


def test_block_lanczos_breakdown_and_full_depth():
    n, r, b = 200, 30, 8
    p = planted(gapped_spectrum(n, r, seed=10), seed=10)
    dec = block_lanczos(p.matmat(), _v(n, b, seed=11), num_matvecs=n)
    assert dec.pending.shape[1] == 0  # an invariant block: nothing left to multiply
    assert dec.num_matvecs == r + b  # span(Omega) + range(A)
    vals = block_ritz(dec)[0]
    ref = torch.linalg.eigvalsh(p.matrix).flip(0)
    big = vals[vals.abs() > 1e-8]
    torch.testing.assert_close(torch.sort(big).values,
                               torch.sort(ref[ref.abs() > 1e-8]).values, rtol=0, atol=1e-12)


def test_ritz_residuals_match_explicit():
    n = 200
    p = planted(torch.linspace(0.0, 1.0, n, dtype=F64) ** 3, seed=12)
    rp = ritz_pairs(lanczos(p.matmat(), _v(n, seed=13), num_matvecs=40))
    for vals, vecs, res in ((rp.values, rp.vectors, rp.residual_norms),
                            block_ritz(block_lanczos(p.matmat(), _v(n, 4, seed=14),
                                                     num_matvecs=40))):
        explicit = torch.linalg.vector_norm(p.matrix @ vecs - vecs * vals, dim=0)
        torch.testing.assert_close(res, explicit, rtol=1e-6, atol=1e-12)


def test_asymmetry_estimates_product_noise():
    n = 300
    p = planted(gapped_spectrum(n, 50, seed=15), seed=15)
    gen = torch.Generator().manual_seed(16)
    noise = 1e-7

    def noisy(x):
        e = torch.randn(x.shape, generator=gen, dtype=F64)
        return p.matrix @ x + noise * e / e.norm(dim=0, keepdim=True)

    dec = block_lanczos(noisy, _v(n, 8, seed=17), num_matvecs=64)
    assert 1e-3 * noise < decomp.asymmetry(dec) < 1e3 * noise


def test_lanczos_rejects_bad_arguments():
    p = planted(torch.ones(10, dtype=F64))
    with pytest.raises(ValueError):
        lanczos(p.matmat(), torch.zeros(10, dtype=F64), num_matvecs=3)
    with pytest.raises(ValueError):
        lanczos(p.matmat(), _v(10), num_matvecs=11)
    with pytest.raises(ValueError):
        lanczos(p.matmat(), _v(10, 2), num_matvecs=3)
