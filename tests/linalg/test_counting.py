import math

import pytest
import torch

from scalable_hrank.linalg.counting import (
    bracket,
    count_interval,
    kappa_for_steps,
    normal_quantile,
    rademacher,
    smooth_step,
    steps_for_kappa,
)


def test_rademacher_entries_shape_and_reproducible() -> None:
    z = rademacher(1000, 3, generator=torch.Generator().manual_seed(5), dtype=torch.float32)
    assert z.shape == (1000, 3) and z.dtype == torch.float32
    assert set(z.unique().tolist()) == {-1.0, 1.0}
    z2 = rademacher(1000, 3, generator=torch.Generator().manual_seed(5), dtype=torch.float32)
    assert torch.equal(z, z2)
    assert abs(float(z.mean())) < 0.1  # balanced signs


def test_rademacher_rejects_empty() -> None:
    with pytest.raises(ValueError, match="num_probes"):
        rademacher(10, 0, generator=torch.Generator())


@pytest.mark.parametrize("profile", ["linear", "log"])
def test_smooth_step_limits_and_monotone(profile: str) -> None:
    x = torch.logspace(-6, 1, 500, dtype=torch.float64)
    lo, hi = 1e-4, 1e-1
    g = smooth_step(torch.cat([-x, x]), lo, hi, profile=profile)
    gp = g[500:]
    assert torch.all(gp[x <= lo] == 0) and torch.all(gp[x >= hi] == 1)
    assert torch.all(gp[1:] >= gp[:-1])  # monotone in |x|
    assert torch.equal(g[:500], gp)  # even in x
    assert float(gp.min()) >= 0 and float(gp.max()) <= 1


def test_smooth_step_is_c1_at_the_ends() -> None:
    lo, hi, h = 1.0, 2.0, 1e-6
    x = torch.tensor([lo + h, hi - h], dtype=torch.float64)
    g = smooth_step(x, lo, hi)
    assert float(g[0]) < 1e-10 and float(1 - g[1]) < 1e-10  # slope 0 at both ends


def test_smooth_step_rejects_bad_bounds() -> None:
    with pytest.raises(ValueError, match="upper"):
        smooth_step(torch.ones(3), 1.0, 1.0)
    with pytest.raises(ValueError, match="lower"):
        smooth_step(torch.ones(3), 0.0, 1.0, profile="log")


def test_steps_for_kappa_scaling() -> None:
    # first depths with counts within one eigenvalue (planted, n = 3000) bound the plan below
    assert steps_for_kappa(100, psd=True) >= 30
    assert steps_for_kappa(1e3, psd=True) >= 80
    assert steps_for_kappa(100, psd=False) >= 260
    assert steps_for_kappa(10, psd=False) >= 70
    ks = [steps_for_kappa(k, psd=True) for k in (1, 10, 100, 1e4)]
    assert ks == sorted(ks)
    assert steps_for_kappa(1e4, psd=False) > 10 * steps_for_kappa(1e4, psd=True)
    with pytest.raises(ValueError, match="kappa"):
        steps_for_kappa(0.5, psd=True)


@pytest.mark.parametrize("psd", [True, False])
def test_kappa_for_steps_inverts_the_plan(psd: bool) -> None:
    for kappa in (10.0, 1e3, 1e5):
        steps = steps_for_kappa(kappa, psd)
        assert kappa <= kappa_for_steps(steps, psd) <= (math.sqrt(kappa) + 1) ** 2
    assert kappa_for_steps(2, psd) == 1.0


def test_normal_quantile() -> None:
    assert normal_quantile(0.95) == pytest.approx(1.959964, abs=1e-5)
    with pytest.raises(ValueError, match="confidence"):
        normal_quantile(1.0)


def test_count_interval_uses_projector_variance_bound() -> None:
    n, c, m = 4000, 1000.0, 4
    est = torch.full((m,), c, dtype=torch.float64)  # zero sample spread
    mean, s, low, high = count_interval(est, n=n, bias=0.0, confidence=0.95)
    half = 1.959964 * math.sqrt(2 * c * (1 - c / n)) / math.sqrt(m)
    assert mean == c and s == 0.0
    assert low == math.floor(c - half) and high == math.ceil(c + half)
    _, _, low_b, high_b = count_interval(est, n=n, bias=10.0, confidence=0.95)
    assert low_b == math.floor(c - half - 10) and high_b == math.ceil(c + half + 10)
    _, _, low_0, _ = count_interval(est, n=n, bias=5000.0, confidence=0.95)
    assert low_0 == 0



def test_bracket_skips_heavy_atom_and_uses_a_clean_band() -> None:
    tau = 1e-4
    bulk = torch.logspace(-2, 0, 30, dtype=torch.float64)
    # one probe: heavy null-atom node wandering at 5e-4 (above tau), then the bulk
    nodes = torch.cat([torch.tensor([5e-4], dtype=torch.float64), bulk])[None, :]
    weights = torch.cat([torch.tensor([0.7]), torch.full((30,), 0.01)])[None, :].double()
    br = bracket(nodes, weights, tau, n=2000)
    assert br.lower_edge == 0.0 and br.upper_edge == pytest.approx(1e-2)
    assert br.gap() == (0.0, pytest.approx(1e-2))
    # the steps end halfway to the band's edges; the depth is set by the whole band
    assert br.w_above == pytest.approx(0.5 * (1e-2 - tau)) and br.w_below == tau / 2
    assert br.width == pytest.approx(0.5e-2)


def test_bracket_mass_just_above_tau_is_not_skipped() -> None:
    # a shelf at 1.5 tau under a much larger gap to the bulk: the step above tau must end
    # below the shelf, so the shelf is counted (a largest-ratio gap would skip it)
    tau = 1e-3
    nodes = torch.tensor([[1e-9, 1.5e-3, 2e-3, 0.5, 0.8, 1.0]], dtype=torch.float64)
    weights = torch.tensor([[0.6, 0.03, 0.02, 0.15, 0.1, 0.1]], dtype=torch.float64)
    br = bracket(nodes, weights, tau, n=2000)
    assert br.upper_edge == pytest.approx(1.5e-3)
    assert tau + br.w_above <= 1.5e-3
    step = smooth_step(nodes, tau, tau + br.w_above)
    assert step[0, 1] == 1.0 and step[0, 0] == 0.0


def test_bracket_without_gap_keeps_a_minimum_width_and_reports_none() -> None:
    flat = torch.logspace(-4, 0, 60, dtype=torch.float64)[None, :]
    tau = 1.1e-3  # inside the slope: neighbours within a factor 1.2 on both sides
    br = bracket(flat, torch.full_like(flat, 1 / 60), tau, n=2000)
    assert br.gap() is None
    assert br.lower_edge < tau < br.upper_edge < 1.3 * tau
    assert br.w_above == 0.25 * tau and br.w_below == 0.25 * tau and br.width == 0.25 * tau
    given = bracket(flat, torch.full_like(flat, 1 / 60), tau, n=2000, gap=(1e-5, 1e-2))
    assert given.w_above == pytest.approx(1e-2 - tau)
    assert given.w_below == pytest.approx(tau - 1e-5)
