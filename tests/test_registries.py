"""Adding a kind and an estimator is one spec and one entry: both run through estimate_rank.

The kind registered here is the Jacobian Gram matrix ``J^T J / N`` of the outputs (the
Gauss-Newton matrix with an identity output Hessian, whatever the loss), scaled by its own
sigma_max; the estimator is a small dense eigendecomposition of the operator. Neither touches
a module of the package: the test registers them, checks them against an independent dense
reference (``jacrev`` of the outputs, not the package's products), and removes them again.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import pytest
import torch
from torch import nn
from torch.func import functional_call, jacrev

import scalable_hrank as hr
from scalable_hrank.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from scalable_hrank.estimators import (
    Estimator,
    RankRequest,
    estimator,
    method_names,
    register_estimator,
    unregister_estimator,
)
from scalable_hrank.estimators.common import check_noise_floor, probe_and_threshold
from scalable_hrank.operators import KindSpec, kind_names, register_kind, unregister_kind
from scalable_hrank.planner import PlanError, plan
from scalable_hrank.result import RankResult
from tests.dense_reference import gaussian_data, linear_mlp, reference_rank


def jacobian_gram_product(theta, forward, loss_fn, targets, weight):
    """One batch of ``J^T J / N``: ``v -> (N_b / N) J_b^T J_b v / N_b`` (jvp, then vjp)."""
    outputs, vjp_fn = torch.func.vjp(forward, theta)
    scale = weight / outputs.shape[0]

    def matvec(v):
        _, jv = torch.func.jvp(forward, (theta,), (v,))
        return vjp_fn(jv * scale)[0]

    return matvec, loss_fn(outputs.detach(), targets).detach()


@dataclass
class EighState:
    """The dense estimator's resume state: its eigenvalues, once computed."""

    num_matvecs: int
    values: torch.Tensor


def dense_eigh_run(request: RankRequest) -> RankResult:
    """Count eigenvalues of the dense operator above the request's threshold."""
    threshold = probe_and_threshold(request)
    op = request.op
    if isinstance(request.resume_state, EighState):
        vals = request.resume_state.values
    else:
        vals = torch.linalg.eigvalsh(op.to_dense().double()).flip(0)
        if request.on_block is not None:
            request.on_block(EighState(op.matvecs, vals))
    scale = threshold.scale if threshold.scale is not None else float(vals.abs().max())
    tol = threshold.tol if threshold.tol is not None else threshold.rtol * scale
    rank = int((vals.abs() > tol).sum())
    res = RankResult(rank=rank, n=op.size, kind=request.kind, method="dense_eigh", tol=tol,
                     scale=scale, matvecs=op.matvecs + threshold.scale_matvecs,
                     seconds=time.perf_counter() - request.start, certified=True,
                     rank_low=rank, rank_high=rank, guarantee="exact",
                     eigenvalues=tuple(vals.tolist()), notes=tuple(request.notes),
                     extra=dict(request.extra))
    return check_noise_floor(res, op.dtype)


JTJ = KindSpec("jtj", "J^T J", jacobian_gram_product, psd_losses=("mse", "cross_entropy",
               "logcosh"), scale_kind="jtj")
DENSE_EIGH = Estimator(name="dense_eigh", run=dense_eigh_run,
                       storage_bytes=lambda s: 2 * 8 * s.n * s.n,
                       expected_products=lambda s: s.n, resume_state=EighState)


@pytest.fixture
def registered():
    register_kind(JTJ)
    register_estimator(DENSE_EIGH)
    yield
    unregister_kind("jtj")
    unregister_estimator("dense_eigh")
    assert "jtj" not in kind_names() and "dense_eigh" not in method_names()


def problem():
    model = linear_mlp((5, 4, 3), activation=nn.Tanh, seed=3)
    x, y = gaussian_data(6, 5, 3, "mse", seed=4)
    return model, (x, y)


def reference_jtj(model, x):
    """``J^T J / N`` from ``jacrev`` of the flattened outputs (independent of the package)."""
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def outputs(t):
        parts, i = {}, 0
        for name, shape in zip(names, shapes, strict=True):
            parts[name] = t[i:i + shape.numel()].reshape(shape)
            i += shape.numel()
        return functional_call(model, parts, (x,)).reshape(-1)

    jac = jacrev(outputs)(theta)
    return jac.T @ jac / x.shape[0]


def test_registered_kind_and_estimator_run_through_estimate_rank(registered):
    model, (x, y) = problem()
    dense = reference_jtj(model, x)
    expected = reference_rank(dense)  # n eps sigma_max: the default rule at n = 32
    assert 0 < expected < dense.shape[0]  # a rank-deficient matrix: N C = 18 < P = 32
    assert "jtj" in kind_names() and "dense_eigh" in method_names()

    op = hr.curvature_operator(model, "mse", (x, y), "jtj")
    assert torch.allclose(op.to_dense(), dense, rtol=1e-10, atol=1e-12)

    own = hr.estimate_rank(model, "mse", (x, y), "jtj", method="dense_eigh")
    assert own.method == "dense_eigh" and own.rank == expected and own.guarantee == "exact"
    assert own.extra["plan"]["method"] == "dense_eigh"
    assert own.extra["plan"]["storage_bytes"] == 2 * 8 * 32 * 32
    # the new kind through the built-in estimators: certified sketch, dense reference
    for method in ("sketch", "lanczos"):
        krylov = hr.estimate_rank(model, "mse", (x, y), "jtj", method=method)
        assert krylov.certified and krylov.rank == expected, method
    exact = hr.exact_rank(model, "mse", (x, y), "jtj")
    assert exact.rank == expected
    # its own sigma_max scales its threshold (scale_kind), not H_L's
    sigma = float(torch.linalg.eigvalsh(dense).abs().max())
    assert exact.scale == pytest.approx(sigma, rel=1e-10)


def test_registered_estimator_is_planned_by_its_own_cost(registered):
    model, (x, y) = problem()
    n = 32
    p = plan(model, n, (x, y), "dense_eigh", torch.float64, "cpu", memory_bytes=2**20,
             activation_bytes=0)
    assert p.storage_bytes == 2 * 8 * n * n and p.expected_products == n
    with pytest.raises(PlanError, match="dense_eigh"):
        plan(model, n, (x, y), "dense_eigh", torch.float64, "cpu", memory_bytes=1000,
             activation_bytes=0)
    assert estimator("dense_eigh") is DENSE_EIGH


def test_registries_refuse_duplicates_and_name_what_they_know(registered):
    with pytest.raises(ValueError, match="already registered"):
        register_kind(JTJ)
    with pytest.raises(ValueError, match="already registered"):
        register_estimator(DENSE_EIGH)
    with pytest.raises(ValueError, match="cannot be removed"):
        unregister_kind("loss")
    with pytest.raises(ValueError, match="cannot be removed"):
        unregister_estimator("sketch")
    model, data = problem()
    with pytest.raises(ValueError, match="'jtj'"):
        hr.curvature_operator(model, "mse", data, "hessian")
    with pytest.raises(ValueError, match="'dense_eigh'"):
        hr.estimate_rank(model, "mse", data, "loss", method="svd")



def test_cli_choices_read_the_registries(registered):
    from scalable_hrank.cli import build_parser

    args = build_parser().parse_args(["rank", "--kind", "jtj", "--method", "dense_eigh"])
    assert (args.kind, args.method) == ("jtj", "dense_eigh")


def test_registered_resume_state_round_trips_through_a_checkpoint(registered, tmp_path):
    model, data = problem()
    seen = []
    first = hr.estimate_rank(model, "mse", data, "jtj", method="dense_eigh",
                             on_block=seen.append)
    assert len(seen) == 1 and isinstance(seen[0], EighState)
    path = tmp_path / "eigh.ckpt"
    save_checkpoint(path, seen[0], fingerprint="f")
    state = load_checkpoint(path, fingerprint="f")
    assert isinstance(state, EighState) and torch.equal(state.values, seen[0].values)
    resumed = hr.estimate_rank(model, "mse", data, "jtj", method="dense_eigh",
                               resume_state=state)
    assert resumed.rank == first.rank and resumed.matvecs < first.matvecs
    unregister_estimator("dense_eigh")  # its state class is no longer rebuilt
    with pytest.raises(CheckpointError, match="no registered estimator"):
        load_checkpoint(path, fingerprint="f")
