"""Matrix-free curvature operators: H_L (loss), H_O (Gauss-Newton), H_F (functional part)."""

from scalable_hrank.operators.curvature import (
    KINDS,
    CurvatureOperator,
    check_eval_mode,
    curvature_operator,
)
from scalable_hrank.operators.losses import LOSSES
from scalable_hrank.operators.params import ParameterSpace, match_parameters, parameter_space

__all__ = [
    "KINDS",
    "LOSSES",
    "CurvatureOperator",
    "ParameterSpace",
    "check_eval_mode",
    "curvature_operator",
    "match_parameters",
    "parameter_space",
]
