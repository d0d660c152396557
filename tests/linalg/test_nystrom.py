import pytest
import torch

from scalable_hrank.linalg import nystrom, nystrom_rank

from .planted import gapped_spectrum, planted

F64 = torch.float64


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_exact_low_rank_psd_is_recovered():
    n, r = 300, 40
    p = planted(gapped_spectrum(n, r, seed=1, indefinite=False), seed=1)
    approx = nystrom(p.matmat(), n, sketch_size=60, generator=_gen())
    assert approx.num_matvecs == 60
    want = torch.sort(p.eigenvalues, descending=True).values
    torch.testing.assert_close(approx.eigenvalues[:r], want[:r], rtol=0, atol=1e-10)
    assert approx.eigenvalues[r:].abs().max() < 1e-10
    u = approx.eigenvectors
    recon = (u * approx.eigenvalues) @ u.mT
    assert torch.linalg.matrix_norm(recon - p.matrix) < 1e-9
    cnt = nystrom_rank(approx, rtol=1e-6)
    assert cnt.rank == r and not cnt.saturated


def test_saturation_flags_small_sketch():
    n, r = 300, 40
    p = planted(gapped_spectrum(n, r, seed=2, indefinite=False), seed=2)
    cnt = nystrom_rank(nystrom(p.matmat(), n, sketch_size=30, generator=_gen()), rtol=1e-6)
    assert cnt.rank == 30 and cnt.saturated


def test_float32_shift_and_count():
    n, r = 300, 40
    p = planted(gapped_spectrum(n, r, seed=3, indefinite=False), seed=3)
    approx = nystrom(p.matmat(torch.float32), n, sketch_size=60, generator=_gen(),
                     dtype=torch.float32)
    assert approx.shift > 1e-8  # sqrt(n) eps(float32) ||Y||
    assert nystrom_rank(approx, rtol=1e-4).rank == r
    assert approx.eigenvectors.dtype == torch.float32


@pytest.mark.parametrize("tail", [3e-4, 2e-3])
def test_flat_tail_never_overcounts_and_saturates(tail):
    # Nystrom is Loewner-below A, so its count never exceeds the true count; a tail above the
    # threshold is undercounted and shows up as saturation, never as a plausible rank.
    n, r = 600, 20
    lam = torch.cat([torch.ones(r, dtype=F64), torch.full((n - r,), tail, dtype=F64)])
    p = planted(lam, seed=4)
    tau = 1e-3
    true = p.rank(tau)
    cnt = nystrom_rank(nystrom(p.matmat(), n, sketch_size=60, generator=_gen()), tol=tau)
    assert cnt.rank <= true
    assert cnt.saturated == (true > 60)
    if true <= 40:
        assert cnt.rank == true


def test_indefinite_operator_is_rejected():
    n = 100
    p = planted(torch.linspace(-1, 1, n, dtype=F64), seed=5)
    with pytest.raises(ValueError, match="PSD"):
        nystrom(p.matmat(), n, sketch_size=20, generator=_gen())
