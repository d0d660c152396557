"""The rank threshold (which eigenvalues count as non-zero) and the product noise floor.

The one rule, used by every method (exact, sketch, lanczos, density): the absolute threshold
is ``tol = max(atol, rtol * scale)`` where ``scale`` is sigma_max(H_L), also when H_O or H_F
is counted (H_F of a one-layer net is exactly zero, and a threshold relative to its own
rounding noise would call it full rank). When neither ``rtol`` nor ``atol`` is given,
``rtol = min(max(P, 10) * eps, sqrt(eps))`` with ``eps`` of the product dtype (float64 for
the dense reference). Reason: an eigenvalue computed from P x P products in that dtype
carries round-off of about ``P * eps * scale`` (numpy's ``matrix_rank`` rule). The factor
10 for tiny P keeps the default threshold a decade above the round-off floor below; the
``sqrt(eps)`` cap keeps it meaningful for huge P (at P = 1e9 in float32 the plain rule would
exceed sigma_max).

Noise floor: one product in dtype carries an absolute error of at least ``eps * scale``
(more when the measured asymmetry of the products says so; that estimate is noisy at small
P, so decisions use the round-off floor). A threshold within ``NOISE_MARGIN`` times that
floor cannot separate eigenvalues from round-off: a count there is neither certified nor a
bound.
"""

from __future__ import annotations

import math

import torch

from scalable_hrank._validation import check_tolerance

#: A threshold must exceed the noise floor by this factor for a count to be trusted.
NOISE_MARGIN = 10.0


def default_rtol(n: int, dtype: torch.dtype) -> float:
    """min(max(P, 10) * eps, sqrt(eps)) for the product dtype (module docstring)."""
    eps = torch.finfo(dtype).eps
    return min(max(n, NOISE_MARGIN) * eps, math.sqrt(eps))


def check_thresholds(rtol: float | None, atol: float | None) -> tuple[float | None, float | None]:
    """Validate ``rtol`` (finite, in [0, 1)) and ``atol`` (finite, >= 0)."""
    return check_tolerance("rtol", rtol, upper=1.0), check_tolerance("atol", atol)


def resolve_threshold(scale: float, n: int, dtype: torch.dtype, rtol: float | None,
                      atol: float | None) -> float:
    """Absolute threshold: max(atol, rtol * scale); the default rtol when neither is given."""
    rtol, atol = check_thresholds(rtol, atol)
    if rtol is None and atol is None:
        rtol = default_rtol(n, dtype)
    return max(atol or 0.0, (rtol or 0.0) * scale)


def noise_floor(scale: float, dtype: torch.dtype, measured: float = 0.0) -> float:
    """Absolute error of one product: ``max(eps * scale, measured)``.

    Args:
        scale: sigma_max of the matrix the products apply (or of H_L).
        dtype: Product dtype.
        measured: An estimate from the products themselves (e.g. their asymmetry), >= 0.
    """
    return max(torch.finfo(dtype).eps * abs(scale), measured if math.isfinite(measured) else 0.0)


def noise_limited(tol: float, floor: float) -> bool:
    """True when ``tol`` is below ``NOISE_MARGIN`` times the noise floor.

    The default rule sits exactly at the margin for P <= 10; a relative slack of 1e-9 keeps
    that from being flagged by the rounding of the two products.
    """
    return tol < NOISE_MARGIN * floor * (1.0 - 1e-9)


def noise_note(tol: float, floor: float, dtype: torch.dtype) -> str:
    """Why a count at ``tol`` is unreliable, and what fixes it."""
    fix = ("compute the products in float64 (dtype=torch.float64, CLI --dtype float64) or "
           if dtype != torch.float64 else "")
    return (f"unreliable: tol = {tol:.3g} is within {NOISE_MARGIN:g}x of the product noise "
            f"floor {floor:.3g} ({dtype} round-off times the scale), so round-off can move "
            f"eigenvalues across it; the count is neither certified nor a bound. Fix: {fix}"
            f"a larger rtol (or atol), so that tol > {NOISE_MARGIN * floor:.3g}")
