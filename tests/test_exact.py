"""exact_rank against an independent dense reference; thresholds, memory guard, results."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

import scalable_hrank as hr
from scalable_hrank.exact import exact_rank
from tests.dense_reference import (
    EPS64,
    dense_curvatures,
    gaussian_data,
    linear_mlp,
    reference_ranks,
    sigma_max,
)

KINDS = ("loss", "outer", "functional")


@pytest.mark.parametrize("activation", [None, nn.Tanh, nn.ReLU], ids=["linear", "tanh", "relu"])
@pytest.mark.parametrize("loss", ["mse", "cross_entropy", "logcosh"])
def test_exact_equals_reference(activation: type | None, loss: str) -> None:
    model = linear_mlp([6, 4, 5, 3], bias=activation is not None, activation=activation, seed=3)
    x, y = gaussian_data(15, 6, 3, loss, seed=5)
    ref = reference_ranks(dense_curvatures(model, loss, x, y))
    scale = sigma_max(dense_curvatures(model, loss, x, y)["loss"])
    for kind in KINDS:
        res = exact_rank(model, loss, (x, y), kind)
        assert res.rank == ref[kind], kind
        assert res.certified and res.method == "exact"
        assert res.rank_low == res.rank == res.rank_high
        assert math.isclose(res.scale, scale, rel_tol=1e-10)
        assert math.isclose(res.tol, scale * res.n * EPS64, rel_tol=1e-10)
        assert len(res.eigenvalues) == res.n
        assert list(res.eigenvalues) == sorted(res.eigenvalues, reverse=True)
        assert sum(res.inertia) == res.rank


def test_float32_model_is_upcast() -> None:
    model = linear_mlp([6, 4, 3], seed=1).float()
    x, y = gaussian_data(20, 6, 3, "mse", seed=2)
    res = exact_rank(model, "mse", (x.float(), y.float()), "loss")
    ref = reference_ranks(dense_curvatures(model.double(), "mse", x, y))
    assert res.rank == ref["loss"]
    assert res.dtype == "torch.float64"


def test_thresholds() -> None:
    model = linear_mlp([5, 3, 2], activation=nn.Tanh, seed=0)
    x, y = gaussian_data(12, 5, 2, "mse", seed=0)
    base = exact_rank(model, "mse", (x, y))
    vals = torch.tensor(base.eigenvalues)
    for rtol in (1e-12, 1e-6, 1e-2):
        res = exact_rank(model, "mse", (x, y), rtol=rtol)
        assert res.rank == int((vals.abs() > rtol * base.scale).sum())
    mags = vals.abs().sort(descending=True).values
    atol = float(mags[5] + mags[6]) / 2  # between two eigenvalues: no ties
    assert exact_rank(model, "mse", (x, y), atol=atol).rank == int((vals.abs() > atol).sum())
    both = exact_rank(model, "mse", (x, y), rtol=1e-12, atol=atol)
    assert both.tol == max(atol, 1e-12 * base.scale)
    curve = dict(base.rank_curve)
    for t, r in curve.items():
        assert r == int((vals.abs() > t).sum())


@pytest.mark.parametrize(("kw", "error", "match"), [
    ({"rtol": -1e-3}, ValueError, "rtol must be a finite number"),
    ({"rtol": math.nan}, ValueError, "rtol must be"),
    ({"rtol": 1.5}, ValueError, r"rtol must be a finite number in \[0, 1\)"),
    ({"atol": math.inf}, ValueError, "atol must be a finite number >= 0"),
    ({"atol": "1e-3"}, TypeError, "atol must be a real number"),
])
def test_bad_thresholds(kw: dict, error: type, match: str) -> None:
    model = linear_mlp([5, 3, 2], seed=0)
    x, y = gaussian_data(12, 5, 2, "mse", seed=0)
    with pytest.raises(error, match=match):
        exact_rank(model, "mse", (x, y), **kw)


def test_memory_guard() -> None:
    model = linear_mlp([30, 30, 30], seed=0)
    x, y = gaussian_data(10, 30, 30, "mse", seed=0)
    with pytest.raises(ValueError, match=r"needs about .* GiB .* raise max_memory_bytes"):
        exact_rank(model, "mse", (x, y), max_memory_bytes=10_000)


def test_one_layer_functional_is_zero_not_full_rank() -> None:
    # H_F of a one-layer linear net is exactly zero; the threshold is relative to H_L.
    model = linear_mlp([8, 4], seed=0)
    x, y = gaussian_data(20, 8, 4, "mse", seed=1)
    res = exact_rank(model, "mse", (x, y), "functional")
    assert res.rank == 0
    assert max(abs(v) for v in res.eigenvalues) == 0.0


def test_no_gap_is_reported_for_tanh() -> None:
    model = linear_mlp([8, 12, 12, 4], activation=nn.Tanh, seed=0)
    x, y = gaussian_data(30, 8, 4, "mse", seed=1)
    lin = exact_rank(linear_mlp([8, 12, 12, 4], seed=0), "mse", (x, y))
    assert lin.gap is not None and lin.gap[1] / max(lin.gap[0], 1e-300) > 1e8
    assert lin.gap[0] <= lin.tol < lin.gap[1]
    res = exact_rank(model, "mse", (x, y))
    if res.gap is None:
        assert any("no spectral gap" in n for n in res.notes)


def test_result_json_round_trip(tmp_path) -> None:
    model = linear_mlp([5, 3, 2], seed=0)
    x, y = gaussian_data(12, 5, 2, "mse", seed=0)
    res = exact_rank(model, "mse", (x, y), "outer")
    path = tmp_path / "r.json"
    res.to_json(path)
    data = json.loads(path.read_text())
    for key in ("rank", "n", "kind", "method", "tol", "matvecs", "seconds", "certified",
                "guarantee"):
        assert key in data
    back = hr.RankResult.from_json(path)
    assert back == res and back.guarantee == "exact"
    assert f"rank {res.rank} (exact)" in res.summary()
