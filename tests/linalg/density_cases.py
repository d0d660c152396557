"""Planted-spectrum operators for the spectral-density count tests (float64).

Every case is ``A = U diag(lam) U^T`` with a random orthogonal U, so the true count at any
threshold is read off ``lam`` (never off an estimator's output).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache

import torch
from torch import Tensor


def _hartley(x: Tensor) -> Tensor:
    """Orthonormal discrete Hartley transform along dim 0 (symmetric, its own inverse)."""
    f = torch.fft.fft(x, dim=0, norm="ortho")
    return f.real - f.imag


@dataclass(frozen=True)
class Planted:
    """``A = U diag(lam) U^T`` with known eigenvalues, applied in O(n log n) per column.

    ``U = D1 H D2 H D3`` (H the orthonormal Hartley transform, D random signs): a random
    orthogonal basis with incoherent eigenvectors, so a product costs four FFTs instead of
    a dense n x n read (which made the long indefinite runs too slow for the test budget).
    """

    name: str
    eigenvalues: Tensor  # (n,), float64
    signs: Tensor  # (3, n), float64, +-1
    tau: float
    gap: tuple[float, float]  # (largest |lam| <= tau, smallest |lam| > tau)
    psd: bool

    @property
    def n(self) -> int:
        return self.eigenvalues.numel()

    def count(self, tau: float | None = None) -> int:
        """True number of eigenvalues with |lambda| > tau (default: the case's tau)."""
        t = self.tau if tau is None else tau
        return int((self.eigenvalues.abs() > t).sum())

    def u(self, x: Tensor) -> Tensor:
        d = self.signs
        return d[0, :, None] * _hartley(d[1, :, None] * _hartley(d[2, :, None] * x))

    def ut(self, x: Tensor) -> Tensor:
        d = self.signs
        return d[2, :, None] * _hartley(d[1, :, None] * _hartley(d[0, :, None] * x))

    def matmat(self, x: Tensor) -> Tensor:
        return self.u(self.eigenvalues[:, None] * self.ut(x))

    def dense(self) -> Tensor:
        """The matrix itself, (n, n) float64 (for small checks only)."""
        return self.matmat(torch.eye(self.n, dtype=torch.float64))

    def top(self, d: int) -> tuple[Tensor, Tensor]:
        """Exact top-d eigenpairs by magnitude (stand-in for block-Krylov outliers)."""
        idx = torch.argsort(self.eigenvalues.abs(), descending=True)[:d]
        e = torch.zeros(self.n, d, dtype=torch.float64)
        e[idx, torch.arange(d)] = 1.0
        return self.u(e), self.eigenvalues[idx]


def planted(name: str, lam: Tensor, *, tau: float, seed: int = 0) -> Planted:
    """``U diag(lam) U^T`` with a random orthogonal U drawn from ``seed``."""
    lam = lam.to(torch.float64)
    g = torch.Generator().manual_seed(seed)
    signs = 2.0 * torch.randint(0, 2, (3, lam.numel()), generator=g).to(torch.float64) - 1.0
    lam = lam[torch.randperm(lam.numel(), generator=g)]
    mags = lam.abs()
    below = mags[mags <= tau]
    above = mags[mags > tau]
    gap = (float(below.max()) if below.numel() else 0.0, float(above.min()))
    return Planted(name, lam, signs, tau, gap, bool((lam >= 0).all()))


def _logspace(lo: float, hi: float, k: int, g: torch.Generator) -> Tensor:
    """``k`` values log-uniform in [lo, hi] (sorted), float64."""
    u = torch.rand(k, generator=g, dtype=torch.float64)
    return torch.sort(10 ** (math.log10(lo) + u * (math.log10(hi) - math.log10(lo))))[0]


@cache
def psd_gap(n: int = 2000, r: int = 600, kappa: float = 100.0, seed: int = 0) -> Planted:
    """PSD: r eigenvalues log-uniform in [1/kappa, 1], the rest exactly 0; tau = 0.1/kappa."""
    g = torch.Generator().manual_seed(seed + 1000)
    lam = torch.zeros(n, dtype=torch.float64)
    lam[:r] = _logspace(1.0 / kappa, 1.0, r, g)
    lam[r - 1] = 1.0
    lam[0] = 1.0 / kappa
    return planted(f"psd_gap(n={n}, r={r}, kappa={kappa:g})", lam, tau=0.1 / kappa, seed=seed)


@cache
def indefinite_gap(n: int = 2000, r: int = 800, kappa: float = 20.0, seed: int = 0,
                   noise: float = 0.0) -> Planted:
    """Indefinite: r eigenvalues with |lam| log-uniform in [1/kappa, 1] and random signs
    (about a third negative); the rest 0 (or +-noise); tau = 0.2/kappa."""
    g = torch.Generator().manual_seed(seed + 2000)
    mags = _logspace(1.0 / kappa, 1.0, r, g)
    mags[0], mags[-1] = 1.0 / kappa, 1.0
    signs = torch.where(torch.rand(r, generator=g, dtype=torch.float64) < 1 / 3, -1.0, 1.0)
    lam = torch.zeros(n, dtype=torch.float64)
    lam[:r] = signs * mags
    if noise > 0:
        lam[r:] = noise * (2 * torch.rand(n - r, generator=g, dtype=torch.float64) - 1)
    return planted(f"indefinite_gap(n={n}, r={r}, kappa={kappa:g})", lam,
                   tau=max(0.2 / kappa, 10 * noise), seed=seed)


@cache
def null_heavy(n: int = 3000, r: int = 150, kappa: float = 50.0, seed: int = 0) -> Planted:
    """Indefinite with a large exact null space (n - r zeros, r = 5 % of n)."""
    g = torch.Generator().manual_seed(seed + 3000)
    mags = _logspace(1.0 / kappa, 1.0, r, g)
    mags[0], mags[-1] = 1.0 / kappa, 1.0
    signs = torch.where(torch.rand(r, generator=g, dtype=torch.float64) < 0.5, -1.0, 1.0)
    lam = torch.zeros(n, dtype=torch.float64)
    lam[:r] = signs * mags
    return planted(f"null_heavy(n={n}, r={r})", lam, tau=0.5 / kappa, seed=seed)


@cache
def deep_linear_like(n: int = 2400, r: int = 1400, num_outliers: int = 10, indefinite: bool = False,
                     seed: int = 0) -> Planted:
    """Deep-linear-net-like: a few large outliers, a bulk spread over two decades and a
    large exact null space; H_L-like (indefinite: bulk of both signs) or H_O-like (PSD).

    Outliers sit in [20, 100], the bulk in [0.05, 5]; tau = 0.02 (a gap of 2.5 tau below
    the bulk). lambda_max / tau is 5000 before deflation and 250 after deflating the outliers.
    """
    g = torch.Generator().manual_seed(seed + 4000)
    lam = torch.zeros(n, dtype=torch.float64)
    out = _logspace(20.0, 100.0, num_outliers, g)
    out[-1] = 100.0
    bulk = _logspace(0.05, 5.0, r - num_outliers, g)
    bulk[0] = 0.05
    if indefinite:
        bulk = bulk * torch.where(torch.rand(bulk.numel(), generator=g) < 0.4, -1.0, 1.0)
    lam[:num_outliers] = out
    lam[num_outliers:r] = bulk
    kind = "H_L-like" if indefinite else "H_O-like"
    return planted(f"deep_linear_like({kind}, n={n}, r={r})", lam, tau=0.02, seed=seed)


@cache
def small_tail(n: int = 2000, r: int = 800, seed: int = 0) -> Planted:
    """H_L-like without a gap: 90 % of the r non-zero |lam| log-uniform in [1e-2, 1], the
    other 10 % in [1e-7, 1e-2] (random signs); tau = 1e-9. Separating the tail from the
    null space needs about 3e7 steps, so every budget is infeasible."""
    g = torch.Generator().manual_seed(seed + 5000)
    tail = r // 10
    mags = torch.cat([_logspace(1e-7, 1e-2, tail, g), _logspace(1e-2, 1.0, r - tail, g)])
    mags[-1] = 1.0
    signs = torch.where(torch.rand(r, generator=g, dtype=torch.float64) < 0.4, -1.0, 1.0)
    lam = torch.zeros(n, dtype=torch.float64)
    lam[:r] = signs * mags
    return planted(f"small_tail(n={n}, r={r})", lam, tau=1e-9, seed=seed)


# -- families built to break a density count (each with a fresh spectrum per seed) ----------

def shelf(n: int = 400, bulk: int = 80, shelf_size: int = 30, tau: float = 1e-3,
          seed: int = 0) -> Planted:
    """PSD: ``bulk`` eigenvalues in [0.5, 1] and a shelf of ``shelf_size`` in [1.5, 5] tau far
    below them (the largest ratio lies between shelf and bulk, not at tau); the rest 0."""
    g = torch.Generator().manual_seed(seed + 6000)
    lam = torch.zeros(n, dtype=torch.float64)
    lam[:bulk] = 0.5 + 0.5 * torch.rand(bulk, generator=g, dtype=torch.float64)
    lam[bulk:bulk + shelf_size] = tau * (1.5 + 3.5 * torch.rand(shelf_size, generator=g,
                                                                dtype=torch.float64))
    return planted(f"shelf(n={n})", lam, tau=tau, seed=seed)


def log_slope(n: int = 400, r: int = 160, tau: float = 1e-3, seed: int = 0) -> Planted:
    """PSD, no gap: r eigenvalues log-uniform in [1e-3 tau, 1] (a slope through tau)."""
    g = torch.Generator().manual_seed(seed + 7000)
    lam = torch.zeros(n, dtype=torch.float64)
    lam[:r] = _logspace(1e-3 * tau, 1.0, r, g)
    return planted(f"log_slope(n={n})", lam, tau=tau, seed=seed)


def indefinite_edge(n: int = 300, bulk: int = 60, edge: int = 30, tau: float = 0.02,
                    seed: int = 0) -> Planted:
    """Indefinite: a bulk of both signs in [0.2, 1] and ``edge`` eigenvalues of both signs
    with |lambda| just above tau, in [1.05, 1.5] tau; the rest 0."""
    g = torch.Generator().manual_seed(seed + 8000)
    lam = torch.zeros(n, dtype=torch.float64)
    mags = torch.cat([0.2 + 0.8 * torch.rand(bulk, generator=g, dtype=torch.float64),
                      tau * (1.05 + 0.45 * torch.rand(edge, generator=g, dtype=torch.float64))])
    signs = torch.where(torch.rand(bulk + edge, generator=g) < 0.5, -1.0, 1.0)
    lam[:bulk + edge] = signs.to(torch.float64) * mags
    return planted(f"indefinite_edge(n={n})", lam, tau=tau, seed=seed)


def clean_gap(n: int = 400, r: int = 140, tau: float = 1e-3, seed: int = 0) -> Planted:
    """Control, PSD: r eigenvalues log-uniform in [1e-2, 1], the rest 0 (gap of 10 tau)."""
    g = torch.Generator().manual_seed(seed + 9000)
    lam = torch.zeros(n, dtype=torch.float64)
    lam[:r] = _logspace(1e-2, 1.0, r, g)
    return planted(f"clean_gap(n={n})", lam, tau=tau, seed=seed)


FAMILIES = {"shelf": shelf, "log_slope": log_slope, "indefinite_edge": indefinite_edge,
            "clean_gap": clean_gap}
