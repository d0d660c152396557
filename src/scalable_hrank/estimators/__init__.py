"""Rank estimators, one module per method, and the registry that names them.

``exact`` (dense float64), ``sketch`` (certified block Krylov), ``lanczos`` (the same with
blocks of one), ``density`` (SLQ count with an interval); ``auto`` is a policy over them
(:mod:`.auto`). :mod:`.registry` says what an entry holds and how to add one.
"""

from scalable_hrank.estimators import density, exact, lanczos, sketch
from scalable_hrank.estimators.auto import AUTO_EXACT_MAX_N, auto_candidates, choose
from scalable_hrank.estimators.common import SCALE_MATVECS, spectral_scale
from scalable_hrank.estimators.registry import (
    BUILTIN_METHODS,
    Estimator,
    RankRequest,
    Sizing,
    estimator,
    method_names,
    register_estimator,
    resume_entry,
    resume_state_classes,
    unregister_estimator,
)

__all__ = [
    "AUTO_EXACT_MAX_N",
    "BUILTIN_METHODS",
    "SCALE_MATVECS",
    "Estimator",
    "RankRequest",
    "Sizing",
    "auto_candidates",
    "choose",
    "density",
    "estimator",
    "exact",
    "lanczos",
    "method_names",
    "register_estimator",
    "resume_entry",
    "resume_state_classes",
    "sketch",
    "spectral_scale",
    "unregister_estimator",
]
