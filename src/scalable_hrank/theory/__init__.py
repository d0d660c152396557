"""Closed-form Hessian ranks of chains of linear layers (the paper's formulas).

The formulas are those of Singh, Bachmann and Hofmann, "Analytic Insights into Structure and
Rank of Neural Network Hessian Maps" (NeurIPS 2021, arXiv 2106.16225), with a bias extension
found and checked numerically for this project; docs/theory.md#rank-formulas states them with
their conditions. Modules:

- ``inputs``: the ingredients d, M_l, K, K_f, r, s, q, r~, checked and resolved;
- ``formulas``: each rank as integer arithmetic on the ingredients;
- ``prediction``: all three ranks with exactness and reasons (:class:`RankPrediction`);
- ``network``: widths, activations and data statistics read off a model (:func:`predict_rank`).
"""

from scalable_hrank.theory.formulas import (
    bias_regime,
    bottleneck,
    functional_and_loss_ranks,
    functional_rank,
    layer_block_rank,
    loss_rank,
    outer_rank,
    rank_deficiency,
)
from scalable_hrank.theory.inputs import LOSSES, num_parameters, output_rank
from scalable_hrank.theory.network import ELEMENTWISE_ACTIVATIONS, predict_rank
from scalable_hrank.theory.prediction import RankPrediction, predict_rank_from_widths

__all__ = [
    "ELEMENTWISE_ACTIVATIONS",
    "LOSSES",
    "RankPrediction",
    "bias_regime",
    "bottleneck",
    "functional_and_loss_ranks",
    "functional_rank",
    "layer_block_rank",
    "loss_rank",
    "num_parameters",
    "outer_rank",
    "output_rank",
    "predict_rank",
    "predict_rank_from_widths",
    "rank_deficiency",
]
