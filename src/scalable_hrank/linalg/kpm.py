"""Kernel polynomial method (KPM) rank counts: Jackson-damped Chebyshev expansions.

The cross-check of ``slq_rank`` (Ubaru & Saad 2016, "Fast methods for estimating the numerical
rank of large matrices"; Lin, Saad & Yang 2016, "Approximating spectral densities of large
matrices"). Spectrum bounds ``[a, b]`` come from a few Lanczos steps, padded; Chebyshev
moments ``z^T T_j(A_hat) z`` of ``A_hat = (A - c)/e`` come from Rademacher probes run as one
block (Hutchinson); the density of states (DOS) and the count of eigenvalues with
``|lambda| > tau`` follow from the Jackson-damped expansions.

Each product yields two moments (``T_{2j} = 2 T_j^2 - 1``, ``T_{2j+1} = 2 T_{j+1} T_j - T_1``),
so degree d costs about ``d / 2`` products per probe. Memory: 3 length-n vectors per probe.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from scalable_hrank._validation import bad_value, check_positive_int
from scalable_hrank.linalg._types import MatMat, Reduce
from scalable_hrank.linalg.counting import (
    DensityRank,
    _advance,
    _dot,
    _start,
    check_tau_and_gap,
    count_interval,
    rademacher,
    steps_for_kappa,
)

__all__ = ["jackson", "kpm_density", "kpm_rank", "spectrum_bounds"]

_GROWTH = 1.5
_KPM_FACTOR = 4  # Chebyshev degree per Lanczos step of the same resolution (algos.md 3.1)


def jackson(degree: int) -> Tensor:
    """Jackson damping factors ``g_0 .. g_d``, shape (d + 1,), float64.

    ``g_j = ((1 - j/M) sin(a) cos(j a) + cos(a) sin(j a) / M) / sin(a)`` with
    ``M = d + 2`` and ``a = pi / M``; the damped expansion of a non-negative function
    stays non-negative (Weisse et al. 2006).
    """
    m = degree + 2
    a = math.pi / m
    j = torch.arange(degree + 1, dtype=torch.float64)
    return ((1 - j / m) * math.sin(a) * torch.cos(j * a)
            + math.cos(a) * torch.sin(j * a) / m) / math.sin(a)


def _interval_coeffs(lo: float, hi: float, degree: int) -> Tensor:
    """Chebyshev coefficients of the indicator of ``[lo, hi]`` within [-1, 1], (d + 1,)."""
    lo, hi = max(-1.0, min(1.0, lo)), max(-1.0, min(1.0, hi))
    if hi <= lo:
        return torch.zeros(degree + 1, dtype=torch.float64)
    t_lo, t_hi = math.acos(lo), math.acos(hi)
    j = torch.arange(1, degree + 1, dtype=torch.float64)
    gam = torch.empty(degree + 1, dtype=torch.float64)
    gam[0] = (t_lo - t_hi) / math.pi
    gam[1:] = 2.0 * (torch.sin(j * t_lo) - torch.sin(j * t_hi)) / (j * math.pi)
    return gam


def spectrum_bounds(matmat: MatMat, n: int, *, generator: torch.Generator, steps: int = 20,
                    psd: bool = False, dtype: torch.dtype = torch.float64,
                    device: torch.device | str = "cpu",
                    reduce: Reduce = None) -> tuple[float, float, int]:
    """Padded interval ``[a, b]`` containing the spectrum, from a short Lanczos run.

    The extreme Ritz values are padded by their residual bound ``beta_k |s_kj|`` plus 1 % of
    the span; for a PSD operator ``a = min(theta_min, 0) - 1e-3 b``, which puts zero at the
    edge of the interval, where Chebyshev resolution is ``1/d^2`` instead of ``1/d``.

    Cost: ``steps`` products; memory: 3 length-n vectors.

    Returns:
        ``(a, b, num_matvecs)``.
    """
    z = rademacher(n, 1, generator=generator, dtype=dtype, device=device)
    state, _ = _start(z, reduce)
    _advance(state, matmat, steps, reduce)
    k = int(state.lengths[0])
    a_ = torch.stack(state.alphas, 1)[0, :k]
    b_ = torch.stack(state.betas, 1)[0, :k]
    t = torch.diag(a_) + torch.diag(b_[:-1], 1) + torch.diag(b_[:-1], -1)
    theta, s = torch.linalg.eigh(t)
    res = (b_[-1] * s[-1].abs()).tolist()
    lo, hi = float(theta[0]), float(theta[-1])
    span = max(hi - lo, abs(hi), abs(lo), torch.finfo(torch.float64).tiny)
    b = hi + res[-1] + 0.01 * span
    a = min(lo, 0.0) - 1e-3 * b if psd else lo - res[0] - 0.01 * span
    return a, b, state.num_matvecs


class _Moments:
    """Chebyshev moments ``z^T T_j(A_hat) z`` per probe, grown two degrees per product."""

    def __init__(self, op: MatMat, z: Tensor, reduce: Reduce) -> None:
        self.op, self.reduce = op, reduce
        self.t_prev = z
        self.t = op(z)
        self.num_matvecs = z.shape[1]
        self.mu0 = _dot(z, z, reduce)
        self.mu1 = _dot(z, self.t, reduce)
        self.j = 1  # t = T_j z
        self.mu = [self.mu0, self.mu1, 2 * _dot(self.t, self.t, reduce) - self.mu0]

    def grow(self, degree: int) -> None:
        while len(self.mu) < degree + 1:
            t_next = 2 * self.op(self.t) - self.t_prev
            self.num_matvecs += self.t.shape[1]
            # mu_{2j+1} = 2 t_{j+1}.t_j - mu_1, mu_{2j+2} = 2 t_{j+1}.t_{j+1} - mu_0
            both = _dot(torch.cat([t_next, t_next], 1), torch.cat([self.t, t_next], 1),
                        self.reduce)
            m = t_next.shape[1]
            self.mu += [2 * both[:m] - self.mu1, 2 * both[m:] - self.mu0]
            self.t_prev, self.t = self.t, t_next
            self.j += 1

    def get(self, degree: int) -> Tensor:
        return torch.stack(self.mu[:degree + 1], 1)  # (m, d + 1)


def _count(mu: Tensor, cut: float, a: float, b: float) -> Tensor:
    """Per-probe counts of eigenvalues outside ``(-cut, cut)``, shape (m,), float64."""
    degree = mu.shape[1] - 1
    c, e = (a + b) / 2, (b - a) / 2
    coef = _interval_coeffs((cut - c) / e, 1.0, degree)
    if a < -cut:
        coef = coef + _interval_coeffs(-1.0, (-cut - c) / e, degree)
    return mu @ (jackson(degree) * coef)


def _cut(tau: float, delta: float, a: float, b: float) -> float:
    """Cut point between tau and delta, midway in ``arccos`` (KPM's resolution variable)."""
    c, e = (a + b) / 2, (b - a) / 2
    th = [math.acos(max(-1.0, min(1.0, (x - c) / e))) for x in (tau, delta)]
    return c + e * math.cos(0.5 * (th[0] + th[1]))


def _series(mu: Tensor, x: Tensor, a: float, b: float) -> Tensor:
    """Jackson-damped DOS (eigenvalues per unit) at points ``x``, from mean moments."""
    mu = mu.reshape(-1, mu.shape[-1]).mean(0)
    degree = mu.numel() - 1
    c, e = (a + b) / 2, (b - a) / 2
    xh = ((x - c) / e).clamp(-1 + 1e-15, 1 - 1e-15)
    j = torch.arange(degree + 1, dtype=torch.float64)
    coef = jackson(degree) * mu * torch.where(j == 0, 1.0, 2.0)
    cheb = torch.cos(j[None, :] * torch.arccos(xh)[:, None])
    return ((cheb @ coef) / (math.pi * torch.sqrt(1 - xh * xh)) / e).clamp_min(0.0)


def _dos_gap(mu: Tensor, a: float, b: float, tau: float, psd: bool,
             num_points: int = 512) -> tuple[tuple[float, float] | None, float]:
    """Gap above ``tau`` on the KPM density of ``|lambda|`` (Ubaru & Saad 2016).

    Below the kernel resolution ``x_res`` (3 Jackson widths: ``3 pi e / M`` in the interior,
    ``e (1 - cos(3 pi / M))`` at the edge of a PSD interval) the smeared null atom hides
    everything, so the search runs on a log grid of ``|x|`` from ``max(tau, x_res)`` up to the
    first quarter of the mass above it. The cut is the minimiser of the density of
    ``|lambda|`` (both signs, per decade); the gap is the stretch around it holding less than
    ``max(1, 1e-3 * mass)`` eigenvalues per decade and must span a factor 4.

    Returns:
        ``(gap or None, cut)``; without a gap the cut is ``1.5 * max(tau, x_res)``.
    """
    mu = mu.reshape(-1, mu.shape[-1]).mean(0)
    m_ = mu.numel() + 1
    e = (b - a) / 2
    x_res = e * (1 - math.cos(3 * math.pi / m_)) if psd else 3 * math.pi * e / m_
    lo_x = max(tau, x_res)
    top = max(abs(a), abs(b))
    if top <= 1.5 * lo_x:
        return None, 1.5 * lo_x
    x = torch.logspace(math.log10(lo_x), math.log10(top), num_points, dtype=torch.float64)
    per_decade = (_series(mu, x, a, b) + _series(mu, -x, a, b)) * x * math.log(10.0)
    mass = torch.cumsum(per_decade, 0) * (math.log10(top / lo_x) / (num_points - 1))
    last = max(2, int(torch.searchsorted(mass, 0.25 * float(mass[-1]))))
    i = int(torch.argmin(per_decade[:last]))
    low = per_decade < max(1.0, 1e-3 * float(mass[-1]))
    lo = hi = i
    if bool(low[i]):
        while lo > 0 and bool(low[lo - 1]):
            lo -= 1
        while hi < num_points - 1 and bool(low[hi + 1]):
            hi += 1
    if float(x[hi] / x[lo]) < 4.0:
        return None, 1.5 * lo_x
    return (float(x[lo]), float(x[hi])), float(x[i])


def kpm_density(mu: Tensor, a: float, b: float, *, n: int,
                num_points: int = 1024) -> tuple[Tensor, Tensor]:
    """Jackson-damped KPM density of states from moments (Lin, Saad & Yang 2016).

    Args:
        mu: Moments ``z^T T_j(A_hat) z``, shape (m, d + 1) or (d + 1,), float64.
        a: Lower spectrum bound.
        b: Upper spectrum bound.
        n: Operator size (the density integrates to about n when moments use Rademacher z).
        num_points: Grid size G; the grid is Chebyshev-spaced (denser near a and b).

    Returns:
        ``(grid, density)``, shape (G,) each, float64; density in eigenvalues per unit.
    """
    th = (torch.arange(num_points, dtype=torch.float64) + 0.5) * math.pi / num_points
    grid = (a + b) / 2 + (b - a) / 2 * torch.cos(th).flip(0)
    return grid, _series(mu, grid, a, b)


def kpm_rank(matmat: MatMat, n: int, *, tau: float, generator: torch.Generator,
             num_probes: int = 4, max_matvecs: int | None = None, max_degree: int = 4000,
             degree: int | None = None, psd: bool = False,
             gap: tuple[float, float] | None = None,
             bounds: tuple[float, float] | None = None, bound_steps: int = 20,
             rtol: float = 0.01, confidence: float = 0.95, probes: Tensor | None = None,
             dtype: torch.dtype = torch.float64, device: torch.device | str = "cpu",
             reduce: Reduce = None) -> DensityRank:
    """Count eigenvalues with ``|lambda| > tau`` by KPM with Jackson damping.

    Ubaru & Saad 2016: the count is the trace of a Jackson-damped Chebyshev expansion of
    the indicator of ``|x| >= cut``, estimated with Rademacher probes (Hutchinson). The cut
    lies midway (in ``arccos``, the variable of uniform Chebyshev resolution) between
    ``tau`` and ``delta``, the upper end of the gap above ``tau`` (given, or detected on the
    KPM density of states; ``2 tau`` without a gap). The degree is planned from
    ``kappa = lambda_max / (delta - tau)`` (4x the SLQ steps, since a Jackson kernel
    resolves about ``pi / d`` in the interior and ``1/d^2`` at an edge) and grown 1.5x until
    the counts at degree ``d`` and ``0.75 d`` (the same moments, truncated) agree within
    ``max(1, rtol * estimate / 2)`` or the budget ends.

    Cost: ``bound_steps`` products (skipped with ``bounds``) plus about ``degree / 2``
    products per probe (two moments per product). Memory: 3 length-n vectors per probe.

    Args:
        matmat: ``X (n, k) -> A X (n, k)`` for a symmetric A, same dtype and device.
        n: Vector length (the local slice when ``reduce`` sums over processes).
        tau: Threshold > 0.
        generator: CPU ``torch.Generator`` (probes and the bounds start vector).
        num_probes: Rademacher probes m.
        max_matvecs: Product budget, bounds included; default ``num_probes * max_degree/2``.
        max_degree: Cap on the Chebyshev degree.
        degree: Use exactly this degree (no planning or growth).
        psd: Whether A is positive semidefinite (zero placed at the interval's edge).
        gap: ``(lower, upper)`` gap around ``tau`` known from elsewhere (e.g. ``slq_rank``).
        bounds: ``(a, b)`` containing the spectrum; default from ``spectrum_bounds``.
        bound_steps: Lanczos steps for the bounds.
        rtol: Relative tolerance of the ``d`` vs ``0.75 d`` check.
        confidence: Level of the probe part of ``[rank_low, rank_high]``.
        probes: Probe block (n, m) to use instead of drawing.
        dtype: Vector dtype when drawing probes.
        device: Vector device when drawing probes.
        reduce: Sums a small tensor over processes (None: one process).

    Returns:
        ``DensityRank`` (``method="kpm"``, ``num_steps`` = degree) with nodes/weights the
        DOS grid and the mass per grid cell, shape (1, G).

    Raises:
        ValueError: If ``tau <= 0``, a gap does not bracket ``tau``, the bounds are not
            ordered, or the budget is too small for degree 4.
    """
    tau = check_tau_and_gap(tau, gap)
    spent = 0
    if bounds is None:
        a, b, spent = spectrum_bounds(matmat, n, generator=generator, steps=bound_steps,
                                      psd=psd, dtype=dtype, device=device, reduce=reduce)
    else:
        a, b = map(float, bounds)
    if not b > a:
        err = bad_value("bounds", "a pair (a, b) with a < b", (a, b))
        raise err
    if probes is None:
        check_positive_int("num_probes", num_probes)
        z = rademacher(n, num_probes, generator=generator, dtype=dtype, device=device)
    else:
        z, num_probes = probes, probes.shape[1]
    budget = (num_probes * max_degree // 2 + spent) if max_matvecs is None else max_matvecs
    deg_cap = min(max_degree, 2 * ((budget - spent) // num_probes))
    if degree is not None:
        deg_cap = min(deg_cap, degree)
    if deg_cap < 4:
        err = bad_value("max_matvecs", f">= {spent + 2 * num_probes}", max_matvecs)
        raise err
    c, e = (a + b) / 2, (b - a) / 2

    def op(x: Tensor) -> Tensor:
        return (matmat(x) - c * x) / e

    mom = _Moments(op, z, reduce)
    del z
    lmax = max(abs(a), abs(b))
    notes: list[str] = []

    def plan(d: int) -> tuple[tuple[float, float] | None, float, float, int, bool]:
        mu = mom.get(d)
        if gap is not None:
            g, delta = gap, float(gap[1])
        else:
            g, cut = _dos_gap(mu, a, b, tau, psd)
            delta = 2.0 * cut - tau
        kappa = max(1.0, lmax / (delta - tau))
        planned = _KPM_FACTOR * steps_for_kappa(kappa, psd)
        # no gap seen while the kernel is wider than tau: the degree is too low to tell
        unresolved = g is None and delta > 3.0 * tau
        return g, delta, kappa, max(planned, 2 * d) if unresolved else planned, unresolved

    d = deg_cap if degree is not None else min(deg_cap, 64)
    mom.grow(d)
    while True:
        g, delta, kappa, planned, unresolved = plan(d)
        if degree is None and d < min(planned, deg_cap):
            d = min(planned, deg_cap, 2 * d)
            mom.grow(d)
            continue
        cut = _cut(tau, delta, a, b)
        per_probe = _count(mom.get(d), cut, a, b)
        est = float(per_probe.mean())
        bias = abs(est - float(_count(mom.get(round(0.75 * d)), cut, a, b).mean()))
        converged = bias <= max(1.0, 0.5 * rtol * abs(est)) and not unresolved
        if converged or degree is not None or d >= deg_cap:
            break
        d = min(deg_cap, math.ceil(_GROWTH * d))
        mom.grow(d)

    if g is None:
        notes.append("no spectral gap above tau detected; cut between tau and 2 tau")
    needed = d if converged else max(planned, math.ceil(_GROWTH * d))
    mean, s, low, high = count_interval(per_probe, n=n, bias=bias, confidence=confidence)
    if not converged:
        notes.append(f"not converged within {budget} products: about degree {needed} "
                     f"({num_probes * ((needed + 1) // 2) + spent} products) needed")
    grid, dens = kpm_density(mom.get(d), a, b, n=n)
    mass = dens * torch.gradient(grid)[0]
    return DensityRank(
        estimate=mean, rank=round(mean), rank_low=low, rank_high=high, confidence=confidence,
        probe_std=s, resolution_bias=bias, num_matvecs=mom.num_matvecs + spent, num_steps=d,
        num_probes=num_probes, converged=converged, steps_needed=needed,
        matvecs_needed=num_probes * ((needed + 1) // 2) + spent, tau=tau, delta=delta, gap=g,
        lambda_max=lmax, kappa=kappa, probe_estimates=per_probe, nodes=grid[None, :],
        weights=(mass / mass.sum().clamp_min(1e-300))[None, :], method="kpm",
        notes=tuple(notes))
