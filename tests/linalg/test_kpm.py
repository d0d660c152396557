import pytest
import torch

from scalable_hrank.linalg.kpm import jackson, kpm_density, kpm_rank, spectrum_bounds
from scalable_hrank.linalg.slq import slq_rank

try:
    from . import density_cases as dc
except ImportError:  # tests/linalg is not a package
    import density_cases as dc


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_jackson_factors() -> None:
    g = jackson(100)
    assert g.shape == (101,) and g[0] == pytest.approx(1.0)
    assert torch.all(g[1:] <= g[:-1] + 1e-12) and float(g[-1]) < 1e-3


def test_spectrum_bounds_contain_spectrum() -> None:
    for c in (dc.indefinite_gap(), dc.psd_gap()):
        a, b, mv = spectrum_bounds(c.matmat, c.n, generator=gen(0), psd=c.psd)
        assert mv == 20
        assert a <= float(c.eigenvalues.min()) and b >= float(c.eigenvalues.max())
        assert b <= 1.2 * float(c.eigenvalues.abs().max())
        if c.psd:
            assert -1e-2 * b < a <= 0  # zero at the edge of the interval


def test_kpm_psd_accuracy_and_agrees_with_slq() -> None:
    c = dc.psd_gap()
    k = kpm_rank(c.matmat, c.n, tau=c.tau, psd=True, num_probes=8, generator=gen(1))
    s = slq_rank(c.matmat, c.n, tau=c.tau, psd=True, num_probes=8, generator=gen(2))
    assert k.converged and k.method == "kpm"
    assert k.gap is not None and k.gap[0] < k.delta
    assert abs(k.estimate - c.count()) <= 0.05 * c.count()
    assert k.rank_low <= c.count() <= k.rank_high
    # cross-check: the two intervals overlap
    assert max(k.rank_low, s.rank_low) <= min(k.rank_high, s.rank_high)


def test_kpm_indefinite_with_slq_gap_agrees() -> None:
    c = dc.indefinite_gap()
    s = slq_rank(c.matmat, c.n, tau=c.tau, num_probes=8, generator=gen(3), max_steps=400)
    k = kpm_rank(c.matmat, c.n, tau=c.tau, num_probes=8, generator=gen(4), gap=s.gap)
    assert k.converged
    assert abs(k.estimate - c.count()) <= 0.05 * c.count()
    assert k.rank_low <= c.count() <= k.rank_high
    assert max(k.rank_low, s.rank_low) <= min(k.rank_high, s.rank_high)


def test_kpm_same_probes_match_slq_closely() -> None:
    # with identical probes the probe noise is shared: the two counts differ by bias only
    c = dc.deep_linear_like()
    z = torch.randint(0, 2, (c.n, 6), generator=gen(5)).double() * 2 - 1
    s = slq_rank(c.matmat, c.n, tau=c.tau, psd=True, probes=z, generator=gen(0))
    k = kpm_rank(c.matmat, c.n, tau=c.tau, psd=True, probes=z, generator=gen(0), gap=s.gap)
    assert s.converged and k.converged
    assert abs(k.estimate - s.estimate) <= 0.01 * c.count()


def test_kpm_budget_too_small() -> None:
    c = dc.indefinite_gap()
    r = kpm_rank(c.matmat, c.n, tau=c.tau, num_probes=4, generator=gen(6), max_matvecs=120)
    assert not r.converged
    assert r.num_matvecs <= 120
    assert r.steps_needed > r.num_steps
    assert r.matvecs_needed > 120
    assert any("not converged" in s for s in r.notes)


def test_kpm_density_integrates_to_n() -> None:
    c = dc.indefinite_gap()
    r = kpm_rank(c.matmat, c.n, tau=c.tau, num_probes=2, generator=gen(7), degree=200)
    assert r.num_steps == 200 and r.nodes.shape == r.weights.shape
    assert float(r.weights.sum()) == pytest.approx(1.0)
    # moments of the identity (T_j(1) = n for every j): all mass at the top, total n
    mu = torch.full((2, 51), float(c.n), dtype=torch.float64)
    grid, dens = kpm_density(mu, -1.0, 2.0, n=c.n)
    assert float(torch.trapezoid(dens, grid)) == pytest.approx(c.n, rel=0.02)
    assert float(grid[torch.argmax(dens)]) > 1.9


def test_bad_bounds() -> None:
    c = dc.psd_gap()
    with pytest.raises(ValueError, match="bounds"):
        kpm_rank(c.matmat, c.n, tau=c.tau, generator=gen(0), bounds=(1.0, 0.0))
