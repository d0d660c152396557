"""Statistics of the spectral-density rank count (SLQ).

Rademacher probes, the smooth step that turns a count into a trace, the bracket of two
steps around tau read from a weighted set of eigenvalue nodes, step planning from the spread
``kappa`` and the confidence interval that combines probe variance with resolution bias. The
Lanczos iteration that produces the nodes lives in :mod:`scalable_hrank.linalg.decomp`.

The count of eigenvalues with ``|lambda| > tau`` is ``tr g(A)`` for the step
``g = 1{|x| > tau}``. Smooth steps that are 0 up to tau and 1 from a little above it, or 0
up to a little below tau and 1 from it, bracket that trace from below and above
(:class:`Bracket`); with no eigenvalue between their transitions both give the count.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from statistics import NormalDist

import torch
from torch import Tensor

from scalable_hrank._validation import bad_value

__all__ = [
    "Bracket",
    "DensityRank",
    "bracket",
    "count_interval",
    "kappa_for_steps",
    "normal_quantile",
    "rademacher",
    "smooth_step",
    "steps_for_kappa",
]


@dataclass(frozen=True)
class DensityRank:
    """Rank count from a spectral density (SLQ), with its error budget.

    Attributes:
        estimate: Estimated count of eigenvalues with ``|lambda| > tau`` (float).
        rank: ``round(estimate)``.
        rank_low: Lower end of the interval (probe variance plus resolution bias).
        rank_high: Upper end of the interval.
        confidence: Nominal level of ``[rank_low, rank_high]`` for the probe part.
        probe_std: Sample standard deviation of the per-probe estimates (nan for one probe).
        resolution_bias: ``|estimate(k) - estimate(0.75 k)|``: change of the count between
            the full and the three-quarter depth, the larger of the two readings'.
        num_matvecs: Products with A spent (a block of k columns counts k), bounds included.
        num_steps: Lanczos steps per probe.
        num_probes: Rademacher probes.
        converged: True when ``resolution_bias`` is within the requested tolerance.
        steps_needed: Estimated steps (degree) per probe needed to converge; equal to
            ``num_steps`` when converged.
        matvecs_needed: Products that ``steps_needed`` implies (probes x steps + extras).
        tau: Threshold: eigenvalues with ``|lambda| > tau`` are counted.
        delta: Where the step above tau reaches 1 (:class:`Bracket`).
        gap: ``(lower, upper)`` of the detected or given gap, None when no gap was found.
        lambda_max: Estimate of ``max |lambda|`` used for planning (padded Ritz value).
        kappa: ``lambda_max / width``: the spread that sets the steps (the width the depth
            must resolve, see :class:`Bracket`).
        num_deflated: Columns of the deflation block (0 without deflation).
        deflated_count: Deflated Ritz values with ``|theta| > tau`` (already in ``estimate``).
        lower_bound: Not converged only (else None): a lower confidence bound on the count
            at ``tau`` from the count of ``|lambda| > bound_at``, the smallest magnitude
            (at least ``tau``) the depth reached resolves (``kappa_for_steps``), deflated
            count included.
        bound_at: The magnitude ``lower_bound`` counts above (None with it).
        probe_estimates: Per-probe counts, shape (num_probes,), float64.
        readings: SLQ: ``(count from the step above tau, count from the step below tau)``,
            the two traces that bracket the count (deflated count included); their
            difference is the mass near tau that the depth does not separate.
        delta_below: SLQ: where the step below tau starts (its other end is tau).
        nodes: SLQ: Ritz values, shape (num_probes, num_steps), float64, padded with 0
            after a breakdown.
        weights: Same shape as ``nodes``: quadrature weights (SLQ; each row sums to 1)
            Zero on padding.
        method: "slq".
        notes: Human-readable remarks (no gap, breakdowns, budget).
    """

    estimate: float
    rank: int
    rank_low: int
    rank_high: int
    confidence: float
    probe_std: float
    resolution_bias: float
    num_matvecs: int
    num_steps: int
    num_probes: int
    converged: bool
    steps_needed: int
    matvecs_needed: int
    tau: float
    delta: float
    gap: tuple[float, float] | None
    lambda_max: float
    kappa: float
    num_deflated: int = 0
    deflated_count: int = 0
    lower_bound: int | None = None
    bound_at: float | None = None
    probe_estimates: Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.float64))
    readings: tuple[float, float] | None = None
    delta_below: float | None = None
    nodes: Tensor = field(default_factory=lambda: torch.zeros(0, 0, dtype=torch.float64))
    weights: Tensor = field(default_factory=lambda: torch.zeros(0, 0, dtype=torch.float64))
    method: str = "slq"
    notes: tuple[str, ...] = ()


def check_tau_and_gap(tau: float, gap: tuple[float, float] | None) -> float:
    """Return ``tau`` as a float, checked together with an optional ``(lower, upper)`` gap.

    Raises:
        ValueError: Unless ``tau`` is finite and > 0 and a given gap has ``upper > tau``.
    """
    if not (isinstance(tau, (int, float)) and math.isfinite(tau) and tau > 0):
        err = bad_value("tau", "a finite number > 0", tau)
        raise err
    tau = float(tau)
    if gap is not None and not gap[1] > tau:
        err = bad_value("gap", f"a pair (lower, upper) with upper > tau = {tau!r}", gap)
        raise err
    return tau


def rademacher(n: int, num_probes: int, *, generator: torch.Generator,
               dtype: torch.dtype = torch.float64,
               device: torch.device | str = "cpu") -> Tensor:
    """Draw ``num_probes`` Rademacher vectors (entries +-1) as the columns of a block.

    Drawn on the CPU from ``generator`` and then moved, so every device and every process
    draws the same numbers for the same generator state.

    Args:
        n: Vector length.
        num_probes: Number of columns m.
        generator: A CPU ``torch.Generator``; its state advances.
        dtype: Floating dtype of the result.
        device: Device of the result.

    Returns:
        Tensor of shape (n, m), entries +-1, ``dtype`` on ``device``.

    Raises:
        ValueError: If ``n`` or ``num_probes`` is below 1.
    """
    if n < 1 or num_probes < 1:
        err = bad_value("(n, num_probes)", "positive integers", (n, num_probes))
        raise err
    bits = torch.randint(0, 2, (n, num_probes), generator=generator, dtype=torch.int8)
    return (2 * bits - 1).to(dtype=dtype, device=device)


def smooth_step(x: Tensor, lower: float, upper: float, *, profile: str = "linear") -> Tensor:
    """Smooth step of ``|x|``: 0 for ``|x| <= lower``, 1 for ``|x| >= upper``, C^1 between.

    The transition is the cubic ``3 t^2 - 2 t^3`` in ``t = (|x| - lower)/(upper - lower)``
    ("linear") or in ``t = log(|x|/lower)/log(upper/lower)`` ("log", needs ``lower > 0``).
    The linear profile is the easier one for polynomials (quadrature, Chebyshev), since
    the transition is as wide as the gap allows.

    Args:
        x: Tensor of any shape (float64 recommended).
        lower: Threshold tau >= 0.
        upper: Where the step reaches 1; must exceed ``lower``.
        profile: "linear" or "log".

    Returns:
        Tensor like ``x`` with values in [0, 1].

    Raises:
        ValueError: If ``upper <= lower``, or ``profile`` is unknown, or "log" with
            ``lower <= 0``.
    """
    if not upper > lower:
        err = bad_value("upper", f"> lower = {lower!r}", upper)
        raise err
    a = x.abs()
    if profile == "linear":
        t = (a - lower) / (upper - lower)
    elif profile == "log":
        if lower <= 0:
            err = bad_value("lower", "> 0 for the log profile", lower)
            raise err
        t = torch.log(a.clamp_min(lower) / lower) / math.log(upper / lower)
    else:
        err = bad_value("profile", "'linear' or 'log'", profile)
        raise err
    t = t.clamp(0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def steps_for_kappa(kappa: float, psd: bool) -> int:
    """Lanczos steps per probe that resolve a count at spread ``kappa``.

    ``kappa = lambda_max / width`` with ``width`` the distance the smooth step must
    resolve. Zero is an edge of a PSD spectrum, so the polynomial degree grows like
    ``sqrt(kappa)``; for an indefinite one zero is interior and it grows like ``kappa``.
    The constants are rounded up from the first depths at which counts on planted
    spectra at n = 3000 were within one eigenvalue (PSD: 10, 30, 60-80 steps at
    kappa = 10, 100, 1e3; indefinite: 70, 260 at kappa = 10, 100).

    Args:
        kappa: Spread, >= 1.
        psd: Whether the operator is positive semidefinite.

    Returns:
        Steps per probe (>= 8).

    Raises:
        ValueError: If ``kappa`` is not a finite number >= 1.
    """
    if not (math.isfinite(kappa) and kappa >= 1):
        err = bad_value("kappa", "a finite number >= 1", kappa)
        raise err
    k = 3.0 * math.sqrt(kappa) + 8.0 if psd else 3.0 * kappa + 40.0
    return max(8, math.ceil(k))


def kappa_for_steps(steps: int, psd: bool) -> float:
    """The spread that ``steps`` Lanczos steps resolve: the inverse of :func:`steps_for_kappa`.

    ``lambda_max / kappa_for_steps(k, psd)`` is about the smallest ``|lambda|`` that a count
    at depth k separates from zero (at least 1; below the rule's fixed steps, 1).
    """
    k = float(steps)
    kappa = (max(k - 8.0, 0.0) / 3.0) ** 2 if psd else (k - 40.0) / 3.0
    return max(1.0, kappa)


def normal_quantile(confidence: float) -> float:
    """Two-sided standard normal quantile: ``z`` with ``P(|Z| <= z) = confidence``.

    Raises:
        ValueError: If ``confidence`` is not in (0, 1).
    """
    if not 0.0 < confidence < 1.0:
        err = bad_value("confidence", "in (0, 1)", confidence)
        raise err
    return NormalDist().inv_cdf(0.5 + confidence / 2.0)


def count_interval(probe_estimates: Tensor, *, n: int, bias: float,
                   confidence: float) -> tuple[float, float, int, int]:
    """Mean count and interval from per-probe estimates plus a resolution bias.

    The probe half-width is ``z * sigma / sqrt(m)`` with ``z`` the normal quantile and
    ``sigma = max(s, sqrt(2 c (1 - c/n)))``: ``s`` is the sample standard deviation and
    the second term bounds the Rademacher standard deviation of ``z^T P z`` for any
    projector P of rank c (``Var = 2 (c - sum P_ii^2) <= 2 c (1 - c/n)``), which keeps
    the interval honest with two or three probes. The bias is added linearly (it is
    not random).

    Args:
        probe_estimates: Per-probe counts, shape (m,), float64.
        n: Operator size (vector length).
        bias: Resolution bias >= 0 (from the convergence check).
        confidence: Level in (0, 1) of the probe part.

    Returns:
        ``(mean, probe_std, low, high)``; ``probe_std`` is nan for one probe.
    """
    est = probe_estimates.to(torch.float64)
    m = est.numel()
    mean = float(est.mean())
    s = float(est.std()) if m > 1 else math.nan
    c = min(max(mean, 0.0), float(n))
    sigma = math.sqrt(2.0 * c * (1.0 - c / n))
    if m > 1 and math.isfinite(s):
        sigma = max(sigma, s)
    half = normal_quantile(confidence) * sigma / math.sqrt(m) + abs(bias)
    low = max(0, math.floor(mean - half))
    high = min(n, math.ceil(mean + half))
    low = min(low, n)
    high = max(high, low)
    return mean, s, int(low), int(high)


@dataclass(frozen=True)
class Bracket:
    """The two smooth steps whose traces bracket ``#{|lambda| > tau}``.

    ``below = step on [tau - w_below, tau]`` is 1 wherever ``|x| > tau`` (and on part of the
    band just below), so ``tr below(A) >= count``; ``above = step on [tau, tau + w_above]`` is
    0 wherever ``|x| <= tau``, so ``tr above(A) <= count``. Eigenvalues in the two bands are
    what separates the readings: with no eigenvalue in ``(tau - w_below, tau + w_above)`` both
    equal the count. No gap is assumed anywhere: mass near ``tau`` widens the interval instead
    of vanishing from it.

    Attributes:
        lower_edge: Largest magnitude at or below ``tau`` seen among the nodes (0 if none).
        upper_edge: Smallest magnitude above ``tau`` seen among the nodes (inf if none).
        w_below: Width of the step below ``tau`` (in ``(0, tau]``).
        w_above: Width of the step above ``tau`` (> 0).
        width: The spectral distance the quadrature must resolve, which sets the depth
            (``kappa = lambda_max / width``): the empty band around ``tau`` when there is one,
            else the narrower step.
    """

    lower_edge: float
    upper_edge: float
    w_below: float
    w_above: float
    width: float

    def gap(self, ratio: float = 10.0) -> tuple[float, float] | None:
        """``(lower_edge, upper_edge)`` when the band around ``tau`` spans ``ratio`` or more."""
        lo, hi = self.lower_edge, self.upper_edge
        if math.isfinite(hi) and (lo == 0.0 or hi / lo >= ratio):
            return lo, hi
        return None


def bracket(nodes: Tensor, weights: Tensor, tau: float, *, n: int,
            gap: tuple[float, float] | None = None, min_count: float = 1.0,
            min_width: float = 0.25) -> Bracket:
    """Choose the two steps of :class:`Bracket` from a weighted set of nodes (or a known gap).

    Candidate nodes stand for at least ``min_count`` eigenvalues (``n * weight``) in their own
    probe; each probe's heavy node nearest zero (the null atom, which wanders upwards before
    convergence) is skipped. The nearest candidates on either side of ``tau`` are the edges of
    the empty band; each step ends halfway to its edge (a Ritz value overestimates the
    distance to the band's edge) but is never narrower than ``min_width * tau``. A given
    ``gap`` is trusted: the steps then fill it.

    Args:
        nodes: Node positions, shape (m, k) or (k,), float64.
        weights: Weights of the same shape; each row sums to 1 (one probe each).
        tau: Threshold > 0.
        n: Operator size (turns weights into eigenvalue counts).
        gap: ``(lower, upper)`` with ``lower <= tau < upper`` known to hold no eigenvalue.
        min_count: Minimum ``n * weight`` of a candidate node.
        min_width: Smallest step width, relative to ``tau``.

    Returns:
        A :class:`Bracket`.
    """
    floor = min_width * tau
    if gap is not None:
        lo, hi = float(gap[0]), float(gap[1])
        w_below = tau - lo if lo > 0 else tau / 2.0
        return Bracket(lo, hi, w_below, hi - tau, hi - tau)
    nodes = nodes.reshape(-1, nodes.shape[-1]) if nodes.dim() > 1 else nodes.reshape(1, -1)
    weights = weights.reshape(nodes.shape).to(torch.float64)
    m = nodes.shape[0]
    absn = nodes.abs().to(torch.float64)
    keep = weights * n >= min_count
    # the node nearest zero of each probe stands for the null atom; before convergence it
    # wanders, so a heavy one (> twice the mean weight of its probe) is no candidate
    j = torch.where(weights > 0, absn, torch.inf).argmin(1)
    rows = torch.arange(m)
    heavy = weights[rows, j] > 2.0 / (weights > 0).sum(1).clamp_min(1)
    keep[rows[heavy], j[heavy]] = False
    mags = absn[keep]
    above, below = mags[mags > tau], mags[mags <= tau]
    hi = float(above.min()) if above.numel() else math.inf
    lo = float(below.max()) if below.numel() else 0.0
    w_above = max(floor, 0.5 * (hi - tau)) if math.isfinite(hi) else max(floor, tau)
    w_below = max(floor, 0.5 * (tau - lo))
    band = (hi - lo) / 2.0 if math.isfinite(hi) else w_above
    return Bracket(lo, hi, w_below, w_above, max(min(w_below, w_above), band))
