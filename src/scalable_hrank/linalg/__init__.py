"""Matrix-free linear algebra over a ``matmat`` callable (see docs/CONTRACTS.md).

Pure linear algebra: nothing here knows about networks, operators or processes beyond the
``reduce`` callable that sums small inner-product tensors when a basis is sharded by rows.
"""

from scalable_hrank.linalg._types import MatMat, Reduce
from scalable_hrank.linalg.block_krylov import KrylovState
from scalable_hrank.linalg.counting import DensityRank, rademacher, smooth_step, steps_for_kappa
from scalable_hrank.linalg.eigen import EigenPairs, SpectralNorm, eigenpairs, spectral_norm
from scalable_hrank.linalg.kpm import kpm_density, kpm_rank, spectrum_bounds
from scalable_hrank.linalg.krylov_rank import KrylovRank, deflated_norm, krylov_rank
from scalable_hrank.linalg.lanczos import (
    BlockLanczosDecomposition,
    LanczosDecomposition,
    RitzPairs,
    block_lanczos,
    lanczos,
    ritz_pairs,
)
from scalable_hrank.linalg.nystrom import NystromApprox, NystromRank, nystrom, nystrom_rank
from scalable_hrank.linalg.orth import OrthBlock, inner, orthonormalize, project_out
from scalable_hrank.linalg.slq import SLQState, slq_density, slq_rank

__all__ = [
    "BlockLanczosDecomposition",
    "DensityRank",
    "EigenPairs",
    "KrylovRank",
    "KrylovState",
    "LanczosDecomposition",
    "MatMat",
    "NystromApprox",
    "NystromRank",
    "OrthBlock",
    "Reduce",
    "RitzPairs",
    "SLQState",
    "SpectralNorm",
    "block_lanczos",
    "deflated_norm",
    "eigenpairs",
    "inner",
    "kpm_density",
    "kpm_rank",
    "krylov_rank",
    "lanczos",
    "nystrom",
    "nystrom_rank",
    "orthonormalize",
    "project_out",
    "rademacher",
    "ritz_pairs",
    "slq_density",
    "slq_rank",
    "smooth_step",
    "spectral_norm",
    "spectrum_bounds",
    "steps_for_kappa",
]
