"""Operators through nn.LayerNorm and attention, against forward-over-reverse and differences.

The reference (tests/dense_reference.py) is ``jacfwd(grad)``, itself checked here against
central differences of gradients; the products must match both.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import scalable_hrank as hr
from scalable_hrank.errors import InputError
from tests.dense_reference import (
    NormedMLP,
    TinyAttention,
    central_difference_hessian,
    dense_curvatures,
    flat_loss,
    hessian_of,
    perturbed,
)

KINDS = ("loss", "outer", "functional")


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


def normed_problem(loss: str = "cross_entropy") -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(5)
    x = torch.randn(10, 4, generator=g, dtype=torch.float64)
    y = (torch.randint(0, 3, (10,), generator=g) if loss == "cross_entropy"
         else torch.randn(10, 3, generator=g, dtype=torch.float64))
    return perturbed(NormedMLP(4, 5, 3), seed=1), x, y


def attention_problem(need_weights: bool | None, loss: str = "cross_entropy"
                      ) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = perturbed(TinyAttention(3, 4, 2, 3, need_weights=need_weights), seed=2)
    g = torch.Generator().manual_seed(6)
    x = torch.randn(5, 4, 3, generator=g, dtype=torch.float64)  # (N, T, d)
    y = (torch.randint(0, 3, (5,), generator=g) if loss == "cross_entropy"
         else torch.randn(5, 3, generator=g, dtype=torch.float64))
    return model, x, y


PROBLEMS = {
    "layernorm": lambda loss: normed_problem(loss),
    "mha-default": lambda loss: attention_problem(None, loss),
    "mha-sdpa": lambda loss: attention_problem(False, loss),
}


@pytest.mark.parametrize("name", list(PROBLEMS))
def test_reference_agrees_with_central_differences(name: str) -> None:
    model, x, y = PROBLEMS[name]("cross_entropy")
    theta, f = flat_loss(model, "cross_entropy", x, y)
    with torch.nn.attention.sdpa_kernel([torch.nn.attention.SDPBackend.MATH]):
        fd = central_difference_hessian(f, theta)
    assert rel_err(hessian_of(f, theta), fd) < 1e-7


def test_torch_func_hessian_is_not_the_reference_through_layernorm() -> None:
    """Why the reference is jacfwd(grad): torch.func.hessian misses here by percents."""
    model, x, y = normed_problem()
    theta, f = flat_loss(model, "cross_entropy", x, y)
    fd = central_difference_hessian(f, theta)
    assert rel_err(hessian_of(f, theta), fd) < 1e-7
    assert rel_err(torch.func.hessian(f)(theta), fd) > 1e-3


@pytest.mark.parametrize("loss", ["mse", "cross_entropy"])
@pytest.mark.parametrize("name", list(PROBLEMS))
def test_operators_match_reference(name: str, loss: str) -> None:
    model, x, y = PROBLEMS[name](loss)
    ref = dense_curvatures(model, loss, x, y)
    theta, f = flat_loss(model, loss, x, y)
    fd = central_difference_hessian(f, theta)
    dense = {k: hr.curvature_operator(model, loss, (x, y), k).to_dense() for k in KINDS}
    for kind in KINDS:
        assert rel_err(dense[kind], ref[kind]) < 1e-10, kind
    assert rel_err(dense["loss"], fd) < 1e-7
    assert rel_err(dense["outer"] + dense["functional"], dense["loss"]) < 1e-10


def test_column_loop_matches_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    from scalable_hrank.operators import curvature

    model, x, y = attention_problem(False)
    ref = dense_curvatures(model, "cross_entropy", x, y)["loss"]
    monkeypatch.setitem(curvature.COLUMN_LOOP_MIN_SIZE, "cpu", 0)
    dense = hr.curvature_operator(model, "cross_entropy", (x, y)).to_dense()
    assert rel_err(dense, ref) < 1e-10


# -- outputs as models return them -------------------------------------------------------------
class Returning(nn.Module):
    """Wraps a model; returns its outputs as a dict, a tuple or a ModelOutput-like mapping."""

    def __init__(self, inner: nn.Module, how: str) -> None:
        super().__init__()
        self.inner, self.how = inner, how

    def forward(self, x: torch.Tensor):
        out = self.inner(x)
        if self.how == "dict":
            return {"hidden": out.detach() * 0, "logits": out}
        if self.how == "tuple":
            return out, out.detach()
        if self.how == "model_output":
            from transformers.modeling_outputs import SequenceClassifierOutput

            return SequenceClassifierOutput(logits=out)
        return {"scores": out}


@pytest.mark.parametrize("how", ["dict", "tuple", "model_output"])
def test_outputs_as_models_return_them(how: str) -> None:
    model, x, y = normed_problem()
    for kind in KINDS:
        plain = hr.curvature_operator(model, "cross_entropy", (x, y), kind).to_dense()
        wrapped = hr.curvature_operator(Returning(model, how), "cross_entropy", (x, y),
                                        kind).to_dense()
        assert rel_err(wrapped, plain) < 1e-13, kind


def test_named_output_key() -> None:
    from scalable_hrank.models import SelectOutput

    model, x, y = normed_problem()
    plain = hr.curvature_operator(model, "cross_entropy", (x, y)).to_dense()
    with pytest.raises(InputError, match=r"without a 'logits' entry \(keys: \['scores'\]\)"):
        hr.curvature_operator(Returning(model, "scores"), "cross_entropy", (x, y))
    returning = Returning(model, "scores")
    picked = SelectOutput(returning, "scores")
    assert [n for n, _ in picked.named_parameters()] == [
        n for n, _ in returning.named_parameters()]
    assert rel_err(hr.curvature_operator(picked, "cross_entropy", (x, y)).to_dense(),
                   plain) < 1e-13


# -- kernels without a second derivative -------------------------------------------------------
class FlashOnCpu(nn.Module):
    """Attention through the fused CPU kernel called directly (no math fallback)."""

    def __init__(self) -> None:
        super().__init__()
        self.qkv = nn.Linear(4, 12)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(x).unsqueeze(1).chunk(3, dim=-1)  # (N, 1, T, 4) each
        out = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v)[0]
        return out.mean(dim=(1, 2))


def test_kernel_without_double_derivative_refused() -> None:
    model = FlashOnCpu()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 5, 4, generator=g)
    y = torch.randn(6, 4, generator=g)
    op = hr.curvature_operator(model, "mse", (x, y), "loss")  # first derivatives exist
    with pytest.raises(InputError, match="_scaled_dot_product_flash_attention_for_cpu_backward, "
                                         "which has no second derivative"):
        op @ torch.ones(op.size)


class UserAttention(nn.Module):
    """A user's transformer block calling F.scaled_dot_product_attention (as timm ViTs do),
    or, with ``eager=True``, the same attention written out as softmax(QK^T / sqrt(d)) V."""

    def __init__(self, eager: bool) -> None:
        super().__init__()
        self.qkv = nn.Linear(4, 12)
        self.norm = nn.LayerNorm(4)
        self.head = nn.Linear(4, 3)
        self.eager = eager

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        if self.eager:
            att = torch.softmax(q @ k.transpose(-1, -2) / 2.0, dim=-1) @ v
        else:
            att = nn.functional.scaled_dot_product_attention(q, k, v)
        return self.head(self.norm(x + att).mean(dim=1))


def test_user_sdpa_block_equals_its_eager_twin() -> None:
    fused = perturbed(UserAttention(eager=False), seed=3)
    eager = UserAttention(eager=True).double()
    eager.load_state_dict(fused.state_dict())
    g = torch.Generator().manual_seed(7)
    x = torch.randn(4, 5, 4, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (4,), generator=g)
    for kind in KINDS:
        a = hr.curvature_operator(fused, "cross_entropy", (x, y), kind).to_dense()
        b = hr.curvature_operator(eager, "cross_entropy", (x, y), kind).to_dense()
        assert rel_err(a, b) < 1e-12, kind


def test_select_output_swaps_the_models_own_parameters() -> None:
    """A wrapped model with a parameter of its own (not in a child) is still differentiated."""
    from scalable_hrank.models import SelectOutput

    class Scaled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(4, 3)
            self.scale = nn.Parameter(torch.tensor([1.5, -0.5, 2.0]))

        def forward(self, x: torch.Tensor) -> dict:
            return {"scores": torch.tanh(self.lin(x)) * self.scale}

    class Plain(nn.Module):
        def __init__(self, inner: Scaled) -> None:
            super().__init__()
            self.lin, self.scale = inner.lin, inner.scale

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.tanh(self.lin(x)) * self.scale

    inner = Scaled().double()
    g = torch.Generator().manual_seed(8)
    x = torch.randn(6, 4, generator=g, dtype=torch.float64)
    y = torch.randn(6, 3, generator=g, dtype=torch.float64)
    picked = SelectOutput(inner, "scores")
    assert [n for n, _ in picked.named_parameters()] == ["scale", "lin.weight", "lin.bias"]
    ref = dense_curvatures(Plain(inner), "mse", x, y)["loss"]
    dense = hr.curvature_operator(picked, "mse", (x, y)).to_dense()
    assert [n for n, _ in Plain(inner).named_parameters()] == ["scale", "lin.weight",
                                                               "lin.bias"]
    assert rel_err(dense, ref) < 1e-10
