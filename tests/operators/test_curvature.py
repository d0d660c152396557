"""CurvatureOperator against independent dense float64 references (tests/dense_reference.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

import scalable_hrank as hr
from scalable_hrank.errors import NonFiniteError
from scalable_hrank.operators import curvature
from tests.dense_reference import dense_curvatures

KINDS = ("loss", "outer", "functional")
LOSSES = ("mse", "cross_entropy", "logcosh")


def small_mlp(bias: bool, activation: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    act = {"linear": nn.Identity, "tanh": nn.Tanh, "relu": nn.ReLU}[activation]
    return nn.Sequential(nn.Linear(4, 5, bias=bias), act(), nn.Linear(5, 3, bias=bias),
                         act(), nn.Linear(3, 3, bias=bias)).double()


def small_data(loss: str, n: int = 12, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g, dtype=torch.float64)
    if loss == "cross_entropy":
        return x, torch.randint(0, 3, (n,), generator=g)
    return x, torch.randn(n, 3, generator=g, dtype=torch.float64)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


@pytest.mark.parametrize("bias", [False, True], ids=["nobias", "bias"])
@pytest.mark.parametrize("activation", ["linear", "tanh", "relu"])
@pytest.mark.parametrize("loss", LOSSES)
def test_dense_matches_reference(bias: bool, activation: str, loss: str) -> None:
    model = small_mlp(bias, activation)
    x, y = small_data(loss)
    ref = dense_curvatures(model, loss, x, y)
    ops = {k: hr.curvature_operator(model, loss, (x, y), k) for k in KINDS}
    dense = {k: op.to_dense() for k, op in ops.items()}
    for k in KINDS:
        if ref[k].norm() == 0:  # H_F of a net that is linear in theta... never for these
            assert dense[k].norm() < 1e-12
        else:
            assert rel_err(dense[k], ref[k]) < 1e-10, k
        assert rel_err(dense[k], dense[k].T) < 1e-12 or dense[k].norm() == 0
    assert rel_err(dense["outer"] + dense["functional"], dense["loss"]) < 1e-10
    g = torch.Generator().manual_seed(3)
    v = torch.randn(ops["loss"].size, generator=g, dtype=torch.float64)
    for k in KINDS:
        assert rel_err(ops[k] @ v, ref[k] @ v) < 1e-10


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("splits", [[12], [5, 7], [1, 11], [4, 4, 4], [11, 1]],
                         ids=lambda s: "-".join(map(str, s)))
def test_batch_splits_do_not_change_the_matrix(loss: str, splits: list[int]) -> None:
    model = small_mlp(True, "tanh", seed=2)
    x, y = small_data(loss, seed=4)
    ref = dense_curvatures(model, loss, x, y)
    bounds = np.cumsum([0, *splits])
    batches = [(x[a:b], y[a:b]) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    for kind in KINDS:
        dense = hr.curvature_operator(model, loss, batches, kind).to_dense()
        assert rel_err(dense, ref[kind]) < 1e-10, kind


def test_dataloader_input() -> None:
    model = small_mlp(False, "tanh")
    x, y = small_data("mse")
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=5)
    ref = dense_curvatures(model, "mse", x, y)["outer"]
    assert rel_err(hr.curvature_operator(model, "mse", loader, "outer").to_dense(), ref) < 1e-10


def test_block_equals_columns_and_scipy() -> None:
    model = small_mlp(True, "tanh")
    x, y = small_data("cross_entropy")
    op = hr.curvature_operator(model, "cross_entropy", (x, y), "functional")
    g = torch.Generator().manual_seed(0)
    block = torch.randn(op.size, 7, generator=g, dtype=torch.float64)
    together = op @ block
    apart = torch.stack([op @ block[:, j] for j in range(7)], dim=1)
    assert rel_err(together, apart) < 1e-13
    assert op.matvecs == 14
    sp = op.to_scipy()
    assert np.allclose(sp.matvec(block[:, 0].numpy()), together[:, 0].numpy(), rtol=1e-12)
    assert np.allclose(sp.matmat(block.numpy()), together.numpy(), rtol=1e-12)


@pytest.mark.parametrize("kind", KINDS)
def test_column_loop_equals_one_vmap(kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The CPU layout for large models (a column loop into a (k, P) buffer) = the vmap path."""
    model = small_mlp(True, "tanh")
    x, y = small_data("mse")
    batches = [(x[:5], y[:5]), (x[5:], y[5:])]
    ref = dense_curvatures(model, "mse", x, y)[kind]
    g = torch.Generator().manual_seed(0)
    block = torch.randn(sum(p.numel() for p in model.parameters()), 5, generator=g,
                        dtype=torch.float64)
    vmapped = hr.curvature_operator(model, "mse", batches, kind) @ block
    monkeypatch.setitem(curvature.COLUMN_LOOP_MIN_SIZE, "cpu", 0)
    op = hr.curvature_operator(model, "mse", batches, kind)
    looped = op @ block
    assert rel_err(looped, ref @ block) < 1e-12 and rel_err(vmapped, ref @ block) < 1e-12
    assert looped.stride() == vmapped.stride() == (1, op.size)  # column-major, as documented
    again = op @ looped  # a transposed (column-major) result as the next operand
    assert rel_err(again, ref @ (ref @ block)) < 1e-12
    assert rel_err(op @ block[:, 2], ref @ block[:, 2]) < 1e-12
    assert op.matvecs == 11


def test_non_finite_product_search_names_the_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    model = nn.Sequential(nn.Linear(4, 3)).double()
    x, y = small_data("mse")
    monkeypatch.setitem(curvature.COLUMN_LOOP_MIN_SIZE, "cpu", 0)
    op = hr.curvature_operator(model, "mse", [(x[:6], y[:6]), (x[6:], y[6:])])
    op @ torch.ones(op.size, dtype=torch.float64)
    op @ torch.ones(op.size, 2, dtype=torch.float64)
    block = torch.ones(op.size, 2, dtype=torch.float64)
    block[0, 1] = math.inf
    with pytest.raises(NonFiniteError, match="batch 0 after 3 products") as info:
        op @ block
    assert info.value.batch == 0 and info.value.num_matvecs == 3


def test_parameter_subset_is_the_submatrix() -> None:
    model = small_mlp(True, "tanh")
    x, y = small_data("mse")
    full = dense_curvatures(model, "mse", x, y)["loss"]
    # parameters in named order: 0.weight (20), 0.bias (5), 2.weight (15), 2.bias (3), ...
    sub = hr.curvature_operator(model, "mse", (x, y), params=["2.*"]).to_dense()
    assert sub.shape == (18, 18)
    assert rel_err(sub, full[25:43, 25:43]) < 1e-10
    by_object = hr.curvature_operator(model, "mse", (x, y), params=[model[2].weight]).to_dense()
    assert rel_err(by_object, full[25:40, 25:40]) < 1e-10
    with pytest.raises(ValueError, match="matches no parameter"):
        hr.curvature_operator(model, "mse", (x, y), params=["nothing.*"])


@pytest.mark.parametrize("kind", KINDS)
def test_callable_loss_equals_builtin(kind: str) -> None:
    model = small_mlp(True, "tanh")
    x, y = small_data("cross_entropy")

    def my_ce(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.cross_entropy(out, target)

    a = hr.curvature_operator(model, my_ce, (x, y), kind).to_dense()
    b = hr.curvature_operator(model, "cross_entropy", (x, y), kind).to_dense()
    assert rel_err(a, b) < 1e-10


def test_probability_targets_equal_class_indices() -> None:
    model = small_mlp(False, "tanh")
    x, y = small_data("cross_entropy")
    onehot = torch.nn.functional.one_hot(y, 3).double()
    for kind in KINDS:
        a = hr.curvature_operator(model, "cross_entropy", (x, onehot), kind).to_dense()
        b = hr.curvature_operator(model, "cross_entropy", (x, y), kind).to_dense()
        assert rel_err(a, b) < 1e-12


def test_dtype_follows_model() -> None:
    model = small_mlp(False, "tanh").float()
    x, y = small_data("mse")
    op = hr.curvature_operator(model, "mse", (x, y))
    assert op.dtype == torch.float32
    assert (op @ torch.ones(op.size)).dtype == torch.float32


# -- bad input ---------------------------------------------------------------------------------
def test_train_mode_dropout_and_batchnorm_refused() -> None:
    x, y = small_data("mse")
    drop = nn.Sequential(nn.Linear(4, 3), nn.Dropout(0.1)).double()
    with pytest.raises(ValueError, match=r"training mode.*Dropout.*model\.eval\(\)"):
        hr.curvature_operator(drop, "mse", (x, y))
    bn = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3)).double()
    with pytest.raises(ValueError, match="BatchNorm1d"):
        hr.curvature_operator(bn, "mse", (x, y))
    bn.eval()
    assert hr.curvature_operator(bn, "mse", (x, y)).size == 4 * 3 + 3 + 3 + 3


def test_non_finite_loss_refused() -> None:
    model = small_mlp(False, "tanh")
    x, y = small_data("mse")
    y[0, 0] = math.inf
    with pytest.raises(NonFiniteError, match="loss is"):
        hr.curvature_operator(model, "mse", (x, y))


def test_non_finite_product_reports_batch() -> None:
    model = nn.Sequential(nn.Linear(4, 3)).double()
    x, y = small_data("logcosh")
    op = hr.curvature_operator(model, "mse", [(x[:6], y[:6]), (x[6:], y[6:])])
    with pytest.raises(NonFiniteError) as info:
        op @ torch.full((op.size,), math.nan, dtype=torch.float64)
    assert info.value.batch == 0 and info.value.num_matvecs == 0


@pytest.mark.parametrize("data", [[], [(torch.zeros(0, 4), torch.zeros(0, 3))]],
                         ids=["no-batches", "zero-samples"])
def test_empty_data_refused(data: list) -> None:
    with pytest.raises(ValueError, match="data is empty"):
        hr.curvature_operator(small_mlp(False, "tanh"), "mse", data)


@pytest.mark.parametrize(("loss", "targets", "match"), [
    ("mse", torch.zeros(12, 2), "targets shaped like the outputs"),
    ("cross_entropy", torch.zeros(12, 3, dtype=torch.long), "class indices needs targets"),
    ("cross_entropy", torch.full((12,), 3), r"must lie in \[0, 3\)"),
    ("logcosh", torch.zeros(12), "targets shaped like the outputs"),
])
def test_targets_that_do_not_fit(loss: str, targets: torch.Tensor, match: str) -> None:
    x, _ = small_data("mse")
    with pytest.raises(ValueError, match=match):
        hr.curvature_operator(small_mlp(False, "tanh"), loss, (x, targets))


def test_mismatched_batch_sizes() -> None:
    x, y = small_data("mse")
    with pytest.raises(ValueError, match=r"shaped like the outputs \(12, 3\); got \(11, 3\)"):
        hr.curvature_operator(small_mlp(False, "tanh"), "mse", (x, y[:11]))


def test_unknown_kind_and_loss() -> None:
    x, y = small_data("mse")
    model = small_mlp(False, "tanh")
    with pytest.raises(ValueError, match="kind must be one of"):
        hr.curvature_operator(model, "mse", (x, y), "hessian")
    with pytest.raises(ValueError, match="loss must be one of"):
        hr.curvature_operator(model, "hinge", (x, y))
    with pytest.raises(TypeError, match="data must be"):
        hr.curvature_operator(model, "mse", x)


def test_unreached_parameters_refused() -> None:
    class WithSpare(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.used = nn.Linear(4, 3)
            self.spare = nn.Linear(4, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.used(x)

    x, y = small_data("mse")
    model = WithSpare().double()
    with pytest.raises(ValueError, match=r"not reached by the loss: \['spare.weight'"):
        hr.curvature_operator(model, "mse", (x, y))
    assert hr.curvature_operator(model, "mse", (x, y), params=["used.*"]).size == 15


def test_nondeterministic_pipeline_detected() -> None:
    class Shuffled:
        def __init__(self) -> None:
            self.calls = 0

        def __iter__(self):
            self.calls += 1
            g = torch.Generator().manual_seed(self.calls)
            yield torch.randn(6, 4, generator=g, dtype=torch.float64), torch.randn(
                6, 3, generator=g, dtype=torch.float64)

    with pytest.raises(ValueError, match="not deterministic"):
        hr.curvature_operator(small_mlp(False, "tanh"), "mse", Shuffled(), cache=False)


def test_symmetry_probe_flags_random_model() -> None:
    class Noisy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(4, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.lin(x) * (1 + 0.1 * torch.rand(()))

    x, y = small_data("mse")
    op = hr.curvature_operator(Noisy().double(), "mse", (x, y), "outer", cache=False)
    with pytest.raises(ValueError, match="not deterministic"):
        op.check_symmetry()
    good = hr.curvature_operator(small_mlp(False, "tanh"), "mse", (x, y))
    assert good.check_symmetry() < 1e-12


def test_operand_shape_checked() -> None:
    x, y = small_data("mse")
    op = hr.curvature_operator(small_mlp(False, "tanh"), "mse", (x, y))
    with pytest.raises(ValueError, match="operand must have shape"):
        op @ torch.ones(op.size + 1, dtype=torch.float64)
