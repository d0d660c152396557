"""Exact dense float64 ranks of linear networks against the formulas of scalable_hrank.theory.

Every case computes H_L, H_O and H_F densely with tests/dense_reference.py (independent of
scalable_hrank.operators) and asserts that their ranks equal ``predict_rank`` (and, for the
rows of ``dense_reference.PAPER_TABLE``, the table); the package's ``exact_rank`` must agree.
The formulas are stated in docs/theory.md#rank-formulas.
"""

from __future__ import annotations

import random

import pytest
import torch
from torch import nn

import scalable_hrank
from dense_reference import (
    LOSSES,
    PAPER_TABLE,
    dense_curvatures,
    digits_data,
    gaussian_data,
    linear_mlp,
    reference_rank,
    reference_ranks,
    sigma_max,
    table_id,
)
from scalable_hrank.theory import num_parameters, predict_rank

KINDS = ("outer", "functional", "loss")
_exact_rank = getattr(scalable_hrank, "exact_rank", None)


def _check(model, loss, X, Y, expected=None):
    """Dense reference ranks; compare with the package's exact_rank when it exists."""
    curv = dense_curvatures(model, loss, X, Y)
    err = (curv["loss"] - curv["outer"] - curv["functional"]).abs().max()
    assert float(err) <= 1e-10 * max(sigma_max(curv["loss"]), 1e-300)  # H_L = H_O + H_F
    ref = reference_ranks(curv)
    if _exact_rank is not None:
        for kind in KINDS:
            got = _exact_rank(model, loss, (X, Y), kind)
            assert got.rank == ref[kind], (kind, got.rank, ref[kind])
            if expected is not None and expected.get(kind) is not None:
                assert got.rank == expected[kind], (kind, got.rank, expected[kind])
    return ref


def test_package_exact_rank_is_available():
    if _exact_rank is None:
        pytest.skip("scalable_hrank.exact_rank does not exist yet: the other tests in this file "
                    "compare the formulas with tests/dense_reference.py only")
    model = linear_mlp([6, 3, 2], seed=0)
    X, Y = gaussian_data(10, 6, 2, "mse", seed=0)
    # q = min(6, 3, 2) = 2: rank(H_L) = q (r + K + 2 M - L q) = 2 (6 + 2 + 6 - 4)
    assert _exact_rank(model, "mse", (X, Y), "loss").rank == 20


# ----------------------------------------------------------------------------- the table


@pytest.mark.parametrize("row", PAPER_TABLE, ids=[table_id(r) for r in PAPER_TABLE])
def test_paper_table_row(row):
    d, hidden, k, n_samples, r, loss, bias, p, h_o, h_f, h_l = row
    model = linear_mlp([d, *hidden, k], bias=bias, seed=1)
    X, Y = gaussian_data(n_samples, d, k, loss, seed=2, input_rank=r)
    table = {"outer": h_o, "functional": h_f, "loss": h_l}
    ref = _check(model, loss, X, Y, table)
    pred = predict_rank(model, loss=loss, data=(X, Y))
    assert pred.r == r and pred.n == p == sum(t.numel() for t in model.parameters())
    assert ref == table
    assert {kind: pred.rank(kind) for kind in KINDS} == table
    assert all(pred.exact.values())


@pytest.mark.parametrize(("hidden", "n_samples", "r", "expected"), [
    # sklearn digits, first N images: r = 53 at N = 100 (the paper's r = 41 is another
    # MNIST 8x8)
    ((4, 4), 100, 53, {"outer": 232, "functional": 88, "loss": 264}),
    ((12, 12), 100, 53, {"outer": 477, "functional": 351, "loss": 747}),
    # at N = 41 the digits have r = 41 and reproduce the table's rows 3 and 4
    ((4, 4), 41, 41, {"outer": 184, "functional": 88, "loss": 216}),
    ((12, 12), 41, 41, {"outer": 369, "functional": 351, "loss": 639}),
], ids=["digits-h4x4-N100", "digits-h12x12-N100", "digits-h4x4-N41", "digits-h12x12-N41"])
def test_digits_cross_entropy(hidden, n_samples, r, expected):
    X, Y = digits_data(n_samples)
    model = linear_mlp([64, *hidden, 10], seed=3)
    ref = _check(model, "cross_entropy", X, Y, expected)
    pred = predict_rank(model, loss="cross_entropy", data=(X, Y))
    assert pred.r == r
    assert ref == expected == {kind: pred.rank(kind) for kind in KINDS}


# ----------------------------------------------------------------------------- random cases


def _random_cases(count: int, seed: int = 20240611) -> list[tuple]:
    rng = random.Random(seed)
    cases = []
    while len(cases) < count:
        n_layers = rng.randint(1, 4)
        d, k = rng.randint(1, 12), rng.randint(1, 6)
        hidden = tuple(rng.choice([1, 2, rng.randint(1, 12), rng.randint(1, 12)])
                       for _ in range(n_layers - 1))
        loss = LOSSES[len(cases) % 3]
        bias = rng.random() < 0.4
        if loss == "cross_entropy":
            k = max(k, 2)
        widths = (d, *hidden, k)
        if num_parameters(widths, bias=bias) > 400:
            continue
        n_samples = rng.choice([max(1, d - rng.randint(1, 6)), d + rng.randint(1, 12)])
        if bias and rng.random() < 0.5:
            n_samples = d + rng.randint(1, 12)  # more cases inside the bias regime
        input_rank = rng.randint(1, min(n_samples, d)) if rng.random() < 0.25 else None
        cases.append((widths, loss, bias, n_samples, input_rank, len(cases)))
    return cases


RANDOM_CASES = _random_cases(40)


def _case_id(case) -> str:
    widths, loss, bias, n_samples, input_rank, seed = case
    r = "" if input_rank is None else f"-r{input_rank}"
    return (f"{seed}-{'x'.join(map(str, widths))}-{loss[:4]}-N{n_samples}{r}"
            + ("-bias" if bias else ""))


def test_random_cases_cover_the_intended_regimes():
    flags = {"width1": False, "bottleneck": False, "N<d": False, "N>d": False, "L1": False,
             "L4": False, "bias_in": False, "bias_out": False}
    for widths, loss, bias, n_samples, input_rank, _ in RANDOM_CASES:
        hidden = widths[1:-1]
        flags["width1"] |= 1 in hidden
        flags["bottleneck"] |= any(m < min(widths[0], widths[-1]) for m in hidden)
        flags["N<d"] |= n_samples < widths[0]
        flags["N>d"] |= n_samples > widths[0]
        flags["L1"] |= len(widths) == 2
        flags["L4"] |= len(widths) == 5
        if bias:
            pred = predict_rank(linear_mlp(widths, bias=True), loss=loss,
                                data=gaussian_data(n_samples, widths[0], widths[-1], loss,
                                                   input_rank=input_rank))
            flags["bias_in" if pred.loss is not None else "bias_out"] = True
    assert all(flags.values()), flags


@pytest.mark.parametrize("case", RANDOM_CASES, ids=[_case_id(c) for c in RANDOM_CASES])
def test_random_linear_architecture(case):
    widths, loss, bias, n_samples, input_rank, seed = case
    model = linear_mlp(widths, bias=bias, seed=seed)
    X, Y = gaussian_data(n_samples, widths[0], widths[-1], loss, seed=1000 + seed,
                         input_rank=input_rank)
    ref = _check(model, loss, X, Y)
    pred = predict_rank(model, loss=loss, data=(X, Y))
    assert pred.outer == ref["outer"]
    if not bias:
        assert pred.functional is not None and pred.loss is not None
    for kind in ("functional", "loss"):
        if pred.rank(kind) is None:
            assert bias and not pred.exact[kind]
            assert pred.reasons[kind].startswith("None: biases")
        else:
            assert pred.rank(kind) == ref[kind], (kind, pred.reasons[kind])
            assert pred.exact[kind]


# ----------------------------------------------------------------------------- general point


def _targets_with_residual_rank(model, X, loss, s, seed):
    """Targets whose residual matrix (N, K) has rank s at the model's current parameters."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        out = model(X)
    n, k = out.shape
    if loss == "mse":  # residual F - y = A B, a generic rank-s matrix
        res = (torch.randn(n, s, generator=gen, dtype=torch.float64)
               @ torch.randn(s, k, generator=gen, dtype=torch.float64))
        return out - res
    res = torch.zeros(n, k, dtype=torch.float64)  # logcosh: tanh keeps s non-zero columns
    res[:, :s] = 0.5 * torch.randn(n, s, generator=gen, dtype=torch.float64)
    return out - res


@pytest.mark.parametrize(("widths", "n_samples", "loss", "s"), [
    ((16, 8, 8, 4), 40, "mse", 0),
    ((16, 8, 8, 4), 40, "mse", 2),
    ((16, 8, 8, 4), 40, "logcosh", 1),
    ((10, 6, 1, 6, 3), 30, "mse", 2),
    ((9, 2, 7, 2, 5), 6, "mse", 3),
    ((12, 20, 4), 30, "logcosh", 3),
    ((12, 20, 4), 30, "mse", 0),
    ((8, 5), 20, "mse", 2),
    ((7, 3, 3, 3, 6), 20, "logcosh", 0),
], ids=lambda v: "x".join(map(str, v)) if isinstance(v, tuple) else str(v))
def test_general_point_residual_rank(widths, n_samples, loss, s):
    model = linear_mlp(widths, seed=5)
    X, _ = gaussian_data(n_samples, widths[0], widths[-1], loss, seed=6)
    Y = _targets_with_residual_rank(model, X, loss, s, seed=7)
    ref = _check(model, loss, X, Y)
    pred = predict_rank(model, loss=loss, data=(X, Y), residual_rank=s)
    assert {kind: pred.rank(kind) for kind in KINDS} == ref
    if s == 0:
        assert ref["loss"] == ref["outer"] and ref["functional"] == 0


# ----------------------------------------------------------------------------- layer blocks


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize(("widths", "n_samples"), [((16, 3, 8, 4), 40), ((10, 6, 1, 6, 3), 8),
                                                   ((9, 12, 5), 20)],
                         ids=["16x3x8x4", "10x6x1x6x3-N8", "9x12x5"])
def test_layer_block_ranks(widths, n_samples, loss):
    from scalable_hrank.theory import layer_block_rank

    model = linear_mlp(widths, seed=8)
    X, Y = gaussian_data(n_samples, widths[0], widths[-1], loss, seed=9)
    curv = dense_curvatures(model, loss, X, Y)
    scale = sigma_max(curv["loss"])
    n = curv["loss"].shape[0]
    start = 0
    for layer in range(1, len(widths)):
        size = widths[layer - 1] * widths[layer]
        block = curv["loss"][start:start + size, start:start + size]
        f_block = curv["functional"][start:start + size, start:start + size]
        start += size
        assert float(f_block.abs().max()) <= 1e-12 * scale  # H_F has zero diagonal blocks
        eig = torch.linalg.eigvalsh(block).abs()
        measured = int((eig > scale * n * torch.finfo(torch.float64).eps).sum())
        assert measured == layer_block_rank(widths, layer, loss=loss,
                                            input_rank=min(n_samples, widths[0]))


# ----------------------------------------------------------------------------- non-linear


@pytest.mark.parametrize("loss", ["mse", "cross_entropy"])
@pytest.mark.parametrize("widths", [(10, 6, 3), (10, 12, 4)], ids=["10x6x3", "10x12x4"])
def test_relu_one_hidden_layer_functional_rank(widths, loss):
    # ReLU nets with one hidden layer: rank(H_F) = 2 M_1 s exactly (docs/theory.md#rank-formulas)
    # (generic data with N large enough that no unit is dead on every sample)
    model = linear_mlp(widths, activation=nn.ReLU, seed=3)
    X, Y = gaussian_data(30, widths[0], widths[-1], loss, seed=4)
    ref = reference_ranks(dense_curvatures(model, loss, X, Y))
    pred = predict_rank(model, loss=loss, data=(X, Y))
    assert not any(pred.exact.values())
    assert ref["functional"] == pred.functional == 2 * widths[1] * pred.s
    assert ref["outer"] > pred.outer  # H_O of a ReLU net exceeds the linear formula


def test_reference_rank_threshold_rule():
    h = torch.diag(torch.tensor([1.0, 1e-3, 1e-16, 0.0], dtype=torch.float64))
    assert reference_rank(h) == 2  # tol = 1 * 4 * eps = 8.9e-16
    assert reference_rank(h, scale=1e2) == 2
    assert reference_rank(h, scale=1e-3) == 3
