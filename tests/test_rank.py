"""estimate_rank / eigenvalues against dense float64 ranks, the paper's table, and budgets."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.sparse.linalg
import torch
from torch import nn

import scalable_hrank as hr
from scalable_hrank.exact import exact_ranks
from scalable_hrank.planner import PlanError
from tests.dense_reference import PAPER_TABLE, gaussian_data, linear_mlp, table_id

KINDS = ("loss", "outer", "functional")

# (widths, activation, bias, loss, N): n from 50 to ~600; linear, tanh, relu; bias or not.
MODELS = [
    ((8, 6, 6, 3), None, False, "mse", 20),
    ((8, 6, 6, 3), None, True, "cross_entropy", 20),
    ((10, 12, 8, 4), nn.Tanh, False, "mse", 15),
    ((10, 12, 8, 4), nn.Tanh, True, "cross_entropy", 30),
    ((10, 12, 8, 4), nn.ReLU, False, "cross_entropy", 25),
    ((10, 12, 8, 4), nn.ReLU, True, "mse", 25),
    ((6, 20, 20, 5), None, False, "mse", 12),
]


def model_id(case: tuple) -> str:
    widths, act, bias, loss, n = case
    name = "linear" if act is None else act.__name__.lower()
    return f"{name}-{'-'.join(map(str, widths))}{'-bias' if bias else ''}-{loss}-N{n}"


def build(case: tuple) -> tuple[nn.Module, str, tuple[torch.Tensor, torch.Tensor]]:
    widths, act, bias, loss, n = case
    model = linear_mlp(list(widths), bias=bias, activation=act, seed=1)
    return model, loss, gaussian_data(n, widths[0], widths[-1], loss, seed=2)


@pytest.mark.parametrize("method", ["sketch", "lanczos"])
@pytest.mark.parametrize("case", MODELS, ids=model_id)
def test_certified_rank_equals_dense(case: tuple, method: str) -> None:
    model, loss, data = build(case)
    exact = exact_ranks(model, loss, data)
    for kind in KINDS:
        res = hr.estimate_rank(model, loss, data, kind, method=method, seed=0)
        assert res.certified, (kind, res.notes)
        assert res.rank == exact[kind].rank, kind
        assert res.rank_low == res.rank == res.rank_high
        assert res.method == method and res.kind == kind and res.n == exact[kind].n
        assert res.matvecs > res.rank


@pytest.mark.parametrize("case", [MODELS[0], MODELS[2], MODELS[4], MODELS[6]], ids=model_id)
def test_float32_products_at_rtol_1e5(case: tuple) -> None:
    model, loss, data = build(case)
    exact = exact_ranks(model, loss, data, rtol=1e-5)
    certified = []
    for kind in KINDS:
        # 1e-5 is about 80 eps(float32): a decade clear of the float32 noise floor
        res = hr.estimate_rank(model, loss, data, kind, method="sketch", dtype=torch.float32,
                               rtol=1e-5)
        assert res.dtype == "torch.float32"
        assert res.guarantee in ("certified", "bound"), (kind, res.notes)
        assert res.rank_low <= exact[kind].rank <= res.rank_high, kind
        if res.certified:
            assert res.rank == exact[kind].rank, kind
        certified.append(res.certified)
    assert sum(certified) >= 2


@pytest.mark.parametrize("row", PAPER_TABLE, ids=table_id)
def test_product_budget_on_paper_table(row: tuple) -> None:
    d, hidden, k, n_samples, r_in, loss, bias = row[:7]
    truth = dict(zip(KINDS, (row[10], row[8], row[9]), strict=True))
    model = linear_mlp([d, *hidden, k], bias=bias, seed=0)
    data = gaussian_data(n_samples, d, k, loss, seed=0, input_rank=r_in)
    for kind in KINDS:
        r = truth[kind]
        sketch = hr.estimate_rank(model, loss, data, kind, method="sketch")
        assert sketch.certified and sketch.rank == r, (kind, sketch.notes)
        assert sketch.matvecs <= r + 96, (kind, sketch.matvecs)
        lanczos = hr.estimate_rank(model, loss, data, kind, method="lanczos")
        assert lanczos.certified and lanczos.rank == r, (kind, lanczos.notes)
        assert lanczos.matvecs <= 1.2 * r + 50, (kind, lanczos.matvecs)


def test_budget_exhausted_gives_certified_lower_bound() -> None:
    model, loss, data = build(MODELS[6])
    exact = exact_ranks(model, loss, data)
    for kind in KINDS:
        res = hr.estimate_rank(model, loss, data, kind, method="sketch", max_matvecs=60)
        assert not res.certified
        assert res.rank == res.rank_low <= exact[kind].rank <= res.rank_high
        assert any("lower bound" in note for note in res.notes)


def test_result_fields_and_json(tmp_path) -> None:
    model, loss, data = build(MODELS[0])
    res = hr.estimate_rank(model, loss, data, "loss", method="sketch", seed=3)
    assert res.eigenvalues is not None and len(res.eigenvalues) >= res.rank
    assert res.noise_floor is not None and res.noise_floor >= 0
    assert res.gap is not None and res.gap[0] <= res.tol < res.gap[1]
    curve = dict(res.rank_curve)
    assert max(curve.values()) <= res.n and min(curve.values()) <= res.rank
    assert res.seconds > 0 and res.extra["block_size"] == 8
    res.to_json(tmp_path / "r.json")
    assert json.loads((tmp_path / "r.json").read_text())["certified"] is True
    again = hr.estimate_rank(model, loss, data, "loss", method="sketch", seed=3)
    assert again.rank == res.rank and again.matvecs == res.matvecs
    assert again.eigenvalues == res.eigenvalues  # seeded: deterministic


def test_resume_from_block_state_is_identical() -> None:
    model, loss, data = build(MODELS[1])
    states = []
    full = hr.estimate_rank(model, loss, data, "outer", method="sketch",
                            on_block=lambda s: states.append(s.snapshot()))
    assert len(states) > 3
    resumed = hr.estimate_rank(model, loss, data, "outer", method="sketch",
                               resume_state=states[2])
    assert resumed.rank == full.rank and resumed.eigenvalues == full.eigenvalues
    assert resumed.certified == full.certified


def test_auto_choice_follows_the_memory_plan() -> None:
    model, loss, data = build(MODELS[6])  # n = 620, rank(H_O) = 30
    small = hr.estimate_rank(model, loss, data, "outer")
    assert small.method == "exact" and any("auto chose exact" in n for n in small.notes)
    assert small.extra["plan"]["method"] == "exact"
    # 1 MB: no room for the dense matrices (5 float64 copies of 620^2, 15 MB) nor for the
    # density count's quadrature -> a Krylov basis, capped where the solver's peak
    # (krylov_rank.memory_bytes: basis panels plus 6 workspace blocks, 0.63 MB at rank 30)
    # meets the budget, above the rank: certified
    sketch = hr.estimate_rank(model, loss, data, "outer", memory_bytes=1_000_000)
    assert sketch.method == "sketch" and sketch.certified
    assert sketch.rank == small.rank and sketch.extra["plan"]["max_rank"] >= small.rank
    # 250 kB holds a basis below rank 30 even at block 1 (the width that holds the most):
    # the capped sketch returns a true bound
    capped = hr.estimate_rank(model, loss, data, "outer", memory_bytes=250_000)
    assert capped.method == "sketch" and capped.guarantee == "bound"
    assert capped.extra["plan"]["max_rank"] < small.rank
    assert capped.rank_low <= small.rank <= capped.rank_high
    with pytest.raises(PlanError, match="does not fit"):
        hr.estimate_rank(model, loss, data, "outer", method="sketch", memory_bytes=1_000)


@pytest.mark.parametrize(("kw", "match"), [
    ({"method": "svd"}, "method must be one of"),
    ({"rtol": -1.0}, "rtol must be"),
    ({"atol": float("nan")}, "atol must be"),
    ({"max_matvecs": 0}, "max_matvecs must be"),
])
def test_bad_arguments(kw: dict, match: str) -> None:
    model, loss, data = build(MODELS[0])
    with pytest.raises(ValueError, match=match):
        hr.estimate_rank(model, loss, data, **kw)


def test_symmetry_probe_refuses_nondeterministic_model() -> None:
    class Noisy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(4, 3, dtype=torch.float64)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.lin(x) * (1 + 0.1 * torch.rand((), dtype=torch.float64))

    data = gaussian_data(10, 4, 3, "mse")
    with pytest.raises(ValueError, match="not deterministic"):
        hr.estimate_rank(Noisy(), "mse", data, "outer", method="sketch", cache=False)


# -- eigenvalues --------------------------------------------------------------------------------
@pytest.mark.parametrize("which", ["LA", "SA", "LM"])
def test_eigenvalues_against_dense_and_eigsh(which: str) -> None:
    model, loss, data = build(MODELS[2])
    op = hr.curvature_operator(model, loss, data, "loss")
    dense = torch.linalg.eigvalsh(op.to_dense())
    res = hr.eigenvalues(model, loss, data, "loss", k=4, which=which, tol=1e-10)
    assert res.converged
    want = {"LA": dense.flip(0)[:4], "SA": dense[:4],
            "LM": dense[dense.abs().argsort(descending=True)][:4]}[which]
    assert torch.allclose(torch.tensor(res.values, dtype=torch.float64), want, rtol=1e-8,
                          atol=1e-12)
    for theta, r in zip(res.values, res.residual_norms, strict=True):
        assert torch.min((dense - theta).abs()) <= r + 1e-12
    sp = scipy.sparse.linalg.eigsh(op.to_scipy(), k=4, which=which, tol=1e-12,
                                   return_eigenvectors=False)
    key = (lambda v: -abs(v)) if which == "LM" else (lambda v: -v if which == "LA" else v)
    assert np.allclose(sorted(sp, key=key), res.values, rtol=1e-8)


def test_eigenvalues_budget_error_has_partial() -> None:
    model, loss, data = build(MODELS[6])
    with pytest.raises(hr.NotConvergedError) as info:
        hr.eigenvalues(model, loss, data, "loss", k=3, tol=1e-14, max_matvecs=16, block_size=4)
    assert info.value.partial is not None and not info.value.partial.converged


def test_top_eigenvalue_matches_pyhessian() -> None:
    pyhessian = pytest.importorskip("pyhessian", reason="the peers extra is not installed")
    model, _, (x, y) = build(MODELS[4])  # relu, cross-entropy, class-index targets
    comp = pyhessian.hessian(model, nn.CrossEntropyLoss(), data=(x, y), cuda=False)
    torch.manual_seed(0)
    top, _ = comp.eigenvalues(maxIter=500, tol=1e-10, top_n=1)
    ours = hr.eigenvalues(model, "cross_entropy", (x, y), "loss", k=1, which="LA")
    dense = hr.curvature_operator(model, "cross_entropy", (x, y)).to_dense()
    exact_top = float(torch.linalg.eigvalsh(dense)[-1])
    assert abs(ours.values[0] - exact_top) <= 1e-10 * abs(exact_top)
    # PyHessian's power iteration stops on a small relative change, not a residual: it is
    # within about 1e-5 here (the top two eigenvalues are close), ours to rounding.
    assert abs(top[0] - exact_top) <= 1e-4 * abs(exact_top)
