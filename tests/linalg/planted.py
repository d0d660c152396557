"""Explicit symmetric matrices with planted spectra for the linalg tests.

Every matrix is ``U diag(eigenvalues) U^T`` with U a random orthogonal matrix from a seeded
generator; expected answers are computed from the planted eigenvalues, never hard-coded.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class Planted:
    matrix: Tensor       # (n, n), float64 unless converted
    eigenvalues: Tensor  # (n,) float64, the planted spectrum (before any noise)

    @property
    def n(self) -> int:
        return self.matrix.shape[0]

    def matmat(self, dtype: torch.dtype = torch.float64):
        a = self.matrix.to(dtype)
        calls = []

        def mm(x: Tensor) -> Tensor:
            assert x.dim() == 2 and x.shape[0] == a.shape[0]
            calls.append(x.shape[1])
            return a @ x

        mm.calls = calls  # type: ignore[attr-defined]
        return mm

    def rank(self, tau: float) -> int:
        """Exact numerical rank at tau, from the dense matrix (includes any noise)."""
        return int(torch.linalg.matrix_rank(self.matrix, atol=tau, hermitian=True))

    def planted_rank(self, tau: float) -> int:
        return int((self.eigenvalues.abs() > tau).sum())


def random_orthogonal(n: int, generator: torch.Generator) -> Tensor:
    g = torch.randn(n, n, generator=generator, dtype=torch.float64)
    q, r = torch.linalg.qr(g)
    return q * torch.sign(torch.diagonal(r))


def planted(eigenvalues: Tensor, *, seed: int = 0, noise: float = 0.0) -> Planted:
    """``U diag(eigenvalues) U^T`` plus a symmetric Gaussian perturbation of spectral norm noise."""
    gen = torch.Generator().manual_seed(seed)
    lam = eigenvalues.to(torch.float64)
    n = lam.numel()
    u = random_orthogonal(n, gen)
    a = (u * lam) @ u.T
    if noise > 0:
        e = torch.randn(n, n, generator=gen, dtype=torch.float64)
        e = 0.5 * (e + e.T)
        e *= noise / torch.linalg.matrix_norm(e, 2)
        a = a + e
    a = 0.5 * (a + a.T)
    return Planted(a, lam)


def gapped_spectrum(n: int, r: int, *, seed: int = 0, indefinite: bool = True,
                    low: float = 1e-2, high: float = 1.0) -> Tensor:
    """r log-uniform magnitudes in [low, high] (random signs if indefinite), n - r zeros."""
    gen = torch.Generator().manual_seed(1000 + seed)
    mags = torch.exp(torch.empty(r, dtype=torch.float64).uniform_(
        float(torch.log(torch.tensor(low))), float(torch.log(torch.tensor(high))),
        generator=gen))
    if r:
        mags[0] = high
    if indefinite and r:
        signs = torch.where(torch.rand(r, generator=gen, dtype=torch.float64) < 0.5, -1.0, 1.0)
        signs[0] = 1.0
        mags = mags * signs
    return torch.cat([mags, torch.zeros(n - r, dtype=torch.float64)])


def geometric_spectrum(n: int, *, ratio: float = 0.8) -> Tensor:
    """No gap: lambda_i = ratio**i."""
    return ratio ** torch.arange(n, dtype=torch.float64)
