"""Formula bounds of parameter blocks against dense exact ranks: true, and attained where the
formula is tight (so a wrong count of outputs or tokens fails)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import scalable_hrank as hr
from scalable_hrank.block_bounds import block_bounds
from tests.dense_reference import dense_curvatures, reference_ranks

KINDS = ("loss", "outer", "functional")


class PerToken(nn.Module):
    """(N, T, d) -> Linear per token -> tanh -> mean over tokens -> LayerNorm -> Linear (N, K).

    (A LayerNorm right after the token layer would remove one direction per token: it is
    blind to adding a constant to its input.)"""

    def __init__(self, d: int = 6, h: int = 3, k: int = 3) -> None:
        super().__init__()
        self.token = nn.Linear(d, h)
        self.norm = nn.LayerNorm(h)
        self.head = nn.Linear(h, k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(torch.tanh(self.token(x)).mean(dim=1)))


def problem(n: int, t: int, loss: str = "cross_entropy", seed: int = 0):
    torch.manual_seed(seed)
    model = PerToken().double().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(n, t, 6, generator=g, dtype=torch.float64)
    y = (torch.randint(0, 3, (n,), generator=g) if loss == "cross_entropy"
         else torch.randn(n, 3, generator=g, dtype=torch.float64))
    return model, x, y


def exact_ranks(model, loss, x, y, params):
    return {k: hr.exact_rank(model, loss, (x, y), k, params=params).rank for k in KINDS}


@pytest.mark.parametrize(("samples", "tokens"), [(1, 2), (2, 3), (3, 2)])
def test_per_token_linear_grows_with_tokens_and_is_attained(samples: int, tokens: int) -> None:
    model, x, y = problem(samples, tokens, "mse")
    bounds = block_bounds(model, "mse", (x, y), ["token.*"])
    n = 6 * 3 + 3
    expected = min(n, samples * tokens * 3)
    ranks = exact_ranks(model, "mse", x, y, ["token.*"])
    for kind in KINDS:
        assert bounds[kind] is not None
        assert ranks[kind] <= bounds[kind].value
    assert bounds["loss"].value == bounds["functional"].value == expected
    assert ranks["loss"] == expected  # generic weights: the bound is the rank
    assert "Linear" in bounds["loss"].reason


def test_layernorm_and_bias_blocks_are_at_most_their_size_or_outputs() -> None:
    model, x, y = problem(1, 2)  # one sample: the LayerNorm's image is 3-dimensional, n = 6
    norm = block_bounds(model, "cross_entropy", (x, y), ["norm.*"])
    assert norm["loss"].value == 3 and norm["outer"].value == 1 * 2  # M (K - 1)
    ranks = exact_ranks(model, "cross_entropy", x, y, ["norm.*"])
    assert ranks["loss"] <= 3 and ranks["outer"] <= 2
    bias = block_bounds(model, "cross_entropy", (x, y), ["token.bias"])
    assert bias["loss"].value == 3  # n


def test_output_space_bound_for_a_whole_nonlinear_model() -> None:
    model, x, y = problem(2, 2)
    bounds = block_bounds(model, "cross_entropy", (x, y))
    assert bounds["loss"] is None and bounds["functional"] is None  # no formula applies
    assert bounds["outer"].value == 2 * 2
    ref = reference_ranks(dense_curvatures(model, "cross_entropy", x, y))
    assert ref["outer"] == 4  # attained
    # two affine modules in a chain: the second one's output is not affine in the pair
    pair = block_bounds(model, "cross_entropy", (x, y), ["token.*", "norm.*"])
    assert pair["loss"] is None and pair["outer"].value == 4


def test_tied_parameters_get_no_affine_bound() -> None:
    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(3, 3, bias=False)
            self.b = nn.Linear(3, 3, bias=False)
            self.b.weight = self.a.weight

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.b(torch.tanh(self.a(x)))

    x = torch.randn(1, 3, dtype=torch.float64)
    model = Tied().double()
    bounds = block_bounds(model, "mse", (x, torch.zeros(1, 3, dtype=torch.float64)))
    assert bounds["loss"] is None  # the output-image count of one module would be wrong
    assert hr.exact_rank(model, "mse", (x, torch.zeros(1, 3, dtype=torch.float64))).rank > 3
