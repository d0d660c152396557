"""The built-in kind specs and estimator entries state what the code does.

The sketch's product contract (``estimators.sketch.expected_products``, quoted by the planner
and the README) against the products a run takes on planted spectra; the kinds' PSD, scale
and parts fields against dense matrices; each estimator's ``resume_state`` against the state
its ``on_block`` really receives; the operator's public attributes against the model.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import scalable_hrank as hr
from scalable_hrank.estimators import estimator, method_names
from scalable_hrank.estimators.sketch import expected_products
from scalable_hrank.linalg.krylov_rank import krylov_rank
from scalable_hrank.operators import KINDS, kind_names, kind_spec
from tests.dense_reference import dense_curvatures, gaussian_data, linear_mlp


def planted(n: int, rank: int, seed: int = 0) -> torch.Tensor:
    """Q diag(1 .. 1e-3 on ``rank`` entries, zeros) Q^T with a random orthogonal Q."""
    gen = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=torch.float64))
    ev = torch.cat([torch.logspace(0, -3, rank, dtype=torch.float64),
                    torch.zeros(n - rank, dtype=torch.float64)])
    return (q * ev) @ q.T


@pytest.mark.parametrize(("n", "rank", "block"), [
    (300, 20, 8), (300, 150, 8), (500, 60, 4), (400, 100, 1), (200, 190, 8)])
def test_sketch_products_match_the_stated_contract(n: int, rank: int, block: int) -> None:
    a = planted(n, rank)
    kr = krylov_rank(lambda x: a @ x, n, block_size=block,
                     generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    assert kr.certified and kr.rank == rank
    expected = expected_products(n, rank, block)
    # an estimate: within a block below and one extra block (a retried certificate) above
    assert expected - block <= kr.num_matvecs <= expected + max(block, 8), (kr.num_matvecs,
                                                                            expected)


def test_builtin_kind_specs_match_the_matrices() -> None:
    assert kind_names()[:3] == KINDS
    model = linear_mlp((4, 3, 3), activation=nn.Tanh, seed=1)
    x, y = gaussian_data(5, 4, 3, "cross_entropy", seed=2)
    dense = dense_curvatures(model, "cross_entropy", x, y)
    floor = -1e-12 * float(torch.linalg.eigvalsh(dense["loss"]).abs().max())
    for kind in KINDS:
        spec = kind_spec(kind)
        assert spec.scale_kind == "loss" and spec.is_psd(None) is False
        smallest = float(torch.linalg.eigvalsh(dense[kind]).min())
        if spec.is_psd("cross_entropy"):
            assert smallest >= floor, kind
    # H_L and H_F of a tanh net are indefinite here; H_O is PSD for every built-in loss
    assert float(torch.linalg.eigvalsh(dense["functional"]).min()) < floor
    assert kind_spec("outer").psd_losses == ("mse", "cross_entropy", "logcosh")
    assert not kind_spec("loss").psd_losses and not kind_spec("functional").psd_losses
    # H_L = H_O + H_F, the parts the density bound adds up
    parts = kind_spec("loss").parts
    assert torch.allclose(sum(dense[p] for p in parts), dense["loss"], atol=1e-12)
    assert kind_spec("outer").output_factor is not None
    assert kind_spec("loss").output_factor is None
    with pytest.raises(ValueError, match="kind must be one of"):
        kind_spec("hessian")


@pytest.mark.parametrize("method", ["sketch", "lanczos", "density"])
def test_resume_state_is_what_on_block_receives(method: str) -> None:
    model = linear_mlp((4, 3, 2), seed=0)
    data = gaussian_data(6, 4, 2, "mse", seed=1)
    seen = []
    hr.estimate_rank(model, "mse", data, "loss", method=method, on_block=seen.append,
                     density={"num_probes": 2} if method == "density" else None,
                     max_matvecs=200 if method == "density" else None)
    entry = estimator(method)
    assert seen and all(isinstance(s, entry.resume_state) for s in seen)


def test_every_method_is_registered_and_auto_is_a_policy() -> None:
    assert method_names()[:5] == ("auto", "exact", "sketch", "lanczos", "density")
    with pytest.raises(ValueError, match="method must be one of"):
        estimator("auto")
    assert estimator("exact").resume_state is None


def test_operator_public_attributes() -> None:
    model = linear_mlp((4, 3, 2), seed=0)
    x, y = gaussian_data(6, 4, 2, "mse", seed=1)
    op = hr.curvature_operator(model, "mse", [(x[:4], y[:4]), (x[4:], y[4:])], "outer")
    assert op.spec is kind_spec("outer") and op.builtin_loss == "mse"
    assert op.num_samples == 6 and [b.size for b in op.batches] == [4, 2]
    first = op.first_batch()
    assert torch.equal(first.inputs, x[:4])
    outputs = op.forward(first)(op.space.split(op.theta))
    assert torch.allclose(outputs, model(x[:4]))
    assert op.column_loop() is False  # a small model on the CPU: one vmap per block
    mine = hr.curvature_operator(model, lambda out, t: ((out - t) ** 2).mean(), (x, y), "outer")
    assert mine.builtin_loss is None and not mine.spec.is_psd(mine.builtin_loss)
