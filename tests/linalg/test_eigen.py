import numpy as np
import pytest
import scipy.sparse.linalg as sla
import torch

from scalable_hrank.errors import NotConvergedError
from scalable_hrank.linalg import eigenpairs, spectral_norm

from .planted import gapped_spectrum, planted

F64 = torch.float64


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("which", ["LA", "SA", "LM"])
def test_eigenpairs_match_eigvalsh_and_eigsh(which):
    n, k = 250, 6
    lam = torch.linspace(-2.0, 3.0, n, dtype=F64) ** 3
    p = planted(lam, seed=1)
    res = eigenpairs(p.matmat(), n, k, which=which, tol=1e-10, generator=_gen())
    assert res.converged and res.values.shape == (k,) and res.vectors.shape == (n, k)
    ref = torch.linalg.eigvalsh(p.matrix)
    if which == "LA":
        want = ref.flip(0)[:k]
    elif which == "SA":
        want = ref[:k]
    else:
        want = ref[torch.argsort(ref.abs(), descending=True)[:k]]
    torch.testing.assert_close(res.values, want, rtol=0, atol=1e-8)
    ev = sla.eigsh(p.matrix.numpy(), k=k, which=which, return_eigenvectors=False)
    np.testing.assert_allclose(np.sort(ev), np.sort(res.values.numpy()), atol=1e-8)
    explicit = torch.linalg.vector_norm(p.matrix @ res.vectors - res.vectors * res.values, dim=0)
    scale = float(ref.abs().max())
    assert torch.all(explicit <= 1e-10 * scale * 1.01 + 1e-13)
    torch.testing.assert_close(res.residual_norms, explicit, rtol=1e-3, atol=1e-12)
    assert res.num_matvecs < n


def test_eigenpairs_float32():
    n = 200
    p = planted(gapped_spectrum(n, 30, seed=2, indefinite=False), seed=2)
    res = eigenpairs(p.matmat(torch.float32), n, 4, tol=1e-5, generator=_gen(),
                     dtype=torch.float32)
    ref = torch.linalg.eigvalsh(p.matrix).flip(0)[:4]
    torch.testing.assert_close(res.values, ref, rtol=0, atol=1e-5)
    assert res.vectors.dtype == torch.float32


def test_eigenpairs_repeated_top_eigenvalue():
    n = 120
    lam = torch.cat([torch.full((5,), 2.0, dtype=F64), torch.linspace(0, 1, n - 5, dtype=F64)])
    p = planted(lam, seed=3)
    res = eigenpairs(p.matmat(), n, 5, block_size=2, tol=1e-9, generator=_gen())
    torch.testing.assert_close(res.values, torch.full((5,), 2.0, dtype=F64), rtol=0, atol=1e-8)


def test_eigenpairs_budget_raises_with_partial():
    n = 300
    p = planted(torch.linspace(0, 1, n, dtype=F64), seed=4)  # clustered: slow convergence
    with pytest.raises(NotConvergedError) as info:
        eigenpairs(p.matmat(), n, 5, tol=1e-12, max_matvecs=24, generator=_gen())
    part = info.value.partial
    assert part is not None and not part.converged and part.num_matvecs == 24
    explicit = torch.linalg.vector_norm(p.matrix @ part.vectors - part.vectors * part.values,
                                        dim=0)
    torch.testing.assert_close(part.residual_norms, explicit, rtol=1e-3, atol=1e-12)


def test_spectral_norm_estimate_and_bound():
    n = 300
    p = planted(gapped_spectrum(n, 50, seed=5), seed=5)
    true = float(torch.linalg.matrix_norm(p.matrix, 2))
    est = spectral_norm(p.matmat(), n, num_matvecs=30, generator=_gen())
    assert est.num_matvecs == 30
    assert est.estimate <= true * (1 + 1e-12)
    assert est.upper_bound >= true * (1 - 1e-12)
    assert est.estimate > 0.99 * true
