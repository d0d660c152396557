"""Matrix-free linear algebra over a ``matmat`` callable (see docs/CONTRACTS.md).

Pure linear algebra: nothing here knows about networks, operators or processes beyond the
``reduce`` callable that sums small inner-product tensors when a basis is sharded by rows.
"""

from scalable_hrank.linalg._types import MatMat, Reduce
from scalable_hrank.linalg.counting import DensityRank, rademacher, smooth_step, steps_for_kappa
from scalable_hrank.linalg.decomp import (
    KrylovState,
    LanczosDecomposition,
    RitzPairs,
    lanczos,
    ritz_pairs,
)
from scalable_hrank.linalg.eigen import (
    EigenPairs,
    SpectralNorm,
    deflation_shift,
    eigenpairs,
    spectral_norm,
)
from scalable_hrank.linalg.krylov_rank import KrylovRank, deflated_norm, krylov_rank
from scalable_hrank.linalg.orth import OrthBlock, inner, orthonormalize, project_out
from scalable_hrank.linalg.slq import SLQState, slq_density, slq_rank

__all__ = [
    "DensityRank",
    "EigenPairs",
    "KrylovRank",
    "KrylovState",
    "LanczosDecomposition",
    "MatMat",
    "OrthBlock",
    "Reduce",
    "RitzPairs",
    "SLQState",
    "SpectralNorm",
    "deflated_norm",
    "deflation_shift",
    "eigenpairs",
    "inner",
    "krylov_rank",
    "lanczos",
    "orthonormalize",
    "project_out",
    "rademacher",
    "ritz_pairs",
    "slq_density",
    "slq_rank",
    "smooth_step",
    "spectral_norm",
    "steps_for_kappa",
]
