"""The one tridiagonalization engine: Lanczos decompositions, apart from the estimators.

Two modes of the same recurrence on a ``matmat`` callable:

- full reorthogonalization (:mod:`.block`): block Lanczos whose basis Q is kept, B = Q^T A Q
  filled from the products, dependent directions dropped with a rigorous residual bound; one
  column per block is single-vector Lanczos (:func:`lanczos`). State: :class:`KrylovState`.
- local reorthogonalization (:mod:`.lockstep`): m independent single-vector recurrences run as
  the columns of one block, no basis (two vectors per column), each against its two latest
  vectors only; the tridiagonals give Gauss quadrature rules and extreme Ritz values. State:
  :class:`ProbeLanczos`.

Both states are dataclasses of tensors and numbers with ``snapshot()`` (a deep, compact copy
for a checkpoint) and resume bit-identically. Estimators import this package only, never its
modules.
"""

from scalable_hrank.linalg.decomp.block import (
    PANEL_ROWS,
    WIDEN_ELEMENTS,
    WIDEN_FROM,
    KrylovState,
    allocated_vectors,
    asymmetry,
    check_product,
    draw,
    init_state,
    refill,
    residual_bound,
    step,
    target_width,
    widen,
)
from scalable_hrank.linalg.decomp.lockstep import (
    VECTORS_PER_RUN,
    ProbeLanczos,
    advance_probes,
    column_dots,
    extreme_ritz,
    gauss_rules,
    start_probes,
)
from scalable_hrank.linalg.decomp.single import (
    LanczosDecomposition,
    RitzPairs,
    lanczos,
    ritz_pairs,
    rounding_tol,
)

__all__ = [
    "PANEL_ROWS",
    "VECTORS_PER_RUN",
    "WIDEN_ELEMENTS",
    "WIDEN_FROM",
    "KrylovState",
    "LanczosDecomposition",
    "ProbeLanczos",
    "RitzPairs",
    "advance_probes",
    "allocated_vectors",
    "asymmetry",
    "check_product",
    "column_dots",
    "draw",
    "extreme_ritz",
    "gauss_rules",
    "init_state",
    "lanczos",
    "refill",
    "residual_bound",
    "ritz_pairs",
    "rounding_tol",
    "start_probes",
    "step",
    "target_width",
    "widen",
]
