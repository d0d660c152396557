"""Matrix-free curvature operators: H_L, H_O, H_F and H_O's output-space Gram matrix."""

from scalable_hrank.operators.curvature import (
    KINDS,
    CurvatureOperator,
    check_eval_mode,
    curvature_operator,
)
from scalable_hrank.operators.gram import OutputGramOperator
from scalable_hrank.operators.kinds import (
    KindSpec,
    kind_names,
    kind_spec,
    register_kind,
    unregister_kind,
)
from scalable_hrank.operators.losses import LOSSES
from scalable_hrank.operators.params import ParameterSpace, match_parameters, parameter_space

__all__ = [
    "KINDS",
    "LOSSES",
    "CurvatureOperator",
    "KindSpec",
    "OutputGramOperator",
    "ParameterSpace",
    "check_eval_mode",
    "curvature_operator",
    "kind_names",
    "kind_spec",
    "match_parameters",
    "parameter_space",
    "register_kind",
    "unregister_kind",
]
