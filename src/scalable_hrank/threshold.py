"""The rank threshold: which eigenvalues count as non-zero.

Default (PAPER.md section 5, numpy's ``matrix_rank`` rule): tol = sigma_max(H_L) * P * eps,
with eps of the product dtype, capped at sqrt(eps) * sigma_max so that it stays meaningful for
huge P (at P = 1e9 in float32 the plain rule would exceed sigma_max). For H_O and H_F the scale
is sigma_max of H_L: H_F of a one-layer net is exactly zero, and a self-relative tolerance on
rounding noise would call it full rank.
"""

from __future__ import annotations

import math

import torch

from scalable_hrank._validation import check_tolerance


def default_rtol(n: int, dtype: torch.dtype) -> float:
    """min(P * eps, sqrt(eps)) for the product dtype."""
    eps = torch.finfo(dtype).eps
    return min(n * eps, math.sqrt(eps))


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
