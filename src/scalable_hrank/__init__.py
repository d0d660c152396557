"""scalable-hrank: numerical rank of neural-network Hessians, matrix-free and at scale."""

from scalable_hrank.errors import HRankError, NonFiniteError, NotConvergedError, NumericalWarning
from scalable_hrank.operators import CurvatureOperator, curvature_operator
from scalable_hrank.result import RankResult

__version__ = "0.1.0"

__all__ = [
    "CurvatureOperator",
    "HRankError",
    "NonFiniteError",
    "NotConvergedError",
    "NumericalWarning",
    "RankResult",
    "__version__",
    "curvature_operator",
]
