"""OutputGramOperator: G = A^T A shares H_O's non-zero spectrum (dense float64 references)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import scalable_hrank as hr
from scalable_hrank.operators import curvature
from scalable_hrank.operators.gram import OutputGramOperator, unavailable_reason
from tests.dense_reference import dense_curvatures
from tests.operators.test_curvature import rel_err, small_data, small_mlp


def nonzero_spectrum(h: torch.Tensor, count: int) -> torch.Tensor:
    """The ``count`` largest-magnitude eigenvalues, sorted."""
    vals = torch.linalg.eigvalsh(0.5 * (h + h.T))
    return vals[vals.abs().argsort(descending=True)[:count]].sort().values


@pytest.mark.parametrize("loss", ["mse", "cross_entropy", "logcosh"])
@pytest.mark.parametrize("splits", [[12], [5, 7]], ids=["one-batch", "two-batches"])
def test_gram_has_the_spectrum_of_outer(loss: str, splits: list[int]) -> None:
    model = small_mlp(True, "tanh")
    x, y = small_data(loss)
    ref = dense_curvatures(model, loss, x, y)["outer"]
    batches = [(x[:splits[0]], y[:splits[0]])] if len(splits) == 1 else [
        (x[:5], y[:5]), (x[5:], y[5:])]
    gram = OutputGramOperator(hr.curvature_operator(model, loss, batches, "outer"))
    assert gram.size == 12 * 3
    dense = gram.to_dense()
    assert gram.matvecs == 36 and gram.op.matvecs == 36
    m = gram.size
    assert rel_err(nonzero_spectrum(dense, m), nonzero_spectrum(ref, m)) < 1e-10
    tau = 1e-9 * float(torch.linalg.eigvalsh(ref).abs().max())
    count = int((torch.linalg.eigvalsh(dense).abs() > tau).sum())
    assert count == int((torch.linalg.eigvalsh(ref).abs() > tau).sum()) > 0


def test_gram_cross_entropy_with_probabilities_and_ignored_rows() -> None:
    model = small_mlp(False, "relu", seed=3)
    x, labels = small_data("cross_entropy")
    probs = torch.softmax(torch.randn(12, 3, generator=torch.Generator().manual_seed(5),
                                      dtype=torch.float64), -1)
    op_probs = hr.curvature_operator(model, "cross_entropy", (x, probs), "outer")
    g = OutputGramOperator(op_probs).to_dense()
    h = op_probs.to_dense()
    assert rel_err(nonzero_spectrum(g, 36), nonzero_spectrum(h, 36)) < 1e-10
    ignored = labels.clone()
    ignored[[0, 4]] = -100
    op_ign = hr.curvature_operator(model, "cross_entropy", (x, ignored), "outer")
    g = OutputGramOperator(op_ign).to_dense()
    assert g[:3].abs().max() == 0 and g[12:15].abs().max() == 0  # rows of ignored samples
    assert rel_err(nonzero_spectrum(g, 30), nonzero_spectrum(op_ign.to_dense(), 30)) < 1e-10


@pytest.mark.parametrize("loop", [False, True], ids=["vmap", "column-loop"])
def test_gram_block_equals_columns(loop: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    if loop:
        monkeypatch.setitem(curvature.COLUMN_LOOP_MIN_SIZE, "cpu", 0)
    model = small_mlp(True, "tanh")
    x, y = small_data("mse")
    gram = OutputGramOperator(hr.curvature_operator(model, "mse", [(x[:7], y[:7]),
                                                                   (x[7:], y[7:])], "outer"))
    u = torch.randn(gram.size, 3, generator=torch.Generator().manual_seed(0),
                    dtype=torch.float64)
    together = gram @ u
    apart = torch.stack([gram @ u[:, j] for j in range(3)], dim=1)
    assert rel_err(together, apart) < 1e-14
    ref = dense_curvatures(model, "mse", x, y)["outer"]
    g = gram.to_dense()  # G and H_O share the non-zero spectrum whatever the block layout
    assert rel_err(nonzero_spectrum(g, 36), nonzero_spectrum(ref, 36)) < 1e-10
    with pytest.raises(ValueError, match=r"shape \(36,\)"):
        gram @ torch.zeros(35, dtype=torch.float64)


def test_gram_unavailable_reasons() -> None:
    model = small_mlp(True, "tanh")
    x, y = small_data("mse")
    loss_op = hr.curvature_operator(model, "mse", (x, y), "loss")
    assert "kind 'loss'" in unavailable_reason(loss_op)
    with pytest.raises(ValueError, match="H_O's"):
        OutputGramOperator(loss_op)

    def my_loss(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return nn.functional.smooth_l1_loss(out, target)

    custom = hr.curvature_operator(model, my_loss, (x, y), "outer")
    assert "closed-form factor" in unavailable_reason(custom)
    assert unavailable_reason(hr.curvature_operator(model, "mse", (x, y), "outer")) is None
