"""What the matrix-free estimators share: the threshold's scale and the noise-floor check."""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any

import torch

from scalable_hrank.errors import NumericalWarning
from scalable_hrank.estimators.registry import RankRequest
from scalable_hrank.linalg.eigen import spectral_norm
from scalable_hrank.operators import CurvatureOperator
from scalable_hrank.result import RankResult
from scalable_hrank.threshold import default_rtol, noise_floor, noise_limited, noise_note

#: Products spent on the spectral norm of the scale kind (H_L) when the threshold needs it.
SCALE_MATVECS = 10


def spectral_scale(op: CurvatureOperator, generator: torch.Generator,
                   num_matvecs: int = SCALE_MATVECS) -> float:
    """Estimate ||op|| (Lanczos: largest |Ritz value| plus its residual, an upper estimate).

    Cost: ``num_matvecs`` products (fewer if Lanczos finds an invariant subspace).
    """
    norm = spectral_norm(op.matmat, op.size, num_matvecs=min(num_matvecs, op.size),
                         generator=generator, dtype=op.dtype, device=op.device)
    return float(norm.upper_bound)


@dataclasses.dataclass(frozen=True)
class Threshold:
    """The threshold of a matrix-free count, as far as it is known before solving.

    Attributes:
        tol: Absolute threshold, or None when the solver scales ``rtol`` by its own
            sigma_max estimate (the kind is its own scale kind and no ``atol`` was given).
        rtol: The relative threshold in force (the default rule when neither was given).
        scale: sigma_max of the scale kind, or None when not computed.
        scale_matvecs: Products spent on another operator for the scale (not counted in
            ``request.op.matvecs``).
    """

    tol: float | None
    rtol: float | None
    scale: float | None
    scale_matvecs: int


def probe_and_threshold(request: RankRequest) -> Threshold:
    """Run the symmetry probe and resolve the threshold of ``request``.

    The probe (3 products) goes to ``request.extra["symmetry_probe"]``. The scale is the
    spectral norm of the kind's ``scale_kind`` (:data:`SCALE_MATVECS` products, on a new
    operator when that is another kind), skipped when the kind scales itself and no
    ``atol`` is given: the solver then scales ``rtol`` by its own estimate.

    Raises:
        ValueError: The operator is not symmetric or not deterministic.
    """
    op, generator = request.op, request.generator
    request.extra["symmetry_probe"] = op.check_symmetry(generator)
    rtol, atol = request.rtol, request.atol
    rtol_eff = default_rtol(op.size, op.dtype) if rtol is None and atol is None else rtol
    scale_kind = op.spec.scale_kind
    if scale_kind == op.kind and atol is None:
        return Threshold(None, rtol_eff, None, 0)
    scale_matvecs = 0
    if scale_kind == op.kind:
        scale = spectral_scale(op, generator)
    else:
        scale_op = request.operator(scale_kind)
        scale = spectral_scale(scale_op, generator)
        scale_matvecs = scale_op.matvecs
    return Threshold(max(atol or 0.0, (rtol_eff or 0.0) * scale), rtol_eff, scale, scale_matvecs)


def with_changes(res: RankResult, **changes: Any) -> RankResult:
    """A copy of ``res`` with ``changes`` applied."""
    return dataclasses.replace(res, **changes)


def check_noise_floor(res: RankResult, dtype: torch.dtype) -> RankResult:
    """Mark a matrix-free count whose threshold sits at the product noise floor unreliable.

    The decision uses the round-off floor ``eps(dtype) * scale``; ``noise_floor`` records
    the larger of it and the error measured from the products' asymmetry (a noisy estimate
    at small n, so it informs but does not decide). Below ``NOISE_MARGIN`` times the floor,
    round-off can move eigenvalues across ``tol`` either way, so neither a certificate nor a
    bound holds: the result says so, with the fix, and a :class:`NumericalWarning` is raised.
    An exact dense output-space count is left as it is.
    """
    floor = noise_floor(res.scale, dtype)
    recorded = noise_floor(res.scale, dtype, res.noise_floor or 0.0)
    if res.guarantee == "exact" or res.extra.get("space") == "outputs-dense":
        return with_changes(res, noise_floor=recorded)
    if not noise_limited(res.tol, floor):
        return with_changes(res, noise_floor=recorded)
    note = noise_note(res.tol, floor, dtype)
    warnings.warn(f"{res.kind}: {note}", NumericalWarning, stacklevel=4)
    return with_changes(res, noise_floor=recorded, guarantee="unreliable", certified=False,
                        rank_low=0, rank_high=res.n, confidence=1.0, notes=(*res.notes, note))
