"""Multilayer perceptrons of the kind the paper's formulas cover."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

#: Activation names accepted by :func:`mlp`.
ACTIVATIONS: dict[str, type[nn.Module]] = {
    "linear": nn.Identity, "tanh": nn.Tanh, "relu": nn.ReLU, "gelu": nn.GELU,
    "sigmoid": nn.Sigmoid,
}


def mlp(widths: Sequence[int], *, activation: str = "linear", bias: bool = False,
        seed: int = 0, dtype: torch.dtype = torch.float64) -> nn.Sequential:
    """``nn.Sequential`` of Linear layers [d, M_1, ..., K] with an activation between them.

    Weights are Glorot-uniform, biases N(0, 0.1^2) (a generic point), drawn from ``seed``.

    Raises:
        ValueError: Fewer than two widths, a width < 1, or an unknown activation.
    """
    if len(widths) < 2 or any(int(w) < 1 for w in widths):
        msg = f"widths must list at least [d, K], all >= 1; got {list(widths)}"
        raise ValueError(msg)
    if activation not in ACTIVATIONS:
        msg = f"activation must be one of {sorted(ACTIVATIONS)}; got {activation!r}"
        raise ValueError(msg)
    g = torch.Generator().manual_seed(seed)
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
        lin = nn.Linear(int(a), int(b), bias=bias, dtype=dtype)
        bound = (6.0 / (a + b)) ** 0.5
        with torch.no_grad():
            lin.weight.copy_(torch.rand(b, a, generator=g, dtype=dtype) * 2 * bound - bound)
            if bias:
                lin.bias.copy_(0.1 * torch.randn(b, generator=g, dtype=dtype))
        layers.append(lin)
        if i < len(widths) - 2:
            layers.append(ACTIVATIONS[activation]())
    return nn.Sequential(*layers)


def describe(widths: Sequence[int], activation: str, bias: bool) -> str:
    """Short label such as ``linear 64-12-12-10 +bias``."""
    return f"{activation} {'-'.join(map(str, widths))}{' +bias' if bias else ''}"
