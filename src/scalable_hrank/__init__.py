"""scalable-hrank: numerical rank of neural-network Hessians, matrix-free and at scale.

The loss Hessian splits as H_L = H_O + H_F (outer-product / Gauss-Newton part plus functional
part). Public API::

    import scalable_hrank as hr
    op = hr.curvature_operator(model, loss, data, kind="loss")   # matrix-free, op @ V
    res = hr.exact_rank(model, loss, data, kind="outer")          # dense float64 reference
    res = hr.estimate_rank(model, loss, data, kind="loss")        # certified, matrix-free
    pred = hr.predict_rank(model, loss="mse", data=data)          # the paper's formulas
"""

from scalable_hrank.errors import (
    HRankError,
    InputError,
    NonFiniteError,
    NotConvergedError,
    NumericalWarning,
)
from scalable_hrank.exact import exact_rank, exact_ranks
from scalable_hrank.operators import KINDS, LOSSES, CurvatureOperator, curvature_operator
from scalable_hrank.rank import METHODS, EigenResult, eigenvalues, estimate_rank
from scalable_hrank.result import RankResult
from scalable_hrank.theory import RankPrediction, predict_rank

__version__ = "0.1.0"

__all__ = [
    "KINDS",
    "LOSSES",
    "METHODS",
    "CurvatureOperator",
    "EigenResult",
    "HRankError",
    "InputError",
    "NonFiniteError",
    "NotConvergedError",
    "NumericalWarning",
    "RankPrediction",
    "RankResult",
    "__version__",
    "curvature_operator",
    "eigenvalues",
    "estimate_rank",
    "exact_rank",
    "exact_ranks",
    "predict_rank",
]
