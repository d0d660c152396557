"""Unit tests of the closed-form ranks in scalable_hrank.theory (no Hessians computed here).

The formulas are stated in docs/theory.md#rank-formulas.
"""

from __future__ import annotations

import dataclasses
import itertools

import pytest
import torch
from torch import nn

from dense_reference import PAPER_TABLE, digits_data, gaussian_data, linear_mlp, table_id
from scalable_hrank.errors import InputError
from scalable_hrank.theory import (
    RankPrediction,
    bias_regime,
    bottleneck,
    functional_rank,
    layer_block_rank,
    loss_rank,
    num_parameters,
    outer_rank,
    output_rank,
    predict_rank,
    predict_rank_from_widths,
    rank_deficiency,
)


def _widths(row):
    d, hidden, k = row[:3]
    return [d, *hidden, k]


# ----------------------------------------------------------------------------- the table


@pytest.mark.parametrize("row", PAPER_TABLE, ids=[table_id(r) for r in PAPER_TABLE])
def test_table_row_formulas(row):
    d, hidden, k, n_samples, r, loss, bias, p, h_o, h_f, h_l = row
    w = _widths(row)
    kw = dict(loss=loss, input_rank=r, bias=bias, num_samples=n_samples)
    assert num_parameters(w, bias=bias) == p
    assert outer_rank(w, **kw) == h_o
    assert functional_rank(w, **kw) == h_f
    assert loss_rank(w, **kw) == h_l
    pred = predict_rank_from_widths(w, **kw)
    assert (pred.n, pred.outer, pred.functional, pred.loss) == (p, h_o, h_f, h_l)
    assert all(pred.exact.values()), pred.reasons
    assert pred.r == r and pred.widths == tuple(w) and pred.bias == bias


def test_cross_entropy_width_sweep_of_reference_code():
    # the reference code's stored sweep: MNIST 8x8, N = 100 (r = 41), hidden [w, w],
    # w = 4..36 step 4
    h_o, h_f, h_l, p = [], [], [], []
    for w in range(4, 37, 4):
        pred = predict_rank_from_widths([64, w, w, 10], loss="cross_entropy", input_rank=41,
                                        num_samples=100)
        h_o.append(pred.outer)
        h_f.append(pred.functional)
        h_l.append(pred.loss)
        p.append(pred.n)
    assert h_o == [184, 336] + [369] * 7
    assert h_f == [88, 208, 351, 495, 639, 783, 927, 1071, 1215]
    assert h_l == [216, 464, 639, 783, 927, 1071, 1215, 1359, 1503]
    assert p[0] == 312 and p[1] == 656 and p[-1] == 3960


# ----------------------------------------------------------------------------- identities


def _all_widths():
    for d in (1, 3, 7):
        for k in (1, 2, 5):
            for hidden in itertools.chain([()], itertools.product((1, 2, 4, 9), repeat=1),
                                          itertools.product((1, 3, 6), repeat=2),
                                          [(2, 5, 1), (4, 4, 4)]):
                yield [d, *hidden, k]


def test_loss_rank_identity_and_general_point_consistency():
    # rank(H_L) = rank(H_O) + rank(H_F) - q (2 s - q), and the general-point formulas with
    # s = min(r, K_f) reduce to the generic ones
    for w in _all_widths():
        for loss in ("mse", "cross_entropy", "logcosh"):
            if loss == "cross_entropy" and w[-1] < 2:
                continue
            for r in range(0, w[0] + 1):
                pred = predict_rank_from_widths(w, loss=loss, input_rank=r)
                q, s, n_layers, m = pred.q, pred.s, pred.L, pred.M
                assert pred.outer == min(q * (r + pred.K_f - q), pred.n)
                if pred.loss < pred.n and n_layers >= 2:  # before the cap; L = 1: H_F = 0
                    assert pred.loss == pred.outer + pred.functional - q * (2 * s - q)
                    assert pred.loss == q * (r + pred.K_f + 2 * m - n_layers * q)
                gp = predict_rank_from_widths(w, loss=loss, input_rank=r, residual_rank=s)
                assert (gp.outer, gp.functional, gp.loss) == (pred.outer, pred.functional,
                                                              pred.loss)
                assert pred.loss <= pred.n and pred.functional <= pred.n


@pytest.mark.parametrize("widths", [[16, 8, 8, 4], [10, 6, 1, 6, 3], [5, 3], [12, 20, 4],
                                    [9, 2, 7, 2, 3]])
@pytest.mark.parametrize("loss", ["mse", "cross_entropy", "logcosh"])
def test_zero_residual_gives_outer_rank(widths, loss):
    pred = predict_rank_from_widths(widths, loss=loss, residual_rank=0)
    assert pred.functional == 0
    assert pred.loss == pred.outer
    assert pred.q_F == 0 and pred.s == 0
    assert all(pred.exact.values())
    assert "general point" in pred.reasons["loss"]


def test_general_point_formula_values():
    # [16, 8, 8, 4], r = 16: s = 2 -> q_F = 2, H_F = 2*2*(16+2) - 3*4 = 60,
    # H_L = 4*(16+4-4) + 2*2*16 - 2*4 = 64 + 64 - 8 = 120
    pred = predict_rank_from_widths([16, 8, 8, 4], residual_rank=2)
    assert (pred.q, pred.q_F, pred.outer, pred.functional, pred.loss) == (4, 2, 64, 60, 120)
    # one hidden layer: rank(H_F) = 2 M_1 s
    for s in range(0, 5):
        assert functional_rank([16, 20, 4], residual_rank=s) == 2 * 20 * s


def test_rank_deficiency_closed_form_mse():
    for w in _all_widths():
        for r in range(0, w[0] + 1):
            q = bottleneck(w, input_rank=r)
            pairs = zip(w[:-1], w[1:], strict=True)
            expected = q * (w[0] - r) + sum((a - q) * (b - q) for a, b in pairs)
            assert rank_deficiency(w, input_rank=r) == expected


def test_full_rank_when_all_hidden_widths_equal_q_and_r_equals_d():
    assert rank_deficiency([10, 2, 2, 2, 2, 3]) == 0  # q = 2
    assert rank_deficiency([16, 4, 4, 4]) == 0
    assert rank_deficiency([16, 4]) == 0  # L = 1, q = K = 4
    assert rank_deficiency([16, 5, 5, 4]) > 0


def test_cross_entropy_flat_directions():
    # CE: K_f = K - 1, softmax is shift invariant, the last layer has extra flat directions
    assert output_rank(10, "cross_entropy") == 9
    assert output_rank(10, "mse") == output_rank(10, "logcosh") == 10
    mse = loss_rank([16, 8, 8, 4])
    ce = loss_rank([16, 8, 8, 4], loss="cross_entropy")
    assert mse - ce == 4 * (16 + 4 + 32 - 12) - 3 * (16 + 3 + 32 - 9)


def test_scaling_with_width():
    # two hidden layers of width m >= q: rank(H_L) linear in m, p quadratic, H_O constant
    widths = range(10, 60, 5)
    ranks = [loss_rank([64, m, m, 10], input_rank=41) for m in widths]
    outers = [outer_rank([64, m, m, 10], input_rank=41) for m in widths]
    params = [num_parameters([64, m, m, 10]) for m in widths]
    diffs = [b - a for a, b in zip(ranks, ranks[1:], strict=False)]
    assert len(set(diffs)) == 1 and diffs[0] == 4 * 10 * 5  # M = 2 m: slope 4 q
    assert len(set(outers)) == 1 and outers[0] == 10 * (41 + 10 - 10)
    second = [c - 2 * b + a for a, b, c in zip(params, params[1:], params[2:], strict=False)]
    assert all(x == 2 * 5 * 5 for x in second)  # m^2 term
    ratios = [a / b for a, b in zip(ranks, params, strict=True)]
    assert ratios == sorted(ratios, reverse=True)


def test_outer_rank_grows_until_widths_reach_min_r_kf():
    vals = [outer_rank([20, m, m, 6]) for m in range(1, 10)]
    assert vals[:6] == [m * (20 + 6 - m) for m in range(1, 7)]
    assert vals[6:] == [6 * 20] * 3


def test_layer_block_rank_values():
    # block (l, l): min(r, M_1..M_{l-1}) * min(M_l..M_{L-1}, K_f)
    w = [16, 3, 8, 4]
    assert [layer_block_rank(w, layer) for layer in (1, 2, 3)] == [16 * 3, 3 * 4, 3 * 4]
    assert layer_block_rank(w, 3, loss="cross_entropy") == 3 * 3
    assert layer_block_rank([16, 4], 1, input_rank=5) == 5 * 4
    with pytest.raises(ValueError, match="layer"):
        layer_block_rank(w, 4)
    with pytest.raises(ValueError, match="layer"):
        layer_block_rank(w, 0)


# ----------------------------------------------------------------------------- biases


def test_bias_regime_decisions():
    assert bias_regime([16, 8, 8, 4], num_samples=40)[0]
    assert bias_regime([16, 8, 2, 4], num_samples=40)[0]  # last hidden layer is not interior
    assert bias_regime([16, 2, 2, 4], num_samples=40)[0]  # later width not > q
    inside, why = bias_regime([16, 8, 8, 4])
    assert inside and "N unknown" in why
    inside, why = bias_regime([10, 6, 1, 6, 3], num_samples=30)
    assert not inside and "interior bottleneck at hidden layer 2" in why
    inside, why = bias_regime([16, 8, 8, 4], num_samples=16)
    assert not inside and "N = 16 <= d = 16" in why
    inside, why = bias_regime([16, 8, 8, 4], input_rank=3, num_samples=40)
    assert not inside and "r = 3 < K_f = 4" in why
    assert bias_regime([16, 8, 8, 4], loss="cross_entropy", input_rank=3, num_samples=40)[0]


def test_bias_outside_regime_gives_none_with_reason():
    pred = predict_rank_from_widths([10, 6, 1, 6, 3], bias=True, num_samples=30)
    assert pred.functional is None and pred.loss is None
    assert pred.outer == 1 * (10 + 3 - 1) + 3
    assert pred.exact == {"outer": True, "functional": False, "loss": False}
    assert "interior bottleneck" in pred.reasons["loss"]
    assert pred.reasons["functional"].startswith("None")
    assert rank_deficiency([10, 6, 1, 6, 3], bias=True, num_samples=30) is None


def test_bias_outer_rank_when_augmented_rank_equals_r():
    # N <= d: r~ = r; rank(H_O) = min(N K_f, q (r + K_f - q) + K_f - q)
    pred = predict_rank_from_widths([16, 8, 8, 4], bias=True, num_samples=10)
    assert pred.augmented_input_rank == 10 and pred.r == 10
    assert pred.outer == 4 * (10 + 4 - 4) + 4 - 4
    assert pred.loss is None and "N = 10 <= d = 16" in pred.reasons["loss"]
    # the N K_f cap: q = r = 2 < K_f = 6, N = 2
    assert outer_rank([8, 9, 6], bias=True, num_samples=2) == min(2 * 6, 2 * (2 + 6 - 2) + 6 - 2)
    assert outer_rank([8, 9, 6], bias=True, num_samples=2) == 12
    # r~ = r given explicitly without N: the cap is not applied and the reason says so
    pred = predict_rank_from_widths([8, 9, 6], bias=True, input_rank=2, augmented_input_rank=2)
    assert pred.outer == 2 * (2 + 6 - 2) + 6 - 2
    assert "N unknown" in pred.reasons["outer"]
    assert pred.loss is None


def test_bias_general_point_has_no_formula():
    pred = predict_rank_from_widths([16, 8, 8, 4], bias=True, num_samples=40, residual_rank=2)
    assert pred.outer == 68 and pred.loss is None and pred.functional is None
    assert "non-generic residual rank" in pred.reasons["loss"]


def test_single_layer_with_bias_has_zero_functional_rank():
    pred = predict_rank_from_widths([16, 4], bias=True, num_samples=40)
    assert pred.functional == 0
    assert pred.loss == pred.outer == 4 * 16 + 4 == pred.n


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(("kwargs", "match"), [
    (dict(widths=[16]), "widths"),
    (dict(widths=[16, 0, 4]), r"widths\[1\]"),
    (dict(widths=[16, -3, 4]), r"widths\[1\]"),
    (dict(widths="16,4"), "widths"),
    (dict(widths=[16, 2.5, 4]), r"widths\[1\]"),
    (dict(widths=[16, 8, 4], input_rank=-1), "input_rank"),
    (dict(widths=[16, 8, 4], input_rank=17), "input_rank"),
    (dict(widths=[16, 8, 4], input_rank=11, num_samples=10), "input_rank"),
    (dict(widths=[16, 8, 4], input_rank=True), "input_rank"),
    (dict(widths=[16, 8, 4], num_samples=0), "num_samples"),
    (dict(widths=[16, 8, 4], residual_rank=5), "residual_rank"),
    (dict(widths=[16, 8, 4], residual_rank=-1), "residual_rank"),
    (dict(widths=[16, 8, 4], loss="cross_entropy", residual_rank=4), "residual_rank"),
    (dict(widths=[16, 8, 4], input_rank=2, residual_rank=3), "residual_rank"),
    (dict(widths=[16, 8, 4], loss="hinge"), "loss"),
    (dict(widths=[16, 8, 4], augmented_input_rank=16), "augmented_input_rank"),
    (dict(widths=[16, 8, 4], bias=True, augmented_input_rank=15), "augmented_input_rank"),
    (dict(widths=[16, 8, 4], bias=True, num_samples=10, augmented_input_rank=11),
     "augmented_input_rank"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(InputError, match=match):
        predict_rank_from_widths(**kwargs)


# ----------------------------------------------------------------------------- predict_rank


def test_predict_rank_reads_the_model_and_measures_data():
    model = linear_mlp([16, 8, 8, 4], seed=0)
    X, Y = gaussian_data(40, 16, 4, "mse", seed=1, input_rank=10)
    pred = predict_rank(model, data=(X, Y))
    assert isinstance(pred, RankPrediction)
    assert (pred.r, pred.num_samples, pred.widths, pred.bias) == (10, 40, (16, 8, 8, 4), False)
    assert pred.outer == 4 * (10 + 4 - 4)
    # an iterable of batches (a DataLoader) gives the same numbers
    batches = [(X[i:i + 7], Y[i:i + 7]) for i in range(0, 40, 7)]
    assert predict_rank(model, data=batches) == pred
    # input_rank overrides the measured rank
    assert predict_rank(model, data=(X, Y), input_rank=16).r == 16
    # without data: generic inputs, r = d
    assert predict_rank(model).r == 16 and predict_rank(model).num_samples is None
    assert pred.rank("loss") == pred.loss and pred.rank("outer") == pred.outer
    with pytest.raises(dataclasses.FrozenInstanceError):
        pred.loss = 0  # type: ignore[misc]


def test_predict_rank_measures_augmented_rank_with_bias():
    model = linear_mlp([16, 8, 8, 4], bias=True, seed=0)
    X, Y = gaussian_data(40, 16, 4, "mse", seed=1)
    pred = predict_rank(model, data=(X, Y))
    assert (pred.r, pred.augmented_input_rank, pred.outer, pred.functional, pred.loss) == (
        16, 17, 68, 116, 172)
    # a constant input column makes the inputs affinely degenerate: r~ = r
    Xc = X.clone()
    Xc[:, 0] = 1.0
    pred = predict_rank(model, data=(Xc, Y))
    assert (pred.r, pred.augmented_input_rank) == (16, 16)
    assert pred.outer == 4 * (16 + 4 - 4) + 4 - 4
    assert pred.loss is None and "affinely degenerate" in pred.reasons["loss"]


def test_predict_rank_digits_input_rank():
    X, Y = digits_data(100)
    pred = predict_rank(linear_mlp([64, 4, 4, 10], seed=0), loss="cross_entropy", data=(X, Y))
    assert pred.r == 53  # sklearn digits, not the r = 41 of the paper's downscaled MNIST
    assert pred.outer == 4 * (53 + 9 - 4)


@pytest.mark.parametrize("act", [nn.Tanh, nn.ReLU, nn.GELU, nn.Sigmoid, nn.SiLU, nn.ELU,
                                 nn.Softplus, nn.LeakyReLU])
def test_nonlinear_networks_are_estimates(act):
    model = linear_mlp([16, 8, 8, 4], activation=act, seed=0)
    pred = predict_rank(model)
    linear = predict_rank(linear_mlp([16, 8, 8, 4], seed=0))
    assert (pred.outer, pred.functional, pred.loss) == (linear.outer, linear.functional,
                                                        linear.loss)
    assert not any(pred.exact.values())
    assert pred.reasons["loss"].startswith(f"estimate: {act.__name__.lower()}")
    assert not pred.linear and linear.linear


def test_predict_rank_accepts_identity_nested_and_bare_linear():
    lin = nn.Linear(6, 3, bias=False)
    nested = nn.Sequential(nn.Linear(6, 4, bias=False), nn.Identity(),
                           nn.Sequential(nn.Linear(4, 3, bias=False)))
    assert predict_rank(lin).widths == (6, 3)
    pred = predict_rank(nested)
    assert pred.widths == (6, 4, 3) and all(pred.exact.values())


def test_predict_rank_model_errors():
    with pytest.raises(InputError, match="all linear layers with bias or all without"):
        predict_rank(nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2, bias=False)))
    with pytest.raises(InputError, match=r"Conv1d.*Linear.*Tanh"):
        predict_rank(nn.Sequential(nn.Conv1d(1, 1, 3), nn.Linear(4, 2)))
    with pytest.raises(InputError, match="Dropout"):
        predict_rank(nn.Sequential(nn.Linear(4, 3), nn.Dropout(0.1), nn.Linear(3, 2)))
    with pytest.raises(InputError, match="LayerNorm"):
        predict_rank(nn.Sequential(nn.Linear(4, 3), nn.LayerNorm(3), nn.Linear(3, 2)))
    with pytest.raises(InputError, match="Sequential"):
        predict_rank(nn.Conv1d(1, 1, 3))
    with pytest.raises(InputError, match="in_features"):
        predict_rank(nn.Sequential(nn.Linear(4, 3), nn.Linear(5, 2)))
    with pytest.raises(InputError, match="at least one"):
        predict_rank(nn.Sequential(nn.Tanh()))
    frozen = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
    frozen[0].weight.requires_grad_(False)
    with pytest.raises(InputError, match="frozen"):
        predict_rank(frozen)
    model = nn.Sequential(nn.Linear(4, 3))
    with pytest.raises(InputError, match="data"):
        predict_rank(model, data=(torch.randn(5, 6), torch.randn(5, 3)))
    with pytest.raises(InputError, match="data"):
        predict_rank(model, data=torch.randn(5, 4))
    with pytest.raises(InputError, match="loss"):
        predict_rank(model, loss="hinge")
    with pytest.raises(InputError, match="input_rank"):
        predict_rank(model, input_rank=5)


# ----------------------------------------------------------------------------- layout


def test_public_names_of_the_theory_package():
    import scalable_hrank
    import scalable_hrank.theory as theory

    names = {"ELEMENTWISE_ACTIVATIONS", "LOSSES", "RankPrediction", "bias_regime", "bottleneck",
             "functional_rank", "layer_block_rank", "loss_rank", "num_parameters", "outer_rank",
             "output_rank", "predict_rank", "predict_rank_from_widths", "rank_deficiency"}
    assert names <= set(theory.__all__)
    assert all(hasattr(theory, name) for name in theory.__all__)
    assert scalable_hrank.predict_rank is theory.predict_rank
    assert scalable_hrank.RankPrediction is theory.RankPrediction


def test_functional_and_loss_ranks_name_the_case():
    from scalable_hrank.theory import functional_and_loss_ranks

    for kwargs, case in ((dict(), "generic point"), (dict(residual_rank=2), "general point"),
                         (dict(bias=True, num_samples=40), "inside the regime"),
                         (dict(bias=True, num_samples=16), "outside the regime")):
        h_f, h_l, why = functional_and_loss_ranks([16, 8, 8, 4], **kwargs)
        assert (h_f, h_l) == (functional_rank([16, 8, 8, 4], **kwargs),
                              loss_rank([16, 8, 8, 4], **kwargs))
        assert case in why
    with pytest.raises(InputError, match="kind"):
        predict_rank_from_widths([16, 8, 8, 4]).rank("hessian")
